"""Tables for the vn-agent's pure router: kubelet target → upstream target or refusal."""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.parse

import pytest

from appliance.proxy import routes

KEY = "ns-fd1b34-name"
TENANT = routes.CallingTenant(cluster_key=KEY)
SUPER_DEFAULT = f"{KEY}-default"


def expected_super_ns(key: str, ns: str) -> str:
    """The syncer's rule, restated independently: <key>-<ns>, hashed past 63 characters."""
    text = f"{key}-{ns}"
    if len(text) <= 63:
        return text
    return text[:57] + "-" + hashlib.sha256(text.encode()).hexdigest()[:5]


def query_of(target: bytes) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(
        urllib.parse.urlsplit(target.decode()).query, keep_blank_values=True
    )


def path_of(target: bytes) -> str:
    return urllib.parse.urlsplit(target.decode()).path


# --- super-apiserver mode -----------------------------------------------------------------------

SUPER_CASES = [
    pytest.param(
        "GET",
        b"/containerLogs/default/web-0/nginx",
        f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/log",
        [("container", "nginx")],
        "containerLogs",
        id="logs-plain",
    ),
    pytest.param(
        "GET",
        b"/containerLogs/default/web-0/nginx?follow=true&tailLines=10&timestamps=1&sinceSeconds=30"
        b"&limitBytes=500&previous=false&sinceTime=2024-01-01T00%3A00%3A00Z&bogus=1",
        f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/log",
        [
            ("follow", "true"),
            ("tailLines", "10"),
            ("timestamps", "true"),
            ("sinceSeconds", "30"),
            ("limitBytes", "500"),
            ("previous", "false"),
            ("sinceTime", "2024-01-01T00:00:00Z"),
            ("container", "nginx"),
        ],
        "containerLogs",
        id="logs-options-passed-unknown-dropped",
    ),
    pytest.param(
        "POST",
        b"/exec/default/web-0/nginx?command=sh&command=-c&command=echo+hi+%26%26+ls&input=1&output=1&error=0&tty=1",
        f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/exec",
        [
            ("command", "sh"),
            ("command", "-c"),
            ("command", "echo hi && ls"),
            ("stdin", "true"),
            ("stdout", "true"),
            ("stderr", "false"),
            ("tty", "true"),
            ("container", "nginx"),
        ],
        "exec",
        id="exec-post-flags-and-commands",
    ),
    pytest.param(
        "GET",
        b"/exec/default/web-0/1b4e28ba-2fa1-11d2-883f-0016d3cca427/nginx?command=ls&output=1",
        f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/exec",
        [("command", "ls"), ("stdout", "true"), ("container", "nginx")],
        "exec",
        id="exec-with-uid-dropped",
    ),
    pytest.param(
        "GET",
        b"/exec/default/web-0/nginx?tty=0&command=ls",
        f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/exec",
        [("tty", "false"), ("command", "ls"), ("container", "nginx")],
        "exec",
        id="exec-tty-zero-is-tty-false",
    ),
    pytest.param(
        "POST",
        b"/attach/default/web-0/nginx?input=1&output=1&tty=1&command=ignored",
        f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/attach",
        [("stdin", "true"), ("stdout", "true"), ("tty", "true"), ("container", "nginx")],
        "attach",
        id="attach-no-command",
    ),
    pytest.param(
        "POST",
        b"/attach/default/web-0/abc-123/nginx?error=1",
        f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/attach",
        [("stderr", "true"), ("container", "nginx")],
        "attach",
        id="attach-with-uid",
    ),
    pytest.param(
        "POST",
        b"/portForward/default/web-0",
        f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/portforward",
        [],
        "portForward",
        id="portforward-spdy-no-query",
    ),
    pytest.param(
        "GET",
        b"/portForward/default/web-0/abc-123?port=8080,9090",
        f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/portforward",
        [("ports", "8080"), ("ports", "9090")],
        "portForward",
        id="portforward-websocket-ports",
    ),
    pytest.param(
        "GET",
        b"/portForward/default/web-0?ports=80",
        f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/portforward",
        [("ports", "80")],
        "portForward",
        id="portforward-ports-spelling",
    ),
    pytest.param(
        "GET",
        b"/containerLogs/kube-system/coredns-5d78c9869d-abcde.v2/coredns",
        f"/api/v1/namespaces/{KEY}-kube-system/pods/coredns-5d78c9869d-abcde.v2/log",
        [("container", "coredns")],
        "containerLogs",
        id="dotted-pod-name",
    ),
]


