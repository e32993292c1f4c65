"""Side by side: the same pods direct, through our syncer, and through the original Go syncer.

One bed, one load generator, one set of watch clocks. The original is the upstream
VirtualCluster syncer at commit 4d19ac6, built from the source snapshot in
`../shared/original/` (`--original-source`) into `~/.cache/vc-appliance/original-4d19ac6/`,
never into the repository: the two listen addresses it hard-codes on every interface are
rewritten to loopback, `modern-go/reflect2` is bumped to v1.0.2 (v1.0.1 crashes on Go 1.26),
and it is built as the main module (`../shared/ORIGINAL.md`).

Rounds run in `--order` (default `direct,ours,original`; repeat names to interleave more
rounds). A syncer round uses its own fresh tenant set: all tenants are created up front as
imported VirtualClusters in phase Pending, the round's set is switched to Running, the
syncer (ours: `bench.host`; original: its binary) starts and picks it up, one warm-up pod
per tenant proves it syncs, then P pods are created round-robin over the set. After the
round the syncer stops, the set goes back to Pending and its super namespaces are deleted,
so the next syncer starts from the same super cluster. `--baseline-src DIR` adds the config
`base`: our syncer run from another source tree (e.g. `git archive HEAD`), for before/after.

Per round: pods Running/s (first create → last pod Running where its owner looks), its
ratio to direct, the syncer process's CPU ms per pod and peak RSS (VmHWM), upward latency
(super pod seen Running → tenant pod seen Running, p50/p99), ready p50/p99, and the full
comparison (every pod once on both sides, same tenant UID, Running on the same node).
`--profile DIR` runs our syncer under a SIGPROF stack sampler (`sampled_host`) and writes where
its CPU went, per round, into DIR. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import trio

from appliance.controlplane import build, process
from appliance.kube import resources
from appliance.util import naming
from bench import clocks, cpu, load, report, testbed, verification

NS = "bench"
DIRECT_NS = "bench-direct"
PODS = resources.PODS
ORIGINAL_COMMIT = "4d19ac6"
DEFAULT_SOURCE = report.ROOT.parent / "shared" / "original" / f"virtualcluster-{ORIGINAL_COMMIT}.tar.gz"
CONFIGS = ("direct", "ours", "original", "base")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.parser("sidebyside", __doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=1000, help="pods per round (P)")
    p.add_argument("--tenants", type=int, default=5, help="tenants per syncer round (T)")
    p.add_argument("--qps", type=float, default=200.0, help="client create calls per second (0 = unlimited)")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent create callers")
    p.add_argument("--order", default="direct,ours,original",
                   help=f"comma-separated rounds, each one of {', '.join(CONFIGS)}")
    p.add_argument("--original-source", type=Path, default=DEFAULT_SOURCE, help="the upstream source tarball")
    p.add_argument("--baseline-src", type=Path, default=None,
                   help="a source tree whose bench.host runs as config `base` (our syncer before a change)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds a round may take to converge")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="sample our syncer's stacks every 5 ms; write <round>.txt files into DIR")
    args = p.parse_args(argv)
    args.rounds = [r.strip() for r in args.order.split(",") if r.strip()]
    unknown = sorted(set(args.rounds) - set(CONFIGS))
    if unknown:
        p.error(f"unknown rounds {unknown}")
    if "base" in args.rounds and args.baseline_src is None:
        p.error("a `base` round needs --baseline-src")
    return args


# --- the original syncer ------------------------------------------------------------------------

def _go_env() -> dict[str, str]:
    return {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false"}


def _run(cmd: list[str], *, cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), capture_output=True, text=True, check=False)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")


def original_binary(source: Path) -> Path:
    """The original syncer built from `source` (cached by the tarball's and Go's versions). Blocking."""
    go = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True,
                        env=_go_env()).stdout.strip()
    stamp = hashlib.sha256(source.read_bytes() + go.encode()).hexdigest()[:16]
    root = build.cache_root() / f"original-{ORIGINAL_COMMIT}"
    binary = root / stamp / "syncer"  # named `syncer`: bench.cpu accounts it as the syncer
    if binary.exists():
        return binary
    src = root / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    with tarfile.open(source) as tar:
        tar.extractall(src, filter="data")
    module = src / "virtualcluster"
    server = module / "cmd" / "syncer" / "app" / "server.go"
    text = server.read_text()
    for hard_coded in ('":6060"', '":8080"'):  # pprof and healthz, on every interface upstream
        if hard_coded not in text:
            raise RuntimeError(f"{server}: {hard_coded} not found; is this commit {ORIGINAL_COMMIT}?")
        text = text.replace(hard_coded, '"127.0.0.1:0"')
    server.write_text(text)
    report.progress("building the original syncer (%s, %s) into %s", ORIGINAL_COMMIT, go, binary)
    started = time.monotonic()
    _run(["go", "get", "github.com/modern-go/reflect2@v1.0.2"], cwd=module)
    binary.parent.mkdir(parents=True, exist_ok=True)
    _run(["go", "build", "-o", str(binary) + ".tmp", "./cmd/syncer"], cwd=module)
    os.replace(str(binary) + ".tmp", binary)
    report.progress("original syncer built in %.0f s", time.monotonic() - started)
    return binary


class SyncerProcess:
    """A syncer child process of a round: ours (`bench.host`, from any source tree) or the original."""

    def __init__(self, proc: trio.Process, logf: Any, host: testbed.SyncerHost | None) -> None:
        self.proc = proc
        self._logf = logf
        self.host = host  # ours only: the JSON-lines control pipe

    @classmethod
    async def ours(cls, bed: testbed.Bed, name: str, src: Path) -> SyncerProcess:
        log_path = bed.state_dir / f"{name}.log"
        logf = open(log_path, "ab")  # closed in stop()
        argv = [sys.executable, "-m", "bench.host", "--super-kubeconfig", str(bed.kubeconfig),
                "--settings", json.dumps(bed.args.syncer_settings), "--data-dir", str(bed.state_dir / "proxy")]
        if bed.args.profile is not None:
            bed.args.profile.mkdir(parents=True, exist_ok=True)
            out = bed.args.profile.resolve() / f"{name}.txt"
            # this file as a script: it samples whichever bench.host the source tree `src` has
            argv[1:3] = [str(Path(__file__).resolve()), "--sample-host", str(out), "--"]
        env = {**os.environ, "PYTHONPATH": str(src)}
        proc = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=logf, cwd=src, env=env)
        host = testbed.SyncerHost(proc, logf, log_path, bed)
        try:
            host.ready = await host._read(180)
            if host.ready.get("event") != "ready":
                raise RuntimeError(f"syncer host did not start: {host.ready}; see {log_path}")
        except BaseException:
            with trio.CancelScope(shield=True):
                await host.stop()
            raise
        return cls(proc, logf, host)

    @classmethod
    async def original(cls, bed: testbed.Bed, binary: Path) -> SyncerProcess:
        logf = open(bed.state_dir / "original.log", "ab")  # closed in stop()
        argv = [str(binary), f"--super-master-kubeconfig={bed.kubeconfig}", "--leader-elect=false",
                "--address=127.0.0.1", "--port=0", "--feature-gates=RootCACertConfigMapSupport=true"]
        proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                                cwd=bed.state_dir)
        return cls(proc, logf, None)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process so far."""
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return 0.0

    def peak_rss(self) -> int:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()
        else:
            await testbed.terminate(self.proc)
            self._logf.close()


