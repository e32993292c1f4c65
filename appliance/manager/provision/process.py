"""The `process` provisioner: a tenant's kube-apiserver and kube-controller-manager as child processes.

Layout of `<data_dir>/tenants/<cluster key>/` (0700, files 0600):

    plan.json   what must not change across restarts: port, address, service range, etcd
                mode, prefix and ports; the UID of the VirtualCluster it belongs to
    pki/        certificates, keys and kubeconfigs (`pkisecrets.files`); on the shared etcd
                also the tenant's etcd client certificate (`etcdcreds.TENANT_FILES`)
    logs/       one log and one pid file per process
    etcd/       the data of a dedicated etcd (annotation `tenancy.x-k8s.io/etcd: dedicated`)
    restore.json  only for a restored tenant: which staged backup was loaded (`manager.backups`)

Everything the command lines contain comes from that directory, so after an appliance restart
the same command lines are built and the kept processes are adopted (same pids, same
certificates). The PKI is read back from `pki/`, else from the root-namespace secrets, and
only generated when neither has it. The processes run under `process.supervise` in the
tenant's nursery (restart with backoff, counted in the handles the health monitor reads).
The apiserver presents `kubelet-client` (CN = cluster key, issued by the tenant root CA) to
kubelets, which is how the vn-agent proxy identifies the tenant.

etcd: on the shared etcd the apiserver is its own etcd user, limited to its prefix (see
`manager.etcd`). A dedicated etcd serves TLS with `etcd.crt` and accepts only certificates of
the tenant's root CA; the apiserver presents `apiserver.crt` (it has client usage).

Ports were chosen by bind-then-close and saved in the plan, so another program may hold one
by the time the processes start (after a host reboot, or while the appliance was down).
Before each start, a planned port held by anything but this tenant's own recorded processes
is replaced by a fresh one (`reassign_taken_ports`); the plan, kubeconfigs and secrets then
name the new address, a warning Event says so, and the KCM (whose command line names the
apiserver URL) is restarted with it. A port taken in the instant between that check and the
bind fails the attempt ("address already in use"), and the next attempt moves it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import trio

from appliance.controlplane import cluster, components, ports, process, stale
from appliance.controlplane.components import TLSFiles
from appliance.kube import resources
from appliance.manager import (
    backups,
    etcd,
    etcdgateway,
    footprint,
    model,
    pkisecrets,
    reconcile,
    rootns,
    servicecidrs,
)
from appliance.manager.provision.base import Context, ManagedTenant, RunningPlane
from appliance.pki import kubeconfig
from appliance.util import private

logger = logging.getLogger(__name__)

#: Event reason when a planned port was taken by another program and replaced.
REASON_PORT_REASSIGNED = "PortReassigned"


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """The persisted, restart-stable parameters of one tenant control plane."""

    vc_namespace: str
    vc_name: str
    vc_uid: str
    bind: str
    host: str
    port: int
    service_cidr: str
    etcd_mode: str  # shared | dedicated
    etcd_prefix: str
    etcd_client_port: int = 0
    etcd_peer_port: int = 0

    @property
    def server(self) -> str:
        return kubeconfig.server_url(self.host, self.port)


def advertised_host(bind: str) -> str:
    """The address kubeconfigs name for an apiserver bound to `bind`."""
    try:
        return "127.0.0.1" if ipaddress.ip_address(bind).is_unspecified else bind
    except ValueError:
        return bind


def etcd_mode(vc: model.VirtualCluster, *, shared_default: bool) -> str:
    value = vc.metadata.annotations.get(model.ANNOTATION_ETCD)
    if value is None:
        return "shared" if shared_default else "dedicated"
    if value not in ("shared", "dedicated"):
        raise reconcile.Rejected(
            "InvalidEtcdMode", f"annotation {model.ANNOTATION_ETCD} is {value!r}; expected shared or dedicated"
        )
    return value


def process_spec(t: ManagedTenant) -> footprint.ProcessSpec:
    """The footprint settings of `t`'s ClusterVersion (`footprint`); bad ones reject the VC."""
    try:
        return footprint.from_cluster_version(t.cluster_version)
    except footprint.Invalid as exc:
        raise reconcile.Rejected("InvalidClusterVersion", f"ClusterVersion {t.vc.spec.cluster_version_name}: {exc}") \
            from None