@pytest.mark.parametrize(("method", "target", "path", "query", "action"), SUPER_CASES)
def test_super_apiserver_translation(
    method: str, target: bytes, path: str, query: list[tuple[str, str]], action: str
) -> None:
    """Kubelet routes become pod subresources in the super namespace with translated options."""
    result = routes.route(method, target, tenant=TENANT, mode="super-apiserver")
    assert isinstance(result, routes.Upstream), result
    assert path == path_of(result.target)
    assert query == query_of(result.target)
    assert action == result.action
    assert method == result.method


def test_super_apiserver_upstream_fields() -> None:
    """The route names the super pod to check and whether an upgrade may follow."""
    result = routes.route(
        "POST", b"/exec/default/web-0/nginx?output=1", tenant=TENANT, mode="super-apiserver"
    )
    assert (
        routes.Upstream(
            method="POST",
            target=f"/api/v1/namespaces/{SUPER_DEFAULT}/pods/web-0/exec?stdout=true&container=nginx".encode(),
            action="exec",
            tenant_namespace="default",
            super_namespace=SUPER_DEFAULT,
            pod="web-0",
            container="nginx",
            upgrade=True,
        )
        == result
    )
    logs = routes.route(
        "GET", b"/containerLogs/default/web-0/nginx", tenant=TENANT, mode="super-apiserver"
    )
    assert isinstance(logs, routes.Upstream)
    assert logs.upgrade is False


# --- kubelet mode -------------------------------------------------------------------------------

KUBELET_CASES = [
    pytest.param(
        "GET",
        b"/containerLogs/default/web-0/nginx?follow=true&tailLines=5",
        f"/containerLogs/{SUPER_DEFAULT}/web-0/nginx?follow=true&tailLines=5".encode(),
        id="logs",
    ),
    pytest.param(
        "POST",
        b"/exec/default/web-0/nginx?command=ls&output=1",
        f"/exec/{SUPER_DEFAULT}/web-0/nginx?command=ls&output=1".encode(),
        id="exec",
    ),
    pytest.param(
        "GET",
        b"/exec/default/web-0/abc-123/nginx?command=ls",
        f"/exec/{SUPER_DEFAULT}/web-0/abc-123/nginx?command=ls".encode(),
        id="exec-uid",
    ),
    pytest.param(
        "POST",
        b"/attach/default/web-0/nginx?input=1",
        f"/attach/{SUPER_DEFAULT}/web-0/nginx?input=1".encode(),
        id="attach",
    ),
    pytest.param(
        "POST",
        b"/portForward/default/web-0",
        f"/portForward/{SUPER_DEFAULT}/web-0".encode(),
        id="portforward",
    ),
    pytest.param(
        "GET",
        b"/portForward/default/web-0/abc-123?port=80",
        f"/portForward/{SUPER_DEFAULT}/web-0/abc-123?port=80".encode(),
        id="portforward-uid",
    ),
    pytest.param(
        "POST",
        b"/run/default/web-0/nginx?cmd=ls",
        f"/run/{SUPER_DEFAULT}/web-0/nginx?cmd=ls".encode(),
        id="run",
    ),
    pytest.param(
        "POST",
        b"/run/default/web-0/abc-123/nginx",
        f"/run/{SUPER_DEFAULT}/web-0/abc-123/nginx".encode(),
        id="run-uid",
    ),
]


@pytest.mark.parametrize(("method", "target", "expected"), KUBELET_CASES)
def test_kubelet_mode_rewrites_only_namespace(method: str, target: bytes, expected: bytes) -> None:
    """Kubelet mode keeps path and query and swaps the namespace segment for the super one."""
    result = routes.route(method, target, tenant=TENANT, mode="kubelet")
    assert isinstance(result, routes.Upstream), result
    assert expected == result.target


# --- namespaces ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "ns"),
    [
        pytest.param(KEY, "default", id="short"),
        pytest.param("k" * 40, "n" * 22, id="exactly-63"),
        pytest.param("k" * 40, "n" * 23, id="64-hashed"),
        pytest.param(
            "tenant-with-a-rather-long-cluster-key-0123",
            "a-very-long-tenant-namespace-name",
            id="long-hashed",
        ),
    ],
)
@pytest.mark.parametrize("mode", ["super-apiserver", "kubelet"])
def test_super_namespace_rule(key: str, ns: str, mode: routes.Mode) -> None:
    """Both modes use the syncer's 63-character hashed super-namespace rule."""
    result = routes.route(
        "GET", f"/containerLogs/{ns}/p/c".encode(), tenant=routes.CallingTenant(key), mode=mode
    )
    assert isinstance(result, routes.Upstream)
    expected = expected_super_ns(key, ns)
    assert len(expected) <= 63
    assert expected == result.super_namespace
    assert f"/{expected}/".encode() in result.target


