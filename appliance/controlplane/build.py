"""Build the upstream Kubernetes binaries from the Go module proxy, once, into a cache.

`k8s-testbin` is a multi-call binary (kube-apiserver, kube-controller-manager,
kube-scheduler, etcd, kubectl, kubelet, kube-proxy) built from the Go module in
`testbin/`; `kwok` (fake nodes that serve the kubelet API) comes from `go install`.
The real node's own tools are a second set (`ensure_node_binaries`): containerd, its runc
shim and `ctr` from `go install`, and CoreDNS with the tenantip plugin from the Go module
in `coredns/`. The third set is upstream's conformance suite (`ensure_conformance_binaries`):
the `e2e.test` binary, `agnhost` (the suite's Swiss-army test image), the `ginkgo` CLI for
parallel runs, `sample-apiserver` and `nnp` (the binaries of two more test images), all built
from a copy of `testbin/` so they link the very versions the test bed runs. Outputs live
under `$XDG_CACHE_HOME/vc-appliance/{testbin,node,conformance}-<hash>` where the hash
covers the Go sources, the versions and the Go version, so an unchanged checkout never
rebuilds and nothing lands in the repo. A file lock serialises concurrent
builds (two test sessions, `dev up` during a test run).

Run as `python -m appliance.controlplane.build` (prints the bin directory). A cold build
is long, so unless `quiet` every Go step runs with `-v` and `Progress` turns its package
lines into one status line at least every 10 s (elapsed time, packages compiled, the latest
one). `COLD_BUILD_SECONDS` holds the measured cold times that every estimate shown to users
comes from (here, `dev up`, README). This module blocks; trio code calls it through
`trio.to_thread.run_sync`.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "v1.37.2"
KWOK_VERSION = "v0.8.0"
CONTAINERD_VERSION = "v2.4.2"
CONTAINERD_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr")
#: What `ensure_conformance_binaries` builds, by output name: (`go` subcommand, package).
CONFORMANCE_TOOLS = {
    "e2e.test": ("test", "k8s.io/kubernetes/test/e2e"),
    "agnhost": ("build", "k8s.io/kubernetes/test/images/agnhost"),
    "ginkgo": ("build", "github.com/onsi/ginkgo/v2/ginkgo"),
    "sample-apiserver": ("build", "k8s.io/sample-apiserver"),
    "nnp": ("build", "k8s.io/kubernetes/test/images/nonewprivs"),
}
APPLETS = (
    "kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kubectl", "kubelet", "kube-proxy",
)
SOURCE_DIR = Path(__file__).parent / "testbin"
COREDNS_DIR = Path(__file__).parent / "coredns"
#: kwok's default node and pod stages, copied from its module at build time.
_KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


#: Cold build times measured on the reference machine (2 cores, Go modules already
#: downloaded), seconds: `ensure_binaries` (the multi-call binary with kubelet and kube-proxy),
#: `ensure_node_binaries` (containerd, shim, ctr, CoreDNS), `ensure_conformance_binaries`.
COLD_BUILD_SECONDS = {"testbin": 457, "node": 140, "conformance": 720}


def estimate(*builds: str) -> str:
    """The cold time of `builds` together, as users read it everywhere: "≈ 10 min"."""
    return f"≈ {round(sum(COLD_BUILD_SECONDS[b] for b in builds) / 60)} min"


class BuildError(RuntimeError):
    """A Go build step failed; the message carries the tail of its output."""


#: What a build step reports through: one line for a person watching the build.
Say = Callable[[str], None]

#: A line of `go build -v` output naming a package (errors have spaces, `# pkg` headers a hash).
_PACKAGE = re.compile(r"[\w.~+-]+(/[\w.~+-]+)*")


class Progress:
    """Turns `go build -v` output into a status line at least every `every` seconds.

    Go prints each package as it starts compiling one that is not cached, and `go: downloading
    MOD VERSION` while fetching modules, but a single large package or the final link can keep
    it silent for a minute: the status line is therefore driven by the clock, not by the output.
    Pure: the caller feeds lines and asks with the current time.
    """

    def __init__(self, target: str, *, started: float, every: float = 10.0) -> None:
        self.target = target
        self.started = started
        self.every = every
        self.packages = 0
        self.latest = ""
        self._reported = started

    def feed(self, line: str) -> None:
        line = line.strip()
        if line.startswith("go: downloading "):
            self.latest = "downloading " + " ".join(line.split()[2:4])
        elif _PACKAGE.fullmatch(line):
            self.packages += 1
            self.latest = line

    def due(self, now: float) -> str | None:
        """The status line if `every` seconds passed since the last one, else None."""
        if now - self._reported < self.every:
            return None
        self._reported = now
        return self.line(now)

    def line(self, now: float, *, done: bool = False) -> str:
        elapsed = int(now - self.started)
        where = "done" if done else (
            self.latest if self.latest.startswith("downloading ") else f"compiling {self.latest or '...'}")
        return f"  [{elapsed // 60}m{elapsed % 60:02d}s] {self.target}: {self.packages} packages compiled; {where}"


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


@dataclass(frozen=True, slots=True)
class NodeBinaries:
    """containerd, its shim, ctr and CoreDNS for the test bed's real node."""

    bin_dir: Path

    def path(self, tool: str) -> Path:
        return self.bin_dir / tool

    @property
    def coredns(self) -> Path:
        return self.bin_dir / "coredns"


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


