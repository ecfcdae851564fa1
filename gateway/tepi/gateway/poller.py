"""Polls one device on its interval and hands each sample to the buffer as a reading.

A device failure never leaves this task: the first failure is logged as an error and sent
once as bad-quality readings (so the IOC sees the moment a device went quiet), the retries
in between are only counted, and the recovery is logged as info. After ``quarantine_after``
failed polls in a row the device is *quarantined*: it is probed only now and then, first
after ten timeouts (or its poll interval, if longer), the wait doubling up to
``quarantine_max``, so a dead device takes at most a tenth of the bus time of the live devices
that share its port. Polls keep to a fixed grid: the first poll is at once, the next ones at
multiples of the interval on the loop's clock (shared by every device with that interval, so
they poll together and wake the loop once a tick); a poll that overruns skips the ticks it
missed and counts them, rather than drifting, and the first overrun is logged, so a bus
without the capacity is said, not hidden.

A driver's bug stays here too. Whatever its open, read, close or counters raise that is not
a ``DeviceError`` (a ValueError from a decoder, a library's own exception) is classified at
this boundary as ``DriverFault``: a failed poll like any other (bad readings, reason
``internal error``, backoff and quarantine), counted in ``internal_errors``, its traceback
logged the first time. ``CancelledError``, ``KeyboardInterrupt`` and ``SystemExit`` are not
``Exception`` and go through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from types import TracebackType
from typing import Self, cast

from tepi.buffer import Buffer
from tepi.buffer.records import Run
from tepi.core.clock import Stamp, WallClock, boottime
from tepi.core.due import CalledOff, Due
from tepi.core.errors import DeviceError, DeviceUnavailable, DriverFault
from tepi.core.records import MetricInfo, Reading, Sample, Value, Values, storable
from tepi.core.retry import DEVICE_OPEN
from tepi.drivers.base import Driver, DriverConfig
from tepi.gateway.pacing import Bell, Rounds, _HangGuard, _pause

log = logging.getLogger(__name__)
_INT64 = 2**63
MAX_REASONS = 16  # error reasons counted apart, a device; the rest as "other"


@dataclass
class BadHeartbeat:
    """Which bad readings to send: per metric, the reason last sent and when (poll loop time).

    A bad reading with the reason last sent for its metric, less than ``every`` seconds after
    it, is not sent (it is counted); a new reason, or the first bad reading after a good one,
    is sent at once; and every ``every`` seconds the same reason is sent again, a heartbeat."""

    sent: dict[str, tuple[str, float]] = field(default_factory=dict)

    def send(self, metric: str, reason: str | None, now: float, every: float) -> bool:
        if reason is None:
            self.sent.pop(metric, None)
            return True
        last = self.sent.get(metric)
        if last is not None and last[0] == reason and now - last[1] < every:
            return False
        self.sent[metric] = (reason, now)
        return True


@dataclass
class DeviceStats:
    """A device's counters; health.DeviceHealth.of makes its part of the health message."""

    state: str = "starting"  # starting | ok | failing | quarantined
    polls: int = 0
    readings: int = 0
    bad_readings: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    consecutive_failures: int = 0
    missed_polls: int = 0
    internal_errors: int = 0  # exceptions the driver should not have raised (DriverFault)
    last_ok_ts: float | None = None
    last_error: str | None = None
    last_poll_s: float | None = None
    next_probe_s: float | None = None  # while quarantined: seconds between probes
    # A rule's poll_rate action or the IOC's poll_rate command: the interval meanwhile,
    # instead of poll_interval (None: the config's). Set it with ``set_interval``: the poll
    # loop wakes and polls at once.
    interval: float | None = None
    # The poll loop's wake-up (the agent gives every device one): set for a new interval,
    # a poll asked for now (``poll_now``), and the stop, which the agent sets after its
    # ``stopping`` (one event a sleep: waiting on two would cost two tasks a sleep). None:
    # the loop sleeps on ``stopping`` alone, and nothing else wakes it.
    wake: asyncio.Event | None = None  # a Bell: its timed wait is the cheap one
    # Polls asked for now (the IOC's ``read``, a device's restart): each future is given
    # None once a poll that started after the ask is done, or the poll's error.
    asks: list[asyncio.Future[str | None]] = field(default_factory=list)
    # The latest reading of each metric, for the local status API and ``tepi status``: the
    # run (the poll) that holds it, so a poll updates this without one object per value.
    last: dict[str, Run] = field(default_factory=dict)
    # The driver's own counters (Modbus: requests, timeouts, ...), when it has any.
    protocol: Callable[[], dict[str, object] | None] | None = None
    # Bad readings not sent: the same reason as the one last sent for the metric, within
    # ``bad_heartbeat`` of it (see ``BadHeartbeat``).
    bad_suppressed: int = 0
    heartbeat: BadHeartbeat = field(default_factory=BadHeartbeat)
    # Called when ``state`` changes (the agent's STATUS= line for systemd follows it).
    on_state: Callable[[], None] | None = None
    # A driver that makes readings between polls (a camera's analytics) has some waiting
    # (``push_ready``): the poll loop wakes and hands them to the buffer without a poll.
    drain_due: bool = False
    # The interval changed (``set_interval``): the loop re-plans from now.
    rescheduled: bool = False

    def latest(self) -> dict[str, Reading]:
        """The latest reading of each metric."""
        return {m: run.reading(run.metrics.index(m)) for m, run in self.last.items()}

    def latest_view(self) -> dict[str, dict[str, object]]:
        """The latest reading of each metric, as the status API and ``read`` show it."""
        return {
            m: {
                "value": r.value,
                "unit": r.unit,
                "quality": r.quality,
                "reason": r.reason,
                "ts": round(r.ts, 3),
            }
            for m, r in self.latest().items()
        }

    def set_interval(self, interval: float | None) -> None:
        """Poll every ``interval`` s from now on (None: the config's poll_interval)."""
        if interval != self.interval:
            self.interval = interval
            self.rescheduled = True
            if self.wake is not None:
                self.wake.set()

    def push_ready(self) -> None:
        """The driver has readings waiting (its ``drain``): hand them over now, outside the
        poll schedule. Called on the loop."""
        self.drain_due = True
        if self.wake is not None:
            self.wake.set()

    def poll_now(self) -> asyncio.Future[str | None]:
        """Ask for a poll now, outside the schedule (its readings go to the buffer like any
        other poll's). The future is None once it is done, or the error it met; it is never
        done while the device cannot be opened: the caller bounds its wait."""
        if self.wake is None:
            raise RuntimeError("this device's poll loop takes no asks (no wake event)")
        ask: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.asks.append(ask)
        self.wake.set()
        return ask

    def answer(self, asks: list[asyncio.Future[str | None]], error: str | None) -> None:
        for ask in asks:
            if not ask.done():
                ask.set_result(error)

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_state is not None:
                self.on_state()


