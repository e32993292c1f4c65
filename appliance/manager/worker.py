"""One VirtualCluster's task: reconcile on every change, own its control plane, report status.

Each VirtualCluster gets one `Worker`, run by the controller in its own task, so a slow or
failing tenant never delays another. The worker holds the tenant's nursery: the process
provisioner starts the control-plane processes there, and a health monitor reports their
restarts. Provisioning and teardown run under the manager's shared `CapacityLimiter`
(≤ `num_reconciles` at once) and under `provisioner_timeout`.

Invariants: status is written only through `_write_status`, which serialises writes and
computes each patch from the freshest object (our own last write or the cache, whichever is
newer), so the monitor and the reconcile loop never overwrite each other's conditions. Local
files and processes are touched only for a valid cluster key (it names a directory).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import trio

from appliance import logsetup
from appliance.controlplane import process
from appliance.kube import errors, resources
from appliance.kube.backoff import Backoff
from appliance.kube.events import EventType
from appliance.kube.informer import Informer
from appliance.manager import backups, model, reconcile, report, rootns
from appliance.manager.model import StatusPatch, VirtualCluster
from appliance.manager.provision.base import Context, ManagedTenant, News, Provisioner
from appliance.manager.provision.plane import RunningPlane
from appliance.manager.reconcile import Step
from appliance.manager.settings import ManagerSettings
from appliance.util import naming, tenancy

logger = logging.getLogger(__name__)

HEALTH_PERIOD = 2.0


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


class _Interrupted(Exception):
    """A provisioning attempt stopped because the VirtualCluster is being deleted."""


class Worker:
    """Reconciles VirtualCluster `key` = (namespace, name) until it is gone."""

    def __init__(
        self, key: tenancy.VcRef, *, ctx: Context, vcs: Informer, cvs: Informer,
        provisioners: dict[str, Provisioner], limiter: trio.CapacityLimiter,
    ) -> None:
        self.key = key
        self._ctx = ctx
        self._vcs = vcs
        self._cvs = cvs
        self._provisioners = provisioners
        self._limiter = limiter
        self._wake_send, self._wake_recv = trio.open_memory_channel[None](1)
        self._latest: dict[str, Any] | None = None
        self._last_seen: dict[str, Any] | None = None
        self._status_lock = trio.Lock()
        self._not_before = 0.0
        self._backoff = Backoff(initial=2.0, maximum=60.0)
        self._tenant: ManagedTenant | None = None
        self._monitoring: RunningPlane | None = None
        self._torn_down = False

    def poke(self) -> None:
        """Ask for a reconcile soon; repeated pokes collapse into one."""
        try:
            self._wake_send.send_nowait(None)
        except trio.WouldBlock:
            pass

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile until the VirtualCluster is gone; restart the loop after a failure."""
        logsetup.obj.set("virtualcluster/{}/{}".format(*self.key))
        backoff = Backoff(initial=1.0, maximum=60.0)
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    await self._loop(nursery)
                    nursery.cancel_scope.cancel()
                return
            except Exception as exc:  # the per-tenant supervisor (STYLE rule 20a)
                delay = backoff.next_delay()
                logger.exception("VirtualCluster %s/%s: reconcile loop failed; again in %.1f s", *self.key, delay)
                if self._last_seen is not None:
                    await self._event(self._last_seen, "Warning", "ReconcileError", report.describe(exc))
                await trio.sleep(delay)

    def _current(self) -> dict[str, Any] | None:
        cached = self._vcs.get(self.key[1], self.key[0])
        if cached is None:
            return None
        if self._latest is not None and _rv(self._latest) > _rv(cached):
            return self._latest
        return cached

    async def _loop(self, nursery: trio.Nursery) -> None:
        if self._tenant is not None:
            self._tenant.nursery = nursery
            self._tenant.plane = None  # the old nursery (and its plane) is gone
        api_backoff = Backoff(initial=1.0, maximum=30.0)
        while True:
            obj = self._current()
            if obj is None:
                await self._forget()
                return
            self._last_seen = obj
            await self._ctx.drain.gate()  # a graceful stop began: start no new step
            try:
                with self._ctx.drain.work():
                    delay = await self._step(obj, nursery)
                api_backoff.reset()
            except errors.KubeError as exc:
                # The super apiserver hiccuped (a status or finalizer write): retry this round
                # without touching the tenant's nursery, so its processes keep running.
                delay = api_backoff.next_delay()
                logger.warning("VirtualCluster %s/%s: %s; again in %.1f s", *self.key, exc, delay)
            with trio.move_on_after(math.inf if delay is None else delay):
                await self._wake_recv.receive()

    # -- helpers ------------------------------------------------------------------------

    @property
    def _settings(self) -> ManagerSettings:
        return self._ctx.settings

    async def _event(self, obj: dict[str, Any], type_: EventType, reason: str, message: str) -> None:
        ref = {"apiVersion": resources.VIRTUALCLUSTERS.api_version, "kind": "VirtualCluster",
               "metadata": obj.get("metadata") or {}}
        await self._ctx.recorder.post(ref, type=type_, reason=reason, message=message)

    async def _write_status(self, make: Callable[[VirtualCluster], StatusPatch]) -> None:
        async with self._status_lock:
            obj = self._current()
            if obj is None:
                return
            vc = model.decode_vc(obj)
            patch = make(vc)
            if patch.is_empty() or not reconcile.differs(vc, patch):
                return
            try:
                self._latest = await self._ctx.super.patch(
                    resources.VIRTUALCLUSTERS, self.key[1], patch.body(), namespace=self.key[0],
                    subresource="status",
                )
            except errors.NotFound:
                return

    async def _set_finalizer(self, obj: dict[str, Any], fin: str, *, present: bool) -> None:
        meta = obj["metadata"]
        have = list(meta.get("finalizers") or [])
        want = [*have, fin] if present and fin not in have else [f for f in have if f != fin]
        if want == have:
            return
        patch = {"metadata": {"finalizers": want, "resourceVersion": meta["resourceVersion"]}}
        try:
            self._latest = await self._ctx.super.patch(
                resources.VIRTUALCLUSTERS, self.key[1], patch, namespace=self.key[0]
            )
        except (errors.Conflict, errors.NotFound):
            self._latest = None  # re-read from the cache on the next round

    def _tenant_for(
        self, vc: VirtualCluster, key: tenancy.ClusterKey, cv: dict[str, Any] | None, nursery: trio.Nursery
    ) -> ManagedTenant | None:
        if not naming.is_dns1123_label(key):
            return None
        if self._tenant is None or self._tenant.key != key:
            tenant_dir = self._settings.data_dir / "tenants" / key
            self._tenant = ManagedTenant(vc=vc, key=key, dir=tenant_dir, nursery=nursery)
        self._tenant.vc = vc
        self._tenant.cluster_version = cv
        self._tenant.on_news = self._news
        self._tenant.poke = self.poke
        return self._tenant

    # -- one round ----------------------------------------------------------------------

    async def _step(self, obj: dict[str, Any], nursery: trio.Nursery) -> float | None:
        vc = model.decode_vc(obj)
        cv_name = vc.spec.cluster_version_name
        cv = self._cvs.get(cv_name) if cv_name else None
        prov_name, problem = reconcile.choose_provisioner(vc, cv, default=self._settings.default_provisioner)
        step = reconcile.next_step(vc, provisioner=prov_name, cluster_version_found=cv is not None)
        logger.debug("VirtualCluster %s: phase %r, step %s", vc.ref, vc.status.phase, step.value)
        if step is Step.NOTHING:
            return None
        if step is Step.ADD_FINALIZER:
            assert prov_name is not None
            await self._set_finalizer(obj, model.finalizer(prov_name), present=True)
            return 0
        if step is Step.TEARDOWN:
            assert prov_name is not None
            return await self._teardown(obj, vc, prov_name, nursery)
        if problem is not None:  # only possible before the provisioner is fixed in status
            await self._reject(obj, problem)
            return None
        assert prov_name is not None
        if step is Step.INITIALISE:
            key = naming.cluster_key(vc.metadata.namespace, vc.metadata.name, vc.metadata.uid,
                                     cluster_namespace=vc.status.cluster_namespace)
            problem = reconcile.validate(vc, provisioner=prov_name, cluster_key=key, cluster_version=cv)
            if problem is not None:
                await self._reject(obj, problem, key=key, provisioner=prov_name)
                return None
            await self._write_status(lambda v: reconcile.initialise(
                v, cluster_key=key, provisioner=prov_name, now=report.now_rfc3339()))
            return 0
        if step is Step.RESTART:
            await self._write_status(lambda v: reconcile.restart(v, now=report.now_rfc3339()))
            return 0
        if step is Step.GIVE_UP:
            await self._write_status(lambda v: reconcile.give_up(v, now=report.now_rfc3339()))
            await self._event(obj, "Warning", model.REASON_ERROR, "no provisioning attempts left")
            return None
        wait = self._not_before - trio.current_time()
        if wait > 0:
            return wait
        key = tenancy.ClusterKey(vc.status.cluster_namespace)
        problem = reconcile.validate(vc, provisioner=prov_name, cluster_key=key, cluster_version=cv)
        if problem is not None:
            await self._reject(obj, problem)
            return None
        tenant = self._tenant_for(vc, key, cv, nursery)
        assert tenant is not None  # validate() checked the key
        provisioner = self._provisioners[prov_name]
        if step is Step.PROVISION:
            return await self._provision(obj, provisioner, tenant)
        return await self._ensure(obj, provisioner, tenant)

    async def _reject(self, obj: dict[str, Any], problem: reconcile.Problem, *, key: str = "",
                      provisioner: str = "") -> None:
        valid_key = key if naming.is_dns1123_label(key) else ""
        await self._write_status(lambda v: reconcile.rejected(
            v, problem, now=report.now_rfc3339(), cluster_key=valid_key, provisioner=provisioner))
        await self._event(obj, "Warning", problem.reason, problem.message)

    async def _attempt(
        self, fn: Callable[[], Any], *, vc: VirtualCluster, tenant: ManagedTenant | None
    ) -> str | reconcile.Problem | BaseException:
        """Run `fn` under the limiter and the deadline; the result, a Problem, or the failure."""
        timeout = self._settings.provisioner_timeout
        try:
            async with self._limiter:
                if tenant is not None:
                    tenant.progress = ""
                with trio.fail_after(timeout):
                    result = await fn()
        except reconcile.Rejected as exc:
            return exc.problem
        except trio.TooSlowError:
            doing = tenant.progress if tenant is not None and tenant.progress else "no progress"
            return RuntimeError(f"not done after {timeout:g} s: {doing}")
        except Exception as exc:  # any other failure is worth another attempt
            logger.warning("VirtualCluster %s: %s", vc.ref, report.describe(exc),
                           exc_info=not isinstance(exc, errors.KubeError | process.ProcessFailed | RuntimeError))
            return exc
        return str(result or "")

    async def _until_deleted(self, fn: Callable[[], Any]) -> Any:
        """Run `fn`, but give up at once when the VirtualCluster is deleted meanwhile."""
        result: Any = None
        failure: Exception | None = None
        poked = finished = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal poked
                while True:
                    await self._wake_recv.receive()
                    poked = True
                    current = self._current()
                    if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
                        nursery.cancel_scope.cancel()
                        return

            async def work() -> None:
                nonlocal result, finished, failure
                try:
                    result = await fn()
                except Exception as exc:
                    failure = exc
                finished = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            nursery.start_soon(work)
        if poked:
            self.poke()  # what the watcher consumed is still news for the loop
        if failure is not None:
            raise failure
        if not finished:
            raise _Interrupted("the VirtualCluster is being deleted")
        return result

    async def _provision(self, obj: dict[str, Any], provisioner: Provisioner, tenant: ManagedTenant) -> float | None:
        started = trio.current_time()
        result = await self._attempt(
            lambda: self._until_deleted(lambda: provisioner.provision(tenant)), vc=tenant.vc, tenant=tenant
        )
        if isinstance(result, _Interrupted):
            return 0  # straight on to the teardown
        if isinstance(result, reconcile.Problem):
            await self._reject(obj, result)
            return None
        if isinstance(result, BaseException):
            error = report.describe(result)
            await self._write_status(lambda v: reconcile.attempt_failed(v, error=error, now=report.now_rfc3339()))
            left = reconcile.retries_left(model.decode_vc(self._current() or obj))
            reason = model.REASON_ERROR if left <= 0 else model.REASON_ATTEMPT_FAILED
            await self._event(obj, "Warning", reason, f"fail to create virtualcluster: {error}")
            self._not_before = trio.current_time() + self._backoff.next_delay()
            return 0
        self._backoff.reset()
        logger.info("VirtualCluster %s running after %.1f s: %s", tenant.vc.ref,
                    trio.current_time() - started, result)
        await self._write_status(lambda v: reconcile.running(v, message=result, now=report.now_rfc3339()))
        await self._event(obj, "Normal", model.REASON_RUNNING, result)
        restored = tenant.extra.pop(backups.EXTRA_RESTORED, None)  # the process provisioner's note
        if restored:
            await self._write_status(lambda v: reconcile.restored(v, message=restored, now=report.now_rfc3339()))
            await self._event(obj, "Normal", model.REASON_RESTORED, restored)
        self._start_monitor(tenant)
        return None

    async def _ensure(self, obj: dict[str, Any], provisioner: Provisioner, tenant: ManagedTenant) -> float | None:
        if not tenant.plane_running:
            result = await self._attempt(lambda: provisioner.ensure(tenant), vc=tenant.vc, tenant=tenant)
            if isinstance(result, reconcile.Problem | BaseException):
                error = result.message if isinstance(result, reconcile.Problem) else report.describe(result)
                await self._write_status(lambda v: reconcile.unavailable(v, error=error, now=report.now_rfc3339()))
                await self._event(obj, "Warning", "TenantControlPlaneUnavailable", error)
                delay = self._backoff.next_delay()
                self._not_before = trio.current_time() + delay
                return delay
            self._backoff.reset()
            if tenant.plane is not None:
                await self._event(obj, "Normal", *report.plane_news(tenant.plane))
        vc = model.decode_vc(obj)
        ready = vc.status.condition(model.COND_READY)
        if ready is None or ready.status != "True":
            await self._write_status(lambda v: reconcile.running(v, message=v.status.message, now=report.now_rfc3339()))
        self._start_monitor(tenant)
        return await self._maintain(obj, provisioner, tenant)

    async def _maintain(self, obj: dict[str, Any], provisioner: Provisioner, tenant: ManagedTenant) -> float | None:
        """The provisioner's work on a Running plane (renewals, rollouts, sleep); when to come back."""
        due: float | None = None

        async def work() -> None:
            nonlocal due
            due = await provisioner.maintain(tenant)

        result = await self._attempt(work, vc=tenant.vc, tenant=tenant)
        if isinstance(result, reconcile.Problem | BaseException):
            error = result.message if isinstance(result, reconcile.Problem) else report.describe(result)
            await self._event(obj, "Warning", model.REASON_MAINTENANCE_FAILED, error)
            return self._backoff.next_delay()
        return due

    async def _news(self, item: News) -> None:
        await self._write_status(lambda v: reconcile.condition(
            v, type_=item.condition, status=item.status, reason=item.reason, message=item.message,
            now=report.now_rfc3339()))
        obj = self._current()
        if item.event and obj is not None:
            await self._event(obj, "Warning" if item.warning else "Normal", item.reason, item.message)

    # -- health ----------------------------------------------------------------------------

    def _start_monitor(self, tenant: ManagedTenant) -> None:
        plane = tenant.plane
        if plane is None or plane.done.is_set() or self._monitoring is plane:
            return
        self._monitoring = plane
        tenant.nursery.start_soon(self._monitor, plane)

    async def _monitor(self, plane: RunningPlane) -> None:
        """Report process restarts in `ControlPlaneHealthy` and as Events, until the plane stops."""
        seen = {id(h): h.starts for h in plane.handles}  # a replaced process has a new handle
        while not plane.done.is_set():
            states = [reconcile.ProcessState(h.name.rsplit("/", 1)[-1], h.restarts, h.last_exit)
                      for h in plane.handles]
            try:
                await self._write_status(functools.partial(report.health_patch, states=states))
            except errors.KubeError as exc:
                logger.warning("VirtualCluster %s/%s: health status not written: %s", *self.key, exc)
            obj = self._current()
            for h in plane.handles:
                if h.starts > seen.setdefault(id(h), 1) and obj is not None:
                    seen[id(h)] = h.starts
                    await self._event(obj, "Warning", model.REASON_PROCESS_RESTARTED,
                                      f"{h.name} exited with code {h.last_exit} and was restarted "
                                      f"(restart {h.restarts})")
            with trio.move_on_after(HEALTH_PERIOD):
                await plane.done.wait()

    # -- deletion --------------------------------------------------------------------------

    async def _teardown(
        self, obj: dict[str, Any], vc: VirtualCluster, prov_name: str, nursery: trio.Nursery
    ) -> float | None:
        fin = model.finalizer(prov_name)
        if self._torn_down:
            await self._set_finalizer(self._current() or obj, fin, present=False)
            return 0
        wait = self._not_before - trio.current_time()
        if wait > 0:
            return wait
        key = tenancy.ClusterKey(vc.status.cluster_namespace)
        tenant = self._tenant_for(vc, key, None, nursery) if key else None

        async def remove() -> str:
            if tenant is not None:
                tenant.progress = "stopping the control plane"
                await self._provisioners[prov_name].teardown(tenant)
            if key:
                if tenant is not None:
                    tenant.progress = "deleting the super-cluster namespaces"
                names = await rootns.delete_namespaces(self._ctx.super, key=key, vc_uid=vc.metadata.uid)
                logger.info("VirtualCluster %s: deleted namespaces %s", vc.ref, ", ".join(names) or "(none)")
                await rootns.delete_cluster_objects(self._ctx.super, key=key)
            return ""

        result = await self._attempt(remove, vc=vc, tenant=tenant)
        if isinstance(result, reconcile.Problem | BaseException):
            error = result.message if isinstance(result, reconcile.Problem) else report.describe(result)
            await self._event(obj, "Warning", model.REASON_DELETE_FAILED, f"cleanup failed: {error}")
            delay = self._backoff.next_delay()
            self._not_before = trio.current_time() + delay
            return delay
        self._torn_down = True
        await self._set_finalizer(self._current() or obj, fin, present=False)
        return 0

    async def _forget(self) -> None:
        """The VirtualCluster is gone: make sure nothing of it keeps running here."""
        tenant = self._tenant
        if self._torn_down or tenant is None or self._last_seen is None:
            if tenant is not None and tenant.plane is not None:
                await tenant.plane.stop()
            return
        vc = model.decode_vc(self._last_seen)
        try:
            live = await self._ctx.super.get(resources.VIRTUALCLUSTERS, self.key[1], namespace=self.key[0])
        except errors.NotFound:
            live = None
        if live is not None and (live.get("metadata") or {}).get("uid") == vc.metadata.uid:
            # Still there, only no longer selected (label_selector): not ours to clean up.
            logger.warning("VirtualCluster %s left this manager's selection; releasing it", vc.ref)
            return
        logger.warning("VirtualCluster %s vanished without our cleanup; cleaning up now", vc.ref)
        provisioner = self._provisioners.get(vc.status.provisioner)
        with trio.move_on_after(self._settings.provisioner_timeout):
            try:
                if provisioner is not None:
                    await provisioner.teardown(tenant)
                elif tenant.plane is not None:
                    await tenant.plane.stop()
                await rootns.delete_namespaces(self._ctx.super, key=tenant.key, vc_uid=vc.metadata.uid)
                await rootns.delete_cluster_objects(self._ctx.super, key=tenant.key)
            except Exception:
                logger.exception("VirtualCluster %s: cleanup after it vanished failed", vc.ref)
        self._torn_down = True
