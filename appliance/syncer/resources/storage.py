"""StorageClasses and PriorityClasses: public super objects broadcast to every tenant.

"Public" is the super label `tenancy.x-k8s.io/super.public: "true"`, which is also the
super informer's selector, so an object that loses the label leaves the cache (the
watch reports it deleted). Every tenant gets a copy (metadata reset) of each public
object; a copy is patched when anything but metadata differs, and replaced when the
change touches an immutable field (e.g. a StorageClass provisioner, a PriorityClass
value). Tenant objects that carry the public label without a public super twin are
deleted; a tenant's own StorageClasses and PriorityClasses stay. The original deleted
every tenant StorageClass, which breaks tools and tests that manage StorageClasses
through the API (conformance's StorageClass lifecycle test); keeping them costs nothing,
since a claim naming a class the super cluster lacks just stays Pending there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from appliance.kube import errors, resources
from appliance.syncer import equality
from appliance.syncer.context import SyncContext
from appliance.syncer.resources.base import Retry
from appliance.syncer.resources.sourced import SuperSourcedKind, tenant_copy
from appliance.syncer.tenant import Tenant
from appliance.util import naming, tenancy

log = logging.getLogger(__name__)

PUBLIC_SELECTOR = f"{naming.LABEL_SUPER_PUBLIC}=true"
#: top-level fields that are not compared (the rest is the object's content)
_NOT_CONTENT = ("apiVersion", "kind", "metadata", "status")


def is_public(obj: Mapping[str, Any] | None) -> bool:
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(naming.LABEL_SUPER_PUBLIC) == "true"


def content_patch(vobj: Mapping[str, Any], pobj: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merge patch bringing the tenant copy's content (all but metadata) in line with super (pure)."""
    patch: dict[str, Any] | None = equality.json_merge_patch(
        {k: v for k, v in vobj.items() if k not in _NOT_CONTENT},
        {k: v for k, v in pobj.items() if k not in _NOT_CONTENT},
    )
    return patch


class PublicKind(SuperSourcedKind):
    """A cluster-scoped kind whose public super objects every tenant gets."""

    super_selector = PUBLIC_SELECTOR

    def removable(self, vobj: Mapping[str, Any]) -> bool:
        """Whether a tenant object without a public super twin is to be deleted."""
        return is_public(vobj)

    def owners(self, sx: SyncContext, pobj: dict[str, Any]) -> Iterable[tenancy.ClusterKey]:
        return list(sx.tenants) if is_public(pobj) else ()

    def out_of_sync(
        self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any] | None, pobj: dict[str, Any] | None
    ) -> bool:
        if pobj is not None and not is_public(pobj):
            pobj = None
        if pobj is None:
            return vobj is not None and self.removable(vobj) and not vobj["metadata"].get("deletionTimestamp")
        return vobj is None or content_patch(vobj, pobj) is not None

    async def reconcile(self, sx: SyncContext, tenant: Tenant, ns: str, name: str) -> None:
        vobj = tenant.get(self.name, name)
        pobj = sx.super_cache(self.name).get(name)
        if pobj is not None and not is_public(pobj):
            pobj = None
        if pobj is None:
            if vobj is not None and self.removable(vobj) and not vobj["metadata"].get("deletionTimestamp"):
                await self.delete_in_tenant(tenant, vobj)
            return
        if vobj is None:
            await self.create_in_tenant(tenant, tenant_copy(pobj))
            return
        patch = content_patch(vobj, pobj)
        if patch is None:
            return
        try:
            await tenant.client.patch(self.resource, name, patch)
        except errors.Invalid:
            # An immutable field changed in super: replace the tenant copy.
            log.info("tenant %s %s: immutable change; replacing it", self.name, name)
            await self.delete_in_tenant(tenant, vobj)
            raise Retry(f"replaced tenant {self.name} {name}") from None


class StorageClassKind(PublicKind):
    name = "storageclass"
    resource = resources.STORAGECLASSES


class PriorityClassKind(PublicKind):
    name = "priorityclass"
    resource = resources.PRIORITYCLASSES
