"""Pure decisions of the VirtualCluster reconciler: next step, validation, status patches.

Nothing here performs I/O or reads a clock (callers pass `now`), so every rule is
table-tested in `tests/unit/test_manager_reconcile.py`.

Theory of operation. A VirtualCluster moves through the original's phases:

    ""  ──initialise──►  Pending ──provision ok──►  Running
                          │  ▲ attempt failed (retriesLeft -= 1, backoff)
                          │  └──────────┘
                          └─ retriesLeft == 0, or bad input ──►  Error
    Error ──spec changed (metadata.generation ≠ status.observedGeneration), or the
            missing ClusterVersion appeared──► Pending

Bad input (unknown provisioner or ClusterVersion, invalid serviceCidr / clusterDomain /
cluster key) goes straight to Error: retrying cannot fix it, editing the spec does.
The retry budget is `status.retriesLeft`, not text in `status.message`. Conditions carry a
`type`; `Ready` mirrors the phase, `ControlPlaneHealthy` reports process restarts.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from appliance.manager import model
from appliance.manager.model import Condition, StatusPatch, VirtualCluster
from appliance.util import naming, tenancy

_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# kube-apiserver refuses service ranges wider than 20 bits; tiny ranges leave no room for Services.
_CIDR_PREFIX = {4: (12, 28), 6: (108, 124)}


REASON_NO_CLUSTER_VERSION = "ClusterVersionNotFound"


class Step(enum.Enum):
    """What the reconciler does next for one VirtualCluster."""

    TEARDOWN = "teardown"  # deleting and our finalizer is still on it
    ADD_FINALIZER = "add-finalizer"
    INITIALISE = "initialise"  # phase "" → Pending (or Error on bad input)
    PROVISION = "provision"  # Pending with attempts left
    GIVE_UP = "give-up"  # Pending with no attempts left → Error
    ENSURE = "ensure"  # Running: keep (or re-adopt) the control plane
    RESTART = "restart"  # Error, but the spec changed since: Pending again
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class Problem:
    """Bad input: `reason` (CamelCase) and a message saying exactly what is wrong."""

    reason: str
    message: str


class Rejected(Exception):
    """Raised by provisioners for bad input that no retry can fix; carries a `Problem`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(reason, message)


def retries_left(vc: VirtualCluster) -> int:
    """The remaining attempts; also reads the original's `"retry: N"` message (defensively)."""
    if vc.status.retries_left is not None:
        return vc.status.retries_left
    head, sep, tail = vc.status.message.partition(":")
    if sep and head.strip() == "retry":
        try:
            return int(tail.strip())
        except ValueError:
            pass
    return model.RETRIES


def next_step(vc: VirtualCluster, *, provisioner: str | None, cluster_version_found: bool = False) -> Step:
    """The level-triggered decision for `vc`; `provisioner` is None when it is invalid.

    An Error caused by a missing ClusterVersion is retried once that ClusterVersion exists.
    """
    fin = model.finalizer(provisioner) if provisioner else None
    if vc.metadata.deletion_timestamp:
        return Step.TEARDOWN if fin and fin in vc.metadata.finalizers else Step.NOTHING
    if fin and fin not in vc.metadata.finalizers:
        return Step.ADD_FINALIZER
    phase = vc.status.phase
    if phase == "":
        return Step.INITIALISE
    if phase == model.PENDING:
        return Step.PROVISION if retries_left(vc) > 0 else Step.GIVE_UP
    if phase in (model.RUNNING, model.UPDATING):
        return Step.ENSURE
    if phase == model.ERROR and (
        vc.status.observed_generation != vc.metadata.generation
        or (vc.status.reason == REASON_NO_CLUSTER_VERSION and cluster_version_found)
    ):
        return Step.RESTART
    return Step.NOTHING


# --- validation -------------------------------------------------------------------------------


def choose_provisioner(
    vc: VirtualCluster, cluster_version: Mapping[str, Any] | None, *, default: str
) -> tuple[str | None, Problem | None]:
    """Which provisioner owns `vc`: fixed status, VC annotation, ClusterVersion annotation, default."""
    if vc.status.provisioner:
        return vc.status.provisioner, None
    source = "default provisioner"
    chosen = vc.metadata.annotations.get(model.ANNOTATION_PROVISIONER)
    if chosen is not None:
        source = f"annotation {model.ANNOTATION_PROVISIONER}"
    elif cluster_version is not None:
        cv_annotations = (cluster_version.get("metadata") or {}).get("annotations") or {}
        chosen = cv_annotations.get(model.ANNOTATION_PROVISIONER)
        if chosen is not None:
            source = f"annotation {model.ANNOTATION_PROVISIONER} of ClusterVersion " + str(
                vc.spec.cluster_version_name
            )
    chosen = default if chosen is None else chosen
    if chosen not in model.PROVISIONERS:
        return None, Problem(
            "UnknownProvisioner",
            f"{source} is {chosen!r}; expected one of {', '.join(model.PROVISIONERS)}",
        )
    return chosen, None


