"""A control plane started again on its state directory, on a new port (what `vc-appliance dev up`
after `dev down`, or a host reboot, does with the local super cluster)."""

from __future__ import annotations

from pathlib import Path

import trio
import yaml

from appliance.controlplane import cluster
from appliance.kube import creds, errors, resources
from appliance.kube.client import open_client
from tests.testbed import SuperCluster, wait_for


async def test_restart_on_a_new_port_updates_the_kept_kubeconfigs(
    super_cluster: SuperCluster, tmp_path: Path,
) -> None:
    """The kubeconfigs kept from the first start name the new port, so the controller manager
    (and kwok, and anyone using admin.kubeconfig) reach the restarted apiserver."""
    prefix = f"/restart-test/{tmp_path.name}/registry"
    with trio.fail_after(180):
        ports = []
        for start in range(2):
            async with trio.open_nursery() as nursery:
                cp = await cluster.start_control_plane(
                    nursery, super_cluster.bins, name="again", etcd_url=super_cluster.etcd_url,
                    state_dir=tmp_path, etcd_prefix=prefix, controller_manager=True,
                )
                ports.append(cp.port)
                for name in ("admin", "controller-manager", "scheduler"):
                    doc = yaml.safe_load((cp.pki_dir / f"{name}.kubeconfig").read_bytes())
                    assert doc["clusters"][0]["cluster"]["server"] == cp.url, name
                # The KCM, configured only by its kubeconfig, gives a new namespace its service account.
                async with open_client(await creds.load_kubeconfig(cp.admin_kubeconfig)) as client:
                    ns = f"ns-{start}"
                    await client.create(resources.NAMESPACES, {"metadata": {"name": ns}})

                    async def has_account(ns: str = ns) -> bool:
                        try:
                            return bool(await client.get(resources.SERVICEACCOUNTS, "default", namespace=ns))
                        except errors.NotFound:
                            return False

                    await wait_for(has_account, timeout=90, what=f"service account {ns}/default")
                nursery.cancel_scope.cancel()
        assert ports[0] != ports[1]
