"""A tenant's PKI: built once, stored as the original's secrets and as files, read back from either.

Pure (no I/O); `build` is CPU-bound, so callers run it in a worker thread.

The root namespace holds the original's seven secrets with their exact names and data keys
(`root-ca`, `apiserver-ca`, `etcd-ca`, `front-proxy-ca`, `serviceaccount-rsa` as
`kubernetes.io/tls`; `controller-manager-kubeconfig` and `admin-kubeconfig` as Opaque with a
data key of the same name), plus `kubelet-client` (ours): the client certificate the tenant
apiserver presents to kubelets, i.e. to the appliance's vn-agent proxy. It is issued directly
by the tenant's root CA with CN = cluster key, and the proxy identifies a tenant by which
registered `root-ca` `tls.crt` issued the presented certificate. Keys are ECDSA P-256
(`appliance.pki.certs`), not the original's RSA-2048; every Kubernetes component accepts them.
`pkiExpireDays` sets the leaf lifetime; CAs live at least ten years.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from appliance.pki import certs, kubeconfig
from appliance.util import tenancy

ROOT_CA_CN = "kubernetes"
ROOT_CA_ORG = "kubernetes-sig.kubernetes-sigs/multi-tenancy.virtualcluster"
CA_MIN_DAYS = 3650
DEFAULT_DAYS = 365

SECRET_ROOT_CA = "root-ca"
SECRET_APISERVER = "apiserver-ca"
SECRET_ETCD = "etcd-ca"
SECRET_FRONT_PROXY = "front-proxy-ca"
SECRET_SERVICE_ACCOUNT = "serviceaccount-rsa"
SECRET_CONTROLLER_MANAGER = "controller-manager-kubeconfig"
SECRET_ADMIN = "admin-kubeconfig"
SECRET_KUBELET_CLIENT = "kubelet-client"
SECRET_NAMES = (
    SECRET_ROOT_CA, SECRET_APISERVER, SECRET_ETCD, SECRET_FRONT_PROXY, SECRET_SERVICE_ACCOUNT,
    SECRET_CONTROLLER_MANAGER, SECRET_ADMIN, SECRET_KUBELET_CLIENT,
)
ADMIN_USER = "admin"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"


@dataclass(frozen=True, slots=True)
class PKIRequest:
    """What the certificates must say; the provisioner fills in where the apiserver lives."""

    cluster_key: tenancy.ClusterKey
    vc_name: str
    cluster_domain: str = ""
    apiserver_dns: tuple[str, ...] = ()
    apiserver_ips: tuple[str, ...] = ()
    etcd_dns: tuple[str, ...] = ()
    etcd_ips: tuple[str, ...] = ("127.0.0.1",)
    days: int = DEFAULT_DAYS
    #: overrides `days` for the leaves (`[manager] certificate-lifetime`)
    lifetime: dt.timedelta | None = None


@dataclass(frozen=True, slots=True, repr=False)
class TenantPKI:
    """Every certificate and key of one tenant control plane."""

    root_ca: certs.CertKey
    apiserver: certs.CertKey
    etcd: certs.CertKey
    front_proxy: certs.CertKey
    controller_manager: certs.CertKey
    admin: certs.CertKey
    kubelet_client: certs.CertKey
    service_account_key_pem: bytes

    def __repr__(self) -> str:
        return f"TenantPKI(root_ca={self.root_ca.fingerprint()[:16]})"


def build(req: PKIRequest, *, root_ca: certs.CertKey | None = None) -> TenantPKI:
    """Issue the tenant PKI, reusing `root_ca` when given (as the original reuses `root-ca`)."""
    days = req.days
    ca = root_ca or certs.new_ca(ROOT_CA_CN, organizations=(ROOT_CA_ORG,), days=max(days, CA_MIN_DAYS))
    domain = req.cluster_domain or "cluster.local"
    apiserver_dns = _unique((
        "kubernetes", "kubernetes.default", "kubernetes.default.svc", f"kubernetes.default.svc.{domain}",
        req.vc_name, *req.apiserver_dns,
    ))

    def client(cn: str, *orgs: str) -> certs.CertKey:
        return certs.issue(ca, common_name=cn, organizations=orgs, client=True, days=days, lifetime=req.lifetime)

    return TenantPKI(
        root_ca=ca,
        apiserver=certs.issue(
            ca, common_name=req.cluster_key, dns_names=apiserver_dns,
            ip_addresses=_unique(req.apiserver_ips), server=True, client=True, days=days, lifetime=req.lifetime,
        ),
        etcd=certs.issue(
            ca, common_name="kube-etcd", dns_names=_unique(req.etcd_dns),
            ip_addresses=_unique(req.etcd_ips), server=True, client=True, days=days, lifetime=req.lifetime,
        ),
        front_proxy=client("front-proxy-client"),
        controller_manager=client(CONTROLLER_MANAGER_USER),
        admin=client(ADMIN_USER, "system:masters"),
        kubelet_client=client(req.cluster_key),
        service_account_key_pem=certs.key_pem(certs.new_private_key()),
    )


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def render_kubeconfig(pki: TenantPKI, *, user: str, server: str, cluster_name: str) -> bytes:
    """The admin or controller-manager kubeconfig (context `default`, as in the original)."""
    cert = {ADMIN_USER: pki.admin, CONTROLLER_MANAGER_USER: pki.controller_manager}[user]
    return kubeconfig.render(cluster_name=cluster_name, server=server, ca_pem=pki.root_ca.cert_pem,
                             user=user, cert_pem=cert.cert_pem, key_pem=cert.key_pem)


def secrets(pki: TenantPKI, *, namespace: str, server: str, cluster_name: str) -> list[dict[str, Any]]:
    """The eight secrets of the root namespace, ready for server-side apply."""

    def secret(name: str, type_: str, data: Mapping[str, bytes]) -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": type_, "data": {k: _b64(v) for k, v in data.items()},
        }

    def tls(name: str, ck: certs.CertKey) -> dict[str, Any]:
        return secret(name, "kubernetes.io/tls", {"tls.crt": ck.cert_pem, "tls.key": ck.key_pem})

    sa_public = certs.public_key_pem(pki.service_account_key_pem)
    return [
        tls(SECRET_ROOT_CA, pki.root_ca),
        tls(SECRET_APISERVER, pki.apiserver),
        tls(SECRET_ETCD, pki.etcd),
        tls(SECRET_FRONT_PROXY, pki.front_proxy),
        secret(SECRET_SERVICE_ACCOUNT, "kubernetes.io/tls",
               {"tls.crt": sa_public, "tls.key": pki.service_account_key_pem}),
        secret(SECRET_CONTROLLER_MANAGER, "Opaque", {SECRET_CONTROLLER_MANAGER: render_kubeconfig(
            pki, user=CONTROLLER_MANAGER_USER, server=server, cluster_name=cluster_name)}),
        secret(SECRET_ADMIN, "Opaque", {SECRET_ADMIN: render_kubeconfig(
            pki, user=ADMIN_USER, server=server, cluster_name=cluster_name)}),
        tls(SECRET_KUBELET_CLIENT, pki.kubelet_client),
    ]


def secret_data(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    """`data[key]` of a Secret decoded, or None when it is missing, empty or not base64.

    None lets the caller decide: regenerate damaged PKI, or report a kubeconfig as absent.
    """
    raw = ((secret or {}).get("data") or {}).get(key)
    if not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None


def secret_cert(secret: Mapping[str, Any] | None) -> certs.CertKey | None:
    """The certificate and key of a `kubernetes.io/tls` secret, if both are there."""
    crt, key = secret_data(secret, "tls.crt"), secret_data(secret, "tls.key")
    return certs.CertKey(crt, key) if crt and key else None


def _kubeconfig_cert(data: bytes | None) -> certs.CertKey | None:
    if not data:
        return None
    try:
        doc = yaml.safe_load(data)
        user = doc["users"][0]["user"]
        return certs.CertKey(base64.b64decode(user["client-certificate-data"]),
                             base64.b64decode(user["client-key-data"]))
    except (yaml.YAMLError, LookupError, TypeError, binascii.Error, ValueError):
        return None


def from_secrets(by_name: Mapping[str, Mapping[str, Any]]) -> TenantPKI | None:
    """The PKI stored in the root namespace's secrets, or None if any piece is missing."""
    sa = secret_data(by_name.get(SECRET_SERVICE_ACCOUNT), "tls.key")
    parts = {
        "root_ca": secret_cert(by_name.get(SECRET_ROOT_CA)),
        "apiserver": secret_cert(by_name.get(SECRET_APISERVER)),
        "etcd": secret_cert(by_name.get(SECRET_ETCD)),
        "front_proxy": secret_cert(by_name.get(SECRET_FRONT_PROXY)),
        "controller_manager": _kubeconfig_cert(
            secret_data(by_name.get(SECRET_CONTROLLER_MANAGER), SECRET_CONTROLLER_MANAGER)),
        "admin": _kubeconfig_cert(secret_data(by_name.get(SECRET_ADMIN), SECRET_ADMIN)),
        "kubelet_client": secret_cert(by_name.get(SECRET_KUBELET_CLIENT)),
    }
    if sa is None or any(v is None for v in parts.values()):
        return None
    return TenantPKI(service_account_key_pem=sa, **parts)  # type: ignore[arg-type]


