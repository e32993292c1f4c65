"""The backup archive format and the pure parts of backup and restore: round trip, refusals, batching,
the restore's target checks and what the restored VirtualCluster looks like."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import msgspec
import pytest

from appliance.manager import archive, backups, model, pkisecrets, reconcile
from appliance.util import tenancy

PREFIX = b"/tenants/team-a-1a2b3c-shop/"
PAIRS = [
    (PREFIX + b"registry/namespaces/default", b"k8s\x00\x01binary value"),
    (PREFIX + b"registry/configmaps/default/cm", b'{"data":{"a":"b"}}'),
    (PREFIX + b"registry/secrets/default/s", b""),
]
PKI = {"ca.crt": b"CERT", "ca.key": b"KEY", "sa.key": b"SA"}


def _manifest(**changes: object) -> archive.Manifest:
    m = archive.Manifest(
        created="2026-12-05T23:00:00Z",
        virtual_cluster=archive.VcRecord(namespace="team-a", name="shop", uid="u-1", labels={"e2e": "x"},
                                         annotations={"a": "b"}, spec={"clusterVersionName": "cv"}),
        cluster_key="team-a-1a2b3c-shop", etcd_prefix=PREFIX.decode(), etcd_mode="shared", etcd_revision=42,
        service_cidr="10.64.0.0/20", apiserver_port=34567, kubernetes_version="v1.37.2",
    )
    return msgspec.structs.replace(m, **changes)


def _archive() -> bytes:
    return archive.build(_manifest(), archive.relative_pairs(PREFIX, PAIRS), PKI)


def _tar(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _members(data: bytes) -> dict[str, bytes]:
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz, tarfile.open(fileobj=gz) as tar:
        return {i.name: tar.extractfile(i).read() for i in tar}  # type: ignore[union-attr]


def test_round_trip_keeps_every_pair_relative_to_the_prefix() -> None:
    """What `build` writes, `parse` returns: keys relative to the old prefix, values byte for byte, the PKI."""
    backup = archive.parse(_archive())
    assert [(PREFIX + p.key, p.value) for p in backup.pairs] == PAIRS
    assert backup.pki == PKI
    assert backup.manifest.key_count == 3
    assert backup.manifest.format == archive.FORMAT
    assert backup.manifest.virtual_cluster.spec == {"clusterVersionName": "cv"}


def test_keys_land_under_another_tenants_prefix() -> None:
    """A restore under a new cluster key writes every key below the new prefix, none below the old one."""
    backup = archive.parse(_archive())
    keys = [archive.absolute_key("/tenants/other-9f8e7d-copy/", p) for p in backup.pairs]
    assert all(k.startswith(b"/tenants/other-9f8e7d-copy/registry/") for k in keys)


def test_same_content_gives_the_same_bytes() -> None:
    """No timestamps in the container: two builds of one backup are identical."""
    assert _archive() == _archive()


def test_members_are_private_and_in_order() -> None:
    """The manifest comes first, then the etcd pairs, then the PKI files, each mode 0600."""
    with gzip.GzipFile(fileobj=io.BytesIO(_archive())) as gz, tarfile.open(fileobj=gz) as tar:
        infos = tar.getmembers()
    assert ["manifest.json", "etcd.jsonl", "pki/ca.crt", "pki/ca.key", "pki/sa.key"] == [i.name for i in infos]
    assert {0o600} == {i.mode for i in infos}


@pytest.mark.parametrize("key", [pytest.param(b"/tenants/other/registry/x", id="another-tenant"),
                                 pytest.param(PREFIX, id="the-prefix-itself"),
                                 pytest.param(b"/tenants/team-a-1a2b3c-shopx/registry", id="longer-sibling")])
def test_a_key_outside_the_prefix_is_refused(key: bytes) -> None:
    """A backup never carries a key of another tenant."""
    with pytest.raises(archive.ArchiveError, match="outside the tenant prefix"):
        archive.relative_pairs(PREFIX, [*PAIRS, (key, b"v")])


def test_a_wrong_format_version_is_refused() -> None:
    """An archive of another format version is named and refused before anything else is read."""
    members = _members(_archive())
    doc = json.loads(members["manifest.json"])
    doc["format"] = "vc-appliance-backup/2"
    members["manifest.json"] = json.dumps(doc).encode()
    with pytest.raises(archive.ArchiveError, match="'vc-appliance-backup/2' is not supported"):
        archive.parse(_tar(members))


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_a_truncated_file_is_refused(cut: float) -> None:
    """A file cut short (a full disk, an interrupted copy) is refused, never half restored."""
    data = _archive()
    with pytest.raises(archive.ArchiveError):
        archive.parse(data[: int(len(data) * cut)])


def test_a_damaged_etcd_member_is_refused() -> None:
    """The digest in the manifest catches a changed key or value."""
    members = _members(_archive())
    members["etcd.jsonl"] = members["etcd.jsonl"].replace(b"A", b"B", 1)
    with pytest.raises(archive.ArchiveError, match="digest"):
        archive.parse(_tar(members))


def test_an_absolute_key_inside_the_archive_is_refused() -> None:
    """Even with a matching digest, a key that is not relative never reaches etcd."""
    members = _members(_archive())
    blob = msgspec.json.encode(archive.KeyValue(b"/registry/x", b"v")) + b"\n"
    doc = json.loads(members["manifest.json"])
    doc.update(keyCount=1, etcdSha256=hashlib.sha256(blob).hexdigest())
    members.update({"manifest.json": json.dumps(doc).encode(), "etcd.jsonl": blob})
    with pytest.raises(archive.ArchiveError, match="not relative"):
        archive.parse(_tar(members))


@pytest.mark.parametrize(("change", "match"), [
    pytest.param(lambda m: m.pop("manifest.json"), "no manifest.json", id="no-manifest"),
    pytest.param(lambda m: m.pop("pki/ca.key"), "PKI files differ", id="missing-pki-file"),
    pytest.param(lambda m: m.update({"extra": b"x"}), "unexpected members", id="extra-member"),
    pytest.param(lambda m: m.update({"manifest.json": b"[1]"}), "not a JSON object", id="manifest-not-object"),
])
def test_incomplete_or_foreign_archives_are_refused(change: object, match: str) -> None:
    """Every member is accounted for: none missing, none extra."""
    members = _members(_archive())
    change(members)  # type: ignore[operator]
    with pytest.raises(archive.ArchiveError, match=match):
        archive.parse(_tar(members))


def test_not_gzip_at_all_is_refused() -> None:
    """A random file is a clear ArchiveError, not a traceback."""
    with pytest.raises(archive.ArchiveError, match="not a complete backup"):
        archive.parse(b"definitely not an archive")


def test_backup_repr_hides_values() -> None:
    """Secret data in values never reaches a log line through repr()."""
    assert "binary value" not in repr(archive.parse(_archive()))


def test_batches_respect_op_and_byte_limits() -> None:
    """Write transactions stay under etcd's limits; one big value travels alone."""
    small = [(b"k%d" % i, b"v") for i in range(250)]
    assert [100, 100, 50] == [len(b) for b in backups.batches(small)]
    big = [(b"a", b"x" * backups.BATCH_BYTES), (b"b", b"y"), (b"c", b"z" * backups.BATCH_BYTES)]
    assert [[b"a"], [b"b"], [b"c"]] == [[k for k, _ in b] for b in backups.batches(big)]
    assert [] == backups.batches([])


