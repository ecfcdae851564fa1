"""The poller against the simulator: a dead device on a shared RS-485 line is quarantined and
probed with backoff, so the live device on the same line keeps its poll interval."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tepi.buffer import Buffer, BufferSettings
from tepi.core.clock import boottime
from tepi.core.due import Due
from tepi.core.errors import DeviceUnavailable
from tepi.core.records import MetricInfo, Sample, Values
from tepi.drivers.base import SharedResources
from tepi.drivers.modbus import ModbusDriver, ModbusRtuConfig, ModbusTcpConfig
from tepi.drivers.synthetic import SyntheticConfig, SyntheticDriver
from tepi.gateway.pacing import Bell, _ticks
from tepi.gateway.poller import MAX_REASONS, DeviceStats, poll_device
from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(30)

REG = [{"address": 0, "table": "holding", "kind": "counter"}]


def rtu(id_: str, port: str, unit: int, **kw: Any) -> ModbusRtuConfig:
    return ModbusRtuConfig.model_validate(
        {
            "id": id_,
            "driver": "modbus-rtu",
            "port": port,
            "unit": unit,
            "registers": [{"name": "n", "address": 0}],
            **kw,
        }
    )


async def test_a_dead_device_is_quarantined_and_the_live_one_keeps_its_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim_cfg = {
        "devices": [
            {"id": "live", "transport": "rtu", "unit": 1, "bus": "line", "registers": REG},
            {"id": "dead", "transport": "rtu", "unit": 2, "bus": "line", "registers": REG},
        ]
    }
    async with Simulator(sim_cfg) as sim:
        sim.device("dead").set_fault("no_reply")
        port = sim.endpoint("live")
        live = rtu("live", port, 1, poll_interval="200ms", timeout="300ms")
        dead = rtu("dead", port, 2, poll_interval="50ms", timeout="400ms", quarantine_after=2)
        resources = SharedResources()
        stats = {"live": DeviceStats(), "dead": DeviceStats()}
        async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
            tasks = [
                asyncio.create_task(
                    poll_device(cfg, ModbusDriver(cfg, resources), buf, stats[cfg.id])
                )
                for cfg in (live, dead)
            ]
            # Let the dead device fail into quarantine, then measure a 3 s window.
            async with asyncio.timeout(10):
                while stats["dead"].state != "quarantined":
                    await asyncio.sleep(0.05)
            polls0, dead0 = stats["live"].polls, sim.device("dead").requests
            await asyncio.sleep(3.0)  # the window being measured
            live_polls = stats["live"].polls - polls0
            dead_requests = sim.device("dead").requests - dead0
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert live_polls >= 13, f"live device polled {live_polls} times in 3 s at a 200 ms interval"
    assert stats["live"].state == "ok"
    # The first probe comes after ten timeouts (4 s): none in the window, not one every 50 ms.
    assert dead_requests <= 1, dead_requests
    assert stats["dead"].next_probe_s == 4.0
    assert any("quarantined" in r.getMessage() for r in caplog.records)


async def test_at_a_stop_the_poll_in_flight_finishes_and_its_readings_are_kept(
    tmp_path: Path,
) -> None:
    """A device that answered has handed out its value (a counter moved): a clean stop
    must keep that reading, not cancel the request it answered."""
    sim_cfg = {"devices": [{"id": "d", "transport": "rtu", "unit": 1, "registers": REG}]}
    async with Simulator(sim_cfg) as sim:
        sim.device("d").set_fault("slow", delay_s=0.5)
        cfg = rtu("d", sim.endpoint("d"), 1, poll_interval=0.05, timeout=2.0)
        stopping = asyncio.Event()
        async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
            task = asyncio.create_task(
                poll_device(
                    cfg,
                    ModbusDriver(cfg, SharedResources()),
                    buf,
                    DeviceStats(),
                    stopping=stopping,
                )
            )
            await sim.device("d").wait_requests(1, timeout=10)  # a request is in flight
            stopping.set()
            async with asyncio.timeout(5):
                await task  # returns by itself, once its poll is done
            handed_out = sim.device("d").counter_value(address=0, table="holding")
            batch = await buf.fetch(0, 100)
    assert batch is not None
    assert [i.reading.value for i in batch.items] == list(range(1, handed_out + 1))
    assert handed_out >= 1


async def test_devices_with_one_interval_poll_on_one_grid(tmp_path: Path) -> None:
    """Started apart, two devices with the same interval poll at once the first time, then
    on the same ticks (multiples of the interval), so a tick wakes the agent once."""
    interval = 0.1
    cfgs = [
        SyntheticConfig.model_validate(
            {"id": f"s{i}", "driver": "synthetic", "metrics": 1, "poll_interval": interval}
        )
        for i in range(2)
    ]
    stopping = asyncio.Event()
    stats = [DeviceStats(), DeviceStats()]
    async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
        loop = asyncio.get_running_loop()
        first = loop.create_task(
            poll_device(cfgs[0], SyntheticDriver(cfgs[0]), buf, stats[0], stopping=stopping)
        )
        async with asyncio.timeout(5):
            while stats[0].polls < 2:
                await asyncio.sleep(0.01)
        # Start the second half-way between two ticks: off the grid by half an interval.
        await asyncio.sleep(((0.5 - (loop.time() / interval) % 1) % 1) * interval)
        off_grid_at = boottime()
        second = loop.create_task(
            poll_device(cfgs[1], SyntheticDriver(cfgs[1]), buf, stats[1], stopping=stopping)
        )
        async with asyncio.timeout(5):
            while stats[1].polls < 4:
                await asyncio.sleep(0.01)
        stopping.set()
        await asyncio.gather(first, second)
        batch = await buf.fetch(0, 1000)
    assert batch is not None
    by_device: dict[str, list[float]] = {"s0": [], "s1": []}
    for item in batch.items:
        by_device[item.reading.device].append(item.reading.mono)
    s1 = by_device["s1"]

    def phase(times: list[float]) -> float:
        """The median phase of polls within the interval (boottime: the loop's clock plus a
        constant), as a fraction: a late wake-up on a busy machine moves one, not this."""
        return statistics.median((t / interval) % 1 for t in times)

    # On one grid: the later polls of both share a phase; off it, they would be half an
    # interval apart.
    apart = abs(phase(s1[1:]) - phase(by_device["s0"][1:]))
    assert min(apart, 1 - apart) < 0.15, apart
    assert s1[0] - off_grid_at < interval  # the first poll did not wait for the grid


class _Chatty:
    """A driver whose every failure has a reason of its own (a value in the text)."""

    quarantine = False

    def __init__(self) -> None:
        self.n = 0

    async def __aenter__(self) -> _Chatty:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> list[Sample]:
        self.n += 1
        raise DeviceUnavailable(f"no answer at {self.n}", "made up")

    def metrics(self) -> list[MetricInfo]:
        return [MetricInfo("n", None)]


async def test_error_reasons_a_device_counts_are_bounded(tmp_path: Path) -> None:
    cfg = SyntheticConfig.model_validate(
        {"id": "c", "driver": "synthetic", "poll_interval": 0.001, "quarantine_after": 1000}
    )
    stats = DeviceStats()
    stopping = asyncio.Event()
    async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
        task = asyncio.create_task(poll_device(cfg, _Chatty(), buf, stats, stopping=stopping))
        async with asyncio.timeout(10):
            while stats.polls < 40:
                await asyncio.sleep(0.005)
        stopping.set()
        await task
    assert len(stats.errors) == MAX_REASONS + 1
    assert stats.errors["other"] == sum(stats.errors.values()) - MAX_REASONS
    assert sum(stats.errors.values()) == stats.consecutive_failures


class _Pushing(SyntheticDriver):
    """A synthetic device that also makes readings between polls, as a camera's analytics
    do: ``push`` queues one and tells the poll loop (``on_ready``); ``finish`` adds a last
    one, as a camera's interval so far at a clean stop."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        super().__init__(cfg, SharedResources())
        self.on_ready: Any = None
        self.waiting: list[Values] = []
        self.finished = False

    def push(self, value: int) -> None:
        self.waiting.append(Values(("pushed",), (None,), [value], time.time(), boottime()))
        assert self.on_ready is not None, "the poll loop did not hook on_ready"
        self.on_ready()

    def drain(self) -> list[Values]:
        out, self.waiting = self.waiting, []
        return out

    async def finish(self) -> None:
        self.finished = True
        self.waiting.append(Values(("pushed",), (None,), [999], time.time(), boottime()))


