"""When a tenant's certificates are renewed, and the renewed PKI. Pure (CPU-bound: run in a thread).

Every leaf of a `pkisecrets.TenantPKI` is renewed together once the first of them reaches
`fraction` (default 0.8) of its validity, or when an operator asks for it: annotation
`tenancy.x-k8s.io/rotate-certificates` (set by `vc-appliance rotate-certs`) with a value the
manager has not acted on yet. A renewed leaf says exactly what the old one said (subject,
groups, names, usages: `certs.reissue`) for `pkiExpireDays` from now. The root CA and the
service-account key stay, so every kubeconfig, token and trust bundle issued before keeps
working until its own expiry, and the vn-agent proxy (which identifies a tenant by the root CA
that issued its client certificate) needs no change.

CA roll-over is not automatic: tenant CAs live at least ten years (`pkisecrets.CA_MIN_DAYS`)
and no leaf outlives its CA (`certs.issue` clamps), so in its last years renewals give ever
shorter leaves; replacing the CA means a new VirtualCluster restored from a backup with
`--new` credentials (`manager.backups`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

import msgspec

from appliance.manager import pkisecrets
from appliance.pki import certs

DEFAULT_FRACTION = 0.8
#: The leaves renewed together (every field of `TenantPKI` except the CA and the SA key).
LEAVES = ("apiserver", "etcd", "front_proxy", "controller_manager", "admin", "kubelet_client")


class State(msgspec.Struct, frozen=True, kw_only=True):
    """`<tenant dir>/rotation.json`: the last renewal, so a restart knows what it finished."""

    #: the annotation value last acted on ("" = none yet)
    requested: str = ""
    #: POSIX time of the last renewal; processes started before it run older certificates
    rotated_at: float = 0.0
    #: the new certificates' expiry, RFC 3339
    not_after: str = ""
    #: every process was restarted on them (False while a roll is due or under way)
    applied: bool = True
    #: why they were renewed ("on request <value>", "at 80% of their validity")
    why: str = ""


def lifetime(pki_expire_days: int | None, *, override_seconds: float = 0.0) -> dt.timedelta:
    """How long renewed leaves live: `pkiExpireDays` (default 365) unless the appliance overrides it."""
    if override_seconds > 0:
        return dt.timedelta(seconds=override_seconds)
    return dt.timedelta(days=pki_expire_days or pkisecrets.DEFAULT_DAYS)


def next_renewal(pki: pkisecrets.TenantPKI, *, fraction: float = DEFAULT_FRACTION) -> dt.datetime:
    """The earliest time any leaf reaches `fraction` of its validity."""
    return min(certs.renew_at(getattr(pki, leaf).cert_pem, fraction) for leaf in LEAVES)


def not_after(pki: pkisecrets.TenantPKI) -> dt.datetime:
    """The earliest expiry among the leaves."""
    ends: list[dt.datetime] = [getattr(pki, leaf).cert.not_valid_after_utc for leaf in LEAVES]
    return min(ends)


def requested(annotations: Mapping[str, str], annotation: str, state: State) -> str:
    """The on-demand request not yet acted on ("" if none)."""
    value = annotations.get(annotation, "")
    return value if value and value != state.requested else ""


def renewed(pki: pkisecrets.TenantPKI, *, valid_for: dt.timedelta, now: dt.datetime | None = None) -> pkisecrets.TenantPKI:
    """`pki` with every leaf re-issued by its root CA for `valid_for` from `now`."""
    fresh: dict[str, Any] = {
        leaf: certs.reissue(pki.root_ca, getattr(pki, leaf).cert_pem, lifetime=valid_for, now=now) for leaf in LEAVES}
    return dataclasses.replace(pki, **fresh)
