"""Helpers for syncer tests: a tenant apiserver registered as an imported VirtualCluster.

The tenant control plane is a real kube-apiserver + KCM from the test bed; the
VirtualCluster object that names it is created in the real super cluster (CRDs applied
from the package), with its kubeconfig in the `tenancy.x-k8s.io/admin-kubeconfig`
annotation and `status.phase: Running` — what the `import` provisioner would produce.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from appliance.controlplane import cluster
from appliance.kube import creds as kcreds
from appliance.kube import errors, resources
from appliance.kube import events as kevents
from appliance.kube.client import ApiClient, open_client
from appliance.metrics import Registry
from appliance.syncer import runtime, supervisor
from appliance.syncer.tenant import TenantId
from appliance.util import naming
from bench import testbed as bench_testbed
from tests.testbed import SuperCluster, TenantFactory, run_kubectl, wait_for

_Test = TypeVar("_Test", bound=Callable[..., Awaitable[None]])

CRDS = Path(__file__).resolve().parents[2] / "appliance" / "manager" / "crds"


#: a tenant apiserver registered as an imported, Running VirtualCluster, with its client: the
#: benchmarks' record of a tenant, shared rather than copied
BedTenant = bench_testbed.BedTenant


async def apply_crds(sc: SuperCluster) -> None:
    await run_kubectl(sc.kubectl, sc.kubeconfig, "apply", "--server-side", "-f", str(CRDS))
    await run_kubectl(sc.kubectl, sc.kubeconfig, "wait", "--for=condition=Established",
                      "crd/virtualclusters.tenancy.x-k8s.io", "--timeout=60s")


@contextlib.asynccontextmanager
async def super_client(sc: SuperCluster) -> AsyncIterator[ApiClient]:
    async with open_client(await kcreds.load_kubeconfig(sc.kubeconfig)) as c:
        yield c


def kubeconfig_annotation(cp: cluster.ControlPlane) -> dict[str, str]:
    return {naming.ANNOTATION_ADMIN_KUBECONFIG: base64.b64encode(cp.admin_kubeconfig.read_bytes()).decode()}


#: Label that binds a test's VirtualClusters to the syncer that test started, so a syncer
#: never serves tenants of other tests on the shared super cluster.
SCOPE_LABEL = "vc-appliance.test/syncer"
_scopes: dict[int, str] = {}


async def register_vc(
    superc: ApiClient, cp: cluster.ControlPlane, *, name: str | None = None, kubeconfig: bool = True,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create a Running VirtualCluster in a fresh namespace that imports `cp`.

    Without `kubeconfig` the VC does not say how to reach `cp` (see `Env.tenant`).
    """
    ns = f"vc-{uuid.uuid4().hex[:8]}"
    await superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
    vc = await superc.create(resources.VIRTUALCLUSTERS, {
        "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": name or cp.name, "namespace": ns, "labels": labels or {},
                     "annotations": kubeconfig_annotation(cp) if kubeconfig else {}},
        "spec": {"clusterVersionName": "imported", "clusterDomain": "cluster.local"},
    }, namespace=ns)
    return await superc.patch(resources.VIRTUALCLUSTERS, vc["metadata"]["name"],
                              {"status": {"phase": "Running"}}, namespace=ns, subresource="status")


async def forget_vc(superc: ApiClient, vc: dict[str, Any]) -> None:
    """Remove a test's VirtualCluster, its namespace and its tenant's super namespaces.

    The syncer is stopped by then, so nothing recreates them; the super namespace
    controller removes their contents (kwok finishes the Pods).
    """
    with trio.move_on_after(10, shield=True):
        await superc.delete(resources.NAMESPACES, vc["metadata"]["namespace"])
        selector = f"{naming.LABEL_VC_NAMESPACE}={vc['metadata']['namespace']}"
        for ns in (await superc.list(resources.NAMESPACES, label_selector=selector)).items:
            with contextlib.suppress(errors.NotFound):
                await superc.delete(resources.NAMESPACES, ns["metadata"]["name"])


