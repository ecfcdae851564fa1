"""Waiting in a poll loop, cheaply: the pause to the next tick and the guard against a hung read.

- :class:`Bell`: an ``asyncio.Event`` with timed waits that cost a future and a timer, not a
  cancellation; ``sleep_until`` shares one timer among every sleeper until one instant
  (:class:`_Ticks`: the devices of a poll grid).
- :class:`_HangGuard`: one timer for many polls, which cancels the poll loop's task only when
  a read is past its deadline.
- :func:`_pause`: sleep, waking at once for a stop or a bell.
- :class:`Rounds`: the polls of each tick under way, so the uplink sends a tick's readings in
  one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref

from tepi.core.due import Due, at_instant

__all__ = ["Bell"]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Bell(asyncio.Event):
    """An ``asyncio.Event`` with a timed wait that costs a timer and a future.

    ``asyncio.timeout`` around ``Event.wait`` makes a Timeout, reschedules its timer and,
    when the time is up (every tick of a poll loop), cancels the waiting task and turns the
    cancellation back into a TimeoutError: about three times the CPU of a future that a
    timer resolves, once a poll of every device. ``sleep`` returns when the time is up or
    the bell is set, whichever comes first, without a cancellation."""

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: set[asyncio.Future[None]] = set()
        self._ticks: _Ticks | None = None  # its loop's (looked up once, not every tick)
        # A poll's request held by its transport until the tick, in place of a sleep (see
        # ``tepi.core.due``): the bell calls it off while it is not yet sent.
        self.due: Due | None = None

    def set(self) -> None:
        super().set()
        if self._sleepers:
            for fut in self._sleepers:
                _resolve(fut)
        if self.due is not None:
            self.due.call_off()

    async def sleep(self, seconds: float) -> None:
        """Until ``seconds`` have passed or the bell is set (at once if it is)."""
        await self.sleep_until(asyncio.get_running_loop().time() + seconds)

    async def sleep_until(self, when: float) -> None:
        """Until the loop's clock reaches ``when`` or the bell is set. Sleepers until the
        same instant (the devices of one poll grid) share one timer: see :class:`_Ticks`."""
        if self.is_set():
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        ticks = self._ticks
        if ticks is None or ticks.loop is not loop:
            ticks = self._ticks = _ticks(loop)
        ticks.add(when, fut)
        self._sleepers.add(fut)
        try:
            await fut
        finally:
            self._sleepers.discard(fut)
            ticks.discard(when, fut)


class _Ticks:
    """One timer for every sleeper until one instant, not one a sleeper: the 50 devices of
    a grid tick push one entry on the loop's timer heap, not 50 (each push and pop is a few
    comparisons of Python objects, and each timer a handle). A sleeper woken early (its
    bell) leaves at once; the timer is not cancelled: it fires once, finds whoever is left,
    and is forgotten. Sleepers wake in the order they came (a dict, not a set)."""

    __slots__ = ("due", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[float, dict[asyncio.Future[None], None]] = {}

    def add(self, when: float, fut: asyncio.Future[None]) -> None:
        sleepers = self.due.get(when)
        if sleepers is None:
            sleepers = self.due[when] = {}
            # The instant's one timer, shared with the Modbus TCP links that hold requests
            # until it (``tepi.core.due``).
            at_instant(self.loop, when, self._ring)
        sleepers[fut] = None

    def discard(self, when: float, fut: asyncio.Future[None]) -> None:
        sleepers = self.due.get(when)
        if sleepers is not None:
            sleepers.pop(fut, None)

    def _ring(self, when: float) -> None:
        for fut in self.due.pop(when, {}):
            if not fut.done():
                fut.set_result(None)


_TICKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticks] = weakref.WeakKeyDictionary()


def _ticks(loop: asyncio.AbstractEventLoop) -> _Ticks:
    ticks = _TICKS.get(loop)
    if ticks is None:
        ticks = _TICKS[loop] = _Ticks(loop)
    return ticks


class _HangGuard:
    """The poll loop's guard against a driver that never returns, with one timer for many
    polls rather than one a poll (``asyncio.timeout`` arms and cancels a timer each time).

    ``start`` marks a poll as in flight with its deadline; the timer, armed only when none
    is, fires at the deadline it was armed for: if a poll is still in flight and past its
    own deadline, the poll loop's task is cancelled (``hung``); if a later poll is in flight,
    it is armed again for that one's deadline. ``done`` cancels it when the next poll is
    due after it would fire, so a device polled less often than the guard gets no wake-up
    for nothing."""

    __slots__ = ("deadline", "hung", "loop", "seconds", "task", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self.loop = loop
        self.task = asyncio.current_task()
        self.seconds = seconds
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.hung = False

    def start(self, now: float) -> None:
        self.deadline = now + self.seconds
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._fire)

    def done(self, next_at: float) -> None:
        self.deadline = None
        timer = self.timer
        if timer is not None and next_at >= timer.when():
            timer.cancel()
            self.timer = None

    def close(self) -> None:
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        deadline = self.deadline
        if deadline is None or self.task is None:
            return
        if self.loop.time() >= deadline:
            self.hung = True
            self.task.cancel()
        else:
            self.timer = self.loop.call_at(deadline, self._fire)

    def caught(self) -> bool:
        """In ``except CancelledError`` around the read: True if the guard cancelled it
        (and nothing else did): the poll timed out. False: re-raise."""
        if not self.hung:
            return False
        self.hung = False
        assert self.task is not None
        return self.task.uncancel() == 0


async def _pause(
    stopping: asyncio.Event | None,
    seconds: float,
    poke: asyncio.Event | None = None,
    until: float | None = None,
) -> None:
    """Sleep, but wake at once when the agent is stopping (or ``poke`` is set). ``until``:
    the loop time the pause ends at (``seconds`` from now), for a Bell's shared timers."""
    if stopping is None and poke is None:
        await asyncio.sleep(seconds)
        return
    if stopping is None and isinstance(poke, Bell):
        if until is not None:
            await poke.sleep_until(until)
        else:
            await poke.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            if poke is None:
                assert stopping is not None
                await stopping.wait()
            elif stopping is None:
                await poke.wait()
            else:
                await _either(stopping, poke)


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    """Until one of two events is set."""
    waits = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


