"""What every benchmark shares: the test bed, the syncer host, watch clocks, load, checks, output.

* `open_bed(args)` starts a private super cluster in-process (`localcluster.run`: etcd,
  kube-apiserver, KCM, scheduler, kwok nodes, in a fresh state directory), applies the CRDs
  and yields a `Bed`. `Bed.add_tenants` starts tenant control planes
  (`cluster.start_control_plane(..., controller_manager=True, virtual_nodes=True)` on the
  shared etcd, each under its own prefix) and registers each as an imported, Running
  VirtualCluster whose admin kubeconfig is in the `tenancy.x-k8s.io/admin-kubeconfig`
  annotation, as the integration tests do. On exit everything is stopped, leftovers of the
  state directory are killed, and the directory is removed (`--keep-state` keeps it).
* `SyncerHost` runs `bench.host` (Syncer + supervisor [+ proxy]) as a child process and
  talks to it over a JSON-lines pipe.
* `PodClock` timestamps pod events from Informer handlers (`trio.current_time()`), on the
  super side (keyed by the tenancy annotations) and on tenant sides; `wait` is event-driven.
* `create_pods` issues creates at a client QPS with a number of concurrent callers, from a
  `bench.load` child process (a busy trio loop would delay this process's watch clocks).
* `verify_synced` / `verify_direct` do the final full comparison: every expected pod exists
  exactly once on both sides with matching UIDs (and Running, when asked); anything lost,
  duplicated or orphaned is a problem, and problems make the benchmark exit 1.
* `finish` prints the table and one JSON line, and appends that line to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import functools
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from appliance.controlplane import build, cluster, localcluster, process
from appliance.kube import creds as kcreds
from appliance.kube import errors, resources
from appliance.kube import informer as kinformer
from appliance.kube.client import ApiClient, open_client
from appliance.syncer.tenant import TenantId
from appliance.util import naming

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.jsonl"
CRDS = ROOT / "appliance" / "manager" / "crds"
PODS = resources.PODS

#: (cluster key, tenant namespace, name) for synced pods; ("", super namespace, name) for direct ones
Key = tuple[str, str, str]


class Misbehaved(Exception):
    """The system under test lost, duplicated or never delivered objects: exit status 1."""


# --- arguments -----------------------------------------------------------------------------------

def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nodes", type=int, default=3, help="kwok nodes in the super cluster")
    p.add_argument("--state-dir", type=Path, default=None, help="default: a fresh temporary directory")
    p.add_argument("--keep-state", action="store_true", help="keep the state directory (logs) afterwards")
    p.add_argument("--no-record", action="store_true", help="do not append to bench/results.jsonl")
    p.add_argument("--syncer-settings", type=json.loads, default={}, metavar="JSON",
                   help='SyncerSettings overrides for the syncer process, e.g. \'{"pod_workers": 50}\' '
                        "(default: the appliance's configuration defaults)")
    p.add_argument("--verbose", "-v", action="store_true")
    return p


# --- statistics and output ---------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}"
    return str(v)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [list(header)] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null, floats rounded to microseconds."""
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def machine() -> dict[str, Any]:
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cores": len(os.sched_getaffinity(0)), "cpu": model, "mem_bytes": mem,
        "loadavg": list(os.getloadavg()), "python": platform.python_version(),
        "kubernetes": build.KUBERNETES_VERSION, "git": rev,
    }


def finish(name: str, *, args: argparse.Namespace, sizes: dict[str, Any], headline: dict[str, Any],
           details: dict[str, Any], text: str, problems: list[str], started: float) -> int:
    """Print the table and the JSON line, append it to results.jsonl; return the exit status."""
    record = _clean({
        "bench": name, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", f"bench.{name}", *sys.argv[1:]]),
        "sizes": {**sizes, **({"syncer_settings": args.syncer_settings} if args.syncer_settings else {})}, **headline, "ok": not problems, "problems": problems[:50],
        "wall_s": time.monotonic() - started, "machine": machine(), "details": details,
    })
    print(f"\n== bench.{name} ({', '.join(f'{k}={v}' for k, v in sizes.items())}) ==")
    print(text)
    for host, lines in (details.get("host_logs") or {}).items():
        if lines:
            print(f"{host}: {sum(lines.values())} warnings/retries; most frequent:")
            for msg, count in list(lines.items())[:6]:
                print(f"  {count:6d}  {msg}")
    if problems:
        print(f"\nMISBEHAVIOUR ({len(problems)} problems):")
        for p in problems[:20]:
            print(f"  - {p}")
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    if not args.no_record:
        with open(RESULTS, "a") as f:
            f.write(line + "\n")
    return 1 if problems else 0


