"""Tenant DNS and Service traffic, seen from inside tenant Pods on the real node.

The tenant installs CoreDNS as `kube-system/kube-dns` (the sample in
`configs/samples/tenant-coredns.yaml`, with the `tenantip` plugin that answers with the
super cluster's address of each Service); its Pods then resolve their own Services and
`kubernetes.default`, and reach another tenant Pod through a Service, also at the ClusterIP the
tenant allocated (its Service range is its own ServiceCIDR in the super cluster).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from appliance.util import naming
from tests.realnode import nodebed
from tests.testbed import wait_for

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "samples" / "tenant-coredns.yaml"


async def _annotated_cluster_ip(env: nodebed.NodeEnv, t: nodebed.NodeBedTenant, ns: str, name: str) -> str:
    async def annotated() -> str | None:
        svc = await nodebed.get_json(env, t, "service", name, "-n", ns)
        return (svc["metadata"].get("annotations") or {}).get(naming.ANNOTATION_TRANSPARENT_CLUSTER_IP)

    return str(await wait_for(annotated, timeout=60, what=f"super cluster IP of tenant service {ns}/{name}"))


async def test_tenant_pods_resolve_their_services_and_reach_them_through_the_cluster_ip(
    appliance_super: nodebed.NodeEnv,
) -> None:
    """With the tenant's CoreDNS running, a Pod resolves `web` (search path), its FQDN and
    `kubernetes.default` to the super cluster's Service addresses, and fetches a page from
    another Pod through the Service by name and through the injected WEB_SERVICE_* variables."""
    env, t = appliance_super, appliance_super.tenant("blue")
    await env.kubectl_in(t, "apply", "-f", str(SAMPLE))

    async def dns_available() -> bool:
        d = await nodebed.get_json(env, t, "deployment", "coredns", "-n", "kube-system")
        return bool((d.get("status") or {}).get("availableReplicas"))

    await wait_for(dns_available, timeout=120, what="tenant CoreDNS available", interval=1)
    dns_ip = await _annotated_cluster_ip(env, t, "kube-system", "kube-dns")
    api_ip = await _annotated_cluster_ip(env, t, "default", "kubernetes")

    token = uuid.uuid4().hex
    web = nodebed.pod("web", command=["sh", "-c", f"mkdir -p /www && echo {token} > /www/index.html && "
                                                  "exec httpd -f -p 8080 -h /www"])
    web["metadata"]["labels"] = {"app": "web"}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    await nodebed.apply(env, t, web, service)
    await nodebed.wait_running(env, t, "web")
    web_ip = await _annotated_cluster_ip(env, t, "default", "web")
    # The tenant's Service range is its own ServiceCIDR in the super cluster: the address the
    # tenant allocated is the one that works (manager/servicecidrs.py).
    tenant_ip = (await nodebed.get_json(env, t, "service", "web"))["spec"]["clusterIP"]
    assert web_ip == tenant_ip

    # busybox's nslookup asks the cluster DNS itself; fetching by name goes through Go's
    # resolver (kubectl's, with the search path): busybox-static's wget crashes in glibc's static
    # resolver here (also for an address literal once the Pod has a cluster dnsConfig).
    script = """
echo "resolv=$(grep ^nameserver /etc/resolv.conf | head -1)"
echo "short=$(nslookup web | awk '/^Address/ {a=$NF} END {print a}')"
echo "fqdn=$(nslookup web.default.svc.cluster.local | awk '/^Address/ {a=$NF} END {print a}')"
echo "api=$(nslookup kubernetes.default.svc.cluster.local | awk '/^Address/ {a=$NF} END {print a}')"
printf 'apiVersion: v1\\nkind: Config\\n' > /tmp/none
echo "byname=$(kubectl --kubeconfig=/tmp/none --server=http://web get --raw /index.html)"
echo "env=$WEB_SERVICE_HOST:$WEB_SERVICE_PORT"
echo "bytenantip=$(kubectl --kubeconfig=/tmp/none --server=http://%s get --raw /index.html)"
echo "byenv=$(kubectl --kubeconfig=/tmp/none --server=http://$WEB_SERVICE_HOST:$WEB_SERVICE_PORT \\
  get --raw /index.html)"
"""
    name = f"client-{uuid.uuid4().hex[:6]}"
    await nodebed.apply(env, t, nodebed.pod(name, image=nodebed.KUBERNETES, command=["sh", "-c", script % tenant_ip],
                                            restartPolicy="Never"))
    out = await nodebed.wait_succeeded(env, t, name)
    lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert lines["resolv"] == f"nameserver {dns_ip}", out
    assert lines["short"] == web_ip, out
    assert lines["fqdn"] == web_ip, out
    assert lines["api"] == api_ip, out
    assert lines["byname"] == token, out
    assert lines["bytenantip"] == token, out
    assert lines["env"] == f"{web_ip}:80", out
    assert lines["byenv"] == token, out
