"""The shipped CRDs, their documented copies, the samples and imported-kubeconfig checks."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.manager import crds, kubeconfigs, model, reconcile

REPO = Path(__file__).resolve().parents[2]


def _by_name() -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in crds.manifests()}


def test_configs_copy_is_identical_to_the_packaged_crds() -> None:
    """configs/crds/ documents exactly what ensure_crds applies."""
    for name in crds.CRD_FILES:
        packaged = (REPO / "appliance" / "manager" / "crds" / name).read_bytes()
        assert (REPO / "configs" / "crds" / name).read_bytes() == packaged, name


def test_virtualcluster_crd_keeps_the_original_api() -> None:
    """Group, names, scope, spec fields and printer columns of the original, plus a status subresource."""
    crd = _by_name()["virtualclusters.tenancy.x-k8s.io"]
    spec = crd["spec"]
    assert spec["group"] == "tenancy.x-k8s.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "VirtualCluster"
    assert spec["names"]["shortNames"] == ["vc"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    assert set(schema["spec"]["properties"]) == {
        "clusterDomain", "clusterVersionName", "pkiExpireDays", "transparentMetaPrefixes",
        "opaqueMetaPrefixes", "serviceCidr"}
    assert schema["spec"]["required"] == ["clusterVersionName"]
    status = schema["status"]["properties"]
    assert {"phase", "clusterNamespace", "message", "reason", "conditions", "retriesLeft"} <= set(status)
    assert status["conditions"]["items"]["required"] == ["type", "status"]
    rule = schema["status"]["x-kubernetes-validations"][0]
    assert rule["message"] == "cannot set virtualcluster.Status.Phase to empty"
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:4] == [
        "Age", "Phase", "ClusterVersion", "ClusterNamespace"]
    assert columns["ClusterNamespace"]["priority"] == 1


def test_clusterversion_crd_is_cluster_scoped_and_open() -> None:
    """ClusterVersion: cluster scope, short name cv, bundles not validated."""
    crd = _by_name()["clusterversions.tenancy.x-k8s.io"]
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["shortNames"] == ["cv"]
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["x-kubernetes-preserve-unknown-fields"] is True
    assert set(spec["properties"]) == {"etcd", "apiServer", "controllerManager"}


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs" / "samples").glob("*.yaml")
                                         if not p.name.startswith("tenant-")), ids=lambda p: p.name)
def test_samples_parse_and_use_known_provisioners(path: Path) -> None:
    """Every sample for the super cluster is valid YAML of our API (or a Secret) and names a
    real provisioner (`tenant-*` samples are applied inside a tenant; see test_realnode_config)."""
    for doc in yaml.safe_load_all(path.read_text()):
        assert doc["apiVersion"] in ("tenancy.x-k8s.io/v1alpha1", "v1")
        chosen = (doc["metadata"].get("annotations") or {}).get(model.ANNOTATION_PROVISIONER)
        assert chosen is None or chosen in model.PROVISIONERS


def _kubeconfig(cluster: dict[str, Any], user: dict[str, Any]) -> kubeconfigs.Found:
    doc = {"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "c", "cluster": cluster}],
           "users": [{"name": "u", "user": user}],
           "contexts": [{"name": "d", "context": {"cluster": "c", "user": "u"}}], "current-context": "d"}
    return kubeconfigs.Found(yaml.safe_dump(doc).encode(), "annotation x")


def test_imported_kubeconfigs_must_be_inline() -> None:
    """Inline credentials are accepted; file paths and plugins are refused by name."""
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    ok = kubeconfigs.checked_credentials(_kubeconfig({"server": "https://h:6443", "certificate-authority-data": ca},
                                                     {"token": "t"}))
    assert ok.server == "https://h:6443"
    assert ok.token == "t"
    for cluster, user, refused in [
        ({"server": "https://h:6443", "certificate-authority": "/etc/ca"}, {"token": "t"},
         "cluster 'c' certificate-authority"),
        ({"server": "https://h:6443"}, {"tokenFile": "/var/run/token"}, "user 'u' tokenFile"),
        ({"server": "https://h:6443"}, {"exec": {"command": "sh"}}, "user 'u' exec"),
    ]:
        with pytest.raises(reconcile.Rejected) as info:
            kubeconfigs.checked_credentials(_kubeconfig(cluster, user))
        assert info.value.problem.message == f"annotation x: only inline credentials are accepted; remove {refused}"


def test_kubeconfig_without_server_is_rejected_with_the_parser_reason() -> None:
    """What the kubeconfig parser objects to is passed on, prefixed with the source."""
    with pytest.raises(reconcile.Rejected) as info:
        kubeconfigs.checked_credentials(_kubeconfig({}, {"token": "t"}))
    assert info.value.problem.reason == "InvalidKubeconfig"
    assert info.value.problem.message.startswith("annotation x: ")
