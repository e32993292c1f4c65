"""The root of the appliance: one trio process, one root nursery.

Task tree:

    main(config)                      1st signal → graceful stop (Drain: no new work, wait for the
                                      work in progress up to graceful-timeout), 2nd → cancel now;
                                      sd_notify READY/STOPPING/WATCHDOG
    └── run(config)
        ├── health.serve              /healthz /readyz /metrics
        ├── Coordinator.run           (scale-out) tenant Leases shared with other replicas
        ├── manager.run               VirtualCluster/ClusterVersion → tenant control planes
        ├── Syncer.run                super caches, fair queues, workers, patrol
        ├── supervisor.run            one nursery per Running tenant (inside: informers)
        ├── proxy serve               the vn-agent: kubelet API for tenants
        └── tenantcas.follow          (scale-out) every tenant's CA for the proxy

Readiness (`/readyz`, READY=1) means every component's `nursery.start` returned. The
components never import each other: the syncer tells the proxy which tenant CAs exist
through the hooks wired here, and the proxy reads super Pods from the syncer's cache.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import secrets
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import trio

from appliance import config as cfgmod
from appliance import health, sdnotify
from appliance.controlplane import build
from appliance.kube import creds as kcreds
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient, open_client
from appliance.manager import settings as manager_settings
from appliance.metrics import Registry
from appliance.pki import certs
from appliance.replicas import settings as replicas_settings
from appliance.replicas.ownership import Ownership
from appliance.syncer import settings as syncer_settings
from appliance.util import private
from appliance.util.drain import Drain
from appliance.util.settings import extend

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The appliance cannot start; the message says why in one line."""


#: The origin of a kubeconfig named by the config file; messages then name just the file.
CONFIG_ORIGIN = "[super] kubeconfig"


@dataclasses.dataclass(frozen=True, slots=True)
class SuperSource:
    """Where the super cluster's credentials come from; `files` empty means in-cluster."""

    files: tuple[Path, ...]
    context: str | None
    #: what chose the files, for messages: a flag, the config key, KUBECONFIG, ~/.kube/config
    origin: str

    def describe(self) -> str:
        """The files (or the service account), then what chose them unless it was the config."""
        if not self.files:
            return self.origin
        where = os.pathsep.join(map(str, self.files))
        return where if self.origin == CONFIG_ORIGIN else f"{where}, from {self.origin}"


#: What a user can pass when nothing names a super cluster (cli.py has the matching flags).
NO_SUPER_HINT = (
    "no super cluster kubeconfig: pass --kubeconfig PATH, set KUBECONFIG (after `vc-appliance dev "
    "up`: export KUBECONFIG=<state-dir>/super.kubeconfig) or `[super] kubeconfig` in --config; "
    "~/.kube/config is used when it exists, and a service account only inside a Pod"
)


def super_source(
    cfg: cfgmod.Config, *, kubeconfig: str, context: str, env: Mapping[str, str], home: Path
) -> SuperSource:
    """Choose the super cluster's kubeconfig as kubectl would, with the config file in between.

    Files: `--kubeconfig` > `[super] kubeconfig` > KUBECONFIG (merged) > ~/.kube/config >
    the in-cluster service account, the last only when nothing else is given (kubectl's
    order). Context: `--context` > `[super] context` > the merged current-context.
    Raises StartupError with NO_SUPER_HINT when nothing is configured and not in a Pod.
    """
    chosen = context or cfg.super.context or None
    if kubeconfig:
        return SuperSource((Path(kubeconfig).expanduser(),), chosen, "--kubeconfig")
    if cfg.super.kubeconfig:
        return SuperSource((Path(cfg.super.kubeconfig).expanduser(),), chosen, CONFIG_ORIGIN)
    found = kcreds.kubeconfig_files(env, home)
    if found is not None:
        return SuperSource(tuple(found[0]), chosen, found[1])
    if env.get("KUBERNETES_SERVICE_HOST"):
        return SuperSource((), None, "in-cluster service account")
    missing = f" (none of KUBECONFIG={env['KUBECONFIG']} exists)" if env.get("KUBECONFIG") else ""
    raise StartupError(NO_SUPER_HINT + missing)


async def super_credentials(source: SuperSource) -> kcreds.Credentials:
    """Load the credentials `source` names. Raises StartupError naming the source."""
    try:
        if source.files:
            return await kcreds.load_kubeconfigs(source.files, context=source.context)
        return kcreds.in_cluster()
    except (OSError, kcreds.KubeconfigError) as exc:
        raise StartupError(f"super cluster credentials ({source.describe()}): {exc}") from None


async def check_super(client: ApiClient, *, timeout: float) -> str:
    try:
        with trio.fail_after(timeout):
            version = await client.server_version()
    except (errors.KubeError, trio.TooSlowError) as exc:
        raise StartupError(f"cannot reach the super cluster at {client.creds.server}: {exc!r}") from None
    return str(version.get("gitVersion", "?"))


