"""The network layer under httpx: TLS streams whose reads return everything already received.

`trio.SSLStream.receive_some` returns at most one TLS record and then yields to the
scheduler. A kube-apiserver flushes every watch event as its own record, so a watch read
through it advances by one event per scheduling pass: with dozens of busy worker tasks in
the loop, events pile up unread in the socket while the loop is busy elsewhere (measured:
super Pod events reaching the syncer 5–17 s late, bench/RESULTS.md). `BufferedTLSStream`
does TLS itself with `ssl.SSLObject` over memory BIOs (the sans-I/O half of `ssl`): one
socket read takes up to `RECEIVE_BYTES`, and a `read()` hands over every record decrypted
so far, so a watch catches up in one pass whatever the loop's load.

`Http1Transport` is the httpx transport on top of it: its own small connection pool and the
HTTP/1.1 codec of `appliance.kube.http1` instead of httpcore's pool and h11 (see its
docstring for why); `httpx.AsyncClient` above it is unchanged (requests, auth, timeouts,
the exception tree). Not here: HTTP/2 and proxies.

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
from collections.abc import Iterator, Mapping
from typing import Any

import httpcore
import httpx
import trio

from appliance.kube import http1

__all__ = ["RECEIVE_BYTES", "BufferedTLSStream", "Http1Transport", "TrioTLSBackend", "transport"]

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
def _mapped(mapping: Mapping[type[BaseException], type[Exception]]) -> Iterator[None]:
    """Raise the exception `mapping` names for what the block raised, chained."""
    try:
        yield
    except tuple(mapping) as exc:
        raise _converted(exc, mapping) from exc


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


_READ_ERROR_TYPES = tuple(_READ_ERRORS)
_WRITE_ERROR_TYPES = tuple(_WRITE_ERRORS)


def _converted(exc: BaseException, mapping: Mapping[type[BaseException], type[Exception]]) -> Exception:
    """The exception `mapping` names for `exc` (its first matching entry)."""
    for source, target in mapping.items():
        if isinstance(exc, source):
            return target(str(exc) or type(exc).__name__)
    raise AssertionError(f"unmapped {type(exc).__name__}")  # pragma: no cover


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

    # Without a timeout no cancel scope is opened (Http1Transport keeps one per exchange
    # instead), and errors are mapped without a context manager: both ran on every read.

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            if timeout is None:
                return await self._read(max_bytes)
            with trio.CancelScope(deadline=trio.current_time() + timeout):
                return await self._read(max_bytes)
            raise httpcore.ReadTimeout(f"nothing received within {timeout} s")  # the scope's deadline passed
        except _READ_ERROR_TYPES as exc:
            raise _converted(exc, _READ_ERRORS) from exc

    async def _read(self, max_bytes: int) -> bytes:
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
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._plain.append(bytes(buffer))
            self._plain_size += len(buffer)
            self._active = trio.current_time()
            if self._plain_size >= FLUSH_BYTES:
                with trio.fail_after(_deadline(timeout)):
                    await self._send_pending()
        except _WRITE_ERROR_TYPES as exc:
            raise _converted(exc, _WRITE_ERRORS) from exc

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


class _Conn:
    """One pooled connection and when it was last handed back."""

    __slots__ = ("origin", "stream", "used")

    def __init__(self, origin: tuple[bytes, bytes, int], stream: httpcore.AsyncNetworkStream) -> None:
        self.origin = origin
        self.stream = stream
        self.used = 0.0


def _close_now(stream: httpcore.AsyncNetworkStream) -> None:
    """Close a connection's socket synchronously (also under cancellation)."""
    raw = getattr(stream, "_raw", None)
    if raw is not None:
        raw.socket.close()


_TO_HTTPX: dict[type[BaseException], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    http1.ProtocolError: httpx.RemoteProtocolError,
}
_TO_HTTPX_TYPES = tuple(_TO_HTTPX)


