"""Backup and restore of process-mode tenants: the I/O around the pure `archive` format.

Backup (`take`, behind `vc-appliance backup` on the appliance host): the tenant's keys are read
from its etcd (the shared one as root, its prefix only; or its dedicated one) in pages at one
revision, which makes them a consistent snapshot; its PKI from the root-namespace secrets.

Restore has two halves, because a VirtualCluster's cluster key (and so its etcd prefix and root
namespace) comes from its UID, which exists only once the object does:

  1. `request_restore` (behind `vc-appliance restore`): refuses an existing target unless
     `force` (then deletes it and waits until the manager has cleaned it up), stages the archive
     as `<data_dir>/restores/<id>.tar.gz` with `<id>.json` naming the target and whether it
     keeps the backup's identity (0600), and creates the VirtualCluster from the backup's spec
     with annotation `tenancy.x-k8s.io/restore-from: <id>`.
  2. The process provisioner, before the tenant's apiserver first starts: `staged_for` reads
     the staged restore (only for the VirtualCluster it names), the plan keeps the backup's
     Service range (and apiserver port, when free), `load` writes the keys under the new
     prefix in transactions that never overwrite a key, and a marker in the tenant directory
     (`restore.json`: loading → done) makes a retried attempt redo a partial load instead of
     refusing it. Once Running, the staged files and the annotation are removed.

Identity: restored as the backup's own NAMESPACE/NAME, the tenant keeps its whole PKI, so old
kubeconfigs and service-account tokens stay valid. Restored under another name (`new`), it gets
a fresh PKI: two live tenants never share a CA (the kubelet proxy tells tenants apart by CA).
Nothing here logs keys, values or PKI.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from appliance.controlplane import build, cluster, ports
from appliance.controlplane.components import TLSFiles
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.manager import archive, etcd, etcdcreds, etcdgateway, model, pkisecrets, reconcile, rootns
from appliance.util import private, tenancy

#: pairs per range request, and per write transaction (etcd's default --max-txn-ops is 128)
PAGE: Final = 500
BATCH_OPS: Final = 100
#: bytes of values per write transaction (etcd's default --max-request-bytes is 1.5 MiB)
BATCH_BYTES: Final = 1 << 20
RESTORES_DIR: Final = "restores"
MARKER: Final = "restore.json"
#: `ManagedTenant.extra` key: the provisioner's note for the worker's `Restored` condition
EXTRA_RESTORED: Final = "restored"
_ID = re.compile(r"[0-9a-f]{32}")
_IGNORED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration", model.ANNOTATION_RESTORE_FROM)


class BackupError(Exception):
    """A backup or restore cannot be done; the message says why and what to do instead."""


# --- etcd ---------------------------------------------------------------------------------------


async def read_prefix(gateway: etcdgateway.Gateway, prefix: str) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Every pair under `prefix` at one revision (the first page's): (revision, pairs)."""
    pairs: list[tuple[bytes, bytes]] = []
    revision, after = 0, None
    while True:
        page, more, revision = await gateway.range_page(prefix, after=after, revision=revision, limit=PAGE)
        pairs.extend(page)
        if not more or not page:
            return revision, pairs
        after = page[-1][0]


def batches(pairs: Sequence[tuple[bytes, bytes]]) -> list[list[tuple[bytes, bytes]]]:
    """`pairs` cut into transactions of at most BATCH_OPS pairs and (but for one big value) BATCH_BYTES."""
    out: list[list[tuple[bytes, bytes]]] = []
    size = 0
    for pair in pairs:
        if not out or len(out[-1]) >= BATCH_OPS or (size + len(pair[1]) > BATCH_BYTES and out[-1]):
            out.append([])
            size = 0
        out[-1].append(pair)
        size += len(pair[1])
    return out


async def write_new(gateway: etcdgateway.Gateway, pairs: Sequence[tuple[bytes, bytes]]) -> None:
    """Write `pairs`, none of which may exist yet. Raises BackupError if one does."""
    for batch in batches(pairs):
        if not await gateway.put_absent(batch):
            raise BackupError("a key being restored already exists in etcd; nothing was overwritten")


# --- backup -------------------------------------------------------------------------------------


def _read_plan(tdir: Path) -> dict[str, Any] | None:
    try:
        plan: dict[str, Any] = json.loads((tdir / "plan.json").read_bytes())
    except (OSError, ValueError):
        return None
    return plan


