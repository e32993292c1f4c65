"""One tenant as the syncer sees it: identity, API client, informers.

`TenantId` is the immutable identity taken from the VirtualCluster (its `ClusterKey`, the
VC's name/namespace/uid, domain, meta prefixes; the shared identity names are in
`util.tenancy`). `Tenant`, the syncer's per-tenant record, adds the live parts the tenant's
nursery owns: its ApiClient and one informer per synced kind. A Tenant is registered with
the `Syncer` only after every informer has synced, so workers never see a half-filled cache
(an unsynced cache would look like deletions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from appliance.kube import client as kclient
from appliance.kube import events as kevents
from appliance.kube import informer as kinformer
from appliance.util import naming, tenancy


@dataclass(frozen=True, slots=True)
class TenantId:
    key: tenancy.ClusterKey
    vc_name: str
    vc_namespace: str
    vc_uid: str
    cluster_domain: str = "cluster.local"
    opaque_prefixes: tuple[str, ...] = ()
    transparent_prefixes: tuple[str, ...] = ()

    @classmethod
    def from_vc(cls, vc: dict[str, Any]) -> TenantId:
        meta, spec, status = vc["metadata"], vc.get("spec") or {}, vc.get("status") or {}
        return cls(
            key=naming.cluster_key(
                meta["namespace"], meta["name"], meta["uid"],
                cluster_namespace=status.get("clusterNamespace") or "",
            ),
            vc_name=meta["name"],
            vc_namespace=meta["namespace"],
            vc_uid=meta["uid"],
            cluster_domain=spec.get("clusterDomain") or "cluster.local",
            opaque_prefixes=tuple(spec.get("opaqueMetaPrefixes") or ()),
            transparent_prefixes=tuple(spec.get("transparentMetaPrefixes") or ()),
        )

    def super_namespace(self, tenant_ns: str) -> str:
        return naming.super_namespace(self.key, tenant_ns)


@dataclass(slots=True)
class Tenant:
    id: TenantId
    client: kclient.ApiClient
    informers: dict[str, kinformer.Informer] = field(default_factory=dict)
    events: kevents.EventRecorder = field(init=False)
    #: cancel scopes of this tenant's work items being processed; `Syncer.unregister` cancels them
    #: so that no reconcile outlives the tenant's client
    inflight: set[trio.CancelScope] = field(default_factory=set)
    #: the tenant's Service range when the super cluster has it as the tenant's own ServiceCIDR:
    #: its Services then keep their tenant ClusterIPs in the super cluster
    service_cidr: str | None = None
    #: podCertificate requests made for this tenant's Pods and not answered yet, by (Pod uid,
    #: `<volume>.<index>`): the request's name and the private key waiting for its chain
    pod_certificates: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events = kevents.EventRecorder(self.client, component="vc-syncer")

    @property
    def key(self) -> tenancy.ClusterKey:
        return self.id.key

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.informers[kind].get(name, namespace)
