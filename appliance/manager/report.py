"""Words for status and Events: failures as one line, process news, timestamps. Pure."""

from __future__ import annotations

import datetime as dt

from appliance.controlplane import process
from appliance.kube import errors
from appliance.manager import reconcile
from appliance.manager.model import StatusPatch, VirtualCluster
from appliance.manager.provision.plane import RunningPlane


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(exc: BaseException) -> str:
    """A one-line account of a failure for status and events (no log tails, no groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (errors.KubeError, process.ProcessFailed, RuntimeError, OSError)):
        return text
    return f"{type(exc).__name__}: {text}"


def health_patch(vc: VirtualCluster, *, states: list[reconcile.ProcessState]) -> StatusPatch:
    return reconcile.health(vc, states, now=now_rfc3339())


def plane_news(plane: RunningPlane) -> tuple[str, str]:
    """Event reason and message after a Running tenant's processes were taken over."""
    parts = [f"{h.name.rsplit('/', 1)[-1]} (pid {h.pid})" for h in plane.handles]
    if all(h.adopted for h in plane.handles):
        return "TenantControlPlaneAdopted", "adopted running processes " + ", ".join(parts)
    return "TenantControlPlaneStarted", "started processes " + ", ".join(parts)
