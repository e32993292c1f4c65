"""Tenant → super object conversion, back-tracing and per-kind rewrites (SPEC §3.3, §3.4, §3.7)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from appliance.syncer import conversion
from appliance.util import naming

KEY = "ns-fd1b34-name"
COMMON: dict[str, Any] = {"cluster_key": KEY, "vc_name": "name", "vc_namespace": "ns", "vc_uid": "vc-uid"}


def tenant_cm(**meta: Any) -> dict[str, Any]:
    """A tenant ConfigMap with full server-set metadata."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "cfg",
            "namespace": "app",
            "uid": "cm-uid",
            "resourceVersion": "42",
            "generation": 3,
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "selfLink": "/api/v1/namespaces/app/configmaps/cfg",
            "finalizers": ["example.com/f"],
            "managedFields": [{"manager": "kubectl"}],
            "deletionGracePeriodSeconds": 30,
            "deletionTimestamp": "2024-01-02T00:00:00Z",
            "labels": {"app": "web"},
            "annotations": {"note": "x"},
            **meta,
        },
        "data": {"k": "v"},
    }


def build(obj: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return conversion.build_super_object(obj, super_ns=f"{KEY}-app", **COMMON, **kwargs)


@pytest.mark.parametrize(
    ("key", "prefixes", "expected"),
    [
        pytest.param("app", (), False, id="plain-key"),
        pytest.param("k", (), False, id="single-char"),
        pytest.param("m.opaque.io/x", (), False, id="foreign-domain"),
        pytest.param("kubernetes.io/x", (), True, id="domain-exact"),
        pytest.param("app.kubernetes.io/name", (), True, id="subdomain"),
        pytest.param("m.kubernetes.io", (), True, id="whole-key-is-subdomain"),
        pytest.param("node-role.k8s.io/x", (), True, id="k8s-io"),
        pytest.param("xkubernetes.io/x", (), False, id="suffix-not-on-label-boundary"),
        pytest.param("example.com/kubernetes.io", (), False, id="domain-only-before-slash"),
        pytest.param("tenancy.x-k8s.io/cluster", (), True, id="tenancy-reserved"),
        pytest.param("tenancy.x-k8s.io.evil/x", (), True, id="tenancy-prefix-textual"),
        pytest.param("transparency.tenancy.x-k8s.io/clusterIP", (), True, id="transparency-reserved"),
        pytest.param("secret.corp/x", ("secret.corp",), True, id="vc-opaque-prefix"),
        pytest.param("secret.corp/x", ("",), False, id="empty-prefix-ignored"),
    ],
)
def test_is_opaque_key(key: str, prefixes: tuple[str, ...], expected: bool) -> None:
    """Reserved prefixes, VC opaque prefixes and opaque domains (whole labels) are opaque."""
    assert expected == conversion.is_opaque_key(key, prefixes=prefixes)


def test_build_super_object_resets_metadata_and_stamps_tenancy() -> None:
    """Server-owned metadata is cleared; tenancy annotations and labels are stamped; data passes."""
    pobj = build(tenant_cm())
    assert {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "cfg",
            "namespace": f"{KEY}-app",
            "labels": {"app": "web", naming.LABEL_VC_NAME: "name", naming.LABEL_VC_NAMESPACE: "ns"},
            "annotations": {
                "note": "x",
                naming.ANNOTATION_CLUSTER: KEY,
                naming.ANNOTATION_UID: "cm-uid",
                naming.ANNOTATION_OWNER_REFERENCES: "null",
                naming.ANNOTATION_NAMESPACE: "app",
                naming.ANNOTATION_VC_NAME: "name",
                naming.ANNOTATION_VC_NAMESPACE: "ns",
                naming.ANNOTATION_VC_UID: "vc-uid",
            },
        },
        "data": {"k": "v"},
    } == pobj


