"""Tenant Service ranges: picking a free one, yielding to an older overlapping one, and the
super copy of a Service keeping a tenant ClusterIP only inside the tenant's own range."""

from __future__ import annotations

from typing import Any

from appliance.manager import servicecidrs
from appliance.syncer import conversion
from appliance.util import naming


def cidr(name: str, *ranges: str, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"cidrs": list(ranges)}}


def test_pick_free_skips_every_range_already_registered() -> None:
    """The first /20 of the pool that overlaps no ServiceCIDR, whatever their sizes; None when full."""
    taken = [cidr("kubernetes", "10.96.0.0/16"), cidr("a", "10.64.0.0/20"), cidr("b", "10.64.16.0/20"), cidr("wide", "10.64.32.0/19"),
             cidr("v6", "fd00::/108")]
    assert servicecidrs.pick_free("10.64.0.0/12", 20, taken) == "10.64.64.0/20"
    assert servicecidrs.pick_free("10.64.0.0/18", 20, taken) is None
    assert servicecidrs.pick_free("10.96.0.0/16", 16, taken) is None  # a requested range that is taken


def test_the_younger_of_two_overlapping_ranges_yields() -> None:
    """Two replicas that picked the same range at once: the later one (then the greater name) moves."""
    old = cidr("vc-a", "10.64.0.0/20", created="2026-01-01T00:00:00Z")
    new = cidr("vc-b", "10.64.0.0/20", created="2026-01-01T00:00:05Z")
    same_time = cidr("vc-c", "10.64.8.0/21", created="2026-01-01T00:00:00Z")
    apart = cidr("vc-d", "10.64.16.0/20", created="2025-01-01T00:00:00Z")
    assert servicecidrs.overlapping_rivals(new, [old, new, apart]) == ["vc-a"]
    assert servicecidrs.overlapping_rivals(old, [old, new, apart]) == []
    assert servicecidrs.overlapping_rivals(same_time, [old, same_time]) == ["vc-a"]


def test_servicecidr_body_names_and_labels_the_tenant() -> None:
    body = servicecidrs.body("ns-abc123-t", "10.64.0.0/20")
    assert body["metadata"] == {"name": naming.service_cidr_name("ns-abc123-t"),
                                "labels": {naming.LABEL_CLUSTER: "ns-abc123-t"}}
    assert body["spec"] == {"cidrs": ["10.64.0.0/20"]}


def svc(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "annotations": {}}, "spec": {"ports": [{"port": 80, "nodePort": 31000}], **spec}}


def test_a_tenant_cluster_ip_is_kept_only_inside_the_tenants_own_range() -> None:
    """Inside the range the addresses stay (and the tenant's is still recorded); outside it, or
    without a range, the super cluster allocates; headless stays headless; nodePorts stay."""
    inside = svc(clusterIP="10.64.0.10", clusterIPs=["10.64.0.10"])
    kept = conversion.adapt_service(inside, own_range="10.64.0.0/20")
    assert kept["spec"]["clusterIP"] == "10.64.0.10" and kept["spec"]["clusterIPs"] == ["10.64.0.10"]
    assert kept["metadata"]["annotations"][naming.ANNOTATION_CLUSTER_IP] == "10.64.0.10"
    assert kept["spec"]["ports"][0]["nodePort"] == 31000
    for own in ("10.65.0.0/20", None, "not-a-range"):
        cleared = conversion.adapt_service(inside, own_range=own)
        assert "clusterIP" not in cleared["spec"] and "clusterIPs" not in cleared["spec"]
    dual = svc(clusterIP="10.64.0.10", clusterIPs=["10.64.0.10", "fd00::a"])
    assert "clusterIP" not in conversion.adapt_service(dual, own_range="10.64.0.0/20")["spec"]
    headless = conversion.adapt_service(svc(clusterIP="None", clusterIPs=["None"]), own_range="10.64.0.0/20")
    assert headless["spec"]["clusterIP"] == "None"
    assert conversion.without_cluster_ips(kept)["spec"].keys() == {"ports"}
    assert conversion.without_cluster_ips(headless)["spec"]["clusterIP"] == "None"


def test_a_service_turning_cluster_ip_gets_the_tenants_address_in_its_own_range() -> None:
    """ExternalName → ClusterIP: the super twin (no address yet) is patched to the tenant's,
    inside the own range only; a twin that has an address keeps it (addresses are immutable)."""
    from appliance.syncer.resources import services

    tenant = {"spec": {"type": "ClusterIP", "clusterIP": "10.64.0.7", "clusterIPs": ["10.64.0.7"]}}
    external = {"spec": {"type": "ExternalName", "externalName": "a.example.com"}}
    assert services.kept_ip_patch(tenant, external, "10.64.0.0/20") == {
        "spec": {"clusterIP": "10.64.0.7", "clusterIPs": ["10.64.0.7"]}}
    assert services.kept_ip_patch(tenant, external, "10.65.0.0/20") is None
    assert services.kept_ip_patch(tenant, external, None) is None
    assert services.kept_ip_patch(tenant, {"spec": {"clusterIP": "10.64.0.9"}}, "10.64.0.0/20") is None
    assert services.kept_ip_patch({"spec": {"type": "ExternalName"}}, external, "10.64.0.0/20") is None