def reading(device: str, s: Sample, stamp: Stamp) -> Reading:
    """A sample as the buffer keeps it, dated by the poll's time source."""
    # Any driver's value passes here: one the buffer cannot keep becomes a bad reading
    # instead of a failed commit.
    why = storable(s.value)
    if why is not None:
        s = Sample(s.metric, None, s.unit, s.ts, s.mono, why)
    if stamp.gps_fix is not None:
        ts, synced, gps = s.mono + stamp.gps_fix, True, True
    else:
        ts, synced, gps = s.ts, stamp.synced, False
    return Reading(
        device, s.metric, s.value, s.unit, ts, s.mono, s.reason, synced, s.uncertain, gps
    )


def _unstorable(values: list[Value]) -> list[tuple[int, str]] | None:
    """The values the buffer cannot keep (see ``storable``), with why; None: all can be.
    A type check first: most values are small ints or finite floats, and this runs for every
    value of every poll."""
    bad: list[tuple[int, str]] | None = None
    for i, v in enumerate(values):
        t = type(v)
        if t is float:
            if v - v == 0.0:  # type: ignore[operator]  # inf - inf and nan - nan are nan
                continue
        elif t is int:
            if -_INT64 <= v < _INT64:  # type: ignore[operator]
                continue
        elif t is bool or t is str or v is None:
            continue
        why = storable(v)
        if why is None:
            continue
        if bad is None:
            bad = []
        bad.append((i, why))
    return bad