async def test_readings_made_between_polls_go_at_once_without_a_poll(tmp_path: Path) -> None:
    cfg = SyntheticConfig.model_validate(
        {"id": "p", "driver": "synthetic", "metrics": 1, "poll_interval": "1h"}
    )
    driver = _Pushing(cfg)
    stats = DeviceStats()
    stats.wake = asyncio.Event()
    stopping = asyncio.Event()

    def pushed(items: list[Any]) -> list[object]:
        return [i.reading.value for i in items if i.reading.metric == "pushed"]

    async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
        task = asyncio.create_task(poll_device(cfg, driver, buf, stats, stopping=stopping))
        async with asyncio.timeout(10):
            while stats.polls < 1 or stats.last_poll_s is None:
                await asyncio.sleep(0.01)
            driver.push(1)
            driver.push(2)
            while True:  # drained by the loop, long before the next poll (an hour away)
                batch = await buf.fetch(0, 100)
                if batch is not None and pushed(batch.items) == [1, 2]:
                    break
                await asyncio.sleep(0.01)
        assert stats.polls == 1
        stopping.set()
        stats.wake.set()
        async with asyncio.timeout(5):
            await task
        batch = await buf.fetch(0, 100)
    assert driver.finished
    assert batch is not None
    assert pushed(batch.items) == [1, 2, 999]  # a clean stop hands over what was begun