def test_another_name_needs_new() -> None:
    """Restoring under another name than the backup's is refused without --new, with the flag named."""
    backup = archive.parse(_archive())
    backups.check_target(backup, namespace="team-a", name="shop", new=False)
    backups.check_target(backup, namespace="team-b", name="copy", new=True)
    with pytest.raises(backups.BackupError, match="--new"):
        backups.check_target(backup, namespace="team-a", name="copy", new=False)


def test_the_restored_virtualcluster_carries_the_restore_request() -> None:
    """The re-created VC keeps labels, annotations and spec, names the staged restore, and pins provisioner
    and etcd mode to the backup's."""
    backup = archive.parse(_archive())
    obj = backups.vc_manifest(backup, namespace="team-b", name="copy", restore_id="ab" * 16)
    assert ("team-b", "copy") == (obj["metadata"]["namespace"], obj["metadata"]["name"])
    assert {"e2e": "x"} == obj["metadata"]["labels"]
    assert {"a": "b", model.ANNOTATION_RESTORE_FROM: "ab" * 16, model.ANNOTATION_PROVISIONER: "process",
            model.ANNOTATION_ETCD: "shared"} == obj["metadata"]["annotations"]
    assert {"clusterVersionName": "cv"} == obj["spec"]


def _vc(annotations: dict[str, str], *, ns: str = "team-a", name: str = "shop") -> model.VirtualCluster:
    return model.decode_vc({"metadata": {"namespace": ns, "name": name, "uid": "u-2", "annotations": annotations}})


def _stage(tmp_path: Path, data: bytes, *, keep: bool, ns: str = "team-a", name: str = "shop") -> str:
    restore_id = "cd" * 16
    backups._stage(tmp_path, restore_id, data, backups.Target(ns, name, keep_identity=keep))
    return restore_id


