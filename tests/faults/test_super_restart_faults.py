"""The super cluster's own processes failing under the real appliance, on the private bed.

* The super kube-apiserver crashes (SIGKILL; the bed's supervisor starts it again on the
  same port) while Pods of two tenants are being synced. (Not SIGTERM: a kube-apiserver
  asked to stop stops listening at once but keeps serving open watches until its HTTP
  server's 60 s shutdown deadline, so a graceful restart costs a minute of the budget.)
* etcd compaction forcing 410 on every watch: the super apiserver and both tenant apiservers
  are frozen (SIGSTOP); behind their backs one tenant Pod and one super Pod are deleted
  straight from etcd and everything up to the head revision is compacted away; then the
  frozen apiservers are SIGKILLed and restarted by their supervisors. Every watch of the
  appliance resumes from a compacted resourceVersion and gets 410, so the changes are only
  visible through relists. The tenant Pod deleted in etcd must lose its super copy (no
  orphan), and the tenant Pod whose super Pod vanished must go too (it no longer runs).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

import pytest
import trio

from appliance.syncer.resources import all_kinds
from appliance.util import naming
from tests.faults import bed
from tests.faults.convergence import wait_converged
from tests.faults.report import FaultLog
from tests.testbed import SuperCluster, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

DEADLINE = 360.0
CONVERGE = 180.0
SUPER_APISERVER = "super-kube-apiserver"


async def test_super_apiserver_restart_mid_sync_converges(
    fault_bed: SuperCluster, nursery: trio.Nursery, tmp_path: Path, fault_log: FaultLog,
) -> None:
    """A crash and restart of the super kube-apiserver while 300 Pods are being synced loses nothing."""
    with trio.fail_after(DEADLINE):
        async with bed.open_run(fault_bed, nursery, tmp_path) as (run, app):
            async with trio.open_nursery() as load:
                load.start_soon(bed.create_in_all, run, "p", 150)

                async def started() -> bool:
                    return await bed.super_pod_count(run.superc, run.keys) >= 60

                await wait_for(started, timeout=120, what="60 super pods", interval=0.5)
                old = bed.bed_pid(fault_bed, SUPER_APISERVER)
                assert old is not None
                os.kill(old, signal.SIGKILL)  # a crash; SIGTERM: see the module docstring

                async def replaced() -> bool:
                    return bed.bed_pid(fault_bed, SUPER_APISERVER) not in (None, old)

                await wait_for(replaced, timeout=60, what="a new super apiserver process")
                await bed.wait_apiserver_ready(fault_bed.url, fault_bed.pki_dir)
                back = trio.current_time()
            _, result = await wait_converged(run.superc, run.views(), timeout=CONVERGE)
            converge_s = trio.current_time() - back
            assert app.proc.returncode is None
    fault_log.record("super kube-apiserver crash+restart mid-sync (300 pods)", injected=1, objects=result.objects,
                     converge_s=converge_s, note="converged = apiserver ready again to clean")


async def test_compaction_forces_410_on_every_watch_and_relists_converge(
    fault_bed: SuperCluster, nursery: trio.Nursery, tmp_path: Path, fault_log: FaultLog,
) -> None:
    """After compaction every appliance watch gets 410 and relists; changes hidden behind the
    compaction (a tenant Pod and a super Pod deleted in etcd) are still carried out."""
    with trio.fail_after(DEADLINE):
        async with bed.open_run(fault_bed, nursery, tmp_path) as (run, app):
            await bed.create_in_all(run, "base", 40)
            await wait_converged(run.superc, run.views(), timeout=CONVERGE)
            frozen = [bed.bed_pid(fault_bed, SUPER_APISERVER), *(t.apiserver.pid for t in run.tenants)]
            assert all(frozen), frozen
            for pid in frozen:
                os.kill(pid or 0, signal.SIGSTOP)
            try:
                # Tenant a's Pod base-000 vanishes; tenant b's Pod base-001 loses its super Pod.
                await bed.etcd_delete(fault_bed, f"{run.tenants[0].prefix}/pods/{bed.NS}/base-000")
                await bed.etcd_delete(fault_bed, f"/registry/pods/{naming.super_namespace(run.keys[1], bed.NS)}/base-001")
                revision = await bed.etcd_compact_all(fault_bed)
            finally:
                for pid in frozen:
                    os.kill(pid or 0, signal.SIGKILL)
            del run.made[0][(bed.NS, "base-000")]
            del run.made[1][(bed.NS, "base-001")]
            await bed.wait_apiserver_ready(fault_bed.url, fault_bed.pki_dir)
            for t in run.tenants:
                assert t.cp is not None
                await bed.wait_apiserver_ready(t.cp.url, t.cp.pki_dir)
            back = trio.current_time()
            await bed.create_in_all(run, "after", 20)
            _, result = await wait_converged(run.superc, run.views(), timeout=CONVERGE)
            converge_s = trio.current_time() - back
            kinds = [k.name for k in all_kinds()]
            want = {f"super/{k}" for k in kinds} | {"super/nodes", "super/virtualclusters", "manager/clusterversions"}
            want |= {f"{key}/{k}" for key in run.keys for k in [*kinds, "node"]}

            async def all_relisted() -> bool:
                # an informer whose reconnect met the restarting apiserver's 503/429 is still in
                # its backoff when the objects have converged; it relists on its next attempt
                return want <= _relisted(app.log).keys()

            with contextlib.suppress(AssertionError):
                await wait_for(all_relisted, timeout=60, what="every informer relisting after 410")
            relisted = _relisted(app.log)
    assert want <= relisted.keys(), sorted(want - relisted.keys())
    fault_log.record(
        "etcd compaction + apiserver restarts: 410 on every watch", injected=sum(relisted.values()),
        objects=result.objects, converge_s=converge_s,
        note=f"compacted at revision {revision}; {len(relisted)} informers relisted; 2 pods deleted in etcd",
    )


_RELIST = re.compile(r"informer (\S+): resourceVersion \S+ expired; relisting")


def _relisted(log: Path) -> dict[str, int]:
    """How often each informer of the appliance relisted after a 410, from its log."""
    counts: dict[str, int] = {}
    for m in _RELIST.finditer(log.read_text(errors="replace")):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts
