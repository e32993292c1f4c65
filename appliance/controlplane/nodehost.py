"""The host side of a real node: its namespaces, transit link, cgroup root, and clean-up.

Theory of operation. A real node must not touch the host beyond what it can take back:

* One *holder* process (`unshare --net --mount --propagation private`) owns a new network
  namespace and a new mount namespace. Inside, tmpfs covers `/run`, `/var/lib` and `/var/log`,
  where containerd, runc, CNI and the kubelet keep paths of their own that no flag moves
  (`/run/containerd`, `/var/lib/cni`, `/var/lib/kubelet/device-plugins`,
  `/var/log/containers`). containerd, its shims, the kubelet and kube-proxy join both
  namespaces with `nsenter`. Their mounts (tmpfs, overlay roots, Pod network namespaces,
  the kubelet's shared root) stay in that mount namespace and vanish with its last process.
* A veth pair links the host (`vcnode<i>`, `10.213.<i>.1`) to the node (`eth0`,
  `10.213.<i>.2`), plus a host route to the node's Pod network. The pair, the route, the CNI
  bridge and every iptables rule of CNI and kube-proxy live and die with the namespace.
  The host keeps `ip_forward` off: Pod traffic to the host leaves the node masqueraded.
* The kubelet's cgroup root `/vc-node-<i>` is made in every v1 hierarchy beforehand.
* `kernel.panic`, `kernel.panic_on_oops` and `vm.overcommit_memory` are VM-wide and the
  kubelet rewrites them; the values found before the first node are restored after the last.

Every node is recorded in `~/.cache/vc-appliance/nodes/<i>.json` (owner pid, namespace
identities, cgroup root). `reap_stale` tears down nodes whose owner died without doing so
(a SIGKILLed test run): it kills every process in their namespaces or cgroups, then removes
the cgroups. This module runs commands and reads /proc; it is called from trio through
`trio.run_process` and `trio.to_thread`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.controlplane import build

log = logging.getLogger(__name__)

CGROUP_MOUNT = Path("/sys/fs/cgroup")
KERNEL_TUNABLES = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory")
HOLDER_SCRIPT = """set -e
for dir in /run /var/lib /var/log; do mount -t tmpfs -o mode=0755 vc-node "$dir"; done
touch "$READY"
exec sleep 2147483647
"""


class HostError(RuntimeError):
    """The host cannot run a real node; the message says what is missing or what failed."""


def registry_dir() -> Path:
    return build.cache_root() / "nodes"


@dataclass(frozen=True, slots=True)
class Record:
    """What a node leaves behind for whoever cleans up after it."""

    index: int
    owner_pid: int
    holder_pid: int
    mnt_ns: str
    net_ns: str
    cgroup_root: str
    host_link: str
    state_dir: str
    #: In the environment of every node process, so that a namespace identity reused by the
    #: kernel after the node died never makes us kill a stranger.
    marker: str


def ns_id(pid: int | str, kind: str) -> str:
    """`mnt:[4026532...]`-style identity of a process's namespace ("" if it is gone)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return ""


def pids_in_namespace(kind: str, ident: str) -> list[int]:
    if not ident:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and ns_id(entry, kind) == ident:
            found.append(int(entry))
    return found


def cgroup_hierarchies() -> list[Path]:
    """The mounted cgroup v1 hierarchies (cpu, memory, ..., name=systemd)."""
    if not CGROUP_MOUNT.is_dir():
        return []
    return sorted(p for p in CGROUP_MOUNT.iterdir()
                  if p.is_dir() and p.name != "unified" and (p / "cgroup.procs").exists())


def make_cgroup_root(root: str) -> None:
    """Create `root` in every hierarchy; cpuset needs its cpus and mems filled in first."""
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / root.lstrip("/")
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for knob in ("cpuset.cpus", "cpuset.mems"):
                value = (hierarchy / knob).read_text().strip()
                if not (path / knob).read_text().strip():
                    (path / knob).write_text(value)


def _cgroup_dirs(root: str) -> list[Path]:
    """Every directory of the tree `root` in every hierarchy, deepest first."""
    dirs: list[Path] = []
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / root.lstrip("/")
        if top.is_dir():
            dirs += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def pids_in_cgroup(root: str) -> set[int]:
    pids: set[int] = set()
    for d in _cgroup_dirs(root):
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
    return pids


def remove_cgroup_root(root: str) -> list[Path]:
    """rmdir the tree, deepest first; returns what could not be removed (still has tasks)."""
    left = []
    for d in _cgroup_dirs(root):
        try:
            d.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            left.append(d)
    return left


