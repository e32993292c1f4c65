"""The whole product through the real process: VirtualCluster → tenant → Pod → logs/exec → restart."""

from __future__ import annotations

import base64
import json
import sys
import uuid
from pathlib import Path

import trio

from appliance.controlplane import process
from tests.e2e.appliance_proc import running
from tests.testbed import SuperCluster, append_pod_log, pid_alive, run_kubectl, tenancy_manifests, wait_for


def _pids(data_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text().split()[0]) for p in data_dir.rglob("*.pid")}


async def test_tenant_lifecycle_pod_logs_exec_and_restart_readoption(tmp_path: Path, super_cluster: SuperCluster) -> None:
    """A VC becomes Running; its Pod runs; logs/exec pass the proxy; a restart re-adopts the same processes."""
    sc, run = super_cluster, uuid.uuid4().hex[:8]
    ns, cv = f"e2e-{run}", f"cv-e2e-{run}"
    extra = f'tenant-selector = "e2e={run}"\n'
    data_dir = tmp_path / "data"
    try:
        await _lifecycle(sc, tmp_path, run=run, ns=ns, cv=cv, extra=extra, data_dir=data_dir)
    finally:  # kept processes (the shared etcd) outlive the appliance by design: stop them here
        for d in {p.parent for p in data_dir.rglob("*.pid")}:
            process.kill_leftovers(d)


async def _lifecycle(sc: SuperCluster, tmp_path: Path, *, run: str, ns: str, cv: str, extra: str,
                     data_dir: Path) -> None:
    kubectl = sc.kubectl
    async with running(sc, tmp_path, extra=extra, data_dir=data_dir) as app:
        await run_kubectl(kubectl, sc.kubeconfig, "create", "namespace", ns)
        await run_kubectl(kubectl, sc.kubeconfig, "apply", "-f", "-", stdin=tenancy_manifests(
            cv=cv, name="shop", namespace=ns, labels={"e2e": run}))

        async def phase() -> str | None:
            out = await run_kubectl(kubectl, sc.kubeconfig, "get", "vc", "shop", "-n", ns, "-o", "json")
            status = json.loads(out.stdout).get("status", {})
            assert status.get("phase") != "Error", status
            return status.get("clusterNamespace") if status.get("phase") == "Running" else None

        key = await wait_for(phase, timeout=120, what="VirtualCluster Running")
        secret = json.loads((await run_kubectl(kubectl, sc.kubeconfig, "get", "secret", "admin-kubeconfig",
                                               "-n", str(key), "-o", "json")).stdout)
        tkc = tmp_path / "tenant.kubeconfig"
        tkc.write_bytes(base64.b64decode(secret["data"]["admin-kubeconfig"]))
        cli = await trio.run_process([sys.executable, "-m", "appliance", "kubeconfig", f"{ns}/shop",
                                      "--config", str(app.config)], capture_stdout=True, check=False)
        assert cli.returncode == 0 and tkc.read_bytes() == cli.stdout

        await run_kubectl(kubectl, tkc, "run", "web", "--image=nginx")

        async def pod_running() -> bool:
            out = await run_kubectl(kubectl, tkc, "get", "pod", "web", "-o", "json", check=False)
            pod = json.loads(out.stdout) if out.returncode == 0 else {}
            return pod.get("status", {}).get("phase") == "Running" and bool(pod["spec"].get("nodeName"))

        await wait_for(pod_running, timeout=120, what="tenant pod web Running")
        super_pods = await run_kubectl(kubectl, sc.kubeconfig, "get", "pods", "-n", f"{key}-default", "-o", "name")
        assert "pod/web" in super_pods.stdout.split()
        marker = uuid.uuid4().hex
        append_pod_log(sc.kwok_log, marker)
        logs = await run_kubectl(kubectl, tkc, "logs", "web")
        assert marker in logs.stdout
        out = await run_kubectl(kubectl, tkc, "exec", "web", "--", "echo", marker)
        assert marker == out.stdout.strip()
        metrics = (await app.get("/metrics")).text
        assert 'syncer_dws_operations_total{resource="pod"' in metrics

        before = _pids(data_dir / "tenants")
        assert before, "the process provisioner left no pid files"
        assert await app.stop() == 0
    assert all(pid_alive(pid) for pid in before.values()), "tenant processes must survive an appliance stop"
    rv_before = json.loads((await run_kubectl(kubectl, sc.kubeconfig, "get", "secret", "apiserver-ca",
                                              "-n", str(key), "-o", "json")).stdout)["metadata"]["resourceVersion"]

    async with running(sc, tmp_path, extra=extra, data_dir=data_dir):
        assert await phase() == key
        nodes = await run_kubectl(kubectl, tkc, "get", "pod", "web", "-o", "jsonpath={.status.phase}")
        assert nodes.stdout == "Running"
        after = _pids(data_dir / "tenants")
        assert before == after, "restart must adopt the running tenant processes, not start new ones"
        rv_after = json.loads((await run_kubectl(kubectl, sc.kubeconfig, "get", "secret", "apiserver-ca",
                                                 "-n", str(key), "-o", "json")).stdout)["metadata"]["resourceVersion"]
        assert rv_before == rv_after, "no new certificates on restart"
        # Deleting the VC really deletes: processes, namespaces, data.
        await run_kubectl(kubectl, sc.kubeconfig, "delete", "vc", "shop", "-n", ns, "--timeout=120s")
    assert not any(pid_alive(pid) for pid in before.values())
    left = await run_kubectl(kubectl, sc.kubeconfig, "get", "ns", "-o", "name")
    assert not [n for n in left.stdout.split() if n.startswith(f"namespace/{key}")]
