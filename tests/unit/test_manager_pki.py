"""The tenant PKI: what each certificate says, the secrets' names and keys, and reading them back."""

from __future__ import annotations

import base64
import datetime as dt
import functools

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.manager import pkisecrets
from appliance.pki import certs

REQ = pkisecrets.PKIRequest(
    cluster_key="ns-fd1b34-vc1", vc_name="vc1", cluster_domain="corp.local",
    apiserver_dns=("apiserver-svc.ns-fd1b34-vc1", "vc.example.com"), apiserver_ips=("10.32.0.10",),
    etcd_dns=("etcd-0.etcd", "etcd"), days=30,
)
SERVER = "https://apiserver-svc.ns-fd1b34-vc1:6443"


@functools.cache
def pki() -> pkisecrets.TenantPKI:
    return pkisecrets.build(REQ)


def _cn(ck: certs.CertKey) -> str:
    return str(ck.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _orgs(ck: certs.CertKey) -> list[str]:
    return [str(a.value) for a in ck.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def _usages(ck: certs.CertKey) -> set[x509.ObjectIdentifier]:
    return set(ck.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _sans(ck: certs.CertKey) -> tuple[list[str], list[str]]:
    ext = ck.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [str(i) for i in ext.get_values_for_type(x509.IPAddress)]


def test_root_ca_is_the_originals_and_lives_ten_years() -> None:
    """The root CA has the original subject and at least ten years."""
    ca = pki().root_ca.cert
    assert _cn(pki().root_ca) == "kubernetes"
    assert _orgs(pki().root_ca) == [pkisecrets.ROOT_CA_ORG]
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= dt.timedelta(days=3650)


def test_apiserver_certificate_names_the_tenant() -> None:
    """CN is the cluster key; SANs cover the kubernetes names, the VC name and the given hosts."""
    ck = pki().apiserver
    dns, ips = _sans(ck)
    assert _cn(ck) == "ns-fd1b34-vc1"
    assert dns == ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.corp.local",
                   "vc1", "apiserver-svc.ns-fd1b34-vc1", "vc.example.com"]
    assert ips == ["10.32.0.10"]
    assert _usages(ck) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_leaf_lifetime_follows_pki_expire_days() -> None:
    """pkiExpireDays (30 here) sets every leaf's lifetime."""
    for ck in (pki().apiserver, pki().etcd, pki().admin, pki().kubelet_client):
        life = ck.cert.not_valid_after_utc - ck.cert.not_valid_before_utc
        assert dt.timedelta(days=30) <= life <= dt.timedelta(days=30, minutes=10)


@pytest.mark.parametrize(("field", "cn", "orgs"), [
    pytest.param("etcd", "kube-etcd", [], id="etcd"),
    pytest.param("front_proxy", "front-proxy-client", [], id="front-proxy"),
    pytest.param("controller_manager", "system:kube-controller-manager", [], id="controller-manager"),
    pytest.param("admin", "admin", ["system:masters"], id="admin"),
    pytest.param("kubelet_client", "ns-fd1b34-vc1", [], id="kubelet-client"),
])
def test_subjects(field: str, cn: str, orgs: list[str]) -> None:
    """Each certificate has the original's subject; the kubelet client is named after the tenant."""
    ck: certs.CertKey = getattr(pki(), field)
    assert (_cn(ck), _orgs(ck)) == (cn, orgs)
    assert ck.cert.issuer == pki().root_ca.cert.subject  # issued directly by the tenant root CA


def test_secrets_have_the_original_names_types_and_keys() -> None:
    """Eight secrets: the original seven plus kubelet-client, with the original data keys."""
    secrets = {s["metadata"]["name"]: s for s in pkisecrets.secrets(pki(), namespace="root", server=SERVER,
                                                                      cluster_name="vc1")}
    assert {s["metadata"]["namespace"] for s in secrets.values()} == {"root"}
    layout = {name: (s["type"], sorted(s["data"])) for name, s in secrets.items()}
    tls = ("kubernetes.io/tls", ["tls.crt", "tls.key"])
    assert layout == {
        "root-ca": tls, "apiserver-ca": tls, "etcd-ca": tls, "front-proxy-ca": tls, "serviceaccount-rsa": tls,
        "controller-manager-kubeconfig": ("Opaque", ["controller-manager-kubeconfig"]),
        "admin-kubeconfig": ("Opaque", ["admin-kubeconfig"]), "kubelet-client": tls,
    }
    sa_public = base64.b64decode(secrets["serviceaccount-rsa"]["data"]["tls.crt"])
    assert sa_public.startswith(b"-----BEGIN PUBLIC KEY-----")
    admin = yaml.safe_load(base64.b64decode(secrets["admin-kubeconfig"]["data"]["admin-kubeconfig"]))
    assert admin["clusters"][0]["name"] == "vc1"
    assert admin["clusters"][0]["cluster"]["server"] == SERVER
    assert base64.b64decode(admin["clusters"][0]["cluster"]["certificate-authority-data"]) == pki().root_ca.cert_pem
    assert admin["users"][0]["name"] == "admin"
    assert admin["contexts"] == [{"name": "default", "context": {"cluster": "vc1", "user": "admin"}}]
    assert admin["current-context"] == "default"


def test_secrets_and_files_read_back_to_the_same_pki() -> None:
    """Nothing is lost between the PKI, its secrets and its files."""
    secrets = pkisecrets.secrets(pki(), namespace="root", server=SERVER, cluster_name="vc1")
    assert pkisecrets.from_secrets({s["metadata"]["name"]: s for s in secrets}) == pki()
    files = pkisecrets.files(pki(), server=SERVER, cluster_name="vc1")
    assert set(files) == set(pkisecrets.FILE_NAMES)
    assert pkisecrets.from_files(files) == pki()


def test_incomplete_secrets_or_files_read_back_as_none() -> None:
    """A missing piece means the PKI must be issued again, never half-reused."""
    secrets = {s["metadata"]["name"]: s for s in pkisecrets.secrets(pki(), namespace="r", server=SERVER,
                                                                      cluster_name="vc1")}
    del secrets["kubelet-client"]
    assert pkisecrets.from_secrets(secrets) is None
    files = pkisecrets.files(pki(), server=SERVER, cluster_name="vc1")
    del files["sa.key"]
    assert pkisecrets.from_files(files) is None


def test_existing_root_ca_is_reused() -> None:
    """Given a root CA, the new PKI is issued by it (as the original reuses `root-ca`)."""
    again = pkisecrets.build(REQ, root_ca=pki().root_ca)
    assert again.root_ca == pki().root_ca
    assert again.apiserver != pki().apiserver
    assert again.apiserver.cert.issuer == pki().root_ca.cert.subject
