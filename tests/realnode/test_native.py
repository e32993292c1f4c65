"""The `native` provisioner really runs: a tenant control plane as Pods on the real node.

The ClusterVersion is the repository's sample (`configs/samples/clusterversion_native.yaml`)
with what a site without a registry changes: the locally built Kubernetes image instead of
registry.k8s.io, etcd's health read from its metrics port (the image has no etcdctl), and a
ClusterIP apiserver Service (the appliance reaches it through the node, as in-cluster).
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.realnode import nodebed
from tests.testbed import wait_for

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "samples" / "clusterversion_native.yaml"


def local_cluster_version(name: str) -> dict[str, Any]:
    cv = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    cv["metadata"]["name"] = name
    for part in ("etcd", "apiServer", "controllerManager"):
        for c in cv["spec"][part]["statefulset"]["spec"]["template"]["spec"]["containers"]:
            c["image"] = nodebed.KUBERNETES
            c["imagePullPolicy"] = "Never"
    etcd = cv["spec"]["etcd"]["statefulset"]["spec"]["template"]["spec"]["containers"][0]
    etcd["args"].append("--listen-metrics-urls=http://0.0.0.0:2381")
    etcd["readinessProbe"] = {"httpGet": {"port": 2381, "path": "/health"}, "periodSeconds": 2}
    api = cv["spec"]["apiServer"]
    api["service"]["spec"]["type"] = "ClusterIP"
    api["statefulset"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSeconds"] = 2
    return cv


async def test_a_native_tenant_runs_as_pods_on_the_real_node_and_serves_kubectl(
    appliance_super: nodebed.NodeEnv,
) -> None:
    """A VirtualCluster of a native ClusterVersion becomes Running with etcd, apiserver and
    controller-manager as Pods on the real node; its admin kubeconfig serves kubectl, and a
    Pod created in it runs on the same node through the syncer and reaches its own apiserver
    in-cluster (`kubernetes` points at the apiserver Pod)."""
    env = appliance_super
    suffix = uuid.uuid4().hex[:6]
    cv_name, vc_name = f"cv-native-{suffix}", f"native-{suffix}"
    cv = local_cluster_version(cv_name)
    cv["metadata"].setdefault("annotations", {})["tenancy.x-k8s.io/provisioner"] = "native"
    vc = {"apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
          "metadata": {"name": vc_name, "namespace": "default",
                       "labels": {nodebed.SELECTOR_LABEL: env.selector}},
          "spec": {"clusterDomain": "cluster.local", "clusterVersionName": cv_name, "pkiExpireDays": 365}}
    await env.kubectl_super("apply", "-f", "-", stdin=json.dumps(cv).encode())
    await env.kubectl_super("apply", "-f", "-", stdin=json.dumps(vc).encode())
    try:
        async def running() -> dict[str, Any] | None:
            out = await env.kubectl_super("get", "vc", vc_name, "-n", "default", "-o", "json")
            status = json.loads(out.stdout).get("status") or {}
            if status.get("phase") == "Error":
                raise AssertionError(f"VirtualCluster {vc_name} failed: {status}")
            return status if status.get("phase") == "Running" else None

        status = await wait_for(running, timeout=300, what=f"native VirtualCluster {vc_name} Running", interval=2)
        root = str(status["clusterNamespace"])  # type: ignore[index]
        pods = json.loads((await env.kubectl_super("get", "pods", "-n", root, "-o", "json")).stdout)["items"]
        placed = {p["metadata"]["name"]: (p["spec"].get("nodeName"), p["status"].get("phase")) for p in pods}
        node = env.bed.real_node["name"]
        assert placed == {"etcd-0": (node, "Running"), "apiserver-0": (node, "Running"),
                          "controller-manager-0": (node, "Running")}
        tenant = await env.kubeconfig_of(vc_name, root)
        version = json.loads((await env.kubectl_in(tenant, "version", "-o", "json")).stdout)
        assert version["serverVersion"]["gitVersion"] == "v1.37.2"

        async def default_sa() -> bool:
            return (await env.kubectl_in(tenant, "get", "sa", "default", check=False)).returncode == 0

        await wait_for(default_sa, timeout=120, what="the native tenant's controller-manager")
        name = f"in-native-{suffix}"
        script = "echo whoami=$(kubectl auth whoami -o jsonpath='{.status.userInfo.username}')"
        await nodebed.apply(env, tenant, nodebed.pod(name, image=nodebed.KUBERNETES, command=["sh", "-c", script],
                                                     restartPolicy="Never"))
        out = await nodebed.wait_succeeded(env, tenant, name)  # in-cluster: the apiserver Pod's endpoint
        assert "whoami=system:serviceaccount:default:default" in out
    finally:
        await env.kubectl_super("delete", "vc", vc_name, "-n", "default", "--timeout=120s", check=False)
        await env.kubectl_super("delete", "clusterversion", cv_name, "--timeout=60s", "--wait=false", check=False)