# --- files (process provisioner) ------------------------------------------------------------
# Names match what `appliance.controlplane.components` passes to kube-apiserver and KCM.
_FILES = {
    "root_ca": "ca", "apiserver": "apiserver", "etcd": "etcd", "front_proxy": "front-proxy-client",
    "controller_manager": "controller-manager", "admin": "admin", "kubelet_client": "kubelet-client",
}


def files(pki: TenantPKI, *, server: str, cluster_name: str) -> dict[str, bytes]:
    """The PKI as files for a local control plane: `<name>.crt/.key`, `sa.*`, kubeconfigs."""
    out: dict[str, bytes] = {}
    for field, stem in _FILES.items():
        ck: certs.CertKey = getattr(pki, field)
        out[f"{stem}.crt"] = ck.cert_pem
        out[f"{stem}.key"] = ck.key_pem
    out["sa.key"] = pki.service_account_key_pem
    out["sa.pub"] = certs.public_key_pem(pki.service_account_key_pem)
    out["admin.kubeconfig"] = render_kubeconfig(pki, user=ADMIN_USER, server=server, cluster_name=cluster_name)
    out["controller-manager.kubeconfig"] = render_kubeconfig(
        pki, user=CONTROLLER_MANAGER_USER, server=server, cluster_name=cluster_name)
    return out


