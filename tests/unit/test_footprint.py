"""Tenant footprint settings from a ClusterVersion, and the footprint bench's pure parts."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.manager import footprint
from bench import footprint as bench_footprint


def _cv(process: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "v1"}, "spec": {"process": process}}


def test_no_cluster_version_gets_the_lean_profile() -> None:
    """A tenant without ClusterVersion settings runs with the lean flags and Go limits."""
    spec = footprint.from_cluster_version(None)
    assert "APIServerIdentity=false" in footprint.apiserver_flags(spec)["feature-gates"]
    assert footprint.apiserver_env(spec) == footprint.LEAN_APISERVER_ENV
    assert footprint.controller_manager_env(spec) == footprint.LEAN_CONTROLLER_MANAGER_ENV
    assert footprint.controller_manager_flags(spec) == {}


def test_upstream_profile_adds_nothing() -> None:
    """`profile: upstream` reproduces the command lines and environment from before the trims."""
    spec = footprint.from_cluster_version(_cv({"profile": "upstream"}))
    assert footprint.apiserver_flags(spec) == {}
    assert footprint.apiserver_env(spec) == {}
    assert footprint.controller_manager_env(spec) == {}


def test_cluster_version_trims_map_to_flags_and_env() -> None:
    """Each `spec.process` key becomes its flag or variable; node lifecycle stays off."""
    spec = footprint.from_cluster_version(_cv({
        "apiServer": {"runtimeConfig": "flowcontrol.apiserver.k8s.io/v1=false", "watchCacheSizes": "events#0",
                      "watchCache": False, "goMemoryLimit": "200MiB", "goGC": "off"},
        "controllerManager": {"controllers": "*,-ttl-controller", "goMemoryLimit": "80MiB"},
    }))
    flags = footprint.apiserver_flags(spec)
    assert flags["runtime-config"] == "flowcontrol.apiserver.k8s.io/v1=false"
    assert flags["watch-cache-sizes"] == "events#0"
    assert flags["watch-cache"] == "false"
    assert footprint.apiserver_env(spec) == {"GOGC": "off", "GOMEMLIMIT": "200MiB"}
    assert footprint.controller_manager_flags(spec) == {"controllers": "*,-ttl-controller,-node-lifecycle-controller"}
    assert footprint.controller_manager_env(spec)["GOMEMLIMIT"] == "80MiB"


@pytest.mark.parametrize("process", [
    pytest.param({"profile": "tiny"}, id="unknown-profile"),
    pytest.param({"apiServer": {"goMemoryLimit": "200 MB"}}, id="memory-limit-unit"),
    pytest.param({"controllerManager": {"goGC": "-1"}}, id="gogc"),
    pytest.param({"apiServer": {"watchCache": "maybe"}}, id="watch-cache-type"),
])
def test_bad_settings_are_rejected_with_the_field(process: dict[str, Any]) -> None:
    """A malformed `spec.process` raises `Invalid` naming where it is."""
    with pytest.raises(footprint.Invalid, match=r"spec\.process"):
        footprint.from_cluster_version(_cv(process))


@pytest.mark.parametrize(("key", "author"), [
    pytest.param("/tenants/k1/registry/leases/kube-system/apiserver-abc", "leases apiserver-<id> (apiserver identity)",
                 id="identity-lease"),
    pytest.param("/tenants/k1/registry/leases/kube-system/kube-controller-manager",
                 "leases kube-system/kube-controller-manager", id="kcm-lease"),
    pytest.param("/tenants/k1/registry/events/default/x.1", "events", id="event"),
    pytest.param("compact_rev_key", "other compact_rev_key", id="outside-tenants"),
])
def test_bench_attributes_a_write_by_its_key(key: str, author: str) -> None:
    """The footprint bench names who wrote a key: leases by name, the rest by resource."""
    assert author == bench_footprint.who_wrote(key)


def test_bench_counts_versions_and_appliance_writes() -> None:
    """Writes per author are version deltas (new keys from creation); only write methods count."""
    before = {"/tenants/a/registry/leases/ns/l": 3}
    after = {"/tenants/a/registry/leases/ns/l": 9, "/tenants/a/registry/events/ns/e": 1}
    assert {"leases ns/l": 6, "events": 1} == dict(bench_footprint.attribute(before, after))
    text = ('vc_super_requests_total{method="GET",code="200"} 40\n'
            'vc_super_requests_total{method="PATCH",code="200"} 2\n'
            'vc_super_requests_total{method="POST",code="409"} 1\n')
    assert bench_footprint.write_count(text) == 3
