"""TCP ports of local control planes: chosen by bind-then-close, checked again before use.

`free_port` lets the kernel pick a port and closes it at once, so a port saved in a plan can
be taken by another program before our child binds it (between the choice and the start, or
while the appliance was down). `taken_by_stranger` answers the question a starter has to ask
first: does some process other than our own children hold the port? It tries to bind the
port with SO_REUSEADDR, as Go's listeners do (connections left in TIME_WAIT do not count),
and when that fails it looks up who listens there: the listening socket's inode from
/proc/net/tcp{,6} among the open files of the pids we recorded. Linux only; blocking (a
/proc scan): call it through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from pathlib import Path

LOOPBACK = "127.0.0.1"
_TCP_LISTEN = "0A"


def free_port(host: str = LOOPBACK) -> int:
    """A currently free TCP port on `host` (the kernel's choice)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name: what it resolves to first
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]


def bindable(host: str, port: int) -> bool:
    """Whether a listener (with SO_REUSEADDR, like Go's) could bind `host:port` now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on `port` (any address), from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def held_by(port: int, pids: Iterable[int]) -> bool:
    """Whether one of `pids` has a socket listening on `port` open."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not inodes:
        return False
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") in inodes:
                        return True
    return False


def taken_by_stranger(host: str, port: int, *, ours: Iterable[int]) -> bool:
    """Whether `host:port` is held by anything but the processes `ours` (our kept children)."""
    return not bindable(host, port) and not held_by(port, ours)
