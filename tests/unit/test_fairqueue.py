"""The fair downward-sync queue: pure core (no clock) and its thin trio wrapper (virtual clock)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Hashable

import pytest
import trio
import trio.testing

from appliance.syncer import fairqueue
from appliance.syncer.fairqueue import FairQueue, TrioFairQueue


def drain(queue: FairQueue, now: float = 0.0) -> list[tuple[Hashable, Hashable]]:
    """Get and finish every ready item, in order."""
    out = []
    while (item := queue.get_nowait(now)) is not None:
        queue.done(*item)
        out.append(item)
    return out


# --- fairness -------------------------------------------------------------------------------
def test_basic_and_fair_with_ten_consumers() -> None:
    """5 tenants x 500 items, 10 consumers: every tenant gets exactly 500, one per tenant per turn."""
    queue = FairQueue()
    for i, tenant in itertools.product(range(500), range(5)):
        queue.add(f"t{tenant}", i)
    order = []
    while len(queue):
        batch = [item for _ in range(10) if (item := queue.get_nowait(0.0)) is not None]
        order += batch
        for item in reversed(batch):
            queue.done(*item)
    assert {f"t{t}": 500 for t in range(5)} == Counter(tenant for tenant, _ in order)
    for turn in range(500):
        assert {f"t{t}" for t in range(5)} == {tenant for tenant, _ in order[turn * 5 : turn * 5 + 5]}
    assert [list(range(500))] * 5 == [[k for t, k in order if t == f"t{n}"] for n in range(5)]


@pytest.mark.parametrize("flooders", [1, 3, 9])
def test_quiet_tenant_served_within_one_turn(flooders: int) -> None:
    """A quiet tenant's single item, added after 1000-item floods, is served within N gets."""
    queue = FairQueue()
    for tenant in range(flooders):
        for i in range(1000):
            queue.add(f"flood{tenant}", i)
    for _ in range(37):  # the floods are mid-way through their turns
        item = queue.get_nowait(0.0)
        assert item is not None
        queue.done(*item)
    queue.add("quiet", "pod")
    active = flooders + 1
    served = [queue.get_nowait(0.0) for _ in range(active)]
    assert ("quiet", "pod") in served


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        pytest.param({}, "abcabc", id="default-weight-1"),
        pytest.param({"a": 3}, "aaabcaaabc", id="a-weight-3"),
        pytest.param({"a": 2, "b": 2}, "aabbcaabbc", id="a-b-weight-2"),
    ],
)
def test_weighted_round_robin(weights: dict[str, int], expected: str) -> None:
    """A tenant of weight w is served w items in a row per turn."""
    queue = FairQueue()
    for tenant, weight in weights.items():
        queue.set_weight(tenant, weight)
    for tenant, i in itertools.product("abc", range(10)):
        queue.add(tenant, i)
    assert expected == "".join(str(queue.get_nowait(0.0)[0]) for _ in expected)  # type: ignore[index]


def test_set_weight_rejects_zero() -> None:
    """Weights below 1 are refused."""
    with pytest.raises(ValueError, match="weight"):
        FairQueue().set_weight("a", 0)


def test_tenant_fifo_order() -> None:
    """Items of one tenant come out in the order they were added."""
    queue = FairQueue()
    for key in "zyx":
        queue.add("t", key)
    assert [("t", "z"), ("t", "y"), ("t", "x")] == drain(queue)


# --- de-dup and processing -----------------------------------------------------------------------
def test_duplicates_collapse() -> None:
    """Adding a queued key again does not grow the queue; the same key of two tenants are two items."""
    queue = FairQueue()
    queue.add("a", "k")
    queue.add("a", "k")
    queue.add("b", "k")
    assert 2 == len(queue)
    assert [("a", "k"), ("b", "k")] == drain(queue)


def test_readd_during_processing_requeued_on_done() -> None:
    """A key re-added while processing is not handed out again until done(), then exactly once."""
    queue = FairQueue()
    queue.add("a", "k")
    assert ("a", "k") == queue.get_nowait(0.0)
    queue.add("a", "k")
    queue.add("a", "k")
    assert queue.get_nowait(0.0) is None
    assert 0 == len(queue)
    queue.done("a", "k")
    assert [("a", "k")] == drain(queue)


