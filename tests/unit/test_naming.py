"""Cluster keys, super namespace names and DNS-1123 checks (SPEC §3.3)."""

from __future__ import annotations

import hashlib

import pytest

from appliance.util import naming

UID = "d64ea0c0-91f8-46f5-8643-c0cab32ab0cd"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a", True, id="single-char"),
        pytest.param("ns-fd1b34-name", True, id="cluster-key"),
        pytest.param("0abc9", True, id="leading-digit"),
        pytest.param("a--b", True, id="double-dash"),
        pytest.param("a" * 63, True, id="63-chars"),
        pytest.param("a" * 64, False, id="64-chars"),
        pytest.param("", False, id="empty"),
        pytest.param("-a", False, id="leading-dash"),
        pytest.param("a-", False, id="trailing-dash"),
        pytest.param("A", False, id="upper-case"),
        pytest.param("a.b", False, id="dot"),
        pytest.param("a_b", False, id="underscore"),
    ],
)
def test_is_dns1123_label(value: str, expected: bool) -> None:
    """Only lower-case alphanumerics and inner dashes, up to 63 characters, are labels."""
    assert expected == naming.is_dns1123_label(value)


@pytest.mark.parametrize(
    ("args", "cluster_namespace", "expected"),
    [
        pytest.param(("ns", "name", UID), "", "ns-fd1b34-name", id="original-example"),
        pytest.param(("ns", "name", UID), "custom-root", "custom-root", id="status-wins"),
        pytest.param(("a" * 200, "b.c", UID), "already-set", "already-set", id="status-wins-over-shortening"),
        pytest.param(
            ("default", "vc-sample-1", "11111111-2222-3333-4444-555555555555"),
            "",
            "default-" + hashlib.sha256(b"11111111-2222-3333-4444-555555555555").hexdigest()[:6] + "-vc-sample-1",
            id="sample-vc",
        ),
    ],
)
def test_cluster_key_compatible(args: tuple[str, str, str], cluster_namespace: str, expected: str) -> None:
    """Short valid keys keep the original `<ns>-<6 hex>-<name>` form; status.clusterNamespace wins."""
    assert expected == naming.cluster_key(*args, cluster_namespace=cluster_namespace)


@pytest.mark.parametrize(
    ("vc_namespace", "vc_name"),
    [
        pytest.param("a-very-long-namespace-name", "and-an-even-longer-virtualcluster-name", id="both-long"),
        pytest.param("default", "x" * 60, id="long-name"),
        pytest.param("n" * 60, "vc", id="long-namespace"),
        pytest.param("ns", "my.vc", id="dotted-name"),
        pytest.param("Upper", "VC", id="upper-case"),
        pytest.param("...", "...", id="nothing-valid"),
        pytest.param("ns", "x" * 23, id="just-over-limit"),
    ],
)
def test_cluster_key_shortened_is_valid(vc_namespace: str, vc_name: str) -> None:
    """Long or invalid keys become DNS-1123 labels of at most CLUSTER_KEY_MAX characters."""
    key = naming.cluster_key(vc_namespace, vc_name, UID)
    assert naming.is_dns1123_label(key)
    assert len(key) <= naming.CLUSTER_KEY_MAX


def test_cluster_key_limit_boundary() -> None:
    """A valid key of exactly CLUSTER_KEY_MAX characters is kept verbatim, one more is hashed."""
    name = "x" * (naming.CLUSTER_KEY_MAX - len("ns-fd1b34-"))
    assert f"ns-fd1b34-{name}" == naming.cluster_key("ns", name, UID)
    assert not naming.cluster_key("ns", name + "x", UID).startswith("ns-fd1b34-")


def test_cluster_key_shortened_keeps_readable_parts() -> None:
    """A shortened key starts with the namespace and keeps a prefix of the VC name."""
    key = naming.cluster_key("default", "a-rather-long-virtual-cluster-name", UID)
    assert key.startswith("default-a-rather-long")


def test_cluster_key_shortened_is_deterministic_and_distinct() -> None:
    """The same VC always gets the same short key; another UID or name gets another one."""
    long_name = "v" * 50
    first = naming.cluster_key("ns", long_name, UID)
    assert first == naming.cluster_key("ns", long_name, UID)
    assert first != naming.cluster_key("ns", long_name, "another-uid")
    assert first != naming.cluster_key("ns", long_name + "w", UID)


def test_cluster_key_leaves_room_for_common_namespaces() -> None:
    """Any computed key maps `kube-node-lease` without hashing (key + dash + 15 ≤ 63)."""
    key = naming.cluster_key("n" * 100, "v" * 100, UID)
    assert f"{key}-kube-node-lease" == naming.super_namespace(key, "kube-node-lease")


def _hashed(text: str) -> str:
    return text[:57] + "-" + hashlib.sha256(text.encode()).hexdigest()[:5]


@pytest.mark.parametrize(
    ("cluster", "namespace", "expected"),
    [
        pytest.param("ns-fd1b34-name", "default", "ns-fd1b34-name-default", id="short"),
        pytest.param("k" * 31, "n" * 31, "k" * 31 + "-" + "n" * 31, id="exactly-63"),
        pytest.param("k" * 31, "n" * 32, _hashed("k" * 31 + "-" + "n" * 32), id="64-hashed"),
        pytest.param("key", "x" * 63, _hashed("key-" + "x" * 63), id="long-tenant-ns"),
    ],
)
def test_super_namespace(cluster: str, namespace: str, expected: str) -> None:
    """`<key>-<ns>`, or its first 57 characters, a dash and 5 hex of its SHA-256 beyond 63."""
    assert expected == naming.super_namespace(cluster, namespace)


def test_super_namespace_hashed_length() -> None:
    """A hashed super namespace is exactly 63 characters long and distinct per tenant namespace."""
    first = naming.super_namespace("k" * 40, "n" * 30 + "a")
    second = naming.super_namespace("k" * 40, "n" * 30 + "b")
    assert 63 == len(first) == len(second)
    assert first != second


def test_reserved_prefixes() -> None:
    """Both built-in prefixes are reserved, and every tenancy key starts with one of them."""
    assert ("tenancy.x-k8s.io", "transparency.tenancy.x-k8s.io") == naming.RESERVED_PREFIXES
    keys = [v for k, v in vars(naming).items() if k.startswith(("LABEL_", "ANNOTATION_")) and "tenancy" in v]
    assert keys
    assert all(k.startswith(naming.RESERVED_PREFIXES) for k in keys)