def _read_plan(path: Path) -> Plan | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Plan)
    except (OSError, msgspec.MsgspecError):
        return None


def _read_pki(pki_dir: Path) -> pkisecrets.TenantPKI | None:
    found = {}
    for name in pkisecrets.FILE_NAMES:
        try:
            found[name] = (pki_dir / name).read_bytes()
        except OSError:
            return None
    pki = pkisecrets.from_files(found)
    if pki is not None and not pkisecrets.usable(pki):
        logger.warning("certificates in %s are damaged; restoring them from the root-namespace secrets", pki_dir)
        return None
    return pki


def _write_tenant_dir(tdir: Path, plan: Plan, pki: pkisecrets.TenantPKI, *, cluster_name: str) -> None:
    for d in (tdir.parent, tdir, tdir / "pki", tdir / "logs"):
        private.make_dir(d)
    for name, data in pkisecrets.files(pki, server=plan.server, cluster_name=cluster_name).items():
        path = tdir / "pki" / name
        if not path.exists() or path.read_bytes() != data:
            private.write_file(path, data)
    private.write_file(tdir / "plan.json", json.dumps(msgspec.to_builtins(plan), indent=2))


@dataclass(frozen=True, slots=True)
class PortMove:
    """One planned port replaced because another program holds it."""

    what: str
    old: int
    new: int


def reassign_taken_ports(
    plan: Plan, *, taken: Callable[[str, int], bool], fresh: Callable[[], int],
) -> tuple[Plan, list[PortMove]]:
    """The plan with every port that `taken(host, port)` reports replaced by a `fresh()` one."""
    wanted = [("kube-apiserver", "port", plan.bind, plan.port)]
    if plan.etcd_mode == "dedicated":
        wanted += [("etcd client", "etcd_client_port", cluster.LOOPBACK, plan.etcd_client_port),
                   ("etcd peer", "etcd_peer_port", cluster.LOOPBACK, plan.etcd_peer_port)]
    moves, changes = [], {}
    for what, field, host, port in wanted:
        if port and taken(host, port):
            new = fresh()
            moves.append(PortMove(what, port, new))
            changes[field] = new
    return (msgspec.structs.replace(plan, **changes) if changes else plan), moves


def _recheck_ports(tdir: Path, plan: Plan) -> tuple[Plan, list[PortMove]]:
    """`reassign_taken_ports` against this host, our own kept processes not counting as takers."""
    ours = stale.live_pids((tdir / "logs").glob("*.pid"))
    return reassign_taken_ports(
        plan, taken=lambda host, port: ports.taken_by_stranger(host, port, ours=ours), fresh=cluster.free_port)


