"""`vc-appliance dev`: the embedded default for a newcomer, on this host only.

`up` builds the Kubernetes binaries if needed, starts a local super cluster
(`controlplane.localcluster`: etcd, kube-apiserver, KCM, scheduler, and a real node —
kubelet, containerd, CNI, kube-proxy, CoreDNS — where the host allows it, else kwok's fake
nodes) and the appliance as background processes, creates N sample VirtualClusters, waits
until they are Running and writes into the state directory:

    super.kubeconfig            the super cluster's admin
    tenants/<name>.kubeconfig   each sample tenant's admin
    bin/kubectl                 the test bed's kubectl
    appliance.toml, *.log, *.pid

`up` is idempotent (what runs is reused), `down` stops everything it started (also the
tenant control planes the appliance keeps across its own restarts), `status` reports.
This module blocks (it is a command, not part of the running appliance).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from appliance.controlplane import build, images, nodehost, process
from appliance.util import private

SAMPLE_CV = "cv-process"
T = TypeVar("T")


class DevError(RuntimeError):
    """`dev` cannot do what was asked; the message says what to look at."""


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _spawn(argv: list[str], *, log: Path, pid_file: Path, env: dict[str, str] | None = None) -> int:
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def wait_until(
    what: str, check: Callable[[], T | None], *, timeout: float, log: Path, alive: Callable[[], bool] | None = None,
) -> T:
    """Poll `check` (the state of another process) until it is truthy; DevError with the log tail
    if the process we wait on (`alive`) exits first, or after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if alive is not None and not alive():
            raise DevError(f"{what} exited; last lines of {log}:\n{process.log_tail(log, 15)}")
        time.sleep(0.3)  # waiting on another process we started; nothing to await here
    raise DevError(f"{what} not ready after {timeout:.0f} s; see {log}")


def _wait(what: str, check: Callable[[], T | None], *, timeout: float, log: Path, pid_file: Path | None = None) -> T:
    alive = (lambda: _alive(pid_file) is not None) if pid_file is not None else None
    return wait_until(what, check, timeout=timeout, log=log, alive=alive)


