"""The patrol: a periodic full comparison of tenant and super caches that repairs drift.

It never writes to a cluster except to collect idle virtual nodes: it only enqueues the
keys whose pair differs (missing super copy, stale UID, changed fields, orphaned super
object of a known tenant, unmirrored status), and the ordinary workers repair them. So
a quiet system costs no API writes, and a repair follows exactly the rules of a normal
sync. Runs every `patrol_period` seconds, measured from the end of the previous scan.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NoReturn, cast

import trio

from appliance.kube import errors, resources
from appliance.syncer import conversion, vnode
from appliance.syncer.context import SyncContext
from appliance.util import tenancy

if TYPE_CHECKING:
    from appliance.syncer.resources.base import Kind
    from appliance.syncer.resources.sourced import SuperSourcedKind
    from appliance.syncer.runtime import Syncer
    from appliance.syncer.tenant import Tenant

log = logging.getLogger(__name__)

#: How the original VirtualCluster spells each kind in its checker counter names.
COUNTER_PLURALS = {
    "namespace": "Namespaces", "configmap": "ConfigMaps", "secret": "OpaqueSecrets",
    "serviceaccount": "ServiceAccounts", "service": "Services", "endpoints": "Endpoints",
    "persistentvolumeclaim": "PVCs", "pod": "Pods",
    "persistentvolume": "PVs", "storageclass": "StorageClasses", "priorityclass": "PriorityClasses",
    "ingress": "Ingresses",
}


def scan_kind(sx: SyncContext, kind: Kind) -> tuple[int, int]:
    """Enqueue drifted and orphaned keys of one kind; returns (requeued, orphans). No I/O."""
    if kind.super_sourced:  # no tenancy back-trace on those: the kind compares itself
        return cast("SuperSourcedKind", kind).scan(sx)
    requeued = orphans = 0
    for tenant in list(sx.tenants.values()):
        inf = tenant.informers.get(kind.name)
        if inf is None:
            continue
        for vobj in inf.list():
            ns, name = kind.work_key(vobj)
            sname, sns = kind.super_key(tenant, ns, name)
            pobj = sx.super_cache(kind.name).get(sname, sns)
            if kind.drifted(sx, tenant, vobj, pobj):
                sx.enqueue(kind.name, tenant.key, (ns, name))
                requeued += 1
    for pobj in sx.super_cache(kind.name).list():
        ref = conversion.tenant_object_ref(pobj)
        if ref is None:
            continue
        owner = sx.tenants.get(ref.cluster_key)
        if owner is None or kind.name not in owner.informers:
            continue
        tname = kind.tenant_name(ref.name)
        if kind.name == "namespace":
            present = owner.get(kind.name, ref.namespace) is not None
            key = ("", ref.namespace)
        else:
            present = owner.get(kind.name, tname, ref.namespace) is not None
            key = (ref.namespace, tname)
        if not present:
            sx.enqueue(kind.name, owner.key, key)
            orphans += 1
    return requeued, orphans


async def collect_vnodes(sx: SyncContext, tenant: Tenant, empty_since: dict[tuple[tenancy.ClusterKey, str], float]) -> None:
    """Delete virtual nodes that have had no tenant Pod for `vnode_gc_grace` seconds."""
    nodes = tenant.informers.get("node")
    pods = tenant.informers.get("pod")
    if nodes is None or pods is None:
        return
    busy = {(p.get("spec") or {}).get("nodeName") for p in pods.list()}
    now = trio.current_time()
    for node in nodes.list():
        name = node["metadata"]["name"]
        key = (tenant.key, name)
        if name in busy:
            empty_since.pop(key, None)
            super_node = sx.super_nodes.get(name)
            if super_node is not None and vnode.spec_patch(node, super_node):
                sx.enqueue_upward(tenant.key, "node", "", name)  # drift, or a vnode an older version tainted
            continue
        since = empty_since.setdefault(key, now)
        if now - since >= sx.settings.vnode_gc_grace:
            try:
                await tenant.client.delete(resources.NODES, name, grace_period_seconds=0)
                log.info("tenant %s: virtual node %s deleted (no pods for %.0f s)",
                         tenant.key, name, now - since)
            except errors.NotFound:
                pass
            empty_since.pop(key, None)


async def run(sx: Syncer) -> NoReturn:
    empty_since: dict[tuple[tenancy.ClusterKey, str], float] = {}
    while True:
        await trio.sleep(sx.settings.patrol_period)
        for kind in sx.kinds.values():
            started = trio.current_time()
            requeued, orphans = scan_kind(sx, kind)
            sx.m_patrol_seconds.observe(trio.current_time() - started, resource=kind.name)
            plural = COUNTER_PLURALS.get(kind.name, kind.name.capitalize() + "s")
            if requeued:
                sx.m_remedy.inc(requeued, counter_name=f"RequeuedTenant{plural}")
            if orphans:
                sx.m_remedy.inc(orphans, counter_name=f"DeletedOrphanSuperControlPlane{plural}")
            if requeued or orphans:
                log.info("patrol %s: %d requeued, %d orphans", kind.name, requeued, orphans)
            await trio.lowlevel.checkpoint()
        sx.patrol_scan_done()
        for q in sx.all_queues():
            q.collect_idle()
        for tenant in list(sx.tenants.values()):
            try:
                await collect_vnodes(sx, tenant, empty_since)
            except errors.KubeError as exc:
                log.warning("tenant %s: virtual node GC failed: %s", tenant.key, exc)
