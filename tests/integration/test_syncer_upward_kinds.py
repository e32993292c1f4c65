"""Syncer on the real test bed: what flows from the super cluster up into tenants.

Events about tenant Pods, public StorageClasses and PriorityClasses, PersistentVolumes
bound to tenant claims, and Ingress status (Ingresses are also copied down).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.util import naming
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory, wait_for

PUBLIC = {naming.LABEL_SUPER_PUBLIC: "true"}


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


def _suffix() -> str:
    return uuid.uuid4().hex[:6]


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return obj["metadata"].get("annotations") or {}


async def _remove(superc: ApiClient, res: resources.Resource, name: str, *, unfinalize: bool = False) -> None:
    """Delete a cluster-scoped super object this test made (cleanup; absent is fine)."""
    with contextlib.suppress(errors.NotFound):
        if unfinalize:
            await superc.patch(res, name, {"metadata": {"finalizers": None}})
        await superc.delete(res, name)


def _event(name: str, ns: str, involved: dict[str, Any], message: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved, "reason": "Testing", "message": message, "type": "Normal",
            "source": {"component": "upward-kinds-test"}, "count": 1}


@syncing.deadline(180)
async def test_super_events_about_tenant_pods_appear_in_the_tenant(env: syncing.Env) -> None:
    """A super Event about a tenant Pod is copied into the tenant namespace, pointing at the tenant
    Pod, with the cluster key cut from its message; Events about other kinds are not."""
    sx = await env.start()
    t = await env.tenant(sx, "ev")
    await syncing.tenant_namespace(t, "shop")
    super_ns = naming.super_namespace(t.key, "shop")
    vpod = await t.client.create(resources.PODS, syncing.pod_manifest("web"), namespace="shop")
    ppod = await syncing.wait_object(env.superc, resources.PODS, "web", namespace=super_ns)
    cm = await env.superc.create(resources.CONFIGMAPS, {"metadata": {"name": f"cm-{_suffix()}"}}, namespace=super_ns)

    other = _event(f"cm.{_suffix()}", super_ns, {"kind": "ConfigMap", "name": cm["metadata"]["name"],
                                                 "namespace": super_ns, "uid": cm["metadata"]["uid"]}, "cm")
    await env.superc.create(resources.EVENTS, other, namespace=super_ns)
    name = f"web.{_suffix()}"
    await env.superc.create(resources.EVENTS, _event(name, super_ns, {
        "kind": "Pod", "apiVersion": "v1", "name": "web", "namespace": super_ns, "uid": ppod["metadata"]["uid"],
        "resourceVersion": ppod["metadata"]["resourceVersion"],
    }, f"pod {super_ns}/web of {t.key}"), namespace=super_ns)

    copied = await syncing.wait_object(t.client, resources.EVENTS, name, namespace="shop")
    assert copied["involvedObject"]["namespace"] == "shop"
    assert copied["involvedObject"]["uid"] == vpod["metadata"]["uid"]
    assert not copied["involvedObject"].get("resourceVersion")
    assert copied["message"] == "pod shop/web of "
    assert copied["reason"] == "Testing"
    # The watch delivers events in order: the ConfigMap event was judged before the Pod's.
    assert await syncing.get_or_none(t.client, resources.EVENTS, other["metadata"]["name"], namespace="shop") is None

    async def scheduled() -> dict[str, Any] | None:
        found = (await t.client.list(resources.EVENTS, namespace="shop",
                                     field_selector="involvedObject.name=web,reason=Scheduled")).items
        return found[0] if found else None

    # What the super scheduler reports about the super Pod reaches the tenant, in tenant terms.
    ev = await wait_for(scheduled, timeout=60, what="the super scheduler's Scheduled event in the tenant")
    assert isinstance(ev, dict)
    assert "shop/web" in ev["message"]
    assert t.key not in ev["message"]


@syncing.deadline(240)
async def test_public_storage_and_priority_classes_are_broadcast_to_tenants(env: syncing.Env) -> None:
    """Public super StorageClasses and (opted-in) PriorityClasses appear in a tenant and follow
    changes; they vanish when unpublished or deleted; public-labelled tenant objects without a
    super twin are deleted, the tenant's own StorageClasses and PriorityClasses kept."""
    s = _suffix()
    pub_sc, priv_sc, pub_pc = f"pub-{s}", f"priv-{s}", f"pub-{s}"
    for res, name in ((resources.STORAGECLASSES, pub_sc), (resources.STORAGECLASSES, priv_sc),
                      (resources.PRIORITYCLASSES, pub_pc)):
        env.stack.push_async_callback(_remove, env.superc, res, name)
    await env.superc.create(resources.STORAGECLASSES, {"metadata": {"name": pub_sc, "labels": PUBLIC},
                                                       "provisioner": "example.com/test"})
    await env.superc.create(resources.STORAGECLASSES, {"metadata": {"name": priv_sc},
                                                       "provisioner": "example.com/test"})
    await env.superc.create(resources.PRIORITYCLASSES, {"metadata": {"name": pub_pc, "labels": PUBLIC},
                                                        "value": 1000, "description": "first"})
    sx = await env.start(extra_resources=("priorityclass",))
    t = await env.tenant(sx, "pub")

    vsc = await syncing.wait_object(t.client, resources.STORAGECLASSES, pub_sc)
    assert vsc["provisioner"] == "example.com/test"
    assert vsc["metadata"]["labels"] == PUBLIC
    vpc = await syncing.wait_object(t.client, resources.PRIORITYCLASSES, pub_pc)
    assert (vpc["value"], vpc["description"]) == (1000, "first")

    await t.client.create(resources.STORAGECLASSES, {"metadata": {"name": f"own-{s}"}, "provisioner": "x.io/y"})
    await t.client.create(resources.PRIORITYCLASSES, {"metadata": {"name": f"own-{s}"}, "value": 5})
    await t.client.create(resources.PRIORITYCLASSES, {"metadata": {"name": f"fake-{s}", "labels": PUBLIC},
                                                      "value": 6})
    await t.client.create(resources.STORAGECLASSES, {"metadata": {"name": f"fake-{s}", "labels": PUBLIC},
                                                     "provisioner": "x.io/y"})
    await syncing.wait_gone(t.client, resources.STORAGECLASSES, f"fake-{s}")
    await syncing.wait_gone(t.client, resources.PRIORITYCLASSES, f"fake-{s}")
    await syncing.wait_quiet(sx, scans=0)  # `own-` were queued before `fake-` were seen
    assert await syncing.get_or_none(t.client, resources.PRIORITYCLASSES, f"own-{s}") is not None
    assert await syncing.get_or_none(t.client, resources.STORAGECLASSES, f"own-{s}") is not None
    assert await syncing.get_or_none(t.client, resources.STORAGECLASSES, priv_sc) is None

    await env.superc.patch(resources.STORAGECLASSES, pub_sc, {"allowVolumeExpansion": True})
    await env.superc.patch(resources.PRIORITYCLASSES, pub_pc, {"description": "second"})
    await syncing.wait_object(t.client, resources.STORAGECLASSES, pub_sc,
                              where=lambda o: o.get("allowVolumeExpansion") is True, what="expansion allowed")
    await syncing.wait_object(t.client, resources.PRIORITYCLASSES, pub_pc,
                              where=lambda o: o.get("description") == "second", what="new description")

    await env.superc.patch(resources.STORAGECLASSES, pub_sc,
                           {"metadata": {"labels": {naming.LABEL_SUPER_PUBLIC: None}}})
    await env.superc.delete(resources.PRIORITYCLASSES, pub_pc)
    await syncing.wait_gone(t.client, resources.STORAGECLASSES, pub_sc, what="unpublished StorageClass gone")
    await syncing.wait_gone(t.client, resources.PRIORITYCLASSES, pub_pc, what="deleted PriorityClass gone")


