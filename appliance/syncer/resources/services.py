"""Services: copied down with the tenant's addresses removed or kept; the super's flow back up.

A synced Service keeps the tenant's node ports (the super cluster has the same default range,
and a virtual node has its super node's IP: the NodePort a tenant sees works there). It keeps
the tenant's cluster IP when the tenant's Service range is its own ServiceCIDR in the super
cluster (`manager/servicecidrs.py`, `Tenant.service_cidr`), else the super cluster allocates
one. When the super cluster refuses a kept port or address (taken by another tenant's or a
super Service), the field the refusal names is left to the super cluster and the tenant gets a
`NodePortNotKept` or `ClusterIPNotKept` Warning. Upward,
the tenant Service gets the super cluster IP in annotation
`transparency.tenancy.x-k8s.io/clusterIP` (what tenant DNS should answer, and how a tenant
finds the address that works), the transparent labels/annotations, and the load-balancer
status. Tenant `spec.clusterIP` stays as the tenant apiserver allocated it.

A Service with `spec.externalIPs` is refused (Permanent, so the tenant gets a FailedSync Event):
on the super cluster, kube-proxy would capture traffic to those addresses on every node, the
addresses of other tenants' Services or of the super apiserver included (CVE-2020-8554).
"""

from __future__ import annotations

from typing import Any

from appliance.kube import errors, resources
from appliance.syncer import conversion, equality
from appliance.syncer.context import SyncContext
from appliance.syncer.resources.base import Kind, Permanent, own_super_namespace
from appliance.syncer.tenant import Tenant
from appliance.util import naming


