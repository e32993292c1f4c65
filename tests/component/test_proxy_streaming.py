"""The proxy relays plain (non-upgrade) kubelet requests over real TLS, streaming, bounded."""

from __future__ import annotations

import h11
import trio
import trio.testing

from tests.component.proxy_helpers import (
    DEADLINE,
    SUPER_TOKEN,
    TENANT_A,
    HoldingUpstream,
    TenantClient,
    UpstreamConn,
    respond,
    settle,
    start_harness,
    super_ns,
)


async def test_logs_stream_chunk_by_chunk(nursery: trio.Nursery) -> None:
    """The first log chunk reaches the tenant before the upstream has even produced the second."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        second_may_go = trio.Event()
        seen: list[h11.Request] = []

        async def upstream(conn: UpstreamConn) -> None:
            request, _ = await conn.read_request()
            seen.append(request)
            await conn.send(
                h11.Response(status_code=200, headers=[(b"content-type", b"text/plain")])
            )
            await conn.send(h11.Data(data=b"line 1\n"))
            await second_may_go.wait()
            await conn.send(h11.Data(data=b"line 2\n"), h11.EndOfMessage())

        h.upstream.handler = upstream
        client = TenantClient(await h.connect(h.pki.tenant_a))
        await client.send_request(
            "GET",
            b"/containerLogs/default/web-0/nginx?follow=true&tailLines=10",
            [
                (b"authorization", b"Bearer tenant-secret"),
                (b"impersonate-user", b"system:admin"),
                (b"x-remote-user", b"admin"),
                (b"user-agent", b"kube-apiserver/test"),
            ],
        )
        head = await client.next_event()
        assert isinstance(head, h11.Response)
        assert 200 == head.status_code
        first = await client.next_event()
        assert isinstance(first, h11.Data)
        assert b"line 1\n" == first.data
        assert not second_may_go.is_set()  # streamed, not buffered until the end
        second_may_go.set()
        second = await client.next_event()
        assert isinstance(second, h11.Data)
        assert b"line 2\n" == second.data
        assert isinstance(await client.next_event(), h11.EndOfMessage)
        await settle()

    [request] = seen
    ns = super_ns(TENANT_A, "default")
    assert (
        f"/api/v1/namespaces/{ns}/pods/web-0/log?follow=true&tailLines=10&container=nginx".encode()
        == request.target
    )
    headers = dict(request.headers)
    assert f"Bearer {SUPER_TOKEN}".encode() == headers[b"authorization"]
    assert b"impersonate-user" not in headers
    assert b"x-remote-user" not in headers
    assert b"kube-apiserver/test" == headers[b"user-agent"]
    assert [(ns, "web-0")] == h.pods.lookups
    assert 1 == h.stats.responses[(TENANT_A, "containerLogs", 200)]


async def test_keep_alive_serves_several_requests(nursery: trio.Nursery) -> None:
    """A tenant connection carries several request cycles; each uses a fresh upstream leg."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")

        async def upstream(conn: UpstreamConn) -> None:
            request, _ = await conn.read_request()
            await respond(conn, 200, request.target)

        h.upstream.handler = upstream
        client = TenantClient(await h.connect(h.pki.tenant_a))
        for tail in (b"1", b"2", b"3"):
            head, body = await client.request(
                "GET", b"/containerLogs/default/web-0/c?tailLines=" + tail
            )
            assert 200 == head.status_code
            assert body.endswith(b"tailLines=" + tail + b"&container=c")
            client.next_cycle()
        head, body = await client.request("GET", b"/pods")
        assert (403, b"pods is not available on a virtual node\n") == (head.status_code, body)
    assert 3 == h.upstream.connections


