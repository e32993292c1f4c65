"""The vn-agent proxy refuses every cross-tenant, unauthenticated or malformed kubelet request.

One table of crafted requests against the real proxy (super-apiserver upstream = the session
super cluster, tenant CAs = the real CAs of two tenant control planes). Tenant B's cluster key
is tenant A's key plus `-x`, so A's namespace `x-default` maps onto B's super namespace: the
prefix collision the naming rule allows. Super pods in the non-tenant namespaces `kube-system`
and `default` are stamped as A's, so only the namespace mapping keeps A away from them.
Each row names the expected status (or a refused TLS handshake) and, for local answers, the
exact body; a shared log marker proves no refused request read any pod's log, while two
positive rows (each tenant reading its own pod) prove the path works and sees the marker.
Last, tenant A takes every connection slot with request bodies it never finishes, and tenant B
must still read its pod's log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from appliance.app import proxy_serving_cert
from appliance.kube import errors, resources
from appliance.kube.client import ApiClient
from appliance.pki import certs
from appliance.proxy import forward, server
from appliance.util import naming
from tests.integration import syncing
from tests.security.conftest import keyed_tenant
from tests.security.rawtls import TLS_REFUSED, Answer, client_context, exchange, request
from tests.tally import Tally
from tests.testbed import SuperCluster, append_pod_log

pytestmark = [pytest.mark.security, pytest.mark.integration]


# Small enough for the greedy-tenant check; deadlines long enough that only the per-tenant
# limit, not a deadline, can make room for tenant B while tenant A is greedy.
LIMITS = server.ServerLimits(max_connections=6, max_connections_per_tenant=4, header_timeout=60.0,
                             body_timeout=60.0)


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    id: str
    who: str  # identity name (see `identities`)
    raw: bytes  # the exact request bytes
    expect: int  # HTTP status, or TLS_REFUSED
    body: bytes | None = None  # exact body of a local answer


@dataclasses.dataclass(frozen=True, slots=True)
class Bed:
    port: int
    superc: ApiClient
    a: syncing.BedTenant
    b: syncing.BedTenant
    stats: server.ProxyStatistics
    lookups: list[tuple[str, str]]
    foreign: dict[str, str]  # non-tenant super namespace → name of the pod there stamped as A's
    relay: Relay  # between the proxy and the super apiserver


def _pair(pki: Path, name: str) -> certs.CertKey:
    return certs.CertKey((pki / f"{name}.crt").read_bytes(), (pki / f"{name}.key").read_bytes())


def _sub_ca_leaf(ca: certs.CertKey, cn: str) -> tuple[certs.CertKey, bytes]:
    """A client cert issued by a sub-CA that `ca` signed: verifies, but no tenant CA issued it."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    sub_key = certs.new_private_key()
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "sub-ca")])
    sub = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.cert.subject)
           .public_key(sub_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    sub_pem = sub.public_bytes(serialization.Encoding.PEM)
    leaf = certs.issue(certs.CertKey(sub_pem, certs.key_pem(sub_key)), common_name=cn,
                       organizations=("system:masters",), client=True, days=1)
    return leaf, sub_pem


def identities(bed: Bed) -> dict[str, tuple[certs.CertKey | None, bytes]]:
    """Client identities by name: (certificate and key, extra chain PEM)."""
    a_pki, b_pki = bed.a.cp.pki_dir, bed.b.cp.pki_dir
    a_ca = _pair(a_pki, "ca")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    masters = ("system:masters",)
    sub_leaf, sub_chain = _sub_ca_leaf(a_ca, bed.a.key)
    a_ca_cn = a_ca.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    lookalike_ca = certs.new_ca(str(a_ca_cn))  # same issuer name as A's CA, another key
    return {
        "A": (_pair(a_pki, "kubelet-client"), b""),
        "B": (_pair(b_pki, "kubelet-client"), b""),
        "none": (None, b""),
        "lookalike-ca": (certs.issue(lookalike_ca, common_name=bed.a.key, organizations=masters,
                                     client=True), b""),
        "self-signed": (certs.new_ca(bed.a.key, organizations=masters), b""),
        "expired": (certs.issue(a_ca, common_name=bed.a.key, organizations=masters, client=True,
                                days=1, now=past), b""),
        "not-yet-valid": (certs.issue(a_ca, common_name=bed.a.key, client=True, now=future), b""),
        "server-only": (_pair(a_pki, "apiserver"), b""),
        "A-claiming-B": (certs.issue(a_ca, common_name=bed.b.key, organizations=masters, client=True), b""),
        "sub-ca": (sub_leaf, sub_chain),
    }


def rows(bed: Bed) -> list[Row]:
    """The attack table (positive controls are separate)."""
    get, post = functools.partial(request, "GET"), functools.partial(request, "POST")
    b_pod, sys_pod, def_pod = "web-b", bed.foreign["kube-system"], bed.foreign["default"]
    b_super_ns = bed.b.id.super_namespace("default")
    nf, forbidden, bad = b"pod not found\n", b"forbidden\n", b"bad request\n"
    malformed = b"malformed path\n"

    def node_wide(action: str) -> bytes:
        return f"{action} is not available on a virtual node\n".encode()

    table = [
        # --- tenant A's real kubelet-client certificate, tenant B's pod ----------------------
        Row("A logs of B's pod", "A", get(f"/containerLogs/default/{b_pod}/main"), 404, nf),
        Row("A exec in B's pod", "A", post(f"/exec/default/{b_pod}/main?command=id&output=1"), 404, nf),
        Row("A attach to B's pod", "A", post(f"/attach/default/{b_pod}/main?output=1"), 404, nf),
        Row("A port-forward to B's pod", "A", post(f"/portForward/default/{b_pod}?port=80"), 404, nf),
        Row("A exec (GET) in B's pod", "A", get(f"/exec/default/{b_pod}/main?command=id&output=1"), 404, nf),
        Row("A logs via colliding namespace", "A", get(f"/containerLogs/x-default/{b_pod}/main"), 403, forbidden),
        Row("A exec via colliding namespace", "A",
            post(f"/exec/x-default/{b_pod}/main?command=id&output=1"), 403, forbidden),
        Row("A attach via colliding namespace", "A", post(f"/attach/x-default/{b_pod}/main?output=1"), 403,
            forbidden),
        Row("A port-forward via colliding namespace", "A", post(f"/portForward/x-default/{b_pod}?port=80"), 403,
            forbidden),
        Row("A names B's super namespace", "A", get(f"/containerLogs/{b_super_ns}/{b_pod}/main"), 404, nf),
        Row("A exec with a pod uid segment", "A", post(f"/exec/default/{b_pod}/0000-1111/main?command=id"), 404, nf),
        Row("B logs of A's pod", "B", get("/containerLogs/default/web-a/main"), 404, nf),
        Row("A cert with B's key as CN", "A-claiming-B", get(f"/containerLogs/default/{b_pod}/main"), 404, nf),
        # --- non-tenant super namespaces (pods there are stamped as A's) ----------------------
        Row("A logs in super kube-system", "A", get(f"/containerLogs/kube-system/{sys_pod}/main"), 404, nf),
        Row("A exec in super kube-system", "A",
            post(f"/exec/kube-system/{sys_pod}/main?command=id&output=1"), 404, nf),
        Row("A logs in super default", "A", get(f"/containerLogs/default/{def_pod}/main"), 404, nf),
        Row("A port-forward in super default", "A", post(f"/portForward/default/{def_pod}?port=80"), 404, nf),
        # --- who is calling -----------------------------------------------------------------
        Row("no client certificate", "none", get("/containerLogs/default/web-a/main"), TLS_REFUSED),
        Row("unknown CA with A's CA name", "lookalike-ca", get("/containerLogs/default/web-a/main"), TLS_REFUSED),
        Row("self-signed with A's key as CN", "self-signed", get("/containerLogs/default/web-a/main"),
            TLS_REFUSED),
        Row("expired cert from A's CA", "expired", get("/containerLogs/default/web-a/main"), TLS_REFUSED),
        Row("not-yet-valid cert from A's CA", "not-yet-valid", get("/containerLogs/default/web-a/main"),
            TLS_REFUSED),
        Row("A's serving cert (no clientAuth)", "server-only", get("/containerLogs/default/web-a/main"),
            TLS_REFUSED),
        Row("leaf of a sub-CA of A's CA", "sub-ca", get("/containerLogs/default/web-a/main"), 403, forbidden),
        # --- node-wide kubelet routes -------------------------------------------------------
        *(Row(f"node-wide {path}", "A", get(path), 403, node_wide(path.split("/")[1])) for path in (
            "/configz", "/pods", "/runningpods/", "/spec/", "/metrics", "/metrics/cadvisor",
            "/debug/pprof/", "/stats/summary", "/logs/", "/healthz", "/checkpoint/default/web-a/main",
            "/attachPod/default/web-a/main",
        )),
        Row("kubelet /run (no super subresource)", "A", post("/run/default/web-a/main?cmd=id"), 404,
            b"run is not supported\n"),
        Row("unknown route", "A", get("/containerLog/default/web-a/main"), 404, b"not found\n"),
        # --- paths that try to leave the mapped namespace ----------------------------------
        Row("dot-dot segment", "A", get(f"/containerLogs/default/../kube-system/{sys_pod}/main"), 400, malformed),
        Row("encoded dot-dot", "A", get(f"/containerLogs/%2e%2e/kube-system/{sys_pod}/main"), 400, malformed),
        Row("encoded slash in namespace", "A", get(f"/containerLogs/x%2Fkube-system/{sys_pod}/main"), 400,
            malformed),
        Row("encoded slash in pod", "A", get("/containerLogs/default/web-a%2F..%2F..%2Fpods/main"), 400,
            malformed),
        Row("double slash at the start", "A", get("//containerLogs/default/web-a/main"), 400, malformed),
        Row("double slash inside", "A", get(f"/containerLogs//kube-system/{sys_pod}/main"), 400, malformed),
        Row("trailing slash", "A", get("/containerLogs/default/web-a/main/"), 400, malformed),
        Row("backslash", "A", get("/containerLogs/default/web-a\\..\\main"), 400, malformed),
        Row("semicolon parameter", "A", get("/containerLogs/default;ns=kube-system/web-a/main"), 400,
            malformed),
        Row("upper-case namespace", "A", get("/containerLogs/Kube-System/web-a/main"), 400,
            b"invalid namespace name\n"),
        Row("64-character namespace", "A", get(f"/containerLogs/{'n' * 64}/web-a/main"), 400,
            b"invalid namespace name\n"),
        Row("pod name with a double dot", "A", get("/containerLogs/default/web..a/main"), 400,
            b"invalid pod name\n"),
        Row("path over 1 KiB", "A", get(f"/containerLogs/default/{'p' * 1100}/main"), 400, malformed),
        Row("target over 16 KiB", "A", get("/containerLogs/default/web-a/main?x=" + "a" * 17000), 414,
            b"request target too long\n"),
        Row("query with 300 fields", "A", get("/containerLogs/default/web-a/main?" + "&".join(["a=1"] * 300)),
            400, b"malformed query\n"),
        Row("bad log flag", "A", get("/containerLogs/default/web-a/main?follow=maybe"), 400,
            b"invalid value for follow\n"),
        Row("port 0", "A", post("/portForward/default/web-a?port=0"), 400, b"invalid port\n"),
        # --- methods -------------------------------------------------------------------------
        Row("DELETE on logs", "A", request("DELETE", "/containerLogs/default/web-a/main"), 405,
            b"method not allowed\n"),
        Row("POST on logs", "A", post("/containerLogs/default/web-a/main"), 405, b"method not allowed\n"),
        Row("PUT on exec", "A", request("PUT", "/exec/default/web-a/main?command=id"), 405,
            b"method not allowed\n"),
        Row("PATCH on port-forward", "A", request("PATCH", "/portForward/default/web-a"), 405,
            b"method not allowed\n"),
        # --- HTTP framing ----------------------------------------------------------------------
        Row("absolute-form target", "A",
            get(f"https://127.0.0.1:{bed.port}/containerLogs/default/{b_pod}/main"), 400, malformed),
        Row("asterisk-form target", "A", request("OPTIONS", "*"), 400, malformed),
        Row("CONNECT authority-form", "A", request("CONNECT", "127.0.0.1:443"), 400, malformed),
        Row("HTTP/1.0 for B's pod", "A", get(f"/containerLogs/default/{b_pod}/main", version="1.0"), 404, nf),
        Row("HTTP/1.1 without Host", "A", b"GET /containerLogs/default/web-a/main HTTP/1.1\r\n\r\n", 400, bad),
        Row("HTTP/2 preface", "A", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        Row("request line of 200 KiB", "A", get(f"/containerLogs/x-default/{b_pod}/main?x=" + "a" * 200000), 431),
        Row("header of 200 KiB", "A", get(f"/containerLogs/x-default/{b_pod}/main",
                                          headers=b"X-Pad: " + b"a" * 200000 + b"\r\n"), 431),
        Row("30,000 small headers", "A", get(f"/containerLogs/x-default/{b_pod}/main",
                                             headers=b"X-A: b\r\n" * 30000), 431),
        Row("NUL byte in target", "A", get(b"/containerLogs/default/web-a\x00/main"), 400, bad),
        Row("Content-Length and chunked", "A",
            post(f"/exec/default/{b_pod}/main?command=id",
                 headers=b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 400, bad),
        Row("Content-Length and chunked, own pod", "A",
            post("/exec/default/web-a/main?command=id",
                 headers=b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 400, bad),
        Row("smuggled second request", "A",
            post(f"/exec/default/{b_pod}/main?command=id", headers=b"Content-Length: 0\r\n")
            + get(f"/containerLogs/x-default/{b_pod}/main"), 404, nf),
        Row("Impersonate-User header", "A", get(f"/containerLogs/default/{b_pod}/main",
                                                headers=b"Impersonate-User: system:admin\r\n"), 404, nf),
    ]
    return table


@pytest.fixture
async def bed(env: syncing.Env, super_cluster: SuperCluster, tmp_path: Path) -> AsyncIterator[Bed]:
    sx = await env.start()
    a = await env.tenant(sx, "pa")
    b = await keyed_tenant(env, sx, "pb", key=f"{a.key}-x")
    assert b.id.super_namespace("default") == a.id.super_namespace("x-default")
    cas = server.TenantCAs()
    for t in (a, b):
        cas.set(t.key, t.client.creds.ca_pem)
    stats, lookups = server.ProxyStatistics(), []

    async def lookup(ns: str, name: str) -> dict[str, Any] | None:
        lookups.append((ns, name))
        return sx.super_cache("pod").get(name, ns)  # type: ignore[no-any-return]

    cert, key = await trio.to_thread.run_sync(proxy_serving_cert, tmp_path)
    upstream = await trio.to_thread.run_sync(
        lambda: forward.upstream_from_credentials(env.superc.creds, mode="super-apiserver"))
    relay = await env.nursery.start(_counting_relay, upstream.host, upstream.port)
    upstream = dataclasses.replace(upstream, host="127.0.0.1", port=relay.port,
                                   server_hostname=upstream.server_hostname or upstream.host)
    listeners = await env.nursery.start(functools.partial(
        server.serve, host="127.0.0.1", port=0, server_cert_pem=cert, server_key_pem=key, cas=cas,
        upstream=upstream, lookup_pod=lookup, statistics=stats, limits=LIMITS))
    foreign = {ns: await _foreign_pod(env, super_cluster, a, ns) for ns in ("kube-system", "default")}
    for t, name in ((a, "web-a"), (b, "web-b")):
        await syncing.wait_object(t.client, resources.SERVICEACCOUNTS, "default", namespace="default")
        await t.client.create(resources.PODS, syncing.pod_manifest(name), namespace="default")
    for t, name in ((a, "web-a"), (b, "web-b")):
        await syncing.wait_object(env.superc, resources.PODS, name, namespace=t.id.super_namespace("default"),
                                  where=lambda p: p.get("status", {}).get("phase") == "Running", timeout=90)
    yield Bed(listeners[0].socket.getsockname()[1], env.superc, a, b, stats, lookups, foreign, relay)


@dataclasses.dataclass
class Relay:
    """A TCP relay in front of the super apiserver: counts what the proxy sends upstream."""

    port: int = 0
    connections: int = 0


async def _counting_relay(host: str, port: int, *, task_status: trio.TaskStatus[Relay]) -> None:
    relay = Relay()

    async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await src.receive_some(65536):
                await dst.send_all(data)
            await dst.send_eof()

    async def handle(down: trio.SocketStream) -> None:
        relay.connections += 1
        async with down, await trio.open_tcp_stream(host, port) as up, trio.open_nursery() as n:
            n.start_soon(pump, down, up)
            n.start_soon(pump, up, down)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    relay.port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(relay)


async def _foreign_pod(env: syncing.Env, sc: SuperCluster, a: syncing.BedTenant, ns: str) -> str:
    """A Running super pod in non-tenant namespace `ns` whose tenancy stamps claim tenant A."""
    name = f"sec-{uuid.uuid4().hex[:8]}"
    body = syncing.pod_manifest(name)
    body["metadata"].update(
        labels={naming.LABEL_VC_NAME: a.id.vc_name, naming.LABEL_VC_NAMESPACE: a.id.vc_namespace},
        annotations={naming.ANNOTATION_CLUSTER: a.key, naming.ANNOTATION_NAMESPACE: ns})
    body["spec"]["nodeName"] = sc.nodes[0]
    await env.superc.create(resources.PODS, body, namespace=ns)

    async def remove() -> None:
        with trio.move_on_after(10, shield=True):
            try:
                await env.superc.delete(resources.PODS, name, namespace=ns, grace_period_seconds=0)
            except errors.NotFound:
                pass

    env.stack.push_async_callback(remove)
    return name


def _verdict(row: Row, got: Answer, marker: str) -> str | None:
    """What is wrong with `got` for `row`, or None."""
    if got.status != row.expect:
        return f"expected {row.expect}, got {got.status}: {got.head[:120]!r} {got.body[:120]!r}"
    if marker.encode() in got.head + got.body:
        return f"the pod log marker came back ({got.status})"
    if row.body is not None and got.body != row.body:
        return f"expected body {row.body!r}, got {got.body[:200]!r}"
    return None


@syncing.deadline(240)
async def test_crafted_requests_are_refused(bed: Bed, super_cluster: SuperCluster, tally: Tally) -> None:
    """Every row of the table gets its refusal (status or TLS failure), none returns pod data,
    none reaches the super apiserver, while each tenant still reads its own pod's log."""
    marker = f"sec-{uuid.uuid4().hex}"
    append_pod_log(super_cluster.kwok_log, marker)
    who = identities(bed)
    contexts = {name: client_context(ck, chain=chain) for name, (ck, chain) in who.items()}
    table = rows(bed)
    assert len(table) >= 20
    problems: list[str] = []
    assert 0 == bed.relay.connections
    for row in table:
        got = await exchange(bed.port, contexts[row.who], row.raw)
        if (why := _verdict(row, got, marker)) is not None:
            problems.append(f"{row.id}: {why}")
    tally.add("proxy: cross-tenant/unauthenticated/malformed requests (tried / refused)",
              tried=len(table), held=len(table) - len(problems))
    assert [] == problems, "\n".join(problems)

    # Positive controls: the same path works for the owner and shows the marker.
    for name, pod in (("A", "web-a"), ("B", "web-b")):
        got = await exchange(bed.port, contexts[name], request("GET", f"/containerLogs/default/{pod}/main"))
        assert 200 == got.status, got
        assert marker.encode() in got.body
    # Exactly the two positive requests went upstream: every other answer was local.
    assert 2 == bed.relay.connections
    assert sum(r.expect == TLS_REFUSED for r in table) == bed.stats.handshake_failures
    # Lookups only ever named the callers' own mapped namespaces (never kube-system/default).
    looked = {ns for ns, _ in bed.lookups}
    assert all(ns.startswith(bed.a.key + "-") for ns in looked), looked
    assert not looked & {"kube-system", "default"}
    await _greedy_tenant_cannot_starve_logs(bed, contexts, marker, tally)
    # The foreign pods are untouched by the syncer that served A meanwhile.
    for ns, pod in bed.foreign.items():
        obj = await bed.superc.get(resources.PODS, pod, namespace=ns)
        assert obj["metadata"].get("deletionTimestamp") is None


async def _greedy_tenant_cannot_starve_logs(
    bed: Bed, contexts: dict[str, ssl.SSLContext], marker: str, tally: Tally
) -> None:
    """Tenant A opens every connection the proxy takes and sends request bodies it never
    finishes: A keeps its per-tenant share, its extra connections get 429, and tenant B still
    reads its pod's log (the marker) from the super apiserver meanwhile."""
    slow = request("POST", "/pods", headers=b"Content-Length: 100000\r\n") + b"x" * 10
    extra = LIMITS.max_connections - LIMITS.max_connections_per_tenant
    answers: list[bytes] = []
    extra_answered = trio.Event()
    streams: list[trio.SSLStream[trio.SocketStream]] = []

    async def read_answer(stream: trio.SSLStream[trio.SocketStream]) -> None:
        data = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(65536):
                data += chunk
        answers.append(data)
        if len(answers) == extra:
            extra_answered.set()

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(LIMITS.max_connections):
                stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", bed.port), contexts["A"],
                                        server_hostname="localhost")
                streams.append(stream)
                await stream.do_handshake()
                await stream.send_all(slow)
                nursery.start_soon(read_answer, stream)
            got = await exchange(bed.port, contexts["B"], request("GET", "/containerLogs/default/web-b/main"))
            a_open = bed.stats.tenant_connections[bed.a.key]
            with trio.fail_after(30):
                await extra_answered.wait()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for stream in streams:
                await trio.aclose_forcefully(stream)
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 429 ") and b"\r\nretry-after: 1\r\n" in a.lower()]
    tally.add("proxy: a greedy tenant's connections beyond its limit (tried / answered 429)",
              tried=extra, held=len(refused))
    assert 200 == got.status, got
    assert marker.encode() in got.body
    assert LIMITS.max_connections_per_tenant == a_open  # B got in while A held its share
    assert extra == len(refused), answers
    assert extra == bed.stats.refused_connections[bed.a.key]