async def start_syncer(
    nursery: trio.Nursery, superc: ApiClient, **settings: Any
) -> runtime.Syncer:
    sx = runtime.Syncer(super_client=superc, settings=settings_for(**settings), registry=Registry())
    await nursery.start(sx.run)
    await start_supervisor(nursery, sx)
    return sx


async def start_supervisor(nursery: trio.Nursery, sx: runtime.Syncer) -> None:
    """The tenant supervisor of `sx`, serving only VCs that `synced_tenant` made for it."""
    scope = uuid.uuid4().hex[:12]
    _scopes[id(sx)] = scope
    await nursery.start(functools.partial(supervisor.run, sx, label_selector=f"{SCOPE_LABEL}={scope}"))


def scope_labels(sx: runtime.Syncer) -> dict[str, str]:
    """Labels that put a VirtualCluster in front of `sx`'s supervisor (see `start_supervisor`)."""
    return {SCOPE_LABEL: _scopes[id(sx)]}


async def synced_tenant(
    sx: runtime.Syncer, superc: ApiClient, make: TenantFactory, name: str, stack: contextlib.AsyncExitStack
) -> BedTenant:
    cp = await make(name, controller_manager=True, virtual_nodes=True)
    scope = _scopes.get(id(sx))
    vc = await register_vc(superc, cp, labels={SCOPE_LABEL: scope} if scope else None)
    stack.push_async_callback(forget_vc, superc, vc)
    tid = TenantId.from_vc(vc)
    await wait_registered(sx, tid.key)
    client = await stack.enter_async_context(open_client(await kcreds.load_kubeconfig(cp.admin_kubeconfig)))
    return BedTenant(cp=cp, vc=vc, id=tid, client=client)


async def wait_registered(sx: runtime.Syncer, key: str, *, timeout: float = 60) -> None:
    """Wait until the supervisor has registered tenant `key` (its caches are synced)."""
    with trio.fail_after(timeout):
        await sx.wait_registered(key)


@dataclass(frozen=True, slots=True)
class Env:
    """What a syncer test needs: the super client, a cleanup stack and a nursery for syncers.

    Isolation on the shared super cluster: other tests' supervisors watch every VirtualCluster,
    so `tenant` registers VCs without their kubeconfig (a foreign supervisor cannot serve them)
    and hands the kubeconfig to this test's syncer in memory, through `supervisor.run_tenant`
    in the syncer's nursery; this test's syncers run no supervisor, so they serve only
    this test's tenants.
    """

    sc: SuperCluster
    superc: ApiClient
    stack: contextlib.AsyncExitStack
    nursery: trio.Nursery
    make: TenantFactory
    _homes: dict[runtime.Syncer, trio.Nursery] = field(default_factory=dict)

    async def start(self, **settings: Any) -> runtime.Syncer:
        """A syncer (no supervisor) living until the test ends."""
        sx = runtime.Syncer(super_client=self.superc, settings=settings_for(**settings), registry=Registry())
        await self.nursery.start(sx.run)
        self._homes[sx] = self.nursery
        return sx

    async def settle(self, *, timeout: float = 20) -> None:
        """Give the running syncers up to `timeout` s to finish their work before they are stopped,
        so that no request is cut short (httpx warns about a request body cancelled midway)."""
        with trio.move_on_after(timeout):
            for sx in list(self._homes):
                await wait_quiet(sx, scans=0)

    @contextlib.asynccontextmanager
    async def syncer(self, **settings: Any) -> AsyncIterator[runtime.Syncer]:
        """A syncer (no supervisor) and the tenants it serves, all stopped when the block exits."""
        async with trio.open_nursery() as nursery:
            sx = runtime.Syncer(super_client=self.superc, settings=settings_for(**settings), registry=Registry())
            await nursery.start(sx.run)
            self._homes[sx] = nursery
            try:
                yield sx
                with trio.move_on_after(20):
                    await wait_quiet(sx, scans=0)  # see `settle`
            finally:
                del self._homes[sx]
                nursery.cancel_scope.cancel()

    async def tenant(self, sx: runtime.Syncer, name: str) -> BedTenant:
        """A fresh tenant control plane with a Running VC, served by `sx`."""
        cp = await self.make(name, controller_manager=True, virtual_nodes=True)
        vc = await register_vc(self.superc, cp, kubeconfig=False)
        self.stack.push_async_callback(forget_vc, self.superc, vc)
        client = await self.stack.enter_async_context(
            open_client(await kcreds.load_kubeconfig(cp.admin_kubeconfig)))
        t = BedTenant(cp=cp, vc=vc, id=TenantId.from_vc(vc), client=client)
        await self.serve(sx, t)
        return t

    async def serve(self, sx: runtime.Syncer, t: BedTenant) -> None:
        """Let `sx` serve tenant `t` (as its supervisor would) and wait until it is registered."""
        vc = copy.deepcopy(t.vc)
        vc["metadata"]["annotations"] = {**(vc["metadata"].get("annotations") or {}), **kubeconfig_annotation(t.cp)}
        events = kevents.EventRecorder(self.superc, component="vc-syncer")
        await self._homes[sx].start(functools.partial(supervisor.run_tenant, sx, vc, vc_events=events))
        await wait_registered(sx, t.key)


