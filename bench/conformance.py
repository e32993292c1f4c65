"""Upstream's Kubernetes conformance suite against one tenant of the appliance, on the real node.

`python -m bench.conformance` (`make conformance`):

1. builds what is missing: the test bed, the node's tools, the suite (`e2e.test`, agnhost,
   ginkgo: `build.ensure_conformance_binaries`) and the images its tests run, under their
   upstream names (`e2eimages.ensure_archive`);
2. brings up the embedded default with a real node (`vc-appliance dev up --node real`) in a
   fresh state directory that it stops (and removes, keeping the logs) afterwards, or reuses
   the bed of `--state-dir`;
3. imports the images into the node's containerd, creates a VirtualCluster through the
   appliance, takes its admin kubeconfig from the Secret the appliance writes and installs
   the tenant's cluster DNS as a user would (`configs/samples/tenant-coredns.yaml`; a tenant
   has none of its own, and every conformant cluster has one);
4. runs `e2e.test` as upstream's conformance image does (provider `skeleton`, focus
   `\\[Conformance\\]`, `[Disruptive]` skipped, the suite's own skips for one node): the
   non-serial tests first (in parallel with the ginkgo CLI when `--procs` > 1), then the
   `[Serial]` ones alone;
5. writes each phase's JUnit (`<phase>/junit_01.xml`, the suite's own) and log, and
   `summary.md` / `summary.json` (counts, wall time, every failure with its first error line)
   into the results directory (default `~/.cache/vc-appliance/conformance/<UTC time>/`).

Exit status 0 when everything that ran passed, 1 when a test failed, 2 when the run could not
start. `parse_junit`, `render_summary`, `phase_argv` and `parse_duration` are pure.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance import devenv
from appliance.controlplane import build, e2eimages
from appliance.util import naming

ROOT = Path(__file__).resolve().parents[1]
TENANT_DNS = ROOT / "configs" / "samples" / "tenant-coredns.yaml"
DEFAULT_FOCUS = r"\[Conformance\]"
#: Skipped in every phase, as upstream's conformance runs do.
ALWAYS_SKIP = r"\[Disruptive\]"
SERIAL_SKIP = r"\[Serial\]"
#: Ginkgo statuses that count as a failure of the test.
_FAILED = {"failed", "timedout", "panicked", "interrupted", "aborted"}
_SUITE_NODE = re.compile(r"^\[(Synchronized)?(Before|After)Suite\]|^\[ReportBeforeSuite\]|^\[ReportAfterSuite\]"
                         r"|^\[DeferCleanup \(Suite\)\]")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


class RunError(RuntimeError):
    """The run could not be set up (build, bed, tenant, images): exit status 2."""


# --- pure parts ------------------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as `90m`, `1h30m` or `45s` (what ginkgo's --timeout takes)."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration like 2h, 90m or 1h30m: {text!r}")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


@dataclass(frozen=True, slots=True)
class Failure:
    name: str
    first_line: str


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """One phase's outcome, from its JUnit file (`ran` counts specs that really started)."""

    phase: str
    ran: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    failures: tuple[Failure, ...] = ()
    skips: tuple[Failure, ...] = ()  # name, reason
    suite_failures: tuple[Failure, ...] = ()  # BeforeSuite/AfterSuite nodes that failed
    note: str = ""


