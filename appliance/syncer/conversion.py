"""Pure tenant → super object conversion and super → tenant back-tracing (SPEC §3.3, §3.4).

Objects are plain dicts; every function returns a fresh deep copy and never mutates its input.
Every field the syncer does not own passes through untouched. Owned: metadata reset, tenancy
labels and annotations, the namespace, and the few per-kind rewrites of SPEC §3.7 (Service
allocations, service-account token secrets, ServiceAccount secret lists).
Security invariant: the tenant can never forge a tenancy key. Every label or annotation that
starts with `tenancy.x-k8s.io` or `transparency.tenancy.x-k8s.io` is stripped from the tenant
object before the syncer stamps its own. Pod mutation lives in `mutation.py`; diffs in
`equality.py`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from appliance.kube import wire
from appliance.util import naming, tenancy

# metadata fields owned by the apiserver (or meaningless across clusters), cleared on copy
_RESET_METADATA = (
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "clusterName",
)


class TenantObjectRef(NamedTuple):
    """The tenant object a super object's tenancy stamps name: cluster key, tenant namespace ("" if
    cluster-scoped), name. Not the VirtualCluster (that is `util.tenancy.VcRef`)."""

    cluster_key: tenancy.ClusterKey
    namespace: str
    name: str


def key_domain(key: str) -> str:
    """The domain part of a label/annotation key: the text before the first `/`, or the whole key."""
    return key.split("/", 1)[0]


def in_domains(key: str, domains: Iterable[str]) -> bool:
    """Tell whether `key`'s domain is one of `domains` or a subdomain of one.

    Matches on whole DNS labels (`m.kubernetes.io` is in `kubernetes.io`, `xkubernetes.io` is
    not), unlike the original's plain suffix test.
    """
    domain = key_domain(key)
    return any(domain == d or domain.endswith("." + d) for d in domains)


def is_opaque_key(
    key: str,
    *,
    prefixes: Iterable[str] = (),
    domains: Iterable[str] = naming.DEFAULT_OPAQUE_DOMAINS,
) -> bool:
    """Tell whether a tenant key must not be copied down: a reserved or opaque prefix, or domain."""
    if key.startswith(naming.RESERVED_PREFIXES):
        return True
    return any(key.startswith(p) for p in prefixes if p) or in_domains(key, domains)


def strip_keys(
    values: Mapping[str, str] | None,
    *,
    prefixes: Iterable[str] = (),
    domains: Iterable[str] = naming.DEFAULT_OPAQUE_DOMAINS,
) -> dict[str, str]:
    """Return `values` without the keys `is_opaque_key` rejects."""
    prefixes, domains = tuple(prefixes), tuple(domains)
    return {k: v for k, v in (values or {}).items() if not is_opaque_key(k, prefixes=prefixes, domains=domains)}


def _base_copy(
    obj: Mapping[str, Any], *, opaque_prefixes: Iterable[str], opaque_domains: Iterable[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Deep-copy `obj`, strip forbidden keys, reset metadata; return (copy, its metadata)."""
    new = wire.copy_json(dict(obj))
    meta = new["metadata"] = dict(new.get("metadata") or {})
    for name in _RESET_METADATA:
        meta.pop(name, None)
    meta["labels"] = strip_keys(meta.get("labels"), prefixes=opaque_prefixes, domains=opaque_domains)
    meta["annotations"] = strip_keys(meta.get("annotations"), prefixes=opaque_prefixes, domains=opaque_domains)
    return new, meta


