"""Command lines of the control-plane processes the appliance starts."""

from __future__ import annotations

from pathlib import Path

from appliance.controlplane import build, components


def test_tenant_etcd_is_durable_unless_a_test_bed_opts_out() -> None:
    """A power loss must not corrupt tenant data: fsync stays on for the manager's etcds."""
    bins = build.Binaries(Path("/opt/kube"))
    durable = components.etcd_argv(bins, name="vc", data_dir=Path("/d"), client_port=1, peer_port=2)
    assert not any("unsafe-no-fsync" in a for a in durable)
    assert durable[0] == "/opt/kube/etcd" and "--data-dir=/d" in durable
    fast = components.etcd_argv(bins, name="vc", data_dir=Path("/d"), client_port=1, peer_port=2, fsync=False)
    assert "--unsafe-no-fsync=true" in fast


def test_etcd_with_tls_serves_https_and_requires_client_certificates() -> None:
    """A TLS etcd trusts only the given CA, for clients and peers alike, on https URLs."""
    bins = build.Binaries(Path("/opt/kube"))
    tls = components.TLSFiles(Path("/p/ca.crt"), Path("/p/server.crt"), Path("/p/server.key"))
    argv = components.etcd_argv(bins, name="vc", data_dir=Path("/d"), client_port=1, peer_port=2, tls=tls,
                                compaction_retention="5m")
    assert "--listen-client-urls=https://127.0.0.1:1" in argv
    assert "--listen-peer-urls=https://127.0.0.1:2" in argv
    assert {"--client-cert-auth=true", "--trusted-ca-file=/p/ca.crt", "--cert-file=/p/server.crt",
            "--peer-client-cert-auth=true", "--peer-trusted-ca-file=/p/ca.crt",
            "--auto-compaction-mode=periodic", "--auto-compaction-retention=5m"} <= set(argv)
    plain = components.etcd_argv(bins, name="vc", data_dir=Path("/d"), client_port=1, peer_port=2)
    assert "--listen-client-urls=http://127.0.0.1:1" in plain
    assert not any("cert" in a or "compaction" in a for a in plain)


def test_apiserver_etcd_client_certificate_and_compaction_flags() -> None:
    """The apiserver presents its etcd client certificate, and can be told not to compact."""
    bins = build.Binaries(Path("/opt/kube"))
    tls = components.TLSFiles(Path("/t/etcd-ca.crt"), Path("/t/etcd-client.crt"), Path("/t/etcd-client.key"))
    flags = components.ApiServerFlags(etcd_servers="https://127.0.0.1:1", etcd_prefix="/tenants/k/registry",
                                      port=3, pki_dir=Path("/t"), etcd_tls=tls, etcd_compaction_interval="0")
    argv = components.apiserver_argv(bins, flags)
    assert {"--etcd-cafile=/t/etcd-ca.crt", "--etcd-certfile=/t/etcd-client.crt",
            "--etcd-keyfile=/t/etcd-client.key", "--etcd-compaction-interval=0"} <= set(argv)
    bare = components.apiserver_argv(bins, components.ApiServerFlags(
        etcd_servers="http://127.0.0.1:1", etcd_prefix="/p", port=3, pki_dir=Path("/t")))
    assert not any(a.startswith(("--etcd-cafile", "--etcd-compaction")) for a in bare)


def test_controller_manager_names_its_apiserver_on_the_command_line_when_told() -> None:
    """`master` puts the apiserver URL into the KCM's argv, so a KCM kept with another URL is not adopted."""
    bins = build.Binaries(Path("/opt/kube"))
    argv = components.controller_manager_argv(bins, pki_dir=Path("/t"), master="https://127.0.0.1:7")
    assert "--master=https://127.0.0.1:7" in argv
    assert not any(a.startswith("--master") for a in components.controller_manager_argv(bins, pki_dir=Path("/t")))


def test_tenant_apiservers_dial_a_node_at_its_hostname_others_at_its_ip() -> None:
    """A virtual node's Hostname address is the appliance's kubelet proxy; a real node's may not
    resolve, so only tenant apiservers put Hostname first."""
    bins = build.Binaries(Path("/opt/kube"))
    base = {"etcd_servers": "http://127.0.0.1:1", "etcd_prefix": "/p", "port": 3, "pki_dir": Path("/t")}
    plain = components.apiserver_argv(bins, components.ApiServerFlags(**base))  # type: ignore[arg-type]
    tenant = components.apiserver_argv(bins, components.ApiServerFlags(
        **base, kubelet_address_types=components.TENANT_KUBELET_ADDRESS_TYPES))  # type: ignore[arg-type]
    assert "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname" in plain
    assert "--kubelet-preferred-address-types=Hostname,InternalIP,ExternalIP" in tenant
