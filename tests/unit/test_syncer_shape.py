"""The syncer reads its settings through typed attributes and declared hooks, never by name.

A setting looked up with `getattr(settings, name)` escapes mypy and outlives a rename (issue 15:
`Kind.workers_setting` held the name of a settings field). The check reads the source of every
module in appliance/syncer and refuses a `getattr` whose attribute is a settings name as a
literal, or any name computed at run time, since which attribute that reads cannot be checked.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

import pytest

from appliance.syncer.resources import all_kinds, pods
from appliance.syncer.settings import SyncerSettings

SYNCER_DIR = Path(__file__).resolve().parents[2] / "appliance" / "syncer"
#: every public attribute of the settings: fields and properties such as `dns_options`
SETTINGS_NAMES = frozenset(name for name in dir(SyncerSettings) if not name.startswith("_"))


def lookups_by_name(source: str, names: Collection[str]) -> list[str]:
    """The `getattr` calls in `source` whose attribute is one of `names` or computed at run time."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"):
            continue
        attr = node.args[1] if len(node.args) > 1 else None
        literal = isinstance(attr, ast.Constant) and attr.value in names
        if literal or not isinstance(attr, ast.Constant):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_syncer_reads_no_setting_by_name() -> None:
    """No module in appliance/syncer reads a setting (or anything) through a computed `getattr` name."""
    found = [f"{path.relative_to(SYNCER_DIR)} {hit}" for path in sorted(SYNCER_DIR.rglob("*.py"))
             for hit in lookups_by_name(path.read_text(), SETTINGS_NAMES)]
    assert [] == found


@pytest.mark.parametrize(
    ("source", "found"),
    [
        pytest.param("n = getattr(s, kind.workers_setting)\n", ["line 1: getattr(s, kind.workers_setting)"],
                     id="computed-name"),
        pytest.param("n = getattr(self.settings, 'pod_workers')\n", ["line 1: getattr(self.settings, 'pod_workers')"],
                     id="settings-field-literal"),
        pytest.param("v = getattr(record, 'tenant', '')\n", [], id="other-literal"),
        pytest.param("n = kind.workers(settings)\n", [], id="declared-hook"),
    ],
)
def test_lookups_by_name_finds_settings_reads(source: str, found: list[str]) -> None:
    """The checker flags a settings field read by its literal name or a computed name, nothing else."""
    assert found == lookups_by_name(source, SETTINGS_NAMES)


def test_each_kind_declares_its_worker_count() -> None:
    """Pods get `pod_workers` downward workers, every other kind `workers` (as before the hook)."""
    settings = SyncerSettings(workers=2, pod_workers=7)
    counts = {kind.name: kind.workers(settings) for kind in all_kinds(("priorityclass", "ingress"))}
    assert {name: 7 if name == pods.PodKind.name else 2 for name in counts} == counts
