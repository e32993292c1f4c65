"""The upstream leg: one routed request relayed to the super apiserver or a kubelet.

Theory of operation
-------------------
``forward()`` opens a fresh TLS connection per request (ALPN http/1.1 only, its own SSLContext),
sends the rewritten request with a whitelist of the client's headers plus our own credentials
(bearer token or client certificate), then streams the request body up and the response down.
Nothing is buffered beyond one read of ``READ_SIZE``: each upstream ``Data`` event is written
downstream before the next read, so a slow reader stalls the upstream sender (backpressure).
While the response streams, a watcher reads the client side once so a vanished client cancels
the relay at once instead of at the next write. If the upstream answers ``101 Switching
Protocols``, the same 101 goes downstream, both h11 connections are in SWITCHED_PROTOCOL, and
``splice()`` pumps raw bytes both ways (starting with each side's ``trailing_data``) in one
nursery until either side ends, fails, or the idle/total deadline passes. An upstream that
closes while the client still sends (a command that exits before reading all its stdin: the
kubelet resets the connection) must not cost the client the output and exit status the
upstream already sent: after the 101 a failed write upstream only ends the client→upstream
direction (`UpstreamTransport`), and what the upstream sent is still read and delivered. Failures before any
response byte went downstream raise ``UpstreamError`` (the server answers 502/504); later ones
end the exchange, leaving the downstream connection unfinished so the server closes it.

Exceptions::

    UpstreamError        the upstream could not be reached or gave no usable response head
    └── UpstreamTimeout  ... because a deadline passed
"""

from __future__ import annotations

import dataclasses
import logging
import math
import ssl
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import trio

from appliance.kube import creds as kube_creds
from appliance.proxy import h11io, routes, tls

__all__ = [
    "UpstreamConfig",
    "UpstreamError",
    "UpstreamTimeout",
    "forward",
    "splice",
    "upstream_from_credentials",
]

log = logging.getLogger(__name__)

CLOSE_GRACE = 2.0  # seconds a polite TLS close may take during cleanup

# Client headers that carry meaning for the upstream; everything else (Authorization,
# Impersonate-*, X-Remote-*, cookies, proxy headers, Expect, ...) is dropped.
_REQUEST_HEADERS = frozenset(
    {
        b"accept",
        b"accept-encoding",
        b"user-agent",
        b"content-type",
        b"content-length",
        b"x-stream-protocol-version",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
    }
)
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class UpstreamError(Exception):
    """The upstream failed before any part of a response was relayed downstream."""