def _kubectl(state: Path, kubeconfig: Path, *args: str, stdin: bytes | None = None) -> str:
    proc = subprocess.run([str(state / "bin" / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
                          input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        raise DevError(f"kubectl {' '.join(args)}: {proc.stderr.decode().strip()}")
    return proc.stdout.decode()


def _free_port() -> int:
    from appliance.controlplane.cluster import free_port

    return free_port()


def _config(state: Path, super_kubeconfig: Path, *, node_address: str | None, tenant_pool: str | None = None) -> Path:
    """The appliance's config; with a real node, tenant apiservers and the proxy listen on the
    host end of its link (Pods reach them there), otherwise on loopback, and tenant Service
    ranges come from the pool the host routes through the node."""
    path = state / "appliance.toml"
    address = node_address or "127.0.0.1"
    pool = f'tenant-service-pool = "{tenant_pool}"\n' if tenant_pool else ""
    if path.exists() and f'address = "{address}"' in path.read_text() and pool in path.read_text():
        return path
    http, proxy = _free_port(), _free_port()
    path.write_text(f"""# Written by `vc-appliance dev up`; see configs/appliance.toml for every key.
data-dir = "{state / 'data'}"
graceful-timeout = 10.0

[super]
kubeconfig = "{super_kubeconfig}"

[http]
port = {http}

[manager]
provisioner = "process"
keep-control-planes = true
tenant-bind-address = "{address}"
{pool}
[syncer]
patrol-period = 60.0

[proxy]
address = "{address}"
port = {proxy}
""")
    return path


def _http_port(config_path: Path) -> int:
    import tomllib

    return int(tomllib.loads(config_path.read_text())["http"]["port"])


def readyz(port: int) -> bool:
    """Whether the appliance whose health server listens on `port` says it is ready."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def served_tenants(port: int) -> int:
    """How many tenants the appliance's syncer (and so its kubelet proxy) serves right now.

    A VirtualCluster's `Running` phase survives an appliance restart in the super cluster;
    this number does not: it counts only tenants this process has registered.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("syncer_tenants "):
            return int(float(line.split()[1]))
    return 0


SAMPLES = """
apiVersion: tenancy.x-k8s.io/v1alpha1
kind: ClusterVersion
metadata:
  name: {cv}
spec: {{}}
"""

VC = """
apiVersion: tenancy.x-k8s.io/v1alpha1
kind: VirtualCluster
metadata:
  name: {name}
  namespace: default
spec:
  clusterDomain: cluster.local
  clusterVersionName: {cv}
  pkiExpireDays: 365
"""


def _choose_node(node: str) -> bool:
    """Whether to run a real node: `real` insists, `kwok` declines, `auto` asks the host."""
    if node == "kwok":
        return False
    reason = nodehost.check_host()
    if reason is None:
        return True
    if node == "real":
        raise DevError(f"this host cannot run a real node: {reason}")
    print(f"• no real node here ({reason}); using kwok's fake nodes: Pods become Running but run "
          "no process (logs and exec are simulated). `--node real` insists.", flush=True)
    return False


def build_notice(*, real: bool) -> str:
    """What `up` says before building: the measured cold time of exactly what it builds."""
    what = ("testbin", "node") if real else ("testbin",)
    return (f"• building/finding the Kubernetes binaries{' and the real node' if real else ''} "
            f"(first time: {build.estimate(*what)} on 2 cores, a progress line every 10 s) ...")


def _vc_appliance() -> str:
    """How to call this command in the hints: the script beside this Python, if installed there."""
    script = Path(sys.executable).with_name("vc-appliance")
    return str(script) if script.exists() else "vc-appliance"


def up(state: Path, *, tenants: int = 1, node: str = "auto") -> int:
    state.mkdir(parents=True, exist_ok=True)
    (state / "bin").mkdir(exist_ok=True)
    (state / "tenants").mkdir(exist_ok=True)
    real = _choose_node(node)
    print(build_notice(real=real), flush=True)
    try:
        bins = build.ensure_binaries()
        nodebins = build.ensure_node_binaries() if real else None
    except build.BuildError as exc:
        raise DevError(str(exc)) from None
    kubectl = state / "bin" / "kubectl"
    if not kubectl.exists():
        kubectl.symlink_to(bins.path("kubectl"))
    env = dict(os.environ, VC_TESTBIN_DIR=str(bins.bin_dir))
    if nodebins is not None:
        env["VC_NODEBIN_DIR"] = str(nodebins.bin_dir)

    cluster_dir, cluster_log, cluster_pid = state / "cluster", state / "cluster.log", state / "cluster.pid"
    if _alive(cluster_pid) is None:
        nodes = ["--nodes", "0", "--real-node"] if real else []
        print(f"• starting the local super cluster (etcd, kube-apiserver, KCM, scheduler, "
              f"{'a real node' if real else 'kwok'}) ...", flush=True)
        (cluster_dir / "cluster.json").unlink(missing_ok=True)
        _spawn([sys.executable, "-m", "appliance.controlplane.localcluster", "--state-dir", str(cluster_dir),
                *nodes], log=cluster_log, pid_file=cluster_pid, env=env)
    def cluster_info() -> dict[str, Any] | None:
        path = cluster_dir / "cluster.json"
        return json.loads(path.read_text()) if path.exists() else None

    info = _wait("local super cluster", cluster_info, timeout=240, log=cluster_log, pid_file=cluster_pid)
    super_kubeconfig = state / "super.kubeconfig"
    private.write_file(super_kubeconfig, Path(info["super"]["admin_kubeconfig"]).read_bytes())

    real_node = info.get("real_node") or None
    cfg = _config(state, super_kubeconfig, node_address=real_node["host_ip"] if real_node else None,
                  tenant_pool=str(real_node.get("tenant_service_pool") or "") if real_node else None)
    app_log, app_pid = state / "appliance.log", state / "appliance.pid"
    if _alive(app_pid) is None:
        print("• starting vc-appliance ...", flush=True)
        _spawn([sys.executable, "-m", "appliance", "run", "--config", str(cfg)],
               log=app_log, pid_file=app_pid, env=env)
    port = _http_port(cfg)
    _wait("vc-appliance", lambda: readyz(port), timeout=120, log=app_log, pid_file=app_pid)

    _kubectl(state, super_kubeconfig, "apply", "-f", "-", stdin=SAMPLES.format(cv=SAMPLE_CV).encode())
    names = [f"tenant-{i + 1}" for i in range(tenants)]
    for name in names:
        _kubectl(state, super_kubeconfig, "apply", "-f", "-", stdin=VC.format(name=name, cv=SAMPLE_CV).encode())
    print(f"• waiting for {len(names)} VirtualCluster(s) to be Running ...", flush=True)
    started = time.monotonic()
    for name in names:
        def running(name: str = name) -> bool:
            out = _kubectl(state, super_kubeconfig, "get", "vc", name, "-n", "default",
                           "-o", "jsonpath={.status.phase}")
            if out == "Error":
                msg = _kubectl(state, super_kubeconfig, "get", "vc", name, "-n", "default",
                               "-o", "jsonpath={.status.message}")
                raise DevError(f"VirtualCluster {name} failed: {msg}")
            return out == "Running"

        _wait(f"VirtualCluster {name}", running, timeout=180, log=app_log, pid_file=app_pid)
        secret_ns = _kubectl(state, super_kubeconfig, "get", "vc", name, "-n", "default",
                             "-o", "jsonpath={.status.clusterNamespace}")
        data = _kubectl(state, super_kubeconfig, "get", "secret", "admin-kubeconfig", "-n", secret_ns,
                        "-o", "jsonpath={.data.admin-kubeconfig}")
        out = state / "tenants" / f"{name}.kubeconfig"
        private.write_file(out, base64.b64decode(data))
    # After a restart the phases above are the previous run's: `logs`/`exec` work only once
    # the syncer has registered each tenant (that is also when the proxy trusts its CA).
    _wait(f"the syncer to serve {len(names)} tenant(s)", lambda: served_tenants(port) >= len(names) or None,
          timeout=120, log=app_log, pid_file=app_pid)
    elapsed = time.monotonic() - started
    first = state / "tenants" / f"{names[0]}.kubeconfig" if names else None
    print(f"""
vc-appliance is up ({len(names)} tenant(s) Running after {elapsed:.1f} s).

  super cluster:  {super_kubeconfig}
  node:           {f"{real_node['name']} (kubelet + containerd; images: {images.BUSYBOX_IMAGE}, "
                   f"{images.KUBERNETES_IMAGE})" if real_node else "kwok fake nodes (no containers run)"}
  tenants:        {state / 'tenants'}/
  kubectl:        {kubectl}
  logs:           {cluster_log}, {app_log}
  health/metrics: http://127.0.0.1:{port}/readyz  /metrics

Try it:
  {kubectl} --kubeconfig {first} run web --image={images.BUSYBOX_IMAGE} -- httpd -f -p 8080 -h /etc
  {kubectl} --kubeconfig {first} get pods -o wide        # Running on a virtual node
  {kubectl} --kubeconfig {super_kubeconfig} get pods -A  # the same Pod in the super cluster
  {kubectl} --kubeconfig {first} logs web                # through the appliance's kubelet proxy
  {kubectl} --kubeconfig {first} exec web -- echo hello

vc-appliance finds the super cluster as kubectl does (--kubeconfig, KUBECONFIG, ~/.kube/config):
  export KUBECONFIG={super_kubeconfig}
  {_vc_appliance()} kubeconfig default/{names[0] if names else 'NAME'}   # a tenant's admin kubeconfig
  {_vc_appliance()} status                                  # tenants and who serves them

Stop everything:  vc-appliance dev down --state-dir {state}
""", flush=True)
    return 0


def _stop(pid_file: Path, what: str, timeout: float) -> None:
    pid = _alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid_file) is not None:
        time.sleep(0.2)  # waiting for another process to exit
    if _alive(pid_file) is not None:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    print(f"• stopped {what}")


def down(state: Path) -> int:
    _stop(state / "appliance.pid", "vc-appliance", 30)
    killed = []
    for d in {p.parent for p in (state / "data").rglob("*.pid")} if (state / "data").exists() else ():
        killed += process.kill_leftovers(d)
    if killed:
        print(f"• stopped {len(killed)} tenant control-plane process(es)")
    _stop(state / "cluster.pid", "the local super cluster", 60)
    cluster_dir = state / "cluster"
    if cluster_dir.exists():
        for d in {p.parent for p in cluster_dir.rglob("*.pid")}:
            process.kill_leftovers(d)
    return 0


def status(state: Path) -> int:
    rows = [("local super cluster", state / "cluster.pid"), ("vc-appliance", state / "appliance.pid")]
    for what, pid_file in rows:
        pid = _alive(pid_file)
        print(f"{what:22} {f'running (pid {pid})' if pid else 'stopped'}")
    cfg = state / "appliance.toml"
    if cfg.exists() and _alive(state / "appliance.pid"):
        print(f"{'readiness':22} {'ready' if readyz(_http_port(cfg)) else 'not ready'}")
    for kc in sorted((state / "tenants").glob("*.kubeconfig")) if (state / "tenants").exists() else ():
        print(f"{'tenant':22} {kc.stem}: {kc}")
    return 0 if all(_alive(p) for _, p in rows) else 3
