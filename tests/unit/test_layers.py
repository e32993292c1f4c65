"""The package layers of DESIGN §2 and STYLE rule 1, checked on every unit run.

An AST walk reads every import in `appliance/` (also those inside functions and under
`TYPE_CHECKING`: a type-only import still couples two packages) and holds the graph against
a few rules. Known exceptions are listed in `ALLOWED`, one reason each, so only a *new*
forbidden import fails; an entry that no longer matches fails too, so the list only shrinks.
The checker is plain functions over source text, tested here on made-up modules as well.
"""

from __future__ import annotations

import ast
import copy
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "appliance"

#: the three components (STYLE rule 1): independent of each other, wired by app.py only
COMPONENTS = ("appliance.manager", "appliance.syncer", "appliance.proxy")
#: modules that wire components together; nothing below them imports them. `config` composes
#: the components' own settings Structs into the file's sections (DESIGN §2 groups it with these)
WIRING = ("appliance.app", "appliance.cli", "appliance.config", "appliance.__main__")

#: modules that say they are pure (no I/O); DESIGN §2, STYLE rules 11, 13, 27, 28
PURE = (
    "appliance.controlplane.components",
    "appliance.controlplane.nodeconfig",
    "appliance.kube.backoff",
    "appliance.kube.resources",
    "appliance.kube.wire",
    "appliance.manager.archive",
    "appliance.manager.footprint",
    "appliance.manager.model",
    "appliance.manager.pkisecrets",
    "appliance.manager.provision.templates",
    "appliance.manager.reconcile",
    "appliance.manager.report",
    "appliance.pki.certs",
    "appliance.pki.kubeconfig",
    "appliance.proxy.routes",
    "appliance.replicas.lease",
    "appliance.syncer.conversion",
    "appliance.syncer.equality",
    "appliance.syncer.fairqueue",
    "appliance.syncer.mutation",
    "appliance.syncer.nodeselection",
    "appliance.util.naming",
    "appliance.util.tenancy",
)
#: the kinds and the helpers they call, which see the syncer only as a `context.SyncContext`
#: (issue 15): none imports the runtime, not even for types, so the runtime can import them
KIND_SIDE = (
    "appliance.syncer.context",
    "appliance.syncer.podcerts",
    "appliance.syncer.resources",
    "appliance.syncer.runtimeclasses",
    "appliance.syncer.tokens",
    "appliance.syncer.trustbundles",
    "appliance.syncer.vnode",
)
#: third-party and stdlib modules that do I/O (network, files, processes, threads, the clock loop)
IO_MODULES = (
    "asyncio", "http.client", "httpcore", "httpx", "kubernetes", "multiprocessing",
    "os", "select", "selectors", "shutil", "signal", "socket", "ssl", "subprocess", "tempfile",
    "threading", "trio", "trio_websocket", "urllib.request",
)

#: (importer, imported) → why it is allowed anyway. Keep it short; fix rather than extend.
ALLOWED: Mapping[tuple[str, str], str] = {
    ("appliance.tenantcas", "appliance.syncer.supervisor"):
        "the scale-out CA feed for the proxy reads tenant kubeconfigs exactly as the syncer does; app.py starts it",
    ("appliance.tenantcas", "appliance.syncer.tenant"):
        "TenantId.from_vc, the ClusterKey the proxy's CA table shares with the syncer",
    ("appliance.syncer.fairqueue", "trio"):
        "TrioFairQueue, the thin wake-up wrapper of STYLE rule 11, shares the module with the pure FairQueue",
    ("appliance.controlplane.components", "appliance.controlplane.build"):
        "Binaries, a record of binary paths, is defined beside the build that fills it",
    ("appliance.kube.wire", "appliance.kube.errors"):
        "the exception tree; errors imports httpx only to translate its exceptions at the edge",
    ("appliance.manager.report", "appliance.kube.errors"):
        "describe() names KubeError in an isinstance check",
    ("appliance.manager.report", "appliance.controlplane.process"):
        "describe() names ProcessFailed in an isinstance check",
    ("appliance.manager.report", "appliance.manager.provision.plane"):
        "plane_news() reads a RunningPlane record",
}


def within(module: str, package: str) -> bool:
    """True when `module` is `package` itself or lies below it."""
    return module == package or module.startswith(package + ".")