def parse_service_cidr(text: str) -> tuple[str, Problem | None]:
    """The service range to use (default 10.32.0.0/16), or why `spec.serviceCidr` is unusable."""
    if not text.strip():
        return model.DEFAULT_SERVICE_CIDR, None
    parts = [p.strip() for p in text.split(",")]

    def bad(why: str) -> tuple[str, Problem]:
        return "", Problem("InvalidServiceCidr", f"spec.serviceCidr {text!r} is invalid: {why}")

    if len(parts) > 2:
        return bad("at most two ranges (one IPv4, one IPv6) may be given")
    families = set()
    for part in parts:
        try:
            net = ipaddress.ip_network(part, strict=True)
        except ValueError as exc:
            return bad(str(exc))
        low, high = _CIDR_PREFIX[net.version]
        if not low <= net.prefixlen <= high:
            return bad(f"{part}: the IPv{net.version} prefix length must be between /{low} and /{high}")
        if net.version in families:
            return bad("two ranges of the same IP family")
        families.add(net.version)
    return ",".join(parts), None


def validate(
    vc: VirtualCluster,
    *,
    provisioner: str,
    cluster_key: tenancy.ClusterKey,
    cluster_version: Mapping[str, Any] | None,
) -> Problem | None:
    """The first thing wrong with `vc`'s input, or None."""
    if provisioner in ("process", "native") and cluster_version is None:
        name = vc.spec.cluster_version_name
        return Problem(REASON_NO_CLUSTER_VERSION, f"desired ClusterVersion {name} not found")
    if not naming.is_dns1123_label(cluster_key):
        return Problem(
            "InvalidClusterNamespace",
            f"cluster key {cluster_key!r} cannot name the root namespace: it must be a DNS-1123 "
            f"label (lower-case alphanumerics and '-', at most {naming.DNS1123_LABEL_MAX} characters)",
        )
    domain = vc.spec.cluster_domain
    if domain and (len(domain) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(domain)):
        return Problem("InvalidClusterDomain", f"spec.clusterDomain {domain!r} is not a DNS-1123 subdomain")
    _, problem = parse_service_cidr(vc.spec.service_cidr)
    return problem


# --- status -----------------------------------------------------------------------------------


def set_condition(
    conditions: Sequence[Condition], *, type_: str, status: str, reason: str, message: str, now: str
) -> list[Condition]:
    """`conditions` with the one of `type_` replaced; its transition time moves only on a new status."""
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    new = Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=since)
    rest = [c for c in conditions if c.type != type_]
    return [*rest, new] if old is None else [new if c.type == type_ else c for c in conditions]


def _with_phase(
    vc: VirtualCluster, *, phase: str, reason: str, message: str, now: str, ready: bool = False
) -> StatusPatch:
    conditions = set_condition(
        vc.status.conditions, type_=model.COND_READY, status="True" if ready else "False",
        reason=reason, message=message, now=now,
    )
    return StatusPatch(phase=phase, reason=reason, message=message, conditions=conditions,
                       observed_generation=vc.metadata.generation)


def initialise(vc: VirtualCluster, *, cluster_key: tenancy.ClusterKey, provisioner: str, now: str) -> StatusPatch:
    """Phase "" → Pending with a fresh retry budget and the cluster key."""
    patch = _with_phase(vc, phase=model.PENDING, reason=model.REASON_CREATING,
                        message="creating the tenant control plane", now=now)
    patch.cluster_namespace = cluster_key
    patch.provisioner = provisioner
    patch.retries_left = model.RETRIES
    return patch


def restart(vc: VirtualCluster, *, now: str) -> StatusPatch:
    """Error → Pending after a spec change, with a fresh retry budget."""
    patch = _with_phase(vc, phase=model.PENDING, reason=model.REASON_CREATING,
                        message="spec changed; creating the tenant control plane again", now=now)
    patch.retries_left = model.RETRIES
    return patch


