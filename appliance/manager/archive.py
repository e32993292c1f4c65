"""The backup archive of one process-mode tenant: build and parse, pure (no I/O, no clock).

Layout (a gzip-compressed tar; members in this order, nothing else allowed):

    manifest.json   `Manifest`: format, the VirtualCluster (metadata it needs and spec), the
                    cluster key and etcd prefix it had, etcd mode and revision, Service range and
                    apiserver port, Kubernetes version, creation time, counts and a SHA-256 of
                    `etcd.jsonl`
    etcd.jsonl      one `KeyValue` per line: the key *relative to the tenant prefix* (so it can be
                    written under another tenant's prefix) and the value exactly as etcd stored it
    pki/<file>      the tenant PKI as `pkisecrets.files` names it (certificates and keys)

Invariants: every key of `build` lies under the prefix it is given (else `ArchiveError`);
`parse` accepts only `FORMAT`, checks the counts and the digest, and refuses relative keys that
are empty or absolute, so a damaged, truncated or foreign file never reaches etcd. The archive
holds private keys and Secret data: whoever writes it to disk writes it 0600. Archives are
built and parsed in memory; a tenant's data is bounded by etcd's quota (2 GiB by default).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import stat
import tarfile
from dataclasses import dataclass
from typing import Any, Final

import msgspec

FORMAT: Final = "vc-appliance-backup/1"
MANIFEST: Final = "manifest.json"
ETCD: Final = "etcd.jsonl"
PKI_DIR: Final = "pki/"
#: the tar members' mtime: an archive's bytes depend on its content only
_MTIME: Final = 0


class ArchiveError(ValueError):
    """The data is not a usable backup (wrong format, damaged, truncated, a key out of place)."""


class VcRecord(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """What a restore needs of the VirtualCluster it re-creates."""

    namespace: str
    name: str
    uid: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    spec: dict[str, Any] = msgspec.field(default_factory=dict)


class Manifest(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """The archive's table of contents; `build` fills in the last four fields."""

    created: str
    virtual_cluster: VcRecord
    cluster_key: str
    etcd_prefix: str
    etcd_mode: str
    etcd_revision: int
    service_cidr: str
    apiserver_port: int
    kubernetes_version: str
    format: str = FORMAT
    key_count: int = 0
    pki_files: list[str] = msgspec.field(default_factory=list)
    etcd_sha256: str = ""


class KeyValue(msgspec.Struct, frozen=True, array_like=True):
    """One etcd pair; `key` is relative to the tenant prefix. JSON carries bytes as base64."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True, repr=False)
class Backup:
    manifest: Manifest
    pairs: tuple[KeyValue, ...]
    pki: dict[str, bytes]

    def __repr__(self) -> str:  # never the keys or values: they hold Secret data
        return f"Backup({self.manifest.virtual_cluster.namespace}/{self.manifest.virtual_cluster.name}, " \
               f"{len(self.pairs)} keys)"


_encoder = msgspec.json.Encoder()
_manifest_decoder = msgspec.json.Decoder(Manifest)
_pair_decoder = msgspec.json.Decoder(KeyValue)


def relative_pairs(prefix: bytes, pairs: list[tuple[bytes, bytes]]) -> tuple[KeyValue, ...]:
    """Absolute etcd pairs as pairs relative to `prefix`; ArchiveError for a key outside it."""
    out = []
    for key, value in pairs:
        if not key.startswith(prefix) or key == prefix:
            raise ArchiveError(f"key {key[:80]!r} lies outside the tenant prefix {prefix.decode()!r}")
        out.append(KeyValue(key[len(prefix):], value))
    return tuple(out)


def absolute_key(prefix: str, pair: KeyValue) -> bytes:
    """Where `pair` goes under another tenant's `prefix` (which ends in '/')."""
    return prefix.encode() + pair.key


def _etcd_blob(pairs: tuple[KeyValue, ...]) -> bytes:
    return b"".join(_encoder.encode(p) + b"\n" for p in pairs)


