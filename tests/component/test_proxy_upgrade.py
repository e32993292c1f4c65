"""After ``101 Switching Protocols`` the proxy splices raw bytes both ways (SPDY and WebSocket)."""

from __future__ import annotations

import socket
import ssl
import struct

import h11
import trio
import trio.testing
import trio_websocket

from appliance.proxy import forward
from tests.component.proxy_helpers import (
    DEADLINE,
    READ,
    TENANT_A,
    HoldingUpstream,
    TenantClient,
    UpstreamConn,
    client_ssl_context,
    make_pki,
    respond,
    server_ssl_context,
    settle,
    start_harness,
    super_ns,
)

#: the upstream's answer headers when it switches to SPDY
SPDY_SWITCH = [(b"connection", b"Upgrade"), (b"upgrade", b"SPDY/3.1")]
SPDY_HEADERS = [
    (b"connection", b"Upgrade"),
    (b"upgrade", b"SPDY/3.1"),
    (b"x-stream-protocol-version", b"v4.channel.k8s.io"),
    (b"x-stream-protocol-version", b"channel.k8s.io"),
]


async def read_exactly(stream: trio.abc.ReceiveStream, n: int, buffered: bytes = b"") -> bytes:
    data = buffered
    while len(data) < n:
        more = await stream.receive_some(n - len(data))
        assert more, f"EOF after {data!r}"
        data += more
    return data


async def test_spdy_upgrade_splices_raw_bytes_both_ways(nursery: trio.Nursery) -> None:
    """Bytes sent early by either side (h11 trailing data) and later traffic all arrive intact."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        requests: list[h11.Request] = []
        upstream_saw_eof = trio.Event()

        async def upstream(conn: UpstreamConn) -> None:
            request, _ = await conn.read_request()
            requests.append(request)
            await conn.send(
                h11.InformationalResponse(
                    status_code=101,
                    headers=[
                        (b"connection", b"Upgrade"),
                        (b"upgrade", b"SPDY/3.1"),
                        (b"x-stream-protocol-version", b"v4.channel.k8s.io"),
                    ],
                ),
                extra=b"upstream-early",  # same write as the 101 head
            )
            early, _ = conn.conn.trailing_data
            got = await read_exactly(conn.stream, len(b"client-early"), bytes(early))
            assert b"client-early" == got
            while data := await conn.stream.receive_some(1024):  # echo, upper-cased, until EOF
                await conn.stream.send_all(data.upper())
            upstream_saw_eof.set()

        h.upstream.handler = upstream
        stream = await h.connect(h.pki.tenant_a)
        client = TenantClient(stream)
        await client.send_request(
            "POST",
            b"/exec/default/web-0/sh?command=sh&input=1&output=1&tty=1",
            SPDY_HEADERS,
            extra=b"client-early",
        )
        head = await client.next_event()
        assert isinstance(head, h11.InformationalResponse)
        assert 101 == head.status_code
        assert (b"x-stream-protocol-version", b"v4.channel.k8s.io") in list(head.headers)
        early, _ = client.conn.trailing_data
        assert b"upstream-early" == await read_exactly(stream, len(b"upstream-early"), bytes(early))
        for payload in (b"ping", b"\x00\x01binary\xff", b"z" * 200_000):
            await stream.send_all(payload)
            assert payload.upper() == await read_exactly(stream, len(payload))
        await stream.aclose()
        await upstream_saw_eof.wait()
        await h.upstream.closed.wait()
        await settle()

    [request] = requests
    ns = super_ns(TENANT_A, "default")
    assert (
        f"/api/v1/namespaces/{ns}/pods/web-0/exec?command=sh&stdin=true&stdout=true&tty=true&container=sh".encode()
        == request.target
    )
    headers = list(request.headers)
    assert (b"upgrade", b"SPDY/3.1") in headers
    assert (b"connection", b"Upgrade") in headers
    assert [b"v4.channel.k8s.io", b"channel.k8s.io"] == [
        v for k, v in headers if k == b"x-stream-protocol-version"
    ]
    assert 1 == h.stats.responses[(TENANT_A, "exec", 101)]


async def test_upstream_end_of_stream_reaches_client(nursery: trio.Nursery) -> None:
    """When the container's stream ends upstream, the tenant gets the last bytes and then EOF."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, mode="kubelet")
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")

        async def upstream(conn: UpstreamConn) -> None:
            await conn.read_request()
            await conn.send(
                h11.InformationalResponse(
                    status_code=101,
                    headers=[(b"connection", b"Upgrade"), (b"upgrade", b"SPDY/3.1")],
                )
            )
            await conn.stream.send_all(b"exit 0")
            # then the handler returns and the connection is closed

        h.upstream.handler = upstream
        stream = await h.connect(h.pki.tenant_a)
        client = TenantClient(stream)
        await client.send_request("POST", b"/attach/default/web-0/c?output=1", SPDY_HEADERS)
        head = await client.next_event()
        assert 101 == head.status_code
        early, _ = client.conn.trailing_data
        data = bytes(early)
        while chunk := await stream.receive_some(1024):
            data += chunk
        assert b"exit 0" == data


