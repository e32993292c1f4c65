"""How lean a process-mode tenant control plane runs: flags and Go runtime settings, per ClusterVersion.

A ClusterVersion may carry `spec.process` (the CRD keeps unknown spec fields, so older
appliances ignore it):

    spec:
      process:
        profile: lean            # lean (default) | upstream: the flags before footprint trimming
        apiServer:               # each key optional; "" / absent = the profile's value
          runtimeConfig: "flowcontrol.apiserver.k8s.io/v1=false"   # --runtime-config
          watchCacheSizes: "events#0"                             # --watch-cache-sizes
          watchCache: true                                        # --watch-cache
          goMemoryLimit: 200MiB                                   # GOMEMLIMIT
          goGC: "50"                                              # GOGC
          binary: /opt/k8s/v1.36/kube-apiserver                   # instead of the bundled one
        controllerManager:
          controllers: "*,-ttl-controller"   # --controllers; node-lifecycle stays off (virtual nodes)
          goMemoryLimit: 96MiB
          goGC: "50"

Only these keys map to flags: a ClusterVersion cannot move a tenant's etcd prefix, ports or
certificates. Values reach the child's argv as one element each (no shell). A changed
setting is rolled out to Running tenants one process at a time, and rolled back when the new
process does not become ready (`provision.process`); a changed command line also makes an
appliance restart restart the kept processes instead of adopting them. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

import msgspec

#: Lean profile: cuts that keep every API group and controller a tenant may need (the
#: conformance subset passes). Measured numbers are in bench/RESULTS.md ("footprint").
#: APIServerIdentity off: the apiserver stops renewing its identity Lease every 10 s (the
#: only periodic write of an idle tenant with `--leader-elect=false` on its KCM). What reads
#: that Lease serves several apiservers: the peer proxy for version skew
#: (UnknownVersionInteroperabilityProxy, which v1.37 refuses to run without it, so it goes
#: too) and storage versions (alpha, off). A tenant has one apiserver.
LEAN_APISERVER_FLAGS: Final[dict[str, str]] = {
    "feature-gates": "APIServerIdentity=false,UnknownVersionInteroperabilityProxy=false",
    # object counts and the db size are only for metrics and APF, which tenants run without
    "etcd-count-metric-poll-period": "0",
    "etcd-db-metric-poll-interval": "0",
}
#: Go's soft memory limit makes the collector (and the scavenger, which returns pages to
#: the OS) work before the heap doubles; GOGC keeps heap growth below 2x the live heap.
LEAN_APISERVER_ENV: Final[dict[str, str]] = {"GOGC": "50", "GOMEMLIMIT": "160MiB"}
LEAN_CONTROLLER_MANAGER_ENV: Final[dict[str, str]] = {"GOGC": "50", "GOMEMLIMIT": "64MiB"}
#: Controllers a tenant with virtual nodes runs: the node lifecycle controller would mark
#: vNodes (which have no kubelet heartbeat) NotReady and evict their Pods.
VIRTUAL_NODE_CONTROLLERS_OFF: Final = "-node-lifecycle-controller"

_MEMORY_LIMIT = re.compile(r"^[0-9]+(B|KiB|MiB|GiB|TiB)?$")
_GOGC = re.compile(r"^([0-9]+|off)$")


class _Base(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    pass


class GoRuntime(_Base):
    go_memory_limit: str = ""
    go_gc: str = msgspec.field(default="", name="goGC")
    #: an absolute path on the appliance host run instead of the bundled binary (another version)
    binary: str = ""


class ApiServerTrim(GoRuntime):
    runtime_config: str = ""
    watch_cache_sizes: str = ""
    watch_cache: bool | None = None


class ControllerManagerTrim(GoRuntime):
    controllers: str = ""


class ProcessSpec(_Base):
    profile: Literal["lean", "upstream"] = "lean"
    api_server: ApiServerTrim = msgspec.field(default_factory=ApiServerTrim)
    controller_manager: ControllerManagerTrim = msgspec.field(default_factory=ControllerManagerTrim)


class Invalid(ValueError):
    """`spec.process` of a ClusterVersion cannot be used; the message names the field."""


def from_cluster_version(cv: dict[str, Any] | None) -> ProcessSpec:
    """The `spec.process` of `cv` (defaults for no ClusterVersion). Raises `Invalid`."""
    raw = ((cv or {}).get("spec") or {}).get("process")
    if raw is None:
        return ProcessSpec()
    try:
        spec = msgspec.convert(raw, ProcessSpec, strict=False)
    except msgspec.ValidationError as exc:
        raise Invalid(f"spec.process: {exc}") from None
    for where, rt in (("apiServer", spec.api_server), ("controllerManager", spec.controller_manager)):
        if rt.go_memory_limit and not _MEMORY_LIMIT.match(rt.go_memory_limit):
            raise Invalid(f"spec.process.{where}.goMemoryLimit {rt.go_memory_limit!r}: expected e.g. 200MiB")
        if rt.go_gc and not _GOGC.match(rt.go_gc):
            raise Invalid(f"spec.process.{where}.goGC {rt.go_gc!r}: expected a percentage or off")
        if rt.binary and not rt.binary.startswith("/"):
            raise Invalid(f"spec.process.{where}.binary {rt.binary!r}: expected an absolute path")
    return spec


def _env(rt: GoRuntime, lean: dict[str, str], *, profile: str) -> dict[str, str]:
    env = dict(lean) if profile == "lean" else {}
    if rt.go_memory_limit:
        env["GOMEMLIMIT"] = rt.go_memory_limit
    if rt.go_gc:
        env["GOGC"] = rt.go_gc
    return env


def apiserver_flags(spec: ProcessSpec) -> dict[str, str]:
    """Extra kube-apiserver flags (without `--`), on top of the provisioner's own."""
    flags = dict(LEAN_APISERVER_FLAGS) if spec.profile == "lean" else {}
    a = spec.api_server
    if a.runtime_config:
        flags["runtime-config"] = a.runtime_config
    if a.watch_cache_sizes:
        flags["watch-cache-sizes"] = a.watch_cache_sizes
    if a.watch_cache is not None:
        flags["watch-cache"] = str(a.watch_cache).lower()
    return flags


def apiserver_env(spec: ProcessSpec) -> dict[str, str]:
    """Go runtime variables for kube-apiserver (added to the appliance's environment)."""
    return _env(spec.api_server, LEAN_APISERVER_ENV, profile=spec.profile)


def controller_manager_flags(spec: ProcessSpec) -> dict[str, str]:
    """Extra kube-controller-manager flags; a `controllers` list always keeps node lifecycle off."""
    c = spec.controller_manager.controllers
    if not c:
        return {}
    parts = [p.strip() for p in c.split(",") if p.strip()]
    if VIRTUAL_NODE_CONTROLLERS_OFF not in parts:
        parts.append(VIRTUAL_NODE_CONTROLLERS_OFF)
    return {"controllers": ",".join(parts)}


def controller_manager_env(spec: ProcessSpec) -> dict[str, str]:
    """Go runtime variables for kube-controller-manager."""
    return _env(spec.controller_manager, LEAN_CONTROLLER_MANAGER_ENV, profile=spec.profile)
