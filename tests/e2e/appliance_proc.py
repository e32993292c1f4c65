"""Run the real `vc-appliance` process for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from appliance.controlplane import process
from appliance.controlplane.cluster import free_port
from tests.testbed import SuperCluster, run_kubectl, wait_for


@dataclass
class Appliance:
    proc: trio.Process
    config: Path
    http_port: int
    proxy_port: int
    data_dir: Path
    log: Path

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
            return await c.get(f"http://127.0.0.1:{self.http_port}{path}")

    async def ready(self) -> bool:
        try:
            return (await self.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """`vc-appliance ARGS --config <this appliance's config>`: (exit code, stdout, stderr)."""
        proc = await trio.run_process([sys.executable, "-m", "appliance", *args, "--config", str(self.config)],
                                      capture_stdout=True, capture_stderr=True, check=False)
        return proc.returncode, proc.stdout.decode(), proc.stderr.decode()

    async def stop(self, *, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code (fails the test if it hangs)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(timeout):
            return await self.proc.wait()


def write_config(path: Path, sc: SuperCluster, data_dir: Path, *, extra: str = "",
                 super_kubeconfig: Path | None = None, graceful_timeout: float = 10.0) -> tuple[int, int]:
    """`extra` holds top-level keys (it is written before the first section)."""
    http, proxy = free_port(), free_port()
    path.write_text(f"""{extra}
data-dir = "{data_dir}"
binaries-dir = "{sc.bins.bin_dir}"
graceful-timeout = {graceful_timeout}
[super]
kubeconfig = "{super_kubeconfig or sc.kubeconfig}"
[http]
port = {http}
[proxy]
port = {proxy}
""")
    return http, proxy


@contextlib.asynccontextmanager
async def running(
    sc: SuperCluster, tmp: Path, *, extra: str = "", env: dict[str, str] | None = None,
    data_dir: Path | None = None, wait_ready: bool = True, super_kubeconfig: Path | None = None,
    graceful_timeout: float = 10.0,
) -> AsyncIterator[Appliance]:
    """Start `python -m appliance run`, wait for /readyz, and always stop it afterwards."""
    data_dir = data_dir or tmp / "data"
    config = tmp / f"appliance-{free_port()}.toml"
    http, proxy = write_config(config, sc, data_dir, extra=extra, super_kubeconfig=super_kubeconfig,
                               graceful_timeout=graceful_timeout)
    log = config.with_suffix(".log")
    with open(log, "wb") as logf:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "appliance", "run", "--config", str(config)],
            stdout=logf, stderr=logf, env=dict(os.environ, **(env or {})),
        )
    app = Appliance(proc, config, http, proxy, data_dir, log)
    try:
        if wait_ready:
            async def ready_or_dead() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"vc-appliance exited {proc.returncode}:\n{log.read_text()[-3000:]}")
                return await app.ready()

            await wait_for(ready_or_dead, timeout=120, what="vc-appliance /readyz")
        yield app
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(30):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


#: A one-replica Deployment `default/web` for tenants whose syncing a test follows.
WEB_DEPLOYMENT = b"""
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
"""


async def wait_web_synced(sc: SuperCluster, tkc: Path, key: str, *, pods: int, namespace: str = "default",
                          timeout: float = 120) -> None:
    """`pods` Pods of Deployment `web` Running in the tenant's `namespace`, each with a super Pod in
    `<key>-<namespace>` naming its UID. A failing kubectl counts as not yet (a tenant process may be
    restarting)."""
    async def synced() -> bool:
        out = await run_kubectl(sc.kubectl, tkc, "get", "pods", "-n", namespace, "-l", "app=web", "-o", "json",
                                check=False)
        if out.returncode != 0:
            return False
        tenant = [p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]
        if len(tenant) != pods or any(p.get("status", {}).get("phase") != "Running" for p in tenant):
            return False
        out = await run_kubectl(sc.kubectl, sc.kubeconfig, "get", "pods", "-n", f"{key}-{namespace}", "-o", "json",
                                check=False)
        supers = json.loads(out.stdout)["items"] if out.returncode == 0 else []
        uids = {p["metadata"].get("annotations", {}).get("tenancy.x-k8s.io/uid") for p in supers}
        return {p["metadata"]["uid"] for p in tenant} <= uids

    await wait_for(synced, timeout=timeout, what=f"{pods} tenant pods Running and synced into {key}-{namespace}")


@contextlib.asynccontextmanager
async def running_for_run(
    sc: SuperCluster, tmp: Path, run: str, *, env: dict[str, str] | None = None,
) -> AsyncIterator[Appliance]:
    """`running` for the VirtualClusters labelled `e2e=<run>`; afterwards the processes it keeps by
    design (the shared etcd, tenant control planes) are stopped too."""
    data_dir = tmp / "data"
    try:
        async with running(sc, tmp, extra=f'tenant-selector = "e2e={run}"\n', data_dir=data_dir, env=env) as app:
            yield app
    finally:
        for d in {p.parent for p in data_dir.rglob("*.pid")}:
            process.kill_leftovers(d)
