"""The super-cluster footprint of one VirtualCluster: its root namespace, secrets, tenant namespaces.

Owns creating the root namespace (named after the cluster key, annotated with the VC's name,
namespace and UID) and refusing one that belongs to someone else; applying objects with the
manager's field manager; and, on deletion, finding and deleting exactly this VC's super
namespaces: the root namespace and every namespace annotated `tenancy.x-k8s.io/cluster=<key>`
whose `tenancy.x-k8s.io/vcuid` (when present) is this VC's UID. Deletes carry the namespace
UID as a precondition, so a namespace re-created meanwhile by someone else survives.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.kube.resources import Resource
from appliance.manager import model, reconcile
from appliance.util import naming, tenancy

logger = logging.getLogger(__name__)

DELETE_POLL = 0.5


def root_namespace_manifest(vc: model.VirtualCluster, key: tenancy.ClusterKey) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": key,
            "annotations": {
                naming.ANNOTATION_VC_NAME: vc.metadata.name,
                naming.ANNOTATION_VC_NAMESPACE: vc.metadata.namespace,
                naming.ANNOTATION_VC_UID: vc.metadata.uid,
                naming.ANNOTATION_VC_ROOT_NS: "true",
            },
        },
    }


def _owner(ns: dict[str, Any]) -> str:
    ann = (ns.get("metadata") or {}).get("annotations") or {}
    if naming.ANNOTATION_VC_UID in ann:
        return (
            f"VirtualCluster {ann.get(naming.ANNOTATION_VC_NAMESPACE, '?')}/"
            f"{ann.get(naming.ANNOTATION_VC_NAME, '?')} (uid {ann[naming.ANNOTATION_VC_UID]})"
        )
    return "no VirtualCluster"


async def ensure_root_namespace(client: ApiClient, vc: model.VirtualCluster, key: tenancy.ClusterKey) -> None:
    """Create the root namespace, or accept an existing one that is already this VC's.

    Raises reconcile.Rejected (ClusterNamespaceConflict) if the namespace exists and is not
    this VC's root namespace; RuntimeError (transient) while an old one is still terminating.
    """
    try:
        await client.create(resources.NAMESPACES, root_namespace_manifest(vc, key))
        return
    except errors.AlreadyExists:
        pass
    ns = await client.get(resources.NAMESPACES, key)
    ann = (ns.get("metadata") or {}).get("annotations") or {}
    if ann.get(naming.ANNOTATION_VC_UID) != vc.metadata.uid or ann.get(naming.ANNOTATION_VC_ROOT_NS) != "true":
        raise reconcile.Rejected(
            "ClusterNamespaceConflict",
            f"namespace {key} already exists and is not the root namespace of this VirtualCluster "
            f"(it belongs to {_owner(ns)})",
        )
    if (ns.get("metadata") or {}).get("deletionTimestamp"):
        raise RuntimeError(f"root namespace {key} is still terminating")


async def apply(
    client: ApiClient, res: Resource, obj: dict[str, Any], *, manager: str = model.FIELD_MANAGER
) -> dict[str, Any]:
    """Server-side apply `obj` (forced), returning the live object."""
    meta = obj["metadata"]
    return await client.patch(
        res, meta["name"], obj, namespace=meta.get("namespace"), patch_type="apply",
        field_manager=manager, force=True,
    )


async def read_secrets(client: ApiClient, namespace: str, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The named secrets that exist in `namespace`, by name."""
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            found[name] = await client.get(resources.SECRETS, name, namespace=namespace)
        except errors.NotFound:
            continue
    return found


def owned_namespaces(namespaces: list[dict[str, Any]], *, key: tenancy.ClusterKey, vc_uid: str) -> list[dict[str, Any]]:
    """The super namespaces that belong to the VC with cluster key `key` and UID `vc_uid`."""
    mine = []
    for ns in namespaces:
        meta = ns.get("metadata") or {}
        ann = meta.get("annotations") or {}
        uid = ann.get(naming.ANNOTATION_VC_UID)
        if uid is not None and uid != vc_uid:
            continue
        is_root = meta.get("name") == key and ann.get(naming.ANNOTATION_VC_ROOT_NS) == "true" and uid == vc_uid
        if is_root or ann.get(naming.ANNOTATION_CLUSTER) == key:
            mine.append(ns)
    return mine


async def delete_namespaces(client: ApiClient, *, key: tenancy.ClusterKey, vc_uid: str) -> list[str]:
    """Delete this VC's super namespaces and wait until they are gone; return their names.

    Cancellation: the caller's deadline bounds the wait (a stuck namespace finalizer).
    """
    listing = await client.list(resources.NAMESPACES)
    targets = owned_namespaces(listing.items, key=key, vc_uid=vc_uid)
    names = [ns["metadata"]["name"] for ns in targets]
    for ns in targets:
        meta = ns["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        try:
            await client.delete(resources.NAMESPACES, meta["name"], uid=meta.get("uid"))
        except (errors.NotFound, errors.Conflict):
            continue
        logger.info("deleting namespace %s of %s", meta["name"], key)
    for name in names:
        while True:
            try:
                await client.get(resources.NAMESPACES, name)
            except errors.NotFound:
                break
            await trio.sleep(DELETE_POLL)
    return names


async def delete_cluster_objects(client: ApiClient, *, key: tenancy.ClusterKey) -> int:
    """Delete the cluster-scoped super objects the syncer made for tenant `key` (RuntimeClass
    copies, labelled with its key); return how many. Missing RBAC or API: nothing to delete."""
    try:
        listing = await client.list(resources.RUNTIMECLASSES, label_selector=f"{naming.LABEL_CLUSTER}={key}")
    except (errors.NotFound, errors.Forbidden, errors.BadRequest):
        return 0  # BadRequest: a key no label can hold (a refused VirtualCluster) labels nothing
    for obj in listing.items:
        try:
            await client.delete(resources.RUNTIMECLASSES, obj["metadata"]["name"], uid=obj["metadata"].get("uid"))
        except (errors.NotFound, errors.Conflict):
            continue
    return len(listing.items)