def test_long_namespace_hash_value() -> None:
    """A pinned example of the hashed form, computed by hand from the rule."""
    key, ns = "k" * 40, "n" * 23
    text = f"{key}-{ns}"
    result = routes.route(
        "GET",
        f"/containerLogs/{ns}/p/c".encode(),
        tenant=routes.CallingTenant(key),
        mode="kubelet",
    )
    assert isinstance(result, routes.Upstream)
    assert text[:57] + "-" + hashlib.sha256(text.encode()).hexdigest()[:5] == result.super_namespace


# --- refusals -----------------------------------------------------------------------------------

REFUSALS = [
    # node-wide kubelet endpoints
    pytest.param("GET", b"/pods", "super-apiserver", 403, id="pods"),
    pytest.param("GET", b"/pods", "kubelet", 403, id="pods-kubelet-mode"),
    pytest.param("GET", b"/runningpods/", "kubelet", 403, id="runningpods"),
    pytest.param("GET", b"/logs/", "kubelet", 403, id="logs-dir"),
    pytest.param("GET", b"/logs/syslog", "kubelet", 403, id="logs-file"),
    pytest.param("GET", b"/stats/summary", "super-apiserver", 403, id="stats-summary"),
    pytest.param("GET", b"/stats/default/web-0/uid/nginx", "kubelet", 403, id="stats-container"),
    pytest.param("GET", b"/metrics", "kubelet", 403, id="metrics"),
    pytest.param("GET", b"/metrics/cadvisor", "kubelet", 403, id="metrics-cadvisor"),
    pytest.param("GET", b"/configz", "kubelet", 403, id="configz"),
    pytest.param("GET", b"/healthz", "kubelet", 403, id="healthz"),
    pytest.param("GET", b"/debug/pprof/", "kubelet", 403, id="debug"),
    pytest.param("POST", b"/checkpoint/default/web-0/nginx", "kubelet", 403, id="checkpoint"),
    pytest.param("GET", b"/spec/", "kubelet", 403, id="spec"),
    pytest.param("GET", b"/cri/exec/abc", "kubelet", 403, id="cri"),
    # unknown
    pytest.param("GET", b"/", "kubelet", 404, id="root"),
    pytest.param(
        "GET",
        b"/api/v1/namespaces/default/pods/web-0/log",
        "super-apiserver",
        404,
        id="apiserver-path",
    ),
    pytest.param("GET", b"/ContainerLogs/default/web-0/nginx", "kubelet", 404, id="wrong-case"),
    # run is kubelet-only
    pytest.param("POST", b"/run/default/web-0/nginx", "super-apiserver", 404, id="run-super-mode"),
    # wrong shapes
    pytest.param("GET", b"/containerLogs/default/web-0", "kubelet", 404, id="logs-no-container"),
    pytest.param(
        "GET", b"/containerLogs/default/web-0/uid/nginx", "kubelet", 404, id="logs-extra-segment"
    ),
    pytest.param("GET", b"/exec/default/web-0", "kubelet", 404, id="exec-no-container"),
    pytest.param("GET", b"/exec/default/web-0/a/b/c", "kubelet", 404, id="exec-too-long"),
    pytest.param("GET", b"/portForward/default", "kubelet", 404, id="portforward-no-pod"),
    pytest.param(
        "GET", b"/portForward/default/web-0/uid/x", "kubelet", 404, id="portforward-too-long"
    ),
    # methods
    pytest.param(
        "POST", b"/containerLogs/default/web-0/nginx", "super-apiserver", 405, id="logs-post"
    ),
    pytest.param("DELETE", b"/exec/default/web-0/nginx", "kubelet", 405, id="exec-delete"),
    pytest.param("PUT", b"/portForward/default/web-0", "kubelet", 405, id="portforward-put"),
    pytest.param("GET", b"/run/default/web-0/nginx", "kubelet", 405, id="run-get"),
    # traversal and encoding
    pytest.param("GET", b"/containerLogs/../kube-system/web-0/nginx", "kubelet", 400, id="dotdot"),
    pytest.param("GET", b"/containerLogs/default/../../pods", "kubelet", 400, id="dotdot-deep"),
    pytest.param("GET", b"/containerLogs/./default/web-0/nginx", "kubelet", 400, id="dot"),
    pytest.param(
        "GET",
        b"/containerLogs/default%2F..%2Fother/web-0/nginx",
        "kubelet",
        400,
        id="encoded-slash",
    ),
    pytest.param(
        "GET", b"/containerLogs/default%2fweb-0/nginx", "kubelet", 400, id="encoded-slash-lower"
    ),
    pytest.param("GET", b"/containerLogs/%2e%2e/web-0/nginx", "kubelet", 400, id="encoded-dots"),
    pytest.param("GET", b"/containerLogs/default/web-0%00/nginx", "kubelet", 400, id="encoded-nul"),
    pytest.param(
        "GET", b"/containerLogs/default\\..\\x/web-0/nginx", "kubelet", 400, id="backslash"
    ),
    pytest.param(
        "GET", b"//containerLogs/default/web-0/nginx", "kubelet", 400, id="double-slash-lead"
    ),
    pytest.param("GET", b"/containerLogs/default//web-0/nginx", "kubelet", 400, id="empty-segment"),
    pytest.param(
        "GET", b"/containerLogs/default/web-0/nginx/", "kubelet", 400, id="trailing-slash"
    ),
    pytest.param(
        "GET", b"https://evil/containerLogs/default/web-0/nginx", "kubelet", 400, id="absolute-form"
    ),
    pytest.param("GET", b"*", "kubelet", 400, id="asterisk-form"),
    pytest.param(
        "GET", "/containerLogs/défault/web-0/nginx".encode(), "kubelet", 400, id="non-ascii"
    ),
    # names
    pytest.param("GET", b"/containerLogs/Default/web-0/nginx", "kubelet", 400, id="ns-uppercase"),
    pytest.param("GET", b"/containerLogs/kube.system/web-0/nginx", "kubelet", 400, id="ns-dot"),
    pytest.param(
        "GET", b"/containerLogs/-default/web-0/nginx", "kubelet", 400, id="ns-leading-dash"
    ),
    pytest.param(
        "GET", b"/containerLogs/" + b"n" * 64 + b"/web-0/nginx", "kubelet", 400, id="ns-64"
    ),
    pytest.param("GET", b"/containerLogs/default/Web_0/nginx", "kubelet", 400, id="pod-underscore"),
    pytest.param(
        "GET", b"/containerLogs/default/" + b"p" * 254 + b"/nginx", "kubelet", 400, id="pod-254"
    ),
    pytest.param("GET", b"/containerLogs/default/web-0/ngi.nx", "kubelet", 400, id="container-dot"),
    pytest.param("GET", b"/exec/default/web-0/-uid/nginx", "kubelet", 400, id="uid-leading-dash"),
    # lengths
    pytest.param(
        "GET",
        b"/containerLogs/default/web-0/nginx?x=" + b"a" * 20000,
        "kubelet",
        414,
        id="target-too-long",
    ),
    pytest.param("GET", b"/" + b"a" * 1100, "kubelet", 400, id="path-too-long"),
    # queries
    pytest.param(
        "GET",
        b"/containerLogs/default/web-0/nginx?tailLines=ten",
        "super-apiserver",
        400,
        id="taillines-nan",
    ),
    pytest.param(
        "GET",
        b"/containerLogs/default/web-0/nginx?follow=maybe",
        "super-apiserver",
        400,
        id="follow-odd",
    ),
    pytest.param(
        "POST", b"/exec/default/web-0/nginx?input=2", "super-apiserver", 400, id="input-odd"
    ),
    pytest.param(
        "GET", b"/portForward/default/web-0?port=0", "super-apiserver", 400, id="port-zero"
    ),
    pytest.param(
        "GET", b"/portForward/default/web-0?port=70000", "super-apiserver", 400, id="port-big"
    ),
    pytest.param(
        "GET", b"/portForward/default/web-0?port=http", "super-apiserver", 400, id="port-name"
    ),
    pytest.param(
        "GET", b"/containerLogs/default/web-0/nginx?a=%ff", "kubelet", 400, id="query-bad-utf8"
    ),
    pytest.param(
        "GET",
        b"/containerLogs/default/web-0/nginx?" + b"&".join([b"a=1"] * 300),
        "kubelet",
        400,
        id="query-too-many-fields",
    ),
]