class UpstreamTimeout(UpstreamError):
    """A connect, response-head or total deadline passed before a response was relayed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    """Where the proxy forwards to, with what credentials, under which deadlines (seconds)."""

    mode: routes.Mode
    host: str
    port: int
    ssl_context: ssl.SSLContext = field(repr=False)
    server_hostname: str | None = None  # SNI and certificate name; None → ``host``
    token: str | None = field(default=None, repr=False)  # sent as ``Authorization: Bearer``
    token_file: Path | None = None  # re-read per request (projected tokens rotate); wins over token
    connect_timeout: float = 10.0  # TCP connect + TLS handshake
    response_timeout: float = 60.0  # request sent → response head received
    idle_timeout: float = 4 * 3600.0  # no bytes either way while streaming (kubelet default 4h)
    total_timeout: float = math.inf  # the whole exchange, including streams
    #: kubelet mode: dial the kubelet of the Pod's node (its ``status.hostIP``) instead of ``host``,
    #: so one appliance serves every node of the super cluster.
    host_from_pod: bool = False

    def for_pod(self, pod: Mapping[str, Any]) -> UpstreamConfig:
        """The config for one request about ``pod``; raises UpstreamError if it has no node yet."""
        if not self.host_from_pod:
            return self
        status = pod.get("status")
        host = status.get("hostIP") if isinstance(status, Mapping) else None
        if not isinstance(host, str) or not host:
            raise UpstreamError("the pod has no node address yet")
        return dataclasses.replace(self, host=host, server_hostname=None)

    @property
    def host_header(self) -> bytes:
        name = self.server_hostname or self.host
        if ":" in name:  # IPv6 literal
            name = f"[{name}]"
        return f"{name}:{self.port}".encode("ascii")


def upstream_from_credentials(
    creds: kube_creds.Credentials, *, mode: routes.Mode
) -> UpstreamConfig:
    """Build an ``UpstreamConfig`` (default deadlines) from kube ``Credentials``.

    For kubelet mode pass credentials whose ``server`` is the kubelet, e.g.
    ``https://127.0.0.1:10250`` with the kubelet client certificate and
    ``insecure_skip_tls_verify=True`` (as the original does). Blocking (writes the client key to
    a private temporary file while loading it): call at start-up or from a thread.
    """
    url = urllib.parse.urlsplit(creds.server)
    if url.scheme != "https" or not url.hostname:
        raise ValueError("upstream server must be an https:// URL")
    return UpstreamConfig(
        mode=mode,
        host=url.hostname,
        port=url.port or 443,
        ssl_context=kube_creds.ssl_context(creds, alpn=list(tls.ALPN)),
        server_hostname=creds.tls_server_name or None,
        token=creds.token or None,
        token_file=creds.token_file,
    )


async def forward(
    *, client: h11io.H11Stream, request: h11.Request, route: routes.Upstream, config: UpstreamConfig
) -> int:
    """Relay one request cycle upstream and its response back; return the status sent.

    ``request`` has just been read from ``client``; its body (if any) has not.

    Raises:
      UpstreamError: nothing was sent downstream yet; the caller should answer 502 (504 for
        ``UpstreamTimeout``).
      h11.RemoteProtocolError: the client broke HTTP while sending its body, or (as
        ``h11io.ReadTimeout``) missed the ``read_deadline`` the caller set for it.

    Resource handling: the upstream connection is always closed on return. The downstream
    connection is left open; it is reusable only if both h11 sides reached DONE.
    """
    upgrade = route.upgrade and _wants_upgrade(request.headers)
    token = config.token
    if config.token_file is not None:
        try:
            token = await trio.to_thread.run_sync(kube_creds.read_token_file, config.token_file)
        except kube_creds.KubeconfigError as exc:
            raise UpstreamError("bearer token file unreadable") from exc
    headers = _request_headers(request.headers, config=config, upgrade=upgrade, token=token)
    outcome = _Outcome()
    with trio.move_on_after(config.total_timeout):
        server = await _connect(config)
        try:
            await _exchange(
                client, server, route=route, headers=headers, config=config, outcome=outcome
            )
        finally:
            await _close(server.stream)
    if outcome.status is None:  # the total deadline fired before anything went downstream
        raise UpstreamTimeout("total deadline passed")
    return outcome.status


@dataclass(slots=True)
class _Outcome:
    status: int | None = None  # set once the response head has been sent downstream


async def _exchange(
    client: h11io.H11Stream,
    server: h11io.H11Stream,
    *,
    route: routes.Upstream,
    headers: list[tuple[bytes, bytes]],
    config: UpstreamConfig,
    outcome: _Outcome,
) -> None:
    await _send_upstream(
        server, h11.Request(method=route.method, target=route.target, headers=headers)
    )
    await _relay_request_body(client, server)
    try:
        with trio.fail_after(config.response_timeout):
            head = await _response_head(server)
    except trio.TooSlowError:
        raise UpstreamTimeout("no response head in time") from None

    switching = head.status_code == 101
    response_headers = _response_headers(head.headers, switching=switching)
    if switching:
        await client.send(
            h11.InformationalResponse(status_code=101, headers=response_headers, reason=head.reason)
        )
        outcome.status = 101
        log.debug("switched protocols for %s %s/%s", route.action, route.super_namespace, route.pod)
        transport = _transport(server.stream)
        if transport is not None:
            transport.tolerate_write_failure = True
        await splice(
            client.stream,
            server.stream,
            idle_timeout=config.idle_timeout,
            initial_a=server.trailing_data(),
            initial_b=client.trailing_data(),
        )
        return
    await client.send(
        h11.Response(status_code=head.status_code, headers=response_headers, reason=head.reason)
    )
    outcome.status = head.status_code
    await _relay_response_body(server, client, idle_timeout=config.idle_timeout)


_UPSTREAM_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


async def _send_upstream(server: h11io.H11Stream, event: h11.Event) -> None:
    try:
        await server.send(event)
    except _UPSTREAM_IO_ERRORS as exc:
        raise UpstreamError(f"sending upstream failed: {type(exc).__name__}") from exc


class UpstreamTransport(trio.abc.Stream):
    """The upstream TCP stream under TLS; after a protocol switch, a write it cannot make is dropped.

    trio's SSLStream turns any failed send into a broken stream that refuses further reads, so
    bytes the upstream sent before resetting the connection (a command's last output and exit
    status) would be lost with it. Once `tolerate_write_failure` is set, a failed write marks
    `write_failed` and is swallowed; reads go on until the kernel reports the reset.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.tolerate_write_failure = False
        self.write_failed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.write_failed:
            return
        try:
            await self.inner.send_all(data)
        except trio.BrokenResourceError:
            if not self.tolerate_write_failure:
                raise
            self.write_failed = True

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _transport(stream: trio.abc.Stream) -> UpstreamTransport | None:
    inner = getattr(stream, "transport_stream", None)
    return inner if isinstance(inner, UpstreamTransport) else None


