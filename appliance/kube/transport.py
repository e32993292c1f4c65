"""The network layer under httpx: TLS streams whose reads return everything already received.

`trio.SSLStream.receive_some` returns at most one TLS record and then yields to the
scheduler. A kube-apiserver flushes every watch event as its own record, so a watch read
through it advances by one event per scheduling pass: with dozens of busy worker tasks in
the loop, events pile up unread in the socket while the loop is busy elsewhere (measured:
super Pod events reaching the syncer 5–17 s late, bench/RESULTS.md). `BufferedTLSStream`
does TLS itself with `ssl.SSLObject` over memory BIOs (the sans-I/O half of `ssl`): one
socket read takes up to `RECEIVE_BYTES`, and a `read()` hands over every record decrypted
so far, so a watch catches up in one pass whatever the loop's load.

`transport()` is the httpx transport that uses it; everything above the stream (pooling,
HTTP/1.1, timeouts, exceptions) stays httpx's and httpcore's. Not here: plain-HTTP
connections (passed through unchanged) and HTTP/2.

Theory of operation: `_incoming` holds ciphertext read from the socket, `_outgoing`
ciphertext waiting to be sent, `_plain` plaintext written but not yet encrypted. `write()`
only buffers (up to `FLUSH_BYTES`): HTTP/1.1 always reads after writing a request, and
`read()` first encrypts and sends everything buffered, so a request's head and body leave
as one record in one send (httpcore writes them separately; each send on loopback costs the
sender the receiver's TCP work too). `read()` then drains the SSLObject (no I/O, no
yield); only when it has nothing does it read the socket once (one checkpoint).
Every async method checks for cancellation on entry, as trio's own streams do. Closing
sends no close_notify (as `https_compatible=True` does in trio), and an EOF without one
counts as an ordinary end of stream.
"""

# httpcore's stream and backend interface takes `timeout=` (the httpx edge, STYLE rule 15).
# ruff: noqa: ASYNC109

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx
import trio

__all__ = ["RECEIVE_BYTES", "BufferedTLSStream", "TrioTLSBackend", "transport"]

#: Ciphertext taken from the socket per read: a busy watch's whole receive queue at once.
RECEIVE_BYTES = 256 * 1024
#: Plaintext a write may leave buffered until the next read (request bodies are small JSON).
FLUSH_BYTES = 64 * 1024
#: An idle connection used less than this long ago is not probed for a server close: httpcore
#: asks every idle connection of the pool at every request start and end, and each probe is a
#: `select` call (tens per request under load). Servers close idle connections far later
#: (kube-apiserver: 90 s; our pool expires them after 30 s); a close within this window (a
#: restart) costs one failed request, which callers retry as any transport error.
IDLE_PROBE_AFTER = 1.0


@contextlib.contextmanager
def _mapped(mapping: dict[type[BaseException], type[Exception]]) -> Iterator[None]:
    """Raise httpcore's exception for what the block raised, chained (httpx maps those)."""
    try:
        yield
    except tuple(mapping) as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(str(exc) or type(exc).__name__) from exc
        raise  # pragma: no cover (the tuple above and the loop cover the same types)


_READ_ERRORS: dict[type[BaseException], type[Exception]] = {
    trio.TooSlowError: httpcore.ReadTimeout,
    trio.BrokenResourceError: httpcore.ReadError,
    trio.ClosedResourceError: httpcore.ReadError,
    ssl.SSLError: httpcore.ReadError,
    OSError: httpcore.ReadError,
}
_WRITE_ERRORS: dict[type[BaseException], type[Exception]] = {
    trio.TooSlowError: httpcore.WriteTimeout,
    trio.BrokenResourceError: httpcore.WriteError,
    trio.ClosedResourceError: httpcore.WriteError,
    ssl.SSLError: httpcore.WriteError,
    OSError: httpcore.WriteError,
}
_CONNECT_ERRORS: dict[type[BaseException], type[Exception]] = {
    trio.TooSlowError: httpcore.ConnectTimeout,
    trio.BrokenResourceError: httpcore.ConnectError,
    trio.ClosedResourceError: httpcore.ConnectError,
    ssl.SSLError: httpcore.ConnectError,
    OSError: httpcore.ConnectError,
}


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else timeout


