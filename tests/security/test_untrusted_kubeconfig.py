"""Kubeconfigs that someone else wrote into cluster objects reach no file and no other cluster.

The syncer reads a tenant's admin kubeconfig from the VirtualCluster's annotations or from a
secret. Whoever may edit the VirtualCluster wrote it; a `tokenFile` there would make the
syncer read a file of the appliance host (here a marker file standing in for the appliance's
own service-account token) and present it to a server of the writer's choosing (here a
listener that records what it receives). For VirtualClusters whose control plane the appliance
made itself, the annotations must not count at all.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from appliance.kube import resources
from appliance.kube.client import ApiClient
from appliance.syncer import vcstatus
from appliance.syncer.tenant import TenantId
from appliance.util import naming
from tests.integration import syncing
from tests.tally import Tally
from tests.testbed import SuperCluster, TenantFactory, wait_for

pytestmark = [pytest.mark.security, pytest.mark.integration]


def _kubeconfig(server: str, user: dict[str, Any]) -> str:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "d",
           "clusters": [{"name": "c", "cluster": {"server": server}}], "users": [{"name": "u", "user": user}],
           "contexts": [{"name": "d", "context": {"cluster": "c", "user": "u"}}]}
    return base64.b64encode(yaml.safe_dump(doc).encode()).decode()


async def _running_vc(
    superc: ApiClient, name: str, *, labels: dict[str, str], annotations: dict[str, str], provisioner: str = "",
) -> dict[str, Any]:
    ns = f"vc-{uuid.uuid4().hex[:8]}"
    await superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
    await superc.create(resources.VIRTUALCLUSTERS, {
        "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {"clusterVersionName": "imported"},
    }, namespace=ns)
    status: dict[str, Any] = {"phase": "Running", **({"provisioner": provisioner} if provisioner else {})}
    return await superc.patch(resources.VIRTUALCLUSTERS, name, {"status": status}, namespace=ns,
                              subresource="status")


async def _event_message(superc: ApiClient, vc: dict[str, Any], reason: str) -> str | None:
    events = (await superc.list(resources.EVENTS, namespace=vc["metadata"]["namespace"])).items
    return next((e["message"] for e in events
                 if e["reason"] == reason and e["involvedObject"].get("uid") == vc["metadata"]["uid"]), None)


async def _condition(superc: ApiClient, vc: dict[str, Any]) -> dict[str, Any] | None:
    live = await superc.get(resources.VIRTUALCLUSTERS, vc["metadata"]["name"], namespace=vc["metadata"]["namespace"])
    conditions = (live.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == vcstatus.COND_KUBECONFIG), None)


async def test_kubeconfig_in_a_cluster_object_reads_no_file_and_can_be_replaced(
    super_cluster: SuperCluster, tenant_factory: TenantFactory, tally: Tally, tmp_path: Path,
) -> None:
    """A `tokenFile` annotation: Event + condition naming the field, the file never leaves the host;
    a process-made VC's annotation is ignored; a corrected annotation is used at once."""
    marker = f"appliance-token-{uuid.uuid4().hex}"
    (tmp_path / "token").write_text(marker)
    received: list[bytes] = []

    async def record(stream: trio.SocketStream) -> None:
        with trio.move_on_after(5):
            async for chunk in stream:
                received.append(chunk)

    await syncing.apply_crds(super_cluster)
    async with contextlib.AsyncExitStack() as stack:
        superc = await stack.enter_async_context(syncing.super_client(super_cluster))
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, record, 0, host="127.0.0.1"))
            trap = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            sx = await syncing.start_syncer(nursery, superc)
            labels = syncing.scope_labels(sx)
            reader = await _running_vc(superc, "reader", labels=labels, annotations={
                naming.ANNOTATION_ADMIN_KUBECONFIG: _kubeconfig(trap, {"tokenFile": str(tmp_path / "token")})})
            # The appliance made this one's control plane: its annotation must not redirect the syncer.
            made = await _running_vc(superc, "made", labels=labels, provisioner="process", annotations={
                naming.ANNOTATION_ADMIN_KUBECONFIG: _kubeconfig(trap, {"token": marker})})

            async def refused() -> str | None:
                return await _event_message(superc, reader, "InvalidKubeconfig")

            message = await wait_for(refused, timeout=60, what="an InvalidKubeconfig Event on the VC")
            assert "user 'u' tokenFile" in str(message)
            async def refusal_condition() -> dict[str, Any] | None:
                c = await _condition(superc, reader)  # written just after the Event
                return c if c is not None and c["status"] == "False" else None

            condition: Any = await wait_for(refusal_condition, timeout=30, what="condition KubeconfigAccepted=False")
            assert condition["reason"] == "InvalidKubeconfig"
            assert "only inline credentials are accepted; remove user 'u' tokenFile" in condition["message"]

            async def missing() -> str | None:
                return await _event_message(superc, made, "KubeconfigMissing")

            message = await wait_for(missing, timeout=60, what="a KubeconfigMissing Event on the process VC")
            made_key = TenantId.from_vc(made).key
            assert f"secret {made_key}/{naming.ADMIN_KUBECONFIG_SECRET} not found" in str(message)
            assert not received, "a kubeconfig from a cluster object made the syncer connect to its server"
            tally.add("kubeconfigs from cluster objects refused", tried=2, held=int(not received) * 2)

            # Whoever may edit the VC may point it at a (valid, inline) kubeconfig: used at once.
            cp = await tenant_factory("fixed")
            await superc.patch(resources.VIRTUALCLUSTERS, "reader", {"metadata": {"annotations": {
                naming.ANNOTATION_ADMIN_KUBECONFIG:
                    base64.b64encode(cp.admin_kubeconfig.read_bytes()).decode()}}},
                namespace=reader["metadata"]["namespace"])
            await syncing.wait_registered(sx, TenantId.from_vc(reader).key, timeout=60)

            async def accepted() -> bool:
                c = await _condition(superc, reader)
                return c is not None and c["status"] == "True"

            await wait_for(accepted, timeout=30, what="condition KubeconfigAccepted=True after the fix")
            assert marker.encode() not in b"".join(received)
            nursery.cancel_scope.cancel()
        for vc in (reader, made):
            with trio.move_on_after(10, shield=True):
                await superc.delete(resources.NAMESPACES, vc["metadata"]["namespace"])
