"""Downward and upward drift detection: every check returns a merge patch or None (SPEC §3.4, §3.7)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from appliance.syncer import equality
from appliance.util import naming

TRANSPARENT_IP = naming.ANNOTATION_TRANSPARENT_CLUSTER_IP


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 apply, to check that a patch really produces the desired document."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param({}, {}, None, id="both-empty"),
        pytest.param({"a": 1}, {"a": 1}, None, id="equal"),
        pytest.param({"a": 1}, {"a": 2}, {"a": 2}, id="changed"),
        pytest.param({"a": 1}, {}, {"a": None}, id="removed"),
        pytest.param({}, {"a": {"b": 1}}, {"a": {"b": 1}}, id="added-nested"),
        pytest.param({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}, {"a": {"c": None}}, id="nested-removed"),
        pytest.param({"a": [1, 2]}, {"a": [1]}, {"a": [1]}, id="list-replaced"),
        pytest.param({"a": None}, {}, None, id="none-is-absent"),
        pytest.param({"a": {"b": 1}}, {"a": 5}, {"a": 5}, id="dict-to-scalar"),
    ],
)
def test_json_merge_patch(old: Any, new: Any, expected: Any) -> None:
    """The RFC 7386 diff is minimal and, applied to `old`, yields `new`."""
    patch = equality.json_merge_patch(old, new)
    assert expected == patch
    if patch is not None:
        assert {k: v for k, v in new.items() if v is not None} == apply_merge_patch(old, patch)


def test_merge_patches() -> None:
    """Patches combine deeply; None patches are skipped; all-None gives None."""
    assert equality.merge_patches(None, None) is None
    assert {"metadata": {"labels": {"a": "1"}, "annotations": {"b": None}}, "spec": {"x": 1}} == equality.merge_patches(
        {"metadata": {"labels": {"a": "1"}}}, None, {"metadata": {"annotations": {"b": None}}}, {"spec": {"x": 1}}
    )


@pytest.mark.parametrize(
    ("tenant", "super_", "exceptions", "expected"),
    [
        pytest.param(None, None, (), None, id="both-empty"),
        pytest.param({"a": "1"}, {"a": "1"}, (), None, id="equal"),
        pytest.param({"a": "1"}, {}, (), {"a": "1"}, id="new-tenant-key"),
        pytest.param({"a": "2"}, {"a": "1"}, (), {"a": "2"}, id="changed-value"),
        pytest.param({}, {"a": "1"}, (), {"a": None}, id="less-key-removed"),
        pytest.param({}, {"kubernetes.io/x": "1"}, (), None, id="opaque-domain-exact-survives"),
        pytest.param({}, {"m.kubernetes.io/x": "1"}, (), None, id="opaque-subdomain-survives"),
        pytest.param({"app.kubernetes.io/name": "x"}, {}, (), None, id="opaque-tenant-key-not-pushed"),
        pytest.param({}, {naming.ANNOTATION_CLUSTER: "k", TRANSPARENT_IP: "1.1.1.1"}, (), None, id="tenancy-survive"),
        pytest.param({TRANSPARENT_IP: "9.9.9.9"}, {TRANSPARENT_IP: "1.1.1.1"}, (), None, id="transparent-ignored"),
        pytest.param({"k8s.net.status/x": "t"}, {"k8s.net.status/x": "s"}, ("k8s.net.status",), None, id="vc-prefix"),
        pytest.param(
            {"a": "1", "b": "2"},
            {"b": "3", "c": "4", naming.ANNOTATION_UID: "u"},
            (),
            {"a": "1", "b": "2", "c": None},
            id="mixed",
        ),
    ],
)
def test_dw_kv_patch(
    tenant: dict[str, str] | None, super_: dict[str, str] | None, exceptions: tuple[str, ...], expected: Any
) -> None:
    """Super maps follow tenant maps, except keys in the exception set, which super keeps."""
    assert expected == equality.dw_kv_patch(tenant, super_, exception_prefixes=exceptions)


@pytest.mark.parametrize(
    ("tenant", "super_", "prefixes", "expected"),
    [
        pytest.param({}, {}, (), None, id="empty"),
        pytest.param({}, {TRANSPARENT_IP: "10.0.0.1"}, (), {TRANSPARENT_IP: "10.0.0.1"}, id="missing-transparent"),
        pytest.param({TRANSPARENT_IP: "x"}, {TRANSPARENT_IP: "10.0.0.1"}, (), {TRANSPARENT_IP: "10.0.0.1"}, id="wrong"),
        pytest.param({TRANSPARENT_IP: "10.0.0.1"}, {TRANSPARENT_IP: "10.0.0.1"}, (), None, id="equal"),
        pytest.param({}, {"k8s.net.status/ip": "1"}, ("k8s.net.status",), {"k8s.net.status/ip": "1"}, id="vc-prefix"),
        pytest.param({}, {"other": "1", naming.ANNOTATION_CLUSTER: "k"}, (), None, id="non-transparent-ignored"),
        pytest.param({TRANSPARENT_IP + "2": "t"}, {}, (), None, id="never-removed"),
    ],
)
def test_uw_kv_patch(tenant: dict[str, str], super_: dict[str, str], prefixes: tuple[str, ...], expected: Any) -> None:
    """Only transparent super keys flow up, and tenant keys are never removed."""
    assert expected == equality.uw_kv_patch(tenant, super_, transparent_prefixes=prefixes)


def test_meta_patches() -> None:
    """Metadata patches cover labels, annotations and generateName, in both directions."""
    tenant = {"metadata": {"labels": {"a": "1"}, "annotations": {}, "generateName": "web-"}}
    super_ = {"metadata": {"labels": {"b": "2"}, "annotations": {TRANSPARENT_IP: "10.0.0.1"}}}
    assert {"metadata": {"labels": {"a": "1", "b": None}, "generateName": "web-"}} == equality.meta_dw_patch(
        tenant, super_
    )
    assert {"metadata": {"annotations": {TRANSPARENT_IP: "10.0.0.1"}}} == equality.meta_uw_patch(tenant, super_)
    assert equality.meta_dw_patch(super_, super_) is None
    assert equality.meta_uw_patch(super_, super_) is None


def pod(
    *,
    containers: dict[str, str] | None = None,
    init: dict[str, str] | None = None,
    deadline: int | None = None,
    gates: tuple[str, ...] = (),
    conditions: list[dict[str, Any]] | None = None,
    status: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": n, "image": i, "ports": [{"containerPort": 80}]} for n, i in (containers or {}).items()]
    }
    if init:
        spec["initContainers"] = [{"name": n, "image": i} for n, i in init.items()]
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    if gates:
        spec["readinessGates"] = [{"conditionType": g} for g in gates]
    full_status = dict(status or {})
    if conditions is not None:
        full_status["conditions"] = conditions
    return {"metadata": {"labels": labels or {}}, "spec": spec, "status": full_status}


def cond(kind: str, status: str = "True") -> dict[str, str]:
    return {"type": kind, "status": status}


@pytest.mark.parametrize(
    ("tenant", "super_", "expected_spec"),
    [
        pytest.param(pod(containers={"c": "a:1"}), pod(containers={"c": "a:1"}), None, id="no-diff"),
        pytest.param(
            pod(containers={"c": "a:2"}),
            pod(containers={"c": "a:1"}),
            {"containers": [{"name": "c", "image": "a:2", "ports": [{"containerPort": 80}]}]},
            id="image-diff",
        ),
        pytest.param(
            pod(containers={"c": "a:1"}),
            pod(containers={"c": "a:1", "sidecar": "mesh:1"}),
            None,
            id="webhook-container",
        ),
        pytest.param(
            pod(containers={"c": "a:2"}),
            pod(containers={"sidecar": "mesh:1", "c": "a:1"}),
            {
                "containers": [
                    {"name": "sidecar", "image": "mesh:1", "ports": [{"containerPort": 80}]},
                    {"name": "c", "image": "a:2", "ports": [{"containerPort": 80}]},
                ]
            },
            id="image-diff-keeps-webhook-container",
        ),
        pytest.param(
            pod(init={"i": "b:2"}),
            pod(init={"i": "b:1"}),
            {"initContainers": [{"name": "i", "image": "b:2"}]},
            id="init",
        ),
        pytest.param(pod(), pod(), None, id="deadline-nil-nil"),
        pytest.param(pod(deadline=10), pod(), {"activeDeadlineSeconds": 10}, id="deadline-nil-to-value"),
        pytest.param(pod(deadline=5), pod(deadline=10), {"activeDeadlineSeconds": 5}, id="deadline-changed"),
        pytest.param(pod(deadline=10), pod(deadline=10), None, id="deadline-equal"),
        pytest.param(pod(), pod(deadline=10), None, id="deadline-never-unset"),
    ],
)
def test_pod_dw_patch_spec(tenant: dict[str, Any], super_: dict[str, Any], expected_spec: Any) -> None:
    """Images by container name and activeDeadlineSeconds flow down; webhook containers are kept."""
    patch = equality.pod_dw_patch(tenant, super_)
    assert expected_spec == (patch or {}).get("spec")


def test_pod_dw_patch_includes_metadata() -> None:
    """Pod label changes are part of the downward pod patch, tenancy labels survive."""
    tenant = pod(labels={"app": "v2"})
    super_ = pod(labels={"app": "v1", naming.LABEL_CLUSTER: "k"})
    assert {"metadata": {"labels": {"app": "v2"}}} == equality.pod_dw_patch(tenant, super_)


@pytest.mark.parametrize(
    ("tenant", "super_", "expected"),
    [
        pytest.param(pod(conditions=[cond("Ready")]), pod(conditions=[cond("Ready", "False")]), None, id="no-gates"),
        pytest.param(
            pod(gates=("g",), conditions=[cond("g")]),
            pod(conditions=[cond("Ready", "False")]),
            [cond("Ready", "False"), cond("g")],
            id="gate-added",
        ),
        pytest.param(
            pod(gates=("g",), conditions=[cond("g")]),
            pod(conditions=[cond("g", "False"), cond("Ready")]),
            [cond("g"), cond("Ready")],
            id="gate-updated-in-place",
        ),
        pytest.param(pod(gates=("g",), conditions=[cond("g")]), pod(conditions=[cond("g")]), None, id="gate-equal"),
        pytest.param(pod(gates=("g",), conditions=[]), pod(conditions=[cond("g")]), None, id="tenant-lacks-gate"),
    ],
)
def test_pod_dw_status_patch(tenant: dict[str, Any], super_: dict[str, Any], expected: Any) -> None:
    """Tenant readiness-gate conditions are pushed down into the super Pod status."""
    patch = equality.pod_dw_status_patch(tenant, super_)
    assert expected == (patch["status"]["conditions"] if patch else None)


@pytest.mark.parametrize(
    ("tenant", "super_", "expected_conditions"),
    [
        pytest.param(
            pod(conditions=[]),
            pod(conditions=[cond("PodScheduled"), cond("Ready")]),
            [cond("PodScheduled"), cond("Ready")],
            id="plain-copy",
        ),
        pytest.param(
            pod(gates=("g",), conditions=[cond("g")]),
            pod(gates=("g",), conditions=[cond("g", "False"), cond("Ready")]),
            [cond("g"), cond("Ready")],
            id="tenant-gate-value-wins",
        ),
        pytest.param(
            pod(gates=("g",), conditions=[cond("g")]),
            pod(gates=("g",), conditions=[cond("Ready", "False")]),
            [cond("Ready", "False"), cond("g")],
            id="tenant-gate-not-in-super-kept",
        ),
        pytest.param(
            pod(conditions=[cond("Ready")]),
            pod(gates=("super-only",), conditions=[cond("super-only"), cond("Ready")]),
            None,
            id="super-only-gate-dropped",
        ),
        pytest.param(
            pod(gates=("g",), conditions=[]),
            pod(gates=("g",), conditions=[cond("g"), cond("Ready")]),
            [cond("Ready")],
            id="gate-missing-in-tenant-dropped",
        ),
        pytest.param(
            pod(conditions=[cond("DisruptionTarget"), cond("Ready")]),
            pod(conditions=[cond("Ready", "False")]),
            [cond("Ready", "False"), cond("DisruptionTarget")],
            id="tenant-eviction-condition-kept",
        ),
        pytest.param(
            pod(conditions=[cond("ContainersReady")]),
            pod(conditions=[cond("Ready")]),
            [cond("Ready")],
            id="kubelet-condition-follows-super",
        ),
    ],
)
def test_pod_uw_status_patch_readiness_gates(
    tenant: dict[str, Any], super_: dict[str, Any], expected_conditions: Any
) -> None:
    """Super status is mirrored up, but readiness-gate conditions stay the tenant's own."""
    patch = equality.pod_uw_status_patch(tenant, super_)
    assert expected_conditions == (patch["status"].get("conditions") if patch else None)