async def test_request_body_is_relayed(nursery: trio.Nursery) -> None:
    """A POST body (kubelet /run) travels upstream in kubelet mode, and the answer comes back."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, mode="kubelet")
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        got: list[tuple[bytes, bytes, dict[bytes, bytes]]] = []

        async def upstream(conn: UpstreamConn) -> None:
            request, body = await conn.read_request()
            got.append((request.target, body, dict(request.headers)))
            await respond(conn, 200, b"ran")

        h.upstream.handler = upstream
        client = TenantClient(await h.connect(h.pki.tenant_a))
        head, body = await client.request("POST", b"/run/default/web-0/c?cmd=ls", body=b"payload")
        assert (200, b"ran") == (head.status_code, body)
    [(target, up_body, headers)] = got
    assert f"/run/{super_ns(TENANT_A, 'default')}/web-0/c?cmd=ls".encode() == target
    assert b"payload" == up_body
    assert b"authorization" not in headers  # kubelet mode authenticates by client cert only


async def test_slow_reader_backpressures_upstream(nursery: trio.Nursery) -> None:
    """A tenant that stops reading stalls the upstream's writes; the proxy buffers ~nothing."""
    total = 64 * 1024 * 1024
    chunk = b"x" * (64 * 1024)
    sent = 0
    upstream_done = trio.Event()
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        h.upstream.send_buffer = 64 * 1024

        async def upstream(conn: UpstreamConn) -> None:
            nonlocal sent
            await conn.read_request()
            try:
                await conn.send(
                    h11.Response(
                        status_code=200, headers=[(b"content-length", str(total).encode())]
                    )
                )
                while sent < total:
                    await conn.send(h11.Data(data=chunk))
                    sent += len(chunk)
            finally:
                upstream_done.set()

        h.upstream.handler = upstream
        stream = await h.connect(h.pki.tenant_a, receive_buffer=64 * 1024)
        client = TenantClient(stream)
        await client.send_request("GET", b"/containerLogs/default/web-0/c")
        head = await client.next_event()
        assert 200 == head.status_code
        # Read nothing more. Wait until the upstream's progress stops changing.
        previous = -1
        while previous != sent:
            previous = sent
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)
        assert not upstream_done.is_set()
        # Small socket buffers at both ends: what is in flight is kernel buffers plus one read.
        assert sent < 4 * 1024 * 1024, sent
        # Resume reading a little: the upstream moves again.
        stalled_at = sent
        got = 0
        while got < 2 * 1024 * 1024:
            event = await client.next_event()
            got += len(event.data)
        while sent == stalled_at:
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert sent > stalled_at
        # Hanging up releases the upstream.
        await trio.aclose_forcefully(stream)
        await upstream_done.wait()
        await h.upstream.closed.wait()
    assert sent < total


async def test_client_disconnect_closes_upstream(nursery: trio.Nursery) -> None:
    """A tenant that hangs up mid-stream makes the proxy close the upstream leg at once."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        # Idle follow stream: nothing more to send. Only the proxy closing can end this.
        upstream = HoldingUpstream(h11.Response(status_code=200, headers=[]), h11.Data(data=b"first\n"))
        h.upstream.handler = upstream
        stream = await h.connect(h.pki.tenant_a)
        client = TenantClient(stream)
        await client.send_request("GET", b"/containerLogs/default/web-0/c?follow=true")
        assert 200 == (await client.next_event()).status_code
        assert b"first\n" == (await client.next_event()).data
        await trio.aclose_forcefully(stream)
        await upstream.saw_eof.wait()
        await h.upstream.closed.wait()
        while h.stats.connections:
            await trio.testing.wait_all_tasks_blocked()
    assert 0 == h.stats.in_flight


async def test_upstream_refused_gives_generic_502(nursery: trio.Nursery) -> None:
    """An unreachable upstream is a 502 with a fixed text; no exception detail leaks."""
    with trio.fail_after(DEADLINE):
        probe = trio.socket.socket()
        await probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        h = await start_harness(nursery, port=dead_port)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        client = TenantClient(await h.connect(h.pki.tenant_a))
        head, body = await client.request("GET", b"/containerLogs/default/web-0/c")
        await settle()
    assert (502, b"upstream unavailable\n") == (head.status_code, body)
    assert 1 == h.stats.failures[(TENANT_A, "containerLogs", "error_proxying_request")]


async def test_upstream_hangs_up_gives_502(nursery: trio.Nursery) -> None:
    """An upstream that closes without answering is a 502, and the tenant connection survives."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")

        async def upstream(conn: UpstreamConn) -> None:
            await conn.read_request()  # then the connection is closed without a response

        h.upstream.handler = upstream
        client = TenantClient(await h.connect(h.pki.tenant_a))
        head, body = await client.request("GET", b"/containerLogs/default/web-0/c")
        assert (502, b"upstream unavailable\n") == (head.status_code, body)


async def test_untrusted_upstream_certificate_gives_502(nursery: trio.Nursery) -> None:
    """The upstream leg verifies the super apiserver's certificate; a stranger gets nothing."""
    from appliance.kube import creds as kube_creds
    from tests.component.proxy_helpers import make_ca

    with trio.fail_after(DEADLINE):
        other_ca = make_ca("someone-else")
        ctx = kube_creds.ssl_context(
            kube_creds.Credentials(server="https://x", ca_pem=other_ca.cert_pem), alpn=["http/1.1"]
        )
        h = await start_harness(nursery, ssl_context=ctx)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        called = []

        async def upstream(conn: UpstreamConn) -> None:
            called.append(await conn.read_request())

        h.upstream.handler = upstream
        client = TenantClient(await h.connect(h.pki.tenant_a))
        head, body = await client.request("GET", b"/containerLogs/default/web-0/c")
    assert (502, b"upstream unavailable\n") == (head.status_code, body)
    assert [] == called


