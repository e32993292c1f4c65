"""Syncer on the real test bed: deletions travel down (tenant → super) and up (super eviction)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from appliance.kube import resources
from appliance.util import naming
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory

PODS = resources.PODS


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


def running(pod: dict[str, Any]) -> bool:
    return bool(pod.get("status", {}).get("phase") == "Running" and pod["spec"].get("nodeName"))


async def running_pod(env: syncing.Env, t: syncing.BedTenant, ns: str, name: str, **kw: Any) -> tuple[dict, dict]:
    """Create tenant Pod `ns/name`; return (tenant, super) once both are Running on a node."""
    await t.client.create(PODS, syncing.pod_manifest(name, **kw), namespace=ns)
    sup = await syncing.wait_object(env.superc, PODS, name, namespace=naming.super_namespace(t.key, ns),
                                    where=running, timeout=90, what=f"super pod {ns}/{name} Running")
    ten = await syncing.wait_object(t.client, PODS, name, namespace=ns, where=running, timeout=90,
                                    what=f"tenant pod {ns}/{name} Running on a vnode")
    return ten, sup


@syncing.deadline(180)
async def test_graceful_tenant_delete_deletes_super_pod_then_tenant_pod(env: syncing.Env) -> None:
    """A tenant Pod deleted with a 5 s grace period has its super Pod deleted with the same grace,
    and disappears from the tenant once the super Pod is gone."""
    sx = await env.start()
    t = await env.tenant(sx, "graceful")
    await syncing.tenant_namespace(t, "app")
    super_app = naming.super_namespace(t.key, "app")
    ten, sup = await running_pod(env, t, "app", "web")
    seen: list[syncing.Seen] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: syncing.record_events(
            env.superc, PODS, seen, namespace=super_app, task_status=task_status))
        await nursery.start(lambda task_status: syncing.record_events(
            t.client, PODS, seen, namespace="app", task_status=task_status))
        await t.client.delete(PODS, "web", namespace="app", grace_period_seconds=5)
        await syncing.wait_gone(t.client, PODS, "web", namespace="app", timeout=60)
        await syncing.wait_gone(env.superc, PODS, "web", namespace=super_app)
        nursery.cancel_scope.cancel()

    def uid_events(uid: str) -> list[syncing.Seen]:
        return [e for e in seen if e.obj["metadata"]["uid"] == uid]

    super_events = uid_events(sup["metadata"]["uid"])
    terminating = [e for e in super_events if e.obj["metadata"].get("deletionTimestamp")]
    assert terminating, [e.type for e in super_events]
    assert terminating[0].obj["metadata"]["deletionGracePeriodSeconds"] == 5
    assert super_events[-1].type == "DELETED"
    tenant_events = uid_events(ten["metadata"]["uid"])
    assert tenant_events[-1].type == "DELETED"
    assert terminating[0].at < tenant_events[-1].at  # the tenant Pod outlives its super Pod's deletion


@syncing.deadline(180)
async def test_deleting_a_tenant_namespace_deletes_its_super_namespace(env: syncing.Env) -> None:
    """A tenant namespace deleted with a Pod, a Service and a ConfigMap in it takes its super
    namespace (and everything there) with it."""
    sx = await env.start()
    t = await env.tenant(sx, "nsdel")
    await syncing.tenant_namespace(t, "doomed")
    super_doomed = naming.super_namespace(t.key, "doomed")
    await t.client.create(resources.CONFIGMAPS, {"metadata": {"name": "cfg"}, "data": {"a": "b"}}, namespace="doomed")
    await t.client.create(resources.SERVICES, {"metadata": {"name": "svc"},
                                               "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}},
                          namespace="doomed")
    await running_pod(env, t, "doomed", "web")
    await syncing.wait_object(env.superc, resources.CONFIGMAPS, "cfg", namespace=super_doomed)
    await syncing.wait_object(env.superc, resources.SERVICES, "svc", namespace=super_doomed)

    await t.client.delete(resources.NAMESPACES, "doomed")
    await syncing.wait_gone(t.client, resources.NAMESPACES, "doomed", timeout=120)
    await syncing.wait_gone(env.superc, resources.NAMESPACES, super_doomed, timeout=120)


@syncing.deadline(180)
async def test_evicted_super_pod_deletes_the_tenant_pod(env: syncing.Env) -> None:
    """Evicting a running super Pod (super-side deletion) deletes its tenant Pod, with no new super Pod."""
    sx = await env.start()
    t = await env.tenant(sx, "evict")
    await syncing.tenant_namespace(t, "app")
    super_app = naming.super_namespace(t.key, "app")
    _, sup = await running_pod(env, t, "app", "victim")
    seen: list[syncing.Seen] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: syncing.record_events(
            env.superc, PODS, seen, namespace=super_app, task_status=task_status))
        await env.superc.create(PODS, {
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": "victim", "namespace": super_app}}, namespace=super_app, subresource="eviction")
        await syncing.wait_gone(t.client, PODS, "victim", namespace="app", timeout=60)
        await syncing.wait_quiet(sx, scans=0)
        nursery.cancel_scope.cancel()
    assert await syncing.get_or_none(env.superc, PODS, "victim", namespace=super_app) is None
    assert [e.type for e in seen if e.type == "ADDED"] == []  # never recreated in the super cluster
    assert seen[-1].type == "DELETED" and seen[-1].obj["metadata"]["uid"] == sup["metadata"]["uid"]
