"""Rendering a ClusterVersion into the native control plane's objects."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.manager import pkisecrets, reconcile
from appliance.manager.provision import templates
from appliance.pki import certs

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "samples" / "clusterversion_native.yaml"
ROOT = "ns-fd1b34-vc1"


def sample() -> dict[str, Any]:
    return yaml.safe_load(SAMPLE.read_text())


@functools.cache
def pki() -> pkisecrets.TenantPKI:
    return pkisecrets.build(pkisecrets.PKIRequest(cluster_key=ROOT, vc_name="vc1"))


def test_bundles_come_in_deployment_order() -> None:
    """etcd, apiserver, controller-manager, named by their bundle metadata."""
    found = templates.bundles(sample())
    assert [b.name for b in found] == ["etcd", "apiserver", "controller-manager"]
    assert found[1].service_name == "apiserver-svc"
    assert found[1].service_type == "NodePort"


@pytest.mark.parametrize(("mutate", "message"), [
    pytest.param(lambda s: s["spec"].pop("etcd"), "has no spec.etcd", id="no-etcd"),
    pytest.param(lambda s: s["spec"].pop("apiServer"), "has no spec.apiServer", id="no-apiserver"),
    pytest.param(lambda s: s["spec"]["etcd"]["metadata"].update(name="kine"),
                 "try to deploy unknown component: kine", id="unknown-component"),
    pytest.param(lambda s: s["spec"]["apiServer"]["statefulset"]["metadata"].update(name="api"),
                 "spec.apiServer.statefulset is named 'api'; it must be 'apiserver'", id="sts-name"),
])
def test_undeployable_cluster_versions_are_rejected(mutate: Any, message: str) -> None:
    """A ClusterVersion that cannot be deployed is bad input with a precise message."""
    cv = sample()
    mutate(cv)
    with pytest.raises(reconcile.Rejected) as info:
        templates.bundles(cv)
    assert info.value.problem.reason == "InvalidClusterVersion"
    assert message in info.value.problem.message


def test_controller_manager_is_optional() -> None:
    """Without spec.controllerManager only etcd and the apiserver are deployed."""
    cv = sample()
    del cv["spec"]["controllerManager"]
    assert [b.name for b in templates.bundles(cv)] == ["etcd", "apiserver"]


def test_etcd_gets_initial_cluster_namespace_and_label() -> None:
    """etcd's first container gets `--initial-cluster` for every replica; templates stay untouched."""
    cv = sample()
    cv["spec"]["etcd"]["statefulset"]["spec"]["replicas"] = 3
    pristine = copy.deepcopy(cv)
    etcd = templates.bundles(cv)[0]
    sts = templates.render_statefulset(etcd, ROOT)
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    peers = "etcd-0=https://etcd-0.etcd:2380,etcd-1=https://etcd-1.etcd:2380,etcd-2=https://etcd-2.etcd:2380"
    assert args[-2:] == ["--initial-cluster", peers]
    assert sts["metadata"]["namespace"] == ROOT
    assert sts["apiVersion"] == "apps/v1"
    assert sts["kind"] == "StatefulSet"
    assert sts["spec"]["template"]["metadata"]["labels"] == {"component-name": "etcd", "tenancy.x-k8s.io/cluster": ROOT}
    assert cv == pristine
    assert templates.etcd_dns_names(etcd, ROOT) == (
        "etcd-0.etcd", "etcd-1.etcd", "etcd-2.etcd", "etcd", f"etcd-0.etcd.{ROOT}", f"etcd-1.etcd.{ROOT}",
        f"etcd-2.etcd.{ROOT}", f"etcd.{ROOT}")


def test_certificate_hashes_per_component() -> None:
    """apiserver and controller-manager pods carry hashes of the certificates they mount."""
    p = pki()
    api = templates.cert_hashes("apiserver", p, cm_kubeconfig=b"kc")
    assert api["root-ca-hash"] == certs.content_hash(p.root_ca.cert_pem, p.root_ca.key_pem)
    assert api["apiserver-ca-hash"] == certs.content_hash(p.apiserver.cert_pem, p.apiserver.key_pem)
    assert set(api) == {"root-ca-hash", "apiserver-ca-hash", "front-proxy-ca-hash", "serviceaccount-rsa-hash"}
    cm = templates.cert_hashes("controller-manager", p, cm_kubeconfig=b"kc")
    assert cm["controller-manager-kubeconfig-hash"] == certs.content_hash(b"kc")
    assert templates.cert_hashes("etcd", p, cm_kubeconfig=b"kc") == {}
    sts = templates.render_statefulset(templates.bundles(sample())[1], ROOT, annotations=api)
    assert sts["spec"]["template"]["metadata"]["annotations"] == api


def test_services_and_server_address() -> None:
    """Services move into the root namespace; kubeconfigs name the ClusterIP or `<svc>.<root>`."""
    api = templates.bundles(sample())[1]
    svc = templates.render_service(api, ROOT)
    assert svc is not None
    assert svc["metadata"] == {"name": "apiserver-svc", "namespace": ROOT}
    assert svc["apiVersion"] == "v1"
    assert svc["kind"] == "Service"
    assert templates.apiserver_server(api, ROOT) == f"https://apiserver-svc.{ROOT}:6443"
    assert templates.apiserver_server(api, ROOT, "10.32.0.7") == "https://10.32.0.7:6443"
    assert templates.render_service(templates.bundles(sample())[2], ROOT) is None