def _pki_from_dir(pki_dir: Path) -> pkisecrets.TenantPKI | None:
    found = {}
    for name in pkisecrets.FILE_NAMES:
        try:
            found[name] = (pki_dir / name).read_bytes()
        except OSError:
            return None
    return pkisecrets.from_files(found)


def shared_root(data_dir: Path) -> tuple[str, Any, str]:
    """URL, TLS context and root password of the shared etcd (blocking: files). Raises BackupError."""
    creds = etcdcreds.SharedEtcdCreds(data_dir / "etcd" / "pki")
    try:
        client = int(json.loads((data_dir / "etcd" / "ports.json").read_text())["client"])
        return cluster.etcd_url(client, tls=True), cluster.client_ssl_context(creds.admin), creds.root_password()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"cannot read the shared etcd's settings in {data_dir / 'etcd'}: {exc}") from None


def dedicated_access(tdir: Path, client_port: int) -> tuple[str, Any]:
    """URL and TLS context of a tenant's own etcd (the apiserver's certificate; blocking)."""
    pki = tdir / "pki"
    try:
        ctx = cluster.client_ssl_context(TLSFiles(pki / "ca.crt", pki / "apiserver.crt", pki / "apiserver.key"))
    except OSError as exc:
        raise BackupError(f"cannot read the tenant's certificates in {pki}: {exc}") from None
    return cluster.etcd_url(client_port, tls=True), ctx


PKI_FILES: Final = tuple(n for n in pkisecrets.FILE_NAMES if not n.endswith(".kubeconfig"))


async def take(super_client: ApiClient, *, data_dir: Path, namespace: str, name: str, now: str) -> archive.Backup:
    """A consistent backup of process-mode VirtualCluster `namespace/name` served from `data_dir`.

    Raises BackupError (not found, not Running, not served here, etcd unreachable or compacted
    meanwhile); errors.KubeError from the super cluster.
    """
    try:
        obj = await super_client.get(resources.VIRTUALCLUSTERS, name, namespace=namespace)
    except errors.NotFound:
        raise BackupError(f"VirtualCluster {namespace}/{name} not found") from None
    vc = model.decode_vc(obj)
    if vc.status.provisioner != "process":
        raise BackupError(f"VirtualCluster {namespace}/{name} uses the {vc.status.provisioner or 'no'} provisioner; "
                          "backups cover process-mode tenants (a native tenant's etcd is a StatefulSet: back up "
                          "its volume; an imported cluster is backed up where it runs)")
    if vc.status.phase != model.RUNNING:
        raise BackupError(f"VirtualCluster {namespace}/{name} is {vc.status.phase or 'new'}, not Running")
    key = tenancy.ClusterKey(vc.status.cluster_namespace)
    tdir = data_dir / "tenants" / key
    plan = await trio.to_thread.run_sync(_read_plan, tdir)
    if plan is None or plan.get("vc_uid") != vc.metadata.uid:
        raise BackupError(f"{tdir} does not hold VirtualCluster {namespace}/{name}: run the backup on the host "
                          "of the appliance that serves it, with that appliance's --config (its data-dir)")
    stored = await rootns.read_secrets(super_client, key, pkisecrets.SECRET_NAMES)
    pki = pkisecrets.from_secrets(stored) or await trio.to_thread.run_sync(_pki_from_dir, tdir / "pki")
    if pki is None:
        raise BackupError(f"the PKI of {namespace}/{name} is incomplete in namespace {key} and in {tdir / 'pki'}")
    prefix = etcd.tenant_prefix(key)
    if plan.get("etcd_mode") == "dedicated":
        url, tls = await trio.to_thread.run_sync(dedicated_access, tdir, int(plan.get("etcd_client_port", 0)))
        password: str | None = None
    else:
        url, tls, password = await trio.to_thread.run_sync(shared_root, data_dir)
    try:
        async with etcdgateway.open_gateway(url, tls=tls, password=password) as gateway:
            revision, pairs = await read_prefix(gateway, prefix)
    except etcdgateway.GatewayError as exc:
        raise BackupError(f"reading the tenant's keys from etcd failed: {exc}") from None
    files = pkisecrets.files(pki, server="https://unused", cluster_name=name)
    manifest = archive.Manifest(
        created=now,
        virtual_cluster=archive.VcRecord(
            namespace=namespace, name=name, uid=vc.metadata.uid, labels=dict(vc.metadata.labels),
            annotations={k: v for k, v in vc.metadata.annotations.items() if k not in _IGNORED_ANNOTATIONS},
            spec=dict(obj.get("spec") or {})),
        cluster_key=key, etcd_prefix=prefix, etcd_mode=str(plan.get("etcd_mode", "shared")), etcd_revision=revision,
        service_cidr=str(plan.get("service_cidr", "")), apiserver_port=int(plan.get("port", 0)),
        kubernetes_version=build.KUBERNETES_VERSION,
    )
    return archive.Backup(manifest, archive.relative_pairs(prefix.encode(), pairs),
                          {n: files[n] for n in PKI_FILES})