def test_staged_restore_is_only_for_the_virtualcluster_it_names(tmp_path: Path) -> None:
    """A staged restore cannot be claimed by another VirtualCluster that copies its annotation."""
    restore_id = _stage(tmp_path, _archive(), keep=False)
    staged = backups.staged_for(tmp_path, _vc({model.ANNOTATION_RESTORE_FROM: restore_id}), tmp_path / "t")
    assert staged is not None and staged.pki is None and len(staged.backup.pairs) == 3
    with pytest.raises(reconcile.Rejected, match="another VirtualCluster"):
        backups.staged_for(tmp_path, _vc({model.ANNOTATION_RESTORE_FROM: restore_id}, name="thief"), tmp_path / "t")


@pytest.mark.parametrize(("value", "reason"), [
    pytest.param("../../etc/passwd", "InvalidRestoreSource", id="path"),
    pytest.param("ef" * 16, "RestoreSourceNotFound", id="not-staged"),
])
def test_unknown_restore_sources_are_rejected(tmp_path: Path, value: str, reason: str) -> None:
    """An annotation naming no staged restore is bad input (Error), never a silent empty tenant."""
    with pytest.raises(reconcile.Rejected) as caught:
        backups.staged_for(tmp_path, _vc({model.ANNOTATION_RESTORE_FROM: value}), tmp_path / "t")
    assert reason == caught.value.problem.reason


def test_a_done_restore_is_not_asked_for_again(tmp_path: Path) -> None:
    """After the load, the marker in the tenant dir makes later provisioning attempts skip the restore."""
    restore_id = _stage(tmp_path, _archive(), keep=False)
    vc = _vc({model.ANNOTATION_RESTORE_FROM: restore_id})
    staged = backups.staged_for(tmp_path, vc, tmp_path / "t")
    assert staged is not None
    backups._write_marker(tmp_path / "t", staged, "u-2", "done")
    assert backups.staged_for(tmp_path, vc, tmp_path / "t") is None
    assert backups.staged_for(tmp_path, _vc({}), tmp_path / "t") is None


def test_keeping_the_identity_needs_a_usable_pki(tmp_path: Path) -> None:
    """Restoring under the backup's own name uses its PKI, and refuses certificates that do not parse."""
    restore_id = _stage(tmp_path, _archive(), keep=True)
    with pytest.raises(reconcile.Rejected, match="certificates"):
        backups.staged_for(tmp_path, _vc({model.ANNOTATION_RESTORE_FROM: restore_id}), tmp_path / "t")
    pki = pkisecrets.build(pkisecrets.PKIRequest(cluster_key=tenancy.ClusterKey("team-a-1a2b3c-shop"), vc_name="shop"))
    files = pkisecrets.files(pki, server="https://127.0.0.1:1", cluster_name="shop")
    data = archive.build(_manifest(), archive.relative_pairs(PREFIX, PAIRS),
                         {n: files[n] for n in backups.PKI_FILES})
    restore_id = _stage(tmp_path, data, keep=True)
    staged = backups.staged_for(tmp_path, _vc({model.ANNOTATION_RESTORE_FROM: restore_id}), tmp_path / "t")
    assert staged is not None and staged.pki is not None
    assert pki.root_ca.cert_pem == staged.pki.root_ca.cert_pem


def test_staged_files_are_private(tmp_path: Path) -> None:
    """The staged archive holds keys and Secret data: 0600 in a 0700 directory, and removable."""
    restore_id = _stage(tmp_path, _archive(), keep=False)
    d = tmp_path / backups.RESTORES_DIR
    assert 0o700 == d.stat().st_mode & 0o777
    assert {0o600} == {p.stat().st_mode & 0o777 for p in d.iterdir()}
    backups.discard_staged(tmp_path, restore_id)
    assert [] == list(d.iterdir())


def test_restored_condition() -> None:
    """The `Restored` condition says what was restored; other conditions are kept."""
    vc = model.decode_vc({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    patch = reconcile.restored(vc, message="restored 3 etcd keys", now="2026-12-05T23:00:00Z")
    assert isinstance(patch.conditions, list)
    assert ["Ready", model.COND_RESTORED] == [c.type for c in patch.conditions]
    assert ("True", model.REASON_RESTORED) == (patch.conditions[1].status, patch.conditions[1].reason)


def test_abandoned_staged_restores_are_removed(tmp_path: Path) -> None:
    """At start-up, a staged restore nobody asks for goes once it is old; wanted or young ones stay."""
    for restore_id in ("a" * 32, "b" * 32, "c" * 32):
        backups._stage(tmp_path, restore_id, b"data", backups.Target("ns", "vc", keep_identity=True))
    young = tmp_path / backups.RESTORES_DIR / f"{'c' * 32}.json"
    cutoff = young.stat().st_mtime
    os.utime(young, (cutoff + 10, cutoff + 10))
    assert ["b" * 32] == backups.discard_abandoned(tmp_path, wanted={"a" * 32}, before=cutoff + 5)
    assert {"a" * 32, "c" * 32} == {p.name[:32] for p in (tmp_path / backups.RESTORES_DIR).iterdir()}
