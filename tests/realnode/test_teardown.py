"""A test run that dies must not leave a real node behind: the next run removes it.

The bed here is a second one (its own index, link, Pod and Service ranges) next to the
package's; its owner is SIGKILLed with a Pod running, so nothing of the orderly stop runs.
`nodehost.reap_stale` (which every new real node calls first) must then remove the node's
processes, containers, cgroups, link and routes; the control-plane processes go the way
the session fixture removes them (`process.kill_leftovers`). The orderly stop of the
package's bed is checked by its fixture (`real_bed`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import trio

from appliance.controlplane import build, nodehost, process
from tests.realnode import nodebed
from tests.testbed import SuperCluster, run_kubectl, wait_for

ROOT = Path(__file__).resolve().parents[2]


async def test_a_killed_bed_leaves_nothing_once_the_next_run_reaps_it(
    testbed_bins: build.Binaries, node_bins: build.NodeBinaries, real_bed: SuperCluster, tmp_path: Path,
) -> None:
    """SIGKILL the owner of a real node with a Pod running; reaping removes every trace."""
    state = tmp_path / "killed"
    log = tmp_path / "killed.log"
    with open(log, "wb") as logf:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "appliance.controlplane.localcluster", "--state-dir", str(state),
             "--nodes", "0", "--real-node"],
            stdout=logf, stderr=logf, cwd=ROOT,
            env=dict(os.environ, VC_TESTBIN_DIR=str(testbed_bins.bin_dir), VC_NODEBIN_DIR=str(node_bins.bin_dir)))
    try:
        async def started() -> dict | None:
            if proc.poll() is not None:
                raise AssertionError(f"bed exited {proc.returncode}: {log.read_text()[-2000:]}")
            f = state / "cluster.json"
            return json.loads(f.read_text()) if f.exists() else None

        info = await wait_for(started, timeout=180, what="a second real-node bed")
        bed = SuperCluster(info, testbed_bins)  # type: ignore[arg-type]
        index = int(bed.real_node["index"])  # type: ignore[arg-type]
        assert index != int(real_bed.real_node["index"])  # type: ignore[arg-type]
        pod = nodebed.pod("victim", command=["sleep", "3600"])
        await run_kubectl(bed.kubectl, bed.kubeconfig, "apply", "-f", "-", stdin=json.dumps(pod).encode())
        await run_kubectl(bed.kubectl, bed.kubeconfig, "wait", "--for=condition=Ready", "pod/victim",
                          "--timeout=90s")
        (record,) = [r for r in nodehost.records() if r.index == index]
        running = nodehost.leftovers(index, marker=record.marker)
        assert {x.split()[0] for x in running} >= {"record", "process", "link", "route", "cgroup"}, running
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert nodehost.leftovers(index, marker=record.marker), "a killed owner cannot have cleaned up"
    await trio.to_thread.run_sync(process.kill_leftovers, state / "logs")
    reaped = await trio.to_thread.run_sync(nodehost.reap_stale)
    assert index in reaped
    assert nodehost.leftovers(index, marker=record.marker) == []