@syncing.deadline(240)
async def test_bound_super_pv_appears_in_the_tenant_and_binds_its_claim(env: syncing.Env) -> None:
    """A super PV bound to a tenant's claim is copied into the tenant, where the tenant binder binds
    the claim; super spec changes follow; stale copies are deleted, tenant-made PVs never."""
    s = _suffix()
    sx = await env.start()
    t = await env.tenant(sx, "pv")
    await syncing.tenant_namespace(t, "shop")
    super_ns = naming.super_namespace(t.key, "shop")
    vpvc = await t.client.create(resources.PVCS, {"metadata": {"name": "data"}, "spec": {
        "storageClassName": "", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
    }}, namespace="shop")
    ppvc = await syncing.wait_object(env.superc, resources.PVCS, "data", namespace=super_ns)

    pv_name = f"pv-{s}"
    env.stack.push_async_callback(_remove, env.superc, resources.PVS, pv_name, unfinalize=True)
    ppv = await env.superc.create(resources.PVS, {"metadata": {"name": pv_name}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{pv_name}"},
        "claimRef": {"namespace": super_ns, "name": "data", "uid": ppvc["metadata"]["uid"]},
    }})

    vpv = await syncing.wait_object(t.client, resources.PVS, pv_name)
    assert _annotations(vpv)[naming.ANNOTATION_UID] == ppv["metadata"]["uid"]
    assert vpv["spec"]["claimRef"]["namespace"] == "shop"
    assert vpv["spec"]["claimRef"]["uid"] == vpvc["metadata"]["uid"]
    assert vpv["spec"]["hostPath"]["path"] == f"/tmp/{pv_name}"
    await syncing.wait_object(t.client, resources.PVCS, "data", namespace="shop",
                              where=lambda o: (o.get("status") or {}).get("phase") == "Bound"
                              and o["spec"].get("volumeName") == pv_name, what="tenant claim bound by the tenant")

    await env.superc.patch(resources.PVS, pv_name, {"spec": {"capacity": {"storage": "2Gi"}}})
    await syncing.wait_object(t.client, resources.PVS, pv_name,
                              where=lambda o: o["spec"]["capacity"]["storage"] == "2Gi", what="capacity pushed up")

    def tenant_pv(name: str, **annotations: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "annotations": annotations}, "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/tmp/t"},
            "persistentVolumeReclaimPolicy": "Retain"}}

    await t.client.create(resources.PVS, tenant_pv(f"mine-{s}"))
    await t.client.create(resources.PVS, tenant_pv(f"stale-{s}", **{naming.ANNOTATION_UID: "no-such-super-pv"}))
    await syncing.wait_gone(t.client, resources.PVS, f"stale-{s}", what="copy without super twin deleted")
    await syncing.wait_quiet(sx, scans=0)  # `mine-` was queued before `stale-` was seen
    assert await syncing.get_or_none(t.client, resources.PVS, f"mine-{s}") is not None


