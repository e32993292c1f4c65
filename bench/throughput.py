"""Throughput: P pods over T tenants through the syncer vs the same P pods created directly.

Both runs use the same super cluster, the same client QPS limit and the same number of
concurrent callers. The direct run creates the pods in one super namespace; the synced run
creates them round-robin in namespace `bench` of T tenants (imported VirtualClusters) and the
syncer (its own process) copies them down and their status back up. Times come from watch
events (Informer handlers, trio clock), measured from the first create call:

  create_s   the client finished issuing all creates
  exist_s    the last super pod appeared (direct: ≈ create_s)
  running_s  the last pod is Running where its owner looks: the super pod (direct), the
             tenant pod (synced: scheduler + kwok + syncer back-population)

`throughput_ratio` = synced pods/s ÷ direct pods/s, both on running_s (end to end);
`exist_ratio` is the same on exist_s (the downward copy alone).
Between the runs the first run's namespace is deleted, so both start from the same cluster.
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
    p = report.parser("throughput", __doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=2000, help="pods per run (P)")
    p.add_argument("--tenants", type=int, default=10, help="tenants the synced run spreads over (T)")
    p.add_argument("--qps", type=float, default=200.0, help="client create calls per second, both runs (0 = unlimited)")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent create callers, both runs")
    p.add_argument("--order", choices=("direct-first", "synced-first"), default="direct-first")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take to converge before "
                   "its missing pods count as lost")
    return p.parse_args(argv)


async def one_run(bed: testbed.Bed, which: str, tenants: list[testbed.BedTenant], sup: clocks.PodClock,
                  ten: clocks.PodClock, args: argparse.Namespace, host: testbed.SyncerHost) -> dict[str, Any]:
    if which == "direct":
        keys = [("", DIRECT_NS, f"d-{i:05d}") for i in range(args.pods)]
        jobs = [load.Job(bed.kubeconfig, DIRECT_NS, k[2], k) for k in keys]
    else:
        keys = []
        jobs = []
        for i in range(args.pods):
            t = tenants[i % len(tenants)]
            k = (t.key, NS, f"s-{i:05d}")
            keys.append(k)
            jobs.append(load.Job(t.cp.admin_kubeconfig, NS, k[2], k))
    report.progress("%s run: creating %d pods", which, len(keys))
    created: dict[clocks.Key, float] = {}
    cpu0 = cpu.snapshot(bed)
    await host.call("stats")  # resets the syncer's event-loop lag record
    t0, t_created = await load.create_pods(bed, jobs, qps=args.qps, concurrency=args.concurrency, created=created)
    deadline = t0 + args.timeout
    lost_super = await sup.wait("added", keys, timeout=max(1.0, deadline - trio.current_time()))
    running_clock = sup if which == "direct" else ten
    lost_running = await running_clock.wait("running", keys, timeout=max(1.0, deadline - trio.current_time()))
    res_cpu = cpu.delta(cpu0, cpu.snapshot(bed))
    got_super = [sup.added[k] for k in keys if k in sup.added]
    got_running = [running_clock.running[k] for k in keys if k in running_clock.running]
    res: dict[str, Any] = {
        "pods": len(keys),
        "create_s": t_created - t0,
        "exist_s": (max(got_super) - t0) if got_super else float("nan"),
        "running_s": (max(got_running) - t0) if got_running else float("nan"),
        "missing_super": len(lost_super), "not_running": len(lost_running),
        "down": report.summary(clocks.latencies(created, sup.added, keys)),
        "ready": report.summary(clocks.latencies(created, running_clock.running, keys)),
        "cpu": res_cpu, "wall_s": trio.current_time() - t0,
        "syncer_loop_lag": (await host.call("stats"))["loop_lag"],
    }
    if which == "synced":
        res["up"] = report.summary(clocks.latencies(sup.running, ten.running, keys))
        res["down_stages"] = await clocks.down_stages(host, keys, created, sup.added)
        res["up_stages"] = await clocks.up_stages(host, keys, sup.running, ten.running)
        res["super_running_s"] = max((sup.running[k] for k in keys if k in sup.running), default=t0) - t0
    res["create_rate"] = len(keys) / res["create_s"]
    res["exist_rate"] = len(keys) / res["exist_s"]
    res["running_rate"] = len(keys) / res["running_s"]
    report.progress("%s run: %s", which, {k: v for k, v in res.items() if not isinstance(v, dict)})
    return res


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    problems: list[str] = []
    async with testbed.open_bed(args) as bed:
        tenants = await bed.add_tenants([f"t{i:02d}" for i in range(args.tenants)])
        host = await bed.start_host()
        async with trio.open_nursery() as watchers:
            sup, ten = await clocks.start_clocks(watchers, bed, tenants)
            await bed.prepare(host, tenants, NS, direct_ns=DIRECT_NS)
            order = ["direct", "synced"] if args.order == "direct-first" else ["synced", "direct"]
            runs: dict[str, dict[str, Any]] = {}
            for i, which in enumerate(order):
                runs[which] = await one_run(bed, which, tenants, sup, ten, args, host)
                await host.call("wait_quiet", tenants=len(tenants), stable=1.0, timeout=300)
                if which == "direct":
                    problems += await verification.verify_direct(bed, DIRECT_NS, {f"d-{j:05d}" for j in range(args.pods)},
                                                           running=True)
                    if i == 0:  # the synced run starts from the same cluster as this one did
                        runs["direct"]["cleanup_s"] = await verification.delete_namespace(bed.superc, DIRECT_NS)
                        await host.call("wait_quiet", tenants=len(tenants), stable=1.0, timeout=300)
            stats = await host.call("stats")
            watchers.cancel_scope.cancel()
        expected: dict[str, dict[str, set[str]]] = {t.key: {NS: {"warm-up"}} for t in tenants}
        for i in range(args.pods):
            expected[tenants[i % len(tenants)].key][NS].add(f"s-{i:05d}")
        problems += await verification.verify_synced(bed, tenants, expected, running=True)

    d, s = runs["direct"], runs["synced"]
    ratio = s["running_rate"] / d["running_rate"]
    exist_ratio = s["exist_rate"] / d["exist_rate"]
    rows = [
        ["direct", d["pods"], d["create_s"], d["exist_s"], d["running_s"], d["exist_rate"], d["running_rate"],
         d["ready"]["p50"], d["ready"]["p99"]],
        ["synced", s["pods"], s["create_s"], s["exist_s"], s["running_s"], s["exist_rate"], s["running_rate"],
         s["ready"]["p50"], s["ready"]["p99"]],
        ["synced/direct", "", "", "", "", exist_ratio, ratio, "", ""],
    ]
    text = report.table(["run", "pods", "create_s", "exist_s", "running_s", "exist/s", "running/s",
                         "ready_p50_s", "ready_p99_s"], rows)
    text += (f"\nsynced: down p50/p99 {s['down']['p50']:.3f}/{s['down']['p99']:.3f} s, "
             f"up p50/p99 {s['up']['p50']:.3f}/{s['up']['p99']:.3f} s; "
             f"syncer dws {stats['dws']}, uws {stats['uws']}")
    text += "\n" + clocks.stages_text("synced down", s["down_stages"])
    text += "\n" + clocks.stages_text("synced up", s["up_stages"])
    for name, r in (("direct", d), ("synced", s)):
        text += "\n" + cpu.text(f"{name} run:", r["cpu"], r["wall_s"])
    lag = s["syncer_loop_lag"]
    text += (f"\nsynced run: syncer event-loop lag max {lag.get('max', 0):.3f} s, p99 {lag.get('p99', 0):.3f} s, "
             f"{lag.get('over_100ms_s', 0):.1f} s spent in lags > 100 ms")
    return report.finish(
        "throughput", args=args, started=started, problems=problems,
        sizes={"pods": args.pods, "tenants": args.tenants, "qps": args.qps, "concurrency": args.concurrency,
               "nodes": args.nodes, "order": args.order},
        headline={"throughput_ratio": ratio, "exist_ratio": exist_ratio,
                  "direct_pods_per_s": d["running_rate"], "synced_pods_per_s": s["running_rate"],
                  "synced_exist_s": s["exist_s"], "synced_running_s": s["running_s"]},
        details={"host_logs": bed.host_logs(), "direct": d, "synced": s, "syncer": stats}, text=text)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return report.main("throughput", args, run)


if __name__ == "__main__":
    raise SystemExit(main())
