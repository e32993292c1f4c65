"""What a real node of the test bed is made of, as pure data: addresses, paths, config files.

`NodePlan` fixes everything that differs between real nodes on one host (several test beds
may run at once): its index picks the transit network between the host and the node's
network namespace (`10.213.<i>.0/24`: host `.1`, node `.2`), the node's Pod network
(`10.88.<i>.0/24`), the super cluster's Service range (`10.<95+i>.0.0/17`) and the appliance's tenant
Service pool (`10.<95+i>.128.0/17`), both routed from the host through the node, as on a
host that is a node itself) and the names of its veth link
and cgroup root. The renderers turn a plan
into the files containerd, CNI, the kubelet and kube-proxy read. No I/O here: `realnode`
writes the files and runs the processes; unit tests pin what is rendered.

Host facts baked in (`../shared/REALNODE.md`): cgroup v1 (`failCgroupV1: false`, cgroupfs
driver), no `CAP_SYS_RESOURCE` (containerd `restrict_oom_score_adj`, kubelet
`oomScoreAdj: 0`, `maxOpenFiles` at the hard limit), no systemd, images imported, never pulled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRANSIT_PREFIX = "10.213"
#: The node's sockets, on the tmpfs its mount namespace has over /run (see `nodehost`).
NODE_RUN_DIR = Path("/run/vc-node")
NODE_KUBELET_DIR = Path("/var/lib/kubelet")
POD_PREFIX = "10.88"
MAX_INDEX = 100  # Service ranges 10.96.0.0/16 .. 10.195.0.0/16, clear of 10.88 and 10.213
KUBELET_PORT = 10250
REAL_NODE_LABEL = "vc-appliance.x-k8s.io/real-node"
#: Taint of a real node that shares a test bed with kwok nodes: only Pods that ask for it run there.
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
REAL_NODE_TOLERATION = {"key": REAL_NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One real node: its index on this host, its name, and its state directory."""

    index: int
    name: str
    state_dir: Path

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_INDEX:
            raise ValueError(f"node index {self.index} outside 1..{MAX_INDEX}")

    # --- network ---------------------------------------------------------------------
    @property
    def host_ip(self) -> str:
        """The host's end of the transit link: what Pods dial for apiservers on the host."""
        return f"{TRANSIT_PREFIX}.{self.index}.1"

    @property
    def node_ip(self) -> str:
        """The node's InternalIP (kubelet, NodePorts), inside its network namespace."""
        return f"{TRANSIT_PREFIX}.{self.index}.2"

    @property
    def transit_cidr(self) -> str:
        return f"{TRANSIT_PREFIX}.{self.index}.0/24"

    @property
    def pod_cidr(self) -> str:
        return f"{POD_PREFIX}.{self.index}.0/24"

    @property
    def service_cidr(self) -> str:
        """The super cluster's Service range; its own per node, since the host routes it."""
        return f"10.{95 + self.index}.0.0/17"

    @property
    def tenant_service_pool(self) -> str:
        """The appliance's `[manager] tenant-service-pool` on this bed: tenant ServiceCIDRs are
        super ServiceCIDRs too, whose addresses the super cluster hands to any Service, so
        they must be routed through the node like the super range."""
        return f"10.{95 + self.index}.128.0/17"

    @property
    def routed_service_range(self) -> str:
        """What the host routes through the node: the super range and the tenant pool."""
        return f"10.{95 + self.index}.0.0/16"

    @property
    def cluster_dns_ip(self) -> str:
        """The super cluster DNS Service's fixed ClusterIP (the kubelet's `clusterDNS`)."""
        return f"10.{95 + self.index}.0.10"

    @property
    def host_link(self) -> str:
        """The veth on the host side (at most 15 characters)."""
        return f"vcnode{self.index}"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroup root in every v1 hierarchy; kubepods live below it."""
        return f"/vc-node-{self.index}"

    # --- paths -----------------------------------------------------------------------
    @property
    def containerd_dir(self) -> Path:
        return self.state_dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        """Inside the node's mount namespace (its own /run): a Unix socket path has at most
        107 bytes, which a state directory under pytest's temporary tree can exceed."""
        return NODE_RUN_DIR / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        """The kubelet's root, inside the node's mount namespace (on its tmpfs): the kubelet
        makes Unix sockets below it, and those paths are limited to 107 bytes."""
        return NODE_KUBELET_DIR

    @property
    def cni_conf_dir(self) -> Path:
        return self.state_dir / "cni" / "net.d"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pod_logs_dir(self) -> Path:
        return self.state_dir / "pod-logs"