class BufferedTLSStream(httpcore.AsyncNetworkStream):
    """A client TLS connection over a trio socket stream; build it with `handshake`."""

    def __init__(self, raw: trio.SocketStream, ssl_object: ssl.SSLObject,
                 incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self._raw = raw
        self._ssl = ssl_object
        self._incoming = incoming
        self._outgoing = outgoing
        self._send_lock = trio.Lock()
        self._plain: list[bytes] = []
        self._plain_size = 0
        self._eof = False
        self._active = trio.current_time()  # last read or write

    @classmethod
    async def handshake(cls, raw: trio.SocketStream, ssl_context: ssl.SSLContext,
                        server_hostname: str | None) -> BufferedTLSStream:
        """Run the client handshake on `raw`. Raises ssl.SSLError, trio.BrokenResourceError."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        stream = cls(raw, ssl_context.wrap_bio(incoming, outgoing, server_side=False,
                                               server_hostname=server_hostname), incoming, outgoing)
        while True:
            try:
                stream._ssl.do_handshake()
            except ssl.SSLWantReadError:
                await stream._send_pending()
                await stream._receive()
                continue
            await stream._send_pending()
            return stream

    # -- I/O helpers --------------------------------------------------------------------

    async def _send_pending(self) -> None:
        async with self._send_lock:
            if self._plain:
                plain = b"".join(self._plain)
                self._plain.clear()
                self._plain_size = 0
                self._ssl.write(plain)
            data = self._outgoing.read()
            if data:
                await self._raw.send_all(data)

    async def _receive(self) -> None:
        data = await self._raw.receive_some(RECEIVE_BYTES)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def _drain(self, max_bytes: int) -> bytes | None:
        """Plaintext already decrypted or decryptable (no I/O), b"" at the end, None if none yet."""
        chunks: list[bytes] = []
        size = 0
        while size < max_bytes and not self._eof:
            try:
                chunk = self._ssl.read(max_bytes - size)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                self._eof = True
                break
            except (ssl.SSLEOFError, ssl.SSLSyscallError):
                if not self._incoming.eof:
                    raise
                self._eof = True  # EOF without close_notify: the ordinary end for HTTPS
                break
            if not chunk:
                self._eof = True
                break
            chunks.append(chunk)
            size += len(chunk)
        if chunks:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return b"" if self._eof else None

    # -- httpcore.AsyncNetworkStream ------------------------------------------------------

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped(_READ_ERRORS), trio.fail_after(_deadline(timeout)):
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._plain:
                await self._send_pending()  # the request this read waits for an answer to
            while True:
                data = self._drain(max_bytes)
                if self._outgoing.pending:  # e.g. a TLS 1.3 KeyUpdate answer
                    await self._send_pending()
                if data is not None:
                    self._active = trio.current_time()
                    return data
                await self._receive()

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        with _mapped(_WRITE_ERRORS), trio.fail_after(_deadline(timeout)):
            await trio.lowlevel.checkpoint_if_cancelled()
            self._plain.append(bytes(buffer))
            self._plain_size += len(buffer)
            self._active = trio.current_time()
            if self._plain_size >= FLUSH_BYTES:
                await self._send_pending()

    async def aclose(self) -> None:
        await self._raw.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        raise RuntimeError("TLS within TLS (an HTTPS proxy) is not supported")

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._ssl
        if info == "is_readable":  # an idle connection with data or EOF waiting is unusable
            if self._eof or self._incoming.pending:
                return True
            if trio.current_time() - self._active < IDLE_PROBE_AFTER:
                return False
            return self._raw.socket.is_readable()
        return _socket_info(self._raw, info)


def _socket_info(raw: trio.SocketStream, info: str) -> Any:
    if info == "client_addr":
        return raw.socket.getsockname()
    if info == "server_addr":
        return raw.socket.getpeername()
    if info == "socket":
        return raw.socket
    if info == "is_readable":
        return raw.socket.is_readable()
    return None


class _PlainStream(httpcore.AsyncNetworkStream):
    """A TCP connection; `start_tls` turns it into a `BufferedTLSStream`."""

    def __init__(self, raw: trio.SocketStream) -> None:
        self._raw = raw

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped(_READ_ERRORS), trio.fail_after(_deadline(timeout)):
            return await self._raw.receive_some(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        with _mapped(_WRITE_ERRORS), trio.fail_after(_deadline(timeout)):
            await self._raw.send_all(buffer)

    async def aclose(self) -> None:
        await self._raw.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        try:
            with _mapped(_CONNECT_ERRORS), trio.fail_after(_deadline(timeout)):
                return await BufferedTLSStream.handshake(self._raw, ssl_context, server_hostname)
        except BaseException:
            self._raw.socket.close()  # synchronous: also when cancelled (no socket left to the GC)
            raise

    def get_extra_info(self, info: str) -> Any:
        return _socket_info(self._raw, info)


class TrioTLSBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend for trio, with `BufferedTLSStream` for TLS."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        with _mapped(_CONNECT_ERRORS), trio.fail_after(_deadline(timeout)):
            raw = await trio.open_tcp_stream(host, port, local_address=local_address)
        for option in socket_options or ():
            raw.setsockopt(*option)
        return _PlainStream(raw)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise RuntimeError("unix sockets are not used here")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


class _Transport(httpx.AsyncHTTPTransport):
    """httpx's own HTTP/1.1 transport with its connection pool on `TrioTLSBackend`.

    httpx 0.28 (pinned) takes no network backend, so the pool it built is replaced by an
    identical one that has ours; `tests/unit/test_kube_transport.py` checks that it is used.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, http1=True, http2=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=TrioTLSBackend(),
        )


def transport(*, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """An HTTP/1.1 transport for `httpx.AsyncClient(transport=...)` that reads TLS in bulk."""
    return _Transport(ssl_context=ssl_context, limits=limits)
