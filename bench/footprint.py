"""Footprint: RSS per component and idle writes per minute, for 0 / 1 / 3 / 5 process-mode tenants.

The real `vc-appliance run` process (manager, syncer and proxy, as shipped) runs on a private
super cluster. For each size in `--tenants` (cumulative: the next step adds tenants), the bench
creates process-mode VirtualClusters through the appliance (ClusterVersion `footprint`, whose
`spec.process` is `--profile` plus `--process JSON`), waits until they are Running, lets
everything settle for `--settle` s and then observes an idle window of `--idle` s. At the end
of each window: RSS (VmRSS) and PSS (smaps_rollup; a shared binary's text counts once across
processes) of the appliance, the shared etcd and each tenant's kube-apiserver and
kube-controller-manager (found by their pid files under the appliance's data directory).
During the window: writes to the shared etcd (revision delta), attributed per key from each
key's version before and after (`who_wrote`), and the appliance's own writes to the super
cluster (POST/PUT/PATCH/DELETE in its `vc_super_requests_total` metric).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from appliance.controlplane import cluster, process
from appliance.kube import resources
from appliance.manager import etcdcreds, etcdgateway
from bench import report, testbed

NS = "footprint"
CV = "footprint"
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
MIB = 1024 * 1024


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.parser("footprint", __doc__.splitlines()[0])
    p.set_defaults(nodes=1)  # the super cluster's nodes play no part here
    p.add_argument("--tenants", default="0,1,3,5", help="tenant counts, one idle window each (cumulative)")
    p.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window")
    p.add_argument("--settle", type=float, default=30.0, help="seconds after Running before the window")
    p.add_argument("--profile", choices=("lean", "upstream"), default="lean",
                   help="spec.process.profile of the ClusterVersion (upstream = the flags before trimming)")
    p.add_argument("--process", type=json.loads, default={}, metavar="JSON",
                   help='more of spec.process, e.g. \'{"apiServer": {"watchCache": false}}\'')
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the tenants of a step to be Running")
    return p.parse_args(argv)


# --- pure parts ---------------------------------------------------------------------------------

def proc_memory(pid: int) -> dict[str, int]:
    """{"rss", "anon", "pss"} bytes of `pid` ({} if it is gone; no pss if smaps_rollup is unreadable).

    `anon` (RssAnon: heap, stacks) is what each process has alone; the rest of RSS is mostly the
    multi-call binary's text, one page-cache copy shared by every etcd, apiserver and KCM.
    """
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) * 1024
            elif line.startswith("RssAnon:"):
                out["anon"] = int(line.split()[1]) * 1024
    except OSError:
        return {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss"] = int(line.split()[1]) * 1024
    return out


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_TENANT_KEY = re.compile(r"^/tenants/[^/]+/registry/")


def who_wrote(key: str) -> str:
    """A write's author class from its etcd key: leases by name, everything else by resource."""
    rest = _TENANT_KEY.sub("", key)
    if rest == key:
        return f"other {key.split('/')[1] if key.count('/') > 1 else key}"
    parts = rest.split("/")
    if parts[0] == "leases" and len(parts) >= 3:
        name = parts[2]
        if name.startswith("apiserver-"):
            return "leases apiserver-<id> (apiserver identity)"
        return f"leases {parts[1]}/{name}"
    return parts[0]


def attribute(before: dict[str, int], after: dict[str, int]) -> collections.Counter[str]:
    """Writes per author class between two {key: version} snapshots (new keys count from creation)."""
    c: collections.Counter[str] = collections.Counter()
    for key, v in after.items():
        n = v - before.get(key, 0)
        if n > 0:
            c[who_wrote(key)] += n
    return c


def write_count(metrics_text: str) -> int:
    """Writes (by method) in the appliance's `vc_super_requests_total` exposition."""
    total = 0
    for line in metrics_text.splitlines():
        if line.startswith("vc_super_requests_total{") and any(f'method="{m}"' in line for m in WRITE_METHODS):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


# --- the appliance ------------------------------------------------------------------------------

class Appliance:
    def __init__(self, proc: trio.Process, data_dir: Path, http_port: int) -> None:
        self.proc, self.data_dir, self.http_port = proc, data_dir, http_port

    async def metrics(self) -> str:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
            return (await c.get(f"http://127.0.0.1:{self.http_port}/metrics")).text

    def pids(self) -> dict[str, int]:
        """Component → pid: `appliance`, `etcd`, `<key>/kube-apiserver`, `<key>/kube-controller-manager`."""
        out = {"appliance": self.proc.pid}
        for pid_file in self.data_dir.rglob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().split()[0])
                name = pid_file.stem if pid_file.stem == "etcd" else f"{pid_file.parents[1].name}/{pid_file.stem}"
                out[name] = pid
        return out

    async def stop(self) -> None:
        await testbed.terminate(self.proc)
        for d in {p.parent for p in self.data_dir.rglob("*.pid")}:
            process.kill_leftovers(d)


