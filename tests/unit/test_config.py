"""Config decoding: the shipped sample, defaults, env overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from appliance import config

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
        pytest.param({"VCA_SYNCER_EXTRA_NODE_LABELS": '["a", "b"]'}, ("syncer", "extra_node_labels"), ["a", "b"], id="list"),
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
        pytest.param("[proxy]\nupstream = 'ftp'\n", "`$.proxy.upstream`", id="bad-enum"),
        pytest.param("data-dir = \n", "not valid TOML", id="syntax"),
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