# --- restore, first half: the command ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What a staged restore is for: only this VirtualCluster may consume it."""

    namespace: str
    name: str
    keep_identity: bool


def _stage(data_dir: Path, restore_id: str, data: bytes, target: Target) -> None:
    d = data_dir / RESTORES_DIR
    private.make_dir(d)
    private.write_file(d / f"{restore_id}.tar.gz", data)
    private.write_file(d / f"{restore_id}.json", json.dumps(
        {"namespace": target.namespace, "name": target.name, "keepIdentity": target.keep_identity}))


def discard_staged(data_dir: Path, restore_id: str) -> None:
    """Remove a staged restore (it holds keys and Secret data); blocking."""
    for suffix in (".tar.gz", ".json"):
        (data_dir / RESTORES_DIR / f"{restore_id}{suffix}").unlink(missing_ok=True)


def discard_abandoned(data_dir: Path, *, wanted: set[str], before: float) -> list[str]:
    """Remove staged restores that no VirtualCluster asks for (`wanted`) and that were staged
    before `before` (epoch seconds: the command stages, then creates its VirtualCluster); blocking.
    Returns their ids."""
    gone = []
    for path in sorted((data_dir / RESTORES_DIR).glob("*.json")):
        restore_id = path.stem
        try:
            if restore_id in wanted or path.stat().st_mtime >= before:
                continue
        except OSError:
            continue
        discard_staged(data_dir, restore_id)
        gone.append(restore_id)
    return gone


def vc_manifest(backup: archive.Backup, *, namespace: str, name: str, restore_id: str) -> dict[str, Any]:
    """The VirtualCluster a restore creates: the backup's labels, annotations and spec, plus the
    restore annotation and the provisioner and etcd mode the backup came from."""
    src, m = backup.manifest.virtual_cluster, backup.manifest
    annotations = {k: v for k, v in src.annotations.items() if k not in _IGNORED_ANNOTATIONS}
    annotations.update({model.ANNOTATION_RESTORE_FROM: restore_id, model.ANNOTATION_PROVISIONER: "process",
                        model.ANNOTATION_ETCD: m.etcd_mode})
    return {
        "apiVersion": resources.VIRTUALCLUSTERS.api_version, "kind": "VirtualCluster",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(src.labels), "annotations": annotations},
        "spec": src.spec,
    }


def check_target(backup: archive.Backup, *, namespace: str, name: str, new: bool) -> None:
    """Refuse a restore under another name without `new` (a typo must not make a second tenant)."""
    src = backup.manifest.virtual_cluster
    if (src.namespace, src.name) != (namespace, name) and not new:
        raise BackupError(f"the backup is of VirtualCluster {src.namespace}/{src.name}; restoring it as "
                          f"{namespace}/{name} makes another tenant: pass --new (it gets new certificates, "
                          "so the backup's kubeconfigs and service-account tokens do not work there)")


