"""core/v1 Events posted by `kube.events.EventRecorder` against the real super apiserver."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from appliance.kube import events, resources
from appliance.kube.client import ApiClient
from tests.integration import manager_harness as common
from tests.testbed import SuperCluster


@pytest.fixture
async def super_client(super_cluster: SuperCluster) -> AsyncIterator[ApiClient]:
    """An admin client of the session super cluster."""
    async with common.open_super_client(super_cluster) as client:
        yield client


async def test_repeated_news_bumps_one_event_and_new_news_makes_another(super_client: ApiClient) -> None:
    """The same reason and message about one object increments `count`; another message is a new Event."""
    name = f"ev-{uuid.uuid4().hex[:8]}"
    cm = await super_client.create(resources.CONFIGMAPS, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}})
    recorder = events.EventRecorder(super_client, component="vc-manager")
    try:
        for _ in range(3):
            await recorder.post(cm, type="Warning", reason="Broken", message="it broke")
        # A second recorder (a restarted appliance) continues the same Event.
        await events.EventRecorder(super_client, component="vc-manager").post(
            cm, type="Warning", reason="Broken", message="it broke")
        await recorder.post(cm, type="Normal", reason="Fixed", message="it works")
        listing = await super_client.list(resources.EVENTS, namespace="default",
                                          field_selector=f"involvedObject.name={name}")
        by_reason = {e["reason"]: e for e in listing.items}
        assert set(by_reason) == {"Broken", "Fixed"}
        broken = by_reason["Broken"]
        assert broken["count"] == 4
        assert broken["type"] == "Warning"
        assert broken["message"] == "it broke"
        assert broken["involvedObject"]["uid"] == cm["metadata"]["uid"]
        assert broken["involvedObject"]["kind"] == "ConfigMap"
        assert broken["source"]["component"] == "vc-manager"
        assert broken["reportingComponent"] == "vc-manager"
        assert by_reason["Fixed"]["count"] == 1
    finally:
        await super_client.delete(resources.CONFIGMAPS, name, namespace="default")
        for e in (await super_client.list(resources.EVENTS, namespace="default",
                                          field_selector=f"involvedObject.name={name}")).items:
            await super_client.delete(resources.EVENTS, e["metadata"]["name"], namespace="default")


async def test_events_about_cluster_scoped_objects_land_in_default(super_client: ApiClient) -> None:
    """A cluster-scoped object's Event goes to namespace `default`, without an involved namespace."""
    node = (await super_client.list(resources.NODES)).items[0]
    message = f"note {uuid.uuid4().hex}"
    await events.EventRecorder(super_client, component="vc-syncer").post(
        node, type="Normal", reason="Noted", message=message)
    name = events.event_name(node, type="Normal", reason="Noted", message=message)
    got = await super_client.get(resources.EVENTS, name, namespace="default")
    assert got["involvedObject"]["name"] == node["metadata"]["name"]
    assert "namespace" not in got["involvedObject"]
    await super_client.delete(resources.EVENTS, name, namespace="default")
