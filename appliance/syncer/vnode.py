"""Virtual nodes: the tenant's view of the super nodes its Pods run on.

A virtual node is created in a tenant when one of its Pods is bound to a super node of
that name. It is schedulable and untainted unless the super node is cordoned, which it
mirrors, and tainted only while the super node is not Ready (`_MANAGED_TAINTS`): the
original marked every vnode unschedulable and tainted, but the tenant has no
scheduler to keep away, and workloads that pick nodes (the conformance suite, operators
placing Pods by node affinity) read such a node as unusable. Super taints are not copied:
the super scheduler enforces them, and a NoExecute taint in the tenant would make the
tenant's taint-eviction controller delete Pods the super cluster keeps running. Vnodes
created as tainted by an older version are fixed by `spec_patch`. A vnode carries the
super node's os/arch/hostname labels, capacity and node info, and the super node's
addresses (NodePorts, host ports and `status.hostIP` are reached there) plus a `Hostname`
address that is the appliance's kubelet proxy, with the proxy's port as its kubelet port:
kube-apiserver dials a node's kubelet at the first address of its
`--kubelet-preferred-address-types`, which puts Hostname first by default (process tenants
set it so), so tenant `kubectl logs/exec` reach the proxy. A super node without addresses
(some fake nodes) gets the proxy as its InternalIP too, as before. It never carries `status.declaredFeatures`, so the
tenant apiserver talks SPDY to the proxy, which passes it through untouched.
`build` and `status_patch` are pure; `ensure`/`upward` do the I/O.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from appliance.kube import errors, resources
from appliance.kube import informer as kinformer
from appliance.syncer.context import SyncContext
from appliance.syncer.tenant import Tenant
from appliance.util import naming

log = logging.getLogger(__name__)

BASE_LABELS = ("kubernetes.io/os", "kubernetes.io/arch", "kubernetes.io/hostname")
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
#: Taints the syncer owns on a vnode. The apiserver's TaintNodesByCondition admission puts
#: not-ready on every new Node and the tenant runs no node-lifecycle controller to lift it,
#: so the syncer sets these from the super node's Ready condition, NoSchedule only: the
#: NoExecute twins would have the tenant evict Pods the super cluster keeps running.
_MANAGED_TAINTS = (UNSCHEDULABLE_TAINT, NOT_READY_TAINT, UNREACHABLE_TAINT)


def _cordoned(super_node: dict[str, Any]) -> bool:
    return bool((super_node.get("spec") or {}).get("unschedulable"))


def _condition_taints(super_node: dict[str, Any]) -> list[dict[str, str]]:
    ready = next((c.get("status") for c in (super_node.get("status") or {}).get("conditions") or ()
                  if c.get("type") == "Ready"), "Unknown")
    if ready == "True":
        return []
    return [{"key": NOT_READY_TAINT if ready == "False" else UNREACHABLE_TAINT, "effect": "NoSchedule"}]


_COPIED_ADDRESS_TYPES = ("InternalIP", "ExternalIP", "InternalDNS", "ExternalDNS")


def _addresses(super_node: dict[str, Any], proxy: str) -> list[dict[str, str]]:
    """The super node's addresses, its Hostname replaced by the proxy's address."""
    copied = [{"type": a["type"], "address": a["address"]}
              for a in (super_node.get("status") or {}).get("addresses") or ()
              if a.get("type") in _COPIED_ADDRESS_TYPES and a.get("address")]
    if not any(a["type"] == "InternalIP" for a in copied):
        copied.insert(0, {"type": "InternalIP", "address": proxy})
    return [*copied, {"type": "Hostname", "address": proxy}]


def build(
    super_node: dict[str, Any], *, address: str, port: int, extra_labels: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The virtual node for `super_node` (pure)."""
    meta, status = super_node["metadata"], super_node.get("status") or {}
    keep = (*BASE_LABELS, *extra_labels)
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k in keep}
    labels[naming.LABEL_VIRTUAL_NODE] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": meta["name"], "labels": labels},
        "spec": {**({"unschedulable": True} if _cordoned(super_node) else {}),
                 **({"taints": taints} if (taints := _condition_taints(super_node)) else {})},
        "status": {
            "capacity": copy.deepcopy(status.get("capacity") or {}),
            "allocatable": copy.deepcopy(status.get("allocatable") or {}),
            "nodeInfo": copy.deepcopy(status.get("nodeInfo") or {}),
            "conditions": copy.deepcopy(status.get("conditions") or []),
            "addresses": _addresses(super_node, address),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        },
    }


