"""Slow or greedy tenants cannot hold the proxy: read deadlines and a per-tenant connection limit.

Times are real (TLS over loopback cannot run on an autojump clock), so deadlines are small and
each measurement is bounded from below by the deadline itself and from above with a slack for
a loaded machine. A slow client sends one byte per DRIBBLE_EVERY seconds (its pace, not a
synchronisation); every wait for the proxy is a wait for bytes or EOF under a deadline.
"""

from __future__ import annotations

import contextlib
import functools
import re

import h11
import pytest
import trio

from appliance import config
from appliance.proxy import server
from tests.component.proxy_helpers import (
    DEADLINE,
    READ,
    TENANT_A,
    TENANT_B,
    Harness,
    UpstreamConn,
    respond,
    settle,
    start_harness,
    super_ns,
)

HEADER_TIMEOUT, BODY_TIMEOUT, KEEP_ALIVE_TIMEOUT = 1.0, 1.5, 2.0
SLACK = 3.0  # the proxy reacts within deadline + SLACK even on a busy machine
TOLERANCE = 0.05  # the client starts its clock a moment after the proxy may have started its own
DRIBBLE_EVERY = 0.1  # seconds between the bytes of a slow client
B_WINDOW = 5.0  # seconds tenant B's log request may take while tenant A is greedy

SLOW_HEAD = b"GET /containerLogs/default/web-0/c HTTP/1.1\r\nHost: node-1:10550\r\nX-Pad: "
# A request the proxy refuses locally (403), announcing a body it will never finish.
REFUSED_WITH_BODY = b"POST /pods HTTP/1.1\r\nHost: node-1:10550\r\nContent-Length: 100000\r\n\r\n"
FORWARDED_WITH_BODY = (
    b"POST /run/default/web-0/c?cmd=ls HTTP/1.1\r\n"
    b"Host: node-1:10550\r\nContent-Length: 100000\r\n\r\n"
)


