"""Run the real `vc-appliance` process for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from appliance.controlplane.cluster import free_port
from tests.testbed import SuperCluster, wait_for


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
