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