@pytest.mark.parametrize(
    ("owners", "expected"),
    [
        pytest.param(None, "null", id="absent"),
        pytest.param([], "null", id="empty"),
        pytest.param(
            [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": True}],
            '[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"rs","uid":"u1","controller":true}]',
            id="one-owner",
        ),
    ],
)
def test_owner_references_annotation(owners: list[dict[str, Any]] | None, expected: str) -> None:
    """Tenant ownerReferences are kept as compact JSON in an annotation ("null" when none)."""
    obj = tenant_cm(ownerReferences=owners) if owners is not None else tenant_cm()
    pobj = build(obj)
    assert expected == pobj["metadata"]["annotations"][naming.ANNOTATION_OWNER_REFERENCES]
    assert "ownerReferences" not in pobj["metadata"]
    if owners:
        assert owners == json.loads(expected)


def test_tenant_cannot_forge_tenancy_keys() -> None:
    """Tenancy and transparency keys set by the tenant are stripped before ours are stamped."""
    forged = {
        naming.ANNOTATION_CLUSTER: "other-tenant",
        naming.ANNOTATION_UID: "victim-uid",
        naming.ANNOTATION_NAMESPACE: "kube-system",
        naming.ANNOTATION_TRANSPARENT_CLUSTER_IP: "1.2.3.4",
        naming.ANNOTATION_SECRET_NAME: "victim",
        "tenancy.x-k8s.io/anything": "x",
    }
    forged_labels = {naming.LABEL_CLUSTER: "other", naming.LABEL_SECRET_UID: "u", naming.LABEL_CONTROLLED: "true"}
    pobj = build(tenant_cm(annotations=forged, labels=forged_labels))
    annotations, labels = pobj["metadata"]["annotations"], pobj["metadata"]["labels"]
    assert KEY == annotations[naming.ANNOTATION_CLUSTER]
    assert "cm-uid" == annotations[naming.ANNOTATION_UID]
    assert "app" == annotations[naming.ANNOTATION_NAMESPACE]
    for key in (naming.ANNOTATION_TRANSPARENT_CLUSTER_IP, naming.ANNOTATION_SECRET_NAME, "tenancy.x-k8s.io/anything"):
        assert key not in annotations
    assert {naming.LABEL_VC_NAME: "name", naming.LABEL_VC_NAMESPACE: "ns"} == labels
    assert (KEY, "app", "cfg") == conversion.tenant_object_ref(pobj)


@pytest.mark.parametrize(
    ("labels", "opaque_prefixes", "expected"),
    [
        pytest.param({"app.kubernetes.io/name": "x", "k": "v"}, (), {"k": "v"}, id="opaque-domain"),
        pytest.param({"m.opaque.io/x": "1"}, (), {"m.opaque.io/x": "1"}, id="other-domain-kept"),
        pytest.param({"corp.io/a": "1", "b": "2"}, ("corp.io",), {"b": "2"}, id="vc-opaque-prefix"),
        pytest.param({}, (), {}, id="empty"),
    ],
)
def test_build_strips_opaque_labels(
    labels: dict[str, str], opaque_prefixes: tuple[str, ...], expected: dict[str, str]
) -> None:
    """Opaque prefixes and domains are dropped from labels; our labels are added."""
    pobj = build(tenant_cm(labels=labels), opaque_prefixes=opaque_prefixes)
    assert {**expected, naming.LABEL_VC_NAME: "name", naming.LABEL_VC_NAMESPACE: "ns"} == pobj["metadata"]["labels"]


def test_build_controlled_label() -> None:
    """With SuperClusterLabelling the controlled label is added."""
    assert "true" == build(tenant_cm(), controlled=True)["metadata"]["labels"][naming.LABEL_CONTROLLED]


def test_build_does_not_touch_input_and_passes_unknown_fields() -> None:
    """The input is not mutated, and fields the syncer does not own (even unknown ones) pass."""
    obj = tenant_cm()
    obj["futureField"] = {"nested": [1, {"x": None}]}
    obj["metadata"]["futureMeta"] = "y"
    before = copy.deepcopy(obj)
    pobj = build(obj)
    assert before == obj
    assert {"nested": [1, {"x": None}]} == pobj["futureField"]
    assert "y" == pobj["metadata"]["futureMeta"]
    pobj["futureField"]["nested"].append(2)
    assert before == obj


def test_build_object_without_labels_or_annotations() -> None:
    """An object with bare metadata still gets the tenancy keys."""
    pobj = build({"metadata": {"name": "n", "namespace": "app", "uid": "u"}})
    assert "u" == pobj["metadata"]["annotations"][naming.ANNOTATION_UID]
    assert 2 == len(pobj["metadata"]["labels"])


def test_build_super_namespace() -> None:
    """A tenant namespace maps to `<key>-<ns>` with cluster/uid/namespace/vc annotations."""
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "app", "uid": "ns-uid", "resourceVersion": "1", "labels": {"team": "a"}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }
    pns = conversion.build_super_namespace(ns, **COMMON, controlled=True)
    assert {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": f"{KEY}-app",
            "labels": {
                "team": "a",
                naming.LABEL_VC_NAME: "name",
                naming.LABEL_VC_NAMESPACE: "ns",
                naming.LABEL_CONTROLLED: "true",
            },
            "annotations": {
                naming.ANNOTATION_CLUSTER: KEY,
                naming.ANNOTATION_UID: "ns-uid",
                naming.ANNOTATION_NAMESPACE: "app",
                naming.ANNOTATION_VC_NAME: "name",
                naming.ANNOTATION_VC_NAMESPACE: "ns",
                naming.ANNOTATION_VC_UID: "vc-uid",
            },
        },
        "spec": {"finalizers": ["kubernetes"]},
    } == pns