# --- rounds ---------------------------------------------------------------------------------------

async def set_phase(bed: testbed.Bed, tenants: Sequence[testbed.BedTenant], phase: str) -> None:
    for t in tenants:
        await bed.superc.patch(resources.VIRTUALCLUSTERS, t.name, {"status": {"phase": phase}},
                               namespace=t.vc["metadata"]["namespace"], subresource="status")


async def verify(bed: testbed.Bed, tenants: Sequence[testbed.BedTenant], names: dict[str, set[str]]) -> list[str]:
    """Every pod once in its tenant and once in its super namespace (found by annotation, as the
    original does not label super pods with the cluster), same tenant UID, Running on one node."""
    problems = []
    for t in tenants:
        want = names.get(t.key, set())
        tpods = {p["metadata"]["name"]: p for p in (await t.client.list(PODS, namespace=NS)).items}
        spods: dict[str, list[dict[str, Any]]] = {}
        for p in (await bed.superc.list(PODS, namespace=t.super_ns(NS))).items:
            if (p["metadata"].get("annotations") or {}).get(naming.ANNOTATION_CLUSTER) == t.key:
                spods.setdefault(p["metadata"]["name"], []).append(p)
        for name in sorted(want):
            tp, copies = tpods.get(name), spods.get(name, [])
            if tp is None or len(copies) != 1:
                problems.append(f"{t.name}: {NS}/{name}: tenant pod {'ok' if tp else 'lost'}, {len(copies)} super pods")
                continue
            sp = copies[0]
            if (sp["metadata"].get("annotations") or {}).get(naming.ANNOTATION_UID) != tp["metadata"]["uid"]:
                problems.append(f"{t.name}: {NS}/{name}: the super pod names another tenant UID")
            elif clocks.phase(sp) != "Running" or clocks.phase(tp) != "Running":
                problems.append(f"{t.name}: {NS}/{name}: {clocks.phase(tp)} in the tenant, {clocks.phase(sp)} in super")
            elif (tp.get("spec") or {}).get("nodeName") != (sp.get("spec") or {}).get("nodeName"):
                problems.append(f"{t.name}: {NS}/{name}: on another node in the tenant")
        extra = sorted((set(tpods) | set(spods)) - want)
        if extra:
            problems.append(f"{t.name}: {len(extra)} unexpected pods: {extra[:5]}")
    return problems


