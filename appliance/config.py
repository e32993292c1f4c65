"""Typed configuration of the appliance, decoded from TOML with msgspec.

Every key has a default, so an empty file is a valid config for a local run. Unknown
keys and wrong types are errors that name the file and the key path
(`$.syncer.workers`). Environment variables `VCA_<SECTION>_<KEY>` (upper case,
dashes as underscores; values in TOML syntax, bare words taken as strings) override
the file, for containers. `configs/appliance.toml` documents every key and a test
decodes it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Positive = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and key."""


class _Section(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    pass


class SuperSection(_Section, frozen=True):
    #: kubeconfig of the super cluster; empty = in-cluster service account.
    kubeconfig: str = ""
    #: context inside that kubeconfig; empty = its current-context.
    context: str = ""
    qps: Positive = 1000.0
    burst: PositiveInt = 2000
    #: per-request timeout, seconds (watches are long requests and use their own).
    request_timeout: Positive = 30.0


class HttpSection(_Section, frozen=True):
    #: /healthz, /readyz and /metrics; port 0 picks a free port (logged).
    address: str = "127.0.0.1"
    port: Port = 8080


class LogSection(_Section, frozen=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["console", "json"] = "console"


class ManagerSection(_Section, frozen=True):
    enabled: bool = True
    #: provisioner for VirtualClusters that do not name one.
    provisioner: Literal["process", "native", "import"] = "process"
    num_reconciles: PositiveInt = 10
    #: per-component readiness wait of a provisioning attempt, seconds.
    provisioner_timeout: Positive = 600.0
    #: leave tenant control-plane processes running when the appliance stops; re-adopt them.
    keep_control_planes: bool = True
    #: address tenant apiservers bind to and that their kubeconfigs name.
    tenant_bind_address: str = "127.0.0.1"
    #: one etcd for all process-mode tenants (each under its own prefix).
    shared_etcd: bool = True


class SyncerSection(_Section, frozen=True):
    enabled: bool = True
    #: downward workers per resource kind (pods get `pod-workers`).
    workers: PositiveInt = 3
    pod_workers: PositiveInt = 10
    upward_workers: PositiveInt = 10
    #: seconds between patrol scans that repair drift.
    patrol_period: Positive = 60.0
    #: seconds a virtual node without pods lives on before it is deleted.
    vnode_gc_grace: Positive = 120.0
    #: tenant apiserver health probe period, seconds.
    health_period: Positive = 60.0
    #: label/annotation key domains never copied to the super cluster.
    opaque_meta_domains: list[str] = msgspec.field(default_factory=lambda: ["kubernetes.io", "k8s.io"])
    disable_service_account_token: bool = True
    disable_service_links: bool = False
    dns_options: dict[str, str] = msgspec.field(default_factory=lambda: {"ndots": "5"})
    #: super node label keys copied to virtual nodes, beyond os/arch/hostname.
    extra_node_labels: list[str] = msgspec.field(default_factory=list)
    #: opt-in resource kinds: "ingress", "priorityclass".
    extra_resources: list[Literal["ingress", "priorityclass"]] = msgspec.field(default_factory=list)


class ProxySection(_Section, frozen=True):
    enabled: bool = True
    address: str = "127.0.0.1"
    port: Port = 10550
    #: the address virtual nodes advertise (what tenant apiservers dial); empty = `address`.
    advertise_address: str = ""
    #: where requests go: the super apiserver's pod subresources, or the node's kubelet.
    upstream: Literal["super-apiserver", "kubelet"] = "super-apiserver"
    #: kubelet mode: the kubelet's address; empty = the node of each Pod (its status.hostIP).
    kubelet_address: str = ""
    kubelet_port: Port = 10250
    kubelet_client_certificate: str = ""
    kubelet_client_key: str = ""
    #: seconds without a byte in either direction before a stream is closed.
    idle_timeout: Positive = 900.0
    #: upper bound of one streaming request, seconds (0 = none).
    total_timeout: Annotated[float, Meta(ge=0)] = 0.0
    #: seconds a client has for the TLS handshake.
    handshake_timeout: Positive = 10.0
    #: seconds a client has to send a whole request head (counted from the handshake, or from
    #: the first byte of a later request on a kept-alive connection).
    header_timeout: Positive = 10.0
    #: seconds a client has to send a whole request body, from the end of its head. Log
    #: streams and exec/attach/port-forward after the upgrade are bounded by `idle-timeout`.
    body_timeout: Positive = 10.0
    #: seconds a kept-alive connection may stay idle between two requests.
    keep_alive_timeout: Positive = 60.0
    #: open connections; more wait in the kernel's listen backlog.
    max_connections: PositiveInt = 1000
    #: open connections of one tenant (known by its client certificate); more get 429 (and
    #: beyond as many again waiting for that answer, are closed at once).
    max_connections_per_tenant: PositiveInt = 64
    #: connections still in the TLS handshake (not yet known to be a tenant); more are closed.
    max_handshakes: PositiveInt = 128


class LeasesSection(_Section, frozen=True):
    """Several replicas share the tenants through coordination.k8s.io Leases (see README)."""

    enabled: bool = False
    #: namespace of the replica heartbeat and tenant Leases (created if missing).
    namespace: str = "vc-appliance-system"
    #: this replica's holder identity; empty = `<hostname>-<random>` (new on every start).
    identity: str = ""
    #: where this replica's process-mode control planes live; empty = `<hostname>:<data-dir>`.
    placement: str = ""
    #: seconds a Lease stays valid without renewal (Kubernetes leader election: 15 / 10 / 2).
    lease_duration: Positive = 15.0
    #: seconds a holder keeps serving while renewals fail; must be below `lease-duration`.
    renew_deadline: Positive = 10.0
    #: seconds between renewals and balancing steps; must be below `renew-deadline`.
    retry_period: Positive = 2.0

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leases: expected retry-period < renew-deadline < lease-duration")


class Config(_Section, frozen=True):
    #: tenant data (PKI, etcd, logs) lives here; created 0700.
    data_dir: str = "/var/lib/vc-appliance"
    #: where the Kubernetes binaries are; empty = build/find them in the user cache.
    binaries_dir: str = ""
    #: seconds the writes in flight get after SIGTERM (no new work is taken) before everything
    #: is cancelled; a second signal cancels at once.
    graceful_timeout: Positive = 20.0
    #: label selector limiting which VirtualClusters this appliance serves ("" = all).
    tenant_selector: str = ""
    super: SuperSection = msgspec.field(default_factory=SuperSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    log: LogSection = msgspec.field(default_factory=LogSection)
    manager: ManagerSection = msgspec.field(default_factory=ManagerSection)
    syncer: SyncerSection = msgspec.field(default_factory=SyncerSection)
    proxy: ProxySection = msgspec.field(default_factory=ProxySection)
    leases: LeasesSection = msgspec.field(default_factory=LeasesSection)


ENV_PREFIX = "VCA_"


def _env_overrides(env: dict[str, str], doc: dict[str, object]) -> dict[str, object]:
    """Fold `VCA_SECTION_KEY=value` (or `VCA_KEY` for top-level keys) into the decoded doc."""
    sections = [
        f.encode_name for f in msgspec.structs.fields(Config)
        if f.default_factory is not msgspec.NODEFAULT
    ]
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        words = name[len(ENV_PREFIX):].lower().replace("_", "-")
        target, key = doc, words
        for section in sections:
            if words.startswith(section + "-"):
                target = doc.setdefault(section, {})  # type: ignore[assignment]
                key = words[len(section) + 1:]
                break
        try:
            value: object = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        target[key] = value
    return doc


def load(path: Path | None, *, env: dict[str, str] | None = None) -> Config:
    """Decode the config file (None = defaults only), then apply environment overrides.

    Raises ConfigError naming the file and the offending key.
    """
    where = str(path) if path else "<defaults>"
    try:
        doc = tomllib.loads(path.read_text()) if path else {}
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    doc = _env_overrides(dict(os.environ if env is None else env), doc)
    try:
        return msgspec.convert(doc, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None
