"""The vn-agent's TLS listener: tenant identity, per-connection handling, statistics.

Owns the accept loop (a ``serve_listeners`` variant with a connection limit), the TLS handshake
under a deadline, tenant identification, and the HTTP/1.1 request loop that routes each request
(``routes``), checks super-pod ownership through the caller's ``lookup_pod``, and hands allowed
requests to ``forward``. A tenant is the owner of the registered CA that *directly issued* the
verified peer certificate (issuer name plus signature check), never the certificate's CN.
``TenantCAs`` is live: every change bumps a version, and the next accepted connection handshakes
with a context rebuilt from the current CA set. Clients never see exception text.

No client holds a connection slot by being slow (``ServerLimits``): the handshake, each request
head, each request body and the idle time between requests have deadlines; connections still in
the handshake are capped, and so are a tenant's connections (more get 429 and are closed, and
as many again at most wait for that answer), so one tenant cannot take the slots another needs
for its ``kubectl logs``. The response side and
upgraded streams have no read deadline here: ``forward`` bounds them by upstream idleness.
"""

from __future__ import annotations

import collections
import errno
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import h11
import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from appliance.proxy import forward, h11io, routes, settings, tls
from appliance.util import tenancy

__all__ = ["PodLookup", "ProxyStatistics", "ServerLimits", "TenantCAs", "serve"]

log = logging.getLogger(__name__)

PodLookup = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
"""``lookup_pod(super_namespace, name)`` → the super pod object (with ``metadata``) or None."""

# Accept errors that mean "out of resources right now" (from trio's serve_listeners).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_BACKOFF = 0.1

_REFUSED_BODY_LIMIT = 64 * 1024  # request body bytes we read and discard before a local answer
_RETRY_AFTER = b"1"  # seconds, in the 429 for a tenant at its connection limit


class TenantCAs:
    """Live registry of tenant CAs: cluster key → CA certificate(s) that sign its client certs.

    Not thread-safe; use from the trio thread. ``version`` changes on every effective change.
    """

    def __init__(self) -> None:
        self._pems: dict[tenancy.ClusterKey, str] = {}
        self._by_subject: dict[bytes, list[tuple[tenancy.ClusterKey, x509.Certificate]]] = {}
        self._version = 0

    @property
    def version(self) -> int:
        return self._version

    def set(self, cluster_key: tenancy.ClusterKey, ca_pem: bytes | str) -> None:
        """Register or replace ``cluster_key``'s CA bundle (one or more PEM certificates).

        Raises:
          ValueError: the PEM holds no certificate, or a certificate that is not a CA.
        """
        text = ca_pem.decode("ascii") if isinstance(ca_pem, bytes) else ca_pem
        try:
            certs = x509.load_pem_x509_certificates(text.encode("ascii"))
        except ValueError:
            raise ValueError("tenant CA bundle holds no readable certificate") from None
        for cert in certs:
            try:
                is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                raise ValueError("tenant CA bundle holds a certificate that is not a CA")
        if self._pems.get(cluster_key) == text:
            return
        self._pems[cluster_key] = text
        self._reindex()

    def remove(self, cluster_key: tenancy.ClusterKey) -> None:
        """Forget ``cluster_key``'s CA; unknown keys are ignored."""
        if self._pems.pop(cluster_key, None) is not None:
            self._reindex()

    def cluster_keys(self) -> list[tenancy.ClusterKey]:
        return sorted(self._pems)

    def bundle(self) -> str:
        """All registered CA certificates as one PEM string (the server's verify store)."""
        return "".join(pem if pem.endswith("\n") else pem + "\n" for pem in self._pems.values())

    def identify(self, peer_der: bytes) -> routes.CallingTenant | None:
        """The tenant whose registered CA directly issued this (already verified) certificate.

        None when no CA, or CAs of more than one tenant, issued it.
        """
        try:
            leaf = x509.load_der_x509_certificate(peer_der)
        except ValueError:
            return None
        owners: set[tenancy.ClusterKey] = set()
        for cluster_key, ca in self._by_subject.get(leaf.issuer.public_bytes(), []):
            try:
                leaf.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            owners.add(cluster_key)
        if len(owners) != 1:
            if owners:
                log.warning("client certificate issued by CAs of %d tenants; refusing", len(owners))
            return None
        return routes.CallingTenant(cluster_key=owners.pop())

    def _reindex(self) -> None:
        index: dict[bytes, list[tuple[tenancy.ClusterKey, x509.Certificate]]] = collections.defaultdict(list)
        for cluster_key, pem in self._pems.items():
            for cert in x509.load_pem_x509_certificates(pem.encode("ascii")):
                index[cert.subject.public_bytes()].append((cluster_key, cert))
        self._by_subject = dict(index)
        self._version += 1


