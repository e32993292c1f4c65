"""Syncer on the real test bed: changes made to super copies behind its back are undone."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from appliance.kube import resources
from appliance.util import naming
from tests.integration import syncing
from tests.tally import Tally
from tests.testbed import SuperCluster, TenantFactory

CM = resources.CONFIGMAPS


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


async def configmap(t: syncing.BedTenant, superc: Any, name: str, data: dict[str, str]) -> tuple[dict, dict]:
    """Create tenant ConfigMap app/`name`; return it and its super copy once synced."""
    ten = await t.client.create(CM, {"metadata": {"name": name}, "data": data}, namespace="app")
    sup = await syncing.wait_object(superc, CM, name, namespace=naming.super_namespace(t.key, "app"),
                                    where=lambda c: c.get("data") == data)
    return ten, sup


@syncing.deadline(120)
async def test_deleted_or_edited_super_copy_is_restored(env: syncing.Env) -> None:
    """A super ConfigMap deleted behind the syncer's back is recreated, and edited data reverted."""
    sx = await env.start(patrol_period=1.0)
    t = await env.tenant(sx, "drift")
    await syncing.tenant_namespace(t, "app")
    super_app = naming.super_namespace(t.key, "app")
    ten, sup = await configmap(t, env.superc, "settings", {"mode": "fast"})

    await env.superc.delete(CM, "settings", namespace=super_app)
    again = await syncing.wait_object(env.superc, CM, "settings", namespace=super_app,
                                      where=lambda c: c["metadata"]["uid"] != sup["metadata"]["uid"],
                                      what="super configmap recreated")
    assert again["data"] == {"mode": "fast"}
    assert again["metadata"]["annotations"][naming.ANNOTATION_UID] == ten["metadata"]["uid"]

    edited = await env.superc.patch(CM, "settings", {"data": {"mode": "slow", "extra": "1"}}, namespace=super_app)
    reverted = await syncing.wait_object(
        env.superc, CM, "settings", namespace=super_app,
        where=lambda c: int(c["metadata"]["resourceVersion"]) > int(edited["metadata"]["resourceVersion"]),
        what="super configmap edited again by the syncer")
    assert reverted["data"] == {"mode": "fast"}
    assert reverted["metadata"]["uid"] == again["metadata"]["uid"]  # patched, not replaced


@syncing.deadline(120)
async def test_orphaned_super_object_of_a_tenant_is_deleted_and_foreign_ones_kept(env: syncing.Env) -> None:
    """A super object stamped for this tenant without a tenant twin is deleted; unstamped ones are not ours."""
    sx = await env.start(patrol_period=1.0)
    t = await env.tenant(sx, "orphans")
    await syncing.tenant_namespace(t, "app")
    super_app = naming.super_namespace(t.key, "app")
    await configmap(t, env.superc, "real", {"k": "v"})
    stamps = {
        "labels": {naming.LABEL_VC_NAME: t.id.vc_name, naming.LABEL_VC_NAMESPACE: t.id.vc_namespace},
        "annotations": {naming.ANNOTATION_CLUSTER: t.key, naming.ANNOTATION_NAMESPACE: "app",
                        naming.ANNOTATION_UID: str(uuid.uuid4()), naming.ANNOTATION_VC_UID: t.id.vc_uid},
    }
    await env.superc.create(CM, {"metadata": {"name": "foreign"}, "data": {"k": "v"}}, namespace=super_app)
    orphan = await env.superc.create(CM, {"metadata": {"name": "orphan", **stamps}, "data": {"k": "v"}},
                                     namespace=super_app)

    await syncing.wait_gone(env.superc, CM, "orphan", namespace=super_app, what="orphan deleted")
    with trio.fail_after(30):
        await sx.wait_patrol_scans(2)  # two more full scans without touching the foreign object
    await syncing.wait_quiet(sx, scans=0)
    assert await syncing.get_or_none(env.superc, CM, "foreign", namespace=super_app) is not None
    assert await syncing.get_or_none(env.superc, CM, "real", namespace=super_app) is not None
    assert await syncing.get_or_none(t.client, CM, "orphan", namespace="app") is None
    assert orphan["metadata"]["annotations"][naming.ANNOTATION_CLUSTER] == t.key


