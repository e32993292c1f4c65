"""The vn-agent: a TLS kubelet-API proxy for tenant apiservers (routes, h11io, forward, server)."""
