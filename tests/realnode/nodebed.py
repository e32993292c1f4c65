"""The real `vc-appliance` on the real-node bed, and what tests do with Pods there.

`appliance(...)` is a blocking context manager (package fixtures are sync): it writes a
config whose tenant apiservers bind the host end of the node's link (the address Pods
reach), starts `python -m appliance run`, creates a ClusterVersion and process-mode
VirtualClusters carrying a selector label of its own, waits until they are Running and
yields their admin kubeconfigs. Everything runs as a user would run it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import devenv
from appliance.controlplane import images
from appliance.controlplane.cluster import free_port
from tests.testbed import Completed, SuperCluster, run_kubectl, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
SELECTOR_LABEL = "vc-appliance.test/realnode"
CLUSTER_VERSION = "cv-realnode"
BUSYBOX = images.BUSYBOX_IMAGE
KUBERNETES = images.KUBERNETES_IMAGE


@dataclass(frozen=True, slots=True)
class NodeBedTenant:
    """A tenant of the real-node appliance, as kubectl reaches it (`root_namespace` is its cluster key)."""

    name: str
    kubeconfig: Path
    root_namespace: str


@dataclass(frozen=True, slots=True)
class NodeEnv:
    bed: SuperCluster
    upstream: str
    tenants: dict[str, NodeBedTenant]
    log: Path
    selector: str  # value of SELECTOR_LABEL on this appliance's VirtualClusters
    workdir: Path

    async def kubeconfig_of(self, vc_name: str, root_namespace: str) -> NodeBedTenant:
        """A tenant of this appliance by its VirtualCluster name (admin kubeconfig fetched now)."""
        out = await self.kubectl_super("get", "secret", "admin-kubeconfig", "-n", root_namespace,
                                       "-o", "jsonpath={.data.admin-kubeconfig}")
        return _write_kubeconfig(self.workdir, vc_name, root_namespace, out.stdout)

    @property
    def kubectl(self) -> Path:
        return self.bed.kubectl

    def tenant(self, name: str | None = None) -> NodeBedTenant:
        return self.tenants[name] if name else next(iter(self.tenants.values()))

    async def kubectl_in(self, tenant: NodeBedTenant, *args: str, **kw: Any) -> Completed:
        return await run_kubectl(self.kubectl, tenant.kubeconfig, *args, **kw)

    async def kubectl_super(self, *args: str, **kw: Any) -> Completed:
        return await run_kubectl(self.kubectl, self.bed.kubeconfig, *args, **kw)


def _kubectl(bed: SuperCluster, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([str(bed.kubectl), f"--kubeconfig={bed.kubeconfig}", *args],
                          input=stdin.encode() if stdin else None, capture_output=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout.decode()


def _config(bed: SuperCluster, tmp: Path, *, upstream: str, selector: str) -> tuple[Path, int]:
    node = bed.real_node
    http, proxy = free_port(), free_port()
    pki = bed.pki_dir
    path = tmp / "appliance.toml"
    path.write_text(f"""data-dir = "{tmp / 'data'}"
binaries-dir = "{bed.bins.bin_dir}"
graceful-timeout = 10.0
tenant-selector = "{SELECTOR_LABEL}={selector}"
[super]
kubeconfig = "{bed.kubeconfig}"
[http]
port = {http}
[manager]
provisioner = "process"
keep-control-planes = false
tenant-bind-address = "{node['host_ip']}"
tenant-service-pool = "{node['tenant_service_pool']}"
[syncer]
patrol-period = 60.0
[proxy]
address = "{node['host_ip']}"
port = {proxy}
upstream = "{upstream}"
kubelet-client-certificate = "{pki / 'kubelet-client.crt'}"
kubelet-client-key = "{pki / 'kubelet-client.key'}"
""")
    return path, http


def _write_kubeconfig(tmp: Path, name: str, root_namespace: str, data: str) -> NodeBedTenant:
    kubeconfig = tmp / f"{name}.kubeconfig"
    kubeconfig.write_bytes(base64.b64decode(data))
    os.chmod(kubeconfig, 0o600)
    return NodeBedTenant(name, kubeconfig, root_namespace)


VC = """apiVersion: tenancy.x-k8s.io/v1alpha1
kind: VirtualCluster
metadata:
  name: {name}
  namespace: default
  labels: {{{label}: "{selector}"}}
spec:
  clusterDomain: cluster.local
  clusterVersionName: {cv}
  pkiExpireDays: 365
