"""A serial port that survives its adapter being pulled out: open, read, reopen.

Reading is event-driven (pyserial-asyncio-fast: the port's fd is watched by the event loop,
no thread, no polling). Opening goes to a worker thread, since a USB adapter that is still
enumerating can block an ``open()`` for a while.

When the port vanishes (a USB adapter pulled, a pty closed) the transport loses its
connection; the port then retries the *path* it was given every second (the ``serial
reopen`` policy of tepi.core.retry), so an adapter replugged behind the same
``/dev/serial/by-id/...`` link is found again, even when the kernel names it ``ttyUSB1``
this time. Each outage is kept as a gap (when, how long)
for the health message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import serial_asyncio_fast

from tepi.core.clock import boottime
from tepi.core.retry import SERIAL_FLAPPING, SERIAL_REOPEN, Outage

log = logging.getLogger(__name__)

STABLE_S = 5.0  # a connection that lasted less is a flap (tepi.core.retry.SERIAL_FLAPPING)
MAX_GAPS = 10
PortState = Literal["closed", "open", "missing", "error"]


@dataclass(slots=True)
class Gap:
    """A time the port was gone: wall-clock start, and its length in seconds."""

    start_ts: float
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {"start_ts": round(self.start_ts, 3), "seconds": round(self.seconds, 3)}


@dataclass(slots=True)
class PortStats:
    opens: int = 0
    losses: int = 0
    bytes_in: int = 0
    last_error: str | None = None
    gaps: deque[Gap] = field(default_factory=lambda: deque(maxlen=MAX_GAPS))
    gap_total_s: float = 0.0


class _Flapped(Exception):
    """The port was lost within STABLE_S of opening."""


class _Proto(asyncio.Protocol):
    def __init__(self, port: SerialPort) -> None:
        self._port = port

    def data_received(self, data: bytes) -> None:
        self._port._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._port._lost(exc)


def _why(err: BaseException) -> tuple[PortState, str]:
    """A short reason for an open that failed, and the state it puts the port in."""
    cause = err.__cause__ or err.__context__ or err
    code = getattr(err, "errno", None) or getattr(cause, "errno", None)
    if code == errno.ENOENT:
        return "missing", "port missing"
    if code in (errno.EACCES, errno.EPERM):
        return "error", "permission denied"
    if code == errno.EBUSY:
        return "error", "port busy"
    return "error", "cannot open port"


class SerialPort:
    """One serial port, reopened by path whenever it goes away. Use ``async with``."""

    def __init__(
        self,
        path: str,
        baudrate: int,
        on_data: Callable[[bytes, float], None],
        *,
        on_open: Callable[[], None] | None = None,
        name: str = "",
    ) -> None:
        self.path = path
        self.baudrate = baudrate
        self._on_data = on_data
        self._on_open = on_open
        self._name = name or path
        self.state: PortState = "closed"
        self.reason: str | None = None  # why the port is not open
        self.stats = PortStats()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost_evt = asyncio.Event()
        self._opened_evt = asyncio.Event()
        self._down_since: tuple[float, float] | None = None  # (ts, mono) the port went away
        self._opened_mono = 0.0
        self._outage = Outage(log, f"serial port {path}", then="reopening when it is back")

    async def __aenter__(self) -> SerialPort:
        self._task = asyncio.get_running_loop().create_task(
            self._keep_open(), name=f"tepi.serial[{self._name}]"
        )
        self._task.add_done_callback(self._ended)
        return self

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.state, self.reason = "error", "reopen failed"
            log.error("serial port %s: reopening stopped", self.path, exc_info=task.exception())

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):  # cancelled, or it had failed: logged
                await self._task
            self._task = None
        self._close()
        self.state = "closed"

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    async def wait_open(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the port to be open; whether it is."""
        if self.is_open:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._opened_evt.wait()
        return self.is_open

    def write(self, data: bytes) -> bool:
        """Send bytes if the port is open; whether they were handed to the port."""
        if self._transport is None or self._transport.is_closing():
            return False
        self._transport.write(data)
        return True

    def discard_input(self) -> None:
        """Throw away what arrived and was not read yet (before a request: a stale frame
        must not pass for the answer)."""
        t = self._transport
        ser = getattr(t, "serial", None)
        if ser is not None and t is not None and not t.is_closing():
            # A port just pulled out raises termios.error here, which is not an OSError.
            with contextlib.suppress(Exception):
                ser.reset_input_buffer()

    def down_for(self) -> float | None:
        """Seconds the port has been gone, or None while it is open."""
        if self._down_since is None:
            return None
        return boottime() - self._down_since[1]

    async def _keep_open(self) -> None:
        # Two policies: the open is retried by path every second (SERIAL_REOPEN), and a port
        # that opens and fails at once (another process reads it too) must not spin: a
        # connection that lasted under STABLE_S is a failed attempt of SERIAL_FLAPPING
        # (full jitter up to 30 s); one that lasted longer starts afresh.
        while True:
            await SERIAL_FLAPPING.call(self._hold, (_Flapped,))

    async def _hold(self) -> None:
        """Open the port (retrying), keep it until it is lost; raise ``_Flapped`` if it was
        lost within STABLE_S. The outage's recovery is logged once the port has lasted."""
        await SERIAL_REOPEN.call(self._open, (Exception,), on_failure=self._open_failed)
        opened = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STABLE_S):
                await self._lost_evt.wait()
        if self._lost_evt.is_set():
            raise _Flapped
        self._outage.recovered(at=opened)
        await self._lost_evt.wait()

    def _open_failed(self, err: BaseException) -> None:
        # Any failure is retried, never fatal: an adapter bouncing mid-open raises
        # termios.error (not an OSError) from pyserial's tcsetattr.
        state, reason = _why(err)
        if self._down_since is None:
            self._down_since = (time.time(), boottime())
        self.state, self.reason = state, reason
        self.stats.last_error = f"{reason}: {err}"
        self._outage.failed(self.stats.last_error)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._lost_evt.clear()
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            loop, lambda: _Proto(self), self.path, baudrate=self.baudrate, timeout=0
        )
        self._transport = transport
        self._opened_mono = boottime()
        self.state, self.reason = "open", None
        self.stats.opens += 1
        if self._down_since is not None:
            ts, mono = self._down_since
            gap = Gap(ts, boottime() - mono)
            self.stats.gaps.append(gap)
            self.stats.gap_total_s += gap.seconds
            self._down_since = None
        self._opened_evt.set()
        if self._on_open is not None:
            self._on_open()

    def _received(self, data: bytes) -> None:
        self.stats.bytes_in += len(data)
        self._on_data(data, boottime())

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._opened_evt.clear()
        if self.state == "open":
            self.stats.losses += 1
            self._down_since = (time.time(), boottime())
            gone = not Path(self.path).exists()
            self.state = "missing" if gone else "error"
            self.reason = "port missing" if gone else "disconnected"
            self.stats.last_error = f"{self.reason}: {exc}" if exc else self.reason
            # One line per outage: a flapping port is still the outage its first loss began.
            self._outage.failed(self.stats.last_error)
        self._lost_evt.set()

    def _close(self) -> None:
        t, self._transport = self._transport, None
        if t is not None:
            t.close()
