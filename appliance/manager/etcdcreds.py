"""Credentials of the shared etcd: its CA, certificates and root password, made at run time.

Layout of `<data_dir>/etcd/pki/` (0700; files 0600; nothing of it is shipped or logged):

    ca.crt ca.key          the appliance's etcd CA, the only issuer the shared etcd trusts
    server.crt server.key  serving and peer certificate (127.0.0.1, localhost); it has client
                           usage too, because etcd's JSON gateway and peer transport dial etcd with it
    admin.crt admin.key    the appliance's own client certificate. It has no CN: once auth is on,
                           etcd's gateway refuses client certificates that carry one (it would
                           not use the CN anyway), so the appliance logs in as `root` with
    root.password          this password, and sends the token it gets back.

A tenant on the shared etcd gets `etcd-ca.crt` and `etcd-client.{crt,key}` (CN = its etcd user)
in its own pki directory; its apiserver speaks gRPC, where etcd takes the CN as the user name.
Certificates live as long as the CA (ten years) and are issued again when missing, damaged,
issued by another CA or within 30 days of expiry. Blocking (files, key generation): run in a thread.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from appliance.controlplane import cluster
from appliance.controlplane.components import TLSFiles
from appliance.pki import certs
from appliance.util import private

CA_DAYS = 3650
RENEW_BEFORE = dt.timedelta(days=30)
SERVER_CN = "vc-appliance-etcd"
ADMIN_ORG = "vc-appliance"
TENANT_FILES = ("etcd-ca.crt", "etcd-client.crt", "etcd-client.key")


@dataclass(frozen=True, slots=True)
class SharedEtcdCreds:
    """Where the shared etcd's credentials are; the password is read only when needed."""

    dir: Path

    @property
    def server(self) -> TLSFiles:
        return TLSFiles(self.dir / "ca.crt", self.dir / "server.crt", self.dir / "server.key")

    @property
    def admin(self) -> TLSFiles:
        return TLSFiles(self.dir / "ca.crt", self.dir / "admin.crt", self.dir / "admin.key")

    @property
    def password_file(self) -> Path:
        return self.dir / "root.password"

    def root_password(self) -> str:
        return self.password_file.read_text().strip()


def _read_pair(crt: Path, key: Path) -> certs.CertKey | None:
    try:
        return certs.CertKey(crt.read_bytes(), key.read_bytes())
    except OSError:
        return None


def _fresh(pair: certs.CertKey | None, *, ca: certs.CertKey, common_name: str | None) -> bool:
    """`pair` parses, matches its key, was issued by `ca`, is not near expiry, and names
    `common_name` ("": no CN; None: any)."""
    if pair is None:
        return False
    try:
        cert = pair.cert
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    spki = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (
        cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
        and (common_name is None or [n.value for n in names] == ([common_name] if common_name else []))
        and cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE
    )


def _write_pair(crt: Path, key: Path, pair: certs.CertKey) -> None:
    private.write_file(key, pair.key_pem)
    private.write_file(crt, pair.cert_pem)


def _ca(pki_dir: Path) -> certs.CertKey:
    """The CA on disk, or a new one (written): every certificate of the old one is re-issued."""
    ca = _read_pair(pki_dir / "ca.crt", pki_dir / "ca.key")
    if ca is not None and _fresh(ca, ca=ca, common_name=None):
        return ca
    ca = certs.new_ca("vc-appliance-etcd-ca", days=CA_DAYS)
    _write_pair(pki_dir / "ca.crt", pki_dir / "ca.key", ca)
    return ca


def ensure(pki_dir: Path) -> SharedEtcdCreds:
    """The shared etcd's credentials in `pki_dir`, made or renewed where needed.

    `pki_dir` and its parent (the shared etcd's state directory) become 0700.
    """
    for d in (pki_dir.parent, pki_dir):
        private.make_dir(d)
    ca = _ca(pki_dir)
    creds = SharedEtcdCreds(pki_dir)
    server = creds.server
    if not _fresh(_read_pair(server.cert, server.key), ca=ca, common_name=SERVER_CN):
        _write_pair(server.cert, server.key, certs.issue(
            ca, common_name=SERVER_CN, dns_names=("localhost",), ip_addresses=(cluster.LOOPBACK,),
            server=True, client=True, days=CA_DAYS))
    admin = creds.admin
    if not _fresh(_read_pair(admin.cert, admin.key), ca=ca, common_name=""):
        _write_pair(admin.cert, admin.key, certs.issue(
            ca, common_name="", organizations=(ADMIN_ORG,), client=True, days=CA_DAYS))
    if not creds.password_file.exists():
        private.write_file(creds.password_file, secrets.token_urlsafe(32))
    return creds


def issue_client(creds: SharedEtcdCreds, *, user: str, out_dir: Path) -> TLSFiles:
    """A client certificate for etcd user `user` in `out_dir` (kept if still good)."""
    ca_crt, crt, key = (out_dir / name for name in TENANT_FILES)
    ca = _read_pair(creds.server.ca, creds.dir / "ca.key")
    if ca is None:
        raise FileNotFoundError(f"the shared etcd's CA is missing in {creds.dir}")
    if not _fresh(_read_pair(crt, key), ca=ca, common_name=user):
        _write_pair(crt, key, certs.issue(ca, common_name=user, client=True, days=CA_DAYS))
    if not ca_crt.exists() or ca_crt.read_bytes() != ca.cert_pem:
        private.write_file(ca_crt, ca.cert_pem)
    return TLSFiles(ca_crt, crt, key)
