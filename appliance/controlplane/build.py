"""Build the upstream Kubernetes binaries from the Go module proxy, once, into a cache.

`k8s-testbin` is a multi-call binary (kube-apiserver, kube-controller-manager,
kube-scheduler, etcd, kubectl) built from the Go module in `testbin/`; `kwok` (fake
nodes that serve the kubelet API) comes from `go install`. Outputs live under
`$XDG_CACHE_HOME/vc-appliance/testbin-<hash>` where the hash covers the Go sources and
the Go version, so an unchanged checkout never rebuilds and nothing lands in the repo.
A file lock serialises concurrent builds (two test sessions, `dev up` during a test run).

Run as `python -m appliance.controlplane.build` (prints the bin directory). This module
blocks; trio code calls it through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "v1.37.2"
KWOK_VERSION = "v0.8.0"
APPLETS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kubectl")
SOURCE_DIR = Path(__file__).parent / "testbin"
#: kwok's default node and pod stages, copied from its module at build time.
_KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


class BuildError(RuntimeError):
    """A Go build step failed; the message carries the tail of its output."""


@dataclass(frozen=True, slots=True)
class Binaries:
    """Paths of the built tools."""

    bin_dir: Path

    def path(self, applet: str) -> Path:
        return self.bin_dir / applet

    @property
    def kwok(self) -> Path:
        return self.bin_dir / "kwok"

    @property
    def kwok_stages(self) -> Path:
        return self.bin_dir / "kwok-stages.yaml"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vc-appliance"


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", CGO_ENABLED="0", GOFLAGS="-mod=mod")
    return env


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise BuildError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def source_hash() -> str:
    """Hash of everything that determines the binaries' content."""
    h = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    h.update(KWOK_VERSION.encode())
    go_version = subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=False, env=_go_env()
    ).stdout.strip()
    h.update(go_version.encode())
    return h.hexdigest()[:16]


def _complete(bin_dir: Path) -> bool:
    names = (*APPLETS, "k8s-testbin", "kwok", "kwok-stages.yaml")
    return all((bin_dir / n).exists() for n in names)


def _build_testbin(out: Path, env: dict[str, str]) -> None:
    ldflags = " ".join(
        [
            "-s -w",
            f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}",
            "-X k8s.io/component-base/version.gitMajor=1",
            "-X k8s.io/component-base/version.gitMinor=37",
            "-X k8s.io/component-base/version.gitTreeState=clean",
            f"-X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES_VERSION}",
        ]
    )
    _run(
        ["go", "build", "-trimpath", "-tags", "providerless", "-ldflags", ldflags,
         "-o", str(out / "k8s-testbin"), "."],
        cwd=SOURCE_DIR,
        env=env,
    )
    for applet in APPLETS:
        (out / applet).symlink_to("k8s-testbin")


def _build_kwok(out: Path, env: dict[str, str]) -> None:
    env = dict(env, GOBIN=str(out), GOFLAGS="")
    # Outside any module so the testbin go.mod does not interfere.
    _run(["go", "install", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"], cwd=out, env=env)
    info = json.loads(
        _run(["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@{KWOK_VERSION}"], cwd=out, env=env)
    )
    module_dir = Path(info["Dir"])
    docs = [(module_dir / rel).read_text().strip() for rel in _KWOK_STAGES]
    (out / "kwok-stages.yaml").write_text("\n---\n".join(docs) + "\n")


def ensure_binaries(*, quiet: bool = False) -> Binaries:
    """Return the cached binaries, building whatever is missing.

    `VC_TESTBIN_DIR` points at an existing bin directory and skips building.
    Raises BuildError with the failing command's output.
    """
    override = os.environ.get("VC_TESTBIN_DIR")
    if override:
        return Binaries(Path(override))
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    bin_dir = root / f"testbin-{source_hash()}"
    if _complete(bin_dir):
        return Binaries(bin_dir)
    with open(root / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(bin_dir):
            return Binaries(bin_dir)
        if shutil.which("go") is None:
            raise BuildError("the Go toolchain (go) is not on PATH; install Go 1.26")
        tmp = root / f".building-{bin_dir.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        env = _go_env()
        started = time.monotonic()
        if not quiet:
            print(f"building Kubernetes {KUBERNETES_VERSION} test binaries into {bin_dir} "
                  "(cold: ~20-30 min on 2 cores)", file=sys.stderr, flush=True)
        _build_testbin(tmp, env)
        _build_kwok(tmp, env)
        shutil.rmtree(bin_dir, ignore_errors=True)
        tmp.rename(bin_dir)
        if not quiet:
            print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return Binaries(bin_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.controlplane.build",
        description="Build (once) the Kubernetes binaries used by tests and `vc-appliance dev`.",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the bin directory")
    args = parser.parse_args(argv)
    try:
        bins = ensure_binaries(quiet=args.quiet)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(bins.bin_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