class ServerLimits(settings.ConnectionLimits, frozen=True):
    """Bounds on the tenant-facing side (seconds, bytes, counts): the `[proxy]` section's
    ``ConnectionLimits`` plus the bounds the file does not hold."""

    lookup_timeout: float = 10.0  # super pod lookup
    max_header_bytes: int = h11io.MAX_HEADER_BYTES

    @classmethod
    def from_config(cls, section: settings.ProxyConfig) -> ServerLimits:
        """The limits of a `[proxy]` section (the others at their defaults)."""
        return cls(**{name: getattr(section, name) for name in settings.ConnectionLimits.__struct_fields__})


@dataclass(slots=True)
class ProxyStatistics:
    """Counters for metrics; plain data, read by the app at scrape time."""

    in_flight: int = 0  # requests being answered right now
    connections: int = 0  # open connections, handshaking or not
    handshakes: int = 0  # connections in the TLS handshake right now
    handshake_failures: int = 0  # including handshake deadlines
    handshakes_shed: int = 0  # closed unanswered because ``max_handshakes`` were in progress
    # tenant cluster key (or "-": verified, but no single tenant CA issued it) → open connections;
    # ``max_connections_per_tenant`` applies to these counts
    tenant_connections: collections.Counter[str] = field(default_factory=collections.Counter)
    # tenant → connections waiting for their request head to be answered 429 (at most
    # ``max_connections_per_tenant`` per tenant; more are closed unanswered)
    tenant_refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    # tenant → connections refused (429 or closed unanswered) because it was at its limit
    refused_connections: collections.Counter[str] = field(default_factory=collections.Counter)
    # "head", "body" or "keep-alive" → connections closed because that read's deadline passed
    read_timeouts: collections.Counter[str] = field(default_factory=collections.Counter)
    # (tenant cluster key or "-", action, status code) → count
    responses: collections.Counter[tuple[str, str, int]] = field(
        default_factory=collections.Counter
    )
    # (tenant, action, reason) → count; reasons "error_translating_path", "error_proxying_request",
    # "pod_not_found", "pod_not_owned", "unknown_tenant"
    failures: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)


class _Contexts:
    """Builds the server SSLContext for the current ``TenantCAs`` version, off the event loop."""

    def __init__(self, *, cert_pem: bytes | str, key_pem: bytes | str, cas: TenantCAs) -> None:
        self._cert_pem, self._key_pem, self._cas = cert_pem, key_pem, cas
        self._lock = trio.Lock()
        self._version = -1
        self._context: ssl.SSLContext | None = None

    async def current(self) -> ssl.SSLContext:
        async with self._lock:
            version = self._cas.version
            if version != self._version:
                bundle = self._cas.bundle()
                self._context = await trio.to_thread.run_sync(
                    lambda: tls.server_context(
                        cert_pem=self._cert_pem, key_pem=self._key_pem, client_ca_bundle=bundle
                    )
                )
                self._version = version
                log.debug(
                    "server TLS context rebuilt for %d tenant CA(s)", len(self._cas.cluster_keys())
                )
            assert self._context is not None
            return self._context


