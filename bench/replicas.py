"""Replicas: aggregate sync throughput with 1, 2 and 3 appliance replicas on one super apiserver.

T tenants (imported VirtualClusters, namespace `bench`) are shared by N real `vc-appliance`
processes with Leases enabled (manager and proxy off: this measures the syncers). For each N
in `--replicas`, the bench starts N replicas, waits until every tenant Lease is held and no
replica holds more than its fair share, creates P pods round-robin over the tenants, and
times until every super copy exists (`exist_s`) and every tenant pod is Running
(`running_s`, end to end). The replicas are then stopped (SIGTERM: Leases are released) and
the next round starts with new pod names. Every replica competes for the same CPUs as the
apiservers, so on a 2-core host more replicas add parallel syncers, not cores.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

from appliance.kube import errors, resources
from appliance.replicas import lease
from bench import clocks, cpu, load, report, testbed, verification

NS = "bench"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.parser("replicas", __doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=600, help="pods per round (P)")
    p.add_argument("--tenants", type=int, default=6, help="tenants shared by the replicas (T)")
    p.add_argument("--replicas", default="1,2,3", help="replica counts, one round each")
    p.add_argument("--qps", type=float, default=200.0, help="client create calls per second (0 = unlimited)")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent create callers")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a round may take to converge")
    return p.parse_args(argv)


class Replica:
    def __init__(self, proc: trio.Process, identity: str, log: Path) -> None:
        self.proc, self.identity, self.log = proc, identity, log

    async def stop(self) -> None:
        await testbed.terminate(self.proc)


async def start_replica(bed: testbed.Bed, identity: str, lease_ns: str) -> Replica:
    d = bed.state_dir / identity
    d.mkdir(parents=True, exist_ok=True)
    config = d / "appliance.toml"
    config.write_text(f"""data-dir = "{d / 'data'}"
