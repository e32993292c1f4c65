"""What a resource kind may see of the syncer: `SyncContext`, a narrow structural interface.

Kinds (`resources/`) and their helpers (`vnode`, `tokens`, `podcerts`, …) read caches and
settings, look tenants up, write through the super client and mark keys dirty; nothing else.
They take a `SyncContext`, which `runtime.Syncer` satisfies structurally, so they never import
the runtime (no `runtime` ↔ `resources` cycle) and cannot reach its queues, pools or metrics.
A member belongs here only when a kind needs it; anything else is passed as an argument.
This module imports neither `runtime` nor `resources`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

from appliance.kube import client as kclient
from appliance.kube import informer as kinformer
from appliance.syncer.settings import SyncerSettings
from appliance.syncer.tenant import Tenant
from appliance.util import tenancy


class SyncContext(Protocol):
    """The syncer as a kind's reconcile, upward and patrol hooks see it; its attributes are
    read-only here (kinds change state only by writing to clusters and by enqueueing keys)."""

    @property
    def super_client(self) -> kclient.ApiClient:
        """Writes to the super cluster (creates, patches, deletes), and the reads a cache cannot
        answer (objects without a cache, such as RuntimeClasses; a fresh read after a conflict)."""

    @property
    def settings(self) -> SyncerSettings:
        """The syncer's settings: what conversion strips or adds, periods, token lifetimes."""

    @property
    def tenants(self) -> Mapping[tenancy.ClusterKey, Tenant]:
        """Registered tenants by cluster key: a super object's back-trace resolves to one of
        them, or to nobody (its tenant stopped), and super-sourced kinds fan out to all."""

    @property
    def kinds(self) -> Collection[str]:
        """Names of the kinds this syncer runs: `super_cache` exists only for these, so a kind
        checks before it reads another kind's cache (a syncer may run only some kinds)."""

    @property
    def super_nodes(self) -> kinformer.Informer:
        """The unfiltered super Node cache that virtual nodes mirror."""

    def super_cache(self, kind: str) -> kinformer.Informer:
        """The super cache of kind `kind` (one of `kinds`): reconciles compare against it
        instead of reading the apiserver."""

    def enqueue(self, kind: str, tenant_key: tenancy.ClusterKey, key: tuple[str, str]) -> None:
        """Mark downward key `key` of `kind` dirty for a tenant: how a kind asks for another
        reconcile (a namespace that must exist first, a super-sourced object that changed)."""

    def enqueue_upward(self, tenant_key: tenancy.ClusterKey, kind: str, ns: str, name: str) -> None:
        """Mark a tenant object dirty for back-population (`kind` may be "node": virtual nodes)."""
