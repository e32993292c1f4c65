"""The trio Kubernetes client (`appliance.kube`) against real kube-apiservers of the test bed.

Each test gets its own tenant kube-apiserver on the session etcd (no controller manager,
no scheduler), so nothing a test creates, binds or kills reaches another test or the
shared super cluster. The one exception is the etcd compaction of the 410 test: it is
etcd-wide, like the compaction every kube-apiserver runs on its own every five minutes.
Waits are bounded: every test runs under `trio.fail_after`, and informer progress is
awaited on the events its handler records, never with sleeps.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from appliance.controlplane import cluster
from appliance.kube import creds, errors
from appliance.kube.client import ApiClient, open_client
from appliance.kube.informer import Informer
from appliance.kube.resources import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NAMESPACES,
    NODES,
    PODS,
    SERVICEACCOUNTS,
    Resource,
)
from tests.testbed import SuperCluster, TenantFactory, wait_for

DEADLINE = 120.0  # seconds of trio time for one whole test
CONVERGE = 60.0  # seconds for an informer to catch up after an apiserver restart

JsonObject = dict[str, Any]


# -- fixtures and helpers -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tenant:
    cp: cluster.ControlPlane
    client: ApiClient


@contextlib.asynccontextmanager
async def _client_for(kubeconfig: Path) -> AsyncIterator[ApiClient]:
    async with open_client(await creds.load_kubeconfig(kubeconfig)) as client:
        yield client


@pytest.fixture
async def tenant(tenant_factory: TenantFactory) -> AsyncIterator[Tenant]:
    """A fresh tenant kube-apiserver of its own and a client for its admin user."""
    cp = await tenant_factory("kc", controller_manager=False)
    async with _client_for(cp.admin_kubeconfig) as client:
        yield Tenant(cp, client)


async def _namespace(client: ApiClient, name: str, *, pods: bool = False) -> JsonObject:
    """Create a namespace; with `pods`, also the `default` ServiceAccount (no KCM makes it)."""
    ns = await client.create(NAMESPACES, {"metadata": {"name": name}})
    if pods:
        await client.create(SERVICEACCOUNTS, {"metadata": {"name": "default", "namespace": name}})
    return ns


def _configmap(name: str, ns: str, data: dict[str, str] | None = None, **labels: str) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "data": data or {},
    }


def _names(items: list[JsonObject]) -> list[str]:
    return [item["metadata"]["name"] for item in items]


@dataclass(frozen=True, slots=True)
class Call:
    type: str
    name: str
    uid: str
    rv: str


@dataclass
class Recorder:
    """An informer handler that records each call and wakes whoever waits for a change."""

    calls: list[Call] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    def __call__(self, kind: str, new: JsonObject | None, old: JsonObject | None) -> None:
        obj = new if new is not None else old
        assert obj is not None, f"{kind} with neither a new nor an old object"
        assert (kind == "ADDED") == (old is None), f"{kind}: old is {old!r}"
        assert (kind == "DELETED") == (new is None), f"{kind}: new is {new!r}"
        meta = obj["metadata"]
        self.calls.append(Call(kind, meta["name"], meta["uid"], meta["resourceVersion"]))
        self._changed.set()
        self._changed = trio.Event()

    def since(self, start: int) -> list[tuple[str, str]]:
        return sorted((c.type, c.name) for c in self.calls[start:])

    async def wait(self, predicate: Callable[[], bool], *, what: str, seconds: float) -> None:
        with trio.move_on_after(seconds):
            while not predicate():
                await self._changed.wait()
            return
        raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}: {self.calls}")

    def assert_each_change_once(self) -> None:
        """No uid ADDED twice or DELETED twice, and no (uid, resourceVersion) reported twice."""
        added = [c.uid for c in self.calls if c.type == "ADDED"]
        deleted = [c.uid for c in self.calls if c.type == "DELETED"]
        versions = [(c.uid, c.rv) for c in self.calls if c.type != "DELETED"]
        assert len(added) == len(set(added)), f"duplicate ADDED: {self.calls}"
        assert len(deleted) == len(set(deleted)), f"duplicate DELETED: {self.calls}"
        assert len(versions) == len(set(versions)), f"a version reported twice: {self.calls}"


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """Freeze a process (SIGSTOP) for the block, then SIGKILL it (a stopped process dies too)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGKILL)