async def measure(bed: testbed.Bed, jobs: list[load.Job], args: argparse.Namespace, sup: clocks.PodClock,
                  running_clock: clocks.PodClock, syncer: SyncerProcess | None) -> dict[str, Any]:
    """Create the jobs' pods; wait for every one in super and Running where its owner looks."""
    keys = [j.key for j in jobs]
    created: dict[clocks.Key, float] = {}
    cpu0 = cpu.snapshot(bed)
    syncer_cpu0 = syncer.cpu_seconds() if syncer is not None else 0.0
    t0, t_created = await load.create_pods(bed, jobs, qps=args.qps, concurrency=args.concurrency, created=created)
    deadline = t0 + args.timeout
    lost = await sup.wait("added", keys, timeout=max(1.0, deadline - trio.current_time()))
    not_running = await running_clock.wait("running", keys, timeout=max(1.0, deadline - trio.current_time()))
    wall = trio.current_time() - t0
    used = cpu.delta(cpu0, cpu.snapshot(bed))
    got = [running_clock.running[k] for k in keys if k in running_clock.running]
    running_s = (max(got) - t0) if got else float("nan")
    res: dict[str, Any] = {
        "pods": len(keys), "create_s": t_created - t0, "running_s": running_s,
        "pods_per_s": len(keys) / running_s, "missing_super": len(lost), "not_running": len(not_running),
        "ready": report.summary(clocks.latencies(created, running_clock.running, keys)),
        "down": report.summary(clocks.latencies(created, sup.added, keys)),
        "cpu": used, "wall_s": wall,
    }
    if syncer is not None:
        res["up"] = report.summary(clocks.latencies(sup.running, running_clock.running, keys))
        res["syncer_cpu_s"] = syncer.cpu_seconds() - syncer_cpu0
        res["cpu_ms_per_pod"] = 1000 * res["syncer_cpu_s"] / len(keys)
        res["peak_rss_mib"] = syncer.peak_rss() / 2**20
        if syncer.host is not None:
            res["up_stages"] = await clocks.up_stages(syncer.host, keys, sup.running, running_clock.running)
            res["down_stages"] = await clocks.down_stages(syncer.host, keys, created, sup.added)
    return res


async def direct_round(bed: testbed.Bed, n: int, args: argparse.Namespace, sup: clocks.PodClock) -> dict[str, Any]:
    await bed.super_namespace(DIRECT_NS)
    names = [f"d{n}-{i:05d}" for i in range(args.pods)]
    jobs = [load.Job(bed.kubeconfig, DIRECT_NS, name, ("", DIRECT_NS, name)) for name in names]
    report.progress("round %d direct: %d pods", n, len(jobs))
    res = await measure(bed, jobs, args, sup, sup, None)
    res["problems"] = await verification.verify_direct(bed, DIRECT_NS, set(names), running=True)
    res["cleanup_s"] = await verification.delete_namespace(bed.superc, DIRECT_NS)
    return res


