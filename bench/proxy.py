"""Proxy: log streaming throughput and exec round trips through the kubelet proxy vs direct.

One tenant pod runs on a kwok node; kwok serves every pod's log from one file (CRI format),
which is grown to `--log-mb` MiB first. Three paths to the same bytes:

  direct  this process → super kube-apiserver `pods/log`, `pods/exec` → kwok
  proxy   this process → the appliance's kubelet proxy (TLS, the tenant apiserver's
          kubelet-client certificate, as a tenant apiserver calls it) → super apiserver → kwok
  tenant  this process → tenant kube-apiserver → virtual node = the proxy → super → kwok
          (what `kubectl logs/exec` in a tenant does; for reference)

Logs: one full GET of the log per try, `--repeat` tries per path, interleaved; MB/s on the
received body bytes; every path must deliver the same byte count. Exec (WebSocket,
v5.channel.k8s.io): `--exec-n` runs of `echo` per path, interleaved, timed from connect to
the status frame; and one interactive session per path echoing `--exec-n` stdin lines, timed
per line. The proxy runs in the syncer host process (`bench.host --proxy`), as in the appliance.

  proxy_log_ratio       median proxy MB/s ÷ median direct MB/s
  exec_rtt_overhead_ms  median proxy exec − median direct exec (ms)
  exec_msg_overhead_ms  median proxy stdin→stdout echo − median direct echo (ms)
"""

from __future__ import annotations

import argparse
import datetime as dt
import ssl
import statistics
import time
import urllib.parse
from pathlib import Path

import httpx
import trio
from trio_websocket import open_websocket_url

from appliance.controlplane import cluster
from bench import clocks, cpu, load, report, testbed, verification

NS = "bench"
POD = "logger"
PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.parser("proxy", __doc__.splitlines()[0])
    p.add_argument("--log-mb", type=float, default=64.0, help="size of the log file kwok serves (MiB)")
    p.add_argument("--line-bytes", type=int, default=200, help="payload bytes per log line")
    p.add_argument("--repeat", type=int, default=5, help="log downloads per path")
    p.add_argument("--exec-n", type=int, default=30, help="exec runs / echoed lines per path")
    p.set_defaults(nodes=1)
    return p.parse_args(argv)


