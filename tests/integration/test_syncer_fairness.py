"""Syncer on the real test bed: one tenant's flood of Pods does not starve a quiet tenant."""

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

FLOOD = 1000
CREATORS = 50
#: the flood backlog (created in the tenant, not yet in the super cluster) when the quiet Pod is made
BACKLOG = 300
#: flood Pods the syncer may create between the quiet Pod's creation and its sync: its tenant watch
#: event in flight, and one round-robin turn per busy worker
SLACK = 100


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


def gated_pod(name: str) -> dict[str, Any]:
    """A Pod the super scheduler leaves alone (a scheduling gate), so the flood costs no kwok work."""
    return syncing.pod_manifest(name, schedulingGates=[{"name": "example.com/hold"}])


async def ready_tenant(env: syncing.Env, sx: Any, name: str, ns: str) -> syncing.BedTenant:
    """A tenant whose namespace `ns` is synced and whose first Pod made it to the super cluster."""
    t = await env.tenant(sx, name)
    await syncing.tenant_namespace(t, ns)
    await t.client.create(resources.PODS, gated_pod("warm-up"), namespace=ns)
    await syncing.wait_object(env.superc, resources.PODS, "warm-up", namespace=naming.super_namespace(t.key, ns))
    return t


@syncing.deadline(300)
async def test_a_flood_of_pods_does_not_starve_a_quiet_tenant(env: syncing.Env) -> None:
    """While 1,000 Pods of one tenant wait to be synced, another tenant's single Pod is synced
    ahead of that backlog (round-robin across tenants), not after it."""
    # A fixed, small Pod pool: the test needs a backlog to overtake, and the default pool (which
    # grows to twice its size) can keep up with the 50 creators; round-robin is the same at any size.
    sx = await env.start(pod_workers=4, downward_growth=1)
    flood = await ready_tenant(env, sx, "flood", "bulk")
    quiet = await ready_tenant(env, sx, "quiet", "calm")
    flood_ns, quiet_ns = naming.super_namespace(flood.key, "bulk"), naming.super_namespace(quiet.key, "calm")

    seen: list[syncing.Seen] = []
    created: set[str] = set()  # flood Pods the tenant apiserver has accepted
    names = [f"f-{i:04d}" for i in range(FLOOD)]

    def synced(ns: str) -> list[str]:
        return [e.obj["metadata"]["name"] for e in seen if e.type == "ADDED" and e.obj["metadata"]["namespace"] == ns]

    enough = trio.Event()

    async def creator(mine: list[str]) -> None:
        for name in mine:
            if enough.is_set():
                return  # bounded: the rest of the flood is not needed (no request is cancelled midway)
            await flood.client.create(resources.PODS, gated_pod(name), namespace="bulk")
            created.add(name)

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: syncing.record_events(
                env.superc, resources.PODS, seen, task_status=task_status))
            async with trio.open_nursery() as creators:
                for i in range(CREATORS):
                    creators.start_soon(creator, names[i::CREATORS])
                while len(created) - len(set(synced(flood_ns)) & created) < BACKLOG:
                    assert len(created) < FLOOD, "the syncer kept up with the whole flood: no backlog to test"
                    await trio.sleep(0.01)  # both sides are other processes: poll the counters
                await quiet.client.create(resources.PODS, gated_pod("lonely"), namespace="calm")
                backlog = created - set(synced(flood_ns))
                while "lonely" not in synced(quiet_ns):
                    await trio.sleep(0.01)
                flood_synced = synced(flood_ns)
                enough.set()
            nursery.cancel_scope.cancel()

    before_quiet = flood_synced  # flood Pods created in super before the quiet tenant's Pod
    overtaken = backlog - set(before_quiet)
    log.info("backlog %d when the quiet pod was created; %d of it synced before it; %d flood pods synced in all",
             len(backlog), len(backlog & set(before_quiet)), len(before_quiet))
    assert len(set(before_quiet)) < FLOOD  # the quiet Pod did not wait for the end of the flood
    assert len(backlog & set(before_quiet)) <= SLACK, (len(backlog), len(backlog & set(before_quiet)))
    assert len(overtaken) >= BACKLOG - SLACK

    # Clean up the flood: the tenant's namespace controller deletes its Pods, the syncer their copies
    # and then the super namespace. Waiting for the syncer to finish also means no request of
    # its is cut short when the test stops it.
    await flood.client.delete(resources.NAMESPACES, "bulk")
    await syncing.wait_gone(flood.client, resources.NAMESPACES, "bulk", timeout=120)
    await syncing.wait_gone(env.superc, resources.NAMESPACES, flood_ns, timeout=120)
    await syncing.wait_quiet(sx, scans=0)