def test_pod_uw_status_patch_mirrors_fields() -> None:
    """Phase and IPs are copied, tenant-only status fields are removed, equal status gives None."""
    tenant = pod(status={"phase": "Pending", "nominatedNodeName": "n1"}, conditions=[])
    super_ = pod(status={"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}]}, conditions=[])
    patch = equality.pod_uw_status_patch(tenant, super_)
    assert {
        "status": {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}], "nominatedNodeName": None}
    } == patch
    assert equality.pod_uw_status_patch(super_, super_) is None


def test_pod_uw_status_patch_after_our_binding_skips_a_scheduled_only_write() -> None:
    """Right after our Binding, the tenant apiserver has set PodScheduled itself: a super Pod that
    is only scheduled needs no status write, one that runs still gets its whole status."""
    scheduled = {**cond("PodScheduled"), "lastTransitionTime": "2026-12-06T09:00:01Z"}
    tenant = pod(status={"phase": "Pending", "qosClass": "BestEffort"}, conditions=[])
    super_ = pod(status={"phase": "Pending", "qosClass": "BestEffort"}, conditions=[scheduled])
    assert equality.pod_uw_status_patch(tenant, super_) is not None  # not bound by us: write it
    assert equality.pod_uw_status_patch(tenant, super_, bound=True) is None
    running = pod(status={"phase": "Running", "qosClass": "BestEffort", "podIP": "10.1.0.5"},
                  conditions=[scheduled, cond("Ready")])
    assert {"status": {"phase": "Running", "podIP": "10.1.0.5", "conditions": [scheduled, cond("Ready")]}} == \
        equality.pod_uw_status_patch(tenant, running, bound=True)
    # a PodScheduled the tenant had (False: unschedulable before) is the one the Binding replaced
    was_unschedulable = pod(status={"phase": "Pending", "qosClass": "BestEffort"},
                            conditions=[cond("PodScheduled", "False")])
    assert equality.pod_uw_status_patch(was_unschedulable, super_, bound=True) is None
    # super not scheduled as True: nothing is assumed
    unscheduled = pod(status={"phase": "Pending", "qosClass": "BestEffort"}, conditions=[cond("PodScheduled", "False")])
    assert equality.pod_uw_status_patch(tenant, unscheduled, bound=True) is not None


