"""Fixtures of the isolation and security suite, and the summary it prints at the end.

Every test of the suite records what it tried in the session's `Tally` (kept in the pytest
config's stash, not in a module global); `pytest_terminal_summary` prints the table that
SECURITY.md quotes: crafted proxy requests tried and refused, tenant-controlled inputs tried
and contained, super objects compared, key files and log lines inspected, RBAC denials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from _pytest.terminal import TerminalReporter

from appliance.kube import creds as kcreds
from appliance.kube import resources
from appliance.kube.client import open_client
from appliance.syncer import runtime
from appliance.syncer.tenant import TenantId
from tests.integration import syncing
from tests.testbed import SuperCluster, TenantFactory


@dataclasses.dataclass
class Tally:
    """Counters per category: (tried, held) where held = refused, contained or clean."""

    rows: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def add(self, category: str, *, tried: int, held: int) -> None:
        row = self.rows.setdefault(category, [0, 0])
        row[0] += tried
        row[1] += held


_TALLY = pytest.StashKey[Tally]()


@pytest.fixture(scope="session")
def tally(pytestconfig: pytest.Config) -> Tally:
    """The session's counters (printed by `pytest_terminal_summary`)."""
    return pytestconfig.stash.setdefault(_TALLY, Tally())


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    tally_ = config.stash.get(_TALLY, None)
    if tally_ is None or not tally_.rows:
        return
    terminalreporter.write_sep("=", "security suite summary")
    width = max(len(c) for c in tally_.rows)
    terminalreporter.write_line(f"{'category':<{width}}  {'tried':>6}  {'held':>6}")
    for category, (tried, held) in tally_.rows.items():
        terminalreporter.write_line(f"{category:<{width}}  {tried:>6}  {held:>6}")


@pytest.fixture
async def env(super_cluster: SuperCluster, tenant_factory: TenantFactory) -> AsyncIterator[syncing.Env]:
    async with syncing.environment(super_cluster, tenant_factory) as e:
        yield e


async def keyed_tenant(env: syncing.Env, sx: runtime.Syncer, name: str, *, key: str) -> syncing.SyncedTenant:
    """A tenant served by `sx` whose cluster key is `key` (its VC's `status.clusterNamespace`),
    so a test can build the name collisions a prefix rule allows."""
    cp = await env.make(name, controller_manager=True, virtual_nodes=True)
    vc = await syncing.register_vc(env.superc, cp, kubeconfig=False)
    meta = vc["metadata"]
    vc = await env.superc.patch(resources.VIRTUALCLUSTERS, meta["name"], {"status": {"clusterNamespace": key}},
                                namespace=meta["namespace"], subresource="status")
    env.stack.push_async_callback(syncing._forget_vc, env.superc, vc)
    client = await env.stack.enter_async_context(open_client(await kcreds.load_kubeconfig(cp.admin_kubeconfig)))
    t = syncing.SyncedTenant(cp=cp, vc=vc, id=TenantId.from_vc(vc), client=client)
    assert key == t.key
    await env.serve(sx, t)
    return t
