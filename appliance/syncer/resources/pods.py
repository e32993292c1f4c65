"""Pods: the heart of the syncer.

Downward: a tenant Pod becomes a super Pod in its super namespace, converted (metadata,
tenancy stamps) and mutated (`mutation.mutate_pod`: nodeName/status cleared, cluster
label, affinity scoping, `kubernetes` host aliases and service env vars with super IPs,
DNS from the tenant's `kube-system/kube-dns`, a tenant token Secret in place of the
projected service-account volume, ConfigMaps of the tenant's ClusterTrustBundles in place of
`clusterTrustBundle` sources, a Secret the syncer fills once the tenant's signer answered in
place of `podCertificate` sources, a preset `spec.nodeName` turned into node affinity).
Graceful deletion: a terminating tenant Pod deletes the super Pod
with the same grace period.

Upward: once the super scheduler places the super Pod, the tenant Pod is bound to a
virtual node of the same name, and its status mirrors the super Pod's. A super Pod that
terminates (eviction) or vanishes takes the tenant Pod with it.
"""

from __future__ import annotations

import logging
from typing import Any

from appliance.kube import errors, resources
from appliance.syncer import (
    conversion,
    equality,
    mutation,
    nodeselection,
    podcerts,
    runtimeclasses,
    tokens,
    trustbundles,
    vnode,
)
from appliance.syncer.context import SyncContext
from appliance.syncer.resources.base import Kind, Retry, own_super_namespace, owner_of, uid_of
from appliance.syncer.settings import SyncerSettings
from appliance.syncer.tenant import Tenant
from appliance.util import naming

log = logging.getLogger(__name__)

DEFAULT_GRACE = 30


def _service_info(sx: SyncContext, name: str, super_ns: str) -> mutation.ServiceInfo | None:
    svc = sx.super_cache("service").get(name, super_ns)
    return mutation.ServiceInfo.from_service(svc) if svc is not None else None


def ran_in_super(vpod: dict[str, Any]) -> bool:
    """Whether a tenant Pod was bound by us: a node and `PodScheduled=True` come only from a
    super Pod (a Pod created with `spec.nodeName` preset has no such condition)."""
    if not (vpod.get("spec") or {}).get("nodeName"):
        return False
    conditions = (vpod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "PodScheduled" and c.get("status") == "True" for c in conditions)


