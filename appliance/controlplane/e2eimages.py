"""The images upstream's `[Conformance]` tests run, built here without a registry.

The e2e suite names its images in `test/utils/image/manifest.go` (`configs[ID] = Config{...}`);
`parse_manifest` reads that file from the very `k8s.io/kubernetes` module `e2e.test` was built
from, so every image is tagged with the exact upstream name (`registry.k8s.io/e2e-test-images/
agnhost:2.66.1`, ...) and Pods find it locally with the default `IfNotPresent` policy; no
`KUBE_TEST_REPO_LIST` override is needed, and JUnit output shows the names upstream shows.

What each image is (`RECIPES`; the layers are shared, so the set costs little more than agnhost):

* the *Debian userland*: Debian bookworm packages (`DEBIAN_PACKAGES`: bind9-dnsutils, curl,
  netcat-openbsd, iproute2, iperf, bash as /bin/sh, dash, socat, libc-bin, nginx) resolved with
  apt against an empty package database, unpacked with `dpkg-deb -x` (no maintainer scripts),
  over busybox (which supplies the coreutils);
* agnhost 2.66.1 = that userland + `agnhost` built from v1.37.2 + CoreDNS at `/coredns` (the
  test bed's own build, for the DNS tests that run it) + the porter test certificates; the
  upstream image is Alpine with the same tools. agnhost 2.55 ("previous") is the same build
  under the old tag (a distinct image ID, as rolling-update tests need); glibc-dns-testing is
  the userland alone (Debian, like upstream); nautilus and kitten add their html files and
  serve them with `agnhost test-webserver`, as upstream;
* nginx 1.27/1.28 = Debian's nginx 1.22 with the official image's configuration (port 80,
  /usr/share/nginx/html, logs to stdout/stderr, SIGQUIT to stop);
* busybox 1.37 = the userland (busybox applets under a bash /bin/sh, which keeps environment
  variables with any name as upstream's busybox 1.37 does); pause 3.10.2 = busybox
  waiting for SIGTERM; etcd 3.7.0 = the test bed's multi-call binary (its etcd applet);
  sample-apiserver and nonewprivs = those programs built from the same module.

`NOT_BUILT` says why the rest are absent; tests that want them fail to pull, which is what the
private-registry and invalid-image tests expect. Tests that pull with policy `Always` cannot
pass without a registry: the image-volume test and the PodCertificate mTLS test (its
Deployments); a local registry mirror for containerd would serve them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.controlplane import build, images

#: Debian packages of the shared userland (dependencies are resolved by apt).
DEBIAN_PACKAGES = (
    "bash", "bind9-dnsutils", "curl", "dash", "iperf", "iproute2", "libc-bin", "netcat-openbsd", "nginx", "socat",
)
#: Parts of the unpacked packages no test reads.
_PRUNED = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
           "usr/share/bug")
#: What Debian's maintainer scripts would have created (update-alternatives, dash's diversion).
#: /bin/sh must not be busybox: Debian builds its ash to run its own applets before PATH, so a
#: test's `sh -c 'nc ...'` would get busybox's nc instead of netcat-openbsd. Nor dash: dash and
#: Debian's busybox 1.35 ash drop environment variables whose names are not shell identifiers
#: (`data-1` from a ConfigMap's envFrom) before running `env`, which upstream's busybox 1.37 and
#: Alpine images keep; bash keeps them.
_ALTERNATIVES = {"bin/sh": "bash", "bin/nc": "nc.openbsd", "usr/bin/awk": "mawk"}

#: manifest ImageID -> how the image is made here (the key of `_RECIPE_BUILDERS`).
RECIPES: dict[str, str] = {
    "Agnhost": "agnhost", "AgnhostPrev": "agnhost", "GlibcDnsTesting": "debian", "Nautilus": "html",
    "Kitten": "html", "Nginx": "nginx", "NginxNew": "nginx", "BusyBox": "busybox", "Pause": "pause",
    "Etcd": "etcd", "APIServer": "sample-apiserver", "Nonewprivs": "nonewprivs",
}
#: manifest ImageIDs deliberately not built, and why.
NOT_BUILT: dict[str, str] = {
    "AgnhostPrivate": "the private-registry tests expect its pull to fail",
    "InvalidRegistryImage": "the invalid-image tests expect its pull to fail",
    "AppArmorLoader": "no [Conformance] test uses it (AppArmor is off on this host)",
    "DistrolessIptables": "no [Conformance] test uses it",
    "IpcUtils": "no [Conformance] test uses it",
    "NFSProvisioner": "no [Conformance] test uses it (storage drivers)",
    "NodePerfNpbEp": "node performance tests only", "NodePerfNpbIs": "node performance tests only",
    "NodePerfPytorchWideDeep": "node performance tests only",
    "NonRoot": "no [Conformance] test uses it",
    "Perl": "no [Conformance] test uses it",
    "RegressionIssue74839": "no [Conformance] test uses it",
    "ResourceConsumer": "autoscaling tests only",
    "VolumeNFSServer": "storage driver tests only", "VolumeISCSIServer": "storage driver tests only",
    "SampleDevicePlugin": "device plugin tests only",
}

_PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
_GROUP = """root:x:0:
daemon:x:1:
www-data:x:33:
user-defined-in-image:x:1000:
group-defined-in-image:x:50000:user-defined-in-image
nogroup:x:65534:
"""
_NGINX_CONF = """# The official nginx image's setup: one server on port 80, logs to the container's output.
user www-data;
worker_processes 1;
error_log /dev/stderr notice;
pid /run/nginx.pid;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile on;
    keepalive_timeout 65;
    server {
        listen 80;
        server_name localhost;
        location / { root /usr/share/nginx/html; index index.html index.htm; }
        error_page 500 502 503 504 /50x.html;
        location = /50x.html { root /usr/share/nginx/html; }
    }
}
"""
_PAUSE = "#!/bin/sh\n# A pause container that stops at once on SIGTERM/SIGINT (sleep as PID 1 would not).\n" \
         "trap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n"

_CONFIG_RE = re.compile(r'configs\[(\w+)\]\s*=\s*Config\{\s*list\.(\w+)\s*,\s*"([^"]+)"\s*,\s*"([^"]+)"\s*\}')
_REGISTRY_RE = re.compile(r'^\s*(\w+Registry)\s*:\s*"([^"]+)"\s*,?\s*$', re.MULTILINE)


class ImageBuildError(RuntimeError):
    """A step of building the conformance images failed; the message says which and why."""


def parse_manifest(source: str) -> dict[str, str]:
    """ImageID -> full image reference, from the text of upstream's `manifest.go`.

    Reads the default registries of `initRegistry` and every `configs[ID] = Config{list.R,
    "name", "version"}` line; raises ImageBuildError if either is missing.
    """
    start = source.find("initRegistry = RegistryList{")
    if start < 0:
        raise ImageBuildError("manifest.go: no `initRegistry = RegistryList{` block")
    block = source[start:source.index("}", start)]
    registries = dict(_REGISTRY_RE.findall(block))
    out: dict[str, str] = {}
    for image_id, registry, name, version in _CONFIG_RE.findall(source):
        if registry not in registries:
            raise ImageBuildError(f"manifest.go: {image_id} uses unknown registry {registry}")
        out[image_id] = f"{registries[registry]}/{name}:{version}"
    if not out:
        raise ImageBuildError("manifest.go: no `configs[...] = Config{...}` lines")
    return out


def plan(manifest: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(ImageID -> recipe for what we build, ImageID -> reason for what we do not).

    A manifest ID that is in neither table (a newer Kubernetes added it) is reported as
    not built, with that said as the reason.
    """
    built = {i: RECIPES[i] for i in manifest if i in RECIPES}
    skipped = {i: NOT_BUILT.get(i, "new in this manifest; no recipe here yet") for i in manifest if i not in RECIPES}
    return built, skipped


