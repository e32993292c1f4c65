"""ClusterTrustBundle projections: the selection, the ConfigMap stand-in and its PEM content."""

from __future__ import annotations

import base64

import pytest

from appliance.syncer import mutation, trustbundles
from appliance.syncer.trustbundles import NothingMatches, configmap_data, pem_certificates, selector_string

DER_A, DER_B = b"\x30\x03\x01\x01\xff", b"\x30\x03\x02\x01\x07"


def pem(der: bytes, *, headers: str = "") -> str:
    return f"-----BEGIN CERTIFICATE-----\n{headers}{base64.b64encode(der).decode()}\n-----END CERTIFICATE-----\n"


def bundle(*pems: str) -> dict[str, object]:
    return {"spec": {"trustBundle": "".join(pems)}}


def test_selector_strings_follow_the_label_selector_grammar() -> None:
    assert selector_string({}) == ""
    assert selector_string({"matchLabels": {"b": "2", "a": "1"}}) == "a=1,b=2"
    assert selector_string({"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["y", "x"]},
        {"key": "env", "operator": "NotIn", "values": ["dev"]},
        {"key": "alive", "operator": "Exists"},
        {"key": "dead", "operator": "DoesNotExist"},
    ]}) == "tier in (x,y),env notin (dev),alive,!dead"
    with pytest.raises(NothingMatches):
        selector_string(None)


def test_certificates_are_deduplicated_and_stripped_of_headers_and_text_between_blocks() -> None:
    text = "comment\n" + pem(DER_B) + "junk\n" + pem(DER_A, headers="Proc-Type: 4\n\n") + pem(DER_B)
    assert pem_certificates([bundle(text), bundle(pem(DER_A))]) == sorted([DER_A, DER_B])


def test_configmap_data_has_the_blocking_key_only_when_something_matched() -> None:
    matched = configmap_data([bundle(pem(DER_A))])
    assert matched[mutation.TRUST_BUNDLE_KEY] == matched[mutation.TRUST_BUNDLE_OR_EMPTY_KEY] == pem(DER_A)
    assert configmap_data([]) == {mutation.TRUST_BUNDLE_OR_EMPTY_KEY: ""}


def _pod(*sources: dict[str, object]) -> dict[str, object]:
    return {"spec": {"volumes": [{"name": "ctb", "projected": {"defaultMode": 0o644, "sources": [
        {"clusterTrustBundle": s} for s in sources]}}]}}


def test_projections_become_configmap_sources_named_by_their_selection() -> None:
    by_name = {"name": "corp-root", "path": "a.pem"}
    by_signer = {"signerName": "example.com/s", "labelSelector": {}, "path": "b.pem", "optional": True}
    pod = _pod(by_name, by_signer, {"name": "corp-root", "path": "c.pem"})
    assert mutation.trust_bundle_sources(pod) == [by_name, by_signer, {"name": "corp-root", "path": "c.pem"}]
    spec = pod["spec"]
    mutation._replace_trust_bundles(spec)  # type: ignore[arg-type]
    sources = spec["volumes"][0]["projected"]["sources"]  # type: ignore[index]
    first, second, third = (s["configMap"] for s in sources)
    assert first["name"] == third["name"] != second["name"]
    assert first["name"].startswith(mutation.TRUST_BUNDLE_CONFIGMAP_PREFIX) and len(first["name"]) <= 63
    assert first["items"] == [{"key": mutation.TRUST_BUNDLE_KEY, "path": "a.pem"}]
    assert second["items"] == [{"key": mutation.TRUST_BUNDLE_OR_EMPTY_KEY, "path": "b.pem"}]
    # nil and empty selectors select different things, so they get different ConfigMaps.
    nil = mutation.trust_bundle_selection({"signerName": "example.com/s"})
    empty = mutation.trust_bundle_selection({"signerName": "example.com/s", "labelSelector": {}})
    assert mutation.trust_bundle_configmap(nil) != mutation.trust_bundle_configmap(empty)


def test_the_module_encodes_plain_64_column_pem() -> None:
    der = bytes(range(256))
    text = trustbundles.encode_pem([der])
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN CERTIFICATE-----" and lines[-1] == "-----END CERTIFICATE-----"
    assert all(len(line) == 64 for line in lines[1:-2]) and 0 < len(lines[-2]) <= 64
    assert pem_certificates([bundle(text)]) == [der]
