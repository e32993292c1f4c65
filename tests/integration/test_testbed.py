"""The test bed itself: real upstream components, driven by the real kubectl."""

from __future__ import annotations

import json
import uuid

from tests.testbed import (
    SuperCluster,
    TenantFactory,
    append_pod_log,
    assert_logs_follow,
    run_kubectl,
    wait_for,
)

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
spec:
  containers:
  - name: main
    image: busybox
"""


async def _running_pod(sc: SuperCluster, name: str) -> dict:
    await run_kubectl(sc.kubectl, sc.kubeconfig, "apply", "-f", "-",
                      stdin=POD.format(name=name).encode())

    async def running() -> dict | None:
        out = await run_kubectl(sc.kubectl, sc.kubeconfig, "get", "pod", name, "-o", "json")
        pod = json.loads(out.stdout)
        return pod if pod.get("status", {}).get("phase") == "Running" else None

    return await wait_for(running, timeout=60, what=f"pod {name} Running")  # type: ignore[return-value]


async def test_pod_is_scheduled_onto_a_kwok_node_and_runs(super_cluster: SuperCluster) -> None:
    """The super scheduler binds a Pod to a kwok node and kwok reports it Running."""
    pod = await _running_pod(super_cluster, f"sched-{uuid.uuid4().hex[:6]}")
    assert pod["spec"]["nodeName"] in super_cluster.nodes
    assert pod["status"]["podIP"]


async def test_kubectl_logs_and_follow_reach_kwok(super_cluster: SuperCluster) -> None:
    """`kubectl logs` returns the node's log, and `logs -f` streams lines written later."""
    name = f"logs-{uuid.uuid4().hex[:6]}"
    await _running_pod(super_cluster, name)
    marker = f"line-{uuid.uuid4().hex}"
    append_pod_log(super_cluster.kwok_log, f"{marker}-before")
    out = await run_kubectl(super_cluster.kubectl, super_cluster.kubeconfig, "logs", name)
    assert f"{marker}-before" in out.stdout

    await assert_logs_follow(super_cluster.kubectl, super_cluster.kubeconfig, name,
                             kwok_log=super_cluster.kwok_log, seen_line=f"{marker}-before")


async def test_kubectl_exec_reaches_kwok(super_cluster: SuperCluster) -> None:
    """`kubectl exec` (WebSocket, and SPDY when forced) runs a command through the apiserver."""
    name = f"exec-{uuid.uuid4().hex[:6]}"
    await _running_pod(super_cluster, name)
    token = uuid.uuid4().hex
    for env in ({}, {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}):
        out = await run_kubectl(super_cluster.kubectl, super_cluster.kubeconfig,
                                "exec", name, "--", "echo", token, env=env)
        assert out.stdout.strip() == token


async def test_two_tenant_apiservers_on_one_etcd_are_isolated(
    super_cluster: SuperCluster, tenant_factory: TenantFactory
) -> None:
    """Apiservers sharing etcd under different prefixes never see each other's objects."""
    a, b = await tenant_factory("iso-a", controller_manager=False), await tenant_factory(
        "iso-b", controller_manager=False)
    await run_kubectl(super_cluster.kubectl, a.admin_kubeconfig, "create", "namespace", "only-in-a")
    await run_kubectl(super_cluster.kubectl, a.admin_kubeconfig, "-n", "only-in-a",
                      "create", "configmap", "cm", "--from-literal=k=v")
    in_b = await run_kubectl(super_cluster.kubectl, b.admin_kubeconfig, "get", "namespaces",
                             "-o", "name")
    in_a = await run_kubectl(super_cluster.kubectl, a.admin_kubeconfig, "get", "namespaces",
                             "-o", "name")
    assert "namespace/only-in-a" in in_a.stdout.split()
    assert "namespace/only-in-a" not in in_b.stdout.split()
    in_super = await run_kubectl(super_cluster.kubectl, super_cluster.kubeconfig, "get",
                                 "namespaces", "-o", "name")
    assert "namespace/only-in-a" not in in_super.stdout.split()
