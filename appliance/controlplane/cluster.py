"""Control planes on this host: PKI on disk plus supervised etcd, apiserver, KCM, scheduler, kwok.

The building blocks are shared by the test bed, `vc-appliance dev` and the `process`
provisioner: `generate_pki`/`write_pki` lay out one control plane's certificates and
kubeconfigs (files 0600 in a 0700 directory), and the `start_*` functions start one
component under `process.supervise` in the caller's nursery and return once it is
ready. Whoever owns the nursery owns the processes: cancelling it stops them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from appliance.controlplane import components, ports, process
from appliance.controlplane.build import Binaries
from appliance.pki import certs, kubeconfig
from appliance.util import private

LOOPBACK = components.LOOPBACK


def free_port() -> int:
    """A currently free loopback TCP port (the kernel's choice; see `ports` for its caveat)."""
    return ports.free_port(LOOPBACK)


@dataclass(frozen=True, slots=True)
class ControlPlanePKI:
    """Everything one kube-apiserver and its controllers need; keys hidden from repr."""

    ca: certs.CertKey
    apiserver: certs.CertKey
    admin: certs.CertKey
    controller_manager: certs.CertKey
    scheduler: certs.CertKey
    kubelet_client: certs.CertKey
    service_account_key_pem: bytes

    def __repr__(self) -> str:
        return f"ControlPlanePKI(ca={self.ca.fingerprint()[:16]})"


def generate_pki(
    *,
    name: str,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (LOOPBACK,),
    days: int = 365,
    ca: certs.CertKey | None = None,
    kubelet_client: certs.CertKey | None = None,
) -> ControlPlanePKI:
    """A fresh PKI for one control plane (CPU-bound: call it from a worker thread)."""
    ca = ca or certs.new_ca(f"{name}-ca", days=max(days, 3650))
    serving_dns = (
        "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local", *dns_names,
    )
    return ControlPlanePKI(
        ca=ca,
        apiserver=certs.issue(
            ca, common_name=name, dns_names=serving_dns, ip_addresses=ip_addresses,
            server=True, days=days,
        ),
        admin=certs.issue(
            ca, common_name="admin", organizations=("system:masters",), client=True, days=days
        ),
        controller_manager=certs.issue(
            ca, common_name="system:kube-controller-manager", client=True, days=days
        ),
        scheduler=certs.issue(ca, common_name="system:kube-scheduler", client=True, days=days),
        kubelet_client=kubelet_client
        or certs.issue(
            ca, common_name=f"{name}:kubelet-client", organizations=("system:masters",),
            client=True, days=days,
        ),
        service_account_key_pem=certs.key_pem(certs.new_private_key()),
    )


def write_pki(pki: ControlPlanePKI, pki_dir: Path, *, server: str, cluster_name: str) -> None:
    """Lay the PKI out as the component flags in `components` expect it."""
    private.make_dir(pki_dir)
    files = {
        "ca.crt": pki.ca.cert_pem,
        "ca.key": pki.ca.key_pem,
        "apiserver.crt": pki.apiserver.cert_pem,
        "apiserver.key": pki.apiserver.key_pem,
        "kubelet-client.crt": pki.kubelet_client.cert_pem,
        "kubelet-client.key": pki.kubelet_client.key_pem,
        "sa.key": pki.service_account_key_pem,
        "sa.pub": certs.public_key_pem(pki.service_account_key_pem),
    }
    users = {
        "admin.kubeconfig": ("admin", pki.admin),
        "controller-manager.kubeconfig": ("system:kube-controller-manager", pki.controller_manager),
        "scheduler.kubeconfig": ("system:kube-scheduler", pki.scheduler),
    }
    for fname, (user, ck) in users.items():
        files[fname] = kubeconfig.render(
            cluster_name=cluster_name, server=server, ca_pem=pki.ca.cert_pem, user=user,
            cert_pem=ck.cert_pem, key_pem=ck.key_pem,
        )
    for fname, data in files.items():
        private.write_file(pki_dir / fname, data)


def _point_kubeconfigs_at(pki_dir: Path, server: str) -> None:
    """Make the kubeconfigs of `write_pki` name `server` (rewritten only when they differ)."""
    import yaml

    for fname in ("admin.kubeconfig", "controller-manager.kubeconfig", "scheduler.kubeconfig"):
        path = pki_dir / fname
        if not path.exists():
            continue
        doc = yaml.safe_load(path.read_bytes())
        if all(c["cluster"]["server"] == server for c in doc["clusters"]):
            continue
        for c in doc["clusters"]:
            c["cluster"]["server"] = server
        private.write_file(path, yaml.safe_dump(doc, sort_keys=False).encode())


def admin_ssl_context(pki_dir: Path) -> ssl.SSLContext:
    """Client TLS for readiness probes, authenticated as the control plane's admin."""
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    admin = _admin_pair(pki_dir)
    ctx.load_cert_chain(str(admin[0]), str(admin[1]))
    return ctx


def _admin_pair(pki_dir: Path) -> tuple[Path, Path]:
    """admin.crt/admin.key extracted once from the kubeconfig for `ssl.load_cert_chain`."""
    crt, key = pki_dir / "admin.crt", pki_dir / "admin.key"
    if not crt.exists():
        import base64

        import yaml

        doc = yaml.safe_load((pki_dir / "admin.kubeconfig").read_bytes())
        user = doc["users"][0]["user"]
        private.write_file(crt, base64.b64decode(user["client-certificate-data"]))
        private.write_file(key, base64.b64decode(user["client-key-data"]))
    return crt, key


def http_probe(url: str, *, ctx: ssl.SSLContext | None = None) -> process.Probe:
    """A readiness probe: GET `url` answers 200."""

    async def probe() -> bool:
        try:
            async with httpx.AsyncClient(verify=ctx or False, trust_env=False, timeout=2.0) as c:
                return (await c.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def client_ssl_context(files: components.TLSFiles) -> ssl.SSLContext:
    """Client TLS that trusts `files.ca` and presents `files.cert` (blocking: reads files)."""
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def https_probe(url: str, files: components.TLSFiles) -> process.Probe:
    """`http_probe` over client-certificate TLS; the context is loaded (in a thread) on first use."""
    loaded: list[ssl.SSLContext] = []

    async def probe() -> bool:
        if not loaded:
            loaded.append(await trio.to_thread.run_sync(client_ssl_context, files))
        return await http_probe(url, ctx=loaded[0])()

    return probe


@dataclass(frozen=True, slots=True)
class Etcd:
    url: str
    data_dir: Path
    handle: process.ProcessHandle


def etcd_url(client_port: int, *, tls: bool) -> str:
    return f"{'https' if tls else 'http'}://{LOOPBACK}:{client_port}"


def etcd_spec(
    bins: Binaries,
    *,
    state_dir: Path,
    client_port: int,
    peer_port: int,
    keep_on_cancel: bool = False,
    fsync: bool = True,
    tls: components.TLSFiles | None = None,
    compaction_retention: str | None = None,
) -> process.ProcessSpec:
    """The supervised etcd of `start_etcd`, for callers that first clear a stale one with it.

    With `tls`, the readiness probe presents `tls.cert` (it has client usage, see `etcd_argv`).
    """
    url = etcd_url(client_port, tls=tls is not None)
    return process.ProcessSpec(
        name="etcd",
        argv=components.etcd_argv(
            bins, name="vc", data_dir=state_dir / "etcd", client_port=client_port, peer_port=peer_port,
            fsync=fsync, tls=tls, compaction_retention=compaction_retention,
        ),
        log_path=state_dir / "logs" / "etcd.log",
        ready=http_probe(f"{url}/health") if tls is None else https_probe(f"{url}/health", tls),
        keep_on_cancel=keep_on_cancel,
    )


async def start_etcd(
    nursery: trio.Nursery,
    bins: Binaries,
    *,
    state_dir: Path,
    client_port: int | None = None,
    peer_port: int | None = None,
    keep_on_cancel: bool = False,
    fsync: bool = True,
    tls: components.TLSFiles | None = None,
    compaction_retention: str | None = None,
) -> Etcd:
    """Start etcd with its data in `state_dir/etcd`; fixed ports allow re-adoption.

    Tenant data is durable (fsync) unless `fsync=False`, which only test beds may use. Plain
    HTTP on loopback unless `tls` is given (the test bed's super cluster stays plain).
    """
    client_port, peer_port = client_port or free_port(), peer_port or free_port()
    spec = etcd_spec(
        bins, state_dir=state_dir, client_port=client_port, peer_port=peer_port,
        keep_on_cancel=keep_on_cancel, fsync=fsync, tls=tls, compaction_retention=compaction_retention,
    )
    handle = await nursery.start(process.supervise, spec)
    return Etcd(url=etcd_url(client_port, tls=tls is not None), data_dir=state_dir / "etcd", handle=handle)


@dataclass(frozen=True, slots=True)
class ControlPlane:
    """A running kube-apiserver (+ KCM, scheduler) and where to reach it."""

    name: str
    url: str
    port: int
    dir: Path
    etcd_prefix: str
    processes: tuple[process.ProcessHandle, ...]

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.pki_dir / "admin.kubeconfig"

    @property
    def ca_pem(self) -> bytes:
        return (self.pki_dir / "ca.crt").read_bytes()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name, "url": self.url, "port": self.port, "dir": str(self.dir),
            "etcd_prefix": self.etcd_prefix, "admin_kubeconfig": str(self.admin_kubeconfig),
        }


async def start_control_plane(
    nursery: trio.Nursery,
    bins: Binaries,
    *,
    name: str,
    etcd_url: str,
    state_dir: Path,
    etcd_prefix: str | None = None,
    service_cidr: str = "10.96.0.0/16",
    controller_manager: bool = True,
    scheduler: bool = False,
    virtual_nodes: bool = False,
    pki: ControlPlanePKI | None = None,
    port: int | None = None,
    keep_on_cancel: bool = False,
    address: str = LOOPBACK,
) -> ControlPlane:
    """Start kube-apiserver (and optionally KCM and scheduler) for one cluster and wait ready.

    `address` is where the apiserver listens and what it advertises: loopback, or an address
    that Pods of a real node reach (then the `kubernetes` Service has it as endpoint).

    With `keep_on_cancel`, the processes outlive the nursery and a later call with the
    same arguments (same port, PKI on disk) adopts them instead of starting new ones;
    pass the existing `pki=None` only when the directory already holds it.
    Raises process.ProcessFailed with the component's log tail if it never gets ready.
    """
    cp_dir = state_dir / name
    pki_dir = cp_dir / "pki"
    port = port or free_port()
    url = kubeconfig.server_url(address, port)
    if pki is not None:
        await trio.to_thread.run_sync(
            lambda: write_pki(pki, pki_dir, server=url, cluster_name=name)
        )
    elif not (pki_dir / "admin.kubeconfig").exists():
        # In-cluster clients dial the `kubernetes` Service's ClusterIP (the range's first address).
        service_ip = str(next(ipaddress.ip_network(service_cidr).hosts()))
        ips = tuple(dict.fromkeys((LOOPBACK, address, service_ip)))
        fresh = await trio.to_thread.run_sync(lambda: generate_pki(name=name, ip_addresses=ips))
        await trio.to_thread.run_sync(
            lambda: write_pki(fresh, pki_dir, server=url, cluster_name=name)
        )
    else:  # kept from an earlier start, which may have had another port
        await trio.to_thread.run_sync(_point_kubeconfigs_at, pki_dir, url)
    ctx = await trio.to_thread.run_sync(admin_ssl_context, pki_dir)
    prefix = etcd_prefix or f"/vc/{name}/registry"
    flags = components.ApiServerFlags(
        etcd_servers=etcd_url, etcd_prefix=prefix, port=port, pki_dir=pki_dir,
        service_cidr=service_cidr, bind_address=address, advertise_address=address,
    )
    if virtual_nodes:  # a tenant: its nodes are virtual, their Hostname is the appliance's proxy
        flags = dataclasses.replace(flags, kubelet_address_types=components.TENANT_KUBELET_ADDRESS_TYPES)
    logs = state_dir / "logs"

    async def start(
        component: str, argv: list[str], *, ready: process.Probe | None = None, env: dict[str, str] | None = None,
    ) -> process.ProcessHandle:
        """Supervise one component of this control plane, named and logged after it."""
        spec = process.ProcessSpec(
            name=f"{name}/{component}", argv=argv, log_path=logs / f"{name}-{component}.log",
            ready=ready, env=env, keep_on_cancel=keep_on_cancel,
        )
        handle: process.ProcessHandle = await nursery.start(process.supervise, spec)
        return handle

    handles = [await start(
        "kube-apiserver", components.apiserver_argv(bins, flags),
        ready=http_probe(f"{url}/readyz", ctx=ctx), env=dict(os.environ, GOMAXPROCS="2"),
    )]
    if controller_manager:
        handles.append(await start("kube-controller-manager", components.controller_manager_argv(
            bins, pki_dir=pki_dir, service_cidr=service_cidr, virtual_nodes=virtual_nodes,
        )))
    if scheduler:
        handles.append(await start("kube-scheduler", components.scheduler_argv(bins, pki_dir=pki_dir)))
    return ControlPlane(
        name=name, url=url, port=port, dir=cp_dir, etcd_prefix=prefix, processes=tuple(handles)
    )


@dataclass(frozen=True, slots=True)
class Kwok:
    port: int
    log_file: Path
    nodes: tuple[str, ...]
    handle: process.ProcessHandle


def node_manifest(name: str) -> dict[str, object]:
    """A Node that kwok manages (it fills status, heartbeats, and serves its kubelet API)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "type": "kwok",
            },
        },
        "spec": {},
    }


def kwok_port(kdir: Path) -> int:
    """kwok's kubelet port: the one kept in `kdir/port` while it is free, else a new one kept there.

    The Nodes live in etcd and outlive kwok, and kwok writes its port into a Node's
    `daemonEndpoints` only when it initialises a Node that is not Ready (or, much later, on a
    heartbeat): a new port on every start would leave the apiserver dialling the old one for
    logs and exec. `start_kwok` still corrects Nodes when the kept port was taken meanwhile.
    """
    saved = kdir / "port"
    try:
        port = int(saved.read_text())
    except (OSError, ValueError):
        port = 0
    if not port or not ports.bindable(LOOPBACK, port):
        port = free_port()
        saved.write_text(f"{port}\n")
    return port


async def start_kwok(
    nursery: trio.Nursery, bins: Binaries, *, cp: ControlPlane, state_dir: Path, nodes: int
) -> Kwok:
    """kwok against `cp`, plus `nodes` fake Nodes it manages; returns when they are Ready and
    name kwok's current kubelet port (`kwok_port`)."""
    kdir = state_dir / "kwok"
    (kdir / "exec").mkdir(parents=True, exist_ok=True)
    log_file = kdir / "pod.log"
    if not log_file.exists():  # CRI log format, as a kubelet writes it; every fake Pod shows it
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        log_file.write_text(f"{stamp} stdout F hello from kwok, the fake kubelet: this log is {log_file}\n")
    config = kdir / "kwok.yaml"
    stages = bins.kwok_stages.read_text()
    config.write_text(
        components.kwok_config(stages, log_file=log_file, exec_workdir=kdir / "exec")
    )
    port = kwok_port(kdir)
    handle = await nursery.start(
        process.supervise,
        process.ProcessSpec(
            name="kwok",
            argv=components.kwok_argv(bins, kubeconfig=cp.admin_kubeconfig, config=config, port=port),
            log_path=state_dir / "logs" / "kwok.log",
            ready=http_probe(f"http://{LOOPBACK}:{port}/healthz"),
        ),
    )
    names = tuple(f"kwok-node-{i}" for i in range(nodes))
    ctx = await trio.to_thread.run_sync(admin_ssl_context, cp.pki_dir)
    async with httpx.AsyncClient(base_url=cp.url, verify=ctx, trust_env=False, timeout=10) as c:
        for n in names:
            r = await c.post("/api/v1/nodes", json=node_manifest(n))
            if r.status_code not in (201, 409):
                raise RuntimeError(f"creating node {n}: HTTP {r.status_code} {r.text[:200]}")
        with trio.fail_after(60):
            while not await _nodes_ready(c, names):
                await trio.sleep(0.2)
        await _point_nodes_at(c, names, port)
    return Kwok(port=port, log_file=log_file, nodes=names, handle=handle)


async def _point_nodes_at(c: httpx.AsyncClient, names: tuple[str, ...], port: int) -> None:
    """Set the kubelet port of Nodes that kept another one from an earlier kwok (Ready ones are
    not re-initialised by kwok, and the apiserver dials this port for logs, exec, port-forward)."""
    for n in names:
        node = (await c.get(f"/api/v1/nodes/{n}")).json()
        have = ((node.get("status") or {}).get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}
        if have.get("Port") == port:
            continue
        patch = {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}
        r = await c.patch(f"/api/v1/nodes/{n}/status", json=patch,
                          headers={"Content-Type": "application/merge-patch+json"})
        if r.status_code != 200:
            raise RuntimeError(f"setting node {n}'s kubelet port: HTTP {r.status_code} {r.text[:200]}")


async def wait_default_service_account(url: str, pki_dir: Path, *, timeout: float = 60) -> None:
    """Wait until KCM created `default/default`, without which Pods are refused.

    Raises trio.TooSlowError after `timeout`.
    """
    ctx = await trio.to_thread.run_sync(admin_ssl_context, pki_dir)
    async with httpx.AsyncClient(base_url=url, verify=ctx, trust_env=False, timeout=5) as c:
        with trio.fail_after(timeout):
            while (await c.get("/api/v1/namespaces/default/serviceaccounts/default")).status_code != 200:
                await trio.sleep(0.2)


async def _nodes_ready(c: httpx.AsyncClient, names: tuple[str, ...]) -> bool:
    r = await c.get("/api/v1/nodes", params={"labelSelector": "type=kwok"})
    ready = {
        n["metadata"]["name"]
        for n in r.json().get("items", [])
        if any(
            cond.get("type") == "Ready" and cond.get("status") == "True"
            for cond in n.get("status", {}).get("conditions", [])
        )
    }
    return set(names) <= ready


def write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