def put_values(
    device: str,
    polled: Values,
    stamp: Stamp,
    buffer: Buffer,
    stats: DeviceStats,
    *,
    now: float,
    every: float,
) -> None:
    """A driver's :class:`Values` into the buffer as one run (the hot path of a poll).

    The same rules as for samples (``reading`` and the bad-reading heartbeat), on the poll's
    lists: what the buffer cannot keep becomes bad, and a bad value the heartbeat holds back
    is left out of the run and counted."""
    values = polled.values
    reasons = polled.reasons
    bad = None if polled.storable else _unstorable(values)
    if bad is not None:
        values = list(values)
        reasons = list(reasons) if reasons is not None else [None] * len(values)
        for i, why in bad:
            values[i] = None
            reasons[i] = why
    if stamp.gps_fix is not None:
        ts, synced, gps = polled.mono + stamp.gps_fix, True, True
    else:
        ts, synced, gps = polled.ts, stamp.synced, False
    metrics = polled.metrics
    run = Run(device, metrics, polled.units, values, ts, polled.mono, synced, gps, reasons)
    stats.readings += len(values)
    stats.last.update(zip(metrics, repeat(run)))  # in C, not a Python step a value
    heartbeat = stats.heartbeat
    if reasons is None:
        if heartbeat.sent:  # a metric good again: its next bad reading goes at once
            for m in metrics:
                heartbeat.sent.pop(m, None)
        buffer.put_many(run)
        return
    keep: list[int] = []
    for i, reason in enumerate(reasons):
        if reason is None:
            if heartbeat.sent:
                heartbeat.sent.pop(metrics[i], None)
            keep.append(i)
            continue
        stats.bad_readings += 1
        if heartbeat.send(metrics[i], reason, now, every):
            keep.append(i)
        else:
            stats.bad_suppressed += 1
    if len(keep) == len(values):
        buffer.put_many(run)
    elif keep:
        buffer.put_many(
            Run(
                device,
                tuple(metrics[i] for i in keep),
                tuple(polled.units[i] for i in keep),
                [values[i] for i in keep],
                ts,
                polled.mono,
                synced,
                gps,
                [reasons[i] for i in keep],
            )
        )


_READ_TYPES = (Sample, Values)
_ALL_GOOD = object()  # not None: a driver's read that gives [None] is wrong too


