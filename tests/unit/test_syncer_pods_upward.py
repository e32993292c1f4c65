"""The tenant writes of a Pod's upward reconcile: what a super Pod's progress costs in requests."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import trio

from appliance.syncer.resources import pods
from appliance.util import naming
from tests.unit.syncer_stubs import StubCache, StubSyncer, StubTenant

KEY = "vc-1-abc123-t"
SUPER_NS = naming.super_namespace(KEY, "shop")
SCHEDULED = {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": "2026-12-06T09:00:01Z"}

TENANT_POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop", "uid": "tenant-uid", "resourceVersion": "7"},
    "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    "status": {"phase": "Pending", "qosClass": "BestEffort"},
}


def super_pod(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": SUPER_NS, "uid": "super-uid", "annotations": {
            naming.ANNOTATION_CLUSTER: KEY, naming.ANNOTATION_NAMESPACE: "shop",
            naming.ANNOTATION_UID: "tenant-uid"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "node-1"},
        "status": status,
    }


def run_upward(ppod: dict[str, Any]) -> StubTenant:
    tenant = StubTenant(KEY, informers={"pod": StubCache([copy.deepcopy(TENANT_POD)]),
                                        "node": StubCache([{"metadata": {"name": "node-1"}}])})
    sx = StubSyncer(tenants=[tenant], caches={"pod": [ppod], "secret": []})
    trio.run(pods.PodKind().upward, sx, tenant, "shop", "web")
    return tenant


@pytest.mark.parametrize(("status", "status_written"), [
    pytest.param({"phase": "Pending", "qosClass": "BestEffort", "conditions": [SCHEDULED]}, False,
                 id="only-scheduled"),
    pytest.param({"phase": "Running", "qosClass": "BestEffort", "podIP": "10.1.0.5",
                  "conditions": [SCHEDULED, {"type": "Ready", "status": "True"}]}, True, id="running"),
])
def test_a_scheduled_super_pod_costs_one_binding_and_a_status_write_only_when_more_changed(
        status: dict[str, Any], status_written: bool) -> None:
    """The Binding makes the tenant apiserver set PodScheduled itself; a status patch follows
    only when the super status says more than that."""
    tenant = run_upward(super_pod(status))
    assert [(kind, body["target"]["name"]) for kind, _, body in tenant.client.created] == [("Pod", "node-1")]
    writes = [(sub, body) for _, _, sub, body in tenant.client.patched]
    if status_written:
        assert writes == [("status", {"status": {"phase": "Running", "podIP": "10.1.0.5",
                                                 "conditions": status["conditions"]}})]
    else:
        assert writes == []