def status_patch(vnode: dict[str, Any], super_node: dict[str, Any], *, address: str, port: int) -> dict[str, Any] | None:
    """Merge patch bringing a vnode's conditions and endpoint in line (pure)."""
    want = {
        "conditions": (super_node.get("status") or {}).get("conditions") or [],
        "addresses": _addresses(super_node, address),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
    }
    have = vnode.get("status") or {}
    diff = {k: v for k, v in want.items() if have.get(k) != v}
    if have.get("declaredFeatures"):
        diff["declaredFeatures"] = None
    return {"status": diff} if diff else None


def spec_patch(vnode: dict[str, Any], super_node: dict[str, Any]) -> dict[str, Any] | None:
    """Merge patch mirroring the super node's cordon and readiness, which also removes the
    taint older versions put on every vnode (pure)."""
    spec = vnode.get("spec") or {}
    diff: dict[str, Any] = {}
    if bool(spec.get("unschedulable")) != _cordoned(super_node):
        diff["unschedulable"] = True if _cordoned(super_node) else None
    taints = spec.get("taints") or []
    ours = [{"key": t.get("key"), "effect": t.get("effect")} for t in taints if t.get("key") in _MANAGED_TAINTS]
    want = _condition_taints(super_node)
    if ours != want:
        kept = [t for t in taints if t.get("key") not in _MANAGED_TAINTS] + want
        diff["taints"] = kept or None
    return {"spec": diff} if diff else None


async def ensure(sx: SyncContext, tenant: Tenant, node_name: str) -> None:
    """Create the vnode in the tenant if it is missing; raises Retry if the super node is unknown."""
    from appliance.syncer.resources.base import Retry

    if tenant.informers["node"].get_raw(node_name) is not None:  # existence: no decode
        return
    super_node = sx.super_nodes.get(node_name)
    if super_node is None:
        raise Retry(f"super node {node_name} not in cache yet")
    s = sx.settings
    body = build(super_node, address=s.vnode_address, port=s.vnode_port, extra_labels=s.extra_node_labels)
    try:
        created = await tenant.client.create(resources.NODES, body)
    except errors.AlreadyExists:
        created = await tenant.client.get(resources.NODES, node_name)
    # Node creation may drop status; set it explicitly.
    patch = status_patch(created, super_node, address=s.vnode_address, port=s.vnode_port)
    full = {"status": {**body["status"], **((patch or {}).get("status") or {})}}
    await tenant.client.patch(resources.NODES, node_name, full, subresource="status")
    spec = spec_patch(created, super_node)  # admission added the not-ready taint
    if spec:
        await tenant.client.patch(resources.NODES, node_name, spec)
    log.info("tenant %s: virtual node %s created", tenant.key, node_name)


async def upward(sx: SyncContext, tenant: Tenant, node_name: str) -> None:
    vnode = tenant.get("node", node_name)
    super_node = sx.super_nodes.get(node_name)
    if vnode is None or super_node is None:
        return
    patch = status_patch(vnode, super_node, address=sx.settings.vnode_address, port=sx.settings.vnode_port)
    if patch:
        await tenant.client.patch(resources.NODES, node_name, patch, subresource="status")
    spec = spec_patch(vnode, super_node)
    if spec:
        await tenant.client.patch(resources.NODES, node_name, spec)


def _interesting(new: dict[str, Any] | None, old: dict[str, Any] | None) -> bool:
    if new is None or old is None:
        return True
    ns, os_ = new.get("status") or {}, old.get("status") or {}
    strip = [{k: v for k, v in c.items() if k != "lastHeartbeatTime"} for c in ns.get("conditions") or []]
    strip_old = [{k: v for k, v in c.items() if k != "lastHeartbeatTime"} for c in os_.get("conditions") or []]
    return (strip != strip_old or ns.get("addresses") != os_.get("addresses")
            or _cordoned(new) != _cordoned(old) or _condition_taints(new) != _condition_taints(old))


def super_node_handler(sx: SyncContext) -> kinformer.Handler:
    """Super node changes that matter (conditions, not heartbeats) go to every tenant holding it."""

    def handle(event_type: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        if not _interesting(new, old):
            return
        name = (new or old or {})["metadata"]["name"]
        for tenant in list(sx.tenants.values()):
            if tenant.informers["node"].get_raw(name) is not None:
                sx.enqueue_upward(tenant.key, "node", "", name)

    return handle