async def request_restore(
    super_client: ApiClient, *, data_dir: Path, data: bytes, namespace: str, name: str, new: bool, force: bool,
) -> archive.Backup:
    """Stage the archive `data` and create VirtualCluster `namespace/name` to be restored from it.

    Raises BackupError (a bad archive, the target exists without `force`, no such namespace);
    errors.KubeError. Cancellation: the caller's deadline bounds the wait for a forced delete.
    """
    try:
        backup = await trio.to_thread.run_sync(archive.parse, data)
    except archive.ArchiveError as exc:
        raise BackupError(f"not a usable backup: {exc}") from None
    check_target(backup, namespace=namespace, name=name, new=new)
    try:
        await super_client.get(resources.NAMESPACES, namespace)
    except errors.NotFound:
        raise BackupError(f"namespace {namespace} does not exist in the super cluster; create it first") from None
    try:
        old = await super_client.get(resources.VIRTUALCLUSTERS, name, namespace=namespace)
    except errors.NotFound:
        old = None
    if old is not None:
        status = model.decode_vc(old).status
        if not force:
            raise BackupError(f"VirtualCluster {namespace}/{name} exists ({status.phase or 'new'}, root namespace "
                              f"{status.cluster_namespace or 'none'}); a restore replaces it and all its data: "
                              "delete it first, or pass --force")
        await _delete_and_wait(super_client, namespace, name, old["metadata"]["uid"])
    restore_id = secrets.token_hex(16)
    target = Target(namespace, name, keep_identity=not new)
    await trio.to_thread.run_sync(_stage, data_dir, restore_id, data, target)
    try:
        await super_client.create(resources.VIRTUALCLUSTERS,
                                  vc_manifest(backup, namespace=namespace, name=name, restore_id=restore_id),
                                  namespace=namespace)
    except BaseException:
        await trio.to_thread.run_sync(discard_staged, data_dir, restore_id)
        raise
    return backup


async def _delete_and_wait(super_client: ApiClient, namespace: str, name: str, uid: str) -> None:
    try:
        await super_client.delete(resources.VIRTUALCLUSTERS, name, namespace=namespace, uid=uid)
    except errors.NotFound:
        return
    while True:
        try:
            obj = await super_client.get(resources.VIRTUALCLUSTERS, name, namespace=namespace)
        except errors.NotFound:
            return
        if obj["metadata"].get("uid") != uid:
            raise BackupError(f"VirtualCluster {namespace}/{name} was re-created by someone else meanwhile")
        await trio.sleep(1.0)


async def wait_restored(super_client: ApiClient, *, namespace: str, name: str) -> str:
    """Wait until the restored VirtualCluster is Running; return its `Restored` condition message.

    Raises BackupError when it goes to Error. Cancellation: the caller's deadline bounds it.
    """
    while True:
        try:
            vc = model.decode_vc(await super_client.get(resources.VIRTUALCLUSTERS, name, namespace=namespace))
        except errors.NotFound:
            raise BackupError(f"VirtualCluster {namespace}/{name} was deleted during the restore") from None
        if vc.status.phase == model.ERROR:
            raise BackupError(f"VirtualCluster {namespace}/{name} failed: {vc.status.reason}: {vc.status.message}")
        restored = vc.status.condition(model.COND_RESTORED)
        if vc.status.phase == model.RUNNING and restored is not None and restored.status == "True":
            return restored.message
        await trio.sleep(1.0)


# --- restore, second half: the process provisioner ---------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Staged:
    """A restore for one tenant; `pki` is None when it gets a new identity."""

    restore_id: str
    backup: archive.Backup
    pki: pkisecrets.TenantPKI | None

    def __repr__(self) -> str:
        return f"Staged({self.restore_id}, {self.backup!r})"

    def port(self, bind: str) -> int:
        """The backup's apiserver port if the tenant keeps its identity and the port is free, else 0."""
        port = self.backup.manifest.apiserver_port
        if self.pki is None or not port or ports.taken_by_stranger(bind, port, ours=()):
            return 0
        return port


def _read_marker(tdir: Path) -> dict[str, Any]:
    try:
        marker: dict[str, Any] = json.loads((tdir / MARKER).read_bytes())
    except (OSError, ValueError):
        return {}
    return marker


