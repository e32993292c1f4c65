"""Container images built on this host, without a registry, for the test bed's real node.

An image is a list of `Entry`s (directories, files copied from the host, small inline files,
symlinks) packed into one uncompressed layer, plus optional `layers` on top (a few small
files over a shared large base, as the conformance images do). `write_archive` lays images
out as one tar that is both an OCI image layout (`oci-layout`, `index.json`,
`blobs/sha256/...`) and a docker archive (`manifest.json`), which `ctr images import` reads;
every image names itself through the `io.containerd.image.name` annotation, so no tag has to
be given on import. Layers are deterministic (sorted entries, mtime 0, root owner): the
same inputs give the same digests, and images that share a layer (busybox under kubectl,
say) store it once.

`standard_images` is the set the real node imports: busybox, the sandbox ("pause") image,
the Kubernetes binaries of the test bed, and CoreDNS. Pods must use these exact tags (never
`:latest`, which would make the kubelet try a pull that cannot succeed here).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX_IMAGE = "localhost/busybox:1.35"
PAUSE_IMAGE = "localhost/pause:3.10"
KUBERNETES_IMAGE = "localhost/kubernetes:v1.37.2"
COREDNS_IMAGE = "localhost/coredns:v1.15.0"
BUSYBOX_BINARY = Path("/bin/busybox")

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnobody:x:65534:\n"
_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


@dataclass(frozen=True, slots=True)
class Entry:
    """One path in a layer: a directory, a host file, inline bytes, or a symlink."""

    path: str
    source: Path | None = None
    data: bytes | None = None
    link: str | None = None
    mode: int = 0o755


@dataclass(frozen=True, slots=True)
class Image:
    """One image: `entries` is its base layer, `layers` (if any) are stacked on top in order."""

    name: str
    entries: tuple[Entry, ...]
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = (f"PATH={_PATH}",)
    labels: dict[str, str] = field(default_factory=dict)
    layers: tuple[tuple[Entry, ...], ...] = ()
    stop_signal: str = ""

    @property
    def all_layers(self) -> tuple[tuple[Entry, ...], ...]:
        return (self.entries, *self.layers)


def go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def busybox_applets(busybox: Path = BUSYBOX_BINARY) -> list[str]:
    """Every applet the host's busybox offers (`busybox --list`)."""
    out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout
    return sorted({a.strip() for a in out.split() if a.strip() and "/" not in a})


def base_entries(busybox: Path = BUSYBOX_BINARY) -> tuple[Entry, ...]:
    """A minimal root file system: busybox with all its applets, users, the usual directories."""
    dirs = ["bin", "dev", "etc", "proc", "root", "run", "sys", "tmp", "usr", "usr/bin", "usr/local",
            "usr/local/bin", "var", "var/run"]
    entries = [Entry(d, mode=0o1777 if d == "tmp" else 0o755) for d in dirs]
    entries.append(Entry("bin/busybox", source=busybox))
    entries += [Entry(f"bin/{a}", link="busybox") for a in busybox_applets(busybox) if a != "busybox"]
    entries += [
        Entry("etc/passwd", data=_PASSWD.encode(), mode=0o644),
        Entry("etc/group", data=_GROUP.encode(), mode=0o644),
        Entry("etc/nsswitch.conf", data=b"hosts: files dns\n", mode=0o644),
    ]
    return tuple(entries)


def kubernetes_entries(testbin: Path, applets: Sequence[str]) -> tuple[Entry, ...]:
    """busybox plus the test bed's multi-call binary with a link per applet in /usr/local/bin."""
    return (*base_entries(), Entry("usr/local/bin/k8s-testbin", source=testbin),
            *(Entry(f"usr/local/bin/{a}", link="k8s-testbin") for a in applets))


def standard_images(*, testbin: Path, applets: Sequence[str], coredns: Path | None) -> list[Image]:
    """busybox, pause, the Kubernetes binaries (one multi-call binary + applet links), CoreDNS."""
    base = base_entries()
    kube = kubernetes_entries(testbin, applets)
    images = [
        Image(BUSYBOX_IMAGE, base, cmd=("sh",)),
        Image(PAUSE_IMAGE, base, cmd=("sleep", "2147483647")),
        Image(KUBERNETES_IMAGE, kube, cmd=("sh",)),
    ]
    if coredns is not None:
        images.append(Image(COREDNS_IMAGE, (*base, Entry("coredns", source=coredns)),
                            entrypoint=("/coredns",)))
    return images


