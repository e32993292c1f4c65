"""Cluster add-ons of the test bed: CoreDNS, for the super cluster and as a tenant's DNS.

`coredns_objects` renders (purely) what a cluster DNS needs: ServiceAccount, ClusterRole
and binding, the Corefile, a Deployment and the `kube-system/kube-dns` Service. The super
cluster's copy answers for the super cluster (StatefulSet Pods of native tenant control
planes find `etcd-0.etcd` through it; the kubelet's `clusterDNS` points at it). A tenant's
copy (`tenant=True`) adds the `tenantip` plugin, so answers carry the super cluster's
address of each Service (the syncer's `transparency.tenancy.x-k8s.io/clusterIP`
annotation), and is what `configs/samples/tenant-coredns.yaml` holds.
`apply` server-side applies objects with the bed's admin credentials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from appliance.controlplane import cluster, images

NAMESPACE = "kube-system"
FIELD_MANAGER = "vc-appliance-testbed"


def corefile(*, tenant: bool, cluster_domain: str = "cluster.local") -> str:
    """No `forward`: nothing outside this machine is reachable, so other names fail fast."""
    tenantip = "    tenantip\n" if tenant else ""
    return (
        ".:53 {\n"
        "    errors\n"
        "    health {\n        lameduck 2s\n    }\n"
        "    ready\n"
        f"{tenantip}"
        f"    kubernetes {cluster_domain} in-addr.arpa ip6.arpa {{\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "        ttl 5\n"
        "    }\n"
        "    cache 5\n"
        "    reload\n"
        "    loadbalance\n"
        "}\n"
    )


def coredns_objects(
    *,
    tenant: bool,
    cluster_ip: str | None = None,
    image: str = images.COREDNS_IMAGE,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, str]] | None = None,
    cluster_domain: str = "cluster.local",
) -> list[dict[str, Any]]:
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": NAMESPACE}
    pod_spec: dict[str, Any] = {
        "serviceAccountName": "coredns",
        "dnsPolicy": "Default",
        "containers": [{
            "name": "coredns",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "args": ["-conf", "/etc/coredns/Corefile"],
            "ports": [
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
            ],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                              "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 5},
            "resources": {"requests": {"cpu": "50m", "memory": "40Mi"}, "limits": {"memory": "170Mi"}},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
        }],
        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
    }
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    service_spec: dict[str, Any] = {
        "selector": labels,
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        ],
    }
    if cluster_ip:
        service_spec["clusterIP"] = cluster_ip
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": NAMESPACE}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": dict(meta),
         "data": {"Corefile": corefile(tenant=tenant, cluster_domain=cluster_domain)}},
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        },
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": NAMESPACE, "labels": labels}, "spec": service_spec},
    ]


_PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts/{name}",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps/{name}",
    "Service": "/api/v1/namespaces/{ns}/services/{name}",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}",
}


async def apply(url: str, pki_dir: Path, objects: list[dict[str, Any]]) -> None:
    """Server-side apply `objects` as the cluster's admin; raises RuntimeError naming a refusal."""
    ctx = await trio.to_thread.run_sync(cluster.admin_ssl_context, pki_dir)
    async with httpx.AsyncClient(base_url=url, verify=ctx, trust_env=False, timeout=10) as c:
        for obj in objects:
            meta = obj["metadata"]
            path = _PATHS[obj["kind"]].format(ns=meta.get("namespace", ""), name=meta["name"])
            r = await c.patch(path, content=json.dumps(obj),
                              params={"fieldManager": FIELD_MANAGER, "force": "true"},
                              headers={"Content-Type": "application/apply-patch+yaml"})
            if r.status_code >= 300:
                raise RuntimeError(f"applying {obj['kind']} {meta['name']}: HTTP {r.status_code} {r.text[:300]}")


async def wait_deployment_ready(url: str, pki_dir: Path, namespace: str, name: str) -> None:
    """Return once every replica of the Deployment is available; the caller sets the deadline."""
    ctx = await trio.to_thread.run_sync(cluster.admin_ssl_context, pki_dir)
    async with httpx.AsyncClient(base_url=url, verify=ctx, trust_env=False, timeout=10) as c:
        while True:
            r = await c.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            if r.status_code == 200:
                d = r.json()
                want = (d.get("spec") or {}).get("replicas", 1)
                if (d.get("status") or {}).get("availableReplicas", 0) >= want:
                    return
            await trio.sleep(0.5)
