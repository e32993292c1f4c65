"""Building blocks of the fault tests on the private bed: tenants that can be stopped and
started again, imported VirtualClusters, the appliance process, Pods made in bulk.

A `StoppableTenant` is a real kube-apiserver + KCM on the bed's etcd under its own prefix,
running in a cancel scope of its own inside the test's nursery: `stop()` ends both
processes (SIGTERM, as an operator would), `start()` brings them back on the same port with
the same certificates and data, so the kubeconfig in its VirtualCluster stays valid.
Tenants join the appliance as `import`-provisioned VirtualClusters labelled with the test's
run id, and each appliance serves only its run's VirtualClusters (`tenant-selector`), so
leftovers of earlier tests on the bed are never touched.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import math
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from appliance.controlplane import cluster, process
from appliance.kube import creds as kcreds
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient, open_client
from appliance.util import naming
from tests.e2e.appliance_proc import Appliance, running
from tests.faults.convergence import TenantView
from tests.integration.syncing import apply_crds
from tests.testbed import SuperCluster, wait_for

RUN_LABEL = "vc-appliance.test/faults"
NS = "load"


@dataclass(slots=True)
class StoppableTenant:
    """A tenant control plane that a test can stop and start again (see the module docstring)."""

    name: str
    bed: SuperCluster
    state_dir: Path
    prefix: str
    port: int = field(default_factory=cluster.free_port)
    cp: cluster.ControlPlane | None = None
    starts: int = 0
    _scope: trio.CancelScope | None = None
    _stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / self.name / "pki" / "admin.kubeconfig"

    @property
    def apiserver(self) -> process.ProcessHandle:
        assert self.cp is not None
        return self.cp.processes[0]

    async def start(self, nursery: trio.Nursery) -> cluster.ControlPlane:
        """Start (or start again) both processes and wait until Pods can be created."""
        self.cp = await nursery.start(self._run)
        self.starts += 1
        await cluster.wait_default_service_account(self.cp.url, self.cp.pki_dir, timeout=120)
        return self.cp

    async def stop(self) -> None:
        """Stop both processes (SIGTERM, then SIGKILL after the grace) and wait until they are gone."""
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()

    async def _run(self, *, task_status: trio.TaskStatus[cluster.ControlPlane]) -> None:
        self._stopped = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    cp = await cluster.start_control_plane(
                        nursery, self.bed.bins, name=self.name, etcd_url=self.bed.etcd_url,
                        state_dir=self.state_dir, etcd_prefix=self.prefix, port=self.port,
                        controller_manager=True, virtual_nodes=True,
                    )
                    task_status.started(cp)
                    await trio.sleep_forever()
        finally:
            self._stopped.set()


async def start_tenants(nursery: trio.Nursery, bed: SuperCluster, tmp: Path, names: Iterable[str]) -> list[StoppableTenant]:
    """Start tenants two at a time (each start is CPU-heavy on two cores)."""
    out: dict[str, StoppableTenant] = {}
    limit = trio.CapacityLimiter(2)
    unique = uuid.uuid4().hex[:8]

    async def one(name: str) -> None:
        async with limit:
            t = StoppableTenant(name, bed, tmp / "tenants", f"/faults/{unique}-{name}/registry")
            await t.start(nursery)
            out[name] = t

    async with trio.open_nursery() as starting:
        for name in names:
            starting.start_soon(one, name)
    return [out[n] for n in sorted(out)]


@contextlib.asynccontextmanager
async def open_clients(*kubeconfigs: Path) -> AsyncIterator[list[ApiClient]]:
    """Clients without a client-side rate limit (the tests generate load)."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for path in kubeconfigs:
            c = await kcreds.load_kubeconfig(path)
            out.append(await stack.enter_async_context(open_client(c, qps=math.inf, timeout=60.0)))
        yield out


def new_run() -> str:
    return uuid.uuid4().hex[:6]


def selector(run: str) -> str:
    """The appliance's `tenant-selector` line for this run (a top-level config key)."""
    return f'tenant-selector = "{RUN_LABEL}={run}"\n'


async def import_vc(superc: ApiClient, t: StoppableTenant, *, run: str) -> tuple[str, str]:
    """Create an `import` VirtualCluster for `t` labelled with `run`; returns (namespace, name)."""
    ns = f"f{run}"
    with contextlib.suppress(errors.AlreadyExists):
        await superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
    await superc.create(resources.VIRTUALCLUSTERS, {
        "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": t.name, "namespace": ns, "labels": {RUN_LABEL: run}, "annotations": {
            "tenancy.x-k8s.io/provisioner": "import",
            naming.ANNOTATION_ADMIN_KUBECONFIG: base64.b64encode(t.kubeconfig.read_bytes()).decode(),
        }},
        "spec": {"clusterVersionName": "imported", "clusterDomain": "cluster.local"},
    }, namespace=ns)
    return ns, t.name


