"""Test helpers for the vn-agent proxy: run-time PKI, a loopback h11 upstream, a tenant client.

The upstream is a real TLS + h11 server written here, independent of the proxy's own adapter,
standing in for the super apiserver or a kubelet; each test supplies its behaviour as an async
handler. The tenant client is a raw h11 client over a real TLS connection with a client cert.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import h11
import trio
import trio.testing

from appliance.kube import creds as kube_creds
from appliance.pki import certs
from appliance.proxy import forward, routes, server

READ = 64 * 1024
DEADLINE = 20.0  # absolute per-test deadline on trio's clock

# --- PKI ----------------------------------------------------------------------------------------


#: a certificate and its key as PEM (`.cert` parses it), built by the appliance's own `pki.certs`
Issued = certs.CertKey


def make_ca(cn: str) -> Issued:
    return certs.new_ca(cn, days=1)


def issue(ca: Issued, cn: str, *, server_auth: bool = False, orgs: tuple[str, ...] = ()) -> Issued:
    """A one-day client certificate, or a serving one for localhost and 127.0.0.1."""
    if server_auth:
        return certs.issue(ca, common_name=cn, organizations=orgs, dns_names=("localhost",),
                           ip_addresses=("127.0.0.1",), server=True, days=1)
    return certs.issue(ca, common_name=cn, organizations=orgs, client=True, days=1)


@dataclass(frozen=True)
class Pki:
    """Everything one proxy test needs: two tenants, a rogue CA, serving certs for both legs."""

    tenant_a_ca: Issued
    tenant_b_ca: Issued
    rogue_ca: Issued
    tenant_a: Issued  # the client cert tenant A's apiserver presents
    tenant_b: Issued
    rogue: Issued  # claims to be tenant A by CN, issued by the rogue CA
    proxy_ca: Issued
    proxy_serving: Issued
    upstream_ca: Issued
    upstream_serving: Issued


def make_pki() -> Pki:
    a_ca, b_ca, rogue_ca = make_ca("tenant-a-ca"), make_ca("tenant-b-ca"), make_ca("tenant-a-ca")
    proxy_ca, upstream_ca = make_ca("vn-agent-ca"), make_ca("super-apiserver-ca")
    return Pki(
        tenant_a_ca=a_ca,
        tenant_b_ca=b_ca,
        rogue_ca=rogue_ca,
        tenant_a=issue(a_ca, TENANT_A),
        tenant_b=issue(b_ca, TENANT_B),
        rogue=issue(rogue_ca, TENANT_A),
        proxy_ca=proxy_ca,
        proxy_serving=issue(proxy_ca, "vn-agent", server_auth=True),
        upstream_ca=upstream_ca,
        upstream_serving=issue(upstream_ca, "super-apiserver", server_auth=True),
    )


TENANT_A = "default-a1b2c3-tenant-a"
TENANT_B = "default-d4e5f6-tenant-b"
SUPER_TOKEN = "super-sa-token-value"


def super_ns(key: str, ns: str) -> str:
    return f"{key}-{ns}"  # short keys in these tests: no hashing


def server_ssl_context(serving: Issued) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_alpn_protocols(["http/1.1"])
    kube_creds.load_cert_chain_pem(ctx, cert_pem=serving.cert_pem, key_pem=serving.key_pem)
    return ctx


def client_ssl_context(pki: Pki, identity: Issued | None) -> ssl.SSLContext:
    """What a tenant apiserver uses to call the vn-agent (trusts the proxy CA)."""
    ctx = ssl.create_default_context(cadata=pki.proxy_ca.cert_pem.decode())
    ctx.set_alpn_protocols(["http/1.1"])
    if identity is not None:
        kube_creds.load_cert_chain_pem(ctx, cert_pem=identity.cert_pem, key_pem=identity.key_pem)
    return ctx


# --- the upstream (fake super apiserver / kubelet) ----------------------------------------------


class UpstreamConn:
    """One accepted upstream connection, with a tiny h11 driver independent of the proxy's."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER)

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(bytes(await self.stream.receive_some(READ)))

    async def read_request(self) -> tuple[h11.Request, bytes]:
        request = await self.next_event()
        assert isinstance(request, h11.Request), request
        body = b""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.EndOfMessage):
                return request, body
            body += event.data

    async def send(self, *events: h11.Event, extra: bytes = b"") -> None:
        data = b"".join(self.conn.send(e) or b"" for e in events)
        await self.stream.send_all(data + extra)


