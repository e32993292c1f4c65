"""How the CLI finds the super cluster: kubectl's order of flags, KUBECONFIG and ~/.kube/config.

`app.super_source` is a pure choice over the config, the flags, an environment and a home
directory (it only checks which files exist), so every rung of the ladder is a table row here.
The processes behind these choices are exercised in `e2e/test_appliance_process.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import app, cli, config

IN_POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def _cfg(kubeconfig: str = "", context: str = "") -> config.Config:
    return config.Config(super=config.SuperSection(kubeconfig=kubeconfig, context=context))


@pytest.mark.parametrize(
    ("cfg_kubeconfig", "flag", "env_files", "home_config", "in_pod", "files", "origin"),
    [
        pytest.param("cfg", "flag", ["env"], True, True, ["flag"], "--kubeconfig", id="flag-first"),
        pytest.param("cfg", "", ["env"], True, True, ["cfg"], "[super] kubeconfig", id="config-before-env"),
        pytest.param("", "", ["env", "env2"], True, True, ["env", "env2"], "KUBECONFIG", id="env-before-home"),
        pytest.param("", "", [], True, True, ["home/.kube/config"], "~/.kube/config", id="home-before-pod"),
        pytest.param("", "", [], False, True, [], "in-cluster service account", id="pod-last"),
    ],
)
def test_super_kubeconfig_precedence_is_kubectls(
    tmp_path: Path, cfg_kubeconfig: str, flag: str, env_files: list[str], home_config: bool, in_pod: bool,
    files: list[str], origin: str,
) -> None:
    """--kubeconfig > [super] kubeconfig > KUBECONFIG > ~/.kube/config > in-cluster, each only if the one before is absent."""
    for name in ("env", "env2", *(["home/.kube/config"] if home_config else [])):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    env = dict(IN_POD if in_pod else {})
    if env_files:
        env["KUBECONFIG"] = ":".join(str(tmp_path / f) for f in env_files)
    source = app.super_source(
        _cfg(str(tmp_path / cfg_kubeconfig) if cfg_kubeconfig else ""),
        kubeconfig=str(tmp_path / flag) if flag else "", context="", env=env, home=tmp_path / "home",
    )
    assert (tuple(tmp_path / f for f in files), origin) == (source.files, source.origin)


@pytest.mark.parametrize(
    ("flag", "configured", "expected"),
    [
        pytest.param("cli", "file", "cli", id="flag"),
        pytest.param("", "file", "file", id="config"),
        pytest.param("", "", None, id="current-context"),
    ],
)
def test_context_flag_beats_the_config(tmp_path: Path, flag: str, configured: str, expected: str | None) -> None:
    """--context > [super] context > the kubeconfig's own current-context (None)."""
    source = app.super_source(_cfg(str(tmp_path / "k"), configured), kubeconfig="", context=flag,
                              env={}, home=tmp_path)
    assert expected == source.context


def test_nothing_configured_says_what_to_pass(tmp_path: Path) -> None:
    """Outside a Pod and without any kubeconfig, the error names --kubeconfig and KUBECONFIG, not "not in a cluster"."""
    with pytest.raises(app.StartupError) as info:
        app.super_source(_cfg(), kubeconfig="", context="", env={"KUBECONFIG": str(tmp_path / "gone")},
                         home=tmp_path)
    message = str(info.value)
    assert "--kubeconfig PATH" in message and "export KUBECONFIG=" in message
    assert f"none of KUBECONFIG={tmp_path / 'gone'} exists" in message
    assert "not in a cluster" not in message


def test_source_description_names_files_and_what_chose_them(tmp_path: Path) -> None:
    """Messages name the files, and say so when KUBECONFIG (not the config) picked them."""
    env = {"KUBECONFIG": f"{tmp_path / 'a'}:{tmp_path / 'b'}"}
    (tmp_path / "a").write_text("")
    (tmp_path / "b").write_text("")
    source = app.super_source(_cfg(), kubeconfig="", context="", env=env, home=tmp_path)
    assert f"{tmp_path / 'a'}:{tmp_path / 'b'}, from KUBECONFIG" == source.describe()
    configured = app.super_source(_cfg(str(tmp_path / "a")), kubeconfig="", context="", env=env, home=tmp_path)
    assert str(tmp_path / "a") == configured.describe()


@pytest.mark.parametrize("command", [["run"], ["kubeconfig", "ns/name"], ["status"]])
def test_super_cluster_commands_take_kubectls_flags(command: list[str]) -> None:
    """run, kubeconfig and status accept --kubeconfig and --context (kubectl's spelling)."""
    args = cli.parser().parse_args([*command, "--kubeconfig", "/k", "--context", "c"])
    assert ("/k", "c") == (args.kubeconfig, args.context)


@pytest.mark.parametrize("command", [["backup", "shop", "f.tar.gz"], ["restore", "team-a/", "f.tar.gz"],
                                     ["restore", "a/b/c", "f.tar.gz", "--new"]])
def test_backup_and_restore_want_namespace_slash_name(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed NAMESPACE/NAME is a usage error (2) before any config or cluster is touched."""
    assert cli.EXIT_USAGE == cli.main(command)
    assert "expected NAMESPACE/NAME" in capsys.readouterr().err
