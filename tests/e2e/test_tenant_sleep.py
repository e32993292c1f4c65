"""Sleep and wake of a process-mode tenant through the real `vc-appliance` process.

Asleep, its control-plane processes are gone while its Pods keep running in the super
cluster; the first kubectl request wakes it, the syncer picks up where it left, and an
annotation or an idle-time policy puts it to sleep again.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import trio

from tests.e2e.appliance_proc import WEB_DEPLOYMENT, Appliance, running_for_run, wait_web_synced
from tests.testbed import SuperCluster, run_kubectl, tenancy_manifests, wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text().lower()


async def test_tenant_sleeps_keeps_its_pods_and_wakes_on_request_annotation_and_idles_to_sleep(
    tmp_path: Path, super_cluster: SuperCluster,
) -> None:
    sc, run = super_cluster, uuid.uuid4().hex[:8]
    async with running_for_run(sc, tmp_path, run) as app:
        await _scenario(sc, app, tmp_path, run)


async def _scenario(sc: SuperCluster, app: Appliance, tmp_path: Path, run: str) -> None:
    kubectl, skc = sc.kubectl, sc.kubeconfig
    ns = f"e2e-sleep-{run}"
    await run_kubectl(kubectl, skc, "create", "namespace", ns)
    await run_kubectl(kubectl, skc, "apply", "-f", "-", stdin=tenancy_manifests(
        cv=f"cv-sleep-{run}", name="nap", namespace=ns, labels={"e2e": run}))

    async def vc() -> dict[str, Any]:
        out = await run_kubectl(kubectl, skc, "get", "vc", "nap", "-n", ns, "-o", "json")
        found: dict[str, Any] = json.loads(out.stdout)
        return found

    def sleeping(obj: dict[str, Any]) -> dict[str, Any] | None:
        return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Sleeping"), None)

    async def condition(status: str, reason: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            c = sleeping(await vc())
            return c if c is not None and (c["status"], c["reason"]) == (status, reason) else None

        return await wait_for(check, timeout=120, what=f"Sleeping={status} ({reason})")  # type: ignore[return-value]

    async def running_key() -> str | None:
        status = (await vc()).get("status", {})
        return status.get("clusterNamespace") if status.get("phase") == "Running" else None

    key = str(await wait_for(running_key, timeout=180, what="the VirtualCluster Running"))
    rc, out, err = await app.cli("kubeconfig", f"{ns}/nap")
    assert rc == 0, err
    tkc = tmp_path / "nap.kubeconfig"
    tkc.write_text(out)
    await run_kubectl(kubectl, tkc, "apply", "-f", "-", stdin=WEB_DEPLOYMENT)
    await wait_web_synced(sc, tkc, key, pods=1)
    super_pods = await _super_pods(sc, key)
    logs = app.data_dir / "tenants" / key / "logs"
    pids = {p.stem: int(p.read_text().split()[0]) for p in logs.glob("*.pid")}
    assert set(pids) == {"kube-apiserver", "kube-controller-manager"}

    # Asleep on request: the processes are gone, the Pods stay (same UIDs), the data stays.
    await run_kubectl(kubectl, skc, "annotate", "vc", "nap", "-n", ns, "tenancy.x-k8s.io/sleep=true")
    cond = await condition("True", "Asleep")
    assert "wakes it" in cond["message"]
    async def stopped() -> bool:  # the condition comes first (the syncer lets go), then they stop
        return not any(_alive(pid) for pid in pids.values())

    await wait_for(stopped, timeout=30, what="the sleeping tenant's processes to exit")
    assert await _super_pods(sc, key) == super_pods, "its Pods keep running in the super cluster"

    # The first request wakes it (kubectl may time out once while it starts, then gets the answer).
    async def answered() -> str | None:
        out = await run_kubectl(kubectl, tkc, "get", "deployment", "web", "-o", "name", check=False)
        return out.stdout.strip() if out.returncode == 0 else None

    assert await wait_for(answered, timeout=90, what="the woken tenant to answer") == "deployment.apps/web"
    cond = await condition("False", "WokenByRequest")
    assert "woken by a connection from 127.0.0.1" in cond["message"]
    assert (await vc())["metadata"]["annotations"]["tenancy.x-k8s.io/sleep"] == "false"
    # The syncer serves it again: new Pods are copied down and report Running.
    await run_kubectl(kubectl, tkc, "scale", "deployment", "web", "--replicas=2")
    await wait_web_synced(sc, tkc, key, pods=2)

    # Asleep, then woken by the annotation alone (no request meanwhile).
    await run_kubectl(kubectl, skc, "annotate", "vc", "nap", "-n", ns, "--overwrite", "tenancy.x-k8s.io/sleep=true")
    await condition("True", "Asleep")
    await run_kubectl(kubectl, skc, "annotate", "vc", "nap", "-n", ns, "--overwrite", "tenancy.x-k8s.io/sleep=false")
    await condition("False", "WakeRequested")

    # Idle policy: used, it stays awake past the idle time; with nobody but the appliance and its
    # own controllers talking to it, it sleeps.
    await run_kubectl(kubectl, skc, "annotate", "vc", "nap", "-n", ns, "tenancy.x-k8s.io/sleep-after=30s")
    busy_until = trio.current_time() + 45
    while trio.current_time() < busy_until:  # a user's request every few seconds for 1.5x the idle time
        await run_kubectl(kubectl, tkc, "get", "configmaps", check=False)  # may fail while it rolls
        cond = sleeping(await vc())  # still the explicit wake-up: it never slept (nor woke) meanwhile
        assert cond is not None and cond["reason"] == "WakeRequested", f"fell asleep while in use: {cond}"
        await trio.sleep(3)
    cond = await condition("True", "Idle")
    assert "no request for" in cond["message"]
    assert len(await _super_pods(sc, key)) == 2
    events = await run_kubectl(kubectl, skc, "get", "events", "-n", ns, "--field-selector",
                               "involvedObject.name=nap", "-o", "jsonpath={.items[*].reason}")
    assert {"Asleep", "WokenByRequest", "WakeRequested", "Idle"} <= set(events.stdout.split())


async def _super_pods(sc: SuperCluster, key: str) -> set[str]:
    out = await run_kubectl(sc.kubectl, sc.kubeconfig, "get", "pods", "-n", f"{key}-default", "-o", "json")
    return {p["metadata"]["uid"] for p in json.loads(out.stdout)["items"] if p.get("status", {}).get("phase") == "Running"}