def _generations(p: dict[str, Any], generation: int, observed: int | None = None) -> dict[str, Any]:
    p = copy.deepcopy(p)
    p["metadata"]["generation"] = generation
    if observed is not None:
        p["status"]["observedGeneration"] = observed
        p["status"]["conditions"] = [{**c, "observedGeneration": observed} for c in p["status"]["conditions"]]
    return p


def test_pod_uw_status_patch_counts_observed_generations_in_the_tenant() -> None:
    """A kubelet that observed the latest super generation has observed the latest tenant one,
    even when tenant-only changes made the counts differ; while an image change is on its way
    down, the tenant keeps the generation it had."""
    tenant = _generations(pod(containers={"c": "img:1"}, conditions=[], status={}), 4, observed=2)
    super_ = _generations(pod(containers={"c": "img:1"}, conditions=[cond("Ready")], status={}), 3, observed=3)
    patch = equality.pod_uw_status_patch(tenant, super_)
    assert patch is not None
    assert patch["status"]["observedGeneration"] == 4
    assert [c["observedGeneration"] for c in patch["status"]["conditions"]] == [4]
    behind = _generations(super_, 3, observed=2)
    assert equality.pod_uw_status_patch(tenant, behind)["status"]["observedGeneration"] == 3  # type: ignore[index]
    moving = _generations(pod(containers={"c": "img:2"}, conditions=[], status={}), 5, observed=2)
    patch = equality.pod_uw_status_patch(moving, super_)
    assert patch is not None and "observedGeneration" not in patch["status"]
    assert ["observedGeneration" in c for c in patch["status"]["conditions"]] == [False]


