"""The process provisioner end to end: real tenant kube-apiserver + KCM children, real kubectl."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.kube import creds, errors, resources
from appliance.kube.client import open_client
from appliance.manager import model
from appliance.util import naming
from tests.integration import manager_harness as common
from tests.integration.manager_harness import Harness
from tests.testbed import SuperCluster, run_kubectl, wait_for

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
"""


@pytest.fixture
async def harness(super_cluster: SuperCluster, nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Harness]:
    """The manager test harness (see manager_harness)."""
    async with common.open_harness(super_cluster, nursery, tmp_path) as h:
        yield h


async def _serves(credentials: creds.Credentials) -> bool:
    """Wait until the apiserver behind `credentials` answers /version."""

    async def answers() -> bool:
        try:
            async with open_client(credentials, timeout=5) as c:
                await c.server_version()
        except errors.KubeError:
            return False
        return True

    await wait_for(answers, timeout=60, what=f"{credentials.server} answers")
    return True


async def _wait_default_service_account(credentials: creds.Credentials) -> None:
    async with open_client(credentials) as c:

        async def exists() -> bool:
            try:
                await c.get(resources.SERVICEACCOUNTS, "default", namespace="default")
            except errors.NotFound:
                return False
            return True

        await wait_for(exists, timeout=60, what="the tenant KCM creates default/default")


def _status(vc: dict[str, Any]) -> dict[str, Any]:
    return vc.get("status") or {}


def _condition(vc: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in _status(vc).get("conditions", []) if c["type"] == type_), None)


async def _kubectl(h: Harness, kubeconfig: Path, *args: str, stdin: bytes | None = None) -> str:
    return (await run_kubectl(h.sc.kubectl, kubeconfig, *args, stdin=stdin)).stdout


async def test_process_vc_runs_and_its_admin_kubeconfig_works_with_kubectl(harness: Harness, tmp_path: Path) -> None:
    """A process-mode VC reaches Running and its tenant runs Deployments through its own KCM."""
    h = harness
    await h.start_manager()
    cv = await h.create_cv(provisioner="process")
    started = time.monotonic()
    await h.create_vc("alpha", cv=cv, pkiExpireDays=30)
    vc = await h.wait_phase("alpha", model.RUNNING, within=60)
    elapsed = time.monotonic() - started
    print(f"\nprocess-mode VirtualCluster created -> Running in {elapsed:.1f} s")
    status = _status(vc)
    key = status["clusterNamespace"]
    assert vc["metadata"]["finalizers"] == ["virtualcluster.finalizer.process"]
    assert status["reason"] == model.REASON_RUNNING
    assert status["provisioner"] == "process"
    assert _condition(vc, model.COND_READY)["status"] == "True"  # type: ignore[index]

    root = await h.client.get(resources.NAMESPACES, key)
    assert root["metadata"]["annotations"] == {
        "tenancy.x-k8s.io/vcname": "alpha", "tenancy.x-k8s.io/vcnamespace": h.ns,
        "tenancy.x-k8s.io/vcuid": vc["metadata"]["uid"], "tenancy.x-k8s.io/vcrootns": "true",
    }
    secrets = {s["metadata"]["name"] for s in (await h.client.list(resources.SECRETS, namespace=key)).items}
    assert {"root-ca", "apiserver-ca", "etcd-ca", "front-proxy-ca", "controller-manager-kubeconfig",
            "admin-kubeconfig", "serviceaccount-rsa", "kubelet-client"} <= secrets

    data, _ = await h.admin_client("alpha")
    kubeconfig = tmp_path / "alpha.kubeconfig"
    kubeconfig.write_bytes(data)
    await _kubectl(h, kubeconfig, "create", "namespace", "shop")

    async def default_sa() -> bool:
        out = await run_kubectl(h.sc.kubectl, kubeconfig, "-n", "shop", "get", "sa", "default", check=False)
        return out.returncode == 0

    await wait_for(default_sa, timeout=60, what="tenant KCM creates the default ServiceAccount")
    await _kubectl(h, kubeconfig, "apply", "-f", "-", stdin=DEPLOYMENT.encode())

    async def pods() -> list[dict[str, Any]]:
        out = await _kubectl(h, kubeconfig, "-n", "shop", "get", "pods", "-l", "app=web", "-o", "json")
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items if len(items) == 2 else []

    found = await wait_for(pods, timeout=60, what="tenant KCM creates the ReplicaSet's two Pods")
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet" for p in found)  # type: ignore[attr-defined]
    # The tenant's objects are not in the super cluster (no syncer runs here).
    out = await _kubectl(h, h.sc.kubeconfig, "get", "namespace", "shop", "--ignore-not-found")
    assert out.strip() == ""


