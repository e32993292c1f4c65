"""PersistentVolumes: a super PV bound to a tenant's claim appears in that tenant.

The super PV binder (or a provisioner) binds the super copy of a tenant PVC; the tenant
then gets a PV of the same name whose `claimRef` names the tenant PVC (namespace and
UID), so the tenant's own binder completes the binding and the tenant PVC turns Bound.
The tenant PV carries annotation `tenancy.x-k8s.io/uid=<super PV uid>`: only PVs with
that annotation are ever changed or deleted here, never PVs the tenant made itself.
Spec changes (an expansion) are pushed up, except `claimRef`, which the tenant binder
owns; status is never synced. A tenant PV whose super twin is gone, was replaced (other
UID), or now serves another tenant's claim is deleted. The super informer is unfiltered
(PVs are created by provisioners, without our labels).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from appliance.kube import resources
from appliance.syncer import conversion, equality
from appliance.syncer.context import SyncContext
from appliance.syncer.resources.base import Permanent, namespace_owner, owner_of
from appliance.syncer.resources.sourced import SuperSourcedKind, tenant_copy
from appliance.syncer.tenant import Tenant
from appliance.util import naming, tenancy

log = logging.getLogger(__name__)


class Claim(NamedTuple):
    """The tenant PVC a super PV is bound to."""

    cluster_key: tenancy.ClusterKey
    namespace: str  # tenant namespace
    name: str


def bound_claim(sx: SyncContext, ppv: Mapping[str, Any]) -> Claim | None:
    """The tenant claim of super PV `ppv`: its claimRef names a super PVC that a registered
    tenant owns (by the PVC's tenancy annotations) and that has the claimRef's UID."""
    ref = (ppv.get("spec") or {}).get("claimRef") or {}
    owner = namespace_owner(sx, ref.get("namespace", ""))
    if owner is None or not ref.get("name") or "persistentvolumeclaim" not in sx.kinds:
        return None
    ppvc = sx.super_cache("persistentvolumeclaim").get(ref["name"], ref["namespace"])
    if ppvc is None or owner_of(ppvc) != owner[0]:
        return None
    if ref.get("uid") and ref["uid"] != ppvc["metadata"].get("uid"):
        return None  # bound to an earlier claim of that name
    return Claim(owner[0], owner[1], ref["name"])


def tenant_pv(ppv: Mapping[str, Any], vpvc: Mapping[str, Any]) -> dict[str, Any]:
    """The tenant copy of super PV `ppv`, pre-bound to tenant claim `vpvc` (pure)."""
    vpv = tenant_copy(ppv)
    meta = vpv["metadata"]
    meta["annotations"] = {**(meta.get("annotations") or {}), naming.ANNOTATION_UID: ppv["metadata"]["uid"]}
    claim_meta = vpvc["metadata"]
    ref = dict(vpv["spec"].get("claimRef") or {})
    ref.update(namespace=claim_meta["namespace"], uid=claim_meta["uid"], name=claim_meta["name"])
    ref.pop("resourceVersion", None)
    vpv["spec"]["claimRef"] = ref
    return vpv


def spec_patch(vpv: Mapping[str, Any], ppv: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merge patch bringing the tenant PV's spec (claimRef excluded) in line with super (pure)."""
    def without_claim(pv: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (pv.get("spec") or {}).items() if k != "claimRef"}

    patch = equality.json_merge_patch(without_claim(vpv), without_claim(ppv))
    return {"spec": patch} if patch is not None else None


def ours(vpv: Mapping[str, Any]) -> str | None:
    """The super PV UID a tenant PV was copied from, None for a PV the tenant made."""
    return conversion.tenant_uid(vpv)


class PersistentVolumeKind(SuperSourcedKind):
    name = "persistentvolume"
    resource = resources.PVS
    super_selector = None

    def owners(self, sx: SyncContext, pobj: dict[str, Any]) -> Iterable[tenancy.ClusterKey]:
        claim = bound_claim(sx, pobj)
        return (claim.cluster_key,) if claim is not None else ()

    def on_super_event(
        self, sx: SyncContext, event_type: str, new: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> None:
        """Also tell tenants holding a copy of a vanished super PV (its claim may be gone too)."""
        super().on_super_event(sx, event_type, new, old)
        if event_type == "DELETED" and old is not None:
            name, uid = old["metadata"]["name"], old["metadata"].get("uid")
            for tenant in list(sx.tenants.values()):
                if self.name in tenant.informers:
                    vpv = tenant.get(self.name, name)
                    if vpv is not None and ours(vpv) == uid:
                        sx.enqueue(self.name, tenant.key, ("", name))

    def _tenant_claim(self, sx: SyncContext, tenant: Tenant, ppv: dict[str, Any] | None) -> dict[str, Any] | None:
        """The tenant PVC that super PV `ppv` is bound to, if it is this tenant's."""
        claim = bound_claim(sx, ppv) if ppv is not None else None
        if claim is None or claim.cluster_key != tenant.key or "persistentvolumeclaim" not in tenant.informers:
            return None
        vpvc = tenant.get("persistentvolumeclaim", claim.name, claim.namespace)
        ppvc = sx.super_cache("persistentvolumeclaim").get(claim.name, tenant.id.super_namespace(claim.namespace))
        if vpvc is None or ppvc is None or conversion.tenant_uid(ppvc) != vpvc["metadata"]["uid"]:
            return None
        return vpvc

    def _stale(self, sx: SyncContext, tenant: Tenant, vpv: dict[str, Any], ppv: dict[str, Any] | None) -> bool:
        """A copy of ours whose super twin is gone, replaced, or now bound to another tenant's claim."""
        uid = ours(vpv)
        if uid is None or vpv["metadata"].get("deletionTimestamp"):
            return False
        if ppv is None or ppv["metadata"]["uid"] != uid:
            return True
        claim = bound_claim(sx, ppv)
        return claim is not None and claim.cluster_key != tenant.key

    def out_of_sync(
        self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any] | None, pobj: dict[str, Any] | None
    ) -> bool:
        if vobj is not None and self._stale(sx, tenant, vobj, pobj):
            return True
        if pobj is None or self._tenant_claim(sx, tenant, pobj) is None:
            return False
        if vobj is None:
            return True
        return ours(vobj) == pobj["metadata"]["uid"] and spec_patch(vobj, pobj) is not None

    async def reconcile(self, sx: SyncContext, tenant: Tenant, ns: str, name: str) -> None:
        vpv = tenant.get(self.name, name)
        ppv = sx.super_cache(self.name).get(name)
        if vpv is not None and self._stale(sx, tenant, vpv, ppv):
            await self.delete_in_tenant(tenant, vpv)
            return
        vpvc = self._tenant_claim(sx, tenant, ppv)
        if ppv is None or vpvc is None:
            return
        if vpv is None:
            await self.create_in_tenant(tenant, tenant_pv(ppv, vpvc))
            return
        if ours(vpv) != ppv["metadata"]["uid"]:
            raise Permanent(f"tenant PV {name} exists and was not made by the syncer; "
                            "the super PV bound to this tenant's claim cannot be copied")
        patch = spec_patch(vpv, ppv)
        if patch is not None:
            await tenant.client.patch(self.resource, name, patch)
