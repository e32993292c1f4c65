"""The fault suite's own test bed and its summary table.

Faults here are destructive (the super apiserver is restarted, etcd is compacted, tenant
apiservers are stopped), so the suite never touches the session super cluster: `fault_bed`
is a private one (etcd, kube-apiserver, KCM, scheduler, 3 kwok nodes) in its own process,
started once for this package and stopped afterwards, with every leftover child killed.
`VC_FAULT_BED_STATE=<dir>` reuses a private bed already running there (fast local loops;
it must be one nobody else uses).

Each test records what it did through the `fault_log` fixture; `pytest_terminal_summary`
prints the records as one table at the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.controlplane import build
from tests.conftest import local_cluster
from tests.faults.report import FaultLog, summary_lines
from tests.testbed import SuperCluster


@pytest.fixture(scope="package")
def fault_bed(testbed_bins: build.Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperCluster]:
    """A private super cluster for destructive faults (see the module docstring)."""
    reuse = os.environ.get("VC_FAULT_BED_STATE")
    state = Path("/nonexistent") if reuse else tmp_path_factory.mktemp("faultbed")
    yield from local_cluster(testbed_bins, state, reuse=reuse)


_RECORDS = pytest.StashKey[list[FaultLog]]()


@pytest.fixture
def fault_log(request: pytest.FixtureRequest) -> FaultLog:
    """Where a test records its faults, checked objects and convergence times."""
    log = FaultLog(test=request.node.name)
    request.config.stash.setdefault(_RECORDS, []).append(log)
    return log


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    records: list[FaultLog] = config.stash.get(_RECORDS, [])
    lines = summary_lines(records)
    if lines:
        terminalreporter.section("fault injection summary")
        for line in lines:
            terminalreporter.write_line(line)
