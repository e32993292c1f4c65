"""The README's first command: `vc-appliance dev up` brings up the embedded default."""

from __future__ import annotations

import json
import os
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


async def test_dev_up_after_down_keeps_logs_and_exec_and_kubeconfig_env(
    tmp_path: Path, testbed_bins: build.Binaries
) -> None:
    """dev up (kwok), down, up again on the same state dir: the super Nodes name kwok's current
    kubelet port, so `kubectl logs`/`exec` of a tenant Pod work; with only KUBECONFIG set (as the
    README says), `vc-appliance kubeconfig NS/NAME` prints the tenant's kubeconfig and `status`
    says that Leases are off."""
    state = tmp_path / "state"
    kubeconfig, kubectl = state / "tenants" / "tenant-1.kubeconfig", state / "bin" / "kubectl"
    super_kubeconfig = state / "super.kubeconfig"
    try:
        code, out = await _dev("up", "--state-dir", str(state), "--node", "kwok")
        assert code == 0, out
        assert f"export KUBECONFIG={super_kubeconfig}" in out
        await run_kubectl(kubectl, kubeconfig, "run", "web", f"--image={images.BUSYBOX_IMAGE}")

        async def running() -> bool:
            got = await run_kubectl(kubectl, kubeconfig, "get", "pod", "web", "-o", "json", check=False)
            return got.returncode == 0 and json.loads(got.stdout)["status"].get("phase") == "Running"

        await wait_for(running, timeout=120, what="tenant pod Running")
        code, out = await _dev("down", "--state-dir", str(state))
        assert code == 0, out
        code, out = await _dev("up", "--state-dir", str(state), "--node", "kwok")
        assert code == 0, out

        await wait_for(running, timeout=60, what="tenant pod Running after the restart")
        logs = await run_kubectl(kubectl, kubeconfig, "logs", "web", check=False)
        assert "hello from kwok" in logs.stdout, logs.stderr  # was: dial tcp 127.0.0.1:<old port>: refused
        hello = await run_kubectl(kubectl, kubeconfig, "exec", "web", "--", "echo", "hello")
        assert "hello" == hello.stdout.strip()
        kwok_port = json.loads((state / "cluster" / "cluster.json").read_text())["kwok"]["port"]
        ports = await run_kubectl(kubectl, super_kubeconfig, "get", "nodes", "-o",
                                  "jsonpath={.items[*].status.daemonEndpoints.kubeletEndpoint.Port}")
        assert {str(kwok_port)} == set(ports.stdout.split())

        env = {k: v for k, v in os.environ.items() if not k.startswith(("VCA_", "KUBERNETES_SERVICE_"))}
        env.update(KUBECONFIG=str(super_kubeconfig), HOME=str(tmp_path))
        with trio.fail_after(60):
            cli = await trio.run_process([sys.executable, "-m", "appliance", "kubeconfig", "default/tenant-1"],
                                         capture_stdout=True, capture_stderr=True, check=False, env=env)
            assert (0, kubeconfig.read_bytes()) == (cli.returncode, cli.stdout), cli.stderr
            status = await trio.run_process([sys.executable, "-m", "appliance", "status"],
                                            capture_stdout=True, capture_stderr=True, check=False, env=env)
        assert status.returncode == 0, status.stderr
        assert "Leases are off" in status.stdout.decode()
        assert "default/tenant-1" in status.stdout.decode()
    finally:
        code, out = await _dev("down", "--state-dir", str(state))
    assert code == 0, out
    assert _processes_under(state) == []