def within_any(module: str, packages: Iterable[str]) -> bool:
    return any(within(module, p) for p in packages)


def component_of(module: str) -> str | None:
    return next((c for c in COMPONENTS if within(module, c)), None)


@dataclass(frozen=True)
class Rule:
    """One layering rule: `forbids(importer, imported)` is True for an import it rejects."""

    name: str
    forbids: Callable[[str, str], bool]


RULES = (
    Rule("kube/ imports nothing of ours",
         lambda src, dst: within(src, "appliance.kube") and within(dst, "appliance")
         and not within(dst, "appliance.kube")),
    Rule("pki/ imports nothing of ours",
         lambda src, dst: within(src, "appliance.pki") and within(dst, "appliance")
         and not within(dst, "appliance.pki")),
    Rule("no component imports another",
         lambda src, dst: component_of(src) is not None and component_of(dst) not in (None, component_of(src))),
    Rule("shared layers import no component",
         lambda src, dst: component_of(src) is None and not within_any(src, WIRING)
         and component_of(dst) is not None),
    Rule("only the wiring imports the wiring",
         lambda src, dst: within_any(dst, WIRING) and not within_any(src, WIRING)),
    Rule("only kube/creds.py imports kubernetes",
         lambda src, dst: within(dst, "kubernetes") and src != "appliance.kube.creds"),
    Rule("kinds see the syncer as a SyncContext, not the runtime",
         lambda src, dst: within_any(src, KIND_SIDE) and within(dst, "appliance.syncer.runtime")),
    Rule("the SyncContext imports no kind",
         lambda src, dst: src == "appliance.syncer.context" and within(dst, "appliance.syncer.resources")),
    Rule("pure modules import no I/O",
         lambda src, dst: src in PURE and (within_any(dst, IO_MODULES)
                                           or (within(dst, "appliance") and dst not in PURE))),
)


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name → file, for every module below `package_dir`."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(module: str, source: str, *, known: Iterable[str], is_package: bool = False) -> set[str]:
    """What `module` imports: our modules by their module name, others as dotted names.

    `from pkg import name` counts as `pkg.name` when that is a module of ours, else as `pkg`;
    for other packages it counts as `pkg.name`, which `within` matches against `pkg`.
    """
    known = set(known)
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = here[: len(here) - node.level + 1]
                base = ".".join([*prefix, base] if base else prefix)
            for alias in node.names:
                dotted = f"{base}.{alias.name}"
                found.add(dotted if dotted in known or base not in known else base)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module → what it imports, for every module below `package_dir`."""
    modules = module_names(package_dir)
    return {
        name: imports_of(name, path.read_text(), known=modules, is_package=path.name == "__init__.py")
        for name, path in modules.items()
    }


def violations(
    graph: Mapping[str, Iterable[str]], *, rules: Iterable[Rule] = RULES,
    allowed: Mapping[tuple[str, str], str] = ALLOWED,
) -> tuple[list[str], set[tuple[str, str]]]:
    """(forbidden imports not in `allowed`, the `allowed` entries that were used)."""
    found, used = [], set()
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            for rule in rules:
                if not rule.forbids(src, dst):
                    continue
                key = next((k for k in allowed if k[0] == src and within(dst, k[1])), None)
                if key is None:
                    found.append(f"{src} imports {dst}: {rule.name}")
                else:
                    used.add(key)
    return found, used


# --- the real tree -------------------------------------------------------------------------


@functools.cache
def _appliance_graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE_DIR)


@pytest.fixture
def graph() -> dict[str, set[str]]:
    """appliance/'s import graph, parsed once per run; each test gets its own copy."""
    return copy.deepcopy(_appliance_graph())


def test_appliance_keeps_its_layers(graph: dict[str, set[str]]) -> None:
    """No import in appliance/ breaks a layer rule, apart from the listed exceptions."""
    found, _ = violations(graph)
    assert [] == found


def test_every_exception_is_still_needed(graph: dict[str, set[str]]) -> None:
    """An allow-list entry that matches nothing any more is deleted, so the list only shrinks."""
    _, used = violations(graph)
    assert set() == set(ALLOWED) - used


def test_listed_modules_exist() -> None:
    """A renamed module cannot drop out of the rules silently."""
    modules = module_names(PACKAGE_DIR)
    listed = {*COMPONENTS, *WIRING, *PURE, *KIND_SIDE, *(m for pair in ALLOWED for m in pair if within(m, "appliance"))}
    assert set() == listed - set(modules)