async def dribble(stream: trio.abc.Stream, data: bytes, *, until: trio.Event) -> None:
    """Send ``data``, then one byte per DRIBBLE_EVERY seconds until ``until`` or a hang-up."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
        while True:
            with trio.move_on_after(DRIBBLE_EVERY):  # the slow client's pace
                await until.wait()
            if until.is_set():
                return
            await stream.send_all(b"x")


async def read_until_closed(
    stream: trio.abc.Stream, *, answered: trio.Event | None = None
) -> bytes:
    """Everything the proxy sends until it closes the connection (a reset counts as a close)."""
    data = b""
    while True:
        try:
            chunk = await stream.receive_some(READ)
        except trio.BrokenResourceError:
            return data
        if not chunk:
            return data
        data += chunk
        if answered is not None:
            answered.set()


def status_of(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    return int(match.group(1)) if match else None


async def slow_client_is_dropped(h: Harness, slow: bytes) -> tuple[bytes, float]:
    """Connect as tenant A and send ``slow`` followed by one byte per DRIBBLE_EVERY seconds (or,
    if ``slow`` is empty, finish one local request and then stay silent); return what the proxy
    sent and the seconds from the handshake (or from that answer) until it hung up."""
    stream = await h.connect(h.pki.tenant_a)
    before = b""
    if not slow:
        await stream.send_all(b"GET /pods HTTP/1.1\r\nHost: node-1:10550\r\n\r\n")
        while not before.endswith(b"virtual node\n"):  # the whole local 403, kept alive
            chunk = await stream.receive_some(READ)
            assert chunk, before
            before += chunk
    start = trio.current_time()
    answered = trio.Event()  # the first byte of an answer, or the close
    async with trio.open_nursery() as nursery:
        if slow:
            nursery.start_soon(functools.partial(dribble, stream, slow, until=answered))
        answer = await read_until_closed(stream, answered=answered)
        elapsed = trio.current_time() - start
        answered.set()
    return before + answer, elapsed


LIMITS = server.ServerLimits(
    header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT, keep_alive_timeout=KEEP_ALIVE_TIMEOUT
)


LOCAL_403 = b"\r\n\r\npods is not available on a virtual node\n"


@pytest.mark.parametrize(
    ("slow", "deadline", "timeout", "status", "body"),
    [
        pytest.param(SLOW_HEAD, HEADER_TIMEOUT, "head", None, b"", id="dribbled-head"),
        pytest.param(REFUSED_WITH_BODY, BODY_TIMEOUT, "body", 403, LOCAL_403, id="refused-body"),
        pytest.param(
            FORWARDED_WITH_BODY,
            BODY_TIMEOUT,
            "body",
            408,
            b"\r\n\r\nrequest timeout\n",
            id="forwarded-body",
        ),
        pytest.param(b"", KEEP_ALIVE_TIMEOUT, "keep-alive", 403, LOCAL_403, id="idle-keep-alive"),
    ],
)
async def test_slow_client_is_disconnected_at_the_deadline(
    nursery: trio.Nursery, slow: bytes, deadline: float, timeout: str, status: int, body: bytes
) -> None:
    """A client that dribbles its request head or body, or idles between requests, is cut off
    once its deadline passes, however steadily it keeps sending single bytes; an unfinished
    body still gets its answer (the refusal, or 408 for a forwarded request) with a close."""
    upstream_closed = trio.Event()
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, mode="kubelet", limits=LIMITS)
        h.pods.add_tenant_pod(TENANT_A, "default", "web-0")

        async def upstream(conn: UpstreamConn) -> None:
            with contextlib.suppress(h11.RemoteProtocolError):
                await conn.read_request()  # the body never completes: the proxy hangs up
            upstream_closed.set()

        h.upstream.handler = upstream
        answer, elapsed = await slow_client_is_dropped(h, slow)
        if slow is FORWARDED_WITH_BODY:
            await upstream_closed.wait()  # the half-sent request upstream is abandoned too
        await settle()

    assert deadline - TOLERANCE <= elapsed < deadline + SLACK
    answer_body = answer[answer.find(b"\r\n\r\n") :] if answer else b""
    assert (status, body) == (status_of(answer), answer_body)
    if timeout == "body":
        assert b"\r\nconnection: close\r\n" in answer.lower()
    assert {timeout: 1} == dict(h.stats.read_timeouts)
    assert 0 == h.stats.connections


async def test_slow_tenant_cannot_starve_another_tenants_logs(nursery: trio.Nursery) -> None:
    """Tenant A fills every connection slot with request bodies it never finishes: it keeps only
    its per-tenant share, its extra connections get 429, and tenant B's logs still arrive."""
    # A's deadlines outlast B's window: only the per-tenant limit can make room for B.
    limits = server.ServerLimits(
        max_connections=6, max_connections_per_tenant=4, header_timeout=10.0, body_timeout=10.0
    )
    b_log = b"log line of tenant B\n"
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, limits=limits)
        h.pods.add_tenant_pod(TENANT_B, "default", "web-0")

        async def upstream(conn: UpstreamConn) -> None:
            request, _ = await conn.read_request()
            assert f"/namespaces/{super_ns(TENANT_B, 'default')}/".encode() in request.target
            await respond(conn, 200, b_log, [(b"content-type", b"text/plain")])

        h.upstream.handler = upstream
        answers: dict[int, bytes] = {}
        two_answered = trio.Event()

        async def slow_a(i: int, stream: trio.abc.Stream) -> None:
            await stream.send_all(REFUSED_WITH_BODY + b"x" * 10)  # ... and never the rest
            answers[i] = await read_until_closed(stream)
            if len(answers) == 2:
                two_answered.set()

        for i in range(limits.max_connections):  # as many as the whole proxy takes
            nursery.start_soon(slow_a, i, await h.connect(h.pki.tenant_a))

        with trio.move_on_after(B_WINDOW) as b_window:
            stream_b = await h.connect(h.pki.tenant_b)
            await stream_b.send_all(
                b"GET /containerLogs/default/web-0/c HTTP/1.1\r\nHost: node-1:10550\r\n\r\n"
            )
            b_answer = b""
            while not b_answer.endswith(b_log):
                chunk = await stream_b.receive_some(READ)
                assert chunk, b_answer
                b_answer += chunk
            a_open_meanwhile = h.stats.tenant_connections[TENANT_A]
        assert not b_window.cancelled_caught, (
            f"tenant B's logs did not arrive within {B_WINDOW} s while tenant A held "
            f"{h.stats.connections} connections open"
        )
        await two_answered.wait()
        await settle()

    assert 200 == status_of(b_answer)
    assert 4 == a_open_meanwhile  # the limit, not a deadline, made room for B
    assert 2 == len(answers)  # the other four are still waiting for their body deadline
    for answer in answers.values():
        head = answer.lower()
        assert 429 == status_of(answer), answer
        assert b"\r\nretry-after: 1\r\n" in head
        assert b"\r\nconnection: close\r\n" in head
        assert answer.endswith(b"\r\n\r\ntoo many connections\n")
    assert 2 == h.stats.refused_connections[TENANT_A]
    assert 2 == h.stats.responses[(TENANT_A, "other", 429)]
    assert {TENANT_A: 4, TENANT_B: 1} == dict(h.stats.tenant_connections)


