"""The vn-agent's tenant-facing SSLContext (the upstream one comes from ``kube.creds``).

Owns the TLS policy of the proxy: TLS ≥ 1.2, ALPN ``http/1.1`` only on both legs (an h2
connection cannot carry an HTTP/1.1 Upgrade), client certificates required on the server side.
PEM material arrives as bytes/str; the stdlib can load a certificate chain only from files, so
``load_cert_chain_pem`` writes it to a private temporary directory (0700/0600) for the duration
of the call. These builders do blocking file I/O: call them from a thread or at start-up.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

__all__ = ["ALPN", "load_cert_chain_pem", "server_context"]

ALPN = ["http/1.1"]


def _text(pem: bytes | str) -> str:
    return pem.decode("ascii") if isinstance(pem, bytes) else pem


def load_cert_chain_pem(
    ctx: ssl.SSLContext, *, cert_pem: bytes | str, key_pem: bytes | str
) -> None:
    """Load a PEM certificate chain and its unencrypted key into ``ctx``."""
    with tempfile.TemporaryDirectory(prefix="vn-agent-tls-") as tmp:
        cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        for path, pem in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(_text(pem))
        ctx.load_cert_chain(cert_path, key_path)


def server_context(
    *, cert_pem: bytes | str, key_pem: bytes | str, client_ca_bundle: str
) -> ssl.SSLContext:
    """The tenant-facing context: our serving cert, client certs verified against the bundle.

    An empty bundle is allowed and makes every handshake fail (no tenant is known yet).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(ALPN)
    load_cert_chain_pem(ctx, cert_pem=cert_pem, key_pem=key_pem)
    if client_ca_bundle:
        ctx.load_verify_locations(cadata=client_ca_bundle)
    return ctx
