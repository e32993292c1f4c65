"""Kinds whose source of truth is the super cluster: the super object is copied *up*.

A `SuperSourcedKind` is cluster-scoped on both sides and keeps its name. Its work items
live in the kind's ordinary fair queue as `(tenant key, ("", name))`, fed from three
places: super informer events (`owners` says which tenants care about a super object),
tenant informer events (a tenant object that should not be there), and `initial_keys`
when a tenant registers. `reconcile` then makes the tenant side follow the super side;
nothing is ever written to the super cluster. The patrol calls `scan` instead of the
tenancy back-trace, which such objects do not carry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from appliance.kube import errors, wire
from appliance.syncer.context import SyncContext
from appliance.syncer.resources.base import Kind, Retry
from appliance.syncer.tenant import Tenant
from appliance.util import tenancy

log = logging.getLogger(__name__)

#: metadata that belongs to the cluster an object lives in, dropped when copying up
RESET_METADATA = (
    "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "ownerReferences", "finalizers", "managedFields", "clusterName",
)


def tenant_copy(super_obj: Mapping[str, Any]) -> dict[str, Any]:
    """A super object as a fresh tenant object: metadata reset, status dropped (pure)."""
    new = wire.copy_json(dict(super_obj))
    meta = new["metadata"] = dict(new.get("metadata") or {})
    for name in RESET_METADATA:
        meta.pop(name, None)
    new.pop("status", None)
    return new


class SuperSourcedKind(Kind):
    super_sourced = True
    repair_on_super_event = False

    # --- hooks -------------------------------------------------------------------------
    def owners(self, sx: SyncContext, pobj: dict[str, Any]) -> Iterable[tenancy.ClusterKey]:
        """Keys of the registered tenants that should hold a copy of super object `pobj`."""
        raise NotImplementedError

    def out_of_sync(
        self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any] | None, pobj: dict[str, Any] | None
    ) -> bool:
        """Whether `reconcile` would write anything for this pair (pure; used by the patrol)."""
        raise NotImplementedError

    # --- wiring --------------------------------------------------------------------------
    def super_key(self, tenant: Tenant, ns: str, name: str) -> tuple[str, str | None]:
        return name, None

    def work_key(self, vobj: dict[str, Any]) -> tuple[str, str]:
        return "", vobj["metadata"]["name"]

    def on_super_event(
        self, sx: SyncContext, event_type: str, new: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> None:
        """Enqueue the object for every tenant that cared before or cares now."""
        obj = new if new is not None else old
        if obj is None:
            return
        keys = set(self.owners(sx, new)) if new is not None else set()
        if old is not None:
            keys.update(self.owners(sx, old))
        for key in keys:
            sx.enqueue(self.name, key, ("", obj["metadata"]["name"]))

    def initial_keys(self, sx: SyncContext, tenant: Tenant) -> list[tuple[str, str]]:
        """Work keys of super objects a newly registered tenant should get."""
        return [("", p["metadata"]["name"]) for p in sx.super_cache(self.name).list()
                if tenant.key in self.owners(sx, p)]

    def scan(self, sx: SyncContext) -> tuple[int, int]:
        """Enqueue every (tenant, name) pair that is out of sync; returns (requeued, 0). No I/O."""
        requeued = 0
        cache = sx.super_cache(self.name)
        for tenant in list(sx.tenants.values()):
            inf = tenant.informers.get(self.name)
            if inf is None:
                continue
            names = {name for _, name in inf.keys()} | {name for _, name in self.initial_keys(sx, tenant)}
            for name in names:
                if self.out_of_sync(sx, tenant, inf.get(name), cache.get(name)):
                    sx.enqueue(self.name, tenant.key, ("", name))
                    requeued += 1
        return requeued, 0

    def drifted(
        self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any] | None
    ) -> bool:
        return self.out_of_sync(sx, tenant, vobj, pobj)

    # --- writes to the tenant --------------------------------------------------------------
    async def create_in_tenant(self, tenant: Tenant, body: dict[str, Any]) -> None:
        try:
            await tenant.client.create(self.resource, body)
        except errors.AlreadyExists:
            raise Retry(f"tenant {self.name} {body['metadata']['name']} exists but is not in our cache yet") from None
        log.debug("created tenant %s %s", self.name, body["metadata"]["name"])

    async def delete_in_tenant(self, tenant: Tenant, vobj: dict[str, Any]) -> None:
        meta = vobj["metadata"]
        try:
            await tenant.client.delete(self.resource, meta["name"], uid=meta["uid"], propagation_policy="Background")
        except (errors.NotFound, errors.Conflict):
            pass  # already gone, or replaced by a newer object this decision was not about
        log.debug("deleted tenant %s %s", self.name, meta["name"])
