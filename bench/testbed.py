"""The bed a benchmark runs on: a private super cluster, tenant control planes, the syncer host.

* `open_bed(args)` starts a private super cluster in-process (`localcluster.run`: etcd,
  kube-apiserver, KCM, scheduler, kwok nodes, in a fresh state directory), applies the CRDs
  and yields a `Bed`. `Bed.add_tenants` starts tenant control planes
  (`cluster.start_control_plane(..., controller_manager=True, virtual_nodes=True)` on the
  shared etcd, each under its own prefix) and registers each as an imported, Running
  VirtualCluster whose admin kubeconfig is in the `tenancy.x-k8s.io/admin-kubeconfig`
  annotation, as the integration tests do (they share the `BedTenant` record). On exit
  everything is stopped, leftovers of the state directory are killed, and the directory is
  removed (`--keep-state` keeps it).
* `SyncerHost` runs `bench.host` (Syncer + supervisor [+ proxy]) as a child process and
  talks to it over a JSON-lines pipe.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from appliance.controlplane import build, cluster, localcluster, process
from appliance.kube import creds as kcreds
from appliance.kube import resources
from appliance.kube.client import ApiClient, open_client
from appliance.syncer.tenant import TenantId
from appliance.util import naming
from bench import load, report, verification

log = logging.getLogger("bench")

CRDS = report.ROOT / "appliance" / "manager" / "crds"
PODS = resources.PODS


# --- processes -----------------------------------------------------------------------------------

def pids_mentioning(text: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        if any(text in arg for arg in process.cmdline(int(d.name))):
            found.append(int(d.name))
    return found


def _cleanup_state(state_dir: Path, *, keep: bool) -> None:
    dirs = [state_dir / "logs", *state_dir.glob("tenants/*/logs")]
    for d in dirs:
        if d.is_dir():
            killed = process.kill_leftovers(d)
            if killed:
                log.warning("killed leftover processes %s of %s", killed, d)
    left = pids_mentioning(str(state_dir))
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        log.warning("killed %d processes still naming %s: %s", len(left), state_dir, left)
    if keep:
        print(f"state kept in {state_dir}", file=sys.stderr)
    else:
        shutil.rmtree(state_dir, ignore_errors=True)


# --- the test bed ----------------------------------------------------------------------------------


async def terminate(proc: trio.Process, *, grace: float = 30) -> None:
    """SIGTERM a child the bench started and wait up to `grace` s; SIGKILL it if it does not go.
    Shielded: benches call it on their way out, cancelled or not."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@dataclass(frozen=True, slots=True)
class BedTenant:
    """A tenant control plane registered as an imported, Running VirtualCluster, with a client.

    The one record of such a tenant for the benchmarks and the integration tests
    (`tests.integration.syncing`)."""

    cp: cluster.ControlPlane
    vc: dict[str, Any]
    id: TenantId
    client: ApiClient

    @property
    def name(self) -> str:
        return str(self.vc["metadata"]["name"])

    @property
    def key(self) -> str:
        return self.id.key

    @property
    def kubeconfig(self) -> Path:
        return self.cp.admin_kubeconfig

    def super_ns(self, ns: str) -> str:
        return naming.super_namespace(self.key, ns)