async def serve(
    *,
    host: str | None,
    port: int,
    server_cert_pem: bytes | str,
    server_key_pem: bytes | str,
    cas: TenantCAs,
    upstream: forward.UpstreamConfig,
    lookup_pod: PodLookup,
    limits: ServerLimits = ServerLimits(),  # noqa: B008  a frozen Struct, immutable
    statistics: ProxyStatistics | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the kubelet API for tenants on ``host:port`` until cancelled.

    ``task_status.started()`` receives the listeners (port 0 → read the bound port from
    ``listeners[0].socket.getsockname()``) once the certificate has loaded and they listen.

    Resource handling: connection handlers run in ``handler_nursery`` (default: one of our
    own); each closes its connection, forcefully at the end, whatever happens. The listeners
    are closed when serving ends.
    """
    stats = statistics if statistics is not None else ProxyStatistics()
    contexts = _Contexts(cert_pem=server_cert_pem, key_pem=server_key_pem, cas=cas)
    await contexts.current()  # fail fast on a bad certificate or key
    listeners = await trio.open_tcp_listeners(port, host=host)
    limiter = trio.CapacityLimiter(limits.max_connections)
    conn = _ConnectionHandler(
        contexts=contexts,
        cas=cas,
        upstream=upstream,
        lookup_pod=lookup_pod,
        limits=limits,
        stats=stats,
    )
    try:
        async with trio.open_nursery() as nursery:
            handlers = handler_nursery if handler_nursery is not None else nursery
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, handlers, limiter, conn)
            log.info("vn-agent proxy listening on %s (mode %s)", _addresses(listeners), upstream.mode)
            task_status.started(listeners)
    finally:  # cancelled: stop listening at once (connections in `handler_nursery` go on)
        for listener in listeners:
            await trio.aclose_forcefully(listener)
    raise AssertionError("unreachable")


def _addresses(listeners: list[trio.SocketListener]) -> str:
    return ", ".join(str(listener.socket.getsockname()[:2]) for listener in listeners)


async def _accept_loop(
    listener: trio.SocketListener,
    handlers: trio.Nursery,
    limiter: trio.CapacityLimiter,
    conn: _ConnectionHandler,
) -> NoReturn:
    async with listener:
        while True:
            token = object()  # one borrower per connection; listeners share the limiter
            await limiter.acquire_on_behalf_of(token)
            try:
                stream = await listener.accept()
            except OSError as exc:
                limiter.release_on_behalf_of(token)
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.warning(
                    "accept failed (%s); backing off", errno.errorcode.get(exc.errno or 0, "?")
                )
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            except BaseException:
                limiter.release_on_behalf_of(token)
                raise
            handlers.start_soon(conn.run, stream, limiter, token)
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True, kw_only=True)
class _ConnectionHandler:
    contexts: _Contexts
    cas: TenantCAs
    upstream: forward.UpstreamConfig
    lookup_pod: PodLookup
    limits: ServerLimits
    stats: ProxyStatistics

    async def run(
        self, tcp: trio.SocketStream, limiter: trio.CapacityLimiter, token: object
    ) -> None:
        self.stats.connections += 1
        stream: trio.abc.Stream = tcp
        counted: collections.Counter[str] | None = None  # where ``key`` counts this connection
        key = "-"
        try:
            if self.stats.handshakes >= self.limits.max_handshakes:
                self.stats.handshakes_shed += 1
                log.debug("%d handshakes in progress; closing a new one", self.stats.handshakes)
                return
            self.stats.handshakes += 1  # MUST be no await between the check above and this count
            try:
                ssl_stream = trio.SSLStream(
                    tcp, await self.contexts.current(), server_side=True, https_compatible=True
                )
                stream = ssl_stream
                shook = await self._handshake(ssl_stream)
            finally:
                self.stats.handshakes -= 1
            if not shook:
                return
            peer = ssl_stream.getpeercert(binary_form=True) or b""
            tenant = self.cas.identify(peer) if peer else None
            key = tenant.cluster_key if tenant else "-"
            client = h11io.H11Stream(
                ssl_stream, h11.SERVER, max_header_bytes=self.limits.max_header_bytes
            )
            # MUST be no await between a check below and its count.
            limit = self.limits.max_connections_per_tenant
            if self.stats.tenant_connections[key] < limit:
                counted = self.stats.tenant_connections
                counted[key] += 1
                await self._serve_requests(client, peer)
            else:
                self.stats.refused_connections[key] += 1
                # A refusal waits for the request head, so refusals are bounded per tenant too:
                # beyond them a connection is closed at once, and a tenant never holds more
                # than twice its limit in slots, however fast it reconnects.
                if self.stats.tenant_refusals[key] < limit:
                    counted = self.stats.tenant_refusals
                    counted[key] += 1
                    await self._too_many(client, key)
                else:
                    log.debug("tenant %s has %d connections waiting for a 429; closing", key, limit)
            with trio.move_on_after(forward.CLOSE_GRACE, shield=True):
                await stream.aclose()  # polite close_notify on the normal path
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("client connection broke")
        except Exception:
            log.exception("unexpected error in a proxy connection")  # rule 20b: one connection only
        finally:
            self.stats.connections -= 1
            if counted is not None:
                counted[key] -= 1
                if not counted[key]:
                    del counted[key]  # bounded by the tenants connected right now
            limiter.release_on_behalf_of(token)
            await trio.aclose_forcefully(stream)

    async def _handshake(self, ssl_stream: trio.SSLStream[trio.SocketStream]) -> bool:
        """Run the TLS handshake under its deadline; False (counted) if it fails."""
        try:
            with trio.fail_after(self.limits.handshake_timeout):
                await ssl_stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            self.stats.handshake_failures += 1
            log.debug("TLS handshake failed: %s", _cause_name(exc))
            return False
        return True

    async def _next_request(
        self, client: h11io.H11Stream, *, kept_alive: bool
    ) -> h11.Request | None:
        """Read the next request head under its deadlines; None when the client is done or slow.

        On a kept-alive connection the header deadline starts with the first byte of the next
        request; until then the keep-alive deadline applies.

        Raises:
          h11.RemoteProtocolError: the head is malformed or too large.
        """
        phase = "head"
        try:
            if kept_alive:
                phase = "keep-alive"
                client.read_deadline = trio.current_time() + self.limits.keep_alive_timeout
                await client.wait_for_next_message()
                phase = "head"
            client.read_deadline = trio.current_time() + self.limits.header_timeout
            event = await client.next_event()
        except h11io.ReadTimeout:
            self.stats.read_timeouts[phase] += 1
            return None  # nothing worth an answer: idle, or a head too slow to judge
        if not isinstance(event, h11.Request):
            return None  # the client closed
        client.read_deadline = trio.current_time() + self.limits.body_timeout
        return event

    async def _too_many(self, client: h11io.H11Stream, key: str) -> None:
        """Answer the first request of an over-limit connection with 429, unread body and all."""
        try:
            request = await self._next_request(client, kept_alive=False)
        except h11.RemoteProtocolError:
            return
        if request is None:
            return
        self.stats.responses[(key, "other", 429)] += 1
        log.info(
            "tenant %s is at its limit of %d connections; answering 429",
            key,
            self.limits.max_connections_per_tenant,
        )
        retry = [(b"retry-after", _RETRY_AFTER)]
        await _answer(client, 429, "too many connections", close=True, headers=retry)

    async def _serve_requests(self, client: h11io.H11Stream, peer: bytes) -> None:
        kept_alive = False
        while True:
            try:
                event = await self._next_request(client, kept_alive=kept_alive)
            except h11.RemoteProtocolError as exc:
                await _answer(client, exc.error_status_hint, "bad request")
                return
            if event is None:
                return  # idle keep-alive, slow headers, or the client closed
            kept_alive = True
            # Identified per request: removing a tenant's CA also stops its kept-alive connections.
            tenant = self.cas.identify(peer) if peer else None
            self.stats.in_flight += 1
            try:
                action, status = await self._respond(client, event, tenant)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise  # the client went away; nothing to answer
            except h11io.ReadTimeout:
                # The body of a forwarded request did not arrive in time (the upstream leg is
                # closed already); refused requests answer their own status instead.
                self.stats.read_timeouts["body"] += 1
                action, status = "other", 408
                await _answer(client, status, "request timeout")
            except h11.RemoteProtocolError as exc:
                action, status = "other", exc.error_status_hint
                await _answer(client, status, "bad request")
            except Exception:
                log.exception("unexpected error while proxying")
                action, status = "other", 500
                await _answer(client, status, "internal error")
            finally:
                self.stats.in_flight -= 1
            self.stats.responses[(tenant.cluster_key if tenant else "-", action, status)] += 1
            if client.conn.our_state is not h11.DONE or client.conn.their_state is not h11.DONE:
                return
            client.conn.start_next_cycle()

    async def _respond(
        self, client: h11io.H11Stream, request: h11.Request, tenant: routes.CallingTenant | None
    ) -> tuple[str, int]:
        """Answer one request; return (action, status) for the statistics."""
        if _ambiguous_framing(request):
            # RFC 9112 §6.3: a request with both framings may be a smuggling attempt; an
            # intermediary must not forward it as is, so it is refused outright.
            return "other", await self._refuse(client, 400, "bad request")
        if tenant is None:
            self.stats.failures[("-", "other", "unknown_tenant")] += 1
            return "other", await self._refuse(client, 403, "forbidden")
        key = tenant.cluster_key
        decision = routes.route(
            request.method.decode("ascii"), request.target, tenant=tenant, mode=self.upstream.mode
        )
        if isinstance(decision, routes.Refusal):
            self.stats.failures[(key, decision.action, "error_translating_path")] += 1
            log.info(
                "refused %s for tenant %s: %d %s",
                decision.action,
                key,
                decision.status,
                decision.reason,
            )
            return decision.action, await self._refuse(client, decision.status, decision.reason)

        action = decision.action
        try:
            with trio.fail_after(self.limits.lookup_timeout):
                pod = await self.lookup_pod(decision.super_namespace, decision.pod)
        except Exception as exc:  # any lookup failure is "upstream unavailable"
            self.stats.failures[(key, action, "error_proxying_request")] += 1
            log.warning("pod lookup failed for tenant %s: %s", key, type(exc).__name__)
            log.debug("pod lookup failure detail", exc_info=True)
            return action, await self._refuse(client, 502, "upstream unavailable")
        if pod is None:
            self.stats.failures[(key, action, "pod_not_found")] += 1
            return action, await self._refuse(client, 404, "pod not found")
        metadata = pod.get("metadata")
        if not isinstance(metadata, Mapping) or not routes.authorize_pod(
            metadata, tenant, route=decision
        ):
            self.stats.failures[(key, action, "pod_not_owned")] += 1
            log.warning(
                "tenant %s asked for super pod %s/%s it does not own",
                key,
                decision.super_namespace,
                decision.pod,
            )
            return action, await self._refuse(client, 403, "forbidden")

        try:
            status = await forward.forward(
                client=client, request=request, route=decision, config=self.upstream.for_pod(pod)
            )
        except forward.UpstreamError as exc:
            self.stats.failures[(key, action, "error_proxying_request")] += 1
            status = 504 if isinstance(exc, forward.UpstreamTimeout) else 502
            log.warning("upstream failed for %s of tenant %s: %s", action, key, exc)
            await _answer(
                client, status, "upstream timeout" if status == 504 else "upstream unavailable"
            )
            return action, status
        log.debug(
            "%s %s/%s for tenant %s → %d",
            action,
            decision.super_namespace,
            decision.pod,
            key,
            status,
        )
        return action, status


    async def _refuse(self, client: h11io.H11Stream, status: int, reason: str) -> int:
        """Discard a small request body, then answer locally; returns ``status``.

        Draining (within the body deadline and ``_REFUSED_BODY_LIMIT``) keeps a well-behaved
        connection reusable and spares its client a reset; a body that is larger or slower is
        left unread and the answer closes the connection.
        """
        budget = _REFUSED_BODY_LIMIT
        try:
            while client.conn.their_state is h11.SEND_BODY and budget > 0:
                event = await client.next_event()
                if isinstance(event, h11.Data):
                    budget -= len(event.data)
        except h11io.ReadTimeout:
            self.stats.read_timeouts["body"] += 1
        await _answer(client, status, reason)
        return status


def _ambiguous_framing(request: h11.Request) -> bool:
    """True when the request carries both Transfer-Encoding and Content-Length."""
    names = {name for name, _ in request.headers}
    return b"transfer-encoding" in names and b"content-length" in names


async def _answer(
    client: h11io.H11Stream,
    status: int,
    reason: str,
    *,
    close: bool = False,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Send a short plain-text response if h11 still allows one; never raises for I/O.

    The response says ``Connection: close`` when ``close`` is set or the request is unfinished.
    """
    if client.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = reason.encode("ascii") + b"\n"
    head = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"x-content-type-options", b"nosniff"),
        *headers,
    ]
    if close or client.conn.their_state is not h11.DONE:
        head.append((b"connection", b"close"))
    try:
        await client.send(h11.Response(status_code=status, headers=head))
        await client.send(h11.Data(data=body))
        await client.send(h11.EndOfMessage())
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        log.debug("could not deliver a %d answer", status)


def _cause_name(exc: BaseException) -> str:
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None else type(exc).__name__
