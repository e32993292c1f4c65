"""Children that an earlier appliance run recorded in pid files: which still run, and clearing
those that cannot be adopted.

`process.supervise` adopts a kept child only when its command line is exactly the one it
would start. A recorded child with another command line (new flags after an upgrade, a
port that moved) or any recorded child when adoption is off would hold the ports and data
the fresh process needs, so `stop_unadoptable` stops it first: SIGTERM, then SIGKILL after
a grace period. A pid whose process now runs another program is left alone (pids are
reused). Blocking (waits for exits): call it through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from appliance.controlplane import process

logger = logging.getLogger(__name__)

STOP_GRACE = 10.0


def _recorded(pid_file: Path) -> tuple[int, list[str]] | None:
    """The recorded pid and its command line, if it still runs the recorded program."""
    try:
        pid_s, _, program = pid_file.read_text().strip().partition(" ")
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    cmd = process.cmdline(pid)
    return (pid, cmd) if cmd and cmd[0] == program else None


def live_pids(pid_files: Iterable[Path]) -> set[int]:
    """Pids recorded in `pid_files` whose processes still run the recorded program."""
    return {found[0] for f in pid_files if (found := _recorded(f)) is not None}


def stop_unadoptable(specs: Sequence[process.ProcessSpec], *, keep: bool) -> None:
    """Stop the recorded children of `specs` that the next start would not adopt."""
    for spec in specs:
        found = _recorded(spec.pid_file)
        if found is None:
            continue
        pid, cmd = found
        if keep and cmd == [str(a) for a in spec.argv]:
            continue
        logger.info("stopping stale %s (pid %d) before starting it afresh", spec.name, pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + STOP_GRACE
        while process.cmdline(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.cmdline(pid):
            os.kill(pid, signal.SIGKILL)
        spec.pid_file.unlink(missing_ok=True)
