"""The proxy's settings: the `[proxy]` section of the config file.

`ProxyConfig` is the file's section; its defaults are the proxy's defaults (written once).
The bounds on the tenant-facing side sit in `ConnectionLimits`, a part of that section that
`server.ServerLimits` extends with the bounds the file does not hold, so `serve` takes its
limits from the section without a second copy of their defaults. All are frozen.
"""

from __future__ import annotations

from typing import Literal

from appliance.util.settings import ConfigBase, NonNegative, Port, Positive, PositiveInt


class ConnectionLimits(ConfigBase, frozen=True):
    """Deadlines and counts that keep a slow or greedy client from holding connection slots."""

    #: seconds a client has for the TLS handshake.
    handshake_timeout: Positive = 10.0
    #: seconds a client has to send a whole request head (counted from the handshake, or from
    #: the first byte of a later request on a kept-alive connection).
    header_timeout: Positive = 10.0
    #: seconds a client has to send a whole request body, from the end of its head. Log
    #: streams and exec/attach/port-forward after the upgrade are bounded by `idle-timeout`.
    body_timeout: Positive = 10.0
    #: seconds a kept-alive connection may stay idle between two requests.
    keep_alive_timeout: Positive = 60.0
    #: open connections; more wait in the kernel's listen backlog.
    max_connections: PositiveInt = 1000
    #: open connections of one tenant (known by its client certificate); more get 429 (and
    #: beyond as many again waiting for that answer, are closed at once).
    max_connections_per_tenant: PositiveInt = 64
    #: connections still in the TLS handshake (not yet known to be a tenant); more are closed.
    max_handshakes: PositiveInt = 128


class ProxyConfig(ConnectionLimits, frozen=True):
    """`[proxy]`: the vn-agent's listener, its upstream, and its limits."""

    enabled: bool = True
    address: str = "127.0.0.1"
    port: Port = 10550
    #: the address virtual nodes advertise (what tenant apiservers dial); empty = `address`.
    advertise_address: str = ""
    #: where requests go: the super apiserver's pod subresources, or the node's kubelet.
    upstream: Literal["super-apiserver", "kubelet"] = "super-apiserver"
    #: kubelet mode: the kubelet's address; empty = the node of each Pod (its status.hostIP).
    kubelet_address: str = ""
    kubelet_port: Port = 10250
    kubelet_client_certificate: str = ""
    kubelet_client_key: str = ""
    #: seconds without a byte in either direction before a stream is closed.
    idle_timeout: Positive = 900.0
    #: upper bound of one streaming request, seconds (0 = none).
    total_timeout: NonNegative = 0.0

    @property
    def vnode_address(self) -> str:
        """The address virtual nodes advertise: `advertise-address`, else `address`."""
        return self.advertise_address or self.address