class _Hangs(SyntheticDriver):
    """A synthetic device whose reads hang (a driver bug: no timeout of its own) until
    ``hang`` is cleared."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        super().__init__(cfg, SharedResources())
        self.hang = True
        self.reads = 0
        self.released = asyncio.Event()

    async def read(self) -> list[Values]:
        self.reads += 1
        if self.hang:
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                self.released.set()
                raise
        return list(await super().read())


def _hanging(timeout: float = 0.01) -> SyntheticConfig:
    return SyntheticConfig.model_validate(
        {"id": "h", "driver": "synthetic", "metrics": 1, "poll_interval": 0.05, "timeout": timeout}
    )


@pytest.mark.timeout(40)
async def test_a_read_that_never_returns_is_a_failed_poll_and_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    # The guard is 8 timeouts + 5 s: a read hung for longer is a failed poll ("poll timeout"),
    # and the loop polls on. One timer serves many polls (``_HangGuard``): it must still fire
    # for a poll that started after it was armed.
    driver = _Hangs(_hanging())
    stats = DeviceStats()
    stats.wake = Bell()
    stopping = asyncio.Event()
    async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
        task = asyncio.create_task(
            poll_device(driver.config, driver, buf, stats, stopping=stopping)
        )
        started = time.monotonic()
        async with asyncio.timeout(15):
            await driver.released.wait()
        hung_for = time.monotonic() - started
        async with asyncio.timeout(5):
            while stats.errors.get("poll timeout", 0) < 1:
                await asyncio.sleep(0.01)
        driver.hang = False
        async with asyncio.timeout(5):
            while stats.state != "ok" or stats.readings < 1:
                await asyncio.sleep(0.01)
        assert not task.done()
        stopping.set()
        stats.wake.set()
        async with asyncio.timeout(5):
            await task
    assert 5.0 <= hung_for < 8.0, hung_for
    assert stats.errors["poll timeout"] == 1
    assert stats.last_error == "poll timeout: no result in 5 s"


async def test_a_cancel_from_outside_during_a_read_is_not_taken_for_a_hang(
    tmp_path: Path,
) -> None:
    driver = _Hangs(_hanging())
    stats = DeviceStats()
    stats.wake = Bell()
    async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
        task = asyncio.create_task(poll_device(driver.config, driver, buf, stats))
        async with asyncio.timeout(5):
            while driver.reads < 1:
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task
    assert task.cancelled()
    assert stats.errors.get("poll timeout", 0) == 0


async def test_a_bell_wakes_its_sleeper_at_once_and_otherwise_at_the_time() -> None:
    bell = Bell()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await bell.sleep(0.05)  # nothing rings: the time
    assert loop.time() - t0 >= 0.05
    sleeper = asyncio.create_task(bell.sleep(30))
    await asyncio.sleep(0)
    t0 = loop.time()
    bell.set()
    async with asyncio.timeout(1):
        await sleeper
    assert loop.time() - t0 < 0.5
    t0 = loop.time()
    await bell.sleep(30)  # set: returns at once, as Event.wait does
    assert loop.time() - t0 < 0.5
    bell.clear()
    assert not bell._sleepers  # nothing left behind


async def test_bells_sleeping_until_one_instant_share_one_timer() -> None:
    """The devices of a grid tick sleep until the same instant: one timer for all of them
    (one entry on the loop's timer heap, not one a device); a bell rung early wakes its own
    sleeper at once (which leaves the instant's list: a device woken often between ticks
    leaves nothing behind), and the others still wake at the instant, not before."""
    loop = asyncio.get_running_loop()
    bells = [Bell() for _ in range(3)]
    when = loop.time() + 0.1
    scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
    sleepers = [asyncio.create_task(b.sleep_until(when)) for b in bells]
    await asyncio.sleep(0)
    ticks = _ticks(loop)
    assert list(ticks.due) == [when]
    assert len(ticks.due[when]) == 3
    assert len(loop._scheduled) == scheduled + 1  # type: ignore[attr-defined]
    bells[0].set()
    async with asyncio.timeout(1):
        await sleepers[0]
    assert loop.time() < when
    assert not sleepers[1].done()
    assert len(ticks.due[when]) == 2  # the one woken early left at once
    async with asyncio.timeout(5):
        await asyncio.gather(*sleepers[1:])
    assert loop.time() >= when
    assert not ticks.due  # rung and forgotten
    assert not any(b._sleepers for b in bells)


class _SwallowsCancel(SyntheticDriver):
    """A driver whose read returns its values when cancelled, as Python 3.11's
    ``asyncio.wait_for`` does when the answer comes in the same turn as the cancel."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        super().__init__(cfg, SharedResources())
        self.reading = asyncio.Event()
        self.swallowed = 0

    async def read(self) -> list[Values]:
        values = list(await super().read())
        self.reading.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.swallowed += 1  # and no uncancel(): the task is still being cancelled
        return values


async def test_a_cancel_the_driver_swallowed_still_ends_the_poll_loop(tmp_path: Path) -> None:
    cfg = SyntheticConfig.model_validate(
        {"id": "s", "driver": "synthetic", "metrics": 1, "poll_interval": 0.05}
    )
    driver = _SwallowsCancel(cfg)
    stats = DeviceStats()
    stats.wake = Bell()
    async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
        task = asyncio.create_task(poll_device(cfg, driver, buf, stats))
        async with asyncio.timeout(5):
            await driver.reading.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):  # it polled on for ever before
                await task
        assert driver.swallowed == 1
        assert stats.polls == 1
        assert stats.readings == 1  # the poll's values, handed out, are kept
        batch = await buf.fetch(0, 10)
    assert batch is not None
    assert len(batch) == 1


