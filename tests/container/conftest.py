"""Fixtures of the container suite: the product image and its systemd test variant, built once.

Both are built with podman on this host (no registry; see appliance/controlplane/containerimage.py)
and kept in podman's storage between runs: an image whose inputs did not change is not rebuilt.
"""

from __future__ import annotations

import pytest

from appliance.controlplane import containerimage
from tests.container import podman


@pytest.fixture(scope="session")
def app_image() -> str:
    try:
        return containerimage.ensure_image()
    except containerimage.ImageError as exc:
        pytest.fail(f"cannot build the appliance image: {exc}")


@pytest.fixture(scope="session")
def systemd_image(app_image: str) -> str:
    return podman.ensure_systemd_image(app_image)