async def syncer_round(bed: testbed.Bed, n: int, config: str, tenants: list[testbed.BedTenant],
                       args: argparse.Namespace, sup: clocks.PodClock, ten: clocks.PodClock,
                       binary: Path | None) -> dict[str, Any]:
    await set_phase(bed, tenants, "Running")
    if config == "original":
        assert binary is not None
        syncer = await SyncerProcess.original(bed, binary)
    else:
        src = args.baseline_src if config == "base" else report.ROOT
        syncer = await SyncerProcess.ours(bed, f"{config}-{n}", src)
    try:
        await bed.warm_up(tenants, NS)  # the syncer has picked up every tenant
        if syncer.host is not None:
            await syncer.host.call("wait_quiet", tenants=len(tenants), stable=1.0, timeout=300)
        else:
            await trio.sleep(5.0)  # the original has no "quiet" signal; let its initial sync settle
        jobs = []
        names: dict[str, set[str]] = {t.key: {"warm-up"} for t in tenants}
        for i in range(args.pods):
            t = tenants[i % len(tenants)]
            name = f"s{n}-{i:05d}"
            names[t.key].add(name)
            jobs.append(load.Job(t.cp.admin_kubeconfig, NS, name, (t.key, NS, name)))
        report.progress("round %d %s: %d pods over %d tenants", n, config, len(jobs), len(tenants))
        res = await measure(bed, jobs, args, sup, ten, syncer)
        res["problems"] = await verify(bed, tenants, names)
        if res["problems"] and syncer.host is None:
            res["log_tail"] = process.log_tail(bed.state_dir / "original.log", 20)
    finally:
        with trio.CancelScope(shield=True):
            await syncer.stop()
    await set_phase(bed, tenants, "Pending")
    started = trio.current_time()
    async with trio.open_nursery() as n_:
        for t in tenants:
            n_.start_soon(verification.delete_namespace, bed.superc, t.super_ns(NS))
    res["cleanup_s"] = trio.current_time() - started
    return res