@dataclass(slots=True)
class Bed:
    args: argparse.Namespace
    state_dir: Path
    bins: build.Binaries
    info: dict[str, Any]
    nursery: trio.Nursery
    stack: contextlib.AsyncExitStack
    superc: ApiClient
    tenants: list[BedTenant] = field(default_factory=list)
    hosts: list[SyncerHost] = field(default_factory=list)
    stopped_hosts: list[SyncerHost] = field(default_factory=list)
    #: CPU seconds of the load generators that have exited: a snapshot of /proc cannot see them,
    #: so `load.create_pods` adds each one's own count here and `cpu.snapshot` reads it
    load_cpu_s: float = 0.0

    def host_logs(self) -> dict[str, dict[str, int]]:
        """Per syncer process: its warnings and retries, summarised (see `summarize_log`)."""
        return {h.log_path.name: h.log_summary for h in (*self.stopped_hosts, *self.hosts)}

    @property
    def kubeconfig(self) -> Path:
        return Path(self.info["super"]["admin_kubeconfig"])

    @property
    def super_url(self) -> str:
        return str(self.info["super"]["url"])

    @property
    def kwok_log(self) -> Path:
        return Path(self.info["kwok"]["log_file"])

    @property
    def kubectl(self) -> Path:
        return self.bins.path("kubectl")

    async def kubectl_run(self, kubeconfig: Path, *argv: str, timeout: float = 120) -> str:
        with trio.fail_after(timeout):
            proc = await trio.run_process([str(self.kubectl), f"--kubeconfig={kubeconfig}", *argv],
                                          capture_stdout=True, capture_stderr=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"kubectl {' '.join(argv)}: {proc.stderr.decode()[-2000:]}")
        return proc.stdout.decode()

    async def client(self, kubeconfig: Path, **kw: Any) -> ApiClient:
        """A client closed with the bed; no client-side rate limit unless `qps` is given."""
        kw.setdefault("qps", math.inf)
        kw.setdefault("max_connections", 200)
        kw.setdefault("timeout", 120.0)
        creds = await kcreds.load_kubeconfig(kubeconfig)
        return await self.stack.enter_async_context(open_client(creds, user_agent="vc-bench", **kw))

    # -- tenants --
    async def add_tenant(self, name: str) -> BedTenant:
        started = time.monotonic()
        cp = await cluster.start_control_plane(
            self.nursery, self.bins, name=name, etcd_url=str(self.info["etcd_url"]),
            state_dir=self.state_dir / "tenants" / name, etcd_prefix=f"/tenants/{name}/registry",
            controller_manager=True, virtual_nodes=True,
        )
        await cluster.wait_default_service_account(cp.url, cp.pki_dir, timeout=180)
        client = await self.client(cp.admin_kubeconfig)
        vc = await self.register_vc(cp, name)
        t = BedTenant(cp=cp, vc=vc, id=TenantId.from_vc(vc), client=client)
        self.tenants.append(t)
        report.progress("tenant %s up in %.1f s (key %s)", name, time.monotonic() - started, t.key)
        return t

    async def add_tenants(self, names: Sequence[str], *, concurrency: int = 2) -> list[BedTenant]:
        """Start tenant control planes, `concurrency` at a time (each start is CPU-heavy)."""
        out: dict[str, BedTenant] = {}
        limit = trio.CapacityLimiter(concurrency)

        async def one(n: str) -> None:
            async with limit:
                out[n] = await self.add_tenant(n)

        async with trio.open_nursery() as n:
            for name in names:
                n.start_soon(one, name)
        return [out[n] for n in names]

    async def register_vc(self, cp: cluster.ControlPlane, name: str) -> dict[str, Any]:
        """An imported VirtualCluster in phase Running that names `cp` through its annotation."""
        import base64

        ns = f"vc-{name}"
        await self.superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
        kubeconfig = base64.b64encode(cp.admin_kubeconfig.read_bytes()).decode()
        await self.superc.create(resources.VIRTUALCLUSTERS, {
            "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
            "metadata": {"name": name, "namespace": ns,
                         "annotations": {naming.ANNOTATION_ADMIN_KUBECONFIG: kubeconfig}},
            "spec": {"clusterVersionName": "imported", "clusterDomain": "cluster.local"},
        }, namespace=ns)
        return await self.superc.patch(resources.VIRTUALCLUSTERS, name, {"status": {"phase": "Running"}},
                                       namespace=ns, subresource="status")

    async def tenant_namespace(self, t: BedTenant, ns: str) -> None:
        """Create `ns` in the tenant and wait for what its KCM adds (Pods are refused before)."""
        await t.client.create(resources.NAMESPACES, {"metadata": {"name": ns}})
        await verification.wait_exists(t.client, resources.SERVICEACCOUNTS, "default", ns, timeout=120)
        await verification.wait_exists(t.client, resources.CONFIGMAPS, "kube-root-ca.crt", ns, timeout=120)

    async def tenant_namespaces(self, tenants: Sequence[BedTenant], ns: str) -> None:
        async with trio.open_nursery() as n:
            for t in tenants:
                n.start_soon(self.tenant_namespace, t, ns)

    async def super_namespace(self, ns: str) -> None:
        await self.superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
        await verification.wait_exists(self.superc, resources.SERVICEACCOUNTS, "default", ns, timeout=120)

    async def warm_up(self, tenants: Sequence[BedTenant], ns: str, *, timeout: float = 300) -> None:
        """One Running pod per tenant in `ns`: its super namespace, SA and a vnode exist before
        measuring. The pods (named `warm-up`) stay; the final comparison expects them."""
        await self.warm_up_named(tenants, ns, "warm-up", timeout=timeout)

    async def warm_up_named(self, tenants: Sequence[BedTenant], ns: str, name: str, *, timeout: float = 300) -> None:
        async def one(t: BedTenant) -> None:
            await load.create_one(t.client, ns, load.pod_body(name))
            await verification.wait_exists(t.client, PODS, name, ns, timeout=timeout,
                              where=lambda p: (p.get("status") or {}).get("phase") == "Running")

        async with trio.open_nursery() as n:
            for t in tenants:
                n.start_soon(one, t)

    async def prepare(
        self, host: SyncerHost, tenants: Sequence[BedTenant], ns: str, *, direct_ns: str | None = None
    ) -> None:
        """Namespaces in every tenant (and `direct_ns` in super), all tenants registered with
        the syncer, one warm-up pod each, then a quiet syncer: the common start of a measurement."""
        async with trio.open_nursery() as n:
            for t in tenants:
                n.start_soon(self.tenant_namespace, t, ns)
            if direct_ns is not None:
                n.start_soon(self.super_namespace, direct_ns)
        q = await host.call("wait_quiet", tenants=len(tenants), stable=0.5, timeout=300)
        if not q["ok"]:
            raise report.Misbehaved(f"the syncer did not register all tenants: {q}")
        await self.warm_up(tenants, ns)
        await host.call("wait_quiet", tenants=len(tenants), stable=1.0, timeout=300)

    # -- the syncer --
    async def start_host(self, **kw: Any) -> SyncerHost:
        kw.setdefault("settings", self.args.syncer_settings)
        host = await SyncerHost.start(self, **kw)
        self.hosts.append(host)
        return host


