"""Syncer on the real test bed: super Pods authenticate to their tenant, not to the super cluster."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.kube import resources
from appliance.kube.client import ApiClient
from appliance.util import naming
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


async def review(client: ApiClient, token: str) -> dict[str, Any]:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    return (await client.create(resources.TOKENREVIEWS, body)).get("status") or {}


@syncing.deadline(120)
async def test_mounted_token_is_a_tenant_service_account_token(env: syncing.Env) -> None:
    """The Secret replacing a super Pod's kube-api-access volume holds a token the tenant apiserver
    accepts as the Pod's service account and the super apiserver rejects."""
    sx = await env.start()
    t = await env.tenant(sx, "tokens")
    await syncing.tenant_namespace(t, "app")
    await t.client.create(resources.SERVICEACCOUNTS, {"metadata": {"name": "robot"}}, namespace="app")
    await t.client.create(
        resources.PODS, syncing.pod_manifest("tok", token=True, serviceAccountName="robot"), namespace="app")
    tenant_pod = await t.client.get(resources.PODS, "tok", namespace="app")
    projected = [v["name"] for v in tenant_pod["spec"]["volumes"] if v["name"].startswith("kube-api-access-")]
    assert len(projected) == 1  # the tenant's ServiceAccount admission added it

    super_app = naming.super_namespace(t.key, "app")
    pod = await syncing.wait_object(env.superc, resources.PODS, "tok", namespace=super_app, timeout=90)
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["serviceAccountName"] == "robot"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert not any("projected" in v for v in volumes.values())
    secret_name = volumes[projected[0]]["secret"]["secretName"]
    assert secret_name.startswith("tok-vctoken-")
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[projected[0]] == "/var/run/secrets/kubernetes.io/serviceaccount"

    secret = await env.superc.get(resources.SECRETS, secret_name, namespace=super_app)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["namespace"] == "app"
    tenant_ca = (await t.client.get(resources.CONFIGMAPS, "kube-root-ca.crt", namespace="app"))["data"]["ca.crt"]
    assert data["ca.crt"] == tenant_ca
    assert [(r["kind"], r["name"]) for r in secret["metadata"]["ownerReferences"]] == [("Pod", "tok")]

    tenant_view = await review(t.client, data["token"])
    assert tenant_view.get("authenticated") is True, tenant_view
    assert tenant_view["user"]["username"] == "system:serviceaccount:app:robot"
    assert tenant_view["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["tok"]
    assert tenant_view["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [tenant_pod["metadata"]["uid"]]
    super_view = await review(env.superc, data["token"])
    assert not super_view.get("authenticated"), super_view