@syncing.deadline(180)
async def test_ingress_is_copied_down_and_its_status_up(env: syncing.Env) -> None:
    """With `ingress` opted in, a tenant Ingress and its spec changes reach the super cluster; the
    super Ingress's status and transparent annotations come back; deleting it removes the copy."""
    sx = await env.start(extra_resources=("ingress",))
    t = await env.tenant(sx, "ing")
    await syncing.tenant_namespace(t, "shop")
    super_ns = naming.super_namespace(t.key, "shop")

    def rule(host: str) -> dict[str, Any]:
        return {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
            "service": {"name": "web", "port": {"number": 80}}}}]}}

    await t.client.create(resources.INGRESSES, {"metadata": {"name": "web", "labels": {"app": "web"}},
                                                "spec": {"rules": [rule("a.example")]}}, namespace="shop")
    pobj = await syncing.wait_object(env.superc, resources.INGRESSES, "web", namespace=super_ns)
    assert pobj["spec"]["rules"] == [rule("a.example")]
    assert pobj["metadata"]["labels"]["app"] == "web"

    await t.client.patch(resources.INGRESSES, "web", {"spec": {"rules": [rule("b.example")]}}, namespace="shop")
    await syncing.wait_object(env.superc, resources.INGRESSES, "web", namespace=super_ns,
                              where=lambda o: o["spec"]["rules"] == [rule("b.example")], what="spec pushed down")

    transparent = "transparency.tenancy.x-k8s.io/lb"
    await env.superc.patch(resources.INGRESSES, "web", {"metadata": {"annotations": {transparent: "yes"}}},
                           namespace=super_ns)
    await env.superc.patch(resources.INGRESSES, "web", {"status": {"loadBalancer": {"ingress": [{"ip": "10.9.8.7"}]}}},
                           namespace=super_ns, subresource="status")
    vobj = await syncing.wait_object(
        t.client, resources.INGRESSES, "web", namespace="shop",
        where=lambda o: (o.get("status") or {}).get("loadBalancer", {}).get("ingress") == [{"ip": "10.9.8.7"}]
        and _annotations(o).get(transparent) == "yes", what="status and transparent annotation up")
    assert vobj["spec"]["rules"] == [rule("b.example")]

    await t.client.delete(resources.INGRESSES, "web", namespace="shop")
    await syncing.wait_gone(env.superc, resources.INGRESSES, "web", namespace=super_ns)
