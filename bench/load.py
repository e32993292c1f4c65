"""The create load of a benchmark, in its own process, away from the driver's watch clocks.

`python -m bench.load --state-dir D` reads one JSON line from stdin:

    {"kubeconfigs": [path, ...], "qps": q, "concurrency": c,
     "jobs": [[kubeconfig index, namespace, pod name, gated], ...]}

creates every pod (`common.create_one`: overload answers are retried) with at most `qps` calls
started per second (0 = no limit) by `concurrency` callers, and prints one JSON line per pod
as its create returns, `[job index, time.monotonic()]`, then `{"t0": ..., "t1": ..., "cpu": s}`
(first call started, last call returned, its CPU seconds). CLOCK_MONOTONIC is shared by all processes of the machine,
so the driver maps these onto its own trio clock.

Why a process: a trio loop with dozens of busy create callers advances each of its watch
streams by one read per scheduling pass, so watch events queue up in the socket and their
timestamps come late. The driver keeps only the watches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import trio

from appliance.kube import creds as kcreds
from appliance.kube.client import open_client
from appliance.kube.ratelimit import RateLimiter
from bench import common


async def _run(spec: dict[str, object]) -> None:
    paths = [Path(str(p)) for p in spec["kubeconfigs"]]  # type: ignore[attr-defined]
    jobs = spec["jobs"]
    qps = float(spec["qps"])  # type: ignore[arg-type]
    concurrency = int(spec["concurrency"])  # type: ignore[call-overload]
    out = sys.stdout
    async with trio.open_nursery() as nursery:
        clients = []
        for p in paths:
            c = await nursery.start(_client, p)
            clients.append(c)
        limiter = RateLimiter(qps=qps, burst=1) if qps > 0 else None
        send, recv = trio.open_memory_channel[int](len(jobs))  # type: ignore[arg-type]
        for i in range(len(jobs)):  # type: ignore[arg-type]
            send.send_nowait(i)
        send.close()
        t0 = time.monotonic()

        async def caller() -> None:
            async for i in recv:
                ci, ns, name, gated = jobs[i]  # type: ignore[index]
                if limiter is not None:
                    await limiter.acquire()
                await common.create_one(clients[ci], ns, common.pod_body(name, gated=bool(gated)))
                out.write(f"[{i}, {time.monotonic()!r}]\n")
                out.flush()

        async with trio.open_nursery() as callers:
            for _ in range(max(1, min(concurrency, len(jobs)))):  # type: ignore[arg-type]
                callers.start_soon(caller)
        cpu = os.times()
        out.write(json.dumps({"t0": t0, "t1": time.monotonic(), "cpu": cpu.user + cpu.system}) + "\n")
        out.flush()
        nursery.cancel_scope.cancel()


async def _client(path: Path, *, task_status: trio.TaskStatus[object]) -> None:
    creds = await kcreds.load_kubeconfig(path)
    async with open_client(creds, qps=math.inf, max_connections=200, timeout=120.0, user_agent="vc-bench-load") as c:
        task_status.started(c)
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--state-dir", help="the bed's state directory (names this process for CPU accounting)")
    parser.parse_args(argv)
    spec = json.loads(sys.stdin.readline())
    trio.run(_run, spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