async def _etcd(sc: SuperCluster, method: str, body: JsonObject) -> JsonObject:
    """One call to etcd's JSON gateway (`/v3/kv/<method>`); keys are base64 in JSON."""
    async with httpx.AsyncClient(base_url=sc.etcd_url, trust_env=False, timeout=10) as http:
        response = await http.post(f"/v3/kv/{method}", json=body)
        response.raise_for_status()
        result: JsonObject = response.json()
        return result


async def _drain(stream: AsyncGenerator[Any, None]) -> list[Any]:
    """Consume a watch to its end (or its error) and release its connection."""
    async with contextlib.aclosing(stream) as events:
        return [event async for event in events]


def _b64(key: str) -> str:
    return base64.b64encode(key.encode()).decode()


async def _start_informer(
    nursery: trio.Nursery, client: ApiClient, ns: str
) -> tuple[Informer, Recorder]:
    informer = Informer(client, CONFIGMAPS, namespace=ns, name=f"test-{ns}")
    recorder = Recorder()
    informer.add_handler(recorder)
    await nursery.start(informer.run)
    return informer, recorder


async def _supervisor_saw_ready(
    caplog: pytest.LogCaptureFixture, handle_name: str, pid: int | None
) -> None:
    """Wait until the supervisor has found the restarted process ready (its probe is done).

    Ending a test while the readiness probe is mid-TLS-handshake would leak its socket.
    """
    needle = f"process {handle_name} ready (pid {pid},"

    async def logged() -> bool:
        return any(needle in r.getMessage() for r in caplog.records)

    await wait_for(logged, timeout=CONVERGE, what=f"{handle_name} ready again")


async def _cache_matches_fresh_list(informer: Informer, client: ApiClient, ns: str) -> None:
    fresh = await client.list(CONFIGMAPS, namespace=ns)
    want = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in fresh.items}
    got = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in informer.list(ns)}
    assert got == want


# -- CRUD and subresources ------------------------------------------------------------


async def test_crud_round_trip_of_namespaced_and_cluster_scoped_objects(tenant: Tenant) -> None:
    """create/get/list/update/delete work for a ConfigMap and a Node, with typed list items."""
    c = tenant.client
    with trio.fail_after(DEADLINE):
        ns = await _namespace(c, "crud")
        assert ns["metadata"]["uid"]
        assert ns["kind"] == "Namespace"

        created = await c.create(CONFIGMAPS, _configmap("cfg", "crud", {"k": "v1"}))
        assert created["metadata"]["namespace"] == "crud"
        got = await c.get(CONFIGMAPS, "cfg", namespace="crud")
        assert got["data"] == {"k": "v1"}
        assert got["metadata"]["uid"] == created["metadata"]["uid"]

        listing = await c.list(CONFIGMAPS, namespace="crud")
        [item] = [i for i in listing.items if i["metadata"]["name"] == "cfg"]
        assert (item["apiVersion"], item["kind"]) == ("v1", "ConfigMap")
        assert int(listing.resource_version) >= int(item["metadata"]["resourceVersion"])

        got["data"]["k"] = "v2"
        updated = await c.update(CONFIGMAPS, got)
        assert updated["metadata"]["resourceVersion"] != got["metadata"]["resourceVersion"]
        assert (await c.get(CONFIGMAPS, "cfg", namespace="crud"))["data"] == {"k": "v2"}

        await c.delete(CONFIGMAPS, "cfg", namespace="crud")
        with pytest.raises(errors.NotFound):
            await c.get(CONFIGMAPS, "cfg", namespace="crud")

        node = await c.create(NODES, {"kind": "Node", "metadata": {"name": "n1"}})
        patched = await c.patch(NODES, "n1", {"metadata": {"labels": {"zone": "a"}}})
        assert patched["metadata"]["labels"]["zone"] == "a"
        assert patched["metadata"]["uid"] == node["metadata"]["uid"]
        assert "n1" in _names((await c.list(NODES)).items)
        await c.delete(NODES, "n1")
        with pytest.raises(errors.NotFound):
            await c.get(NODES, "n1")


async def test_pod_binding_and_status_subresources(tenant: Tenant) -> None:
    """POST pods/binding sets spec.nodeName; PUT and PATCH of pods/status change only status."""
    c = tenant.client
    with trio.fail_after(DEADLINE):
        await _namespace(c, "app", pods=True)
        await c.create(NODES, {"metadata": {"name": "node-a"}})
        await c.create(NODES, {"metadata": {"name": "node-b"}})
        pod = await c.create(
            PODS,
            {
                "metadata": {"name": "web", "namespace": "app"},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            },
        )
        assert "nodeName" not in pod["spec"]  # no scheduler on a tenant

        binding: JsonObject = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": "web"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"},
        }
        result = await c.create(PODS, binding, namespace="app", subresource="binding")
        assert result.get("status") == "Success", result
        bound = await c.get(PODS, "web", namespace="app")
        assert bound["spec"]["nodeName"] == "node-a"
        # A second binding is refused by the server: the pod is already assigned.
        binding["target"]["name"] = "node-b"
        with pytest.raises(errors.Conflict, match="already assigned"):
            await c.create(PODS, binding, namespace="app", name="web", subresource="binding")

        # PUT status: the status changes, the spec change in the same body is ignored.
        bound["status"]["phase"] = "Running"
        bound["status"]["podIP"] = "10.1.2.3"
        bound["status"]["podIPs"] = [{"ip": "10.1.2.3"}]
        bound["spec"]["activeDeadlineSeconds"] = 99
        running = await c.update_status(PODS, bound)
        assert running["status"]["phase"] == "Running"
        assert running["status"]["podIP"] == "10.1.2.3"
        assert "activeDeadlineSeconds" not in running["spec"]

        # The main resource ignores status; the status subresource merges conditions by type.
        ignored = await c.patch(PODS, "web", {"status": {"phase": "Failed"}}, namespace="app")
        assert ignored["status"]["phase"] == "Running"
        before = {cond["type"] for cond in running["status"].get("conditions", [])}
        ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        patched = await c.patch(
            PODS, "web", ready, namespace="app", subresource="status", patch_type="strategic"
        )
        after = {cond["type"]: cond["status"] for cond in patched["status"]["conditions"]}
        assert after["Ready"] == "True"
        assert before <= set(after)
        status_only = await c.get(PODS, "web", namespace="app", subresource="status")
        assert status_only["status"]["phase"] == "Running"

        # Node status is a subresource too (cluster-scoped).
        node = await c.get(NODES, "node-a")
        node["status"] = {"capacity": {"pods": "42"}, "allocatable": {"pods": "42"}}
        await c.update_status(NODES, node)
        assert (await c.get(NODES, "node-a"))["status"]["capacity"]["pods"] == "42"

        # A bound pod waits for its kubelet unless the grace period is zero.
        await c.delete(PODS, "web", namespace="app", grace_period_seconds=0)
        with pytest.raises(errors.NotFound):
            await c.get(PODS, "web", namespace="app")


# -- lists ----------------------------------------------------------------------------


async def test_list_follows_continue_tokens_over_550_objects(
    tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """list and list_raw with limit=100 return each of 550 ConfigMaps exactly once, in 6 pages."""
    c = tenant.client
    total = 550
    with trio.fail_after(DEADLINE):
        await _namespace(c, "pages")
        wanted = [f"cm-{i:04d}" for i in range(total)]
        todo = iter(wanted)

        async def worker() -> None:
            for name in todo:  # shared iterator: each name is taken by exactly one worker
                await c.create(CONFIGMAPS, _configmap(name, "pages", {"i": name}))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(worker)

        def pages() -> int:
            return sum(
                1
                for r in caplog.records
                if r.getMessage().startswith("GET /api/v1/namespaces/pages/configmaps ->")
            )

        with caplog.at_level(logging.DEBUG, logger="appliance.kube.client"):
            listing = await c.list(CONFIGMAPS, namespace="pages", limit=100)
            assert pages() == 6
            raw = await c.list_raw(CONFIGMAPS, namespace="pages", limit=100)
            assert pages() == 12
            whole = await c.list(CONFIGMAPS, namespace="pages")  # default limit 500
            assert pages() == 14

        for items in (listing.items, whole.items):
            assert sorted(_names(items)) == wanted  # all present, none twice
            assert {(i["apiVersion"], i["kind"]) for i in items} == {("v1", "ConfigMap")}
        decoded = [json.loads(b) for b in raw.items]
        assert sorted(_names(decoded)) == wanted
        assert {(d["apiVersion"], d["kind"]) for d in decoded} == {("v1", "ConfigMap")}
        assert all(d["data"] == {"i": d["metadata"]["name"]} for d in decoded)
        newest = max(int(i["metadata"]["resourceVersion"]) for i in listing.items)
        assert int(listing.resource_version) >= newest


async def test_delete_collection_by_label_selector(tenant: Tenant) -> None:
    """delete_collection removes exactly the labelled objects of one namespace."""
    c = tenant.client
    with trio.fail_after(DEADLINE):
        for ns in ("one", "two"):
            await _namespace(c, ns)
            for i in range(4):
                await c.create(CONFIGMAPS, _configmap(f"tmp-{i}", ns, tier="tmp"))
                await c.create(CONFIGMAPS, _configmap(f"keep-{i}", ns, tier="keep"))

        selected = await c.list(CONFIGMAPS, namespace="one", label_selector="tier=tmp")
        assert sorted(_names(selected.items)) == [f"tmp-{i}" for i in range(4)]
        by_field = await c.list(CONFIGMAPS, field_selector="metadata.name=keep-2")
        found = sorted((o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_field.items)
        assert found == [("one", "keep-2"), ("two", "keep-2")]

        await c.delete_collection(CONFIGMAPS, namespace="one", label_selector="tier=tmp")

        left = await c.list(CONFIGMAPS, namespace="one", label_selector="tier in (tmp,keep)")
        assert sorted(_names(left.items)) == [f"keep-{i}" for i in range(4)]
        other = await c.list(CONFIGMAPS, namespace="two", label_selector="tier=tmp")
        assert len(other.items) == 4
        with pytest.raises(ValueError, match="namespace"):
            await c.delete_collection(CONFIGMAPS, label_selector="tier=tmp")


# -- errors and optimistic concurrency ------------------------------------------------


async def test_optimistic_concurrency_and_typed_errors(tenant: Tenant) -> None:
    """Stale updates and unmet preconditions are Conflict; others map to their own class."""
    c = tenant.client
    with trio.fail_after(DEADLINE):
        await _namespace(c, "occ")
        first = await c.create(CONFIGMAPS, _configmap("cfg", "occ", {"v": "1"}))

        current = dict(first, data={"v": "2"})
        await c.update(CONFIGMAPS, current)
        stale = dict(first, data={"v": "stale"})
        with pytest.raises(errors.Conflict) as conflict:
            await c.update(CONFIGMAPS, stale)
        assert conflict.value.status == 409
        assert "the object has been modified" in conflict.value.message
        assert (await c.get(CONFIGMAPS, "cfg", namespace="occ"))["data"] == {"v": "2"}

        with pytest.raises(errors.Conflict, match=r"[Pp]recondition"):
            await c.delete(CONFIGMAPS, "cfg", namespace="occ", uid="00000000-0000-0000-0000-0")
        with pytest.raises(errors.Conflict, match=r"[Pp]recondition"):
            await c.delete(
                CONFIGMAPS,
                "cfg",
                namespace="occ",
                resource_version=first["metadata"]["resourceVersion"],
            )
        assert (await c.get(CONFIGMAPS, "cfg", namespace="occ"))["metadata"]["uid"] == first[
            "metadata"
        ]["uid"]

        with pytest.raises(errors.AlreadyExists) as exists:
            await c.create(CONFIGMAPS, _configmap("cfg", "occ"))
        assert not isinstance(exists.value, errors.Conflict)
        assert (exists.value.status, exists.value.reason) == (409, "AlreadyExists")

        with pytest.raises(errors.NotFound) as missing:
            await c.get(CONFIGMAPS, "nope", namespace="occ")
        assert '"nope" not found' in missing.value.message
        with pytest.raises(errors.NotFound):
            await c.list(Resource("example.com", "v1", "widgets", "Widget", namespaced=True))

        with pytest.raises(errors.Invalid) as invalid:
            await c.create(CONFIGMAPS, _configmap("Bad_Name", "occ"))
        assert invalid.value.status == 422
        assert 'Invalid value: "Bad_Name"' in invalid.value.message
        assert invalid.value.details is not None
        assert invalid.value.details["causes"][0]["field"] == "metadata.name"

        await c.delete(CONFIGMAPS, "cfg", namespace="occ", uid=first["metadata"]["uid"])
        with pytest.raises(errors.NotFound):
            await c.delete(CONFIGMAPS, "cfg", namespace="occ")


# -- patches --------------------------------------------------------------------------


async def test_server_side_apply_creates_updates_and_reports_conflicts(tenant: Tenant) -> None:
    """Apply creates, prunes fields its manager dropped, and conflicts with another manager."""
    c = tenant.client
    with trio.fail_after(DEADLINE):
        await _namespace(c, "ssa")

        def config(data: dict[str, str]) -> JsonObject:
            return {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "applied", "namespace": "ssa"},
                "data": data,
            }

        created = await c.patch(
            CONFIGMAPS,
            "applied",
            config({"a": "1", "b": "2"}),
            namespace="ssa",
            patch_type="apply",
            field_manager="mgr-a",
        )
        assert created["data"] == {"a": "1", "b": "2"}
        assert [m["manager"] for m in created["metadata"]["managedFields"]] == ["mgr-a"]

        updated = await c.patch(
            CONFIGMAPS,
            "applied",
            config({"a": "10"}),
            namespace="ssa",
            patch_type="apply",
            field_manager="mgr-a",
        )
        assert updated["data"] == {"a": "10"}  # b was owned by mgr-a only, so it is gone
        assert updated["metadata"]["uid"] == created["metadata"]["uid"]

        with pytest.raises(errors.Conflict, match="mgr-a") as conflict:
            await c.patch(
                CONFIGMAPS,
                "applied",
                config({"a": "x"}),
                namespace="ssa",
                patch_type="apply",
                field_manager="mgr-b",
            )
        assert conflict.value.details is not None
        assert conflict.value.details.get("causes")
        forced = await c.patch(
            CONFIGMAPS,
            "applied",
            config({"a": "x"}),
            namespace="ssa",
            patch_type="apply",
            field_manager="mgr-b",
            force=True,
        )
        assert forced["data"] == {"a": "x"}
        owners = {m["manager"]: m.get("fieldsV1", {}) for m in forced["metadata"]["managedFields"]}
        assert "f:a" in owners["mgr-b"]["f:data"]

        with pytest.raises(ValueError, match="field_manager"):
            await c.patch(CONFIGMAPS, "applied", config({}), namespace="ssa", patch_type="apply")


async def test_strategic_merge_and_json_patches(tenant: Tenant) -> None:
    """Strategic merge adds to keyed lists, merge patch replaces them, JSON patch is atomic."""
    c = tenant.client
    with trio.fail_after(DEADLINE):
        await _namespace(c, "patch")
        labels = {"app": "web"}
        await c.create(
            DEPLOYMENTS,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "web",
                    "namespace": "patch",
                    "labels": {"app": "web", "x": "y"},
                },
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "main", "image": "nginx"}]},
                    },
                },
            },
        )

        def containers(obj: JsonObject) -> list[tuple[str, str]]:
            return sorted(
                (k["name"], k["image"]) for k in obj["spec"]["template"]["spec"]["containers"]
            )

        sidecar = {
            "spec": {
                "template": {"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}
            }
        }
        merged = await c.patch(
            DEPLOYMENTS, "web", sidecar, namespace="patch", patch_type="strategic"
        )
        assert containers(merged) == [("main", "nginx"), ("sidecar", "busybox")]
        retag = {
            "spec": {
                "template": {"spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}}
            }
        }
        merged = await c.patch(DEPLOYMENTS, "web", retag, namespace="patch", patch_type="strategic")
        assert containers(merged) == [("main", "nginx:1.27"), ("sidecar", "busybox")]

        replaced = await c.patch(DEPLOYMENTS, "web", sidecar, namespace="patch")  # merge patch
        assert containers(replaced) == [("sidecar", "busybox")]
        unlabelled = await c.patch(
            DEPLOYMENTS, "web", {"metadata": {"labels": {"x": None}}}, namespace="patch"
        )
        assert unlabelled["metadata"]["labels"] == {"app": "web"}

        ops: list[JsonObject] = [
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/metadata/labels/tier", "value": "front"},
        ]
        patched = await c.patch(DEPLOYMENTS, "web", ops, namespace="patch", patch_type="json")
        assert patched["spec"]["replicas"] == 3
        assert patched["metadata"]["labels"] == {"app": "web", "tier": "front"}

        # The same patch again fails its test op, and nothing of it is applied.
        ops[1]["value"] = 5
        with pytest.raises(errors.Invalid) as failed:
            await c.patch(DEPLOYMENTS, "web", ops, namespace="patch", patch_type="json")
        assert failed.value.status == 422
        after = await c.get(DEPLOYMENTS, "web", namespace="patch")
        assert after["spec"]["replicas"] == 3
        assert after["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]


# -- watches --------------------------------------------------------------------------


async def test_watch_streams_changes_in_order_and_expired_versions_are_gone(
    tenant: Tenant,
) -> None:
    """watch yields ADDED/MODIFIED/DELETED after a list, honours selectors, and 410 is Gone."""
    c = tenant.client
    with trio.fail_after(DEADLINE):
        await _namespace(c, "w")
        start = await c.list(CONFIGMAPS, namespace="w")
        a = await c.create(CONFIGMAPS, _configmap("a", "w", {"n": "1"}, watched="yes"))
        await c.create(CONFIGMAPS, _configmap("other", "w"))
        a2 = await c.patch(CONFIGMAPS, "a", {"data": {"n": "2"}}, namespace="w")
        await c.delete(CONFIGMAPS, "a", namespace="w")

        seen: list[tuple[str, str, str]] = []
        stream = c.watch(
            CONFIGMAPS,
            namespace="w",
            resource_version=start.resource_version,
            label_selector="watched=yes",
            timeout_seconds=60,
        )
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if event.type == "BOOKMARK":
                    continue
                seen.append((event.type, event.object["metadata"]["name"], event.resource_version))
                if event.type == "DELETED":
                    break
        assert [(t, n) for t, n, _ in seen] == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
        assert seen[0][2] == a["metadata"]["resourceVersion"]
        assert seen[1][2] == a2["metadata"]["resourceVersion"]

        # The server ends a watch after timeoutSeconds and the stream simply stops.
        now = await c.list(CONFIGMAPS, namespace="w")
        ended = await _drain(
            c.watch_raw(
                CONFIGMAPS, namespace="w", resource_version=now.resource_version, timeout_seconds=1
            )
        )
        assert [e.type for e in ended if e.type != "BOOKMARK"] == []

        with pytest.raises(errors.Gone) as gone:
            await _drain(c.watch_raw(CONFIGMAPS, namespace="w", resource_version="1"))
        assert gone.value.status == 410


# -- informers across apiserver restarts ----------------------------------------------


async def test_informer_converges_after_apiserver_restart(
    super_cluster: SuperCluster,
    tenant: Tenant,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Changes made while the apiserver is down reach the cache once each after its restart."""
    c, cp = tenant.client, tenant.cp
    caplog.set_level(logging.INFO, logger="appliance.controlplane.process")
    with trio.fail_after(DEADLINE):
        # A second apiserver on the same etcd prefix (as in an HA control plane) is how
        # objects change while the informer's apiserver is down.
        peer_cp = await cluster.start_control_plane(
            nursery,
            super_cluster.bins,
            name="peer",
            etcd_url=super_cluster.etcd_url,
            state_dir=tmp_path / "peer",
            etcd_prefix=cp.etcd_prefix,
            controller_manager=False,
        )
        await _namespace(c, "r")
        for name in ("a", "b", "c"):
            await c.create(CONFIGMAPS, _configmap(name, "r", {"v": "0"}))

        async with _client_for(peer_cp.admin_kubeconfig) as peer, trio.open_nursery() as inner:
            informer, rec = await _start_informer(inner, c, "r")
            assert sorted(informer.keys()) == [("r", "a"), ("r", "b"), ("r", "c")]
            assert rec.since(0) == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]
            # A live change first, so the watch is known to be established.
            await c.patch(CONFIGMAPS, "c", {"data": {"v": "1"}}, namespace="r")
            await rec.wait(lambda: len(rec.calls) == 4, what="MODIFIED c", seconds=30)

            handle = cp.processes[0]
            old_pid, mark = handle.pid, len(rec.calls)
            assert old_pid is not None
            with _stopped(old_pid):
                await peer.delete(CONFIGMAPS, "a", namespace="r")
                await peer.patch(CONFIGMAPS, "b", {"data": {"v": "1"}}, namespace="r")
                await peer.create(CONFIGMAPS, _configmap("d", "r", {"v": "0"}))
                # The frozen apiserver cannot have told the informer anything.
                assert informer.get("a", "r") is not None
                assert informer.get("d", "r") is None
                assert len(rec.calls) == mark

            expected = [("ADDED", "d"), ("DELETED", "a"), ("MODIFIED", "b")]
            await rec.wait(
                lambda: len(rec.calls) >= mark + 3, what="the missed changes", seconds=CONVERGE
            )
            assert handle.pid != old_pid  # restarted by the supervisor, on the same port
            assert handle.starts == 2
            # A change after the restart through the restarted apiserver: once it is seen,
            # any late duplicate of an earlier change would have been seen before it.
            await c.create(CONFIGMAPS, _configmap("e", "r"))
            await rec.wait(
                lambda: ("ADDED", "e") in rec.since(mark), what="ADDED e", seconds=CONVERGE
            )
            assert rec.since(mark) == sorted([*expected, ("ADDED", "e")])
            rec.assert_each_change_once()
            assert informer.get("b", "r")["data"] == {"v": "1"}  # type: ignore[index]
            await _cache_matches_fresh_list(informer, c, "r")
            await _cache_matches_fresh_list(informer, peer, "r")
            inner.cancel_scope.cancel()
        await _supervisor_saw_ready(caplog, handle.name, handle.pid)


async def test_informer_relists_after_a_real_410(
    super_cluster: SuperCluster, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """After etcd compaction and a restart the server answers 410; the informer relists once."""
    c, cp = tenant.client, tenant.cp
    caplog.set_level(logging.INFO, logger="appliance.controlplane.process")
    caplog.set_level(logging.INFO, logger="appliance.kube.informer")
    with trio.fail_after(DEADLINE):
        await _namespace(c, "g")
        for name in ("a", "b", "c"):
            await c.create(CONFIGMAPS, _configmap(name, "g"))

        async with trio.open_nursery() as inner:
            informer, rec = await _start_informer(inner, c, "g")
            await c.patch(CONFIGMAPS, "c", {"data": {"v": "1"}}, namespace="g")
            await rec.wait(lambda: len(rec.calls) == 4, what="MODIFIED c", seconds=30)
            old_rv, mark = informer.resource_version, len(rec.calls)
            handle = cp.processes[0]
            assert handle.pid is not None

            with _stopped(handle.pid):
                # Remove b behind the frozen apiserver's back, then compact everything
                # up to now away: the informer's resourceVersion is history.
                deleted = await _etcd(
                    super_cluster, "deleterange", {"key": _b64(f"{cp.etcd_prefix}/configmaps/g/b")}
                )
                assert deleted.get("deleted") == "1", deleted
                head = await _etcd(super_cluster, "range", {"key": _b64("\0")})
                revision = int(head["header"]["revision"])
                assert revision > int(old_rv)
                await _etcd(super_cluster, "compaction", {"revision": revision, "physical": True})

            await rec.wait(lambda: len(rec.calls) > mark, what="DELETED b", seconds=CONVERGE)
            assert rec.since(mark) == [("DELETED", "b")]
            relists = [r for r in caplog.records if "expired; relisting" in r.getMessage()]
            assert len(relists) == 1, [r.getMessage() for r in caplog.records]
            assert old_rv in relists[0].getMessage()
            assert int(informer.resource_version) >= revision

            # The server itself says the old version is gone.
            with pytest.raises(errors.Gone):
                await _drain(c.watch_raw(CONFIGMAPS, namespace="g", resource_version=old_rv))

            await c.create(CONFIGMAPS, _configmap("z", "g"))
            await rec.wait(
                lambda: ("ADDED", "z") in rec.since(mark), what="ADDED z", seconds=CONVERGE
            )
            assert rec.since(mark) == [("ADDED", "z"), ("DELETED", "b")]
            rec.assert_each_change_once()
            await _cache_matches_fresh_list(informer, c, "g")
            assert informer.statistics()["objects"] == 3
            inner.cancel_scope.cancel()
        await _supervisor_saw_ready(caplog, handle.name, handle.pid)


# -- isolation ------------------------------------------------------------------------


async def test_two_tenants_on_one_etcd_do_not_see_each_other(
    super_cluster: SuperCluster, tenant_factory: TenantFactory
) -> None:
    """Objects, lists and watches of one tenant apiserver never show up in another's."""
    with trio.fail_after(DEADLINE):
        cp_a = await tenant_factory("iso-a", controller_manager=False)
        cp_b = await tenant_factory("iso-b", controller_manager=False)
        assert cp_a.etcd_prefix != cp_b.etcd_prefix
        async with (
            _client_for(cp_a.admin_kubeconfig) as a,
            _client_for(cp_b.admin_kubeconfig) as b,
            _client_for(super_cluster.kubeconfig) as sup,
        ):
            await _namespace(a, "iso-shared")
            await _namespace(b, "iso-shared")
            start_b = await b.list(CONFIGMAPS, namespace="iso-shared")
            in_a = await a.create(CONFIGMAPS, _configmap("cfg", "iso-shared", {"owner": "a"}))
            with pytest.raises(errors.NotFound):
                await b.get(CONFIGMAPS, "cfg", namespace="iso-shared")
            assert "cfg" not in _names((await b.list(CONFIGMAPS)).items)
            in_b = await b.create(CONFIGMAPS, _configmap("cfg", "iso-shared", {"owner": "b"}))
            assert in_b["metadata"]["uid"] != in_a["metadata"]["uid"]
            still_a = await a.get(CONFIGMAPS, "cfg", namespace="iso-shared")
            assert still_a["data"] == {"owner": "a"}

            # B's watch from before both creates reports B's object only.
            async with contextlib.aclosing(
                b.watch(
                    CONFIGMAPS,
                    namespace="iso-shared",
                    resource_version=start_b.resource_version,
                    timeout_seconds=30,
                )
            ) as events:
                async for event in events:
                    if event.type != "BOOKMARK":
                        assert event.object["metadata"]["uid"] == in_b["metadata"]["uid"]
                        break

            with pytest.raises(errors.NotFound):
                await sup.get(NAMESPACES, "iso-shared")
