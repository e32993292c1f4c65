"""Supervised child processes: start, wait until ready, restart with backoff, stop.

`supervise(spec)` is a long-lived trio task. It starts the child with its output
appended to a log file, polls a readiness probe under a deadline, reports the live
`ProcessHandle` through `task_status`, and from then on restarts the child whenever
it exits (capped exponential backoff), keeping counters that callers surface in
status. Cancelling the task stops the child: SIGTERM, then SIGKILL after a grace
period, under a shielded, bounded cleanup.

Children run in their own session (a Ctrl-C on the terminal reaches only the
supervisor, which stops them in order). Each writes a pid file next to its log so that
`kill_leftovers` can clean up after a supervisor that was SIGKILLed, and so that tenant
control planes kept across an appliance restart can be found again. (PR_SET_PDEATHSIG
cannot be used: trio forks from a worker thread, and the signal fires when that
thread, not the process, exits.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import trio

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]


class ProcessFailed(RuntimeError):
    """A child exited or never became ready; the message has its log tail."""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    name: str
    argv: Sequence[str]
    log_path: Path
    ready: Probe | None = None
    env: dict[str, str] | None = None
    cwd: Path | None = None
    ready_timeout: float = 90.0
    stop_grace: float = 10.0
    #: Leave the child running when the supervisor is cancelled, and adopt a running
    #: child with the same argv on the next start (tenant control planes across an
    #: appliance restart). `ProcessHandle.keep_on_cancel` can still be cleared.
    keep_on_cancel: bool = False

    @property
    def pid_file(self) -> Path:
        return self.log_path.with_suffix(".pid")


@dataclass(slots=True)
class ProcessHandle:
    """What the supervisor knows about its child; read by status reporting."""

    name: str
    pid: int | None = None
    starts: int = 0
    last_exit: int | None = None
    last_exit_at: float | None = None
    adopted: bool = False
    keep_on_cancel: bool = False
    ready: trio.Event = field(default_factory=trio.Event)
    #: POSIX time this supervisor started the current child (0 for an adopted one: unknown)
    started_at: float = 0.0

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)


def cmdline(pid: int) -> list[str]:
    """The command line of `pid` ([] if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def kill_leftovers(pid_dir: Path) -> list[int]:
    """SIGKILL children recorded in `pid_dir/*.pid` that still run the recorded program.

    For cleanup after a supervisor that could not stop its children (it was killed).
    """
    killed = []
    for pid_file in pid_dir.glob("*.pid"):
        try:
            pid_s, _, program = pid_file.read_text().strip().partition(" ")
            pid = int(pid_s)
        except (OSError, ValueError):
            continue
        cmd = cmdline(pid)
        if cmd and cmd[0] == program:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        pid_file.unlink(missing_ok=True)
    return killed


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class _Adopted:
    """A running process we did not fork (found by pid file): waited on with a pidfd."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd = os.pidfd_open(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._fd], [], [], 0)[0]:
            self.returncode = -1  # not our child: the exit status is not ours to read
            os.close(self._fd)
        return self.returncode

    async def wait(self) -> int:
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self._fd)
            self.poll()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _adoptable(spec: ProcessSpec) -> _Adopted | None:
    """The child recorded in the pid file if it still runs exactly `spec.argv`."""
    try:
        pid = int(spec.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if cmdline(pid) != [str(a) for a in spec.argv]:
        return None
    try:
        return _Adopted(pid)
    except OSError:
        return None


async def _stop(proc: trio.Process | _Adopted, *, grace: float, name: str) -> None:
    if proc.returncode is not None:
        return
    with trio.move_on_after(grace + 5, shield=True):
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        with trio.move_on_after(grace):
            await proc.wait()
            return
        log.warning("process %s did not stop within %.0f s; killing it", name, grace)
        proc.kill()
        await proc.wait()


#: What systemd hands to the unit's main process alone: a child that inherits NOTIFY_SOCKET
#: (etcd and kube-apiserver speak sd_notify) would send READY=1 or STATUS= for the appliance.
SERVICE_MANAGER_VARS = frozenset({
    "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
})


def child_env(env: dict[str, str] | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a child gets: `env` (or `base`, default ours) without the service manager's."""
    source = env if env is not None else (base if base is not None else dict(os.environ))
    return {k: v for k, v in source.items() if k not in SERVICE_MANAGER_VARS}


async def _start(spec: ProcessSpec) -> trio.Process:
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    logf = open(spec.log_path, "ab", buffering=0)
    try:
        logf.write(f"\n--- start {time.strftime('%Y-%m-%dT%H:%M:%S')} {spec.name}\n".encode())
        proc = await trio.lowlevel.open_process(
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            env=child_env(spec.env),
            cwd=spec.cwd,
            start_new_session=True,
        )
    finally:
        logf.close()
    spec.pid_file.write_text(f"{proc.pid} {spec.argv[0]}\n")
    return proc


async def _spawn_detached(spec: ProcessSpec) -> _Adopted:
    """Start a child that is not ours: reparented to init, in its own session.

    Used for children that must outlive the appliance; we then watch it exactly as we
    watch one adopted after a restart, through a pidfd.
    """
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log_path, "ab") as logf:
        logf.write(f"\n--- start (detached) {time.strftime('%Y-%m-%dT%H:%M:%S')} {spec.name}\n".encode())
    script = 'setsid "$@" </dev/null >>"$LOG" 2>&1 & echo $!'
    env = dict(child_env(spec.env), LOG=str(spec.log_path))
    done = await trio.run_process(
        ["sh", "-c", script, "sh", *map(str, spec.argv)],
        capture_stdout=True, env=env, cwd=spec.cwd,
    )
    pid = int(done.stdout.decode().strip())
    # `sh` forks, `setsid` execs, then our program execs: until that has happened the pid
    # shows another command line and could not be recognised (adopted) later.
    want = [str(a) for a in spec.argv]
    with trio.move_on_after(10):
        while cmdline(pid) not in (want, []):
            await trio.sleep(0.01)
    spec.pid_file.write_text(f"{pid} {spec.argv[0]}\n")
    return _Adopted(pid)


