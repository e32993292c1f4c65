"""A damaged data directory costs one tenant a restart of its processes, never its data.

Two process-mode VirtualClusters run; the appliance stops (their processes are kept); one
tenant's `plan.json` is torn and a private key of its is truncated, as after a power loss
mid-write. On restart that tenant is re-planned: its old processes are stopped, its
certificates restored from the root-namespace secrets, its objects (in etcd) still there.
The other tenant is adopted untouched (same pids).
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from appliance.controlplane import process
from appliance.kube import creds as kcreds
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient, open_client
from appliance.manager import pkisecrets
from appliance.pki import certs
from tests.e2e.appliance_proc import running
from tests.integration.syncing import apply_crds, super_client
from tests.testbed import SuperCluster, pid_alive, run_kubectl, wait_for

pytestmark = pytest.mark.security

VC = """
apiVersion: tenancy.x-k8s.io/v1alpha1
kind: VirtualCluster
metadata: {{name: {name}, namespace: {ns}, labels: {{e2e: "{run}"}}}}
spec: {{clusterVersionName: {cv}, pkiExpireDays: 30}}
"""


def _pids(tdir: Path) -> set[int]:
    return {int(p.read_text().split()[0]) for p in tdir.rglob("*.pid")}


async def test_torn_plan_and_truncated_key_are_recovered_without_losing_data(
    tmp_path: Path, super_cluster: SuperCluster,
) -> None:
    sc, run = super_cluster, uuid.uuid4().hex[:8]
    ns, cv = f"dmg-{run}", f"cv-dmg-{run}"
    data_dir = tmp_path / "data"
    extra = f'tenant-selector = "e2e={run}"\n'
    try:
        async with super_client(sc) as superc:
            await _scenario(sc, superc, tmp_path, data_dir, ns=ns, cv=cv, run=run, extra=extra)
    finally:
        for d in {p.parent for p in data_dir.rglob("*.pid")}:
            process.kill_leftovers(d)


async def _scenario(sc: SuperCluster, superc: ApiClient, tmp_path: Path, data_dir: Path, *,
                    ns: str, cv: str, run: str, extra: str) -> None:
    kubectl = sc.kubectl
    await apply_crds(sc)  # the objects are created before the appliance would install the CRDs
    await run_kubectl(kubectl, sc.kubeconfig, "create", "namespace", ns)
    await run_kubectl(kubectl, sc.kubeconfig, "apply", "-f", "-", stdin=(
        f"apiVersion: tenancy.x-k8s.io/v1alpha1\nkind: ClusterVersion\nmetadata: {{name: {cv}}}\nspec: {{}}\n"
    ).encode())
    for name in ("bad", "good"):
        await run_kubectl(kubectl, sc.kubeconfig, "apply", "-f", "-",
                          stdin=VC.format(name=name, ns=ns, run=run, cv=cv).encode())

    async def key_of(name: str) -> str | None:
        vc = await superc.get(resources.VIRTUALCLUSTERS, name, namespace=ns)
        status = vc.get("status") or {}
        assert status.get("phase") != "Error", status
        return status.get("clusterNamespace") if status.get("phase") == "Running" else None

    async def tenant_creds(key: str) -> kcreds.Credentials:
        secret = await superc.get(resources.SECRETS, "admin-kubeconfig", namespace=key)
        return kcreds.parse_kubeconfig(base64.b64decode(secret["data"]["admin-kubeconfig"]))

    async with running(sc, tmp_path, extra=extra, data_dir=data_dir) as app:
        keys = {name: str(await wait_for(lambda name=name: key_of(name), timeout=180, what=f"{name} Running"))
                for name in ("bad", "good")}
        async with open_client(await tenant_creds(keys["bad"])) as tenant:
            await tenant.create(resources.CONFIGMAPS, {"metadata": {"name": "keep-me"}, "data": {"v": run}},
                                namespace="default")
        assert await app.stop() == 0

    bad_dir, good_dir = (data_dir / "tenants" / keys[n] for n in ("bad", "good"))
    bad_pids, good_pids = _pids(bad_dir), _pids(good_dir)
    assert bad_pids and good_pids and all(pid_alive(p) for p in bad_pids | good_pids)
    plan = bad_dir / "plan.json"
    plan.write_bytes(plan.read_bytes()[: len(plan.read_bytes()) // 2])  # a torn write
    key_file = bad_dir / "pki" / "apiserver.key"
    key_file.write_bytes(key_file.read_bytes()[:40])

    async with running(sc, tmp_path, extra=extra, data_dir=data_dir) as app:
        async def recovered() -> bool:
            if any(pid_alive(p) for p in bad_pids):  # until then the old apiserver may still answer
                return False
            try:
                async with open_client(await tenant_creds(keys["bad"]), timeout=5) as tenant:
                    cm = await tenant.get(resources.CONFIGMAPS, "keep-me", namespace="default")
            except (errors.KubeError, OSError):
                return False
            return bool(cm["data"]["v"] == run)

        await wait_for(recovered, timeout=180,
                       what="the unreadable plan's processes stopped and the tenant serving its old objects again")
        assert _pids(good_dir) == good_pids, "the healthy tenant must be adopted, not restarted"
        assert await key_of("bad") == keys["bad"] and await key_of("good") == keys["good"]
        restored = key_file.read_bytes()
        assert key_file.stat().st_mode & 0o777 == 0o600
        cert = (bad_dir / "pki" / "apiserver.crt").read_bytes()
        pair = certs.CertKey(cert, restored)
        assert pkisecrets.usable(pkisecrets.TenantPKI(  # the restored key matches its certificate
            root_ca=pair, apiserver=pair, etcd=pair, front_proxy=pair, controller_manager=pair, admin=pair,
            kubelet_client=pair, service_account_key_pem=restored))
        assert json.loads(plan.read_bytes())["vc_name"] == "bad"
        log = app.log.read_text()
        assert f"VirtualCluster {ns}/bad: {plan} is unreadable" in log
        assert f"certificates in {bad_dir / 'pki'} are damaged" in log
        for name in ("bad", "good"):
            await run_kubectl(kubectl, sc.kubeconfig, "delete", "vc", name, "-n", ns, "--timeout=120s")
    await run_kubectl(kubectl, sc.kubeconfig, "delete", "namespace", ns, "--wait=false")
    await run_kubectl(kubectl, sc.kubeconfig, "delete", "clusterversion", cv, "--wait=false")