def test_build_super_namespace_long_name_is_hashed() -> None:
    """A long tenant namespace name follows the 63-character rule."""
    ns = {"metadata": {"name": "x" * 60, "uid": "u"}}
    pns = conversion.build_super_namespace(ns, **COMMON)
    assert naming.super_namespace(KEY, "x" * 60) == pns["metadata"]["name"]
    assert 63 == len(pns["metadata"]["name"])


def _super(namespace: str | None, name: str = "obj", **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "annotations": annotations}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("pobj", "expected"),
    [
        pytest.param(
            _super(f"{KEY}-app", **{naming.ANNOTATION_CLUSTER: KEY, naming.ANNOTATION_NAMESPACE: "app"}),
            (KEY, "app", "obj"),
            id="namespaced",
        ),
        pytest.param(
            _super(None, f"{KEY}-app", **{naming.ANNOTATION_CLUSTER: KEY, naming.ANNOTATION_NAMESPACE: "app"}),
            (KEY, "", "app"),
            id="namespace",
        ),
        pytest.param(
            _super(
                f"{KEY}-app",
                "sa-token-x7k2p",
                **{
                    naming.ANNOTATION_CLUSTER: KEY,
                    naming.ANNOTATION_NAMESPACE: "app",
                    naming.ANNOTATION_SECRET_NAME: "sa-token-abcde",
                },
            ),
            (KEY, "app", "sa-token-abcde"),
            id="sa-token-secret",
        ),
        pytest.param(_super("default", **{naming.ANNOTATION_CLUSTER: KEY}), None, id="no-namespace-annotation"),
        pytest.param(_super("default", **{naming.ANNOTATION_NAMESPACE: "app"}), None, id="no-cluster-annotation"),
        pytest.param({"metadata": {"name": "x", "namespace": "y"}}, None, id="not-ours"),
        pytest.param({}, None, id="empty"),
    ],
)
def test_tenant_object_ref(pobj: dict[str, Any], expected: tuple[str, str, str] | None) -> None:
    """Super objects trace back to (cluster, tenant namespace, tenant name) via annotations."""
    assert expected == conversion.tenant_object_ref(pobj)


def test_tenant_object_ref_round_trip() -> None:
    """A built super object traces back to its tenant object and UID."""
    pobj = build(tenant_cm())
    assert (KEY, "app", "cfg") == conversion.tenant_object_ref(pobj)
    assert "cm-uid" == conversion.tenant_uid(pobj)
    assert conversion.tenant_uid({"metadata": {}}) is None


