"""The retry policies (tepi.core.retry): full jitter under a doubling cap, the first failure
and the recovery logged once each, cancellation always propagating, and the stop conditions."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tenacity import RetryCallState

from tepi.core.retry import (
    BUFFER_COMMIT,
    DEVICE_OPEN,
    SERIAL_REOPEN,
    UPLINK_RECONNECT,
    Outage,
    Policy,
)

pytestmark = pytest.mark.timeout(10)
log = logging.getLogger("tepi.test.retry")
FAST = Policy("fast", 0.001, 0.004)


@pytest.mark.parametrize(
    ("failures", "lo", "hi"), [(1, 1.0, 120.0), (3, 0.5, 30.0), (8, 1.0, 120.0), (40, 0.2, 1.0)]
)
def test_delay_is_full_jitter_below_a_doubling_cap(failures: int, lo: float, hi: float) -> None:
    policy = Policy("p", lo, hi)
    cap = min(hi, lo * 2 ** (failures - 1))
    assert policy.cap(failures) == cap
    rng = random.Random(failures)
    assert all(0 <= policy.delay(failures, rng) <= cap for _ in range(500))


@given(st.integers(1, 200), st.floats(0.01, 10), st.floats(10, 600))
def test_any_delay_is_within_its_cap(failures: int, lo: float, hi: float) -> None:
    cap = min(hi, lo * 2 ** min(failures - 1, 60))
    assert 0 <= Policy("p", lo, hi).delay(failures, random.Random(failures)) <= cap


def test_the_cap_stops_at_max() -> None:
    assert [UPLINK_RECONNECT.cap(n) for n in (1, 2, 3, 7, 8, 100)] == [1, 2, 4, 64, 120, 120]
    assert BUFFER_COMMIT.cap(1) == 0.5
    assert DEVICE_OPEN.cap(1000) == 60
    assert SERIAL_REOPEN.delay(50) == 1.0  # by path, every second, no backoff


def test_full_jitter_spreads_gateways_out() -> None:
    rng = random.Random(1)
    delays = [UPLINK_RECONNECT.delay(11, rng) for _ in range(2000)]
    assert max(delays) <= 120.0
    # Spread over the whole range, not bunched at the cap.
    assert 50 < sum(delays) / len(delays) < 70
    assert min(delays) < 5
    assert max(delays) > 115


def test_tenacity_waits_as_delay_says() -> None:
    policy = Policy("p", 0.5, 4.0)
    wait = policy.wait()
    state = RetryCallState(policy.retrying((OSError,)), None, (), {})
    for n, cap in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)):
        state.attempt_number = n
        got = [wait(state) for _ in range(300)]
        assert all(0 <= w <= cap for w in got)
        assert max(got) > cap * 0.8  # up to the cap, not below a fixed fraction of it


def test_caps_come_from_the_config() -> None:
    p = UPLINK_RECONNECT.with_caps(0.2, 1.0)
    assert (p.first_cap_s, p.max_cap_s, p.name) == (0.2, 1.0, "uplink reconnect")
    with pytest.raises(ValueError, match="first_cap_s"):
        Policy("bad", 0.0, 1.0)


async def test_first_failure_and_recovery_are_logged_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0
    failed: list[BaseException] = []

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls <= 5:
            raise OSError(28, "No space left on device")
        return "done"

    outage = Outage(log, "thing", level=logging.ERROR, then="held")
    with caplog.at_level(logging.INFO, logger=log.name):
        assert await FAST.call(flaky, (OSError,), outage, on_failure=failed.append) == "done"
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == log.name]
    assert len(lines) == 2, lines
    assert lines[0][0] == logging.ERROR
    assert lines[0][1] == "thing failed: [Errno 28] No space left on device; held"
    assert lines[1][0] == logging.INFO
    assert lines[1][1].startswith("thing recovered after ")
    assert lines[1][1].endswith(" s (5 failures)")
    assert len(failed) == 5
    assert calls == 6
    assert not outage.down
    # Up from the start: nothing to say.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=log.name):
        await FAST.call(flaky, (OSError,), outage)
    assert [r for r in caplog.records if r.name == log.name] == []


async def test_an_error_not_retried_propagates_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await FAST.call(broken, (OSError,))
    assert calls == 1


async def test_a_cancel_raised_by_the_operation_propagates() -> None:
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await FAST.call(cancelled, (Exception,))
    assert calls == 1


async def test_a_cancel_during_the_wait_propagates() -> None:
    slow = Policy("slow", 30.0, 30.0, jitter=False)
    attempts = asyncio.Event()

    async def failing() -> None:
        attempts.set()
        raise OSError("down")

    task = asyncio.create_task(slow.call(failing, (OSError,)))
    await attempts.wait()
    await asyncio.sleep(0.01)  # now in its 30 s wait
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


def test_a_cancel_cannot_be_made_retryable() -> None:
    with pytest.raises(TypeError, match="cancel must propagate"):
        FAST.retrying((asyncio.CancelledError,))  # type: ignore[arg-type]


async def test_gives_up_after_its_delay_with_the_last_error() -> None:
    policy = Policy("bounded", 0.001, 0.002, give_up_after_s=0.05)
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise OSError(f"attempt {calls}")

    with pytest.raises(OSError, match="attempt") as info:
        await policy.call(down, (OSError,))
    assert str(info.value) == f"attempt {calls}"
    assert calls > 1


async def test_stopping_ends_the_wait_at_once_and_gives_up() -> None:
    slow = Policy("slow", 30.0, 30.0, jitter=False)
    stopping = asyncio.Event()
    tried = asyncio.Event()

    async def down() -> None:
        tried.set()
        raise OSError("down")

    task = asyncio.create_task(slow.call(down, (OSError,), stopping=stopping))
    await tried.wait()
    started = time.monotonic()
    stopping.set()
    with pytest.raises(OSError, match="down"):
        await task
    assert time.monotonic() - started < 1.0
