"""The `vc-appliance` process as a user runs it: config errors, readiness, metrics, SIGTERM."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.appliance_proc import running
from tests.integration import syncing
from tests.testbed import SuperCluster


async def _run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await trio.run_process([sys.executable, "-m", "appliance", *args],
                                  capture_stdout=True, capture_stderr=True, check=False, env=env)
    return proc.returncode, (proc.stdout + proc.stderr).decode()


def _bare_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any way to the super cluster (no KUBECONFIG, no Pod, an empty HOME)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
           and not k.startswith("VCA_")}
    return dict(env, HOME=str(home), **extra)


SUPER_COMMANDS = [pytest.param(["run"], id="run"), pytest.param(["kubeconfig", "default/x"], id="kubeconfig"),
                  pytest.param(["status"], id="status")]


@pytest.mark.parametrize("command", SUPER_COMMANDS)
async def test_no_super_cluster_exits_2_saying_what_to_pass(tmp_path: Path, command: list[str]) -> None:
    """With no kubeconfig anywhere and outside a Pod, each command says to pass --kubeconfig or set KUBECONFIG."""
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'data-dir = "{tmp_path / "d"}"\n')
    with trio.fail_after(60):
        code, out = await _run_cli(*command, "--config", str(cfg), env=_bare_env(tmp_path))
    assert code == 2, out
    assert "--kubeconfig PATH" in out and "KUBECONFIG" in out and "not in a cluster" not in out, out


@pytest.mark.parametrize("command", SUPER_COMMANDS)
async def test_unknown_context_exits_2_naming_it(tmp_path: Path, command: list[str]) -> None:
    """--context naming a context the kubeconfig lacks fails before any request, naming both."""
    kc = tmp_path / "k.kubeconfig"
    kc.write_text("apiVersion: v1\nkind: Config\ncurrent-context: real\n"
                  "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
                  "users: [{name: u, user: {token: t}}]\n"
                  "contexts: [{name: real, context: {cluster: c, user: u}}]\n")
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'data-dir = "{tmp_path / "d"}"\n[http]\nport = 0\n[proxy]\nport = 0\n')
    with trio.fail_after(60):
        code, out = await _run_cli(*command, "--config", str(cfg), "--kubeconfig", str(kc), "--context", "nope",
                                   env=_bare_env(tmp_path))
    assert code == 2, out
    assert "context 'nope' does not exist (contexts: real)" in out and "Traceback" not in out, out


async def test_kubeconfig_env_names_the_super_cluster(tmp_path: Path, super_cluster: SuperCluster) -> None:
    """Without --config or --kubeconfig, KUBECONFIG's list is used (missing entries skipped), with its --context."""
    await syncing.apply_crds(super_cluster)  # what a first appliance start would have done
    env = _bare_env(tmp_path, KUBECONFIG=f"{tmp_path / 'missing'}:{super_cluster.kubeconfig}")
    with trio.fail_after(60):
        code, out = await _run_cli("status", "--context", "default", env=env)
    assert code == 0, out
    assert "Leases are off" in out, out


async def test_unknown_config_key_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    """A config with an unknown key is refused before anything starts."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[syncer]\nworkerz = 3\n")
    code, out = await _run_cli("run", "--config", str(cfg))
    assert code == 2
    assert str(cfg) in out and "workerz" in out and "$.syncer" in out


async def test_bad_value_type_exits_2(tmp_path: Path) -> None:
    """A wrongly typed value names the key path."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[proxy]\nport = 'ten'\n")
    code, out = await _run_cli("run", "--config", str(cfg))
    assert code == 2 and "$.proxy.port" in out


async def test_unreachable_super_cluster_exits_2_with_its_address(tmp_path: Path, super_cluster: SuperCluster) -> None:
    """A super kubeconfig pointing nowhere fails the start with a one-line reason."""
    kc = tmp_path / "nowhere.kubeconfig"
    kc.write_text(super_cluster.kubeconfig.read_text().replace(super_cluster.url, "https://127.0.0.1:1"))
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'data-dir = "{tmp_path / "d"}"\n[super]\nkubeconfig = "{kc}"\nrequest-timeout = 5.0\n'
                   f'[http]\nport = 0\n[manager]\nenabled = false\n[proxy]\nport = 0\n')
    with trio.fail_after(60):
        code, out = await _run_cli("run", "--config", str(cfg))
    assert code == 2
    assert "cannot reach the super cluster at https://127.0.0.1:1" in out


async def test_truncated_super_kubeconfig_exits_2_naming_it(tmp_path: Path, super_cluster: SuperCluster) -> None:
    """A kubeconfig cut short (a torn copy) is refused with its path and the parse problem, no traceback."""
    kc = tmp_path / "torn.kubeconfig"
    text = super_cluster.kubeconfig.read_text()
    kc.write_text(text[: len(text) // 2])
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'data-dir = "{tmp_path / "d"}"\n[super]\nkubeconfig = "{kc}"\n'
                   f'[http]\nport = 0\n[manager]\nenabled = false\n[proxy]\nport = 0\n')
    with trio.fail_after(60):
        code, out = await _run_cli("run", "--config", str(cfg))
    assert code == 2, out
    assert f"super cluster credentials ({kc})" in out and "Traceback" not in out, out


async def test_ready_metrics_and_clean_sigterm(tmp_path: Path, super_cluster: SuperCluster) -> None:
    """The process becomes ready, serves parseable metrics, and exits 0 on SIGTERM in time."""
    async with running(super_cluster, tmp_path) as app:
        assert (await app.get("/healthz")).status_code == 200
        metrics = (await app.get("/metrics")).text
        names = {f.name for f in text_string_to_metric_families(metrics)}
        assert {"syncer_tenants", "syncer_queue_length"} <= names
        with trio.fail_after(20):
            code = await app.stop()
    assert code == 0
    assert "vc-appliance ready" in app.log.read_text()
