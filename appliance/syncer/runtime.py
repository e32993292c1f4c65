"""The syncer's shared machinery: super caches, fair queues, worker pools, the tenant registry.

Task tree (all inside `Syncer.run`'s nursery):

    Syncer.run
    ├── super informers (one per kind, filtered by `Kind.super_selector`; nodes unfiltered)
    ├── super Event watch (`resources.events`: no cache, only keys of registered tenants' events)
    ├── downward workers: `workers` per kind (`pod_workers` for pods), one fair queue per kind;
    │   a pool grows to `*_growth` × its size while work waits with all its workers busy
    ├── upward workers: one fair queue for every kind's back-population (coalesced per object)
    ├── Event workers: `event_workers` on the queue `queues["event"]` (super Events → tenants)
    └── patrol (periodic drift scan; enqueues keys, never writes itself)

Tenants (their clients and informers) live in the supervisor's per-tenant nurseries and
are `register`ed here once their caches are synced; handlers only enqueue keys. Work
items are keys, never objects: a worker always reads the latest state from the caches,
so a burst of events for one object costs one reconcile. Kinds and their helpers get the
Syncer as a `context.SyncContext` (caches, settings, tenants, enqueues) and never import
this module; each kind declares its worker count (`Kind.workers`).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, NoReturn, cast

import trio

from appliance import logsetup
from appliance.kube import client as kclient
from appliance.kube import errors, resources, wire
from appliance.kube import informer as kinformer
from appliance.kube.creds import Credentials
from appliance.metrics import Registry
from appliance.syncer import conversion, patrol, vnode
from appliance.syncer.fairqueue import TrioFairQueue
from appliance.syncer.resources import all_kinds, base, events
from appliance.syncer.settings import SyncerSettings
from appliance.syncer.tenant import Tenant, TenantId
from appliance.util import naming, tenancy
from appliance.util.drain import Drain

if TYPE_CHECKING:
    from appliance.syncer.resources.sourced import SuperSourcedKind

log = logging.getLogger(__name__)

#: Super objects the syncer created all carry this label (a tenancy label selector).
SUPER_SELECTOR = naming.LABEL_VC_NAME


class Syncer:
    def __init__(
        self,
        *,
        super_client: kclient.ApiClient,
        settings: SyncerSettings,
        registry: Registry,
        kinds: list[base.Kind] | None = None,
        on_register: Callable[[TenantId, Credentials], None] | None = None,
        on_unregister: Callable[[tenancy.ClusterKey], None] | None = None,
        drain: Drain | None = None,
    ) -> None:
        """`on_register`/`on_unregister` tell others (the proxy) which tenants exist; `drain`
        is the process's graceful stop (workers finish their item and take no other)."""
        self.super_client = super_client
        self.settings = settings
        self.kinds: dict[str, base.Kind] = {k.name: k for k in (kinds or all_kinds(settings.extra_resources))}
        #: super Events → tenants; needs the namespace cache and a Pod or Service kind
        self.event_upward: events.EventUpward | None = (
            events.EventUpward(self)
            if "namespace" in self.kinds and any(k in self.kinds for k in events.INVOLVED_KINDS.values())
            else None
        )
        self.drain = drain if drain is not None else Drain()
        self.tenants: dict[tenancy.ClusterKey, Tenant] = {}
        self.queues = {name: TrioFairQueue() for name in self.kinds}
        if self.event_upward is not None:  # upward only, with workers of its own
            self.queues["event"] = TrioFairQueue()
        self.upward = TrioFairQueue()
        self._super: dict[str, kinformer.Informer] = {}
        self._node_informer: kinformer.Informer | None = None
        self._tenants_changed = trio.Event()
        #: full patrol scans finished so far; `_scan_done` is replaced after each
        self.patrol_scans = 0
        self._scan_done = trio.Event()
        self._on_register = on_register
        self._on_unregister = on_unregister
        self._metrics(registry)

    # --- metrics ------------------------------------------------------------------------
    def _metrics(self, registry: Registry) -> None:
        self.m_dws = registry.counter(
            "syncer_dws_operations_total", "Downward reconciles by outcome.",
            ("resource", "vc_name", "code"))
        self.m_dws_seconds = registry.histogram(
            "syncer_dws_operations_duration_seconds", "Downward reconcile duration.",
            ("resource", "vc_name"))
        self.m_uws = registry.counter(
            "syncer_uws_operations_total", "Upward reconciles by outcome.", ("resource", "code"))
        self.m_uws_seconds = registry.histogram(
            "syncer_uws_operations_duration_seconds", "Upward reconcile duration.", ("resource",))
        self.m_remedy = registry.counter(
            "syncer_checker_remedy_count", "Drift repairs queued by the patrol.", ("counter_name",))
        self.m_patrol_seconds = registry.histogram(
            "syncer_checker_scan_duration_seconds", "Patrol scan duration.", ("resource",))
        registry.gauge(
            "syncer_queue_length", "Items ready in the downward fair queue.", ("resource",),
            callback=lambda: {(n,): float(len(q.core)) for n, q in self.queues.items()},
        )
        registry.gauge(
            "syncer_tenants", "Tenants registered with the syncer.", (),
            callback=lambda: {(): float(len(self.tenants))},
        )
        #: tenant key → last health probe result (True = healthy)
        self.health: dict[str, bool] = {}
        registry.gauge(
            "syncer_virtual_cluster_health", "Tenant apiservers by last health probe.", ("status",),
            callback=lambda: {
                ("health",): float(sum(self.health.values())),
                ("unhealth",): float(len(self.health) - sum(self.health.values())),
            },
        )

    # --- caches and queues ----------------------------------------------------------------
    def super_cache(self, kind: str) -> kinformer.Informer:
        return self._super[kind]

    @property
    def super_nodes(self) -> kinformer.Informer:
        assert self._node_informer is not None
        return self._node_informer

    def enqueue(self, kind: str, tenant_key: tenancy.ClusterKey, key: tuple[str, str]) -> None:
        self.queues[kind].add(tenant_key, key)

    def enqueue_upward(self, tenant_key: tenancy.ClusterKey, kind: str, ns: str, name: str) -> None:
        self.upward.add(tenant_key, (kind, ns, name))

    def tenant_handler(self, tenant: Tenant, kind: str) -> kinformer.Handler:
        """Tenant informer events mark the object's key dirty in the kind's fair queue (unless
        the kind says the change cannot matter downward)."""
        queue = self.queues[kind]
        matters = self.kinds[kind].tenant_change_matters

        def handle(event_type: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
            if new is not None and old is not None and not matters(new, old):
                return
            meta = (new or old or {}).get("metadata") or {}
            if kind == "namespace":
                queue.add(tenant.key, ("", meta.get("name", "")))
            else:
                queue.add(tenant.key, (meta.get("namespace", ""), meta.get("name", "")))

        return handle

    def _add_super_handler(self, kind: str, inf: kinformer.Informer) -> None:
        k = self.kinds[kind]
        if k.super_sourced:
            inf.add_handler(self._sourced_handler(kind))
        else:
            inf.add_raw_handler(self._super_handler(kind))

    def _sourced_handler(self, kind: str) -> kinformer.Handler:
        """Super events of a super-sourced kind: no tenancy back-trace, the kind knows which tenants care."""
        sourced = cast("SuperSourcedKind", self.kinds[kind])

        def handle_sourced(event_type: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
            sourced.on_super_event(self, event_type, new, old)

        return handle_sourced

    def _super_handler(self, kind: str) -> kinformer.RawHandler:
        """Super events of a synced kind mark the tenant object's key; only the metadata that
        traces a super object back to it is decoded (several events per Pod)."""
        k = self.kinds[kind]

        def handle(event_type: str, new: bytes | None, old: bytes | None) -> None:
            raw = new if new is not None else old
            ref = None if raw is None else conversion.tenant_object_ref(wire.origin_of(raw))
            if ref is None or ref.cluster_key not in self.tenants:
                return
            name = k.tenant_name(ref.name)
            key = ("", ref.namespace) if kind == "namespace" else (ref.namespace, name)
            if k.has_upward:  # coalesced: a burst of super events costs one upward reconcile
                self.upward.add_after(ref.cluster_key, (kind, key[0], key[1]), self.settings.upward_coalesce)
            if k.repair_on_super_event:
                self.enqueue(kind, ref.cluster_key, key)

        return handle

    # --- tenants --------------------------------------------------------------------------
    def register(self, tenant: Tenant) -> None:
        """Make a synced tenant visible to workers; its handlers start enqueueing now."""
        self.tenants[tenant.key] = tenant
        for kind, inf in tenant.informers.items():
            if kind in self.kinds:
                inf.add_handler(self.tenant_handler(tenant, kind))
                for key in inf.keys():  # initial sync: every object once
                    ns, name = key
                    self.enqueue(kind, tenant.key, ("", name) if kind == "namespace" else (ns, name))
                if self.kinds[kind].super_sourced:  # and what the super cluster has for it
                    for key in cast("SuperSourcedKind", self.kinds[kind]).initial_keys(self, tenant):
                        self.enqueue(kind, tenant.key, key)
        if self._on_register is not None:
            self._on_register(tenant.id, tenant.client.creds)
        self._notify_tenants_changed()
        log.info("tenant %s registered (%d kinds)", tenant.key, len(tenant.informers))

    def unregister(self, tenant_key: tenancy.ClusterKey) -> None:
        """Forget a tenant: its queued work is dropped and its work in progress cancelled."""
        tenant = self.tenants.pop(tenant_key, None)
        for scope in tenant.inflight if tenant is not None else ():
            scope.cancel()
        if self._on_unregister is not None:
            self._on_unregister(tenant_key)
        self._notify_tenants_changed()
        for q in self.all_queues():
            q.remove_tenant(tenant_key)
        log.info("tenant %s unregistered", tenant_key)

    def _notify_tenants_changed(self) -> None:
        self._tenants_changed.set()
        self._tenants_changed = trio.Event()

    def all_queues(self) -> tuple[TrioFairQueue, ...]:
        """Every work queue: one per kind (downward) and the upward one."""
        return (*self.queues.values(), self.upward)

    def busy(self) -> int:
        """Items ready, processing or delayed in all queues (0: the syncer has nothing to do)."""
        return sum(q.core.pending() for q in self.all_queues())

    async def wait_idle(self) -> None:
        """Return once every queue is empty with nothing processing or delayed. The caller sets
        the deadline; work that arrives later (an event, the patrol) makes it busy again."""
        while True:
            for q in self.all_queues():
                await q.wait_idle()
            if not self.busy():  # an item of one queue may have queued one in another
                return

    def patrol_scan_done(self) -> None:
        """The patrol finished a full scan of every kind (called by `patrol.run`)."""
        self.patrol_scans += 1
        self._scan_done.set()
        self._scan_done = trio.Event()

    async def wait_patrol_scans(self, count: int = 1) -> None:
        """Return once `count` more full patrol scans have finished. The caller sets the deadline."""
        target = self.patrol_scans + count
        while self.patrol_scans < target:
            await self._scan_done.wait()

    async def wait_registered(self, tenant_key: tenancy.ClusterKey) -> None:
        """Return once `tenant_key` is registered (its caches synced). The caller sets the deadline."""
        while tenant_key not in self.tenants:
            await self._tenants_changed.wait()

    # --- workers ------------------------------------------------------------------------
    async def _process(
        self,
        queue: TrioFairQueue,
        item: tuple[Hashable, Hashable],
        run: Callable[[Tenant], Awaitable[None]],
        *,
        what: str,
        report: Callable[[Tenant, str], Awaitable[None]] | None = None,
    ) -> tuple[Tenant | None, str]:
        """Run one work item with the retry rules; returns (tenant, outcome code).

        Codes as the original's metrics: OK, Error (retried), BadRequest (dropped: 400/403/422
        or a Permanent problem, reported as a tenant Event), ExceedMaxRetryAttempts.
        """
        tenant_key, key = item
        tenant = self.tenants.get(tenancy.ClusterKey(str(tenant_key)))
        logsetup.tenant.set(str(tenant_key))
        logsetup.obj.set("/".join(map(str, key)) if isinstance(key, tuple) else str(key))
        code = "OK"
        try:
            if tenant is None:  # gone since the key was queued
                queue.forget(tenant_key, key)
                return None, code
            problem: str | None = None
            with trio.CancelScope() as stopped:  # cancelled by `unregister`
                tenant.inflight.add(stopped)
                try:
                    code, problem = await self._attempt(run, tenant, key, what)
                finally:
                    tenant.inflight.discard(stopped)
            if self.tenants.get(tenancy.ClusterKey(str(tenant_key))) is not tenant:
                return None, code  # stopped meanwhile: nothing to retry, report or count
            if code == "OK":
                queue.forget(tenant_key, key)
            elif code == "BadRequest":
                queue.forget(tenant_key, key)
                log.warning("%s %s: %s", what, key, problem)
            elif not queue.retry(tenant_key, key):
                code = "ExceedMaxRetryAttempts"
                problem = problem or "gave up after retries"
            else:
                problem = None
            if problem is not None and report is not None:
                with trio.move_on_after(10):
                    await report(tenant, problem)
            return tenant, code
        finally:
            queue.done(tenant_key, key)

    async def _attempt(
        self, run: Callable[[Tenant], Awaitable[None]], tenant: Tenant, key: Hashable, what: str
    ) -> tuple[str, str | None]:
        """One try of a work item: (outcome code, problem to report or None)."""
        try:  # a bare cancel scope: fail_after's generator context manager, once per work item, shows in profiles
            with trio.CancelScope(deadline=trio.current_time() + self.settings.reconcile_timeout) as scope:
                await run(tenant)
            if scope.cancelled_caught:
                raise trio.TooSlowError
        except base.Retry as exc:
            log.debug("%s %s: %s", what, key, exc)
            return "Error", f"gave up after retries: {exc}"  # the original counts these as errors too
        except base.Permanent as exc:
            return "BadRequest", str(exc)
        except errors.ApiError as exc:
            if exc.status in (400, 403, 422):
                return "BadRequest", f"refused by the super cluster: {exc.message}"
            log.info("%s %s: %s; retrying", what, key, exc)
            return "Error", None
        except (errors.TransportError, trio.TooSlowError) as exc:
            log.info("%s %s: %r; retrying", what, key, exc)
            return "Error", None
        except Exception:
            log.exception("%s %s failed", what, key)
            return "Error", None
        return "OK", None

    async def _next(self, queue: TrioFairQueue, idle_exit: float | None) -> tuple[Hashable, Hashable] | None:
        """The next item, unless a graceful stop began (then wait to be cancelled); None when
        `idle_exit` seconds pass without one (a grown worker then leaves its pool).

        Checked again after the wait: an item taken during the stop stays unprocessed; the
        initial sync after the restart finds its object again.
        """
        await self.drain.gate()
        item = None
        with trio.move_on_after(math.inf if idle_exit is None else idle_exit):
            item = await queue.get()  # cancel-safe: a cancelled get() took nothing
        if item is not None:
            await self.drain.gate()
        return item

    async def _pool(self, worker: Callable[[float | None], Awaitable[None]], queue: TrioFairQueue,
                    size: int, growth: int) -> NoReturn:
        """Keep `size` workers on `queue`, and while items are added with every worker busy
        (each mostly waits for an apiserver) start more, up to `growth` × `size`; those leave
        after `pool_idle_exit` s without work. The fair queue still orders the work, so a
        bigger pool serves every tenant sooner but never one tenant before the others."""
        limit = size * max(1, growth)
        grown = 0

        async def extra() -> None:
            nonlocal grown
            try:
                await worker(self.settings.pool_idle_exit)
            finally:
                grown -= 1

        async with trio.open_nursery() as nursery:
            for _ in range(size):
                nursery.start_soon(worker, None)
            while True:
                await queue.wait_backlog()
                if size + grown < limit:
                    grown += 1
                    nursery.start_soon(extra)
        raise AssertionError("unreachable")

    async def _report_sync_failure(self, kind: base.Kind, ns: str, name: str, tenant: Tenant, msg: str) -> None:
        vobj = tenant.get(kind.name, name, ns or None)
        if vobj is not None:  # EventRecorder.post never raises an API error
            await tenant.events.post(vobj, type="Warning", reason="FailedSync", message=msg)

    async def _downward_worker(self, kind: base.Kind, idle_exit: float | None) -> None:
        queue = self.queues[kind.name]
        while (item := await self._next(queue, idle_exit)) is not None:
            ns, name = cast(tuple[str, str], item[1])
            started = trio.current_time()
            with self.drain.work():
                tenant, code = await self._process(
                    queue, item, functools.partial(kind.reconcile, self, ns=ns, name=name),
                    what=f"sync {kind.name}",
                    report=functools.partial(self._report_sync_failure, kind, ns, name),
                )
            if tenant is not None:
                self.m_dws.inc(resource=kind.name, vc_name=tenant.id.vc_name, code=code)
                self.m_dws_seconds.observe(trio.current_time() - started, resource=kind.name,
                                           vc_name=tenant.id.vc_name)

    async def _upward_one(self, kind_name: str, ns: str, name: str, tenant: Tenant) -> None:
        if kind_name == "node":
            await vnode.upward(self, tenant, name)
        elif kind_name in self.kinds:
            await self.kinds[kind_name].upward(self, tenant, ns, name)

    async def _upward_worker(self, idle_exit: float | None) -> None:
        while (item := await self._next(self.upward, idle_exit)) is not None:
            kind_name, ns, name = cast(tuple[str, str, str], item[1])
            started = trio.current_time()
            with self.drain.work():
                tenant, code = await self._process(
                    self.upward, item, functools.partial(self._upward_one, kind_name, ns, name),
                    what=f"back-populate {kind_name}",
                )
            if tenant is not None:
                self.m_uws.inc(resource=kind_name, code=code)
                self.m_uws_seconds.observe(trio.current_time() - started, resource=kind_name)

    async def _event_worker(self, event_upward: events.EventUpward, idle_exit: float | None) -> None:
        queue = self.queues["event"]
        while (item := await self._next(queue, idle_exit)) is not None:
            ns, name = cast(tuple[str, str], item[1])
            started = trio.current_time()
            with self.drain.work():
                tenant, code = await self._process(
                    queue, item, functools.partial(event_upward.upward, super_ns=ns, name=name), what="back-populate event",
                )
            if tenant is not None:
                self.m_uws.inc(resource="event", code=code)
                self.m_uws_seconds.observe(trio.current_time() - started, resource="event")

    # --- run ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        async with trio.open_nursery() as nursery:
            for name, kind in self.kinds.items():
                inf = kinformer.Informer(
                    self.super_client, kind.resource, label_selector=kind.super_selector,
                    name=f"super/{name}",
                )
                self._add_super_handler(name, inf)
                self._super[name] = inf
                await nursery.start(inf.run)
            self._node_informer = kinformer.Informer(self.super_client, resources.NODES, name="super/nodes")
            self._node_informer.add_handler(vnode.super_node_handler(self))
            await nursery.start(self._node_informer.run)
            if self.event_upward is not None:
                await nursery.start(self.event_upward.run)
            s = self.settings
            for kind in self.kinds.values():
                nursery.start_soon(self._pool, functools.partial(self._downward_worker, kind),
                                   self.queues[kind.name], kind.workers(s), s.downward_growth)
            nursery.start_soon(self._pool, self._upward_worker, self.upward, s.upward_workers, s.upward_growth)
            if self.event_upward is not None:
                nursery.start_soon(self._pool, functools.partial(self._event_worker, self.event_upward),
                                   self.queues["event"], s.event_workers, s.upward_growth)
            nursery.start_soon(patrol.run, self)
            log.info("syncer started: %s", ", ".join(self.kinds))
            task_status.started()
            await trio.sleep_forever()
        raise AssertionError("unreachable")
