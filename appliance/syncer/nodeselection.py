"""Node selection by labels a tenant put on its virtual nodes (pure; no I/O).

A tenant may label its virtual nodes (`kubectl label node`, as the scheduling conformance tests
and DaemonSets with node selectors do). The super nodes never carry those labels, so a super
Pod that kept a selector or required node affinity on them could never be scheduled. When a
Pod's `nodeSelector` or required node affinity names such a label, the syncer evaluates the
whole selection in the tenant's view (the super node's labels overlaid with the virtual
node's) and the super Pod asks for the matching nodes by name instead. Selections on labels
the super nodes carry go down unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["pin", "tenant_selected_nodes"]

Labels = Mapping[str, str]


def tenant_selected_nodes(spec: Mapping[str, Any], vnode_labels: Mapping[str, Labels],
                          super_node_labels: Mapping[str, Labels]) -> tuple[str, ...] | None:
    """The nodes a Pod spec selects as the tenant sees them, or None when its selection names no
    label the tenant set (a virtual node label whose value its super node does not have) or
    when no node matches (the Pod then stays Pending in both clusters).

    `vnode_labels`: the tenant's virtual nodes' labels by name; `super_node_labels`: their super
    nodes' labels by the same names.
    """
    keys = set(spec.get("nodeSelector") or ()) | {
        expr.get("key") for term in _required_terms(spec) for expr in term.get("matchExpressions") or ()}
    tenant_set = any(key in labels and labels[key] != super_node_labels.get(node, {}).get(key)
                     for node, labels in vnode_labels.items() for key in keys)
    if not tenant_set:
        return None
    chosen = tuple(sorted(node for node, labels in vnode_labels.items()
                          if _selects(spec, node, {**super_node_labels.get(node, {}), **labels})))
    return chosen or None


def pin(spec: dict[str, Any], nodes: tuple[str, ...]) -> None:
    """Replace the Pod's node selection (already evaluated into `nodes`) by the node names: one
    required term per node, as a node field selector names exactly one node (the API refuses
    more values). Preferred terms are left as they are."""
    spec.pop("nodeSelector", None)
    affinity = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]} for node in nodes]}


def _required_terms(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or {}
    return list(required.get("nodeSelectorTerms") or ())


def _selects(spec: Mapping[str, Any], node: str, labels: Labels) -> bool:
    """Whether node `node` with `labels` satisfies the selector and some required term, as the
    scheduler's NodeAffinity filter reads them (terms ORed, requirements within one ANDed)."""
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    terms = _required_terms(spec)
    return not terms or any(_term_selects(term, node, labels) for term in terms)


def _term_selects(term: Mapping[str, Any], node: str, labels: Labels) -> bool:
    expressions, fields = term.get("matchExpressions") or (), term.get("matchFields") or ()
    if not expressions and not fields:
        return False  # an empty term matches nothing
    return (all(_requirement(e, labels.get(e.get("key", ""))) for e in expressions)
            and all(_requirement(f, node) for f in fields if f.get("key") == "metadata.name"))


def _requirement(req: Mapping[str, Any], value: str | None) -> bool:
    op, values = req.get("operator"), [str(v) for v in req.get("values") or ()]
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False