# --- the checker itself --------------------------------------------------------------------

KNOWN = ("appliance", "appliance.kube", "appliance.kube.client", "appliance.syncer", "appliance.syncer.runtime",
         "appliance.manager", "appliance.manager.worker", "appliance.util", "appliance.util.naming")


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        pytest.param("appliance.kube.client", "import trio\nimport os.path\n", {"trio", "os.path"}, id="import"),
        pytest.param("appliance.kube.client", "from appliance.syncer import runtime\n",
                     {"appliance.syncer.runtime"}, id="from-package-import-module"),
        pytest.param("appliance.kube.client", "from appliance.util.naming import cluster_key\n",
                     {"appliance.util.naming"}, id="from-module-import-name"),
        pytest.param("appliance.kube.client", "from cryptography import x509\n", {"cryptography.x509"},
                     id="third-party"),
        pytest.param("appliance.syncer.runtime", "from ..util import naming\n", {"appliance.util.naming"},
                     id="relative"),
        pytest.param("appliance.kube.client", "def f():\n    from appliance.manager import worker\n",
                     {"appliance.manager.worker"}, id="inside-a-function"),
    ],
)
def test_imports_of_resolves_names(module: str, source: str, expected: set[str]) -> None:
    """Imports resolve to module names whatever form they are written in."""
    assert expected == imports_of(module, source, known=KNOWN)


@pytest.mark.parametrize(
    ("module", "added", "rule"),
    [
        pytest.param("appliance.kube.client", "from appliance.util import naming", "kube/ imports nothing of ours",
                     id="kube-imports-util"),
        pytest.param("appliance.pki.certs", "from appliance.kube import resources", "pki/ imports nothing of ours",
                     id="pki-imports-kube"),
        pytest.param("appliance.proxy.forward", "from appliance.syncer import runtime",
                     "no component imports another", id="proxy-imports-syncer"),
        pytest.param("appliance.util.drain", "from appliance.manager import worker",
                     "shared layers import no component", id="util-imports-manager"),
        pytest.param("appliance.syncer.runtime", "from appliance import app", "only the wiring imports the wiring",
                     id="syncer-imports-app"),
        pytest.param("appliance.manager.worker", "import kubernetes.client", "only kube/creds.py imports kubernetes",
                     id="kubernetes-outside-creds"),
        pytest.param("appliance.syncer.resources.pods",
                     "if TYPE_CHECKING:\n    from appliance.syncer.runtime import Syncer",
                     "kinds see the syncer as a SyncContext, not the runtime", id="kind-imports-runtime-for-types"),
        pytest.param("appliance.syncer.vnode", "def f():\n    from appliance.syncer import runtime",
                     "kinds see the syncer as a SyncContext, not the runtime", id="kind-helper-imports-runtime"),
        pytest.param("appliance.syncer.context", "from appliance.syncer.resources import base",
                     "the SyncContext imports no kind", id="context-imports-a-kind"),
        pytest.param("appliance.syncer.conversion", "import trio", "pure modules import no I/O", id="pure-imports-trio"),
        pytest.param("appliance.proxy.routes", "from appliance.kube import client", "pure modules import no I/O",
                     id="pure-imports-impure"),
    ],
)
def test_an_added_forbidden_import_fails(graph: dict[str, set[str]], module: str, added: str, rule: str) -> None:
    """Adding one forbidden import to a real module turns the layer test red, naming the rule."""
    modules = module_names(PACKAGE_DIR)
    source = modules[module].read_text() + f"\n{added}\n"
    graph[module] = imports_of(module, source, known=modules)
    found, _ = violations(graph)
    assert len(found) == 1 and found[0].startswith(f"{module} imports ") and found[0].endswith(rule), found


def test_an_allowed_import_passes_only_for_its_importer() -> None:
    """An allow-list entry excuses one importer, not every module importing the same target."""
    graph = {"appliance.syncer.fairqueue": {"trio"}, "appliance.syncer.conversion": {"trio"}}
    found, used = violations(graph)
    assert ["appliance.syncer.conversion imports trio: pure modules import no I/O"] == found
    assert {("appliance.syncer.fairqueue", "trio")} == used
