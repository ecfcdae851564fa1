"""The line's precise timer: never wakes before its deadline, survives cancellation."""

from __future__ import annotations

import asyncio

import pytest

from tepi.drivers.modbus import timer as timer_mod
from tepi.drivers.modbus.timer import PreciseTimer

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("precise", [True, False], ids=["timerfd", "thread"])
async def test_sleep_until_never_wakes_before_the_deadline(
    precise: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not precise:
        monkeypatch.setattr(timer_mod, "_LIBC", None)
    t = PreciseTimer()
    loop = asyncio.get_running_loop()
    try:
        for i in range(30):
            deadline = loop.time() + 0.0002 * (i % 10)
            await t.sleep_until(deadline)
            assert loop.time() >= deadline
        assert (t._fd is not None) is precise
    finally:
        t.close()
    assert t._fd is None


async def test_a_cancelled_sleep_disarms_and_the_next_one_still_works() -> None:
    t = PreciseTimer()
    loop = asyncio.get_running_loop()
    try:
        task = asyncio.create_task(t.sleep_until(loop.time() + 0.02))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert t._waiter is None
        deadline = loop.time() + 0.03
        await t.sleep_until(deadline)  # the cancelled deadline (earlier) must not end this
        assert loop.time() >= deadline
    finally:
        t.close()


async def test_a_deadline_in_the_past_returns_at_once_without_a_timer() -> None:
    t = PreciseTimer()
    loop = asyncio.get_running_loop()
    await t.sleep_until(loop.time() - 1)
    assert t._fd is None
