"""Tenant identity comes from the verifying tenant CA; pods are checked against the tenant."""

from __future__ import annotations

import h11
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization

from appliance.proxy import routes, server
from tests.component.proxy_helpers import (
    DEADLINE,
    TENANT_A,
    TENANT_B,
    Harness,
    Issued,
    TenantClient,
    UpstreamConn,
    issue,
    make_ca,
    make_pki,
    respond,
    settle,
    start_harness,
    super_ns,
)


async def serve_ok(conn: UpstreamConn) -> None:
    request, _ = await conn.read_request()
    await respond(conn, 200, b"ok " + request.target)


async def assert_refused_at_tls(h: Harness, identity: Issued | None) -> None:
    """The handshake fails, or (TLS 1.3) the connection dies before any HTTP response."""
    try:
        stream = await h.connect(identity)
        client = TenantClient(stream)
        await client.send_request("GET", b"/containerLogs/default/web-0/c")
        event = await client.next_event()
    except (trio.BrokenResourceError, h11.RemoteProtocolError):
        return
    assert isinstance(event, h11.ConnectionClosed), event


@pytest.mark.parametrize("who", ["no-cert", "rogue-ca"])
async def test_unverified_clients_are_refused(nursery: trio.Nursery, who: str) -> None:
    """No client cert, or one from an unknown CA claiming a tenant's CN, never gets through."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.upstream.handler = serve_ok
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        await assert_refused_at_tls(h, None if who == "no-cert" else h.pki.rogue)
        await settle()
    assert [] == h.pods.lookups
    assert 0 == h.upstream.connections
    assert 1 == h.stats.handshake_failures


async def test_tenant_b_cannot_reach_tenant_a_pod(nursery: trio.Nursery) -> None:
    """B's request for A's pod lands in B's namespace (404); a mis-stamped pod there is 403."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.upstream.handler = serve_ok
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        client_b = TenantClient(await h.connect(h.pki.tenant_b))
        head, body = await client_b.request("GET", b"/containerLogs/default/web-0/c")
        assert (404, b"pod not found\n") == (head.status_code, body)
        client_b.next_cycle()

        # A pod in B's super namespace stamped as A's (e.g. a hand-made or colliding object).
        h.pods.add_tenant_pod(TENANT_B, "default", "odd-0", owner=TENANT_A)
        head, body = await client_b.request("POST", b"/exec/default/odd-0/c?command=ls&output=1")
        assert (403, b"forbidden\n") == (head.status_code, body)

        client_a = TenantClient(await h.connect(h.pki.tenant_a))
        head, body = await client_a.request("GET", b"/containerLogs/default/web-0/c")
        assert 200 == head.status_code
        await settle()
    assert [
        (super_ns(TENANT_B, "default"), "web-0"),
        (super_ns(TENANT_B, "default"), "odd-0"),
        (super_ns(TENANT_A, "default"), "web-0"),
    ] == h.pods.lookups
    assert 1 == h.upstream.connections  # only A's request went upstream
    assert 1 == h.stats.failures[(TENANT_B, "containerLogs", "pod_not_found")]
    assert 1 == h.stats.failures[(TENANT_B, "exec", "pod_not_owned")]


async def test_identity_is_the_ca_not_the_common_name(nursery: trio.Nursery) -> None:
    """A cert issued by B's CA with A's cluster key as CN is tenant B."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.upstream.handler = serve_ok
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        h.pods.add_tenant_pod(TENANT_B, "default", "web-0")
        impostor = issue(h.pki.tenant_b_ca, TENANT_A, orgs=("system:masters",))
        client = TenantClient(await h.connect(impostor))
        head, body = await client.request("GET", b"/containerLogs/default/web-0/c")
    assert 200 == head.status_code
    assert f"/api/v1/namespaces/{super_ns(TENANT_B, 'default')}/pods/web-0/log".encode() in body


async def test_tenant_cas_are_live(nursery: trio.Nursery) -> None:
    """Adding a CA admits its tenant on the next connection; removing one cuts the tenant off."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.upstream.handler = serve_ok
        c_ca = make_ca("tenant-c-ca")
        c_cert = issue(c_ca, "tenant-c")
        h.pods.add_tenant_pod("tenant-c", "default", "web-0")
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")

        await assert_refused_at_tls(h, c_cert)
        h.cas.set("tenant-c", c_ca.cert_pem)
        client_c = TenantClient(await h.connect(c_cert))
        head, _ = await client_c.request("GET", b"/containerLogs/default/web-0/c")
        assert 200 == head.status_code

        client_a = TenantClient(await h.connect(h.pki.tenant_a))
        head, _ = await client_a.request("GET", b"/containerLogs/default/web-0/c")
        assert 200 == head.status_code
        client_a.next_cycle()
        h.cas.remove(TENANT_A)
        # The kept-alive connection is re-identified per request ...
        head, body = await client_a.request("GET", b"/containerLogs/default/web-0/c")
        assert (403, b"forbidden\n") == (head.status_code, body)
        # ... and new connections fail the handshake.
        await assert_refused_at_tls(h, h.pki.tenant_a)