async def wait_vc_running(superc: ApiClient, ns: str, name: str, *, timeout: float = 120) -> str:
    """Wait for phase Running; returns the cluster key (status.clusterNamespace)."""

    async def key() -> str | None:
        vc = await superc.get(resources.VIRTUALCLUSTERS, name, namespace=ns)
        status = vc.get("status") or {}
        assert status.get("phase") != "Error", status
        return status.get("clusterNamespace") if status.get("phase") == "Running" else None

    return str(await wait_for(key, timeout=timeout, what=f"VirtualCluster {ns}/{name} Running"))


async def tenant_namespace(client: ApiClient, ns: str = NS) -> None:
    """Create `ns` in a tenant and wait for what its KCM adds before Pods are accepted."""
    with contextlib.suppress(errors.AlreadyExists):
        await client.create(resources.NAMESPACES, {"metadata": {"name": ns}})

    async def ready() -> bool:
        for res, name in ((resources.SERVICEACCOUNTS, "default"), (resources.CONFIGMAPS, "kube-root-ca.crt")):
            try:
                await client.get(res, name, namespace=ns)
            except errors.NotFound:
                return False
        return True

    await wait_for(ready, timeout=60, what=f"tenant namespace {ns} ready")


def pod_body(name: str) -> dict[str, Any]:
    """A small Pod without a service-account token (kwok runs it; no token Secret is made)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "faults"}},
            "spec": {"containers": [{"name": "main", "image": "nginx"}], "terminationGracePeriodSeconds": 0,
                     "automountServiceAccountToken": False}}


async def _answers(client: ApiClient) -> bool:
    try:
        await client.server_version()
    except errors.KubeError:
        return False
    return True


async def create_pods(
    client: ApiClient, names: Iterable[str], *, ns: str = NS, concurrency: int = 20,
    made: dict[tuple[str, str], str] | None = None,
) -> dict[tuple[str, str], str]:
    """Create Pods with `concurrency` callers; returns (namespace, name) → UID, also into `made`.

    A create that fails in transit is retried; AlreadyExists on a retry means it had worked.
    """
    made = made if made is not None else {}
    todo = list(names)
    send, recv = trio.open_memory_channel[str](len(todo))
    for name in todo:
        send.send_nowait(name)
    send.close()

    async def caller() -> None:
        async for name in recv:
            for attempt in range(10):
                try:
                    pod = await client.create(resources.PODS, pod_body(name), namespace=ns)
                    break
                except errors.AlreadyExists:
                    if attempt == 0:
                        raise
                    pod = await client.get(resources.PODS, name, namespace=ns)
                    break
                except (errors.TransportError, errors.ServerError, errors.TooManyRequests):
                    # the tenant apiserver is overloaded or restarting: retry once it answers
                    await wait_for(functools.partial(_answers, client), timeout=60,
                                   what=f"{client.creds.server} answering")
            else:
                raise AssertionError(f"could not create pod {ns}/{name}")
            made[(ns, name)] = pod["metadata"]["uid"]

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(caller)
    return made


async def super_pod_count(superc: ApiClient, keys: Iterable[str]) -> int:
    """Super Pods that the syncer made for these tenants (label-selected)."""
    total = 0
    for key in keys:
        total += len((await superc.list(resources.PODS, label_selector=f"{naming.LABEL_CLUSTER}={key}")).items)
    return total


def bed_pid(bed: SuperCluster, component: str) -> int | None:
    """The pid of a bed component (`super-kube-apiserver`, `etcd`, ...) from its pid file;
    None while there is none (its supervisor removes it between a stop and the restart)."""
    state = Path(str(bed.info["state_dir"]))
    try:
        return int((state / "logs" / f"{component}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(slots=True)
class Run:
    """One test's run: its label, the super client, its tenants (and their clients, cluster keys
    once imported, and the Pods made in each: (namespace, name) → UID)."""

    run: str
    superc: ApiClient
    tenants: list[StoppableTenant]
    clients: list[ApiClient]
    keys: list[str] = field(default_factory=list)
    made: list[dict[tuple[str, str], str]] = field(default_factory=list)

    def views(self) -> list[TenantView]:
        return [TenantView(key, client, pods) for key, client, pods in zip(self.keys, self.clients, self.made, strict=True)]


async def import_all(run: Run) -> None:
    """Import every tenant of `run` and wait until each is Running with a ready namespace `NS`."""
    refs = [await import_vc(run.superc, t, run=run.run) for t in run.tenants]
    run.keys = [await wait_vc_running(run.superc, ns, name) for ns, name in refs]
    run.made = [{} for _ in run.tenants]
    for c in run.clients:
        await tenant_namespace(c)


@contextlib.asynccontextmanager
async def appliance(
    bed: SuperCluster, tmp: Path, *, run: str, data_dir: Path, env: dict[str, str] | None = None,
    super_kubeconfig: Path | None = None,
) -> AsyncIterator[Appliance]:
    """The real `vc-appliance` process serving this run's VirtualClusters on the bed; with
    `super_kubeconfig` it reaches the super cluster through that instead (the fault proxy)."""
    await apply_crds(bed)
    if super_kubeconfig is not None:
        info = {**bed.info, "super": {**bed.super, "admin_kubeconfig": str(super_kubeconfig)}}
        bed = SuperCluster(info, bed.bins)
    async with running(bed, tmp, extra=selector(run), data_dir=data_dir, env=env) as app:
        yield app


@contextlib.asynccontextmanager
async def open_run(
    fault_bed: SuperCluster, nursery: trio.Nursery, tmp: Path, *, names: Iterable[str] = ("a", "b"),
    env: dict[str, str] | None = None, super_kubeconfig: Path | None = None,
) -> AsyncIterator[tuple[Run, Appliance]]:
    """Tenants `names` started, the appliance running, every tenant imported and ready for Pods.

    On exit the appliance stops and the run's super namespaces are deleted (not waited for);
    the tenants stop with `nursery`.
    """
    tenants = await start_tenants(nursery, fault_bed, tmp, names)
    async with open_clients(fault_bed.kubeconfig, *(t.kubeconfig for t in tenants)) as clients:
        run = Run(new_run(), clients[0], tenants, clients[1:])
        try:
            async with appliance(fault_bed, tmp, run=run.run, data_dir=tmp / "data", env=env,
                                 super_kubeconfig=super_kubeconfig) as app:
                await import_all(run)
                yield run, app
        finally:
            await forget_namespaces(run.superc, run.keys)


async def create_in_all(run: Run, prefix: str, n: int) -> None:
    """`n` Pods named `<prefix>-NNN` in every tenant of `run`, all tenants at once."""
    async with trio.open_nursery() as nursery:
        for client, made in zip(run.clients, run.made, strict=True):
            nursery.start_soon(functools.partial(
                create_pods, client, [f"{prefix}-{i:03d}" for i in range(n)], made=made))


async def forget_namespaces(superc: ApiClient, keys: Iterable[str]) -> None:
    """Delete a finished test's super namespaces (not waited for), so later tests list less."""
    with trio.move_on_after(30, shield=True), contextlib.suppress(errors.KubeError):
        for key in keys:
            for ns in (await superc.list(resources.NAMESPACES)).items:
                if (ns["metadata"].get("annotations") or {}).get(naming.ANNOTATION_CLUSTER) == key:
                    with contextlib.suppress(errors.NotFound, errors.Conflict):
                        await superc.delete(resources.NAMESPACES, ns["metadata"]["name"])


