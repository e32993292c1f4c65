"""Syncer on the real test bed: Services get super cluster IPs (or keep the tenant's, when its
range is its own ServiceCIDR in the super cluster), and Pods are wired to them."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.kube import creds as kcreds
from appliance.kube import resources
from appliance.kube.client import open_client
from appliance.manager import servicecidrs
from appliance.syncer.tenant import TenantId
from appliance.util import naming
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory, wait_for

TRANSPARENT_IP = naming.ANNOTATION_TRANSPARENT_CLUSTER_IP


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


def service(name: str, *, selector: dict[str, str], ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector, "ports": ports}}


async def synced_service(env: syncing.Env, t: syncing.BedTenant, ns: str, name: str) -> tuple[dict, dict]:
    """Wait until tenant Service `ns/name` carries its super twin's IP; return (tenant, super)."""
    sup = await syncing.wait_object(env.superc, resources.SERVICES, name, namespace=naming.super_namespace(t.key, ns),
                                    where=lambda s: bool(s["spec"].get("clusterIP")),
                                    what=f"super service {ns}/{name} with a cluster IP")
    ip = sup["spec"]["clusterIP"]
    ten = await syncing.wait_object(
        t.client, resources.SERVICES, name, namespace=ns,
        where=lambda s: (s["metadata"].get("annotations") or {}).get(TRANSPARENT_IP) == ip,
        what=f"tenant service {ns}/{name} annotated with super IP {ip}",
    )
    return ten, sup


@syncing.deadline(120)
async def test_tenant_service_is_annotated_with_the_super_cluster_ip(
    env: syncing.Env,
) -> None:
    """A tenant Service's super twin gets its own cluster IP, which flows back as an annotation."""
    sx = await env.start()
    t = await env.tenant(sx, "svc")
    await syncing.tenant_namespace(t, "shop")
    await t.client.create(resources.SERVICES, service(
        "web", selector={"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": 8080}]), namespace="shop")

    ten, sup = await synced_service(env, t, "shop", "web")
    assert sup["spec"]["clusterIP"] not in ("", "None")
    assert sup["spec"]["clusterIP"] != ten["spec"]["clusterIP"]  # the super allocated its own
    assert sup["metadata"]["annotations"][naming.ANNOTATION_CLUSTER_IP] == ten["spec"]["clusterIP"]
    assert sup["spec"]["selector"] == {"app": "web"}
    assert [(p["port"], p["targetPort"]) for p in sup["spec"]["ports"]] == [(80, 8080)]
    # The tenant's own allocation is left as it was.
    assert ten["spec"]["clusterIP"] == (await t.client.get(resources.SERVICES, "web", namespace="shop"))["spec"]["clusterIP"]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or ()}


