"""Node selection by the labels a tenant put on its virtual nodes (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.syncer import nodeselection

SUPER = {"n1": {"kubernetes.io/hostname": "n1", "zone": "a", "cpus": "8"},
         "n2": {"kubernetes.io/hostname": "n2", "cpus": "2"}}
LABELED = {"n1": {"kubernetes.io/hostname": "n1", "e2e": "42"}, "n2": {"kubernetes.io/hostname": "n2", "e2e": "7"}}


def required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": op, **({"values": list(values)} if values else {})}


def name_is(node: str) -> dict[str, Any]:
    return {"key": "metadata.name", "operator": "In", "values": [node]}


@pytest.mark.parametrize(("spec", "vnodes", "expected"), [
    pytest.param({}, LABELED, None, id="no-selection"),
    pytest.param({"nodeSelector": {"zone": "a"}}, {"n1": {}, "n2": {}}, None, id="super-label-passes-through"),
    pytest.param({"nodeSelector": {"kubernetes.io/hostname": "n2"}}, LABELED, None, id="mirrored-label"),
    pytest.param({"nodeSelector": {"e2e": "42"}}, LABELED, ("n1",), id="tenant-label"),
    pytest.param({"nodeSelector": {"e2e": "42", "zone": "a"}}, {"n1": {"e2e": "42"}, "n2": {"e2e": "42"}}, ("n1",),
                 id="tenant-label-and-super-label"),
    pytest.param({"nodeSelector": {"e2e": "1"}}, LABELED, None, id="tenant-label-matches-nothing"),
    pytest.param({"nodeSelector": {"zone": "b"}}, {"n1": {"zone": "b"}, "n2": {"zone": "b"}}, ("n1", "n2"),
                 id="tenant-overrode-a-value"),
    pytest.param({"affinity": required({"matchExpressions": [expr("e2e", "In", "7", "42")]})}, LABELED, ("n1", "n2"),
                 id="affinity-in"),
    pytest.param({"affinity": required({"matchExpressions": [expr("e2e", "NotIn", "42")]})}, LABELED, ("n2",),
                 id="affinity-notin"),
    pytest.param({"affinity": required({"matchExpressions": [expr("e2e", "Gt", "10")]})}, LABELED, ("n1",),
                 id="affinity-gt"),
    pytest.param({"affinity": required({"matchExpressions": [expr("e2e", "Exists"), expr("cpus", "Lt", "4")]})},
                 LABELED, ("n2",), id="affinity-and-within-a-term-super-label-too"),
    pytest.param({"affinity": required({"matchExpressions": [expr("e2e", "In", "42")]},
                                       {"matchExpressions": [expr("e2e", "In", "7")]})}, LABELED, ("n1", "n2"),
                 id="affinity-terms-ored"),
    pytest.param({"nodeSelector": {"e2e": "42"}, "affinity": required({"matchFields": [name_is("n2")]})},
                 {"n1": {"e2e": "42"}, "n2": {"e2e": "42"}}, ("n2",), id="daemon-pod-keeps-its-node"),
    pytest.param({"nodeSelector": {"e2e": "42"}, "affinity": required({"matchFields": [name_is("n2")]})},
                 LABELED, None, id="daemon-pod-node-does-not-match"),
])
def test_selection_is_evaluated_in_the_tenants_view(spec: dict[str, Any], vnodes: dict[str, dict[str, str]],
                                                    expected: tuple[str, ...] | None) -> None:
    """A selection naming a label the tenant set is evaluated over the tenant's virtual nodes (the
    super node's labels overlaid with the tenant's); other selections go down unchanged."""
    assert expected == nodeselection.tenant_selected_nodes(spec, vnodes, SUPER)


def test_pin_asks_for_each_node_by_name_in_a_term_of_its_own() -> None:
    spec: dict[str, Any] = {"nodeSelector": {"e2e": "42"}, "affinity": {
        "nodeAffinity": {**required({"matchExpressions": [expr("e2e", "Exists")]})["nodeAffinity"],
                         "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {}}]},
        "podAntiAffinity": {"x": 1}}}
    nodeselection.pin(spec, ("n1", "n2"))
    assert "nodeSelector" not in spec
    assert spec["affinity"] == {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [name_is("n1")]}, {"matchFields": [name_is("n2")]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {}}]},
        "podAntiAffinity": {"x": 1}}