def _go(verb: str, args: list[str], *, cwd: Path, env: dict[str, str], target: str, say: Say | None) -> None:
    """`go <verb> args`; with `say`, as `-v` with a `Progress` line at least every 10 s."""
    if say is None:
        _run(["go", verb, *args], cwd=cwd, env=env)
        return
    progress = Progress(target, started=time.monotonic())
    say(f"  {target}: go {verb} ...")
    tail: deque[str] = deque(maxlen=30)  # errors, without the package list
    with subprocess.Popen(["go", verb, "-v", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        fd, pending = proc.stdout.fileno(), b""
        while True:
            ready, _, _ = select.select([fd], [], [], progress.every)
            data = os.read(fd, 65536) if ready else b""
            if ready and not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                progress.feed(line)
                if not _PACKAGE.fullmatch(line.strip()):
                    tail.append(line)
            report = progress.due(time.monotonic())
            if report:
                say(report)
        code = proc.wait()
    if code != 0:
        raise BuildError(f"go {verb} of {target} failed (exit {code}):\n" + "\n".join([*tail, pending.decode()]))
    say(progress.line(time.monotonic(), done=True))


def _go_version() -> str:
    return subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=False, env=_go_env()
    ).stdout.strip()


def source_hash() -> str:
    """Hash of everything that determines the binaries' content."""
    h = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    h.update(KWOK_VERSION.encode())
    h.update(_go_version().encode())
    return h.hexdigest()[:16]


def node_source_hash() -> str:
    """Hash of what determines the node tools: containerd's version and the CoreDNS module."""
    h = hashlib.sha256(CONTAINERD_VERSION.encode())
    for path in sorted(p for p in COREDNS_DIR.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(COREDNS_DIR)).encode() + b"\0" + path.read_bytes())
    h.update(_go_version().encode())
    return h.hexdigest()[:16]


def conformance_source_hash() -> str:
    """Hash of what determines the conformance tools: the testbin module's requirements and Go."""
    h = hashlib.sha256(json.dumps(CONFORMANCE_TOOLS, sort_keys=True).encode())
    for name in ("go.mod", "go.sum"):
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    h.update(_go_version().encode())
    return h.hexdigest()[:16]


def _complete(bin_dir: Path) -> bool:
    names = (*APPLETS, "k8s-testbin", "kwok", "kwok-stages.yaml")
    return all((bin_dir / n).exists() for n in names)


