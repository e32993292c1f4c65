"""Shared fixtures: the real test bed (built from the Go module proxy) and helpers.

The super cluster is session-scoped. pytest-trio fixtures live inside one test's
`trio.run`, so the session cluster runs in its own process
(`python -m appliance.controlplane.localcluster`), which owns its children and stops
them on SIGTERM; this file only starts it, waits for its `cluster.json`, and stops it.
Set `VC_TESTBED_STATE=<dir>` to reuse a cluster already running there (fast local loops).
Tenant apiservers are function-scoped and run in the test's own nursery.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from appliance.controlplane import build, cluster, process
from tests.tally import TALLY, Tally
from tests.testbed import SuperCluster, TenantFactory, stop_process

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        if "realnode" in parts:
            item.add_marker(pytest.mark.realnode)
        if "container" in parts:
            item.add_marker(pytest.mark.container)


@pytest.fixture(scope="session")
def testbed_bins() -> build.Binaries:
    """The Kubernetes binaries, built once into the user's cache."""
    return build.ensure_binaries()


def _wait_for_state(state: Path, proc: subprocess.Popen[bytes] | None, log: Path) -> dict[str, object]:
    deadline = time.monotonic() + 240
    state_file = state / "cluster.json"
    while time.monotonic() < deadline:
        if state_file.exists():
            return json.loads(state_file.read_text())
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"local cluster exited with {proc.returncode}:\n{tail}")
        time.sleep(0.2)  # the session cluster is another process: poll its state file
    raise RuntimeError(f"local cluster not ready within 240 s; see {log}")


def local_cluster(
    bins: build.Binaries, state: Path, *, reuse: str | None, args: tuple[str, ...] = ("--nodes", "3"),
    env: dict[str, str] | None = None,
) -> Iterator[SuperCluster]:
    """Start a local cluster process in `state` (or reuse one running in `reuse`); stop it after."""
    if reuse:
        yield SuperCluster(_wait_for_state(Path(reuse), None, Path(reuse) / "run.log"), bins)
        return
    log = state / "run.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.controlplane.localcluster",
             "--state-dir", str(state), *args],
            stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT,
            env=dict(os.environ, VC_TESTBIN_DIR=str(bins.bin_dir), **(env or {})),
        )
    try:
        yield SuperCluster(_wait_for_state(state, proc, log), bins)
    finally:
        stop_process(proc, timeout=60)
        process.kill_leftovers(state / "logs")


@pytest.fixture(scope="session")
def super_cluster(
    testbed_bins: build.Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SuperCluster]:
    """etcd + kube-apiserver + KCM + scheduler + kwok (3 nodes) on loopback."""
    reuse = os.environ.get("VC_TESTBED_STATE")
    state = Path("/nonexistent") if reuse else tmp_path_factory.mktemp("supercluster")
    yield from local_cluster(testbed_bins, state, reuse=reuse)


@pytest.fixture
async def tenant_factory(
    super_cluster: SuperCluster, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[TenantFactory]:
    """Start extra kube-apiservers (+ KCM) on the session etcd, each with its own prefix.

    They stop when the test ends (the `nursery` fixture is cancelled).
    """
    counter = 0

    async def make(name: str | None = None, **kwargs: object) -> cluster.ControlPlane:
        nonlocal counter
        counter += 1
        name = name or f"tenant{counter}"
        unique = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        return await cluster.start_control_plane(
            nursery, super_cluster.bins, name=name, etcd_url=super_cluster.etcd_url,
            state_dir=tmp_path / "tenants" / str(counter), etcd_prefix=f"/tenants/{unique}/registry",
            **kwargs,  # type: ignore[arg-type]
        )

    yield make




@pytest.fixture(scope="session")
def tally(pytestconfig: pytest.Config) -> Tally:
    """The security suite's counters (printed by `pytest_terminal_summary`)."""
    return pytestconfig.stash.setdefault(TALLY, Tally())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    tally_ = config.stash.get(TALLY, None)
    if tally_ is None or not tally_.rows:
        return
    terminalreporter.write_sep("=", "security suite summary")
    width = max(len(c) for c in tally_.rows)
    terminalreporter.write_line(f"{'category':<{width}}  {'tried':>6}  {'held':>6}")
    for category, (tried, held) in tally_.rows.items():
        terminalreporter.write_line(f"{category:<{width}}  {tried:>6}  {held:>6}")