def merge(*groups: Iterable[images.Entry]) -> tuple[images.Entry, ...]:
    """One layer's entries from several groups; a later group's entry replaces an earlier one's path."""
    by_path: dict[str, images.Entry] = {}
    for group in groups:
        for e in group:
            by_path[e.path.strip("/")] = e
    return tuple(by_path[p] for p in sorted(by_path))


def tree_entries(root: Path, *, prune: tuple[str, ...] = ()) -> list[images.Entry]:
    """Entries for every directory, file and symlink below `root` (modes kept, owners root)."""
    out: list[images.Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(dirnames):
            rel = (rel_dir / name).as_posix()
            full = Path(dirpath) / name
            if any(rel == p or rel.startswith(p + "/") for p in prune):
                dirnames.remove(name)
                continue
            if full.is_symlink():
                out.append(images.Entry(rel, link=os.readlink(full)))
                dirnames.remove(name)
            else:
                out.append(images.Entry(rel, mode=full.stat().st_mode & 0o7777))
        for name in filenames:
            full = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            if full.is_symlink():
                out.append(images.Entry(rel, link=os.readlink(full)))
            elif full.is_file():
                out.append(images.Entry(rel, source=full, mode=full.lstat().st_mode & 0o7777))
    return out


def _run(argv: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise ImageBuildError(f"{' '.join(argv[:4])} ... failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def ensure_debian_root(cache: Path, packages: tuple[str, ...] = DEBIAN_PACKAGES) -> Path:
    """`packages` and their dependencies unpacked into one directory, once per package list.

    apt resolves against an empty package database (so nothing installed on this host is
    assumed) and only downloads; `dpkg-deb -x` unpacks. Needs `apt-get update` to have run.
    """
    key = hashlib.sha256(json.dumps([packages, _PRUNED]).encode()).hexdigest()[:12]
    root = cache / f"debian-root-{key}"
    if (root / ".complete").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "debian-root.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return root
        work = cache / f".building-debian-root-{key}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "archives" / "partial").mkdir(parents=True)
        (work / "status").write_text("")
        _run(["apt-get", "-q", "-y", "--download-only", "install",
              f"-oDir::State::status={work / 'status'}", f"-oDir::Cache::archives={work / 'archives'}",
              "-oDebug::NoLocking=1", "-oAPT::Install-Recommends=false", *packages],
             env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        tree = work / "root"
        tree.mkdir()
        debs = sorted((work / "archives").glob("*.deb"))
        if not debs:
            raise ImageBuildError("apt downloaded no packages; run `apt-get update` first")
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(tree)])
        (tree / ".packages").write_text("".join(f"{d.name}\n" for d in debs))
        for rel in _PRUNED:
            shutil.rmtree(tree / rel, ignore_errors=True)
        (tree / ".complete").write_text("")
        shutil.rmtree(root, ignore_errors=True)
        tree.rename(root)
        shutil.rmtree(work, ignore_errors=True)
        for old in cache.glob("debian-root-*"):
            if old != root:
                shutil.rmtree(old, ignore_errors=True)
    return root


@dataclass(frozen=True, slots=True)
class Sources:
    """Everything the images are made of."""

    conformance: build.ConformanceBinaries
    testbin: Path
    applets: tuple[str, ...]
    coredns: Path
    debian_root: Path
    kubernetes_module: Path  # the unpacked k8s.io/kubernetes module (html files, certificates)


def _userland(src: Sources) -> tuple[images.Entry, ...]:
    deb = [e for e in tree_entries(src.debian_root, prune=_PRUNED) if not e.path.startswith(".")]
    extra = [
        images.Entry("etc/passwd", data=_PASSWD.encode(), mode=0o644),
        images.Entry("etc/group", data=_GROUP.encode(), mode=0o644),
        images.Entry("etc/nsswitch.conf", data=b"passwd: files\ngroup: files\nhosts: files dns\n", mode=0o644),
        images.Entry("etc/nginx/nginx.conf", data=_NGINX_CONF.encode(), mode=0o644),
        images.Entry("var/lib/nginx"), images.Entry("var/log/nginx"), images.Entry("uploads", mode=0o777),
        images.Entry("home"), images.Entry("home/user-defined-in-image"),
        *(images.Entry(path, link=target) for path, target in _ALTERNATIVES.items()),
    ]
    return merge(images.base_entries(), deb, extra)


def build_images(manifest: Mapping[str, str], src: Sources) -> list[images.Image]:
    """The images of `plan(manifest)`'s first table, each under its upstream name."""
    built, _ = plan(manifest)
    base = images.base_entries()
    userland = _userland(src)
    agnhost_dir = src.kubernetes_module / "test" / "images"
    agnhost = (
        images.Entry("agnhost", source=src.conformance.path("agnhost")),
        images.Entry("agnhost-2", link="agnhost"),
        images.Entry("coredns", source=src.coredns),
        images.Entry("localhost.crt", source=agnhost_dir / "agnhost" / "porter" / "localhost.crt", mode=0o644),
        images.Entry("localhost.key", source=agnhost_dir / "agnhost" / "porter" / "localhost.key", mode=0o644),
    )
    out: list[images.Image] = []
    for image_id, recipe in built.items():
        name = manifest[image_id]
        labels = {"vc-appliance.local/recipe": recipe, "vc-appliance.local/upstream": name}
        if recipe == "agnhost":
            out.append(images.Image(name, userland, layers=(agnhost,), entrypoint=("/agnhost",), cmd=("pause",),
                                    labels=labels))
        elif recipe == "html":
            html = agnhost_dir / image_id.lower() / "html"
            files = tuple(images.Entry(f.name, source=f, mode=0o644) for f in sorted(html.iterdir()))
            out.append(images.Image(name, userland, layers=(agnhost, files), entrypoint=("/agnhost",),
                                    cmd=("test-webserver",), labels=labels))
        elif recipe == "debian":
            out.append(images.Image(name, userland, cmd=("bash",), labels=labels))
        elif recipe == "nginx":
            out.append(images.Image(name, userland, cmd=("nginx", "-g", "daemon off;"), stop_signal="SIGQUIT",
                                    labels=labels))
        elif recipe == "busybox":
            out.append(images.Image(name, userland, cmd=("sh",), labels=labels))
        elif recipe == "pause":
            out.append(images.Image(name, base, layers=((images.Entry("pause", data=_PAUSE.encode()),),),
                                    entrypoint=("/pause",), labels=labels))
        elif recipe == "etcd":
            out.append(images.Image(name, images.kubernetes_entries(src.testbin, src.applets),
                                    cmd=("/usr/local/bin/etcd",), labels=labels))
        elif recipe == "sample-apiserver":
            layer = (images.Entry("sample-apiserver", source=src.conformance.path("sample-apiserver")),)
            out.append(images.Image(name, base, layers=(layer,), entrypoint=("/sample-apiserver",), labels=labels))
        elif recipe == "nonewprivs":
            layer = (images.Entry("usr/local/bin/nnp", source=src.conformance.path("nnp"), mode=0o4755),)
            out.append(images.Image(name, base, layers=(layer,), cmd=("nnp",), labels=labels))
        else:
            raise ImageBuildError(f"unknown recipe {recipe!r} for {image_id}")
    return out


def kubernetes_module_dir() -> Path:
    """The unpacked `k8s.io/kubernetes` module the suite was built from (downloaded if needed)."""
    env = dict(os.environ, GOFLAGS="", GOTOOLCHAIN="local")
    info = json.loads(_run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{build.KUBERNETES_VERSION}"],
                           cwd="/", env=env))
    return Path(info["Dir"])


def ensure_archive(
    conformance: build.ConformanceBinaries, bins: build.Binaries, nodebins: build.NodeBinaries,
) -> tuple[Path, dict[str, str], dict[str, str]]:
    """(archive to `ctr images import`, ImageID -> name built, ImageID -> name not built + why).

    Blocking; builds the Debian userland once and the archive once per content.
    Raises ImageBuildError (or build.BuildError) with the failing step's output.
    """
    module = kubernetes_module_dir()
    manifest = parse_manifest((module / "test" / "utils" / "image" / "manifest.go").read_text())
    cache = build.cache_root() / "images"
    src = Sources(conformance=conformance, testbin=bins.path("k8s-testbin"), applets=build.APPLETS,
                  coredns=nodebins.coredns, debian_root=ensure_debian_root(cache), kubernetes_module=module)
    archive = images.ensure_archive(build_images(manifest, src), cache, prefix="conformance")
    built, skipped = plan(manifest)
    return (archive, {i: manifest[i] for i in built},
            {i: f"{manifest[i]} ({why})" for i, why in skipped.items()})
