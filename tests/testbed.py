"""Test-bed helpers shared by integration and e2e tests (imported, not fixtures)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from appliance.controlplane import build, cluster

TenantFactory = Callable[..., Awaitable[cluster.ControlPlane]]


@dataclass(frozen=True, slots=True)
class SuperCluster:
    """The session's super cluster, as described by its cluster.json."""

    info: dict[str, object]
    bins: build.Binaries

    @property
    def url(self) -> str:
        return str(self.super["url"])

    @property
    def super(self) -> dict[str, object]:
        return self.info["super"]  # type: ignore[return-value]

    @property
    def kubeconfig(self) -> Path:
        return Path(str(self.super["admin_kubeconfig"]))

    @property
    def pki_dir(self) -> Path:
        return Path(str(self.super["dir"])) / "pki"

    @property
    def etcd_url(self) -> str:
        return str(self.info["etcd_url"])

    @property
    def kwok_log(self) -> Path:
        return Path(str(self.info["kwok"]["log_file"]))  # type: ignore[index]

    @property
    def nodes(self) -> list[str]:
        return list(self.info["kwok"]["nodes"])  # type: ignore[index]

    @property
    def kubectl(self) -> Path:
        return self.bins.path("kubectl")

    @property
    def real_node(self) -> dict[str, object]:
        """The real node's record (name, node_ip, host_ip, ...); fails if the bed has none."""
        node = self.info.get("real_node")
        assert isinstance(node, dict), "this test bed has no real node"
        return node


@dataclass(frozen=True, slots=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def run_kubectl(
    kubectl: Path, kubeconfig: Path, *args: str, env: dict[str, str] | None = None,
    stdin: bytes | None = None, check: bool = True, timeout: float = 90,
) -> Completed:
    """Run the real kubectl from the test bed; raises with its stderr when `check`."""
    with trio.fail_after(timeout):
        proc = await trio.run_process(
            [str(kubectl), f"--kubeconfig={kubeconfig}", *args],
            stdin=stdin, capture_stdout=True, capture_stderr=True, check=False,
            env=dict(os.environ, **(env or {})),
        )
    out = Completed(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {out.stderr}")
    return out


async def wait_for(
    predicate: Callable[[], Awaitable[object]], *, timeout: float, what: str, interval: float = 0.2
) -> object:
    """Poll `predicate` until it returns a truthy value; fail with `what` after `timeout`.

    For conditions in another process (an apiserver) that has no event to wait on.
    """
    last: object = None
    with trio.move_on_after(timeout):
        while True:
            last = await predicate()
            if last:
                return last
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def append_pod_log(path: Path, line: str) -> None:
    """Append one line to kwok's pod log in the CRI format that kwok (like a kubelet) parses."""
    import datetime as dt

    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with open(path, "a") as f:
        f.write(f"{stamp} stdout F {line}\n")


async def assert_logs_follow(kubectl: Path, kubeconfig: Path, pod: str, *, kwok_log: Path, seen_line: str) -> None:
    """`kubectl logs -f pod` shows `seen_line` (already written), then a line written later."""
    later = f"{seen_line}-later"
    proc = await trio.lowlevel.open_process(
        [str(kubectl), f"--kubeconfig={kubeconfig}", "logs", "-f", pod], stdout=-1)
    assert proc.stdout is not None
    try:
        seen = b""
        with trio.fail_after(30):
            while seen_line.encode() not in seen:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, "kubectl logs -f ended before the existing line arrived"
                seen += chunk
            append_pod_log(kwok_log, later)
            while later.encode() not in seen:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, "kubectl logs -f ended before the new line arrived"
                seen += chunk
    finally:
        proc.kill()
        await proc.wait()


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM a helper process a fixture started; SIGKILL it if it takes longer than `timeout`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pid_alive(pid: int) -> bool:
    """Whether a process (e.g. a kept tenant control-plane process) still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def tenancy_manifests(*, cv: str, name: str, namespace: str, labels: dict[str, str],
                      annotations: dict[str, str] | None = None, pki_expire_days: int | None = 30) -> bytes:
    """A default ClusterVersion and a VirtualCluster of it, for `kubectl apply -f -` (JSON list)."""
    spec: dict[str, object] = {"clusterDomain": "cluster.local", "clusterVersionName": cv}
    if pki_expire_days is not None:
        spec["pkiExpireDays"] = pki_expire_days
    meta: dict[str, object] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    items = [
        {"apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "ClusterVersion", "metadata": {"name": cv}, "spec": {}},
        {"apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster", "metadata": meta, "spec": spec},
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}).encode()