def test_done_without_readd_does_not_requeue() -> None:
    """done() of an item nobody re-added leaves the queue empty."""
    queue = FairQueue()
    queue.add("a", "k")
    queue.get_nowait(0.0)
    queue.done("a", "k")
    assert queue.get_nowait(0.0) is None
    assert 0 == queue.statistics()["processing"]


# --- retries, backoff, delays -------------------------------------------------------------------
def test_backoff_doubles_from_5ms_up_to_cap() -> None:
    """The n-th retry waits 5 ms · 2^(n-1), capped at max_delay."""
    queue = FairQueue(max_delay=1.0)
    assert [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0] == [queue.backoff(n) for n in range(10)]
    assert 1.0 == queue.backoff(10_000)


def test_retry_schedules_growing_delays() -> None:
    """Each retry re-queues the key after the next backoff step, measured from `now`."""
    queue = FairQueue()
    queue.add("a", "k")
    now = 100.0
    for attempt in range(5):
        assert ("a", "k") == queue.get_nowait(now)
        assert queue.retry("a", "k", now)
        queue.done("a", "k")
        expected = now + 0.005 * 2**attempt
        assert expected == queue.next_wakeup()
        assert queue.get_nowait(expected - 1e-9) is None
        now = expected
    assert 5 == queue.num_retries("a", "k")


def test_dropped_after_16_retries() -> None:
    """After 16 retries the next retry() returns False, forgets the key and counts a drop."""
    queue = FairQueue()
    queue.add("a", "k")
    now = 0.0
    results = []
    for _ in range(17):
        item = queue.get_nowait(now)
        assert ("a", "k") == item
        results.append(queue.retry("a", "k", now))
        queue.done("a", "k")
        now += 2000.0
    assert [True] * 16 + [False] == results
    assert queue.get_nowait(now) is None
    assert 0 == queue.num_retries("a", "k")
    assert 1 == queue.statistics()["dropped"]
    assert "ExceedMaxRetryAttempts" == fairqueue.REASON_MAX_RETRIES


def test_forget_resets_backoff() -> None:
    """forget() after a success restarts the backoff at its base delay."""
    queue = FairQueue()
    for _ in range(3):
        queue.retry("a", "k", 0.0)
    queue.forget("a", "k")
    assert 0 == queue.num_retries("a", "k")
    drain(queue, now=1.0)
    queue.retry("a", "k", 10.0)
    assert 10.005 == queue.next_wakeup()


@pytest.mark.parametrize(
    ("delays", "expected_wakeup"),
    [
        pytest.param([5.0], 5.0, id="single"),
        pytest.param([5.0, 2.0], 2.0, id="earlier-wins"),
        pytest.param([2.0, 5.0], 2.0, id="later-ignored"),
    ],
)
def test_add_after_keeps_earliest_deadline(delays: list[float], expected_wakeup: float) -> None:
    """A key delayed twice is queued once, at the earliest deadline."""
    queue = FairQueue()
    for delay in delays:
        queue.add_after("a", "k", delay, 0.0)
    assert expected_wakeup == queue.next_wakeup()
    assert 1 == queue.statistics()["delayed"]
    assert queue.get_nowait(expected_wakeup - 0.001) is None
    assert [("a", "k")] == drain(queue, now=expected_wakeup)
    assert queue.next_wakeup() is None


def test_add_after_non_positive_delay_is_immediate() -> None:
    """A delay of zero or less queues the key at once."""
    queue = FairQueue()
    queue.add_after("a", "k", 0.0, 50.0)
    queue.add_after("a", "j", -1.0, 50.0)
    assert 2 == len(queue)
    assert queue.next_wakeup() is None


def test_delayed_key_already_queued_collapses() -> None:
    """A delayed key whose deadline passes while it is still queued is not duplicated."""
    queue = FairQueue()
    queue.add("a", "k")
    queue.add_after("a", "k", 1.0, 0.0)
    assert [("a", "k")] == drain(queue, now=2.0)


