"""tepi.core.tasks.TaskGroup: a task that caught its group's failure still times out.

On Python 3.11 asyncio's own TaskGroup leaves the task counted as cancelling, and the next
``asyncio.timeout`` that expires there raises CancelledError: the uplink's task ended that
way, silently, at its first connect timeout after a lost link."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tepi.core.tasks import TaskGroup, cancel_and_wait

pytestmark = pytest.mark.timeout(10)


async def _fails_soon() -> None:
    await asyncio.sleep(0.01)
    raise ValueError("a lost link")


async def _next_timeout() -> str:
    """What the task meets at its next timeout scope."""
    try:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(5)
    except TimeoutError:
        return "timeout"
    except asyncio.CancelledError:
        return "cancelled"
    return "nothing"


async def _times_out_after_a_failed_group(group: type[asyncio.TaskGroup]) -> str:
    """What a task that caught its group's failure meets at its next timeout."""
    try:
        async with group() as tg:  # the body only starts: the failure comes in the exit
            tg.create_task(_fails_soon())
    except* ValueError:
        pass
    return await _next_timeout()


async def test_a_failed_group_leaves_the_task_able_to_time_out() -> None:
    task = asyncio.create_task(_times_out_after_a_failed_group(TaskGroup))
    assert await task == "timeout"
    assert task.cancelling() == 0


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="what Python 3.11 does")
async def test_asyncio_s_own_group_is_why() -> None:
    # The timeout raises CancelledError, which would end the task as if it were stopped.
    assert await _times_out_after_a_failed_group(asyncio.TaskGroup) == "cancelled"


async def test_a_failure_in_the_body_and_one_in_the_exit() -> None:
    """A child failing while the body still runs (3.11 takes that request back itself)."""

    async def body_waits() -> str:
        try:
            async with TaskGroup() as tg:
                tg.create_task(_fails_soon())
                await asyncio.sleep(5)  # woken by the group's cancel
        except* ValueError:
            pass
        return await _next_timeout()

    task = asyncio.create_task(body_waits())
    assert await task == "timeout"
    assert task.cancelling() == 0


async def test_a_stop_from_outside_still_stops() -> None:
    """A cancel from outside while the group waits is not taken back: it ends the task."""
    started = asyncio.Event()

    async def runs() -> None:
        async with TaskGroup() as tg:
            tg.create_task(asyncio.sleep(5))
            started.set()

    task = asyncio.create_task(runs())
    await started.wait()
    await asyncio.sleep(0)  # in the group's exit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_cancel_and_wait_passes_on_the_caller_s_own_cancellation() -> None:
    """Stopping a task that takes a while to end: a stop of the caller meanwhile is not
    taken for the stopped task's CancelledError."""
    slow_started = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            slow_started.set()
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # its clean-up
            raise

    async def stops_it(child: asyncio.Task[None]) -> str:
        await cancel_and_wait(child)
        return "went on"

    child = asyncio.create_task(slow_to_end())
    await slow_started.wait()
    caller = asyncio.create_task(stops_it(child))
    await asyncio.sleep(0.01)  # the caller waits for the child's clean-up
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert child.cancelled()

    # Alone, the child's own cancellation ends the wait, quietly.
    other = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    assert await stops_it(other) == "went on"
    assert other.cancelled()
