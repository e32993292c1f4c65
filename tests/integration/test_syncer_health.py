"""A tenant apiserver that stops answering: gauge and Event say so, others go on, it recovers."""

from __future__ import annotations

import contextlib
import os
import signal

import trio

from appliance.kube import resources
from appliance.util import naming
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory, wait_for


async def test_frozen_tenant_is_reported_unhealthy_others_keep_syncing_and_it_recovers(
    super_cluster: SuperCluster, tenant_factory: TenantFactory
) -> None:
    """SIGSTOP one tenant apiserver: ClusterUnHealth Event + gauge; the other tenant syncs; SIGCONT recovers."""
    await syncing.apply_crds(super_cluster)
    async with contextlib.AsyncExitStack() as stack:
        superc = await stack.enter_async_context(syncing.super_client(super_cluster))
        async with trio.open_nursery() as nursery:
            sx = await syncing.start_syncer(nursery, superc, health_period=0.5, health_timeout=2.0)
            sick = await syncing.synced_tenant(sx, superc, tenant_factory, "sick", stack)
            well = await syncing.synced_tenant(sx, superc, tenant_factory, "well", stack)
            apiserver = sick.cp.processes[0]
            assert apiserver.pid is not None
            os.kill(apiserver.pid, signal.SIGSTOP)
            try:
                async def unhealthy() -> bool:
                    return sx.health.get(sick.key) is False or sick.key not in sx.tenants

                await wait_for(unhealthy, timeout=30, what="the frozen tenant to be seen unhealthy")

                async def event() -> bool:
                    events = (await superc.list(resources.EVENTS, namespace=sick.vc["metadata"]["namespace"])).items
                    return any(e["reason"] == "ClusterUnHealth" and sick.key in e["message"] for e in events)

                await wait_for(event, timeout=30, what="a ClusterUnHealth Event on the VirtualCluster")
                # The healthy tenant is unaffected.
                await syncing.tenant_namespace(well, "busy")
                await well.client.create(resources.CONFIGMAPS, {"metadata": {"name": "still-works"}, "data": {"a": "b"}},
                                         namespace="busy")
                await syncing.wait_object(superc, resources.CONFIGMAPS, "still-works",
                                          namespace=naming.super_namespace(well.key, "busy"),
                                          what="the healthy tenant's ConfigMap in super")
            finally:
                os.kill(apiserver.pid, signal.SIGCONT)

            async def recovered() -> bool:
                return sick.key in sx.tenants and sx.health.get(sick.key) is True

            await wait_for(recovered, timeout=90, what="the tenant to be served again")
            await syncing.tenant_namespace(sick, "back")
            await sick.client.create(resources.CONFIGMAPS, {"metadata": {"name": "after"}}, namespace="back")
            await syncing.wait_object(superc, resources.CONFIGMAPS, "after",
                                      namespace=naming.super_namespace(sick.key, "back"),
                                      what="the recovered tenant's ConfigMap in super")
            nursery.cancel_scope.cancel()
