"""The kube client's TLS transport (`appliance.kube.transport`) against a real loopback TLS peer.

The peer is trio's own `SSLStream` on the server side (independent of the code under test),
with certificates from the appliance's `pki.certs`. What matters: a read hands over every TLS
record already received instead of one record per scheduling pass, ends cleanly with or
without close_notify, maps failures to httpcore's exceptions, and `open_client` uses it for
ordinary requests and watches; its pool reuses connections, retries a request once on a new
connection when a reused one turns out closed, frees a connection abandoned mid-body and
bounds what is in flight.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
import httpcore
import httpx
import msgspec
import pytest
import trio
import trio.testing

from appliance.kube import client as kclient
from appliance.kube import creds as kcreds
from appliance.kube import resources, transport
from appliance.kube.creds import Credentials
from appliance.pki import certs

DEADLINE = 20.0


@dataclass(frozen=True)
class Pki:
    ca: certs.CertKey
    serving: certs.CertKey

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        kcreds.load_cert_chain_pem(ctx, cert_pem=self.serving.cert_pem, key_pem=self.serving.key_pem)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca.cert_pem.decode())


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = certs.new_ca("transport-test-ca", days=1)
    serving = certs.issue(ca, common_name="localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",),
                          server=True, days=1)
    return Pki(ca, serving)


Serve = Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]


async def start_server(nursery: trio.Nursery, pki: Pki, serve: Serve, *, https_compatible: bool = True) -> int:
    """A loopback TLS server running `serve` on each connection; returns its port."""
    ctx = pki.server_context()

    async def handler(raw: trio.SocketStream) -> None:
        stream = trio.SSLStream(raw, ctx, server_side=True, https_compatible=https_compatible)
        try:
            await stream.do_handshake()
            await serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def connect(port: int, ctx: ssl.SSLContext) -> httpcore.AsyncNetworkStream:
    plain = await transport.TrioTLSBackend().connect_tcp("127.0.0.1", port, timeout=5)
    return await plain.start_tls(ctx, server_hostname="localhost", timeout=5)


async def test_read_hands_over_every_record_already_received(pki: Pki) -> None:
    """Fifty records sent at once take far fewer reads than fifty (trio's SSLStream needs one each)."""
    records, size = 50, 1000
    sent = trio.Event()
    done = trio.Event()

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        for i in range(records):
            await stream.send_all(bytes([65 + i % 26]) * size)  # one TLS record per call
        sent.set()
        await done.wait()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, pki, serve)
            stream = await connect(port, pki.client_context())
            await sent.wait()
            received, reads = b"", 0
            while len(received) < records * size:
                received += await stream.read(1 << 20)
                reads += 1
            assert records * size == len(received)
            assert received.startswith(b"A" * size + b"B" * size)
            assert reads < records
            done.set()
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_request_leaves_in_one_record(pki: Pki) -> None:
    """Writes are held until the read that waits for their answer: head and body arrive together."""
    first: list[bytes] = []

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        first.append(await stream.receive_some(65536))  # trio's stream: one record per call
        await stream.send_all(b"answer")

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, pki, serve)
            stream = await connect(port, pki.client_context())
            await stream.write(b"PATCH /x HTTP/1.1\r\n\r\n")
            await stream.write(b'{"status": {}}')
            assert b"answer" == await stream.read(65536)
            assert [b'PATCH /x HTTP/1.1\r\n\r\n{"status": {}}'] == first
            await stream.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("close_notify", [pytest.param(True, id="close-notify"),
                                          pytest.param(False, id="bare-eof")])
async def test_end_of_stream_reads_empty(pki: Pki, close_notify: bool) -> None:
    """After the data, a peer's close (with or without TLS close_notify) reads as b"", repeatedly."""

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.send_all(b"last words")
        if close_notify:
            await stream.aclose()
        else:
            await stream.transport_stream.aclose()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, pki, serve, https_compatible=not close_notify)
            stream = await connect(port, pki.client_context())
            received = b""
            while chunk := await stream.read(65536):
                received += chunk
            assert b"last words" == received
            assert b"" == await stream.read(65536)
            await stream.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("probe_after", [pytest.param(0.0, id="probed"), pytest.param(3600.0, id="recent")])
