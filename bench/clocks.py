"""Watch clocks: when this process saw each pod added, Running and deleted, and the stages between.

`PodClock` timestamps pod events from Informer handlers (`trio.current_time()`), on the super
side (keyed by the tenancy annotations) and on tenant sides; `wait` is event-driven. The
stage splitters divide a pod's latency with the syncer host's own trace of the same pods.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from appliance.kube import informer as kinformer
from appliance.kube import resources
from appliance.util import naming
from bench import report

if TYPE_CHECKING:
    from bench import testbed

PODS = resources.PODS

#: (cluster key, tenant namespace, name) for synced pods; ("", super namespace, name) for direct ones
Key = tuple[str, str, str]


def phase(pod: dict[str, Any] | None) -> str:
    return str(((pod or {}).get("status") or {}).get("phase") or "")


def super_key(pod: dict[str, Any]) -> Key:
    m = pod["metadata"]
    ann = m.get("annotations") or {}
    ck = ann.get(naming.ANNOTATION_CLUSTER)
    if ck:
        return (ck, ann.get(naming.ANNOTATION_NAMESPACE, ""), m["name"])
    return ("", m.get("namespace", ""), m["name"])


@dataclass(slots=True)
class _Waiter:
    remaining: set[Key]
    done: trio.Event


class PodClock:
    """First times (trio clock) a pod was seen, seen Running, seen deleted, from watch events."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.added: dict[Key, float] = {}
        self.running: dict[Key, float] = {}
        self.deleted: dict[Key, float] = {}
        self.events = collections.Counter[str]()
        self._waiters: dict[str, list[_Waiter]] = {"added": [], "running": [], "deleted": []}

    def _mark(self, which: str, key: Key, now: float) -> None:
        d = getattr(self, which)
        if key in d:
            return
        d[key] = now
        for w in self._waiters[which]:
            if key in w.remaining:
                w.remaining.discard(key)
                if not w.remaining:
                    w.done.set()

    def observe(self, event_type: str, obj: dict[str, Any] | None, key: Key) -> None:
        now = trio.current_time()
        self.events[event_type] += 1
        if event_type == "DELETED":
            self._mark("deleted", key, now)
            return
        self._mark("added", key, now)
        if phase(obj) == "Running":
            self._mark("running", key, now)

    async def wait(self, which: str, keys: Iterable[Key], *, timeout: float) -> set[Key]:
        """Wait until every key was seen `which` ("added", "running", "deleted"); return the
        keys still missing when `timeout` passed (empty: all arrived)."""
        remaining = set(keys) - getattr(self, which).keys()
        if not remaining:
            return set()
        w = _Waiter(remaining, trio.Event())
        self._waiters[which].append(w)
        try:
            with trio.move_on_after(timeout):
                await w.done.wait()
        finally:
            self._waiters[which].remove(w)
        return set(w.remaining)


async def start_clocks(nursery: trio.Nursery, bed: testbed.Bed, tenants: Sequence[testbed.BedTenant]) -> tuple[PodClock, PodClock]:
    """A super-side and a tenant-side PodClock fed by Informers that run in `nursery`."""
    sup, ten = PodClock("super"), PodClock("tenant")
    inf = kinformer.Informer(bed.superc, PODS, name="bench/super-pods")
    inf.add_handler(lambda ty, new, old: sup.observe(ty, new, super_key(new or old or {})))
    await nursery.start(inf.run)
    for t in tenants:
        tinf = kinformer.Informer(t.client, PODS, name=f"bench/{t.name}-pods")

        def handle(ty: str, new: Any, old: Any, key: str = t.key) -> None:
            m = (new or old)["metadata"]
            ten.observe(ty, new, (key, m.get("namespace", ""), m["name"]))

        tinf.add_handler(handle)
        await nursery.start(tinf.run)
    return sup, ten



def latencies(start: dict[Key, float], end: dict[Key, float], keys: Iterable[Key]) -> list[float]:
    return [end[k] - start[k] for k in keys if k in start and k in end]



# --- stages of a pod's latency, from the syncer host's trace --------------------------------------

#: the host trace's fields for each direction: (informer event, first call started, it finished)
_TRACE_FIELDS = {"down": ("event", "start", "end"), "up": ("up_event", "up_start", "up_end")}


async def _stages(host: testbed.SyncerHost, direction: str, names: tuple[str, str, str, str], keys: Sequence[Key],
                  seen_before: dict[Key, float], seen_after: dict[Key, float]) -> dict[str, dict[str, float]]:
    """Split each pod's latency from `seen_before` to `seen_after` (trio clock, this process)
    into four stages with the host's wall-clock trace (same machine clock): to the syncer's
    informer event, the fair-queue wait, the syncer's call, and on to this process's watch."""
    offset = time.time() - trio.current_time()
    tr = await host.call("trace", keys=[list(k) for k in keys])
    f_event, f_start, f_end = _TRACE_FIELDS[direction]
    stages: dict[str, list[float]] = {name: [] for name in names}
    to_syncer, queue, work, to_watch = stages.values()
    for i, k in enumerate(keys):
        ev, st, en = tr[f_event][i], tr[f_start][i], tr[f_end][i]
        if ev is None or st is None or en is None or k not in seen_before or k not in seen_after:
            continue
        to_syncer.append(ev - (seen_before[k] + offset))
        queue.append(st - ev)
        work.append(en - st)
        to_watch.append(seen_after[k] + offset - en)
    return {name: report.summary(v) for name, v in stages.items()}


async def down_stages(host: testbed.SyncerHost, keys: Sequence[Key], created: dict[Key, float],
                      sup_added: dict[Key, float]) -> dict[str, dict[str, float]]:
    """Split each pod's downward latency (create returned here → super ADDED seen here):

      to_syncer  create returned here → the syncer's tenant informer delivered the event
                 (negative when the event won the race against our create response)
      queue      event → first reconcile started (fair queue wait, includes busy workers)
      reconcile  first reconcile started → finished (the super create itself, plus retries)
      to_watch   reconcile finished → the super pod's ADDED event reached this process
    """
    return await _stages(host, "down", ("to_syncer", "queue", "reconcile", "to_watch"), keys, created, sup_added)


async def up_stages(host: testbed.SyncerHost, keys: Sequence[Key], sup_running: dict[Key, float],
                    ten_running: dict[Key, float]) -> dict[str, dict[str, float]]:
    """Split each pod's upward latency (super Running seen here → tenant Running seen here):

      to_syncer  → the syncer's super informer delivered the Running super pod
      queue      → the first back-population call after that started (upward fair queue)
      write      → it finished (tenant binding, virtual node, status patch)
      to_watch   → the tenant pod's Running event reached this process
    """
    return await _stages(host, "up", ("to_syncer", "queue", "write", "to_watch"), keys, sup_running, ten_running)


def stages_text(label: str, stages: dict[str, dict[str, float]]) -> str:
    return f"{label} stages p50/p99 (s): " + ", ".join(
        f"{name} {s['p50']:.3f}/{s['p99']:.3f}" for name, s in stages.items())