"""


@contextlib.contextmanager
def appliance(bed: SuperCluster, tmp: Path, *, upstream: str, tenants: tuple[str, ...]) -> Iterator[NodeEnv]:
    selector = uuid.uuid4().hex[:8]  # also in the names: a reused bed may still hold older ones
    names = {base: f"{base}-{selector}" for base in tenants}
    config, http = _config(bed, tmp, upstream=upstream, selector=selector)
    log = tmp / "appliance.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "run", "--config", str(config)],
                                stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=dict(os.environ, VC_TESTBIN_DIR=str(bed.bins.bin_dir)))
    try:
        def alive() -> bool:
            return proc.poll() is None

        devenv.wait_until("vc-appliance /readyz", lambda: devenv.readyz(http), timeout=120, log=log, alive=alive)
        _kubectl(bed, "apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "ClusterVersion",
            "metadata": {"name": CLUSTER_VERSION}, "spec": {}}))
        for name in names.values():
            _kubectl(bed, "apply", "-f", "-", stdin=VC.format(
                name=name, label=SELECTOR_LABEL, selector=selector, cv=CLUSTER_VERSION))
        out: dict[str, NodeBedTenant] = {}
        for base, name in names.items():
            def running(name: str = name) -> bool:
                phase = _kubectl(bed, "get", "vc", name, "-n", "default", "-o", "jsonpath={.status.phase}")
                if phase == "Error":
                    raise AssertionError(f"VirtualCluster {name}: " + _kubectl(
                        bed, "get", "vc", name, "-n", "default", "-o", "jsonpath={.status.message}"))
                return phase == "Running"

            devenv.wait_until(f"VirtualCluster {name} Running", running, timeout=180, log=log, alive=alive)
            ns = _kubectl(bed, "get", "vc", name, "-n", "default", "-o", "jsonpath={.status.clusterNamespace}")
            out[base] = _write_kubeconfig(tmp, name, ns, _kubectl(
                bed, "get", "secret", "admin-kubeconfig", "-n", ns, "-o", "jsonpath={.data.admin-kubeconfig}"))
        yield NodeEnv(bed=bed, upstream=upstream, tenants=out, log=log, selector=selector, workdir=tmp)
    finally:
        subprocess.run([str(bed.kubectl), f"--kubeconfig={bed.kubeconfig}", "delete", "vc", *names.values(),
                        "-n", "default", "--timeout=60s", "--ignore-not-found"], capture_output=True, check=False)
        stop_process(proc, timeout=60)


# --- Pods -----------------------------------------------------------------------------


def pod(name: str, *, command: list[str], image: str = BUSYBOX, **spec: Any) -> dict[str, Any]:
    """A one-container Pod of a locally imported image (never pulled)."""
    container: dict[str, Any] = {"name": "main", "image": image, "imagePullPolicy": "Never", "command": command}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 1, **spec}}


async def apply(env: NodeEnv, tenant: NodeBedTenant, *objects: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    await env.kubectl_in(tenant, "apply", "-f", "-", stdin=body.encode())


async def get_json(env: NodeEnv, tenant: NodeBedTenant, *args: str) -> dict[str, Any]:
    out = await env.kubectl_in(tenant, "get", *args, "-o", "json")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


async def wait_running(env: NodeEnv, tenant: NodeBedTenant, name: str, *, timeout: float = 120) -> dict[str, Any]:
    """The tenant Pod once it is Running with all containers ready (fails on a terminal phase)."""

    async def running() -> dict[str, Any] | None:
        p = await get_json(env, tenant, "pod", name)
        status = p.get("status") or {}
        if status.get("phase") in ("Failed", "Succeeded"):
            raise AssertionError(f"pod {name} ended: {json.dumps(status)[:1500]}")
        ready = all(c.get("ready") for c in status.get("containerStatuses") or [{}])
        return p if status.get("phase") == "Running" and ready else None

    return await wait_for(running, timeout=timeout, what=f"tenant pod {name} Running", interval=0.5)  # type: ignore[return-value]


async def wait_succeeded(env: NodeEnv, tenant: NodeBedTenant, name: str, *, timeout: float = 120) -> str:
    """Wait until the Pod ran to completion successfully; returns its log."""

    async def done() -> str | None:
        p = await get_json(env, tenant, "pod", name)
        phase = (p.get("status") or {}).get("phase")
        if phase == "Failed":
            logs = await env.kubectl_in(tenant, "logs", name, check=False)
            raise AssertionError(f"pod {name} failed; log:\n{logs.stdout}{logs.stderr}")
        return phase if phase == "Succeeded" else None

    await wait_for(done, timeout=timeout, what=f"tenant pod {name} Succeeded", interval=0.5)
    return (await env.kubectl_in(tenant, "logs", name)).stdout


async def exec_in(env: NodeEnv, tenant: NodeBedTenant, name: str, *command: str, stdin: bytes | None = None,
                  websocket: bool = True, check: bool = True) -> Completed:
    flags = ["-i"] if stdin is not None else []
    extra = {} if websocket else {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}
    return await env.kubectl_in(tenant, "exec", *flags, name, "--", *command, stdin=stdin, env=extra, check=check)
