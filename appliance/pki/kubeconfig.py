"""Rendering kubeconfig files.

Pure: returns bytes. Writing them (mode 0600) is the caller's business. The layout
follows the original VirtualCluster (one cluster, one user named after the identity,
context `default`), except that DNS names are never bracketed: only IPv6 literals are.
"""

from __future__ import annotations

import base64
import ipaddress

import yaml


def server_url(host: str, port: int) -> str:
    """`https://host:port`, with brackets only around an IPv6 literal."""
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            host = f"[{host}]"
    except ValueError:
        pass
    return f"https://{host}:{port}"


def render(
    *,
    cluster_name: str,
    server: str,
    ca_pem: bytes,
    user: str,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    token: str | None = None,
) -> bytes:
    """A single-context kubeconfig authenticating with a client certificate or a token."""
    creds: dict[str, str] = {}
    if cert_pem is not None and key_pem is not None:
        creds["client-certificate-data"] = base64.b64encode(cert_pem).decode()
        creds["client-key-data"] = base64.b64encode(key_pem).decode()
    if token is not None:
        creds["token"] = token
    if not creds:
        raise ValueError("a kubeconfig needs a client certificate and key, or a token")
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "default", "context": {"cluster": cluster_name, "user": user}}],
        "current-context": "default",
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False).encode()
