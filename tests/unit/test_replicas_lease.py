"""The pure half of tenant sharing: observed expiry, fair share, balancing plans, Lease bodies."""

from __future__ import annotations

import datetime as dt
import re

from appliance.replicas import lease, status

NOW = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)


def _lease(name: str, holder: str, *, renew: str = "2026-11-25T12:00:00.000000Z", duration: int = 15,
           role: str = lease.ROLE_TENANT, annotations: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "metadata": {"name": name, "resourceVersion": "7", "labels": {lease.LABEL_LEASE: role},
                     "annotations": annotations or {}},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renew,
                 "leaseTransitions": 0},
    }


def test_expiry_is_judged_by_observation_not_by_the_remote_clock() -> None:
    seen = lease.Observations()
    rec = lease.record(_lease("a", "r1", renew="2001-01-01T00:00:00.000000Z"))  # ancient renewTime
    assert not seen.expired(rec, 100.0)  # never observed: give it a full duration
    seen.observe(rec, 100.0)
    assert not seen.expired(rec, 114.9)
    assert seen.expired(rec, 115.1)
    renewed = lease.record(_lease("a", "r1", renew="2001-01-01T00:00:02.000000Z"))
    seen.observe(renewed, 115.2)  # a renewal restarts the clock
    assert not seen.expired(renewed, 129.0)
    assert seen.expired(lease.record(_lease("b", "")), 0.0)  # released: free at once


def test_fair_share_rounds_up_and_a_lone_replica_takes_everything() -> None:
    assert lease.fair_share(6, 1) == 6
    assert lease.fair_share(6, 3) == 2
    assert lease.fair_share(7, 3) == 3
    assert lease.fair_share(0, 3) == 0
    assert lease.fair_share(5, 0) == 5


def _refs(n: int) -> list[tuple[str, str]]:
    return [("team", f"vc{i}") for i in range(n)]


def test_three_replicas_each_plan_their_fair_share_of_free_tenants() -> None:
    tenants = _refs(6)
    taken: set[tuple[str, str]] = set()
    for ident in ("r1", "r2", "r3"):
        p = lease.plan(identity=ident, placement="h", tenants=tenants, held=set(),
                       records=dict.fromkeys(tenants), live_replicas=3, free=set(tenants) - taken)
        assert p.share == 2 and len(p.acquire) == 2 and not p.release
        taken |= set(p.acquire)
    assert taken == set(tenants)


def test_a_replica_over_its_share_gives_back_its_least_preferred_tenants() -> None:
    tenants = _refs(6)
    p = lease.plan(identity="r1", placement="h", tenants=tenants, held=set(tenants),
                   records=dict.fromkeys(tenants), live_replicas=2, free=set())
    assert p.share == 3 and not p.acquire
    assert p.release == lease.rank("r1", tenants)[3:]


def test_process_mode_tenants_stay_with_their_placement() -> None:
    tenants = _refs(2)
    bound = {lease.ANNOTATION_BOUND_TO: "host-a:/data"}
    records = {ref: lease.record(_lease(lease.tenant_lease_name(ref), "", annotations=bound)) for ref in tenants}
    elsewhere = lease.plan(identity="r2", placement="host-b:/data", tenants=tenants, held=set(),
                           records=records, live_replicas=2, free=set(tenants))
    assert elsewhere.acquire == []
    here = lease.plan(identity="r1", placement="host-a:/data", tenants=tenants, held=set(),
                      records=records, live_replicas=2, free=set(tenants))
    assert len(here.acquire) == 1
    # over its share, a replica keeps tenants bound to it and gives back movable ones only
    both = lease.plan(identity="r1", placement="host-a:/data", tenants=tenants, held=set(tenants),
                      records=records, live_replicas=2, free=set())
    assert both.release == []


def test_lease_names_are_valid_unique_and_stable() -> None:
    a = lease.tenant_lease_name(("a-b", "c"))
    b = lease.tenant_lease_name(("a", "b-c"))
    assert a != b and a == lease.tenant_lease_name(("a-b", "c"))
    long = lease.tenant_lease_name(("n" * 63, "v." * 120))
    for name in (a, b, long, lease.replica_lease_name("Host_1.example.com-3fa9")):
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


