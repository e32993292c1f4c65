"""Sleep and wake of a process-mode tenant: what is asked for, and the state kept on disk. Pure.

A sleeping tenant's control-plane processes are stopped (their memory is freed; a dedicated
etcd stops too), its data stays in etcd, and the super Pods it runs keep running: the syncer
leaves a sleeping tenant alone (`Sleeping` condition True) and no patrol collects what it
made. The appliance holds the tenant's apiserver address meanwhile (`wakelistener`).

Asked for with annotations on the VirtualCluster:

    tenancy.x-k8s.io/sleep: "true"        sleep now; "false" (or no annotation) wakes it
    tenancy.x-k8s.io/sleep-after: "30m"   sleep after this long without a request from
                                          anyone but the appliance and the tenant's own
                                          controllers (s, m, h; at least 30 s)

It wakes when the annotation is set to "false" or removed, and on the first connection to its
apiserver address; a tenant woken by a connection gets `sleep: "false"` written back, so
it does not fall asleep again at once. `<tenant dir>/sleep.json` keeps the state across
appliance restarts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

ANNOTATION_SLEEP = "tenancy.x-k8s.io/sleep"
ANNOTATION_SLEEP_AFTER = "tenancy.x-k8s.io/sleep-after"
COND_SLEEPING = "Sleeping"
REASON_ASLEEP = "Asleep"
REASON_IDLE = "Idle"
REASON_WOKEN_BY_REQUEST = "WokenByRequest"
REASON_WAKE_REQUESTED = "WakeRequested"
MIN_IDLE = 30.0

_DURATION = re.compile(r"^([0-9]+)(s|m|h)$")
_UNITS = {"s": 1, "m": 60, "h": 3600}


class State(msgspec.Struct, frozen=True, kw_only=True):
    """`sleep.json`: present while the tenant sleeps."""

    since: str
    why: str


class Invalid(ValueError):
    """An annotation the manager cannot act on; the message names it."""


def wants_sleep(annotations: Mapping[str, str]) -> bool:
    """Whether the annotation asks for sleep; anything but true/false is refused."""
    value = annotations.get(ANNOTATION_SLEEP, "false").strip().lower()
    if value not in ("true", "false", ""):
        raise Invalid(f"annotation {ANNOTATION_SLEEP} is {value!r}; expected true or false")
    return value == "true"


def idle_limit(annotations: Mapping[str, str]) -> float | None:
    """Seconds of idleness after which the tenant sleeps, None when it has no such policy."""
    raw = annotations.get(ANNOTATION_SLEEP_AFTER, "").strip()
    if not raw:
        return None
    m = _DURATION.match(raw)
    if m is None:
        raise Invalid(f"annotation {ANNOTATION_SLEEP_AFTER} is {raw!r}; expected e.g. 90s, 30m or 2h")
    seconds = float(int(m.group(1)) * _UNITS[m.group(2)])
    if seconds < MIN_IDLE:
        raise Invalid(f"annotation {ANNOTATION_SLEEP_AFTER} is {raw!r}; the least is {MIN_IDLE:.0f}s")
    return seconds


#: Requests that do not count as use: the appliance's syncer and probes, the tenant's own
#: controllers (they are part of the control plane that sleeps).
APPLIANCE_AGENTS = ("vc-syncer/", "vc-appliance", "vc-manager")


def counts_as_use(event: Mapping[str, object]) -> bool:
    """Whether one audit event (the tenant apiserver's audit log) is someone using the tenant."""
    agent = str(event.get("userAgent") or "")
    if agent.startswith(APPLIANCE_AGENTS):
        return False
    user = event.get("user")
    name = str(user.get("username", "")) if isinstance(user, Mapping) else ""
    groups = user.get("groups", []) if isinstance(user, Mapping) else []
    if name.startswith("system:") and not name.startswith("system:serviceaccount:"):
        return False  # the apiserver itself, the KCM, nodes
    return not (isinstance(groups, list) and "system:serviceaccounts:kube-system" in groups)


def audit_policy() -> str:
    """The tenant apiserver's audit policy when it may sleep when idle: one short line per request
    that is not the control plane talking to itself."""
    return """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: None
  userGroups: ["system:serviceaccounts:kube-system", "system:nodes"]
- level: None
  users: ["system:apiserver", "system:kube-controller-manager", "system:kube-scheduler"]
- level: None
  nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version", "/metrics"]
- level: None
  resources: [{group: "", resources: ["nodes", "nodes/status", "events"]}, {group: "coordination.k8s.io"}]
- level: Metadata
"""