def settings_for(**settings: Any) -> runtime.SyncerSettings:
    return runtime.SyncerSettings(**{"patrol_period": 3600.0, **settings})


@contextlib.asynccontextmanager
async def environment(sc: SuperCluster, make: TenantFactory) -> AsyncIterator[Env]:
    """An `Env`; its syncers stop before the VCs are forgotten and the clients close."""
    await apply_crds(sc)
    async with contextlib.AsyncExitStack() as stack:
        superc = await stack.enter_async_context(super_client(sc))
        async with trio.open_nursery() as nursery:
            env = Env(sc=sc, superc=superc, stack=stack, nursery=nursery, make=make)
            try:
                yield env
                await env.settle()
            finally:
                nursery.cancel_scope.cancel()


async def tenant_namespace(t: BedTenant, ns: str, *, timeout: float = 60) -> None:
    """Create namespace `ns` in the tenant and wait for its `default` ServiceAccount
    (the tenant refuses Pods before KCM made it) and its `kube-root-ca.crt`."""
    await t.client.create(resources.NAMESPACES, {"metadata": {"name": ns}})
    with trio.fail_after(timeout):
        for res, name in ((resources.SERVICEACCOUNTS, "default"), (resources.CONFIGMAPS, "kube-root-ca.crt")):
            while await get_or_none(t.client, res, name, namespace=ns) is None:
                await trio.sleep(0.1)  # made by the tenant's KCM: another process


def pod_manifest(name: str, *, image: str = "nginx", token: bool = False, **spec: Any) -> dict[str, Any]:
    """A bare Pod; `token=False` sets `automountServiceAccountToken: false`."""
    body: dict[str, Any] = {"containers": [{"name": "main", "image": image}], **spec}
    if not token:
        body["automountServiceAccountToken"] = False
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": body}


async def get_or_none(
    client: ApiClient, res: resources.Resource, name: str, *, namespace: str | None = None
) -> dict[str, Any] | None:
    try:
        return await client.get(res, name, namespace=namespace)
    except errors.NotFound:
        return None


async def wait_object(
    client: ApiClient, res: resources.Resource, name: str, *, namespace: str | None = None,
    where: Any = None, timeout: float = 60, what: str = "",
) -> dict[str, Any]:
    """Poll until the object exists (and `where(obj)` holds); return it."""

    async def probe() -> dict[str, Any] | None:
        obj = await get_or_none(client, res, name, namespace=namespace)
        return obj if obj is not None and (where is None or where(obj)) else None

    found = await wait_for(probe, timeout=timeout, what=what or f"{res} {namespace}/{name}")
    return found  # type: ignore[return-value]


