"""A tenant stopped while the syncer works for it: its work in progress ends with it.

The syncer's super requests go through the fault proxy, which holds every new request (STALL),
so a reconcile of the tenant is provably in progress when the tenant is stopped. Its work must
be cancelled at once — not run on until the reconcile timeout against a client that is being
closed, logged as an unmapped failure with a traceback, and retried into a fresh queue of a
tenant that no longer exists.
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path

import pytest
import trio

from appliance.kube import creds as kcreds
from appliance.kube import events as kevents
from appliance.kube import resources
from appliance.kube.client import open_client
from appliance.metrics import Registry
from appliance.syncer import runtime, supervisor
from appliance.syncer.tenant import TenantId
from tests.faultproxy import Fault, open_fault_proxy
from tests.integration import syncing
from tests.tally import Tally
from tests.testbed import SuperCluster, TenantFactory, wait_for

pytestmark = [pytest.mark.security, pytest.mark.integration]


async def test_stopped_tenant_work_in_progress_is_cancelled_not_retried(
    super_cluster: SuperCluster, tenant_factory: TenantFactory, nursery: trio.Nursery, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, tally: Tally,
) -> None:
    await syncing.apply_crds(super_cluster)
    proxy = await open_fault_proxy(nursery, upstream_url=super_cluster.url, pki_dir=super_cluster.pki_dir)
    via_proxy = proxy.kubeconfig(tmp_path / "proxy.kubeconfig")
    cp = await tenant_factory("stopped")
    async with syncing.super_client(super_cluster) as superc, \
            open_client(await kcreds.load_kubeconfig(via_proxy)) as stalling_super, \
            open_client(await kcreds.load_kubeconfig(cp.admin_kubeconfig)) as tenant:
        vc = await syncing.register_vc(superc, cp, kubeconfig=False)
        key = TenantId.from_vc(vc).key
        served = copy.deepcopy(vc)
        served["metadata"]["annotations"] = syncing.kubeconfig_annotation(cp)
        try:
            async with trio.open_nursery() as inner:
                # A long reconcile timeout: without the fix the stalled item outlives the tenant.
                sx = runtime.Syncer(super_client=stalling_super, registry=Registry(),
                                    settings=syncing.settings_for(reconcile_timeout=40.0))
                await inner.start(sx.run)
                scope = await inner.start(functools.partial(
                    supervisor.run_tenant, sx, served, vc_events=kevents.EventRecorder(superc, component="t")))
                await syncing.wait_registered(sx, key)
                queue = sx.queues["namespace"].core
                proxy.inject(Fault.STALL)
                caplog.set_level(logging.INFO, logger="appliance.syncer")
                await tenant.create(resources.NAMESPACES, {"metadata": {"name": "held"}})

                async def in_progress() -> bool:
                    return queue.statistics()["processing"] > 0

                await wait_for(in_progress, timeout=30, what="the namespace reconcile to be held by the proxy")
                scope.cancel()  # stop the tenant, as the supervisor does when its VC goes away

                async def cancelled() -> bool:
                    return queue.statistics()["processing"] == 0 and key not in sx.tenants

                await wait_for(cancelled, timeout=10,
                               what="the stopped tenant's reconcile to end with it (reconcile timeout is 40 s)")
                stats = queue.statistics()
                assert key not in stats["tenants"] and stats["delayed"] == 0 and stats["retrying"] == 0, stats
                proxy.inject(Fault.PASS)
                failures = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
                assert not failures, [r.getMessage() for r in failures]
                tally.add("stop: a stopped tenant's work in progress (cancelled, not retried)", tried=1, held=1)
                inner.cancel_scope.cancel()
        finally:
            proxy.inject(Fault.PASS)
            with trio.move_on_after(10, shield=True):
                await superc.delete(resources.NAMESPACES, vc["metadata"]["namespace"])
