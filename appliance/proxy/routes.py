"""Kubelet request target → upstream target for one tenant (pure, no I/O).

Owns the vn-agent's routing table: which kubelet API paths a tenant apiserver may call through a
virtual node, how the tenant namespace becomes the super-cluster namespace (the syncer's hashed
63-character rule from ``appliance.util.naming``), and how the request is expressed upstream —
unchanged apart from the namespace segment in kubelet mode, or as a pod subresource of the super
apiserver (``/api/v1/namespaces/<ns>/pods/<pod>/{log,exec,attach,portforward}``) otherwise.
Invariants: every name that reaches an upstream target is a validated DNS-1123 name; paths with
percent-escapes, dot segments or empty segments never match; everything not listed is refused.
Does not decide whether the pod exists or belongs to the tenant: ``authorize_pod`` does that
once the caller has looked the super pod up.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from appliance.util import naming, tenancy

__all__ = [
    "Action",
    "CallingTenant",
    "Mode",
    "Refusal",
    "Upstream",
    "authorize_pod",
    "route",
]

Mode = Literal["super-apiserver", "kubelet"]
Action = Literal["containerLogs", "exec", "attach", "portForward", "run"]

# Limits. A kubelet path is at most /action/ns(63)/pod(253)/uid/container(63); queries carry exec
# commands, which are short in practice; 16 KiB is well above both and bounds the work we do.
MAX_TARGET_BYTES = 16 * 1024
MAX_PATH_BYTES = 1024
MAX_QUERY_FIELDS = 256

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_UID = re.compile(r"[A-Za-z0-9][-A-Za-z0-9]{0,63}")
_PATH_CHARS = re.compile(rb"[A-Za-z0-9/._-]+")
_INTEGER = re.compile(r"-?[0-9]{1,18}")

# Kubelet paths the tenant may not use through a virtual node: they expose the whole node (all
# tenants' pods, node logs, stats, profiling). Answered 403 so the refusal is explicit in logs.
_NODE_WIDE = frozenset(
    {
        "pods", "runningpods", "logs", "stats", "metrics", "configz", "debug", "checkpoint",
        "spec", "cri", "healthz", "attachPod", "execPod",
    }
)  # fmt: skip

_TRUE = frozenset({"1", "true", "True"})
_FALSE = frozenset({"0", "false", "False", ""})


@dataclass(frozen=True, slots=True)
class CallingTenant:
    """Who is calling: established from the tenant CA that verified the client certificate.

    The proxy's per-tenant record; the shared identity names are in ``appliance.util.tenancy``.
    """

    cluster_key: tenancy.ClusterKey


@dataclass(frozen=True, slots=True, kw_only=True)
class Upstream:
    """Where and how to forward an allowed request.

    ``target`` is the request target (path and query) to send upstream. ``super_namespace`` and
    ``pod`` name the super pod whose ownership the caller must check before forwarding.
    """

    method: str
    target: bytes
    action: Action
    tenant_namespace: str
    super_namespace: str
    pod: str
    container: str | None
    upgrade: bool  # exec/attach/portForward may switch protocols; logs and run may not


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A request answered locally: ``status`` and a short, fixed ``reason`` safe to show."""

    status: int
    reason: str
    action: str  # metrics label: a known action name or "other"


@dataclass(frozen=True, slots=True)
class _Shape:
    methods: frozenset[str]
    counts: tuple[int, ...]  # accepted numbers of segments after the action
    has_container: bool
    upgrade: bool
    subresource: str | None  # super-apiserver pod subresource; None = kubelet mode only


_SHAPES: Mapping[str, _Shape] = {
    "containerLogs": _Shape(frozenset({"GET"}), (3,), True, False, "log"),
    "exec": _Shape(frozenset({"GET", "POST"}), (3, 4), True, True, "exec"),
    "attach": _Shape(frozenset({"GET", "POST"}), (3, 4), True, True, "attach"),
    "portForward": _Shape(frozenset({"GET", "POST"}), (2, 3), False, True, "portforward"),
    "run": _Shape(frozenset({"POST"}), (3, 4), True, False, None),
}

_LOG_OPTIONS = {
    "follow": "bool",
    "previous": "bool",
    "timestamps": "bool",
    "tailLines": "int",
    "limitBytes": "int",
    "sinceSeconds": "int",
    "sinceTime": "str",
    "insecureSkipTLSVerifyBackend": "bool",
}
_STREAM_FLAGS = {"input": "stdin", "output": "stdout", "error": "stderr", "tty": "tty"}


class _Invalid(Exception):
    """Internal: the request is malformed (→ 400) with a fixed, client-safe reason."""


