"""systemd's notify protocol (READY=1, STOPPING=1, WATCHDOG=1) without extra dependencies.

`NOTIFY_SOCKET` names a datagram socket (a path, or `@name` for the abstract namespace);
each message is one datagram of newline-separated assignments. Without the variable
every call is a no-op, so the same binary runs under systemd, in a container or by hand.
`watchdog()` pings at half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import NoReturn

import trio


def _address(raw: str) -> str | bytes:
    return b"\0" + raw[1:].encode() if raw.startswith("@") else raw


@dataclass(frozen=True, slots=True)
class Notifier:
    socket_path: str | None
    watchdog_usec: int | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Notifier:
        env = dict(os.environ) if env is None else env
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if pid is not None and pid != str(os.getpid()):
            usec = None  # the watchdog is meant for another process
        return cls(env.get("NOTIFY_SOCKET") or None, int(usec) if usec and usec.isdigit() else None)

    async def send(self, message: str) -> bool:
        """Send one notification; False when not under systemd or the socket is gone."""
        if not self.socket_path:
            return False
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            await sock.sendto(message.encode(), _address(self.socket_path))
        except OSError:
            return False
        finally:
            sock.close()
        return True

    async def watchdog(self) -> NoReturn:
        """Ping the watchdog forever (sleeps forever when none is configured)."""
        if not self.socket_path or not self.watchdog_usec:
            await trio.sleep_forever()
        while True:
            await self.send("WATCHDOG=1")
            await trio.sleep(self.watchdog_usec / 2_000_000)