async def etcd_call(bed: SuperCluster, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call to the bed etcd's JSON gateway (`/v3/kv/<method>`; keys base64-encoded)."""
    import httpx

    async with httpx.AsyncClient(base_url=bed.etcd_url, trust_env=False, timeout=10) as http:
        response = await http.post(f"/v3/kv/{method}", json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


async def etcd_delete(bed: SuperCluster, key: str) -> None:
    """Delete one key behind every apiserver's back."""
    done = await etcd_call(bed, "deleterange", {"key": base64.b64encode(key.encode()).decode()})
    assert done.get("deleted") == "1", (key, done)


async def etcd_compact_all(bed: SuperCluster) -> int:
    """Compact (physically) every revision before the current one; returns that revision."""
    head = await etcd_call(bed, "range", {"key": base64.b64encode(b"\0").decode()})
    revision = int(head["header"]["revision"])
    await etcd_call(bed, "compaction", {"revision": revision, "physical": True})
    return revision


async def wait_apiserver_ready(url: str, pki_dir: Path, *, timeout: float = 90) -> None:
    """Poll `url`/readyz as the admin until it answers 200."""
    ctx = await trio.to_thread.run_sync(cluster.admin_ssl_context, pki_dir)
    await wait_for(cluster.http_probe(f"{url}/readyz", ctx=ctx), timeout=timeout, what=f"{url} ready")
