"""Which tenants this replica may serve, as the manager and the syncer see it.

Both components ask `holds(ref)` before starting a tenant, run the tenant inside
`guard(ref)` (a cancel scope that fires when the tenant's Lease is lost, before another
replica could take it), and `subscribe` to be woken when holdings change. `ref` is the
tenant's VirtualCluster, a `util.tenancy.VcRef`. `Ownership` itself is the single-appliance
case: it holds every tenant and never cancels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import trio

from appliance.util import tenancy


class Ownership:
    """One appliance, no Leases: every tenant is ours for good."""

    def holds(self, ref: tenancy.VcRef) -> bool:
        return True

    @contextlib.contextmanager
    def guard(self, ref: tenancy.VcRef) -> Iterator[trio.CancelScope]:
        with trio.CancelScope() as scope:
            yield scope

    def subscribe(self, fn: Callable[[], None]) -> None:
        """`fn` (synchronous, cheap) is called whenever `holds` may have changed."""
