"""The appliance side of a benchmark, in its own process: Syncer + supervisor (+ proxy).

`python -m bench.host --super-kubeconfig K [--proxy] [--tracemalloc] [--settings JSON]`
builds the syncer exactly as the integration tests and `appliance.app` do
(`runtime.Syncer(...)`, `nursery.start(sx.run)`, `nursery.start(supervisor.run, sx)`,
optionally `proxy.server.serve` in super-apiserver mode with the syncer's pod cache as
its lookup), against the benchmark's super cluster, where every Running VirtualCluster
is a benchmark tenant.

Why a process of its own: the benchmark driver (thousands of creates, watch clocks on both
sides) must not share an event loop with the syncer, or each would delay the other's
timestamps; and the memory benchmark needs an RSS that is the syncer's alone.

Protocol: one JSON object per line. The host prints `{"event": "ready", ...}` once the
syncer's super caches are synced, then answers each command read from stdin with one
line: `{"cmd": "stats"}`, `{"cmd": "wait_quiet", "tenants": N, "stable": s, "timeout": s}`,
`{"cmd": "memory", "baseline": bool, "top": n}`, `{"cmd": "quit"}`. EOF on stdin also
stops it (the driver died). Logs go to stderr. Wall-clock times are `time.time()`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc
from typing import Any


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS so RSS shows live memory, not glibc's free lists."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host")
    parser.add_argument("--super-kubeconfig", required=True)
    parser.add_argument("--proxy", action="store_true", help="also serve the kubelet proxy (port 0)")
    parser.add_argument("--data-dir", default=".", help="where the proxy keeps its serving certificate")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--no-trace", action="store_true", help="no per-pod stage trace (it grows with the pods)")
    parser.add_argument("--settings", default="{}", help="JSON: SyncerSettings overrides")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    started_wall = time.time()
    if args.tracemalloc:
        tracemalloc.start(1)  # before the appliance is imported: every later allocation is traced
    import logging

    import trio

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    trio.run(_run, args, started_wall)
    return 0


async def _run(args: argparse.Namespace, started_wall: float) -> None:
    import gc
    from pathlib import Path

    import trio

    from appliance import config as cfgmod
    from appliance.kube import creds as kcreds
    from appliance.kube.client import open_client
    from appliance.metrics import Registry
    from appliance.syncer import runtime, supervisor

    defaults = cfgmod.Config()  # the appliance's own defaults for the super client
    settings: dict[str, Any] = json.loads(args.settings)
    creds = await kcreds.load_kubeconfig(Path(args.super_kubeconfig))
    out = sys.stdout

    def say(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    async with open_client(creds, qps=defaults.super.qps, burst=defaults.super.burst,
                           timeout=defaults.super.request_timeout, user_agent="vc-appliance") as superc:
        async with trio.open_nursery() as nursery:
            cas = None
            proxy_port = None
            holder: dict[str, runtime.Syncer] = {}
            if args.proxy:
                from appliance.app import proxy_serving_cert
                from appliance.proxy import forward, server

                cas = server.TenantCAs()
                cert, key = await trio.to_thread.run_sync(proxy_serving_cert, Path(args.data_dir))
                upstream = await trio.to_thread.run_sync(
                    lambda: forward.upstream_from_credentials(superc.creds, mode="super-apiserver"))

                async def lookup(ns: str, name: str) -> dict[str, Any] | None:
                    return holder["sx"].super_cache("pod").get(name, ns)

                listeners = await nursery.start(lambda task_status: server.serve(
                    host="127.0.0.1", port=0, server_cert_pem=cert, server_key_pem=key, cas=cas,
                    upstream=upstream, lookup_pod=lookup, task_status=task_status))
                proxy_port = listeners[0].socket.getsockname()[1]
            registered: dict[str, float] = {}

            def on_register(tid: Any, c: Any) -> None:
                registered.setdefault(tid.key, time.time())
                if cas is not None and c.ca_pem:
                    cas.set(tid.key, c.ca_pem)

            # the syncer's own defaults (its settings extend the [syncer] section), pointed at our proxy
            base = {"vnode_address": "127.0.0.1", "vnode_port": proxy_port or defaults.proxy.port}
            sx = runtime.Syncer(
                super_client=superc, registry=Registry(),
                settings=runtime.SyncerSettings(**{**base, **settings}),
                on_register=on_register,
                on_unregister=(lambda key: cas.remove(key) if cas is not None else None),
            )
            holder["sx"] = sx
            trace = _trace_pods(sx) if not args.no_trace else {}
            # event-loop lag histogram (constant memory: the memory benchmark measures this process)
            edges = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, float("inf"))
            lag: dict[str, Any] = {"counts": [0] * len(edges), "max": 0.0, "over_100ms_s": 0.0}

            async def loop_lag() -> None:
                """How late a 10 ms sleep wakes up: time the event loop was busy elsewhere."""
                while True:
                    t = trio.current_time()
                    await trio.sleep(0.01)
                    x = trio.current_time() - t - 0.01
                    lag["counts"][next(i for i, e in enumerate(edges) if x <= e)] += 1
                    lag["max"] = max(lag["max"], x)
                    if x > 0.1:
                        lag["over_100ms_s"] += x

            nursery.start_soon(loop_lag)
            await nursery.start(sx.run)
            syncer_started = time.time()
            await nursery.start(supervisor.run, sx)
            say({"event": "ready", "pid": os.getpid(), "proxy_port": proxy_port,
                 "process_started": started_wall, "syncer_started": syncer_started})

            baseline: list[Any] = []

            def busy() -> int:
                total = 0
                for q in (*sx.queues.values(), sx.upward):
                    st = q.statistics()
                    total += st["length"] + st["processing"] + st["delayed"]
                return total

            def stats() -> dict[str, Any]:
                dws: dict[str, float] = {}
                for (res, _vc, code), v in sx.m_dws.values.items():
                    dws[f"{res}/{code}"] = dws.get(f"{res}/{code}", 0) + v
                uws = {f"{res}/{code}": v for (res, code), v in sx.m_uws.values.items()}
                return {
                    "t": time.time(), "tenants": sorted(sx.tenants), "busy": busy(), "rss": _rss(),
                    "dws": dws, "uws": uws,
                    "super_cache": {k: len(sx.super_cache(k)) for k in sx.kinds},
                    "dropped": sum(q.statistics()["dropped"] for q in (*sx.queues.values(), sx.upward)),
                    "registered": registered,
                    "loop_lag": lag_summary(),
                }

            def lag_summary() -> dict[str, float]:
                """Event-loop lag since the last call: max, p99 (bucket upper edge), seconds lagged > 100 ms."""
                counts, n = lag["counts"], sum(lag["counts"])
                if not n:
                    return {}
                seen, p99 = 0, edges[-1]
                for c, e in zip(counts, edges, strict=True):
                    seen += c
                    if seen >= 0.99 * n:
                        p99 = e
                        break
                out = {"max": lag["max"], "p99": min(p99, lag["max"]), "over_100ms_s": lag["over_100ms_s"], "samples": n}
                lag.update(counts=[0] * len(edges), max=0.0, over_100ms_s=0.0)
                return out

            async def wait_quiet(tenants: int, stable: float, timeout: float) -> dict[str, Any]:
                """First moment from which `tenants` are registered and every queue stays empty
                for `stable` s. The queues are in-process state with no event: poll at 10 ms."""
                with trio.move_on_after(timeout):
                    while True:
                        while len(sx.tenants) < tenants or busy():
                            await trio.sleep(0.01)
                        quiet_since = time.time()
                        with trio.move_on_after(stable):
                            while not (len(sx.tenants) < tenants or busy()):
                                await trio.sleep(0.01)
                            continue
                        return {"ok": True, "quiet_since": quiet_since, **stats()}
                return {"ok": False, **stats()}

            def memory(take_baseline: bool, top: int) -> dict[str, Any]:
                gc.collect()
                _malloc_trim()
                rss = _rss()
                tenant_objects = tenant_bytes = 0
                for t in sx.tenants.values():
                    for inf in t.informers.values():
                        st = inf.statistics()
                        tenant_objects += int(st["objects"])
                        tenant_bytes += int(st["bytes"])
                super_stats = [sx.super_cache(k).statistics() for k in sx.kinds] + [sx.super_nodes.statistics()]
                res: dict[str, Any] = {
                    "rss": rss, "rss_net": rss, "tenants": len(sx.tenants),
                    "super_cache": {k: len(sx.super_cache(k)) for k in sx.kinds},
                    "cache_json_bytes": {"super": sum(int(st["bytes"]) for st in super_stats), "tenant": tenant_bytes},
                    "cache_objects": {"super": sum(int(st["objects"]) for st in super_stats), "tenant": tenant_objects},
                }
                if tracemalloc.is_tracing():
                    current, _peak = tracemalloc.get_traced_memory()
                    overhead = tracemalloc.get_tracemalloc_memory()
                    res.update(traced=current, tracemalloc_overhead=overhead, rss_net=rss - overhead)
                    if take_baseline or (top and baseline):
                        snap = tracemalloc.take_snapshot().filter_traces(
                            (tracemalloc.Filter(False, tracemalloc.__file__),))
                        if top and baseline:
                            diff = snap.compare_to(baseline[0], "lineno")[:top]
                            res["top"] = [
                                {"where": f"{Path(d.traceback[0].filename).name}:{d.traceback[0].lineno}",
                                 "file": d.traceback[0].filename, "size_diff": d.size_diff,
                                 "count_diff": d.count_diff} for d in diff]
                        if take_baseline:
                            baseline[:] = [snap]
                        del snap
                        gc.collect()
                return res

            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            buf = b""
            while True:
                chunk = await stdin.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    cmd = json.loads(line)
                    name = cmd.get("cmd")
                    if name == "stats":
                        say(stats())
                    elif name == "wait_quiet":
                        say(await wait_quiet(int(cmd.get("tenants", 0)), float(cmd.get("stable", 0.5)),
                                             float(cmd.get("timeout", 600))))
                    elif name == "memory":
                        say(memory(bool(cmd.get("baseline")), int(cmd.get("top", 0))))
                    elif name == "trace":
                        keys = [tuple(k) for k in cmd.get("keys", [])]
                        say({stage: [d.get(k) for k in keys] for stage, d in trace.items()} if trace
                            else {"error": "started with --no-trace"})
                    elif name == "quit":
                        say({"event": "bye"})
                        nursery.cancel_scope.cancel()
                        return
                    else:
                        say({"error": f"unknown command {name!r}"})
            nursery.cancel_scope.cancel()


def _trace_pods(sx: Any) -> dict[str, dict[tuple[str, str, str], float]]:
    """Wall-clock stages of each pod's first downward sync and first upward sync once Running, keyed
    (cluster key, tenant ns, name). Downward:
    `event` the syncer's tenant informer handed it the ADDED event, `start` the first reconcile
    began, `end` the first reconcile that finished without an error returned. Wraps the syncer's
    own handler factory and the pod kind's reconcile; nothing else changes."""
    from appliance.kube import wire

    stages: dict[str, dict[tuple[str, str, str], float]] = {"event": {}, "start": {}, "end": {}}
    factory = sx.tenant_handler

    def tenant_handler(tenant: Any, kind: str) -> Any:
        handler = factory(tenant, kind)
        if kind != "pod":
            return handler

        def traced(event_type: str, new: Any, old: Any) -> None:
            if event_type == "ADDED" and new is not None:
                m = new.get("metadata") or {}
                stages["event"].setdefault((tenant.key, m.get("namespace", ""), m.get("name", "")), time.time())
            handler(event_type, new, old)

        return traced

    sx.tenant_handler = tenant_handler
    pods = sx.kinds["pod"]
    reconcile = pods.reconcile

    async def traced_reconcile(syncer: Any, tenant: Any, ns: str, name: str) -> None:
        key = (tenant.key, ns, name)
        stages["start"].setdefault(key, time.time())
        await reconcile(syncer, tenant, ns, name)
        stages["end"].setdefault(key, time.time())

    pods.reconcile = traced_reconcile

    # upward: `up_event` the syncer's super informer handed it the super pod as Running, `up_start`
    # / `up_end` the first back-population call that began after that (and finished without error)
    stages.update(up_event={}, up_start={}, up_end={})
    super_factory = sx._super_handler

    def super_handler(kind: str) -> Any:
        handler = super_factory(kind)
        if kind != "pod":
            return handler

        def traced(event_type: str, new: bytes | None, old: bytes | None) -> None:  # a raw handler
            if new is not None and b'"phase":"Running"' in new:
                meta = wire.origin_of(new)["metadata"]
                ann = meta["annotations"]
                ck, ns = ann.get("tenancy.x-k8s.io/cluster"), ann.get("tenancy.x-k8s.io/namespace")
                if ck and ns:
                    stages["up_event"].setdefault((ck, ns, meta["name"]), time.time())
            handler(event_type, new, old)

        return traced

    sx._super_handler = super_handler
    upward = pods.upward

    async def traced_upward(syncer: Any, tenant: Any, ns: str, name: str) -> None:
        key = (tenant.key, ns, name)
        first = key in stages["up_event"] and key not in stages["up_start"]
        if first:
            stages["up_start"][key] = time.time()
        await upward(syncer, tenant, ns, name)
        if first:
            stages["up_end"][key] = time.time()

    pods.upward = traced_upward
    return stages


if __name__ == "__main__":
    raise SystemExit(main())
