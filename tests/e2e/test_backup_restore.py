"""`vc-appliance backup` and `restore` through the real process: a tenant with objects is backed up,
deleted (its data really gone), restored under its own name and as a new VirtualCluster."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.controlplane import process
from appliance.manager import backups, etcdgateway
from tests.e2e.appliance_proc import Appliance, running, wait_web_synced
from tests.testbed import SuperCluster, run_kubectl, tenancy_manifests, wait_for

TENANT_OBJECTS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop-app}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop-app}
data: {colour: blue}
---
apiVersion: v1
kind: Secret
metadata: {name: password, namespace: shop-app}
stringData: {password: hunter2}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop-app}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx
        envFrom: [{configMapRef: {name: settings}}, {secretRef: {name: password}}]
"""

#: (kind, namespace, name) of every object whose UID must survive; ReplicaSets are added at run
#: time. Pods are not among them: their super Pods are gone, so the syncer treats them as Pods of a
#: lost node (deleted, and their ReplicaSet makes new ones).
KEPT = [("namespace", "", "shop-app"), ("configmap", "shop-app", "settings"), ("secret", "shop-app", "password"),
        ("deployment", "shop-app", "web"), ("serviceaccount", "shop-app", "default")]



async def _vc(sc: SuperCluster, ns: str, name: str) -> dict[str, Any] | None:
    out = await run_kubectl(sc.kubectl, sc.kubeconfig, "get", "vc", name, "-n", ns, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


async def _wait_running(sc: SuperCluster, ns: str, name: str) -> str:
    async def key() -> str | None:
        vc = await _vc(sc, ns, name)
        status = (vc or {}).get("status", {})
        assert status.get("phase") != "Error", status
        return status.get("clusterNamespace") if status.get("phase") == "Running" else None

    return str(await wait_for(key, timeout=180, what=f"VirtualCluster {ns}/{name} Running"))


async def _admin_kubeconfig(app: Appliance, ref: str, path: Path) -> Path:
    rc, out, err = await app.cli("kubeconfig", ref)
    assert rc == 0, err
    await trio.Path(path).write_text(out)
    return path


async def _uids(sc: SuperCluster, tkc: Path) -> dict[tuple[str, str, str], str]:
    found = {}
    for kind, ns, name in KEPT:
        args = ["get", kind, name, "-o", "jsonpath={.metadata.uid}"] + (["-n", ns] if ns else [])
        found[(kind, ns, name)] = (await run_kubectl(sc.kubectl, tkc, *args)).stdout
    sets = json.loads((await run_kubectl(sc.kubectl, tkc, "get", "rs", "-n", "shop-app", "-o", "json")).stdout)
    for rs in sets["items"]:
        found[("replicaset", "shop-app", rs["metadata"]["name"])] = rs["metadata"]["uid"]
    return found


async def _prefix_keys(data_dir: Path, key: str) -> int:
    url, tls, password = await trio.to_thread.run_sync(backups.shared_root, data_dir)
    async with etcdgateway.open_gateway(url, tls=tls, password=password) as gateway:
        return await gateway.count(f"/tenants/{key}/")


@pytest.mark.parametrize("etcd", ["shared", "dedicated"])
async def test_backup_delete_restore_same_and_new_virtualcluster(
    tmp_path: Path, super_cluster: SuperCluster, etcd: str,
) -> None:
    """Objects, UIDs, Pods in the super cluster and the old admin kubeconfig all come back after a
    delete and restore; a copy under a new name has the objects with new certificates."""
    sc, run = super_cluster, uuid.uuid4().hex[:8]
    data_dir = tmp_path / "data"
    try:
        async with running(sc, tmp_path, extra=f'tenant-selector = "e2e={run}"\n', data_dir=data_dir) as app:
            await _scenario(sc, app, tmp_path, run=run, etcd=etcd)
    finally:  # kept processes (the shared etcd) outlive the appliance by design: stop them here
        for d in {p.parent for p in data_dir.rglob("*.pid")}:
            process.kill_leftovers(d)


async def _scenario(sc: SuperCluster, app: Appliance, tmp_path: Path, *, run: str, etcd: str) -> None:
    kubectl, skc = sc.kubectl, sc.kubeconfig
    ns, cv = f"e2e-br-{run}", f"cv-br-{run}"
    await run_kubectl(kubectl, skc, "create", "namespace", ns)
    await run_kubectl(kubectl, skc, "apply", "-f", "-", stdin=tenancy_manifests(
        cv=cv, name="shop", namespace=ns, labels={"e2e": run}, annotations={"tenancy.x-k8s.io/etcd": etcd}))
    old_key = await _wait_running(sc, ns, "shop")
    tkc = await _admin_kubeconfig(app, f"{ns}/shop", tmp_path / "shop.kubeconfig")
    await run_kubectl(kubectl, tkc, "apply", "-f", "-", stdin=TENANT_OBJECTS.encode())

    async def has_sa() -> bool:
        return (await run_kubectl(kubectl, tkc, "get", "sa", "default", "-n", "shop-app", check=False)).returncode == 0

    await wait_for(has_sa, timeout=60, what="service account shop-app/default")
    await wait_web_synced(sc, tkc, old_key, pods=2, namespace="shop-app", timeout=180)
    before = await _uids(sc, tkc)

    # Back up: a private file, and the command says what it took.
    archive_path = tmp_path / "backups" / "shop.tar.gz"
    rc, out, err = await app.cli("backup", f"{ns}/shop", str(archive_path))
    assert rc == 0, err
    assert "etcd keys" in out
    assert 0o600 == archive_path.stat().st_mode & 0o777

    # Restoring over the live tenant is refused without --force, and under another name without --new.
    rc, _, err = await app.cli("restore", f"{ns}/shop", str(archive_path))
    assert rc == 1 and "--force" in err, err
    rc, _, err = await app.cli("restore", f"{ns}/copy", str(archive_path))
    assert rc == 1 and "--new" in err, err

    # Delete it: processes, namespaces, etcd keys, directory are gone.
    await run_kubectl(kubectl, skc, "delete", "vc", "shop", "-n", ns, "--timeout=180s")
    assert not (app.data_dir / "tenants" / old_key).exists()
    if etcd == "shared":  # a dedicated etcd's data went with the tenant directory
        assert 0 == await _prefix_keys(app.data_dir, old_key)
    left = await run_kubectl(kubectl, skc, "get", "ns", "-o", "name")
    assert not [n for n in left.stdout.split() if n.startswith(f"namespace/{old_key}")]

    # Restore under its own name: same objects and UIDs, synced again, the old kubeconfig still works.
    rc, out, err = await app.cli("restore", f"{ns}/shop", str(archive_path))
    assert rc == 0, err
    assert "restored" in out
    new_key = await _wait_running(sc, ns, "shop")
    assert new_key != old_key  # a new object, a new UID: a new cluster key and etcd prefix
    assert before == await _uids(sc, tkc)
    await wait_web_synced(sc, tkc, new_key, pods=2, namespace="shop-app", timeout=180)
    data = await run_kubectl(kubectl, tkc, "get", "secret", "password", "-n", "shop-app",
                             "-o", "jsonpath={.data.password}")
    assert b"hunter2" == base64.b64decode(data.stdout)
    assert before == await _uids(sc, tkc), "the ReplicaSet made the new Pods, no new ReplicaSet"
    vc = await _vc(sc, ns, "shop")
    assert vc is not None
    conditions = {c["type"]: c for c in vc["status"]["conditions"]}
    assert "True" == conditions["Restored"]["status"]
    assert "tenancy.x-k8s.io/restore-from" not in vc["metadata"].get("annotations", {})
    assert not list((app.data_dir / "restores").iterdir()), "the staged archive must not stay on disk"
    events = await run_kubectl(kubectl, skc, "get", "events", "-n", ns, "--field-selector",
                               "involvedObject.name=shop,reason=RestoredFromBackup", "-o", "name")
    assert events.stdout.strip()

    # Restore as a new VirtualCluster next to it: the objects are there, with new certificates.
    rc, _, err = await app.cli("restore", f"{ns}/copy", str(archive_path), "--new")
    assert rc == 0, err
    copy_key = await _wait_running(sc, ns, "copy")
    ckc = await _admin_kubeconfig(app, f"{ns}/copy", tmp_path / "copy.kubeconfig")
    assert before == await _uids(sc, ckc)
    await wait_web_synced(sc, ckc, copy_key, pods=2, namespace="shop-app", timeout=180)
    assert ckc.read_text() != tkc.read_text()
    denied = await run_kubectl(kubectl, tkc, "--server", _server(ckc), "get", "ns", check=False)
    assert denied.returncode != 0, "the original's credentials must not open the copy"

    # --force replaces an existing tenant: the copy is deleted and made again from the backup.
    rc, out, err = await app.cli("restore", f"{ns}/copy", str(archive_path), "--new", "--force")
    assert rc == 0, err
    again = await _wait_running(sc, ns, "copy")
    assert again != copy_key
    ckc = await _admin_kubeconfig(app, f"{ns}/copy", tmp_path / "copy2.kubeconfig")
    assert before == await _uids(sc, ckc)

    for name in ("copy", "shop"):
        await run_kubectl(kubectl, skc, "delete", "vc", name, "-n", ns, "--timeout=180s")
    log = await trio.Path(app.log).read_bytes()
    assert b"PRIVATE KEY" not in log and b"hunter2" not in log, "no keys or Secret data in the appliance's log"


def _server(kubeconfig: Path) -> str:
    for line in kubeconfig.read_text().splitlines():
        if line.strip().startswith("server:"):
            return line.split("server:", 1)[1].strip()
    raise AssertionError(f"no server in {kubeconfig}")
