"""Graceful stop: stop taking new work, let the work in progress finish, then be cancelled.

`main` calls `begin()` on the first SIGTERM. From then on `gate()` never returns (a worker
that would take its next item waits to be cancelled instead) and `wait_idle()` returns once
every `work()` block has ended; `main` waits for that up to `graceful-timeout`, then cancels
everything. Work is counted, not named: a write is either finished or cut by cancellation,
and every reconcile is idempotent, so a cut one is redone after the restart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import trio

__all__ = ["Drain"]


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self._idle = trio.Event()
        self._idle.set()
        self._on_begin: list[Callable[[], None]] = []

    def begin(self) -> None:
        """Stop taking new work (idempotent); runs the `on_begin` callbacks once."""
        if self.draining:
            return
        self.draining = True
        for fn in self._on_begin:
            fn()

    def on_begin(self, fn: Callable[[], None]) -> None:
        """Call `fn` when the stop begins (at once if it has), e.g. to close a listener."""
        if self.draining:
            fn()
        else:
            self._on_begin.append(fn)

    async def gate(self) -> None:
        """A checkpoint before taking new work: returns at once unless the stop has begun."""
        await trio.lowlevel.checkpoint()
        if self.draining:
            await trio.sleep_forever()

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        """Count the block as work in progress until it ends (by finishing or by cancellation)."""
        self.active += 1
        if self.active == 1:
            self._idle = trio.Event()
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no work is in progress (the caller sets the deadline)."""
        await self._idle.wait()