@syncing.deadline(120)
async def test_super_copy_with_a_foreign_uid_is_replaced_not_patched(env: syncing.Env) -> None:
    """A super copy whose tenancy uid annotation is not the tenant object's is deleted and recreated
    (new metadata.uid), never patched in place."""
    sx = await env.start(patrol_period=1.0)
    t = await env.tenant(sx, "uids")
    await syncing.tenant_namespace(t, "app")
    super_app = naming.super_namespace(t.key, "app")
    ten, sup = await configmap(t, env.superc, "settings", {"mode": "fast"})
    events: list[syncing.Seen] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: syncing.record_events(
            env.superc, CM, events, namespace=super_app, task_status=task_status))
        tampered = await env.superc.patch(CM, "settings", {
            "metadata": {"annotations": {naming.ANNOTATION_UID: str(uuid.uuid4())}},
            "data": {"mode": "tampered"}}, namespace=super_app)

        fresh = await syncing.wait_object(
            env.superc, CM, "settings", namespace=super_app,
            where=lambda c: c["metadata"]["uid"] != sup["metadata"]["uid"], what="a replaced super configmap")
        with trio.fail_after(10):
            while not any(e.type == "ADDED" and e.obj["metadata"]["uid"] == fresh["metadata"]["uid"] for e in events):
                await trio.sleep(0.05)  # our own watch catching up
        nursery.cancel_scope.cancel()

    assert fresh["metadata"]["annotations"][naming.ANNOTATION_UID] == ten["metadata"]["uid"]
    assert fresh["data"] == {"mode": "fast"}
    old = [(e.type, e.obj["metadata"]["resourceVersion"]) for e in events
           if e.obj["metadata"]["name"] == "settings" and e.obj["metadata"]["uid"] == sup["metadata"]["uid"]]
    # Our tampering, then only its deletion: the syncer never wrote to the stale copy.
    assert [kind for kind, _ in old] == ["MODIFIED", "DELETED"], old
    assert old[0][1] == tampered["metadata"]["resourceVersion"]


@syncing.deadline(120)
async def test_super_copy_stripped_of_our_labels_is_taken_back(env: syncing.Env) -> None:
    """A super copy whose tenancy labels were removed behind the syncer's back gets them back
    and follows its tenant object again."""
    sx = await env.start(patrol_period=1.0)
    t = await env.tenant(sx, "labels")
    await syncing.tenant_namespace(t, "app")
    super_app = naming.super_namespace(t.key, "app")
    _, sup = await configmap(t, env.superc, "settings", {"mode": "fast"})
    await env.superc.patch(CM, "settings", {"metadata": {"labels": {
        naming.LABEL_VC_NAME: None, naming.LABEL_VC_NAMESPACE: None}}, "data": {"mode": "tampered"}},
        namespace=super_app)
    await t.client.patch(CM, "settings", {"data": {"mode": "slow"}}, namespace="app")
    back = await syncing.wait_object(env.superc, CM, "settings", namespace=super_app,
                                     where=lambda c: c.get("data") == {"mode": "slow"}, timeout=30,
                                     what="super copy following its tenant object again")
    assert back["metadata"]["labels"][naming.LABEL_VC_NAME] == t.id.vc_name
    assert back["metadata"]["labels"][naming.LABEL_VC_NAMESPACE] == t.id.vc_namespace
    assert back["metadata"]["uid"] == sup["metadata"]["uid"]


@syncing.deadline(150)
@pytest.mark.security
async def test_super_pod_stripped_of_our_labels_keeps_its_tenant_pod(env: syncing.Env, tally: Tally) -> None:
    """Removing the tenancy labels from a running super Pod takes it out of the label-filtered
    cache, which looks like a deletion. The tenant Pod must survive (a live read shows the super
    Pod still runs), and the super Pod gets its labels back."""
    sx = await env.start(patrol_period=1.0)
    t = await env.tenant(sx, "podlabels")
    await syncing.tenant_namespace(t, "app")
    super_app = naming.super_namespace(t.key, "app")
    created = await t.client.create(resources.PODS, syncing.pod_manifest("web"), namespace="app")
    await syncing.wait_object(t.client, resources.PODS, "web", namespace="app",
                              where=lambda p: p["spec"].get("nodeName") and p["status"].get("phase") == "Running",
                              what="tenant pod bound and Running")
    sup = await syncing.wait_object(env.superc, resources.PODS, "web", namespace=super_app)
    stripped = await env.superc.patch(resources.PODS, "web", {"metadata": {"labels": {
        naming.LABEL_VC_NAME: None, naming.LABEL_VC_NAMESPACE: None}}}, namespace=super_app)
    back = await syncing.wait_object(
        env.superc, resources.PODS, "web", namespace=super_app, timeout=30, what="labels restored",
        where=lambda p: int(p["metadata"]["resourceVersion"]) > int(stripped["metadata"]["resourceVersion"])
        and (p["metadata"].get("labels") or {}).get(naming.LABEL_VC_NAME) == t.id.vc_name)
    assert back["metadata"]["uid"] == sup["metadata"]["uid"]
    await syncing.wait_quiet(sx, scans=2)
    tenant_pod = await t.client.get(resources.PODS, "web", namespace="app")
    assert tenant_pod["metadata"]["uid"] == created["metadata"]["uid"]
    assert "deletionTimestamp" not in tenant_pod["metadata"]
    tally.add("syncer: super Pod stripped of its tenancy labels (tenant Pod kept, labels restored)", tried=1, held=1)