def build(manifest: Manifest, pairs: tuple[KeyValue, ...], pki: dict[str, bytes]) -> bytes:
    """The archive bytes; `manifest`'s counts, file list and digest are filled in here."""
    for pair in pairs:
        _check_relative(pair.key)
    blob = _etcd_blob(pairs)
    manifest = msgspec.structs.replace(
        manifest, format=FORMAT, key_count=len(pairs), pki_files=sorted(pki),
        etcd_sha256=hashlib.sha256(blob).hexdigest())
    raw = io.BytesIO()
    # mtime=0 in the gzip header too: same content, same bytes.
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=_MTIME) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        _add(tar, MANIFEST, _encoder.encode(manifest))
        _add(tar, ETCD, blob)
        for name in sorted(pki):
            _check_pki_name(name)
            _add(tar, PKI_DIR + name, pki[name])
    return raw.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    # The member header only (no file is written here): `tar x` of a backup makes private files.
    info.size, info.mtime, info.mode = len(data), _MTIME, stat.S_IRUSR | stat.S_IWUSR
    tar.addfile(info, io.BytesIO(data))


def _check_relative(key: bytes) -> None:
    if not key or key.startswith(b"/"):
        raise ArchiveError(f"key {key[:80]!r} is not relative to a tenant prefix")


def _check_pki_name(name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise ArchiveError(f"PKI file name {name!r} is not a plain file name")


def parse(data: bytes) -> Backup:
    """The backup in `data`; ArchiveError says what is wrong with it."""
    members: dict[str, bytes] = {}
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    raise ArchiveError(f"unexpected member {info.name!r} (not a regular file)")
                if info.name in members:
                    raise ArchiveError(f"member {info.name!r} appears twice")
                f = tar.extractfile(info)
                assert f is not None  # a regular file
                members[info.name] = f.read()
    except (OSError, EOFError, tarfile.TarError, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"not a complete backup archive (damaged or truncated): {exc}") from None
    if MANIFEST not in members:
        raise ArchiveError(f"no {MANIFEST}: not a vc-appliance backup")
    try:
        fmt = msgspec.json.decode(members[MANIFEST]).get("format")
    except (msgspec.DecodeError, AttributeError):
        raise ArchiveError(f"{MANIFEST} is not a JSON object") from None
    if fmt != FORMAT:
        raise ArchiveError(f"backup format {fmt!r} is not supported (this version reads {FORMAT!r})")
    try:
        manifest = _manifest_decoder.decode(members[MANIFEST])
    except msgspec.DecodeError as exc:
        raise ArchiveError(f"{MANIFEST}: {exc}") from None
    blob = members.get(ETCD)
    if blob is None:
        raise ArchiveError(f"no {ETCD} in the archive")
    if hashlib.sha256(blob).hexdigest() != manifest.etcd_sha256:
        raise ArchiveError(f"{ETCD} does not match the digest in {MANIFEST} (damaged)")
    try:
        pairs = tuple(_pair_decoder.decode(line) for line in blob.splitlines() if line)
    except msgspec.DecodeError as exc:
        raise ArchiveError(f"{ETCD}: {exc}") from None
    if len(pairs) != manifest.key_count:
        raise ArchiveError(f"{ETCD} holds {len(pairs)} keys, the manifest says {manifest.key_count}")
    for pair in pairs:
        _check_relative(pair.key)
    pki = {name[len(PKI_DIR):]: body for name, body in members.items() if name.startswith(PKI_DIR)}
    if sorted(pki) != sorted(manifest.pki_files):
        raise ArchiveError(f"the PKI files differ from the manifest's list ({len(pki)} of {len(manifest.pki_files)})")
    extra = set(members) - {MANIFEST, ETCD} - {PKI_DIR + n for n in pki}
    if extra:
        raise ArchiveError(f"unexpected members: {', '.join(sorted(extra))}")
    return Backup(manifest, pairs, pki)
