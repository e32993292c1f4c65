"""The syncer's one condition on a VirtualCluster: whether its kubeconfig was accepted.

The manager owns the VC's status; the syncer adds a single condition type of its own,
`KubeconfigAccepted`, so that an operator reading `kubectl get vc -o yaml` sees why a tenant
is not synced (a kubeconfig naming files or plugins, a missing secret). The list is read live
and written back with the read's resourceVersion, so a concurrent manager write is never lost;
the manager keeps condition types it does not own.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient

log = logging.getLogger(__name__)

COND_KUBECONFIG = "KubeconfigAccepted"
_ATTEMPTS = 3


def with_condition(
    conditions: list[dict[str, Any]], *, type_: str, status: str, reason: str, message: str, now: str
) -> list[dict[str, Any]] | None:
    """`conditions` with `type_` set, or None when it already says exactly that. Pure."""
    old = next((c for c in conditions if c.get("type") == type_), None)
    if old is not None and (old.get("status"), old.get("reason", ""), old.get("message", "")) == (
        status, reason, message
    ):
        return None
    new = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now}
    if old is None:
        return [*conditions, new]
    if old.get("status") == status:
        new["lastTransitionTime"] = old.get("lastTransitionTime", now)
    return [new if c.get("type") == type_ else c for c in conditions]


async def set_kubeconfig_condition(
    client: ApiClient, vc: dict[str, Any], *, accepted: bool, reason: str, message: str,
    only_if_present: bool = False,
) -> None:
    """Set `KubeconfigAccepted` on the live VC; best effort (a failure is logged, not raised).

    `only_if_present` skips VCs whose given (cached) copy lacks the condition: a healthy tenant
    costs no request at all.
    """
    meta = vc["metadata"]
    ns, name = meta["namespace"], meta["name"]
    if only_if_present and not any(
        c.get("type") == COND_KUBECONFIG for c in (vc.get("status") or {}).get("conditions") or ()
    ):
        return  # the cached VC never had it: no read on every tenant start
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for _ in range(_ATTEMPTS):
        try:
            live = await client.get(resources.VIRTUALCLUSTERS, name, namespace=ns)
            if live["metadata"].get("uid") != meta.get("uid"):
                return  # another VC of the same name: not ours to annotate
            have = list((live.get("status") or {}).get("conditions") or [])
            want = with_condition(have, type_=COND_KUBECONFIG, status="True" if accepted else "False",
                                  reason=reason, message=message, now=now)
            if want is None:
                return
            await client.patch(resources.VIRTUALCLUSTERS, name, {
                "metadata": {"resourceVersion": live["metadata"]["resourceVersion"]},
                "status": {"conditions": want},
            }, namespace=ns, subresource="status")
            return
        except errors.Conflict:
            continue
        except errors.NotFound:
            return
        except errors.KubeError as exc:
            log.warning("VirtualCluster %s/%s: cannot set condition %s: %s", ns, name, COND_KUBECONFIG, exc)
            return
