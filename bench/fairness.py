"""Fairness: quiet tenants' latency while another tenant floods the syncer, vs without the flood.

Each of `--quiet-tenants` tenants creates `--quiet-pods` pods one after another: create, wait
for its super copy (super watch), create the next, as an interactive user would. First with
nothing else going on (idle), then while one flood tenant creates `--flood` pods as fast as
`--flood-concurrency` callers go; the quiet sequences start once the flood has a backlog
(pods created in the flood tenant but not yet in the super cluster) of at least
`--min-backlog`, and the backlog seen at each quiet create is reported.

  quiet down   create returned → super pod ADDED   (what the syncer's fair queues control)
  quiet ready  create returned → tenant pod Running (adds the super scheduler, kwok and the
               upward path, all shared with the flood)

Headline: `quiet_p99_s` / `quiet_p99_idle_s` are the down latencies; the ready ones are
`quiet_ready_p99_s` / `quiet_ready_p99_idle_s`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import trio

from bench import clocks, cpu, load, report, testbed, verification

NS = "bench"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.parser("fairness", __doc__.splitlines()[0])
    p.add_argument("--flood", type=int, default=2000, help="pods the flood tenant creates")
    p.add_argument("--flood-concurrency", type=int, default=50)
    p.add_argument("--quiet-tenants", type=int, default=5)
    p.add_argument("--quiet-pods", type=int, default=10, help="pods each quiet tenant creates, one at a time")
    p.add_argument("--min-backlog", type=int, default=200, help="flood backlog before the quiet tenants start")
    p.add_argument("--timeout", type=float, default=900.0)
    return p.parse_args(argv)


async def quiet_sequences(quiet: list[testbed.BedTenant], prefix: str, n: int, sup: clocks.PodClock,
                          created: dict[clocks.Key, float], backlog: dict[clocks.Key, int] | None,
                          backlog_of: Any, timeout: float) -> list[clocks.Key]:
    keys: list[clocks.Key] = []

    async def one(t: testbed.BedTenant) -> None:
        for i in range(n):
            k = (t.key, NS, f"{prefix}-{i:03d}")
            keys.append(k)
            if backlog is not None:
                backlog[k] = backlog_of()
            await load.create_one(t.client, NS, load.pod_body(k[2]))
            created[k] = trio.current_time()
            if await sup.wait("added", [k], timeout=timeout):
                raise report.Misbehaved(f"{t.name}: {k[2]} never reached the super cluster")

    async with trio.open_nursery() as nursery:
        for t in quiet:
            nursery.start_soon(one, t)
    return keys


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    problems: list[str] = []
    async with testbed.open_bed(args) as bed:
        tenants = await bed.add_tenants(["flood", *(f"q{i}" for i in range(args.quiet_tenants))])
        flood, quiet = tenants[0], tenants[1:]
        host = await bed.start_host()
        async with trio.open_nursery() as watchers:
            sup, ten = await clocks.start_clocks(watchers, bed, tenants)
            await bed.prepare(host, tenants, NS)

            # idle: the quiet tenants alone
            created: dict[clocks.Key, float] = {}
            idle_keys = await quiet_sequences(quiet, "idle", args.quiet_pods, sup, created, None, None, args.timeout)
            await ten.wait("running", idle_keys, timeout=args.timeout)
            await host.call("wait_quiet", tenants=len(tenants), stable=1.0, timeout=300)

            # flood
            flood_keys = [(flood.key, NS, f"f-{i:05d}") for i in range(args.flood)]
            flood_jobs = [load.Job(flood.cp.admin_kubeconfig, NS, k[2], k) for k in flood_keys]
            flood_created: dict[clocks.Key, float] = {}

            def backlog() -> int:
                return sum(1 for k in flood_created if k not in sup.added)

            flood_result: dict[str, float] = {}
            flood_keys_set = set(flood_keys)

            async def flood_all() -> None:
                t0, t1 = await load.create_pods(bed, flood_jobs, qps=0, concurrency=args.flood_concurrency,
                                                  created=flood_created)
                flood_result.update(create_s=t1 - t0, t0=t0)

            backlog_at: dict[clocks.Key, int] = {}
            cpu0, w0 = cpu.snapshot(bed), trio.current_time()
            async with trio.open_nursery() as n:
                n.start_soon(flood_all)
                with trio.move_on_after(args.timeout):
                    while backlog() < args.min_backlog and len(flood_created) < args.flood:
                        await trio.sleep(0.05)  # the backlog is in other processes: sample it
                flood_done_before = len(flood_keys_set & sup.added.keys())
                busy_keys = await quiet_sequences(quiet, "busy", args.quiet_pods, sup, created, backlog_at,
                                                  backlog, args.timeout)
                flood_done_after = len(flood_keys_set & sup.added.keys())
            missing = await sup.wait("added", flood_keys, timeout=args.timeout)
            not_running = await ten.wait("running", [*flood_keys, *busy_keys], timeout=args.timeout)
            flood_cpu, flood_wall = cpu.delta(cpu0, cpu.snapshot(bed)), trio.current_time() - w0
            flood_exist_s = max((sup.added[k] for k in flood_keys if k in sup.added), default=0) - flood_result["t0"]
            idle_stages = await clocks.down_stages(host, idle_keys, created, sup.added)
            busy_stages = await clocks.down_stages(host, busy_keys, created, sup.added)
            busy_up = await clocks.up_stages(host, busy_keys, sup.running, ten.running)
            busy_sched = report.summary(clocks.latencies(sup.added, sup.running, busy_keys))
            stats = await host.call("stats")
            watchers.cancel_scope.cancel()
        expected = {t.key: {NS: {"warm-up"}} for t in tenants}
        expected[flood.key][NS] |= {k[2] for k in flood_keys}
        for k in (*idle_keys, *busy_keys):
            expected[k[0]][NS].add(k[2])
        problems += await verification.verify_synced(bed, tenants, expected, running=True)
        if missing or not_running:
            problems.append(f"flood: {len(missing)} pods never synced, {len(not_running)} never Running")

    idle_down = report.summary(clocks.latencies(created, sup.added, idle_keys))
    busy_down = report.summary(clocks.latencies(created, sup.added, busy_keys))
    idle_ready = report.summary(clocks.latencies(created, ten.running, idle_keys))
    busy_ready = report.summary(clocks.latencies(created, ten.running, busy_keys))
    backlogs = sorted(backlog_at.values())
    rows = [[label, s["n"], s["p50"], s["p90"], s["p99"], s["max"]] for label, s in (
        ("quiet down, idle", idle_down), ("quiet down, flood", busy_down),
        ("quiet ready, idle", idle_ready), ("quiet ready, flood", busy_ready))]
    text = report.table(["latency (s)", "n", "p50", "p90", "p99", "max"], rows)
    text += (f"\nflood: {args.flood} pods created in {flood_result['create_s']:.1f} s, all in super after "
             f"{flood_exist_s:.1f} s; backlog at quiet creates min/median/max "
             f"{backlogs[0] if backlogs else '-'}/{backlogs[len(backlogs) // 2] if backlogs else '-'}/"
             f"{backlogs[-1] if backlogs else '-'}; flood pods synced while the quiet tenants ran: "
             f"{flood_done_after - flood_done_before}")
    text += "\n" + clocks.stages_text("quiet down, idle", idle_stages)
    text += "\n" + clocks.stages_text("quiet down, flood", busy_stages)
    text += (f"\nquiet pods during the flood, super pod created → Running (super scheduler + kwok) "
             f"p50/p99 {busy_sched['p50']:.3f}/{busy_sched['p99']:.3f} s")
    text += "\n" + clocks.stages_text("quiet up, flood", busy_up)
    text += "\n" + cpu.text("flood phase:", flood_cpu, flood_wall)
    return report.finish(
        "fairness", args=args, started=started, problems=problems,
        sizes={"flood": args.flood, "quiet_tenants": args.quiet_tenants, "quiet_pods": args.quiet_pods,
               "flood_concurrency": args.flood_concurrency, "nodes": args.nodes},
        headline={"quiet_p99_s": busy_down["p99"], "quiet_p99_idle_s": idle_down["p99"],
                  "quiet_p50_s": busy_down["p50"], "quiet_p50_idle_s": idle_down["p50"],
                  "quiet_ready_p99_s": busy_ready["p99"], "quiet_ready_p99_idle_s": idle_ready["p99"]},
        details={"host_logs": bed.host_logs(), "idle_down": idle_down, "flood_down": busy_down, "idle_ready": idle_ready,
                 "flood_ready": busy_ready, "backlog_at_quiet_creates": backlogs,
                 "flood_create_s": flood_result["create_s"], "flood_exist_s": flood_exist_s,
                 "flood_synced_during_quiet": flood_done_after - flood_done_before, "syncer": stats,
                 "idle_stages": idle_stages, "flood_stages": busy_stages,
                 "flood_up_stages": busy_up, "flood_super_schedule": busy_sched, "flood_cpu": flood_cpu},
        text=text)


def main(argv: list[str] | None = None) -> int:
    return report.main("fairness", parse(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