async def wait_gone(
    client: ApiClient, res: resources.Resource, name: str, *, namespace: str | None = None,
    timeout: float = 60, what: str = "",
) -> None:
    async def gone() -> bool:
        return await get_or_none(client, res, name, namespace=namespace) is None

    await wait_for(gone, timeout=timeout, what=what or f"{res} {namespace}/{name} to be gone")


#: what a syncer writes in a tenant's super namespaces (plus the namespaces themselves)
SUPER_KINDS = (
    resources.CONFIGMAPS, resources.SECRETS, resources.SERVICEACCOUNTS, resources.SERVICES,
    resources.ENDPOINTS, resources.PVCS, resources.PODS,
)


async def super_snapshot(superc: ApiClient, t: BedTenant) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(kind, namespace, name) → (uid, resourceVersion) of everything in `t`'s super namespaces."""
    selector = f"{naming.LABEL_VC_NAMESPACE}={t.id.vc_namespace}"
    namespaces = (await superc.list(resources.NAMESPACES, label_selector=selector)).items
    snap = {("namespace", "", n["metadata"]["name"]): (n["metadata"]["uid"], n["metadata"]["resourceVersion"])
            for n in namespaces}
    for ns in namespaces:
        for res in SUPER_KINDS:
            for obj in (await superc.list(res, namespace=ns["metadata"]["name"])).items:
                m = obj["metadata"]
                snap[(res.plural, m["namespace"], m["name"])] = (m["uid"], m["resourceVersion"])
    return snap


@dataclass(frozen=True, slots=True)
class Seen:
    """One watch event as a test records it: when (trio clock), what, and the object."""

    at: float
    type: str
    kind: str
    obj: dict[str, Any]

    @property
    def ref(self) -> tuple[str, str, str]:
        m = self.obj["metadata"]
        return self.kind, m.get("namespace", ""), m["name"]


async def record_events(
    client: ApiClient, res: resources.Resource, sink: list[Seen], *, resource_version: str | None = None,
    namespace: str | None = None, label_selector: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Append every watch event of `res` to `sink` in arrival order, until cancelled.

    Starts at `resource_version` (default: a fresh list's), reports that version as started.
    Raises errors.Gone if the server compacted it away: a test must not silently miss events.
    """
    if resource_version is None:
        resource_version = (await client.list(res, namespace=namespace, label_selector=label_selector, limit=1)
                            ).resource_version
    task_status.started(resource_version)
    rv = resource_version
    while True:
        async with contextlib.aclosing(client.watch(
            res, namespace=namespace, resource_version=rv, label_selector=label_selector,
        )) as events:
            async for ev in events:
                if ev.resource_version:
                    rv = ev.resource_version
                if ev.type != "BOOKMARK":
                    sink.append(Seen(trio.current_time(), ev.type, res.plural, ev.object))


def syncer_busy(sx: runtime.Syncer) -> int:
    """Items ready, processing or waiting for a retry in all of the syncer's queues."""
    return sx.busy()


def patrol_scans(sx: runtime.Syncer) -> int:
    """How many full patrol scans the syncer has finished."""
    return sx.patrol_scans


async def wait_quiet(sx: runtime.Syncer, *, scans: int = 2, timeout: float = 120) -> None:
    """Wait until the syncer's queues are empty across `scans` patrol scans (it has nothing to do)."""
    with trio.fail_after(timeout):
        await sx.wait_idle()
        await sx.wait_patrol_scans(scans)
        await sx.wait_idle()  # what the last scans queued (a no-op repair, say) is done too


def deadline(seconds: float) -> Callable[[_Test], _Test]:
    """Fail the decorated async test if it runs longer than `seconds` on trio's clock."""

    def wrap(test: _Test) -> _Test:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            with trio.fail_after(seconds):
                await test(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap
