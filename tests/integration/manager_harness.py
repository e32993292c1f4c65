"""Shared harness for the vc-manager integration tests (this module holds no tests).

`open_harness` gives each test its own super-cluster namespace, a label that scopes the manager
to the test's VirtualClusters (the test bed is shared), a data dir under `tmp_path`, and
helpers to run the manager in the test's nursery, stop it, and start it again. Teardown
deletes every VirtualCluster of the test while a manager still runs (so finalizers are
honoured), then stops the manager and kills anything left in the data dir.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from appliance.controlplane import cluster, process
from appliance.kube import creds, errors, resources
from appliance.kube.client import ApiClient, open_client
from appliance.manager import controller, etcdcreds, etcdgateway, model
from tests.testbed import SuperCluster, wait_for

LABEL = "vc-appliance.test/run"


async def _run_manager(
    client: ApiClient, settings: controller.ManagerSettings, stopped: trio.Event,
    *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(controller.run, super_client=client, settings=settings))
                task_status.started(scope)
    finally:
        stopped.set()


@dataclass
class Manager:
    scope: trio.CancelScope
    stopped: trio.Event
    settings: controller.ManagerSettings

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


@dataclass
class Harness:
    client: ApiClient
    sc: SuperCluster
    nursery: trio.Nursery
    data_dir: Path
    run_id: str
    namespaces: list[str] = field(default_factory=list)
    cluster_versions: list[str] = field(default_factory=list)
    manager: Manager | None = None

    @property
    def ns(self) -> str:
        return self.namespaces[0]

    def settings(self, **overrides: Any) -> controller.ManagerSettings:
        values: dict[str, Any] = {
            "data_dir": self.data_dir, "bins": self.sc.bins, "keep_control_planes": False,
            "label_selector": f"{LABEL}={self.run_id}", "provisioner_timeout": 120.0,
        }
        values.update(overrides)
        return controller.ManagerSettings(**values)

    async def start_manager(self, **overrides: Any) -> Manager:
        settings = self.settings(**overrides)
        stopped = trio.Event()
        scope = await self.nursery.start(_run_manager, self.client, settings, stopped)
        self.manager = Manager(scope, stopped, settings)
        return self.manager

    async def stop_manager(self) -> None:
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None

    async def new_namespace(self) -> str:
        name = f"mgr-{uuid.uuid4().hex[:8]}"
        await self.client.create(resources.NAMESPACES,
                                 {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        self.namespaces.append(name)
        return name

    async def create_cv(self, spec: dict[str, Any] | None = None, *, provisioner: str | None = None) -> str:
        name = f"{self.run_id}-cv{len(self.cluster_versions)}"
        meta: dict[str, Any] = {"name": name}
        if provisioner:
            meta["annotations"] = {model.ANNOTATION_PROVISIONER: provisioner}
        await self.client.create(resources.CLUSTERVERSIONS, {
            "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "ClusterVersion",
            "metadata": meta, "spec": spec or {},
        })
        self.cluster_versions.append(name)
        return name

    async def create_vc(
        self, name: str, *, cv: str, namespace: str | None = None,
        annotations: dict[str, str] | None = None, **spec: Any,
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
            "metadata": {"name": name, "namespace": namespace or self.ns, "labels": {LABEL: self.run_id},
                         "annotations": annotations or {}},
            "spec": {"clusterVersionName": cv, **spec},
        }
        return await self.client.create(resources.VIRTUALCLUSTERS, body)

    async def get_vc(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return await self.client.get(resources.VIRTUALCLUSTERS, name, namespace=namespace or self.ns)
        except errors.NotFound:
            return None

    async def wait_vc(
        self, name: str, pred: Callable[[dict[str, Any]], object], *, what: str,
        namespace: str | None = None, within: float = 90,
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            vc = await self.get_vc(name, namespace)
            return vc if vc is not None and pred(vc) else None

        return await wait_for(check, timeout=within, what=f"{namespace or self.ns}/{name}: {what}")  # type: ignore[return-value]

    async def wait_phase(self, name: str, phase: str, *, namespace: str | None = None,
                         within: float = 90) -> dict[str, Any]:
        return await self.wait_vc(
            name, lambda vc: (vc.get("status") or {}).get("phase") == phase,
            what=f"phase {phase}", namespace=namespace, within=within,
        )

    async def events(self, name: str, namespace: str | None = None) -> list[dict[str, Any]]:
        listing = await self.client.list(resources.EVENTS, namespace=namespace or self.ns,
                                         field_selector=f"involvedObject.name={name}")
        return listing.items

    async def delete_vc(self, name: str, *, namespace: str | None = None, within: float = 90) -> None:
        ns = namespace or self.ns
        try:
            await self.client.delete(resources.VIRTUALCLUSTERS, name, namespace=ns)
        except errors.NotFound:
            return

        async def gone() -> bool:
            return await self.get_vc(name, ns) is None

        await wait_for(gone, timeout=within, what=f"{ns}/{name} deleted")

    async def admin_client(self, name: str, namespace: str | None = None) -> tuple[bytes, creds.Credentials]:
        data = await controller.admin_kubeconfig(self.client, namespace or self.ns, name)
        return data, creds.parse_kubeconfig(data)

    async def cleanup(self) -> None:
        selector = f"{LABEL}={self.run_id}"
        remaining = []
        for ns in self.namespaces:
            listing = await self.client.list(resources.VIRTUALCLUSTERS, namespace=ns, label_selector=selector)
            remaining += [(ns, vc["metadata"]["name"]) for vc in listing.items]
        if remaining and self.manager is None:
            await self.start_manager()
        for ns, name in remaining:
            try:
                await self.client.delete(resources.VIRTUALCLUSTERS, name, namespace=ns)
            except errors.NotFound:
                pass
        for ns, name in remaining:
            await self.delete_vc(name, namespace=ns, within=120)
        for cv in self.cluster_versions:
            try:
                await self.client.delete(resources.CLUSTERVERSIONS, cv)
            except errors.NotFound:
                pass
        await self.stop_manager()
        for ns in self.namespaces:
            try:
                await self.client.delete(resources.NAMESPACES, ns)
            except errors.NotFound:
                pass


def kill_leftovers(data_dir: Path) -> list[int]:
    """SIGKILL every process recorded under the data dir (kept etcd and tenant processes)."""
    killed = []
    for logs in [data_dir / "etcd" / "logs", *data_dir.glob("tenants/*/logs")]:
        killed += process.kill_leftovers(logs)
    return killed


@contextlib.asynccontextmanager
async def open_super_client(super_cluster: SuperCluster) -> AsyncIterator[ApiClient]:
    """An ApiClient for the session super cluster, as its admin."""
    kubeconfig = super_cluster.kubeconfig
    credentials = creds.parse_kubeconfig(kubeconfig.read_bytes(), base_dir=kubeconfig.parent)
    async with open_client(credentials) as client:
        yield client


@contextlib.asynccontextmanager
async def open_harness(super_cluster: SuperCluster, nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Harness]:
    """A namespace, a scoped manager launcher and full cleanup for one manager test.

    Each test module wraps this in its own `harness` fixture.
    """
    async with open_super_client(super_cluster) as client:
        await controller.ensure_crds(client)  # some tests create VirtualClusters before a manager runs
        h = Harness(client, super_cluster, nursery, tmp_path / "data", uuid.uuid4().hex[:10])
        await h.new_namespace()
        try:
            yield h
        finally:
            with trio.move_on_after(240, shield=True):
                await h.cleanup()
            kill_leftovers(h.data_dir)


@contextlib.asynccontextmanager
async def open_shared_etcd(data_dir: Path) -> AsyncIterator[etcdgateway.Gateway]:
    """The manager's shared etcd (already started) as its root user, for assertions."""
    etcd_creds = etcdcreds.SharedEtcdCreds(data_dir / "etcd" / "pki")
    port = json.loads((data_dir / "etcd" / "ports.json").read_text())["client"]
    tls = await trio.to_thread.run_sync(cluster.client_ssl_context, etcd_creds.admin)
    url = cluster.etcd_url(port, tls=True)
    async with etcdgateway.open_gateway(url, tls=tls, password=etcd_creds.root_password()) as gateway:
        yield gateway


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()