class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 for `httpx.AsyncClient` on `http1` and `BufferedTLSStream`, with its own pool.

    Why not httpcore's pool: it scans every connection it holds on every request start and
    end, and each watch holds one, so a request cost grew with the watches open (0.85 →
    1.37 ms CPU with 40 watches); together with h11 it was most of the syncer's CPU per Pod.
    Here an idle connection is taken from a per-origin stack (newest first) and a request
    costs the same however many watches are open.

    Limits: at most `max_connections` requests in flight (a waiting request gets
    `PoolTimeout` after the pool timeout), at most `max_keepalive_connections` idle ones
    kept, each for `keepalive_expiry` s. A request whose reused connection turns out closed
    before any byte of the answer arrived is sent once more on a new connection (the server
    closed it idle, so it never saw the request).
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None, limits: httpx.Limits,
                 backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._ssl_context = ssl_context
        self._slots = trio.Semaphore(limits.max_connections or 1 << 20)
        self._max_idle = limits.max_keepalive_connections if limits.max_keepalive_connections is not None else 1 << 20
        self._expiry = limits.keepalive_expiry if limits.keepalive_expiry is not None else math.inf
        self._backend = backend or TrioTLSBackend()
        self._idle: dict[tuple[bytes, bytes, int], list[_Conn]] = {}
        self._idle_count = 0
        self._closed = False

    @property
    def idle_connections(self) -> int:
        return self._idle_count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts = request.extensions.get("timeout") or {}
        body = await request.aread()
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port or (443 if url.raw_scheme == b"https" else 80))
        try:
            data = http1.encode_request(request.method.encode("ascii"), url.raw_path, request.headers.raw, body)
        except http1.ProtocolError as exc:  # a header value that cannot be sent: ours, not the server's
            raise httpx.LocalProtocolError(str(exc)) from exc
        read_timeout = timeouts.get("read")
        try:  # errors mapped inline and no cancel scope while a slot is free: this runs per request
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                await self._wait_for_slot(timeouts.get("pool"))
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            try:
                while True:
                    conn = self._take_idle(origin)
                    reused = conn is not None
                    if conn is None:
                        conn = await self._connect(origin, timeouts.get("connect"),
                                                   request.extensions.get("sni_hostname"))
                    reader = http1.ResponseReader(head_request=request.method == "HEAD")
                    try:
                        head = await self._exchange(conn, reader, data, timeouts.get("write"), read_timeout)
                    except BaseException as exc:
                        _close_now(conn.stream)
                        stale = isinstance(exc, httpcore.ReadError | httpcore.WriteError | http1.ProtocolError)
                        if reused and stale and not reader.received:
                            continue
                        raise
                    break
            except BaseException:
                self._slots.release()
                raise
        except _TO_HTTPX_TYPES as exc:
            raise _converted(exc, _TO_HTTPX) from exc
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=_ResponseBody(self, conn, reader, read_timeout),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )

    async def _wait_for_slot(self, timeout: float | None) -> None:
        with trio.move_on_after(_deadline(timeout)):
            await self._slots.acquire()
            return
        raise httpcore.PoolTimeout("no connection free within the pool timeout")

    async def _connect(self, origin: tuple[bytes, bytes, int], timeout: float | None,
                       sni: str | None) -> _Conn:
        scheme, host, port = origin
        plain = await self._backend.connect_tcp(host.decode("ascii"), port, timeout=timeout)
        if scheme != b"https":
            return _Conn(origin, plain)
        if self._ssl_context is None:
            _close_now(plain)
            raise httpcore.ConnectError("an https URL on a transport without TLS settings")
        stream = await plain.start_tls(self._ssl_context, server_hostname=sni or host.decode("ascii"),
                                       timeout=timeout)
        return _Conn(origin, stream)

    @staticmethod
    async def _exchange(conn: _Conn, reader: http1.ResponseReader, data: bytes,
                        write_timeout: float | None, read_timeout: float | None) -> http1.Head:
        """Send the request and wait for the head; one deadline for sending and the head."""
        with trio.CancelScope(deadline=trio.current_time() + _deadline(read_timeout) + _deadline(write_timeout)):
            await conn.stream.write(data)
            while (head := reader.next_head()) is None:
                reader.feed(await conn.stream.read(RECEIVE_BYTES))
            return head
        raise httpcore.ReadTimeout("no response head within the read timeout")

    def _take_idle(self, origin: tuple[bytes, bytes, int]) -> _Conn | None:
        stack = self._idle.get(origin)
        if not stack:
            return None
        now = trio.current_time()
        while stack and now - stack[0].used > self._expiry:  # oldest first: expired ones go
            _close_now(stack.pop(0).stream)
            self._idle_count -= 1
        while stack:
            conn = stack.pop()
            self._idle_count -= 1
            if not conn.stream.get_extra_info("is_readable"):  # data or EOF waiting: unusable
                return conn
            _close_now(conn.stream)
        return None

    def _give_back(self, conn: _Conn, reusable: bool) -> None:
        self._slots.release()
        if not reusable or self._closed or self._idle_count >= self._max_idle:
            _close_now(conn.stream)
            return
        conn.used = trio.current_time()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._idle_count += 1

    async def aclose(self) -> None:
        self._closed = True
        for stack in self._idle.values():
            for conn in stack:
                _close_now(conn.stream)
        self._idle.clear()
        self._idle_count = 0
        await trio.lowlevel.checkpoint()


class _ResponseBody(httpx.AsyncByteStream):
    """A response body read from its connection; the connection goes back when it is done."""

    def __init__(self, pool: Http1Transport, conn: _Conn, reader: http1.ResponseReader,
                 read_timeout: float | None) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self._reader = reader
        self._read_timeout = read_timeout

    def __aiter__(self) -> _ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:  # per chunk of a watch: errors mapped inline, not through a context manager
            while (data := self._reader.next_body()) is None:
                self._reader.feed(await conn.stream.read(RECEIVE_BYTES, timeout=self._read_timeout))
        except BaseException as exc:
            self._release(False)
            if isinstance(exc, _TO_HTTPX_TYPES):
                raise _converted(exc, _TO_HTTPX) from exc
            raise
        if data:
            if self._reader.done:  # the last bytes: hand the connection back now
                self._release(True)
            return data
        self._release(True)
        raise StopAsyncIteration

    def _release(self, complete: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._give_back(conn, complete and self._reader.keep_alive and not self._reader.leftover)

    async def aclose(self) -> None:
        self._release(False)
        await trio.lowlevel.checkpoint()


def transport(*, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """An HTTP/1.1 transport for `httpx.AsyncClient(transport=...)` that reads TLS in bulk."""
    return Http1Transport(ssl_context=ssl_context, limits=limits)
