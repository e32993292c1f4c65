"""The graceful-stop gate: no new work after `begin`, and `wait_idle` waits for the work in progress."""

from __future__ import annotations

import trio
import trio.testing

from appliance.util.drain import Drain


async def test_begin_closes_the_gate_and_idle_waits_for_work_in_progress() -> None:
    drain = Drain()
    await drain.gate()  # open before the stop
    calls: list[str] = []
    drain.on_begin(lambda: calls.append("closed listener"))
    finish = trio.Event()
    took_more = False

    async def worker(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal took_more
        with drain.work():
            task_status.started()
            await finish.wait()
        await drain.gate()
        took_more = True  # never reached once the stop began

    async with trio.open_nursery() as nursery:
        await nursery.start(worker)
        assert drain.active == 1
        drain.begin()
        drain.begin()  # idempotent: callbacks ran once
        assert calls == ["closed listener"]
        idle = False

        async def waiter() -> None:
            nonlocal idle
            await drain.wait_idle()
            idle = True

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not idle
        finish.set()
        await trio.testing.wait_all_tasks_blocked()
        assert idle and drain.active == 0 and not took_more
        nursery.cancel_scope.cancel()
    late: list[str] = []
    drain.on_begin(lambda: late.append("now"))
    assert late == ["now"]
