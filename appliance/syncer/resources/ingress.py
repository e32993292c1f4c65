"""Ingresses (networking.k8s.io/v1, opt-in `ingress`): copied down, status flows back up.

Downward it is the generic namespaced copy plus the whole `spec`. Upward, the super
Ingress's transparent labels and annotations and its `status` (the load-balancer
addresses the super cluster's ingress controller publishes) are copied to the tenant.
"""

from __future__ import annotations

from typing import Any

from appliance.kube import resources
from appliance.syncer import conversion, equality
from appliance.syncer.context import SyncContext
from appliance.syncer.resources.base import Kind
from appliance.syncer.tenant import Tenant


def spec_patch(vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
    """Merge patch of the super Ingress's spec following the tenant's (pure)."""
    patch = equality.json_merge_patch(pobj.get("spec") or {}, vobj.get("spec") or {})
    return {"spec": patch} if patch is not None else None


def upward_patches(
    tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(metadata patch, status patch) for the tenant Ingress (pure)."""
    meta = equality.meta_uw_patch(vobj, pobj, transparent_prefixes=tenant.id.transparent_prefixes)
    return meta, equality.status_uw_patch(vobj, pobj)


class IngressKind(Kind):
    name = "ingress"
    resource = resources.INGRESSES
    has_upward = True

    def patch(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
        return equality.merge_patches(super().patch(sx, tenant, vobj, pobj), spec_patch(vobj, pobj))

    async def upward(self, sx: SyncContext, tenant: Tenant, ns: str, name: str) -> None:
        vobj = tenant.get(self.name, name, ns)
        pobj = sx.super_cache(self.name).get(name, tenant.id.super_namespace(ns))
        if vobj is None or pobj is None or conversion.tenant_uid(pobj) != vobj["metadata"]["uid"]:
            return
        meta, status = upward_patches(tenant, vobj, pobj)
        if meta:
            await tenant.client.patch(self.resource, name, meta, namespace=ns)
        if status:
            await tenant.client.patch(self.resource, name, status, namespace=ns, subresource="status")

    def drifted(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any] | None) -> bool:
        if super().drifted(sx, tenant, vobj, pobj):
            return True
        if pobj is not None and conversion.tenant_uid(pobj) == vobj["metadata"]["uid"] and any(
            upward_patches(tenant, vobj, pobj)
        ):
            sx.enqueue_upward(tenant.key, self.name, vobj["metadata"]["namespace"], vobj["metadata"]["name"])
        return False