def _tarinfo(name: str, *, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, link
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
    return ti


def _write_layer(entries: Iterable[Entry], out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for e in sorted(entries, key=lambda e: e.path):
            if e.link is not None:
                tar.addfile(_tarinfo(e.path, kind=tarfile.SYMTYPE, mode=0o777, link=e.link))
            elif e.data is not None:
                tar.addfile(_tarinfo(e.path, kind=tarfile.REGTYPE, mode=e.mode, size=len(e.data)),
                            io.BytesIO(e.data))
            elif e.source is not None:
                size = e.source.stat().st_size
                with open(e.source, "rb") as f:
                    tar.addfile(_tarinfo(e.path, kind=tarfile.REGTYPE, mode=e.mode, size=size), f)
            else:
                tar.addfile(_tarinfo(e.path, kind=tarfile.DIRTYPE, mode=e.mode))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_archive(images: Sequence[Image], out: Path) -> dict[str, str]:
    """Write `images` into one importable tar at `out`; returns image name → manifest digest."""
    arch = go_arch()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        blobs: dict[str, Path | bytes] = {}
        index, docker, digests = [], [], {}
        layer_of: dict[tuple[Entry, ...], tuple[str, int]] = {}
        for img in images:
            for entries in img.all_layers:
                if entries not in layer_of:
                    path = Path(tmp) / f"layer-{len(layer_of)}.tar"
                    _write_layer(entries, path)
                    digest = _sha256_file(path)
                    blobs[digest] = path
                    layer_of[entries] = (digest, path.stat().st_size)
            layers = [layer_of[entries] for entries in img.all_layers]
            cfg: dict[str, object] = {"Env": list(img.env), "WorkingDir": "/"}
            if img.cmd:
                cfg["Cmd"] = list(img.cmd)
            if img.entrypoint:
                cfg["Entrypoint"] = list(img.entrypoint)
            if img.labels:
                cfg["Labels"] = dict(img.labels)
            if img.stop_signal:
                cfg["StopSignal"] = img.stop_signal
            config = _json({"architecture": arch, "os": "linux", "config": cfg,
                            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d, _ in layers]}})
            config_digest = hashlib.sha256(config).hexdigest()
            blobs[config_digest] = config
            manifest = _json({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": f"sha256:{config_digest}", "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": f"sha256:{d}", "size": size} for d, size in layers],
            })
            manifest_digest = hashlib.sha256(manifest).hexdigest()
            blobs[manifest_digest] = manifest
            digests[img.name] = f"sha256:{manifest_digest}"
            index.append({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{manifest_digest}", "size": len(manifest),
                "platform": {"architecture": arch, "os": "linux"},
                "annotations": {"io.containerd.image.name": img.name,
                                "org.opencontainers.image.ref.name": img.name.rpartition(":")[2]},
            })
            docker.append({"Config": f"blobs/sha256/{config_digest}", "RepoTags": [img.name],
                           "Layers": [f"blobs/sha256/{d}" for d, _ in layers]})
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w") as tar:
            small = {
                "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
                "index.json": _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                     "manifests": index}),
                "manifest.json": _json(docker),
            }
            for name, data in small.items():
                tar.addfile(_tarinfo(name, kind=tarfile.REGTYPE, mode=0o644, size=len(data)), io.BytesIO(data))
            for digest, blob in sorted(blobs.items()):
                name = f"blobs/sha256/{digest}"
                if isinstance(blob, bytes):
                    tar.addfile(_tarinfo(name, kind=tarfile.REGTYPE, mode=0o644, size=len(blob)), io.BytesIO(blob))
                else:
                    with open(blob, "rb") as f:
                        tar.addfile(_tarinfo(name, kind=tarfile.REGTYPE, mode=0o644,
                                             size=blob.stat().st_size), f)
        os.replace(partial, out)
    return digests


def ensure_archive(images: Sequence[Image], cache_dir: Path, *, prefix: str = "images") -> Path:
    """The archive of `images`, built once per content (file sizes and mtimes, names, commands).

    Older archives with the same `prefix` are removed. Blocking (large binaries are copied and
    hashed): call it from a worker thread.
    """
    h = hashlib.sha256()
    for img in images:
        # Fields past the first layer enter the hash only when set: older archives stay valid.
        h.update(_json([img.name, img.cmd, img.entrypoint, img.env, img.labels,
                        *([img.stop_signal] if img.stop_signal else [])]))
        for i, entries in enumerate(img.all_layers):
            if i:
                h.update(b"layer")
            for e in entries:
                stat = e.source.stat() if e.source is not None else None
                h.update(_json([e.path, e.link, e.mode, e.data.hex() if e.data else None,
                                [str(e.source), stat.st_size, stat.st_mtime_ns] if stat else None]))
    out = cache_dir / f"{prefix}-{h.hexdigest()[:16]}.tar"
    if not out.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_archive(images, out)
        for old in cache_dir.glob(f"{prefix}-*.tar"):
            if old != out:
                old.unlink(missing_ok=True)
    return out