class _Guarded:
    """The driver as the poller sees it: anything but a ``DeviceError`` it raises becomes a
    ``DriverFault`` (see the module docstring); a read must give a list of samples."""

    def __init__(self, device: str, driver: Driver, stats: DeviceStats) -> None:
        self.device = device
        self.driver = driver
        self.stats = stats
        protocol = getattr(driver, "protocol_stats", None)
        if protocol is not None:
            stats.protocol = self._protocol(protocol)
        # A driver with readings between polls (``drain``) says when it has some.
        self.pushes = hasattr(driver, "drain")
        if self.pushes:
            driver.on_ready = stats.push_ready  # type: ignore[attr-defined]

    def schedules(self) -> bool:
        """Whether the driver's ``read`` takes a ``Due`` (``tepi.core.due``): asked once the
        driver is open (its transport decides). A driver that cannot say does not."""
        schedules = getattr(self.driver, "schedules", None)
        if schedules is None:
            return False
        try:
            return bool(schedules())
        except Exception as err:  # noqa: BLE001 - counted and logged by fault()
            self.fault(err)
            return False

    def fault(self, err: Exception) -> DriverFault:
        """Count ``err`` and classify it; its traceback is logged the device's first time."""
        fault = DriverFault(err)
        self.stats.internal_errors += 1
        if self.stats.internal_errors == 1:
            fault.logged = True
            log.error(
                "device %s: driver bug: %s (its readings are bad, reason 'internal error'; "
                "further internal errors are counted in health, not logged)",
                self.device,
                fault.detail,
                exc_info=err,
            )
        return fault

    async def __aenter__(self) -> Self:
        try:
            await self.driver.__aenter__()
        except DeviceError:
            raise
        except Exception as err:
            raise self.fault(err) from err
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.driver.__aexit__(et, e, tb)
        except DeviceError:
            if e is not None and not isinstance(e, Exception):
                return  # a cancellation (or exit) in flight goes on; never replaced
            raise
        except Exception as err:
            fault = self.fault(err)
            if e is not None and not isinstance(e, Exception):
                return
            raise fault from err

    def wrong(self, samples: Sequence[object]) -> DriverFault | None:
        """A fault if ``samples`` holds anything but a Sample or Values (or is no list)."""
        try:
            wrong = next((s for s in samples if not isinstance(s, _READ_TYPES)), _ALL_GOOD)
        except Exception as err:  # noqa: BLE001 - counted and logged by fault()
            return self._caused(err)
        if wrong is _ALL_GOOD:
            return None
        return self._caused(
            TypeError(f"read() gave a {type(wrong).__name__}, not a Sample or Values")
        )

    def _caused(self, err: Exception) -> DriverFault:
        fault = self.fault(err)
        fault.__cause__ = err
        return fault

    def drain(self) -> Sequence[Values]:
        """What the driver made since its last poll or drain (``Values`` only)."""
        if not self.pushes:
            return []
        try:
            out = list(self.driver.drain())  # type: ignore[attr-defined]
            wrong = next((v for v in out if not isinstance(v, Values)), None)
        except Exception as err:  # noqa: BLE001 - counted and logged by fault(); none kept
            self.fault(err)
            return []
        if wrong is not None:
            self.fault(TypeError(f"drain() gave a {type(wrong).__name__}, not Values"))
            return []
        return out

    async def finish(self) -> None:
        """A clean stop: the driver ends what it has begun (a camera's interval so far), so
        that the last drain hands it over."""
        finish = getattr(self.driver, "finish", None)
        if finish is None:
            return
        try:
            await finish()
        except Exception as err:  # noqa: BLE001 - counted and logged by fault()
            self.fault(err)

    def metrics(self) -> list[MetricInfo]:
        try:
            return list(self.driver.metrics())
        except Exception as err:  # noqa: BLE001 - counted and logged by fault(); no bad readings
            self.fault(err)
            return []

    def failure_samples(self, reason: str, ts: float, mono: float) -> list[Sample]:
        """What a failed poll sends, once: every metric bad with the reason, or what the
        driver's own ``failure_samples`` says (a camera sends ``online`` false, a good
        reading: the camera is known to be down)."""
        own = getattr(self.driver, "failure_samples", None)
        if own is not None:
            try:
                return list(own(reason, ts, mono))
            except Exception as err:  # noqa: BLE001 - counted and logged by fault()
                self.fault(err)
        return [Sample(m.name, None, m.unit, ts, mono, reason) for m in self.metrics()]

    def _protocol(
        self, protocol: Callable[[], dict[str, object]]
    ) -> Callable[[], dict[str, object] | None]:
        def guarded() -> dict[str, object] | None:
            try:
                return protocol()
            except Exception as err:  # noqa: BLE001 - counted and logged by fault()
                self.fault(err)
                return None

        return guarded


