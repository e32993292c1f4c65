"""Bad input puts one VirtualCluster in Error with a condition and an Event naming the fault."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.kube import errors, resources
from appliance.manager import controller, model
from tests.integration import manager_harness as common
from tests.integration.manager_harness import Harness
from tests.testbed import SuperCluster


@pytest.fixture
async def harness(super_cluster: SuperCluster, nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Harness]:
    """The manager test harness (see manager_harness)."""
    async with common.open_harness(super_cluster, nursery, tmp_path) as h:
        yield h


def _ready(vc: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in vc["status"]["conditions"] if c["type"] == model.COND_READY)


async def _assert_rejected(h: Harness, name: str, reason: str, message: str) -> dict[str, Any]:
    vc = await h.wait_phase(name, model.ERROR, within=60)
    status = vc["status"]
    assert (status["reason"], status["message"]) == (reason, message)
    assert status["retriesLeft"] == 0
    cond = _ready(vc)
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", reason, message)
    events = await h.events(name)
    assert any(e["type"] == "Warning" and e["reason"] == reason and e["message"] == message for e in events), events
    return vc


async def _preset_cluster_namespace(h: Harness, name: str, value: str) -> None:
    await h.client.patch(resources.VIRTUALCLUSTERS, name, {"status": {"clusterNamespace": value}},
                         namespace=h.ns, subresource="status")


async def test_each_bad_input_is_reported_and_others_keep_working(harness: Harness) -> None:
    """Unknown CV, bad CIDR, bad kubeconfigs, bad or foreign cluster keys each fail alone."""
    h = harness
    cv = await h.create_cv(provisioner="process")
    await h.create_vc("no-cv", cv="does-not-exist")
    await h.create_vc("bad-cidr", cv=cv, serviceCidr="10.0.0.0/33")
    await h.create_vc("wide-cidr", cv=cv, serviceCidr="10.0.0.0/8")
    await h.create_vc("not-base64", cv="imported", annotations={
        "tenancy.x-k8s.io/provisioner": "import", "tenancy.x-k8s.io/admin-kubeconfig": "%%%"})
    await h.create_vc("not-yaml", cv="imported", annotations={
        "tenancy.x-k8s.io/provisioner": "import",
        "tenancy.x-k8s.io/admin-kubeconfig": base64.b64encode(b"clusters: [unclosed").decode()})
    await h.create_vc("file-refs", cv="imported", annotations={
        "tenancy.x-k8s.io/provisioner": "import",
        "tenancy.x-k8s.io/admin-kubeconfig": base64.b64encode(
            b"apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://x:6443', "
            b"certificate-authority: /etc/ssl/ca.pem}}]\nusers: [{name: u, user: {client-key: /root/k}}]\n"
            b"contexts: [{name: d, context: {cluster: c, user: u}}]\ncurrent-context: d\n").decode()})
    await h.create_vc("bad-prov", cv=cv, annotations={"tenancy.x-k8s.io/provisioner": "cloud"})
    # Keys preset in status before the manager first sees the VirtualCluster.
    await h.create_vc("too-long", cv=cv)
    await _preset_cluster_namespace(h, "too-long", "k" * 70)
    await h.create_vc("squatter", cv=cv)
    await _preset_cluster_namespace(h, "squatter", h.ns)
    await h.create_vc("good", cv=cv)
    await h.start_manager()

    await _assert_rejected(h, "no-cv", "ClusterVersionNotFound", "desired ClusterVersion does-not-exist not found")
    await _assert_rejected(
        h, "bad-cidr", "InvalidServiceCidr",
        "spec.serviceCidr '10.0.0.0/33' is invalid: '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network")
    await _assert_rejected(
        h, "wide-cidr", "InvalidServiceCidr",
        "spec.serviceCidr '10.0.0.0/8' is invalid: 10.0.0.0/8: the IPv4 prefix length must be between /12 and /28")
    await _assert_rejected(
        h, "not-base64", "InvalidKubeconfig", "annotation tenancy.x-k8s.io/admin-kubeconfig is not valid base64")
    await _assert_rejected(
        h, "not-yaml", "InvalidKubeconfig",
        "annotation tenancy.x-k8s.io/admin-kubeconfig: kubeconfig is not valid YAML at line 1")
    await _assert_rejected(
        h, "file-refs", "InvalidKubeconfig",
        "annotation tenancy.x-k8s.io/admin-kubeconfig: only inline credentials are accepted; "
        "remove cluster 'c' certificate-authority, user 'u' client-key")
    await _assert_rejected(
        h, "bad-prov", "UnknownProvisioner",
        "annotation tenancy.x-k8s.io/provisioner is 'cloud'; expected one of process, native, import")
    await _assert_rejected(
        h, "too-long", "InvalidClusterNamespace",
        f"cluster key {'k' * 70!r} cannot name the root namespace: it must be a DNS-1123 label "
        "(lower-case alphanumerics and '-', at most 63 characters)")
    squatter = await _assert_rejected(
        h, "squatter", "ClusterNamespaceConflict",
        f"namespace {h.ns} already exists and is not the root namespace of this VirtualCluster "
        "(it belongs to no VirtualCluster)")
    assert squatter["metadata"]["finalizers"] == ["virtualcluster.finalizer.process"]

    await h.wait_phase("good", model.RUNNING, within=90)
    # Deleting the squatter must not delete the namespace it pointed at.
    await h.delete_vc("squatter")
    ns = await h.client.get(resources.NAMESPACES, h.ns)
    assert not ns["metadata"].get("deletionTimestamp")


async def test_error_vc_is_retried_after_its_spec_is_fixed(harness: Harness) -> None:
    """Fixing the spec of an Error VirtualCluster (new generation) provisions it again."""
    h = harness
    await h.start_manager()
    await h.create_vc("late-cv", cv="arrives-later", annotations={"tenancy.x-k8s.io/provisioner": "process"})
    await h.wait_phase("late-cv", model.ERROR, within=60)
    cv = await h.create_cv()
    await h.client.patch(resources.VIRTUALCLUSTERS, "late-cv", {"spec": {"clusterVersionName": cv}}, namespace=h.ns)
    vc = await h.wait_phase("late-cv", model.RUNNING, within=90)
    assert vc["status"]["retriesLeft"] == model.RETRIES


async def test_crd_refuses_resetting_a_phase_to_empty(harness: Harness) -> None:
    """The CRD's transition rule replaces the original's webhook: a set phase cannot become ""."""
    h = harness
    await controller.ensure_crds(h.client)
    await h.create_vc("phased", cv="any")
    await h.client.patch(resources.VIRTUALCLUSTERS, "phased", {"status": {"phase": "Running"}},
                         namespace=h.ns, subresource="status")
    with pytest.raises(errors.Invalid) as info:
        await h.client.patch(resources.VIRTUALCLUSTERS, "phased", {"status": {"phase": ""}},
                             namespace=h.ns, subresource="status")
    assert "cannot set virtualcluster.Status.Phase to empty" in info.value.message
    await h.client.delete(resources.VIRTUALCLUSTERS, "phased", namespace=h.ns)