def rejected(
    vc: VirtualCluster, problem: Problem, *, now: str, cluster_key: str = "", provisioner: str = ""
) -> StatusPatch:
    """Bad input → Error at once; the reason and message name what is wrong."""
    patch = _with_phase(vc, phase=model.ERROR, reason=problem.reason, message=problem.message, now=now)
    if cluster_key and not vc.status.cluster_namespace:
        patch.cluster_namespace = cluster_key
    if provisioner and not vc.status.provisioner:
        patch.provisioner = provisioner
    patch.retries_left = 0
    return patch


def attempt_failed(vc: VirtualCluster, *, error: str, now: str) -> StatusPatch:
    """One failed provisioning attempt: spend a retry, or give up when none is left."""
    left = retries_left(vc) - 1
    if left <= 0:
        return give_up(vc, error=error, now=now)
    patch = _with_phase(
        vc, phase=model.PENDING, reason=model.REASON_ATTEMPT_FAILED,
        message=f"fail to create virtualcluster({vc.metadata.name}): {error}; {left} retries left",
        now=now,
    )
    patch.retries_left = left
    return patch


def give_up(vc: VirtualCluster, *, error: str = "", now: str) -> StatusPatch:
    """No attempts left → Error/TenantControlPlaneError."""
    detail = f": {error}" if error else ""
    patch = _with_phase(
        vc, phase=model.ERROR, reason=model.REASON_ERROR,
        message=f"fail to create virtualcluster({vc.metadata.name}) after {model.RETRIES} attempts{detail}",
        now=now,
    )
    patch.retries_left = 0
    return patch


def running(vc: VirtualCluster, *, message: str, now: str) -> StatusPatch:
    """Provisioned (or re-adopted) → Running/TenantControlPlaneRunning, Ready=True."""
    patch = _with_phase(vc, phase=model.RUNNING, reason=model.REASON_RUNNING, message=message,
                        now=now, ready=True)
    patch.retries_left = model.RETRIES
    return patch


def restored(vc: VirtualCluster, *, message: str, now: str) -> StatusPatch:
    """Condition `Restored`: the tenant started on a backup's data (what, from when, which identity)."""
    return StatusPatch(conditions=set_condition(
        vc.status.conditions, type_=model.COND_RESTORED, status="True", reason=model.REASON_RESTORED,
        message=message, now=now))


def condition(vc: VirtualCluster, *, type_: str, status: str, reason: str, message: str, now: str) -> StatusPatch:
    """Only condition `type_` set (a provisioner's news: renewals, rollouts)."""
    return StatusPatch(conditions=set_condition(
        vc.status.conditions, type_=type_, status=status, reason=reason, message=message, now=now))


def unavailable(vc: VirtualCluster, *, error: str, now: str) -> StatusPatch:
    """A Running cluster whose control plane could not be (re)started: Ready=False, phase kept."""
    conditions = set_condition(
        vc.status.conditions, type_=model.COND_READY, status="False",
        reason="TenantControlPlaneUnavailable", message=error, now=now,
    )
    return StatusPatch(conditions=conditions)


@dataclass(frozen=True, slots=True)
class ProcessState:
    """What the status reports about one supervised process."""

    name: str
    restarts: int
    last_exit: int | None


def health(vc: VirtualCluster, processes: Sequence[ProcessState], *, now: str) -> StatusPatch:
    """The `ControlPlaneHealthy` condition for the given processes; empty if unchanged."""
    restarted = [p for p in processes if p.restarts]
    if restarted:
        reason = model.REASON_PROCESS_RESTARTED
        message = "; ".join(
            f"{p.name} restarted {p.restarts} time(s), last exit code {p.last_exit}" for p in restarted
        )
    else:
        reason = model.REASON_PROCESSES_RUNNING
        message = "running: " + ", ".join(p.name for p in processes)
    old = vc.status.condition(model.COND_HEALTHY)
    if old is not None and (old.status, old.reason, old.message) == ("True", reason, message):
        return StatusPatch()
    conditions = set_condition(vc.status.conditions, type_=model.COND_HEALTHY, status="True",
                               reason=reason, message=message, now=now)
    return StatusPatch(conditions=conditions)


def differs(vc: VirtualCluster, patch: StatusPatch) -> bool:
    """Whether applying `patch` would change `vc.status` (ignoring condition timestamps)."""
    current = msgspec.to_builtins(vc.status)
    wanted = msgspec.to_builtins(patch)
    for key, value in wanted.items():
        if key == "conditions":
            strip = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in value]
            have = [
                {k: v for k, v in c.items() if k != "lastTransitionTime"}
                for c in current.get("conditions", [])
            ]
            if strip != have:
                return True
        elif current.get(key) != value:
            return True
    return False
