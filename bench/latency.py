"""Latency: per-pod downward and upward sync latency at a steady rate and during a burst.

  down   tenant create returned → the super pod's ADDED event (super watch)
  up     super pod seen Running (super watch) → tenant pod seen Running (tenant watch)
  ready  tenant create returned → tenant pod seen Running (what a user waits for)

Every timestamp is taken in an Informer handler with `trio.current_time()` in this process;
the syncer runs in its own process. Steady phase: `--rate` pods/s round-robin over the
tenants for `--duration` s. Burst phase: `--burst` pods as fast as `--concurrency` callers
go, then the same burst created directly in the super cluster, whose create → Running
latency is the reference for `burst_ready_ratio` (synced ready p99 ÷ direct ready p99).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import trio

from bench import clocks, cpu, load, report, testbed, verification

NS = "bench"
DIRECT_NS = "bench-direct"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.parser("latency", __doc__.splitlines()[0])
    p.add_argument("--tenants", type=int, default=5)
    p.add_argument("--rate", type=float, default=20.0, help="steady creates per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of steady load")
    p.add_argument("--burst", type=int, default=500, help="pods in the burst")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent callers during the burst")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a phase may take to converge")
    return p.parse_args(argv)


async def phase(name: str, jobs: list[load.Job], *, qps: float, concurrency: int, sup: clocks.PodClock,
                ten: clocks.PodClock | None, timeout: float, host: testbed.SyncerHost) -> dict[str, Any]:
    keys = [j.key for j in jobs]
    created: dict[clocks.Key, float] = {}
    report.progress("%s: %d pods", name, len(keys))
    cpu0 = cpu.snapshot(host.bed)
    await host.call("stats")  # resets the syncer's event-loop lag record
    t0, t1 = await load.create_pods(host.bed, jobs, qps=qps, concurrency=concurrency, created=created)
    missing = await sup.wait("added", keys, timeout=timeout)
    clock = ten if ten is not None else sup
    not_running = await clock.wait("running", keys, timeout=timeout)
    res: dict[str, Any] = {
        "cpu": cpu.delta(cpu0, cpu.snapshot(host.bed)), "wall_s": trio.current_time() - t0,
        "syncer_loop_lag": (await host.call("stats"))["loop_lag"],
        "pods": len(keys), "create_s": t1 - t0, "achieved_rate": len(keys) / (t1 - t0),
        "missing_super": len(missing), "not_running": len(not_running),
        "ready": report.summary(clocks.latencies(created, clock.running, keys)),
    }
    if ten is not None:
        res["down"] = report.summary(clocks.latencies(created, sup.added, keys))
        res["up"] = report.summary(clocks.latencies(sup.running, ten.running, keys))
        res["down_stages"] = await clocks.down_stages(host, keys, created, sup.added)
        res["up_stages"] = await clocks.up_stages(host, keys, sup.running, ten.running)
    report.progress("%s: %s", name, {k: v for k, v in res.items() if not isinstance(v, dict)})
    return res


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    problems: list[str] = []
    steady_n = int(args.rate * args.duration)
    async with testbed.open_bed(args) as bed:
        tenants = await bed.add_tenants([f"t{i:02d}" for i in range(args.tenants)])
        host = await bed.start_host()
        async with trio.open_nursery() as watchers:
            sup, ten = await clocks.start_clocks(watchers, bed, tenants)
            await bed.prepare(host, tenants, NS, direct_ns=DIRECT_NS)

            def synced_jobs(prefix: str, n: int) -> list[load.Job]:
                out = []
                for i in range(n):
                    t = tenants[i % len(tenants)]
                    name = f"{prefix}-{i:05d}"
                    out.append(load.Job(t.cp.admin_kubeconfig, NS, name, (t.key, NS, name)))
                return out

            steady = await phase("steady", synced_jobs("s", steady_n), qps=args.rate,
                                 concurrency=max(10, int(args.rate)), sup=sup, ten=ten, timeout=args.timeout, host=host)
            await host.call("wait_quiet", tenants=len(tenants), stable=1.0, timeout=300)
            burst = await phase("burst", synced_jobs("b", args.burst), qps=0, concurrency=args.concurrency,
                                sup=sup, ten=ten, timeout=args.timeout, host=host)
            await host.call("wait_quiet", tenants=len(tenants), stable=1.0, timeout=300)
            direct_jobs = [load.Job(bed.kubeconfig, DIRECT_NS, f"d-{i:05d}", ("", DIRECT_NS, f"d-{i:05d}"))
                           for i in range(args.burst)]
            direct = await phase("direct burst", direct_jobs, qps=0, concurrency=args.concurrency, sup=sup, ten=None,
                                 timeout=args.timeout, host=host)
            stats = await host.call("stats")
            watchers.cancel_scope.cancel()
        expected: dict[str, dict[str, set[str]]] = {t.key: {NS: {"warm-up"}} for t in tenants}
        for prefix, count in (("s", steady_n), ("b", args.burst)):
            for i in range(count):
                expected[tenants[i % len(tenants)].key][NS].add(f"{prefix}-{i:05d}")
        problems += await verification.verify_synced(bed, tenants, expected, running=True)
        problems += await verification.verify_direct(bed, DIRECT_NS, {f"d-{i:05d}" for i in range(args.burst)}, running=True)

    rows = []
    for label, res, key in (("steady down", steady, "down"), ("steady up", steady, "up"),
                            ("steady ready", steady, "ready"), ("burst down", burst, "down"),
                            ("burst up", burst, "up"), ("burst ready", burst, "ready"),
                            ("direct burst ready", direct, "ready")):
        s = res[key]
        rows.append([label, s["n"], s["p50"], s["p90"], s["p99"], s["max"]])
    ratio = burst["ready"]["p99"] / direct["ready"]["p99"]
    text = report.table(["latency (s)", "n", "p50", "p90", "p99", "max"], rows)
    text += (f"\nsteady: {steady['achieved_rate']:.1f} creates/s achieved; burst: {burst['achieved_rate']:.1f} creates/s "
             f"(direct {direct['achieved_rate']:.1f}); burst ready p99 synced/direct = {ratio:.2f}")
    text += "\n" + clocks.stages_text("steady down", steady["down_stages"])
    text += "\n" + clocks.stages_text("steady up", steady["up_stages"])
    text += "\n" + clocks.stages_text("burst down", burst["down_stages"])
    text += "\n" + clocks.stages_text("burst up", burst["up_stages"])
    for label, r in (("steady", steady), ("burst", burst), ("direct burst", direct)):
        text += "\n" + cpu.text(f"{label}:", r["cpu"], r["wall_s"])
    for label, r in (("steady", steady), ("burst", burst)):
        lag = r["syncer_loop_lag"]
        text += (f"\n{label}: syncer event-loop lag max {lag.get('max', 0):.3f} s, p99 {lag.get('p99', 0):.3f} s, "
                 f"{lag.get('over_100ms_s', 0):.1f} s spent in lags > 100 ms")
    return report.finish(
        "latency", args=args, started=started, problems=problems,
        sizes={"tenants": args.tenants, "rate": args.rate, "duration": args.duration, "steady_pods": steady_n,
               "burst": args.burst, "concurrency": args.concurrency, "nodes": args.nodes},
        headline={"down_p99_s": steady["down"]["p99"], "up_p99_s": steady["up"]["p99"],
                  "down_p50_s": steady["down"]["p50"], "up_p50_s": steady["up"]["p50"],
                  "burst_down_p99_s": burst["down"]["p99"], "burst_up_p99_s": burst["up"]["p99"],
                  "burst_ready_p99_s": burst["ready"]["p99"], "direct_ready_p99_s": direct["ready"]["p99"],
                  "burst_ready_ratio": ratio},
        details={"host_logs": bed.host_logs(), "steady": steady, "burst": burst, "direct": direct, "syncer": stats}, text=text)


def main(argv: list[str] | None = None) -> int:
    return report.main("latency", parse(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
