"""The super apiserver misbehaving towards the appliance, through the fault proxy.

The real appliance process reaches the bed's super apiserver only through `tests.faultproxy`
(its super kubeconfig names the proxy; kwok, the scheduler and the tests go direct). While
two tenants keep creating Pods, the proxy answers every appliance request with 429 (with
`Retry-After`), then 500, then cuts every connection (open watches included) and every new
request, then black-holes every new request (never answered: the client's own timeouts must
fire). Then it passes everything again, and both sides must converge to exactly the
expected objects.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.faultproxy import Fault, open_fault_proxy
from tests.faults import bed
from tests.faults.convergence import wait_converged
from tests.faults.report import FaultLog
from tests.testbed import SuperCluster

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

#: each fault and how long it lasts (seconds); Pods are created at the start of each
PHASES = ((Fault.TOO_MANY_REQUESTS, 10.0), (Fault.SERVER_ERROR, 10.0), (Fault.CUT, 10.0), (Fault.STALL, 10.0))
PODS_PER_PHASE = 25  # per tenant
DEADLINE = 360.0
CONVERGE = 180.0


async def test_super_429_500_cuts_and_stalls_then_converges(
    fault_bed: SuperCluster, nursery: trio.Nursery, tmp_path: Path, fault_log: FaultLog,
) -> None:
    """After 429s, 500s, cut connections and unanswered requests from the super side, every
    Pod created meanwhile is synced exactly once and Running on both sides."""
    with trio.fail_after(DEADLINE):
        proxy = await open_fault_proxy(nursery, upstream_url=fault_bed.url, pki_dir=fault_bed.pki_dir)
        via_proxy = proxy.kubeconfig(tmp_path / "proxy.kubeconfig")
        async with bed.open_run(fault_bed, nursery, tmp_path, super_kubeconfig=via_proxy) as (run, app):
            await bed.create_in_all(run, "warm", PODS_PER_PHASE)
            await wait_converged(run.superc, run.views(), timeout=CONVERGE)
            injected = {}
            for fault, seconds in PHASES:
                before = proxy.injected()
                proxy.inject(fault)
                await bed.create_in_all(run, fault.name.lower().replace("_", "-"), PODS_PER_PHASE)
                await trio.sleep(seconds)  # the fault's duration (the only timed wait)
                injected[fault] = proxy.injected() - before
            proxy.inject(Fault.PASS)
            converge_s, result = await wait_converged(run.superc, run.views(), timeout=CONVERGE)
            assert app.proc.returncode is None and await app.ready()
    assert all(injected.values()), injected
    fault_log.record(
        "super 429, 500, cut, stall via the proxy, 10 s each", injected=sum(injected.values()),
        objects=result.objects, converge_s=converge_s,
        note=", ".join(f"{f.value}: {n}" for f, n in injected.items())
        + f" requests; {len(PHASES) * PODS_PER_PHASE * 2} pods created meanwhile; converged = faults end to clean",
    )