class Rounds:
    """The polls of each tick that are under way, so that a tick's readings go in one message.

    With nothing in flight, the uplink sends a reading at once: the first answer of a tick
    would go alone and the rest of the tick's answers, arriving a millisecond later, in a
    second message while the first waits for its PUBACK. Each message costs its encoding,
    its publish, its PUBACK and its acknowledgement in the buffer, whatever its size.

    A poll loop says when a poll of tick ``when`` begins (``begin``: a held request at its
    hand-over, with a tick still to come; a sleeping loop as it wakes) and when it is over,
    with its readings in the buffer or its failure counted (``end``). A poll of a tick to
    come is not under way. The uplink's live lane, with nothing in flight, waits while one
    is (``busy``), up to ``uplink.batch.round_wait`` (``limit``): the event it passes to
    ``wait`` is set when the last one ends. A device whose last poll took longer than
    ``limit`` (a camera fetching a snapshot, a unit that times out) is not counted: waiting
    for it would hold every tick's readings for ``limit`` and gain nothing.
    """

    __slots__ = ("_open", "_waiter", "limit")

    def __init__(self, limit: float) -> None:
        self.limit = limit  # seconds: the uplink's round_wait
        self._open: dict[float, int] = {}  # tick -> polls of it not yet over
        self._waiter: asyncio.Event | None = None

    def begin(self, when: float) -> None:
        self._open[when] = self._open.get(when, 0) + 1

    def end(self, when: float) -> None:
        left = self._open.get(when, 0) - 1
        if left > 0:
            self._open[when] = left
            return
        self._open.pop(when, None)
        waiter = self._waiter
        if waiter is not None and not self.busy(asyncio.get_running_loop().time()):
            self._waiter = None
            waiter.set()

    def busy(self, now: float) -> bool:
        """Whether a poll of a tick at or before ``now`` is under way."""
        return any(when <= now for when in self._open)

    def wait(self, event: asyncio.Event | None) -> None:
        """Set ``event`` when no poll is under way any more; None: forget the last one."""
        self._waiter = event
