"""The appliance as one container: built here without a registry, run against the test bed.

The container uses the host's network (the super cluster and kwok listen on loopback), mounts
the super kubeconfig read-only and a data directory, and is configured only through VCA_*
variables, as a user would run it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import httpx
import trio

from appliance.controlplane.cluster import free_port
from tests.container import podman, tenants
from tests.testbed import SuperCluster, append_pod_log, run_kubectl, wait_for

UID = 10001


async def test_image_runs_as_its_own_user_with_the_kubernetes_binaries(app_image: str) -> None:
    """Non-root, the test bed's Kubernetes version inside, and no build leftovers (wheels) in it."""
    out = await podman.arun("run", "--rm", "--network=none", "--entrypoint", "sh", app_image, "-c",
                            "id -u; kube-apiserver --version; etcd --version | head -1; "
                            "vc-appliance version; ls /tmp; pip --version 2>&1 | head -1")
    lines = out.stdout.decode().splitlines()
    assert lines[0] == str(UID)
    assert "Kubernetes v1.37.2" in lines[1]
    assert lines[2].startswith("etcd Version:")
    assert lines[3].startswith("vc-appliance ")
    assert not any(".whl" in line for line in lines), lines
    inspect = json.loads((await podman.arun("image", "inspect", app_image)).stdout)[0]
    assert inspect["Config"]["User"].startswith(str(UID))
    assert inspect["Config"]["Entrypoint"] == ["vc-appliance"]


async def _ready(port: int) -> bool:
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=3) as c:
            return (await c.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_container_serves_a_tenant_stops_on_sigterm_and_readopts_it(
    app_image: str, super_cluster: SuperCluster, tmp_path: Path
) -> None:
    """Ready → a process-mode tenant → its Pod is synced and `kubectl logs` passes the proxy →
    SIGTERM exits 0 → a second start brings the same tenant back from the data volume."""
    sc, run = super_cluster, uuid.uuid4().hex[:8]
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, UID, UID)
    kubeconfig = tmp_path / "super.kubeconfig"
    shutil.copy(sc.kubeconfig, kubeconfig)
    os.chown(kubeconfig, 0, UID)
    kubeconfig.chmod(0o640)
    http, proxy = free_port(), free_port()
    name = f"vca-{run}"
    with podman.removed_after(name) as ctr:
        try:
            await podman.arun(
                "run", "--detach", "--name", name, "--network=host",
                "--volume", f"{data}:/var/lib/vc-appliance", "--volume", f"{kubeconfig}:/etc/vc/super.kubeconfig:ro",
                "--env", "VCA_SUPER_KUBECONFIG=/etc/vc/super.kubeconfig",
                "--env", "VCA_HTTP_ADDRESS=127.0.0.1", "--env", f"VCA_HTTP_PORT={http}",
                "--env", "VCA_PROXY_ADDRESS=127.0.0.1", "--env", f"VCA_PROXY_PORT={proxy}",
                "--env", f'VCA_TENANT_SELECTOR="{tenants.SELECTOR_LABEL}={run}"',
                "--env", "VCA_GRACEFUL_TIMEOUT=10",
                app_image,
            )
            await _wait_ready(ctr, http)
            tenant = await tenants.provision(sc, tmp_path, run)
            await run_kubectl(sc.kubectl, tenant.kubeconfig, "run", "web", "--image=nginx")
            await wait_for(lambda: _pod_running(sc, tenant.kubeconfig, "web"), timeout=120,
                           what="tenant pod web Running")
            super_pods = await run_kubectl(sc.kubectl, sc.kubeconfig, "get", "pods", "-n",
                                           f"{tenant.key}-default", "-o", "name")
            assert "pod/web" in super_pods.stdout.split()
            marker = uuid.uuid4().hex
            append_pod_log(sc.kwok_log, marker)
            logs = await run_kubectl(sc.kubectl, tenant.kubeconfig, "logs", "web")
            assert marker in logs.stdout

            await podman.arun("stop", "--time", "60", name, timeout=90)
            assert await ctr.state("ExitCode") == "0", await ctr.logs()
            assert "Traceback" not in await ctr.logs()

            await podman.arun("start", name)
            await _wait_ready(ctr, http)
            assert await tenants.phase(sc, tenant.ns, tenant.name) == tenant.key
            # The same PKI and etcd data: the old kubeconfig works and the Pod is still there.
            await wait_for(lambda: _pod_running(sc, tenant.kubeconfig, "web"), timeout=120,
                           what="tenant pod web Running after the restart")
            await run_kubectl(sc.kubectl, tenant.kubeconfig, "run", "after", "--image=nginx")
            await wait_for(lambda: _pod_running(sc, tenant.kubeconfig, "after"), timeout=120,
                           what="a Pod created after the restart Running")
            assert await ctr.state("Running") == "true"
        finally:
            with trio.CancelScope(shield=True):
                await podman.arun("stop", "--time", "30", name, check=False, timeout=60)
                await tenants.forget(sc, run)


async def _wait_ready(ctr: podman.Container, port: int) -> None:
    async def ready() -> bool:
        if await ctr.state("Running") != "true":
            raise AssertionError(f"the container exited ({await ctr.state('ExitCode')}):\n"
                                 f"{(await ctr.logs())[-3000:]}")
        return await _ready(port)

    await wait_for(ready, timeout=120, what="the container's /readyz")


async def _pod_running(sc: SuperCluster, kubeconfig: Path, pod: str) -> bool:
    out = await run_kubectl(sc.kubectl, kubeconfig, "get", "pod", pod, "-o", "json", check=False)
    obj = json.loads(out.stdout) if out.returncode == 0 else {}
    return obj.get("status", {}).get("phase") == "Running" and bool(obj.get("spec", {}).get("nodeName"))