def test_delayed_items_promoted_in_deadline_order() -> None:
    """Delayed keys of one tenant enter its FIFO in deadline order."""
    queue = FairQueue()
    queue.add_after("a", "late", 3.0, 0.0)
    queue.add_after("a", "early", 1.0, 0.0)
    queue.add_after("a", "mid", 2.0, 0.0)
    assert ["early", "mid", "late"] == [k for _, k in drain(queue, now=10.0)]


# --- tenants ---------------------------------------------------------------------------------------
def test_remove_tenant_drops_everything() -> None:
    """remove_tenant drops ready, delayed and re-added-while-processing items of that tenant only."""
    queue = FairQueue()
    queue.add("a", "busy")
    assert ("a", "busy") == queue.get_nowait(0.0)
    queue.add("a", "busy")
    queue.add("a", "ready")
    queue.add_after("a", "later", 1.0, 0.0)
    queue.retry("a", "ready", 0.0)
    queue.add("b", "other")
    queue.remove_tenant("a")
    queue.done("a", "busy")
    assert [("b", "other")] == drain(queue, now=10.0)
    assert {"length": 0, "processing": 0, "delayed": 0, "retrying": 0} == {
        k: v for k, v in queue.statistics().items() if k in ("length", "processing", "delayed", "retrying")
    }


def test_collect_idle_removes_only_long_idle_subqueues() -> None:
    """Empty sub-queues untouched for idle_after seconds are collected; busy ones are not."""
    queue = FairQueue()
    queue.set_weight("idle", 2)
    for tenant in ("idle", "busy", "delayed", "working"):
        queue.add(tenant, "k")
    drain(queue)
    queue.add("working", "k2")
    queue.add("busy", "k2")
    queue.add_after("delayed", "k", 1000.0, 0.0)
    assert ("working", "k2") == queue.get_nowait(0.0)
    assert [] == queue.collect_idle(0.0)  # clears the "touched" marks
    assert [] == queue.collect_idle(10.0)  # first seen idle
    assert [] == queue.collect_idle(309.0)
    assert ["idle"] == queue.collect_idle(310.0)
    assert {"busy", "delayed", "working"} == set(queue.statistics()["tenants"])
    queue.remove_tenant("busy")
    queue.add("idle", "again")  # recreated on demand, weight kept
    queue.add("idle", "again2")
    queue.add("working", "k3")
    assert ["idle", "idle", "working"] == [t for t, _ in drain(queue)]


def test_collect_idle_activity_resets_the_clock() -> None:
    """A sub-queue used between two collections starts its idle period again."""
    queue = FairQueue()
    queue.add("a", "k")
    drain(queue)
    queue.collect_idle(0.0)
    queue.collect_idle(1.0)
    queue.add("a", "k")
    drain(queue)
    assert [] == queue.collect_idle(400.0)
    assert [] == queue.collect_idle(401.0)
    assert ["a"] == queue.collect_idle(701.0)


def test_statistics() -> None:
    """statistics() reports ready length per tenant, processing and delayed counts."""
    queue = FairQueue()
    queue.add("a", 1)
    queue.add("a", 2)
    queue.add("b", 1)
    queue.get_nowait(0.0)
    queue.add_after("c", 1, 5.0, 0.0)
    assert {
        "length": 2,
        "tenants": {"a": 1, "b": 1},
        "processing": 1,
        "delayed": 1,
        "retrying": 0,
        "dropped": 0,
    } == queue.statistics()


# --- trio wrapper -----------------------------------------------------------------------------------
async def test_trio_get_waits_for_add(autojump_clock: trio.testing.MockClock) -> None:
    """get() parks until an item is added, and returns it without time passing."""
    queue = TrioFairQueue()
    results: list[tuple[Hashable, Hashable]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(queue, results, 1))
        await trio.testing.wait_all_tasks_blocked()
        assert 1 == queue.statistics()["waiting_workers"]
        queue.add("a", "k")
    assert [("a", "k")] == results
    assert 0 == trio.current_time()


async def _collect(queue: TrioFairQueue, results: list[tuple[Hashable, Hashable]], count: int) -> None:
    for _ in range(count):
        item = await queue.get()
        results.append(item)
        queue.done(*item)


