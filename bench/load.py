"""The create load of a benchmark: the pods it creates, and the process that creates them.

The driver's side: `pod_body` and `create_one` (a create that retries overload answers), and
`create_pods`, which hands a list of `Job`s to a `bench.load` child process at a client QPS
with a number of concurrent callers, and records when each create returned.

The child: `python -m bench.load --state-dir D` reads one JSON line from stdin:

    {"kubeconfigs": [path, ...], "qps": q, "concurrency": c,
     "jobs": [[kubeconfig index, namespace, pod name, gated], ...]}

creates every pod (`create_one`: overload answers are retried) with at most `qps` calls
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
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from appliance.controlplane import process
from appliance.kube import creds as kcreds
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient, open_client
from appliance.kube.ratelimit import RateLimiter
from bench import clocks, report

if TYPE_CHECKING:
    from bench import testbed

log = logging.getLogger("bench")

PODS = resources.PODS


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
    key: clocks.Key
    gated: bool = False


async def create_pods(bed: testbed.Bed, jobs: Sequence[Job], *, qps: float, concurrency: int,
                      created: dict[clocks.Key, float] | None = None) -> tuple[float, float]:
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
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, cwd=report.ROOT)
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
        bed.load_cpu_s += float(result.get("cpu", 0.0))
        return result["t0"] + offset, result["t1"] + offset
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await trio.aclose_forcefully(proc.stdin)
            await trio.aclose_forcefully(proc.stdout)



# --- the child process ------------------------------------------------------------------------------

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
                await create_one(clients[ci], ns, pod_body(name, gated=bool(gated)))
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
