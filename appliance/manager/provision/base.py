"""What provisioners share: the per-tenant record, the shared context, the protocol.

A `ManagedTenant` (the manager's per-tenant record; the shared identity names are in
`util.tenancy`) is owned by one VirtualCluster's worker task and handed to its provisioner on
every call, so a provisioner keeps no per-tenant state of its own. Contract of every
provisioner method: idempotent (a repeated `provision` adopts what exists), raises
`reconcile.Rejected` for bad input that no retry can fix, and any other exception for a
failure worth retrying. The caller (the worker) sets the deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from appliance.controlplane import process
from appliance.kube.client import ApiClient
from appliance.kube.events import EventRecorder
from appliance.manager import model
from appliance.manager.etcd import SharedEtcd
from appliance.manager.settings import ManagerSettings
from appliance.util import tenancy
from appliance.util.drain import Drain


@dataclass(frozen=True, slots=True)
class Context:
    """Everything shared by all tenants of one manager."""

    super: ApiClient
    settings: ManagerSettings
    etcd: SharedEtcd
    recorder: EventRecorder
    #: the process's graceful stop: a reconcile step in progress finishes, no new one starts
    drain: Drain = field(default_factory=Drain)


@dataclass(slots=True)
class RunningPlane:
    """Child processes of one tenant, running in the tenant's nursery."""

    handles: tuple[process.ProcessHandle, ...]
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        """Really stop them (even kept ones) and wait until they are gone."""
        for handle in self.handles:
            handle.keep_on_cancel = False
        self.scope.cancel()
        await self.done.wait()


@dataclass(slots=True)
class ManagedTenant:
    """One VirtualCluster as its worker knows it; `key` is its cluster key."""

    vc: model.VirtualCluster
    key: tenancy.ClusterKey
    dir: Path
    nursery: trio.Nursery
    cluster_version: dict[str, Any] | None = None
    #: What the current attempt is doing, for a timeout message ("waiting for etcd ...").
    progress: str = ""
    plane: RunningPlane | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def plane_running(self) -> bool:
        return self.plane is not None and not self.plane.done.is_set()


class Provisioner(Protocol):
    name: str

    async def provision(self, t: ManagedTenant) -> str:
        """Create or adopt the control plane; return the Running message."""
        ...

    async def ensure(self, t: ManagedTenant) -> None:
        """Keep a Running control plane running (re-adopt it after an appliance restart)."""
        ...

    async def teardown(self, t: ManagedTenant) -> None:
        """Remove what this provisioner made outside the root namespace (processes, files)."""
        ...
