"""Posting core/v1 Events about an object, with the count bumped for repeats.

`EventRecorder.post(obj, ...)` writes one Event in the object's namespace (`default` for
cluster-scoped objects), named `<object name>.<digest>` where the digest covers the object's
UID, the type, the reason and the message: the same news about the same object lands on the
same Event, whose `count` and `lastTimestamp` are bumped instead of creating another one.
Posting is best effort: an API or network failure is logged and swallowed, so an Event can
never fail a reconcile. Used by the manager ("vc-manager") and the syncer ("vc-syncer").
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import logging
from collections.abc import Mapping
from typing import Any, Literal

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient

__all__ = ["EventRecorder", "EventType", "event_name"]

logger = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]

# The apiserver refuses Event messages above 1 KiB in events.k8s.io; stay well inside.
MAX_MESSAGE = 1024
# How many Event names (with their last count) we remember, to bump without a GET.
_REMEMBERED = 1024


def event_name(obj: Mapping[str, Any], *, type: str, reason: str, message: str) -> str:
    """The deterministic Event name for one piece of news about `obj`."""
    meta = obj.get("metadata") or {}
    text = "\0".join((str(meta.get("uid", "")), type, reason, message))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{str(meta.get('name', 'object'))[:200]}.{digest}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Posts Events as `component`; one recorder per client and component."""

    def __init__(self, client: ApiClient, *, component: str, instance: str = "") -> None:
        self._client = client
        self._component = component
        self._instance = instance or component
        self._counts: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()

    async def post(
        self,
        obj: Mapping[str, Any],
        *,
        type: EventType,
        reason: str,
        message: str,
    ) -> None:
        """Record that `reason`/`message` happened to `obj`; never raises a KubeError."""
        message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        name = event_name(obj, type=type, reason=reason, message=message)
        key = (namespace, name)
        try:
            if key in self._counts:
                try:
                    await self._bump(namespace, name, self._counts[key])
                    return
                except errors.NotFound:
                    # Expired (Events live an hour by default) or deleted: start over.
                    self._counts.pop(key, None)
            await self._create(obj, namespace=namespace, name=name, type=type,
                               reason=reason, message=message)
        except errors.KubeError as exc:
            logger.warning("could not post event %s/%s (%s): %s", namespace, name, reason, exc)

    async def _create(
        self, obj: Mapping[str, Any], *, namespace: str, name: str, type: str, reason: str,
        message: str,
    ) -> None:
        meta = obj.get("metadata") or {}
        now = _now()
        involved = {
            "apiVersion": obj.get("apiVersion", ""),
            "kind": obj.get("kind", ""),
            "name": meta.get("name", ""),
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if meta.get("namespace"):
            involved["namespace"] = meta["namespace"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": type,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": self._component},
            "reportingComponent": self._component,
            "reportingInstance": self._instance,
        }
        try:
            await self._client.create(resources.EVENTS, body, namespace=namespace)
            self._remember((namespace, name), 1)
        except errors.AlreadyExists:
            current = await self._client.get(resources.EVENTS, name, namespace=namespace)
            await self._bump(namespace, name, int(current.get("count") or 1))

    async def _bump(self, namespace: str, name: str, count: int) -> None:
        patch = {"count": count + 1, "lastTimestamp": _now()}
        await self._client.patch(resources.EVENTS, name, patch, namespace=namespace)
        self._remember((namespace, name), count + 1)

    def _remember(self, key: tuple[str, str], count: int) -> None:
        self._counts[key] = count
        self._counts.move_to_end(key)
        while len(self._counts) > _REMEMBERED:
            self._counts.popitem(last=False)