async def test_refusals_of_a_tenant_are_bounded_too(nursery: trio.Nursery) -> None:
    """A 429 waits for the request head, so a tenant may have only as many connections waiting
    for it as its limit; one more is closed at once, long before any deadline."""
    limits = server.ServerLimits(max_connections_per_tenant=1, header_timeout=10.0)
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, limits=limits)
        served = await h.connect(h.pki.tenant_a)
        await served.send_all(REFUSED_WITH_BODY)  # held: the body never comes
        waiting = await h.connect(h.pki.tenant_a)  # no request head yet: its 429 waits
        await settle()
        assert {TENANT_A: 1} == h.stats.tenant_connections == h.stats.tenant_refusals
        closed = await h.connect(h.pki.tenant_a)
        with trio.fail_after(HEADER_TIMEOUT):
            assert b"" == await read_until_closed(closed)
        await waiting.send_all(b"GET /containerLogs/default/web-0/c HTTP/1.1\r\nHost: n\r\n\r\n")
        assert 429 == status_of(await read_until_closed(waiting))
        await settle()
    assert 2 == h.stats.refused_connections[TENANT_A]
    assert 1 == h.stats.responses[(TENANT_A, "other", 429)]
    assert ({TENANT_A: 1}, {}) == (dict(h.stats.tenant_connections), dict(h.stats.tenant_refusals))


async def test_handshake_cap_sheds_extra_unauthenticated_connections(nursery: trio.Nursery) -> None:
    """Beyond the cap of connections still in the TLS handshake, new ones are closed at once,
    so silent TCP clients cannot take every slot; a tenant connects once they are gone."""
    limits = server.ServerLimits(max_handshakes=2, handshake_timeout=10.0)
    with trio.fail_after(DEADLINE):
        h = await start_harness(nursery, limits=limits)
        silent = []
        for _ in range(2):
            tcp = await trio.open_tcp_stream("127.0.0.1", h.proxy_port)
            h.client_streams.append(tcp)
            silent.append(tcp)
        await settle()
        shed = await trio.open_tcp_stream("127.0.0.1", h.proxy_port)
        h.client_streams.append(shed)
        assert b"" == await read_until_closed(shed)
        for tcp in silent:
            await tcp.aclose()
        await settle()
        await h.connect(h.pki.tenant_a)
        await settle()
    assert 1 == h.stats.handshakes_shed
    assert 2 == h.stats.handshake_failures  # the two silent ones, once they hung up


def test_limits_follow_the_proxy_config() -> None:
    """Every deadline and limit of the [proxy] config section reaches the server."""
    values = {"handshake_timeout": 1.0, "header_timeout": 2.0, "body_timeout": 3.0, "keep_alive_timeout": 4.0,
              "max_connections": 5, "max_connections_per_tenant": 6, "max_handshakes": 7}
    assert server.ServerLimits(**values) == server.ServerLimits.from_config(config.ProxySection(**values))
