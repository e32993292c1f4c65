"""Build the appliance's container image on this host with podman, without a registry.

The image is the repository's `Containerfile`, built with `--network=none` from a context made
here: the Kubernetes binaries `build` already produced (hard links, no copy) and a wheelhouse of
the project pinned to the versions of the running environment. Its base, when no registry is
reachable, is a Debian rootfs made with `debootstrap --variant=minbase` (python3 included) and
`podman import`ed; the rootfs tarball is cached under `~/.cache/vc-appliance/images/`.

podman as Debian ships it cannot run containers on a cgroup-v1 host whose limits are below its
defaults (see ../shared/CONTAINER.md), so `podman_env()` points `CONTAINERS_CONF` at a file
with runc, cgroupfs and this host's own ulimits. Every tool here is blocking: run it from a
thread or from the command line (`python -m appliance.controlplane.containerimage`, `make image`).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance import __version__
from appliance.controlplane import build

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
IMAGE = f"localhost/vc-appliance:{__version__}"
SUITE = "bookworm"
MIRROR = os.environ.get("VCA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: The multi-call binary's applets the appliance runs (process provisioner, kubeconfig checks).
APPLETS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
INPUTS_LABEL = "io.vc-appliance.inputs"


class ImageError(RuntimeError):
    """A step of the image build failed; the message names the step and has its output tail."""


def _run(cmd: list[str], *, env: dict[str, str] | None = None, what: str = "") -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise ImageError(f"{what or ' '.join(cmd[:3])} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _say(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def containers_conf(nofile: tuple[int, int], nproc: tuple[int, int]) -> str:
    """containers.conf for this host: its own ulimits (podman's defaults exceed them), runc, cgroupfs.

    conmon runs with at most 32768 processes, so a higher nproc limit could not be set.
    """
    def cap(limit: int, ceiling: int) -> int:
        return ceiling if limit == resource.RLIM_INFINITY else min(limit, ceiling)

    files = cap(nofile[1], 1 << 20)
    procs = cap(nproc[1], 32768)
    return (
        "[containers]\n"
        f'default_ulimits = ["nofile={files}:{files}", "nproc={procs}:{procs}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )


def podman_env() -> dict[str, str]:
    """The environment for podman: ours unless the caller set CONTAINERS_CONF already."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env:
        path = build.cache_root() / "podman" / "containers.conf"
        text = containers_conf(resource.getrlimit(resource.RLIMIT_NOFILE),
                               resource.getrlimit(resource.RLIMIT_NPROC))
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        env["CONTAINERS_CONF"] = str(path)
    return env


def podman(*args: str, what: str = "") -> str:
    if shutil.which("podman") is None:
        raise ImageError("podman is not installed (`apt-get install podman`, or `make hostdeps` as root)")
    return _run(["podman", *args], env=podman_env(), what=what or f"podman {args[0]}")


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], env=podman_env(), check=False).returncode == 0


def image_label(name: str, label: str) -> str:
    if not image_exists(name):
        return ""
    return podman("image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', name).strip()


def _base_key() -> str:
    return hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]


def base_image_name() -> str:
    return f"localhost/vc-appliance-base:{SUITE}-{_base_key()}"


def _base_tarball() -> Path:
    """The debootstrapped rootfs as a tar, made once (about 45 s, needs root and the Debian mirror)."""
    images = build.cache_root() / "images"
    tarball = images / f"debian-{SUITE}-{_base_key()}.tar"
    if tarball.exists():
        return tarball
    images.mkdir(parents=True, exist_ok=True)
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (`apt-get install debootstrap`, or `make hostdeps`)")
    with open(images / ".base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        _say(f"making a Debian {SUITE} base with debootstrap from {MIRROR} (about 45 s)")
        with tempfile.TemporaryDirectory(dir=images, prefix=".rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                  SUITE, str(rootfs), MIRROR], what="debootstrap")
            for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            (rootfs / "etc/apt/sources.list").write_text(
                f"deb {MIRROR} {SUITE} main\n"
                f"deb {MIRROR} {SUITE}-updates main\n"
                f"deb {MIRROR.rsplit('/debian', 1)[0]}/debian-security {SUITE}-security main\n"
            )
            partial = tarball.with_suffix(".partial")
            _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], what="tar of the rootfs")
            partial.rename(tarball)
    return tarball


def ensure_base_image() -> str:
    """A local Debian image with python3, imported from the cached rootfs when podman lacks it."""
    name = base_image_name()
    if not image_exists(name):
        tarball = _base_tarball()
        _say(f"importing {tarball.name} as {name}")
        podman("import", str(tarball), name, what="podman import")
    return name


def _pins() -> str:
    """The running environment's versions (not the project itself), to build the image with them."""
    out = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], what="pip freeze")
    return "".join(line + "\n" for line in out.splitlines()
                   if line and not line.startswith(("-e ", "#")) and "vc-appliance" not in line.lower())


def _inputs_hash(kube_bin: Path, base: str) -> str:
    """What decides the image's content: the Containerfile, the package sources, the binaries, the base."""
    h = hashlib.sha256()
    for path in sorted([CONTAINERFILE, ROOT / "pyproject.toml", ROOT / "README.md",
                        *(ROOT / "appliance").rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    h.update(str(kube_bin.resolve()).encode() + base.encode())
    return h.hexdigest()[:16]


def _context(ctx: Path, kube_bin: Path) -> None:
    """Containerfile + kube-bin/ (hard links, or copies across file systems) + wheels/."""
    shutil.copy(CONTAINERFILE, ctx / "Containerfile")
    bins = ctx / "kube-bin"
    bins.mkdir()
    target = (kube_bin / APPLETS[0]).resolve()
    try:
        os.link(target, bins / target.name)
    except OSError:
        shutil.copy2(target, bins / target.name)
    for applet in APPLETS:
        (bins / applet).symlink_to(target.name)
    pins = ctx / "pins.txt"
    pins.write_text(_pins())
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
          "--wheel-dir", str(ctx / "wheels"), "--constraint", str(pins), str(ROOT)], what="pip wheel")


def ensure_image(name: str = IMAGE, *, base: str | None = None, force: bool = False) -> str:
    """Build the appliance image unless one with the same inputs exists; returns its name."""
    kube_bin = build.ensure_binaries().bin_dir
    # Our own base has python3, so the build needs no network; another base may need apt.
    network = "none" if base is None else "host"
    base = base or ensure_base_image()
    inputs = _inputs_hash(kube_bin, base)
    if not force and image_label(name, INPUTS_LABEL) == inputs:
        return name
    started = time.monotonic()
    _say(f"building {name} from {base} (network: {network}; about 30 s)")
    with tempfile.TemporaryDirectory(dir=kube_bin.parent, prefix=".image-ctx-") as tmp:
        ctx = Path(tmp)
        _context(ctx, kube_bin)
        podman("build", f"--network={network}", "--build-arg", f"BASE={base}", "--label", f"{INPUTS_LABEL}={inputs}",
               "-t", name, "-f", str(ctx / "Containerfile"), str(ctx), what="podman build")
    _say(f"built {name} in {time.monotonic() - started:.0f} s")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.controlplane.containerimage",
                                     description="Build the vc-appliance container image with podman.")
    parser.add_argument("--tag", default=IMAGE)
    parser.add_argument("--base", help="base image (default: a Debian image made here with debootstrap)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the inputs did not change")
    args = parser.parse_args(argv)
    try:
        name = ensure_image(args.tag, base=args.base, force=args.force)
    except (ImageError, build.BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