UpstreamHandler = Callable[[UpstreamConn], Awaitable[None]]


class HoldingUpstream:
    """An upstream handler that answers with `events` (then raw `then` bytes) and holds the
    connection open, reading, until the proxy closes its leg.

    `saw_eof` is set once it reads EOF or finds the stream broken: the proof, in tests of
    hang-ups, idle deadlines and shutdown, that the proxy let go of the upstream.
    """

    def __init__(self, *events: h11.Event, then: bytes = b"") -> None:
        self._events, self._then = events, then
        self.saw_eof = trio.Event()

    async def __call__(self, conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(*self._events)
        if self._then:
            await conn.stream.send_all(self._then)
        try:
            while await conn.stream.receive_some(1024):
                pass
        except trio.BrokenResourceError:
            pass
        self.saw_eof.set()


@dataclass
class FakeUpstream:
    """A loopback TLS server; each connection runs ``handler`` (settable per test)."""

    handler: UpstreamHandler | None = None
    port: int = 0
    connections: int = 0
    closed: trio.Event = field(default_factory=trio.Event)  # set when a handler's connection ends
    send_buffer: int | None = None  # SO_SNDBUF for accepted sockets (backpressure tests)

    async def serve(
        self, ctx: ssl.SSLContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                tcp = await listener.accept()
                nursery.start_soon(
                    self._one,
                    trio.SSLStream(tcp, ctx, server_side=True, https_compatible=True),
                    tcp,
                )

    async def _one(self, stream: trio.SSLStream[trio.SocketStream], tcp: trio.SocketStream) -> None:
        self.connections += 1
        if self.send_buffer is not None:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        try:
            assert self.handler is not None
            await self.handler(UpstreamConn(stream))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self.closed.set()


async def respond(
    conn: UpstreamConn, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    hdrs = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    await conn.send(
        h11.Response(status_code=status, headers=hdrs), h11.Data(data=body), h11.EndOfMessage()
    )


# --- the proxy under test ----------------------------------------------------------------------


@dataclass
class SuperPods:
    """The super cluster's pods as ``lookup_pod`` sees them: (namespace, name) → pod."""

    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    lookups: list[tuple[str, str]] = field(default_factory=list)
    fail: bool = False

    def add_tenant_pod(self, key: str, ns: str, name: str, *, owner: str | None = None) -> None:
        sns = super_ns(key, ns)
        self.pods[(sns, name)] = {
            "metadata": {
                "name": name,
                "namespace": sns,
                "annotations": {
                    "tenancy.x-k8s.io/cluster": owner or key,
                    "tenancy.x-k8s.io/namespace": ns,
                },
            }
        }

    async def lookup(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        await trio.lowlevel.checkpoint()
        self.lookups.append((namespace, name))
        if self.fail:
            raise RuntimeError("secret-detail: super apiserver down at https://10.0.0.1 token=xyz")
        return self.pods.get((namespace, name))


@dataclass
class Harness:
    pki: Pki
    upstream: FakeUpstream
    pods: SuperPods
    cas: server.TenantCAs
    stats: server.ProxyStatistics
    proxy_port: int = 0
    client_streams: list[trio.abc.Stream] = field(default_factory=list)
    proxy_scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # cancel = stop proxy
    proxy_stopped: trio.Event = field(default_factory=trio.Event)

    async def connect(
        self, identity: Issued | None, *, receive_buffer: int | None = None
    ) -> trio.SSLStream[trio.SocketStream]:
        """A TLS connection to the proxy as a tenant apiserver (closed when the test ends)."""
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        tcp = trio.SocketStream(sock)
        self.client_streams.append(tcp)
        await sock.connect(("127.0.0.1", self.proxy_port))
        stream = trio.SSLStream(
            tcp,
            client_ssl_context(self.pki, identity),
            server_hostname="127.0.0.1",
            https_compatible=True,
        )
        self.client_streams.append(stream)
        await stream.do_handshake()
        return stream

    async def close_clients_at_teardown(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            # aclose_forcefully re-raises the outer Cancelled after closing: shield the loop.
            with trio.CancelScope(shield=True):
                for stream in reversed(self.client_streams):  # TLS layers before their sockets
                    await trio.aclose_forcefully(stream)


async def settle() -> None:
    """Let the proxy finish bookkeeping for what the client has already observed."""
    await trio.testing.wait_all_tasks_blocked()


def upstream_config(
    pki: Pki, upstream_port: int, *, mode: routes.Mode = "super-apiserver", **overrides: Any
) -> forward.UpstreamConfig:
    creds = kube_creds.Credentials(
        server=f"https://127.0.0.1:{upstream_port}",
        ca_pem=pki.upstream_ca.cert_pem,
        token=SUPER_TOKEN if mode == "super-apiserver" else None,
    )
    config = forward.upstream_from_credentials(creds, mode=mode)
    return dataclasses.replace(config, **overrides) if overrides else config


async def start_harness(
    nursery: trio.Nursery,
    *,
    mode: routes.Mode = "super-apiserver",
    pki: Pki | None = None,
    limits: server.ServerLimits = server.ServerLimits(),  # noqa: B008
    **upstream_overrides: Any,
) -> Harness:
    """Upstream + proxy on loopback port 0, tenants A and B registered, ready to connect."""
    pki = pki or make_pki()
    upstream = FakeUpstream()
    await nursery.start(upstream.serve, server_ssl_context(pki.upstream_serving))
    cas = server.TenantCAs()
    cas.set(TENANT_A, pki.tenant_a_ca.cert_pem)
    cas.set(TENANT_B, pki.tenant_b_ca.cert_pem.decode())
    harness = Harness(
        pki=pki, upstream=upstream, pods=SuperPods(), cas=cas, stats=server.ProxyStatistics()
    )
    nursery.start_soon(harness.close_clients_at_teardown)
    config = upstream_config(pki, upstream.port, mode=mode, **upstream_overrides)

    async def run_proxy(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with harness.proxy_scope:
            await server.serve(
                host="127.0.0.1",
                port=0,
                server_cert_pem=pki.proxy_serving.cert_pem,
                server_key_pem=pki.proxy_serving.key_pem,
                cas=cas,
                upstream=config,
                lookup_pod=harness.pods.lookup,
                statistics=harness.stats,
                limits=limits,
                task_status=task_status,
            )
        harness.proxy_stopped.set()

    listeners = await nursery.start(run_proxy)
    harness.proxy_port = listeners[0].socket.getsockname()[1]
    return harness


# --- the tenant side -----------------------------------------------------------------------------


class TenantClient:
    """A raw h11 client over an already-connected stream (what the tenant apiserver does)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(READ)
            except trio.BrokenResourceError:
                data = b""
            self.conn.receive_data(bytes(data))

    async def send_request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        body: bytes = b"",
        extra: bytes = b"",
    ) -> None:
        hdrs = [(b"host", b"node-1:10550"), *(headers or [])]
        if body:
            hdrs.append((b"content-length", str(len(body)).encode()))
        data = self.conn.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data + extra)

    async def response(self) -> tuple[h11.Response | h11.InformationalResponse, bytes]:
        head = await self.next_event()
        assert isinstance(head, (h11.Response, h11.InformationalResponse)), head
        if head.status_code == 101:
            return head, b""
        body = b""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.EndOfMessage):
                return head, body
            assert isinstance(event, h11.Data), event
            body += event.data

    async def request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        body: bytes = b"",
    ) -> tuple[h11.Response | h11.InformationalResponse, bytes]:
        await self.send_request(method, target, headers, body=body)
        return await self.response()

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()
