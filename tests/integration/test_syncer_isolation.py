"""Syncer on the real test bed: a tenant cannot forge its way into another tenant's objects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.kube import resources
from appliance.util import naming
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory

TRANSPARENT_IP = naming.ANNOTATION_TRANSPARENT_CLUSTER_IP


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


def forged_meta(victim: syncing.BedTenant, victim_uid: str) -> dict[str, dict[str, str]]:
    """Labels and annotations claiming to be the victim's object in its namespace `app`."""
    vid = victim.id
    return {
        "labels": {
            naming.LABEL_CLUSTER: vid.key, naming.LABEL_VC_NAME: vid.vc_name,
            naming.LABEL_VC_NAMESPACE: vid.vc_namespace, "team": "a",
        },
        "annotations": {
            naming.ANNOTATION_CLUSTER: vid.key, naming.ANNOTATION_NAMESPACE: "app",
            naming.ANNOTATION_UID: victim_uid, naming.ANNOTATION_VC_NAME: vid.vc_name,
            naming.ANNOTATION_VC_NAMESPACE: vid.vc_namespace, naming.ANNOTATION_VC_UID: vid.vc_uid,
            naming.ANNOTATION_OWNER_REFERENCES: "[]", naming.ANNOTATION_CLUSTER_IP: "10.0.0.66",
            TRANSPARENT_IP: "10.0.0.66", "note": "hello",
        },
    }


def assert_stamped_by(obj: dict[str, Any], t: syncing.BedTenant, *, tenant_ns: str, tenant_uid: str) -> None:
    """Every tenancy key on a super object is ours, for tenant `t`; the ordinary keys survive."""
    meta = obj["metadata"]
    labels, ann = meta.get("labels") or {}, meta.get("annotations") or {}
    assert meta["namespace"] == naming.super_namespace(t.key, tenant_ns)
    assert ann[naming.ANNOTATION_CLUSTER] == t.key
    assert ann[naming.ANNOTATION_NAMESPACE] == tenant_ns
    assert ann[naming.ANNOTATION_UID] == tenant_uid
    assert ann[naming.ANNOTATION_VC_NAME] == t.id.vc_name
    assert ann[naming.ANNOTATION_VC_NAMESPACE] == t.id.vc_namespace
    assert ann[naming.ANNOTATION_VC_UID] == t.id.vc_uid
    assert json.loads(ann[naming.ANNOTATION_OWNER_REFERENCES]) is None
    assert TRANSPARENT_IP not in ann
    assert labels[naming.LABEL_VC_NAME] == t.id.vc_name
    assert labels[naming.LABEL_VC_NAMESPACE] == t.id.vc_namespace
    assert labels.get(naming.LABEL_CLUSTER, t.key) == t.key  # Pods carry it, stamped by us
    assert labels["team"] == "a" and ann["note"] == "hello"