async def _wait_ready(proc: trio.Process | _Adopted, spec: ProcessSpec) -> None:
    if spec.ready is None:
        return
    try:
        with trio.fail_after(spec.ready_timeout):
            while True:
                if proc.returncode is not None or proc.poll() is not None:
                    raise ProcessFailed(
                        f"{spec.name} exited with {proc.returncode} before it was ready; "
                        f"log {spec.log_path}:\n{log_tail(spec.log_path)}"
                    )
                if await spec.ready():
                    return
                await trio.sleep(0.2)
    except trio.TooSlowError:
        raise ProcessFailed(
            f"{spec.name} not ready after {spec.ready_timeout:.0f} s; "
            f"log {spec.log_path}:\n{log_tail(spec.log_path)}"
        ) from None


async def supervise(
    spec: ProcessSpec,
    *,
    max_backoff: float = 30.0,
    task_status: trio.TaskStatus[ProcessHandle] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run `spec` forever, restarting it when it exits.

    Raises ProcessFailed if the first start does not become ready (so `nursery.start`
    fails loudly); later crashes are restarted with backoff and counted in the handle.
    Cancellation: stops the child (SIGTERM, then SIGKILL after `stop_grace`), unless
    `handle.keep_on_cancel` is set, in which case the child keeps running.
    """
    handle = ProcessHandle(spec.name, keep_on_cancel=spec.keep_on_cancel)
    backoff = 0.5
    first = True
    while True:
        proc: trio.Process | _Adopted | None = _adoptable(spec) if first and spec.keep_on_cancel else None
        if proc is not None:
            handle.adopted = True
            log.info("process %s adopted (pid %d)", spec.name, proc.pid)
        elif spec.keep_on_cancel:
            proc = await _spawn_detached(spec)
        else:
            proc = await _start(spec)
        handle.pid = proc.pid
        handle.starts += 1
        handle.started_at = 0.0 if handle.adopted and first else time.time()
        leaving = False
        try:
            await _wait_ready(proc, spec)
            if first:
                handle.ready.set()
                task_status.started(handle)
                first = False
            log.info("process %s ready (pid %d, start #%d)", spec.name, proc.pid, handle.starts)
            started_at = trio.current_time()
            code = await proc.wait()
        except ProcessFailed:
            if first:
                raise
            code = proc.returncode if proc.returncode is not None else -1
            started_at = trio.current_time()
        except BaseException:
            leaving = True  # cancelled: decide below whether the child outlives us
            raise
        finally:
            if not (leaving and handle.keep_on_cancel and proc.poll() is None):
                await _stop(proc, grace=spec.stop_grace, name=spec.name)
                spec.pid_file.unlink(missing_ok=True)
        handle.last_exit = code
        handle.last_exit_at = time.time()
        if trio.current_time() - started_at > 60:
            backoff = 0.5
        log.warning(
            "process %s exited with %s; restarting in %.1f s; log tail:\n%s",
            spec.name, code, backoff, log_tail(spec.log_path, 5),
        )
        await trio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)
