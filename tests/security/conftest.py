"""Fixtures of the isolation and security suite.

Every test of the suite (marker `security`, here and elsewhere) records what it tried in the
session's `Tally` (`tests/tally.py`; the fixture and the printed summary are in tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from appliance.kube import creds as kcreds
from appliance.kube import resources
from appliance.kube.client import open_client
from appliance.pki import kubeconfig
from appliance.syncer import runtime
from appliance.syncer.tenant import TenantId
from appliance.util import private
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory

ROLE = Path(__file__).resolve().parents[2] / "configs" / "rbac.yaml"


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


async def keyed_tenant(env: syncing.Env, sx: runtime.Syncer, name: str, *, key: str) -> syncing.BedTenant:
    """A tenant served by `sx` whose cluster key is `key` (its VC's `status.clusterNamespace`),
    so a test can build the name collisions a prefix rule allows."""
    cp = await env.make(name, controller_manager=True, virtual_nodes=True)
    vc = await syncing.register_vc(env.superc, cp, kubeconfig=False)
    meta = vc["metadata"]
    vc = await env.superc.patch(resources.VIRTUALCLUSTERS, meta["name"], {"status": {"clusterNamespace": key}},
                                namespace=meta["namespace"], subresource="status")
    env.stack.push_async_callback(syncing.forget_vc, env.superc, vc)
    client = await env.stack.enter_async_context(open_client(await kcreds.load_kubeconfig(cp.admin_kubeconfig)))
    t = syncing.BedTenant(cp=cp, vc=vc, id=TenantId.from_vc(vc), client=client)
    assert key == t.key
    await env.serve(sx, t)
    return t


@dataclasses.dataclass(frozen=True, slots=True)
class RoleIdentity:
    """A super-cluster identity bound to nothing but the shipped `vc-appliance` ClusterRole."""

    kubeconfig: Path
    token: str
    user: str  # system:serviceaccount:<ns>:<name>


@pytest.fixture(scope="session")
def appliance_identity(super_cluster: SuperCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoleIdentity]:
    """Apply configs/rbac.yaml with real kubectl, bind it to a fresh ServiceAccount, and write a
    kubeconfig with a TokenRequest token for it and the super cluster's CA (mode 0600)."""
    sc = super_cluster
    ns, name = f"vc-appliance-sec-{uuid.uuid4().hex[:6]}", "vc-appliance"

    def kubectl(*args: str, stdin: str | None = None) -> str:
        return subprocess.run([str(sc.kubectl), f"--kubeconfig={sc.kubeconfig}", *args], input=stdin,
                              capture_output=True, text=True, check=True, timeout=60).stdout

    kubectl("apply", "-f", str(ROLE))
    kubectl("create", "namespace", ns)
    try:
        kubectl("create", "serviceaccount", name, "-n", ns)
        kubectl("create", "clusterrolebinding", ns, "--clusterrole=vc-appliance", f"--serviceaccount={ns}:{name}")
        token = kubectl("create", "token", name, "-n", ns, "--duration=2h").strip()
        path = tmp_path_factory.mktemp("rbac") / "appliance.kubeconfig"
        private.write_file(path, kubeconfig.render(
            cluster_name="super", server=sc.url, ca_pem=(sc.pki_dir / "ca.crt").read_bytes(), user=name, token=token))
        yield RoleIdentity(path, token, f"system:serviceaccount:{ns}:{name}")
    finally:
        subprocess.run([str(sc.kubectl), f"--kubeconfig={sc.kubeconfig}", "delete", "clusterrolebinding", ns,
                        "--ignore-not-found"], capture_output=True, timeout=60, check=False)
        subprocess.run([str(sc.kubectl), f"--kubeconfig={sc.kubeconfig}", "delete", "namespace", ns, "--wait=false"],
                       capture_output=True, timeout=60, check=False)
