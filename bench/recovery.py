"""Recovery: restart the syncer over N synced pods; time to full consistency and writes issued.

N Running pods are synced over T tenants and the syncer is quiet. Then watches are armed on
everything the syncer writes: in the super cluster every tenancy-labelled namespace, pod,
configmap, secret, serviceaccount, service, endpoints and PVC; in each tenant its pods,
nodes (virtual nodes), services and events. The syncer process is stopped (`--stop term`:
asked to quit, as on SIGTERM; `kill`: SIGKILL) and a new one started at t0 (spawn time).

  recovery_s       t0 → all tenants registered and every queue empty for `--stable` s
                   (reported from the first moment of that quiet period, by the host)
  recovery_writes  watch events (ADDED/MODIFIED/DELETED) on those objects between the stop
                   and `--settle` s after recovery: every write the syncer issued
                   (nothing else writes them here; ~0 expected, the objects are unchanged)

Afterwards the full comparison checks every pod on both sides.
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

import trio

from appliance.kube import informer as kinformer
from appliance.kube import resources
from appliance.util import naming
from bench import clocks, cpu, load, report, testbed, verification

NS = "bench"
SUPER_KINDS = (resources.NAMESPACES, resources.PODS, resources.CONFIGMAPS, resources.SECRETS,
               resources.SERVICEACCOUNTS, resources.SERVICES, resources.ENDPOINTS, resources.PVCS)
TENANT_KINDS = (resources.PODS, resources.NODES, resources.SERVICES, resources.EVENTS)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.parser("recovery", __doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=5000, help="synced pods (N)")
    p.add_argument("--tenants", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--stop", choices=("term", "kill"), default="term")
    p.add_argument("--stable", type=float, default=2.0, help="seconds the queues must stay empty")
    p.add_argument("--settle", type=float, default=5.0, help="seconds writes are still counted after recovery")
    p.add_argument("--timeout", type=float, default=1800.0)
    return p.parse_args(argv)


class WriteCounter:
    """Counts watch events per (side, kind, type) once armed (the initial list is not a write)."""

    def __init__(self) -> None:
        self.armed = False
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.samples: list[str] = []

    def handler(self, side: str, kind: str) -> kinformer.Handler:
        def handle(event_type: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
            if not self.armed:
                return
            self.counts[(side, kind, event_type)] += 1
            if len(self.samples) < 20:
                m = (new or old or {}).get("metadata") or {}
                self.samples.append(f"{side} {kind} {event_type} {m.get('namespace', '')}/{m.get('name')}")
        return handle

    def total(self, side: str | None = None) -> int:
        return sum(v for (s, _, _), v in self.counts.items() if side is None or s == side)


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    problems: list[str] = []
    async with testbed.open_bed(args) as bed:
        tenants = await bed.add_tenants([f"t{i:02d}" for i in range(args.tenants)])
        host = await bed.start_host(name="host-1")
        async with trio.open_nursery() as watchers:
            _sup, ten = await clocks.start_clocks(watchers, bed, tenants)
            async with trio.open_nursery() as n:
                for t in tenants:
                    n.start_soon(bed.tenant_namespace, t, NS)
            q = await host.call("wait_quiet", tenants=len(tenants), stable=0.5, timeout=300)
            if not q["ok"]:
                raise report.Misbehaved(f"the syncer did not register all tenants: {q}")
            jobs = []
            for i in range(args.pods):
                t = tenants[i % len(tenants)]
                name = f"p-{i:05d}"
                jobs.append(load.Job(t.cp.admin_kubeconfig, NS, name, (t.key, NS, name)))
            t0 = trio.current_time()
            await load.create_pods(bed, jobs, qps=0, concurrency=args.concurrency)
            missing = await ten.wait("running", [j.key for j in jobs], timeout=args.timeout)
            if missing:
                raise report.Misbehaved(f"{len(missing)} of {args.pods} pods never Running before the restart")
            q = await host.call("wait_quiet", tenants=len(tenants), stable=args.stable, timeout=args.timeout)
            populate_s = trio.current_time() - t0
            before = await host.call("stats")
            report.progress("%d pods synced and Running in %.0f s; syncer caches %s", args.pods, populate_s,
                            before["super_cache"])

            counter = WriteCounter()
            for res in SUPER_KINDS:
                inf = kinformer.Informer(bed.superc, res, label_selector=naming.LABEL_VC_NAME, name=f"count/{res}")
                inf.add_handler(counter.handler("super", res.plural))
                await watchers.start(inf.run)
            for t in tenants:
                for res in TENANT_KINDS:
                    inf = kinformer.Informer(t.client, res, name=f"count/{t.name}/{res}")
                    inf.add_handler(counter.handler("tenant", res.plural))
                    await watchers.start(inf.run)
            counter.armed = True

            if args.stop == "kill":
                host.proc.kill()
            await host.stop()
            bed.hosts.remove(host)
            bed.stopped_hosts.append(host)
            stopped_writes = counter.total()
            cpu0 = cpu.snapshot(bed)
            host2 = await bed.start_host(name="host-2")
            spawned = host2.spawned
            q = await host2.call("wait_quiet", tenants=len(tenants), stable=args.stable, timeout=args.timeout)
            if not q["ok"]:
                raise report.Misbehaved(f"the restarted syncer never became quiet: {q}")
            recovered = q["quiet_since"]
            restart_cpu = cpu.delta(cpu0, cpu.snapshot(bed))
            await trio.sleep(args.settle)
            counter.armed = False
            after = await host2.call("stats")
            watchers.cancel_scope.cancel()
        expected: dict[str, dict[str, set[str]]] = {t.key: {NS: set()} for t in tenants}
        for j in jobs:
            expected[j.key[0]][NS].add(j.key[2])
        problems += await verification.verify_synced(bed, tenants, expected, running=True)

    recovery_s = recovered - spawned
    registered = sorted(after["registered"].values())
    objects = sum(before["super_cache"].values())
    by_kind = {f"{s}/{k}/{ty}": v for (s, k, ty), v in sorted(counter.counts.items())}
    rows = [
        ["process start → syncer ready (super caches synced)", host2.ready["syncer_started"] - spawned],
        ["process start → all tenants registered", (registered[-1] - spawned) if registered else float("nan")],
        ["process start → queues drained (recovery_s)", recovery_s],
        ["writes while stopped", stopped_writes],
        ["writes, super side", counter.total("super")],
        ["writes, tenant side", counter.total("tenant")],
        ["downward reconciles after restart", sum(v for k, v in after["dws"].items())],
        ["upward reconciles after restart", sum(v for k, v in after["uws"].items())],
    ]
    text = report.table(["recovery", "value"], rows)
    text += "\n" + cpu.text("restart → quiet (+stable):", restart_cpu, q["t"] - spawned)
    if by_kind:
        text += "\nwrites by kind: " + ", ".join(f"{k}={v}" for k, v in by_kind.items())
        text += "\nfirst writes: " + "; ".join(counter.samples[:10])
    return report.finish(
        "recovery", args=args, started=started, problems=problems,
        sizes={"pods": args.pods, "tenants": args.tenants, "synced_objects": objects, "stop": args.stop,
               "nodes": args.nodes},
        headline={"recovery_s": recovery_s, "recovery_writes": counter.total(),
                  "recovery_super_writes": counter.total("super"), "recovery_tenant_writes": counter.total("tenant")},
        details={"host_logs": bed.host_logs(), "restart_cpu": restart_cpu, "writes_by_kind": by_kind, "write_samples": counter.samples, "populate_s": populate_s,
                 "ready_s": host2.ready["syncer_started"] - spawned,
                 "registered_s": [r - spawned for r in registered],
                 "syncer_before": before, "syncer_after": after},
        text=text)


def main(argv: list[str] | None = None) -> int:
    return report.main("recovery", parse(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
