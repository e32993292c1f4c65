"""Pure pieces of the syncer runtime: virtual nodes, token refresh, service back-population."""

from __future__ import annotations

import datetime as dt

import pytest

from appliance.syncer import tokens, vnode
from appliance.syncer.resources import services
from appliance.syncer.tenant import Tenant, TenantId
from appliance.util import naming

SUPER_NODE = {
    "metadata": {"name": "n1", "labels": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": "n1",
                                          "secret-zone": "a"}},
    "status": {
        "capacity": {"cpu": "4"}, "allocatable": {"cpu": "3"}, "nodeInfo": {"kubeletVersion": "v1"},
        "conditions": [{"type": "Ready", "status": "True"}],
        "addresses": [{"type": "InternalIP", "address": "10.1.1.1"}, {"type": "Hostname", "address": "n1"}],
        "declaredFeatures": ["ExtendWebSocketsToKubelet"],
    },
}


def test_vnode_points_at_the_proxy_and_hides_super_details() -> None:
    """A vnode is schedulable and untainted, labelled; it has the super node's IP (NodePorts and
    host ports are there) and the proxy as its Hostname address with the proxy's port, which
    kube-apiserver dials first."""
    node = vnode.build(SUPER_NODE, address="127.0.0.9", port=10550)
    assert node["metadata"]["labels"] == {
        "kubernetes.io/os": "linux", "kubernetes.io/hostname": "n1", naming.LABEL_VIRTUAL_NODE: "true"}
    assert node["spec"] == {}
    assert node["status"]["addresses"] == [{"type": "InternalIP", "address": "10.1.1.1"},
                                           {"type": "Hostname", "address": "127.0.0.9"}]
    assert node["status"]["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10550}}
    bare = vnode.build({**SUPER_NODE, "status": {**SUPER_NODE["status"], "addresses": []}},  # type: ignore[dict-item]
                       address="127.0.0.9", port=10550)
    assert bare["status"]["addresses"] == [{"type": "InternalIP", "address": "127.0.0.9"},
                                           {"type": "Hostname", "address": "127.0.0.9"}]
    assert vnode.status_patch(node, SUPER_NODE, address="127.0.0.9", port=10550) is None
    assert "declaredFeatures" not in node["status"]
    assert node["status"]["capacity"] == {"cpu": "4"}


def test_vnode_spec_follows_the_super_cordon_and_sheds_the_old_taint() -> None:
    """A cordoned super node makes its vnode unschedulable and uncordoning undoes it; a vnode
    tainted by an older version loses that taint and keeps any other."""
    node = vnode.build(SUPER_NODE, address="127.0.0.9", port=10550)
    assert vnode.spec_patch(node, SUPER_NODE) is None
    cordoned = {**SUPER_NODE, "spec": {"unschedulable": True}}
    assert vnode.build(cordoned, address="127.0.0.9", port=10550)["spec"] == {"unschedulable": True}
    assert vnode.spec_patch(node, cordoned) == {"spec": {"unschedulable": True}}
    assert vnode.spec_patch({**node, "spec": {"unschedulable": True}}, SUPER_NODE) == {"spec": {"unschedulable": None}}
    other = {"key": "example.com/gpu", "effect": "NoSchedule"}
    legacy = {**node, "spec": {"unschedulable": True, "taints": [
        {"key": vnode.UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}, other]}}
    assert vnode.spec_patch(legacy, SUPER_NODE) == {"spec": {"unschedulable": None, "taints": [other]}}
    only = {**node, "spec": {"taints": [{"key": vnode.UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}]}}
    assert vnode.spec_patch(only, SUPER_NODE) == {"spec": {"taints": None}}


def test_vnode_taints_follow_super_readiness_not_admission() -> None:
    """The not-ready taint admission puts on a new Node goes once the super node is Ready; a
    super node that is not Ready, or unknown, taints its vnode NoSchedule (never NoExecute)."""
    node = vnode.build(SUPER_NODE, address="127.0.0.9", port=10550)
    admitted = {**node, "spec": {"taints": [{"key": vnode.NOT_READY_TAINT, "effect": "NoSchedule"}]}}
    assert vnode.spec_patch(admitted, SUPER_NODE) == {"spec": {"taints": None}}
    for status, key in (("False", vnode.NOT_READY_TAINT), ("Unknown", vnode.UNREACHABLE_TAINT)):
        sick = {**SUPER_NODE, "status": {**SUPER_NODE["status"], "conditions": [{"type": "Ready", "status": status}]}}
        assert vnode.build(sick, address="127.0.0.9", port=10550)["spec"] == {
            "taints": [{"key": key, "effect": "NoSchedule"}]}
        assert vnode.spec_patch(node, sick) == {"spec": {"taints": [{"key": key, "effect": "NoSchedule"}]}}
        assert vnode.spec_patch(vnode.build(sick, address="127.0.0.9", port=10550), sick) is None


def test_vnode_status_patch_follows_conditions_and_drops_declared_features() -> None:
    """Condition changes are patched; an existing declaredFeatures list is removed."""
    node = vnode.build(SUPER_NODE, address="127.0.0.9", port=10550)
    assert vnode.status_patch(node, SUPER_NODE, address="127.0.0.9", port=10550) is None
    changed = {**SUPER_NODE, "status": {**SUPER_NODE["status"], "conditions": [{"type": "Ready", "status": "False"}]}}
    patch = vnode.status_patch({**node, "status": {**node["status"], "declaredFeatures": ["X"]}}, changed,
                               address="127.0.0.9", port=10550)
    assert patch == {"status": {"conditions": [{"type": "Ready", "status": "False"}], "declaredFeatures": None}}


NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("issued_min_ago", "lifetime_min", "expected"),
    [
        pytest.param(10, 60, False, id="fresh"),
        pytest.param(49, 60, True, id="past-80-percent"),
        pytest.param(70, 60, True, id="expired"),
    ],
)
def test_token_refresh_at_80_percent(issued_min_ago: int, lifetime_min: int, expected: bool) -> None:
    """A token Secret is refreshed once 80 % of its lifetime has passed."""
    issued = NOW - dt.timedelta(minutes=issued_min_ago)
    secret = {"metadata": {"annotations": {
        tokens.ANNOTATION_TOKEN_ISSUED: issued.isoformat(),
        tokens.ANNOTATION_TOKEN_EXPIRES: (issued + dt.timedelta(minutes=lifetime_min)).isoformat()}}}
    assert expected == tokens.needs_refresh(secret, NOW)
    assert tokens.needs_refresh(None, NOW)


def test_token_secret_name_is_bounded_and_per_incarnation() -> None:
    """Names stay within 253 characters and differ between Pod incarnations."""
    long = "p" * 253
    assert len(tokens.secret_name(long, "uid-1")) <= 253
    assert tokens.secret_name("web", "uid-1") != tokens.secret_name("web", "uid-2")


def test_service_upward_patch_sets_super_cluster_ip_annotation() -> None:
    """The tenant Service learns the super cluster IP; nothing is written once it has it."""
    tenant = Tenant(TenantId("k", "vc", "ns", "u"), client=None)  # type: ignore[arg-type]
    v = {"metadata": {"name": "s", "annotations": {}}, "spec": {"clusterIP": "10.32.0.5"}}
    p = {"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.77"}}
    patch = services.upward_patch(tenant, v, p)
    assert patch == {"metadata": {"annotations": {naming.ANNOTATION_TRANSPARENT_CLUSTER_IP: "10.96.0.77"}}}
    v["metadata"]["annotations"][naming.ANNOTATION_TRANSPARENT_CLUSTER_IP] = "10.96.0.77"
    assert services.upward_patch(tenant, v, p) is None