@pytest.mark.parametrize(("method", "target", "mode", "status"), REFUSALS)
def test_refusals(method: str, target: bytes, mode: routes.Mode, status: int) -> None:
    """Anything outside the four tenant-scoped routes, or malformed, is answered locally."""
    result = routes.route(method, target, tenant=TENANT, mode=mode)
    assert isinstance(result, routes.Refusal), result
    assert status == result.status
    assert result.reason
    assert len(result.reason) < 80


def test_refusal_reason_never_echoes_input() -> None:
    """Refusal texts are fixed strings; nothing from the request target comes back."""
    for target in (b"/containerLogs/<script>/x/y", b"/secret-thing/a", b"/exec/default/POD/x"):
        result = routes.route("GET", target, tenant=TENANT, mode="kubelet")
        assert isinstance(result, routes.Refusal)
        assert b"script" not in result.reason.encode()
        assert "secret-thing" not in result.reason
        assert "POD" not in result.reason


def test_refusal_action_labels() -> None:
    """Refusals of known actions keep the action name for metrics; others are 'other'."""
    exec_refusal = routes.route(
        "DELETE", b"/exec/default/web-0/nginx", tenant=TENANT, mode="kubelet"
    )
    unknown = routes.route("GET", b"/whatever", tenant=TENANT, mode="kubelet")
    assert isinstance(exec_refusal, routes.Refusal)
    assert isinstance(unknown, routes.Refusal)
    assert "exec" == exec_refusal.action
    assert "other" == unknown.action


