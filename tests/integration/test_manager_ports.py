"""A planned port taken by another program leads to a fresh port, not to endless retries
(issue 14, item 8).

Ports are chosen by bind-then-close and saved in the tenant's plan. Here the tenant's
apiserver dies while the manager is down (its other processes are kept) and a plain
listening socket takes its port; the next manager must move the tenant to a new port and
point the plan, the kubeconfigs, the secrets and the kept controller-manager at it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from appliance.kube import errors, resources
from appliance.kube.client import open_client
from appliance.manager import model
from tests.integration import manager_harness as common
from tests.integration.manager_harness import Harness
from tests.tally import Tally
from tests.testbed import SuperCluster, pid_alive, run_kubectl, wait_for


@pytest.fixture
async def harness(super_cluster: SuperCluster, nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Harness]:
    """The manager test harness (see manager_harness)."""
    async with common.open_harness(super_cluster, nursery, tmp_path) as h:
        yield h


@contextlib.contextmanager
def _squatter(port: int) -> Iterator[socket.socket]:
    """Another program's listening socket on `port` (SO_REUSEADDR: the old connections' TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        yield s


def _plan(h: Harness, key: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((h.data_dir / "tenants" / key / "plan.json").read_text())
    return loaded


def _pids(h: Harness, key: str) -> dict[str, int]:
    logs = h.data_dir / "tenants" / key / "logs"
    return {p.stem: int(p.read_text().split()[0]) for p in logs.glob("*.pid")}


@pytest.mark.security
async def test_taken_apiserver_port_moves_the_tenant_to_a_fresh_port(
    harness: Harness, tmp_path: Path, tally: Tally,
) -> None:
    """After its apiserver port was taken while the manager was down, the tenant runs on a new
    port, its admin kubeconfig works there, and its kept controller-manager follows."""
    h = harness
    await h.start_manager(keep_control_planes=True)
    cv = await h.create_cv(provisioner="process")
    await h.create_vc("movable", cv=cv)
    vc = await h.wait_phase("movable", model.RUNNING, within=90)
    key = vc["status"]["clusterNamespace"]
    old = _plan(h, key)["port"]
    assert isinstance(old, int)
    pids = _pids(h, key)
    await h.stop_manager()

    os.kill(pids["kube-apiserver"], signal.SIGKILL)

    async def apiserver_gone() -> bool:
        return not pid_alive(pids["kube-apiserver"])

    await wait_for(apiserver_gone, timeout=30, what="the killed apiserver is gone")
    with _squatter(old):
        await h.start_manager(keep_control_planes=True)

        async def moved() -> object:
            port = _plan(h, key)["port"]
            return port if port != old else None

        try:
            new = await wait_for(moved, timeout=120, what="the tenant's plan names a fresh apiserver port")
        except AssertionError as exc:
            status = (await h.get_vc("movable") or {}).get("status")
            raise AssertionError(f"{exc}; VirtualCluster status: {status}") from None
        data, credentials = await h.admin_client("movable")
        assert credentials.server.endswith(f":{new}")
        kubeconfig = tmp_path / "movable.kubeconfig"
        kubeconfig.write_bytes(data)

        async def serves() -> bool:
            out = await run_kubectl(h.sc.kubectl, kubeconfig, "get", "namespaces", check=False)
            return out.returncode == 0 and "kube-system" in out.stdout

        await wait_for(serves, timeout=60, what="kubectl get namespaces through the admin kubeconfig")
        # The kept KCM still named the old address: it is replaced, and reaches the new one.
        async with open_client(credentials) as client:
            await client.create(resources.NAMESPACES, {"metadata": {"name": "after-move"}})

            async def has_account() -> bool:
                try:
                    return bool(await client.get(resources.SERVICEACCOUNTS, "default", namespace="after-move"))
                except errors.NotFound:
                    return False

            await wait_for(has_account, timeout=60, what="the tenant KCM creates after-move/default")
        assert _pids(h, key)["kube-controller-manager"] != pids["kube-controller-manager"]
        assert not pid_alive(pids["kube-controller-manager"])
        events = await h.events("movable")
        assert any(e["reason"] == "PortReassigned" and f"port {old} " in e["message"]
                   and f"port {new} " in e["message"] for e in events), [e["message"] for e in events]
        vc = await h.get_vc("movable")
        assert vc is not None and vc["status"]["phase"] == model.RUNNING
        tally.add("ports: a planned port taken by another program (tenant moved, Running)", tried=1, held=1)
