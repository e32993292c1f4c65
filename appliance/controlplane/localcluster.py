"""A local super cluster: etcd, kube-apiserver, KCM, scheduler, kwok nodes, a real node.

`run(...)` is a trio task owning every process; it writes `<state>/cluster.json` (the
endpoints and kubeconfig paths) once all are ready and removes it when stopping, so
other processes (pytest's session fixture, `vc-appliance dev`) find a cluster only
while it is really up. As a program, `python -m appliance.controlplane.localcluster
--state-dir D` runs in the foreground until SIGTERM/SIGINT, then stops everything.
The etcd is shared: tenant apiservers started later use its URL with their own prefix.

With `real_node`, a real node (`realnode`: containerd, runc, CNI, kubelet, kube-proxy in
namespaces of its own) joins, the apiserver listens on the host end of the node's link
instead of loopback (Pods must reach it), and CoreDNS runs as the cluster DNS. Next to kwok
nodes the real node is tainted (`nodeconfig.REAL_NODE_TAINT`): only Pods that tolerate it
run there, so kwok-based tests never land on it by chance.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import trio

from appliance.controlplane import addons, build, cluster, nodeconfig, realnode

log = logging.getLogger(__name__)

STATE_FILE = "cluster.json"


async def run(
    *,
    state_dir: Path,
    nodes: int = 3,
    real_node: bool = False,
    bins: build.Binaries | None = None,
    task_status: trio.TaskStatus[dict[str, object]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    state_dir.mkdir(parents=True, exist_ok=True)
    if bins is None:
        bins = await trio.to_thread.run_sync(build.ensure_binaries)
    nodebins = await trio.to_thread.run_sync(build.ensure_node_binaries) if real_node else None
    state_file = state_dir / STATE_FILE
    state_file.unlink(missing_ok=True)
    async with trio.open_nursery() as nursery:
        net: realnode.NodeNetwork | None = None
        if real_node:
            net = await nursery.start(functools.partial(realnode.run_namespaces, state_dir / "node"))
        etcd = await cluster.start_etcd(nursery, bins, state_dir=state_dir, fsync=False)  # a test bed
        cp = await cluster.start_control_plane(
            nursery, bins, name="super", etcd_url=etcd.url, state_dir=state_dir,
            etcd_prefix="/registry", scheduler=True,
            service_cidr=net.plan.service_cidr if net is not None else "10.96.0.0/16",
            address=net.plan.host_ip if net is not None else cluster.LOOPBACK,
        )
        await cluster.wait_default_service_account(cp.url, cp.pki_dir)
        kwok = await cluster.start_kwok(nursery, bins, cp=cp, state_dir=state_dir, nodes=nodes) if nodes else None
        node = None
        if net is not None and nodebins is not None:
            taints = (nodeconfig.REAL_NODE_TAINT,) if nodes else ()
            node = await realnode.start_node(nursery, bins, nodebins, net, super_cp=cp, taints=taints)
            await addons.apply(cp.url, cp.pki_dir, addons.coredns_objects(
                tenant=False, cluster_ip=net.plan.cluster_dns_ip,
                node_selector={nodeconfig.REAL_NODE_LABEL: "true"},
                tolerations=[nodeconfig.REAL_NODE_TOLERATION],
            ))
            with trio.fail_after(120):
                await addons.wait_deployment_ready(cp.url, cp.pki_dir, addons.NAMESPACE, "coredns")
        info: dict[str, object] = {
            "pid": os.getpid(),
            "bin_dir": str(bins.bin_dir),
            "node_bin_dir": str(nodebins.bin_dir) if nodebins is not None else None,
            "etcd_url": etcd.url,
            "super": cp.to_json(),
            "kwok": {"port": kwok.port, "log_file": str(kwok.log_file), "nodes": list(kwok.nodes)}
            if kwok is not None else None,
            "real_node": node.to_json() if node is not None else None,
            "state_dir": str(state_dir),
        }
        try:
            cluster.write_json(state_file, info)
            task_status.started(info)
            await trio.sleep_forever()
        finally:
            state_file.unlink(missing_ok=True)
    raise AssertionError("unreachable")


async def _main(state_dir: Path, nodes: int, real_node: bool) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:  # also while starting: a stop must not wait for readiness
                    log.info("signal %d: stopping the local cluster", signum)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            info = await nursery.start(lambda task_status: run(
                state_dir=state_dir, nodes=nodes, real_node=real_node, task_status=task_status))
            print(f"local cluster ready: {info['super']['url']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.controlplane.localcluster")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=3, help="kwok (fake) nodes")
    parser.add_argument("--real-node", action="store_true",
                        help="add a real node (containerd, kubelet, kube-proxy; needs root)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    trio.run(_main, args.state_dir.resolve(), args.nodes, args.real_node)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