# --- authorize_pod ------------------------------------------------------------------------------


def _route() -> routes.Upstream:
    result = routes.route(
        "GET", b"/containerLogs/default/web-0/nginx", tenant=TENANT, mode="super-apiserver"
    )
    assert isinstance(result, routes.Upstream)
    return result


def _meta(**overrides: object) -> dict[str, object]:
    meta: dict[str, object] = {
        "name": "web-0",
        "namespace": SUPER_DEFAULT,
        "annotations": {"tenancy.x-k8s.io/cluster": KEY, "tenancy.x-k8s.io/namespace": "default"},
    }
    meta.update(overrides)
    return meta


@pytest.mark.parametrize(
    ("meta", "tenant", "allowed"),
    [
        pytest.param(_meta(), TENANT, True, id="owner"),
        pytest.param(_meta(), routes.CallingTenant("other-tenant"), False, id="other-tenant"),
        pytest.param(
            _meta(
                annotations={
                    "tenancy.x-k8s.io/cluster": KEY,
                    "tenancy.x-k8s.io/namespace": "kube-system",
                }
            ),
            TENANT,
            False,
            id="other-tenant-namespace",
        ),
        pytest.param(
            _meta(annotations={"tenancy.x-k8s.io/namespace": "default"}),
            TENANT,
            False,
            id="no-cluster",
        ),
        pytest.param(
            _meta(annotations={"tenancy.x-k8s.io/cluster": KEY}), TENANT, False, id="no-namespace"
        ),
        pytest.param(_meta(annotations=None), TENANT, False, id="annotations-null"),
        pytest.param(_meta(annotations=["x"]), TENANT, False, id="annotations-list"),
        pytest.param(
            {k: v for k, v in _meta().items() if k != "annotations"},
            TENANT,
            False,
            id="non-tenant-pod",
        ),
        pytest.param(_meta(namespace="elsewhere"), TENANT, False, id="wrong-super-namespace"),
        pytest.param(_meta(name="web-1"), TENANT, False, id="wrong-name"),
    ],
)
def test_authorize_pod(
    meta: dict[str, object], tenant: routes.CallingTenant, allowed: bool
) -> None:
    """Only a super pod stamped with the caller's cluster key and tenant namespace is allowed."""
    assert allowed is routes.authorize_pod(meta, tenant, route=_route())


def test_kubelet_mode_dials_the_node_of_each_pod() -> None:
    """With `host_from_pod`, a request goes to the Pod's node (status.hostIP); a Pod without a
    node yet is an upstream error; a fixed kubelet address is kept as configured."""
    import ssl

    from appliance.proxy import forward

    base = forward.UpstreamConfig(mode="kubelet", host="127.0.0.1", port=10250,
                                  ssl_context=ssl.create_default_context(), server_hostname="kubelet")
    assert base.for_pod({"status": {"hostIP": "10.0.0.7"}}) is base
    per_pod = dataclasses.replace(base, host_from_pod=True)
    dialed = per_pod.for_pod({"status": {"hostIP": "10.0.0.7"}})
    assert (dialed.host, dialed.port, dialed.server_hostname) == ("10.0.0.7", 10250, None)
    assert dialed.host_header == b"10.0.0.7:10250"
    with pytest.raises(forward.UpstreamError, match="no node address"):
        per_pod.for_pod({"status": {}})
