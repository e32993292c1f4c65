"""h11.Connection ↔ trio.abc.Stream adapter, used for both legs of the proxy.

Owns the read/parse loop and the send path: ``next_event()`` reads at most ``READ_SIZE`` bytes
whenever h11 says NEED_DATA (answering ``100 Continue`` for a waiting client), and ``send()``
marks the connection failed with ``send_failed()`` before re-raising any error, so a half-written
message can never be followed by another one. Header blocks are bounded by
``max_incomplete_event_size``. Does not interpret requests or responses and chooses no
deadlines: the caller sets ``read_deadline`` (absolute, trio clock) for the reads of the
message it waits for, because one request body is read partly by the server and partly by
``forward``. ``watch_for_eof()`` ignores it: a peer may stay silent while we stream to it.
"""

from __future__ import annotations

import logging
import math
from typing import cast

import h11
import trio

__all__ = ["MAX_HEADER_BYTES", "READ_SIZE", "H11Stream", "ReadTimeout"]

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024


class ReadTimeout(h11.RemoteProtocolError):
    """The peer had not sent what we were reading when ``read_deadline`` passed (hint: 408).

    The stream stays usable for an answer: a cancelled TLS read loses no bytes.
    """


class H11Stream:
    """One HTTP/1.1 connection: an h11 state machine driving a byte stream."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        role: type[h11.CLIENT] | type[h11.SERVER],
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.stream = stream
        self.conn = h11.Connection(role, max_incomplete_event_size=max_header_bytes)
        #: reads for ``next_event()``/``wait_for_next_message()`` end by then (trio clock)
        self.read_deadline = math.inf

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """Return the next event from the peer, reading as needed.

        Returns ``h11.PAUSED`` when h11 waits for our side (a finished request cycle or a
        pending protocol switch); a peer that vanishes shows up as ``ConnectionClosed`` or as a
        ``RemoteProtocolError`` from h11, never as a raw trio error.

        Raises:
          ReadTimeout: a read was still waiting at ``read_deadline``.
        """
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # h11's sentinels are types
            if self.conn.they_are_waiting_for_100_continue:
                await self.send(h11.InformationalResponse(status_code=100, headers=[]))
            await self._receive()

    async def wait_for_next_message(self) -> None:
        """Return once the peer has sent a first byte of its next message, or closed.

        Reads at most once, and not at all if bytes are buffered already (pipelining). Lets a
        server tell an idle keep-alive connection from a slow request head.

        Raises:
          ReadTimeout: nothing arrived by ``read_deadline``.
        """
        buffered, closed = self.conn.trailing_data
        if not buffered and not closed:
            await self._receive()

    async def _receive(self) -> None:
        with trio.CancelScope(deadline=self.read_deadline) as deadline:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""  # an abrupt close reads as EOF; h11 decides whether that was clean
        if deadline.cancelled_caught:
            raise ReadTimeout("the peer did not send in time", error_status_hint=408)
        self.conn.receive_data(cast(bytes, data))  # h11 takes bytearray too

    async def watch_for_eof(self) -> bool:
        """Read once while our side is busy sending; True if the peer closed or broke the stream.

        Bytes that do arrive (a pipelined request) are handed to h11 and the watch ends with
        False, so this never buffers more than one read.
        """
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return True
        if not data:
            return True
        self.conn.receive_data(cast(bytes, data))
        return False

    async def send(self, event: h11.Event) -> None:
        """Serialise ``event`` and write it; on any failure mark the connection unusable."""
        try:
            data = self.conn.send(event)
            if data:
                await self.stream.send_all(data)
        except BaseException:
            self.conn.send_failed()
            raise

    def trailing_data(self) -> bytes:
        """Bytes received after the message that switched protocols (to splice onwards)."""
        data, _closed = self.conn.trailing_data
        return bytes(data)
