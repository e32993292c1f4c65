"""The downward reconcile shared by every namespaced kind, and the hooks kinds override.

A work item is `(tenant key, (tenant namespace, name))`. `Kind.reconcile` reads the latest
tenant object from the tenant's cache and the super object from the shared super cache,
then does exactly one of: create the super copy, update it (a merge patch of the fields
the kind owns, only when they differ), delete it (tenant object gone), or nothing.

Safety rules, in one place: a super object is only ever changed or deleted when its
`tenancy.x-k8s.io/cluster` annotation names this tenant; an update additionally needs
the `tenancy.x-k8s.io/uid` annotation to equal the tenant object's UID (otherwise the
stale copy is deleted with a UID precondition and recreated); deletes always carry
the super object's UID as precondition, so a concurrent recreate is never deleted.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, NoReturn

from appliance.kube import errors, resources
from appliance.syncer import conversion
from appliance.syncer.context import SyncContext
from appliance.syncer.settings import SyncerSettings
from appliance.syncer.tenant import Tenant
from appliance.util import naming, tenancy

log = logging.getLogger(__name__)


class Retry(Exception):
    """Try the item again later (with backoff); the message says what we wait for."""


class Permanent(Exception):
    """Retrying cannot help (the tenant must change the object); reported as an Event."""


def owner_of(obj: dict[str, Any] | None) -> str | None:
    if obj is None:
        return None
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(naming.ANNOTATION_CLUSTER)


def uid_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def namespace_owner(sx: SyncContext, super_ns: str) -> tuple[tenancy.ClusterKey, str] | None:
    """(cluster key, tenant namespace) of super namespace `super_ns` if a registered tenant owns it."""
    if not super_ns or "namespace" not in sx.kinds:
        return None
    ns_obj = sx.super_cache("namespace").get(super_ns)
    annotations = ((ns_obj or {}).get("metadata") or {}).get("annotations") or {}
    cluster, tenant_ns = annotations.get(naming.ANNOTATION_CLUSTER), annotations.get(naming.ANNOTATION_NAMESPACE)
    if not cluster or not tenant_ns or cluster not in sx.tenants:
        return None
    return tenancy.ClusterKey(cluster), tenant_ns


def own_super_namespace(sx: SyncContext, tenant: Tenant, tenant_ns: str) -> str:
    """The super namespace of `tenant_ns`, once it exists and is this tenant's copy of it.

    Mapped names can collide (a cluster key may extend another one: keys `k` and `k-x` map
    namespaces `x-default` and `default` to the same super namespace), so existence is not
    enough before writing into it: its tenancy annotations must name this tenant and `tenant_ns`.
    Raises Retry while it does not exist (and queues it), Permanent when someone else owns it.
    """
    super_ns = tenant.id.super_namespace(tenant_ns)
    ns_obj = sx.super_cache("namespace").get(super_ns)
    if ns_obj is None:
        sx.enqueue("namespace", tenant.key, ("", tenant_ns))
        raise Retry(f"super namespace {super_ns} does not exist yet")
    annotations = (ns_obj.get("metadata") or {}).get("annotations") or {}
    if (annotations.get(naming.ANNOTATION_CLUSTER), annotations.get(naming.ANNOTATION_NAMESPACE)) != (
        tenant.key, tenant_ns
    ):
        raise Permanent(f"super namespace {super_ns} is not owned by this tenant")
    return super_ns


class Kind:
    """A namespaced kind copied from tenants to the super cluster."""

    name: ClassVar[str]
    resource: ClassVar[resources.Resource]
    #: label selector of the kind's super informer (None: every object)
    super_selector: ClassVar[str | None] = naming.LABEL_VC_NAME
    #: the super cluster is the source of truth (`SuperSourcedKind`): super events and
    #: the patrol go through the kind's own hooks instead of the tenancy back-trace
    super_sourced: ClassVar[bool] = False
    #: super events of the kind queue an upward reconcile (`upward`) of the tenant object
    has_upward: ClassVar[bool] = False
    #: super events of the kind queue a downward reconcile (repair of super-side drift)
    repair_on_super_event: ClassVar[bool] = True

    # --- hooks -------------------------------------------------------------------------
    def workers(self, settings: SyncerSettings) -> int:
        """How many downward workers the runtime starts for this kind (its pool's base size)."""
        return settings.workers

    def tenant_change_matters(self, new: dict[str, Any], old: dict[str, Any]) -> bool:
        """Whether a tenant MODIFIED event (`old` → `new`) can change what the downward sync
        does; False skips the reconcile (the patrol still compares everything)."""
        return True

    def wanted(self, tenant: Tenant, vobj: dict[str, Any]) -> bool:
        """Whether this tenant object should have a super copy at all."""
        return True

    def super_name(self, name: str) -> str:
        return name

    def tenant_name(self, super_name: str) -> str:
        return super_name

    def super_key(self, tenant: Tenant, ns: str, name: str) -> tuple[str, str | None]:
        """(name, namespace) of the super copy of tenant object `ns/name`."""
        return self.super_name(name), tenant.id.super_namespace(ns)

    def work_key(self, vobj: dict[str, Any]) -> tuple[str, str]:
        meta = vobj["metadata"]
        return meta.get("namespace", ""), meta["name"]

    def build(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any]) -> dict[str, Any]:
        tid = tenant.id
        meta = vobj["metadata"]
        obj = conversion.build_super_object(
            vobj, cluster_key=tid.key, vc_name=tid.vc_name, vc_namespace=tid.vc_namespace,
            vc_uid=tid.vc_uid, super_ns=tid.super_namespace(meta["namespace"]),
            opaque_prefixes=tid.opaque_prefixes, opaque_domains=sx.settings.opaque_meta_domains,
        )
        obj["metadata"]["name"] = self.super_name(meta["name"])
        obj.pop("status", None)
        return obj

    def patch(
        self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The merge patch that brings `pobj` in line with `vobj`, or None when equal."""
        from appliance.syncer import equality

        return equality.meta_dw_patch(
            vobj, pobj,
            exception_prefixes=(*tenant.id.opaque_prefixes, *tenant.id.transparent_prefixes),
            opaque_domains=sx.settings.opaque_meta_domains,
        )

    async def on_tenant_terminating(
        self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any] | None
    ) -> None:
        """A tenant object with a deletionTimestamp: by default nothing (wait until gone)."""

    async def create(self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any]) -> None:
        body = self.build(sx, tenant, vobj)
        await self.create_super(sx, tenant, body, own_super_namespace(sx, tenant, vobj["metadata"]["namespace"]))

    async def create_super(self, sx: SyncContext, tenant: Tenant, body: dict[str, Any], ns: str) -> None:
        try:
            await sx.super_client.create(self.resource, body, namespace=ns)
        except errors.AlreadyExists:
            await self.name_taken(sx, tenant, body)
        log.debug("created super %s %s/%s", self.name, ns, body["metadata"]["name"])

    async def name_taken(self, sx: SyncContext, tenant: Tenant, body: dict[str, Any]) -> NoReturn:
        """Creating `body` met AlreadyExists: our cache lags, our copy lost the tenancy labels
        our label-filtered cache selects on (they are put back), or someone else owns the name.

        Raises Retry, or Permanent when the object is not this tenant's.
        """
        meta = body["metadata"]
        ns, name = meta.get("namespace"), meta["name"]
        current = await sx.super_client.get(self.resource, name, namespace=ns)
        if owner_of(current) != tenant.key:
            raise Permanent(
                f"{self.name} {ns}/{name} already exists in the super cluster and is not owned by this tenant"
            )
        have = current["metadata"].get("labels") or {}
        lost = {k: v for k, v in (meta.get("labels") or {}).items()
                if k.startswith(naming.TENANCY_PREFIX) and have.get(k) != v}
        if lost:
            log.info("super %s %s/%s lost our labels %s; restoring them", self.name, ns, name, sorted(lost))
            await sx.super_client.patch(self.resource, name, {"metadata": {"labels": lost}}, namespace=ns)
        raise Retry(f"super {self.name} {ns}/{name} exists but is not in our cache yet")

    async def upward(self, sx: SyncContext, tenant: Tenant, ns: str, name: str) -> None:
        """Back-populate super state into the tenant object (kinds with `has_upward`)."""

    # --- the reconcile ------------------------------------------------------------------
    async def reconcile(self, sx: SyncContext, tenant: Tenant, ns: str, name: str) -> None:
        vobj = tenant.get(self.name, name, ns)
        super_ns = tenant.id.super_namespace(ns)
        pobj = sx.super_cache(self.name).get(self.super_name(name), super_ns)
        if vobj is not None and not self.wanted(tenant, vobj):
            vobj = None
        if pobj is not None and owner_of(pobj) != tenant.key:
            if vobj is None:
                return  # not ours (e.g. Endpoints of the super endpoints controller): leave it be
            raise Permanent(
                f"super {self.name} {super_ns}/{self.super_name(name)} is not owned by this tenant"
            )
        if vobj is None:
            if pobj is not None:
                await self.delete_super(sx, pobj)
            return
        if (vobj["metadata"].get("deletionTimestamp")) is not None:
            await self.on_tenant_terminating(sx, tenant, vobj, pobj)
            return
        if pobj is None:
            await self.create(sx, tenant, vobj)
            return
        if conversion.tenant_uid(pobj) != uid_of(vobj):
            log.info("super %s %s/%s belongs to an older tenant object; replacing it",
                     self.name, super_ns, name)
            await self.delete_super(sx, pobj)
            raise Retry("replaced a stale super object")
        await self.update(sx, tenant, vobj, pobj)

    async def update(
        self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any]
    ) -> None:
        patch = self.patch(sx, tenant, vobj, pobj)
        if patch:
            meta = pobj["metadata"]
            await sx.super_client.patch(
                self.resource, meta["name"], patch, namespace=meta.get("namespace"),
            )

    async def delete_super(
        self, sx: SyncContext, pobj: dict[str, Any], *, grace_period_seconds: int | None = None
    ) -> None:
        meta = pobj["metadata"]
        try:
            await sx.super_client.delete(
                self.resource, meta["name"], namespace=meta.get("namespace"), uid=meta["uid"],
                grace_period_seconds=grace_period_seconds, propagation_policy="Background",
            )
        except (errors.NotFound, errors.Conflict):
            pass  # already gone, or replaced by a newer object we must not delete

    # --- patrol --------------------------------------------------------------------------
    def drifted(
        self, sx: SyncContext, tenant: Tenant, vobj: dict[str, Any], pobj: dict[str, Any] | None
    ) -> bool:
        """Whether the patrol should requeue this pair (pure, cheap: runs for every object)."""
        if not self.wanted(tenant, vobj) or vobj["metadata"].get("deletionTimestamp"):
            return False
        if pobj is None or conversion.tenant_uid(pobj) != uid_of(vobj):
            return True
        return bool(self.patch(sx, tenant, vobj, pobj))
