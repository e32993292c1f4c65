"""One process-mode VirtualCluster on the session super cluster, for appliances run in containers."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import SuperCluster, run_kubectl, tenancy_manifests, wait_for

SELECTOR_LABEL = "container-suite"



@dataclass(frozen=True)
class ProvisionedTenant:
    ns: str
    name: str
    key: str  # status.clusterNamespace
    kubeconfig: Path


async def phase(sc: SuperCluster, ns: str, name: str) -> str | None:
    """The VC's cluster namespace once it is Running (None before); an Error phase fails the test."""
    out = await run_kubectl(sc.kubectl, sc.kubeconfig, "get", "vc", name, "-n", ns, "-o", "json")
    status = json.loads(out.stdout).get("status", {})
    assert status.get("phase") != "Error", status
    return status.get("clusterNamespace") if status.get("phase") == "Running" else None


async def provision(sc: SuperCluster, tmp: Path, run: str, *, name: str = "edge") -> ProvisionedTenant:
    """Create namespace, ClusterVersion and VirtualCluster (labelled for the appliance under test),
    wait for Running and write the tenant's admin kubeconfig into `tmp`."""
    ns = f"ctr-{run}"
    await run_kubectl(sc.kubectl, sc.kubeconfig, "create", "namespace", ns)
    doc = tenancy_manifests(cv=f"cv-{run}", name=name, namespace=ns, labels={SELECTOR_LABEL: run})
    await run_kubectl(sc.kubectl, sc.kubeconfig, "apply", "-f", "-", stdin=doc)
    key = await wait_for(lambda: phase(sc, ns, name), timeout=180, what=f"VirtualCluster {ns}/{name} Running")
    secret = json.loads((await run_kubectl(sc.kubectl, sc.kubeconfig, "get", "secret", "admin-kubeconfig",
                                           "-n", str(key), "-o", "json")).stdout)
    kubeconfig = tmp / f"{name}.kubeconfig"
    kubeconfig.write_bytes(base64.b64decode(secret["data"]["admin-kubeconfig"]))
    return ProvisionedTenant(ns, name, str(key), kubeconfig)


async def forget(sc: SuperCluster, run: str) -> None:
    """Remove what `provision` made in the super cluster (the appliance under test is gone by now,
    so finalizers that only it would clear are dropped)."""
    ns = f"ctr-{run}"
    out = await run_kubectl(sc.kubectl, sc.kubeconfig, "get", "vc", "-n", ns, "-o", "name", check=False)
    for vc in out.stdout.split():
        await run_kubectl(sc.kubectl, sc.kubeconfig, "patch", vc, "-n", ns, "--type=merge",
                          "-p", '{"metadata":{"finalizers":null}}', check=False)
    await run_kubectl(sc.kubectl, sc.kubeconfig, "delete", "namespace", ns, "--wait=false", check=False)
    await run_kubectl(sc.kubectl, sc.kubeconfig, "delete", "clusterversion", f"cv-{run}", check=False)