class _WrongShapes:
    """A driver whose reads give, in turn, what a read must not: no list, a list with None,
    a list with a number; then good samples."""

    quarantine = False

    def __init__(self) -> None:
        self.n = 0

    async def __aenter__(self) -> _WrongShapes:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> Any:
        self.n += 1
        wrong: list[Any] = [None, [None], [42]]
        if self.n <= len(wrong):
            return wrong[self.n - 1]
        return [Sample("n", self.n, None, time.time(), boottime())]

    def metrics(self) -> list[MetricInfo]:
        return [MetricInfo("n", None)]


async def test_a_read_that_gives_no_samples_is_an_internal_error_and_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    cfg = SyntheticConfig.model_validate(
        {"id": "w", "driver": "synthetic", "poll_interval": 0.001, "quarantine_after": 1000}
    )
    stats = DeviceStats()
    stopping = asyncio.Event()
    driver = _WrongShapes()
    async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
        task = asyncio.create_task(poll_device(cfg, driver, buf, stats, stopping=stopping))
        async with asyncio.timeout(10):
            while stats.readings < 2:
                assert not task.done(), task
                await asyncio.sleep(0.005)
        stopping.set()
        await task
        batch = await buf.fetch(0, 100)
    # Each of the three wrong reads is a failed poll, classified, not a crash of the loop.
    assert stats.internal_errors == 3
    assert stats.errors["internal error"] == 3
    assert stats.state == "ok"
    assert batch is not None
    reasons = [i.reading.reason for i in batch.items]
    assert reasons[0] == "internal error"  # the first failure's bad reading
    assert [i.reading.value for i in batch.items if i.reading.reason is None][:2] == [4, 5]