async def start_appliance(bed: testbed.Bed) -> Appliance:
    d = bed.state_dir / "appliance"
    d.mkdir(parents=True, exist_ok=True)
    http = cluster.free_port()
    (d / "appliance.toml").write_text(f"""data-dir = "{d / 'data'}"
binaries-dir = "{bed.bins.bin_dir}"
[super]
kubeconfig = "{bed.kubeconfig}"
[http]
port = {http}
[proxy]
port = {cluster.free_port()}
[manager]
keep-control-planes = false
""")
    with open(d / "appliance.log", "ab") as logf:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "appliance", "run", "--config", str(d / "appliance.toml")],
            stdout=logf, stderr=logf, cwd=report.ROOT, env=dict(os.environ))
    app = Appliance(proc, d / "data", http)
    with trio.fail_after(120):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vc-appliance exited {proc.returncode}; see {d / 'appliance.log'}")
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
                    if (await c.get(f"http://127.0.0.1:{http}/readyz")).status_code == 200:
                        return app
            await trio.sleep(0.5)  # another process's readiness; the bound is the deadline


async def etcd_versions(data_dir: Path) -> tuple[int, dict[str, int]]:
    """(revision, {key: version}) of the shared etcd, read as root through its JSON gateway."""
    state = data_dir / "etcd"
    creds = etcdcreds.SharedEtcdCreds(state / "pki")
    port = json.loads((state / "ports.json").read_text())["client"]
    tls = cluster.client_ssl_context(creds.admin)
    async with etcdgateway.open_gateway(cluster.etcd_url(port, tls=True), tls=tls,
                                        password=creds.root_password()) as gw:
        zero = base64.b64encode(b"\0").decode()
        found = await gw.call("/v3/kv/range", {"key": zero, "range_end": zero, "keys_only": True})
    versions = {base64.b64decode(kv["key"]).decode(errors="replace"): int(kv.get("version", 0))
                for kv in found.get("kvs", [])}
    return int(found["header"]["revision"]), versions


# --- one step -----------------------------------------------------------------------------------

async def add_vcs(bed: testbed.Bed, names: list[str], *, timeout: float) -> float:
    """Create process-mode VirtualClusters `names` and wait until all are Running; seconds taken."""
    t0 = time.monotonic()
    for name in names:
        await bed.superc.create(resources.VIRTUALCLUSTERS, {
            "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "VirtualCluster",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"clusterVersionName": CV, "clusterDomain": "cluster.local"},
        }, namespace=NS)
    with trio.fail_after(timeout):
        while True:
            vcs = (await bed.superc.list(resources.VIRTUALCLUSTERS, namespace=NS)).items
            phases = {v["metadata"]["name"]: (v.get("status") or {}).get("phase") for v in vcs}
            if "Error" in phases.values():
                raise report.Misbehaved(f"a VirtualCluster failed: {phases}")
            if all(phases.get(n) == "Running" for n in names):
                return time.monotonic() - t0
            await trio.sleep(1)  # the manager's progress; the bound is the deadline


async def observe(app: Appliance, tenants: int, args: argparse.Namespace) -> dict[str, Any]:
    """One idle window: etcd writes by author, appliance writes, then memory per component."""
    await trio.sleep(args.settle)
    has_etcd = (app.data_dir / "etcd" / "ports.json").exists()
    rev0, v0 = await etcd_versions(app.data_dir) if has_etcd else (0, {})
    w0 = write_count(await app.metrics())
    pids = app.pids()
    cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    await trio.sleep(args.idle)
    # CPU while idle: a Go memory limit below the live heap would show here as GC work
    cpu = {name: round(proc_cpu_s(pid) - cpu0[name], 2) for name, pid in pids.items()}
    rev1, v1 = await etcd_versions(app.data_dir) if has_etcd else (0, {})
    w1 = write_count(await app.metrics())
    minutes = (time.monotonic() - t0) / 60
    mem = {name: proc_memory(pid) for name, pid in sorted(app.pids().items())}
    by_author = attribute(v0, v1)
    total = rev1 - rev0
    if total > sum(by_author.values()):
        by_author["deletes and re-creations"] = total - sum(by_author.values())
    return {
        "tenants": tenants, "minutes": minutes, "memory": mem, "idle_cpu_s": cpu,
        "etcd_writes_per_min": total / minutes,
        "etcd_writes_by_author_per_min": {k: v / minutes for k, v in by_author.most_common()},
        "appliance_writes_per_min": (w1 - w0) / minutes,
    }


