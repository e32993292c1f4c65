"""The README's first command: `vc-appliance dev up` brings up the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from appliance.controlplane import build, images, nodehost
from tests.testbed import run_kubectl, wait_for


def _processes_under(path: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", str(path)], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


async def _dev(*args: str, timeout: float = 400) -> tuple[int, str]:
    with trio.fail_after(timeout):
        proc = await trio.run_process([sys.executable, "-m", "appliance", "dev", *args],
                                      capture_stdout=True, capture_stderr=True, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).decode()


async def test_dev_up_runs_a_tenant_pod_and_down_stops_everything(
    tmp_path: Path, testbed_bins: build.Binaries
) -> None:
    """dev up (on a host that can run a real node: with one) → tenant kubeconfig; a Pod runs as a
    real container, logs and exec work; status reports; down stops all, the node included."""
    state = tmp_path / "state"
    node_index = None
    try:
        code, out = await _dev("up", "--state-dir", str(state))
        assert code == 0, out
        kubeconfig = state / "tenants" / "tenant-1.kubeconfig"
        assert str(kubeconfig) in out and kubeconfig.exists()
        kubectl = state / "bin" / "kubectl"
        nodes = await run_kubectl(kubectl, state / "super.kubeconfig", "get", "nodes", "-o", "name")
        assert nodes.stdout.split() == ["node/real-node-1"] or nodes.stdout.startswith("node/real-node-")
        node_index = int(nodes.stdout.split("-")[-1])
        (record,) = [r for r in nodehost.records() if r.index == node_index]
        await run_kubectl(kubectl, kubeconfig, "run", "web", f"--image={images.BUSYBOX_IMAGE}", "--",
                          "sh", "-c", "echo hello from a real container; exec httpd -f -p 8080")

        async def running() -> bool:
            got = await run_kubectl(kubectl, kubeconfig, "get", "pod", "web", "-o", "json", check=False)
            return got.returncode == 0 and json.loads(got.stdout)["status"].get("phase") == "Running"

        await wait_for(running, timeout=120, what="tenant pod Running")
        logs = await run_kubectl(kubectl, kubeconfig, "logs", "web")
        assert "hello from a real container" in logs.stdout
        hello = await run_kubectl(kubectl, kubeconfig, "exec", "web", "--", "echo", "hello")
        assert hello.stdout.strip() == "hello"
        again, out2 = await _dev("up", "--state-dir", str(state))  # idempotent: reuses what runs
        assert again == 0, out2
        status, report = await _dev("status", "--state-dir", str(state))
        assert status == 0 and "ready" in report
    finally:
        code, out = await _dev("down", "--state-dir", str(state))
    assert code == 0, out
    assert _processes_under(state) == []
    if node_index is not None:
        assert nodehost.leftovers(node_index, marker=record.marker) == []
