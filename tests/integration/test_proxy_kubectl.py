"""Real kubectl against a tenant: logs, logs -f, exec, attach and port-forward via the proxy.

Path of every request: kubectl → tenant kube-apiserver → virtual node address (the
proxy, authenticated by the tenant apiserver's kubelet-client certificate) → super
kube-apiserver `pods/{log,exec,attach,portforward}` → kwok (the fake kubelet).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.app import proxy_serving_cert
from appliance.kube import resources
from appliance.proxy import forward, server
from tests.integration import syncing
from tests.testbed import (
    SuperCluster,
    TenantFactory,
    append_pod_log,
    assert_logs_follow,
    run_kubectl,
    wait_for,
)

POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  containers: [{{name: main, image: busybox}}]
"""


@pytest.fixture
async def slice_env(
    super_cluster: SuperCluster, tenant_factory: TenantFactory, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    """Syncer + proxy (super-apiserver mode) + two imported tenants."""
    await syncing.apply_crds(super_cluster)
    async with contextlib.AsyncExitStack() as stack:
        superc = await stack.enter_async_context(syncing.super_client(super_cluster))
        async with trio.open_nursery() as nursery:
            cas = server.TenantCAs()
            holder: dict[str, Any] = {}

            async def lookup(ns: str, name: str) -> dict[str, Any] | None:
                return holder["sx"].super_cache("pod").get(name, ns)  # type: ignore[no-any-return]

            cert, key = await trio.to_thread.run_sync(proxy_serving_cert, tmp_path)
            upstream = await trio.to_thread.run_sync(
                lambda: forward.upstream_from_credentials(superc.creds, mode="super-apiserver"))
            listeners = await nursery.start(lambda task_status: server.serve(
                host="127.0.0.1", port=0, server_cert_pem=cert, server_key_pem=key, cas=cas,
                upstream=upstream, lookup_pod=lookup, task_status=task_status))
            port = listeners[0].socket.getsockname()[1]
            from appliance.metrics import Registry
            from appliance.syncer import runtime

            sx = runtime.Syncer(
                super_client=superc, registry=Registry(),
                settings=runtime.SyncerSettings(vnode_address="127.0.0.1", vnode_port=port, patrol_period=3600),
                on_register=lambda tid, creds: cas.set(tid.key, creds.ca_pem),
                on_unregister=cas.remove,
            )
            holder["sx"] = sx
            await nursery.start(sx.run)
            await syncing.start_supervisor(nursery, sx)
            a = await syncing.synced_tenant(sx, superc, tenant_factory, "pa", stack)
            b = await syncing.synced_tenant(sx, superc, tenant_factory, "pb", stack)
            yield {"sx": sx, "superc": superc, "a": a, "b": b, "port": port, "cas": cas}
            nursery.cancel_scope.cancel()


async def _running_tenant_pod(sc: SuperCluster, t: syncing.BedTenant, name: str) -> dict[str, Any]:
    async def default_sa() -> bool:
        try:
            await t.client.get(resources.SERVICEACCOUNTS, "default", namespace="default")
        except Exception:
            return False
        return True

    await wait_for(default_sa, timeout=60, what="tenant KCM created default/default")
    await run_kubectl(sc.kubectl, t.kubeconfig, "apply", "-f", "-", stdin=POD.format(name=name).encode())

    async def running() -> dict[str, Any] | None:
        pod = await t.client.get(resources.PODS, name, namespace="default")
        ok = pod.get("status", {}).get("phase") == "Running" and pod["spec"].get("nodeName")
        return pod if ok else None

    return await wait_for(running, timeout=90, what=f"tenant pod {name} Running")  # type: ignore[return-value]


async def test_kubectl_logs_and_follow_through_the_proxy(super_cluster: SuperCluster, slice_env: dict) -> None:
    """`kubectl logs` and `logs -f` in a tenant stream the container log through the proxy."""
    a = slice_env["a"]
    name = f"logs-{uuid.uuid4().hex[:6]}"
    await _running_tenant_pod(super_cluster, a, name)
    marker = uuid.uuid4().hex
    append_pod_log(super_cluster.kwok_log, f"{marker}-1")
    out = await run_kubectl(super_cluster.kubectl, a.kubeconfig, "logs", name)
    assert f"{marker}-1" in out.stdout

    await assert_logs_follow(super_cluster.kubectl, a.kubeconfig, name,
                             kwok_log=super_cluster.kwok_log, seen_line=f"{marker}-1")
    assert a.key in slice_env["cas"].cluster_keys()  # the syncer registered the tenant's CA


async def test_kubectl_exec_websocket_and_spdy_through_the_proxy(super_cluster: SuperCluster, slice_env: dict) -> None:
    """`kubectl exec` works over WebSocket (default) and SPDY (forced) through the proxy."""
    a = slice_env["a"]
    name = f"exec-{uuid.uuid4().hex[:6]}"
    await _running_tenant_pod(super_cluster, a, name)
    token = uuid.uuid4().hex
    for env in ({}, {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}):
        out = await run_kubectl(super_cluster.kubectl, a.kubeconfig, "exec", name, "--", "echo", token, env=env)
        assert token == out.stdout.strip()


async def test_kubectl_exec_stdin_output_survives_an_early_exit(super_cluster: SuperCluster, slice_env: dict) -> None:
    """`exec -i` with a command that exits before stdin ends (kwok never closes a command's
    stdin, so `head -c` is the way to read it there): the upstream resets the connection while
    kubectl still sends, and the output must reach kubectl anyway, in every run. (This lost
    the output in about one run in ten before the proxy kept reading after a failed write.)

    At most one run in the 50 may still come back empty (rc 0, no output, no error): kwok's
    exec never reads the stdin it is sent, so when its command ends it closes a socket with
    unread data, which TCP turns into a reset that can take the output with it before any
    relay reads it (seen once in CI at 39a4c69). The old bug lost about 5 of 50 (this fails
    then with 97 % probability); the real-node test (`realnode/test_streams.py`) checks
    `exec -i` byte for byte in every one of 100 runs through containerd, with no allowance."""
    a = slice_env["a"]
    name = f"stdin-{uuid.uuid4().hex[:6]}"
    await _running_tenant_pod(super_cluster, a, name)
    failures = []
    for env in ({}, {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}):
        for run in range(25):
            out = await run_kubectl(super_cluster.kubectl, a.kubeconfig, "exec", "-i", name, "--",
                                    "sh", "-c", "head -c 65536 | wc -c", stdin=b"x" * 65536, env=env, check=False)
            if out.stdout.strip() != "65536":
                failures.append((env, run, out.returncode, out.stdout, out.stderr[-200:]))
    assert len(failures) <= 1, failures
    assert all(rc == 0 and not stdout.strip() and not stderr.strip() for _, _, rc, stdout, stderr in failures), failures


async def test_kubectl_port_forward_round_trip_through_the_proxy(super_cluster: SuperCluster, slice_env: dict) -> None:
    """`kubectl port-forward` carries bytes both ways (kwok echoes them)."""
    a = slice_env["a"]
    name = f"pf-{uuid.uuid4().hex[:6]}"
    await _running_tenant_pod(super_cluster, a, name)
    from appliance.controlplane.cluster import free_port

    local = free_port()
    proc = await trio.lowlevel.open_process(
        [str(super_cluster.kubectl), f"--kubeconfig={a.kubeconfig}", "port-forward", name,
         f"{local}:8080", "--address=127.0.0.1"], stdout=-1, stderr=-1)
    try:
        assert proc.stdout is not None
        with trio.fail_after(30):
            banner = b""
            while b"Forwarding from" not in banner:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "port-forward exited early"
                banner += chunk
            stream = await trio.open_tcp_stream("127.0.0.1", local)
            payload = uuid.uuid4().bytes * 64
            await stream.send_all(payload)
            got = b""
            while len(got) < len(payload):
                chunk = await stream.receive_some(65536)
                assert chunk, "stream closed before the echo came back"
                got += chunk
            await stream.aclose()
        assert payload == got
    finally:
        proc.kill()
        await proc.wait()


async def test_tenant_cannot_reach_another_tenants_pod(super_cluster: SuperCluster, slice_env: dict) -> None:
    """Tenant A's kubelet-client certificate asking for tenant B's pod gets 403; no cert is refused."""
    a, b = slice_env["a"], slice_env["b"]
    name = f"iso-{uuid.uuid4().hex[:6]}"
    await _running_tenant_pod(super_cluster, b, name)
    import httpx

    with tempfile.TemporaryDirectory() as d:
        crt, key = Path(d) / "c.crt", Path(d) / "c.key"
        crt.write_bytes((a.cp.pki_dir / "kubelet-client.crt").read_bytes())
        key.write_bytes((a.cp.pki_dir / "kubelet-client.key").read_bytes())
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(crt), str(key))
    url = f"https://127.0.0.1:{slice_env['port']}/containerLogs/default/{name}/main"
    async with httpx.AsyncClient(verify=ctx, trust_env=False, timeout=10) as c:
        r = await c.get(url)
    # A's view of namespace "default" maps to A's super namespace, where B's pod is not:
    assert r.status_code in (403, 404)
    assert name not in r.text
    plain = ssl.create_default_context()
    plain.check_hostname = False
    plain.verify_mode = ssl.CERT_NONE
    async with httpx.AsyncClient(verify=plain, trust_env=False, timeout=10) as c:
        with pytest.raises(httpx.HTTPError):
            await c.get(url)
    pods = json.loads((await run_kubectl(super_cluster.kubectl, b.kubeconfig, "get", "pods", "-o", "json")).stdout)
    assert any(p["metadata"]["name"] == name for p in pods["items"])


async def test_kubectl_attach_streams_through_the_proxy(super_cluster: SuperCluster, slice_env: dict) -> None:
    """`kubectl attach` in a tenant receives output the container writes after attaching."""
    a = slice_env["a"]
    name = f"att-{uuid.uuid4().hex[:6]}"
    await _running_tenant_pod(super_cluster, a, name)
    marker = uuid.uuid4().hex
    proc = await trio.lowlevel.open_process(
        [str(super_cluster.kubectl), f"--kubeconfig={a.kubeconfig}", "attach", name], stdout=-1, stderr=-1)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        with trio.fail_after(30):
            banner = b""
            while b"If you don't see a command prompt" not in banner:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, "kubectl attach exited early"
                banner += chunk
            seen = b""
            while marker.encode() not in seen:
                # Written until seen: the banner may precede the upstream attach by a moment.
                append_pod_log(super_cluster.kwok_log, marker)
                with trio.move_on_after(1):
                    seen += await proc.stdout.receive_some(65536)
    finally:
        proc.kill()
        await proc.wait()
