"""Install the Debian packages the test bed needs, when they are missing.

The Go-built binaries come from `build`; what must come from the distribution is what
needs cgo or the kernel's userland. The real node: runc, the CNI plugins, iptables and
conntrack (for CNI and kube-proxy), busybox-static (the base of every local image), iproute2
and util-linux (namespaces and links). The container suite: podman (builds and runs the
appliance image) and debootstrap (its base image, without a registry). `make dev` and
`make test` run this first, so a fresh machine gets them; as non-root, or without apt, it
only says what is missing (the test bed then reports why it cannot start a real node).

Run as `python -m appliance.controlplane.hostdeps [--check]`. Blocking; not for the loop.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

PACKAGES = (
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
    "busybox-static",
    "iproute2",
    "util-linux",
    "podman",
    "debootstrap",
)


def missing(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """The packages dpkg does not list as installed (all of them without dpkg)."""
    if shutil.which("dpkg-query") is None:
        return list(packages)
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True, text=True, check=False,
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                   check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.controlplane.hostdeps")
    parser.add_argument("--check", action="store_true", help="only report what is missing")
    args = parser.parse_args(argv)
    need = missing()
    if not need:
        return 0
    if args.check or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"test bed: missing Debian packages {' '.join(need)}; install them with "
              f"`apt-get install {' '.join(need)}` (as root) to run Pods on a real node "
              f"and the container suite",
              file=sys.stderr)
        return 0
    print(f"installing Debian packages for the test bed: {' '.join(need)}", file=sys.stderr, flush=True)
    try:
        install(need)
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(exc.cmd[:3])} failed with exit {exc.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
