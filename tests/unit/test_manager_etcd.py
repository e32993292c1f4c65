"""Pure parts of the shared etcd's isolation and of port re-planning: key ranges, user names,
gateway errors, and which planned ports move."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import msgspec
import pytest

from appliance.manager import etcd, etcdgateway
from appliance.manager.provision import process as provision

PLAN = provision.Plan(
    vc_namespace="ns", vc_name="vc", vc_uid="u", bind="0.0.0.0", host="127.0.0.1", port=6443,
    service_cidr="10.96.0.0/16", etcd_mode="dedicated", etcd_prefix="/tenants/k/registry",
    etcd_client_port=2379, etcd_peer_port=2380,
)


def _decoded(pair: dict[str, str]) -> tuple[bytes, bytes]:
    return base64.b64decode(pair["key"]), base64.b64decode(pair["range_end"])


def test_prefix_range_covers_exactly_the_prefix() -> None:
    """The range is [prefix, prefix with its last byte + 1): `/tenants/a/` never reaches `/tenants/a-b/`."""
    start, end = _decoded(etcdgateway.prefix_range("/tenants/a/"))
    assert (start, end) == (b"/tenants/a/", b"/tenants/a0")
    assert not start <= b"/tenants/a-b/x" < end
    assert start <= b"/tenants/a/registry/pods/x" < end


@pytest.mark.parametrize("prefix", ["/", "/tenants/", "/tenants/a", ""])
def test_prefix_range_refuses_broad_or_open_prefixes(prefix: str) -> None:
    """A prefix that could reach other tenants' keys is refused."""
    with pytest.raises(ValueError, match="broad"):
        etcdgateway.prefix_range(prefix)


def test_tenant_prefix_is_under_tenants_and_holds_the_apiserver_prefix() -> None:
    """The role's range covers the `--etcd-prefix` the provisioner plans."""
    assert etcd.tenant_prefix("k") == "/tenants/k/"
    assert PLAN.etcd_prefix.startswith(etcd.tenant_prefix("k"))


@pytest.mark.parametrize("key", ["ns-fd1b34-vc1", "a" * 40, "b" * 63])
def test_tenant_user_fits_a_certificate_cn_and_is_never_root(key: str) -> None:
    """The user name is the client certificate's CN: at most 64 characters, distinct per key."""
    user = etcdgateway.tenant_user(key)
    assert len(user) <= etcdgateway.MAX_USER
    assert user.startswith(etcdgateway.TENANT_USER_PREFIX) and user != etcdgateway.ROOT
    assert user != etcdgateway.tenant_user(key + "x")


@pytest.mark.parametrize(("status", "body", "code", "message"), [
    pytest.param(400, b'{"code":9, "message":"etcdserver: user name already exists"}', 9,
                 "etcdserver: user name already exists", id="etcd-json"),
    pytest.param(400, b"CommonName of client sending a request against gateway will be ignored\n", -1,
                 "HTTP 400: CommonName of client sending a request against gateway will be ignored", id="text"),
])
def test_gateway_errors_keep_etcds_code_and_message(status: int, body: bytes, code: int, message: str) -> None:
    """etcd's JSON error keeps its gRPC code; anything else becomes code -1 with the status."""
    error = etcdgateway.error_from(status, body)
    assert (error.code, error.message) == (code, message)


def test_taken_ports_are_replaced_and_reported() -> None:
    """Every planned port that another program holds gets a fresh one; the rest stay."""
    fresh = iter([50001, 50002])
    plan, moves = provision.reassign_taken_ports(
        PLAN, taken=lambda host, port: port in (6443, 2380), fresh=lambda: next(fresh))
    assert (plan.port, plan.etcd_client_port, plan.etcd_peer_port) == (50001, 2379, 50002)
    assert moves == [provision.PortMove("kube-apiserver", 6443, 50001), provision.PortMove("etcd peer", 2380, 50002)]


def test_apiserver_port_is_checked_on_its_bind_address_and_shared_etcd_ports_are_not_the_tenants() -> None:
    """The apiserver's port is checked where it binds; a shared-etcd plan has no etcd ports of its own."""
    asked = []
    shared = msgspec.structs.replace(PLAN, etcd_mode="shared", etcd_client_port=0, etcd_peer_port=0)
    plan, moves = provision.reassign_taken_ports(
        shared, taken=lambda host, port: asked.append((host, port)) or False, fresh=lambda: 1)
    assert (plan, moves, asked) == (shared, [], [("0.0.0.0", 6443)])


def test_saved_shared_etcd_ports_move_only_when_taken(tmp_path: Path) -> None:
    """ports.json is kept as it is unless a saved port is taken; then only that one is replaced."""
    path = tmp_path / "ports.json"
    path.write_text(json.dumps({"client": 1111, "peer": 2222}))
    assert etcd.load_or_choose_ports(path, ("client", "peer")) == {"client": 1111, "peer": 2222}
    moved = etcd.load_or_choose_ports(path, ("client", "peer"), taken=lambda port: port == 1111)
    assert moved["peer"] == 2222 and moved["client"] != 1111
    assert json.loads(path.read_text()) == moved
    assert path.stat().st_mode & 0o777 == 0o600