async def test_upstream_silence_gives_504(nursery: trio.Nursery) -> None:
    """An upstream that never sends a response head is cut at the response deadline: 504."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, response_timeout=0.3)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        release = trio.Event()

        async def upstream(conn: UpstreamConn) -> None:
            await conn.read_request()
            await release.wait()

        h.upstream.handler = upstream
        client = TenantClient(await h.connect(h.pki.tenant_a))
        head, body = await client.request("GET", b"/containerLogs/default/web-0/c")
        release.set()
    assert (504, b"upstream timeout\n") == (head.status_code, body)


async def test_lookup_failure_is_generic(nursery: trio.Nursery) -> None:
    """A failing pod lookup gives 502 without echoing the exception text."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.fail = True
        client = TenantClient(await h.connect(h.pki.tenant_a))
        head, body = await client.request("GET", b"/containerLogs/default/web-0/c")
    assert (502, b"upstream unavailable\n") == (head.status_code, body)
    assert b"secret" not in body
    assert 0 == h.upstream.connections


async def test_upstream_error_status_is_relayed(nursery: trio.Nursery) -> None:
    """A 4xx from the upstream is the tenant's answer, body and all (not a proxy error)."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")

        async def upstream(conn: UpstreamConn) -> None:
            await conn.read_request()
            await respond(
                conn,
                400,
                b'{"kind":"Status","message":"container c is not valid"}',
                [
                    (b"content-type", b"application/json"),
                    (b"connection", b"keep-alive, x-hop"),
                    (b"x-hop", b"1"),
                ],
            )

        h.upstream.handler = upstream
        client = TenantClient(await h.connect(h.pki.tenant_a))
        head, body = await client.request("GET", b"/containerLogs/default/web-0/c")
        await settle()
    assert 400 == head.status_code
    assert b"container c is not valid" in body
    names = {name for name, _ in head.headers}
    assert b"x-hop" not in names
    assert b"content-type" in names
    assert 1 == h.stats.responses[(TENANT_A, "containerLogs", 400)]


async def test_expect_100_continue(nursery: trio.Nursery) -> None:
    """A client waiting for 100 Continue gets it before it sends the body, which then flows."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, mode="kubelet")
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")

        async def upstream(conn: UpstreamConn) -> None:
            request, body = await conn.read_request()
            assert b"expect" not in dict(request.headers)
            await respond(conn, 200, b"got " + body)

        h.upstream.handler = upstream
        stream = await h.connect(h.pki.tenant_a)
        client = TenantClient(stream)
        headers = [(b"host", b"node-1"), (b"expect", b"100-continue"), (b"content-length", b"4")]
        request = h11.Request(method="POST", target=b"/run/default/web-0/c", headers=headers)
        await stream.send_all(client.conn.send(request) or b"")
        interim = await client.next_event()
        assert isinstance(interim, h11.InformationalResponse)
        assert 100 == interim.status_code
        body = client.conn.send(h11.Data(data=b"ping")) or b""
        await stream.send_all(body + (client.conn.send(h11.EndOfMessage()) or b""))
        head, got = await client.response()
    assert (200, b"got ping") == (head.status_code, got)


async def test_stopping_the_proxy_closes_both_legs(nursery: trio.Nursery) -> None:
    """Cancelling serve() mid-stream closes tenant and upstream connections and zeroes gauges."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        upstream = HoldingUpstream(h11.Response(status_code=200, headers=[]), h11.Data(data=b"a\n"))
        h.upstream.handler = upstream
        stream = await h.connect(h.pki.tenant_a)
        client = TenantClient(stream)
        await client.send_request("GET", b"/containerLogs/default/web-0/c?follow=true")
        assert 200 == (await client.next_event()).status_code
        assert b"a\n" == (await client.next_event()).data
        assert 1 == h.stats.in_flight
        h.proxy_scope.cancel()
        await h.proxy_stopped.wait()
        await upstream.saw_eof.wait()
        try:
            rest = await stream.receive_some(1024)
        except trio.BrokenResourceError:
            rest = b""
        assert b"" == rest
    assert (0, 0) == (h.stats.in_flight, h.stats.connections)
