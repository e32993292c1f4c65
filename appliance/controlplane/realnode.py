"""A real node for the test bed: containerd + runc + CNI + kubelet + kube-proxy.

Two steps, because the super apiserver comes between them:

1. `run_namespaces` (for `nursery.start`) creates the node's network and mount namespaces
   and its transit link (`nodehost`), and reports a `NodeNetwork`. The super apiserver then
   binds `network.plan.host_ip`, the one host address that Pods can reach.
2. `start_node` starts containerd, imports the locally built images, issues the node's
   certificates from the super cluster's CA, starts the kubelet and kube-proxy inside the
   namespaces and returns once the Node is Ready.

Whoever owns the nursery owns the node: cancelling it stops the processes, and
`run_namespaces` then kills whatever is left of the node (containers included) and removes
its cgroups, so nothing outlives the test bed. Pods reach the host at `host_ip`; the host
reaches the node at `node_ip`, its Pods and the super cluster's Services through routes to
the Pod network and the Service range.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import trio

from appliance.controlplane import build, cluster, images, nodeconfig, nodehost, process
from appliance.pki import certs, kubeconfig
from appliance.util import private

log = logging.getLogger(__name__)

NSENTER = "nsenter"


@dataclass(frozen=True, slots=True)
class NodeNetwork:
    """The namespaces of one node, as reported by `run_namespaces`."""

    plan: nodeconfig.NodePlan
    holder_pid: int
    marker: str

    def enter(self, *argv: str | Path) -> list[str]:
        """argv that runs a command inside the node's network and mount namespaces."""
        return [NSENTER, f"--target={self.holder_pid}", "--mount", "--net", "--", *map(str, argv)]

    def env(self, nodebins: build.NodeBinaries | None = None) -> dict[str, str]:
        path = os.environ.get("PATH", "/usr/bin:/bin")
        if nodebins is not None:
            path = f"{nodebins.bin_dir}:{path}"
        if "/usr/sbin" not in path.split(":"):
            path += ":/usr/sbin:/sbin"
        key, _, value = self.marker.partition("=")
        return dict(os.environ, PATH=path, **{key: value})


@dataclass(frozen=True, slots=True)
class RealNode:
    network: NodeNetwork
    processes: tuple[process.ProcessHandle, ...]

    @property
    def name(self) -> str:
        return self.network.plan.name

    @property
    def plan(self) -> nodeconfig.NodePlan:
        return self.network.plan

    def to_json(self) -> dict[str, object]:
        p = self.plan
        return {
            "name": p.name, "index": p.index, "node_ip": p.node_ip, "host_ip": p.host_ip,
            "pod_cidr": p.pod_cidr, "tenant_service_pool": p.tenant_service_pool, "state_dir": str(p.state_dir), "holder_pid": self.network.holder_pid,
            "containerd_socket": str(p.containerd_socket), "cgroup_root": p.cgroup_root,
        }


async def _run(argv: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False, env=env)
    if done.returncode != 0:
        raise nodehost.HostError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.decode().strip()}")
    return done


async def _allocate_link(holder_pid: int) -> int:
    """The first free index: `ip link add` of the pair is atomic, so beds never collide."""
    for index in range(1, nodeconfig.MAX_INDEX + 1):
        argv = ["ip", "link", "add", f"vcnode{index}", "type", "veth", "peer", "name", "eth0",
                "netns", str(holder_pid)]
        done = await trio.run_process(argv, capture_stderr=True, check=False)
        if done.returncode == 0:
            return index
        if b"exists" not in done.stderr:
            raise nodehost.HostError(f"{' '.join(argv)}: {done.stderr.decode().strip()}")
    raise nodehost.HostError(f"no free real-node index in 1..{nodeconfig.MAX_INDEX}")


async def _configure_link(net: NodeNetwork) -> None:
    p = net.plan
    for argv in (
        ["ip", "addr", "add", f"{p.host_ip}/24", "dev", p.host_link],
        ["ip", "link", "set", p.host_link, "up"],
        ["ip", "route", "add", p.pod_cidr, "via", p.node_ip, "dev", p.host_link],
        # The host reaches ClusterIPs through the node's kube-proxy, as a node host would.
        ["ip", "route", "add", p.routed_service_range, "via", p.node_ip, "dev", p.host_link],
    ):
        await _run(argv)
    inside = (
        "set -e; ip link set lo up; "
        f"ip addr add {p.node_ip}/24 dev eth0; ip link set eth0 up; "
        f"ip route add default via {p.host_ip}; "
        "sysctl -qw net.ipv4.ip_forward=1; "
        "if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then "
        "sysctl -qw net.bridge.bridge-nf-call-iptables=1; fi"
    )
    await _run([NSENTER, f"--target={net.holder_pid}", "--net", "--", "sh", "-c", inside])


