"""Sans-I/O core of tenant sharing: Lease records, observed expiry, fair share, preference.

Replicas coordinate only through `coordination.k8s.io/v1` Leases in one namespace:

* one *replica* Lease per live appliance (its heartbeat), label `vc-appliance.x-k8s.io/lease=replica`;
* one *tenant* Lease per VirtualCluster, label `...=tenant`; its holder provisions and syncs it.

Expiry follows client-go's leader election: a Lease is judged by how long *this* replica has
seen its record unchanged (local monotonic time), never by comparing `renewTime` with the
local clock, so clock skew between hosts cannot hand a tenant to two replicas.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from appliance.util import tenancy

LABEL_LEASE: Final = "vc-appliance.x-k8s.io/lease"
ANNOTATION_TENANT: Final = "vc-appliance.x-k8s.io/tenant"
ANNOTATION_HOST: Final = "vc-appliance.x-k8s.io/host"
#: process-mode tenants: the placement (host and data dir) whose processes serve it
ANNOTATION_BOUND_TO: Final = "vc-appliance.x-k8s.io/bound-to"
ROLE_REPLICA: Final = "replica"
ROLE_TENANT: Final = "tenant"

@dataclass(frozen=True, slots=True)
class Record:
    """The parts of a Lease that decide who holds it."""

    name: str
    holder: str
    duration: float
    renew_time: str
    transitions: int
    resource_version: str
    annotations: dict[str, str]

    @property
    def spec_key(self) -> tuple[str, str, float, int]:
        """What changes on every renewal or hand-over (client-go compares the whole record)."""
        return (self.holder, self.renew_time, self.duration, self.transitions)


def record(lease: dict[str, Any]) -> Record:
    meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
    return Record(
        name=str(meta.get("name", "")),
        holder=str(spec.get("holderIdentity") or ""),
        duration=float(spec.get("leaseDurationSeconds") or 0),
        renew_time=str(spec.get("renewTime") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str(meta.get("resourceVersion", "")),
        annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
    )


class Observations:
    """When this replica last saw each Lease's record change (monotonic seconds)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[str, str, float, int], float]] = {}

    def observe(self, rec: Record, now: float) -> None:
        prev = self._seen.get(rec.name)
        if prev is None or prev[0] != rec.spec_key:
            self._seen[rec.name] = (rec.spec_key, now)

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)

    def expired(self, rec: Record, now: float) -> bool:
        """Free to take: no holder, or unchanged for longer than its own duration."""
        if not rec.holder:
            return True
        seen = self._seen.get(rec.name)
        if seen is None or seen[0] != rec.spec_key:
            return False  # not observed yet: give it a full duration from now
        return now - seen[1] > rec.duration

    def unchanged_for(self, rec: Record, now: float) -> float:
        seen = self._seen.get(rec.name)
        return 0.0 if seen is None or seen[0] != rec.spec_key else now - seen[1]


def fair_share(tenants: int, live_replicas: int) -> int:
    """Tenants ÷ live replicas, rounded up (a lone replica takes everything)."""
    return math.ceil(tenants / max(1, live_replicas))


def preference(identity: str, ref: tenancy.VcRef) -> bytes:
    """Rendezvous (highest-random-weight) rank: replicas prefer different tenants without talking."""
    return hashlib.sha256(f"{identity}\x00{ref[0]}/{ref[1]}".encode()).digest()


def rank(identity: str, refs: list[tenancy.VcRef]) -> list[tenancy.VcRef]:
    """`refs` from most to least preferred by `identity`."""
    return sorted(refs, key=lambda r: preference(identity, r), reverse=True)


def _dns_part(text: str, limit: int) -> str:
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return cleaned[:limit].strip("-") or "x"


def tenant_lease_name(ref: tenancy.VcRef) -> str:
    """Readable and unique: a trimmed `vc-<ns>-<name>` plus a hash of the exact pair."""
    digest = hashlib.sha256(f"{ref[0]}/{ref[1]}".encode()).hexdigest()[:10]
    return f"vc-{_dns_part(f'{ref[0]}-{ref[1]}', 48)}-{digest}"