def svc(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "s"}, "spec": spec}


BASE_SPEC = {"type": "ClusterIP", "selector": {"app": "a"}, "ports": [{"port": 80, "protocol": "TCP"}]}


@pytest.mark.parametrize(
    ("tenant_spec", "super_spec", "expected"),
    [
        pytest.param(
            {**BASE_SPEC, "clusterIP": "10.32.0.1", "clusterIPs": ["10.32.0.1"], "ipFamilies": ["IPv4"]},
            {**BASE_SPEC, "clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"], "ipFamilyPolicy": "SingleStack"},
            None,
            id="allocations-ignored",
        ),
        pytest.param(
            {**BASE_SPEC, "selector": {"app": "b"}, "clusterIP": "10.32.0.1"},
            {**BASE_SPEC, "clusterIP": "10.96.0.7"},
            {"selector": {"app": "b"}},
            id="selector-diff-keeps-super-ip",
        ),
        pytest.param(
            {
                **BASE_SPEC,
                "type": "NodePort",
                "ports": [{"port": 80, "nodePort": 30001}, {"port": 81, "nodePort": 30002}],
            },
            {**BASE_SPEC, "type": "NodePort", "ports": [{"port": 80, "nodePort": 31001}]},
            {"ports": [{"port": 80, "nodePort": 30001}, {"port": 81, "nodePort": 30002}]},
            id="tenant-node-ports-by-index",
        ),
        pytest.param(
            {**BASE_SPEC, "type": "ClusterIP"},
            {**BASE_SPEC, "type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31001}]},
            {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}]},
            id="nodeport-to-clusterip-drops-node-ports",
        ),
        pytest.param(
            {**BASE_SPEC, "type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]},
            {
                **BASE_SPEC,
                "type": "LoadBalancer",
                "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 32000,
                "ports": [{"port": 80, "nodePort": 31001}],
                "sessionAffinity": "None",
            },
            {"sessionAffinity": None},
            id="health-check-node-port-kept",
        ),
        pytest.param(
            {**BASE_SPEC, "externalIPs": ["10.96.0.7"]},
            {**BASE_SPEC},
            {"externalIPs": ["10.96.0.7"]},
            id="external-ips-compared",
        ),
    ],
)
def test_service_spec_patch(tenant_spec: dict[str, Any], super_spec: dict[str, Any], expected: Any) -> None:
    """Service specs are compared without allocated fields; patches keep super allocations."""
    patch = equality.service_spec_patch(svc(tenant_spec), svc(super_spec))
    assert expected == (patch["spec"] if patch else None)