async def test_client_hangup_during_upgrade_closes_upstream(nursery: trio.Nursery) -> None:
    """An abrupt tenant disconnect during an exec session ends the upstream session too."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        upstream = HoldingUpstream(h11.InformationalResponse(status_code=101, headers=SPDY_SWITCH))
        h.upstream.handler = upstream
        stream = await h.connect(h.pki.tenant_a)
        client = TenantClient(stream)
        await client.send_request("POST", b"/portForward/default/web-0", SPDY_HEADERS)
        assert 101 == (await client.next_event()).status_code
        await trio.aclose_forcefully(stream)
        await upstream.saw_eof.wait()
        while h.stats.connections:
            await settle()


async def test_refused_upgrade_is_relayed_as_plain_response(nursery: trio.Nursery) -> None:
    """If the upstream declines the upgrade (e.g. 400), the tenant gets that response."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")

        async def upstream(conn: UpstreamConn) -> None:
            await conn.read_request()
            await respond(conn, 400, b"you must specify at least 1 of stdin, stdout, stderr")

        h.upstream.handler = upstream
        client = TenantClient(await h.connect(h.pki.tenant_a))
        head, body = await client.request("POST", b"/exec/default/web-0/c?command=ls", SPDY_HEADERS)
    assert 400 == head.status_code
    assert b"at least 1 of" in body


async def test_upgrade_headers_dropped_for_logs(nursery: trio.Nursery) -> None:
    """Log requests never switch protocols: Upgrade headers are not forwarded for them."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        seen: list[h11.Request] = []

        async def upstream(conn: UpstreamConn) -> None:
            request, _ = await conn.read_request()
            seen.append(request)
            await respond(conn, 200, b"log")

        h.upstream.handler = upstream
        client = TenantClient(await h.connect(h.pki.tenant_a))
        head, body = await client.request("GET", b"/containerLogs/default/web-0/c", SPDY_HEADERS)
    assert (200, b"log") == (head.status_code, body)
    names = {name for name, _ in seen[0].headers}
    assert b"upgrade" not in names
    assert b"connection" not in names


async def test_websocket_exec_through_proxy(nursery: trio.Nursery) -> None:
    """A real trio-websocket client and server talk v5.channel.k8s.io through the proxy."""
    paths: list[str] = []
    closed_by_client = trio.Event()

    async def ws_upstream(request: trio_websocket.WebSocketRequest) -> None:
        paths.append(request.path)
        assert "v5.channel.k8s.io" in request.proposed_subprotocols
        ws = await request.accept(subprotocol="v5.channel.k8s.io")
        try:
            while True:
                message = await ws.get_message()
                assert isinstance(message, bytes)
                await ws.send_message(b"\x01" + message[1:].upper())  # stdin → stdout
        except trio_websocket.ConnectionClosed:
            closed_by_client.set()

    with trio.fail_after(DEADLINE):
        probe = await start_harness(nursery)  # for the PKI; its upstream stays unused
        ws_server = await nursery.start(
            trio_websocket.serve_websocket,
            ws_upstream,
            "127.0.0.1",
            0,
            server_ssl_context(probe.pki.upstream_serving),
        )
        h = await start_harness(nursery, pki=probe.pki, port=ws_server.port)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        ctx: ssl.SSLContext = client_ssl_context(h.pki, h.pki.tenant_a)
        url = f"wss://127.0.0.1:{h.proxy_port}/exec/default/web-0/sh?command=sh&input=1&output=1"
        async with trio_websocket.open_websocket_url(
            url, ssl_context=ctx, subprotocols=["v5.channel.k8s.io", "v4.channel.k8s.io"]
        ) as ws:
            assert "v5.channel.k8s.io" == ws.subprotocol
            for text in (b"hello", b"x" * 100_000):
                await ws.send_message(b"\x00" + text)
                assert b"\x01" + text.upper() == await ws.get_message()
        await closed_by_client.wait()
    ns = super_ns(TENANT_A, "default")
    assert [
        f"/api/v1/namespaces/{ns}/pods/web-0/exec?command=sh&stdin=true&stdout=true&container=sh"
    ] == paths


async def test_idle_upgraded_stream_is_closed(nursery: trio.Nursery) -> None:
    """An exec session with no bytes either way for the idle deadline is closed on both legs."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, idle_timeout=0.3)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        upstream = HoldingUpstream(h11.InformationalResponse(status_code=101, headers=SPDY_SWITCH), then=b"prompt$ ")
        h.upstream.handler = upstream
        stream = await h.connect(h.pki.tenant_a)
        client = TenantClient(stream)
        await client.send_request("POST", b"/exec/default/web-0/c?command=sh", SPDY_HEADERS)
        assert 101 == (await client.next_event()).status_code
        early, _ = client.conn.trailing_data
        data = bytes(early)
        while chunk := await stream.receive_some(1024):  # ends when the proxy gives up
            data += chunk
        assert b"prompt$ " == data
        await upstream.saw_eof.wait()