def _service(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "svc", "namespace": f"{KEY}-app", "annotations": {}}, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "expected_spec", "expected_annotation"),
    [
        pytest.param(
            {"clusterIP": "10.32.0.9", "clusterIPs": ["10.32.0.9"], "ports": [{"port": 80}]},
            {"ports": [{"port": 80}]},
            "10.32.0.9",
            id="cluster-ip-moved",
        ),
        pytest.param(
            {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]},
            {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]},
            None,
            id="headless-kept",
        ),
        pytest.param(
            {
                "type": "LoadBalancer",
                "clusterIP": "10.32.0.9",
                "healthCheckNodePort": 31000,
                "externalTrafficPolicy": "Local",
                "ports": [{"port": 80, "nodePort": 30080}, {"port": 443, "nodePort": 30443}],
            },
            {
                "type": "LoadBalancer",
                "healthCheckNodePort": 31000,
                "externalTrafficPolicy": "Local",
                "ports": [{"port": 80, "nodePort": 30080}, {"port": 443, "nodePort": 30443}],
            },
            "10.32.0.9",
            id="node-ports-kept",
        ),
        pytest.param({"ports": [{"port": 80}]}, {"ports": [{"port": 80}]}, None, id="no-ip-yet"),
    ],
)
def test_adapt_service(spec: dict[str, Any], expected_spec: dict[str, Any], expected_annotation: str | None) -> None:
    """The super allocates cluster IPs (the tenant's moves to an annotation); node ports are kept,
    and `without_node_ports` clears them for the fallback."""
    svc = _service(spec)
    before = copy.deepcopy(svc)
    adapted = conversion.adapt_service(svc)
    assert before == svc
    assert expected_spec == adapted["spec"]
    assert expected_annotation == adapted["metadata"]["annotations"].get(naming.ANNOTATION_CLUSTER_IP)
    cleared = conversion.without_node_ports(adapted)
    assert not conversion.has_node_ports(cleared)
    assert conversion.has_node_ports(adapted) == ("nodePort" in str(spec))


def test_adapt_sa_token_secret() -> None:
    """A tenant SA token secret becomes an Opaque secret with a generated name and UID label."""
    tenant = {
        "metadata": {
            "name": "default-token-abcde",
            "namespace": "app",
            "uid": "sec-uid",
            "annotations": {
                naming.ANNOTATION_SERVICE_ACCOUNT_NAME: "default",
                "kubernetes.io/service-account.uid": "x",
            },
        },
        "type": naming.SECRET_TYPE_SA_TOKEN,
        "data": {"token": "dG9r", "ca.crt": "Y2E=", "namespace": "YXBw"},
    }
    secret = conversion.adapt_sa_token_secret(build(tenant), tenant)
    meta = secret["metadata"]
    assert "name" not in meta
    assert "default-token-" == meta["generateName"]
    assert "sec-uid" == meta["labels"][naming.LABEL_SECRET_UID]
    assert "default-token-abcde" == meta["annotations"][naming.ANNOTATION_SECRET_NAME]
    assert not any(k.startswith("kubernetes.io/") for k in meta["annotations"])
    assert "Opaque" == secret["type"]
    assert tenant["data"] == secret["data"]
    assert (KEY, "app", "default-token-abcde") == conversion.tenant_object_ref({**secret, "metadata": {**meta, "name": "g"}})


def test_adapt_service_account_clears_secrets() -> None:
    """A ServiceAccount copy loses its secrets list but keeps imagePullSecrets."""
    sa = {"metadata": {"name": "default"}, "secrets": [{"name": "t"}], "imagePullSecrets": [{"name": "p"}]}
    assert {"metadata": {"name": "default"}, "imagePullSecrets": [{"name": "p"}]} == conversion.adapt_service_account(
        sa
    )
    assert [{"name": "t"}] == sa["secrets"]