async def test_a_modbus_tcp_poll_waits_for_its_tick_in_the_link_and_the_bell_calls_it_off(
    tmp_path: Path,
) -> None:
    """A Modbus TCP device does not sleep to its next tick: its link holds the poll's request
    until then (``tepi.core.due``), and the poll loop's task wakes once a poll, with the
    answer. Whatever rings the bell meanwhile is done at once, as from a sleep: a poll asked
    for now, a new interval, the stop; the request called off is never sent."""
    async with Simulator(
        {"devices": [{"id": "d", "transport": "tcp", "unit": 1, "registers": REG}]}
    ) as sim:
        host, port = sim.endpoint("d").split(":")
        cfg = ModbusTcpConfig.model_validate(
            {
                "id": "d",
                "driver": "modbus-tcp",
                "host": host,
                "port": int(port),
                "unit": 1,
                "poll_interval": 86400,  # the next tick: ~never within this test
                "registers": [{"name": "n", "address": 0}],
            }
        )
        driver = ModbusDriver(cfg, SharedResources())
        stats = DeviceStats()
        bell = stats.wake = Bell()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def held() -> Due:
            async with asyncio.timeout(5):
                while bell.due is None:
                    await asyncio.sleep(0.01)
            assert not bell._sleepers, "the poll loop sleeps to its tick"
            return bell.due

        async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
            task = asyncio.create_task(poll_device(cfg, driver, buf, stats, stopping=stopping))
            # The first poll was at once; the next is held for its tick (a poll begun, as a
            # request in flight is).
            due = await held()
            assert (stats.polls, stats.readings) == (2, 1)
            assert due.when > loop.time()
            assert due.when % 86400 == 0  # the grid's tick
            t0 = loop.time()
            async with asyncio.timeout(5):
                assert await stats.poll_now() is None
            assert loop.time() - t0 < 2
            await held()
            assert (stats.polls, stats.readings) == (3, 2)  # the held one called off, not counted
            assert sim.device("d").requests == 2  # and not sent

            stats.set_interval(0.05)  # polls at once, then every 50 ms, each held to its tick
            async with asyncio.timeout(5):
                while stats.polls < 12:
                    await asyncio.sleep(0.01)
            stats.set_interval(None)
            await held()
            polled = stats.polls - 1  # and one held

            t0 = loop.time()
            stopping.set()
            bell.set()
            async with asyncio.timeout(5):
                await task
            assert loop.time() - t0 < 2
        assert stats.polls == polled
        assert sim.device("d").requests == polled
        assert stats.readings == polled
        assert stats.errors == {}
        assert stats.missed_polls == 0