def main(name: str, args: argparse.Namespace, fn: Callable[[argparse.Namespace], Any]) -> int:
    """Run one benchmark's trio main; 1 if the system misbehaved, 2 if the bench itself failed."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(trio.run(fn, args))
    except Misbehaved as exc:
        print(f"bench.{name}: the system misbehaved: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException:  # report any failure of the bench itself, then exit 2
        traceback.print_exc()
        print(f"bench.{name}: the benchmark failed (not a measurement)", file=sys.stderr)
        return 2


def progress(msg: str, *a: Any) -> None:
    log.info(msg, *a)


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

@dataclass(slots=True)
class Tenant:
    name: str
    cp: cluster.ControlPlane
    vc: dict[str, Any]
    id: TenantId
    client: ApiClient

    @property
    def key(self) -> str:
        return self.id.key

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
    tenants: list[Tenant] = field(default_factory=list)
    hosts: list[SyncerHost] = field(default_factory=list)
    stopped_hosts: list[SyncerHost] = field(default_factory=list)

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
    async def add_tenant(self, name: str) -> Tenant:
        started = time.monotonic()
        cp = await cluster.start_control_plane(
            self.nursery, self.bins, name=name, etcd_url=str(self.info["etcd_url"]),
            state_dir=self.state_dir / "tenants" / name, etcd_prefix=f"/tenants/{name}/registry",
            controller_manager=True, virtual_nodes=True,
        )
        await cluster.wait_default_service_account(cp.url, cp.pki_dir, timeout=180)
        client = await self.client(cp.admin_kubeconfig)
        vc = await self.register_vc(cp, name)
        t = Tenant(name=name, cp=cp, vc=vc, id=TenantId.from_vc(vc), client=client)
        self.tenants.append(t)
        progress("tenant %s up in %.1f s (key %s)", name, time.monotonic() - started, t.key)
        return t

    async def add_tenants(self, names: Sequence[str], *, concurrency: int = 2) -> list[Tenant]:
        """Start tenant control planes, `concurrency` at a time (each start is CPU-heavy)."""
        out: dict[str, Tenant] = {}
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

    async def tenant_namespace(self, t: Tenant, ns: str) -> None:
        """Create `ns` in the tenant and wait for what its KCM adds (Pods are refused before)."""
        await t.client.create(resources.NAMESPACES, {"metadata": {"name": ns}})
        await wait_exists(t.client, resources.SERVICEACCOUNTS, "default", ns, timeout=120)
        await wait_exists(t.client, resources.CONFIGMAPS, "kube-root-ca.crt", ns, timeout=120)

    async def tenant_namespaces(self, tenants: Sequence[Tenant], ns: str) -> None:
        async with trio.open_nursery() as n:
            for t in tenants:
                n.start_soon(self.tenant_namespace, t, ns)

    async def super_namespace(self, ns: str) -> None:
        await self.superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
        await wait_exists(self.superc, resources.SERVICEACCOUNTS, "default", ns, timeout=120)

    async def warm_up(self, tenants: Sequence[Tenant], ns: str, *, timeout: float = 300) -> None:
        """One Running pod per tenant in `ns`: its super namespace, SA and a vnode exist before
        measuring. The pods (named `warm-up`) stay; the final comparison expects them."""
        await self.warm_up_named(tenants, ns, "warm-up", timeout=timeout)

    async def warm_up_named(self, tenants: Sequence[Tenant], ns: str, name: str, *, timeout: float = 300) -> None:
        async def one(t: Tenant) -> None:
            await create_one(t.client, ns, pod_body(name))
            await wait_exists(t.client, PODS, name, ns, timeout=timeout,
                              where=lambda p: (p.get("status") or {}).get("phase") == "Running")

        async with trio.open_nursery() as n:
            for t in tenants:
                n.start_soon(one, t)

    async def prepare(
        self, host: SyncerHost, tenants: Sequence[Tenant], ns: str, *, direct_ns: str | None = None
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
            raise Misbehaved(f"the syncer did not register all tenants: {q}")
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
                progress("super cluster up in %.1f s (%s, state %s)", time.monotonic() - started,
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
                                                stderr=logf, cwd=ROOT)
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
        progress("syncer host pid %s ready in %.2f s", proc.pid, time.time() - spawned)
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


# --- watch clocks ------------------------------------------------------------------------------------

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


async def start_clocks(nursery: trio.Nursery, bed: Bed, tenants: Sequence[Tenant]) -> tuple[PodClock, PodClock]:
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


# --- load ------------------------------------------------------------------------------------------

def pod_body(name: str, *, labels: dict[str, str] | None = None, gated: bool = False,
             token: bool = False) -> dict[str, Any]:
    """A small Pod, as a Deployment would make it minus the service-account token (see README)."""
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "nginx",
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
        "terminationGracePeriodSeconds": 0,
    }
    if not token:
        spec["automountServiceAccountToken"] = False
    if gated:
        spec["schedulingGates"] = [{"name": "bench.example.com/hold"}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {"app": "bench"}}, "spec": spec}


_RETRYABLE = (errors.TransportError, errors.ServerError, errors.TooManyRequests, trio.TooSlowError)


async def create_one(client: ApiClient, ns: str, body: dict[str, Any], *, attempts: int = 8) -> None:
    """Create, retrying overload answers (an AlreadyExists after a retry means it worked)."""
    for attempt in range(attempts):
        try:
            await client.create(PODS, body, namespace=ns)
            return
        except errors.AlreadyExists:
            if attempt == 0:
                raise
            return
        except _RETRYABLE as exc:
            if attempt == attempts - 1:
                raise
            log.info("create %s/%s: %s; retrying", ns, body["metadata"]["name"], exc)
            await trio.sleep(min(5.0, 0.2 * 2 ** attempt))


@dataclass(frozen=True, slots=True)
class Job:
    """One pod to create: where (a kubeconfig), namespace, name; `key` is how clocks know it."""

    kubeconfig: Path
    ns: str
    name: str
    key: Key
    gated: bool = False


_LOAD_CPU = [0.0]  # CPU seconds of finished load generators (cpu_snapshot cannot see exited processes)


async def create_pods(bed: Bed, jobs: Sequence[Job], *, qps: float, concurrency: int,
                      created: dict[Key, float] | None = None) -> tuple[float, float]:
    """Create every job's pod from a `bench.load` child process: at most `qps` create calls
    started per second (0 = no limit), by `concurrency` callers. Records each pod's
    create-returned time (mapped onto this process's trio clock) in `created` as it happens.
    Returns (first call started, last call returned) on the trio clock."""
    created = created if created is not None else {}
    paths = sorted({str(j.kubeconfig) for j in jobs})
    index = {p: i for i, p in enumerate(paths)}
    spec = {"kubeconfigs": paths, "qps": qps, "concurrency": concurrency,
            "jobs": [[index[str(j.kubeconfig)], j.ns, j.name, j.gated] for j in jobs]}
    offset = trio.current_time() - time.monotonic()
    log_path = bed.state_dir / "load.log"
    with open(log_path, "ab") as logf:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.load", "--state-dir", str(bed.state_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        await proc.stdin.send_all(json.dumps(spec).encode() + b"\n")
        buf = b""
        result: dict[str, float] | None = None
        while result is None:
            chunk = await proc.stdout.receive_some(1 << 16)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                obj = json.loads(line)
                if isinstance(obj, list):
                    created[jobs[obj[0]].key] = obj[1] + offset
                else:
                    result = obj
        rc = await proc.wait()
        if result is None or rc != 0:
            raise RuntimeError(f"load generator failed ({rc}):\n{process.log_tail(log_path, 30)}")
        _LOAD_CPU[0] += float(result.get("cpu", 0.0))
        return result["t0"] + offset, result["t1"] + offset
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await trio.aclose_forcefully(proc.stdin)
            await trio.aclose_forcefully(proc.stdout)


# --- waiting and checking -------------------------------------------------------------------------

async def get_or_none(client: ApiClient, res: resources.Resource, name: str, ns: str | None) -> dict[str, Any] | None:
    try:
        return await client.get(res, name, namespace=ns)
    except errors.NotFound:
        return None


async def wait_exists(client: ApiClient, res: resources.Resource, name: str, ns: str | None, *,
                      timeout: float, where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Set-up helper: poll (another process's state) until the object exists (and `where` holds)."""
    with trio.move_on_after(timeout):
        while True:
            obj = await get_or_none(client, res, name, ns)
            if obj is not None and (where is None or where(obj)):
                return obj
            await trio.sleep(0.2)
    raise Misbehaved(f"{res} {ns}/{name} not there after {timeout:.0f} s")


async def wait_gone(client: ApiClient, res: resources.Resource, name: str, ns: str | None, *, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while await get_or_none(client, res, name, ns) is not None:
            await trio.sleep(0.5)
        return
    raise Misbehaved(f"{res} {ns}/{name} still there after {timeout:.0f} s")


def _running(pod: dict[str, Any]) -> bool:
    return phase(pod) == "Running" and bool((pod.get("spec") or {}).get("nodeName"))


async def verify_synced(bed: Bed, tenants: Sequence[Tenant], expected: dict[str, dict[str, set[str]]], *,
                        running: bool) -> list[str]:
    """Full comparison for synced pods. `expected[cluster key][tenant ns]` = pod names.

    Every expected pod must exist once in the tenant and once in the super cluster (in its super
    namespace, carrying the tenant pod's UID), and no other super pod may name the tenant; with
    `running`, both copies are Running on the same node.
    """
    problems: list[str] = []
    for t in tenants:
        want = expected.get(t.key, {})
        supers = (await bed.superc.list(PODS, label_selector=f"{naming.LABEL_CLUSTER}={t.key}")).items
        seen: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
        for p in supers:
            ann = p["metadata"].get("annotations") or {}
            seen[(ann.get(naming.ANNOTATION_NAMESPACE, "?"), p["metadata"]["name"])].append(p)
        for ns, names in want.items():
            tpods = {p["metadata"]["name"]: p for p in (await t.client.list(PODS, namespace=ns)).items}
            for name in sorted(names):
                tp = tpods.get(name)
                copies = seen.get((ns, name), [])
                if tp is None:
                    problems.append(f"{t.name}: tenant pod {ns}/{name} lost")
                    continue
                if not copies:
                    problems.append(f"{t.name}: {ns}/{name} has no super pod")
                    continue
                if len(copies) > 1:
                    problems.append(f"{t.name}: {ns}/{name} has {len(copies)} super pods")
                sp = copies[0]
                if sp["metadata"]["namespace"] != t.super_ns(ns):
                    problems.append(f"{t.name}: {ns}/{name} copied to {sp['metadata']['namespace']}")
                if (sp["metadata"].get("annotations") or {}).get(naming.ANNOTATION_UID) != tp["metadata"]["uid"]:
                    problems.append(f"{t.name}: {ns}/{name} super pod names another tenant UID")
                if running:
                    if not _running(sp):
                        problems.append(f"{t.name}: super pod of {ns}/{name} is {phase(sp) or 'without phase'}")
                    elif not _running(tp):
                        problems.append(f"{t.name}: tenant pod {ns}/{name} is {phase(tp) or 'without phase'}")
                    elif tp["spec"]["nodeName"] != sp["spec"]["nodeName"]:
                        problems.append(f"{t.name}: {ns}/{name} on {tp['spec']['nodeName']} in the tenant, "
                                        f"{sp['spec']['nodeName']} in super")
            extra = sorted(set(tpods) - names)
            if extra:
                problems.append(f"{t.name}: {len(extra)} unexpected tenant pods in {ns}: {extra[:5]}")
        wanted = {(ns, n) for ns, names in want.items() for n in names}
        orphans = sorted(k for k in seen if k not in wanted and k[0] in want)
        if orphans:
            problems.append(f"{t.name}: {len(orphans)} super pods without a tenant pod: {orphans[:5]}")
    return problems


async def verify_direct(bed: Bed, ns: str, names: set[str], *, running: bool) -> list[str]:
    pods = {p["metadata"]["name"]: p for p in (await bed.superc.list(PODS, namespace=ns)).items}
    problems = [f"direct pod {ns}/{n} lost" for n in sorted(names - set(pods))]
    extra = sorted(set(pods) - names)
    if extra:
        problems.append(f"{len(extra)} unexpected direct pods: {extra[:5]}")
    if running:
        problems += [f"direct pod {ns}/{n} is {phase(p)}" for n, p in pods.items() if n in names and not _running(p)]
    return problems


async def delete_namespace(client: ApiClient, ns: str, *, timeout: float = 600) -> float:
    """Delete a namespace and wait until it is gone; returns the seconds it took."""
    t0 = trio.current_time()
    with contextlib.suppress(errors.NotFound):
        await client.delete(resources.NAMESPACES, ns)
    await wait_gone(client, resources.NAMESPACES, ns, None, timeout=timeout)
    return trio.current_time() - t0


def latencies(start: dict[Key, float], end: dict[Key, float], keys: Iterable[Key]) -> list[float]:
    return [end[k] - start[k] for k in keys if k in start and k in end]


async def down_stages(host: SyncerHost, keys: Sequence[Key], created: dict[Key, float],
                      sup_added: dict[Key, float]) -> dict[str, dict[str, float]]:
    """Split each pod's downward latency with the host's wall-clock trace (same machine clock):

      to_syncer  create returned here → the syncer's tenant informer delivered the event
                 (negative when the event won the race against our create response)
      queue      event → first reconcile started (fair queue wait, includes busy workers)
      reconcile  first reconcile started → finished (the super create itself, plus retries)
      to_watch   reconcile finished → the super pod's ADDED event reached this process
    """
    offset = time.time() - trio.current_time()
    tr = await host.call("trace", keys=[list(k) for k in keys])
    stages: dict[str, list[float]] = {"to_syncer": [], "queue": [], "reconcile": [], "to_watch": []}
    for i, k in enumerate(keys):
        ev, st, en = tr["event"][i], tr["start"][i], tr["end"][i]
        if ev is None or st is None or en is None or k not in created or k not in sup_added:
            continue
        stages["to_syncer"].append(ev - (created[k] + offset))
        stages["queue"].append(st - ev)
        stages["reconcile"].append(en - st)
        stages["to_watch"].append(sup_added[k] + offset - en)
    return {name: summary(v) for name, v in stages.items()}


async def up_stages(host: SyncerHost, keys: Sequence[Key], sup_running: dict[Key, float],
                    ten_running: dict[Key, float]) -> dict[str, dict[str, float]]:
    """Split each pod's upward latency (super Running seen here → tenant Running seen here):

      to_syncer  → the syncer's super informer delivered the Running super pod
      queue      → the first back-population call after that started (upward fair queue)
      write      → it finished (tenant binding, virtual node, status patch)
      to_watch   → the tenant pod's Running event reached this process
    """
    offset = time.time() - trio.current_time()
    tr = await host.call("trace", keys=[list(k) for k in keys])
    stages: dict[str, list[float]] = {"to_syncer": [], "queue": [], "write": [], "to_watch": []}
    for i, k in enumerate(keys):
        ev, st, en = tr["up_event"][i], tr["up_start"][i], tr["up_end"][i]
        if ev is None or st is None or en is None or k not in sup_running or k not in ten_running:
            continue
        stages["to_syncer"].append(ev - (sup_running[k] + offset))
        stages["queue"].append(st - ev)
        stages["write"].append(en - st)
        stages["to_watch"].append(ten_running[k] + offset - en)
    return {name: summary(v) for name, v in stages.items()}


def stages_text(label: str, stages: dict[str, dict[str, float]]) -> str:
    return f"{label} stages p50/p99 (s): " + ", ".join(
        f"{name} {s['p50']:.3f}/{s['p99']:.3f}" for name, s in stages.items())


# --- CPU accounting ------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _component(cmd: list[str]) -> str:
    joined = " ".join(cmd)
    if any("bench.host" in c for c in cmd):
        return "syncer"
    if any("bench.load" in c for c in cmd):
        return "load generator"
    if "appliance" in cmd and "run" in cmd:
        return "appliance replicas"
    name = Path(cmd[0]).name if cmd else "?"
    if name in ("kube-apiserver", "kube-controller-manager"):
        short = "apiserver" if name == "kube-apiserver" else "kcm"
        return f"tenant {short}s" if "/tenants/" in joined else f"super {short}"
    if name == "kube-scheduler":
        return "super scheduler"
    return name


def cpu_snapshot(bed: Bed) -> dict[str, float]:
    """CPU seconds (user + system) so far, per component of the bed: super apiserver, etcd,
    scheduler, KCM, kwok, tenant apiservers and KCMs (summed), the syncer process, this process."""
    out: dict[str, float] = collections.defaultdict(float)
    for pid in pids_mentioning(str(bed.state_dir)):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        cmd = process.cmdline(pid)
        fields = stat.rsplit(")", 1)[1].split()
        out[_component(cmd)] += (int(fields[11]) + int(fields[12])) / _TICK
    t = os.times()
    out["bench driver"] = t.user + t.system
    out["load generator"] += _LOAD_CPU[0]
    return dict(out)


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 2) for k in sorted(after, key=lambda k: -after[k])
            if after.get(k, 0.0) - before.get(k, 0.0) >= 0.05}


def cpu_text(label: str, delta: dict[str, float], wall: float) -> str:
    total = sum(delta.values())
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1]))
    return (f"{label} CPU-s over {wall:.1f} s wall ({total / wall:.2f} of {len(os.sched_getaffinity(0))} cores "
            f"used by the bed): {parts}")