async def _connect(config: UpstreamConfig) -> h11io.H11Stream:
    try:
        with trio.fail_after(config.connect_timeout):
            tcp = UpstreamTransport(await trio.open_tcp_stream(config.host, config.port))
            stream = trio.SSLStream(
                tcp,
                config.ssl_context,
                server_hostname=config.server_hostname or config.host,
                https_compatible=True,
            )
            try:
                await stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
    except trio.TooSlowError:
        raise UpstreamTimeout("connect deadline passed") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise UpstreamError(f"cannot connect upstream: {type(exc).__name__}") from exc
    return h11io.H11Stream(stream, h11.CLIENT)


async def _relay_request_body(client: h11io.H11Stream, server: h11io.H11Stream) -> None:
    while True:
        event = await client.next_event()  # client faults propagate as RemoteProtocolError
        if isinstance(event, h11.EndOfMessage):
            await _send_upstream(server, h11.EndOfMessage())
            return
        if isinstance(event, h11.Data):
            await _send_upstream(server, h11.Data(data=event.data))
            continue
        raise h11.RemoteProtocolError("request ended early", error_status_hint=400)


async def _response_head(server: h11io.H11Stream) -> h11.Response | h11.InformationalResponse:
    while True:
        try:
            event = await server.next_event()
        except _UPSTREAM_IO_ERRORS as exc:
            raise UpstreamError(f"reading upstream response failed: {type(exc).__name__}") from exc
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                return event
            continue  # 100 Continue and friends stay on this leg
        if isinstance(event, h11.Response):
            return event
        raise UpstreamError(f"upstream sent {type(event).__name__} instead of a response")


