"""Certificate renewal of a tenant: when it is due, and that a renewed leaf says what the old one said."""

from __future__ import annotations

import datetime as dt
import functools

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.manager import certrotation, model, pkisecrets, renewals
from appliance.pki import certs

REQ = pkisecrets.PKIRequest(
    cluster_key="ns-fd1b34-vc1", vc_name="vc1", apiserver_dns=("localhost", "vc.example.com"),
    apiserver_ips=("127.0.0.1", "10.1.2.3"), etcd_dns=("localhost",), days=10,
)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@functools.cache
def pki() -> pkisecrets.TenantPKI:
    return pkisecrets.build(REQ)


def _names(ck: certs.CertKey) -> tuple[object, ...]:
    cert = ck.cert
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = (sorted(sans.get_values_for_type(x509.DNSName)),
                 sorted(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)))
    except x509.ExtensionNotFound:
        names = ([], [])
    usages = sorted(u.dotted_string for u in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    return cert.subject.rfc4514_string(), names, usages


def test_renewed_leaves_keep_every_identity_and_get_new_keys_and_dates() -> None:
    """Subject (CN and groups), names and usages are kept; keys, serials and dates are new; CA and SA key stay."""
    old = pki()
    new = certrotation.renewed(old, valid_for=dt.timedelta(days=30), now=T0)
    assert new.root_ca == old.root_ca
    assert new.service_account_key_pem == old.service_account_key_pem
    ca_key = old.root_ca.cert.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    for leaf in certrotation.LEAVES:
        before, after = getattr(old, leaf), getattr(new, leaf)
        assert _names(after) == _names(before), leaf
        assert after.key_pem != before.key_pem and after.cert.serial_number != before.cert.serial_number
        assert after.cert.not_valid_after_utc == T0 + dt.timedelta(days=30)
        after.cert.verify_directly_issued_by(old.root_ca.cert)  # raises if the CA did not sign it
    assert pkisecrets.usable(new)


def test_renewal_is_due_at_the_fraction_of_the_shortest_leaf() -> None:
    """Due at 80 % of the earliest leaf's validity (backdating included), never for the CA."""
    old = pki()
    at = certrotation.next_renewal(old, fraction=0.8)
    cert = old.apiserver.cert
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert at == cert.not_valid_before_utc + span * 0.8
    assert certrotation.next_renewal(old, fraction=0.5) < at
    assert certrotation.not_after(old) == min(getattr(old, leaf).cert.not_valid_after_utc
                                               for leaf in certrotation.LEAVES)


def test_short_lifetimes_are_backdated_by_a_tenth_at_most() -> None:
    """A 60 s certificate is not backdated by 5 min (it would be due at once)."""
    leaf = certs.issue(pki().root_ca, common_name="x", client=True, lifetime=dt.timedelta(seconds=60), now=T0)
    assert leaf.cert.not_valid_before_utc == T0 - dt.timedelta(seconds=6)
    assert certs.renew_at(leaf.cert_pem, 0.8) > T0 + dt.timedelta(seconds=40)


def test_lifetime_honours_pki_expire_days_unless_overridden() -> None:
    assert certrotation.lifetime(7) == dt.timedelta(days=7)
    assert certrotation.lifetime(None) == dt.timedelta(days=pkisecrets.DEFAULT_DAYS)
    assert certrotation.lifetime(7, override_seconds=90) == dt.timedelta(seconds=90)


def test_a_request_counts_once() -> None:
    """The annotation asks for a renewal only while its value differs from the last one acted on."""
    ann = model.ANNOTATION_ROTATE_CERTIFICATES
    assert certrotation.requested({}, ann, certrotation.State()) == ""
    assert certrotation.requested({ann: "t1"}, ann, certrotation.State()) == "t1"
    assert certrotation.requested({ann: "t1"}, ann, certrotation.State(requested="t1")) == ""
    assert certrotation.requested({ann: "t2"}, ann, certrotation.State(requested="t1")) == "t2"


@pytest.mark.parametrize(("status", "message", "done"), [
    ("True", "certificates renewed on request T1, valid until X", True),
    ("True", "certificates renewed on request T0, valid until X", False),
    ("False", "certificates renewed on request T1", False),
])
def test_the_cli_waits_for_its_own_request(status: str, message: str, done: bool) -> None:
    vc = model.VirtualCluster(status=model.VirtualClusterStatus(conditions=[model.Condition(
        type=model.COND_CERTIFICATES, status=status, reason=model.REASON_CERTIFICATES_RENEWED, message=message)]))
    assert (renewals.reported(vc, "T1") is not None) is done