@contextlib.asynccontextmanager
async def open_bed(args: argparse.Namespace) -> AsyncIterator[Bed]:
    state_dir = (args.state_dir or Path(tempfile.mkdtemp(prefix="vc-bench-"))).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        bins = await trio.to_thread.run_sync(build.ensure_binaries)
        async with contextlib.AsyncExitStack() as stack:
            async with trio.open_nursery() as nursery:
                started = time.monotonic()
                info = await nursery.start(functools.partial(
                    localcluster.run, state_dir=state_dir, nodes=args.nodes, bins=bins))
                creds = await kcreds.load_kubeconfig(Path(info["super"]["admin_kubeconfig"]))
                superc = await stack.enter_async_context(open_client(
                    creds, qps=math.inf, burst=1, max_connections=200, timeout=120.0, user_agent="vc-bench"))
                bed = Bed(args=args, state_dir=state_dir, bins=bins, info=info, nursery=nursery,
                          stack=stack, superc=superc)
                await bed.kubectl_run(bed.kubeconfig, "apply", "--server-side", "-f", str(CRDS))
                await bed.kubectl_run(bed.kubeconfig, "wait", "--for=condition=Established",
                                      "crd/virtualclusters.tenancy.x-k8s.io", "--timeout=60s")
                report.progress("super cluster up in %.1f s (%s, state %s)", time.monotonic() - started,
                         bed.super_url, state_dir)
                try:
                    yield bed
                finally:
                    with trio.CancelScope(shield=True):
                        for host in bed.hosts:
                            await host.stop()
                    nursery.cancel_scope.cancel()
    finally:
        _cleanup_state(state_dir, keep=args.keep_state)


