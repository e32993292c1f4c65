"""The naming rule of tests/README.md: `test_*.py` modules hold tests, helpers never look like them.

A helper named `test_*` is collected by pytest and confuses readers; a bare `import helper`
works only by pytest's sys.path accident. Both are checked here on the source, without
importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
NOT_HELPERS = {"__init__", "conftest"}


def python_files() -> list[Path]:
    return sorted(p for p in TESTS_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def defines_tests(tree: ast.Module) -> bool:
    """True when the module has a test function or a `Test*` class at its top level."""
    return any(
        (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"))
        or (isinstance(node, ast.ClassDef) and node.name.startswith("Test"))
        for node in tree.body
    )


def test_every_suite_directory_is_a_package() -> None:
    """Each directory with Python files has an __init__.py, so helpers import as tests.<suite>.<name>."""
    missing = {str(p.parent.relative_to(TESTS_DIR)) for p in python_files() if not (p.parent / "__init__.py").exists()}
    assert set() == missing


def test_test_modules_hold_tests() -> None:
    """A module named test_*.py defines tests; one that only helps is named after what it provides."""
    helpers_named_like_tests = [
        str(p.relative_to(TESTS_DIR)) for p in python_files()
        if p.stem.startswith("test_") and not defines_tests(ast.parse(p.read_text()))
    ]
    assert [] == helpers_named_like_tests


def test_helpers_are_imported_by_their_dotted_path() -> None:
    """No test imports a helper by its bare name (`from proxy_helpers import ...`)."""
    helpers = {p.stem for p in python_files() if not p.stem.startswith("test_") and p.stem not in NOT_HELPERS}
    bare = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            bare += [f"{path.relative_to(TESTS_DIR)}: {n}" for n in names if n.split(".")[0] in helpers]
    assert [] == bare
