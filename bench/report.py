"""A benchmark's frame: its command line, statistics, the printed table and the recorded JSON line.

`main` runs one benchmark's trio function and turns the outcome into the exit status (1: the
system misbehaved, `Misbehaved`; 2: the benchmark itself failed). `finish` prints the table
and one JSON line and appends that line to bench/results.jsonl. Nothing here starts a process
or talks to a cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import trio

from appliance.controlplane import build

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.jsonl"


class Misbehaved(Exception):
    """The system under test lost, duplicated or never delivered objects: exit status 1."""


# --- arguments -----------------------------------------------------------------------------------

def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nodes", type=int, default=3, help="kwok nodes in the super cluster")
    p.add_argument("--state-dir", type=Path, default=None, help="default: a fresh temporary directory")
    p.add_argument("--keep-state", action="store_true", help="keep the state directory (logs) afterwards")
    p.add_argument("--no-record", action="store_true", help="do not append to bench/results.jsonl")
    p.add_argument("--syncer-settings", type=json.loads, default={}, metavar="JSON",
                   help='SyncerSettings overrides for the syncer process, e.g. \'{"pod_workers": 50}\' '
                        "(default: the appliance's configuration defaults)")
    p.add_argument("--verbose", "-v", action="store_true")
    return p


# --- statistics and output ---------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}"
    return str(v)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [list(header)] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null, floats rounded to microseconds."""
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def machine() -> dict[str, Any]:
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cores": len(os.sched_getaffinity(0)), "cpu": model, "mem_bytes": mem,
        "loadavg": list(os.getloadavg()), "python": platform.python_version(),
        "kubernetes": build.KUBERNETES_VERSION, "git": rev,
    }


def finish(name: str, *, args: argparse.Namespace, sizes: dict[str, Any], headline: dict[str, Any],
           details: dict[str, Any], text: str, problems: list[str], started: float) -> int:
    """Print the table and the JSON line, append it to results.jsonl; return the exit status."""
    record = _clean({
        "bench": name, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", f"bench.{name}", *sys.argv[1:]]),
        "sizes": {**sizes, **({"syncer_settings": args.syncer_settings} if args.syncer_settings else {})}, **headline, "ok": not problems, "problems": problems[:50],
        "wall_s": time.monotonic() - started, "machine": machine(), "details": details,
    })
    print(f"\n== bench.{name} ({', '.join(f'{k}={v}' for k, v in sizes.items())}) ==")
    print(text)
    for host, lines in (details.get("host_logs") or {}).items():
        if lines:
            print(f"{host}: {sum(lines.values())} warnings/retries; most frequent:")
            for msg, count in list(lines.items())[:6]:
                print(f"  {count:6d}  {msg}")
    if problems:
        print(f"\nMISBEHAVIOUR ({len(problems)} problems):")
        for p in problems[:20]:
            print(f"  - {p}")
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    if not args.no_record:
        with open(RESULTS, "a") as f:
            f.write(line + "\n")
    return 1 if problems else 0


def main(name: str, args: argparse.Namespace, fn: Callable[[argparse.Namespace], Any]) -> int:
    """Run one benchmark's trio main; 1 if the system misbehaved, 2 if the bench itself failed."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(trio.run(fn, args))
    except Misbehaved as exc:
        print(f"bench.{name}: the system misbehaved: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException:  # report any failure of the bench itself, then exit 2
        traceback.print_exc()
        print(f"bench.{name}: the benchmark failed (not a measurement)", file=sys.stderr)
        return 2


def progress(msg: str, *a: Any) -> None:
    log.info(msg, *a)