@syncing.deadline(120)
async def test_pods_resolve_dns_env_and_kubernetes_alias_to_super_ips(
    env: syncing.Env,
) -> None:
    """Super Pods get the tenant kube-dns (super IP) as nameserver, service env vars and the
    `kubernetes` host alias with super IPs; a Pod made before kube-dns exists gets dnsPolicy Default."""
    sx = await env.start()
    t = await env.tenant(sx, "dns")
    await syncing.tenant_namespace(t, "shop")
    super_shop = naming.super_namespace(t.key, "shop")
    await t.client.create(resources.SERVICES, service(
        "web-api", selector={"app": "web"}, ports=[{"name": "http", "port": 80}, {"name": "admin", "port": 9000}],
    ), namespace="shop")
    _, sup_web = await synced_service(env, t, "shop", "web-api")
    _, sup_kubernetes = await synced_service(env, t, "default", "kubernetes")

    await t.client.create(resources.PODS, syncing.pod_manifest("early"), namespace="shop")
    early = await syncing.wait_object(env.superc, resources.PODS, "early", namespace=super_shop)
    assert early["spec"]["dnsPolicy"] == "Default"  # no tenant DNS yet: the node's resolver

    await t.client.create(resources.SERVICES, service(
        "kube-dns", selector={"k8s-app": "kube-dns"},
        ports=[{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
    ), namespace="kube-system")
    ten_dns, sup_dns = await synced_service(env, t, "kube-system", "kube-dns")
    assert sup_dns["spec"]["clusterIP"] != ten_dns["spec"]["clusterIP"]

    user_env = [{"name": "WEB_API_SERVICE_HOST", "value": "mine"}, {"name": "OTHER", "value": "x"}]
    body = syncing.pod_manifest("client")
    body["spec"]["containers"].append({"name": "second", "image": "busybox", "env": user_env})
    await t.client.create(resources.PODS, body, namespace="shop")
    pod = await syncing.wait_object(env.superc, resources.PODS, "client", namespace=super_shop)
    spec = pod["spec"]

    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"]["nameservers"] == [sup_dns["spec"]["clusterIP"]]
    assert spec["dnsConfig"]["searches"] == ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    assert {"name": "ndots", "value": "5"} in spec["dnsConfig"]["options"]

    web_ip, api_ip = sup_web["spec"]["clusterIP"], sup_kubernetes["spec"]["clusterIP"]
    first, second = (_env(c) for c in spec["containers"])
    assert first["WEB_API_SERVICE_HOST"] == web_ip
    assert first["WEB_API_SERVICE_PORT"] == "80"
    assert first["WEB_API_SERVICE_PORT_ADMIN"] == "9000"
    assert first["WEB_API_PORT"] == f"tcp://{web_ip}:80"
    assert first["WEB_API_PORT_9000_TCP_ADDR"] == web_ip
    assert first["KUBERNETES_SERVICE_HOST"] == "kubernetes"  # resolved by the host alias below
    assert first["KUBERNETES_SERVICE_PORT"] == str(sup_kubernetes["spec"]["ports"][0]["port"])
    assert first["KUBERNETES_PORT"] == f"tcp://{api_ip}:{sup_kubernetes['spec']['ports'][0]['port']}"
    assert second["WEB_API_SERVICE_HOST"] == "mine"  # the tenant's own variable wins
    assert second["OTHER"] == "x"
    aliases = {a["ip"]: a["hostnames"] for a in spec.get("hostAliases") or ()}
    assert set(aliases) == {api_ip}
    assert {"kubernetes", "kubernetes.default", "kubernetes.default.svc"} <= set(aliases[api_ip])


@syncing.deadline(180)
async def test_a_tenant_with_its_own_service_cidr_keeps_its_cluster_ips(env: syncing.Env) -> None:
    """When the tenant's Service range is its ServiceCIDR in the super cluster, the super twin
    of a tenant Service has the tenant's very ClusterIP; an address the super cluster already
    gave away is not taken from its owner: that Service gets a super address and the tenant a
    ClusterIPNotKept Warning."""
    cidrs = (await env.superc.list(resources.SERVICECIDRS)).items
    own = servicecidrs.pick_free(servicecidrs.DEFAULT_POOL, 24, cidrs)
    assert own is not None
    taken_ip = str(list(ipaddress.ip_network(own).hosts())[200])
    cp = await env.make("own", controller_manager=True, virtual_nodes=True, service_cidr=own)
    vc = await syncing.register_vc(env.superc, cp, kubeconfig=False)
    env.stack.push_async_callback(syncing.forget_vc, env.superc, vc)
    key = TenantId.from_vc(vc).key
    assert await servicecidrs.ensure(env.superc, key, requested=own) == own
    env.stack.push_async_callback(servicecidrs.release, env.superc, key)
    # A super Service created first, at an address of the range (as one made before the range
    # was the tenant's would have).
    squatter_ns = f"squat-{key[-8:]}"
    await env.superc.create(resources.NAMESPACES, {"metadata": {"name": squatter_ns}})
    env.stack.push_async_callback(env.superc.delete, resources.NAMESPACES, squatter_ns)
    await env.superc.create(resources.SERVICES, {"metadata": {"name": "squatter"}, "spec": {
        "clusterIP": taken_ip, "ports": [{"port": 80}]}}, namespace=squatter_ns)

    sx = await env.start()
    t = syncing.BedTenant(cp=cp, vc=vc, id=TenantId.from_vc(vc), client=await env.stack.enter_async_context(
        open_client(await kcreds.load_kubeconfig(cp.admin_kubeconfig))))
    await env.serve(sx, t)
    await syncing.tenant_namespace(t, "shop")
    await t.client.create(resources.SERVICES, service(
        "web", selector={"app": "web"}, ports=[{"port": 80, "targetPort": 8080}]), namespace="shop")
    ten, sup = await synced_service(env, t, "shop", "web")
    assert ipaddress.ip_address(ten["spec"]["clusterIP"]) in ipaddress.ip_network(own)
    assert sup["spec"]["clusterIP"] == ten["spec"]["clusterIP"]
    assert sup["spec"]["clusterIPs"] == ten["spec"]["clusterIPs"]

    clash = service("clash", selector={"app": "web"}, ports=[{"port": 80}])
    clash["spec"]["clusterIP"] = taken_ip
    await t.client.create(resources.SERVICES, clash, namespace="shop")
    ten, sup = await synced_service(env, t, "shop", "clash")
    assert ten["spec"]["clusterIP"] == taken_ip and sup["spec"]["clusterIP"] != taken_ip
    squatter = await env.superc.get(resources.SERVICES, "squatter", namespace=squatter_ns)
    assert squatter["spec"]["clusterIP"] == taken_ip  # untouched

    async def warned() -> bool:
        events = (await t.client.list(resources.EVENTS, namespace="shop")).items
        return any(e["reason"] == "ClusterIPNotKept" and e["involvedObject"]["name"] == "clash"
                   and taken_ip in e["message"] for e in events)

    await wait_for(warned, timeout=30, what="ClusterIPNotKept Warning on tenant service clash")

    # An ExternalName Service (no address) turned ClusterIP gets the tenant's address too.
    ext = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
           "spec": {"type": "ExternalName", "externalName": "a.example.com"}}
    await t.client.create(resources.SERVICES, ext, namespace="shop")
    await syncing.wait_object(env.superc, resources.SERVICES, "ext", namespace=naming.super_namespace(t.key, "shop"))
    await t.client.patch(resources.SERVICES, "ext", {"spec": {"type": "ClusterIP", "externalName": None,
                                                             "ports": [{"port": 80}]}}, namespace="shop")
    ten, sup = await synced_service(env, t, "shop", "ext")
    assert sup["spec"]["type"] == "ClusterIP" and sup["spec"]["clusterIP"] == ten["spec"]["clusterIP"]


@syncing.deadline(120)
async def test_node_ports_are_the_tenants_unless_the_super_cluster_has_given_them_away(env: syncing.Env) -> None:
    """A NodePort Service's super twin has the node port its tenant was given (what a client dials
    on a node); one turned NodePort later gets it too. A port the super cluster already gave to
    someone else stays theirs: the Service gets another and the tenant a NodePortNotKept Warning."""
    sx = await env.start()
    t = await env.tenant(sx, "np")
    await syncing.tenant_namespace(t, "shop")
    super_ns = naming.super_namespace(t.key, "shop")
    await t.client.create(resources.SERVICES, {**service("web", selector={"app": "web"}, ports=[{"port": 80}]),
                                               "spec": {"type": "NodePort", "selector": {"app": "web"},
                                                        "ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "tls"}]}},
                          namespace="shop")
    ten, sup = await synced_service(env, t, "shop", "web")
    assert [p["nodePort"] for p in sup["spec"]["ports"]] == [p["nodePort"] for p in ten["spec"]["ports"]]

    await t.client.create(resources.SERVICES, service("later", selector={"app": "web"}, ports=[{"port": 80}]),
                          namespace="shop")
    await synced_service(env, t, "shop", "later")
    await t.client.patch(resources.SERVICES, "later", {"spec": {"type": "NodePort"}}, namespace="shop")
    given = (await t.client.get(resources.SERVICES, "later", namespace="shop"))["spec"]["ports"][0]["nodePort"]
    await syncing.wait_object(env.superc, resources.SERVICES, "later", namespace=super_ns,
                              where=lambda s: s["spec"].get("type") == "NodePort"
                              and s["spec"]["ports"][0].get("nodePort") == given,
                              what=f"super service later with the tenant's node port {given}")

    # A super Service holds a port first; the tenant asks for the same one.
    squatter_ns = f"squat-np-{t.key[-8:]}"
    await env.superc.create(resources.NAMESPACES, {"metadata": {"name": squatter_ns}})
    env.stack.push_async_callback(env.superc.delete, resources.NAMESPACES, squatter_ns)
    squatter = await env.superc.create(resources.SERVICES, {"metadata": {"name": "squatter"}, "spec": {
        "type": "NodePort", "ports": [{"port": 80}]}}, namespace=squatter_ns)
    taken = squatter["spec"]["ports"][0]["nodePort"]
    await t.client.create(resources.SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "clash"},
                                               "spec": {"type": "NodePort", "selector": {"app": "web"},
                                                        "ports": [{"port": 80, "nodePort": taken}]}},
                          namespace="shop")
    _, sup = await synced_service(env, t, "shop", "clash")
    assert sup["spec"]["ports"][0]["nodePort"] not in (None, taken)
    assert (await env.superc.get(resources.SERVICES, "squatter", namespace=squatter_ns))["spec"]["ports"][0][
        "nodePort"] == taken  # untouched

    async def warned() -> bool:
        events = (await t.client.list(resources.EVENTS, namespace="shop")).items
        return any(e["reason"] == "NodePortNotKept" and e["involvedObject"]["name"] == "clash" for e in events)

    await wait_for(warned, timeout=30, what="NodePortNotKept Warning on tenant service clash")


@syncing.deadline(120)
async def test_user_managed_endpoint_slices_are_copied_controller_ones_are_not(env: syncing.Env) -> None:
    """An EndpointSlice a user manages for a selector-less Service reaches the super namespace with
    its service-name and managed-by labels (kube-proxy reads them); the slices the tenant's own
    endpointslice controller writes for a selector Service stay in the tenant."""
    sx = await env.start()
    t = await env.tenant(sx, "eps")
    await syncing.tenant_namespace(t, "shop")
    await t.client.create(resources.SERVICES, service("manual", selector={}, ports=[{"port": 80}]), namespace="shop")
    await t.client.create(resources.SERVICES, service("auto", selector={"app": "x"}, ports=[{"port": 80}]),
                          namespace="shop")
    labels = {"kubernetes.io/service-name": "manual", "endpointslice.kubernetes.io/managed-by": "me.example.com"}
    await t.client.create(resources.ENDPOINTSLICES, {
        "metadata": {"name": "manual-1", "labels": labels}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}, namespace="shop")
    super_ns = naming.super_namespace(t.key, "shop")
    copy = await syncing.wait_object(env.superc, resources.ENDPOINTSLICES, "manual-1", namespace=super_ns)
    assert {k: copy["metadata"]["labels"][k] for k in labels} == labels
    assert copy["endpoints"][0]["addresses"] == ["10.1.2.3"] and copy["ports"][0]["port"] == 8080

    async def controller_slice() -> list[dict[str, Any]] | None:
        items = (await t.client.list(resources.ENDPOINTSLICES, namespace="shop",
                                     label_selector="kubernetes.io/service-name=auto")).items
        return items or None

    auto = await wait_for(controller_slice, timeout=30, what="the tenant controller's slice for auto")
    await syncing.wait_quiet(sx, scans=0)
    for s in auto:  # type: ignore[union-attr]
        assert await syncing.get_or_none(env.superc, resources.ENDPOINTSLICES, s["metadata"]["name"],
                                         namespace=super_ns) is None
