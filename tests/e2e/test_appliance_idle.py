"""An idle appliance writes nothing to the super cluster (issue 17: idle writes, the appliance's own exactly 0).

The real `vc-appliance` process runs one process-mode tenant. Once the tenant is Running,
registered with the syncer, its queues are empty and a patrol scan has run since, the
observation window starts: a condition wait for the appliance's write counter
(`vc_super_requests_total` by method) to move, with a deadline that spans several patrol,
syncer-health and manager-health periods (shortened by the config). The deadline passing is
the pass.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import trio

from appliance.controlplane import process
from tests.e2e.appliance_proc import Appliance, running
from tests.testbed import SuperCluster, run_kubectl, tenancy_manifests, wait_for

#: seconds between patrol scans and between syncer health probes, in this test's config
PERIOD = 4.0
#: the window covers three of each period (and many manager health rounds, every 2 s)
WINDOW = 3 * PERIOD + 3.0
WRITES = ("POST", "PUT", "PATCH", "DELETE")




def _samples(text: str, name: str) -> dict[str, float]:
    """`labels → value` of metric `name` in a Prometheus exposition."""
    found = re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, flags=re.MULTILINE)
    return {labels: float(value) for labels, value in found}


def _writes(text: str) -> dict[str, float]:
    return {k: v for k, v in _samples(text, "vc_super_requests_total").items()
            if any(f'method="{m}"' in k for m in WRITES)}


async def test_idle_appliance_makes_no_writes_to_the_super_cluster(tmp_path: Path, super_cluster: SuperCluster) -> None:
    """With one Running process-mode tenant and nothing changing, the appliance writes nothing."""
    sc, run = super_cluster, uuid.uuid4().hex[:8]
    ns, cv = f"e2e-idle-{run}", f"cv-e2e-idle-{run}"
    extra = (f'tenant-selector = "e2e={run}"\n'
             f"syncer.patrol-period = {PERIOD}\nsyncer.health-period = {PERIOD}\n")
    data_dir = tmp_path / "data"
    try:
        with trio.fail_after(300):
            async with running(sc, tmp_path, extra=extra, data_dir=data_dir) as app:
                await _idle(sc, app, run=run, ns=ns, cv=cv)
                # Deleted while the appliance runs, so its finalizer releases the tenant's
                # ServiceCIDR in the super cluster too (later tests share that cluster).
                await run_kubectl(sc.kubectl, sc.kubeconfig, "delete", "vc", "quiet", "-n", ns, "--timeout=120s")
    finally:
        for d in {p.parent for p in data_dir.rglob("*.pid")}:
            process.kill_leftovers(d)
        await run_kubectl(sc.kubectl, sc.kubeconfig, "delete", "namespace", ns, "--wait=false", check=False)
        await run_kubectl(sc.kubectl, sc.kubeconfig, "delete", "clusterversion", cv, "--wait=false", check=False)


async def _idle(sc: SuperCluster, app: Appliance, *, run: str, ns: str, cv: str) -> None:
    kubectl = sc.kubectl
    await run_kubectl(kubectl, sc.kubeconfig, "create", "namespace", ns)
    await run_kubectl(kubectl, sc.kubeconfig, "apply", "-f", "-", stdin=tenancy_manifests(
        cv=cv, name="quiet", namespace=ns, labels={"e2e": run}, pki_expire_days=None))

    async def running_and_healthy() -> bool:
        out = await run_kubectl(kubectl, sc.kubeconfig, "get", "vc", "quiet", "-n", ns, "-o", "json")
        status = json.loads(out.stdout).get("status", {})
        assert status.get("phase") != "Error", status
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return status.get("phase") == "Running" and conditions.get("ControlPlaneHealthy") == "True"

    await wait_for(running_and_healthy, timeout=180, what="VirtualCluster Running and healthy")

    async def scans() -> float:
        return sum(_samples((await app.get("/metrics")).text, "syncer_checker_scan_duration_seconds_count").values())

    async def registered_and_quiet() -> float | None:
        text = (await app.get("/metrics")).text
        registered = _samples(text, "syncer_tenants").get("", 0.0) == 1.0
        quiet = not any(_samples(text, "syncer_queue_length").values())
        return await scans() if registered and quiet else None

    # a patrol scan that starts after the tenant is registered and its queues are empty has
    # seen every object the syncer would repair: from then on nothing is left to write
    base = await wait_for(registered_and_quiet, timeout=60, what="the tenant registered with empty queues")

    async def scanned_since() -> bool:
        return await scans() > base

    await wait_for(scanned_since, timeout=4 * PERIOD, what="a patrol scan after registration")

    before = _writes((await app.get("/metrics")).text)

    async def wrote() -> dict[str, float] | None:
        now = _writes((await app.get("/metrics")).text)
        return now if now != before else None

    with trio.move_on_after(WINDOW) as window:  # the observation window: a condition wait with a deadline
        after = await wait_for(wrote, timeout=WINDOW + 10, what="a write", interval=0.5)
    assert window.cancelled_caught, f"the idle appliance wrote to the super cluster: {before} -> {after}"