def containerd_config(plan: NodePlan, *, sandbox_image: str, runc: Path, cni_bin_dir: Path) -> str:
    """containerd 2.x config (version 3): private paths, local sandbox image, runc from the host."""
    d = plan.containerd_dir
    return f"""version = 3
root = "{d / 'root'}"
state = "{d / 'state'}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
]

[grpc]
  address = "{plan.containerd_socket}"

[ttrpc]
  address = "{NODE_RUN_DIR / 'containerd.sock.ttrpc'}"

[debug]
  level = "warn"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{sandbox_image}"

[plugins.'io.containerd.cri.v1.runtime']
  # No CAP_SYS_RESOURCE here: a negative oom_score_adj (the sandbox default) fails every Pod.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin_dir}"]
    conf_dir = "{plan.cni_conf_dir}"
    max_conf_num = 1
"""


def cni_conflist(plan: NodePlan) -> dict[str, Any]:
    """A bridge with the node as gateway; Pods' traffic to the host leaves masqueraded."""
    return {
        "cniVersion": "1.0.0",
        "name": "vc-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": plan.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(plan.state_dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def kubelet_config(
    plan: NodePlan,
    *,
    client_ca: Path,
    serving_cert: Path,
    serving_key: Path,
    max_open_files: int,
    taints: tuple[dict[str, str], ...] = (),
    cluster_domain: str = "cluster.local",
) -> dict[str, Any]:
    """KubeletConfiguration for this host; every path under the node's state directory."""
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": plan.cgroup_root,
        "cgroupsPerQOS": True,
        "containerRuntimeEndpoint": f"unix://{plan.containerd_socket}",
        "address": plan.node_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True, "cacheTTL": "10s"},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "clusterDNS": [plan.cluster_dns_ip],
        "clusterDomain": cluster_domain,
        "resolvConf": str(plan.state_dir / "resolv.conf"),
        "podLogsDir": str(plan.pod_logs_dir),
        "volumePluginDir": str(plan.state_dir / "volume-plugins"),
        "oomScoreAdj": 0,
        "maxOpenFiles": max_open_files,
        "failSwapOn": False,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi", "nodefs.available": "1%",
            "nodefs.inodesFree": "1%", "imagefs.available": "1%",
        },
        "maxPods": 110,
        "registerNode": True,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
    }
    if taints:
        config["registerWithTaints"] = [dict(t) for t in taints]
    return config


def kubelet_argv(kubelet: Path, plan: NodePlan, *, config: Path, kubeconfig: Path) -> list[str]:
    return [
        str(kubelet),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={plan.kubelet_dir}",
        f"--cert-dir={plan.pki_dir / 'kubelet'}",
        f"--hostname-override={plan.name}",
        f"--node-ip={plan.node_ip}",
        f"--node-labels={REAL_NODE_LABEL}=true",
        "--v=1",
    ]


def kube_proxy_config(plan: NodePlan, *, kubeconfig: Path) -> dict[str, Any]:
    """iptables mode inside the node's namespace; leaves the host-wide conntrack sysctls alone."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": plan.name,
        "mode": "iptables",
        "clusterCIDR": plan.pod_cidr,
        "detectLocalMode": "ClusterCIDR",
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": [f"{plan.node_ip}/32"],
        "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        # 0 = do not touch: nf_conntrack_max and the timeouts are global to the VM.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def render_json(doc: dict[str, Any]) -> str:
    """Kubernetes components read YAML, of which JSON is a subset."""
    return json.dumps(doc, indent=2) + "\n"
