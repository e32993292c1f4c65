"""A stand-in for the `SyncContext` the per-kind hooks read (caches, tenants, enqueues).

Only for unit tests of pure decisions; nothing here talks to a cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from appliance.util import naming


def super_namespace(cluster_key: str, tenant_ns: str) -> dict[str, Any]:
    """A super Namespace as the syncer makes it (name and back-trace annotations)."""
    return {"metadata": {"name": naming.super_namespace(cluster_key, tenant_ns), "annotations": {
        naming.ANNOTATION_CLUSTER: cluster_key, naming.ANNOTATION_NAMESPACE: tenant_ns}}}


class StubCache:
    """`get`/`list`/`keys` over a fixed set of objects, like an informer's."""

    def __init__(self, objects: list[dict[str, Any]] | None = None) -> None:
        self.objects = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects or ()}

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.objects.get((namespace or "", name))

    def get_raw(self, name: str, namespace: str | None = None) -> bytes | None:
        obj = self.objects.get((namespace or "", name))
        return None if obj is None else json.dumps(obj).encode()

    def list(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [o for (ns, _), o in self.objects.items() if namespace is None or ns == namespace]

    def keys(self) -> list[tuple[str, str]]:
        return list(self.objects)


class RecordingClient:
    """Records creates (kind, namespace, body) and patches (kind, name, subresource, body)
    instead of sending them."""

    def __init__(self) -> None:
        self.created: list[tuple[str, str | None, dict[str, Any]]] = []
        self.patched: list[tuple[str, str, str | None, Any]] = []

    async def create(self, res: Any, body: dict[str, Any], *, namespace: str | None = None, **_: Any) -> dict[str, Any]:
        self.created.append((res.kind, namespace, body))
        return body

    async def patch(self, res: Any, name: str, body: Any, *, subresource: str | None = None,
                    **_: Any) -> dict[str, Any]:
        self.patched.append((res.kind, name, subresource, body))
        return {}


@dataclass
class StubTenant:
    key: str
    informers: dict[str, StubCache] = field(default_factory=dict)
    client: RecordingClient = field(default_factory=RecordingClient)

    @property
    def id(self) -> Any:
        from appliance.syncer.tenant import TenantId

        return TenantId(key=self.key, vc_name="vc", vc_namespace="vcns", vc_uid="vcuid")

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.informers[kind].get(name, namespace)


class StubSyncer:
    def __init__(self, *, tenants: list[str] | list[StubTenant], namespaces: list[dict[str, Any]] | None = None,
                 caches: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.tenants = {(t if isinstance(t, str) else t.key): (StubTenant(t) if isinstance(t, str) else t)
                        for t in tenants}
        self.caches = {"namespace": StubCache(namespaces),
                       **{k: StubCache(v) for k, v in (caches or {}).items()}}
        self.kinds = dict.fromkeys(self.caches)
        self.upward: list[tuple[str, str, str, str]] = []
        self.queued: list[tuple[str, str, tuple[str, str]]] = []

    def super_cache(self, kind: str) -> StubCache:
        return self.caches[kind]

    def enqueue(self, kind: str, tenant_key: str, key: tuple[str, str]) -> None:
        self.queued.append((kind, tenant_key, key))

    def enqueue_upward(self, tenant_key: str, kind: str, ns: str, name: str) -> None:
        self.upward.append((tenant_key, kind, ns, name))
