"""The syncer's idle signals (a queue's `wait_idle`, `Syncer.wait_idle`, the patrol-scan event)
and which tenant events queue work at all.

Tests wait on these instead of polling queue internals; they run on trio's autojump clock with
no cluster (the Syncer is built with an ApiClient that is never called).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from appliance.kube import client as kclient
from appliance.kube import ratelimit
from appliance.kube.creds import Credentials
from appliance.metrics import Registry
from appliance.syncer import runtime
from appliance.syncer.fairqueue import TrioFairQueue
from appliance.syncer.resources import pods
from appliance.syncer.settings import SyncerSettings
from appliance.util import naming


def idle_syncer() -> runtime.Syncer:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.method} {request.url}")

    http = httpx.AsyncClient(transport=httpx.MockTransport(refuse), base_url="https://super:6443")
    api = kclient.ApiClient(http, creds=Credentials(server="https://super:6443"),
                            limiter=ratelimit.RateLimiter(qps=math.inf, burst=1))
    return runtime.Syncer(super_client=api, settings=SyncerSettings(), registry=Registry())


async def test_queue_wait_idle_returns_once_the_last_item_is_done() -> None:
    """wait_idle blocks while an item is ready or processing and returns when it is done."""
    q = TrioFairQueue()
    q.add("t", "a")
    finished: list[str] = []

    async def waiter() -> None:
        await q.wait_idle()
        finished.append("idle")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert [] == finished
        item = await q.get()
        await trio.testing.wait_all_tasks_blocked()
        assert [] == finished  # processing still counts as busy
        q.done(*item)
    assert ["idle"] == finished


async def test_queue_wait_idle_waits_out_a_delayed_retry(autojump_clock: trio.testing.MockClock) -> None:
    """An item waiting for its retry backoff keeps the queue busy until it is processed."""
    q = TrioFairQueue()
    q.add("t", "a")
    item = await q.get()
    assert q.retry(*item)
    q.done(*item)
    assert 1 == q.core.pending()

    async def worker() -> None:
        again = await q.get()
        q.forget(*again)
        q.done(*again)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        with trio.fail_after(10):
            await q.wait_idle()
    assert 0 == q.core.pending()


async def test_removing_a_tenant_wakes_idle_waiters() -> None:
    """Dropping the only tenant's queued items makes the queue idle."""
    q = TrioFairQueue()
    q.add("t", "a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(q.wait_idle)
        await trio.testing.wait_all_tasks_blocked()
        q.remove_tenant("t")


async def test_syncer_wait_idle_covers_every_queue() -> None:
    """Syncer.wait_idle returns only when the downward and upward queues are all empty."""
    sx = idle_syncer()
    sx.enqueue("pod", "tenant-key", ("ns", "p"))
    sx.enqueue_upward("tenant-key", "pod", "ns", "p")
    assert 2 == sx.busy()
    done = trio.Event()

    async def waiter() -> None:
        await sx.wait_idle()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        for q in (sx.queues["pod"], sx.upward):
            item = await q.get()
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            q.done(*item)
    assert done.is_set()
    assert 0 == sx.busy()


async def test_wait_patrol_scans_counts_finished_scans() -> None:
    """wait_patrol_scans(n) returns after n more scans, not before."""
    sx = idle_syncer()
    sx.patrol_scan_done()  # an earlier scan does not count
    seen: list[int] = []

    async def waiter() -> None:
        await sx.wait_patrol_scans(2)
        seen.append(sx.patrol_scans)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        sx.patrol_scan_done()
        await trio.testing.wait_all_tasks_blocked()
        assert [] == seen
        sx.patrol_scan_done()
    assert [3] == seen


# --- which tenant Pod changes queue a downward reconcile --------------------------------------------

def pod(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": "1", "labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}], "nodeName": "n1"},
        "status": {"phase": "Pending"},
    }
    for path, value in changes.items():
        section, key = path.split("__")
        base[section] = {**base[section], key: value}  # type: ignore[dict-item]
    return base


@pytest.mark.parametrize(("new", "matters"), [
    pytest.param(pod(status__phase="Running", metadata__resourceVersion="2"), False, id="status-only"),
    pytest.param(pod(metadata__labels={"a": "c"}, metadata__resourceVersion="2"), True, id="label"),
    pytest.param(pod(metadata__deletionTimestamp="2026-12-06T00:00:00Z"), True, id="terminating"),
    pytest.param(pod(spec__containers=[{"name": "c", "image": "nginx:2"}]), True, id="image"),
    pytest.param(pod(spec__nodeName="n2", status__conditions=[{"type": "PodScheduled"}]), False, id="binding"),
    pytest.param(pod(spec__readinessGates=[{"conditionType": "x/ready"}], status__conditions=[]), True,
                 id="readiness-gates"),
])
def test_pod_change_matters_downward(new: dict[str, Any], matters: bool) -> None:
    """Status-only changes and the binding of a tenant Pod without readiness gates skip the
    downward reconcile; metadata and other spec changes do not."""
    old = pod()
    if "readinessGates" in new["spec"]:
        old = {**old, "spec": new["spec"]}
    assert matters == pods.PodKind().tenant_change_matters(new, old)