def kill_all(pids: set[int] | list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _has_marker(pid: int, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _members(rec: Record) -> set[int]:
    in_ns = set(pids_in_namespace("mnt", rec.mnt_ns)) | set(pids_in_namespace("net", rec.net_ns))
    return {p for p in in_ns if _has_marker(p, rec.marker)} | pids_in_cgroup(rec.cgroup_root)


def destroy(rec: Record, *, deadline: float = 20.0) -> list[str]:
    """Kill everything of the node and remove its cgroups; returns what is left (ideally [])."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        members = _members(rec)
        if not members:
            break
        kill_all(members)
        time.sleep(0.05)  # SIGKILLed processes take a moment to leave /proc (no event to wait on)
    left: list[str] = []
    while time.monotonic() < end:
        left = [str(p) for p in remove_cgroup_root(rec.cgroup_root)]
        if not left:
            break
        kill_all(pids_in_cgroup(rec.cgroup_root))
        time.sleep(0.05)
    members = _members(rec)
    if members:
        left.append(f"processes {sorted(members)}")
    if link_exists(rec.host_link) and not pids_in_namespace("net", rec.net_ns):
        # The pair goes with the namespace, which may take a moment to be freed.
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["ip", "link", "del", rec.host_link], check=True, capture_output=True)
    return left


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    d = registry_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield d


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register(rec: Record) -> None:
    """Record a node; the first one also records the kernel tunables the kubelet changes."""
    with _locked() as d:
        tunables = d / "tunables.json"
        if not tunables.exists():
            saved = {t: Path("/proc/sys", t).read_text().strip() for t in KERNEL_TUNABLES}
            tunables.write_text(json.dumps(saved))
        (d / f"{rec.index}.json").write_text(json.dumps(asdict(rec)))


def unregister(index: int) -> None:
    """Forget a node; after the last one, put the kernel tunables back."""
    with _locked() as d:
        (d / f"{index}.json").unlink(missing_ok=True)
        if any(d.glob("[0-9]*.json")):
            return
        tunables = d / "tunables.json"
        try:
            saved = json.loads(tunables.read_text())
        except (OSError, ValueError):
            return
        for name, value in saved.items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", name).write_text(value)
        tunables.unlink(missing_ok=True)


def records() -> list[Record]:
    out = []
    for path in sorted(registry_dir().glob("[0-9]*.json")) if registry_dir().exists() else ():
        with contextlib.suppress(OSError, ValueError, TypeError):
            out.append(Record(**json.loads(path.read_text())))
    return out


def reap_stale() -> list[int]:
    """Tear down recorded nodes whose owner process is gone; returns their indexes."""
    reaped = []
    for rec in records():
        if _alive(rec.owner_pid):
            continue
        left = destroy(rec)
        if left:
            log.warning("stale real node %d: could not remove %s", rec.index, left)
        unregister(rec.index)
        reaped.append(rec.index)
    return reaped


def _marked_processes(marker: str | None = None) -> list[int]:
    """Processes of a node: those carrying `marker`, or any node's marker variable."""
    want = marker.encode() if marker else b"VC_NODE_MARKER="
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            if any(v == want if marker else v.startswith(want) for v in env):
                found.append(int(entry))
    return found


def leftovers(index: int | None = None, *, marker: str | None = None) -> list[str]:
    """What real nodes (or only node `index`, with its `marker`) left on this host.

    Processes are attributed by marker only: without one, every node's processes count.

    Records, processes, links, routes, cgroups, and mounts that leaked into the host's mount
    namespace. Network namespaces, the CNI bridge and iptables chains live inside a node's own
    namespaces: they are gone once none of its processes is left.
    """
    link = f"vcnode{index}" if index is not None else None
    records = registry_dir().glob(f"{index}.json" if index is not None else "[0-9]*.json")
    found = [f"record {p.name}" for p in records] if registry_dir().exists() else []
    found += [f"process {pid}" for pid in _marked_processes(marker) if pid != os.getpid()]
    found += [f"link {p.name}" for p in Path("/sys/class/net").glob(link or "vcnode*")]
    routes = subprocess.run(["ip", "route", "show"], capture_output=True, text=True, check=False).stdout
    found += [f"route {line.strip()}" for line in routes.splitlines()
              if (link in line.split() if link else " dev vcnode" in line)]
    for hierarchy in cgroup_hierarchies():
        found += [f"cgroup {d}" for d in hierarchy.glob(f"vc-node-{index}" if index is not None else "vc-node-*")]
    with contextlib.suppress(OSError):  # a node's mounts must never show in the host's namespace
        found += [f"mount {line.split()[4]}" for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if " vc-node " in line or "/io.containerd." in line or "/kubelet/pods/" in line]
    return found


def check_host() -> str | None:
    """Why this host cannot run a real node, or None when it can (quick, no side effects)."""
    if os.geteuid() != 0:
        return "a real node needs root (network and mount namespaces, cgroups)"
    for tool in ("unshare", "nsenter", "ip", "iptables", "mount"):
        if not any(Path(d, tool).exists() for d in ("/usr/bin", "/usr/sbin", "/bin", "/sbin")):
            return f"{tool} is not installed"
    if not Path("/usr/sbin/runc").exists():
        return "runc is not installed (Debian package runc)"
    if not Path(CNI_BIN_DIR, "bridge").exists():
        return f"the CNI plugins are not installed in {CNI_BIN_DIR} (Debian package containernetworking-plugins)"
    if not Path("/bin/busybox").exists():
        return "busybox is not installed (Debian package busybox-static)"
    names = {h.name for h in cgroup_hierarchies()}
    unified = (CGROUP_MOUNT / "cgroup.controllers").exists()
    missing = {"cpu", "cpuacct", "cpuset", "memory", "pids"} - names
    if missing and not unified:
        return f"cgroup controllers {sorted(missing)} are not mounted"
    if unified:
        return "cgroup v2 hosts are not supported by this test bed yet (it is written for cgroup v1)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay file system"
    return None


CNI_BIN_DIR = Path("/usr/lib/cni")
RUNC = Path("/usr/sbin/runc")
