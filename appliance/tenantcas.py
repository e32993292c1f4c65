"""Every Running tenant's CA for the proxy, read from the super cluster (scale-out mode).

With one appliance the syncer tells the proxy about the tenants it serves. With several
replicas a virtual node may point at any of them, so each replica's proxy must trust every
tenant, including those another replica syncs: this task follows the VirtualClusters and
reads each one's admin kubeconfig (the same sources the syncer uses) for its CA.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn, Protocol

import trio

from appliance.kube import creds as kcreds
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.kube.informer import Informer
from appliance.syncer import supervisor
from appliance.syncer.tenant import TenantId
from appliance.util import tenancy

log = logging.getLogger(__name__)

#: re-read every CA this often even without a VirtualCluster change (rotated secrets)
REFRESH_SECONDS = 60.0


class CAStore(Protocol):
    def set(self, cluster_key: tenancy.ClusterKey, ca_pem: bytes) -> None: ...
    def remove(self, cluster_key: tenancy.ClusterKey) -> None: ...


async def follow(super_client: ApiClient, cas: CAStore, *, label_selector: str | None = None,
                 task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
    vcs = Informer(super_client, resources.VIRTUALCLUSTERS, label_selector=label_selector,
                   name="proxy/virtualclusters")
    changed = trio.Event()

    def poke(*_: object) -> None:
        changed.set()

    vcs.add_handler(poke)
    known: dict[tenancy.ClusterKey, str] = {}  # tenant key → resourceVersion of the VirtualCluster its CA came from
    refresh = False
    async with trio.open_nursery() as nursery:
        await nursery.start(vcs.run)
        task_status.started()
        while True:
            changed = trio.Event()
            current: dict[tenancy.ClusterKey, tuple[TenantId, dict[str, Any]]] = {}
            for vc in filter(supervisor.desired, vcs.list()):
                tid = TenantId.from_vc(vc)
                current[tid.key] = (tid, vc)
            for key in set(known) - set(current):
                cas.remove(key)
                del known[key]
            for key, (tid, vc) in current.items():
                version = vc["metadata"].get("resourceVersion", "")
                if not refresh and known.get(key) == version:
                    continue  # read already, and its VirtualCluster has not changed since
                try:
                    tcreds = await supervisor.tenant_credentials(super_client, vc, tid)
                except (errors.KubeError, supervisor.KubeconfigMissing, kcreds.KubeconfigError, ValueError) as exc:
                    log.warning("proxy: no CA for tenant %s (VirtualCluster %s/%s) yet: %s",
                                key, tid.vc_namespace, tid.vc_name, exc)
                    continue
                if tcreds.ca_pem:
                    cas.set(key, tcreds.ca_pem)
                    known[key] = version
            with trio.move_on_after(REFRESH_SECONDS) as timer:
                await changed.wait()
            refresh = timer.cancelled_caught  # periodically re-read every CA (rotated secrets)
    raise AssertionError("unreachable")
