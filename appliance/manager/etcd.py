"""The manager's shared etcd for process-mode tenants: TLS, one etcd user per tenant, cleanup.

`SharedEtcd` starts etcd lazily, once, the first time a tenant needs it, under
`<data_dir>/etcd` with ports chosen on first use and persisted in `ports.json`, so the same
command line (and therefore the same kept process, see `controlplane.process`) comes back
after an appliance restart. It runs in the manager's nursery, not in a tenant's: it outlives
every tenant.

Isolation: etcd serves HTTPS only and trusts only the appliance's etcd CA (`etcdcreds`), with
authentication on. Each tenant stores its objects under `tenant_prefix(key)` and reaches etcd
as its own user, whose role covers that prefix only (`etcdgateway`), so one tenant's
apiserver cannot read or write another's keys. Tenant apiservers therefore may not compact
(that writes the shared key `compact_rev_key`): they run with `--etcd-compaction-interval=0`
and etcd compacts itself (`COMPACTION_RETENTION`).

Upgrade: a data dir made by a version without TLS has a plain-HTTP etcd (maybe still running,
kept). Its command line differs, so it is stopped and etcd starts again on the same data and
ports with TLS, then auth is turned on; tenant apiservers get new command lines and restart
as they are provisioned again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from appliance.controlplane import cluster, ports, process, stale
from appliance.controlplane.build import Binaries
from appliance.controlplane.components import TLSFiles
from appliance.manager import etcdcreds, etcdgateway
from appliance.util import private, tenancy

logger = logging.getLogger(__name__)

#: History etcd keeps before compacting it; kube-apiserver's own compactor keeps 5-10 minutes.
COMPACTION_RETENTION = "5m"
#: Tenant apiservers on the shared etcd must not compact (see the module docstring).
TENANT_COMPACTION_INTERVAL = "0"


def tenant_prefix(cluster_key: tenancy.ClusterKey) -> str:
    """Every etcd key of the tenant lies under this prefix (its apiserver uses `<prefix>registry`)."""
    return f"/tenants/{cluster_key}/"


def load_or_choose_ports(
    path: Path, names: tuple[str, ...], *, taken: Callable[[int], bool] = lambda port: False,
) -> dict[str, int]:
    """Ports persisted in `path`, or free ones chosen now and written there (0600).

    A saved port for which `taken` is true (another program holds it) is replaced by a free
    one, and the file rewritten: a port taken while we were not using it must not keep our
    process from starting forever.
    """
    try:
        saved = json.loads(path.read_text())
        if all(isinstance(saved.get(n), int) for n in names):
            chosen = {n: int(saved[n]) for n in names}
            moved = {n: cluster.free_port() for n in names if taken(chosen[n])}
            if not moved:
                return chosen
            for n, port in moved.items():
                logger.warning("%s: port %s %d is taken by another program; using %d instead",
                               path, n, chosen[n], port)
            chosen.update(moved)
            private.write_file(path, json.dumps(chosen, indent=2))
            return chosen
    except (OSError, ValueError):
        pass
    fresh = {n: cluster.free_port() for n in names}
    private.write_file(path, json.dumps(fresh, indent=2))
    return fresh


@dataclass(frozen=True, slots=True)
class EtcdAccess:
    """How one tenant apiserver reaches the shared etcd: URL and its own client certificate."""

    url: str
    tls: TLSFiles


@dataclass(frozen=True, slots=True)
class _RootAccess:
    """How the appliance reaches the shared etcd as root (never logged)."""

    url: str
    creds: etcdcreds.SharedEtcdCreds
    admin_tls: ssl.SSLContext
    password: str = field(repr=False)


class SharedEtcd:
    """One etcd for all tenants that do not ask for their own."""

    def __init__(self, *, nursery: trio.Nursery, bins: Binaries, state_dir: Path, keep: bool) -> None:
        self._nursery = nursery
        self._bins = bins
        self._state_dir = state_dir
        self._keep = keep
        self._lock = trio.Lock()
        self._started: _RootAccess | None = None  # etcd runs (supervised in the manager's nursery)
        self._ready: _RootAccess | None = None  # ... and auth is on
        #: Tenant users made (or found) by this manager run: later calls skip the gateway.
        self._users: set[str] = set()
        self.handle: process.ProcessHandle | None = None

    async def _start(self) -> _RootAccess:
        """Start (or re-adopt) etcd, with its credentials and auth, on first use.

        Raises process.ProcessFailed (with the log tail) if it cannot be started, and
        etcdgateway.GatewayError if auth cannot be set up (the next call tries that again,
        without a second etcd).
        """
        async with self._lock:
            if self._ready is not None:
                return self._ready
            if self._started is None:
                self._started = await self._start_process()
            root = self._started
            try:
                async with etcdgateway.open_gateway(root.url, tls=root.admin_tls,
                                                    password=root.password) as gateway:
                    if gateway.enabled_auth:
                        logger.info("shared etcd: authentication turned on")
            except etcdgateway.GatewayError as exc:
                if "authentication failed" not in exc.message:
                    raise
                raise etcdgateway.GatewayError(exc.code, (
                    f"root's password in {root.creds.password_file} does not match the shared etcd's; "
                    "restore that file, or set root's password with etcdctl and a client certificate "
                    f"with CN=root issued by {root.creds.dir / 'ca.key'}")) from None
            self._ready = root
            return root

    async def _start_process(self) -> _RootAccess:
        state = self._state_dir
        creds = await trio.to_thread.run_sync(etcdcreds.ensure, state / "pki")
        ours = await trio.to_thread.run_sync(stale.live_pids, [state / "logs" / "etcd.pid"])
        chosen = await trio.to_thread.run_sync(lambda: load_or_choose_ports(
            state / "ports.json", ("client", "peer"),
            taken=lambda port: ports.taken_by_stranger(cluster.LOOPBACK, port, ours=ours)))
        spec = cluster.etcd_spec(
            self._bins, state_dir=state, client_port=chosen["client"], peer_port=chosen["peer"],
            keep_on_cancel=self._keep, tls=creds.server, compaction_retention=COMPACTION_RETENTION,
        )
        # A kept etcd with another command line (plain HTTP before the upgrade, other ports).
        await trio.to_thread.run_sync(lambda: stale.stop_unadoptable([spec], keep=self._keep))
        self.handle = await self._nursery.start(process.supervise, spec)
        admin_tls = await trio.to_thread.run_sync(cluster.client_ssl_context, creds.admin)
        password = await trio.to_thread.run_sync(creds.root_password)
        return _RootAccess(cluster.etcd_url(chosen["client"], tls=True), creds, admin_tls, password)

    async def url(self) -> str:
        """Its client URL (HTTPS), starting (or re-adopting) etcd on first use."""
        return (await self._start()).url

    async def tenant(self, cluster_key: tenancy.ClusterKey, pki_dir: Path) -> EtcdAccess:
        """Give a tenant its etcd user and client certificate (in `pki_dir`); start etcd if needed.

        Raises as `url()` does.
        """
        root = await self._start()
        user = etcdgateway.tenant_user(cluster_key)
        files = await trio.to_thread.run_sync(
            lambda: etcdcreds.issue_client(root.creds, user=user, out_dir=pki_dir))
        if user not in self._users:
            async with etcdgateway.open_gateway(root.url, tls=root.admin_tls,
                                                password=root.password) as gateway:
                await gateway.ensure_tenant(user, tenant_prefix(cluster_key))
            self._users.add(user)
        return EtcdAccess(url=root.url, tls=files)

    @contextlib.asynccontextmanager
    async def open_root_gateway(self) -> AsyncIterator[etcdgateway.Gateway]:
        """A root session with the shared etcd (started if needed): restores write through it.

        Raises as `url()` does.
        """
        root = await self._start()
        async with etcdgateway.open_gateway(root.url, tls=root.admin_tls, password=root.password) as gateway:
            yield gateway

    async def forget_tenant(self, cluster_key: tenancy.ClusterKey) -> int:
        """Delete the tenant's keys, then its etcd user and role; return how many keys went.

        Raises as `url()` does.
        """
        root = await self._start()
        user = etcdgateway.tenant_user(cluster_key)
        async with etcdgateway.open_gateway(root.url, tls=root.admin_tls,
                                            password=root.password) as gateway:
            deleted = await gateway.delete_prefix(tenant_prefix(cluster_key))
            await gateway.remove_tenant(user)
        self._users.discard(user)
        return deleted
