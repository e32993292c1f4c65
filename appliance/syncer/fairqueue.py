"""The downward-sync work queue: per-tenant FIFOs of keys, served fairly across tenants.

`FairQueue` is a pure synchronous data structure (no trio, no clock: callers pass `now`);
`TrioFairQueue` is the thin trio shell that parks workers until an item is ready.

Theory of operation. An *item* is a `(tenant, key)` pair; the key is any hashable identity
(never an object: workers read the latest state from a cache). Invariants:
  1. An item is in at most one of: ready (in its tenant's FIFO), processing. `dirty` holds every
     ready item plus every processing item that was re-added; `done()` re-queues the latter.
     So duplicates collapse and no item is ever handed to two workers at once.
  2. `ring` lists exactly the tenants whose FIFO is non-empty, in service order. The head tenant
     serves up to `weight` items in a row, then moves to the tail (weighted round-robin). A tenant
     whose FIFO becomes non-empty joins at the tail, so a quiet tenant waits at most one item per
     other active tenant (times their weights), however long their FIFOs are.
  3. Delayed items live in a heap until their deadline; `waiting` maps an item to the sequence
     number of its live heap entry (earliest deadline wins, stale entries are skipped lazily).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import trio

MAX_RETRIES: Final = 16
BASE_DELAY: Final = 0.005
MAX_DELAY: Final = 1000.0
IDLE_AFTER: Final = 300.0
REASON_MAX_RETRIES: Final = "ExceedMaxRetryAttempts"

Item: TypeAlias = tuple[Hashable, Hashable]


@dataclass(slots=True)
class _SubQueue:
    items: deque[Hashable] = field(default_factory=deque)
    credit: int = 0  # items left in the current round-robin turn
    idle_since: float | None = None  # set by collect_idle() when first seen idle
    touched: bool = False  # activity since the last collect_idle()


class FairQueue:
    """Per-tenant FIFO work queue with de-duplication, weighted round-robin, retries and delays."""

    def __init__(
        self,
        *,
        max_retries: int = MAX_RETRIES,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self._max_retries = max_retries
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._subqueues: dict[Hashable, _SubQueue] = {}
        self._weights: dict[Hashable, int] = {}
        self._ring: deque[Hashable] = deque()
        self._dirty: set[Item] = set()
        self._processing: set[Item] = set()
        self._failures: dict[Item, int] = {}
        self._heap: list[tuple[float, int, Hashable, Hashable]] = []
        self._waiting: dict[Item, tuple[float, int]] = {}
        self._seq = 0
        self._length = 0
        self._dropped = 0

    def __len__(self) -> int:
        """Number of ready items (not processing, not delayed)."""
        return self._length

    # --- tenants ---------------------------------------------------------------------------
    def set_weight(self, tenant: Hashable, weight: int) -> None:
        """Let `tenant` take `weight` (≥ 1) items per round-robin turn; the default is 1."""
        if weight < 1:
            raise ValueError(f"weight must be >= 1, not {weight}")
        self._weights[tenant] = weight

    def remove_tenant(self, tenant: Hashable) -> None:
        """Drop everything queued, delayed or remembered for `tenant`.

        Items of `tenant` that are being processed stay processing until their `done()`, which
        then does not re-queue them.
        """
        sub = self._subqueues.pop(tenant, None)
        if sub is not None:
            self._length -= len(sub.items)
            if sub.items:
                self._ring.remove(tenant)
        self._weights.pop(tenant, None)
        self._dirty = {item for item in self._dirty if item[0] != tenant}
        self._failures = {item: n for item, n in self._failures.items() if item[0] != tenant}
        self._waiting = {item: d for item, d in self._waiting.items() if item[0] != tenant}

    def collect_idle(self, now: float, *, idle_after: float = IDLE_AFTER) -> list[Hashable]:
        """Remove sub-queues idle (empty, untouched) for `idle_after` seconds; return their tenants.

        Call it periodically (the original ticks every minute). Removal only frees memory: a
        later `add()` recreates the sub-queue, and weights are kept.
        """
        busy = {tenant for tenant, _ in self._processing} | {tenant for tenant, _ in self._waiting}
        removed = []
        for tenant, sub in list(self._subqueues.items()):
            if sub.items or sub.touched or tenant in busy:
                sub.idle_since = None
                sub.touched = False
            elif sub.idle_since is None:
                sub.idle_since = now
            elif now - sub.idle_since >= idle_after:
                del self._subqueues[tenant]
                removed.append(tenant)
        return removed

    # --- items -----------------------------------------------------------------------------
    def add(self, tenant: Hashable, key: Hashable) -> None:
        """Queue `key` for `tenant` unless it is already queued; re-queue it later if processing."""
        item = (tenant, key)
        if item in self._dirty:
            return
        self._dirty.add(item)
        if item in self._processing:
            return
        self._push(tenant, key)

    def _push(self, tenant: Hashable, key: Hashable) -> None:
        sub = self._subqueues.get(tenant)
        if sub is None:
            sub = self._subqueues[tenant] = _SubQueue()
        sub.touched = True
        if not sub.items:
            sub.credit = self._weights.get(tenant, 1)
            self._ring.append(tenant)
        sub.items.append(key)
        self._length += 1

    def add_after(self, tenant: Hashable, key: Hashable, delay: float, now: float) -> None:
        """Queue `key` for `tenant` once `now + delay` has passed (at once when `delay` ≤ 0)."""
        if delay <= 0:
            self.add(tenant, key)
            return
        item = (tenant, key)
        deadline = now + delay
        current = self._waiting.get(item)
        if current is not None and current[0] <= deadline:
            return
        self._seq += 1
        self._waiting[item] = (deadline, self._seq)
        heapq.heappush(self._heap, (deadline, self._seq, tenant, key))

    def _promote(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, seq, tenant, key = heapq.heappop(heap)
            if self._waiting.get((tenant, key)) == (deadline, seq):
                del self._waiting[(tenant, key)]
                self.add(tenant, key)

    def next_wakeup(self) -> float | None:
        """The earliest deadline of a delayed item, or None when nothing is delayed."""
        heap = self._heap
        while heap:
            deadline, seq, tenant, key = heap[0]
            if self._waiting.get((tenant, key)) == (deadline, seq):
                return deadline
            heapq.heappop(heap)
        return None

    def get_nowait(self, now: float) -> Item | None:
        """Hand out the next `(tenant, key)` in fair order and mark it processing, or None."""
        self._promote(now)
        if not self._ring:
            return None
        tenant = self._ring[0]
        sub = self._subqueues[tenant]
        key = sub.items.popleft()
        self._length -= 1
        sub.credit -= 1
        if not sub.items:
            self._ring.popleft()
        elif sub.credit <= 0:
            self._ring.rotate(-1)
            sub.credit = self._weights.get(tenant, 1)
        item = (tenant, key)
        self._dirty.discard(item)
        self._processing.add(item)
        return item

    def done(self, tenant: Hashable, key: Hashable) -> None:
        """Finish processing `key`; if it was re-added meanwhile, queue it again now."""
        item = (tenant, key)
        self._processing.discard(item)
        if item in self._dirty:
            self._push(tenant, key)

    def retry(self, tenant: Hashable, key: Hashable, now: float) -> bool:
        """Re-queue `key` after an exponential backoff; False (and forgotten) when out of budget.

        The n-th retry waits `base_delay * 2**(n-1)` capped at `max_delay`; after `max_retries`
        retries the item is dropped with reason REASON_MAX_RETRIES. Call `done()` as usual.
        """
        item = (tenant, key)
        failures = self._failures.get(item, 0)
        if failures >= self._max_retries:
            self.forget(tenant, key)
            self._dropped += 1
            return False
        self._failures[item] = failures + 1
        self.add_after(tenant, key, self.backoff(failures), now)
        return True

    def backoff(self, failures: int) -> float:
        """Delay before the retry that follows `failures` earlier failures."""
        if failures >= 64:
            return self._max_delay
        delay: float = self._base_delay * 2**failures
        return min(delay, self._max_delay)

    def waiting(self) -> int:
        """Items ready or delayed (not processing): work no worker has taken yet."""
        return self._length + len(self._waiting)

    def pending(self) -> int:
        """Items ready, processing or delayed: 0 means the queue has nothing left to do."""
        return self._length + len(self._processing) + len(self._waiting)

    def num_retries(self, tenant: Hashable, key: Hashable) -> int:
        """How many times `key` has been retried since it was last forgotten."""
        return self._failures.get((tenant, key), 0)

    def forget(self, tenant: Hashable, key: Hashable) -> None:
        """Reset the retry history of `key` (after a success, or when giving up)."""
        self._failures.pop((tenant, key), None)

    def statistics(self) -> dict[str, Any]:
        """Queue state for health and metrics: ready length per tenant and totals."""
        return {
            "length": self._length,
            "tenants": {tenant: len(sub.items) for tenant, sub in self._subqueues.items()},
            "processing": len(self._processing),
            "delayed": len(self._waiting),
            "retrying": len(self._failures),
            "dropped": self._dropped,
        }


class TrioFairQueue:
    """Trio shell over a FairQueue: `get()` waits for a ready item or the next delayed deadline."""

    def __init__(self, core: FairQueue | None = None) -> None:
        self.core = core if core is not None else FairQueue()
        self._lot = trio.lowlevel.ParkingLot()
        self._idle_lot = trio.lowlevel.ParkingLot()  # `wait_idle` callers
        self._backlog_lot = trio.lowlevel.ParkingLot()  # `wait_backlog` callers (pool growth)

    def _check_idle(self) -> None:
        if self._idle_lot and not self.core.pending():
            self._idle_lot.unpark_all()

    def _wake_one(self) -> None:
        self._lot.unpark()

    def add(self, tenant: Hashable, key: Hashable) -> None:
        """See FairQueue.add."""
        self.core.add(tenant, key)
        self._signal_backlog()
        self._wake_one()

    def _signal_backlog(self) -> None:
        if not self._lot and self._backlog_lot and self.core.waiting():
            self._backlog_lot.unpark_all()  # work waiting and every worker busy

    def add_after(self, tenant: Hashable, key: Hashable, delay: float) -> None:
        """See FairQueue.add_after; the delay runs on trio's clock."""
        self.core.add_after(tenant, key, delay, trio.current_time())
        self._signal_backlog()
        # A parked worker may be sleeping towards a later deadline: let one re-plan.
        self._wake_one()

    def done(self, tenant: Hashable, key: Hashable) -> None:
        """See FairQueue.done."""
        self.core.done(tenant, key)
        if len(self.core):
            self._wake_one()
        else:
            self._check_idle()

    def retry(self, tenant: Hashable, key: Hashable) -> bool:
        """See FairQueue.retry; the backoff runs on trio's clock."""
        retried = self.core.retry(tenant, key, trio.current_time())
        if retried:
            self._wake_one()
        return retried

    def forget(self, tenant: Hashable, key: Hashable) -> None:
        """See FairQueue.forget."""
        self.core.forget(tenant, key)

    def remove_tenant(self, tenant: Hashable) -> None:
        """See FairQueue.remove_tenant."""
        self.core.remove_tenant(tenant)
        self._check_idle()

    def collect_idle(self, *, idle_after: float = IDLE_AFTER) -> list[Hashable]:
        """See FairQueue.collect_idle; call it every minute or so, on trio's clock."""
        return self.core.collect_idle(trio.current_time(), idle_after=idle_after)

    def statistics(self) -> dict[str, Any]:
        """See FairQueue.statistics; adds the number of parked workers."""
        stats = self.core.statistics()
        stats["waiting_workers"] = self._lot.statistics().tasks_waiting
        return stats

    async def wait_backlog(self) -> None:
        """Wait until an item is added while items are ready and no worker waits in `get()`."""
        await self._backlog_lot.park()

    def waiting_workers(self) -> int:
        """Workers parked in `get()`."""
        return len(self._lot)

    async def wait_idle(self) -> None:
        """Return once nothing is ready, processing or delayed (at once if so already).

        Always a checkpoint. A later `add()` may make the queue busy again right after.
        """
        await trio.lowlevel.checkpoint()
        while self.core.pending():
            await self._idle_lot.park()

    async def get(self) -> Item:
        """Wait for the next item in fair order and mark it processing.

        Cancellation: if cancelled, no item was taken (the item is claimed without a checkpoint
        after it, so a cancelled `get()` never leaks an item in `processing`).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            item = self.core.get_nowait(trio.current_time())
            if item is not None:
                if len(self.core):
                    self._wake_one()  # promoted or re-queued items may be waiting for a worker
                await trio.lowlevel.cancel_shielded_checkpoint()
                return item
            wakeup = self.core.next_wakeup()
            with trio.move_on_at(math.inf if wakeup is None else wakeup):
                await self._lot.park()
