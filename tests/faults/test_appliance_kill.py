"""SIGKILL of the real appliance process in the middle of a 1,000-Pod sync, then a restart.

Two imported tenants get 500 Pods each, created as fast as their apiservers take them. Once a
third of them have super copies the appliance is SIGKILLed (no graceful stop, no chance to
finish a write); the rest of the Pods are created while it is dead. A new appliance process
on the same data directory must bring both sides to exactly the expected objects: every Pod
Running on the same node in tenant and super, no Pod lost, duplicated or orphaned.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.faults import bed
from tests.faults.convergence import wait_converged
from tests.faults.report import FaultLog
from tests.testbed import SuperCluster, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

PODS_PER_TENANT = 500
KILL_AT = 300  # super copies made before the SIGKILL
DEADLINE = 420.0  # the whole test, trio clock
CONVERGE = 240.0  # restart → full comparison clean


async def test_sigkill_during_a_1000_pod_sync_then_restart_converges(
    fault_bed: SuperCluster, nursery: trio.Nursery, tmp_path: Path, fault_log: FaultLog,
) -> None:
    """A SIGKILLed appliance restarted on its data dir converges: 1,000 Pods exactly once, all Running."""
    with trio.fail_after(DEADLINE):
        async with bed.open_run(fault_bed, nursery, tmp_path) as (run, app):
            started = trio.current_time()
            async with trio.open_nursery() as load:
                load.start_soon(bed.create_in_all, run, "p", PODS_PER_TENANT)

                async def enough() -> int | None:
                    n = await bed.super_pod_count(run.superc, run.keys)
                    return n if n >= KILL_AT else None

                synced = await wait_for(enough, timeout=180, what=f"{KILL_AT} super pods", interval=0.5)
                app.proc.kill()
                await app.proc.wait()
                killed_after = trio.current_time() - started
            assert sum(len(m) for m in run.made) == 2 * PODS_PER_TENANT
            at_kill = await bed.super_pod_count(run.superc, run.keys)
            restarted = trio.current_time()
            async with bed.appliance(fault_bed, tmp_path, run=run.run, data_dir=app.data_dir):
                _, result = await wait_converged(run.superc, run.views(), timeout=CONVERGE)
                converge_s = trio.current_time() - restarted
    fault_log.record(
        "SIGKILL appliance mid-sync (1,000 pods, 2 tenants)", injected=1, objects=result.objects,
        converge_s=converge_s,
        note=f"killed {killed_after:.0f} s into the load with {synced}-{at_kill} super pods; "
             "converged = process start to clean",
    )
