"""Namespaces: tenant namespace `X` ⇔ super namespace `<cluster key>-X` (hashed when long).

Cluster-scoped on both sides, so the generic reconcile is replaced: the work key is
`("", X)`. Deleting the super namespace (UID precondition) lets the super cluster's
namespace controller remove everything the tenant had in it.
"""

from __future__ import annotations

from typing import Any

from appliance.kube import errors, resources
from appliance.syncer import conversion, equality
from appliance.syncer.context import SyncContext
from appliance.syncer.resources.base import Kind, Permanent, owner_of, uid_of
from appliance.syncer.tenant import Tenant


class NamespaceKind(Kind):
    name = "namespace"
    resource = resources.NAMESPACES

    def super_key(self, tenant: Tenant, ns: str, name: str) -> tuple[str, str | None]:
        return tenant.id.super_namespace(name), None

    def work_key(self, vobj: dict[str, Any]) -> tuple[str, str]:
        return "", vobj["metadata"]["name"]

    def build(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any]) -> dict[str, Any]:
        tid = tenant.id
        obj = conversion.build_super_namespace(
            vobj, cluster_key=tid.key, vc_name=tid.vc_name, vc_namespace=tid.vc_namespace,
            vc_uid=tid.vc_uid, opaque_prefixes=tid.opaque_prefixes,
            opaque_domains=sx.settings.opaque_meta_domains,
        )
        obj.pop("spec", None)  # finalizers belong to the super cluster's namespace controller
        return obj

    def patch(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
        return equality.meta_dw_patch(
            vobj, pobj,
            exception_prefixes=(*tenant.id.opaque_prefixes, *tenant.id.transparent_prefixes),
            opaque_domains=sx.settings.opaque_meta_domains,
        )

    async def reconcile(self, sx: SyncContext, tenant: Tenant, ns: str, name: str) -> None:
        vobj = tenant.get(self.name, name)
        super_name = tenant.id.super_namespace(name)
        pobj = sx.super_cache(self.name).get(super_name)
        if pobj is not None and owner_of(pobj) != tenant.key:
            raise Permanent(f"super namespace {super_name} is not owned by this tenant")
        if vobj is None:
            if pobj is not None:
                await self.delete_super(sx, pobj)
            return
        if vobj["metadata"].get("deletionTimestamp"):
            return  # the tenant's namespace controller empties it; we delete when it is gone
        if pobj is None:
            try:
                await sx.super_client.create(self.resource, self.build(sx, tenant, vobj))
            except errors.AlreadyExists:
                current = await sx.super_client.get(self.resource, super_name)
                if owner_of(current) != tenant.key:
                    raise Permanent(
                        f"super namespace {super_name} exists and is not owned by this tenant"
                    ) from None
            return
        if conversion.tenant_uid(pobj) != uid_of(vobj):
            if pobj["metadata"].get("deletionTimestamp"):
                from appliance.syncer.resources.base import Retry

                raise Retry(f"super namespace {super_name} of an older tenant namespace is terminating")
            await self.delete_super(sx, pobj)
            return
        patch = self.patch(sx, tenant, vobj, pobj)
        if patch:
            await sx.super_client.patch(self.resource, super_name, patch)
