"""Installing the VirtualCluster and ClusterVersion CRDs into the super cluster.

The manifests ship inside the package (`appliance/manager/crds/*.yaml`, read through
`importlib.resources`, so an installed wheel finds them without a checkout); `configs/crds/`
holds the same files for people who install them with kubectl, and a unit test keeps the two
copies identical. `ensure_crds` server-side applies them (field manager `vc-manager`, forced)
and waits until the apiserver reports each one Established, so a VirtualCluster informer
started right after it cannot hit a 404.
"""

from __future__ import annotations

import importlib.resources
import logging
from typing import Any

import trio
import yaml

from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.manager import model

__all__ = ["ensure_crds", "manifests"]

logger = logging.getLogger(__name__)

CRD_FILES = ("virtualclusters.yaml", "clusterversions.yaml")
ESTABLISH_POLL = 0.2


def manifests() -> list[dict[str, Any]]:
    """The CRD objects as shipped in the package."""
    root = importlib.resources.files("appliance.manager") / "crds"
    return [yaml.safe_load((root / name).read_bytes()) for name in CRD_FILES]


def _established(crd: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in (crd.get("status") or {}).get("conditions") or ()
    )


async def ensure_crds(super_client: ApiClient) -> None:
    """Apply both CRDs and wait until they are served.

    Raises: `errors.ApiError` if the super cluster refuses them (e.g. Forbidden). The caller
    sets the deadline (an apiserver usually establishes a CRD in well under a second).
    """
    for crd in manifests():
        name = crd["metadata"]["name"]
        applied = await super_client.patch(
            resources.CRDS, name, crd, patch_type="apply", field_manager=model.FIELD_MANAGER,
            force=True,
        )
        while not _established(applied):
            await trio.sleep(ESTABLISH_POLL)
            try:
                applied = await super_client.get(resources.CRDS, name)
            except errors.NotFound:
                continue
        logger.info("CRD %s established", name)