async def poll_device(
    cfg: DriverConfig,
    driver: Driver,
    buffer: Buffer,
    stats: DeviceStats,
    *,
    clock: WallClock | None = None,
    stopping: asyncio.Event | None = None,
    rounds: Rounds | None = None,
) -> None:
    """Run until ``stopping`` is set (or forever; cancel to stop at once). Set, it lets the
    poll in flight finish and hand its readings to the buffer, then returns: a value the
    device handed out during a clean stop is kept, not thrown away with its request."""
    loop = asyncio.get_running_loop()
    clock = clock or WallClock()
    quarantine = getattr(driver, "quarantine", True)
    guarded = _Guarded(cfg.id, driver, stats)

    def failed(err: BaseException) -> None:
        assert isinstance(err, DeviceError)  # the only type retried
        _failed(cfg, guarded, buffer, stats, err, stamp=clock.stamp())
        if stats.asks:  # a poll asked for now: this was it
            asks, stats.asks = stats.asks, []
            stats.answer(asks, str(err))

    try:
        while stopping is None or not stopping.is_set():
            try:
                async with contextlib.AsyncExitStack() as stack:
                    # A failed open is a failed poll for the device's state (``_failed`` logs the
                    # first, the first good read the recovery): no log of the retry's own.
                    await DEVICE_OPEN.call(
                        functools.partial(stack.enter_async_context, guarded),
                        (DeviceError,),
                        on_failure=failed,
                        stopping=stopping,
                    )
                    await _poll_loop(
                        cfg,
                        guarded,
                        buffer,
                        stats,
                        loop=loop,
                        clock=clock,
                        stopping=stopping,
                        quarantine=quarantine,
                        rounds=rounds,
                    )
            except DeviceError as err:
                # The open gave up (the agent is stopping), or the close failed: the loop's
                # condition decides; a close that failed counts like a failed poll.
                if stopping is None or not stopping.is_set():
                    failed(err)
    finally:
        stats.answer(stats.asks, "the device's poll loop stopped")
        stats.asks.clear()


def _drained(
    cfg: DriverConfig, driver: _Guarded, buffer: Buffer, stats: DeviceStats, clock: WallClock
) -> None:
    """The driver's readings made between polls into the buffer, as a poll's would go."""
    stats.drain_due = False
    pushed = driver.drain()
    if not pushed:
        return
    stamp = clock.stamp()
    now = asyncio.get_running_loop().time()
    for values in pushed:
        put_values(cfg.id, values, stamp, buffer, stats, now=now, every=cfg.bad_heartbeat)