def test_service_spec_patch_falls_back_to_the_super_node_ports() -> None:
    """Where the super cluster refused the tenant's node ports, patches keep the super's, by
    index, and a port the super has none for gets none (the super cluster allocates it)."""
    tenant = svc({**BASE_SPEC, "type": "NodePort",
                  "ports": [{"port": 80, "nodePort": 30001}, {"port": 81, "nodePort": 30002}]})
    super_ = svc({**BASE_SPEC, "type": "NodePort", "ports": [{"port": 80, "nodePort": 31001}]})
    patch = equality.service_spec_patch(tenant, super_, keep_node_ports=False)
    assert patch == {"spec": {"ports": [{"port": 80, "nodePort": 31001}, {"port": 81}]}}


def test_service_spec_patch_ignores_external_ips_with_gate() -> None:
    """With VServiceExternalIP, externalIPs are ignored and super's value is kept in a patch."""
    tenant = svc({**BASE_SPEC, "externalIPs": ["10.96.0.7"], "selector": {"app": "b"}})
    super_ = svc({**BASE_SPEC, "externalIPs": ["1.1.1.1"]})
    assert (
        equality.service_spec_patch(svc({**BASE_SPEC, "externalIPs": ["x"]}), super_, ignore_external_ips=True) is None
    )
    assert {"spec": {"selector": {"app": "b"}}} == equality.service_spec_patch(tenant, super_, ignore_external_ips=True)


