"""logs, logs -f, exec (WebSocket and SPDY), exec -i, attach and port-forward on real containers.

Path: tenant kubectl → tenant kube-apiserver → the appliance's proxy (virtual node address)
→ the super apiserver's pod subresources, or the node's kubelet directly (`any_upstream`
runs each test in both modes) → containerd's streaming server → the container.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import httpx
import trio

from appliance.controlplane.cluster import free_port
from tests.realnode import nodebed
from tests.testbed import wait_for

STDIN_RUNS = 50
STDIN_BYTES = 64 * 1024


async def _sleeper(env: nodebed.NodeEnv, prefix: str, script: str = "sleep 3600", **spec: object) -> tuple[nodebed.NodeBedTenant, str]:
    t = env.tenant()
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await nodebed.apply(env, t, nodebed.pod(name, command=["sh", "-c", script], **spec))
    await nodebed.wait_running(env, t, name)
    return t, name


async def test_logs_and_logs_follow_stream_the_containers_output(any_upstream: nodebed.NodeEnv) -> None:
    """`kubectl logs` shows what the container printed; `logs -f` keeps streaming new lines."""
    env = any_upstream
    t, name = await _sleeper(env, "ticker", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.5; done")

    async def some_ticks() -> str | None:
        out = (await env.kubectl_in(t, "logs", name)).stdout
        return out if "tick-1\n" in out else None

    await wait_for(some_ticks, timeout=30, what="first log lines")
    proc = await trio.lowlevel.open_process(
        [str(env.kubectl), f"--kubeconfig={t.kubeconfig}", "logs", "-f", "--tail=1", name], stdout=-1)
    assert proc.stdout is not None
    try:
        seen = b""
        with trio.fail_after(30):
            while seen.count(b"tick-") < 4:  # lines written after the stream opened arrive live
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, f"logs -f ended early: {seen!r}"
                seen += chunk
    finally:
        proc.kill()
        await proc.wait()
    numbers = [int(x.split(b"-")[1]) for x in seen.split() if x.startswith(b"tick-")]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


async def test_exec_over_websocket_and_spdy_runs_in_the_container(any_upstream: nodebed.NodeEnv) -> None:
    """`kubectl exec` reaches the container (its hostname, its files, its exit code)."""
    env = any_upstream
    t, name = await _sleeper(env, "exec", "echo inside > /tmp/mark; sleep 3600")
    for websocket in (True, False):
        out = await nodebed.exec_in(env, t, name, "sh", "-c", "hostname; cat /tmp/mark", websocket=websocket)
        assert out.stdout.split() == [name, "inside"]
        failed = await nodebed.exec_in(env, t, name, "sh", "-c", "exit 3", websocket=websocket, check=False)
        assert failed.returncode != 0
        assert "exit code 3" in failed.stderr


async def test_exec_stdin_arrives_byte_for_byte_in_every_run(any_upstream: nodebed.NodeEnv) -> None:
    """64 KiB of stdin through `kubectl exec -i` reach the container intact, 50 runs per protocol."""
    env = any_upstream
    t, name = await _sleeper(env, "stdin")
    failures: list[str] = []
    for websocket in (True, False):
        for run in range(STDIN_RUNS):
            data = os.urandom(STDIN_BYTES)
            out = await nodebed.exec_in(env, t, name, "sh", "-c", "cat > /tmp/in; sha256sum < /tmp/in; wc -c < /tmp/in",
                                        stdin=data,
                                        websocket=websocket, check=False)
            want = f"{hashlib.sha256(data).hexdigest()}  -\n{STDIN_BYTES}"
            if out.returncode != 0 or out.stdout.split() != want.split():
                failures.append(f"{'websocket' if websocket else 'spdy'} run {run}: rc={out.returncode} "
                                f"out={out.stdout.strip()!r} err={out.stderr.strip()[:200]!r}")
    assert not failures, f"{len(failures)} of {2 * STDIN_RUNS} runs lost stdin:\n" + "\n".join(failures)


async def test_attach_reads_stdin_and_streams_output(any_upstream: nodebed.NodeEnv) -> None:
    """`kubectl attach -i` feeds the container's stdin and shows what it answers."""
    env = any_upstream
    t, name = await _sleeper(env, "attach", "while read line; do echo got-$line; done; echo stdin-closed",
                             container={"stdin": True, "stdinOnce": True}, restartPolicy="Never")
    token = uuid.uuid4().hex
    tries: list[str] = []
    logs = ""
    for _ in range(3):
        # A refused attach (rc != 0 before any stdin reached the container) leaves stdinOnce
        # unspent, so it is tried again; one that delivered anything is judged as it is.
        out = await env.kubectl_in(t, "attach", "-i", name, stdin=f"{token}\n".encode(), check=False)
        tries.append(f"rc={out.returncode} out={out.stdout[-200:]!r} err={out.stderr[-300:]!r}")
        logs = (await env.kubectl_in(t, "logs", name)).stdout
        if out.returncode == 0 or f"got-{token}" in logs:
            break

    async def answered() -> str | None:
        # restartPolicy Never: a container that saw stdin close exits and keeps its log,
        # where the default Always would restart it into an empty log.
        if "stdin-closed" in logs:
            return logs
        now = (await env.kubectl_in(t, "logs", name)).stdout
        return now if "stdin-closed" in now else None

    logs = str(await wait_for(answered, timeout=30,
                              what=f"the attached process to read its stdin (attach: {tries}; logs: {logs[-300:]!r})"))
    assert f"got-{token}" in logs
    assert f"got-{token}" in out.stdout or out.returncode == 0


async def test_port_forward_reaches_a_server_in_the_container(any_upstream: nodebed.NodeEnv) -> None:
    """`kubectl port-forward` carries an HTTP request to busybox httpd in the Pod and back."""
    env = any_upstream
    token = uuid.uuid4().hex
    t, name = await _sleeper(env, "pf", f"mkdir -p /www && echo {token} > /www/index.html && "
                                        "exec httpd -f -p 8080 -h /www")
    local = free_port()
    proc = await trio.lowlevel.open_process(
        [str(env.kubectl), f"--kubeconfig={t.kubeconfig}", "port-forward", name, f"{local}:8080"], stdout=-1)
    try:
        async def fetched() -> str | None:
            try:
                async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
                    r = await c.get(f"http://127.0.0.1:{local}/index.html")
            except httpx.HTTPError:
                return None
            return r.text if r.status_code == 200 else None

        body = await wait_for(fetched, timeout=30, what="a response through port-forward", interval=0.3)
        assert str(body).strip() == token
        for _ in range(3):  # several requests over the same forwarding session
            assert str(await fetched()).strip() == token
    finally:
        proc.kill()
        await proc.wait()
