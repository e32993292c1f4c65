"""Process supervision with real child processes (no apiserver needed)."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
import trio

from appliance.controlplane import process
from appliance.manager.provision import plane

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


async def _ready() -> bool:
    return True


async def _never() -> bool:
    return False


async def test_plane_replaces_one_process_and_rolls_back_a_broken_replacement(tmp_path: Path) -> None:
    """`RunningPlane.replace`: the named process is swapped alone; a replacement that is never
    ready is rolled back to the previous spec, and the plane keeps running."""
    a = process.ProcessSpec(name="t/a", argv=SLEEPER, log_path=tmp_path / "a.log", ready=_ready)
    b = process.ProcessSpec(name="t/b", argv=SLEEPER, log_path=tmp_path / "b.log", ready=_ready)
    async with trio.open_nursery() as outer:
        done = trio.Event()

        async def run_plane(*, task_status: trio.TaskStatus[plane.RunningPlane]) -> None:
            try:
                async with trio.open_nursery() as n:
                    p = plane.RunningPlane([], n.cancel_scope, done, n)
                    for spec in (a, b):
                        p.slots.append(await n.start(plane.run_slot, spec))
                    task_status.started(p)
            finally:
                done.set()

        p: plane.RunningPlane = await outer.start(run_plane)
        old_a, old_b = p.handles[0].pid, p.handles[1].pid
        assert old_a and old_b
        marker = tmp_path / "new-a"

        async def marked() -> bool:
            return marker.exists()

        new_a = dataclasses.replace(a, argv=[*SLEEPER[:-1], f"open({str(marker)!r}, 'w').close(); {SLEEPER[-1]}"],
                                    ready=marked)
        await p.replace(new_a)
        assert marker.exists() and p.slot("t/a").spec is new_a  # type: ignore[union-attr]
        assert not _alive(old_a) and _alive(p.handles[0].pid)  # type: ignore[arg-type]
        assert p.handles[1].pid == old_b, "the other process is not touched"

        broken = dataclasses.replace(a, argv=[sys.executable, "-c", "print('broken-a'); raise SystemExit(4)"],
                                     ready=_never, ready_timeout=5)
        running = p.handles[0].pid
        with pytest.raises(plane.RolledBack, match="broken-a"):
            await p.replace(broken)
        assert p.slot("t/a").spec is new_a  # type: ignore[union-attr]
        assert p.handles[0].pid != running and _alive(p.handles[0].pid)  # type: ignore[arg-type]
        assert not p.done.is_set()
        await p.stop()
    assert not _alive(p.handles[0].pid) and not _alive(old_b)  # type: ignore[arg-type]