def test_tenant_handler_skips_status_only_pod_changes() -> None:
    """The tenant Pod handler queues ADDED and real changes, not our own status writes and binding."""
    sx = idle_syncer()
    tenant = SimpleNamespace(key="tenant-key")
    handle = sx.tenant_handler(tenant, "pod")  # type: ignore[arg-type]
    handle("MODIFIED", pod(status__phase="Running", metadata__resourceVersion="2"), pod())
    assert 0 == sx.busy()
    handle("MODIFIED", pod(spec__nodeName="n2"), pod())  # our own binding
    assert 0 == sx.busy()
    handle("MODIFIED", pod(metadata__labels={"a": "c"}), pod())
    handle("ADDED", pod(), None)
    assert 1 == sx.busy()  # one key, queued once


async def test_super_pod_events_in_a_burst_cost_one_upward_reconcile(
        autojump_clock: trio.testing.MockClock) -> None:
    """Super Pod events within `upward_coalesce` of the first queue one upward item, ready after it."""
    sx = idle_syncer()
    sx.tenants["tenant-key"] = SimpleNamespace(key="tenant-key")  # type: ignore[assignment]
    handle = sx._super_handler("pod")
    spod = json.dumps({"metadata": {"name": "p", "namespace": "tenant-key-ns", "annotations": {
        naming.ANNOTATION_CLUSTER: "tenant-key", naming.ANNOTATION_NAMESPACE: "ns"}}, "spec": {}}).encode()
    handle("MODIFIED", spod, spod)
    await trio.sleep(sx.settings.upward_coalesce / 2)
    handle("MODIFIED", spod, spod)
    assert 0 == len(sx.upward.core)  # nothing ready yet: waiting for more events
    assert 1 == sx.upward.core.pending()
    assert ("tenant-key", ("pod", "ns", "p")) == await sx.upward.get()
    assert 1 == sx.upward.core.pending()  # the one item, now processing


async def test_pools_grow_while_every_worker_is_busy_and_shrink_when_idle(
        autojump_clock: trio.testing.MockClock) -> None:
    """A pool of 2 with growth 3 grows to 6 while items wait with all workers busy, never beyond,
    and its grown workers leave after pool_idle_exit without work."""
    sx = idle_syncer()
    q = TrioFairQueue()
    release = trio.Event()
    running: list[int] = []
    active = [0]

    async def worker(idle_exit: float | None) -> None:
        active[0] += 1
        try:
            while True:
                item = None
                with trio.move_on_after(math.inf if idle_exit is None else idle_exit):
                    item = await q.get()
                if item is None:
                    return
                running.append(1)
                await release.wait()
                q.done(*item)
        finally:
            active[0] -= 1

    limit = 2 * 3
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sx._pool, worker, q, 2, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert 2 == active[0]
        for i in range(3 * limit):
            q.add(f"t{i % 3}", i)
            await trio.testing.wait_all_tasks_blocked()
        assert limit == active[0]  # grown to the bound, no further
        assert limit == len(running)
        release.set()
        await q.wait_idle()
        await trio.sleep(sx.settings.pool_idle_exit + 1)
        assert 2 == active[0]  # the grown workers left; the base ones stay
        nursery.cancel_scope.cancel()


def test_event_upward_has_its_own_queue() -> None:
    """Super Events are queued apart from the upward queue, which Pods and other kinds use."""
    sx = idle_syncer()
    assert "event" in sx.queues
    assert sx.queues["event"] is not sx.upward


async def test_a_work_item_past_the_reconcile_timeout_is_cancelled_and_retried(
        autojump_clock: trio.testing.MockClock) -> None:
    """A reconcile stuck longer than `reconcile_timeout` is cancelled and counts as an error to retry."""
    sx = idle_syncer()
    started = trio.current_time()

    async def stuck(tenant: object) -> None:
        await trio.sleep_forever()

    outcome = await sx._attempt(stuck, SimpleNamespace(key="t"), ("ns", "p"), "pod")  # type: ignore[arg-type]
    assert outcome == ("Error", None)
    assert trio.current_time() - started == pytest.approx(sx.settings.reconcile_timeout)