def first_error_line(text: str) -> str:
    """The first non-blank line of a failure message, trimmed to 300 characters."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= 300 else line[:297] + "..."
    return "(no message)"


def parse_junit(text: str, *, phase: str, wall_s: float = 0.0) -> PhaseResult:
    """Count a ginkgo JUnit report: specs filtered out by focus/skip (`<skipped message="skipped">`)
    are not counted; specs that skipped themselves at run time (`skipped - reason`) are."""
    root = ET.fromstring(text)
    ran = passed = failed = skipped = 0
    failures: list[Failure] = []
    skips: list[Failure] = []
    suite_failures: list[Failure] = []
    for case in root.iter("testcase"):
        name = case.get("name", "")
        status = case.get("status", "")
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        message = ""
        if problem is not None:
            message = first_error_line(problem.get("message") or problem.text or "")
        if _SUITE_NODE.match(name):
            if status in _FAILED or problem is not None:
                suite_failures.append(Failure(name, message))
            continue
        name = name.removeprefix("[It] ")
        if status == "skipped":
            skip = case.find("skipped")
            reason = (skip.get("message", "") if skip is not None else "").strip()
            if reason == "skipped":  # filtered out: never selected
                continue
            ran += 1
            skipped += 1
            skips.append(Failure(name, first_error_line(reason.removeprefix("skipped - "))))
        elif status == "passed":
            ran += 1
            passed += 1
        elif status in _FAILED or problem is not None:
            ran += 1
            failed += 1
            failures.append(Failure(name, message or status))
    return PhaseResult(phase=phase, ran=ran, passed=passed, failed=failed, skipped=skipped, wall_s=wall_s,
                       failures=tuple(failures), skips=tuple(skips), suite_failures=tuple(suite_failures))


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_summary(phases: Sequence[PhaseResult], *, meta: Sequence[tuple[str, str]]) -> str:
    """The markdown summary: a facts table, the per-phase table, failures, run-time skips."""
    lines = ["# Kubernetes conformance against a vc-appliance tenant", "", "| | |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in meta]
    lines += ["", "| phase | ran | passed | failed | skipped | wall time |", "|---|---:|---:|---:|---:|---:|"]
    for p in phases:
        lines.append(f"| {p.phase} | {p.ran} | {p.passed} | {p.failed} | {p.skipped} | {_clock(p.wall_s)} |")
    total = PhaseResult("total", ran=sum(p.ran for p in phases), passed=sum(p.passed for p in phases),
                        failed=sum(p.failed for p in phases), skipped=sum(p.skipped for p in phases),
                        wall_s=sum(p.wall_s for p in phases))
    lines.append(f"| **total** | **{total.ran}** | **{total.passed}** | **{total.failed}** | **{total.skipped}** "
                 f"| **{_clock(total.wall_s)}** |")
    notes = [f"* {p.phase}: {p.note}" for p in phases if p.note]
    if notes:
        lines += ["", *notes]
    suite = [(p.phase, f) for p in phases for f in p.suite_failures]
    if suite:
        lines += ["", "## Suite set-up or tear-down failures", "", "| phase | node | first error line |",
                  "|---|---|---|"]
        lines += [f"| {ph} | {_cell(f.name)} | {_cell(f.first_line)} |" for ph, f in suite]
    failures = [(p.phase, f) for p in phases for f in p.failures]
    lines += ["", f"## Failures ({len(failures)})", ""]
    if failures:
        lines += ["| test | phase | first error line |", "|---|---|---|"]
        lines += [f"| {_cell(f.name)} | {ph} | {_cell(f.first_line)} |" for ph, f in sorted(failures, key=lambda x: x[1].name)]
    else:
        lines.append("None.")
    skips = [(p.phase, f) for p in phases for f in p.skips]
    if skips:
        lines += ["", f"## Skipped by the suite at run time ({len(skips)})", "", "| test | reason |", "|---|---|"]
        lines += [f"| {_cell(f.name)} | {_cell(f.first_line)} |" for _, f in sorted(skips, key=lambda x: x[1].name)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    argv: list[str]
    report_dir: Path
    procs: int


def e2e_flags(*, kubeconfig: Path, report_dir: Path, kubectl: Path, num_nodes: int,
              extra: Sequence[str] = ()) -> list[str]:
    """The suite's own flags, as upstream's conformance image passes them (plus the node count)."""
    flags = [f"--kubeconfig={kubeconfig}", "--provider=skeleton", f"--report-dir={report_dir}",
             "--disable-log-dump", f"--kubectl-path={kubectl}", "-v=2"]
    if num_nodes > 0:
        flags.append(f"--num-nodes={num_nodes}")
    return [*flags, *extra]


def phase_argv(*, e2e_test: Path, ginkgo: Path, name: str, focus: str, skip: str, serial: bool, procs: int,
               timeout: str, flags: Sequence[str]) -> list[str]:
    """argv of one phase: `[Serial]` specs alone through e2e.test itself; the rest with the ginkgo
    CLI over `procs` processes (or e2e.test itself when procs is 1)."""
    skips = "|".join(s for s in (ALWAYS_SKIP, skip, "" if serial else SERIAL_SKIP) if s)
    if procs > 1 and not serial:
        return [str(ginkgo), f"--procs={procs}", f"--focus={focus}", f"--skip={skips}", f"--timeout={timeout}",
                "--no-color", "-v", str(e2e_test), "--", *flags]
    argv = [str(e2e_test), f"--ginkgo.focus={focus}", f"--ginkgo.skip={skips}", f"--ginkgo.timeout={timeout}",
            "--ginkgo.no-color", "--ginkgo.v"]
    if serial:
        argv.append("--ginkgo.label-filter=Serial")
    return [*argv, *flags]


# --- the bed, the tenant, the images ----------------------------------------------------------

@dataclass
class Bed:
    state: Path
    started_here: bool
    info: dict[str, object] = field(default_factory=dict)

    @property
    def kubectl(self) -> Path:
        return self.state / "bin" / "kubectl"

    @property
    def super_kubeconfig(self) -> Path:
        return self.state / "super.kubeconfig"


def progress(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def kubectl(bed: Bed, *args: str, stdin: str | None = None, kubeconfig: Path | None = None) -> str:
    done = subprocess.run([str(bed.kubectl), f"--kubeconfig={kubeconfig or bed.super_kubeconfig}", *args],
                          input=stdin.encode() if stdin else None, capture_output=True, check=False)
    if done.returncode != 0:
        raise RunError(f"kubectl {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout.decode()


def open_bed(state: Path | None, results: Path) -> Bed:
    """`dev up --node real` (idempotent: a running bed in `state` is reused as it is)."""
    started_here = state is None
    state = state or results / "bed"
    log = results / "bed-up.log"
    progress(f"{'starting' if started_here else 'reusing'} the real-node bed in {state} (output: {log})")
    try:
        with open(log, "a") as out, contextlib.redirect_stdout(out):
            devenv.up(state, tenants=0, node="real")
    except BaseException as exc:
        if started_here:
            with open(log, "a") as out, contextlib.redirect_stdout(out):
                devenv.down(state)  # whatever of the bed did start
        if isinstance(exc, devenv.DevError):
            raise RunError(f"{exc} (see {log})") from None
        raise
    info = json.loads((state / "cluster" / "cluster.json").read_text())
    if not info.get("real_node"):
        raise RunError(f"the bed in {state} has no real node (kwok nodes run no containers); "
                       "start one with `vc-appliance dev up --node real`")
    return Bed(state=state, started_here=started_here, info=info)


def keep_logs_only(state: Path, logs: Path) -> None:
    """Move a stopped bed's `*.log` files under `logs` (same relative paths) and remove the rest
    (etcd data, the node's containerd store: a gigabyte after one run) unless something is
    still mounted below it."""
    prefix = str(state.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        if any(line.split()[4].startswith(prefix) for line in f):
            progress(f"something is still mounted below {state}; leaving it in place")
            return
    for log in state.rglob("*.log"):
        if log.is_file() and not log.is_symlink():
            dest = logs / log.relative_to(state)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(log, dest)
    shutil.rmtree(state, ignore_errors=True)


def import_images(bed: Bed, archive: Path) -> float:
    """`ctr images import` inside the node's namespaces (as the node imports its own images)."""
    node = bed.info["real_node"]
    assert isinstance(node, dict)
    ctr = Path(str(bed.info["node_bin_dir"])) / "ctr"
    started = time.monotonic()
    done = subprocess.run(["nsenter", f"--target={node['holder_pid']}", "--mount", "--net", "--", str(ctr),
                           f"--address={node['containerd_socket']}", "--namespace=k8s.io", "images", "import",
                           str(archive)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RunError(f"ctr images import {archive}: {done.stderr.strip()[-2000:]}")
    return time.monotonic() - started


def create_tenant(bed: Bed, name: str, out: Path, *, timeout: float = 240) -> Path:
    """A VirtualCluster made through the appliance; returns its admin kubeconfig written to `out`."""
    kubectl(bed, "apply", "-f", "-", stdin=devenv.SAMPLES.format(cv=devenv.SAMPLE_CV))
    kubectl(bed, "apply", "-f", "-", stdin=devenv.VC.format(name=name, cv=devenv.SAMPLE_CV))
    deadline = time.monotonic() + timeout
    while True:
        phase = kubectl(bed, "get", "vc", name, "-n", "default", "-o", "jsonpath={.status.phase}")
        if phase == "Running":
            break
        if phase == "Error" or time.monotonic() > deadline:
            msg = kubectl(bed, "get", "vc", name, "-n", "default", "-o", "jsonpath={.status.message}")
            raise RunError(f"VirtualCluster {name} is {phase or 'not Running'}: {msg}")
        time.sleep(1)  # another process's state; nothing to wait on here
    ns = kubectl(bed, "get", "vc", name, "-n", "default", "-o", "jsonpath={.status.clusterNamespace}")
    data = kubectl(bed, "get", "secret", "admin-kubeconfig", "-n", ns, "-o", "jsonpath={.data.admin-kubeconfig}")
    out.write_bytes(base64.b64decode(data))
    os.chmod(out, 0o600)
    return out


def install_tenant_dns(bed: Bed, kubeconfig: Path, *, timeout: float = 180) -> str:
    """Apply the sample tenant DNS; return the super cluster's address of its Service once the
    syncer has annotated it (Pods created before that would get no cluster DNS)."""
    kubectl(bed, "apply", "-f", str(TENANT_DNS), kubeconfig=kubeconfig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        svc = json.loads(kubectl(bed, "get", "service", "kube-dns", "-n", "kube-system", "-o", "json",
                                 kubeconfig=kubeconfig))
        ip = (svc["metadata"].get("annotations") or {}).get(naming.ANNOTATION_TRANSPARENT_CLUSTER_IP)
        ready = kubectl(bed, "get", "deployment", "coredns", "-n", "kube-system",
                        "-o", "jsonpath={.status.availableReplicas}", kubeconfig=kubeconfig)
        if ip and ready.strip() not in ("", "0"):
            return str(ip)
        time.sleep(1)  # another process's state; nothing to wait on here
    raise RunError(f"the tenant's CoreDNS ({TENANT_DNS.name}) was not available after {timeout:.0f} s")


def ready_nodes(bed: Bed) -> int:
    nodes = json.loads(kubectl(bed, "get", "nodes", "-o", "json"))["items"]
    return sum(1 for n in nodes if any(c.get("type") == "Ready" and c.get("status") == "True"
                                       for c in (n.get("status") or {}).get("conditions") or []))


# --- running the suite -------------------------------------------------------------------------

def count_selected(e2e_test: Path, *, focus: str, skip: str, serial: bool) -> int:
    """How many specs a phase selects (a dry run of e2e.test, well under a second)."""
    argv = phase_argv(e2e_test=e2e_test, ginkgo=e2e_test, name="dry", focus=focus, skip=skip, serial=serial,
                      procs=1, timeout="1h", flags=[])
    out = subprocess.run([*argv, "--ginkgo.dry-run"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"Ran (\d+) of \d+ Specs", out)
    if m is None:
        raise RunError(f"e2e.test --ginkgo.dry-run printed no spec count:\n{out[-1500:]}")
    return int(m.group(1))


def run_phase(phase: Phase, *, env: dict[str, str], timeout_s: float) -> tuple[PhaseResult, int, bool]:
    """Run one phase to its end, its timeout, or an interrupt; (result, exit code, interrupted)."""
    phase.report_dir.mkdir(parents=True, exist_ok=True)
    log = phase.report_dir / "e2e.log"
    (phase.report_dir / "command").write_text(" ".join(f"'{a}'" if " " in a or "|" in a else a
                                                       for a in phase.argv) + "\n")
    progress(f"phase {phase.name}: running ({phase.procs} process(es)); log: {log}")
    started = time.monotonic()
    interrupted = False
    with open(log, "wb") as out:
        proc = subprocess.Popen(phase.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            progress(f"phase {phase.name}: {'interrupted' if interrupted else 'timed out'}; stopping it")
            os.killpg(proc.pid, signal.SIGINT)  # ginkgo writes its reports on an interrupt
            try:
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    wall = time.monotonic() - started
    junit = phase.report_dir / "junit_01.xml"
    if not junit.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        note = f"no JUnit report (exit {rc}); last lines of {log}:\n{tail}"
        return PhaseResult(phase.name, wall_s=wall, note=note), rc, interrupted
    result = parse_junit(junit.read_text(), phase=phase.name, wall_s=wall)
    progress(f"phase {phase.name}: {result.passed} passed, {result.failed} failed, {result.skipped} skipped "
             f"in {_clock(wall)} (exit {rc})")
    return result, rc, interrupted


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.conformance", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--focus", default=DEFAULT_FOCUS, help="ginkgo focus regex (a subset of the suite)")
    p.add_argument("--skip", default="", help=f"extra ginkgo skip regex ({ALWAYS_SKIP} is always skipped)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="reuse (or start and keep) the `vc-appliance dev` bed there; default: a fresh bed "
                        "in the results directory, stopped afterwards")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="default: ~/.cache/vc-appliance/conformance/<UTC time>")
    p.add_argument("--timeout", default="6h", help="ginkgo suite timeout of each phase (Go duration)")
    p.add_argument("--procs", type=int, default=2, help="ginkgo processes for the non-serial phase")
    p.add_argument("--num-nodes", type=int, default=-1,
                   help="--num-nodes for the suite; -1: the super cluster's Ready nodes (a tenant sees a "
                        "node only once its Pods run there, so the suite's own count would find none); "
                        "0: let the suite count")
    p.add_argument("--no-serial", action="store_true", help="skip the [Serial] phase")
    p.add_argument("--keep-tenant", action="store_true", help="leave the VirtualCluster in place afterwards")
    p.add_argument("--keep-bed", action="store_true", help="leave a bed started here running afterwards")
    p.add_argument("--e2e-arg", action="append", default=[], metavar="FLAG",
                   help="extra flag for e2e.test, e.g. --e2e-arg=--node-schedulable-timeout=5m (repeatable)")
    args = p.parse_args(argv)
    # Ctrl-C and SIGTERM interrupt the running phase (ginkgo then writes its report), also when
    # this process was started in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        timeout_s = parse_duration(args.timeout)
    except ValueError as exc:
        p.error(str(exc))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    results = (args.results_dir or build.cache_root() / "conformance" / stamp).resolve()
    results.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, results=results, stamp=stamp, timeout_s=timeout_s)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, *, results: Path, stamp: str, timeout_s: float) -> int:
    progress(f"results: {results}")
    started = time.monotonic()
    try:
        bins = build.ensure_binaries()
        nodebins = build.ensure_node_binaries()
        conf = build.ensure_conformance_binaries()
        progress("conformance images (built once, then cached) ...")
        archive, built, not_built = e2eimages.ensure_archive(conf, bins, nodebins)
    except (build.BuildError, e2eimages.ImageBuildError) as exc:
        raise RunError(str(exc)) from None
    selected = {
        "parallel": count_selected(conf.e2e_test, focus=args.focus, skip=args.skip, serial=False),
        "serial": 0 if args.no_serial else count_selected(conf.e2e_test, focus=args.focus, skip=args.skip,
                                                          serial=True),
    }
    progress(f"selected: {selected['parallel']} non-serial, {selected['serial']} serial spec(s)")
    bed = open_bed(args.state_dir, results)
    tenant = f"conformance-{stamp[4:8]}-{stamp[9:15]}".lower()
    phases: list[PhaseResult] = []
    rcs: list[int] = []
    try:
        took = import_images(bed, archive)
        progress(f"imported {len(built)} images into the node's containerd in {took:.0f} s")
        progress(f"creating VirtualCluster {tenant} through the appliance ...")
        kubeconfig = create_tenant(bed, tenant, results / "tenant.kubeconfig")
        dns_ip = install_tenant_dns(bed, kubeconfig)
        progress(f"tenant DNS (CoreDNS) available at {dns_ip}")
        num_nodes = ready_nodes(bed) if args.num_nodes < 0 else args.num_nodes
        env = dict(os.environ, KUBECONFIG=str(kubeconfig), PATH=f"{bins.bin_dir}:{os.environ.get('PATH', '')}")
        for name, serial in (("parallel", False), ("serial", True)):
            if not selected[name]:
                continue
            procs = 1 if serial else max(1, min(args.procs, selected[name]))
            report = results / name
            flags = e2e_flags(kubeconfig=kubeconfig, report_dir=report, kubectl=bins.path("kubectl"),
                              num_nodes=num_nodes, extra=args.e2e_arg)
            argv = phase_argv(e2e_test=conf.e2e_test, ginkgo=conf.path("ginkgo"), name=name, focus=args.focus,
                              skip=args.skip, serial=serial, procs=procs, timeout=args.timeout, flags=flags)
            result, rc, interrupted = run_phase(Phase(name, argv, report, procs), env=env,
                                                timeout_s=timeout_s + 600)
            phases.append(result)
            rcs.append(rc)
            if interrupted:
                break
    finally:
        if not args.keep_tenant and bed.info:
            subprocess.run([str(bed.kubectl), f"--kubeconfig={bed.super_kubeconfig}", "delete", "vc", tenant,
                            "-n", "default", "--ignore-not-found", "--wait=false"], capture_output=True, check=False)
        if bed.started_here and not args.keep_bed:
            progress("stopping the bed started for this run; its logs go to bed-logs/")
            devenv.down(bed.state)
            keep_logs_only(bed.state, results / "bed-logs")
    meta = [
        ("suite", f"e2e.test of k8s.io/kubernetes {build.KUBERNETES_VERSION} (built here), provider skeleton"),
        ("focus / skip", f"`{args.focus}` / `{'|'.join(s for s in (ALWAYS_SKIP, args.skip) if s)}`"
                         " (non-serial phase also skips `[Serial]`)"),
        ("tenant", f"VirtualCluster `{tenant}` through vc-appliance; {num_nodes} real node(s) in the super cluster"),
        ("bed", f"`{bed.state}` ({'started for this run' if bed.started_here else 'reused'})"),
        ("started", stamp),
        ("total wall time", _clock(time.monotonic() - started)),
        ("images built", ", ".join(sorted(built.values()))),
        ("images not built", "; ".join(sorted(not_built.values()))),
    ]
    summary = render_summary(phases, meta=meta)
    (results / "summary.md").write_text(summary)
    (results / "summary.json").write_text(json.dumps(
        {"meta": dict(meta), "selected": selected, "exit_codes": rcs, "phases": [asdict(r) for r in phases]},
        indent=2) + "\n")
    print(summary)
    progress(f"JUnit and logs: {results}/<phase>/, summary: {results / 'summary.md'}")
    if not phases or any(r.note for r in phases):
        return 2
    return 1 if any(r.failed or r.suite_failures for r in phases) else 0


if __name__ == "__main__":
    raise SystemExit(main())
