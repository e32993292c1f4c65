"""Config decoding: the shipped sample, defaults, env overrides, and clear errors."""

from __future__ import annotations

import inspect
from pathlib import Path

import msgspec
import pytest

from appliance import config, health, logsetup
from appliance.manager import settings as manager_settings
from appliance.proxy import server
from appliance.proxy import settings as proxy_settings
from appliance.replicas import settings as replicas_settings
from appliance.syncer import settings as syncer_settings
from appliance.util.settings import extend

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "appliance.toml"


def test_shipped_sample_decodes_to_the_defaults() -> None:
    """configs/appliance.toml documents every key with its default value."""
    assert config.load(SAMPLE, env={}) == config.load(None, env={})


def test_sample_names_every_key() -> None:
    """Every config field appears in the sample (so the documentation stays complete)."""
    text = SAMPLE.read_text()
    for section in msgspec.structs.fields(config.Config):
        sub = section.type if isinstance(section.type, type) else None
        if sub is not None and issubclass(sub, msgspec.Struct):
            assert f"[{section.encode_name}]" in text
            for f in msgspec.structs.fields(sub):
                assert f"{f.encode_name} =" in text or f"[{section.encode_name}.{f.encode_name}]" in text, f.encode_name
        else:
            assert f"{section.encode_name} =" in text, section.encode_name


@pytest.mark.parametrize(
    ("env", "path", "expected"),
    [
        pytest.param({"VCA_SYNCER_POD_WORKERS": "4"}, ("syncer", "pod_workers"), 4, id="int"),
        pytest.param({"VCA_PROXY_UPSTREAM": "kubelet"}, ("proxy", "upstream"), "kubelet", id="bare-word"),
        pytest.param({"VCA_DATA_DIR": "/srv/vc"}, ("data_dir",), "/srv/vc", id="top-level"),
        pytest.param({"VCA_SYNCER_EXTRA_NODE_LABELS": '["a", "b"]'}, ("syncer", "extra_node_labels"), ("a", "b"), id="list"),
    ],
)
def test_environment_overrides(env: dict[str, str], path: tuple[str, ...], expected: object) -> None:
    """VCA_* variables override keys, with TOML-typed values."""
    value: object = config.load(None, env=env)
    for part in path:
        value = getattr(value, part)
    assert expected == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[syncer]\nbogus = 1\n", "unknown field `bogus` - at `$.syncer`", id="unknown-key"),
        pytest.param("[syncer]\nworkers = 'x'\n", "Expected `int`, got `str` - at `$.syncer.workers`", id="bad-type"),
        pytest.param("[syncer]\nworkers = 0\n", "`$.syncer.workers`", id="constraint"),
        pytest.param("[syncer]\ndownward-growth = 0\n", "`$.syncer.downward-growth`", id="growth-below-one"),
        pytest.param("[proxy]\nupstream = 'ftp'\n", "`$.proxy.upstream`", id="bad-enum"),
        pytest.param("data-dir = \n", "not valid TOML", id="syntax"),
        pytest.param("[manager]\ntenant-service-pool = '10.64.0.0/33'\n", "tenant-service-pool", id="bad-pool"),
        pytest.param("[manager]\ntenant-service-prefix = 8\n", "does not fit the pool", id="prefix-wider"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    """A wrong file fails with the file name and the key path in one line."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(path, env={})
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A config path that does not exist says so."""
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.toml", env={})


# --- one settings tree: each default is written once, in the component that owns it ------------

SECTIONS = [
    pytest.param("http", health.HttpSettings, id="http"),
    pytest.param("log", logsetup.LogSettings, id="log"),
    pytest.param("manager", manager_settings.ManagerConfig, id="manager"),
    pytest.param("syncer", syncer_settings.SyncerConfig, id="syncer"),
    pytest.param("proxy", proxy_settings.ProxyConfig, id="proxy"),
    pytest.param("leases", replicas_settings.LeasesConfig, id="leases"),
]

#: (a component's file section, what the component runs with): the latter extends the former
EXTENSIONS = [
    pytest.param(manager_settings.ManagerConfig, manager_settings.ManagerSettings, id="manager"),
    pytest.param(syncer_settings.SyncerConfig, syncer_settings.SyncerSettings, id="syncer"),
    pytest.param(replicas_settings.LeasesConfig, replicas_settings.LeaseSettings, id="leases"),
    pytest.param(proxy_settings.ConnectionLimits, server.ServerLimits, id="proxy-limits"),
]


@pytest.mark.parametrize(("name", "struct"), SECTIONS)
def test_a_section_is_its_components_struct(name: str, struct: type[msgspec.Struct]) -> None:
    """An empty file gives each section exactly the defaults of the Struct its component owns."""
    section = getattr(config.load(None, env={}), name)
    assert struct is type(section)
    assert struct() == section


@pytest.mark.parametrize(("section", "settings"), EXTENSIONS)
def test_component_settings_only_add_fields(section: type[msgspec.Struct], settings: type[msgspec.Struct]) -> None:
    """What a component runs with extends its section and redeclares none of its keys, so no default repeats."""
    assert issubclass(settings, section)
    assert set() == set(section.__struct_fields__) & set(inspect.get_annotations(settings))


def test_extend_keeps_the_file_values() -> None:
    """The app hands the syncer its section as loaded, plus the fields the file does not hold."""
    cfg = config.load(None, env={"VCA_SYNCER_POD_WORKERS": "4", "VCA_PROXY_PORT": "1234"})
    made = extend(cfg.syncer, syncer_settings.SyncerSettings, vnode_address=cfg.proxy.vnode_address,
                  vnode_port=cfg.proxy.port)
    assert (4, 1234, "127.0.0.1") == (made.pod_workers, made.vnode_port, made.vnode_address)
    assert msgspec.structs.asdict(cfg.syncer) == {
        k: v for k, v in msgspec.structs.asdict(made).items() if k in syncer_settings.SyncerConfig.__struct_fields__}


def test_extend_refuses_an_unrelated_struct() -> None:
    """Settings are built only from their own section."""
    with pytest.raises(TypeError):
        extend(config.load(None, env={}).proxy, syncer_settings.SyncerSettings)


def test_dns_options_keep_their_table() -> None:
    """`[syncer.dns-options]` stays a TOML table; the syncer reads it as ordered pairs."""
    assert (("ndots", "5"),) == config.load(None, env={}).syncer.dns_options
    assert (("ndots", "2"), ("edns0", "")) == config.load(
        None, env={"VCA_SYNCER_DNS_OPTIONS": '{ndots = "2", edns0 = ""}'}).syncer.dns_options


def test_manager_provisioner_key_keeps_its_name() -> None:
    """The file's `provisioner` key is the manager's `default_provisioner`."""
    assert "native" == config.load(None, env={"VCA_MANAGER_PROVISIONER": "native"}).manager.default_provisioner


def test_server_limits_default_to_the_proxy_section() -> None:
    """The proxy's limits without a file are those of an empty `[proxy]` section."""
    assert server.ServerLimits() == server.ServerLimits.from_config(config.load(None, env={}).proxy)


def test_advertised_address_falls_back_to_the_listen_address() -> None:
    """Virtual nodes point at `advertise-address`, else at the proxy's own `address`."""
    assert "10.0.0.1" == proxy_settings.ProxyConfig(address="10.0.0.1").vnode_address
    assert "192.0.2.1" == proxy_settings.ProxyConfig(address="10.0.0.1", advertise_address="192.0.2.1").vnode_address
    assert "native" == config.load(None, env={"VCA_MANAGER_PROVISIONER": "native"}).manager.provisioner
