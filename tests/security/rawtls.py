"""A raw TLS client for the vn-agent proxy: exact request bytes in, status and body out.

Crafted requests (absolute-form targets, HTTP/1.0, oversized heads, smuggling headers) cannot
go through an HTTP library, so the request is written byte for byte and the answer is read
until the server closes the connection (every crafted request says `Connection: close`, and
every refusal closes anyway). A handshake the server refuses shows up as `TLS_REFUSED`: with
TLS 1.3 the client finishes its half first and only the first read fails, so both count.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from dataclasses import dataclass

import trio

from appliance.kube import creds as kube_creds
from appliance.pki import certs
from appliance.proxy import tls

TLS_REFUSED = 0  # pseudo status: no HTTP answer because the TLS handshake was refused
CLOSED = -1  # pseudo status: the server closed the connection cleanly without answering
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
_MAX_ANSWER = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    status: int  # TLS_REFUSED or the HTTP status code
    head: bytes
    body: bytes


def client_context(identity: certs.CertKey | None, *, chain: bytes = b"") -> ssl.SSLContext:
    """A context that presents `identity` (plus `chain`) and does not check the proxy's cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(tls.ALPN)
    if identity is not None:
        kube_creds.load_cert_chain_pem(ctx, cert_pem=identity.cert_pem + chain, key_pem=identity.key_pem)
    return ctx


async def exchange(port: int, ctx: ssl.SSLContext, request: bytes, *, deadline: float = 30) -> Answer:
    """Send `request` over a fresh TLS connection to 127.0.0.1:`port`; read the whole answer.

    Sending and reading run side by side: a server that answers an oversized head early and
    closes must not turn its answer into a reset seen by a client still busy sending.
    """
    data, broken = bytearray(), False

    async def send() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(request)

    with trio.fail_after(deadline):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
        try:
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:
                return Answer(TLS_REFUSED, b"", b"")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while len(data) < _MAX_ANSWER:
                    try:
                        chunk = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        broken = True  # a TLS alert after a refused client certificate, or a reset
                        break
                    if not chunk:
                        break
                    data += chunk
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)
    match = _STATUS_LINE.match(data)
    if match is None:
        return Answer(TLS_REFUSED if broken and not data else CLOSED, bytes(data[:200]), b"")
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return Answer(int(match.group(1)), head, body)


def request(method: str, target: str | bytes, *, version: str = "1.1", headers: bytes = b"") -> bytes:
    """A request head with `Host` and `Connection: close` (HTTP/1.0: no Host)."""
    raw_target = target.encode() if isinstance(target, str) else target
    host = b"Host: localhost\r\n" if version == "1.1" else b""
    return (f"{method} ".encode() + raw_target + f" HTTP/{version}\r\n".encode()
            + host + b"Connection: close\r\n" + headers + b"\r\n")
