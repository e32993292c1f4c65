"""Certificate authorities and leaf certificates, built with `cryptography`.

Pure builders: every function takes inputs and returns PEM bytes, nothing touches the
disk or the network, so tests and the provisioners share one implementation. Keys are
ECDSA P-256 (fast to generate, accepted by every Kubernetes component for serving,
client and service-account signing). Private key bytes are never logged; `CertKey`
hides them from `repr`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Clock skew tolerated between the host that signs and the servers that verify.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CertKey:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, hex; safe to log and to compare."""
        return self.cert.fingerprint(hashes.SHA256()).hex()


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(private_pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo PEM of a private key (for --service-account-key-file)."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    if common_name:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def new_ca(
    common_name: str,
    *,
    organizations: Sequence[str] = (),
    days: int = 3650,
    now: dt.datetime | None = None,
) -> CertKey:
    """A self-signed CA certificate valid for `days`."""
    now = now or dt.datetime.now(dt.UTC)
    key = new_private_key()
    subject = _name(common_name, organizations)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertKey(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def issue(
    ca: CertKey,
    *,
    common_name: str,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    server: bool = False,
    client: bool = False,
    days: int = 365,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta | None = None,
) -> CertKey:
    """A leaf certificate signed by `ca`, valid for `days` (or `lifetime`, when given).

    `organizations` become one O attribute each: Kubernetes reads them as groups. An empty
    `common_name` leaves the CN out (etcd's JSON gateway refuses client certificates with one
    once authentication is on). The validity never exceeds the CA's, so a short-lived CA cannot sign long leaves.
    """
    if not (server or client):
        raise ValueError("a leaf certificate needs server and/or client usage")
    now = now or dt.datetime.now(dt.UTC)
    ca_cert = ca.cert
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = new_private_key()
    valid = lifetime if lifetime is not None else dt.timedelta(days=days)
    not_after = min(now + valid, ca_cert.not_valid_after_utc)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - min(_BACKDATE, valid / 10))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return CertKey(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def content_hash(*parts: bytes) -> str:
    """sha256 hex over PEM material: a pod-template annotation that changes with the certs."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def renew_at(cert_pem: bytes, fraction: float) -> dt.datetime:
    """When `fraction` of the certificate's validity has passed (UTC): the time to renew it."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * fraction


def reissue(ca: CertKey, old_pem: bytes, *, lifetime: dt.timedelta, now: dt.datetime | None = None) -> CertKey:
    """A new key and certificate saying what `old_pem` said (subject, names, usages), signed by `ca`.

    Renewal keeps every identity the certificate carried, so whoever checks it (RBAC by CN
    and O, TLS by SAN) sees no difference but the dates.
    """
    old = x509.load_pem_x509_certificate(old_pem)
    cn = [a.value for a in old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [str(a.value) for a in old.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    try:
        sans = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = sans.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    try:
        usages = list(old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return issue(
        ca, common_name=str(cn[0]) if cn else "", organizations=orgs, dns_names=dns, ip_addresses=ips,
        server=ExtendedKeyUsageOID.SERVER_AUTH in usages, client=ExtendedKeyUsageOID.CLIENT_AUTH in usages,
        lifetime=lifetime, now=now,
    )
