"""Tenant Pods run as real containers on the real node, and the tenant sees what they do.

Each test creates Pods in a process-mode tenant of the real `vc-appliance` and checks, from
inside the container or with the tenant's kubectl, what a user would check.
"""

from __future__ import annotations

import json
import uuid

from tests.realnode import nodebed
from tests.testbed import wait_for


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_a_tenant_pod_is_a_real_container_on_the_real_node(appliance_super: nodebed.NodeEnv) -> None:
    """The container runs its own process as PID 1 with the Pod's hostname; its output is
    the tenant's `kubectl logs`; the super copy runs on the real node, not a virtual one."""
    env, t = appliance_super, appliance_super.tenant()
    name = _name("hello")
    await nodebed.apply(env, t, nodebed.pod(name, command=["sh", "-c", "echo host=$(hostname); "
                                                           "echo pid1=$(cat /proc/1/comm); sleep 3600"]))
    tenant_pod = await nodebed.wait_running(env, t, name)
    assert tenant_pod["status"].get("podIP", "").startswith("10.88.")

    async def logged() -> str | None:
        out = (await env.kubectl_in(t, "logs", name)).stdout
        return out if "pid1=" in out else None

    out = str(await wait_for(logged, timeout=30, what="the container's first lines"))
    assert f"host={name}" in out
    assert "pid1=sh" in out
    supers = json.loads((await env.kubectl_super("get", "pods", "-A", "-o", "json",
                                                 "--field-selector", f"metadata.name={name}")).stdout)["items"]
    assert [p["spec"]["nodeName"] for p in supers] == [env.bed.real_node["name"]]
    assert supers[0]["metadata"]["namespace"].endswith("-default")
    assert supers[0]["metadata"]["namespace"] != "default"


async def test_limits_are_applied_and_a_failing_liveness_probe_restarts_the_container(
    appliance_super: nodebed.NodeEnv,
) -> None:
    """A memory limit is the container's cgroup limit; a liveness probe that starts failing
    restarts the container, and the tenant sees `restartCount` grow."""
    env, t = appliance_super, appliance_super.tenant()
    name = _name("probe")
    # Healthy for the first start only: the marker lives in an emptyDir that outlives restarts.
    script = ("if [ ! -e /state/started ]; then touch /state/started /tmp/healthy; fi; "
              "echo started; sleep 3; rm -f /tmp/healthy; sleep 3600")
    body = nodebed.pod(name, command=["sh", "-c", script], container={
        "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
        "livenessProbe": {"exec": {"command": ["test", "-e", "/tmp/healthy"]},
                          "periodSeconds": 1, "failureThreshold": 2, "initialDelaySeconds": 1},
        "volumeMounts": [{"name": "state", "mountPath": "/state"}],
    }, volumes=[{"name": "state", "emptyDir": {}}])
    await nodebed.apply(env, t, body)
    await nodebed.wait_running(env, t, name)
    limit = await nodebed.exec_in(env, t, name, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert int(limit.stdout.strip()) == 64 * 1024 * 1024
    quota = await nodebed.exec_in(env, t, name, "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    assert int(quota.stdout.strip()) == 25000

    async def restarted() -> int | None:
        p = await nodebed.get_json(env, t, "pod", name)
        count = max((c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or ()), default=0)
        return count if count >= 1 else None

    await wait_for(restarted, timeout=90, what=f"tenant pod {name} restartCount >= 1", interval=1)
    events = (await env.kubectl_in(t, "get", "events", "--field-selector",
                                   f"involvedObject.name={name}", "-o", "json")).stdout
    reasons = {e.get("reason") for e in json.loads(events)["items"]}
    assert reasons, "the tenant saw no Events of its Pod"


async def test_a_completed_pod_reports_its_exit_code(appliance_super: nodebed.NodeEnv) -> None:
    """A container that exits non-zero makes the tenant Pod Failed with that exit code."""
    env, t = appliance_super, appliance_super.tenant()
    name = _name("exit")
    await nodebed.apply(env, t, nodebed.pod(name, command=["sh", "-c", "echo bye; exit 7"], restartPolicy="Never"))

    async def failed() -> dict | None:
        p = await nodebed.get_json(env, t, "pod", name)
        return p if p.get("status", {}).get("phase") == "Failed" else None

    p = await wait_for(failed, timeout=90, what=f"tenant pod {name} Failed", interval=0.5)
    (state,) = [c["state"] for c in p["status"]["containerStatuses"]]  # type: ignore[index]
    assert state["terminated"]["exitCode"] == 7