binaries-dir = "{bed.bins.bin_dir}"
[super]
kubeconfig = "{bed.kubeconfig}"
[http]
port = 0
[manager]
enabled = false
[proxy]
enabled = false
[leases]
enabled = true
identity = "{identity}"
namespace = "{lease_ns}"
""")
    log = d / "appliance.log"
    with open(log, "ab") as logf:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "appliance", "run", "--config", str(config)],
            stdout=logf, stderr=logf, cwd=report.ROOT, env=dict(os.environ))
    return Replica(proc, identity, log)


async def wait_balanced(bed: testbed.Bed, tenants: list[testbed.BedTenant], replicas: list[Replica], lease_ns: str,
                        *, timeout: float) -> dict[str, int]:
    """Every tenant Lease held by a live replica, none over its fair share; returns leases per replica."""
    idents = {r.identity for r in replicas}
    share = lease.fair_share(len(tenants), len(replicas))
    refs = {lease.tenant_lease_name((t.vc["metadata"]["namespace"], t.vc["metadata"]["name"])) for t in tenants}
    counts: collections.Counter[str] = collections.Counter()
    with trio.move_on_after(timeout):
        while True:
            for r in replicas:
                if r.proc.poll() is not None:
                    raise report.Misbehaved(f"replica {r.identity} exited {r.proc.returncode}")
            try:
                items = (await bed.superc.list(resources.LEASES, namespace=lease_ns)).items
            except errors.NotFound:
                items = []
            counts = collections.Counter(lease.record(o).holder for o in items if o["metadata"]["name"] in refs)
            held = sum(n for h, n in counts.items() if h in idents)
            if held == len(tenants) and all(n <= share for n in counts.values()) and \
                    (len(replicas) > len(tenants) or set(counts) == idents):
                return dict(counts)
            await trio.sleep(0.5)  # polling another process's state; the bound is the deadline
    raise report.Misbehaved(f"replicas not balanced after {timeout:.0f} s: {dict(counts)}")


async def one_round(bed: testbed.Bed, n: int, tenants: list[testbed.BedTenant], sup: clocks.PodClock,
                    ten: clocks.PodClock, args: argparse.Namespace) -> dict[str, Any]:
    lease_ns = f"bench-leases-{n}"
    replicas = [await start_replica(bed, f"replica-{n}-{i}", lease_ns) for i in range(n)]
    try:
        t_start = trio.current_time()
        counts = await wait_balanced(bed, tenants, replicas, lease_ns, timeout=180)
        balanced_s = trio.current_time() - t_start
        report.progress("%d replica(s) balanced in %.1f s: %s", n, balanced_s, counts)
        # each replica's syncer has registered its tenants once a warm-up pod of each is Running
        await bed.warm_up_named(tenants, NS, f"warm-up-{n}")
        keys, jobs = [], []
        for i in range(args.pods):
            t = tenants[i % len(tenants)]
            k = (t.key, NS, f"r{n}-{i:05d}")
            keys.append(k)
            jobs.append(load.Job(t.cp.admin_kubeconfig, NS, k[2], k))
        created: dict[clocks.Key, float] = {}
        cpu0 = cpu.snapshot(bed)
        t0, t_created = await load.create_pods(bed, jobs, qps=args.qps, concurrency=args.concurrency,
                                                 created=created)
        deadline = t0 + args.timeout
        lost_super = await sup.wait("added", keys, timeout=max(1.0, deadline - trio.current_time()))
        lost_running = await ten.wait("running", keys, timeout=max(1.0, deadline - trio.current_time()))
        used = cpu.delta(cpu0, cpu.snapshot(bed))
        got_super = [sup.added[k] for k in keys if k in sup.added]
        got_running = [ten.running[k] for k in keys if k in ten.running]
        res: dict[str, Any] = {
            "replicas": n, "pods": len(keys), "leases": counts, "balanced_s": balanced_s,
            "create_s": t_created - t0,
            "exist_s": (max(got_super) - t0) if got_super else math.nan,
            "running_s": (max(got_running) - t0) if got_running else math.nan,
            "missing_super": len(lost_super), "not_running": len(lost_running),
            "ready": report.summary(clocks.latencies(created, ten.running, keys)),
            "cpu": used, "wall_s": trio.current_time() - t0,
        }
        res["exist_rate"] = len(keys) / res["exist_s"]
        res["running_rate"] = len(keys) / res["running_s"]
        report.progress("round %d: %s", n, {k: v for k, v in res.items() if not isinstance(v, dict)})
        return res
    finally:
        for r in replicas:
            await r.stop()


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    problems: list[str] = []
    counts = [int(x) for x in args.replicas.split(",") if x.strip()]
    async with testbed.open_bed(args) as bed:
        tenants = await bed.add_tenants([f"t{i:02d}" for i in range(args.tenants)])
        async with trio.open_nursery() as watchers:
            sup, ten = await clocks.start_clocks(watchers, bed, tenants)
            await bed.tenant_namespaces(tenants, NS)
            rounds = [await one_round(bed, n, tenants, sup, ten, args) for n in counts]
            watchers.cancel_scope.cancel()
        expected: dict[str, dict[str, set[str]]] = {t.key: {NS: set()} for t in tenants}
        for n in counts:
            for t in tenants:
                expected[t.key][NS].add(f"warm-up-{n}")
            for i in range(args.pods):
                expected[tenants[i % len(tenants)].key][NS].add(f"r{n}-{i:05d}")
        # the last round's replicas are gone: one more replica set brings status up to date
        final = [await start_replica(bed, "replica-final", "bench-leases-final")]
        try:
            await wait_balanced(bed, tenants, final, "bench-leases-final", timeout=180)
            problems += await verification.verify_synced(bed, tenants, expected, running=True)
        finally:
            for r in final:
                await r.stop()
        for r in rounds:
            if r["missing_super"] or r["not_running"]:
                problems.append(f"{r['replicas']} replica(s): {r['missing_super']} pods never reached super, "
                                f"{r['not_running']} never Running")

    base = rounds[0]["running_rate"]
    rows = [[r["replicas"], r["pods"], str(r["leases"]), r["balanced_s"], r["exist_s"], r["running_s"],
             r["exist_rate"], r["running_rate"], r["running_rate"] / base, r["ready"]["p50"], r["ready"]["p99"]]
            for r in rounds]
    text = report.table(["replicas", "pods", "leases", "balanced_s", "exist_s", "running_s", "exist/s",
                         "running/s", "vs_1", "ready_p50_s", "ready_p99_s"], rows)
    for r in rounds:
        text += "\n" + cpu.text(f"{r['replicas']} replica(s):", r["cpu"], r["wall_s"])
    return report.finish(
        "replicas", args=args, started=started, problems=problems,
        sizes={"pods": args.pods, "tenants": args.tenants, "replicas": args.replicas, "qps": args.qps,
               "concurrency": args.concurrency, "nodes": args.nodes},
        headline={f"pods_per_s_{r['replicas']}": r["running_rate"] for r in rounds},
        details={"rounds": rounds}, text=text)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return report.main("replicas", args, run)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