@syncing.deadline(150)
async def test_forged_tenancy_keys_never_reach_another_tenant(env: syncing.Env) -> None:
    """Objects whose tenancy labels/annotations claim another tenant land in their own super
    namespace with our stamps, and leave the other tenant's super objects untouched."""
    sx = await env.start()
    victim = await env.tenant(sx, "victim")
    attacker = await env.tenant(sx, "attacker")
    await syncing.tenant_namespace(victim, "app")
    victim_cm = await victim.client.create(
        resources.CONFIGMAPS, {"metadata": {"name": "settings"}, "data": {"who": "victim"}}, namespace="app")
    victim_app = naming.super_namespace(victim.key, "app")
    await syncing.wait_object(env.superc, resources.CONFIGMAPS, "settings", namespace=victim_app)
    await victim.client.create(resources.PODS, syncing.pod_manifest("worker"), namespace="app")
    await syncing.wait_object(env.superc, resources.PODS, "worker", namespace=victim_app,
                              where=lambda p: p.get("status", {}).get("phase") == "Running")
    await syncing.wait_object(victim.client, resources.PODS, "worker", namespace="app",
                              where=lambda p: p.get("status", {}).get("phase") == "Running")
    await syncing.wait_quiet(sx, scans=0)
    before = await syncing.super_snapshot(env.superc, victim)

    forged = forged_meta(victim, victim_cm["metadata"]["uid"])
    await attacker.client.create(resources.NAMESPACES, {"metadata": {"name": "app", **forged}})
    await syncing.wait_object(attacker.client, resources.SERVICEACCOUNTS, "default", namespace="app")
    cm = await attacker.client.create(resources.CONFIGMAPS, {
        "metadata": {"name": "settings", **forged}, "data": {"who": "attacker"}}, namespace="app")
    svc = await attacker.client.create(resources.SERVICES, {
        "metadata": {"name": "web", **forged},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}, namespace="app")
    pod_body = syncing.pod_manifest("worker")
    pod_body["metadata"].update(forged)
    pod_body["spec"]["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {naming.LABEL_CLUSTER: victim.key}},
        "topologyKey": "kubernetes.io/hostname", "namespaces": ["app"]}]}}
    pod = await attacker.client.create(resources.PODS, pod_body, namespace="app")

    attacker_app = naming.super_namespace(attacker.key, "app")
    sup_ns = await syncing.wait_object(env.superc, resources.NAMESPACES, attacker_app)
    sup_ns_ann = sup_ns["metadata"]["annotations"]
    assert sup_ns_ann[naming.ANNOTATION_CLUSTER] == attacker.key
    assert sup_ns_ann[naming.ANNOTATION_NAMESPACE] == "app"
    assert sup_ns_ann[naming.ANNOTATION_VC_UID] == attacker.id.vc_uid
    assert sup_ns["metadata"]["labels"][naming.LABEL_VC_NAMESPACE] == attacker.id.vc_namespace
    sup_cm = await syncing.wait_object(env.superc, resources.CONFIGMAPS, "settings", namespace=attacker_app)
    assert_stamped_by(sup_cm, attacker, tenant_ns="app", tenant_uid=cm["metadata"]["uid"])
    assert sup_cm["data"] == {"who": "attacker"}
    sup_svc = await syncing.wait_object(env.superc, resources.SERVICES, "web", namespace=attacker_app)
    assert_stamped_by(sup_svc, attacker, tenant_ns="app", tenant_uid=svc["metadata"]["uid"])
    assert sup_svc["metadata"]["annotations"][naming.ANNOTATION_CLUSTER_IP] == svc["spec"]["clusterIP"]
    sup_pod = await syncing.wait_object(env.superc, resources.PODS, "worker", namespace=attacker_app)
    assert_stamped_by(sup_pod, attacker, tenant_ns="app", tenant_uid=pod["metadata"]["uid"])
    term = sup_pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["labelSelector"]["matchLabels"][naming.LABEL_CLUSTER] == attacker.key
    assert term["namespaces"] == [attacker_app]
    # Upward, our value replaces the forged transparent annotation on the tenant Service.
    await syncing.wait_object(
        attacker.client, resources.SERVICES, "web", namespace="app",
        where=lambda s: s["metadata"]["annotations"][TRANSPARENT_IP] == sup_svc["spec"]["clusterIP"],
        what="attacker's service annotated with its real super IP")

    # Changing only forged keys, then real data: the data flows, the stamps stay ours.
    await attacker.client.patch(resources.CONFIGMAPS, "settings", {
        "metadata": {"annotations": {naming.ANNOTATION_NAMESPACE: "kube-system", naming.ANNOTATION_UID: "x"}},
        "data": {"who": "attacker-2"}}, namespace="app")
    sup_cm = await syncing.wait_object(env.superc, resources.CONFIGMAPS, "settings", namespace=attacker_app,
                                       where=lambda c: c["data"] == {"who": "attacker-2"})
    assert_stamped_by(sup_cm, attacker, tenant_ns="app", tenant_uid=cm["metadata"]["uid"])

    await syncing.wait_quiet(sx, scans=0)
    assert await syncing.super_snapshot(env.superc, victim) == before
    victim_pod = await victim.client.get(resources.PODS, "worker", namespace="app")
    assert victim_pod["status"]["phase"] == "Running" and not victim_pod["metadata"].get("deletionTimestamp")