async def test_idle_connection_closed_by_the_server(pki: Pki, probe_after: float,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle connection reports a server close as readable, unless it was used within
    IDLE_PROBE_AFTER (then the pool's probe costs no system call)."""
    monkeypatch.setattr(transport, "IDLE_PROBE_AFTER", probe_after)
    closed = trio.Event()

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.transport_stream.aclose()
        closed.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, pki, serve)
            stream = await connect(port, pki.client_context())
            await closed.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert (probe_after == 0.0) == stream.get_extra_info("is_readable")
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_untrusted_server_is_a_connect_error(pki: Pki) -> None:
    """A server certificate from another CA fails the handshake as httpcore.ConnectError."""
    other = certs.new_ca("someone-else", days=1)

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await trio.sleep_forever()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, pki, serve)
            with pytest.raises(httpcore.ConnectError):
                await connect(port, ssl.create_default_context(cadata=other.cert_pem.decode()))
            nursery.cancel_scope.cancel()


async def test_silent_server_is_a_read_timeout(pki: Pki) -> None:
    """A read that gets nothing within its timeout raises httpcore.ReadTimeout."""

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await trio.sleep_forever()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, pki, serve)
            stream = await connect(port, pki.client_context())
            with pytest.raises(httpcore.ReadTimeout):
                await stream.read(65536, timeout=0.05)
            await stream.aclose()
            nursery.cancel_scope.cancel()


# --- through open_client: an h11 server on the same TLS ------------------------------------------

Respond = Callable[[h11.Request], list[Any]]


async def serve_http(stream: trio.SSLStream[trio.SocketStream], respond: Respond) -> None:
    """Answer each request with the h11 events `respond` returns, each sent (and flushed) alone."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            if not data:
                return
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            for out in respond(request):
                await stream.send_all(conn.send(out) or b"")
            conn.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            return


def json_head(*, chunked: bool = False, length: int = 0) -> h11.Response:
    headers = [("content-type", "application/json")]
    headers.append(("transfer-encoding", "chunked") if chunked else ("content-length", str(length)))
    return h11.Response(status_code=200, headers=headers)


async def test_open_client_requests_and_watches_over_it(pki: Pki) -> None:
    """open_client's pool is Http1Transport on TrioTLSBackend; a GET and a watch of separately flushed events work."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "1"}}
    events = [{"type": "ADDED" if i == 0 else "MODIFIED",
               "object": {**pod, "metadata": {**pod["metadata"], "resourceVersion": str(i + 2)}}} for i in range(5)]

    def respond(request: h11.Request) -> list[Any]:
        if b"watch=true" in request.target:
            lines = [msgspec.json.encode(e) + b"\n" for e in events]
            return [json_head(chunked=True), *(h11.Data(data=line) for line in lines), h11.EndOfMessage()]
        body = msgspec.json.encode(pod)
        return [json_head(length=len(body)), h11.Data(data=body), h11.EndOfMessage()]

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await serve_http(stream, respond)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, pki, serve)
            creds = Credentials(server=f"https://127.0.0.1:{port}", ca_pem=pki.ca.cert_pem)
            async with kclient.open_client(creds) as api:
                assert isinstance(api._http._transport, transport.Http1Transport)
                assert pod == await api.get(resources.PODS, "p", namespace="ns")
                seen = [e.resource_version async for e in api.watch_raw(
                    resources.PODS, namespace="ns", resource_version="1")]
                assert ["2", "3", "4", "5", "6"] == seen
            nursery.cancel_scope.cancel()


# --- Http1Transport's pool ---------------------------------------------------------------------


@dataclass
class Counting:
    connections: int = 0
    requests: int = 0


def counting_server(counts: Counting, respond: Respond, *, requests_per_connection: int = 1 << 30) -> Serve:
    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        counts.connections += 1
        conn = h11.Connection(h11.SERVER)
        served = 0
        while served < requests_per_connection:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                counts.requests += 1
                for out in respond(request):
                    await stream.send_all(conn.send(out) or b"")
                conn.start_next_cycle()
                served += 1
            elif not isinstance(event, h11.Data):  # a request body is read and ignored
                return
        # then the server closes the connection without saying so (an idle close)
    return serve