def from_files(found: Mapping[str, bytes]) -> TenantPKI | None:
    """The PKI read back from `files()` output, or None if a file is missing."""
    parts: dict[str, Any] = {}
    for field, stem in _FILES.items():
        crt, key = found.get(f"{stem}.crt"), found.get(f"{stem}.key")
        if not crt or not key:
            return None
        parts[field] = certs.CertKey(crt, key)
    sa = found.get("sa.key")
    if not sa:
        return None
    return TenantPKI(service_account_key_pem=sa, **parts)


def usable(pki: TenantPKI) -> bool:
    """Every certificate parses and matches its key (a truncated or edited file does not)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        for pair in (pki.root_ca, pki.apiserver, pki.etcd, pki.front_proxy, pki.controller_manager,
                     pki.admin, pki.kubelet_client):
            cert = x509.load_pem_x509_certificate(pair.cert_pem)
            key = serialization.load_pem_private_key(pair.key_pem, password=None)
            fmt = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
                return False
        serialization.load_pem_private_key(pki.service_account_key_pem, password=None)
    except ValueError:
        return False
    return True


FILE_NAMES = tuple(
    [f"{stem}.{ext}" for stem in _FILES.values() for ext in ("crt", "key")]
    + ["sa.key", "sa.pub", "admin.kubeconfig", "controller-manager.kubeconfig"]
)
