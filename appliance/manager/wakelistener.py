"""A sleeping tenant's apiserver address, held by the appliance: the first connection wakes it.

While the tenant sleeps, `WakeListener.run` listens on its apiserver's address. A connection
is accepted and held (not answered); `woken` is set and `on_wake` pokes the tenant's worker.
The worker then closes the listening socket (`stop_listening`) so the apiserver can bind the
port, starts the control plane, and `hand_over` joins every held connection to the apiserver
byte for byte (TLS passes through untouched). Clients whose handshake timed out meanwhile
simply retry, as kubectl does on its next command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

logger = logging.getLogger(__name__)

#: Connections held at most while the tenant wakes; more are refused (closed).
MAX_HELD = 64


class WakeListener:
    def __init__(self, host: str, port: int, *, on_wake: Callable[[], None]) -> None:
        self.host, self.port = host, port
        self.woken = trio.Event()
        self.first_peer = ""
        self._on_wake = on_wake
        self._held: list[trio.SocketStream] = []
        self._listening = trio.CancelScope()
        self._target: trio.MemorySendChannel[tuple[str, int] | None] | None = None
        self.done = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until `stop_listening`, then join held connections once `hand_over` names the target."""
        send, receive = trio.open_memory_channel[tuple[str, int] | None](1)
        self._target = send
        try:
            async with trio.open_nursery() as nursery:
                with self._listening:
                    listeners = await trio.open_tcp_listeners(self.port, host=self.host)
                    task_status.started()
                    try:
                        await self._accept(listeners)
                    finally:
                        for listener in listeners:
                            await listener.aclose()
                if not self._held:
                    return
                with trio.move_on_after(300):
                    target = await receive.receive()
                    if target is not None:
                        for stream in self._held:
                            nursery.start_soon(_join, stream, *target)
                        self._held = []
        finally:
            for stream in self._held:
                await trio.aclose_forcefully(stream)
            self.done.set()

    async def _accept(self, listeners: list[trio.SocketListener]) -> None:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_one, listener)

    async def _accept_one(self, listener: trio.SocketListener) -> None:
        while True:
            stream = await listener.accept()
            if len(self._held) >= MAX_HELD:
                await trio.aclose_forcefully(stream)
                continue
            self._held.append(stream)
            if not self.woken.is_set():
                try:
                    host, port = stream.socket.getpeername()[:2]
                    self.first_peer = f"{host}:{port}"
                except OSError:
                    self.first_peer = "a client"
                self.woken.set()
                self._on_wake()

    def stop_listening(self) -> None:
        """Close the listening socket (held connections stay)."""
        self._listening.cancel()

    async def hand_over(self, host: str, port: int) -> None:
        """Join the held connections to the apiserver at `host:port`."""
        self._send((host, port))

    def close(self) -> None:
        """Stop listening and cut the held connections (the tenant is going away)."""
        self._send(None)

    def _send(self, target: tuple[str, int] | None) -> None:
        self.stop_listening()
        if self._target is not None:
            try:
                self._target.send_nowait(target)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def _join(client: trio.SocketStream, host: str, port: int) -> None:
    """Copy bytes both ways between a held client and the apiserver until either side closes."""
    try:
        server = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        logger.info("a held connection could not reach the woken apiserver %s:%d: %s", host, port, exc)
        await trio.aclose_forcefully(client)
        return
    async with client, server:
        async with trio.open_nursery() as nursery:
            async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                try:
                    while data := await src.receive_some(65536):
                        await dst.send_all(data)
                    await dst.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    nursery.cancel_scope.cancel()

            nursery.start_soon(pipe, client, server)
            nursery.start_soon(pipe, server, client)
