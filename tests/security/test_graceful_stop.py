"""SIGTERM stops the appliance gracefully: no new work, writes in flight finish, then it exits.

The appliance reaches the super apiserver through the fault proxy. HOLD keeps every write
waiting until the test releases it, so a syncer write is provably in flight when SIGTERM
arrives: the process must wait for it (and not exit), finish it once released, and exit 0.
A second SIGTERM during that wait stops it at once.
"""

from __future__ import annotations

import base64
import re
import signal
import uuid
from pathlib import Path

import pytest
import trio

from appliance.kube import creds as kcreds
from appliance.kube import resources
from appliance.kube.client import ApiClient, open_client
from appliance.syncer.tenant import TenantId
from appliance.util import naming
from tests.e2e.appliance_proc import Appliance, running
from tests.faultproxy import Fault, FaultProxy, open_fault_proxy
from tests.integration import syncing
from tests.tally import Tally
from tests.testbed import SuperCluster, TenantFactory, wait_for

pytestmark = [pytest.mark.security, pytest.mark.e2e, pytest.mark.integration]

GRACE = 60.0  # long, so that "exited because the write finished" differs from "timed out"


async def _log_has(app: Appliance, text: str) -> bool:
    return text in app.log.read_text(errors="replace")


async def _write_in_flight(proxy: FaultProxy, tenant: ApiClient, super_ns: str, name: str) -> None:
    """Hold the appliance's writes and make the syncer start one: the ConfigMap copy's create."""
    key = f"hold POST /api/v1/namespaces/{super_ns}/configmaps"
    held = proxy.counts[key]
    proxy.inject(Fault.HOLD)
    await tenant.create(resources.CONFIGMAPS, {"metadata": {"name": name}, "data": {"k": name}}, namespace="drain")
    with trio.fail_after(60):
        await proxy.wait_count(key, held + 1)


async def _waiting_for_writes(app: Appliance) -> bool:
    """The appliance logged that it waits for at least one write in flight."""
    return re.search(r"waiting up to \d+ s for [1-9]\d* writes in flight", app.log.read_text(errors="replace")) is not None


async def test_sigterm_lets_writes_in_flight_finish_and_a_second_signal_stops_at_once(
    super_cluster: SuperCluster, tenant_factory: TenantFactory, nursery: trio.Nursery, tmp_path: Path,
    tally: Tally,
) -> None:
    sc, run = super_cluster, uuid.uuid4().hex[:8]
    await syncing.apply_crds(sc)
    proxy = await open_fault_proxy(nursery, upstream_url=sc.url, pki_dir=sc.pki_dir)
    via_proxy = proxy.kubeconfig(tmp_path / "proxy.kubeconfig")
    cp = await tenant_factory("drain")
    extra = f'tenant-selector = "graceful={run}"\n'
    data_dir = tmp_path / "data"
    async with syncing.super_client(sc) as superc, \
            open_client(await kcreds.load_kubeconfig(cp.admin_kubeconfig)) as tenant:
        ns = f"graceful-{run}"
        await superc.create(resources.NAMESPACES, {"metadata": {"name": ns}})
        vc = await superc.create(resources.VIRTUALCLUSTERS, {
            "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
            "metadata": {"name": "drain", "namespace": ns, "labels": {"graceful": run}, "annotations": {
                "tenancy.x-k8s.io/provisioner": "import",
                "tenancy.x-k8s.io/admin-kubeconfig": base64.b64encode(cp.admin_kubeconfig.read_bytes()).decode()}},
            "spec": {"clusterVersionName": "imported"},
        }, namespace=ns)
        try:
            async with running(sc, tmp_path, extra=extra, data_dir=data_dir, super_kubeconfig=via_proxy,
                               graceful_timeout=GRACE) as app:
                await syncing.tenant_namespace(syncing.BedTenant(cp=cp, vc=vc, id=TenantId.from_vc(vc),
                                                                    client=tenant), "drain")
                live = await superc.get(resources.VIRTUALCLUSTERS, "drain", namespace=ns)
                key = TenantId.from_vc(live).key
                super_ns = naming.super_namespace(key, "drain")
                await syncing.wait_object(superc, resources.NAMESPACES, super_ns, what="the synced namespace",
                                          timeout=120)

                await _write_in_flight(proxy, tenant, super_ns, "first")
                app.proc.send_signal(signal.SIGTERM)
                await wait_for(lambda: _waiting_for_writes(app), timeout=20,
                               what="the appliance to wait for its writes in flight")
                assert app.proc.returncode is None, "it exited with a write in flight"
                assert not await app.ready(), "/readyz must fail while stopping"
                proxy.release()
                with trio.fail_after(30):
                    code = await app.proc.wait()
                assert code == 0
                assert await _log_has(app, "work in progress finished")
                await syncing.wait_object(superc, resources.CONFIGMAPS, "first", namespace=super_ns,
                                          what="the write that was in flight at SIGTERM")

            async with running(sc, tmp_path, extra=extra, data_dir=data_dir, super_kubeconfig=via_proxy,
                               graceful_timeout=GRACE) as app:
                await _write_in_flight(proxy, tenant, super_ns, "second")
                app.proc.send_signal(signal.SIGTERM)
                await wait_for(lambda: _waiting_for_writes(app), timeout=20,
                               what="the appliance to wait for its writes in flight")
                signalled = trio.current_time()
                app.proc.send_signal(signal.SIGTERM)
                with trio.fail_after(15):  # far less than GRACE: it did not wait for the held write
                    code = await app.proc.wait()
                print(f"\nsecond SIGTERM: exited after {trio.current_time() - signalled:.1f} s")
                assert await _log_has(app, "again: stopping now")
                tally.add("stop: SIGTERM with a write in flight (finished; 2nd signal: cut at once)", tried=2, held=2)
        finally:
            proxy.release()
            with trio.move_on_after(20, shield=True):  # the manager is gone: its finalizer goes by hand
                await superc.patch(resources.VIRTUALCLUSTERS, "drain", {"metadata": {"finalizers": None}},
                                   namespace=ns)
                await syncing.forget_vc(superc, vc)
