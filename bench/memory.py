"""Memory: the syncer process's memory with 0 tenants, idle tenants, and N synced pods.

The syncer runs alone in its process (`bench.host`, tracemalloc on from before the appliance
is imported). At each point the host runs `gc.collect()` and `malloc_trim(0)`, then reports
RSS, tracemalloc's traced bytes and tracemalloc's own bookkeeping, which is subtracted:
`rss_net = RSS − tracemalloc overhead` is what the process would hold without tracing.

  bytes_per_idle_tenant  (rss_net with T registered tenants, no pods − rss_net with none) ÷ T
  bytes_per_pod          least-squares slope of rss_net over the pod counts (0 and `--steps`)
  traced_bytes_per_pod   the same slope for Python-heap bytes (tracemalloc)

The pods are spread round-robin over the tenants and are Running (scheduled by the super
scheduler, made Running by kwok, status back-populated), so each cached copy carries a full
status; `--gated` keeps them unscheduled (smaller objects, much faster). Both caches count:
the syncer holds every pod twice, as the tenant's object and as its super copy. The top
allocation sites of the last step (vs the idle-tenant point) are listed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import trio

from bench import clocks, load, report, testbed, verification

NS = "bench"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.parser("memory", __doc__.splitlines()[0])
    p.add_argument("--steps", default="1000,2500,5000",
                   help="synced pod counts to measure at, ascending (1000,5000,10000 takes ~12 min on 2 cores)")
    p.add_argument("--tenants", type=int, default=5, help="tenants (idle first, then holding the pods)")
    p.add_argument("--gated", action="store_true", help="unschedulable pods (scheduling gate): no status")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--qps", type=float, default=0.0, help="client creates per second (0 = unlimited)")
    p.add_argument("--no-tracemalloc", action="store_true", help="RSS only (no tracing overhead or attribution)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one step may take to converge")
    return p.parse_args(argv)


def slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else float("nan")


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    problems: list[str] = []
    points: list[tuple[int, dict[str, Any]]] = []
    timings: dict[str, float] = {}
    async with testbed.open_bed(args) as bed:
        host = await bed.start_host(tracemalloc=not args.no_tracemalloc, trace=False)
        await host.call("wait_quiet", tenants=0, stable=2.0, timeout=60)
        empty = await host.call("memory", baseline=True)
        tenants = await bed.add_tenants([f"t{i:02d}" for i in range(args.tenants)])
        async with trio.open_nursery() as watchers:
            sup, ten = await clocks.start_clocks(watchers, bed, tenants)
            await bed.tenant_namespaces(tenants, NS)
            q = await host.call("wait_quiet", tenants=len(tenants), stable=2.0, timeout=300)
            if not q["ok"]:
                raise report.Misbehaved(f"the syncer did not register all tenants: {q}")
            idle = await host.call("memory", top=10)
            await host.call("memory", baseline=True)
            points.append((0, idle))
            made = 0
            for target in steps:
                jobs = []
                for i in range(made, target):
                    t = tenants[i % len(tenants)]
                    name = f"p-{i:05d}"
                    jobs.append(load.Job(t.cp.admin_kubeconfig, NS, name, (t.key, NS, name), gated=args.gated))
                t0 = trio.current_time()
                await load.create_pods(bed, jobs, qps=args.qps, concurrency=args.concurrency)
                keys = [j.key for j in jobs]
                if args.gated:
                    missing = await sup.wait("added", keys, timeout=args.timeout)
                else:
                    missing = await ten.wait("running", keys, timeout=args.timeout)
                if missing:
                    raise report.Misbehaved(f"{len(missing)} of {len(keys)} pods never synced (step {target})")
                q = await host.call("wait_quiet", tenants=len(tenants), stable=2.0, timeout=args.timeout)
                timings[f"step_{target}_s"] = trio.current_time() - t0
                made = target
                m = await host.call("memory", top=15 if target == steps[-1] else 0)
                points.append((target, m))
                report.progress("%d pods: rss %.1f MiB (net %.1f), traced %.1f MiB, in %.0f s", target,
                                m["rss"] / 2**20, m["rss_net"] / 2**20, m.get("traced", 0) / 2**20,
                                timings[f"step_{target}_s"])
            stats = await host.call("stats")
            watchers.cancel_scope.cancel()
        expected: dict[str, dict[str, set[str]]] = {t.key: {NS: set()} for t in tenants}
        for i in range(made):
            expected[tenants[i % len(tenants)].key][NS].add(f"p-{i:05d}")
        problems += await verification.verify_synced(bed, tenants, expected, running=not args.gated)

    per_pod = slope([(n, m["rss_net"]) for n, m in points])
    traced_per_pod = slope([(n, m.get("traced", float("nan"))) for n, m in points])
    json_per_pod = slope([(n, m["cache_json_bytes"]["super"] + m["cache_json_bytes"]["tenant"]) for n, m in points])
    per_tenant = (idle["rss_net"] - empty["rss_net"]) / max(1, args.tenants)
    traced_per_tenant = (idle.get("traced", 0) - empty.get("traced", 0)) / max(1, args.tenants)
    mib = 2**20
    rows = [["no tenants", 0, empty["rss"] / mib, empty["rss_net"] / mib, empty.get("traced", 0) / mib,
             (empty["cache_json_bytes"]["super"] + empty["cache_json_bytes"]["tenant"]) / mib]]
    for count, m in points:
        rows.append([f"{args.tenants} tenants", count, m["rss"] / mib, m["rss_net"] / mib, m.get("traced", 0) / mib,
                     (m["cache_json_bytes"]["super"] + m["cache_json_bytes"]["tenant"]) / mib])
    text = report.table(["point", "pods", "rss_MiB", "rss_net_MiB", "traced_MiB", "cached_json_MiB"], rows)
    text += (f"\nper pod: {per_pod:.0f} B (rss_net slope), {traced_per_pod:.0f} B traced, "
             f"{json_per_pod:.0f} B of cached JSON (tenant + super copy)"
             f"\nper idle tenant: {per_tenant:.0f} B (rss_net), {traced_per_tenant:.0f} B traced")
    top = points[-1][1].get("top") or []
    if top:
        text += "\ntop allocation sites, last step vs idle tenants:\n" + report.table(
            ["where", "KiB", "blocks"], [[t["where"], t["size_diff"] / 1024, t["count_diff"]] for t in top])
    return report.finish(
        "memory", args=args, started=started, problems=problems,
        sizes={"steps": steps, "tenants": args.tenants, "gated": args.gated, "nodes": args.nodes,
               "tracemalloc": not args.no_tracemalloc},
        headline={"bytes_per_pod": per_pod, "bytes_per_idle_tenant": per_tenant,
                  "traced_bytes_per_pod": traced_per_pod, "cached_json_bytes_per_pod": json_per_pod,
                  "rss_max_bytes": points[-1][1]["rss"]},
        details={"host_logs": bed.host_logs(), "empty": empty, "points": [{"pods": n, **m} for n, m in points], "timings": timings,
                 "syncer": stats},
        text=text)


def main(argv: list[str] | None = None) -> int:
    return report.main("memory", parse(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