def staged_for(data_dir: Path, vc: model.VirtualCluster, tdir: Path) -> Staged | None:
    """The restore VirtualCluster `vc` asks for and has not had yet, or None (blocking: files).

    Raises reconcile.Rejected: no such staged restore here, or one staged for another VirtualCluster.
    """
    restore_id = vc.metadata.annotations.get(model.ANNOTATION_RESTORE_FROM)
    if restore_id is None:
        return None
    marker = _read_marker(tdir)
    if marker.get("id") == restore_id and marker.get("vcUid") == vc.metadata.uid and marker.get("state") == "done":
        return None
    where = f"annotation {model.ANNOTATION_RESTORE_FROM}"
    if not _ID.fullmatch(restore_id):
        raise reconcile.Rejected("InvalidRestoreSource", f"{where} is not a restore id")
    d = data_dir / RESTORES_DIR
    try:
        target = msgspec.json.decode((d / f"{restore_id}.json").read_bytes())
        data = (d / f"{restore_id}.tar.gz").read_bytes()
    except (OSError, msgspec.DecodeError):
        raise reconcile.Rejected("RestoreSourceNotFound", (
            f"{where} names restore {restore_id}, which is not staged in this appliance's data directory "
            "(already used, or staged on another host); run vc-appliance restore again")) from None
    if (target.get("namespace"), target.get("name")) != (vc.metadata.namespace, vc.metadata.name):
        raise reconcile.Rejected("RestoreSourceNotFound",
                                 f"{where} names a restore staged for another VirtualCluster")
    try:
        backup = archive.parse(data)
    except archive.ArchiveError as exc:
        raise reconcile.Rejected("InvalidBackup", f"the staged backup is not usable: {exc}") from None
    pki = None
    if target.get("keepIdentity"):
        pki = pkisecrets.from_files(backup.pki)
        if pki is None or not pkisecrets.usable(pki):
            raise reconcile.Rejected("InvalidBackup", "the backup's certificates are incomplete or damaged")
    return Staged(restore_id, backup, pki)


def _write_marker(tdir: Path, staged: Staged, vc_uid: str, state: str, note: str = "") -> None:
    private.write_file(tdir / MARKER, json.dumps(
        {"id": staged.restore_id, "vcUid": vc_uid, "state": state, "note": note}))


async def load(gateway: etcdgateway.Gateway, *, key: tenancy.ClusterKey, tdir: Path, staged: Staged,
               vc_uid: str) -> str:
    """Write the backup's keys under tenant `key`'s prefix (before its apiserver starts); return a
    one-line account for the `Restored` condition.

    A partial load of this restore (marker `loading`) is deleted and redone; any other key under
    the prefix refuses the restore (reconcile.Rejected). Raises etcdgateway.GatewayError.
    """
    prefix = etcd.tenant_prefix(key)
    marker = await trio.to_thread.run_sync(_read_marker, tdir)
    m = staged.backup.manifest
    src = m.virtual_cluster
    note = (f"restored {m.key_count} etcd keys from the backup of {src.namespace}/{src.name} taken {m.created} "
            f"(revision {m.etcd_revision}); {'same' if staged.pki is not None else 'new'} certificates")
    if marker.get("id") == staged.restore_id and marker.get("vcUid") == vc_uid and marker.get("state") == "done":
        return note
    if marker.get("id") == staged.restore_id and marker.get("vcUid") == vc_uid:
        await gateway.delete_prefix(prefix)  # our own partial load; the apiserver never ran on it
    elif (found := await gateway.count(prefix)) > 0:
        raise reconcile.Rejected("RestoreTargetNotEmpty",
                                 f"etcd already holds {found} keys of tenant {key}; refusing to restore over them")
    await trio.to_thread.run_sync(_write_marker, tdir, staged, vc_uid, "loading")
    try:
        await write_new(gateway, [(archive.absolute_key(prefix, p), p.value) for p in staged.backup.pairs])
    except BackupError as exc:
        raise reconcile.Rejected("RestoreTargetNotEmpty", str(exc)) from None
    await trio.to_thread.run_sync(_write_marker, tdir, staged, vc_uid, "done", note)
    return note


async def finish(super_client: ApiClient, *, data_dir: Path, vc: model.VirtualCluster, tdir: Path) -> str:
    """The tenant runs on its restored data: drop the staged files and the restore annotation, and
    return the note for condition `Restored` ("" when `vc` asked for no restore).

    The note comes from the marker, so a restore interrupted by an appliance restart after the
    load still reports it.
    """
    restore_id = vc.metadata.annotations.get(model.ANNOTATION_RESTORE_FROM)
    if restore_id is None:
        return ""
    marker = await trio.to_thread.run_sync(_read_marker, tdir)
    if _ID.fullmatch(restore_id):
        await trio.to_thread.run_sync(discard_staged, data_dir, restore_id)
    patch = {"metadata": {"annotations": {model.ANNOTATION_RESTORE_FROM: None}, "uid": vc.metadata.uid}}
    try:
        await super_client.patch(resources.VIRTUALCLUSTERS, vc.metadata.name, patch, namespace=vc.metadata.namespace)
    except (errors.NotFound, errors.Conflict, errors.Invalid):
        pass  # gone, or another object by now: the annotation is not ours to touch
    return str(marker.get("note", "")) if marker.get("id") == restore_id else ""