async def run_namespaces(
    state_dir: Path,
    *,
    name_prefix: str = "real-node-",
    task_status: trio.TaskStatus[NodeNetwork] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Own a node's namespaces and link until cancelled; then destroy everything of the node.

    Raises nodehost.HostError when the host cannot give a node its namespaces or link.
    """
    reaped = await trio.to_thread.run_sync(nodehost.reap_stale)
    if reaped:
        log.warning("cleaned up real node(s) %s left by a test run that died", reaped)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)
    ready = state_dir / "holder.ready"
    ready.unlink(missing_ok=True)
    marker = f"VC_NODE_MARKER={secrets.token_hex(12)}"
    key, _, value = marker.partition("=")
    with open(state_dir / "logs" / "holder.log", "ab") as logf:
        holder = await trio.lowlevel.open_process(
            ["unshare", "--net", "--mount", "--propagation", "private", "--",
             "sh", "-c", nodehost.HOLDER_SCRIPT],
            env=dict(os.environ, READY=str(ready), **{key: value}),
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
        )
    record: nodehost.Record | None = None
    try:
        with trio.fail_after(15):
            while not ready.exists():
                if holder.poll() is not None:
                    raise nodehost.HostError(
                        f"the namespace holder exited with {holder.returncode}: "
                        f"{process.log_tail(state_dir / 'logs' / 'holder.log', 5)}")
                await trio.sleep(0.02)
        index = await _allocate_link(holder.pid)
        plan = nodeconfig.NodePlan(index=index, name=f"{name_prefix}{index}", state_dir=state_dir)
        record = nodehost.Record(
            index=index, owner_pid=os.getpid(), holder_pid=holder.pid,
            mnt_ns=nodehost.ns_id(holder.pid, "mnt"), net_ns=nodehost.ns_id(holder.pid, "net"),
            cgroup_root=plan.cgroup_root, host_link=plan.host_link, state_dir=str(state_dir), marker=marker,
        )
        await trio.to_thread.run_sync(nodehost.register, record)
        await trio.to_thread.run_sync(nodehost.make_cgroup_root, plan.cgroup_root)
        network = NodeNetwork(plan=plan, holder_pid=holder.pid, marker=marker)
        await _configure_link(network)
        log.info("real node %s: namespaces of pid %d, host %s, node %s, pods %s",
                 plan.name, holder.pid, plan.host_ip, plan.node_ip, plan.pod_cidr)
        task_status.started(network)
        await holder.wait()
        raise nodehost.HostError(f"the namespace holder of {plan.name} exited with {holder.returncode}")
    finally:
        with trio.CancelScope(shield=True):
            if record is not None:
                left = await trio.to_thread.run_sync(nodehost.destroy, record)
                if left:
                    log.error("real node %d: left behind %s", record.index, left)
                await trio.to_thread.run_sync(nodehost.unregister, record.index)
            if holder.poll() is None:
                holder.kill()
            await holder.wait()


def _issue_node_pki(plan: nodeconfig.NodePlan, *, super_pki: Path, server: str) -> dict[str, Path]:
    """The kubelet's and kube-proxy's identities, and the kubelet's serving certificate."""
    ca = certs.CertKey((super_pki / "ca.crt").read_bytes(), (super_pki / "ca.key").read_bytes())
    d = plan.pki_dir
    kubelet = certs.issue(ca, common_name=f"system:node:{plan.name}", organizations=("system:nodes",),
                          client=True)
    proxy = certs.issue(ca, common_name="system:kube-proxy", client=True)
    serving = certs.issue(ca, common_name=f"system:node:{plan.name}", dns_names=(plan.name,),
                          ip_addresses=(plan.node_ip,), server=True)
    paths = {
        "ca": d / "ca.crt", "serving_cert": d / "kubelet.crt", "serving_key": d / "kubelet.key",
        "kubelet_kubeconfig": d / "kubelet.kubeconfig", "proxy_kubeconfig": d / "kube-proxy.kubeconfig",
    }
    d.mkdir(parents=True, exist_ok=True)
    private.write_file(paths["ca"], ca.cert_pem)
    private.write_file(paths["serving_cert"], serving.cert_pem)
    private.write_file(paths["serving_key"], serving.key_pem)
    for key, user, ck in (("kubelet_kubeconfig", f"system:node:{plan.name}", kubelet),
                          ("proxy_kubeconfig", "system:kube-proxy", proxy)):
        private.write_file(paths[key], kubeconfig.render(
            cluster_name="super", server=server, ca_pem=ca.cert_pem, user=user, cert_pem=ck.cert_pem,
            key_pem=ck.key_pem))
    return paths


def _max_open_files() -> int:
    """The kubelet raises its own limit to this; it cannot go past the hard limit here."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return int(hard if hard != resource.RLIM_INFINITY else 1_000_000)


async def _node_ready(c: httpx.AsyncClient, name: str) -> bool:
    r = await c.get(f"/api/v1/nodes/{name}")
    if r.status_code != 200:
        return False
    conditions = (r.json().get("status") or {}).get("conditions") or []
    return any(x.get("type") == "Ready" and x.get("status") == "True" for x in conditions)


async def import_images(net: NodeNetwork, nodebins: build.NodeBinaries, archive: Path) -> None:
    await _run(net.enter(nodebins.path("ctr"), f"--address={net.plan.containerd_socket}", "--namespace=k8s.io",
                         "images", "import", archive))


async def start_node(
    nursery: trio.Nursery,
    bins: build.Binaries,
    nodebins: build.NodeBinaries,
    net: NodeNetwork,
    *,
    super_cp: cluster.ControlPlane,
    taints: tuple[dict[str, str], ...] = (),
) -> RealNode:
    """containerd, images, kubelet and kube-proxy in `net`'s namespaces; returns once Ready.

    Raises process.ProcessFailed (with the component's log tail) if one never gets ready.
    """
    plan = net.plan
    env = net.env(nodebins)
    logs = plan.logs_dir
    for d in (plan.containerd_dir, plan.pod_logs_dir, plan.state_dir / "volume-plugins", plan.cni_conf_dir):
        d.mkdir(parents=True, exist_ok=True)
    private.write_file(plan.cni_conf_dir / "10-vc-node.conflist", json.dumps(nodeconfig.cni_conflist(plan), indent=2))
    # Pods with dnsPolicy Default see this; nothing outside the machine is reachable anyway.
    private.write_file(plan.state_dir / "resolv.conf", f"nameserver {plan.host_ip}\noptions timeout:1 attempts:1\n")
    ctrd_config = plan.containerd_dir / "config.toml"
    private.write_file(ctrd_config, nodeconfig.containerd_config(
        plan, sandbox_image=images.PAUSE_IMAGE, runc=nodehost.RUNC, cni_bin_dir=nodehost.CNI_BIN_DIR))
    ctr = str(nodebins.path("ctr"))

    async def containerd_ready() -> bool:
        done = await trio.run_process(net.enter(ctr, f"--address={plan.containerd_socket}", "version"),
                                      capture_stdout=True, capture_stderr=True, check=False)
        return done.returncode == 0

    handles = [await nursery.start(process.supervise, process.ProcessSpec(
        name=f"{plan.name}/containerd",
        argv=net.enter(nodebins.path("containerd"), f"--config={ctrd_config}"),
        log_path=logs / "containerd.log", ready=containerd_ready, env=env, ready_timeout=60,
    ))]
    archive = await trio.to_thread.run_sync(lambda: images.ensure_archive(
        images.standard_images(testbin=bins.path("k8s-testbin"), applets=build.APPLETS,
                               coredns=nodebins.coredns),
        build.cache_root() / "images"))
    await import_images(net, nodebins, archive)

    pki = await trio.to_thread.run_sync(lambda: _issue_node_pki(plan, super_pki=super_cp.pki_dir, server=super_cp.url))
    kubelet_config = plan.state_dir / "kubelet-config.yaml"
    private.write_file(kubelet_config, nodeconfig.render_json(nodeconfig.kubelet_config(
        plan, client_ca=pki["ca"], serving_cert=pki["serving_cert"], serving_key=pki["serving_key"],
        max_open_files=_max_open_files(), taints=taints)))
    ctx = await trio.to_thread.run_sync(cluster.admin_ssl_context, super_cp.pki_dir)
    async with httpx.AsyncClient(base_url=super_cp.url, verify=ctx, trust_env=False, timeout=5) as c:

        async def kubelet_ready() -> bool:
            try:
                return await _node_ready(c, plan.name)
            except httpx.HTTPError:
                return False

        handles.append(await nursery.start(process.supervise, process.ProcessSpec(
            name=f"{plan.name}/kubelet",
            argv=net.enter(*nodeconfig.kubelet_argv(bins.path("kubelet"), plan, config=kubelet_config,
                                                    kubeconfig=pki["kubelet_kubeconfig"])),
            log_path=logs / "kubelet.log", ready=kubelet_ready, env=env, ready_timeout=120,
        )))
    proxy_config = plan.state_dir / "kube-proxy-config.yaml"
    private.write_file(proxy_config, nodeconfig.render_json(nodeconfig.kube_proxy_config(
        plan, kubeconfig=pki["proxy_kubeconfig"])))

    async def proxy_ready() -> bool:
        done = await trio.run_process(
            net.enter("/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:10256/healthz"),
            capture_stdout=True, capture_stderr=True, check=False)
        return done.returncode == 0

    handles.append(await nursery.start(process.supervise, process.ProcessSpec(
        name=f"{plan.name}/kube-proxy",
        argv=net.enter(bins.path("kube-proxy"), f"--config={proxy_config}", "--v=1"),
        log_path=logs / "kube-proxy.log", ready=proxy_ready, env=env, ready_timeout=60,
    )))
    return RealNode(network=net, processes=tuple(handles))
