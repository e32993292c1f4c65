"""The shared etcd's credentials on disk: what each certificate says, file modes, reuse and renewal."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.manager import etcdcreds
from appliance.pki import certs


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cns(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_credentials_are_made_private_and_say_what_etcd_needs(tmp_path: Path) -> None:
    """Server: loopback SANs and client usage (the gateway dials etcd with it); admin: no CN; all 0600."""
    creds = etcdcreds.ensure(tmp_path / "etcd" / "pki")
    server = _cert(creds.server.cert)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert _usages(server) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    admin = _cert(creds.admin.cert)
    assert _cns(admin) == [] and _usages(admin) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert len(creds.root_password()) >= 32
    assert {stat.S_IMODE(d.stat().st_mode) for d in (creds.dir, creds.dir.parent)} == {0o700}
    assert {stat.S_IMODE(p.stat().st_mode) for p in creds.dir.iterdir()} == {0o600}


def test_credentials_are_kept_across_starts_and_damaged_ones_replaced(tmp_path: Path) -> None:
    """A second start changes nothing; a damaged server certificate is issued again by the same CA."""
    creds = etcdcreds.ensure(tmp_path / "pki")
    before = {p.name: p.read_bytes() for p in (tmp_path / "pki").iterdir()}
    etcdcreds.ensure(tmp_path / "pki")
    assert {p.name: p.read_bytes() for p in (tmp_path / "pki").iterdir()} == before
    creds.server.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ntorn")
    etcdcreds.ensure(tmp_path / "pki")
    after = {p.name: p.read_bytes() for p in (tmp_path / "pki").iterdir()}
    assert after["server.crt"] != before["server.crt"]
    assert {n: v for n, v in after.items() if not n.startswith("server.")} == {
        n: v for n, v in before.items() if not n.startswith("server.")}


def test_tenant_client_certificate_names_its_user_and_follows_the_ca(tmp_path: Path) -> None:
    """The tenant's CN is its etcd user; kept while good, issued again when the CA changed."""
    creds = etcdcreds.ensure(tmp_path / "etcd")
    out = tmp_path / "tenant"
    out.mkdir()
    files = etcdcreds.issue_client(creds, user="tenant-k", out_dir=out)
    cert = _cert(files.cert)
    assert _cns(cert) == ["tenant-k"] and _usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert files.ca.read_bytes() == creds.server.ca.read_bytes()
    first = files.cert.read_bytes()
    assert etcdcreds.issue_client(creds, user="tenant-k", out_dir=out).cert.read_bytes() == first
    new_ca = certs.new_ca("other")
    creds.server.ca.write_bytes(new_ca.cert_pem)
    (creds.dir / "ca.key").write_bytes(new_ca.key_pem)
    again = etcdcreds.issue_client(creds, user="tenant-k", out_dir=out)
    assert again.cert.read_bytes() != first
    assert files.ca.read_bytes() == new_ca.cert_pem
    _cert(again.cert).verify_directly_issued_by(new_ca.cert)