async def test_crashed_tenant_process_is_restarted_and_reported(harness: Harness) -> None:
    """Killing a (dedicated-etcd) tenant's kube-apiserver restarts it, reported in a condition and an Event."""
    h = harness
    await h.start_manager()
    cv = await h.create_cv(provisioner="process")
    await h.create_vc("crashy", cv=cv, annotations={"tenancy.x-k8s.io/etcd": "dedicated"})
    vc = await h.wait_phase("crashy", model.RUNNING, within=60)
    key = _status(vc)["clusterNamespace"]
    assert set(_pids(h, key)) == {"etcd", "kube-apiserver", "kube-controller-manager"}  # its own etcd
    assert not (h.data_dir / "etcd").exists(), "a dedicated-etcd tenant does not start the shared etcd"
    pid = int((h.data_dir / "tenants" / key / "logs" / "kube-apiserver.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    vc = await h.wait_vc(
        "crashy",
        lambda v: (c := _condition(v, model.COND_HEALTHY)) is not None
        and c["reason"] == model.REASON_PROCESS_RESTARTED,
        what="ControlPlaneHealthy reports the restart", within=60,
    )
    assert "kube-apiserver restarted 1 time(s), last exit code -9" in _condition(  # type: ignore[index]
        vc, model.COND_HEALTHY)["message"]
    events = await h.events("crashy")
    assert any(e["reason"] == model.REASON_PROCESS_RESTARTED and "kube-apiserver" in e["message"] for e in events)
    # The restarted apiserver serves again with the same credentials.
    _, credentials = await h.admin_client("crashy")
    assert await _serves(credentials)


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text().lower()


def _pids(h: Harness, key: str) -> dict[str, int]:
    logs = h.data_dir / "tenants" / key / "logs"
    return {p.stem: int(p.read_text().split()[0]) for p in logs.glob("*.pid")}


async def _etcd_keys(h: Harness, prefix: str) -> int:
    """How many keys the shared etcd holds under `prefix` (read as its root user)."""
    async with common.open_shared_etcd(h.data_dir) as gateway:
        return await gateway.count(prefix)


async def test_manager_restart_readopts_processes_without_new_certificates(harness: Harness) -> None:
    """With keep_control_planes, a restarted manager adopts the same pids and keeps the certificates."""
    h = harness
    await h.start_manager(keep_control_planes=True)
    cv = await h.create_cv(provisioner="process")
    await h.create_vc("keeper", cv=cv)
    vc = await h.wait_phase("keeper", model.RUNNING, within=60)
    key = _status(vc)["clusterNamespace"]
    _, credentials = await h.admin_client("keeper")
    await _wait_default_service_account(credentials)  # the KCM is past its start-up
    pids = _pids(h, key)
    assert set(pids) == {"kube-apiserver", "kube-controller-manager"}
    cert = (h.data_dir / "tenants" / key / "pki" / "apiserver.crt").read_bytes()
    secret_rv = (await h.client.get(resources.SECRETS, "apiserver-ca", namespace=key))["metadata"]["resourceVersion"]
    vc_rv = vc["metadata"]["resourceVersion"]

    await h.stop_manager()
    assert all(_alive(pid) for pid in pids.values()), "kept processes must survive the manager"
    assert await _serves(credentials)

    await h.start_manager(keep_control_planes=True)

    async def adopted() -> list[dict[str, Any]]:
        return [e for e in await h.events("keeper") if e["reason"] == "TenantControlPlaneAdopted"]

    event = (await wait_for(adopted, timeout=60, what="the new manager adopts the processes"))[0]  # type: ignore[index]
    assert f"kube-apiserver (pid {pids['kube-apiserver']})" in event["message"]
    assert f"kube-controller-manager (pid {pids['kube-controller-manager']})" in event["message"]
    # Prove the new manager supervises the adopted KCM: kill it and see it restarted.
    os.kill(pids["kube-controller-manager"], signal.SIGKILL)
    vc = await h.wait_vc(
        "keeper",
        lambda v: (c := _condition(v, model.COND_HEALTHY)) is not None
        and "kube-controller-manager restarted 1 time(s)" in c["message"],
        what="the adopted KCM is restarted by the new manager", within=60,
    )
    after = _pids(h, key)
    assert after["kube-apiserver"] == pids["kube-apiserver"]
    assert after["kube-controller-manager"] != pids["kube-controller-manager"]
    assert (h.data_dir / "tenants" / key / "pki" / "apiserver.crt").read_bytes() == cert
    secret = await h.client.get(resources.SECRETS, "apiserver-ca", namespace=key)
    assert secret["metadata"]["resourceVersion"] == secret_rv, "re-adoption must not rewrite the PKI"
    assert _status(vc)["phase"] == model.RUNNING
    assert vc["metadata"]["resourceVersion"] != vc_rv  # only the health condition changed


async def test_same_name_in_two_namespaces_is_isolated_and_deleted_alone(harness: Harness) -> None:
    """Two VCs named alike get their own keys and control planes; deleting one leaves no trace of it."""
    h = harness
    ns_b = await h.new_namespace()
    await h.start_manager()
    cv = await h.create_cv(provisioner="process")
    await h.create_vc("twin", cv=cv)
    await h.create_vc("twin", cv=cv, namespace=ns_b)
    vc_a = await h.wait_phase("twin", model.RUNNING, within=90)
    vc_b = await h.wait_phase("twin", model.RUNNING, namespace=ns_b, within=90)
    key_a, key_b = _status(vc_a)["clusterNamespace"], _status(vc_b)["clusterNamespace"]
    assert key_a != key_b
    _, creds_a = await h.admin_client("twin")
    _, creds_b = await h.admin_client("twin", ns_b)
    assert creds_a.server != creds_b.server

    async with open_client(creds_a) as a, open_client(creds_b) as b:
        await a.create(resources.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": "only-in-a"}})
        names_b = {n["metadata"]["name"] for n in (await b.list(resources.NAMESPACES)).items}
        assert "only-in-a" not in names_b
        # Each has a Service range of its own, registered in the super cluster, disjoint.
        ranges = []
        for key, tenant in ((key_a, a), (key_b, b)):
            own = await h.client.get(resources.SERVICECIDRS, naming.service_cidr_name(key))
            assert own["metadata"]["labels"][naming.LABEL_CLUSTER] == key
            net = ipaddress.ip_network(own["spec"]["cidrs"][0])
            api_ip = (await tenant.get(resources.SERVICES, "kubernetes", namespace="default"))["spec"]["clusterIP"]
            assert ipaddress.ip_address(api_ip) in net
            ranges.append(net)
        assert not ranges[0].overlaps(ranges[1])

    # Super namespaces as the syncer makes them (a syncer on the shared test bed may be first).
    for key, vc in ((key_a, vc_a), (key_b, vc_b)):
        with contextlib.suppress(errors.AlreadyExists):
            await h.client.create(resources.NAMESPACES, {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": f"{key}-default", "annotations": {
                    "tenancy.x-k8s.io/cluster": key, "tenancy.x-k8s.io/namespace": "default",
                    "tenancy.x-k8s.io/vcuid": vc["metadata"]["uid"]}},
            })
    pids_a = _pids(h, key_a)
    assert await _etcd_keys(h, f"/tenants/{key_a}/") > 0

    await h.delete_vc("twin")
    assert not any(_alive(pid) for pid in pids_a.values())
    assert not (h.data_dir / "tenants" / key_a).exists()
    assert await _etcd_keys(h, f"/tenants/{key_a}/") == 0
    names = {n["metadata"]["name"] for n in (await h.client.list(resources.NAMESPACES)).items}
    assert key_a not in names
    assert f"{key_a}-default" not in names
    assert key_b in names
    assert f"{key_b}-default" in names

    # Released: deleted, or being deleted. The super cluster keeps a ServiceCIDR until no Service
    # holds one of its addresses, and on a shared bed another test's Service may (the super
    # allocator picks a random ServiceCIDR for Services without an explicit address).
    try:
        released = await h.client.get(resources.SERVICECIDRS, naming.service_cidr_name(key_a))
        assert released["metadata"].get("deletionTimestamp")
    except errors.NotFound:
        pass
    await h.client.get(resources.SERVICECIDRS, naming.service_cidr_name(key_b))
    assert (h.data_dir / "tenants" / key_b / "plan.json").exists()
    assert await _etcd_keys(h, f"/tenants/{key_b}/") > 0
    async with open_client(creds_b) as b:
        assert (await b.get(resources.NAMESPACES, "default"))["metadata"]["name"] == "default"
    with contextlib.suppress(errors.NotFound):
        await h.client.delete(resources.NAMESPACES, f"{key_b}-default")


