"""Lease safety against the real super apiserver: a replica stops before another may start.

Two in-process `Coordinator`s share VirtualClusters in the real super cluster, with short
timings (lease 3 s, renew deadline 2 s, retry 0.5 s). Replica A's connection runs through a
pausable TCP relay so its renewals can be made to hang, as in a network partition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from appliance.controlplane.cluster import free_port
from appliance.kube import creds as kcreds
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient, open_client
from appliance.replicas import lease
from appliance.replicas.coordinator import Coordinator, LeaseSettings
from tests.integration import syncing
from tests.tally import Tally
from tests.testbed import SuperCluster, wait_for

pytestmark = pytest.mark.scaleout

FAST = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.5}


class Relay:
    """Loopback TCP relay to the super apiserver that can stop moving bytes (TLS passes through)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.flowing = True
        self._resumed = trio.Event()

    def pause(self) -> None:
        self.flowing = False
        self._resumed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, down: trio.SocketStream) -> None:
        async with down, await trio.open_tcp_stream("127.0.0.1", self.target_port) as up, \
                trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, down, up, nursery.cancel_scope)
            nursery.start_soon(self._pump, up, down, nursery.cancel_scope)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async for data in src:
                while not self.flowing:
                    await self._resumed.wait()
                await dst.send_all(data)
        scope.cancel()


@contextlib.asynccontextmanager
async def _vcs(superc: ApiClient, count: int, *, provisioner: str = "import") -> AsyncIterator[tuple[str, str]]:
    """`count` VirtualClusters in a fresh namespace, labelled for this test; yields (namespace, selector)."""
    run = uuid.uuid4().hex[:8]
    ns = f"guard-{run}"
    await superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
    try:
        for i in range(count):
            await superc.create(resources.VIRTUALCLUSTERS, {
                "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
                "metadata": {"name": f"vc{i}", "namespace": ns, "labels": {"guard": run}},
                "spec": {"clusterVersionName": "none"},
            }, namespace=ns)
            await superc.patch(resources.VIRTUALCLUSTERS, f"vc{i}", {"status": {"provisioner": provisioner}},
                               namespace=ns, subresource="status")
        yield ns, f"guard={run}"
    finally:
        with trio.move_on_after(10, shield=True):
            await superc.delete(resources.NAMESPACES, ns)


@pytest.fixture
async def lease_ns(super_cluster: SuperCluster) -> AsyncIterator[str]:
    """A fresh namespace for the Leases (the coordinators create it), removed afterwards."""
    name = f"leases-{uuid.uuid4().hex[:8]}"
    yield name
    async with syncing.super_client(super_cluster) as superc:
        with contextlib.suppress(errors.NotFound):
            await superc.delete(resources.NAMESPACES, name)


def _settings(ident: str, lease_ns: str, selector: str, placement: str = "host-a:/data") -> LeaseSettings:
    return LeaseSettings(namespace=lease_ns, identity=ident, placement=placement, label_selector=selector, **FAST)


async def _holder(superc: ApiClient, lease_ns: str, ref: tuple[str, str]) -> str:
    try:
        obj = await superc.get(resources.LEASES, lease.tenant_lease_name(ref), namespace=lease_ns)
    except errors.NotFound:
        return ""
    return lease.record(obj).holder


