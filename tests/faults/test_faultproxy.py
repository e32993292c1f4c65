"""The fault proxy itself, driven by the appliance's own Kubernetes client against the bed's
real super apiserver: each fault looks to the client exactly as the issue describes it.

Also the regression test of a defect the proxy found: a watch request whose response head
never arrives used to hang forever (watches have no httpx read timeout, and the inactivity
deadline only covered the body); now it fails with TransportError after the client's timeout.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from appliance.kube import creds, errors, resources
from appliance.kube.client import ApiClient, open_client
from tests.faultproxy import Fault, FaultProxy, open_fault_proxy
from tests.testbed import SuperCluster

pytestmark = [pytest.mark.faults, pytest.mark.integration]

TIMEOUT = 3.0  # the client's request timeout in these tests


@contextlib.asynccontextmanager
async def _through_proxy(bed: SuperCluster, nursery: trio.Nursery, tmp: Path) -> AsyncIterator[tuple[FaultProxy, ApiClient]]:
    proxy = await open_fault_proxy(nursery, upstream_url=bed.url, pki_dir=bed.pki_dir)
    kubeconfig = proxy.kubeconfig(tmp / "proxy.kubeconfig")
    async with open_client(await creds.load_kubeconfig(kubeconfig), timeout=TIMEOUT) as client:
        yield proxy, client


async def _watch_for(client: ApiClient, ns: str, rv: str, name: str) -> str:
    """Watch ConfigMaps of `ns` from `rv` until `name` shows up; returns the event type."""
    async with contextlib.aclosing(client.watch(resources.CONFIGMAPS, namespace=ns, resource_version=rv)) as events:
        async for event in events:
            if event.type != "BOOKMARK" and event.object["metadata"]["name"] == name:
                return event.type
    raise AssertionError("the watch ended without the event")


async def test_pass_through_streams_requests_and_watches(
    fault_bed: SuperCluster, nursery: trio.Nursery, tmp_path: Path,
) -> None:
    """In PASS mode every verb works through the proxy and a watch delivers events live."""
    with trio.fail_after(60):
        async with _through_proxy(fault_bed, nursery, tmp_path) as (proxy, client):
            ns = f"fp-{uuid.uuid4().hex[:6]}"
            await client.create(resources.NAMESPACES, {"metadata": {"name": ns}})
            try:
                start = await client.list(resources.CONFIGMAPS, namespace=ns)
                async with trio.open_nursery() as inner:
                    seen: list[str] = []

                    async def watch() -> None:
                        seen.append(await _watch_for(client, ns, start.resource_version, "c1"))

                    inner.start_soon(watch)
                    await client.create(resources.CONFIGMAPS, {"metadata": {"name": "c1"}, "data": {"k": "v"}},
                                        namespace=ns)
                got = await client.get(resources.CONFIGMAPS, "c1", namespace=ns)
                assert got["data"] == {"k": "v"}
                assert seen == ["ADDED"]
            finally:
                await client.delete(resources.NAMESPACES, ns)
            assert proxy.injected() == 0
            assert proxy.counts["pass"] == proxy.counts["forwarded"] >= 5


async def test_canned_answers_cut_and_every_nth(
    fault_bed: SuperCluster, nursery: trio.Nursery, tmp_path: Path,
) -> None:
    """429 carries Retry-After, 500 is a ServerError, CUT resets requests and open watches, and
    `every=2` faults every second request only."""
    with trio.fail_after(60):
        async with _through_proxy(fault_bed, nursery, tmp_path) as (proxy, client):
            proxy.inject(Fault.TOO_MANY_REQUESTS)
            with pytest.raises(errors.TooManyRequests) as many:
                await client.get(resources.NAMESPACES, "default")
            assert many.value.retry_after == 1
            proxy.inject(Fault.SERVER_ERROR)
            with pytest.raises(errors.ServerError):
                await client.get(resources.NAMESPACES, "default")
            proxy.inject(Fault.SERVER_ERROR, every=2)
            await client.get(resources.NAMESPACES, "default")
            with pytest.raises(errors.ServerError):
                await client.get(resources.NAMESPACES, "default")
            await client.get(resources.NAMESPACES, "default")

            proxy.inject(Fault.PASS)
            rv = (await client.list(resources.CONFIGMAPS, namespace="default")).resource_version
            async with trio.open_nursery() as inner:
                async def watch(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                    task_status.started()
                    with pytest.raises(errors.TransportError):
                        await _watch_for(client, "default", rv, "never-made")

                forwarded = proxy.counts["forwarded"]
                await inner.start(watch)
                await proxy.wait_count("forwarded", forwarded + 1)  # the watch stream is open
                proxy.inject(Fault.CUT)
            with pytest.raises(errors.TransportError):
                await client.get(resources.NAMESPACES, "default")
            assert proxy.counts["cut"] == 1 and proxy.counts["cut_open"] >= 1
            assert proxy.counts["429"] == 1 and proxy.counts["500"] == 2


async def test_stalled_requests_and_watches_time_out(
    fault_bed: SuperCluster, nursery: trio.Nursery, tmp_path: Path,
) -> None:
    """A request that is never answered fails after the client's timeout, and so does a watch
    whose response head never comes (it used to wait forever)."""
    with trio.fail_after(60):
        async with _through_proxy(fault_bed, nursery, tmp_path) as (proxy, client):
            rv = (await client.list(resources.CONFIGMAPS, namespace="default")).resource_version
            proxy.inject(Fault.STALL)
            started = trio.current_time()
            with pytest.raises(errors.TransportError):
                await client.get(resources.NAMESPACES, "default")
            with pytest.raises(errors.TransportError):
                await _watch_for(client, "default", rv, "never-made")
            took = trio.current_time() - started
            assert 2 * TIMEOUT <= took < 2 * TIMEOUT + 5, took
            assert proxy.counts["stall"] == 2