def build_super_object(
    obj: Mapping[str, Any],
    *,
    cluster_key: tenancy.ClusterKey,
    vc_name: str,
    vc_namespace: str,
    vc_uid: str,
    super_ns: str,
    opaque_prefixes: Iterable[str] = (),
    opaque_domains: Iterable[str] = naming.DEFAULT_OPAQUE_DOMAINS,
    controlled: bool = False,
) -> dict[str, Any]:
    """Return the super copy of namespaced tenant object `obj`, placed in namespace `super_ns`.

    Stamps annotations cluster, uid, ownerReferences (compact JSON, "null" when none),
    namespace (the tenant's), vcname, vcnamespace and vcuid (vcuid is our addition: it lets a
    patroller tell VC incarnations apart from any object); labels vcname, vcnamespace, and
    `controlled=true` when `controlled` (gate SuperClusterLabelling).
    """
    src_meta = obj.get("metadata") or {}
    new, meta = _base_copy(obj, opaque_prefixes=opaque_prefixes, opaque_domains=opaque_domains)
    owners = src_meta.get("ownerReferences") or None
    meta["annotations"].update(
        {
            naming.ANNOTATION_CLUSTER: cluster_key,
            naming.ANNOTATION_UID: src_meta.get("uid", ""),
            naming.ANNOTATION_OWNER_REFERENCES: json.dumps(owners, separators=(",", ":")),
            naming.ANNOTATION_NAMESPACE: src_meta.get("namespace", ""),
            naming.ANNOTATION_VC_NAME: vc_name,
            naming.ANNOTATION_VC_NAMESPACE: vc_namespace,
            naming.ANNOTATION_VC_UID: vc_uid,
        }
    )
    _stamp_labels(meta, vc_name=vc_name, vc_namespace=vc_namespace, controlled=controlled)
    meta["namespace"] = super_ns
    return new


def build_super_namespace(
    ns_obj: Mapping[str, Any],
    *,
    cluster_key: tenancy.ClusterKey,
    vc_name: str,
    vc_namespace: str,
    vc_uid: str,
    opaque_prefixes: Iterable[str] = (),
    opaque_domains: Iterable[str] = naming.DEFAULT_OPAQUE_DOMAINS,
    controlled: bool = False,
) -> dict[str, Any]:
    """Return the super Namespace for tenant Namespace `ns_obj`, named per `naming.super_namespace`.

    Annotations cluster, uid, namespace (tenant name), vcname, vcnamespace, vcuid; labels vcname
    and vcnamespace (our addition, for label-filtered super informers) and `controlled=true`
    when `controlled`.
    """
    src_meta = ns_obj.get("metadata") or {}
    tenant_name = src_meta.get("name", "")
    new, meta = _base_copy(ns_obj, opaque_prefixes=opaque_prefixes, opaque_domains=opaque_domains)
    meta["annotations"].update(
        {
            naming.ANNOTATION_CLUSTER: cluster_key,
            naming.ANNOTATION_UID: src_meta.get("uid", ""),
            naming.ANNOTATION_NAMESPACE: tenant_name,
            naming.ANNOTATION_VC_NAME: vc_name,
            naming.ANNOTATION_VC_NAMESPACE: vc_namespace,
            naming.ANNOTATION_VC_UID: vc_uid,
        }
    )
    _stamp_labels(meta, vc_name=vc_name, vc_namespace=vc_namespace, controlled=controlled)
    meta.pop("namespace", None)
    meta["name"] = naming.super_namespace(cluster_key, tenant_name)
    new.pop("status", None)
    return new


def _stamp_labels(meta: dict[str, Any], *, vc_name: str, vc_namespace: str, controlled: bool) -> None:
    meta["labels"][naming.LABEL_VC_NAME] = vc_name
    meta["labels"][naming.LABEL_VC_NAMESPACE] = vc_namespace
    if controlled:
        meta["labels"][naming.LABEL_CONTROLLED] = "true"


def tenant_object_ref(super_obj: Mapping[str, Any]) -> TenantObjectRef | None:
    """Trace a super object back to its tenant object, or None if it is not a synced object.

    Uses annotations cluster + namespace. A super object without a namespace is a super
    Namespace: its tenant object is the cluster-scoped namespace named by the annotation. The
    name is the super name, except for converted service-account token secrets (generated
    names), whose tenant name is in annotation `tenancy.x-k8s.io/secret.name`.
    """
    meta = super_obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    cluster = annotations.get(naming.ANNOTATION_CLUSTER)
    tenant_ns = annotations.get(naming.ANNOTATION_NAMESPACE)
    if not cluster or not tenant_ns:
        return None
    if not meta.get("namespace"):
        return TenantObjectRef(tenancy.ClusterKey(cluster), "", tenant_ns)
    name = annotations.get(naming.ANNOTATION_SECRET_NAME) or meta.get("name", "")
    return TenantObjectRef(tenancy.ClusterKey(cluster), tenant_ns, name)