@pytest.mark.parametrize(
    ("tenant", "super_", "expected"),
    [
        pytest.param({"data": {"a": "1"}}, {"data": {"a": "1"}}, None, id="equal"),
        pytest.param({"data": {"a": "2"}}, {"data": {"a": "1"}}, {"data": {"a": "2"}}, id="changed"),
        pytest.param({"data": {}}, {"data": {"a": "1"}}, {"data": None}, id="emptied"),
        pytest.param({}, {"data": {"a": "1", "b": ""}}, {"data": None}, id="removed"),
        pytest.param({"data": {"a": "1"}}, {"data": {"a": "1", "b": "2"}}, {"data": {"b": None}}, id="key-removed"),
        pytest.param({"binaryData": {"b": "AA=="}}, {}, {"binaryData": {"b": "AA=="}}, id="binary-added"),
        pytest.param({"data": {"a": ""}}, {"data": {"a": "x"}}, {"data": {"a": ""}}, id="empty-string-value"),
    ],
)
def test_configmap_data_patch(tenant: dict[str, Any], super_: dict[str, Any], expected: Any) -> None:
    """ConfigMap data and binaryData follow the tenant's."""
    assert expected == equality.configmap_data_patch(tenant, super_)


@pytest.mark.parametrize(
    ("tenant", "super_", "expected"),
    [
        pytest.param({"data": {"t": "eA=="}}, {"data": {"t": "eA=="}}, None, id="equal"),
        pytest.param({"data": {"t": "eQ=="}}, {"data": {"t": "eA=="}}, {"data": {"t": "eQ=="}}, id="token-rotated"),
        pytest.param({"stringData": {"s": "v"}}, {}, {"stringData": {"s": "v"}}, id="string-data"),
        pytest.param(
            {"data": {"t": "x"}, "type": "A"}, {"data": {"t": "x"}, "type": "Opaque"}, None, id="type-ignored"
        ),
    ],
)
def test_secret_data_patch(tenant: dict[str, Any], super_: dict[str, Any], expected: Any) -> None:
    """Secret data and stringData follow the tenant's; the (immutable) type is not compared."""
    assert expected == equality.secret_data_patch(tenant, super_)


def test_status_uw_patch() -> None:
    """Load-balancer status flows up; equal status gives None."""
    tenant: dict[str, Any] = {"status": {"loadBalancer": {}}}
    super_ = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}
    assert {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}} == equality.status_uw_patch(tenant, super_)
    assert equality.status_uw_patch(super_, super_) is None


def test_pod_resize_patch_carries_the_tenants_resources_and_keeps_what_super_added() -> None:
    """A tenant resize changes the values it sets; limits a super LimitRange added stay; an
    unchanged Pod needs no resize; the patch lists whole containers, as the subresource wants."""
    def p(**resources: dict[str, str]) -> dict[str, Any]:
        return {"spec": {"containers": [{"name": "c", "image": "i", "resources": dict(resources)}]}}

    tenant = p(requests={"cpu": "200m"})
    super_ = p(requests={"cpu": "100m"}, limits={"memory": "64Mi"})
    assert equality.pod_resize_patch(tenant, super_) == {"spec": {"containers": [
        {"name": "c", "image": "i", "resources": {"requests": {"cpu": "200m"}, "limits": {"memory": "64Mi"}}}]}}
    assert equality.pod_resize_patch(p(requests={"cpu": "100m"}), super_) is None
    assert equality.pod_resize_patch(p(), super_) is None