def replica_lease_name(identity: str) -> str:
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return f"replica-{_dns_part(identity, 48)}-{digest}"


def micro_time(now: dt.datetime) -> str:
    """A `MicroTime` as the API server writes it."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def acquired(prev: dict[str, Any] | None, *, identity: str, duration: float, now: dt.datetime,
             role: str, annotations: dict[str, str]) -> dict[str, Any]:
    """The Lease after `identity` takes it (`prev` None: a new Lease, to be created)."""
    spec = dict((prev or {}).get("spec") or {})
    changed = spec.get("holderIdentity") != identity
    stamp = micro_time(now)
    spec.update(holderIdentity=identity, leaseDurationSeconds=math.ceil(duration), renewTime=stamp)
    if changed or "acquireTime" not in spec:
        spec["acquireTime"] = stamp
    if prev is not None and changed:
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
    spec.setdefault("leaseTransitions", 0)
    return _with_meta(prev, spec, role=role, annotations=annotations)


def renewed(prev: dict[str, Any], *, duration: float, now: dt.datetime,
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec = dict(prev.get("spec") or {})
    spec.update(leaseDurationSeconds=math.ceil(duration), renewTime=micro_time(now))
    role = ((prev.get("metadata") or {}).get("labels") or {}).get(LABEL_LEASE, ROLE_TENANT)
    return _with_meta(prev, spec, role=role, annotations=annotations or {})


def released(prev: dict[str, Any], *, now: dt.datetime) -> dict[str, Any]:
    """client-go's release: no holder, duration 1 s, so any replica may take it at once."""
    spec = dict(prev.get("spec") or {})
    spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=micro_time(now))
    role = ((prev.get("metadata") or {}).get("labels") or {}).get(LABEL_LEASE, ROLE_TENANT)
    return _with_meta(prev, spec, role=role, annotations={})


def _with_meta(prev: dict[str, Any] | None, spec: dict[str, Any], *, role: str,
               annotations: dict[str, str]) -> dict[str, Any]:
    meta = dict((prev or {}).get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), LABEL_LEASE: role}
    meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    meta.pop("managedFields", None)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


@dataclass(frozen=True, slots=True)
class Plan:
    """What one tick decides: leases to give back and tenants to try to take."""

    release: list[tenancy.VcRef]
    acquire: list[tenancy.VcRef]
    share: int


def plan(*, identity: str, placement: str, tenants: list[tenancy.VcRef], held: set[tenancy.VcRef],
         records: dict[tenancy.VcRef, Record | None], live_replicas: int,
         free: set[tenancy.VcRef]) -> Plan:
    """Decide one balancing step.

    `records[ref]` is the tenant's Lease (None: none yet); `free` holds the refs whose Lease
    this replica may take now (absent, released or observed expired). Tenants bound to
    another placement are never taken. Excess leases are given back least-preferred first.
    """
    def bound(ref: tenancy.VcRef) -> str:
        rec = records.get(ref)
        return rec.annotations.get(ANNOTATION_BOUND_TO, "") if rec is not None else ""

    share = fair_share(len(tenants), live_replicas)
    order = rank(identity, list(tenants))
    mine = [r for r in order if r in held]
    # tenants whose processes run here cannot move: never give those back
    movable = [r for r in mine if bound(r) != placement]
    excess = max(0, len(mine) - share)
    release = movable[len(movable) - excess:] if excess else []
    room = share - (len(mine) - len(release))
    acquire: list[tenancy.VcRef] = []
    for ref in order:
        if room <= 0:
            break
        if ref in held or ref not in free or bound(ref) not in ("", placement):
            continue
        acquire.append(ref)
        room -= 1
    return Plan(release=release, acquire=acquire, share=share)
