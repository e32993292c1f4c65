"""Informers: list+watch one resource into a cache of raw JSON and tell handlers what changed.

`Store` and `relist_diff` are pure and synchronous; `Informer` is the trio loop around them.
Memory: each object is held once, as its JSON bytes keyed by (namespace, name), and is
decoded only when someone asks (`get`, `list`, or a handler call). Handlers are plain
callbacks that should only mark keys dirty; this module owns no queue.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import msgspec
import trio

from appliance.kube import errors, wire
from appliance.kube.backoff import Backoff
from appliance.kube.client import ApiClient
from appliance.kube.resources import Resource

__all__ = ["Change", "Handler", "Informer", "Key", "RawHandler", "Store", "relist_diff"]

logger = logging.getLogger(__name__)

JsonObject = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)
Handler = Callable[[str, JsonObject | None, JsonObject | None], None]
RawHandler = Callable[[str, bytes | None, bytes | None], None]

# Theory of operation
# -------------------
# run() lists (all pages, one resourceVersion), replaces the store, reports started, then
# watches from that version. Every event and bookmark advances `resource_version`, so a
# reconnect resumes exactly where the last stream stopped. A 410 (errors.Gone) means the
# version was compacted away: list again and emit only the difference against the cache
# (ADDED, MODIFIED by resourceVersion, DELETED), so handlers neither miss nor see
# duplicates. Transport errors, 429 and 5xx reconnect after capped exponential backoff
# with jitter; any other error propagates to the caller's supervisor.

# A watch that ends this fast without a single event is treated as a failure (no hot loop).
MIN_HEALTHY_WATCH_SECONDS = 1.0
# Server-side watch length: 5 minutes plus jitter, so many watches do not expire together.
WATCH_SECONDS = 300
WATCH_JITTER_SECONDS = 60
# A stream silent this long after its server-side timeout should have ended it is dead.
IDLE_GRACE_SECONDS = 30.0


def relist_diff(
    old: Mapping[Key, str], new: Mapping[Key, str]
) -> tuple[list[Key], list[Key], list[Key]]:
    """Compare two `{key: resourceVersion}` snapshots; return (added, modified, deleted)."""
    added = [key for key in new if key not in old]
    modified = [key for key, rv in new.items() if key in old and old[key] != rv]
    deleted = [key for key in old if key not in new]
    return added, modified, deleted


@dataclass(frozen=True, slots=True)
class Change:
    """One change to report: `new` is None for DELETED, `old` is None for ADDED."""

    type: str  # ADDED, MODIFIED, DELETED
    key: Key
    new: bytes | None
    old: bytes | None


# Top level and metadata decoded one level deep: every other value stays raw JSON.
_SHALLOW = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENCODE = msgspec.json.Encoder()


def compact(raw: bytes) -> bytes:
    """`raw` without `metadata.managedFields`: server-side-apply bookkeeping that nobody
    here reads and that is often a third of an object's size (the cache is the memory budget).

    Only the top level and `metadata` are decoded, and only their keys; every other value is
    copied through as raw JSON (a third of the cost of decoding and re-encoding it all)."""
    if b'"managedFields"' not in raw:
        return raw
    try:
        obj = _SHALLOW.decode(raw)
        meta = _SHALLOW.decode(obj["metadata"]) if "metadata" in obj else None
    except msgspec.ValidationError:  # not an object, or metadata is not one
        return raw
    if meta is None or meta.pop("managedFields", None) is None:
        return raw
    obj["metadata"] = msgspec.Raw(_ENCODE.encode(meta))
    return _ENCODE.encode(obj)


class Store:
    """Objects as compact raw JSON keyed by (namespace, name); applying input returns what changed."""

    __slots__ = ("_objects",)

    def __init__(self) -> None:
        self._objects: dict[Key, bytes] = {}

    def get(self, key: Key) -> bytes | None:
        return self._objects.get(key)

    def keys(self) -> builtins.list[Key]:
        return builtins.list(self._objects)

    def values(self) -> Iterable[bytes]:
        return self._objects.values()

    def items(self) -> Iterable[tuple[Key, bytes]]:
        return self._objects.items()

    def __len__(self) -> int:
        return len(self._objects)

    def apply(self, event: wire.RawWatchEvent) -> Change | None:
        """Apply one ADDED/MODIFIED/DELETED event; None if it changes nothing (a duplicate).

        The reported type follows the cache, not the wire: ADDED for a key we already
        hold becomes MODIFIED, MODIFIED for an unknown key becomes ADDED.
        """
        key = (event.namespace, event.name)
        old = self._objects.get(key)
        if event.type == "DELETED":
            if old is None:
                return None
            del self._objects[key]
            # The event carries the final state, which is newer than the cached one.
            return Change("DELETED", key, None, event.object)
        if event.type not in {"ADDED", "MODIFIED"}:
            raise ValueError(f"cannot apply a {event.type} event")
        if old is not None and wire.meta_of(old).resource_version == event.resource_version:
            return None
        new = compact(event.object)
        self._objects[key] = new
        return Change("ADDED" if old is None else "MODIFIED", key, new, old)

    def replace(self, items: Iterable[bytes]) -> builtins.list[Change]:
        """Replace the contents with a fresh list; return the difference as changes."""
        fresh: dict[Key, bytes] = {}
        fresh_rv: dict[Key, str] = {}
        for raw in items:
            meta = wire.meta_of(raw)
            key = (meta.namespace, meta.name)
            fresh[key] = compact(raw)
            fresh_rv[key] = meta.resource_version
        known_rv = {key: wire.meta_of(raw).resource_version for key, raw in self._objects.items()}
        added, modified, deleted = relist_diff(known_rv, fresh_rv)
        old = self._objects
        changes = [Change("DELETED", key, None, old[key]) for key in deleted]
        changes += [Change("ADDED", key, fresh[key], None) for key in added]
        changes += [Change("MODIFIED", key, fresh[key], old[key]) for key in modified]
        self._objects = fresh
        return changes


class Informer:
    """A live, read-only cache of one resource (optionally one namespace / selector).

    Handlers are synchronous and should only record keys (STYLE rule 11); the dicts they
    receive are fresh decodes shared by all handlers of that change, so do not mutate them.
    """

    def __init__(
        self,
        client: ApiClient,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        name: str = "",
    ) -> None:
        self.synced = trio.Event()
        self.resource_version = ""
        self._client = client
        self._res = res
        self._namespace = namespace
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._name = name or str(res)
        self._store = Store()
        self._handlers: builtins.list[Handler] = []
        self._raw_handlers: builtins.list[RawHandler] = []
        self._rng = random.Random()

    def add_handler(self, fn: Handler) -> None:
        """Call `fn(event_type, new, old)` for every change, starting with the first list."""
        self._handlers.append(fn)

    def add_raw_handler(self, fn: RawHandler) -> None:
        """As `add_handler`, with each object as its cached JSON bytes: a handler that reads a
        few fields decodes only those (`wire.origin_of`), and no dict is built for it."""
        self._raw_handlers.append(fn)

    # -- the loop ---------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """List, report started once synced, then watch and relist forever.

        Raises: any ApiError other than 410/429/5xx (e.g. Forbidden, NotFound for a
        missing CRD); the caller's supervisor decides what to do.
        """
        backoff = Backoff(rng=self._rng)
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                    backoff.reset()
                    if not self.synced.is_set():
                        self.synced.set()
                        task_status.started()
                if await self._watch():
                    backoff.reset()
                    continue
                delay = backoff.next_delay()
                logger.warning(
                    "informer %s: watch ended at once without events; again in %.1f s",
                    self._name,
                    delay,
                )
            except errors.Gone:
                logger.info(
                    "informer %s: resourceVersion %s expired; relisting",
                    self._name,
                    self.resource_version,
                )
                need_list = True
                continue
            except (errors.TransportError, errors.ServerError, errors.TooManyRequests) as exc:
                delay = backoff.next_delay()
                if isinstance(exc, errors.ApiError) and exc.retry_after:
                    delay = max(delay, exc.retry_after)
                logger.warning(
                    "informer %s: %s; %s in %.1f s",
                    self._name,
                    exc,
                    "relisting" if need_list else "reconnecting",
                    delay,
                )
            await trio.sleep(delay)
        raise AssertionError("unreachable")

    async def _relist(self) -> None:
        listing = await self._client.list_raw(
            self._res,
            namespace=self._namespace,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
        )
        changes = self._store.replace(listing.items)
        self.resource_version = listing.resource_version
        logger.debug(
            "informer %s: listed %d objects at %s (%d changes)",
            self._name,
            len(self._store),
            self.resource_version,
            len(changes),
        )
        for change in changes:
            self._emit(change)

    async def _watch(self) -> bool:
        """Follow one watch stream to its end; return False if it looked unhealthy."""
        timeout_seconds = WATCH_SECONDS + self._rng.randrange(WATCH_JITTER_SECONDS + 1)
        stream = self._client.watch_raw(
            self._res,
            namespace=self._namespace,
            resource_version=self.resource_version,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
            timeout_seconds=timeout_seconds,
            idle_timeout=timeout_seconds + IDLE_GRACE_SECONDS,
        )
        started = trio.current_time()
        count = 0
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                count += 1
                change = None if event.type == "BOOKMARK" else self._store.apply(event)
                if event.resource_version:
                    self.resource_version = event.resource_version
                if change is not None:
                    self._emit(change)
        return count > 0 or trio.current_time() - started >= MIN_HEALTHY_WATCH_SECONDS

    def _emit(self, change: Change) -> None:
        for raw_handler in self._raw_handlers:
            raw_handler(change.type, change.new, change.old)
        if not self._handlers:
            return
        new = wire.decode_object(change.new) if change.new is not None else None
        old = wire.decode_object(change.old) if change.old is not None else None
        for handler in self._handlers:
            handler(change.type, new, old)

    # -- reads ------------------------------------------------------------------------

    def get(self, name: str, namespace: str | None = None) -> JsonObject | None:
        """The cached object, freshly decoded, or None."""
        raw = self._store.get((namespace or "", name))
        return None if raw is None else wire.decode_object(raw)

    def get_raw(self, name: str, namespace: str | None = None) -> bytes | None:
        """The cached object's JSON bytes, or None."""
        return self._store.get((namespace or "", name))

    def list(self, namespace: str | None = None) -> builtins.list[JsonObject]:
        """All cached objects (of one namespace if given), decoded."""
        return [
            wire.decode_object(raw)
            for (ns, _), raw in self._store.items()
            if namespace is None or ns == namespace
        ]

    def keys(self) -> builtins.list[Key]:
        """Keys of all cached objects as (namespace or "", name)."""
        return self._store.keys()

    def __len__(self) -> int:
        return len(self._store)

    def statistics(self) -> dict[str, int | str]:
        """Object count, cached bytes and the current resourceVersion, for /metrics."""
        return {
            "objects": len(self._store),
            "bytes": sum(len(raw) for raw in self._store.values()),
            "resource_version": self.resource_version,
            "synced": int(self.synced.is_set()),
        }