async def test_local_refusals_through_the_server(nursery: trio.Nursery) -> None:
    """Node-wide kubelet paths and malformed targets are answered by the proxy itself."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        h.upstream.handler = serve_ok
        client = TenantClient(await h.connect(h.pki.tenant_a))
        answers = []
        for method, target in [
            ("GET", b"/pods"),
            ("GET", b"/stats/summary"),
            ("GET", b"/containerLogs/x%2Fy/p/c"),
            ("DELETE", b"/exec/default/web-0/c"),
            ("GET", b"/nope"),
        ]:
            head, body = await client.request(method, target)
            answers.append((head.status_code, body))
            client.next_cycle()
        await settle()
    assert [
        (403, b"pods is not available on a virtual node\n"),
        (403, b"stats is not available on a virtual node\n"),
        (400, b"malformed path\n"),
        (405, b"method not allowed\n"),
        (404, b"not found\n"),
    ] == answers
    assert 0 == h.upstream.connections
    assert [] == h.pods.lookups
    assert 1 == h.stats.failures[(TENANT_A, "exec", "error_translating_path")]


async def test_broken_http_gets_400_without_detail(nursery: trio.Nursery) -> None:
    """A request h11 cannot parse gets h11's status hint and a fixed text, then a close."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery)
        stream = await h.connect(h.pki.tenant_a)
        await stream.send_all(b"GET /pods HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert data.endswith(b"\r\n\r\nbad request\n")


async def test_handshake_deadline_closes_silent_connections(nursery: trio.Nursery) -> None:
    """A TCP client that never starts TLS is dropped after the handshake deadline."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, limits=server.ServerLimits(handshake_timeout=0.2))
        tcp = await trio.open_tcp_stream("127.0.0.1", h.proxy_port)
        h.client_streams.append(tcp)
        assert b"" == await tcp.receive_some(10)
        await settle()
    assert 1 == h.stats.handshake_failures


async def test_connection_limit_defers_accepting(nursery: trio.Nursery) -> None:
    """At the connection limit a new client waits in the backlog until a slot frees up."""
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, limits=server.ServerLimits(max_connections=1))
        h.upstream.handler = serve_ok
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")
        first = await h.connect(h.pki.tenant_a)
        second_ready = trio.Event()

        async def second() -> None:
            await h.connect(h.pki.tenant_b)
            second_ready.set()

        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert not second_ready.is_set()
        assert 1 == h.stats.connections
        await first.aclose()
        await second_ready.wait()


def test_tenant_cas_identify() -> None:
    """identify() names the tenant whose CA issued the leaf; strangers and ambiguity get None."""
    pki = make_pki()
    cas = server.TenantCAs()
    cas.set(TENANT_A, pki.tenant_a_ca.cert_pem)
    cas.set(TENANT_B, pki.tenant_b_ca.cert_pem)
    issued = {"a": pki.tenant_a, "b": pki.tenant_b, "rogue": pki.rogue}
    der = {name: i.cert.public_bytes(serialization.Encoding.DER) for name, i in issued.items()}
    assert routes.CallingTenant(TENANT_A) == cas.identify(der["a"])
    assert routes.CallingTenant(TENANT_B) == cas.identify(der["b"])
    assert cas.identify(der["rogue"]) is None  # same issuer name as A's CA, wrong key
    assert cas.identify(b"not a certificate") is None
    cas.set("copycat", pki.tenant_a_ca.cert_pem)  # two tenants sharing one CA: ambiguous
    assert cas.identify(der["a"]) is None


def test_tenant_cas_versioning_and_validation() -> None:
    """Only effective changes bump the version; non-CA certificates are rejected."""
    pki = make_pki()
    cas = server.TenantCAs()
    v0 = cas.version
    cas.set(TENANT_A, pki.tenant_a_ca.cert_pem)
    v1 = cas.version
    cas.set(TENANT_A, pki.tenant_a_ca.cert_pem)
    cas.remove("unknown")
    assert v1 == cas.version != v0
    with pytest.raises(ValueError, match="not a CA"):
        cas.set(TENANT_B, pki.tenant_b.cert_pem)  # a leaf, not a CA
    with pytest.raises(ValueError, match="no readable certificate"):
        cas.set(TENANT_B, b"garbage")
    assert [TENANT_A] == cas.cluster_keys()
    assert pki.tenant_a_ca.cert_pem.decode() == cas.bundle()
    cas.remove(TENANT_A)
    assert "" == cas.bundle()
    assert v1 != cas.version
