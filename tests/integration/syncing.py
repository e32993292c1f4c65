"""Helpers for syncer tests: a tenant apiserver registered as an imported VirtualCluster.

The tenant control plane is a real kube-apiserver + KCM from the test bed; the
VirtualCluster object that names it is created in the real super cluster (CRDs applied
from the package), with its kubeconfig in the `tenancy.x-k8s.io/admin-kubeconfig`
annotation and `status.phase: Running` — what the `import` provisioner would produce.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from appliance.controlplane import cluster
from appliance.kube import creds as kcreds
from appliance.kube import resources
from appliance.kube.client import ApiClient, open_client
from appliance.metrics import Registry
from appliance.syncer import runtime, supervisor
from appliance.syncer.tenant import TenantId
from appliance.util import naming
from tests.testbed import SuperCluster, TenantFactory, run_kubectl

CRDS = Path(__file__).resolve().parents[2] / "appliance" / "manager" / "crds"


@dataclass(frozen=True, slots=True)
class SyncedTenant:
    cp: cluster.ControlPlane
    vc: dict[str, Any]
    id: TenantId
    client: ApiClient

    @property
    def key(self) -> str:
        return self.id.key

    @property
    def kubeconfig(self) -> Path:
        return self.cp.admin_kubeconfig


async def apply_crds(sc: SuperCluster) -> None:
    await run_kubectl(sc.kubectl, sc.kubeconfig, "apply", "--server-side", "-f", str(CRDS))
    await run_kubectl(sc.kubectl, sc.kubeconfig, "wait", "--for=condition=Established",
                      "crd/virtualclusters.tenancy.x-k8s.io", "--timeout=60s")


@contextlib.asynccontextmanager
async def super_client(sc: SuperCluster) -> AsyncIterator[ApiClient]:
    async with open_client(await kcreds.load_kubeconfig(sc.kubeconfig)) as c:
        yield c


async def register_vc(superc: ApiClient, cp: cluster.ControlPlane, *, name: str | None = None) -> dict[str, Any]:
    """Create a Running VirtualCluster in a fresh namespace that imports `cp`."""
    ns = f"vc-{uuid.uuid4().hex[:8]}"
    await superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
    kubeconfig = base64.b64encode(cp.admin_kubeconfig.read_bytes()).decode()
    vc = await superc.create(resources.VIRTUALCLUSTERS, {
        "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": name or cp.name, "namespace": ns,
                     "annotations": {naming.ANNOTATION_ADMIN_KUBECONFIG: kubeconfig}},
        "spec": {"clusterVersionName": "imported", "clusterDomain": "cluster.local"},
    }, namespace=ns)
    return await superc.patch(resources.VIRTUALCLUSTERS, vc["metadata"]["name"],
                              {"status": {"phase": "Running"}}, namespace=ns, subresource="status")


async def _forget_vc(superc: ApiClient, vc: dict[str, Any]) -> None:
    """Remove a test's VirtualCluster (and its namespace) from the shared super cluster."""
    with trio.move_on_after(10, shield=True):
        await superc.delete(resources.NAMESPACES, vc["metadata"]["namespace"])


async def start_syncer(
    nursery: trio.Nursery, superc: ApiClient, **settings: Any
) -> runtime.Syncer:
    s = runtime.SyncerSettings(**{"patrol_period": 3600.0, **settings})
    sx = runtime.Syncer(super_client=superc, settings=s, registry=Registry())
    await nursery.start(sx.run)
    await nursery.start(supervisor.run, sx)
    return sx


async def synced_tenant(
    sx: runtime.Syncer, superc: ApiClient, make: TenantFactory, name: str, stack: contextlib.AsyncExitStack
) -> SyncedTenant:
    cp = await make(name, controller_manager=True, virtual_nodes=True)
    vc = await register_vc(superc, cp)
    stack.push_async_callback(_forget_vc, superc, vc)
    tid = TenantId.from_vc(vc)
    with trio.fail_after(60):
        while tid.key not in sx.tenants:
            await trio.sleep(0.05)  # the supervisor registers it once its caches are synced
    client = await stack.enter_async_context(open_client(await kcreds.load_kubeconfig(cp.admin_kubeconfig)))
    return SyncedTenant(cp=cp, vc=vc, id=tid, client=client)