def tenant_uid(super_obj: Mapping[str, Any]) -> str | None:
    """The UID of the tenant object recorded on super object `super_obj`, if any."""
    annotations = (super_obj.get("metadata") or {}).get("annotations") or {}
    uid = annotations.get(naming.ANNOTATION_UID)
    return uid or None


# --- per-kind rewrites, applied to the result of build_super_object ----------------------------
def adapt_service(super_svc: Mapping[str, Any], *, own_range: str | None = None) -> dict[str, Any]:
    """Let the super cluster allocate a Service's addresses (SPEC §3.7 Service DWS create).

    A real tenant ClusterIP moves to annotation `tenancy.x-k8s.io/clusterIP` and clusterIP(s)
    are cleared (headless `None` is kept), unless every one of them lies in `own_range`, the
    tenant's own ServiceCIDR in the super cluster, where they are kept as they are. Node ports
    are kept: the super cluster has the same default range, so the port a tenant was given is
    the one its clients dial on a node (the original cleared them, so NodePorts seen in a
    tenant did not work); when the super cluster refuses one, `without_node_ports` lets it pick.
    """
    new = wire.copy_json(dict(super_svc))
    spec = new.get("spec") or {}
    cluster_ip = spec.get("clusterIP")
    if cluster_ip and cluster_ip != "None":
        annotations = new.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[naming.ANNOTATION_CLUSTER_IP] = cluster_ip
        if not in_range(spec.get("clusterIPs") or [cluster_ip], own_range):
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
    return new


def without_node_ports(super_svc: Mapping[str, Any]) -> dict[str, Any]:
    """`super_svc` with every nodePort and healthCheckNodePort cleared, for the super cluster to allocate."""
    new = wire.copy_json(dict(super_svc))
    spec = new.get("spec") or {}
    spec.pop("healthCheckNodePort", None)
    for port in spec.get("ports") or ():
        port.pop("nodePort", None)
    return new


def has_node_ports(svc: Mapping[str, Any]) -> bool:
    spec = svc.get("spec") or {}
    return bool(spec.get("healthCheckNodePort") or any(p.get("nodePort") for p in spec.get("ports") or ()))


def in_range(addresses: Iterable[str], cidr: str | None) -> bool:
    """Whether every address lies in `cidr` (False without one, or for anything unparsable)."""
    if not cidr:
        return False
    try:
        net = ipaddress.ip_network(cidr, strict=False)
        return all(ipaddress.ip_address(a) in net for a in addresses)
    except ValueError:
        return False


def without_cluster_ips(super_svc: Mapping[str, Any]) -> dict[str, Any]:
    """`super_svc` with clusterIP(s) cleared, for the super cluster to allocate."""
    new = wire.copy_json(dict(super_svc))
    spec = new.get("spec") or {}
    if spec.get("clusterIP") != "None":
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)
    return new


def adapt_sa_token_secret(super_secret: Mapping[str, Any], tenant_secret: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the copy of a tenant service-account token secret into an Opaque super secret.

    The super token controller must not see it as a token secret: type `Opaque`, generated
    name `<sa>-token-`, label `secret.UID=<tenant uid>`, annotation `secret.name=<tenant name>`;
    data (the tenant's token, ca.crt, namespace) is kept, so pods authenticate to the tenant.
    """
    tenant_meta = tenant_secret.get("metadata") or {}
    sa_name = (tenant_meta.get("annotations") or {}).get(naming.ANNOTATION_SERVICE_ACCOUNT_NAME, "")
    new = wire.copy_json(dict(super_secret))
    meta = new.setdefault("metadata", {})
    meta.pop("name", None)
    meta["generateName"] = f"{sa_name}-token-" if sa_name else "token-"
    meta.setdefault("labels", {})[naming.LABEL_SECRET_UID] = tenant_meta.get("uid", "")
    meta.setdefault("annotations", {})[naming.ANNOTATION_SECRET_NAME] = tenant_meta.get("name", "")
    new["type"] = "Opaque"
    return new


def adapt_service_account(super_sa: Mapping[str, Any]) -> dict[str, Any]:
    """Clear a ServiceAccount copy's `secrets` list (the super token controller owns it)."""
    new = wire.copy_json(dict(super_sa))
    new.pop("secrets", None)
    return new
