"""The `process` provisioner: a tenant's kube-apiserver and kube-controller-manager as child processes.

Layout of `<data_dir>/tenants/<cluster key>/` (0700, files 0600):

    plan.json   what must not change across restarts: port, address, service range, etcd
                mode, prefix and ports; the UID of the VirtualCluster it belongs to
    pki/        certificates, keys and kubeconfigs (`pkisecrets.files`); on the shared etcd
                also the tenant's etcd client certificate (`etcdcreds.TENANT_FILES`)
    logs/       one log and one pid file per process
    etcd/       the data of a dedicated etcd (annotation `tenancy.x-k8s.io/etcd: dedicated`)
    restore.json  only for a restored tenant: which staged backup was loaded (`manager.backups`)
    rotation.json the last certificate renewal and whether every process runs on it (`certrotation`)
    sleep.json    only while the tenant sleeps (`manager.sleep`)
    audit-policy.yaml  what the apiserver logs (logs/audit.log) when the tenant may sleep when idle

Everything the command lines contain comes from that directory, so after an appliance restart
the same command lines are built and the kept processes are adopted (same pids, same
certificates). The PKI is read back from `pki/`, else from the root-namespace secrets, and
only generated when neither has it. A Running tenant is maintained (`maintain`): due
certificates are renewed, a changed ClusterVersion or VirtualCluster is rolled out one
process at a time (`plane.RunningPlane.replace`, rolled back when the new process is not
ready), and it sleeps and wakes as its annotations ask (`manager.sleep`). The processes run under `process.supervise` in the
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

import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import ssl
import time
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
    certrotation,
    etcd,
    etcdgateway,
    footprint,
    model,
    pkisecrets,
    reconcile,
    rootns,
    servicecidrs,
    sleep,
    wakelistener,
)
from appliance.manager.provision.base import Context, ManagedTenant, News
from appliance.manager.provision.plane import RolledBack, RunningPlane, run_slot
from appliance.pki import kubeconfig
from appliance.util import private

logger = logging.getLogger(__name__)

#: Event reason when a planned port was taken by another program and replaced.
REASON_PORT_REASSIGNED = "PortReassigned"
#: `ManagedTenant.extra` key: the digest of a rollout that was rolled back (not retried as is).
EXTRA_ROLLED_BACK = "rolled-back"
#: `ManagedTenant.extra` keys of a sleeping tenant: its `WakeListener`; the last use and how far
#: the audit log was read (`_idle_for`).
EXTRA_WAKE = "wake-listener"
EXTRA_LAST_USE = "last-use"
EXTRA_AUDIT_CURSOR = "audit-cursor"
#: what the running plane's specs were last compared against (`maintain`)
EXTRA_SPEC_INPUTS = "spec-inputs"
#: the VirtualCluster's resourceVersion after a wake-up set `sleep: "false"`
EXTRA_WOKEN_AT_RV = "woken-at-rv"


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


def _read_rotation(path: Path) -> certrotation.State:
    try:
        return msgspec.json.decode(path.read_bytes(), type=certrotation.State)
    except (OSError, msgspec.MsgspecError):
        return certrotation.State(applied=True)


def _read_sleep(path: Path) -> sleep.State | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=sleep.State)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.MsgspecError):
        return sleep.State(since="", why="unreadable state file")  # asleep: waking is explicit


#: at most this much of the audit log is read per check
_AUDIT_CHUNK = 4 << 20


def _scan_audit(path: Path, cursor: tuple[int, int] | None) -> tuple[bool, tuple[int, int] | None]:
    """Whether the audit log grew by a request that counts as use since `cursor` (inode, offset)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False, None
    inode, offset = cursor if cursor is not None and cursor[0] == st.st_ino and cursor[1] <= st.st_size \
        else (st.st_ino, 0)
    if st.st_size == offset:
        return False, (inode, offset)
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(_AUDIT_CHUNK)
    complete = data[: data.rfind(b"\n") + 1]
    used = False
    for line in complete.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and sleep.counts_as_use(event):
            used = True
            break
    return used, (inode, offset + len(complete))


