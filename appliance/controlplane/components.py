"""Command lines of the upstream components, as pure functions.

Every builder returns an argv list for the multi-call `k8s-testbin` (or kwok) and binds
only to loopback unless told otherwise. Keeping flags here, away from process
handling, lets unit tests pin them and lets the `process` provisioner reuse the exact
same flags for tenant control planes. Certificates and keys appear only as file paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.controlplane.build import Binaries

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """A CA certificate and one certificate/key pair, as files (the flags take paths)."""

    ca: Path
    cert: Path
    key: Path


def etcd_argv(
    bins: Binaries, *, name: str, data_dir: Path, client_port: int, peer_port: int, fsync: bool = True,
    tls: TLSFiles | None = None, compaction_retention: str | None = None,
) -> list[str]:
    """`fsync=False` only for throw-away test beds: without it a power loss can corrupt the data.

    With `tls`, clients and peers speak HTTPS and must present a certificate issued by
    `tls.ca`; `tls.cert` needs server *and* client usage, because etcd's JSON gateway and its
    peer transport dial etcd with it. `compaction_retention` (e.g. "5m") makes etcd compact
    its history itself, for an etcd whose apiservers may not write `compact_rev_key`.
    """
    scheme = "https" if tls is not None else "http"
    client = f"{scheme}://{LOOPBACK}:{client_port}"
    peer = f"{scheme}://{LOOPBACK}:{peer_port}"
    argv = [
        str(bins.path("etcd")),
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={name}={peer}",
        "--initial-cluster-state=new",
        *([] if fsync else ["--unsafe-no-fsync=true"]),
        "--quota-backend-bytes=4294967296",
        "--log-level=warn",
    ]
    if tls is not None:
        argv += [
            f"--cert-file={tls.cert}", f"--key-file={tls.key}",
            "--client-cert-auth=true", f"--trusted-ca-file={tls.ca}",
            f"--peer-cert-file={tls.cert}", f"--peer-key-file={tls.key}",
            "--peer-client-cert-auth=true", f"--peer-trusted-ca-file={tls.ca}",
        ]
    if compaction_retention is not None:
        argv += ["--auto-compaction-mode=periodic", f"--auto-compaction-retention={compaction_retention}"]
    return argv


@dataclass(frozen=True, slots=True)
class ApiServerFlags:
    """What differs between kube-apiservers on this host."""

    etcd_servers: str
    etcd_prefix: str
    port: int
    pki_dir: Path
    service_cidr: str = "10.96.0.0/16"
    bind_address: str = LOOPBACK
    advertise_address: str = LOOPBACK
    disable_admission: Sequence[str] = ()
    #: Client certificate for etcd, and the CA that issued etcd's serving certificate.
    etcd_tls: TLSFiles | None = None
    #: `--etcd-compaction-interval`; "0" where the apiserver may not write `compact_rev_key`.
    etcd_compaction_interval: str | None = None
    #: Which Node address the apiserver dials a kubelet at. A real node's Hostname may not
    #: resolve, so IPs come first; tenants use TENANT_KUBELET_ADDRESS_TYPES.
    kubelet_address_types: str = "InternalIP,ExternalIP,Hostname"
    extra: Mapping[str, str] = field(default_factory=dict)


#: A virtual node's Hostname address is the appliance's kubelet proxy, its InternalIP the super
#: node's (syncer/vnode.py): a tenant apiserver must dial the former.
TENANT_KUBELET_ADDRESS_TYPES = "Hostname,InternalIP,ExternalIP"


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "localhost")


def apiserver_argv(bins: Binaries, f: ApiServerFlags) -> list[str]:
    d = f.pki_dir
    flags = {
        "etcd-servers": f.etcd_servers,
        "etcd-prefix": f.etcd_prefix,
        "bind-address": f.bind_address,
        "secure-port": str(f.port),
        "advertise-address": f.advertise_address,
        # Loopback cannot be a `kubernetes` Service endpoint: then there is none. Any other
        # address is what Pods reach the apiserver at, through the `kubernetes` Service.
        "endpoint-reconciler-type": "none" if _is_loopback(f.advertise_address) else "lease",
        "tls-cert-file": str(d / "apiserver.crt"),
        "tls-private-key-file": str(d / "apiserver.key"),
        "client-ca-file": str(d / "ca.crt"),
        "authorization-mode": "Node,RBAC",
        "service-account-issuer": "https://kubernetes.default.svc.cluster.local",
        "service-account-key-file": str(d / "sa.pub"),
        "service-account-signing-key-file": str(d / "sa.key"),
        "service-cluster-ip-range": f.service_cidr,
        "allow-privileged": "true",
        "kubelet-preferred-address-types": f.kubelet_address_types,
        "kubelet-client-certificate": str(d / "kubelet-client.crt"),
        "kubelet-client-key": str(d / "kubelet-client.key"),
        "profiling": "false",
        "enable-priority-and-fairness": "false",
        "watch-cache": "true",
        "v": "1",
    }
    if f.etcd_tls is not None:
        flags["etcd-cafile"] = str(f.etcd_tls.ca)
        flags["etcd-certfile"] = str(f.etcd_tls.cert)
        flags["etcd-keyfile"] = str(f.etcd_tls.key)
    if f.etcd_compaction_interval is not None:
        flags["etcd-compaction-interval"] = f.etcd_compaction_interval
    if f.disable_admission:
        flags["disable-admission-plugins"] = ",".join(f.disable_admission)
    flags.update(f.extra)
    return [str(bins.path("kube-apiserver")), *(f"--{k}={v}" for k, v in flags.items())]


def controller_manager_argv(
    bins: Binaries,
    *,
    pki_dir: Path,
    service_cidr: str = "10.96.0.0/16",
    virtual_nodes: bool = False,
    master: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> list[str]:
    """KCM flags; `virtual_nodes` turns off what cannot work with unheartbeated vNodes.

    `master` (the apiserver URL) overrides the kubeconfig's server. KCM reads its kubeconfig
    only at start, so putting the URL on the command line also makes a kept KCM that still
    talks to an old apiserver address un-adoptable: it is restarted, not re-used.
    """
    d = pki_dir
    kubeconfig = str(d / "controller-manager.kubeconfig")
    flags = {
        "kubeconfig": kubeconfig,
        "authentication-kubeconfig": kubeconfig,
        "authorization-kubeconfig": kubeconfig,
        "bind-address": LOOPBACK,
        "secure-port": "0",
        "leader-elect": "false",
        "service-account-private-key-file": str(d / "sa.key"),
        "root-ca-file": str(d / "ca.crt"),
        "use-service-account-credentials": "true",
        "cluster-signing-cert-file": str(d / "ca.crt"),
        "cluster-signing-key-file": str(d / "ca.key"),
        "service-cluster-ip-range": service_cidr,
        "v": "1",
    }
    if master is not None:
        flags["master"] = master
    if virtual_nodes:
        flags["controllers"] = "*,-node-lifecycle-controller"
        flags["node-monitor-grace-period"] = "200s"
    flags.update(extra or {})
    return [str(bins.path("kube-controller-manager")), *(f"--{k}={v}" for k, v in flags.items())]


def scheduler_argv(bins: Binaries, *, pki_dir: Path) -> list[str]:
    kubeconfig = str(pki_dir / "scheduler.kubeconfig")
    return [
        str(bins.path("kube-scheduler")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={LOOPBACK}",
        "--secure-port=0",
        "--leader-elect=false",
        "--v=1",
    ]


def kwok_argv(
    bins: Binaries, *, kubeconfig: Path, config: Path, port: int, cidr: str = "10.244.0.0/16"
) -> list[str]:
    return [
        str(bins.kwok),
        f"--kubeconfig={kubeconfig}",
        f"--config={config}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--node-ip={LOOPBACK}",
        f"--node-port={port}",
        f"--server-address={LOOPBACK}:{port}",
        f"--cidr={cidr}",
        "--node-lease-duration-seconds=40",
    ]


def kwok_config(stages_yaml: str, *, log_file: Path, exec_workdir: Path) -> str:
    """kwok's config: its default stages, plus logs/exec/attach answered for every pod.

    Logs and attach stream `log_file` (tests append to it to prove `-f` streams); exec
    runs the command on the host in `exec_workdir`, which is what a fake node can offer;
    port-forward to any port echoes the bytes back (`cat`), enough for a round trip.
    """
    ours = f"""
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: all-pods
spec:
  logs:
  - containers: []
    logsFile: {log_file}
    follow: true
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterAttach
metadata:
  name: all-pods
spec:
  attaches:
  - containers: []
    logsFile: {log_file}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata:
  name: all-pods
spec:
  execs:
  - containers: []
    local:
      workDir: {exec_workdir}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterPortForward
metadata:
  name: all-pods
spec:
  forwards:
  - ports: []
    command: [cat]
"""
    return stages_yaml.rstrip() + "\n---" + ours