def small_json(request: h11.Request) -> list[Any]:
    body = b'{"ok":true}'
    if b"stream" in request.target:
        return [json_head(chunked=True), *(h11.Data(data=b"x" * 1000) for _ in range(3)), h11.EndOfMessage()]
    return [json_head(length=len(body)), h11.Data(data=body), h11.EndOfMessage()]


def pool_client(port: int, pki: Pki, **limits: Any) -> httpx.AsyncClient:
    lim = httpx.Limits(**{"max_connections": 10, "max_keepalive_connections": 10, "keepalive_expiry": 30.0, **limits})
    return httpx.AsyncClient(base_url=f"https://localhost:{port}", trust_env=False,
                             transport=transport.Http1Transport(ssl_context=pki.client_context(), limits=lim))


@contextlib.asynccontextmanager
async def pooled(pki: Pki, counts: Counting, *, requests_per_connection: int = 1 << 30,
                 **limits: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A counting server and a client on Http1Transport, both gone when the block ends."""
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, pki, counting_server(
                counts, small_json, requests_per_connection=requests_per_connection))
            async with pool_client(port, pki, **limits) as http:
                yield http
            nursery.cancel_scope.cancel()


async def test_sequential_requests_reuse_one_connection(pki: Pki) -> None:
    counts = Counting()
    async with pooled(pki, counts) as http:
        for _ in range(5):
            assert (await http.get("/a")).json() == {"ok": True}
        assert http._transport.idle_connections == 1  # type: ignore[attr-defined]
    assert (counts.connections, counts.requests) == (1, 5)



async def test_a_reused_connection_the_server_closed_is_retried_on_a_new_one(pki: Pki) -> None:
    """The server closes each connection after one answer without saying so; every request
    still succeeds, each once, on a connection of its own."""
    counts = Counting()
    async with pooled(pki, counts, requests_per_connection=1) as http:
        for _ in range(4):
            assert (await http.post("/create", content=b"{}")).status_code == 200
    assert counts.requests == 4  # nothing sent twice to a server that answered
    assert counts.connections == 4



async def test_a_body_abandoned_midway_frees_its_connection_and_slot(pki: Pki) -> None:
    counts = Counting()
    async with pooled(pki, counts, max_connections=1) as http:
        async with http.stream("GET", "/stream") as response:
            chunks = response.aiter_bytes()
            assert await anext(chunks)
            await kclient._discard(chunks)  # a watch given up after its first event
        assert http._transport.idle_connections == 0  # type: ignore[attr-defined]
        assert (await http.get("/a")).status_code == 200  # the one slot is free again
    assert counts.connections == 2



async def test_requests_beyond_max_connections_wait_and_time_out_as_pool_timeout(pki: Pki) -> None:
    async with pooled(pki, Counting(), max_connections=1) as http:
        async with http.stream("GET", "/stream"):
            with pytest.raises(httpx.PoolTimeout):
                await http.get("/a", timeout=httpx.Timeout(5.0, pool=0.2))
        assert (await http.get("/a")).status_code == 200



async def test_a_garbled_answer_is_a_remote_protocol_error_and_the_connection_is_dropped(pki: Pki) -> None:
    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
        await trio.sleep_forever()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, pki, serve)
            async with pool_client(port, pki) as http:
                with pytest.raises(httpx.RemoteProtocolError, match="Content-Length"):
                    await http.get("/a")
                assert http._transport.idle_connections == 0  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()


async def test_a_header_that_cannot_be_sent_is_a_local_protocol_error_before_any_connection(pki: Pki) -> None:
    counts = Counting()
    async with pooled(pki, counts) as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.get("/a", headers={"x-note": "one\r\nInjected: two"})
        assert (await http.get("/a")).status_code == 200  # the slot was not taken
    assert (counts.connections, counts.requests) == (1, 1)


async def test_a_server_that_never_answers_is_a_read_timeout_and_frees_the_slot(pki: Pki) -> None:
    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.receive_some(65536)
        await trio.sleep_forever()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, pki, serve)
            async with pool_client(port, pki, max_connections=1) as http:
                for _ in range(2):  # the second would wait for the slot forever if the first kept it
                    with pytest.raises(httpx.ReadTimeout):
                        await http.get("/a", timeout=httpx.Timeout(5.0, read=0.2, write=0.2))
            nursery.cancel_scope.cancel()