class _CannotSay(SyntheticDriver):
    """A driver whose ``schedules()`` raises: a bug, as any other of its methods may have."""

    def schedules(self) -> bool:
        raise ValueError("schedules() broke")


async def test_a_driver_that_cannot_say_whether_it_holds_requests_is_polled_by_sleeping(
    tmp_path: Path,
) -> None:
    """``schedules()`` raising is the driver's bug: counted and logged as an internal error
    once, and the device is polled as one that holds nothing (its loop sleeps to each tick)."""
    cfg = SyntheticConfig.model_validate(
        {"id": "s", "driver": "synthetic", "metrics": 1, "poll_interval": 0.02}
    )
    stats = DeviceStats()
    bell = stats.wake = Bell()
    stopping = asyncio.Event()
    driver = _CannotSay(cfg, SharedResources())
    async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
        task = asyncio.create_task(poll_device(cfg, driver, buf, stats, stopping=stopping))
        async with asyncio.timeout(10):
            while stats.readings < 3:
                await asyncio.sleep(0.005)
        assert bell.due is None
        stopping.set()
        bell.set()
        async with asyncio.timeout(5):
            await task
    assert stats.internal_errors == 1
    assert stats.errors == {}  # not a failed poll: every poll read
    assert stats.state == "ok"


class _Slow(SyntheticDriver):
    """A synthetic device whose every read takes ``took`` seconds."""

    def __init__(self, cfg: SyntheticConfig, took: float) -> None:
        super().__init__(cfg, SharedResources())
        self.took = took

    async def read(self) -> list[Values]:
        await asyncio.sleep(self.took)
        return list(await super().read())


@pytest.mark.parametrize(("took", "missed"), [(0.04, False), (0.25, True)])
async def test_a_first_poll_across_a_tick_is_not_a_missed_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, took: float, missed: bool
) -> None:
    """The first poll goes at once, off the grid. Begun 20 ms before a tick of a 0.2 s grid,
    a read of 40 ms ends after that tick: the device was polled a moment before it, so the
    tick is not missed and no warning says the device cannot keep its interval (every start
    of a gateway with many devices logged it for some). A read longer than the interval
    still misses ticks, counted and logged."""
    interval = 0.2
    cfg = SyntheticConfig.model_validate(
        {"id": "s", "driver": "synthetic", "metrics": 1, "poll_interval": interval}
    )
    stats = DeviceStats()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with Buffer(BufferSettings(path=tmp_path / "b.db"), "boot") as buf:
        # Start 20 ms before a tick of the device's grid (its ticks are the interval's
        # multiples on the loop's clock).
        tick = (loop.time() // interval + 2) * interval
        await asyncio.sleep(tick - 0.02 - loop.time())
        task = asyncio.create_task(
            poll_device(cfg, _Slow(cfg, took), buf, stats, stopping=stopping)
        )
        async with asyncio.timeout(10):
            while stats.polls < 4:
                await asyncio.sleep(0.01)
        stopping.set()
        async with asyncio.timeout(5):
            await task
    warned = [r for r in caplog.records if "cannot keep its" in r.getMessage()]
    if missed:
        assert stats.missed_polls >= 1
        assert len(warned) == 1
    else:
        assert stats.missed_polls == 0
        assert warned == []