def status_free(pod: dict[str, Any]) -> tuple[Any, ...]:
    """A Pod without what the syncer's own upward writes change (status, resourceVersion,
    managedFields, and `spec.nodeName`, which only a binding sets and nothing downward reads),
    for comparing two versions of it."""
    meta = {k: v for k, v in (pod.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields")}
    spec = {k: v for k, v in (pod.get("spec") or {}).items() if k != "nodeName"}
    return meta, spec, {k: v for k, v in pod.items() if k not in ("metadata", "spec", "status")}


def _selected_nodes(sx: SyncContext, tenant: Tenant, vpod: dict[str, Any]) -> tuple[str, ...] | None:
    """`nodeselection.tenant_selected_nodes` over the tenant's virtual nodes and their super nodes."""
    spec = vpod.get("spec") or {}
    if not spec.get("nodeSelector") and not (spec.get("affinity") or {}).get("nodeAffinity"):
        return None
    vnodes = {(n.get("metadata") or {}).get("name", ""): (n.get("metadata") or {}).get("labels") or {}
              for n in tenant.informers["node"].list()}
    supers = {}
    for name in vnodes:
        super_node = sx.super_nodes.get(name)
        supers[name] = ((super_node or {}).get("metadata") or {}).get("labels") or {}
    return nodeselection.tenant_selected_nodes(spec, vnodes, supers)


class PodKind(Kind):
    name = "pod"
    resource = resources.PODS
    has_upward = True
    repair_on_super_event = False  # super pod changes are upward news, not drift

    def workers(self, settings: SyncerSettings) -> int:
        """Pods get a pool size of their own, `[syncer] pod-workers`, instead of `workers`."""
        return settings.pod_workers

    def tenant_change_matters(self, new: dict[str, Any], old: dict[str, Any]) -> bool:
        """A status-only change of a tenant Pod (most are the syncer's own upward writes) changes
        nothing downward, unless the Pod has readiness gates (their conditions go down)."""
        return status_free(new) != status_free(old) or bool(equality.readiness_gates(new))

    def context(self, sx: SyncContext, tenant: Tenant, vpod: dict[str, Any], token_secret: str | None) -> mutation.PodContext:
        tid, meta = tenant.id, vpod["metadata"]
        super_ns = tid.super_namespace(meta["namespace"])
        services = tuple(
            mutation.ServiceInfo.from_service(s) for s in sx.super_cache("service").list(super_ns)
        )
        dns = _service_info(sx, "kube-dns", tid.super_namespace("kube-system"))
        return mutation.PodContext(
            cluster_key=tid.key,
            tenant_namespace=meta["namespace"],
            tenant_pod_uid=meta["uid"],
            cluster_domain=tid.cluster_domain,
            services=services,
            control_plane=_service_info(sx, "kubernetes", tid.super_namespace("default")),
            dns_ip=dns.cluster_ip if dns is not None and dns.cluster_ip not in ("", "None") else None,
            dns_options=sx.settings.dns_options,
            disable_service_account_token=sx.settings.disable_service_account_token,
            disable_service_links=sx.settings.disable_service_links,
            token_volume=mutation.TokenVolume(token_secret) if token_secret else None,
            root_ca_configmap="tenant-kube-root-ca.crt",
            tenant_labels=meta.get("labels") or {},
            tenant_annotations=meta.get("annotations") or {},
            selected_nodes=_selected_nodes(sx, tenant, vpod),
        )

    async def create(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any]) -> None:
        if ran_in_super(vobj):
            await self._finish_orphaned_tenant_pod(sx, tenant, vobj)
            return
        reason = mutation.reject_reason(vobj)
        if reason is not None:
            await tenant.events.post(vobj, type="Warning", reason="NotSupported", message=reason)
            return
        super_ns = own_super_namespace(sx, tenant, vobj["metadata"]["namespace"])
        secret = await tokens.ensure_secret(sx, tenant, vobj) if tokens.needs_tokens(vobj) else None
        body = self._mutated(sx, tenant, vobj, secret)
        if mutation.trust_bundle_sources(vobj):
            await trustbundles.ensure(sx, tenant, vobj)
        # The API refuses ephemeral containers on create; `update` adds them through their subresource.
        body["spec"].pop("ephemeralContainers", None)
        runtime_class = (vobj.get("spec") or {}).get("runtimeClassName")
        if runtime_class:
            body["spec"]["runtimeClassName"] = await runtimeclasses.ensure(sx, tenant, runtime_class)
        try:
            created = await sx.super_client.create(self.resource, body, namespace=super_ns)
        except errors.AlreadyExists:
            await self.name_taken(sx, tenant, body)
        except errors.ApiError as exc:
            if exc.status in (400, 403, 422):
                await tenant.events.post(vobj, type="Warning", reason="FailedCreate",
                                         message=f"Error creating: {exc.message}")
            raise
        if secret is not None:
            await tokens.own_by_pod(sx, secret, created)

    def _mutated(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], secret: str | None) -> dict[str, Any]:
        try:
            return mutation.mutate_pod(self.build(sx, tenant, vobj), self.context(sx, tenant, vobj, secret))
        except mutation.MutationError as exc:
            raise Retry(str(exc)) from None

    async def _add_ephemeral_containers(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any],
                                        pobj: dict[str, Any], missing: list[str]) -> None:
        """Copy the tenant's new ephemeral containers (`kubectl debug`) to the super Pod, mutated
        as its other containers are (service env, downward API, renamed volumes)."""
        secret = await tokens.ensure_secret(sx, tenant, vobj) if tokens.needs_tokens(vobj) else None
        mutated = self._mutated(sx, tenant, vobj, secret)
        added = [c for c in mutated["spec"].get("ephemeralContainers") or () if c.get("name") in missing]
        have = list((pobj.get("spec") or {}).get("ephemeralContainers") or ())
        meta = pobj["metadata"]
        await sx.super_client.patch(self.resource, meta["name"], {"spec": {"ephemeralContainers": have + added}},
                                    namespace=meta["namespace"], subresource="ephemeralcontainers")

    async def _finish_orphaned_tenant_pod(
        self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], *, grace: int = 0,
    ) -> None:
        """The super Pod of a bound tenant Pod is not in the cache: deleted (an eviction during a
        syncer restart, a delete in the super cluster), or only out of the label-filtered cache
        because someone removed our labels. A live read tells: gone, nothing runs it any more and
        the tenant Pod goes too; still there, our labels are put back (it is drift) and nothing
        is deleted."""
        meta = vobj["metadata"]
        super_ns = tenant.id.super_namespace(meta["namespace"])
        try:  # the cache is all we trust elsewhere; here a wrong answer deletes a tenant Pod
            current = await sx.super_client.get(self.resource, meta["name"], namespace=super_ns)
        except errors.NotFound:
            log.info("tenant %s: pod %s/%s lost its super pod; deleting it", tenant.key, meta["namespace"], meta["name"])
            await self._delete_tenant(tenant, vobj, grace=grace)
            return
        if owner_of(current) == tenant.key and conversion.tenant_uid(current) == meta["uid"]:
            want = {naming.LABEL_VC_NAME: tenant.id.vc_name, naming.LABEL_VC_NAMESPACE: tenant.id.vc_namespace}
            have = current["metadata"].get("labels") or {}
            lost = {k: v for k, v in want.items() if have.get(k) != v}
            if lost:
                log.warning("tenant %s: super pod %s/%s lost our labels %s; restoring them",
                            tenant.key, super_ns, meta["name"], sorted(lost))
                await sx.super_client.patch(self.resource, meta["name"], {"metadata": {"labels": lost}},
                                            namespace=super_ns)
        raise Retry(f"super pod {super_ns}/{current['metadata']['name']} exists but is not in the cache yet")

    async def on_tenant_terminating(
        self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any] | None
    ) -> None:
        meta = vobj["metadata"]
        if pobj is None:
            # Nothing runs any more: finish the tenant's graceful deletion.
            await self._delete_tenant(tenant, vobj, grace=0)
            return
        if pobj["metadata"].get("deletionTimestamp") is None:
            await self.delete_super(sx, pobj, grace_period_seconds=meta.get("deletionGracePeriodSeconds"))

    async def update(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> None:
        if pobj["metadata"].get("deletionTimestamp") is not None:
            return  # the super Pod is going away; upward deals with the tenant Pod
        await super().update(sx, tenant, vobj, pobj)
        missing = equality.missing_ephemeral_containers(vobj, pobj)
        if missing:
            await self._add_ephemeral_containers(sx, tenant, vobj, pobj, missing)
        resize = equality.pod_resize_patch(vobj, pobj)
        if resize:
            meta = pobj["metadata"]
            await sx.super_client.patch(self.resource, meta["name"], resize, namespace=meta["namespace"],
                                        subresource="resize")
        status = equality.pod_dw_status_patch(vobj, pobj)
        if status:
            meta = pobj["metadata"]
            await sx.super_client.patch(self.resource, meta["name"], status,
                                        namespace=meta["namespace"], subresource="status")
        if tokens.needs_tokens(vobj):
            await tokens.ensure_secret(sx, tenant, vobj)  # refresh when due
        if mutation.trust_bundle_sources(vobj):
            await trustbundles.ensure(sx, tenant, vobj)  # follow edits of the bundles

    def patch(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]) -> dict[str, Any] | None:
        return equality.pod_dw_patch(
            vobj, pobj,
            exception_prefixes=(*tenant.id.opaque_prefixes, *tenant.id.transparent_prefixes),
            opaque_domains=sx.settings.opaque_meta_domains,
        )

    async def _delete_tenant(self, tenant: Tenant, vobj: dict[str, Any], *, grace: int) -> None:
        meta = vobj["metadata"]
        try:
            await tenant.client.delete(self.resource, meta["name"], namespace=meta["namespace"],
                                       uid=meta["uid"], grace_period_seconds=grace)
        except (errors.NotFound, errors.Conflict):
            pass

    # --- upward ---------------------------------------------------------------------------
    async def upward(self, sx: SyncContext, tenant: Tenant, ns: str, name: str) -> None:
        vobj = tenant.get(self.name, name, ns)
        if vobj is None:
            return
        vmeta, vspec = vobj["metadata"], vobj.get("spec") or {}
        pobj = sx.super_cache(self.name).get(name, tenant.id.super_namespace(ns))
        if pobj is None:
            if vmeta.get("deletionTimestamp") is not None:
                await self._delete_tenant(tenant, vobj, grace=0)
            elif ran_in_super(vobj):
                # It ran and is not in the cache: if the super Pod is really gone, so is the tenant Pod.
                await self._finish_orphaned_tenant_pod(
                    sx, tenant, vobj, grace=vspec.get("terminationGracePeriodSeconds", DEFAULT_GRACE))
            return
        if conversion.tenant_uid(pobj) != uid_of(vobj):
            return  # the downward reconcile replaces the stale super Pod
        pmeta, node = pobj["metadata"], (pobj.get("spec") or {}).get("nodeName")
        bound = False
        if node and not vspec.get("nodeName"):
            await vnode.ensure(sx, tenant, node)
            binding = {
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            }
            try:
                await tenant.client.create(self.resource, binding, namespace=ns, subresource="binding", name=name)
                bound = True
            except errors.Conflict:
                pass  # bound meanwhile
        elif node and vspec.get("nodeName") and tenant.informers["node"].get_raw(node) is None:
            await vnode.ensure(sx, tenant, node)
        meta_patch = equality.meta_uw_patch(vobj, pobj, transparent_prefixes=tenant.id.transparent_prefixes)
        if meta_patch:
            await tenant.client.patch(self.resource, name, meta_patch, namespace=ns)
        status = equality.pod_uw_status_patch(vobj, pobj, bound=bound)
        if status:
            await tenant.client.patch(self.resource, name, status, namespace=ns, subresource="status")
        if node and pmeta.get("deletionTimestamp") is None and podcerts.missing(sx, vobj, pobj):
            await podcerts.ensure(sx, tenant, vobj, pobj, node)
        if pmeta.get("deletionTimestamp") is not None:
            if vmeta.get("deletionTimestamp") is None:
                await self._delete_tenant(tenant, vobj, grace=vspec.get("terminationGracePeriodSeconds", DEFAULT_GRACE))
            elif pmeta.get("deletionGracePeriodSeconds") != vmeta.get("deletionGracePeriodSeconds"):
                await self._delete_tenant(tenant, vobj, grace=pmeta.get("deletionGracePeriodSeconds") or 0)

    def drifted(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any] | None) -> bool:
        meta = vobj["metadata"]
        if pobj is not None and conversion.tenant_uid(pobj) == meta["uid"]:
            if equality.pod_uw_status_patch(vobj, pobj) or (
                (pobj.get("spec") or {}).get("nodeName") and not (vobj.get("spec") or {}).get("nodeName")
            ) or ((pobj.get("spec") or {}).get("nodeName") and podcerts.missing(sx, vobj, pobj)):
                sx.enqueue_upward(tenant.key, self.name, meta["namespace"], meta["name"])
        elif pobj is None and (meta.get("deletionTimestamp") is not None or ran_in_super(vobj)):
            return True
        if mutation.reject_reason(vobj) is not None:
            return False
        if pobj is not None and (equality.missing_ephemeral_containers(vobj, pobj)
                                 or equality.pod_resize_patch(vobj, pobj)):
            return True
        return super().drifted(sx, tenant, vobj, pobj)
