"""The native provisioner renders the ClusterVersion into the root namespace and follows readiness.

kwok runs the StatefulSets' Pods as fakes that turn Ready once scheduled, and the super KCM's
StatefulSet controller keeps `status.readyReplicas` honest (it would overwrite a hand-made
status patch). So each component's Pods get a nodeSelector that no node matches until the test
labels a kwok node: readiness is released one component at a time, for real.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from cryptography import x509

from appliance.kube import errors, resources
from appliance.manager import model
from appliance.pki import certs
from tests.integration import manager_harness as common
from tests.integration.manager_harness import Harness
from tests.testbed import SuperCluster, wait_for

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "samples" / "clusterversion_native.yaml"
BUNDLES = {"etcd": "etcd", "apiServer": "apiserver", "controllerManager": "controller-manager"}


@pytest.fixture
async def harness(super_cluster: SuperCluster, nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Harness]:
    """The manager test harness (see manager_harness)."""
    async with common.open_harness(super_cluster, nursery, tmp_path) as h:
        yield h


@pytest.fixture
async def gate_node(super_cluster: SuperCluster) -> AsyncIterator[str]:
    """A kwok node whose test labels are removed afterwards."""
    node = super_cluster.nodes[0]
    yield node
    async with common.open_super_client(super_cluster) as client:
        labels = (await client.get(resources.NODES, node))["metadata"].get("labels") or {}
        stale = {k: None for k in labels if k.startswith("vc-appliance.test/")}
        if stale:
            await client.patch(resources.NODES, node, {"metadata": {"labels": stale}})


def _gate(run_id: str, component: str) -> str:
    return f"vc-appliance.test/{run_id}-{component}"


async def _sts(h: Harness, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return await h.client.get(resources.STATEFULSETS, name, namespace=ns)
    except errors.NotFound:
        return None


async def _wait_sts(h: Harness, ns: str, name: str) -> dict[str, Any]:
    async def exists() -> dict[str, Any] | None:
        return await _sts(h, ns, name)

    return await wait_for(exists, timeout=60, what=f"StatefulSet {ns}/{name}")  # type: ignore[return-value]


async def _open(h: Harness, node: str, component: str) -> None:
    await h.client.patch(resources.NODES, node, {"metadata": {"labels": {_gate(h.run_id, component): "open"}}})


def _secret_cert(secret: dict[str, Any]) -> certs.CertKey:
    return certs.CertKey(base64.b64decode(secret["data"]["tls.crt"]), base64.b64decode(secret["data"]["tls.key"]))


def _sans(ck: certs.CertKey) -> tuple[set[str], set[str]]:
    ext = ck.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)), {str(i) for i in ext.get_values_for_type(x509.IPAddress)}


def _expected_sts(template: dict[str, Any], root: str) -> dict[str, Any]:
    sts = copy.deepcopy(template)
    sts["metadata"]["namespace"] = root
    sts["spec"]["template"]["metadata"]["labels"]["tenancy.x-k8s.io/cluster"] = root
    return sts


async def test_native_objects_follow_the_cluster_version_and_readiness(harness: Harness, gate_node: str) -> None:
    """etcd, apiserver and controller-manager appear one by one as each becomes ready, exactly as rendered."""
    h = harness
    cv_doc = yaml.safe_load(SAMPLE.read_text())
    spec = cv_doc["spec"]
    for field, component in BUNDLES.items():
        spec[field]["statefulset"]["spec"]["template"]["spec"]["nodeSelector"] = {_gate(h.run_id, component): "open"}
    cv = await h.create_cv(spec, provisioner="native")
    await h.start_manager()
    await h.client.create(resources.VIRTUALCLUSTERS, {
        "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": "np", "namespace": h.ns, "labels": {
            "vc-appliance.test/run": h.run_id, "tenancy.x-k8s.io/external-apiserver-domain": "np.example.com"}},
        "spec": {"clusterVersionName": cv, "clusterDomain": "corp.local", "pkiExpireDays": 30},
    })
    vc = await h.wait_vc("np", lambda v: (v.get("status") or {}).get("clusterNamespace"), what="a cluster key")
    root = vc["status"]["clusterNamespace"]

    etcd = await _wait_sts(h, root, "etcd")
    want = _expected_sts(spec["etcd"]["statefulset"], root)
    want["spec"]["template"]["spec"]["containers"][0]["args"] += [
        "--initial-cluster", "etcd-0=https://etcd-0.etcd:2380"]
    assert etcd["metadata"]["namespace"] == root
    assert etcd["spec"]["template"]["metadata"]["labels"] == want["spec"]["template"]["metadata"]["labels"]
    assert etcd["spec"]["template"]["spec"]["containers"][0]["args"] == (
        want["spec"]["template"]["spec"]["containers"][0]["args"])
    assert etcd["spec"]["serviceName"] == "etcd"
    assert etcd["spec"]["updateStrategy"] == {"type": "OnDelete"}
    etcd_svc = await h.client.get(resources.SERVICES, "etcd", namespace=root)
    assert etcd_svc["spec"]["clusterIP"] == "None"
    assert etcd_svc["spec"]["publishNotReadyAddresses"] is True
    assert await _sts(h, root, "apiserver") is None, "apiserver must wait for etcd"
    assert (await h.get_vc("np"))["status"]["phase"] == model.PENDING  # type: ignore[index]

    secrets = {s["metadata"]["name"]: s for s in (await h.client.list(resources.SECRETS, namespace=root)).items}
    apiserver_cert = _secret_cert(secrets["apiserver-ca"])
    dns, ips = _sans(apiserver_cert)
    assert apiserver_cert.cert.subject.rfc4514_string() == f"CN={root}"
    assert {"kubernetes.default.svc.corp.local", f"apiserver-svc.{root}", "np", "np.example.com"} <= dns
    assert ips == set()  # NodePort Service: no ClusterIP in the certificate
    etcd_dns, etcd_ips = _sans(_secret_cert(secrets["etcd-ca"]))
    assert etcd_dns == {"etcd-0.etcd", "etcd", f"etcd-0.etcd.{root}", f"etcd.{root}"}
    assert etcd_ips == {"127.0.0.1"}
    lifetime = apiserver_cert.cert.not_valid_after_utc - apiserver_cert.cert.not_valid_before_utc
    assert dt.timedelta(days=29) < lifetime < dt.timedelta(days=31)  # pkiExpireDays honoured
    admin = yaml.safe_load(base64.b64decode(secrets["admin-kubeconfig"]["data"]["admin-kubeconfig"]))
    assert admin["clusters"][0]["cluster"]["server"] == f"https://apiserver-svc.{root}:6443"
    assert admin["users"][0]["name"] == "admin"
    assert admin["current-context"] == "default"
    live_cv = await h.client.get(resources.CLUSTERVERSIONS, cv)
    assert "clusterVersion.finalizers" in live_cv["metadata"]["finalizers"]

    await _open(h, gate_node, "etcd")
    api = await _wait_sts(h, root, "apiserver")
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    root_ca = _secret_cert(secrets["root-ca"])
    assert annotations["root-ca-hash"] == certs.content_hash(root_ca.cert_pem, root_ca.key_pem)
    assert annotations["apiserver-ca-hash"] == certs.content_hash(apiserver_cert.cert_pem, apiserver_cert.key_pem)
    assert set(annotations) == {"root-ca-hash", "apiserver-ca-hash", "front-proxy-ca-hash", "serviceaccount-rsa-hash"}
    assert api["spec"]["template"]["metadata"]["labels"]["tenancy.x-k8s.io/cluster"] == root
    svc = await h.client.get(resources.SERVICES, "apiserver-svc", namespace=root)
    assert svc["spec"]["type"] == "NodePort"
    assert await _sts(h, root, "controller-manager") is None, "controller-manager must wait for the apiserver"

    await _open(h, gate_node, "apiserver")
    cm = await _wait_sts(h, root, "controller-manager")
    assert set(cm["spec"]["template"]["metadata"]["annotations"]) == {
        "root-ca-hash", "serviceaccount-rsa-hash", "controller-manager-kubeconfig-hash"}
    assert (await h.get_vc("np"))["status"]["phase"] == model.PENDING  # type: ignore[index]

    await _open(h, gate_node, "controller-manager")
    vc = await h.wait_phase("np", model.RUNNING, within=60)
    assert vc["status"]["message"] == "tenant control plane is running"
    assert vc["metadata"]["finalizers"] == ["virtualcluster.finalizer.native"]

    await h.delete_vc("np", within=120)
    with pytest.raises(errors.NotFound):
        await h.client.get(resources.NAMESPACES, root)
    await h.client.delete(resources.CLUSTERVERSIONS, cv)

    async def cv_gone() -> bool:
        try:
            await h.client.get(resources.CLUSTERVERSIONS, cv)
        except errors.NotFound:
            return True
        return False

    await wait_for(cv_gone, timeout=30, what="the ClusterVersion finalizer is removed on delete")


async def test_deleting_a_native_vc_interrupts_its_readiness_wait(harness: Harness) -> None:
    """A VC deleted while its etcd never gets ready is torn down at once, not after the timeout."""
    h = harness
    cv_doc = yaml.safe_load(SAMPLE.read_text())
    cv_doc["spec"]["etcd"]["statefulset"]["spec"]["template"]["spec"]["nodeSelector"] = {
        _gate(h.run_id, "never"): "open"}
    cv = await h.create_cv(cv_doc["spec"], provisioner="native")
    await h.start_manager(provisioner_timeout=600.0)
    await h.create_vc("stuck", cv=cv)
    vc = await h.wait_vc("stuck", lambda v: (v.get("status") or {}).get("clusterNamespace"), what="a cluster key")
    root = vc["status"]["clusterNamespace"]
    await _wait_sts(h, root, "etcd")
    await h.delete_vc("stuck", within=60)
    with pytest.raises(errors.NotFound):
        await h.client.get(resources.NAMESPACES, root)
