"""A tenant's running processes, each in a slot of its own so one can be replaced while the rest run.

`RunningPlane` is what the worker monitors (`handles`) and stops. `replace` swaps one
process for a new spec — new flags, a new binary, or the same command line over renewed
certificates: the old process stops first (the new one needs its port), the new one must
become ready, and when it does not, the old spec is started again and `RolledBack` says
why. Callers replace one process at a time, so a tenant never lacks more than one component.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from appliance.controlplane import process


class RolledBack(RuntimeError):
    """A replacement did not become ready; the previous spec runs again."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: the new process did not become ready, the previous one runs again: {why}")
        self.name = name
        self.why = why


@dataclass(slots=True)
class Slot:
    """One supervised process and the scope that stops it alone."""

    spec: process.ProcessSpec
    handle: process.ProcessHandle
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        self.handle.keep_on_cancel = False
        self.scope.cancel()
        await self.done.wait()


@dataclass(slots=True)
class _SlotStarted:
    """Hands the caller a `Slot` when `process.supervise` reports its process ready."""

    spec: process.ProcessSpec
    scope: trio.CancelScope
    done: trio.Event
    outer: trio.TaskStatus[Slot]

    def started(self, handle: process.ProcessHandle) -> None:
        self.outer.started(Slot(self.spec, handle, self.scope, self.done))


async def run_slot(spec: process.ProcessSpec, *, task_status: trio.TaskStatus[Slot] = trio.TASK_STATUS_IGNORED) -> None:
    """Supervise `spec` in a scope of its own; started once the process is ready.

    No nursery of its own, so a first start that fails reaches `nursery.start` as the bare
    `ProcessFailed`.
    """
    done = trio.Event()
    try:
        with trio.CancelScope() as scope:
            await process.supervise(spec, task_status=_SlotStarted(spec, scope, done, task_status))  # type: ignore[arg-type]
    finally:
        done.set()


@dataclass(slots=True)
class RunningPlane:
    """Child processes of one tenant, running in the tenant's nursery."""

    slots: list[Slot]
    scope: trio.CancelScope
    done: trio.Event
    #: where replacements start (the plane's own nursery)
    nursery: trio.Nursery | None = None

    @property
    def handles(self) -> tuple[process.ProcessHandle, ...]:
        return tuple(s.handle for s in self.slots)

    def slot(self, name: str) -> Slot | None:
        return next((s for s in self.slots if s.spec.name == name), None)

    async def stop(self) -> None:
        """Really stop them (even kept ones) and wait until they are gone."""
        for slot in self.slots:
            slot.handle.keep_on_cancel = False
        self.scope.cancel()
        await self.done.wait()

    async def replace(self, spec: process.ProcessSpec) -> None:
        """Run `spec` instead of the process of the same name; `RolledBack` if it is not ready."""
        assert self.nursery is not None, "a plane without a nursery cannot replace its processes"
        index = next(i for i, s in enumerate(self.slots) if s.spec.name == spec.name)
        old = self.slots[index]
        await old.stop()
        try:
            self.slots[index] = await self.nursery.start(run_slot, spec)
        except process.ProcessFailed as exc:
            try:
                self.slots[index] = await self.nursery.start(run_slot, old.spec)
            except process.ProcessFailed:
                await self.stop()  # neither runs: the next reconcile starts the tenant afresh
                raise
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            why = lines[0] + (f" (last log line: {lines[-1]})" if len(lines) > 1 else "")
            raise RolledBack(spec.name.rsplit("/", 1)[-1], why) from exc
