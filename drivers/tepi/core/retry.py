"""Retry policies: every backoff of the agent, named and configured here, built on tenacity.

A policy says how long to wait after each failure: *full jitter*, a uniform wait in
[0, cap], the cap doubling from ``first_cap_s`` to ``max_cap_s`` (tenacity's
``wait_random_exponential``), so that the gateways of a city, or the devices of a bus, do
not all try again at the same moment. A policy without jitter waits ``first_cap_s`` every
time (the serial port's reopen by path). A policy may give up after ``give_up_after_s``;
those of the agent retry until cancelled.

What is logged is the state, not the retries (house style 8): an :class:`Outage` logs the
first failure once, with its reason, at the policy's level, and the recovery once, as info,
with how many failures and how long; the retries in between are only counted (and logged at
debug). ``Policy.call`` wires it into tenacity: its ``after`` hook reports each failure, and
the recovery is reported when the operation succeeds.

Cancellation always propagates: a policy retries only the exception types it is given,
never ``CancelledError`` (nor any ``BaseException`` that is not an ``Exception``), and a
cancel during a wait ends the wait.

The policies (the uplink's caps come from ``uplink.reconnect`` in the config)::

    name               first cap   max cap   jitter   used by
    uplink reconnect   1 s         120 s     full     gateway/uplink.py (connect to broker)
    device open        1 s         60 s      full     gateway/poller.py (a driver's open)
    buffer commit      0.5 s       30 s      full     buffer/store.py (a failed commit)
    serial reopen      1 s         1 s       none     drivers/serial/transport.py (by path)
    serial flapping    1 s         30 s      full     drivers/serial/transport.py (a port
                                                      that opens and fails at once)
    rule action        0.5 s       4 s       full     gateway/alarms.py (a rule's write or
                                                      snapshot: 4 attempts, then failed)
    update download    2 s         30 s      full     gateway/update.py (a bundle's HTTPS
                                                      download: 4 attempts, then failed)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity
from tenacity import AsyncRetrying, RetryCallState

T = TypeVar("T")

__all__ = [
    "BUFFER_COMMIT",
    "DEVICE_OPEN",
    "RULE_ACTION",
    "SERIAL_FLAPPING",
    "SERIAL_REOPEN",
    "UPDATE_DOWNLOAD",
    "UPLINK_RECONNECT",
    "Outage",
    "Policy",
]


class Outage:
    """One thing's up/down state, logged as its changes: the first failure (once, at
    ``level``, with its reason), then the recovery (info, with failures and seconds).

    ``what`` names the thing ("buffer commit", "broker host:1883"); ``then`` says what
    happens meanwhile ("readings stay buffered"). Failures in between are logged at debug.
    """

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        level: int = logging.WARNING,
        then: str = "retrying",
    ) -> None:
        self.log = log
        self.what = what
        self.level = level
        self.then = then
        self.failures = 0
        self.since: float | None = None  # monotonic time of the first failure

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, reason: object) -> None:
        """A failure: logged if it is the first since the thing was last up."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            self.log.log(self.level, "%s failed: %s; %s", self.what, reason, self.then)
        else:
            self.log.debug("%s failed again (%d): %s", self.what, self.failures, reason)

    def recovered(self, at: float | None = None) -> None:
        """Up again (since monotonic time ``at``, or now): logged, and the state reset, only
        if it was down."""
        if self.since is None:
            return
        self.log.info(
            "%s recovered after %.1f s (%d failures)",
            self.what,
            (time.monotonic() if at is None else at) - self.since,
            self.failures,
        )
        self.since, self.failures = None, 0


