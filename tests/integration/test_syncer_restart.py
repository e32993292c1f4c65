"""Syncer on the real test bed: a restarted syncer adopts what is synced and repairs only what changed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from appliance.kube import resources
from appliance.util import naming
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory

log = logging.getLogger(__name__)

CM, PODS = resources.CONFIGMAPS, resources.PODS
NAMESPACES = ("r1", "r2")
CONFIGMAPS_PER_NS = 100
PODS_PER_NS = 25
TOKEN_PODS = ("p-010", "p-011")  # these mount a tenant service-account token (a super Secret each)


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


def running(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return bool(status.get("phase") == "Running" and status.get("podIP") and pod["spec"].get("nodeName"))


async def populate(env: syncing.Env, t: syncing.BedTenant) -> None:
    """200 ConfigMaps, 50 Pods and a Service across two namespaces, all synced and Running."""
    bodies: list[tuple[resources.Resource, str, dict[str, Any]]] = []
    for ns in NAMESPACES:
        await syncing.tenant_namespace(t, ns)
        bodies.append((resources.SERVICES, ns, {"metadata": {"name": "web"},
                                                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}))
        bodies += [(CM, ns, {"metadata": {"name": f"cm-{i:03d}", "labels": {"i": str(i)}}, "data": {"v": str(i)}})
                   for i in range(CONFIGMAPS_PER_NS)]
        for i in range(PODS_PER_NS):
            name = f"p-{i:03d}"
            pod = syncing.pod_manifest(name, token=name in TOKEN_PODS)
            pod["metadata"]["labels"] = {"app": "worker"}  # not behind `web`: no super endpoints churn
            bodies.append((PODS, ns, pod))
    send, receive = trio.open_memory_channel[tuple[resources.Resource, str, dict[str, Any]]](len(bodies))
    for body in bodies:
        send.send_nowait(body)
    send.close()

    async def creator() -> None:
        async for res, ns, body in receive:
            await t.client.create(res, body, namespace=ns)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(creator)

    async def all_synced() -> bool:
        for ns in NAMESPACES:
            sns = naming.super_namespace(t.key, ns)
            cms = [c for c in (await env.superc.list(CM, namespace=sns)).items if c["metadata"]["name"].startswith("cm-")]
            super_pods = (await env.superc.list(PODS, namespace=sns)).items
            tenant_pods = (await t.client.list(PODS, namespace=ns)).items
            if len(cms) < CONFIGMAPS_PER_NS or sum(map(running, super_pods)) < PODS_PER_NS:
                return False
            if sum(map(running, tenant_pods)) < PODS_PER_NS:
                return False
        return True

    await syncing.wait_for(all_synced, timeout=180, what="200 ConfigMaps and 50 Running Pods synced")


@syncing.deadline(360)
async def test_restarted_syncer_changes_only_what_changed_while_it_was_down(env: syncing.Env) -> None:
    """A new syncer over a few hundred synced objects neither recreates nor deletes valid super
    objects (uid and resourceVersion kept, no watch events), and applies the changes made while
    no syncer ran: tenant edits, creates and deletes (the orphaned copy only the patrol can find),
    and a super Pod evicted meanwhile."""
    r1, r2 = "r1", "r2"
    async with env.syncer(patrol_period=1.0) as sx:
        t = await env.tenant(sx, "restart")
        await populate(env, t)
        await syncing.wait_quiet(sx)
    s1, s2 = naming.super_namespace(t.key, r1), naming.super_namespace(t.key, r2)

    # While no syncer runs:
    await t.client.patch(CM, "cm-000", {"data": {"v": "changed"}}, namespace=r1)
    await t.client.delete(CM, "cm-001", namespace=r1)
    await t.client.create(CM, {"metadata": {"name": "cm-new"}, "data": {"v": "new"}}, namespace=r2)
    await t.client.delete(PODS, "p-000", namespace=r1)  # bound: stays terminating without a syncer
    evicted = await env.superc.get(PODS, "p-000", namespace=s2)
    await env.superc.delete(PODS, "p-000", namespace=s2)
    await syncing.wait_gone(env.superc, PODS, "p-000", namespace=s2)
    expected = {  # super object → the event types a correct syncer causes
        ("configmaps", s1, "cm-000"): {"MODIFIED"},
        ("configmaps", s1, "cm-001"): {"DELETED"},
        ("configmaps", s2, "cm-new"): {"ADDED"},
        ("pods", s1, "p-000"): {"MODIFIED", "DELETED"},
    }
    before = await syncing.super_snapshot(env.superc, t)
    mine = {ns for _, ns, _ in before if ns} | {name for kind, _, name in before if kind == "namespace"}

    seen: list[syncing.Seen] = []
    tenant_seen: list[syncing.Seen] = []
    async with trio.open_nursery() as recorders:
        for res in (resources.NAMESPACES, *syncing.SUPER_KINDS):
            await recorders.start(lambda task_status, res=res: syncing.record_events(
                env.superc, res, seen, task_status=task_status))
        for res in (PODS, resources.NODES, CM):
            await recorders.start(lambda task_status, res=res: syncing.record_events(
                t.client, res, tenant_seen, task_status=task_status))
        async with env.syncer(patrol_period=1.0) as sx2:
            await env.serve(sx2, t)
            await syncing.wait_object(env.superc, CM, "cm-000", namespace=s1, where=lambda c: c["data"]["v"] == "changed")
            await syncing.wait_object(env.superc, CM, "cm-new", namespace=s2)
            await syncing.wait_gone(env.superc, CM, "cm-001", namespace=s1)
            await syncing.wait_gone(env.superc, PODS, "p-000", namespace=s1)
            await syncing.wait_gone(t.client, PODS, "p-000", namespace=r1, what="tenant pod deleted while down")
            await syncing.wait_gone(t.client, PODS, "p-000", namespace=r2, what="tenant pod of the evicted super pod")
            await syncing.wait_quiet(sx2)
        recorders.cancel_scope.cancel()

    unexpected = [(e.type, *e.ref) for e in seen
                  if (e.obj["metadata"].get("namespace") in mine or e.ref[2] in mine)
                  and e.type not in expected.get((e.kind, e.obj["metadata"].get("namespace", ""), e.ref[2]), ())]
    assert unexpected == [], unexpected
    assert not any(e.ref == ("pods", s2, "p-000") for e in seen), "the evicted super Pod was recreated"
    assert evicted["metadata"]["annotations"][naming.ANNOTATION_CLUSTER] == t.key
    after = await syncing.super_snapshot(env.superc, t)
    kept = {ref: v for ref, v in before.items() if ref not in expected}
    assert {ref: after.get(ref) for ref in kept} == kept
    tenant_writes = [(e.type, *e.ref) for e in tenant_seen if e.ref[2] != "p-000"]
    assert tenant_writes == [], tenant_writes
    complaints = [(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"], e["message"])
                  for e in (await t.client.list(resources.EVENTS)).items if e.get("reportingComponent") == "vc-syncer"]
    assert complaints == []  # nothing the syncer had to give up on, in either run
