"""A local super cluster on loopback: etcd, kube-apiserver, KCM, scheduler, kwok nodes.

`run(...)` is a trio task owning every process; it writes `<state>/cluster.json` (the
endpoints and kubeconfig paths) once all are ready and removes it when stopping, so
other processes (pytest's session fixture, `vc-appliance dev`) find a cluster only
while it is really up. As a program, `python -m appliance.controlplane.localcluster
--state-dir D` runs in the foreground until SIGTERM/SIGINT, then stops everything.
The etcd is shared: tenant apiservers started later use its URL with their own prefix.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import trio

from appliance.controlplane import build, cluster

log = logging.getLogger(__name__)

STATE_FILE = "cluster.json"


async def run(
    *,
    state_dir: Path,
    nodes: int = 3,
    bins: build.Binaries | None = None,
    task_status: trio.TaskStatus[dict[str, object]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    state_dir.mkdir(parents=True, exist_ok=True)
    if bins is None:
        bins = await trio.to_thread.run_sync(build.ensure_binaries)
    state_file = state_dir / STATE_FILE
    state_file.unlink(missing_ok=True)
    async with trio.open_nursery() as nursery:
        etcd = await cluster.start_etcd(nursery, bins, state_dir=state_dir, fsync=False)  # a test bed
        cp = await cluster.start_control_plane(
            nursery, bins, name="super", etcd_url=etcd.url, state_dir=state_dir,
            etcd_prefix="/registry", scheduler=True, service_cidr="10.96.0.0/16",
        )
        await cluster.wait_default_service_account(cp.url, cp.pki_dir)
        kwok = await cluster.start_kwok(nursery, bins, cp=cp, state_dir=state_dir, nodes=nodes)
        info: dict[str, object] = {
            "pid": os.getpid(),
            "bin_dir": str(bins.bin_dir),
            "etcd_url": etcd.url,
            "super": cp.to_json(),
            "kwok": {"port": kwok.port, "log_file": str(kwok.log_file), "nodes": list(kwok.nodes)},
            "state_dir": str(state_dir),
        }
        try:
            cluster.write_json(state_file, info)
            task_status.started(info)
            await trio.sleep_forever()
        finally:
            state_file.unlink(missing_ok=True)
    raise AssertionError("unreachable")


async def _main(state_dir: Path, nodes: int) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(lambda task_status: run(
                state_dir=state_dir, nodes=nodes, task_status=task_status))
            print(f"local cluster ready: {info['super']['url']}", flush=True)
            async for signum in signals:
                log.info("signal %d: stopping the local cluster", signum)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.controlplane.localcluster")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    trio.run(_main, args.state_dir.resolve(), args.nodes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