async def _poll_loop(
    cfg: DriverConfig,
    driver: _Guarded,
    buffer: Buffer,
    stats: DeviceStats,
    *,
    loop: asyncio.AbstractEventLoop,
    clock: WallClock,
    stopping: asyncio.Event | None = None,
    quarantine: bool = True,
    rounds: Rounds | None = None,
) -> None:
    # A poll may take several requests, each up to ``timeout``; this only guards a hang.
    guard = cfg.timeout * 8 + 5.0
    # ``quarantine``: a driver alone on its port (a UART sensor) says so (its attribute of that
    # name): quarantine saves bus time for the devices that share a port, and would only delay
    # the read after a replug.
    next_t = loop.time()
    hang = _HangGuard(loop, guard)
    raw_read = driver.driver.read
    # A driver whose transport can send the poll's request at the tick (``tepi.core.due``):
    # no sleep to the tick, the task wakes once a poll, with the answer.
    held = Due() if driver.schedules() else None
    read_due = cast(Callable[[Due], Awaitable[Sequence[Sample | Values]]], raw_read)
    late_logged = False
    task = hang.task
    opened: float | None = None  # the tick of this loop's poll under way (``Rounds``)

    def round_over() -> None:
        nonlocal opened
        if opened is not None and rounds is not None:
            rounds.end(opened)
            opened = None

    try:
        while True:
            if task is not None and task.cancelling():
                # A cancel the driver's library swallowed: Python 3.11's asyncio.wait_for
                # (pymodbus's, on serial lines) returns the answer instead when the answer and
                # the cancel come in the same turn of the loop. The poll's readings are kept;
                # the cancel goes on from here, or the loop would poll on for ever.
                raise asyncio.CancelledError
            delay = next_t - loop.time()
            wake = stats.wake
            due: Due | None = None
            if delay > 0:
                hang.done(next_t)
                if isinstance(wake, Bell):
                    if held is not None and not wake.is_set() and stats.next_probe_s is None:
                        # No sleep: the driver's transport holds the request until next_t, and
                        # the bell calls it off (a quarantined device's probe sleeps: its
                        # stamp is asked when it goes, not minutes before).
                        due = held
                        due.when = next_t
                        wake.due = due
                    else:
                        await wake.sleep_until(next_t)  # _pause's way for a bell, a frame less
                elif wake is None:
                    await _pause(stopping, delay)
                else:
                    await _pause(None, delay, wake, until=next_t)
            if stopping is not None and stopping.is_set():
                if driver.pushes:  # a clean stop: what the driver began goes to the buffer
                    await driver.finish()
                    _drained(cfg, driver, buffer, stats, clock)
                return
            if wake is not None and wake.is_set():
                wake.clear()
                if stats.drain_due and not stats.asks and not stats.rescheduled:
                    # Readings made between polls, handed over now; the grid stays as it was.
                    stats.drain_due = False
                    _drained(cfg, driver, buffer, stats, clock)
                    continue
                # A new interval, or a poll asked for: poll now, then the grid.
                stats.rescheduled = False
                next_t = loop.time()
            asks: list[asyncio.Future[str | None]] = []
            if stats.asks:  # answered after this poll (those asked during it wait for the next)
                asks, stats.asks = stats.asks, []
            interval = stats.interval or cfg.poll_interval
            started = loop.time() if due is None else next_t
            stats.polls += 1
            # Asked before the read: a reading taken as the clock syncs is flagged unsynced, and
            # its timestamp is then recomputed from ``mono``, which is right either way. Once a
            # tick: the devices on this grid share it.
            stamp = clock.stamp_for(next_t)
            hang.start(started)
            if rounds is not None and (
                stats.last_poll_s is None or stats.last_poll_s <= rounds.limit
            ):
                # A device whose last poll took longer than the uplink waits for a tick (a
                # camera's snapshot, a dead unit's timeout) is not waited for.
                rounds.begin(next_t)
                opened = next_t
            try:
                try:
                    # The driver's read, its faults classified here and its samples checked
                    # below (``_Guarded.fault``, ``wrong``): called directly, not through a
                    # wrapper coroutine, a frame less on each resume of a poll.
                    samples = await (raw_read() if due is None else read_due(due))
                except CalledOff:
                    # The bell rang before the request went: nothing was asked of the device;
                    # the loop does what the bell asked.
                    stats.polls -= 1
                    stats.asks[:0] = asks
                    round_over()
                    continue
                except asyncio.CancelledError:
                    if not hang.caught():
                        raise
                    raise TimeoutError from None  # the guard's: a hung read
                except (DeviceError, TimeoutError):
                    raise
                except Exception as err:
                    raise driver.fault(err) from err
                finally:
                    hang.deadline = None
                    if due is not None:
                        due.release()
                        if isinstance(wake, Bell):
                            wake.due = None
                bad = driver.wrong(samples)
                if bad is not None:
                    raise bad
            except DeviceError as err:
                _failed(cfg, driver, buffer, stats, err, stamp=stamp)
            except TimeoutError:
                _failed(
                    cfg,
                    driver,
                    buffer,
                    stats,
                    DeviceUnavailable("poll timeout", f"no result in {guard:.0f} s"),
                    stamp=stamp,
                )
            else:
                if stats.state in ("failing", "quarantined"):
                    log.info(
                        "device %s recovered after %d failed polls",
                        cfg.id,
                        stats.consecutive_failures,
                    )
                    stats.heartbeat.sent.clear()  # the failure's own bad readings went between
                stats.set_state("ok")
                stats.consecutive_failures = 0
                stats.last_ok_ts = time.time()
                heartbeat = stats.heartbeat
                for s in samples:
                    if isinstance(s, Values):
                        put_values(
                            cfg.id, s, stamp, buffer, stats, now=started, every=cfg.bad_heartbeat
                        )
                        continue
                    run = Run.of(reading(cfg.id, s, stamp))  # one object: kept, and buffered
                    stats.last[s.metric] = run
                    stats.readings += 1
                    if s.reason is None or s.uncertain:
                        if heartbeat.sent:  # a metric good again: its next bad reading goes at once
                            heartbeat.sent.pop(s.metric, None)
                        buffer.put_many(run)
                        continue
                    stats.bad_readings += 1
                    if heartbeat.send(s.metric, s.reason, started, cfg.bad_heartbeat):
                        buffer.put_many(run)
                    else:
                        stats.bad_suppressed += 1
            round_over()
            stats.last_poll_s = loop.time() - started
            if asks:
                stats.answer(asks, stats.last_error if stats.consecutive_failures else None)
            if stats.consecutive_failures >= cfg.quarantine_after and quarantine:
                # Quarantined: probe with backoff instead of every tick. Not a retry policy
                # (tepi.core.retry): each probe is a poll like any other, counted, sent and kept on
                # the device's grid, and its backoff is in bus time (timeouts), so it stays here.
                # A probe of a dead device costs one timeout of bus time: probing no more often
                # than every 10 timeouts keeps its share of the bus under a tenth.
                first = max(interval, 10 * cfg.timeout)
                wait = min(
                    cfg.quarantine_max,
                    first * 2 ** (stats.consecutive_failures - cfg.quarantine_after),
                )
                if stats.state != "quarantined":
                    log.warning(
                        "device %s: %d failed polls in a row; quarantined, probing every %.0f s "
                        "at most (backing off to %.0f s)",
                        cfg.id,
                        stats.consecutive_failures,
                        wait,
                        cfg.quarantine_max,
                    )
                    stats.set_state("quarantined")
                stats.next_probe_s = round(wait, 3)
                next_t = loop.time() + wait
                continue
            stats.next_probe_s = None
            # The next tick is the next multiple of the interval on the loop's clock: every
            # device with the same interval polls at the same instants, so a tick wakes the loop
            # once for all of them, not once a device (each wake-up costs CPU, on a Pi and more
            # so in a VM). The first poll was at once; after a probe or a late poll the device
            # falls back onto the grid. (The epsilon keeps a tick from being found again.)
            next_t = (math.floor(next_t / interval + 1e-9) + 1) * interval
            now = loop.time()
            if next_t <= now and stats.last_poll_s < interval:
                # A poll off the grid (the first, at once; after a probe, a new interval or a
                # poll asked for) that ran past the grid's next tick in less than an interval:
                # the device was polled then, a moment before. Not a miss, and not a device
                # that cannot keep its interval (every start of a busy gateway logged that).
                next_t += interval
            if next_t <= now:
                missed = int((now - next_t) // interval) + 1
                stats.missed_polls += missed
                next_t += missed * interval
                if not late_logged:
                    late_logged = True
                    log.warning(
                        "device %s cannot keep its %.3g s poll interval: a poll took %.2f s (its "
                        "port is busy, or it has too many reads); %d ticks skipped, counted as "
                        "missed_polls",
                        cfg.id,
                        interval,
                        stats.last_poll_s,
                        missed,
                    )

    finally:
        hang.close()
        round_over()


def _failed(
    cfg: DriverConfig,
    driver: _Guarded,
    buffer: Buffer,
    stats: DeviceStats,
    err: DeviceError,
    *,
    stamp: Stamp,
) -> None:
    # Bounded: a driver's reasons are meant to be a few fixed words, but one that puts a
    # value in them must not grow this for ever.
    key = err.reason if err.reason in stats.errors or len(stats.errors) < MAX_REASONS else "other"
    stats.errors[key] += 1
    stats.consecutive_failures += 1
    stats.last_error = str(err)
    if stats.state not in ("failing", "quarantined"):
        stats.set_state("failing")
        if not (isinstance(err, DriverFault) and err.logged):  # logged with its traceback
            log.error("device %s: %s (further failures are counted, not logged)", cfg.id, err)
        ts, mono = time.time(), boottime()
        for s in driver.failure_samples(err.reason, ts, mono):
            run = Run.of(reading(cfg.id, s, stamp))
            buffer.put_many(run)
            stats.last[s.metric] = run
            if s.reason is not None:
                stats.bad_readings += 1