def route(method: str, target: bytes, *, tenant: CallingTenant, mode: Mode) -> Upstream | Refusal:
    """Decide what to do with one kubelet API request from ``tenant``."""
    if len(target) > MAX_TARGET_BYTES:
        return Refusal(status=414, reason="request target too long", action="other")
    raw_path, _, raw_query = target.partition(b"?")
    if not raw_path.startswith(b"/") or len(raw_path) > MAX_PATH_BYTES:
        return Refusal(status=400, reason="malformed path", action="other")
    if not _PATH_CHARS.fullmatch(raw_path):
        # No percent-escapes (encoded slashes, NULs), backslashes or other surprises in paths.
        return Refusal(status=400, reason="malformed path", action="other")
    segments = raw_path.decode("ascii").split("/")[1:]
    action, args = segments[0], segments[1:]
    if action in _NODE_WIDE:
        return Refusal(
            status=403, reason=f"{action} is not available on a virtual node", action="other"
        )
    if raw_path == b"/":
        return Refusal(status=404, reason="not found", action="other")
    if any(s in ("", ".", "..") for s in segments):
        return Refusal(status=400, reason="malformed path", action="other")
    shape = _SHAPES.get(action)
    if shape is None:
        return Refusal(status=404, reason="not found", action="other")
    if shape.subresource is None and mode == "super-apiserver":
        return Refusal(status=404, reason=f"{action} is not supported", action=action)
    if len(args) not in shape.counts:
        return Refusal(status=404, reason="not found", action=action)
    if method not in shape.methods:
        return Refusal(status=405, reason="method not allowed", action=action)

    namespace, pod = args[0], args[1]
    container = args[-1] if shape.has_container else None
    uid = args[2] if len(args) == max(shape.counts) else None
    if not _is_label(namespace):
        return Refusal(status=400, reason="invalid namespace name", action=action)
    if not _is_subdomain(pod):
        return Refusal(status=400, reason="invalid pod name", action=action)
    if container is not None and not _is_label(container):
        return Refusal(status=400, reason="invalid container name", action=action)
    if uid is not None and not _UID.fullmatch(uid):
        return Refusal(status=400, reason="invalid pod uid", action=action)

    super_ns = naming.super_namespace(tenant.cluster_key, namespace)
    try:
        if mode == "kubelet":
            rest = "/".join([super_ns, *args[1:]])
            new_target = f"/{action}/{rest}".encode("ascii")
            if raw_query:
                _parse_query(raw_query)  # validated only; the kubelet gets the query unchanged
                new_target += b"?" + raw_query
        else:
            assert shape.subresource is not None
            query = _translate_query(action, _parse_query(raw_query), container=container)
            path = f"/api/v1/namespaces/{super_ns}/pods/{pod}/{shape.subresource}"
            new_target = path.encode("ascii")
            if query:
                new_target += b"?" + urllib.parse.urlencode(
                    query, quote_via=urllib.parse.quote
                ).encode("ascii")
    except _Invalid as exc:
        return Refusal(status=400, reason=str(exc), action=action)

    return Upstream(
        method=method,
        target=new_target,
        action=action,  # type: ignore[arg-type]  # narrowed by the _SHAPES lookup above
        tenant_namespace=namespace,
        super_namespace=super_ns,
        pod=pod,
        container=container,
        upgrade=shape.upgrade,
    )


def authorize_pod(
    pod_metadata: Mapping[str, Any], tenant: CallingTenant, *, route: Upstream
) -> bool:
    """True when the super pod described by ``pod_metadata`` is ``route``'s pod of ``tenant``.

    The super pod must carry the tenancy annotations naming this tenant's cluster key and the
    tenant namespace of the request, and sit in the expected super namespace under the expected
    name. Missing or odd-typed fields mean no.
    """
    annotations = pod_metadata.get("annotations")
    if not isinstance(annotations, Mapping):
        return False
    return (
        annotations.get(naming.ANNOTATION_CLUSTER) == tenant.cluster_key
        and annotations.get(naming.ANNOTATION_NAMESPACE) == route.tenant_namespace
        and pod_metadata.get("namespace") == route.super_namespace
        and pod_metadata.get("name") == route.pod
    )


def _is_label(name: str) -> bool:
    return len(name) <= 63 and _DNS1123_LABEL.fullmatch(name) is not None


def _is_subdomain(name: str) -> bool:
    return len(name) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(name) is not None


def _parse_query(raw_query: bytes) -> list[tuple[str, str]]:
    try:
        return urllib.parse.parse_qsl(
            raw_query.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise _Invalid("malformed query") from None


def _flag(value: str, *, name: str) -> str:
    if value in _TRUE:
        return "true"
    if value in _FALSE:
        return "false"
    raise _Invalid(f"invalid value for {name}")


def _translate_query(
    action: str, fields: list[tuple[str, str]], *, container: str | None
) -> list[tuple[str, str]]:
    """Kubelet query fields → the super apiserver's pod subresource options (unknowns dropped)."""
    out: list[tuple[str, str]] = []
    if action == "containerLogs":
        for name, value in fields:
            kind = _LOG_OPTIONS.get(name)
            if kind == "bool":
                out.append((name, _flag(value, name=name)))
            elif kind == "int":
                if not _INTEGER.fullmatch(value):
                    raise _Invalid(f"invalid value for {name}")
                out.append((name, value))
            elif kind == "str":
                out.append((name, value))
    elif action in ("exec", "attach"):
        for name, value in fields:
            if name in _STREAM_FLAGS:
                out.append((_STREAM_FLAGS[name], _flag(value, name=name)))
            elif name == "command" and action == "exec":
                out.append(("command", value))
    elif action == "portForward":
        for name, value in fields:
            if name in ("port", "ports"):
                for item in value.split(","):
                    if not item.isdigit() or not 0 < int(item) < 65536:
                        raise _Invalid("invalid port")
                    out.append(("ports", str(int(item))))
    if container is not None:
        out.append(("container", container))
    return out
