"""Process supervision with real child processes (no apiserver needed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from appliance.controlplane import process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


async def _until(pred, what: str) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(20):
        while not pred():
            await trio.sleep(0.05)


async def test_crashed_child_is_restarted_and_counted(tmp_path: Path) -> None:
    """A child that dies is started again, and the handle counts the restart."""
    spec = process.ProcessSpec(name="sleeper", argv=SLEEPER, log_path=tmp_path / "s.log")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(process.supervise, spec)
        first_pid = handle.pid
        assert first_pid is not None
        os.kill(first_pid, 9)
        await _until(lambda: handle.starts == 2 and handle.pid != first_pid, "restart")
        assert handle.restarts == 1
        assert handle.last_exit == -9
        nursery.cancel_scope.cancel()
    assert not _alive(handle.pid)  # type: ignore[arg-type]


async def test_cancel_stops_the_child_and_removes_the_pid_file(tmp_path: Path) -> None:
    """Cancelling the supervisor terminates its child."""
    spec = process.ProcessSpec(name="sleeper", argv=SLEEPER, log_path=tmp_path / "s.log")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(process.supervise, spec)
        assert spec.pid_file.exists()
        nursery.cancel_scope.cancel()
    assert handle.pid is not None and not _alive(handle.pid)
    assert not spec.pid_file.exists()


async def test_kept_child_survives_and_is_adopted(tmp_path: Path) -> None:
    """keep_on_cancel leaves the child running; the next supervisor adopts the same pid."""
    spec = process.ProcessSpec(
        name="sleeper", argv=SLEEPER, log_path=tmp_path / "s.log", keep_on_cancel=True
    )
    async with trio.open_nursery() as nursery:
        first = await nursery.start(process.supervise, spec)
        nursery.cancel_scope.cancel()
    assert first.pid is not None and _alive(first.pid)
    async with trio.open_nursery() as nursery:
        second = await nursery.start(process.supervise, spec)
        assert second.adopted and second.pid == first.pid
        second.keep_on_cancel = False
        nursery.cancel_scope.cancel()
    assert not _alive(first.pid)


async def test_child_that_never_gets_ready_fails_start_with_its_log(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A child that exits before its probe succeeds makes nursery.start raise ProcessFailed."""

    async def never() -> bool:
        return False

    spec = process.ProcessSpec(
        name="crasher",
        argv=[sys.executable, "-c", "import sys; print('boom-in-log'); sys.exit(3)"],
        log_path=tmp_path / "c.log",
        ready=never,
    )
    with pytest.raises(process.ProcessFailed, match="boom-in-log"):
        await nursery.start(process.supervise, spec)
