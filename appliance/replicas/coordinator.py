"""Share tenants between appliance replicas through Kubernetes Leases (the I/O half).

Task tree of `Coordinator.run`:

    Coordinator.run ── nursery
                       ├── Lease informer   (the namespace's leases labelled `vc-appliance.x-k8s.io/lease`)
                       ├── VirtualCluster informer (the appliance's tenant selector)
                       └── the tick loop, every `retry_period`:
                             renew heartbeat and held tenant leases → drop leases of gone tenants
                             → count live replicas → give back the excess → take free tenants

A held tenant's tasks (manager worker, syncer tenant) run inside `guard(ref)`: a cancel
scope whose deadline is the last successful renewal's start + `renew_deadline`. Renewing
moves the deadline on; failing to renew lets it fire, so this replica stops writing for the
tenant before any other replica can judge the Lease expired (`lease_duration` after it last
saw it change). Giving a Lease back first cancels the guards and waits until they exit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import trio

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.kube.events import EventRecorder
from appliance.kube.informer import Informer
from appliance.replicas import lease
from appliance.replicas.ownership import Ownership
from appliance.replicas.settings import LeaseSettings
from appliance.util import tenancy

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Held:
    obj: dict[str, Any]
    valid_until: float
    guards: set[trio.CancelScope] = field(default_factory=set)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Coordinator(Ownership):
    def __init__(self, super_client: ApiClient, settings: LeaseSettings) -> None:
        self._super = super_client
        self.settings = settings
        self.leases = Informer(super_client, resources.LEASES, namespace=settings.namespace,
                               label_selector=lease.LABEL_LEASE, name="replicas/leases")
        self.vcs = Informer(super_client, resources.VIRTUALCLUSTERS, label_selector=settings.label_selector,
                            name="replicas/virtualclusters")
        self._seen = lease.Observations()
        self._held: dict[tenancy.VcRef, _Held] = {}
        #: guards that outlived their lease entry (lost leases) and the waiters for them
        self._guards: dict[tenancy.VcRef, set[trio.CancelScope]] = {}
        self._guards_gone: dict[tenancy.VcRef, trio.Event] = {}
        self._subscribers: list[Callable[[], None]] = []
        self._unavailable: set[tenancy.VcRef] = set()
        self._heartbeat: dict[str, Any] | None = None
        self._releases: trio.Nursery | None = None
        self._events = EventRecorder(super_client, component="vc-appliance")
        self.leases.add_handler(self._on_lease)
        self.vcs.add_handler(lambda *_: self._notify())

    # --- Ownership ----------------------------------------------------------------------------
    def holds(self, ref: tenancy.VcRef) -> bool:
        held = self._held.get(ref)
        return held is not None and trio.current_time() < held.valid_until

    @contextlib.contextmanager
    def guard(self, ref: tenancy.VcRef) -> Iterator[trio.CancelScope]:
        held = self._held.get(ref)
        scope = trio.CancelScope(deadline=held.valid_until if held is not None else -math.inf)
        guards = self._guards.setdefault(ref, set())
        guards.add(scope)
        if held is not None:
            held.guards.add(scope)
        try:
            with scope:
                yield scope
        finally:
            guards.discard(scope)
            if held is not None:
                held.guards.discard(scope)
            if not guards:
                del self._guards[ref]
                gone = self._guards_gone.pop(ref, None)
                if gone is not None:
                    gone.set()

    def subscribe(self, fn: Callable[[], None]) -> None:
        self._subscribers.append(fn)

    def held(self) -> list[tenancy.VcRef]:
        return sorted(self._held)

    # --- internals ----------------------------------------------------------------------------
    def _notify(self) -> None:
        for fn in self._subscribers:
            fn()

    def _on_lease(self, event_type: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        if new is None:
            self._seen.forget(str(((old or {}).get("metadata") or {}).get("name", "")))
            return
        self._seen.observe(lease.record(new), trio.current_time())

    async def _stop_guards(self, ref: tenancy.VcRef) -> None:
        """Cancel every task running for `ref` and wait until all have exited."""
        scopes = self._guards.get(ref)
        if not scopes:
            return
        gone = self._guards_gone.setdefault(ref, trio.Event())
        for scope in scopes:
            scope.cancel()
        await gone.wait()

    def _tenants(self) -> dict[tenancy.VcRef, dict[str, Any]]:
        return {tenancy.VcRef(vc["metadata"]["namespace"], vc["metadata"]["name"]): vc for vc in self.vcs.list()}

    def _tenant_lease(self, ref: tenancy.VcRef) -> dict[str, Any] | None:
        return self.leases.get(lease.tenant_lease_name(ref), self.settings.namespace)

    # --- the loop -----------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        s = self.settings
        try:
            await self._super.create(resources.NAMESPACES, {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": s.namespace}})
        except errors.AlreadyExists:
            pass
        async with trio.open_nursery() as nursery:
            self._releases = nursery  # hand-overs run beside the tick: a slow stop delays no renewal
            await nursery.start(self.leases.run)
            await nursery.start(self.vcs.run)
            try:
                await self._beat()
                await self._tick()
                log.info("replica %s: sharing tenants through Leases in %s (holding %d)",
                         s.identity, s.namespace, len(self._held))
                task_status.started()
                while True:
                    await trio.sleep(s.retry_period)  # the renew timer itself, not a wait for state
                    await self._beat()
                    await self._tick()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(s.renew_deadline):
                    await self._release_all()
        raise AssertionError("unreachable")

    async def _beat(self) -> None:
        """Create or renew this replica's heartbeat Lease (a failure only delays counting us)."""
        s = self.settings
        name = lease.replica_lease_name(s.identity)
        annotations = {lease.ANNOTATION_HOST: s.placement}
        try:
            with trio.fail_after(s.renew_deadline):
                if self._heartbeat is None:
                    current = self.leases.get(name, s.namespace)
                    body = lease.acquired(current, identity=s.identity, duration=s.lease_duration,
                                          now=_now(), role=lease.ROLE_REPLICA, annotations=annotations)
                    if current is None:
                        body["metadata"].update(name=name, namespace=s.namespace)
                        self._heartbeat = await self._super.create(resources.LEASES, body, namespace=s.namespace)
                    else:
                        self._heartbeat = await self._super.update(resources.LEASES, body, namespace=s.namespace)
                else:
                    body = lease.renewed(self._heartbeat, duration=s.lease_duration, now=_now())
                    self._heartbeat = await self._super.update(resources.LEASES, body, namespace=s.namespace)
        except (errors.Conflict, errors.AlreadyExists, errors.NotFound):
            self._heartbeat = None  # re-read from the cache next time
        except (errors.KubeError, trio.TooSlowError) as exc:
            log.warning("replica %s: heartbeat Lease %s/%s not renewed: %s", s.identity, s.namespace, name,
                        exc or f"no answer within {s.renew_deadline:g} s")

    def _live_replicas(self, now: float) -> tuple[int, set[str]]:
        """(live replicas, their placements); this replica always counts itself."""
        live, placements = {self.settings.identity}, {self.settings.placement}
        for obj in self.leases.list():
            if ((obj.get("metadata") or {}).get("labels") or {}).get(lease.LABEL_LEASE) != lease.ROLE_REPLICA:
                continue
            rec = lease.record(obj)
            if rec.holder and not self._seen.expired(rec, now):
                live.add(rec.holder)
                placements.add(rec.annotations.get(lease.ANNOTATION_HOST, ""))
        return len(live), placements

    async def _tick(self) -> None:
        s = self.settings
        tenants = self._tenants()
        changed = False
        async with trio.open_nursery() as renewals:
            for ref in list(self._held):
                renewals.start_soon(self._renew, ref, tenants.get(ref))
        for ref in [r for r in self._held if r not in tenants]:
            log.info("tenant %s/%s is gone (or left the selection): giving up its Lease", *ref)
            self._hand_over(ref, delete=True)
            changed = True
        now = trio.current_time()
        for ref in [r for r in self._held if now >= self._held[r].valid_until]:
            log.warning("tenant %s/%s: Lease not renewed within %.0f s; stopped serving it",
                        ref[0], ref[1], s.renew_deadline)
            del self._held[ref]
            changed = True
        live, placements = self._live_replicas(now)
        records: dict[tenancy.VcRef, lease.Record | None] = {}
        free: set[tenancy.VcRef] = set()
        for ref in tenants:
            obj = self._tenant_lease(ref)
            rec = lease.record(obj) if obj is not None else None
            records[ref] = rec
            # a Lease naming this identity but not held here (an earlier run of this replica) is
            # only taken once expired: that run could still be alive, e.g. a duplicated identity
            if ref not in self._held and (rec is None or self._seen.expired(rec, now)):
                free.add(ref)
        step = lease.plan(identity=s.identity, placement=s.placement, tenants=list(tenants),
                          held=set(self._held), records=records, live_replicas=live, free=free)
        for ref in step.release:
            log.info("tenant %s/%s: giving its Lease back (fair share %d of %d tenants, %d replicas)",
                     ref[0], ref[1], step.share, len(tenants), live)
            self._hand_over(ref, delete=False)
            changed = True
        for ref in step.acquire:
            if await self._acquire(ref):
                changed = True
        await self._report_unavailable(tenants, records, free, placements)
        if changed:
            self._notify()

    async def _renew(self, ref: tenancy.VcRef, vc: dict[str, Any] | None) -> None:
        s = self.settings
        held = self._held.get(ref)
        if held is None:
            return
        started = trio.current_time()
        annotations = {}
        if vc is not None and (vc.get("status") or {}).get("provisioner") == "process":
            annotations[lease.ANNOTATION_BOUND_TO] = s.placement  # its processes live here
        body = lease.renewed(held.obj, duration=s.lease_duration, now=_now(), annotations=annotations)
        try:
            with trio.move_on_after(max(0.0, held.valid_until - started)):
                held.obj = await self._super.update(resources.LEASES, body, namespace=s.namespace)
                held.valid_until = started + s.renew_deadline
                for scope in held.guards:
                    scope.deadline = held.valid_until
                return
        except errors.Conflict:
            await self._check_lost(ref)
        except errors.NotFound:
            log.warning("tenant %s/%s: its Lease was deleted; stopping", *ref)
            self._lose(ref)
        except errors.KubeError as exc:
            log.warning("tenant %s/%s: Lease renewal failed: %s", ref[0], ref[1], exc)

    async def _check_lost(self, ref: tenancy.VcRef) -> None:
        s = self.settings
        try:
            current = await self._super.get(resources.LEASES, lease.tenant_lease_name(ref), namespace=s.namespace)
        except errors.KubeError as exc:
            log.warning("tenant %s/%s: cannot read its Lease: %s", ref[0], ref[1], exc)
            return
        held = self._held.get(ref)
        if lease.record(current).holder == s.identity and held is not None:
            held.obj = current  # someone touched metadata only; renew from the fresh copy next tick
            return
        log.warning("tenant %s/%s: Lease now held by %r; stopping", ref[0], ref[1], lease.record(current).holder)
        self._lose(ref)

    def _lose(self, ref: tenancy.VcRef) -> None:
        """Stop serving a tenant whose Lease is gone: `holds` turns false now, its tasks stop in the
        background. A slow stop (processes stopped, not kept) must not hold up the renewal tick,
        or every other tenant of this replica would outlive its renew deadline too."""
        self._held.pop(ref, None)
        assert self._releases is not None, "Leases are lost only while run() is active"
        self._releases.start_soon(self._stop_guards, ref)
        self._notify()

    async def _acquire(self, ref: tenancy.VcRef) -> bool:
        s = self.settings
        current = self._tenant_lease(ref)
        body = lease.acquired(current, identity=s.identity, duration=s.lease_duration, now=_now(),
                              role=lease.ROLE_TENANT, annotations={lease.ANNOTATION_TENANT: f"{ref[0]}/{ref[1]}"})
        started = trio.current_time()
        try:
            with trio.fail_after(s.renew_deadline):
                if current is None:
                    body["metadata"].update(name=lease.tenant_lease_name(ref), namespace=s.namespace)
                    obj = await self._super.create(resources.LEASES, body, namespace=s.namespace)
                else:
                    obj = await self._super.update(resources.LEASES, body, namespace=s.namespace)
        except (errors.Conflict, errors.AlreadyExists):
            return False  # another replica was faster
        except (errors.KubeError, trio.TooSlowError) as exc:
            log.warning("tenant %s/%s: cannot take its Lease: %s", ref[0], ref[1],
                        exc or f"no answer within {s.renew_deadline:g} s")
            return False
        self._held[ref] = _Held(obj=obj, valid_until=started + s.renew_deadline)
        log.info("tenant %s/%s: Lease taken by %s", ref[0], ref[1], s.identity)
        return True

    def _hand_over(self, ref: tenancy.VcRef, *, delete: bool) -> None:
        """Stop serving `ref` now (`holds` turns false at once) and release its Lease in the background."""
        held = self._held.pop(ref, None)
        if held is not None:
            assert self._releases is not None, "hand-overs happen only while run() is active"
            self._releases.start_soon(self._give_back, ref, held, delete)

    async def _give_back(self, ref: tenancy.VcRef, held: _Held, delete: bool) -> None:
        """Stop the tenant's tasks, then release (or delete) its Lease so another replica may take it.

        Until released the Lease still names us and is not renewed, so no one takes it before
        it is released or expired; the guards' deadlines cover a stop slower than that.
        """
        s = self.settings
        self._notify()
        await self._stop_guards(ref)
        try:
            if delete:
                await self._super.delete(resources.LEASES, lease.tenant_lease_name(ref), namespace=s.namespace,
                                         resource_version=held.obj["metadata"].get("resourceVersion"))
            else:
                await self._super.update(resources.LEASES, lease.released(held.obj, now=_now()),
                                         namespace=s.namespace)
        except (errors.Conflict, errors.NotFound):
            pass  # already changed by someone else: it is not ours any more either way
        except errors.KubeError as exc:
            log.warning("tenant %s/%s: cannot release its Lease (it will expire): %s", ref[0], ref[1], exc)

    async def _release_all(self) -> None:
        """Graceful stop: hand every tenant over at once and leave the replica count."""
        async with trio.open_nursery() as releasing:
            while self._held:
                ref, held = self._held.popitem()
                releasing.start_soon(self._give_back, ref, held, False)
        if self._heartbeat is not None:
            meta = self._heartbeat["metadata"]
            try:
                await self._super.delete(resources.LEASES, meta["name"], namespace=self.settings.namespace,
                                         resource_version=meta.get("resourceVersion"))
            except errors.KubeError as exc:
                log.warning("replica %s: cannot delete its heartbeat Lease: %s", self.settings.identity, exc)
        log.info("replica %s: released all Leases", self.settings.identity)

    async def _report_unavailable(self, tenants: dict[tenancy.VcRef, dict[str, Any]],
                                  records: dict[tenancy.VcRef, lease.Record | None],
                                  free: set[tenancy.VcRef], placements: set[str]) -> None:
        """Process-mode tenants whose placement has no live replica: say so once per incident."""
        bound_to = {ref: rec.annotations.get(lease.ANNOTATION_BOUND_TO, "")
                    for ref in free if (rec := records.get(ref)) is not None}
        now_unavailable = {ref for ref, bound in bound_to.items() if bound and bound not in placements}
        for ref in sorted(now_unavailable - self._unavailable):
            message = (f"VirtualCluster {ref[0]}/{ref[1]} is unavailable: its control plane runs as processes "
                       f"on {bound_to[ref]}, where no appliance replica is live")
            log.warning("%s", message)
            await self._events.post(tenants[ref], type="Warning", reason="TenantUnavailable", message=message)
        self._unavailable = now_unavailable