def upward_patch(tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
    """Tenant merge patch: super cluster IP annotation, transparent metadata (pure)."""
    patch = equality.meta_uw_patch(vobj, pobj, transparent_prefixes=tenant.id.transparent_prefixes)
    ip = (pobj.get("spec") or {}).get("clusterIP")
    annotations = (vobj.get("metadata") or {}).get("annotations") or {}
    if ip and ip != "None" and annotations.get(naming.ANNOTATION_TRANSPARENT_CLUSTER_IP) != ip:
        patch = equality.merge_patches(
            patch, {"metadata": {"annotations": {naming.ANNOTATION_TRANSPARENT_CLUSTER_IP: ip}}}
        )
    return patch


def kept_ip_patch(vobj: dict[str, Any], pobj: dict[str, Any], own_range: str | None) -> dict[str, Any] | None:
    """When a tenant Service gains a ClusterIP (an ExternalName one turned ClusterIP), its super
    twin, which has none yet, gets the same one if it lies in the tenant's own range: else the
    super cluster would pick an address at random, possibly in that very range (pure)."""
    vspec, pspec = vobj.get("spec") or {}, pobj.get("spec") or {}
    ip = vspec.get("clusterIP")
    if not ip or ip == "None" or pspec.get("clusterIP"):
        return None
    ips = vspec.get("clusterIPs") or [ip]
    return {"spec": {"clusterIP": ip, "clusterIPs": ips}} if conversion.in_range(ips, own_range) else None


MESSAGE_EXTERNAL_IPS = (
    "spec.externalIPs is not supported: in the super cluster it would capture traffic to those "
    "addresses on every node, other tenants' included"
)


_PORT_FIELDS = frozenset({"nodePort", "healthCheckNodePort"})
_IP_FIELDS = frozenset({"clusterIP", "clusterIPs"})


def refused_fields(exc: errors.ApiError) -> set[str]:
    """The Service fields a 422 names (`spec.ports[0].nodePort` → nodePort), pure."""
    causes = (exc.details or {}).get("causes") or ()
    return {str(c.get("field", "")).rsplit(".", 1)[-1].split("[", 1)[0] for c in causes if c.get("field")}


def has_external_ips(vobj: dict[str, Any]) -> bool:
    return bool((vobj.get("spec") or {}).get("externalIPs"))


class ServiceKind(Kind):
    name = "service"
    resource = resources.SERVICES
    has_upward = True

    def build(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any]) -> dict[str, Any]:
        if has_external_ips(vobj):
            raise Permanent(MESSAGE_EXTERNAL_IPS)
        return conversion.adapt_service(super().build(sx, tenant, vobj), own_range=tenant.service_cidr)

    async def create(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any]) -> None:
        body = self.build(sx, tenant, vobj)
        ns = own_super_namespace(sx, tenant, vobj["metadata"]["namespace"])
        while True:  # each refusal gives up at least one kept field, or is raised
            try:
                await self.create_super(sx, tenant, body, ns)
                return
            except errors.Invalid as exc:
                body = await self._without_refused(tenant, vobj, body, exc)

    async def _without_refused(self, tenant: Tenant, vobj: dict[str, Any], body: dict[str, Any],
                               exc: errors.Invalid) -> dict[str, Any]:
        """`body` without the kept fields the refusal names (all of them when it names none);
        re-raises when it names nothing that was kept."""
        fields = refused_fields(exc)
        ip = (body.get("spec") or {}).get("clusterIP")
        drop_ports = conversion.has_node_ports(body) and (not fields or bool(fields & _PORT_FIELDS))
        drop_ip = ip not in (None, "None") and (not fields or bool(fields & _IP_FIELDS))
        if not (drop_ports or drop_ip):
            raise exc
        if drop_ports:
            await self._ports_not_kept(tenant, vobj, exc)
            body = conversion.without_node_ports(body)
        if drop_ip:
            await self._not_kept(tenant, vobj, str(ip), exc)
            body = conversion.without_cluster_ips(body)
        return body

    async def update(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> None:
        if has_external_ips(vobj):
            raise Permanent(MESSAGE_EXTERNAL_IPS)
        try:
            await super().update(sx, tenant, vobj, pobj)
        except errors.Invalid as exc:
            kept = kept_ip_patch(vobj, pobj, tenant.service_cidr)
            ports = equality.service_spec_patch(vobj, pobj) != equality.service_spec_patch(
                vobj, pobj, keep_node_ports=False)
            if kept is None and not ports:
                raise
            if kept is not None:
                await self._not_kept(tenant, vobj, kept["spec"]["clusterIP"], exc)
            if ports:
                await self._ports_not_kept(tenant, vobj, exc)
            patch = self._patch(sx, tenant, vobj, pobj, keep_ip=False, keep_node_ports=False)
            if patch:
                meta = pobj["metadata"]
                await sx.super_client.patch(self.resource, meta["name"], patch, namespace=meta["namespace"])

    async def _ports_not_kept(self, tenant: Tenant, vobj: dict[str, Any], exc: errors.ApiError) -> None:
        await tenant.events.post(vobj, type="Warning", reason="NodePortNotKept", message=(
            f"a node port of this Service is not available in the super cluster ({exc.message}); "
            "the super cluster chose another, so this Service's nodePort does not work on the nodes"))

    async def _not_kept(self, tenant: Tenant, vobj: dict[str, Any], ip: str, exc: errors.ApiError) -> None:
        # The address is taken in the super cluster (by a Service created there before the
        # range was the tenant's): the Service still works, at the address DNS answers.
        await tenant.events.post(vobj, type="Warning", reason="ClusterIPNotKept", message=(
            f"ClusterIP {ip} is not available in the super cluster ({exc.message}); this Service is "
            f"reachable at the address in annotation {naming.ANNOTATION_TRANSPARENT_CLUSTER_IP}, "
            "which cluster DNS answers"))

    def patch(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
        return self._patch(sx, tenant, vobj, pobj, keep_ip=True)

    def _patch(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any], *,
               keep_ip: bool, keep_node_ports: bool = True) -> dict[str, Any] | None:
        return equality.merge_patches(
            super().patch(sx, tenant, vobj, pobj),
            equality.service_spec_patch(vobj, pobj, keep_node_ports=keep_node_ports),
            kept_ip_patch(vobj, pobj, tenant.service_cidr) if keep_ip else None,
        )

    async def upward(self, sx: SyncContext, tenant: Tenant, ns: str, name: str) -> None:
        vobj = tenant.get(self.name, name, ns)
        pobj = sx.super_cache(self.name).get(name, tenant.id.super_namespace(ns))
        if vobj is None or pobj is None or conversion.tenant_uid(pobj) != vobj["metadata"]["uid"]:
            return
        patch = upward_patch(tenant, vobj, pobj)
        if patch:
            await tenant.client.patch(self.resource, name, patch, namespace=ns)
        if (pobj.get("spec") or {}).get("type") == "LoadBalancer":
            status = equality.status_uw_patch(vobj, pobj)
            if status:
                await tenant.client.patch(self.resource, name, status, namespace=ns, subresource="status")

    def drifted(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any] | None) -> bool:
        if has_external_ips(vobj):
            return False  # refused with an Event when it changed; the patrol does not repeat it
        if super().drifted(sx, tenant, vobj, pobj):
            return True
        if pobj is not None and upward_patch(tenant, vobj, pobj):
            sx.enqueue_upward(tenant.key, self.name, vobj["metadata"]["namespace"], vobj["metadata"]["name"])
        return False