async def _relay_response_body(
    server: h11io.H11Stream, client: h11io.H11Stream, *, idle_timeout: float
) -> None:
    """Copy Data events downstream as they come; stop early if the client or a deadline goes."""

    async def watch_client(cancel: trio.CancelScope) -> None:
        if await client.watch_for_eof():
            log.debug("client went away during a streamed response")
            cancel.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_client, nursery.cancel_scope)
            with trio.move_on_after(idle_timeout) as idle:
                while True:
                    event = await server.next_event()
                    if isinstance(event, h11.Data):
                        idle.deadline = trio.current_time() + idle_timeout
                        await client.send(h11.Data(data=event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        await client.send(h11.EndOfMessage())
                        break
                    else:
                        log.debug("upstream ended the response early: %s", type(event).__name__)
                        break
            if idle.cancelled_caught:
                log.info("streamed response idle for %.0f s; closing", idle_timeout)
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as group:
        # One of the two peers broke the stream after the head went out: nothing left to say.
        log.debug("streamed response aborted: %s", [type(e).__name__ for e in group.exceptions])


#: Seconds the other direction may go on after one side ended cleanly (see `splice`).
DRAIN_GRACE = 2.0


async def splice(
    a: trio.abc.Stream,
    b: trio.abc.Stream,
    *,
    idle_timeout: float,
    initial_a: bytes = b"",
    initial_b: bytes = b"",
) -> None:
    """Copy bytes a→b and b→a until both directions end, or either breaks or goes idle.

    ``initial_a`` is written to ``a`` and ``initial_b`` to ``b`` before copying starts. When one
    direction reaches EOF, the other side gets ``send_eof()`` if it is half-closeable; otherwise
    (TLS) the whole splice ends, because neither peer can be told about the half-close. A write
    into ``b`` that its `UpstreamTransport` dropped ends the a→b direction the same way, while
    b→a goes on delivering what ``b`` already sent.
    Returns normally in every such case; the caller closes both streams.
    """
    with trio.move_on_after(idle_timeout) as idle:

        async def pump(
            src: trio.abc.Stream, dst: trio.abc.Stream, initial: bytes, cancel: trio.CancelScope
        ) -> None:
            dst_transport = _transport(dst)
            try:
                if initial:
                    await dst.send_all(initial)
                while dst_transport is None or not dst_transport.write_failed:
                    data = await src.receive_some(h11io.READ_SIZE)
                    if not data:
                        if isinstance(dst, trio.abc.HalfCloseableStream):
                            await dst.send_eof()
                            return
                        break
                    idle.deadline = trio.current_time() + idle_timeout
                    await dst.send_all(data)
                else:
                    log.debug("upstream closed while the client still sent; delivering what it sent")
                    # Read on and drop what the client still sends: closing with its bytes unread
                    # would make the kernel answer with RST, which can discard the last output
                    # we forwarded to it before the client read it.
                    cancel.deadline = min(cancel.deadline, trio.current_time() + DRAIN_GRACE)
                    while await src.receive_some(h11io.READ_SIZE):
                        pass
                    return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                cancel.cancel()
                return
            # A clean EOF we cannot pass on (TLS has no half-close). Keep the other direction
            # running a little: closing a socket whose peer still sends makes the kernel answer
            # with RST, and an RST makes the peer drop the last bytes we just forwarded to it
            # (seen as an exec whose final output vanished). The peer normally closes first.
            cancel.deadline = min(cancel.deadline, trio.current_time() + DRAIN_GRACE)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, b, a, initial_a, nursery.cancel_scope)
            nursery.start_soon(pump, a, b, initial_b, nursery.cancel_scope)
    if idle.cancelled_caught:
        log.info("upgraded stream idle for %.0f s; closing", idle_timeout)


async def _close(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(CLOSE_GRACE, shield=True):
        await stream.aclose()
    await trio.aclose_forcefully(stream)


def _wants_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    has_upgrade = False
    connection_upgrade = False
    for name, value in headers:
        if name == b"upgrade" and value.strip():
            has_upgrade = True
        elif name == b"connection" and b"upgrade" in _tokens(value):
            connection_upgrade = True
    return has_upgrade and connection_upgrade


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",")]


def _request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    config: UpstreamConfig,
    upgrade: bool,
    token: str | None,
) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = [(b"host", config.host_header)]
    for name, value in headers:
        if name in _REQUEST_HEADERS:
            out.append((name, value))
        elif name == b"transfer-encoding":
            out.append((b"transfer-encoding", b"chunked"))  # h11 has validated it is chunked
        elif name == b"upgrade" and upgrade:
            out.append((b"upgrade", value))
    if upgrade:
        out.append((b"connection", b"Upgrade"))
    if token:
        out.append((b"authorization", b"Bearer " + token.encode("ascii")))
    return out


def _response_headers(
    headers: Iterable[tuple[bytes, bytes]], *, switching: bool
) -> list[tuple[bytes, bytes]]:
    listed: set[bytes] = set()
    items = list(headers)
    for name, value in items:
        if name == b"connection":
            listed.update(_tokens(value))
    out: list[tuple[bytes, bytes]] = []
    for name, value in items:
        if (name == b"upgrade" and switching) or (name not in _HOP_BY_HOP and name not in listed):
            out.append((name, value))
    if switching:
        out.append((b"connection", b"Upgrade"))
    return out
