"""Virtual node life cycle and refused Pods, on the real test bed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.kube import errors, resources
from appliance.util import naming
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory, wait_for


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


@syncing.deadline(180)
async def test_vnode_appears_with_a_pod_and_is_collected_after_its_last_pod(env: syncing.Env) -> None:
    """A bound Pod brings its virtual node; once the Pod is gone the node is deleted after the grace."""
    sx = await env.start(patrol_period=0.5, vnode_gc_grace=2.0)
    t = await env.tenant(sx, "vn")
    await syncing.tenant_namespace(t, "app")
    await t.client.create(resources.PODS, syncing.pod_manifest("solo"),
                          namespace="app")
    pod = await syncing.wait_object(t.client, resources.PODS, "solo", namespace="app",
                                    where=lambda p: bool(p["spec"].get("nodeName")), what="tenant pod bound")
    node = pod["spec"]["nodeName"]
    vnode = await t.client.get(resources.NODES, node)
    assert vnode["metadata"]["labels"][naming.LABEL_VIRTUAL_NODE] == "true"
    await t.client.delete(resources.PODS, "solo", namespace="app", grace_period_seconds=0)
    await syncing.wait_gone(t.client, resources.PODS, "solo", namespace="app")

    async def collected() -> bool:
        try:
            await t.client.get(resources.NODES, node)
        except errors.NotFound:
            return True
        return False

    await wait_for(collected, timeout=60, what=f"virtual node {node} collected")


@syncing.deadline(120)
async def test_pod_with_preset_node_name_runs_on_that_node_through_the_super_scheduler(env: syncing.Env) -> None:
    """A tenant Pod created with spec.nodeName runs on that super node: the super Pod asks for
    it by node affinity (the super scheduler still decides), and the tenant gets its vnode."""
    nodes = [n["metadata"]["name"] for n in (await env.superc.list(resources.NODES)).items
             if not n["spec"].get("unschedulable")]
    target = sorted(nodes)[-1]
    sx = await env.start()
    t = await env.tenant(sx, "nn")
    await syncing.tenant_namespace(t, "app")
    await t.client.create(resources.PODS, syncing.pod_manifest("pinned", nodeName=target), namespace="app")
    await runs_pinned_to(env, t, "pinned", target)
    await syncing.wait_object(t.client, resources.NODES, target, what=f"virtual node {target}")


@syncing.deadline(150)
async def test_a_label_the_tenant_put_on_its_virtual_node_steers_its_pods_there(env: syncing.Env) -> None:
    """`kubectl label node` on a virtual node, then a Pod selecting that label: the super nodes
    never carry the label, so the super Pod asks for the labelled node by name and runs there."""
    sx = await env.start()
    t = await env.tenant(sx, "nl")
    await syncing.tenant_namespace(t, "app")
    await t.client.create(resources.PODS, syncing.pod_manifest("first"), namespace="app")
    first = await syncing.wait_object(t.client, resources.PODS, "first", namespace="app",
                                      where=lambda p: bool(p["spec"].get("nodeName")), what="tenant pod bound")
    node = first["spec"]["nodeName"]
    await t.client.patch(resources.NODES, node, {"metadata": {"labels": {"e2e-label": "42"}}})
    await t.client.create(resources.PODS, syncing.pod_manifest("chosen", nodeSelector={"e2e-label": "42"}),
                          namespace="app")
    sup = await runs_pinned_to(env, t, "chosen", node)
    assert "nodeSelector" not in sup["spec"]
    # two labelled virtual nodes: one term per node (a node field selector names one node)
    other = sorted(set(env.sc.nodes) - {node})[0]  # another kwok node
    await t.client.create(resources.PODS, syncing.pod_manifest("second", nodeName=other), namespace="app")
    await runs_pinned_to(env, t, "second", other)
    await t.client.patch(resources.NODES, other, {"metadata": {"labels": {"e2e-label": "42"}}})
    await t.client.create(resources.PODS, syncing.pod_manifest("either", nodeSelector={"e2e-label": "42"}),
                          namespace="app")
    either = await syncing.wait_object(env.superc, resources.PODS, "either",
                                       namespace=naming.super_namespace(t.key, "app"),
                                       where=lambda p: p["spec"].get("nodeName"), what="super pod scheduled")
    assert either["spec"]["nodeName"] in (node, other)
    terms = either["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [n]}]}
                                          for n in sorted((node, other))]



async def runs_pinned_to(env: syncing.Env, t: syncing.BedTenant, name: str, node: str) -> dict[str, Any]:
    """Wait until tenant Pod app/`name` runs, its super Pod on `node`, asked for by node name alone."""
    sup = await syncing.wait_object(env.superc, resources.PODS, name, namespace=naming.super_namespace(t.key, "app"),
                                    where=lambda p: p["spec"].get("nodeName"), what="super pod scheduled")
    assert sup["spec"]["nodeName"] == node
    terms = sup["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                            "values": [node]}]}]
    await syncing.wait_object(t.client, resources.PODS, name, namespace="app",
                              where=lambda p: (p.get("status") or {}).get("phase") == "Running",
                              what=f"tenant pod {name} Running")
    return sup
