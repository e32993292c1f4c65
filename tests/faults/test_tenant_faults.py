"""Tenant control planes failing under the real appliance: one tenant's faults stay its own.

* A tenant kube-apiserver (with its KCM) is stopped for 60 s. The other tenant keeps syncing
  meanwhile (its new Pods converge while the first is down); the stopped tenant is reported
  unhealthy on its VirtualCluster, and after its restart (same port, same data) it converges
  with nothing of its old state recreated or lost.
* A process-mode tenant's kube-apiserver, a child of the appliance, is SIGKILLed four times in
  a row (each new process as soon as it appears). The supervisor restarts it with growing
  backoff, the VirtualCluster's `ControlPlaneHealthy` condition and its Events say so, the
  other process-mode tenant keeps syncing and keeps its processes, and both converge.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.controlplane import process
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from tests.faults import bed
from tests.faults.convergence import TenantView, wait_converged
from tests.faults.report import FaultLog
from tests.testbed import SuperCluster, pid_alive, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

OUTAGE = 60.0  # seconds the tenant apiserver stays down (the figure)
HEALTH_PERIOD = 10  # the syncer's tenant health probe period here (default 60 s)
KILLS = 4
CONVERGE = 180.0


async def _vc_events(superc: ApiClient, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    events = (await superc.list(resources.EVENTS, namespace=ns, field_selector=f"involvedObject.name={name}")).items
    return [e for e in events if e.get("reason") == reason]


async def _super_pod_uids(superc: ApiClient, key: str) -> dict[str, str]:
    from appliance.util import naming

    pods = (await superc.list(resources.PODS, label_selector=f"{naming.LABEL_CLUSTER}={key}")).items
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}


async def test_tenant_apiserver_down_60s_others_keep_syncing_then_it_recovers(
    fault_bed: SuperCluster, nursery: trio.Nursery, tmp_path: Path, fault_log: FaultLog,
) -> None:
    """While tenant a's apiserver is stopped for 60 s, tenant b's new Pods sync; a is reported
    unhealthy, and after its restart it converges without any of its super Pods replaced."""
    with trio.fail_after(OUTAGE + 300):
        env = {"VCA_SYNCER_HEALTH_PERIOD": str(HEALTH_PERIOD)}
        async with bed.open_run(fault_bed, nursery, tmp_path, env=env) as (run, _):
            superc, ns, a = run.superc, f"f{run.run}", run.tenants[0]
            await bed.create_in_all(run, "before", 20)
            await wait_converged(superc, run.views(), timeout=CONVERGE)
            a_supers = await _super_pod_uids(superc, run.keys[0])

            await a.stop()
            down = trio.current_time()
            await bed.create_pods(run.clients[1], [f"during-{i:02d}" for i in range(30)], made=run.made[1])
            await wait_converged(superc, run.views()[1:], timeout=OUTAGE)
            b_converge = trio.current_time() - down

            async def unhealthy() -> bool:
                return bool(await _vc_events(superc, ns, "a", "ClusterUnHealth"))

            await wait_for(unhealthy, timeout=down + OUTAGE - trio.current_time(),
                           what="a ClusterUnHealth Event on VirtualCluster a", interval=1.0)
            assert trio.current_time() - down < OUTAGE, "all of that must happen during the outage"
            await trio.sleep(down + OUTAGE - trio.current_time())  # the rest of the outage
            await a.start(nursery)
            up = trio.current_time()
            await bed.create_pods(run.clients[0], [f"after-{i:02d}" for i in range(20)], made=run.made[0])
            _, result = await wait_converged(superc, run.views(), timeout=CONVERGE)
            converge_s = trio.current_time() - up
            after = await _super_pod_uids(superc, run.keys[0])
            assert {n: u for n, u in after.items() if n.startswith("before-")} == a_supers
            assert not await _vc_events(superc, ns, "b", "ClusterUnHealth")
    fault_log.record(
        f"tenant apiserver+KCM stopped {OUTAGE:.0f} s", injected=1, objects=result.objects, converge_s=converge_s,
        note=f"other tenant's 30 new pods converged {b_converge:.1f} s into the outage; "
             "converged = restart to clean; no super pod replaced",
    )


CV = {"apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "ClusterVersion", "spec": {}}


async def _process_vc(superc: ApiClient, ns: str, name: str, *, run: str, cv: str) -> None:
    await superc.create(resources.VIRTUALCLUSTERS, {
        "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": name, "namespace": ns, "labels": {bed.RUN_LABEL: run}},
        "spec": {"clusterDomain": "cluster.local", "clusterVersionName": cv, "pkiExpireDays": 30},
    }, namespace=ns)


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _pids(logs: Path) -> dict[str, int | None]:
    return {p.stem: _pid(p) for p in sorted(logs.glob("*.pid"))}


async def _crash_loop(pid_file: Path, kills: int) -> list[float]:
    """SIGKILL the process in `pid_file`, then each new one as soon as it appears; returns the
    seconds between each kill and the next process."""
    gaps = []
    for _ in range(kills):
        pid = _pid(pid_file)
        assert pid is not None and pid_alive(pid)
        os.kill(pid, signal.SIGKILL)
        killed = trio.current_time()

        async def respawned(old: int = pid) -> bool:
            new = _pid(pid_file)
            return new is not None and new != old and pid_alive(new)

        await wait_for(respawned, timeout=60, what="the supervisor to start a new kube-apiserver", interval=0.05)
        gaps.append(trio.current_time() - killed)
    return gaps


async def test_tenant_child_process_crash_loop_backs_off_and_is_reported(
    fault_bed: SuperCluster, tmp_path: Path, fault_log: FaultLog,
) -> None:
    """Four crashes of a process-mode tenant apiserver: restarted with growing backoff, shown in
    status and Events; the other tenant syncs on, untouched; both converge."""
    run = bed.new_run()
    ns, cv = f"f{run}", f"cv-faults-{run}"
    data_dir = tmp_path / "data"
    try:
        with trio.fail_after(420):
            async with bed.open_clients(fault_bed.kubeconfig) as (superc,):
                keys: list[str] = []
                try:
                    async with bed.appliance(fault_bed, tmp_path, run=run, data_dir=data_dir) as app:
                        await superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
                        with contextlib.suppress(errors.AlreadyExists):
                            await superc.create(resources.CLUSTERVERSIONS, {**CV, "metadata": {"name": cv}})
                        for name in ("crashy", "steady"):
                            await _process_vc(superc, ns, name, run=run, cv=cv)
                        keys = [await bed.wait_vc_running(superc, ns, name, timeout=240) for name in ("crashy", "steady")]
                        await _crash_loop_and_converge(superc, fault_log, app.log, data_dir, ns, keys)
                finally:
                    await bed.forget_namespaces(superc, keys)
    finally:  # process-mode tenants (and their etcd) outlive the appliance by design
        for d in {p.parent for p in data_dir.rglob("*.pid")}:
            process.kill_leftovers(d)


async def _crash_loop_and_converge(
    superc: ApiClient, fault_log: FaultLog, app_log: Path, data_dir: Path, ns: str, keys: list[str],
) -> None:
    kubeconfigs = []
    for key in keys:
        secret = await superc.get(resources.SECRETS, "admin-kubeconfig", namespace=key)
        path = data_dir.parent / f"{key}.kubeconfig"
        path.write_bytes(base64.b64decode(secret["data"]["admin-kubeconfig"]))
        kubeconfigs.append(path)
    async with bed.open_clients(*kubeconfigs) as clients:
        made: list[dict[tuple[str, str], str]] = [{}, {}]
        views = [TenantView(key, c, m) for key, c, m in zip(keys, clients, made, strict=True)]
        for v, m in zip(views, made, strict=True):
            await bed.tenant_namespace(v.client)
            await bed.create_pods(v.client, [f"before-{i}" for i in range(5)], made=m)
        await wait_converged(superc, views, timeout=CONVERGE)
        crashy, steady = (data_dir / "tenants" / key / "logs" for key in keys)
        steady_pids = _pids(steady)

        loop_started = trio.current_time()
        async with trio.open_nursery() as both:
            gaps: list[float] = []

            async def crash() -> None:
                gaps.extend(await _crash_loop(crashy / "kube-apiserver.pid", KILLS))

            both.start_soon(crash)
            await bed.create_pods(views[1].client, [f"during-{i}" for i in range(10)], made=made[1])
            await wait_converged(superc, views[1:], timeout=CONVERGE)
            steady_s = trio.current_time() - loop_started
        loop_ended = trio.current_time()
        await bed.wait_apiserver_ready(_server(kubeconfigs[0]), crashy.parent / "pki")
        await bed.create_pods(views[0].client, [f"after-{i}" for i in range(5)], made=made[0])
        _, result = await wait_converged(superc, views, timeout=CONVERGE)
        converge_s = trio.current_time() - loop_ended
        assert _pids(steady) == steady_pids, "the other tenant's processes must not be restarted"

        async def reported() -> dict[str, Any] | None:
            vc = await superc.get(resources.VIRTUALCLUSTERS, "crashy", namespace=ns)
            conds = {c["type"]: c for c in (vc.get("status") or {}).get("conditions") or ()}
            healthy = conds.get("ControlPlaneHealthy") or {}
            ok = healthy.get("reason") == "ProcessRestarted" and f"kube-apiserver restarted {KILLS} time(s)" in healthy.get("message", "")
            return vc if ok else None

        vc = await wait_for(reported, timeout=30, what="ControlPlaneHealthy reporting the restarts")
        assert vc["status"]["phase"] == "Running"  # type: ignore[index]
        events = await _vc_events(superc, ns, "crashy", "ProcessRestarted")
        assert events and any(f"(restart {KILLS})" in e["message"] for e in events), [e["message"] for e in events]
        assert not await _vc_events(superc, ns, "steady", "ProcessRestarted")
        delays = _restart_delays(app_log, f"{keys[0]}/kube-apiserver")
        assert delays == [0.5 * 2**i for i in range(KILLS)], delays
    fault_log.record(
        f"process-mode tenant apiserver SIGKILLed {KILLS}x", injected=KILLS, objects=result.objects,
        converge_s=converge_s,
        note=f"restart backoff {delays} s (kill→new pid {', '.join(f'{g:.1f}' for g in gaps)} s); "
             f"other tenant's 10 new pods converged {steady_s:.1f} s into the loop; converged = loop end to clean",
    )


def _restart_delays(log: Path, name: str) -> list[float]:
    """The backoff delays the process supervisor announced for `name`, from the appliance log."""
    pattern = rf"process {re.escape(name)} exited with \S+; restarting in ([0-9.]+) s"
    return [float(d) for d in re.findall(pattern, log.read_text(errors="replace"))]


def _server(kubeconfig: Path) -> str:
    import yaml

    return str(yaml.safe_load(kubeconfig.read_bytes())["clusters"][0]["cluster"]["server"])
