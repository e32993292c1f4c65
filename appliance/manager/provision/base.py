"""What provisioners share: the per-tenant record, the shared context, the protocol.

A `ManagedTenant` (the manager's per-tenant record; the shared identity names are in
`util.tenancy`) is owned by one VirtualCluster's worker task and handed to its provisioner on
every call, so a provisioner keeps no per-tenant state of its own. Contract of every
provisioner method: idempotent (a repeated `provision` adopts what exists), raises
`reconcile.Rejected` for bad input that no retry can fix, and any other exception for a
failure worth retrying. The caller (the worker) sets the deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from appliance.kube.client import ApiClient
from appliance.kube.events import EventRecorder
from appliance.manager import model
from appliance.manager.etcd import SharedEtcd
from appliance.manager.provision.plane import RunningPlane
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


@dataclass(frozen=True, slots=True)
class News:
    """A status condition (and optionally an Event) a provisioner reports through the worker."""

    condition: str
    status: str
    reason: str
    message: str
    event: bool = False
    warning: bool = False


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
    #: set by the worker: writes a provisioner's `News` into status (and Events)
    on_news: Callable[[News], Awaitable[None]] | None = None
    #: set by the worker: asks it for a reconcile soon (a sleeping tenant's wake-up call)
    poke: Callable[[], None] = lambda: None
    #: the control plane is stopped on purpose (`manager.sleep`): nothing to restart
    asleep: bool = False

    async def news(self, item: News) -> None:
        if self.on_news is not None:
            await self.on_news(item)

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

    async def maintain(self, t: ManagedTenant) -> float | None:
        """Work on a Running control plane (renewals, rollouts); seconds until it is due again."""
        ...

    async def teardown(self, t: ManagedTenant) -> None:
        """Remove what this provisioner made outside the root namespace (processes, files)."""
        ...
