"""Tenants on the shared etcd cannot reach each other's keys (issue 14, item 2).

The threat: a compromised or misconfigured tenant apiserver. Its etcd credentials are taken
from its real command line, and a second kube-apiserver (the "impostor") is started with them
but with another tenant's `--etcd-prefix`: etcd must refuse it. etcd's JSON gateway and a
client without a certificate are refused too, and the tenant's etcd user goes with the tenant.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from appliance.controlplane import cluster, components, process
from appliance.kube import resources
from appliance.kube.client import open_client
from appliance.manager import etcdgateway, model
from appliance.pki import kubeconfig
from tests.integration import manager_harness as common
from tests.integration.manager_harness import Harness
from tests.tally import Tally
from tests.testbed import SuperCluster, wait_for

ETCD_FLAGS = ("etcd-servers", "etcd-cafile", "etcd-certfile", "etcd-keyfile")


@pytest.fixture
async def harness(super_cluster: SuperCluster, nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Harness]:
    """The manager test harness (see manager_harness)."""
    async with common.open_harness(super_cluster, nursery, tmp_path) as h:
        yield h


def _apiserver_etcd_flags(h: Harness, key: str) -> dict[str, str]:
    """The etcd flags of the tenant's running kube-apiserver, read from its command line."""
    pid = int((h.data_dir / "tenants" / key / "logs" / "kube-apiserver.pid").read_text().split()[0])
    argv = process.cmdline(pid)
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    return {k: v for k, v in flags.items() if k in ETCD_FLAGS}


async def _impostor(h: Harness, workdir: Path, *, etcd_flags: dict[str, str], prefix: str) -> object:
    """Run kube-apiserver with `etcd_flags` on `prefix`; "denied" once etcd refuses it, else what it serves."""
    port = cluster.free_port()
    url = kubeconfig.server_url(cluster.LOOPBACK, port)
    pki_dir = workdir / "pki"
    pki = await trio.to_thread.run_sync(lambda: cluster.generate_pki(name="impostor"))
    await trio.to_thread.run_sync(lambda: cluster.write_pki(pki, pki_dir, server=url, cluster_name="impostor"))
    ctx = await trio.to_thread.run_sync(cluster.admin_ssl_context, pki_dir)
    flags = components.ApiServerFlags(
        etcd_servers=etcd_flags["etcd-servers"], etcd_prefix=prefix, port=port, pki_dir=pki_dir,
        extra={k: v for k, v in etcd_flags.items() if k != "etcd-servers"},
    )
    log = workdir / "kube-apiserver.log"
    with open(log, "wb") as out:
        proc = await trio.lowlevel.open_process(
            components.apiserver_argv(h.sc.bins, flags), stdout=out, stderr=out,
            env=dict(os.environ, GOMAXPROCS="2"))
    try:
        async with httpx.AsyncClient(base_url=url, verify=ctx, trust_env=False, timeout=5) as client:

            async def outcome() -> object:
                if b"PermissionDenied" in log.read_bytes():
                    return "denied"
                try:
                    r = await client.get("/api/v1/namespaces")
                except httpx.HTTPError:
                    return None
                return [n["metadata"]["name"] for n in r.json()["items"]] if r.status_code == 200 else None

            return await wait_for(outcome, timeout=90, what="etcd refuses the impostor, or it serves")
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.security
async def test_a_tenants_etcd_credentials_cannot_read_another_tenants_keys(
    harness: Harness, tmp_path: Path, tally: Tally,
) -> None:
    """An apiserver with tenant A's etcd credentials is refused on B's prefix; the gateway and
    certificate-less clients are refused; deleting A removes its etcd user, not B's."""
    h = harness
    await h.start_manager()
    cv = await h.create_cv(provisioner="process")
    await h.create_vc("iso-a", cv=cv)
    await h.create_vc("iso-b", cv=cv)
    vc_a = await h.wait_phase("iso-a", model.RUNNING, within=120)
    vc_b = await h.wait_phase("iso-b", model.RUNNING, within=120)
    key_a, key_b = vc_a["status"]["clusterNamespace"], vc_b["status"]["clusterNamespace"]
    _, creds_a = await h.admin_client("iso-a")
    _, creds_b = await h.admin_client("iso-b")
    async with open_client(creds_b) as b:
        await b.create(resources.NAMESPACES, {"metadata": {"name": "only-in-b"}})
    async with open_client(creds_a) as a:  # A reads and writes its own prefix
        await a.create(resources.NAMESPACES, {"metadata": {"name": "only-in-a"}})
        assert (await a.get(resources.NAMESPACES, "only-in-a"))["metadata"]["name"] == "only-in-a"

    etcd_flags = _apiserver_etcd_flags(h, key_a)
    served = await _impostor(h, tmp_path / "impostor", etcd_flags=etcd_flags, prefix=f"/tenants/{key_b}/registry")
    assert served == "denied", f"an apiserver with tenant A's etcd credentials read tenant B's namespaces: {served}"

    # etcd's JSON gateway does not take a certificate's CN as the user: refused outright.
    ctx_a = ssl.create_default_context(cafile=etcd_flags["etcd-cafile"])
    ctx_a.load_cert_chain(etcd_flags["etcd-certfile"], etcd_flags["etcd-keyfile"])
    body = etcdgateway.prefix_range(f"/tenants/{key_b}/")
    async with httpx.AsyncClient(verify=ctx_a, trust_env=False, timeout=10) as gw:
        r = await gw.post(f"{etcd_flags['etcd-servers']}/v3/kv/range", json=body)
    assert r.status_code != 200 and "kvs" not in r.text, r.text
    # Without a client certificate the TLS handshake fails.
    bare = ssl.create_default_context(cafile=etcd_flags["etcd-cafile"])
    async with httpx.AsyncClient(verify=bare, trust_env=False, timeout=10) as gw:
        with pytest.raises(httpx.TransportError):
            await gw.post(f"{etcd_flags['etcd-servers']}/v3/kv/range", json=body)

    user_a, user_b = etcdgateway.tenant_user(key_a), etcdgateway.tenant_user(key_b)
    async with common.open_shared_etcd(h.data_dir) as root:
        assert await root.user_exists(user_a) and await root.user_exists(user_b)
        # Certificate-only users: no empty password logs in as tenant B.
        with pytest.raises(etcdgateway.GatewayError, match="no password user"):
            await root.call("/v3/auth/authenticate", {"name": user_b, "password": ""})
    await h.delete_vc("iso-a")
    async with common.open_shared_etcd(h.data_dir) as root:
        assert not await root.user_exists(user_a)
        assert await root.count(f"/tenants/{key_a}/") == 0
        assert await root.user_exists(user_b)
        assert await root.count(f"/tenants/{key_b}/") > 0
    tally.add("etcd: another tenant's prefix with a tenant's credentials, gateway, no certificate, "
              "empty password (refused)", tried=4, held=4)
