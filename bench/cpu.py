"""CPU accounting: CPU seconds per component of the bed, and the difference over a measurement.

A snapshot reads /proc for every process that names the bed's state directory (super and
tenant apiservers, etcd, KCMs, scheduler, kwok, the syncer host), plus this process, plus the
load generators that have already exited, which /proc no longer shows: `load.create_pods`
adds their own counts to `Bed.load_cpu_s`. No module-level state.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

from appliance.controlplane import process
from bench import testbed

_TICK = os.sysconf("SC_CLK_TCK")


def _component(cmd: list[str]) -> str:
    joined = " ".join(cmd)
    if any("bench.host" in c for c in cmd):
        return "syncer"
    if any("bench.load" in c for c in cmd):
        return "load generator"
    if "appliance" in cmd and "run" in cmd:
        return "appliance replicas"
    name = Path(cmd[0]).name if cmd else "?"
    if name in ("kube-apiserver", "kube-controller-manager"):
        short = "apiserver" if name == "kube-apiserver" else "kcm"
        return f"tenant {short}s" if "/tenants/" in joined else f"super {short}"
    if name == "kube-scheduler":
        return "super scheduler"
    return name


def snapshot(bed: testbed.Bed) -> dict[str, float]:
    """CPU seconds (user + system) so far, per component of the bed: super apiserver, etcd,
    scheduler, KCM, kwok, tenant apiservers and KCMs (summed), the syncer process, this process."""
    out: dict[str, float] = collections.defaultdict(float)
    for pid in testbed.pids_mentioning(str(bed.state_dir)):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        cmd = process.cmdline(pid)
        fields = stat.rsplit(")", 1)[1].split()
        out[_component(cmd)] += (int(fields[11]) + int(fields[12])) / _TICK
    t = os.times()
    out["bench driver"] = t.user + t.system
    out["load generator"] += bed.load_cpu_s
    return dict(out)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 2) for k in sorted(after, key=lambda k: -after[k])
            if after.get(k, 0.0) - before.get(k, 0.0) >= 0.05}


def text(label: str, delta: dict[str, float], wall: float) -> str:
    total = sum(delta.values())
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1]))
    return (f"{label} CPU-s over {wall:.1f} s wall ({total / wall:.2f} of {len(os.sched_getaffinity(0))} cores "
            f"used by the bed): {parts}")