def replica_identity(cfg: cfgmod.Config) -> str:
    """The Lease holder identity: configured, or `<hostname>-<random>` as client-go does."""
    return cfg.leases.identity or f"{socket.gethostname()}-{secrets.token_hex(3)}"


def proxy_serving_cert(data_dir: Path) -> tuple[bytes, bytes]:
    """The proxy's own serving certificate, made once and kept (tenant apiservers do not
    verify kubelet certificates unless told to; a stable one lets an operator pin it)."""
    d = data_dir / "proxy"
    crt, key = d / "tls.crt", d / "tls.key"
    if crt.exists() and key.exists():
        return crt.read_bytes(), key.read_bytes()
    ca = certs.new_ca("vc-appliance-proxy-ca")
    leaf = certs.issue(ca, common_name="vc-appliance-proxy", dns_names=("localhost",),
                       ip_addresses=("127.0.0.1",), server=True, days=3650)
    private.write_file(key, leaf.key_pem)
    private.write_file(crt, leaf.cert_pem)
    return leaf.cert_pem, leaf.key_pem


async def run(
    cfg: cfgmod.Config,
    *,
    source: SuperSource,
    readiness: health.Readiness,
    drain: Drain | None = None,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    from appliance.syncer import runtime, supervisor

    registry = Registry()
    drain = drain if drain is not None else Drain()
    data_dir = Path(cfg.data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    creds = await super_credentials(source)
    identity = replica_identity(cfg)
    # the API server names an object's field manager after the user agent: with several
    # replicas, managedFields then tell which replica wrote what
    agent = f"vc-appliance@{identity}" if cfg.leases.enabled else "vc-appliance"
    # by method: an idle appliance must make no writes (POST/PUT/PATCH/DELETE) to the super cluster
    super_requests = registry.counter(
        "vc_super_requests_total", "Requests to the super cluster by HTTP method and status code "
        "(watches not counted)", ["method", "code"])
    async with open_client(creds, qps=cfg.super.qps, burst=cfg.super.burst,
                           timeout=cfg.super.request_timeout, user_agent=agent,
                           on_response=lambda method, code: super_requests.inc(method=method, code=str(code)),
                           ) as superc:
        async with trio.open_nursery() as nursery:
            http_port = await nursery.start(lambda task_status: health.serve(
                settings=cfg.http, readiness=readiness, registry=registry, task_status=task_status))
            readiness.mark("http")
            version = await check_super(superc, timeout=cfg.super.request_timeout)
            log.info("super cluster %s (%s)", creds.server, version)
            info: dict[str, Any] = {"http_port": http_port, "super": creds.server}

            sx = None
            cas = None
            if cfg.proxy.enabled:
                from appliance.proxy import server as proxy_server

                cas = proxy_server.TenantCAs()
            # with Leases, tenantcas.follow tells the proxy every tenant's CA, not just ours
            syncer_cas = None if cfg.leases.enabled else cas
            if cfg.syncer.enabled:
                sx = runtime.Syncer(
                    super_client=superc, registry=registry,
                    settings=extend(cfg.syncer, syncer_settings.SyncerSettings,
                                    vnode_address=cfg.proxy.vnode_address, vnode_port=cfg.proxy.port),
                    on_register=(lambda tid, tcreds: syncer_cas.set(tid.key, tcreds.ca_pem)
                                 if syncer_cas is not None and tcreds.ca_pem else None),
                    on_unregister=(lambda key: syncer_cas.remove(key) if syncer_cas is not None else None),
                    drain=drain,
                )
            ownership = Ownership()
            if cfg.leases.enabled:
                from appliance.replicas import coordinator

                lc = msgspec.structs.replace(
                    cfg.leases, identity=identity,
                    placement=cfg.leases.placement or f"{socket.gethostname()}:{data_dir.resolve()}")
                ownership = coordinator.Coordinator(superc, extend(
                    lc, replicas_settings.LeaseSettings, label_selector=cfg.tenant_selector or None))
                try:
                    await nursery.start(ownership.run)
                except errors.KubeError as exc:  # e.g. Forbidden: the RBAC lacks leases/namespaces
                    raise StartupError(f"leases in namespace {lc.namespace}: {exc}") from None
                info["identity"] = identity
            if cfg.manager.enabled:
                await nursery.start(_run_manager, cfg, superc, data_dir, ownership, drain)
            readiness.mark("manager")
            if sx is not None:
                await nursery.start(sx.run)
                await nursery.start(functools.partial(
                    supervisor.run, sx, label_selector=cfg.tenant_selector or None, ownership=ownership))
            readiness.mark("syncer")
            if cas is not None:
                if cfg.leases.enabled:  # virtual nodes may point at any replica: trust every tenant
                    from appliance import tenantcas

                    await nursery.start(functools.partial(
                        tenantcas.follow, superc, cas, label_selector=cfg.tenant_selector or None))
                info["proxy_port"] = await nursery.start(_run_proxy, cfg, superc, data_dir, cas, sx, drain)
            readiness.mark("proxy")
            log.info("vc-appliance ready (http :%d)", http_port)
            task_status.started(info)


async def _run_manager(
    cfg: cfgmod.Config, superc: ApiClient, data_dir: Path, ownership: Ownership, drain: Drain,
    *, task_status: trio.TaskStatus[None],
) -> None:
    from appliance.manager import controller

    bins_dir = cfg.binaries_dir
    if cfg.manager.default_provisioner == "process" or bins_dir:
        bins = (build.Binaries(Path(bins_dir)) if bins_dir
                else await trio.to_thread.run_sync(build.ensure_binaries))
    else:
        bins = build.Binaries(Path("/nonexistent"))
    settings = extend(cfg.manager, manager_settings.ManagerSettings, data_dir=data_dir, bins=bins,
                      label_selector=cfg.tenant_selector or None)
    await controller.run(super_client=superc, settings=settings, ownership=ownership, drain=drain,
                         task_status=task_status)


async def _run_proxy(
    cfg: cfgmod.Config, superc: ApiClient, data_dir: Path, cas: Any, sx: Any, drain: Drain,
    *, task_status: trio.TaskStatus[int],
) -> None:
    """The proxy; on a graceful stop it stops accepting and closes its listeners, while the
    connections it serves go on until the final cancellation."""
    from appliance.proxy import forward, server

    p = cfg.proxy
    cert, key = await trio.to_thread.run_sync(proxy_serving_cert, data_dir)
    if p.upstream == "kubelet":
        kubelet = kcreds.Credentials(
            server=f"https://{p.kubelet_address or '127.0.0.1'}:{p.kubelet_port}",
            client_cert_pem=Path(p.kubelet_client_certificate).read_bytes() if p.kubelet_client_certificate else None,
            client_key_pem=Path(p.kubelet_client_key).read_bytes() if p.kubelet_client_key else None,
            insecure_skip_tls_verify=True,  # kubelets serve self-signed certificates
        )
        upstream = await trio.to_thread.run_sync(
            lambda: forward.upstream_from_credentials(kubelet, mode="kubelet"))
        upstream = dataclasses.replace(upstream, host_from_pod=not p.kubelet_address)
    else:
        upstream = await trio.to_thread.run_sync(
            lambda: forward.upstream_from_credentials(superc.creds, mode="super-apiserver"))
    upstream = dataclasses.replace(upstream, idle_timeout=p.idle_timeout,
                                   total_timeout=p.total_timeout or float("inf"))

    async def lookup_pod(namespace: str, name: str) -> dict[str, Any] | None:
        if sx is not None:
            return sx.super_cache("pod").get(name, namespace)  # type: ignore[no-any-return]
        try:
            return await superc.get(resources.PODS, name, namespace=namespace)
        except errors.NotFound:
            return None

    accepting = trio.CancelScope()

    async def serve(handlers: trio.Nursery, *, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with accepting:  # serve closes its listeners when this is cancelled
            await server.serve(
                host=p.address, port=p.port, server_cert_pem=cert, server_key_pem=key, cas=cas,
                upstream=upstream, lookup_pod=lookup_pod, limits=server.ServerLimits.from_config(p),
                handler_nursery=handlers, task_status=task_status,
            )
        log.info("proxy: stopped accepting connections")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve, nursery)
        drain.on_begin(accepting.cancel)
        task_status.started(listeners[0].socket.getsockname()[1])


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def _finish(drain: Drain, timeout: float, scope: trio.CancelScope) -> None:
    """The graceful stop's second half: wait for the work in progress, at most `timeout`, then cancel."""
    started = trio.current_time()
    with trio.move_on_after(timeout):
        await drain.wait_idle()
    if drain.active:
        log.warning("graceful timeout (%.0f s): cutting %d writes in flight", timeout, drain.active)
    else:
        log.info("work in progress finished in %.1f s; stopping", trio.current_time() - started)
    scope.cancel()


async def main(cfg: cfgmod.Config, source: SuperSource) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop, 2 when startup fails."""
    readiness = health.Readiness("http", "manager", "syncer", "proxy")
    notify = sdnotify.Notifier.from_env()
    failed = False
    drain = Drain()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(lambda task_status: run(cfg, source=source, readiness=readiness,
                                                            drain=drain, task_status=task_status))
                await notify.send("READY=1\nSTATUS=serving")
                nursery.start_soon(notify.watchdog)
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if drain.draining:
                        log.warning("signal %s again: stopping now (%d writes in flight are cut)", name, drain.active)
                        nursery.cancel_scope.cancel()
                        break
                    log.info("signal %s: stopping; waiting up to %.0f s for %d writes in flight",
                             name, cfg.graceful_timeout, drain.active)
                    readiness.stopping = True
                    await notify.send("STOPPING=1")
                    drain.begin()
                    nursery.start_soon(_finish, drain, cfg.graceful_timeout, nursery.cancel_scope)
        except* StartupError as group:
            for exc in _leaves(group):
                log.error("%s", exc)
            failed = True
    return 2 if failed else 0
