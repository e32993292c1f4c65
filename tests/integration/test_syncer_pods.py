"""Syncer end to end on the real test bed: tenant Deployments become super Pods and run."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import pytest
import trio

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.util import naming
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory, run_kubectl, wait_for

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: main, image: nginx}}]
"""


@pytest.fixture
async def env(
    super_cluster: SuperCluster, tenant_factory: TenantFactory
) -> AsyncIterator[tuple[object, object, contextlib.AsyncExitStack]]:
    """A syncer on the session super cluster; it stops (and its VCs go) before the clients close."""
    await syncing.apply_crds(super_cluster)
    async with contextlib.AsyncExitStack() as stack:
        superc = await stack.enter_async_context(syncing.super_client(super_cluster))
        async with trio.open_nursery() as nursery:
            sx = await syncing.start_syncer(nursery, superc)
            yield sx, superc, stack
            nursery.cancel_scope.cancel()


async def _tenant_pods(t: syncing.BedTenant, ns: str) -> list[dict]:
    return (await t.client.list(resources.PODS, namespace=ns)).items


async def test_deployment_runs_on_super_and_tenant_sees_running_pods_on_vnodes(
    super_cluster: SuperCluster, tenant_factory: TenantFactory, env: tuple
) -> None:
    """3 replicas → 3 super Pods in <key>-<ns> on kwok nodes → tenant Pods Running on vnodes."""
    sx, superc, stack = env
    t = await syncing.synced_tenant(sx, superc, tenant_factory, "dep", stack)
    await run_kubectl(super_cluster.kubectl, t.kubeconfig, "create", "namespace", "shop")
    await run_kubectl(super_cluster.kubectl, t.kubeconfig, "apply", "-f", "-",
                      stdin=DEPLOYMENT.format(ns="shop", replicas=3).encode())
    super_ns = naming.super_namespace(t.key, "shop")

    async def super_running() -> list[dict] | None:
        pods = (await superc.list(resources.PODS, namespace=super_ns)).items
        running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
        return running if len(running) == 3 else None

    spods = await wait_for(super_running, timeout=90, what="3 super pods Running")
    assert {p["spec"]["nodeName"] for p in spods} <= set(super_cluster.nodes)  # type: ignore[union-attr]
    for p in spods:  # type: ignore[union-attr]
        ann = p["metadata"]["annotations"]
        assert ann[naming.ANNOTATION_CLUSTER] == t.key
        assert ann[naming.ANNOTATION_NAMESPACE] == "shop"
        assert p["metadata"]["labels"][naming.LABEL_CLUSTER] == t.key

    async def tenant_running() -> list[dict] | None:
        pods = await _tenant_pods(t, "shop")
        ok = [p for p in pods if p.get("status", {}).get("phase") == "Running"
              and p["spec"].get("nodeName") and p["status"].get("podIP")]
        return ok if len(ok) == 3 else None

    tpods = await wait_for(tenant_running, timeout=90, what="3 tenant pods Running on vnodes")
    by_name = {p["metadata"]["name"]: p for p in spods}  # type: ignore[union-attr]
    for p in tpods:  # type: ignore[union-attr]
        sp = by_name[p["metadata"]["name"]]
        assert p["spec"]["nodeName"] == sp["spec"]["nodeName"]
        assert p["status"]["podIP"] == sp["status"]["podIP"]
        assert sp["metadata"]["annotations"][naming.ANNOTATION_UID] == p["metadata"]["uid"]
    nodes = json.loads((await run_kubectl(super_cluster.kubectl, t.kubeconfig, "get", "nodes", "-o", "json")).stdout)
    vnode = nodes["items"][0]
    assert vnode["metadata"]["labels"][naming.LABEL_VIRTUAL_NODE] == "true"
    assert not vnode["spec"].get("unschedulable") and not vnode["spec"].get("taints")  # schedulable, as conformance needs
    assert vnode["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == sx.settings.vnode_port
    assert not vnode["status"].get("declaredFeatures")


async def test_same_names_in_two_tenants_never_collide(
    super_cluster: SuperCluster, tenant_factory: TenantFactory, env: tuple
) -> None:
    """Two tenants with the same namespace and ConfigMap name get separate super copies."""
    sx, superc, stack = env
    a = await syncing.synced_tenant(sx, superc, tenant_factory, "twin", stack)
    b = await syncing.synced_tenant(sx, superc, tenant_factory, "twin", stack)
    assert a.key != b.key
    for t, value in ((a, "from-a"), (b, "from-b")):
        await run_kubectl(super_cluster.kubectl, t.kubeconfig, "create", "namespace", "app")
        await run_kubectl(super_cluster.kubectl, t.kubeconfig, "-n", "app", "create", "configmap",
                          "settings", f"--from-literal=who={value}")

    async def both() -> dict | None:
        got = {}
        for t in (a, b):
            try:
                cm = await superc.get(resources.CONFIGMAPS, "settings",
                                      namespace=naming.super_namespace(t.key, "app"))
            except Exception:
                return None
            got[t.key] = cm["data"]["who"]
        return got

    got = await wait_for(both, timeout=60, what="both tenants' configmaps in super")
    assert got == {a.key: "from-a", b.key: "from-b"}


@syncing.deadline(120)
async def test_a_pod_naming_a_tenant_runtime_class_runs_with_its_super_copy(
    tenant_factory: TenantFactory, env: tuple
) -> None:
    """The super cluster gets a copy of the tenant's RuntimeClass (handler and overhead), the
    super Pod names the copy and keeps the overhead the tenant admitted."""
    sx, superc, stack = env
    t = await syncing.synced_tenant(sx, superc, tenant_factory, "rtc", stack)
    await syncing.tenant_namespace(t, "app")
    await t.client.create(resources.RUNTIMECLASSES, {"metadata": {"name": "fast"}, "handler": "runc",
                                                     "overhead": {"podFixed": {"cpu": "10m"}}})
    copy_name = naming.super_runtime_class(t.key, "fast")
    stack.push_async_callback(_delete_quietly, superc, resources.RUNTIMECLASSES, copy_name)
    await t.client.create(resources.PODS, syncing.pod_manifest("rt", runtimeClassName="fast"), namespace="app")
    sup = await syncing.wait_object(superc, resources.PODS, "rt", namespace=naming.super_namespace(t.key, "app"),
                                    what="super pod rt")
    assert sup["spec"]["runtimeClassName"] == copy_name
    assert sup["spec"]["overhead"] == {"cpu": "10m"}
    rc = await superc.get(resources.RUNTIMECLASSES, copy_name)
    assert (rc["handler"], rc["metadata"]["labels"][naming.LABEL_CLUSTER]) == ("runc", t.key)


async def _delete_quietly(client: ApiClient, res: resources.Resource, name: str) -> None:
    with contextlib.suppress(errors.NotFound):
        await client.delete(res, name)
