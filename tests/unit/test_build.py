"""The pure parts of building the binaries: the progress line of a long `go build`, and the one
set of measured cold times every message quotes. Also the packaging metadata pip reads."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from appliance import devenv
from appliance.controlplane import build

ROOT = Path(__file__).resolve().parents[2]
#: Build times quoted before they were measured on a cold cache.
STALE_ESTIMATES = ("20–30 min", "7 min 34 s", "2 min 16 s", "~8 min", "+3 min")


def test_progress_line_comes_every_interval_naming_the_latest_package() -> None:
    """A status line at most and at least every 10 s: elapsed time, packages so far, the latest one."""
    p = build.Progress("k8s-testbin", started=100.0)
    p.feed("k8s.io/apimachinery/pkg/util/sets\n")
    p.feed("# k8s.io/kubernetes/pkg/broken")  # an error header, not a package
    p.feed("./types.go:3:15: undefined: x")
    p.feed("k8s.io/kubernetes/pkg/kubelet")
    assert p.due(109.9) is None
    assert "  [0m10s] k8s-testbin: 2 packages compiled; compiling k8s.io/kubernetes/pkg/kubelet" == p.due(110.0)
    assert p.due(115.0) is None
    # go is silent (one big package, or the link): the clock still brings a line
    assert "  [1m25s] k8s-testbin: 2 packages compiled; compiling k8s.io/kubernetes/pkg/kubelet" == p.due(185.0)


def test_progress_names_module_downloads_and_the_end() -> None:
    """`go: downloading` lines show as such; the last line says done."""
    p = build.Progress("kwok", started=0.0)
    assert "  [0m10s] kwok: 0 packages compiled; compiling ..." == p.due(10.0)
    p.feed("go: downloading sigs.k8s.io/kwok v0.8.0")
    assert "  [0m20s] kwok: 0 packages compiled; downloading sigs.k8s.io/kwok v0.8.0" == p.due(20.0)
    p.feed("sigs.k8s.io/kwok/cmd/kwok")
    assert "  [7m37s] kwok: 1 packages compiled; done" == p.line(457.0, done=True)


def test_estimates_come_from_the_measured_cold_builds() -> None:
    """457 s + 140 s read as ≈ 8 and ≈ 10 min; the conformance suite as ≈ 12 min."""
    assert {"testbin": 457, "node": 140, "conformance": 720} == build.COLD_BUILD_SECONDS
    assert ("≈ 8 min", "≈ 10 min", "≈ 12 min") == (
        build.estimate("testbin"), build.estimate("testbin", "node"), build.estimate("conformance"))


@pytest.mark.parametrize(("real", "expected"), [(True, "≈ 10 min"), (False, "≈ 8 min")])
def test_dev_up_quotes_the_estimate_of_what_it_builds(real: bool, expected: str) -> None:
    """`dev up` quotes the same measured numbers, for the real node only when it builds one."""
    assert f"(first time: {expected} on 2 cores" in devenv.build_notice(real=real)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("README.md", "cold build ≈ 10 min on 2 cores"), ("README.md", "≈ 10 min for\n  `make dev`"),
     ("bench/README.md", "(≈ 8 min on 2 cores, once)")],
)
def test_docs_quote_the_measured_estimates(path: str, expected: str) -> None:
    """The READMEs say what `build.estimate` says, and no older build guess is left."""
    text = (ROOT / path).read_text()
    assert expected in text
    assert [] == [old for old in STALE_ESTIMATES if old in text]


def test_project_license_is_an_spdx_expression() -> None:
    """pyproject.toml's license is a plain SPDX string with no license classifier, which pip installs
    without setuptools' deprecation warning (the `{ text = ... }` table is deprecated)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert "Apache-2.0" == project["license"]
    assert [] == [c for c in project.get("classifiers", []) if c.startswith("License ::")]
    # SPDX strings need setuptools 77 (PEP 639); an older backend would refuse the string.
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
