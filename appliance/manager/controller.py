"""The vc-manager entry point: CRDs, informers, one worker task per VirtualCluster.

Task tree of `run()`:

    run ── nursery
           ├── ClusterVersion informer (started first: workers look ClusterVersions up)
           ├── VirtualCluster informer (all of them, or those matching `label_selector`)
           ├── ClusterVersion finalizer loop (drops `clusterVersion.finalizers` on delete)
           ├── orphan collection (once: tenant dirs whose VirtualCluster no longer exists, stale staged restores)
           ├── shared etcd (started lazily by the first process-mode tenant)
           └── tenants nursery ── Worker(ns/name) ── its nursery: control-plane processes, monitor
                               └── ...

Informer handlers only poke workers (STYLE rule 11); workers read the cache. A worker exits
when its VirtualCluster is gone. Cancelling `run` leaves kept control planes running
(`keep_control_planes`); the next `run` adopts them.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import time
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import trio

from appliance.controlplane import process
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.kube.events import EventRecorder
from appliance.kube.informer import Informer
from appliance.manager import backups, crds, etcd, etcdgateway, kubeconfigs, model
from appliance.manager.provision import imported, native
from appliance.manager.provision import process as process_provisioner
from appliance.manager.provision.base import Context, Provisioner
from appliance.manager.settings import ManagerSettings
from appliance.manager.worker import Worker
from appliance.replicas.ownership import Ownership
from appliance.util import naming, tenancy
from appliance.util.drain import Drain

__all__ = ["ManagerSettings", "admin_kubeconfig", "ensure_crds", "run"]

logger = logging.getLogger(__name__)

#: a staged restore that no VirtualCluster names is removed at start-up once it is this old (s)
STAGED_RESTORE_GRACE = 3600.0


async def ensure_crds(super_client: ApiClient) -> None:
    """Install (server-side apply) the VirtualCluster and ClusterVersion CRDs; wait until served."""
    await crds.ensure_crds(super_client)


async def admin_kubeconfig(super_client: ApiClient, namespace: str, name: str) -> bytes:
    """The admin kubeconfig of a Running VirtualCluster; `kubeconfigs.NotRunning` says why not."""
    return await kubeconfigs.admin_kubeconfig(super_client, namespace, name)


class Controller:
    """Keeps one `Worker` per VirtualCluster and the ClusterVersion finalizers."""

    def __init__(self, ctx: Context, *, tenants: trio.Nursery, ownership: Ownership | None = None) -> None:
        settings = ctx.settings
        self._ctx = ctx
        self._tenants = tenants
        self._ownership = ownership or Ownership()
        self.vcs = Informer(ctx.super, resources.VIRTUALCLUSTERS, label_selector=settings.label_selector,
                            name="manager/virtualclusters")
        self.cvs = Informer(ctx.super, resources.CLUSTERVERSIONS, name="manager/clusterversions")
        self.workers: dict[tenancy.VcRef, Worker] = {}
        self._limiter = trio.CapacityLimiter(settings.num_reconciles)
        self._provisioners: dict[str, Provisioner] = {
            "process": process_provisioner.ProcessProvisioner(ctx),
            "native": native.NativeProvisioner(ctx),
            "import": imported.ImportProvisioner(ctx),
        }
        self._cv_send, self._cv_recv = trio.open_memory_channel[None](1)
        self._cv_dirty: set[str] = set()
        self.vcs.add_handler(self._on_vc)
        self.cvs.add_handler(self._on_cv)
        self._ownership.subscribe(self._on_ownership)

    # -- handlers (synchronous: they only record and poke) ---------------------------------

    def _on_vc(self, event_type: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        meta = (new or old or {}).get("metadata") or {}
        key = tenancy.VcRef(str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event_type == "DELETED":
            worker = self.workers.get(key)
            if worker is not None:
                worker.poke()
            return
        self._spawn_or_poke(key)

    def _on_cv(self, event_type: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        meta = (new or old or {}).get("metadata") or {}
        name = str(meta.get("name", ""))
        for worker_key, worker in self.workers.items():
            vc = self.vcs.get(worker_key[1], worker_key[0])
            if vc is not None and (vc.get("spec") or {}).get("clusterVersionName") == name:
                worker.poke()
        if new is not None and meta.get("deletionTimestamp") and naming.CLUSTER_VERSION_FINALIZER in (
            meta.get("finalizers") or []
        ):
            self._cv_dirty.add(name)
            try:
                self._cv_send.send_nowait(None)
            except trio.WouldBlock:
                pass

    def _on_ownership(self) -> None:
        """Leases changed hands: start workers for tenants this replica now holds."""
        for vc in self.vcs.list():
            key = tenancy.VcRef(vc["metadata"]["namespace"], vc["metadata"]["name"])
            if key not in self.workers:
                self._spawn_or_poke(key)

    def _spawn_or_poke(self, key: tenancy.VcRef) -> None:
        worker = self.workers.get(key)
        if worker is None:
            if not self._ownership.holds(key):
                return  # another replica serves it
            worker = Worker(key, ctx=self._ctx, vcs=self.vcs, cvs=self.cvs,
                            provisioners=self._provisioners, limiter=self._limiter)
            self.workers[key] = worker
            self._tenants.start_soon(self._run_worker, worker, name=f"vc-worker {key[0]}/{key[1]}")
        worker.poke()

    async def _run_worker(self, worker: Worker) -> None:
        with self._ownership.guard(worker.key):  # cancelled when this replica loses the tenant
            await worker.run()
        if self.workers.get(worker.key) is worker:
            del self.workers[worker.key]
        if self.vcs.get(worker.key[1], worker.key[0]) is not None:
            self._spawn_or_poke(worker.key)  # re-created while the old worker was leaving

    # -- long-running loops ------------------------------------------------------------------

    async def run_cv_finalizers(self) -> NoReturn:
        """Remove `clusterVersion.finalizers` from ClusterVersions being deleted (as the original)."""
        while True:
            await self._cv_recv.receive()
            while self._cv_dirty:
                name = self._cv_dirty.pop()
                cv = self.cvs.get(name)
                meta = (cv or {}).get("metadata") or {}
                finalizers = list(meta.get("finalizers") or [])
                if cv is None or naming.CLUSTER_VERSION_FINALIZER not in finalizers:
                    continue
                patch = {"metadata": {
                    "finalizers": [f for f in finalizers if f != naming.CLUSTER_VERSION_FINALIZER],
                    "resourceVersion": meta.get("resourceVersion"),
                }}
                try:
                    await self._ctx.super.patch(resources.CLUSTERVERSIONS, name, patch)
                except errors.Conflict:
                    self._cv_dirty.add(name)  # the next event brings the fresh object
                except errors.NotFound:
                    pass
                except errors.KubeError as exc:
                    logger.warning("ClusterVersion %s: cannot remove its finalizer: %s", name, exc)
        raise AssertionError("unreachable")

    async def collect_orphans(self) -> None:
        """Remove tenant directories (and kept processes) whose VirtualCluster no longer exists.

        The data directory belongs to this manager, so a directory whose VirtualCluster is
        not in the cache is an orphan (a VirtualCluster deleted while the appliance was down).
        """
        settings = self._ctx.settings
        live = {(vc.get("metadata") or {}).get("uid") for vc in self.vcs.list()}
        plans = await trio.to_thread.run_sync(_read_plans, settings.data_dir / "tenants")
        for tdir, plan in plans:
            if plan.vc_uid in live or await self._still_exists(plan):
                continue
            logger.warning("tenant dir %s belongs to VirtualCluster %s/%s (uid %s), which is gone; removing it",
                           tdir, plan.vc_namespace, plan.vc_name, plan.vc_uid)
            await trio.to_thread.run_sync(process.kill_leftovers, tdir / "logs")
            if plan.etcd_mode == "shared":
                try:
                    await self._ctx.etcd.forget_tenant(tenancy.ClusterKey(tdir.name))
                except (etcdgateway.GatewayError, process.ProcessFailed, OSError) as exc:
                    logger.warning("could not remove the etcd keys and user of %s: %s", tdir.name, exc)
            await trio.to_thread.run_sync(_remove_tree, tdir)
        # Staged restores hold keys and Secret data: none stays once nobody can ask for it.
        wanted = {((vc.get("metadata") or {}).get("annotations") or {}).get(model.ANNOTATION_RESTORE_FROM, "")
                  for vc in self.vcs.list()}
        gone = await trio.to_thread.run_sync(lambda: backups.discard_abandoned(
            settings.data_dir, wanted=wanted, before=time.time() - STAGED_RESTORE_GRACE))
        if gone:
            logger.warning("removed %d staged restore(s) that no VirtualCluster asked for", len(gone))


    async def _still_exists(self, plan: process_provisioner.Plan) -> bool:
        """Whether the plan's VirtualCluster exists (maybe outside this manager's selection)."""
        try:
            vc = await self._ctx.super.get(resources.VIRTUALCLUSTERS, plan.vc_name, namespace=plan.vc_namespace)
        except errors.NotFound:
            return False
        return bool((vc.get("metadata") or {}).get("uid") == plan.vc_uid)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _read_plans(tenants: Path) -> list[tuple[Path, process_provisioner.Plan]]:
    found = []
    for plan_file in sorted(tenants.glob("*/plan.json")):
        try:
            plan = msgspec.json.decode(plan_file.read_bytes(), type=process_provisioner.Plan)
        except (OSError, msgspec.MsgspecError):
            continue
        found.append((plan_file.parent, plan))
    return found


async def run(
    *,
    super_client: ApiClient,
    settings: ManagerSettings,
    ownership: Ownership | None = None,
    drain: Drain | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run the vc-manager until cancelled; started once the CRDs and caches are ready.

    Raises: ValueError for unusable settings; errors.ApiError if the CRDs cannot be installed
    or listed (e.g. Forbidden).
    Cancellation: tenant processes stop, unless `settings.keep_control_planes` keeps them
    for the next run to adopt.
    """
    if settings.default_provisioner not in model.PROVISIONERS:
        raise ValueError(f"default_provisioner must be one of {', '.join(model.PROVISIONERS)}")
    if ipaddress.ip_address(settings.tenant_bind_address).is_loopback:  # ValueError names a bad address
        logger.warning(
            "process-mode tenant apiservers bind %s: Pods cannot reach them (kubernetes.default, "
            "in-cluster clients); set [manager] tenant-bind-address to an address Pods route to",
            settings.tenant_bind_address)
    await crds.ensure_crds(super_client)
    async with trio.open_nursery() as nursery:
        shared_etcd = etcd.SharedEtcd(nursery=nursery, bins=settings.bins, state_dir=settings.data_dir / "etcd",
                                      keep=settings.keep_control_planes)
        recorder = EventRecorder(super_client, component=model.COMPONENT)
        ctx = Context(super=super_client, settings=settings, etcd=shared_etcd, recorder=recorder,
                      drain=drain if drain is not None else Drain())
        async with trio.open_nursery() as tenants:
            controller = Controller(ctx, tenants=tenants, ownership=ownership)
            await nursery.start(controller.cvs.run)
            await nursery.start(controller.vcs.run)
            nursery.start_soon(controller.run_cv_finalizers)
            nursery.start_soon(controller.collect_orphans)
            logger.info("vc-manager started: %d VirtualCluster(s), %d ClusterVersion(s)",
                        len(controller.vcs), len(controller.cvs))
            task_status.started()
            await trio.sleep_forever()
    raise AssertionError("unreachable")
