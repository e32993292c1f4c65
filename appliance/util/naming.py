"""Well-known VirtualCluster keys and the tenant ↔ super naming rules.

Shared by the syncer, the manager and the proxy, so it imports nothing from `appliance` but the
identity types of `util.tenancy`.
Owns: every `tenancy.x-k8s.io` / `transparency.tenancy.x-k8s.io` label and annotation key,
the cluster key (the name of a VirtualCluster's root namespace in the super cluster) and the
mapping of a tenant namespace to its super namespace. Everything here is pure and deterministic;
the key spellings are those of the original VirtualCluster and must never change.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from appliance.util.tenancy import ClusterKey

# --- prefixes and domains ------------------------------------------------------------------
TENANCY_PREFIX: Final = "tenancy.x-k8s.io"
TRANSPARENCY_PREFIX: Final = "transparency.tenancy.x-k8s.io"
# Built-in prefixes a tenant may never set on a super object (stripped before ours are stamped).
RESERVED_PREFIXES: Final = (TENANCY_PREFIX, TRANSPARENCY_PREFIX)
# `--default-opaque-meta-domains`: key domains never copied down and never diffed.
DEFAULT_OPAQUE_DOMAINS: Final = ("kubernetes.io", "k8s.io")

# --- keys stamped on super objects (downward sync) -------------------------------------------
LABEL_CLUSTER: Final = "tenancy.x-k8s.io/cluster"
ANNOTATION_CLUSTER: Final = LABEL_CLUSTER
ANNOTATION_UID: Final = "tenancy.x-k8s.io/uid"
ANNOTATION_NAMESPACE: Final = "tenancy.x-k8s.io/namespace"
ANNOTATION_OWNER_REFERENCES: Final = "tenancy.x-k8s.io/ownerReferences"
LABEL_VC_NAME: Final = "tenancy.x-k8s.io/vcname"
LABEL_VC_NAMESPACE: Final = "tenancy.x-k8s.io/vcnamespace"
ANNOTATION_VC_NAME: Final = LABEL_VC_NAME
ANNOTATION_VC_NAMESPACE: Final = LABEL_VC_NAMESPACE
ANNOTATION_VC_UID: Final = "tenancy.x-k8s.io/vcuid"
ANNOTATION_VC_ROOT_NS: Final = "tenancy.x-k8s.io/vcrootns"
LABEL_CONTROLLED: Final = "tenancy.x-k8s.io/controlled"
ANNOTATION_CLUSTER_IP: Final = "tenancy.x-k8s.io/clusterIP"
#: on a super RuntimeClass copy: the tenant's name for it
ANNOTATION_RUNTIME_CLASS: Final = "tenancy.x-k8s.io/runtimeclass"
LABEL_SECRET_UID: Final = "tenancy.x-k8s.io/secret.UID"
ANNOTATION_SECRET_NAME: Final = "tenancy.x-k8s.io/secret.name"

# --- keys read from tenant or super objects -------------------------------------------------
LABEL_VIRTUAL_NODE: Final = "tenancy.x-k8s.io/virtualnode"
LABEL_SUPER_CLUSTER_ID: Final = "tenancy.x-k8s.io/superclusterid"
LABEL_SUPER_PUBLIC: Final = "tenancy.x-k8s.io/super.public"
LABEL_IGNORE_SYNC: Final = "tenancy.x-k8s.io/ignore-sync"
LABEL_DISABLE_DNS_POLICY_MUTATION: Final = "tenancy.x-k8s.io/disable.dnsPolicyMutation"
ANNOTATION_TRANSPARENT_CLUSTER_IP: Final = "transparency.tenancy.x-k8s.io/clusterIP"
ANNOTATION_PLACEMENTS: Final = "scheduler.virtualcluster.io/placements"
ANNOTATION_SUPER_CLUSTER: Final = "scheduler.virtualcluster.io/superCluster"
ANNOTATION_SERVICE_ACCOUNT_NAME: Final = "kubernetes.io/service-account.name"
SECRET_TYPE_SA_TOKEN: Final = "kubernetes.io/service-account-token"

# --- keys on the VirtualCluster itself --------------------------------------------------------
ANNOTATION_ADMIN_KUBECONFIG: Final = "tenancy.x-k8s.io/admin-kubeconfig"
ANNOTATION_SECRET_ADMIN_KUBECONFIG: Final = "tenancy.x-k8s.io/secret.admin-kubeconfig"
LABEL_EXTERNAL_APISERVER_DOMAIN: Final = "tenancy.x-k8s.io/external-apiserver-domain"
LABEL_READY_FOR_UPGRADE: Final = "tenancy.x-k8s.io/ready-for-upgrade"
LABEL_CLUSTER_VERSION_APPLIED: Final = "tenancy.x-k8s.io/cluster-version-applied"
ANNOTATION_ASK_CLUSTER_ID: Final = "tenancy.x-k8s.io/ask.clusterID"
ANNOTATION_ASK_SLB_ID: Final = "tenancy.x-k8s.io/ask.slbID"
ANNOTATION_CAPI_CLUSTER_NAME: Final = "cluster.x-k8s.io/name"
ADMIN_KUBECONFIG_SECRET: Final = "admin-kubeconfig"
ADMIN_KUBECONFIG_SECRET_KEY: Final = "admin-kubeconfig"
ANNOTATED_KUBECONFIG_SECRET_KEY: Final = "value"
#: Provisioners that make the tenant's credentials themselves (secret `admin-kubeconfig` in the
#: root namespace). For their VirtualClusters the two kubeconfig annotations are ignored: whoever
#: may edit the VC object must not be able to point the appliance at another cluster or at
#: credentials of their choosing.
PROVISIONERS_WITH_OWN_CREDENTIALS: Final = ("process", "native")


def kubeconfig_annotations_apply(provisioner: str | None) -> bool:
    """True if a VC's kubeconfig annotations name its credentials (import, or another manager's VC)."""
    return provisioner not in PROVISIONERS_WITH_OWN_CREDENTIALS


def kubeconfig_source(annotations: dict[str, str], provisioner: str | None) -> tuple[str, str]:
    """The credential-naming annotations that count for a VC: a change of these restarts its syncer."""
    if not kubeconfig_annotations_apply(provisioner):
        return ("", "")
    return (annotations.get(ANNOTATION_ADMIN_KUBECONFIG, ""), annotations.get(ANNOTATION_SECRET_ADMIN_KUBECONFIG, ""))
FINALIZER_PREFIX: Final = "virtualcluster.finalizer."
CLUSTER_VERSION_FINALIZER: Final = "clusterVersion.finalizers"

# --- lengths ----------------------------------------------------------------------------------
DNS1123_LABEL_MAX: Final = 63
# A computed cluster key is at most 40 characters. The key names the root namespace (≤ 63), and
# it is also the prefix of every tenant namespace ("<key>-<ns>"): with 40 characters the usual
# tenant namespaces ("default", "kube-system", "kube-node-lease", up to 22 characters) still map
# without hashing and stay readable in `kubectl get ns` on the super cluster.
CLUSTER_KEY_MAX: Final = 40
_KEY_HASH_LEN: Final = 10  # hex digits (40 bits) appended to a shortened cluster key
_NS_HASH_LEN: Final = 5  # hex digits of the original super-namespace rule
_UID_HASH_LEN: Final = 6
_KEY_NS_KEEP: Final = 12  # namespace characters a shortened cluster key keeps at least

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_INVALID_LABEL_CHARS = re.compile(r"[^-a-z0-9]+")


DNS1123_SUBDOMAIN_MAX: Final = 253


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def is_dns1123_label(value: str) -> bool:
    """Tell whether `value` is a valid RFC 1123 label (a valid namespace name)."""
    return len(value) <= DNS1123_LABEL_MAX and _DNS1123_LABEL.fullmatch(value) is not None


def cluster_key(vc_namespace: str, vc_name: str, vc_uid: str, *, cluster_namespace: str = "") -> ClusterKey:
    """Return the cluster key of a VirtualCluster, which is also its root namespace's name.

    `cluster_namespace` (the VC's `status.clusterNamespace`) wins when set: once written it *is*
    the key, whatever rule produced it. Otherwise the key is `<ns>-<6 hex of sha256(uid)>-<name>`
    as in the original. Improvement: when that text is longer than CLUSTER_KEY_MAX (40) or is not
    a DNS-1123 label (a VC name may contain dots), it is shortened deterministically to
    `<ns>-<name>-<10 hex of sha256(original text)>` with both parts lower-cased, invalid
    characters turned into `-` and truncated (the name keeps priority, the namespace keeps at
    least 12 characters), which is a DNS-1123 label of at most 40 characters and still unique
    per VC (the hashed text contains the UID hash).
    """
    if cluster_namespace:
        return ClusterKey(cluster_namespace)
    text = f"{vc_namespace}-{_sha256_hex(vc_uid)[:_UID_HASH_LEN]}-{vc_name}"
    if len(text) <= CLUSTER_KEY_MAX and is_dns1123_label(text):
        return ClusterKey(text)
    digest = _sha256_hex(text)[:_KEY_HASH_LEN]
    budget = CLUSTER_KEY_MAX - _KEY_HASH_LEN - 2  # room for "<ns>-<name>-<digest>"
    ns_part, name_part = _sanitise(vc_namespace), _sanitise(vc_name)
    if len(ns_part) + len(name_part) > budget:  # keep ≥ 12 of the namespace, prefer the name
        ns_part = ns_part[: max(budget - len(name_part), min(len(ns_part), _KEY_NS_KEEP))].strip("-")
        name_part = name_part[: budget - len(ns_part)].strip("-")
    return ClusterKey("-".join(part for part in (ns_part, name_part, digest) if part))


def super_runtime_class(cluster: ClusterKey, name: str) -> str:
    """Name of the super copy of a tenant RuntimeClass: `<cluster key>-<name>`, or the key and a
    hash of the name when that is longer than a name may be."""
    full = f"{cluster}-{name}"
    return full if len(full) <= DNS1123_SUBDOMAIN_MAX else f"{cluster}-{_sha256_hex(name)[:16]}"


def service_cidr_name(cluster: ClusterKey) -> str:
    """Name of the super ServiceCIDR holding a tenant's Service range (`vc-<cluster key>`)."""
    return f"vc-{cluster}"


def _sanitise(text: str) -> str:
    return _INVALID_LABEL_CHARS.sub("-", text.lower()).strip("-")


def super_namespace(cluster: ClusterKey, tenant_namespace: str) -> str:
    """Return the super namespace that holds tenant namespace `tenant_namespace` of `cluster`.

    `<cluster>-<ns>`; if that exceeds 63 characters, its first 57 characters, a dash and the
    first 5 hex digits of its SHA-256 (exactly the original rule, so names stay compatible).
    """
    text = f"{cluster}-{tenant_namespace}"
    if len(text) <= DNS1123_LABEL_MAX:
        return text
    keep = DNS1123_LABEL_MAX - _NS_HASH_LEN - 1
    return f"{text[:keep]}-{_sha256_hex(text)[:_NS_HASH_LEN]}"
