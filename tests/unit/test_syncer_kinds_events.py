"""Pure pieces of Event back-population: the tenant copy and the watch-side filter."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.syncer.resources import events
from appliance.util import naming
from tests.unit.syncer_stubs import StubCache, StubSyncer, StubTenant, super_namespace

KEY = "vc-1-abc123-t"

SUPER_EVENT = {
    "apiVersion": "v1", "kind": "Event",
    "metadata": {"name": "web.17a", "namespace": f"{KEY}-shop", "uid": "e-uid", "resourceVersion": "9",
                 "creationTimestamp": "2024-01-01T00:00:00Z", "labels": {"a": "b"},
                 "managedFields": [{"manager": "x"}]},
    "involvedObject": {"kind": "Pod", "name": "web", "namespace": f"{KEY}-shop", "uid": "super-pod-uid",
                       "resourceVersion": "42", "apiVersion": "v1"},
    "reason": "Scheduled",
    "message": f"Successfully assigned {KEY}-shop/web to node-1 (cluster {KEY})",
    "type": "Normal", "count": 1,
}


@pytest.mark.parametrize(("message", "expected"), [
    pytest.param(f"assigned {KEY}-shop/web", "assigned shop/web", id="namespace-prefix"),
    pytest.param(f"in {KEY} and {KEY}-a and {KEY}", "in  and a and ", id="every-occurrence"),
    pytest.param("nothing to do", "nothing to do", id="untouched"),
])
def test_cluster_key_is_removed_from_messages(message: str, expected: str) -> None:
    """Every `<key>-` and then every `<key>` is cut out of the message."""
    assert expected == events.strip_cluster_key(message, KEY)


def test_tenant_event_points_at_the_tenant_object() -> None:
    """The copy lives in the tenant namespace, names the tenant object's UID, and keeps name and labels."""
    ev = events.tenant_event(SUPER_EVENT, cluster_key=KEY, tenant_namespace="shop", involved_uid="tenant-pod-uid")
    assert ev["metadata"] == {"name": "web.17a", "namespace": "shop", "labels": {"a": "b"}}
    assert ev["involvedObject"] == {"kind": "Pod", "name": "web", "namespace": "shop", "uid": "tenant-pod-uid",
                                    "apiVersion": "v1"}
    assert ev["message"] == "Successfully assigned shop/web to node-1 (cluster )"
    assert (ev["reason"], ev["type"], ev["count"]) == ("Scheduled", "Normal", 1)
    assert SUPER_EVENT["involvedObject"]["uid"] == "super-pod-uid"  # the input is not mutated


def _raw(**changes: Any) -> bytes:
    ev = json.loads(json.dumps(SUPER_EVENT))
    for path, value in changes.items():
        section, field = path.split("__")
        ev[section][field] = value
    return json.dumps(ev).encode()


def test_only_pod_and_service_events_of_registered_tenants_are_queued() -> None:
    """Events of other kinds, of unknown namespaces or of unregistered tenants are dropped unread."""
    sx = StubSyncer(tenants=[KEY], namespaces=[super_namespace(KEY, "shop"), super_namespace("gone", "x")])
    up = events.EventUpward(sx)  # type: ignore[arg-type]
    assert up.offer(_raw())
    assert up.offer(_raw(involvedObject__kind="Service", metadata__name="svc.1"))
    assert not up.offer(_raw(involvedObject__kind="Node", metadata__name="n.1"))
    assert not up.offer(_raw(metadata__namespace="default", metadata__name="d.1"))
    assert not up.offer(_raw(metadata__namespace="gone-x", metadata__name="g.1"))
    assert not up.offer(b"not json")
    assert sx.queued == [("event", KEY, (f"{KEY}-shop", "web.17a")), ("event", KEY, (f"{KEY}-shop", "svc.1"))]
    assert set(up.pending) == {(f"{KEY}-shop", "web.17a"), (f"{KEY}-shop", "svc.1")}


def test_pending_event_bodies_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the limit the oldest held body is dropped (its worker re-reads it), newest kept."""
    monkeypatch.setattr(events, "PENDING_LIMIT", 3)
    sx = StubSyncer(tenants=[KEY], namespaces=[super_namespace(KEY, "shop")])
    up = events.EventUpward(sx)  # type: ignore[arg-type]
    for i in range(5):
        assert up.offer(_raw(metadata__name=f"e{i}"))
    assert [name for _, name in up.pending] == ["e2", "e3", "e4"]
    assert len(sx.queued) == 5


def _pod(name: str, namespace: str, uid: str, tenant_uid: str | None = None) -> dict[str, Any]:
    annotations = {naming.ANNOTATION_UID: tenant_uid} if tenant_uid else {}
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid, "annotations": annotations}}


@pytest.mark.parametrize(("tenant_pods", "super_tenant_uid", "copied"), [
    pytest.param([_pod("web", "shop", "tenant-pod-uid")], "tenant-pod-uid", True, id="current-tenant-pod"),
    pytest.param([_pod("web", "shop", "tenant-pod-uid")], "older-tenant-uid", False, id="super-twin-of-an-earlier-pod"),
    pytest.param([], "tenant-pod-uid", False, id="tenant-pod-gone"),
])
async def test_upward_copies_events_only_about_the_current_tenant_object(
    tenant_pods: list[dict[str, Any]], super_tenant_uid: str, copied: bool
) -> None:
    """The worker step creates the tenant copy, naming the tenant Pod's UID, unless the Event is
    about a super Pod that mirrors an earlier tenant Pod of that name, or the tenant Pod is gone."""
    tenant = StubTenant(KEY, informers={"pod": StubCache(tenant_pods)})
    super_pod = _pod("web", f"{KEY}-shop", "super-pod-uid", super_tenant_uid)
    sx = StubSyncer(tenants=[tenant], namespaces=[super_namespace(KEY, "shop")], caches={"pod": [super_pod]})
    up = events.EventUpward(sx)  # type: ignore[arg-type]
    assert up.offer(_raw())
    await up.upward(tenant, f"{KEY}-shop", "web.17a")  # type: ignore[arg-type]
    if not copied:
        assert tenant.client.created == []
        return
    ((kind, namespace, body),) = tenant.client.created
    assert (kind, namespace) == ("Event", "shop")
    assert body["involvedObject"]["uid"] == "tenant-pod-uid"
    assert body["metadata"] == {"name": "web.17a", "namespace": "shop", "labels": {"a": "b"}}
