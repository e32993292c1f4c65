"""Names for a tenant's identities: one type per concept, shared by every component (pure).

A tenant (one VirtualCluster) is known by several identities; each has exactly one name:

* `VcRef` — the VirtualCluster's (namespace, name) in the super cluster: what the manager's
  workers, the syncer's supervisor and the replicas' tenant Leases are keyed by.
* `ClusterKey` — the cluster key: the name of the tenant's root namespace in the super cluster,
  the prefix of its super namespaces, the tenancy stamp on its super objects and the key of the
  proxy's CA table (computed by `naming.cluster_key`).

Records built on them live with their component: the manager's `provision.base.ManagedTenant`,
the syncer's `tenant.TenantId` (identity and sync settings) and `tenant.Tenant` (live client and
informers), the syncer's `conversion.TenantObjectRef` (the tenant object a super object's stamps
name), and the proxy's `routes.CallingTenant` (who a client certificate says is calling).
Both types are plain values at run time (a str, a tuple): renaming changes no wire format.
"""

from __future__ import annotations

from typing import NamedTuple, NewType

#: the tenant's root namespace name in the super cluster (see `naming.cluster_key`)
ClusterKey = NewType("ClusterKey", str)


class VcRef(NamedTuple):
    """A VirtualCluster by namespace and name (a plain 2-tuple, so `*ref` and `ref[0]` work)."""

    namespace: str
    name: str
