"""A fault-injecting HTTPS proxy for the test bed: client ⇄ this proxy ⇄ a real kube-apiserver.

It terminates TLS with a serving certificate from a CA made at test time, parses HTTP/1.1 with
h11 and re-originates every request over TLS to the real apiserver with the bed's admin client
certificate (so the client's identity towards the apiserver is always the admin). Bodies stream
both ways as they arrive, so watches (long chunked responses) pass through live. Loopback only.

What a request meets is decided when its head arrives, by the current `Fault`:

    PASS                forwarded upstream, response streamed back
    TOO_MANY_REQUESTS   answered 429 with `Retry-After` and a Status body (not forwarded)
    SERVER_ERROR        answered 500 with a Status body (not forwarded)
    STALL               never answered: the connection is held until the client gives up
    CUT                 the connection is reset (RST) without a response
    HOLD                writes (POST, PUT, PATCH, DELETE) wait until `release()`, then are
                        forwarded; reads pass (work in flight that can be finished at will)

`inject(fault, every=n)` applies the fault to every n-th request from then on (1 = all) and the
others pass. Setting CUT also resets every connection open at that moment, including live
watch streams. Requests already forwarded are not affected by a later `inject` (a stalled
request stays stalled: that is what makes clients hit their own timeouts). Upgrades
(exec/attach/port-forward) are refused with 501; the fault suite does not need them.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import enum
import json
import socket
import ssl
import struct
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import h11
import trio
import yaml

from appliance.kube import creds as kube_creds
from appliance.pki import certs, kubeconfig
from appliance.proxy import h11io, tls
from appliance.util import private

__all__ = ["Fault", "FaultProxy", "open_fault_proxy"]

HANDSHAKE_SECONDS = 10.0


class Fault(enum.Enum):
    PASS = "pass"
    TOO_MANY_REQUESTS = "429"
    SERVER_ERROR = "500"
    STALL = "stall"
    CUT = "cut"
    HOLD = "hold"


class _Cut(Exception):
    """Reset this client connection now (no response)."""


def _status_body(code: int, reason: str, message: str) -> bytes:
    return json.dumps({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }).encode()


_CANNED = {
    Fault.TOO_MANY_REQUESTS: (429, "TooManyRequests", "fault proxy: too many requests, please try again later"),
    Fault.SERVER_ERROR: (500, "InternalError", "fault proxy: injected internal error"),
}


def _reset(stream: trio.SocketStream) -> None:
    """Make the coming close send an RST instead of a FIN (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FaultProxy:
    """The proxy's state and policy; `serve` runs it. Build it with `open_fault_proxy`."""

    def __init__(
        self, *, upstream_url: str, upstream_ssl: ssl.SSLContext, server_ssl: ssl.SSLContext,
        ca_pem: bytes, admin_kubeconfig: Path, retry_after: int = 1,
    ) -> None:
        parts = urlsplit(upstream_url)
        assert parts.hostname is not None and parts.port is not None, upstream_url
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.ca_pem = ca_pem
        self.retry_after = retry_after
        self.port = 0
        #: requests by what they met (`Fault.value`), "forwarded" (response head relayed),
        #: "cut_open" (connections reset by a CUT), "upstream_unreachable", "released", and
        #: "hold <METHOD> <path>" for each write held
        self.counts: collections.Counter[str] = collections.Counter()
        self._counted = trio.Event()
        self._upstream_ssl = upstream_ssl
        self._server_ssl = server_ssl
        self._admin_kubeconfig = admin_kubeconfig
        self._fault = Fault.PASS
        self._every = 1
        self._seen = 0  # requests since the last inject()
        self._connections: dict[trio.CancelScope, trio.SocketStream] = {}
        self._released = trio.Event()

    # --- control ---------------------------------------------------------------------------
    @property
    def fault(self) -> Fault:
        return self._fault

    def inject(self, fault: Fault, *, every: int = 1) -> None:
        """Apply `fault` to every `every`-th request from now on; CUT also resets open connections."""
        if every < 1:
            raise ValueError("every must be >= 1")
        self._fault, self._every, self._seen = fault, every, 0
        if fault is Fault.CUT:
            self.cut_all()

    def release(self) -> None:
        """Let every held write go on (and stop holding: the fault becomes PASS)."""
        self._fault = Fault.PASS
        self._released.set()
        self._released = trio.Event()

    def cut_all(self) -> int:
        """Reset every open client connection (and its upstream); returns how many."""
        for scope, stream in list(self._connections.items()):
            _reset(stream)
            scope.cancel()
        self._count("cut_open", len(self._connections))
        return len(self._connections)

    def injected(self) -> int:
        """Requests (and open connections) that met a fault so far."""
        return sum(v for k, v in self.counts.items()
                   if k not in ("pass", "forwarded", "upstream_unreachable", "released")
                   and not k.startswith("hold "))

    async def wait_count(self, key: str, n: int) -> None:
        """Return once `counts[key]` has reached `n` (the caller sets the deadline)."""
        while self.counts[key] < n:
            await self._counted.wait()

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n
        self._counted.set()
        self._counted = trio.Event()

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig naming this proxy (its CA) with the admin client certificate."""
        doc = yaml.safe_load(self._admin_kubeconfig.read_bytes())
        user = doc["users"][0]["user"]
        private.write_file(path, kubeconfig.render(
            cluster_name="faultproxy", server=f"https://127.0.0.1:{self.port}", ca_pem=self.ca_pem,
            user="admin", cert_pem=base64.b64decode(user["client-certificate-data"]),
            key_pem=base64.b64decode(user["client-key-data"]),
        ))
        return path

    def _decide(self) -> Fault:
        self._seen += 1
        if self._fault is Fault.PASS or self._seen % self._every:
            return Fault.PASS
        return self._fault

    # --- serving ---------------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Listen on a free loopback port (reported through `task_status`) until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.port)
            await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def _connection(self, tcp: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._connections[scope] = tcp
            try:
                stream = trio.SSLStream(tcp, self._server_ssl, server_side=True)
                with trio.fail_after(HANDSHAKE_SECONDS):
                    await stream.do_handshake()
                await self._serve(h11io.H11Stream(stream, h11.SERVER))
            except _Cut:
                _reset(tcp)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                    h11.ProtocolError, ssl.SSLError, OSError):
                pass  # a client or upstream that went away: nothing to answer
            finally:
                del self._connections[scope]
        await trio.aclose_forcefully(tcp)

    async def _serve(self, down: h11io.H11Stream) -> None:
        """Request cycles of one client connection; returns when it should be closed."""
        up: h11io.H11Stream | None = None
        try:
            while True:
                event = await down.next_event()
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed, or PAUSED after a close-delimited cycle
                fault = self._decide()
                if fault is Fault.HOLD and event.method in (b"POST", b"PUT", b"PATCH", b"DELETE"):
                    self._count(fault.value)
                    path = event.target.decode(errors="replace").split("?", 1)[0]
                    self._count(f"hold {event.method.decode()} {path}")  # what is held, for tests
                    await self._released.wait()
                    self._count("released")
                    fault = Fault.PASS
                elif fault is Fault.HOLD:
                    fault = Fault.PASS
                self._count(fault.value)
                if fault is Fault.CUT:
                    raise _Cut
                if fault is Fault.STALL:
                    while not await down.watch_for_eof():
                        pass  # swallow whatever it sends; never answer
                    return
                if fault in _CANNED or _is_upgrade(event):
                    await self._answer(down, fault, event)
                else:
                    up, reusable = await self._forward(down, up, event)
                    if not reusable:
                        return
                if down.conn.our_state is not h11.DONE or down.conn.their_state is not h11.DONE:
                    return
                down.conn.start_next_cycle()
        finally:
            if up is not None:
                await trio.aclose_forcefully(up.stream)

    async def _answer(self, down: h11io.H11Stream, fault: Fault, request: h11.Request) -> None:
        await _drain_request(down)
        if fault in _CANNED:
            code, reason, message = _CANNED[fault]
            extra = [(b"retry-after", str(self.retry_after).encode())] if code == 429 else []
        else:
            code, reason, message = 501, "NotImplemented", "fault proxy: upgrades are not supported"
        body = _status_body(code, reason, message)
        await down.send(h11.Response(status_code=code, headers=[
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra,
        ]))
        await down.send(h11.Data(data=body))
        await down.send(h11.EndOfMessage())

    async def _open_upstream(self) -> h11io.H11Stream | None:
        try:
            tcp = await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
        except OSError:
            self._count("upstream_unreachable")
            return None
        stream = trio.SSLStream(tcp, self._upstream_ssl, server_hostname=self.upstream_host)
        try:
            with trio.fail_after(HANDSHAKE_SECONDS):
                await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        return h11io.H11Stream(stream, h11.CLIENT)

    async def _forward(
        self, down: h11io.H11Stream, up: h11io.H11Stream | None, request: h11.Request
    ) -> tuple[h11io.H11Stream, bool]:
        """Pass one request cycle through; returns the upstream connection and whether the
        client connection may carry another request (not after a watch: see below).

        An unreachable upstream (a restarting apiserver) resets the client, as a refused
        connection would.
        """
        if up is not None and up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
            up.conn.start_next_cycle()
        elif up is not None:
            await trio.aclose_forcefully(up.stream)
            up = None
        if up is None:
            up = await self._open_upstream()
            if up is None:
                raise _Cut
        headers = [(k, v) for k, v in request.headers if k not in (b"host", b"expect")]
        host = f"{self.upstream_host}:{self.upstream_port}".encode()
        await up.send(h11.Request(method=request.method, target=request.target,
                                  headers=[(b"host", host), *headers]))
        await _relay(down, up)  # the request body, as it comes
        response = await up.next_event()
        while isinstance(response, h11.InformationalResponse):
            response = await up.next_event()
        if not isinstance(response, h11.Response):
            raise _Cut
        await down.send(h11.Response(status_code=response.status_code, headers=response.headers,
                                     reason=response.reason))
        self._count("forwarded")
        if _is_watch(request):
            # The end-of-stream watch may have been cancelled mid-read: reuse neither side.
            await _relay_watching_client(up, down)
            return up, False
        await _relay(up, down)
        return up, True


def _is_upgrade(request: h11.Request) -> bool:
    return any(k == b"upgrade" for k, _ in request.headers)


def _is_watch(request: h11.Request) -> bool:
    target = request.target
    return b"watch=true" in target or b"watch=1" in target or b"follow=true" in target


async def _drain_request(down: h11io.H11Stream) -> None:
    while not isinstance(await down.next_event(), h11.EndOfMessage | h11.ConnectionClosed):
        pass


async def _relay(source: h11io.H11Stream, sink: h11io.H11Stream) -> None:
    """Copy one message body as it arrives; a source that breaks off cuts the client."""
    while True:
        event = await source.next_event()
        if isinstance(event, h11.Data):
            await sink.send(h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            await sink.send(h11.EndOfMessage())
            return
        else:
            raise _Cut


async def _relay_watching_client(up: h11io.H11Stream, down: h11io.H11Stream) -> None:
    """Relay a long response; a client that closes its end ends the upstream request too."""

    async def client_gone(cancel: trio.CancelScope) -> None:
        with contextlib.suppress(h11.ProtocolError):
            while not await down.watch_for_eof():
                pass
        cancel.cancel()

    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_gone, nursery.cancel_scope)
        try:
            await _relay(up, down)
        except Exception as exc:  # re-raised below, outside the nursery's exception group
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


def _server_context(ca: certs.CertKey) -> ssl.SSLContext:
    leaf = certs.issue(ca, common_name="fault-proxy", dns_names=("localhost",),
                       ip_addresses=("127.0.0.1",), server=True, days=2)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_alpn_protocols(tls.ALPN)
    kube_creds.load_cert_chain_pem(ctx, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem)
    return ctx


async def open_fault_proxy(
    nursery: trio.Nursery, *, upstream_url: str, pki_dir: Path, **kwargs: Any
) -> FaultProxy:
    """Start a proxy in front of the apiserver at `upstream_url` whose PKI is in `pki_dir`
    (the test-bed layout: ca.crt, admin.kubeconfig); it runs until `nursery` is cancelled."""
    from appliance.controlplane import cluster

    ca = await trio.to_thread.run_sync(certs.new_ca, "fault-proxy-ca")
    server_ssl = await trio.to_thread.run_sync(_server_context, ca)
    upstream_ssl = await trio.to_thread.run_sync(cluster.admin_ssl_context, pki_dir)
    upstream_ssl.set_alpn_protocols(tls.ALPN)
    proxy = FaultProxy(upstream_url=upstream_url, upstream_ssl=upstream_ssl, server_ssl=server_ssl,
                       ca_pem=ca.cert_pem, admin_kubeconfig=pki_dir / "admin.kubeconfig", **kwargs)
    await nursery.start(proxy.serve)
    return proxy