async def test_trio_add_after_wakes_at_deadline(autojump_clock: trio.testing.MockClock) -> None:
    """A parked get() returns a delayed item exactly at its deadline, even one added while parked."""
    queue = TrioFairQueue()
    queue.add_after("a", "late", 10.0)
    seen = []

    async def worker() -> None:
        for _ in range(2):
            item = await queue.get()
            seen.append((item[1], trio.current_time()))
            queue.done(*item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        queue.add_after("a", "early", 3.0)
    assert [("early", 3.0), ("late", 10.0)] == seen


async def test_trio_retry_backoff_on_virtual_clock(autojump_clock: trio.testing.MockClock) -> None:
    """Retries come back after 5, 10, 20 ms of trio time; the 17th retry is refused."""
    queue = TrioFairQueue()
    queue.add("a", "k")
    times = []
    for _ in range(4):
        item = await queue.get()
        times.append(round(trio.current_time(), 6))
        assert queue.retry(*item)
        queue.done(*item)
    assert [0.0, 0.005, 0.015, 0.035] == times
    for _ in range(12):
        item = await queue.get()
        assert queue.retry(*item)
        queue.done(*item)
    item = await queue.get()
    assert not queue.retry(*item)
    queue.done(*item)
    with trio.move_on_after(10_000) as scope:
        await queue.get()
    assert scope.cancelled_caught


async def test_trio_ten_workers_five_tenants(autojump_clock: trio.testing.MockClock) -> None:
    """10 workers drain 5 x 500 items: each tenant exactly 500, no key held by two workers at once."""
    queue = TrioFairQueue()
    for i, tenant in itertools.product(range(500), range(5)):
        queue.add(tenant, i)
    in_flight: set[tuple[Hashable, Hashable]] = set()
    counts: Counter[Hashable] = Counter()
    all_done = trio.Event()

    async def worker() -> None:
        while True:
            item = await queue.get()
            assert item not in in_flight
            in_flight.add(item)
            await trio.sleep(0.001)
            _, key = item
            assert isinstance(key, int)
            if key % 50 == 0 and counts[(item, "readd")] == 0:
                counts[(item, "readd")] += 1
                queue.add(*item)  # re-added while processing: must wait for done()
            in_flight.discard(item)
            counts[item[0]] += 1
            queue.done(*item)
            if not len(queue.core) and not queue.core.statistics()["processing"]:
                all_done.set()

    with trio.move_on_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(worker)
            await all_done.wait()
            nursery.cancel_scope.cancel()
    assert {t: 510 for t in range(5)} == {t: counts[t] for t in range(5)}


async def test_trio_cancelled_get_takes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    """A get() cancelled while parked or before starting leaves no item processing."""
    queue = TrioFairQueue()
    with trio.move_on_after(1):
        await queue.get()
    queue.add("a", "k")
    with trio.CancelScope() as scope:
        scope.cancel()
        await queue.get()
    assert 0 == queue.statistics()["processing"]
    assert 1 == len(queue.core)


async def test_trio_parked_workers_share_items_due_together(autojump_clock: trio.testing.MockClock) -> None:
    """Three parked workers each take one of three items due at the same deadline, at that deadline."""
    queue = TrioFairQueue()
    seen = []

    async def worker() -> None:
        item = await queue.get()
        seen.append((item, trio.current_time()))
        await trio.sleep(100)  # hold the item: the others must be served by other workers
        queue.done(*item)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        for tenant in "abc":
            queue.add_after(tenant, "k", 1.0)
    assert [(("a", "k"), 1.0), (("b", "k"), 1.0), (("c", "k"), 1.0)] == sorted(seen)


async def test_trio_collect_idle_and_remove_tenant(autojump_clock: trio.testing.MockClock) -> None:
    """The wrapper collects idle sub-queues on trio's clock and drops removed tenants' items."""
    queue = TrioFairQueue()
    queue.add("idle", "k")
    queue.done(*await queue.get())
    queue.add("gone", "k")
    queue.remove_tenant("gone")
    assert [] == queue.collect_idle()
    assert [] == queue.collect_idle()
    await trio.sleep(fairqueue.IDLE_AFTER)
    assert ["idle"] == queue.collect_idle()
    assert 0 == len(queue.core)