def test_acquire_renew_release_bodies() -> None:
    taken = lease.acquired(None, identity="r1", duration=15, now=NOW, role=lease.ROLE_TENANT,
                           annotations={lease.ANNOTATION_TENANT: "team/vc0"})
    assert taken["spec"]["holderIdentity"] == "r1" and taken["spec"]["leaseTransitions"] == 0
    assert taken["spec"]["acquireTime"] == "2026-11-25T12:00:00.000000Z"
    later = NOW + dt.timedelta(seconds=5)
    moved = lease.acquired({**taken, "metadata": {**taken["metadata"], "resourceVersion": "9"}},
                           identity="r2", duration=15, now=later, role=lease.ROLE_TENANT, annotations={})
    assert moved["spec"]["leaseTransitions"] == 1 and moved["spec"]["acquireTime"] != taken["spec"]["acquireTime"]
    assert moved["metadata"]["resourceVersion"] == "9"  # optimistic concurrency on the update
    assert moved["metadata"]["annotations"][lease.ANNOTATION_TENANT] == "team/vc0"
    renewed = lease.renewed(moved, duration=15, now=later + dt.timedelta(seconds=2),
                            annotations={lease.ANNOTATION_BOUND_TO: "h:/d"})
    assert renewed["spec"]["acquireTime"] == moved["spec"]["acquireTime"]
    assert renewed["metadata"]["annotations"][lease.ANNOTATION_BOUND_TO] == "h:/d"
    gone = lease.released(renewed, now=later)
    assert gone["spec"]["holderIdentity"] is None and gone["spec"]["leaseDurationSeconds"] == 1
    assert gone["metadata"]["annotations"][lease.ANNOTATION_BOUND_TO] == "h:/d"  # binding outlives holders


def test_status_table_names_holders_and_unavailable_process_tenants() -> None:
    leases = [
        _lease("replica-a", "host-a-1", role=lease.ROLE_REPLICA, annotations={lease.ANNOTATION_HOST: "a:/d"}),
        _lease("t0", "host-a-1", annotations={lease.ANNOTATION_TENANT: "team/vc0"}),
        _lease("t1", "host-b-2", renew="2026-11-25T11:00:00.000000Z",
               annotations={lease.ANNOTATION_TENANT: "team/vc1", lease.ANNOTATION_BOUND_TO: "b:/d"}),
    ]
    vcs = [{"metadata": {"namespace": "team", "name": f"vc{i}"},
            "status": {"phase": "Running", "provisioner": p}} for i, p in enumerate(["import", "process", "native"])]
    text = status.render(leases, vcs, now=NOW + dt.timedelta(seconds=3), namespace="vc-appliance-system",
                         leases_enabled=True)
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "live" in lines["host-a-1"] and "a:/d" in lines["host-a-1"]
    assert "host-a-1" in lines["team/vc0"] and lines["team/vc0"].endswith("held")
    assert "unavailable (processes on b:/d)" in lines["team/vc1"]
    assert lines["team/vc2"].endswith("waiting")
    assert "held: host-a-1 1" in text


def test_status_without_any_lease_says_leases_are_off_instead_of_waiting() -> None:
    """No Lease in the namespace (the default single appliance) reads as "Leases are off", never `waiting`."""
    vcs = [{"metadata": {"namespace": "default", "name": "tenant-1"},
            "status": {"phase": "Running", "provisioner": "process"}}]
    text = status.render([], vcs, now=NOW, namespace="vc-appliance-system", leases_enabled=False)
    assert "waiting" not in text and "HOLDER" not in text
    assert text.startswith("no replica or tenant Leases in namespace vc-appliance-system: Leases are off")
    assert "[leases] enabled = false" in text
    assert ["default/tenant-1", "Running", "process"] == text.splitlines()[-1].split()


def test_status_without_leases_but_enabled_asks_about_the_namespace() -> None:
    """A reader whose config enables Leases, finding none, is pointed at `[leases] namespace`."""
    text = status.render([], [], now=NOW, namespace="elsewhere", leases_enabled=True)
    assert "no replica or tenant Leases in namespace elsewhere" in text
    assert "[leases] namespace" in text and "waiting" not in text
