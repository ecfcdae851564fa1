"""Wake the event loop at a moment given to the tens of microseconds, for a line's silences.

asyncio's timers sleep in epoll with a whole-millisecond timeout, so a 1.75 ms silence (the
Modbus rule above 19,200 baud) is waited as 2 to 3 ms: a third of every request at 115,200
baud. A worker thread that sleeps precisely costs three wake-ups (the thread, its sleep, the
loop's self-pipe), about 0.25 ms here. A Linux ``timerfd`` armed for the deadline and watched
by the loop costs one. Python 3.11 has no ``os.timerfd_create`` (3.13 does), so it is reached
through ctypes; where it cannot be (not Linux), the worker thread serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable

_CLOCK_MONOTONIC = 1  # the clock of time.monotonic() and of asyncio's loop.time()
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        ]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class PreciseTimer:
    """Sleeps until a ``loop.time()`` deadline, one sleeper at a time (the caller's lock);
    or calls a callback then (``call_at``), one at a time: a new one replaces the last.

    Uses one timerfd, opened on first use and closed by :meth:`close`.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._callback: Callable[[], None] | None = None
        self._handle: asyncio.TimerHandle | None = None  # where there is no timerfd
        self._broken = _LIBC is None

    def _open(self, loop: asyncio.AbstractEventLoop) -> int | None:
        if self._fd is not None and self._loop is loop:
            return self._fd
        self.close()
        if self._broken or _LIBC is None:
            return None
        fd = int(_LIBC.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            self._broken = True
            return None
        loop.add_reader(fd, self._fired)
        self._fd, self._loop = fd, loop
        return fd

    def _arm(self, fd: int, deadline: float) -> bool:
        assert _LIBC is not None
        sec = int(deadline)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(sec, int((deadline - sec) * 1e9)))
        return int(_LIBC.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None)) == 0

    def _fired(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` from the event loop at ``deadline`` (``loop.time()``), to the
        tens of microseconds; it replaces a callback not yet called. Not while a
        ``sleep_until`` waits (one timerfd)."""
        loop = asyncio.get_running_loop()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        fd = self._open(loop)
        if fd is None or not self._arm(fd, deadline):
            self._callback = None
            self._handle = loop.call_at(deadline, callback)  # to the millisecond
            return
        self._callback = callback

    async def sleep_until(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if deadline <= loop.time():
            return
        fd = self._open(loop)
        if fd is None or not self._arm(fd, deadline):
            await asyncio.to_thread(time.sleep, max(0.0, deadline - loop.time()))
            return
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
            self._arm(fd, 0.0)  # disarm, in case we were cancelled before it fired

    def close(self) -> None:
        self._callback = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = self._loop = None