class _ReadsAfterTail(trio.abc.Stream):
    """The proxy's upstream leg, holding back its reads until the client's late tail was
    forwarded: the order a busy event loop produces (the race behind lost `exec -i` output)."""

    def __init__(self, inner: trio.SSLStream[forward.UpstreamTransport], tail: bytes) -> None:
        self.inner, self.tail, self.tail_sent = inner, tail, trio.Event()
        self.transport_stream = inner.transport_stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        if bytes(data).endswith(self.tail):
            self.tail_sent.set()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self.tail_sent.wait()
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_output_sent_before_the_upstream_resets_reaches_the_client(nursery: trio.Nursery) -> None:
    """A command that exits before reading all its stdin: the kubelet sends the output and exit
    status, then resets the connection while the client still sends. The write upstream fails,
    yet the client gets every byte the upstream sent (before the fix it got nothing)."""
    pki = make_pki()
    stdin, tail = b"s" * 65536, b"\x00\x00\x00\x03\x01\x00\x00\x00"  # the late stdin FIN frame
    output = b"".join(b"frame-%02d;" % i for i in range(8)) + b'{"status":"Success"}'
    upstream_gone = trio.Event()
    with trio.fail_after(DEADLINE):
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listener.socket.getsockname()[1]

        async def kubelet() -> None:
            tcp = await listener.accept()
            tls_stream = trio.SSLStream(tcp, server_ssl_context(pki.upstream_serving), server_side=True)
            got = b""
            while len(got) < len(stdin):
                got += await tls_stream.receive_some(READ)
            for i in range(0, len(output), 10):  # several TLS records, as Go writes frames
                await tls_stream.send_all(output[i:i + 10])
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await trio.aclose_forcefully(tcp)  # RST: the client's tail is never read
            upstream_gone.set()
            await listener.aclose()

        nursery.start_soon(kubelet)
        transport = forward.UpstreamTransport(await trio.open_tcp_stream("127.0.0.1", port))
        ctx = ssl.create_default_context(cadata=pki.upstream_ca.cert_pem.decode())
        upstream = trio.SSLStream(transport, ctx, server_hostname="127.0.0.1")
        await upstream.do_handshake()
        transport.tolerate_write_failure = True  # what the proxy sets once it relayed a 101
        proxy_side, client = trio.testing.memory_stream_pair()

        async def tenant_client() -> bytes:
            await client.send_all(stdin)
            await upstream_gone.wait()
            await client.send_all(tail)
            received = b""
            while chunk := await client.receive_some(READ):
                received += chunk
            return received

        received: list[bytes] = []

        async def run_client() -> None:
            received.append(await tenant_client())

        nursery.start_soon(run_client)
        await forward.splice(proxy_side, _ReadsAfterTail(upstream, tail), idle_timeout=DEADLINE)
        await trio.aclose_forcefully(proxy_side)
        await settle()
    assert transport.write_failed
    assert received == [output]
