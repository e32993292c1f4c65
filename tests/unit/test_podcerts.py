"""podCertificate projections: the Secret stand-in, keys of every type, the issued data."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.syncer import mutation, podcerts


def _pod() -> dict[str, object]:
    return {"metadata": {"annotations": {"tenancy.x-k8s.io/uid": "uid-1"}}, "spec": {"volumes": [
        {"name": "plain", "emptyDir": {}},
        {"name": "creds", "projected": {"defaultMode": 0o644, "sources": [
            {"configMap": {"name": "x"}},
            {"podCertificate": {"signerName": "example.com/s", "keyType": "ED25519",
                                "credentialBundlePath": "bundle.pem", "keyPath": "k.pem"}},
        ]}},
    ]}}


def test_sources_are_found_by_volume_and_index_and_become_one_secret_per_pod() -> None:
    pod = _pod()
    (source,) = mutation.pod_certificate_sources(pod)
    assert (source.volume, source.index, source.key_prefix) == ("creds", 1, "creds.1")
    spec = pod["spec"]
    mutation._replace_pod_certificates(spec, "uid-1")  # type: ignore[arg-type]
    replaced = spec["volumes"][1]["projected"]["sources"][1]  # type: ignore[index]
    assert replaced == {"secret": {"name": mutation.pod_certificate_secret("uid-1"), "items": [
        {"key": "creds.1.bundle", "path": "bundle.pem"}, {"key": "creds.1.key", "path": "k.pem"}]}}
    assert spec["volumes"][1]["projected"]["sources"][0] == {"configMap": {"name": "x"}}  # type: ignore[index]
    assert mutation.pod_certificate_secret("uid-1") != mutation.pod_certificate_secret("uid-2")


@pytest.mark.parametrize("key_type", ["ED25519", "ECDSAP256", "ECDSAP384", "ECDSAP521", "RSA3072"])
def test_keys_of_every_type_come_with_a_stub_request_signed_by_them(key_type: str) -> None:
    key_pem, csr_der = podcerts.new_key(key_type)
    key = serialization.load_pem_private_key(key_pem, password=None)
    csr = x509.load_der_x509_csr(csr_der)
    assert csr.is_signature_valid and len(csr.subject) == 0
    assert csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        == key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(ValueError, match="unknown key type"):
        podcerts.new_key("DSA")


def test_issued_data_is_key_then_chain_like_the_kubelets() -> None:
    (source,) = mutation.pod_certificate_sources(_pod())
    data = podcerts.bundle_data(source, b"KEY\n", b"CHAIN\n")
    decoded = {k: base64.b64decode(v) for k, v in data.items()}
    assert decoded == {"creds.1.bundle": b"KEY\nCHAIN\n", "creds.1.key": b"KEY\n", "creds.1.chain": b"CHAIN\n"}
