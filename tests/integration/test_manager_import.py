"""The import provisioner adopts a test-bed kube-apiserver given by kubeconfig."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from appliance.kube import creds, resources
from appliance.kube.client import open_client
from appliance.manager import model
from tests.integration import manager_harness as common
from tests.integration.manager_harness import Harness
from tests.testbed import SuperCluster, TenantFactory


@pytest.fixture
async def harness(super_cluster: SuperCluster, nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Harness]:
    """The manager test harness (see manager_harness)."""
    async with common.open_harness(super_cluster, nursery, tmp_path) as h:
        yield h


async def test_import_from_annotation_and_from_secret(harness: Harness, tenant_factory: TenantFactory) -> None:
    """A kubeconfig in the annotation, or in a secret of the VC's namespace, imports a live cluster."""
    h = harness
    cp = await tenant_factory(controller_manager=False)
    data = cp.admin_kubeconfig.read_bytes()
    await h.start_manager()
    await h.create_vc("by-annotation", cv="imported", annotations={
        "tenancy.x-k8s.io/provisioner": "import",
        "tenancy.x-k8s.io/admin-kubeconfig": base64.b64encode(data).decode(),
    })
    await h.client.create(resources.SECRETS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "site-kubeconfig", "namespace": h.ns},
        "data": {"value": base64.b64encode(data).decode()},
    })
    await h.create_vc("by-secret", cv="imported", annotations={
        "tenancy.x-k8s.io/provisioner": "import", "tenancy.x-k8s.io/secret.admin-kubeconfig": "site-kubeconfig",
    })
    for name in ("by-annotation", "by-secret"):
        vc = await h.wait_phase(name, model.RUNNING, within=60)
        assert vc["status"]["message"].startswith(f"imported cluster {cp.url} (v1.")
        assert vc["metadata"]["finalizers"] == ["virtualcluster.finalizer.import"]
        got, credentials = await h.admin_client(name)
        assert got == data
        async with open_client(credentials) as tenant:
            assert (await tenant.get(resources.NAMESPACES, "default"))["metadata"]["name"] == "default"
    # The secret is mirrored into the root namespace, where the syncer looks for it.
    vc = await h.get_vc("by-secret")
    assert vc is not None
    mirrored = await h.client.get(resources.SECRETS, "site-kubeconfig", namespace=vc["status"]["clusterNamespace"])
    assert base64.b64decode(mirrored["data"]["value"]) == data

    # Deleting an imported VirtualCluster leaves the imported cluster alone.
    await h.delete_vc("by-annotation")
    async with open_client(creds.parse_kubeconfig(data)) as tenant:
        assert (await tenant.server_version())["gitVersion"].startswith("v1.")


async def test_unreachable_import_spends_its_retries_then_errors(harness: Harness) -> None:
    """An import whose server never answers is retried, then ends in Error with the cause."""
    h = harness
    await h.start_manager(provisioner_timeout=5.0)
    bogus = (
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: abc}}]\ncontexts: [{name: d, context: {cluster: c, user: u}}]\n"
        "current-context: d\n"
    )
    await h.create_vc("nowhere", cv="imported", annotations={
        "tenancy.x-k8s.io/provisioner": "import",
        "tenancy.x-k8s.io/admin-kubeconfig": base64.b64encode(bogus.encode()).decode(),
    })
    vc = await h.wait_phase("nowhere", model.ERROR, within=90)
    assert vc["status"]["reason"] == model.REASON_ERROR
    assert "https://127.0.0.1:9" in vc["status"]["message"]
    events = await h.events("nowhere")
    failed = [e for e in events if e["reason"] == model.REASON_ATTEMPT_FAILED]
    assert sum(e["count"] for e in failed) == model.RETRIES - 1  # same message: one Event, counted
    assert any(e["reason"] == model.REASON_ERROR for e in events)
