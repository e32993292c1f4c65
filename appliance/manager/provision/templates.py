"""Turning a ClusterVersion into the native control plane's objects; pure, table-tested.

A ClusterVersion has up to three bundles (`spec.etcd`, `spec.apiServer`,
`spec.controllerManager`), each a StatefulSet plus an optional Service; the bundle's
`metadata.name` says which component it is (`etcd`, `apiserver`, `controller-manager`) and
must equal the StatefulSet's name. `render` completes the templates exactly as the original
does: both objects move into the root namespace, the pod template gets the label
`tenancy.x-k8s.io/cluster=<root ns>`, etcd gets `--initial-cluster` appended to its first
container's args, and the apiserver and controller-manager get pod-template annotations with
the SHA-256 of the certificates they mount, so new certificates roll their pods.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from appliance.manager import pkisecrets, reconcile
from appliance.pki import certs, kubeconfig
from appliance.util import naming

ETCD, APISERVER, CONTROLLER_MANAGER = "etcd", "apiserver", "controller-manager"
_BUNDLE_FIELDS = (("etcd", ETCD), ("apiServer", APISERVER), ("controllerManager", CONTROLLER_MANAGER))
ETCD_PEER_PORT = 2380
APISERVER_PORT = 6443


@dataclass(frozen=True, slots=True)
class Bundle:
    """One component's templates, as found in the ClusterVersion (never mutated)."""

    name: str
    statefulset: dict[str, Any]
    service: dict[str, Any] | None

    @property
    def replicas(self) -> int:
        return int((self.statefulset.get("spec") or {}).get("replicas", 1))

    @property
    def service_name(self) -> str:
        return str(((self.service or {}).get("metadata") or {}).get("name", ""))

    @property
    def service_type(self) -> str:
        return str(((self.service or {}).get("spec") or {}).get("type", "ClusterIP"))


def bundles(cv: dict[str, Any]) -> list[Bundle]:
    """The ClusterVersion's bundles in deployment order; Rejected if it cannot be deployed."""
    cv_name = (cv.get("metadata") or {}).get("name", "")
    spec = cv.get("spec") or {}
    found: list[Bundle] = []
    for field, expected in _BUNDLE_FIELDS:
        raw = spec.get(field)
        if not raw:
            if expected == CONTROLLER_MANAGER:
                continue
            raise reconcile.Rejected("InvalidClusterVersion", f"ClusterVersion {cv_name} has no spec.{field}")
        name = str((raw.get("metadata") or {}).get("name", ""))
        if name not in (ETCD, APISERVER, CONTROLLER_MANAGER):
            raise reconcile.Rejected("InvalidClusterVersion", f"try to deploy unknown component: {name}")
        sts = raw.get("statefulset") or {}
        sts_name = (sts.get("metadata") or {}).get("name", "")
        if sts_name != name:
            raise reconcile.Rejected(
                "InvalidClusterVersion",
                f"ClusterVersion {cv_name}: spec.{field}.statefulset is named {sts_name!r}; it must be {name!r}",
            )
        service = raw.get("service") or None
        found.append(Bundle(name=name, statefulset=sts, service=service))
    return found


def by_name(found: list[Bundle], name: str) -> Bundle | None:
    return next((b for b in found if b.name == name), None)


def etcd_members(etcd: Bundle) -> list[str]:
    """`<sts>-<i>.<svc>` for every replica (the etcd "domain" is the Service name)."""
    return [f"{etcd.name}-{i}.{etcd.service_name}" for i in range(etcd.replicas)]


def etcd_dns_names(etcd: Bundle, root_ns: str) -> tuple[str, ...]:
    names = [*etcd_members(etcd), etcd.service_name]
    return tuple(names + [f"{n}.{root_ns}" for n in names])


def apiserver_host(apiserver: Bundle, root_ns: str, cluster_ip: str = "") -> str:
    """What kubeconfigs name: the ClusterIP for a ClusterIP Service, else `<svc>.<root ns>`."""
    return cluster_ip or f"{apiserver.service_name}.{root_ns}"


def apiserver_server(apiserver: Bundle, root_ns: str, cluster_ip: str = "") -> str:
    return kubeconfig.server_url(apiserver_host(apiserver, root_ns, cluster_ip), APISERVER_PORT)


def _hash(ck: certs.CertKey) -> str:
    return certs.content_hash(ck.cert_pem, ck.key_pem)


def cert_hashes(name: str, pki: pkisecrets.TenantPKI, *, cm_kubeconfig: bytes) -> dict[str, str]:
    """The pod-template annotations that tie a component's pods to its certificates."""
    sa = certs.content_hash(certs.public_key_pem(pki.service_account_key_pem), pki.service_account_key_pem)
    if name == APISERVER:
        return {
            "root-ca-hash": _hash(pki.root_ca),
            "apiserver-ca-hash": _hash(pki.apiserver),
            "front-proxy-ca-hash": _hash(pki.front_proxy),
            "serviceaccount-rsa-hash": sa,
        }
    if name == CONTROLLER_MANAGER:
        return {
            "root-ca-hash": _hash(pki.root_ca),
            "serviceaccount-rsa-hash": sa,
            "controller-manager-kubeconfig-hash": certs.content_hash(cm_kubeconfig),
        }
    return {}


def render_service(bundle: Bundle, root_ns: str) -> dict[str, Any] | None:
    if bundle.service is None:
        return None
    svc = copy.deepcopy(bundle.service)
    svc.setdefault("apiVersion", "v1")
    svc.setdefault("kind", "Service")
    svc.pop("status", None)
    svc.setdefault("metadata", {})["namespace"] = root_ns
    return svc


def render_statefulset(bundle: Bundle, root_ns: str, *, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The completed StatefulSet of one bundle."""
    sts = copy.deepcopy(bundle.statefulset)
    sts.setdefault("apiVersion", "apps/v1")
    sts.setdefault("kind", "StatefulSet")
    sts.pop("status", None)
    sts.setdefault("metadata", {})["namespace"] = root_ns
    template = sts.setdefault("spec", {}).setdefault("template", {})
    tmeta = template.setdefault("metadata", {})
    tmeta.setdefault("labels", {})[naming.LABEL_CLUSTER] = root_ns
    if annotations:
        tmeta.setdefault("annotations", {}).update(annotations)
    if bundle.name == ETCD:
        containers = (template.get("spec") or {}).get("containers") or []
        if not containers:
            raise reconcile.Rejected("InvalidClusterVersion", "the etcd StatefulSet has no containers")
        peers = ",".join(
            f"{member.split('.')[0]}=https://{member}:{ETCD_PEER_PORT}" for member in etcd_members(bundle)
        )
        containers[0].setdefault("args", []).extend(["--initial-cluster", peers])
    return sts
