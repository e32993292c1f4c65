"""Kinds that are plain copies: ConfigMaps, Secrets, ServiceAccounts, Endpoints, PVCs.

Each differs from the generic `Kind` only in what it compares and a few naming rules:
the tenant `kube-root-ca.crt` ConfigMap lands as `tenant-kube-root-ca.crt` (the super
cluster publishes its own; a tenant ConfigMap of that name is refused); service-account
token Secrets are not copied (Pods get fresh tenant tokens, see `tokens`); the super
cluster's own `default` ServiceAccount is adopted rather than duplicated; Endpoints are
copied only for selector-less Services; EndpointSlices only when a user (not the tenant's
endpointslice or mirroring controller, whose work the super cluster's controllers redo)
manages them, with their service-name and managed-by labels, which opaque-domain stripping
would remove, and Pod references pointing into the super namespace.
"""

from __future__ import annotations

from typing import Any

from appliance.kube import errors, resources
from appliance.syncer import conversion, equality
from appliance.syncer.context import SyncContext
from appliance.syncer.resources.base import Kind, Permanent, Retry, own_super_namespace
from appliance.syncer.tenant import Tenant
from appliance.util import naming

ROOT_CA = "kube-root-ca.crt"
TENANT_ROOT_CA = "tenant-kube-root-ca.crt"


class ConfigMapKind(Kind):
    name = "configmap"
    resource = resources.CONFIGMAPS

    def super_name(self, name: str) -> str:
        return TENANT_ROOT_CA if name == ROOT_CA else name

    def tenant_name(self, super_name: str) -> str:
        return ROOT_CA if super_name == TENANT_ROOT_CA else super_name

    async def reconcile(self, sx: SyncContext, tenant: Tenant, ns: str, name: str) -> None:
        # A tenant ConfigMap named like the root CA's super copy would map onto that copy: the two
        # tenant objects would replace each other's super object for ever. The name is reserved.
        if name == TENANT_ROOT_CA:
            if tenant.get(self.name, name, ns) is not None:
                raise Permanent(f"the name {TENANT_ROOT_CA} is reserved for the super copy of {ROOT_CA}")
            return
        await super().reconcile(sx, tenant, ns, name)

    def drifted(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any] | None) -> bool:
        return vobj["metadata"]["name"] != TENANT_ROOT_CA and super().drifted(sx, tenant, vobj, pobj)

    def patch(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
        return equality.merge_patches(
            super().patch(sx, tenant, vobj, pobj), equality.configmap_data_patch(vobj, pobj)
        )


class SecretKind(Kind):
    name = "secret"
    resource = resources.SECRETS

    def wanted(self, tenant: Tenant, vobj: dict[str, Any]) -> bool:
        return vobj.get("type") != naming.SECRET_TYPE_SA_TOKEN

    def patch(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
        return equality.merge_patches(
            super().patch(sx, tenant, vobj, pobj), equality.secret_data_patch(vobj, pobj)
        )


class ServiceAccountKind(Kind):
    name = "serviceaccount"
    resource = resources.SERVICEACCOUNTS

    def build(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any]) -> dict[str, Any]:
        return conversion.adapt_service_account(super().build(sx, tenant, vobj))

    async def create(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any]) -> None:
        body = self.build(sx, tenant, vobj)
        meta = body["metadata"]
        own_super_namespace(sx, tenant, vobj["metadata"]["namespace"])  # never adopt in another's
        try:
            await super().create(sx, tenant, vobj)
        except Exception as exc:
            if meta["name"] != "default" or not isinstance(exc, (Retry, Permanent, errors.ApiError)):
                raise
            # The super cluster made its own `default` in the new namespace: adopt it by
            # stamping our identity, which also brings it into our label-filtered cache.
            try:
                await sx.super_client.patch(
                    self.resource, "default", {"metadata": {
                        "labels": {k: v for k, v in meta["labels"].items() if k.startswith(naming.TENANCY_PREFIX)},
                        "annotations": {k: v for k, v in meta["annotations"].items() if k.startswith(naming.TENANCY_PREFIX)},
                    }}, namespace=meta["namespace"],
                )
            except errors.NotFound:
                raise exc from None


class EndpointsKind(Kind):
    name = "endpoints"
    resource = resources.ENDPOINTS

    def wanted(self, tenant: Tenant, vobj: dict[str, Any]) -> bool:
        meta = vobj["metadata"]
        svc = tenant.get("service", meta["name"], meta["namespace"]) if "service" in tenant.informers else None
        return svc is None or not (svc.get("spec") or {}).get("selector")

    def patch(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
        subsets = equality.json_merge_patch(
            {"subsets": pobj.get("subsets") or None}, {"subsets": vobj.get("subsets") or None}
        )
        return equality.merge_patches(super().patch(sx, tenant, vobj, pobj), subsets)


#: `endpointslice.kubernetes.io/managed-by` values of the controllers every cluster runs
CONTROLLER_SLICE_MANAGERS = frozenset({"endpointslice-controller.k8s.io", "endpointslicemirroring-controller.k8s.io"})
_SLICE_LABELS = ("kubernetes.io/service-name", "endpointslice.kubernetes.io/managed-by")


class EndpointSliceKind(Kind):
    name = "endpointslice"
    resource = resources.ENDPOINTSLICES

    def wanted(self, tenant: Tenant, vobj: dict[str, Any]) -> bool:
        labels = vobj["metadata"].get("labels") or {}
        return labels.get(_SLICE_LABELS[1]) not in CONTROLLER_SLICE_MANAGERS

    def build(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any]) -> dict[str, Any]:
        obj = super().build(sx, tenant, vobj)
        labels = vobj["metadata"].get("labels") or {}
        obj["metadata"].setdefault("labels", {}).update({k: labels[k] for k in _SLICE_LABELS if k in labels})
        super_ns = obj["metadata"]["namespace"]
        for endpoint in obj.get("endpoints") or ():
            ref = endpoint.get("targetRef")
            if ref:
                endpoint["targetRef"] = {k: v for k, v in ref.items() if k not in ("uid", "resourceVersion")}
                if ref.get("namespace"):
                    endpoint["targetRef"]["namespace"] = super_ns
        return obj

    def patch(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
        want = self.build(sx, tenant, vobj)
        content = equality.json_merge_patch(
            {"endpoints": pobj.get("endpoints"), "ports": pobj.get("ports")},
            {"endpoints": want.get("endpoints"), "ports": want.get("ports")},
        )
        return equality.merge_patches(super().patch(sx, tenant, vobj, pobj), content)


class PersistentVolumeClaimKind(Kind):
    name = "persistentvolumeclaim"
    resource = resources.PVCS
    has_upward = True

    def patch(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
        want = ((vobj.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
        have = ((pobj.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
        size = {"spec": {"resources": {"requests": {"storage": want}}}} if want and want != have else None
        return equality.merge_patches(super().patch(sx, tenant, vobj, pobj), size)

    async def upward(self, sx: SyncContext, tenant: Tenant, ns: str, name: str) -> None:
        vobj = tenant.get(self.name, name, ns)
        pobj = sx.super_cache(self.name).get(name, tenant.id.super_namespace(ns))
        if vobj is None or pobj is None or conversion.tenant_uid(pobj) != vobj["metadata"]["uid"]:
            return
        capacity = (pobj.get("status") or {}).get("capacity")
        if capacity and capacity != (vobj.get("status") or {}).get("capacity"):
            await tenant.client.patch(
                self.resource, name, {"status": {"capacity": capacity}}, namespace=ns, subresource="status"
            )