def _median(rounds: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in rounds:
        v: Any = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            values.append(float(v))
    return statistics.median(values) if values else float("nan")


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    binary = (await trio.to_thread.run_sync(original_binary, args.original_source)
              if "original" in args.rounds else None)
    problems: list[str] = []
    results: list[dict[str, Any]] = []
    async with testbed.open_bed(args) as bed:
        syncer_rounds = [i for i, c in enumerate(args.rounds) if c != "direct"]
        sets: dict[int, list[testbed.BedTenant]] = {}
        for i in syncer_rounds:
            sets[i] = await bed.add_tenants([f"r{i}t{j}" for j in range(args.tenants)])
            await set_phase(bed, sets[i], "Pending")
            await bed.tenant_namespaces(sets[i], NS)
        async with trio.open_nursery() as watchers:
            sup, ten = await clocks.start_clocks(watchers, bed, [t for s in sets.values() for t in s])
            for i, config in enumerate(args.rounds):
                if config == "direct":
                    res = await direct_round(bed, i, args, sup)
                else:
                    res = await syncer_round(bed, i, config, sets[i], args, sup, ten, binary)
                res["config"] = config
                problems += [f"round {i} {config}: {p}" for p in res["problems"]]
                results.append(res)
                report.progress("round %d %s: %s", i, config,
                                {k: v for k, v in res.items() if not isinstance(v, (dict, list))})
            watchers.cancel_scope.cancel()

    by = {c: [r for r in results if r["config"] == c] for c in CONFIGS}
    direct = _median(by["direct"], "pods_per_s")
    rows = []
    for c in CONFIGS:
        rs = by[c]
        if not rs:
            continue
        rate = _median(rs, "pods_per_s")
        rows.append([c, len(rs), rate, rate / direct if c != "direct" else float("nan"),
                     _median(rs, "cpu_ms_per_pod"), _median(rs, "up", "p50"), _median(rs, "up", "p99"),
                     _median(rs, "ready", "p50"), _median(rs, "ready", "p99"), _median(rs, "peak_rss_mib"),
                     "yes" if not any(r["problems"] for r in rs) else "NO"])
    text = report.table(["config", "rounds", "pods Running/s", "÷ direct", "syncer CPU ms/pod", "up p50 s",
                         "up p99 s", "ready p50 s", "ready p99 s", "peak RSS MiB", "correct"], rows)
    for r in results:
        if "up_stages" in r:
            text += "\n" + clocks.stages_text(f"{r['config']} up", r["up_stages"])
            text += "\n" + clocks.stages_text(f"{r['config']} down", r["down_stages"])
    for i, r in enumerate(results):
        text += "\n" + cpu.text(f"round {i} {r['config']}:", r["cpu"], r["wall_s"])
    headline = {
        "ours_pods_per_s": _median(by["ours"], "pods_per_s"),
        "original_pods_per_s": _median(by["original"], "pods_per_s"),
        "direct_pods_per_s": direct,
        "ours_cpu_ms_per_pod": _median(by["ours"], "cpu_ms_per_pod"),
        "original_cpu_ms_per_pod": _median(by["original"], "cpu_ms_per_pod"),
        "ours_up_p50_s": _median(by["ours"], "up", "p50"),
        "original_up_p50_s": _median(by["original"], "up", "p50"),
        "ours_up_p99_s": _median(by["ours"], "up", "p99"),
        "original_up_p99_s": _median(by["original"], "up", "p99"),
        "ours_peak_rss_mib": _median(by["ours"], "peak_rss_mib"),
        "original_peak_rss_mib": _median(by["original"], "peak_rss_mib"),
        "pods": args.pods, "tenants": args.tenants,
    }
    if by["base"]:
        headline.update(base_pods_per_s=_median(by["base"], "pods_per_s"),
                        base_cpu_ms_per_pod=_median(by["base"], "cpu_ms_per_pod"),
                        base_up_p50_s=_median(by["base"], "up", "p50"))
    return report.finish(
        "sidebyside", args=args, started=started, problems=problems,
        sizes={"pods": args.pods, "tenants": args.tenants, "qps": args.qps, "concurrency": args.concurrency,
               "nodes": args.nodes, "order": args.order},
        headline=headline, details={"rounds": results}, text=text)


# --- profiling our syncer (--profile) --------------------------------------------------------------

SAMPLE_INTERVAL = 0.005
SAMPLE_TOP = 60


def _where(frame: FrameType) -> str:
    code = frame.f_code
    parts = Path(code.co_filename).parts
    short = "/".join(parts[-2:]) if "site-packages" not in parts else "/".join(
        parts[parts.index("site-packages") + 1:])
    return f"{short}:{code.co_name}"


def sampled_host(out: str, argv: list[str]) -> int:
    """Run `bench.host` with `argv` while SIGPROF samples its stack every SAMPLE_INTERVAL s of
    CPU time (user + system, so idle waits are never sampled); write the functions by
    inclusive and self samples and the most frequent stacks to `out`. The handler runs in the
    main thread between bytecodes, so C calls are charged to their Python caller. Costs well
    under 1 % of a core: for finding where CPU goes, never for the timings reported."""
    import signal

    from bench import host

    stacks: collections.Counter[tuple[str, ...]] = collections.Counter()

    def sample(signum: int, frame: FrameType | None) -> None:
        names = []
        while frame is not None:
            names.append(_where(frame))
            frame = frame.f_back
        stacks[tuple(reversed(names))] += 1

    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, SAMPLE_INTERVAL, SAMPLE_INTERVAL)
    started = time.monotonic()
    try:
        return host.main(argv)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        _write(Path(out), stacks, time.monotonic() - started)


def _write(path: Path, stacks: collections.Counter[tuple[str, ...]], wall: float) -> None:
    total = sum(stacks.values()) or 1
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for stack, n in stacks.items():
        for name in set(stack):
            inclusive[name] += n
        if stack:
            own[stack[-1]] += n
    lines = [f"{total} samples over {wall:.1f} s wall (one per {SAMPLE_INTERVAL * 1000:.0f} ms of CPU time)", "",
             "inclusive %  self %  function"]
    for name, n in inclusive.most_common(SAMPLE_TOP):
        lines.append(f"{100 * n / total:10.1f}  {100 * own[name] / total:6.1f}  {name}")
    lines += ["", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {name}" for name, n in own.most_common(SAMPLE_TOP)]
    lines += ["", "most frequent stacks (innermost 8 frames)"]
    tails: collections.Counter[tuple[str, ...]] = collections.Counter()
    for stack, n in stacks.items():
        tails[stack[-8:]] += n
    for stack, n in tails.most_common(25):
        lines.append(f"{100 * n / total:6.1f}  " + " > ".join(stack))
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--sample-host"]:  # the --profile child: <out> -- <bench.host arguments>
        return sampled_host(argv[1], argv[3:])
    args = parse(argv)
    return report.main("sidebyside", args, run)


if __name__ == "__main__":
    raise SystemExit(main())
