"""Events, upward only: super Events about a tenant's Pods and Services appear in the tenant.

Super Events carry no tenancy labels (the super scheduler, kubelets and controllers write
them), so they cannot be label-filtered like synced kinds. Instead `EventUpward.run`
follows a list+watch of all super Events **without caching them**: each new Event is
decoded into a small view, and only one about a `Pod` or `Service` in a super namespace
of a *registered* tenant (by that namespace's tenancy annotations, from the super
namespace cache) is kept. It is held, as raw JSON, in `pending`, a dict of at most
`PENDING_LIMIT` entries (the oldest is dropped first), and its key goes to the Event queue
(`Syncer.queues["event"]`, with workers of its own, as the original has: a burst of Events
never delays the upward sync of Pod status). The worker takes the body from `pending`, or
GETs it again if it was dropped, so memory is bounded by `PENDING_LIMIT` and the queue's
keys, never by the super cluster's event volume.

Like the original, only additions are copied (not count updates of aggregated events),
and an Event whose name already exists in the tenant is left alone (create, AlreadyExists
is success). A relist (start, or an expired resourceVersion) offers every listed Event
again; that is idempotent for the same reason.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any, NoReturn

import msgspec
import trio

from appliance.kube import errors, resources, wire
from appliance.kube.backoff import Backoff
from appliance.syncer.context import SyncContext
from appliance.syncer.resources.base import namespace_owner
from appliance.syncer.resources.sourced import RESET_METADATA
from appliance.syncer.tenant import Tenant
from appliance.util import naming, tenancy

log = logging.getLogger(__name__)

#: involvedObject kinds whose events are copied, and the syncer kinds that cache them
INVOLVED_KINDS = {"Pod": "pod", "Service": "service"}
#: Event bodies held between the watch and the worker (beyond it, the worker re-reads)
PENDING_LIMIT = 1024
WATCH_SECONDS = 300


class _Meta(msgspec.Struct, kw_only=True):
    name: str = ""
    namespace: str = ""


class _Involved(msgspec.Struct, kw_only=True):
    kind: str = ""
    name: str = ""
    uid: str = ""


class EventView(msgspec.Struct, kw_only=True, rename="camel"):
    """The fields of an Event that decide whether it goes up."""

    metadata: _Meta = msgspec.field(default_factory=_Meta)
    involved_object: _Involved = msgspec.field(default_factory=_Involved)


_VIEW = msgspec.json.Decoder(EventView)


def strip_cluster_key(message: str, cluster_key: tenancy.ClusterKey) -> str:
    """Remove `<key>-` and then `<key>` from an Event message (super namespace → tenant's)."""
    if not cluster_key:
        return message
    return message.replace(cluster_key + "-", "").replace(cluster_key, "")


def tenant_event(
    super_event: Mapping[str, Any], *, cluster_key: tenancy.ClusterKey, tenant_namespace: str, involved_uid: str
) -> dict[str, Any]:
    """The tenant copy of a super Event about tenant object (`tenant_namespace`, uid `involved_uid`).

    Metadata reset (name, labels and annotations kept), namespace and
    involvedObject.namespace = the tenant's, involvedObject.uid = the tenant object's,
    involvedObject.resourceVersion cleared, the cluster key removed from the message.
    """
    # Only the levels changed here are copied (a deep copy of every Event cost more than the
    # rest of this function); nested values left as they are are shared with `super_event`.
    new = dict(super_event)
    meta = new["metadata"] = dict(new.get("metadata") or {})
    for name in RESET_METADATA:
        meta.pop(name, None)
    meta["namespace"] = tenant_namespace
    involved = new["involvedObject"] = dict(new.get("involvedObject") or {})
    involved.update(namespace=tenant_namespace, uid=involved_uid)
    involved.pop("resourceVersion", None)
    if isinstance(new.get("message"), str):
        new["message"] = strip_cluster_key(new["message"], cluster_key)
    return new


class EventUpward:
    """The super Event watch and the upward worker step for Events."""

    def __init__(self, sx: SyncContext) -> None:
        self.sx = sx
        self.pending: dict[tuple[str, str], bytes] = {}

    def offer(self, raw: bytes) -> bool:
        """Consider one new super Event; True if it was queued for a tenant."""
        try:
            view = _VIEW.decode(raw)
        except msgspec.MsgspecError:
            return False
        if view.involved_object.kind not in INVOLVED_KINDS:
            return False
        owner = namespace_owner(self.sx, view.metadata.namespace)
        if owner is None:
            return False
        key = (view.metadata.namespace, view.metadata.name)
        self.pending.pop(key, None)
        while len(self.pending) >= PENDING_LIMIT:
            del self.pending[next(iter(self.pending))]
        self.pending[key] = raw
        self.sx.enqueue("event", owner[0], key)  # its own queue: Events never delay Pod status
        return True

    async def upward(self, tenant: Tenant, super_ns: str, name: str) -> None:
        """Create the tenant copy of super Event `super_ns/name` (worker side)."""
        raw = self.pending.pop((super_ns, name), None)
        if raw is not None:
            pevent = wire.decode_object(raw)
        else:
            try:
                pevent = await self.sx.super_client.get(resources.EVENTS, name, namespace=super_ns)
            except errors.NotFound:
                return
        owner = namespace_owner(self.sx, super_ns)
        involved = pevent.get("involvedObject") or {}
        kind = INVOLVED_KINDS.get(involved.get("kind", ""))
        if owner is None or owner[0] != tenant.key or kind is None or kind not in tenant.informers:
            return
        tenant_ns = owner[1]
        # Only UIDs and the tenant-UID annotation are compared: no full decode of either object.
        vraw = tenant.informers[kind].get_raw(involved.get("name", ""), tenant_ns)
        if vraw is None:
            return
        vuid = wire.meta_of(vraw).uid
        praw = self.sx.super_cache(kind).get_raw(involved.get("name", ""), super_ns) if kind in self.sx.kinds else None
        if praw is not None:
            puid, annotations = wire.identity_of(praw)
            if puid == involved.get("uid") and (annotations.get(naming.ANNOTATION_UID) or None) != vuid:
                return  # about the super twin of an earlier tenant object of that name
        body = tenant_event(pevent, cluster_key=tenant.key, tenant_namespace=tenant_ns, involved_uid=vuid)
        with contextlib.suppress(errors.AlreadyExists):
            await tenant.client.create(resources.EVENTS, body, namespace=tenant_ns)

    # --- the watch ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """List, then watch all super Events forever, offering each new one; caches nothing."""
        client = self.sx.super_client
        backoff = Backoff()
        rv = ""
        started = False
        while True:
            try:
                if not rv:
                    listing = await client.list_raw(resources.EVENTS)
                    rv = listing.resource_version
                    for raw in listing.items:
                        self.offer(raw)
                    del listing
                    if not started:
                        started = True
                        task_status.started()
                stream = client.watch_raw(resources.EVENTS, resource_version=rv, timeout_seconds=WATCH_SECONDS,
                                          idle_timeout=WATCH_SECONDS + 30)
                opened, count = trio.current_time(), 0
                async with contextlib.aclosing(stream) as events:
                    async for event in events:
                        count += 1
                        if event.resource_version:
                            rv = event.resource_version
                        if event.type == "ADDED":
                            self.offer(event.object)
                if count or trio.current_time() - opened >= 1.0:
                    backoff.reset()  # a normal server-side timeout: reconnect from `rv`
                else:
                    await trio.sleep(backoff.next_delay())  # ended at once: no hot loop
            except errors.Gone:
                log.info("super events: resourceVersion %s expired; relisting", rv)
                rv = ""
            except (errors.TransportError, errors.ServerError, errors.TooManyRequests) as exc:
                delay = backoff.next_delay()
                log.warning("super events: %s; again in %.1f s", exc, delay)
                await trio.sleep(delay)
