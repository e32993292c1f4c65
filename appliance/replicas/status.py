"""`vc-appliance status`: which replica holds which tenant, read from the Leases.

A one-shot command cannot observe a Lease over time as the replicas do, so it judges
liveness by `renewTime + leaseDurationSeconds` against this host's clock (as
`kubectl get lease` readers do); the replicas themselves never rely on that comparison.
Without any Lease (the default `[leases] enabled = false`) there is nothing to hold, so it
says that Leases are off and lists the VirtualClusters without holder columns, rather
than calling every tenant `waiting`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.replicas import lease


def _parse_time(text: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _age(then: dt.datetime | None, now: dt.datetime) -> str:
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def _live(rec: lease.Record, now: dt.datetime) -> bool:
    renewed = _parse_time(rec.renew_time)
    return bool(rec.holder) and renewed is not None and (now - renewed).total_seconds() <= rec.duration


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]


def _ref(vc: dict[str, Any]) -> str:
    return f"{vc['metadata']['namespace']}/{vc['metadata']['name']}"


def _sorted(vcs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(vcs, key=lambda v: (v["metadata"]["namespace"], v["metadata"]["name"]))


def _leases_off(vcs: list[dict[str, Any]], *, namespace: str, enabled: bool) -> str:
    """No Lease at all: say so, and why that is expected or not, then the plain VC list."""
    if enabled:
        why = ("no replica with [leases] enabled = true has run against this namespace "
               "(do the replicas use another [leases] namespace?)")
    else:
        why = ("Leases are off ([leases] enabled = false, the default): each appliance serves "
               "every VirtualCluster it selects and none is shared")
    out = [f"no replica or tenant Leases in namespace {namespace}: {why}.", ""]
    out += _table(("VIRTUALCLUSTER", "PHASE", "PROVISIONER"), [
        (_ref(vc), str((vc.get("status") or {}).get("phase") or "-"),
         str((vc.get("status") or {}).get("provisioner") or "-"))
        for vc in _sorted(vcs)
    ])
    return "\n".join(out) + "\n"


def render(
    leases: list[dict[str, Any]], vcs: list[dict[str, Any]], *, now: dt.datetime, namespace: str,
    leases_enabled: bool,
) -> str:
    """Two tables: replicas (from heartbeat Leases) and VirtualClusters with their holders.

    `namespace` and `leases_enabled` are the reader's `[leases]` settings; they only word the
    message shown when there is no Lease at all.
    """
    replicas: list[lease.Record] = []
    tenants: dict[str, lease.Record] = {}
    for obj in leases:
        role = ((obj.get("metadata") or {}).get("labels") or {}).get(lease.LABEL_LEASE)
        rec = lease.record(obj)
        if role == lease.ROLE_REPLICA:
            replicas.append(rec)
        elif role == lease.ROLE_TENANT:
            tenants[rec.annotations.get(lease.ANNOTATION_TENANT, "")] = rec
    if not replicas and not tenants:
        return _leases_off(vcs, namespace=namespace, enabled=leases_enabled)
    live_placements = {r.annotations.get(lease.ANNOTATION_HOST, "") for r in replicas if _live(r, now)}
    out = _table(("REPLICA", "PLACEMENT", "RENEWED", "STATE"), [
        (r.holder or r.name, r.annotations.get(lease.ANNOTATION_HOST, "-"), _age(_parse_time(r.renew_time), now),
         "live" if _live(r, now) else "expired")
        for r in sorted(replicas, key=lambda r: r.holder)
    ])
    rows = []
    holding: dict[str, int] = {}
    for vc in _sorted(vcs):
        ref = _ref(vc)
        status = vc.get("status") or {}
        trec = tenants.get(ref)
        if trec is None:
            holder, renewed, state = "-", "-", "waiting"
        else:
            bound = trec.annotations.get(lease.ANNOTATION_BOUND_TO, "")
            holder, renewed = trec.holder or "-", _age(_parse_time(trec.renew_time), now)
            if _live(trec, now):
                state = "held"
                holding[trec.holder] = holding.get(trec.holder, 0) + 1
            elif bound and bound not in live_placements:
                state = f"unavailable (processes on {bound})"
            else:
                state = "expired" if trec.holder else "free"
        rows.append((ref, str(status.get("phase") or "-"), str(status.get("provisioner") or "-"),
                     holder, renewed, state))
    out.append("")
    out += _table(("VIRTUALCLUSTER", "PHASE", "PROVISIONER", "HOLDER", "RENEWED", "STATE"), rows)
    if holding:
        out.append("")
        out.append("held: " + ", ".join(f"{h} {n}" for h, n in sorted(holding.items())))
    return "\n".join(out) + "\n"


async def fetch(
    superc: ApiClient, *, namespace: str, label_selector: str | None, leases_enabled: bool
) -> str:
    try:
        leases = (await superc.list(resources.LEASES, namespace=namespace, label_selector=lease.LABEL_LEASE)).items
    except errors.NotFound:
        leases = []
    vcs = (await superc.list(resources.VIRTUALCLUSTERS, label_selector=label_selector)).items
    return render(leases, vcs, now=dt.datetime.now(dt.UTC), namespace=namespace,
                  leases_enabled=leases_enabled)