async def _guarded(coord: Coordinator, ref: tuple[str, str], ended: dict[str, float],
                   *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """What the manager and syncer do: work for the tenant only inside its guard."""
    with coord.guard(ref):
        task_status.started()
        await trio.sleep_forever()
    ended[f"{ref[0]}/{ref[1]}"] = trio.current_time()


async def test_a_partitioned_holder_stops_before_another_replica_takes_over(super_cluster: SuperCluster, lease_ns: str) -> None:
    sc = super_cluster
    await syncing.apply_crds(sc)
    async with syncing.super_client(sc) as superc, _vcs(superc, 1) as (ns, selector):
        ref = (ns, "vc0")
        base = await kcreds.load_kubeconfig(sc.kubeconfig)
        relay = Relay(int(sc.url.rsplit(":", 1)[1]))
        via_relay = dataclasses.replace(base, server=f"https://127.0.0.1:{relay.port}")
        ended: dict[str, float] = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.serve)
            async with open_client(via_relay, timeout=30) as client_a, trio.open_nursery() as a_nursery:
                a = Coordinator(client_a, _settings("replica-a", lease_ns, selector))
                await a_nursery.start(a.run)
                assert a.holds(ref)
                await a_nursery.start(_guarded, a, ref, ended)
                b = Coordinator(superc, _settings("replica-b", lease_ns, selector))
                await nursery.start(b.run)
                assert not b.holds(ref) and await _holder(superc, lease_ns, ref) == "replica-a"

                relay.pause()  # A's renewals now hang, like a partition
                paused_at = trio.current_time()
                await wait_for(lambda: _as_async(b.holds(ref)), timeout=20, what="B takes the tenant")
                taken_at = trio.current_time()
                key = f"{ns}/vc0"
                assert key in ended, "A's guarded work must have been cancelled"
                assert not a.holds(ref)
                print(f"\nA stopped {ended[key] - paused_at:.1f} s after the partition; "
                      f"B took over after {taken_at - paused_at:.1f} s")
                assert ended[key] < taken_at, "A must stop before B starts"
                assert ended[key] - paused_at <= FAST["renew_deadline"] + FAST["retry_period"] + 1.0
                assert await _holder(superc, lease_ns, ref) == "replica-b"
                a_nursery.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def test_a_stolen_lease_cancels_the_guard_and_graceful_stop_hands_over(super_cluster: SuperCluster, lease_ns: str) -> None:
    sc = super_cluster
    await syncing.apply_crds(sc)
    async with syncing.super_client(sc) as superc, _vcs(superc, 2) as (ns, selector):
        refs = [(ns, "vc0"), (ns, "vc1")]
        ended: dict[str, float] = {}
        async with trio.open_nursery() as nursery:
            a_scope = trio.CancelScope()
            a = Coordinator(superc, _settings("replica-a", lease_ns, selector))

            async def run_a(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with a_scope:
                    await a.run(task_status=task_status)

            await nursery.start(run_a)
            assert all(a.holds(r) for r in refs)  # alone: it takes everything
            for r in refs:
                await nursery.start(_guarded, a, r, ended)
            # someone overwrites vc0's Lease: A's next renewal conflicts and it stops at once
            name = lease.tenant_lease_name(refs[0])
            current = await superc.get(resources.LEASES, name, namespace=lease_ns)
            current["spec"]["holderIdentity"] = "intruder"
            await superc.update(resources.LEASES, current, namespace=lease_ns)
            await wait_for(lambda: _as_async(f"{ns}/vc0" in ended), timeout=10, what="guard of the stolen tenant")
            assert not a.holds(refs[0]) and a.holds(refs[1])

            b = Coordinator(superc, _settings("replica-b", lease_ns, selector))
            await nursery.start(b.run)
            stopped_at = trio.current_time()
            a_scope.cancel()  # graceful stop: guards end, then Leases are released
            await wait_for(lambda: _as_async(b.holds(refs[1])), timeout=10, what="B takes vc1 after A stops")
            assert f"{ns}/vc1" in ended and ended[f"{ns}/vc1"] <= trio.current_time()
            print(f"\nhand-over on graceful stop: {trio.current_time() - stopped_at:.2f} s")
            assert trio.current_time() - stopped_at < FAST["lease_duration"]
            heartbeat = lease.replica_lease_name("replica-a")
            with pytest.raises(errors.NotFound):
                await superc.get(resources.LEASES, heartbeat, namespace=lease_ns)
            nursery.cancel_scope.cancel()


async def test_process_mode_tenants_stay_on_their_placement(super_cluster: SuperCluster, lease_ns: str) -> None:
    sc = super_cluster
    await syncing.apply_crds(sc)
    async with syncing.super_client(sc) as superc, _vcs(superc, 1, provisioner="process") as (ns, selector):
        ref = (ns, "vc0")
        async with trio.open_nursery() as nursery:
            a_scope = trio.CancelScope()
            a = Coordinator(superc, _settings("replica-a", lease_ns, selector, placement="host-a:/data"))

            async def run_a(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with a_scope:
                    await a.run(task_status=task_status)

            await nursery.start(run_a)

            async def bound() -> bool:
                obj = await superc.get(resources.LEASES, lease.tenant_lease_name(ref), namespace=lease_ns)
                return lease.record(obj).annotations.get(lease.ANNOTATION_BOUND_TO) == "host-a:/data"

            await wait_for(bound, timeout=10, what="the Lease bound to A's placement")
            other = Coordinator(superc, _settings("replica-b", lease_ns, selector, placement="host-b:/data"))
            await nursery.start(other.run)
            a_scope.cancel()

            async def unavailable_event() -> list[dict[str, Any]]:
                items = (await superc.list(resources.EVENTS, namespace=ns)).items
                return [e for e in items if e.get("reason") == "TenantUnavailable"]

            events = await wait_for(unavailable_event, timeout=15, what="TenantUnavailable event")
            assert "host-a:/data" in events[0]["message"]  # type: ignore[index]
            assert not other.holds(ref)
            same = Coordinator(superc, _settings("replica-c", lease_ns, selector, placement="host-a:/data"))
            await nursery.start(same.run)
            await wait_for(lambda: _as_async(same.holds(ref)), timeout=10, what="a replica on host-a takes it")
            assert not other.holds(ref)
            nursery.cancel_scope.cancel()


async def _as_async(value: object) -> object:
    return value


async def _slow_to_stop(coord: Coordinator, ref: tuple[str, str], ended: dict[str, float], seconds: float,
                        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Guarded work whose stop takes `seconds`, as a tenant's processes do with keep-control-planes = false."""
    with coord.guard(ref):
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(seconds)  # the simulated slow stop (cleanup work), not a wait for state
    ended[f"{ref[0]}/{ref[1]}"] = trio.current_time()


@pytest.mark.security
async def test_a_slow_stop_of_a_lost_tenant_keeps_the_other_tenants(
    super_cluster: SuperCluster, lease_ns: str, tally: Tally,
) -> None:
    """vc0's Lease is stolen and its work needs 3 renew deadlines to stop: meanwhile vc1 stays held."""
    sc = super_cluster
    await syncing.apply_crds(sc)
    slow = 3 * FAST["renew_deadline"]
    async with syncing.super_client(sc) as superc, _vcs(superc, 2) as (ns, selector):
        refs = [(ns, "vc0"), (ns, "vc1")]
        ended: dict[str, float] = {}
        async with trio.open_nursery() as nursery:
            a = Coordinator(superc, _settings("replica-a", lease_ns, selector))
            await nursery.start(a.run)
            assert all(a.holds(r) for r in refs)
            await nursery.start(_slow_to_stop, a, refs[0], ended, slow)
            await nursery.start(_guarded, a, refs[1], ended)
            name = lease.tenant_lease_name(refs[0])
            current = await superc.get(resources.LEASES, name, namespace=lease_ns)
            current["spec"]["holderIdentity"] = "intruder"
            await superc.update(resources.LEASES, current, namespace=lease_ns)
            await wait_for(lambda: _as_async(not a.holds(refs[0])), timeout=10, what="A to drop the stolen tenant")
            lost_at = trio.current_time()
            while f"{ns}/vc0" not in ended:  # the slow stop runs; vc1 must stay held all along
                assert a.holds(refs[1]), f"vc1 dropped {trio.current_time() - lost_at:.1f} s into vc0's slow stop"
                assert trio.current_time() - lost_at < slow + 10, "vc0's stop never ended"
                await trio.sleep(FAST["retry_period"] / 2)  # sampling an invariant, not waiting for it
            assert f"{ns}/vc1" not in ended and a.holds(refs[1])
            tally.add("leases: other tenants during a lost tenant's slow stop (kept)", tried=1, held=1)
            nursery.cancel_scope.cancel()