# --- the syncer host -----------------------------------------------------------------------------

class SyncerHost:
    """`bench.host` as a child process; `call` sends one command and returns its answer."""

    def __init__(self, proc: trio.Process, logf: Any, log_path: Path, bed: Bed) -> None:
        self.bed = bed
        self.proc = proc
        self._logf = logf
        self.log_path = log_path
        self._buf = b""
        self.ready: dict[str, Any] = {}
        self.spawned = time.time()
        self.log_summary: dict[str, int] = {}

    @classmethod
    async def start(cls, bed: Bed, *, proxy: bool = False, tracemalloc: bool = False, trace: bool = True,
                    settings: dict[str, Any] | None = None, name: str = "host",
                    timeout: float = 180) -> SyncerHost:
        log_path = bed.state_dir / f"{name}.log"
        logf = open(log_path, "ab")  # closed in stop()
        argv = [sys.executable, "-m", "bench.host", "--super-kubeconfig", str(bed.kubeconfig),
                "--settings", json.dumps(settings or {}), "--data-dir", str(bed.state_dir / "proxy")]
        if proxy:
            argv.append("--proxy")
        if tracemalloc:
            argv.append("--tracemalloc")
        if not trace:
            argv.append("--no-trace")
        spawned = time.time()
        proc = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=logf, cwd=report.ROOT)
        host = cls(proc, logf, log_path, bed)
        host.spawned = spawned
        try:
            host.ready = await host._read(timeout)
        except BaseException:
            with trio.CancelScope(shield=True):
                await host.stop()
            raise
        if host.ready.get("event") != "ready":
            raise RuntimeError(f"syncer host did not start: {host.ready}; see {log_path}")
        report.progress("syncer host pid %s ready in %.2f s", proc.pid, time.time() - spawned)
        return host

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with trio.fail_after(timeout):
            while b"\n" not in self._buf:
                chunk = await self.proc.stdout.receive_some(1 << 20)
                if not chunk:
                    tail = process.log_tail(self.log_path, 30)
                    raise RuntimeError(f"syncer host exited ({self.proc.returncode}):\n{tail}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    async def call(self, cmd: str, *, timeout: float = 600, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all((json.dumps({"cmd": cmd, **kw}) + "\n").encode())
        return await self._read(timeout + 30)

    async def stop(self, *, grace: float = 30) -> None:
        """Ask it to quit; SIGTERM, then SIGKILL, if it does not."""
        if self.proc.returncode is None:
            with trio.move_on_after(grace):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, RuntimeError,
                                         json.JSONDecodeError):
                    await self.call("quit", timeout=grace)
                await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.terminate()
            with trio.move_on_after(10):
                await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for s in (self.proc.stdin, self.proc.stdout):
            if s is not None:
                await trio.aclose_forcefully(s)
        self._logf.close()
        self.log_summary = summarize_log(self.log_path)


_NOISE = re.compile(r"vc-[a-z0-9]+-[0-9a-f]{6}-[a-z0-9-]+|\b[0-9a-f]{8,}\b|\d+(\.\d+)?")


def summarize_log(path: Path) -> dict[str, int]:
    """Counts of the syncer's non-INFO lines and retries, with names and numbers blanked."""
    out: collections.Counter[str] = collections.Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        parts = line.split(" ", 4)
        if len(parts) < 5:
            continue
        level, logger, msg = parts[2], parts[3], parts[4]
        if level == "INFO" and "retrying" not in msg:
            continue
        out[f"{level} {logger} {_NOISE.sub('#', msg)[:140]}"] += 1
    return dict(out.most_common(25))