def _version_ldflags() -> str:
    return " ".join(
        [
            "-s -w",
            f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}",
            "-X k8s.io/component-base/version.gitMajor=1",
            "-X k8s.io/component-base/version.gitMinor=37",
            "-X k8s.io/component-base/version.gitTreeState=clean",
            f"-X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES_VERSION}",
        ]
    )


def _build_testbin(out: Path, env: dict[str, str], say: Say | None) -> None:
    ldflags = _version_ldflags()
    _go("build", ["-trimpath", "-tags", "providerless", "-ldflags", ldflags, "-o", str(out / "k8s-testbin"), "."],
        cwd=SOURCE_DIR, env=env, target="k8s-testbin", say=say)
    for applet in APPLETS:
        (out / applet).symlink_to("k8s-testbin")


def _build_kwok(out: Path, env: dict[str, str], say: Say | None) -> None:
    env = dict(env, GOBIN=str(out), GOFLAGS="")
    # Outside any module so the testbin go.mod does not interfere.
    _go("install", [f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"], cwd=out, env=env, target="kwok", say=say)
    info = json.loads(
        _run(["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@{KWOK_VERSION}"], cwd=out, env=env)
    )
    module_dir = Path(info["Dir"])
    docs = [(module_dir / rel).read_text().strip() for rel in _KWOK_STAGES]
    (out / "kwok-stages.yaml").write_text("\n---\n".join(docs) + "\n")


def _build_containerd(out: Path, env: dict[str, str], say: Say | None) -> None:
    env = dict(env, GOBIN=str(out), GOFLAGS="")
    pkgs = [f"github.com/containerd/containerd/v2/cmd/{t}@{CONTAINERD_VERSION}" for t in CONTAINERD_TOOLS]
    _go("install", ["-trimpath", "-ldflags", "-s -w", *pkgs], cwd=out, env=env, target="containerd", say=say)


def _build_coredns(out: Path, env: dict[str, str], say: Say | None) -> None:
    _go("build", ["-trimpath", "-ldflags", "-s -w", "-o", str(out / "coredns"), "."],
        cwd=COREDNS_DIR, env=env, target="coredns", say=say)


def _build_conformance(out: Path, env: dict[str, str], say: Say | None) -> None:
    """Build every CONFORMANCE_TOOLS entry inside a scratch copy of the testbin module.

    The copy resolves each package at the versions the test bed's own binaries use (ginkgo's
    CLI then matches the library linked into e2e.test, as ginkgo requires); `-mod=mod` may add
    go.sum lines for test-only packages, which is why it is a copy and not `testbin/` itself.
    """
    src = out / ".src"
    shutil.copytree(SOURCE_DIR, src)
    try:
        for name, (verb, pkg) in CONFORMANCE_TOOLS.items():
            started = time.monotonic()
            args = ["-c", "-tags", "providerless"] if verb == "test" else []
            _go(verb, [*args, "-trimpath", "-ldflags", _version_ldflags(), "-o", str(out / name), pkg],
                cwd=src, env=env, target=name, say=say)
            log.info("built %s in %.0f s", name, time.monotonic() - started)
            (out / f"{name}.build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    finally:
        shutil.rmtree(src, ignore_errors=True)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cached_build(
    name: str, what: str, cold: str, steps: Callable[[Path, dict[str, str], Say | None], None],
    complete: Callable[[Path], bool], *, quiet: bool,
) -> Path:
    """Run `steps(tmp_dir, env, say)` once into `cache_root()/name`, under the build lock."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    bin_dir = root / name
    if complete(bin_dir):
        return bin_dir
    with open(root / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete(bin_dir):
            return bin_dir
        if shutil.which("go") is None:
            raise BuildError("the Go toolchain (go) is not on PATH; install Go 1.26")
        tmp = root / f".building-{bin_dir.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        started = time.monotonic()
        if not quiet:
            _say(f"building {what} into {bin_dir} (cold: {cold} on 2 cores; a line every 10 s)")
        steps(tmp, _go_env(), None if quiet else _say)
        shutil.rmtree(bin_dir, ignore_errors=True)
        tmp.rename(bin_dir)
        if not quiet:
            print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return bin_dir


def ensure_node_binaries(*, quiet: bool = False) -> NodeBinaries:
    """containerd (+ shim, ctr) and CoreDNS for the real node, built once; `VC_NODEBIN_DIR` overrides.

    Raises BuildError with the failing command's output.
    """
    override = os.environ.get("VC_NODEBIN_DIR")
    if override:
        return NodeBinaries(Path(override))

    def steps(tmp: Path, env: dict[str, str], say: Say | None) -> None:
        _build_containerd(tmp, env, say)
        _build_coredns(tmp, env, say)

    def complete(d: Path) -> bool:
        return all((d / n).exists() for n in (*CONTAINERD_TOOLS, "coredns"))

    return NodeBinaries(_cached_build(
        f"node-{node_source_hash()}", f"containerd {CONTAINERD_VERSION} and CoreDNS", estimate("node"),
        steps, complete, quiet=quiet,
    ))


def ensure_binaries(*, quiet: bool = False) -> Binaries:
    """Return the cached binaries, building whatever is missing.

    `VC_TESTBIN_DIR` points at an existing bin directory and skips building.
    Raises BuildError with the failing command's output.
    """
    override = os.environ.get("VC_TESTBIN_DIR")
    if override:
        return Binaries(Path(override))

    def steps(tmp: Path, env: dict[str, str], say: Say | None) -> None:
        _build_testbin(tmp, env, say)
        _build_kwok(tmp, env, say)

    return Binaries(_cached_build(
        f"testbin-{source_hash()}", f"Kubernetes {KUBERNETES_VERSION} test binaries", estimate("testbin"),
        steps, _complete, quiet=quiet,
    ))


@dataclass(frozen=True, slots=True)
class ConformanceBinaries:
    """Upstream's conformance suite (`e2e.test`), `agnhost`, `ginkgo`, `sample-apiserver`, `nnp`."""

    bin_dir: Path

    def path(self, tool: str) -> Path:
        return self.bin_dir / tool

    @property
    def e2e_test(self) -> Path:
        return self.bin_dir / "e2e.test"


def ensure_conformance_binaries(*, quiet: bool = False) -> ConformanceBinaries:
    """The conformance tools, built once (`estimate("conformance")`); `VC_CONFORMANCEBIN_DIR` overrides.

    Raises BuildError with the failing command's output.
    """
    override = os.environ.get("VC_CONFORMANCEBIN_DIR")
    if override:
        return ConformanceBinaries(Path(override))

    def complete(d: Path) -> bool:
        return all((d / n).exists() for n in CONFORMANCE_TOOLS)

    return ConformanceBinaries(_cached_build(
        f"conformance-{conformance_source_hash()}", f"the Kubernetes {KUBERNETES_VERSION} conformance suite",
        estimate("conformance"), _build_conformance, complete, quiet=quiet,
    ))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.controlplane.build",
        description="Build (once) the Kubernetes binaries used by tests and `vc-appliance dev`.",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the bin directories")
    parser.add_argument("--no-node", action="store_true",
                        help="skip the real node's tools (containerd, CoreDNS)")
    parser.add_argument("--conformance", action="store_true",
                        help="also build the conformance suite (e2e.test and its tools)")
    args = parser.parse_args(argv)
    try:
        bins = ensure_binaries(quiet=args.quiet)
        print(bins.bin_dir)
        if not args.no_node:
            print(ensure_node_binaries(quiet=args.quiet).bin_dir)
        if args.conformance:
            print(ensure_conformance_binaries(quiet=args.quiet).bin_dir)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