def write_log(path: Path, mib: float, line_bytes: int) -> int:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    payload = ("x" * 64 + "0123456789abcdef" * 64)[: max(1, line_bytes)]
    line = f"{stamp} stdout F {payload}\n".encode()
    count = max(1, int(mib * 2**20) // len(line))
    block = line * 1024
    with open(path, "wb") as f:
        for _ in range(count // 1024):
            f.write(block)
        f.write(line * (count % 1024))
    return count


def client_context(crt: Path, key: Path, *, verify: ssl.SSLContext | None = None) -> ssl.SSLContext:
    if verify is not None:
        ctx = verify
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(crt), str(key))
    return ctx


def tenant_context(t: testbed.BedTenant) -> ssl.SSLContext:
    """What a tenant apiserver presents to a kubelet: its kubelet-client certificate."""
    return client_context(t.cp.pki_dir / "kubelet-client.crt", t.cp.pki_dir / "kubelet-client.key")


async def download(ctx: ssl.SSLContext, url: str) -> tuple[int, float]:
    async with httpx.AsyncClient(verify=ctx, trust_env=False, timeout=httpx.Timeout(60, read=600)) as c:
        t0 = time.perf_counter()
        n = 0
        async with c.stream("GET", url) as r:
            if r.status_code != 200:
                raise report.Misbehaved(f"GET {url}: HTTP {r.status_code} {(await r.aread())[:200]!r}")
            async for chunk in r.aiter_raw():
                n += len(chunk)
        return n, time.perf_counter() - t0


async def exec_once(ctx: ssl.SSLContext, url: str, token: str) -> float:
    t0 = time.perf_counter()
    out = b""
    async with open_websocket_url(url, ssl_context=ctx, subprotocols=PROTOCOLS) as ws:
        while True:
            msg = await ws.get_message()
            data = msg if isinstance(msg, bytes) else msg.encode()
            if not data:
                continue
            if data[0] == 1:
                out += data[1:]
            elif data[0] == 3:  # the status frame ends the exec
                break
        elapsed = time.perf_counter() - t0
    if token.encode() not in out:
        raise report.Misbehaved(f"exec {url}: expected {token!r} on stdout, got {out[:200]!r}")
    return elapsed


async def exec_session(ctx: ssl.SSLContext, url: str, n: int) -> list[float]:
    """One exec of a shell that echoes `n` stdin lines; the time of each line's round trip."""
    rtts: list[float] = []
    async with open_websocket_url(url, ssl_context=ctx, subprotocols=PROTOCOLS) as ws:
        buf = b""
        for i in range(n):
            token = f"ping-{i:04d}".encode()
            t0 = time.perf_counter()
            await ws.send_message(b"\x00" + token + b"\n")
            with trio.fail_after(30):
                while token not in buf:
                    msg = await ws.get_message()
                    data = msg if isinstance(msg, bytes) else msg.encode()
                    if data and data[0] == 1:
                        buf += data[1:]
            rtts.append(time.perf_counter() - t0)
            buf = buf.split(token, 1)[1]
        with trio.move_on_after(10):  # the shell exits after n lines: read up to the status frame
            while True:
                msg = await ws.get_message()
                if isinstance(msg, bytes) and msg and msg[0] == 3:
                    break
    return rtts


def exec_query(kubelet: bool, argv: list[str], *, stdin: bool) -> str:
    fields: list[tuple[str, str]] = [("command", a) for a in argv]
    if kubelet:  # kubelet API spelling, as a tenant apiserver sends it to a node
        fields += [("output", "1"), ("error", "1")] + ([("input", "1")] if stdin else [])
    else:
        fields += [("stdout", "true"), ("stderr", "true"), ("container", "main")] + \
                  ([("stdin", "true")] if stdin else [])
    return urllib.parse.urlencode(fields, quote_via=urllib.parse.quote)


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    problems: list[str] = []
    async with testbed.open_bed(args) as bed:
        (t,) = await bed.add_tenants(["p0"])
        host = await bed.start_host(proxy=True)
        port = host.ready["proxy_port"]
        q = await host.call("wait_quiet", tenants=1, stable=0.5, timeout=300)
        if not q["ok"]:
            raise report.Misbehaved(f"the syncer did not register the tenant: {q}")
        await bed.tenant_namespace(t, NS)
        await load.create_one(t.client, NS, load.pod_body(POD))
        await verification.wait_exists(t.client, testbed.PODS, POD, NS, timeout=120,
                                 where=lambda p: clocks.phase(p) == "Running")
        sns = t.super_ns(NS)
        lines = await trio.to_thread.run_sync(write_log, bed.kwok_log, args.log_mb, args.line_bytes)
        file_bytes = bed.kwok_log.stat().st_size
        report.progress("log file: %d lines, %.1f MiB", lines, file_bytes / 2**20)

        super_pki = Path(bed.info["super"]["dir"]) / "pki"
        direct_ctx = await trio.to_thread.run_sync(cluster.admin_ssl_context, super_pki)
        tenant_admin_ctx = await trio.to_thread.run_sync(cluster.admin_ssl_context, t.cp.pki_dir)
        proxy_ctx = await trio.to_thread.run_sync(tenant_context, t)
        paths = {
            "direct": (direct_ctx, f"{bed.super_url}/api/v1/namespaces/{sns}/pods/{POD}/log?container=main"),
            "proxy": (proxy_ctx, f"https://127.0.0.1:{port}/containerLogs/{NS}/{POD}/main"),
            "tenant": (tenant_admin_ctx, f"{t.cp.url}/api/v1/namespaces/{NS}/pods/{POD}/log?container=main"),
        }
        logs: dict[str, list[tuple[int, float]]] = {k: [] for k in paths}
        log_cpu: dict[str, dict[str, float]] = {k: {} for k in paths}
        for _ in range(args.repeat):
            for name, (ctx, url) in paths.items():
                before = cpu.snapshot(bed)
                logs[name].append(await download(ctx, url))
                for comp, v in cpu.delta(before, cpu.snapshot(bed)).items():
                    log_cpu[name][comp] = log_cpu[name].get(comp, 0.0) + v
        sizes = {name: sorted({n for n, _ in runs}) for name, runs in logs.items()}
        if len({tuple(v) for v in sizes.values()}) != 1 or len(sizes["direct"]) != 1:
            problems.append(f"log paths delivered different byte counts: {sizes}")

        def ws(u: str) -> str:
            return "wss://" + u.removeprefix("https://")

        token = "bench-exec-token"
        exec_urls = {
            "direct": (direct_ctx, ws(f"{bed.super_url}/api/v1/namespaces/{sns}/pods/{POD}/exec?"
                                      + exec_query(False, ["echo", token], stdin=False))),
            "proxy": (proxy_ctx, ws(f"https://127.0.0.1:{port}/exec/{NS}/{POD}/main?"
                                    + exec_query(True, ["echo", token], stdin=False))),
            "tenant": (tenant_admin_ctx, ws(f"{t.cp.url}/api/v1/namespaces/{NS}/pods/{POD}/exec?"
                                            + exec_query(False, ["echo", token], stdin=False))),
        }
        execs: dict[str, list[float]] = {k: [] for k in exec_urls}
        for _ in range(args.exec_n):
            for name, (ctx, url) in exec_urls.items():
                execs[name].append(await exec_once(ctx, url, token))
        shell = ["sh", "-c", f'i=0; while [ "$i" -lt {args.exec_n} ] && read -r l; do echo "$l"; i=$((i+1)); done']
        session_urls = {
            "direct": (direct_ctx, ws(f"{bed.super_url}/api/v1/namespaces/{sns}/pods/{POD}/exec?"
                                      + exec_query(False, shell, stdin=True))),
            "proxy": (proxy_ctx, ws(f"https://127.0.0.1:{port}/exec/{NS}/{POD}/main?"
                                    + exec_query(True, shell, stdin=True))),
            "tenant": (tenant_admin_ctx, ws(f"{t.cp.url}/api/v1/namespaces/{NS}/pods/{POD}/exec?"
                                            + exec_query(False, shell, stdin=True))),
        }
        echoes: dict[str, list[float]] = {}
        for name, (ctx, url) in session_urls.items():
            echoes[name] = await exec_session(ctx, url, args.exec_n)
        problems += await verification.verify_synced(bed, [t], {t.key: {NS: {POD}}}, running=True)
        stats = await host.call("stats")

    def mbps(runs: list[tuple[int, float]]) -> list[float]:
        return [n / s / 1e6 for n, s in runs]

    rate = {k: statistics.median(mbps(v)) for k, v in logs.items()}
    ex = {k: statistics.median(v) * 1000 for k, v in execs.items()}
    echo = {k: statistics.median(v) * 1000 for k, v in echoes.items()}
    rows = []
    rows_cpu: list[str] = []
    for k in paths:
        r = mbps(logs[k])
        rows.append([k, sizes[k][0] / 2**20, rate[k], min(r), max(r), ex[k], report.percentile(execs[k], 90) * 1000,
                     echo[k], report.percentile(echoes[k], 90) * 1000])
    text = report.table(["path", "log_MiB", "log_MB/s", "min", "max", "exec_ms_p50", "exec_ms_p90",
                         "echo_ms_p50", "echo_ms_p90"], rows)
    ratio = rate["proxy"] / rate["direct"]
    for k in paths:
        total_mb = sum(n for n, _ in logs[k]) / 1e6
        secs = sum(x for _, x in logs[k])
        parts = ", ".join(f"{c} {v / total_mb * 1000:.1f}" for c, v in sorted(log_cpu[k].items(), key=lambda kv: -kv[1]))
        text_cpu = f"\n{k} logs: CPU ms per MB: {parts} ({sum(log_cpu[k].values()) / secs:.2f} cores busy)"
        rows_cpu.append(text_cpu)
    text += (f"\nproxy/direct log throughput {ratio:.3f}; exec overhead {ex['proxy'] - ex['direct']:.1f} ms; "
             f"echo overhead {echo['proxy'] - echo['direct']:.2f} ms")
    text += "".join(rows_cpu)
    return report.finish(
        "proxy", args=args, started=started, problems=problems,
        sizes={"log_mib": round(file_bytes / 2**20, 1), "line_bytes": args.line_bytes, "repeat": args.repeat,
               "exec_n": args.exec_n},
        headline={"proxy_log_ratio": ratio, "exec_rtt_overhead_ms": ex["proxy"] - ex["direct"],
                  "exec_msg_overhead_ms": echo["proxy"] - echo["direct"],
                  "direct_log_mb_s": rate["direct"], "proxy_log_mb_s": rate["proxy"],
                  "tenant_log_mb_s": rate["tenant"]},
        details={"host_logs": bed.host_logs(), "log_cpu_s": log_cpu, "logs": {k: [{"bytes": n, "s": s} for n, s in v] for k, v in logs.items()},
                 "exec_ms": {k: [x * 1000 for x in v] for k, v in execs.items()},
                 "echo_ms": {k: [x * 1000 for x in v] for k, v in echoes.items()}, "syncer": stats},
        text=text)


def main(argv: list[str] | None = None) -> int:
    return report.main("proxy", parse(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
