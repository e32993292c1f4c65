"""Services: copied down with the tenant's addresses removed or kept; the super's flow back up.

The super cluster allocates the node ports of every synced Service, and its cluster IP unless
the tenant's Service range is its own ServiceCIDR in the super cluster
(`manager/servicecidrs.py`, `Tenant.service_cidr`): then the super Service is created with
the tenant's ClusterIP, so the address the tenant sees is the one that works; if the super
cluster refuses it (taken by a Service made before the range was the tenant's) the Service
gets a super address and the tenant a `ClusterIPNotKept` Warning. Upward,
the tenant Service gets the super cluster IP in annotation
`transparency.tenancy.x-k8s.io/clusterIP` (what tenant DNS should answer, and how a tenant
finds the address that works), the transparent labels/annotations, and the load-balancer
status. Tenant `spec.clusterIP` stays as the tenant apiserver allocated it.

A Service with `spec.externalIPs` is refused (Permanent, so the tenant gets a FailedSync Event):
on the super cluster, kube-proxy would capture traffic to those addresses on every node, the
addresses of other tenants' Services or of the super apiserver included (CVE-2020-8554).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.kube import errors, resources
from appliance.syncer import conversion, equality
from appliance.syncer.resources.base import Kind, Permanent, own_super_namespace
from appliance.syncer.tenant import Tenant
from appliance.util import naming

if TYPE_CHECKING:
    from appliance.syncer.runtime import Syncer


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


def has_external_ips(vobj: dict[str, Any]) -> bool:
    return bool((vobj.get("spec") or {}).get("externalIPs"))


class ServiceKind(Kind):
    name = "service"
    resource = resources.SERVICES
    has_upward = True

    def build(self, sx: Syncer, tenant: Tenant, vobj: dict[str, Any]) -> dict[str, Any]:
        if has_external_ips(vobj):
            raise Permanent(MESSAGE_EXTERNAL_IPS)
        return conversion.adapt_service(super().build(sx, tenant, vobj), own_range=tenant.service_cidr)

    async def create(self, sx: Syncer, tenant: Tenant, vobj: dict[str, Any]) -> None:
        body = self.build(sx, tenant, vobj)
        ns = own_super_namespace(sx, tenant, vobj["metadata"]["namespace"])
        try:
            await self.create_super(sx, tenant, body, ns)
        except errors.Invalid as exc:
            if (body.get("spec") or {}).get("clusterIP") in (None, "None"):
                raise
            await self._not_kept(tenant, vobj, body["spec"]["clusterIP"], exc)
            await self.create_super(sx, tenant, conversion.without_cluster_ips(body), ns)

    async def update(self, sx: Syncer, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> None:
        if has_external_ips(vobj):
            raise Permanent(MESSAGE_EXTERNAL_IPS)
        try:
            await super().update(sx, tenant, vobj, pobj)
        except errors.Invalid as exc:
            kept = kept_ip_patch(vobj, pobj, tenant.service_cidr)
            if kept is None:
                raise
            await self._not_kept(tenant, vobj, kept["spec"]["clusterIP"], exc)
            patch = self._patch(sx, tenant, vobj, pobj, keep_ip=False)
            if patch:
                meta = pobj["metadata"]
                await sx.super_client.patch(self.resource, meta["name"], patch, namespace=meta["namespace"])

    async def _not_kept(self, tenant: Tenant, vobj: dict[str, Any], ip: str, exc: errors.ApiError) -> None:
        # The address is taken in the super cluster (by a Service created there before the
        # range was the tenant's): the Service still works, at the address DNS answers.
        await tenant.events.post(vobj, type="Warning", reason="ClusterIPNotKept", message=(
            f"ClusterIP {ip} is not available in the super cluster ({exc.message}); this Service is "
            f"reachable at the address in annotation {naming.ANNOTATION_TRANSPARENT_CLUSTER_IP}, "
            "which cluster DNS answers"))

    def patch(self, sx: Syncer, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
        return self._patch(sx, tenant, vobj, pobj, keep_ip=True)

    def _patch(self, sx: Syncer, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any], *,
               keep_ip: bool) -> dict[str, Any] | None:
        return equality.merge_patches(
            super().patch(sx, tenant, vobj, pobj), equality.service_spec_patch(vobj, pobj),
            kept_ip_patch(vobj, pobj, tenant.service_cidr) if keep_ip else None,
        )

    async def upward(self, sx: Syncer, tenant: Tenant, ns: str, name: str) -> None:
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

    def drifted(self, sx: Syncer, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any] | None) -> bool:
        if has_external_ips(vobj):
            return False  # refused with an Event when it changed; the patrol does not repeat it
        if super().drifted(sx, tenant, vobj, pobj):
            return True
        if pobj is not None and upward_patch(tenant, vobj, pobj):
            sx.enqueue_upward(tenant.key, self.name, vobj["metadata"]["namespace"], vobj["metadata"]["name"])
        return False