def _spec_digest(spec: process.ProcessSpec) -> str:
    """What a rollout compares: the command line and the environment we set."""
    h = hashlib.sha256(json.dumps([list(spec.argv), sorted((spec.env or {}).items())]).encode())
    return h.hexdigest()


def _write_tenant_dir(tdir: Path, plan: Plan, pki: pkisecrets.TenantPKI, *, cluster_name: str) -> None:
    for d in (tdir.parent, tdir, tdir / "pki", tdir / "logs"):
        private.make_dir(d)
    for name, data in pkisecrets.files(pki, server=plan.server, cluster_name=cluster_name).items():
        path = tdir / "pki" / name
        if not path.exists() or path.read_bytes() != data:
            private.write_file(path, data)
    private.write_file(tdir / "plan.json", json.dumps(msgspec.to_builtins(plan), indent=2))
    policy = tdir / "audit-policy.yaml"  # read only by tenants that may sleep when idle
    if not policy.exists() or policy.read_text() != sleep.audit_policy():
        private.write_file(policy, sleep.audit_policy())


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
            lifetime=certrotation.lifetime(t.vc.spec.pki_expire_days,
                                           override_seconds=self._ctx.settings.certificate_lifetime),
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
        now = dt.datetime.now(dt.UTC)
        if now >= certrotation.next_renewal(pki, fraction=ctx.settings.certificate_renew_fraction):
            # Due already (the host was off past the renewal time): start on renewed ones;
            # processes kept from before are rolled by `maintain`.
            state = await trio.to_thread.run_sync(_read_rotation, t.dir / "rotation.json")
            pki, _ = await self._renew(t, plan, pki, state, asked="", now=now)
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
        """Re-adopt (or restart) the processes of a Running tenant that this worker lacks; a
        sleeping tenant stays asleep (its address held) until it is woken."""
        if t.plane_running:
            return
        state = await trio.to_thread.run_sync(_read_sleep, t.dir / "sleep.json")
        if state is None:
            await self.provision(t)
            return
        listener: wakelistener.WakeListener | None = t.extra.get(EXTRA_WAKE)
        by_request = listener is not None and listener.woken.is_set()
        try:
            wanted = sleep.wants_sleep(t.vc.metadata.annotations)
        except sleep.Invalid:
            wanted = False  # `maintain` reports it once the tenant runs
        if wanted and not by_request:
            t.asleep = True
            if listener is None or listener.done.is_set():
                plan = await trio.to_thread.run_sync(_read_plan, t.dir / "plan.json")
                if plan is None:
                    raise RuntimeError(f"{t.dir / 'plan.json'} is unreadable; the sleeping tenant cannot be held")
                listener = wakelistener.WakeListener(plan.bind, plan.port, on_wake=t.poke)
                await t.nursery.start(listener.run)
                t.extra[EXTRA_WAKE] = listener
            return
        await self._wake(t, listener, by_request=by_request, wanted=wanted)

    async def _wake(
        self, t: ManagedTenant, listener: wakelistener.WakeListener | None, *, by_request: bool, wanted: bool,
    ) -> None:
        """Start the control plane again, hand it the held connections, say why it woke."""
        t.progress = "waking the tenant"
        if listener is not None:
            listener.stop_listening()
            with trio.fail_after(10):
                while True:  # the listening socket is closed once its task leaves the accept loop
                    plan = await trio.to_thread.run_sync(_read_plan, t.dir / "plan.json")
                    if plan is None or await trio.to_thread.run_sync(ports.bindable, plan.bind, plan.port):
                        break
                    await trio.sleep(0.05)
        await self.provision(t)
        plan = await trio.to_thread.run_sync(_read_plan, t.dir / "plan.json")
        if listener is not None and plan is not None:
            await listener.hand_over(plan.host, plan.port)
        t.extra.pop(EXTRA_WAKE, None)
        await trio.to_thread.run_sync(lambda: (t.dir / "sleep.json").unlink(missing_ok=True))
        t.asleep = False
        if by_request:
            who = listener.first_peer if listener is not None else "a client"
            message = f"woken by a connection from {who}"
            if wanted:  # else it would fall asleep again at once
                patch = {"metadata": {"annotations": {sleep.ANNOTATION_SLEEP: "false"}}}
                patched = await self._ctx.super.patch(resources.VIRTUALCLUSTERS, t.vc.metadata.name, patch,
                                                      namespace=t.vc.metadata.namespace)
                t.vc = model.decode_vc(patched)
                # The informer's copy may still say "true" for a moment: not a new request to sleep.
                t.extra[EXTRA_WOKEN_AT_RV] = int(t.vc.metadata.resource_version or 0)
                message += f"; annotation {sleep.ANNOTATION_SLEEP} set to false"
            reason = sleep.REASON_WOKEN_BY_REQUEST
        else:
            message, reason = f"woken: annotation {sleep.ANNOTATION_SLEEP} is no longer true", sleep.REASON_WAKE_REQUESTED
        t.extra[EXTRA_LAST_USE] = time.time()
        logger.info("tenant %s (VirtualCluster %s): %s", t.key, t.vc.ref, message)
        await t.news(News(sleep.COND_SLEEPING, "False", reason, message, event=True))

    async def _sleep(self, t: ManagedTenant, plan: Plan, *, reason: str, why: str) -> None:
        """Stop the processes (data and super Pods stay), hold the address, say so.

        The condition is written first: the syncer lets go of a sleeping tenant when it sees
        it, before the address is held, so its reconnects cannot wake the tenant again.
        """
        plane = t.plane
        if plane is None:
            return
        t.progress = "putting the tenant to sleep"
        since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        state = sleep.State(since=since, why=why)
        await trio.to_thread.run_sync(lambda: private.write_file(t.dir / "sleep.json", msgspec.json.encode(state)))
        t.asleep = True
        message = (f"asleep since {since} ({why}): its control-plane processes are stopped, its data and "
                   f"Pods stay; the first connection to {plan.server} wakes it")
        await t.news(News(sleep.COND_SLEEPING, "True", reason, message, event=True))
        await plane.stop()
        t.plane = None
        listener = wakelistener.WakeListener(plan.bind, plan.port, on_wake=t.poke)
        await t.nursery.start(listener.run)
        t.extra[EXTRA_WAKE] = listener
        logger.info("tenant %s (VirtualCluster %s): %s", t.key, t.vc.ref, message)

    async def _idle_for(self, t: ManagedTenant) -> float:
        """Seconds since the last request that counts as use (`sleep.counts_as_use`) in the audit log."""
        now = time.time()
        last = float(t.extra.setdefault(EXTRA_LAST_USE, now))
        cursor = t.extra.get(EXTRA_AUDIT_CURSOR)
        used, cursor = await trio.to_thread.run_sync(_scan_audit, t.dir / "logs" / "audit.log", cursor)
        t.extra[EXTRA_AUDIT_CURSOR] = cursor
        if used:
            last = now
            t.extra[EXTRA_LAST_USE] = now
        return now - last

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
                **self._audit_flags(t),
            },
        )
        env = dict(os.environ, GOMAXPROCS="2")
        keep = settings.keep_control_planes
        apiserver = components.apiserver_argv(settings.bins, flags)
        kcm = components.controller_manager_argv(
            settings.bins, pki_dir=pki_dir, service_cidr=plan.service_cidr, virtual_nodes=True,
            master=plan.server, extra=footprint.controller_manager_flags(trim),
        )
        if trim.api_server.binary:
            apiserver[0] = trim.api_server.binary
        if trim.controller_manager.binary:
            kcm[0] = trim.controller_manager.binary
        return [
            process.ProcessSpec(
                name=f"{t.key}/kube-apiserver",
                argv=apiserver,
                log_path=logs / "kube-apiserver.log",
                ready=cluster.http_probe(f"{plan.server}/readyz", ctx=ssl_ctx),
                env={**env, **footprint.apiserver_env(trim)}, keep_on_cancel=keep,
            ),
            process.ProcessSpec(
                name=f"{t.key}/kube-controller-manager",
                argv=kcm,
                log_path=logs / "kube-controller-manager.log",
                env={**env, **footprint.controller_manager_env(trim)}, keep_on_cancel=keep,
            ),
        ]

    def _etcd_spec(self, t: ManagedTenant, plan: Plan) -> process.ProcessSpec:
        """The dedicated etcd of `t`."""
        pki_dir = t.dir / "pki"
        return cluster.etcd_spec(
            self._ctx.settings.bins, state_dir=t.dir, client_port=plan.etcd_client_port,
            peer_port=plan.etcd_peer_port, keep_on_cancel=self._ctx.settings.keep_control_planes,
            tls=TLSFiles(pki_dir / "ca.crt", pki_dir / "etcd.crt", pki_dir / "etcd.key"),
        )

    @staticmethod
    def _dedicated_access(t: ManagedTenant, plan: Plan) -> etcd.EtcdAccess:
        pki_dir = t.dir / "pki"
        return etcd.EtcdAccess(
            url=cluster.etcd_url(plan.etcd_client_port, tls=True),
            tls=TLSFiles(pki_dir / "ca.crt", pki_dir / "apiserver.crt", pki_dir / "apiserver.key"),
        )

    async def _wanted_specs(self, t: ManagedTenant, plan: Plan) -> list[process.ProcessSpec]:
        """Every process `t` should run now, in start order (from the current plan, PKI and ClusterVersion)."""
        ssl_ctx = await trio.to_thread.run_sync(cluster.admin_ssl_context, t.dir / "pki")
        if plan.etcd_mode == "dedicated":
            return [self._etcd_spec(t, plan), *self._specs(t, plan, self._dedicated_access(t, plan), ssl_ctx)]
        access = await self._ctx.etcd.tenant(t.key, t.dir / "pki")
        return self._specs(t, plan, access, ssl_ctx)

    @staticmethod
    def _audit_flags(t: ManagedTenant) -> dict[str, str]:
        """A tenant that sleeps when idle logs who uses it (`sleep.audit_policy`); others log nothing."""
        try:
            if sleep.idle_limit(t.vc.metadata.annotations) is None:
                return {}
        except sleep.Invalid:
            return {}
        return {
            "audit-policy-file": str(t.dir / "audit-policy.yaml"),
            "audit-log-path": str(t.dir / "logs" / "audit.log"),
            "audit-log-format": "json",
            "audit-log-maxsize": "1",
            "audit-log-maxbackup": "1",
        }

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
                plane = RunningPlane([], nursery.cancel_scope, done, nursery)
                try:
                    if access is None:
                        etcd_spec = self._etcd_spec(t, plan)
                        await trio.to_thread.run_sync(
                            lambda: stale.stop_unadoptable([etcd_spec], keep=settings.keep_control_planes)
                        )
                        plane.slots.append(await nursery.start(run_slot, etcd_spec))
                        if restore is not None:  # the tenant's own etcd is up, its apiserver not yet
                            url, tls = await trio.to_thread.run_sync(
                                backups.dedicated_access, t.dir, plan.etcd_client_port)
                            async with etcdgateway.open_gateway(url, tls=tls, password=None) as gateway:
                                await self._restore(t, gateway, restore)
                        access = self._dedicated_access(t, plan)
                    specs = self._specs(t, plan, access, ssl_ctx)
                    await trio.to_thread.run_sync(
                        lambda: stale.stop_unadoptable(specs, keep=settings.keep_control_planes)
                    )
                    for spec in specs:
                        plane.slots.append(await nursery.start(run_slot, spec))
                except process.ProcessFailed as exc:
                    failure = exc
                    if "address already in use" in str(exc):
                        logger.warning("tenant %s: a planned port was taken as its processes started; "
                                       "the next attempt moves it", t.key)
                    for slot in plane.slots:
                        slot.handle.keep_on_cancel = False
                    nursery.cancel_scope.cancel()
                else:
                    adopted = sum(h.adopted for h in plane.handles)
                    logger.info("tenant %s: %d processes up (%d adopted)", t.key, len(plane.slots), adopted)
                    task_status.started(plane)
        finally:
            done.set()
        if failure is not None:
            raise failure

    # -- a Running tenant: renewals and rollouts -----------------------------------------------

    async def maintain(self, t: ManagedTenant) -> float | None:
        """Renew certificates that are due (or asked for), then roll processes whose spec changed.

        Returns the seconds until the next renewal is due. Both end in the same place: each
        changed process is replaced alone, in start order, and a replacement that does not
        become ready is rolled back (`plane.RolledBack`) and not tried again until what it
        was built from changes.
        """
        plane = t.plane
        if plane is None or not t.plane_running:
            return None
        plan = await trio.to_thread.run_sync(_read_plan, t.dir / "plan.json")
        pki = await trio.to_thread.run_sync(_read_pki, t.dir / "pki")
        if plan is None or pki is None:
            return None  # the next provision rebuilds them
        idle_check = await self._sleep_if_asked(t, plan)
        if t.asleep:
            return None
        settings = self._ctx.settings
        state_path = t.dir / "rotation.json"
        state = await trio.to_thread.run_sync(_read_rotation, state_path)
        asked = certrotation.requested(t.vc.metadata.annotations, model.ANNOTATION_ROTATE_CERTIFICATES, state)
        now = dt.datetime.now(dt.UTC)
        fraction = settings.certificate_renew_fraction
        if asked or now >= certrotation.next_renewal(pki, fraction=fraction):
            pki, state = await self._renew(t, plan, pki, state, asked=asked, now=now)
        if not state.applied:
            await self._roll(t, plane, plan, why="renewed certificates", older_than=state.rotated_at)
            state = msgspec.structs.replace(state, applied=True)
            await trio.to_thread.run_sync(lambda: private.write_file(state_path, msgspec.json.encode(state)))
            await t.news(News(model.COND_CERTIFICATES, "True", model.REASON_CERTIFICATES_RENEWED,
                              f"certificates renewed {state.why}, valid until {state.not_after}; processes "
                              "restarted one at a time", event=True))
        else:
            # What the specs are built from; status writes reconcile often, the specs rarely change.
            inputs = ((t.cluster_version or {}).get("metadata", {}).get("resourceVersion"),
                      t.vc.metadata.generation, t.vc.metadata.annotations.get(sleep.ANNOTATION_SLEEP_AFTER), id(plane))
            if t.extra.get(EXTRA_SPEC_INPUTS) != inputs:
                await self._roll(t, plane, plan, why="a changed specification")
                t.extra[EXTRA_SPEC_INPUTS] = inputs
        due = certrotation.next_renewal(pki, fraction=fraction)
        wait = max(1.0, (due - dt.datetime.now(dt.UTC)).total_seconds())
        return min(wait, idle_check) if idle_check is not None else wait

    async def _sleep_if_asked(self, t: ManagedTenant, plan: Plan) -> float | None:
        """Sleep when the annotation asks or the idle time is up; else seconds until the next idle check."""
        annotations = t.vc.metadata.annotations
        try:
            wanted, limit = sleep.wants_sleep(annotations), sleep.idle_limit(annotations)
        except sleep.Invalid as exc:
            current = t.vc.status.condition(sleep.COND_SLEEPING)
            if current is None or current.message != str(exc):
                await t.news(News(sleep.COND_SLEEPING, "False", "InvalidAnnotation", str(exc),
                                  event=True, warning=True))
            return None
        if wanted and int(t.vc.metadata.resource_version or 0) < t.extra.get(EXTRA_WOKEN_AT_RV, 0):
            wanted = False  # an older copy of the VirtualCluster than our own "false"
        if wanted:
            await self._sleep(t, plan, reason=sleep.REASON_ASLEEP,
                              why=f"annotation {sleep.ANNOTATION_SLEEP} is true")
            return None
        if limit is None:
            return None
        idle = await self._idle_for(t)
        if idle >= limit:
            await self._sleep(t, plan, reason=sleep.REASON_IDLE,
                              why=f"no request for {idle:.0f} s; {sleep.ANNOTATION_SLEEP_AFTER} is "
                                  f"{annotations[sleep.ANNOTATION_SLEEP_AFTER]}")
            return None
        return max(1.0, limit - idle)

    async def _renew(
        self, t: ManagedTenant, plan: Plan, pki: pkisecrets.TenantPKI, state: certrotation.State,
        *, asked: str, now: dt.datetime,
    ) -> tuple[pkisecrets.TenantPKI, certrotation.State]:
        """New leaves on disk and in the root-namespace secrets; the state says they are not applied yet."""
        settings = self._ctx.settings
        valid_for = certrotation.lifetime(t.vc.spec.pki_expire_days, override_seconds=settings.certificate_lifetime)
        t.progress = "renewing the tenant's certificates"
        new = await trio.to_thread.run_sync(lambda: certrotation.renewed(pki, valid_for=valid_for, now=now))
        until = certrotation.not_after(new).strftime("%Y-%m-%dT%H:%M:%SZ")
        why = f"on request {asked}" if asked else f"at {settings.certificate_renew_fraction:.0%} of their validity"
        state = certrotation.State(requested=asked or state.requested, rotated_at=now.timestamp(),
                                   not_after=until, applied=False, why=why)
        await trio.to_thread.run_sync(
            lambda: _write_tenant_dir(t.dir, plan, new, cluster_name=t.vc.metadata.name))
        await trio.to_thread.run_sync(lambda: private.write_file(t.dir / "rotation.json", msgspec.json.encode(state)))
        for secret in pkisecrets.secrets(new, namespace=t.key, server=plan.server, cluster_name=t.vc.metadata.name):
            await rootns.apply(self._ctx.super, resources.SECRETS, secret)
        logger.info("tenant %s (VirtualCluster %s): certificates renewed %s, valid until %s",
                    t.key, t.vc.ref, why, until)
        return new, state

    async def _roll(
        self, t: ManagedTenant, plane: RunningPlane, plan: Plan, *, why: str, older_than: float | None = None,
    ) -> None:
        """Replace processes of `plane` by the wanted ones, one at a time: those started before
        `older_than` (renewed certificates), else those whose command line or environment changed."""
        wanted = await self._wanted_specs(t, plan)
        only_changed = older_than is None
        todo = [spec for spec in wanted
                if (slot := plane.slot(spec.name)) is not None
                and (_spec_digest(slot.spec) != _spec_digest(spec) if older_than is None
                     else slot.handle.started_at < older_than)]
        current = t.vc.status.condition(model.COND_ROLLOUT)
        if not todo:
            t.extra.pop(EXTRA_ROLLED_BACK, None)
            if current is not None and current.status != "True":
                await t.news(News(model.COND_ROLLOUT, "True", model.REASON_UP_TO_DATE,
                                  "every process runs its current specification"))
            return
        target = "".join(_spec_digest(spec) for spec in todo)
        if only_changed and t.extra.get(EXTRA_ROLLED_BACK) == target:
            return  # rolled back before: wait until the specification changes again
        names = [spec.name.rsplit("/", 1)[-1] for spec in todo]
        for i, spec in enumerate(todo, 1):
            name = names[i - 1]
            t.progress = f"replacing {name} ({i} of {len(todo)}) for {why}"
            await t.news(News(model.COND_ROLLOUT, "False", model.REASON_ROLLING,
                              f"replacing {name} ({i} of {len(todo)}: {', '.join(names)}) for {why}"))
            try:
                await plane.replace(spec)
            except RolledBack as exc:
                logger.warning("tenant %s (VirtualCluster %s): %s", t.key, t.vc.ref, exc)
                await t.news(News(model.COND_ROLLOUT, "False", model.REASON_ROLLED_BACK, str(exc),
                                  event=True, warning=True))
                if not only_changed:
                    raise
                t.extra[EXTRA_ROLLED_BACK] = target
                return
        await t.news(News(model.COND_ROLLOUT, "True", model.REASON_ROLLED_OUT,
                          f"replaced {', '.join(names)} one at a time for {why}", event=only_changed))

    async def teardown(self, t: ManagedTenant) -> None:
        if t.plane is not None:
            await t.plane.stop()
            t.plane = None
        listener: wakelistener.WakeListener | None = t.extra.pop(EXTRA_WAKE, None)
        if listener is not None:  # a sleeping tenant: its address is released, held clients cut
            listener.close()
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