class ProcessProvisioner:
    name = "process"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def _new_plan(self, t: ManagedTenant, restore: backups.Staged | None = None) -> Plan:
        settings = self._ctx.settings
        cidr, problem = reconcile.parse_service_cidr(t.vc.spec.service_cidr)
        if problem is not None:
            raise reconcile.Rejected(problem.reason, problem.message)
        requested = t.vc.spec.service_cidr
        if restore is not None and restore.backup.manifest.service_cidr:
            # The restored Services hold addresses of the backup's range; register it as it was.
            cidr = restore.backup.manifest.service_cidr
            requested = requested or (cidr if cidr != model.DEFAULT_SERVICE_CIDR else "")
        # A range of its own, which the super cluster routes (else the default, translated).
        t.progress = "registering the tenant's Service range in the super cluster"
        if requested or settings.tenant_service_pool:
            cidr = await servicecidrs.ensure(self._ctx.super, t.key, requested=requested,
                                             pool=settings.tenant_service_pool,
                                             prefix=settings.tenant_service_prefix) or cidr
        mode = etcd_mode(t.vc, shared_default=settings.shared_etcd)
        return Plan(
            vc_namespace=t.vc.metadata.namespace, vc_name=t.vc.metadata.name, vc_uid=t.vc.metadata.uid,
            bind=settings.tenant_bind_address, host=advertised_host(settings.tenant_bind_address),
            port=(restore.port(settings.tenant_bind_address) if restore else 0) or cluster.free_port(),
            service_cidr=cidr, etcd_mode=mode,
            etcd_prefix=f"{etcd.tenant_prefix(t.key)}registry",
            etcd_client_port=cluster.free_port() if mode == "dedicated" else 0,
            etcd_peer_port=cluster.free_port() if mode == "dedicated" else 0,
        )

    async def _pki(self, t: ManagedTenant, plan: Plan, restore: backups.Staged | None = None) -> pkisecrets.TenantPKI:
        if restore is not None and restore.pki is not None:
            return restore.pki
        pki = await trio.to_thread.run_sync(_read_pki, t.dir / "pki")
        if pki is not None:
            return pki
        stored = await rootns.read_secrets(self._ctx.super, t.key, pkisecrets.SECRET_NAMES)
        pki = pkisecrets.from_secrets(stored)
        if pki is not None:
            return pki
        ips: tuple[str, ...] = (plan.host, "127.0.0.1")
        if not ipaddress.ip_address(plan.bind).is_unspecified:
            ips += (plan.bind,)
        req = pkisecrets.PKIRequest(
            cluster_key=t.key, vc_name=t.vc.metadata.name, cluster_domain=t.vc.spec.cluster_domain,
            apiserver_dns=("localhost", t.key), apiserver_ips=ips, etcd_dns=("localhost",),
            days=t.vc.spec.pki_expire_days or pkisecrets.DEFAULT_DAYS,
        )
        root_ca = pkisecrets.secret_cert(stored.get(pkisecrets.SECRET_ROOT_CA))
        return await trio.to_thread.run_sync(lambda: pkisecrets.build(req, root_ca=root_ca))

    async def provision(self, t: ManagedTenant) -> str:
        ctx = self._ctx
        process_spec(t)  # bad footprint settings are the user's to fix: no attempt is started
        # The root namespace first: it proves the cluster key (and so the directory) is ours.
        t.progress = "creating the root namespace"
        await rootns.ensure_root_namespace(ctx.super, t.vc, t.key)
        t.progress = "preparing the tenant directory and certificates"
        plan = await trio.to_thread.run_sync(_read_plan, t.dir / "plan.json")
        if plan is None and await trio.Path(t.dir / "plan.json").exists():
            # Unreadable (a torn write, a full disk, a hand edit): its processes cannot be
            # adopted safely, so stop them and plan again; the data stays in etcd and the
            # certificates come back from the root-namespace secrets.
            logger.warning("VirtualCluster %s: %s is unreadable; stopping its processes and re-planning",
                           t.vc.ref, t.dir / "plan.json")
            await trio.to_thread.run_sync(process.kill_leftovers, t.dir / "logs")
        if plan is None or plan.vc_uid != t.vc.metadata.uid:
            if plan is not None:  # left behind by an earlier VirtualCluster with this key
                await trio.to_thread.run_sync(process.kill_leftovers, t.dir / "logs")
                await trio.to_thread.run_sync(lambda: shutil.rmtree(t.dir, ignore_errors=True))
        # A restore asked for and not done yet (`backups`): its data and PKI, before the first start.
        restore = await trio.to_thread.run_sync(backups.staged_for, ctx.settings.data_dir, t.vc, t.dir)
        if plan is None or plan.vc_uid != t.vc.metadata.uid:
            plan = await self._new_plan(t, restore)
        plan = await self._move_taken_ports(t, plan)
        pki = await self._pki(t, plan, restore)
        await trio.to_thread.run_sync(
            lambda: _write_tenant_dir(t.dir, plan, pki, cluster_name=t.vc.metadata.name)
        )
        t.progress = "applying the root-namespace secrets"
        for secret in pkisecrets.secrets(pki, namespace=t.key, server=plan.server, cluster_name=t.vc.metadata.name):
            await rootns.apply(ctx.super, resources.SECRETS, secret)
        if not t.plane_running:
            access = await self._etcd_access(t, plan)
            if restore is not None and access is not None:
                async with ctx.etcd.open_root_gateway() as gateway:
                    await self._restore(t, gateway, restore)
            t.progress = f"starting the control plane processes at {plan.server}"
            t.plane = await t.nursery.start(self._run_plane, t, plan, access, restore)
        # Usable means Pods can be created: the tenant KCM has made `default/default`.
        t.progress = "waiting for the tenant controller-manager (service account default/default)"
        try:
            await cluster.wait_default_service_account(
                plan.server, t.dir / "pki", timeout=ctx.settings.provisioner_timeout)
        except trio.TooSlowError:
            raise RuntimeError(
                "the tenant controller-manager did not create service account default/default "
                f"within {ctx.settings.provisioner_timeout:.0f} s; see {t.dir / 'logs'}") from None
        note = await backups.finish(ctx.super, data_dir=ctx.settings.data_dir, vc=t.vc, tdir=t.dir)
        if note:
            t.extra[backups.EXTRA_RESTORED] = note  # the worker sets condition Restored
        return f"tenant control plane is running at {plan.server}"

    async def _restore(self, t: ManagedTenant, gateway: etcdgateway.Gateway, restore: backups.Staged) -> None:
        """Load the staged keys before the apiserver first starts."""
        t.progress = f"restoring {restore.backup.manifest.key_count} etcd keys from a backup"
        note = await backups.load(gateway, key=t.key, tdir=t.dir, staged=restore, vc_uid=t.vc.metadata.uid)
        logger.info("VirtualCluster %s: %s", t.vc.ref, note)

    async def ensure(self, t: ManagedTenant) -> None:
        """Re-adopt (or restart) the processes of a Running tenant that this worker lacks."""
        if not t.plane_running:
            await self.provision(t)

    async def _move_taken_ports(self, t: ManagedTenant, plan: Plan) -> Plan:
        """Replace planned ports that another program holds; say so in the log and an Event."""
        if t.plane_running:
            return plan  # its processes hold them
        plan, moves = await trio.to_thread.run_sync(_recheck_ports, t.dir, plan)
        if not moves:
            return plan
        ref = {"apiVersion": resources.VIRTUALCLUSTERS.api_version, "kind": "VirtualCluster",
               "metadata": msgspec.to_builtins(t.vc.metadata)}
        for move in moves:
            message = (f"port {move.old} of the {move.what} is held by another program; "
                       f"using port {move.new} instead")
            logger.warning("tenant %s (VirtualCluster %s): %s", t.key, t.vc.ref, message)
            await self._ctx.recorder.post(ref, type="Warning", reason=REASON_PORT_REASSIGNED, message=message)
        # The new plan is written with the tenant directory, before anything starts.
        return plan

    async def _etcd_access(self, t: ManagedTenant, plan: Plan) -> etcd.EtcdAccess | None:
        if plan.etcd_mode == "dedicated":
            return None  # started with the other processes, in the tenant's nursery
        t.progress = "starting the shared etcd and the tenant's etcd user"
        return await self._ctx.etcd.tenant(t.key, t.dir / "pki")

    def _specs(
        self, t: ManagedTenant, plan: Plan, access: etcd.EtcdAccess, ssl_ctx: ssl.SSLContext,
    ) -> list[process.ProcessSpec]:
        settings = self._ctx.settings
        pki_dir, logs = t.dir / "pki", t.dir / "logs"
        shared = plan.etcd_mode == "shared"
        trim = process_spec(t)
        flags = components.ApiServerFlags(
            etcd_servers=access.url, etcd_prefix=plan.etcd_prefix, port=plan.port, pki_dir=pki_dir,
            service_cidr=plan.service_cidr, bind_address=plan.bind, advertise_address=plan.host,
            etcd_tls=access.tls, etcd_compaction_interval=etcd.TENANT_COMPACTION_INTERVAL if shared else None,
            kubelet_address_types=components.TENANT_KUBELET_ADDRESS_TYPES,
            extra={
                "requestheader-client-ca-file": str(pki_dir / "ca.crt"),
                "requestheader-allowed-names": "front-proxy-client",
                "requestheader-username-headers": "X-Remote-User",
                "requestheader-group-headers": "X-Remote-Group",
                "requestheader-extra-headers-prefix": "X-Remote-Extra-",
                "proxy-client-cert-file": str(pki_dir / "front-proxy-client.crt"),
                "proxy-client-key-file": str(pki_dir / "front-proxy-client.key"),
                # Tenant ClusterIPs exist only inside the tenant: aggregated APIs and webhooks
                # are reached at their Pods' addresses, which the appliance host routes.
                "enable-aggregator-routing": "true",
                **footprint.apiserver_flags(trim),
            },
        )
        env = dict(os.environ, GOMAXPROCS="2")
        keep = settings.keep_control_planes
        return [
            process.ProcessSpec(
                name=f"{t.key}/kube-apiserver",
                argv=components.apiserver_argv(settings.bins, flags),
                log_path=logs / "kube-apiserver.log",
                ready=cluster.http_probe(f"{plan.server}/readyz", ctx=ssl_ctx),
                env={**env, **footprint.apiserver_env(trim)}, keep_on_cancel=keep,
            ),
            process.ProcessSpec(
                name=f"{t.key}/kube-controller-manager",
                argv=components.controller_manager_argv(
                    settings.bins, pki_dir=pki_dir, service_cidr=plan.service_cidr, virtual_nodes=True,
                    master=plan.server, extra=footprint.controller_manager_flags(trim),
                ),
                log_path=logs / "kube-controller-manager.log",
                env={**env, **footprint.controller_manager_env(trim)}, keep_on_cancel=keep,
            ),
        ]

    async def _run_plane(
        self, t: ManagedTenant, plan: Plan, access: etcd.EtcdAccess | None, restore: backups.Staged | None = None,
        *, task_status: trio.TaskStatus[RunningPlane] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start (or adopt) the tenant's processes and supervise them until cancelled."""
        settings = self._ctx.settings
        done = trio.Event()
        failure: process.ProcessFailed | None = None
        ssl_ctx = await trio.to_thread.run_sync(cluster.admin_ssl_context, t.dir / "pki")
        try:
            async with trio.open_nursery() as nursery:
                handles: list[process.ProcessHandle] = []
                try:
                    if access is None:
                        pki_dir = t.dir / "pki"
                        etcd_spec = cluster.etcd_spec(
                            settings.bins, state_dir=t.dir, client_port=plan.etcd_client_port,
                            peer_port=plan.etcd_peer_port, keep_on_cancel=settings.keep_control_planes,
                            tls=TLSFiles(pki_dir / "ca.crt", pki_dir / "etcd.crt", pki_dir / "etcd.key"),
                        )
                        await trio.to_thread.run_sync(
                            lambda: stale.stop_unadoptable([etcd_spec], keep=settings.keep_control_planes)
                        )
                        handles.append(await nursery.start(process.supervise, etcd_spec))
                        if restore is not None:  # the tenant's own etcd is up, its apiserver not yet
                            url, tls = await trio.to_thread.run_sync(
                                backups.dedicated_access, t.dir, plan.etcd_client_port)
                            async with etcdgateway.open_gateway(url, tls=tls, password=None) as gateway:
                                await self._restore(t, gateway, restore)
                        access = etcd.EtcdAccess(
                            url=cluster.etcd_url(plan.etcd_client_port, tls=True),
                            tls=TLSFiles(pki_dir / "ca.crt", pki_dir / "apiserver.crt", pki_dir / "apiserver.key"),
                        )
                    specs = self._specs(t, plan, access, ssl_ctx)
                    await trio.to_thread.run_sync(
                        lambda: stale.stop_unadoptable(specs, keep=settings.keep_control_planes)
                    )
                    for spec in specs:
                        handles.append(await nursery.start(process.supervise, spec))
                except process.ProcessFailed as exc:
                    failure = exc
                    if "address already in use" in str(exc):
                        logger.warning("tenant %s: a planned port was taken as its processes started; "
                                       "the next attempt moves it", t.key)
                    for handle in handles:
                        handle.keep_on_cancel = False
                    nursery.cancel_scope.cancel()
                else:
                    adopted = sum(h.adopted for h in handles)
                    logger.info("tenant %s: %d processes up (%d adopted)", t.key, len(handles), adopted)
                    task_status.started(RunningPlane(tuple(handles), nursery.cancel_scope, done))
        finally:
            done.set()
        if failure is not None:
            raise failure

    async def teardown(self, t: ManagedTenant) -> None:
        if t.plane is not None:
            await t.plane.stop()
            t.plane = None
        plan = await trio.to_thread.run_sync(_read_plan, t.dir / "plan.json")
        if plan is None or plan.vc_uid != t.vc.metadata.uid:
            # Nothing of ours on disk (or the directory is another VirtualCluster's): leave it.
            return
        # Processes kept by an earlier appliance run that this one never adopted.
        await trio.to_thread.run_sync(process.kill_leftovers, t.dir / "logs")
        await servicecidrs.release(self._ctx.super, t.key)
        if plan.etcd_mode == "shared":
            deleted = await self._ctx.etcd.forget_tenant(t.key)
            logger.info("tenant %s: removed %d keys and its user from the shared etcd", t.key, deleted)
        await trio.to_thread.run_sync(lambda: shutil.rmtree(t.dir, ignore_errors=True))
