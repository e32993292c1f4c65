"""Virtual node life cycle and refused Pods, on the real test bed."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
async def test_pod_with_preset_node_name_is_refused_with_an_event(env: syncing.Env) -> None:
    """A tenant Pod with spec.nodeName is not synced and gets a NotSupported Warning Event."""
    sx = await env.start()
    t = await env.tenant(sx, "nn")
    await syncing.tenant_namespace(t, "app")
    await t.client.create(resources.PODS, syncing.pod_manifest("pinned", nodeName="some-node"),
                          namespace="app")

    async def event() -> bool:
        items = (await t.client.list(resources.EVENTS, namespace="app")).items
        return any(e["reason"] == "NotSupported" and e["involvedObject"]["name"] == "pinned"
                   and "nodeName" in e["message"] for e in items)

    await wait_for(event, timeout=60, what="a NotSupported Event on the tenant pod")
    super_ns = naming.super_namespace(t.key, "app")
    assert await syncing.get_or_none(env.superc, resources.PODS, "pinned", namespace=super_ns) is None