def summarise(step: dict[str, Any]) -> dict[str, Any]:
    mem: dict[str, dict[str, int]] = step["memory"]

    def total(kind: str, pred: Any) -> int:
        return sum(m.get(kind, 0) for name, m in mem.items() if pred(name))

    n = step["tenants"]
    out: dict[str, Any] = {"tenants": n}
    for kind in ("rss", "anon", "pss"):
        api = total(kind, lambda s: s.endswith("/kube-apiserver"))
        kcm = total(kind, lambda s: s.endswith("/kube-controller-manager"))
        out[f"appliance_{kind}"] = mem.get("appliance", {}).get(kind, 0)
        out[f"etcd_{kind}"] = mem.get("etcd", {}).get(kind, 0)
        out[f"apiserver_{kind}"] = api / n if n else 0
        out[f"kcm_{kind}"] = kcm / n if n else 0
        out[f"tenant_{kind}"] = (api + kcm) / n if n else 0
        out[f"total_{kind}"] = total(kind, lambda s: True)
    cpu: dict[str, float] = step["idle_cpu_s"]
    out["tenant_cpu_per_min"] = (sum(v for k, v in cpu.items() if "/" in k) / n / step["minutes"]) if n else 0
    out["etcd_writes_per_min"] = step["etcd_writes_per_min"]
    out["appliance_writes_per_min"] = step["appliance_writes_per_min"]
    return out


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    sizes = [int(x) for x in args.tenants.split(",") if x.strip()]
    steps: list[dict[str, Any]] = []
    problems: list[str] = []
    async with testbed.open_bed(args) as bed:
        await bed.superc.create(resources.NAMESPACES, {"metadata": {"name": NS}})
        spec = {"process": {"profile": args.profile, **args.process}}
        await bed.superc.create(resources.CLUSTERVERSIONS, {
            "apiVersion": "tenancy.x-k8s.io/v1alpha1", "kind": "ClusterVersion",
            "metadata": {"name": CV}, "spec": spec})
        app = await start_appliance(bed)
        try:
            have = 0
            for n in sizes:
                if n > have:
                    took = await add_vcs(bed, [f"t{i:02d}" for i in range(have, n)], timeout=args.timeout)
                    report.progress("%d tenant(s) Running (%d new in %.1f s)", n, n - have, took)
                    have = n
                step = await observe(app, n, args)
                steps.append(step)
                report.progress("%d tenant(s): %s", n, summarise(step))
                if step["appliance_writes_per_min"]:
                    problems.append(f"{n} tenant(s): the idle appliance wrote "
                                    f"{step['appliance_writes_per_min']:.1f} times a minute to the super cluster")
        finally:
            await app.stop()

    rows = []
    for step in steps:
        s = summarise(step)
        rows.append([s["tenants"], s["appliance_rss"] / MIB, s["etcd_rss"] / MIB, s["apiserver_rss"] / MIB,
                     s["kcm_rss"] / MIB, s["tenant_rss"] / MIB, s["tenant_anon"] / MIB, s["tenant_pss"] / MIB,
                     s["total_rss"] / MIB, s["total_pss"] / MIB, s["tenant_cpu_per_min"],
                     s["etcd_writes_per_min"], s["appliance_writes_per_min"]])
    text = report.table(["tenants", "appliance", "etcd", "apiserver", "kcm", "per tenant", "tenant anon",
                         "tenant PSS", "total RSS", "total PSS", "tenant CPU-s/min", "etcd writes/min",
                         "appliance writes/min"],
                        [[report.fmt(v, 1) if isinstance(v, float) else v for v in r] for r in rows])
    text += ("\n(MiB; apiserver .. tenant PSS are means over the tenants; RSS counts the shared binary's\n"
             " text in every process, anon (RssAnon) and PSS do not)\n")
    for step in steps:
        authors = ", ".join(f"{k} {v:.1f}" for k, v in step["etcd_writes_by_author_per_min"].items())
        text += f"\n{step['tenants']} tenant(s), etcd writes/min by author: {authors or 'none'}"
    summaries = {s["tenants"]: summarise(s) for s in steps}
    headline: dict[str, Any] = {"profile": args.profile}
    biggest = max((n for n in summaries if n), default=None)
    if biggest is not None:
        headline["tenant_rss_mib"] = summaries[biggest]["tenant_rss"] / MIB
        headline["tenant_pss_mib"] = summaries[biggest]["tenant_pss"] / MIB
        headline["tenant_anon_mib"] = summaries[biggest]["tenant_anon"] / MIB
    if 3 in summaries:
        headline["total_3_rss_mib"] = summaries[3]["total_rss"] / MIB
        headline["total_3_pss_mib"] = summaries[3]["total_pss"] / MIB
        headline["idle_etcd_writes_per_min_3"] = summaries[3]["etcd_writes_per_min"]
    headline["appliance_writes_per_min"] = max((s["appliance_writes_per_min"] for s in summaries.values()),
                                               default=0.0)
    return report.finish(
        "footprint", args=args, started=started, problems=problems,
        sizes={"tenants": args.tenants, "idle_s": args.idle, "settle_s": args.settle, "profile": args.profile,
               **({"process": args.process} if args.process else {})},
        headline=headline, details={"steps": steps}, text=text)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return report.main("footprint", args, run)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