async def test_tenant_deleted_while_manager_is_down_is_collected_on_start(harness: Harness) -> None:
    """A VC force-deleted while the manager was down leaves no processes or files after the next start."""
    h = harness
    await h.start_manager(keep_control_planes=True)
    cv = await h.create_cv(provisioner="process")
    await h.create_vc("orphan", cv=cv)
    vc = await h.wait_phase("orphan", model.RUNNING, within=60)
    key = _status(vc)["clusterNamespace"]
    pids = _pids(h, key)
    await h.stop_manager()
    await h.client.patch(resources.VIRTUALCLUSTERS, "orphan", {"metadata": {"finalizers": None}}, namespace=h.ns)
    await h.delete_vc("orphan")
    assert all(_alive(pid) for pid in pids.values())

    await h.start_manager(keep_control_planes=True)

    async def collected() -> bool:
        return not (h.data_dir / "tenants" / key).exists()

    await wait_for(collected, timeout=60, what="the orphaned tenant directory is removed")
    assert not any(_alive(pid) for pid in pids.values())


def _cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


async def test_changed_cluster_version_is_rolled_out_one_process_at_a_time_and_rolled_back(
    harness: Harness, tmp_path: Path,
) -> None:
    """A Running tenant gets a changed ClusterVersion (a flag, then another binary through a VC that
    switches ClusterVersion): only the changed process is replaced, the status says so; a binary
    that never becomes ready is rolled back, and the tenant keeps serving on the previous one."""
    h = harness
    await h.start_manager()
    cv = await h.create_cv(provisioner="process")
    await h.create_vc("roll", cv=cv)
    vc = await h.wait_phase("roll", model.RUNNING, within=60)
    key = _status(vc)["clusterNamespace"]
    _, credentials = await h.admin_client("roll")
    await _wait_default_service_account(credentials)
    before = _pids(h, key)

    def rolled(reason: str, *words: str) -> Callable[[dict[str, Any]], bool]:
        def check(v: dict[str, Any]) -> bool:
            c = _condition(v, model.COND_ROLLOUT)
            return c is not None and c["reason"] == reason and all(w in c["message"] for w in words)
        return check

    # 1. A flag of the apiserver: it alone is replaced.
    await h.client.patch(resources.CLUSTERVERSIONS, cv, {"spec": {"process": {"apiServer": {
        "watchCacheSizes": "events#0"}}}})
    await h.wait_vc("roll", rolled(model.REASON_ROLLED_OUT, "kube-apiserver"), what="the flag rolled out")
    after = _pids(h, key)
    assert after["kube-apiserver"] != before["kube-apiserver"]
    assert after["kube-controller-manager"] == before["kube-controller-manager"], "KCM did not change"
    assert "--watch-cache-sizes=events#0" in _cmdline(after["kube-apiserver"])
    assert await _serves(credentials)

    # 2. The VC moves to a ClusterVersion whose KCM is another binary (the same program elsewhere).
    other = tmp_path / "other-bin"
    other.mkdir()
    (other / "kube-controller-manager").symlink_to(h.sc.bins.path("kube-controller-manager"))
    cv2 = await h.create_cv({"process": {"apiServer": {"watchCacheSizes": "events#0"}, "controllerManager": {
        "binary": str(other / "kube-controller-manager")}}}, provisioner="process")
    await h.client.patch(resources.VIRTUALCLUSTERS, "roll", {"spec": {"clusterVersionName": cv2}}, namespace=h.ns)
    await h.wait_vc("roll", rolled(model.REASON_ROLLED_OUT, "kube-controller-manager"), what="the binary rolled out")
    moved = _pids(h, key)
    assert moved["kube-apiserver"] == after["kube-apiserver"]
    assert _cmdline(moved["kube-controller-manager"])[0] == str(other / "kube-controller-manager")
    await _create_namespace(credentials, "after-kcm-roll")
    await _wait_sa(credentials, "after-kcm-roll")  # the new KCM works

    # 3. An apiserver binary that never gets ready: rolled back, reported, the tenant still serves.
    broken = other / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'unsupported storage version' >&2\nexit 1\n")
    broken.chmod(0o755)
    await h.client.patch(resources.CLUSTERVERSIONS, cv2, {"spec": {"process": {"apiServer": {"binary": str(broken)}}}})
    vc = await h.wait_vc("roll", rolled(model.REASON_ROLLED_BACK, "kube-apiserver", "unsupported storage version"),
                         what="the broken apiserver rolled back", within=120)
    assert _condition(vc, model.COND_ROLLOUT)["status"] == "False"  # type: ignore[index]
    back = _pids(h, key)
    assert _cmdline(back["kube-apiserver"])[0] == str(h.sc.bins.path("kube-apiserver"))
    assert back["kube-controller-manager"] == moved["kube-controller-manager"]
    assert await _serves(credentials)
    assert _status(vc)["phase"] == model.RUNNING
    assert any(e["reason"] == model.REASON_ROLLED_BACK for e in await h.events("roll"))

    # Undoing the change is "up to date" again, with nothing restarted.
    await h.client.patch(resources.CLUSTERVERSIONS, cv2, {"spec": {"process": {"apiServer": {"binary": None}}}})
    await h.wait_vc("roll", rolled(model.REASON_UP_TO_DATE), what="up to date after the undo")
    assert _pids(h, key) == back


async def _create_namespace(credentials: creds.Credentials, name: str) -> None:
    async with open_client(credentials) as c:
        await c.create(resources.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


async def _wait_sa(credentials: creds.Credentials, namespace: str) -> None:
    async with open_client(credentials) as c:
        async def exists() -> bool:
            try:
                await c.get(resources.SERVICEACCOUNTS, "default", namespace=namespace)
            except errors.NotFound:
                return False
            return True

        await wait_for(exists, timeout=60, what=f"the tenant KCM creates {namespace}/default")