@dataclass(frozen=True, slots=True)
class Policy:
    """How to wait between the attempts of one operation; see the module's table."""

    name: str
    first_cap_s: float
    max_cap_s: float
    jitter: bool = True
    give_up_after_s: float | None = None  # None: retry until cancelled
    max_attempts: int | None = None  # give up after this many attempts (None: no limit)

    def __post_init__(self) -> None:
        if not 0 < self.first_cap_s <= self.max_cap_s:
            raise ValueError(f"retry policy {self.name}: need 0 < first_cap_s <= max_cap_s")

    def with_caps(self, first_cap_s: float, max_cap_s: float) -> Policy:
        """The same policy with the caps a config gives (``uplink.reconnect``)."""
        return dataclasses.replace(
            self, first_cap_s=min(first_cap_s, max_cap_s), max_cap_s=max_cap_s
        )

    def cap(self, failures: int) -> float:
        """The longest wait after ``failures`` failures in a row (1 for the first)."""
        if not self.jitter:
            return self.first_cap_s
        return float(min(self.max_cap_s, self.first_cap_s * 2 ** min(max(failures, 1) - 1, 60)))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """A wait after ``failures`` failures in a row: uniform in [0, cap] (full jitter)."""
        if not self.jitter:
            return self.first_cap_s
        return (rng or random).uniform(0.0, self.cap(failures))

    def wait(self) -> tenacity.wait.wait_base:
        """The policy as a tenacity wait (the same waits as :meth:`delay`)."""
        if not self.jitter:
            return tenacity.wait_fixed(self.first_cap_s)
        return tenacity.wait_random_exponential(multiplier=self.first_cap_s, max=self.max_cap_s)

    def retrying(
        self,
        retry_on: tuple[type[Exception], ...],
        outage: Outage | None = None,
        *,
        on_failure: Callable[[BaseException], Awaitable[None] | None] | None = None,
        stopping: asyncio.Event | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> AsyncRetrying:
        """A tenacity retrier for this policy: retries ``retry_on`` (never a cancel), reports
        each failure to ``on_failure`` (counters) and ``outage`` (the log), and re-raises the
        last error if the policy gives up, or once ``stopping`` is set (which also ends a
        wait at once: a clean stop does not sit out a backoff). ``sleep`` waits between
        attempts instead of ``asyncio.sleep``: one that may end early (the uplink's probe)."""
        if not all(issubclass(t, Exception) for t in retry_on):
            raise TypeError("only Exception subclasses are retried; a cancel must propagate")

        async def after(state: RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome is not None else None
            if err is None:
                return
            if on_failure is not None:
                res = on_failure(err)
                if res is not None:
                    await res
            if outage is not None:
                outage.failed(err)

        stop: tenacity.stop.stop_base = tenacity.stop_never
        if self.give_up_after_s is not None:
            stop = tenacity.stop_after_delay(self.give_up_after_s)
        if self.max_attempts is not None:
            stop = stop | tenacity.stop_after_attempt(self.max_attempts)
        if sleep is None:
            sleep = asyncio.sleep
        if stopping is not None:
            stop = stop | tenacity.stop_when_event_set(stopping)  # type: ignore[arg-type]
            sleep = functools.partial(_sleep_unless, stopping)
        return AsyncRetrying(
            sleep=sleep,
            retry=tenacity.retry_if_exception_type(retry_on),
            wait=self.wait(),
            stop=stop,
            after=after,
            reraise=True,
        )

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        retry_on: tuple[type[Exception], ...],
        outage: Outage | None = None,
        *,
        on_failure: Callable[[BaseException], Awaitable[None] | None] | None = None,
        stopping: asyncio.Event | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> T:
        """Await ``fn()`` until it succeeds, waiting by this policy between attempts; the
        outage's recovery is logged when it does. See :meth:`retrying`."""
        retrying = self.retrying(
            retry_on, outage, on_failure=on_failure, stopping=stopping, sleep=sleep
        )
        result: T = await retrying(fn)
        if outage is not None:
            outage.recovered()
        return result


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when ``stopping`` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()


UPLINK_RECONNECT = Policy("uplink reconnect", 1.0, 120.0)
DEVICE_OPEN = Policy("device open", 1.0, 60.0)
BUFFER_COMMIT = Policy("buffer commit", 0.5, 30.0)
SERIAL_REOPEN = Policy("serial reopen", 1.0, 1.0, jitter=False)
SERIAL_FLAPPING = Policy("serial flapping", 1.0, 30.0)
# A rule's action (a siren's write): a few quick tries, then reported as failed in the alarm.
RULE_ACTION = Policy("rule action", 0.5, 4.0, max_attempts=4)
# An update's download (a 5xx, a cut connection): a few tries, then the command fails.
UPDATE_DOWNLOAD = Policy("update download", 2.0, 30.0, max_attempts=4)
