"""The vn-agent's tenant-facing SSLContext (the upstream one comes from ``kube.creds``).

Owns the TLS policy of the proxy: TLS ≥ 1.2, ALPN ``http/1.1`` only on both legs (an h2
connection cannot carry an HTTP/1.1 Upgrade), client certificates required on the server side.
PEM material arrives as bytes/str and is loaded by ``kube.creds.load_cert_chain_pem``, the
same loader the client side uses (the stdlib loads a chain only from files). These builders do
blocking file I/O: call them from a thread or at start-up.
"""

from __future__ import annotations

import ssl

from appliance.kube import creds as kube_creds

__all__ = ["ALPN", "server_context"]

ALPN = ["http/1.1"]


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
    kube_creds.load_cert_chain_pem(ctx, cert_pem=cert_pem, key_pem=key_pem)
    if client_ca_bundle:
        ctx.load_verify_locations(cadata=client_ca_bundle)
    return ctx
