"""A serial port that survives its adapter being pulled out: open, read, reopen.

Reading is event-driven (pyserial-asyncio-fast: the port's fd is watched by the event loop,
no thread, no polling). Opening goes to a worker thread, since a USB adapter that is still
enumerating can block an ``open()`` for a while.

When the port vanishes (a USB adapter pulled, a pty closed) the transport loses its
connection; the port then retries the *path* it was given every ``REOPEN_S`` seconds,
so an adapter replugged behind the same ``/dev/serial/by-id/...`` link is found again, even
when the kernel names it ``ttyUSB1`` this time. Each outage is kept as a gap (when, how long)
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

log = logging.getLogger(__name__)

REOPEN_S = 1.0
STABLE_S = 5.0
MAX_BACKOFF_S = 30.0
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
        logged = False
        backoff = 0.0
        while True:
            try:
                await self._open()
            except Exception as err:  # noqa: BLE001 - an adapter bouncing mid-open raises
                # termios.error from pyserial's tcsetattr: any failure is retried, never fatal
                state, reason = _why(err)
                if self._down_since is None:
                    self._down_since = (time.time(), boottime())
                self.state, self.reason = state, reason
                self.stats.last_error = f"{reason}: {err}"
                if not logged:
                    log.warning("serial port %s: %s (%s); retrying", self.path, reason, err)
                    logged = True
                await asyncio.sleep(REOPEN_S)
                continue
            logged = False
            await self._lost_evt.wait()
            # A port that opens and fails at once (another process reads it too) must not
            # spin: back off while connections last under STABLE_S, up to MAX_BACKOFF_S.
            if boottime() - self._opened_mono < STABLE_S:
                backoff = min(max(backoff * 2, REOPEN_S), MAX_BACKOFF_S)
            else:
                backoff = 0.0
            await asyncio.sleep(backoff)

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
            log.info("serial port %s is back after %.1f s", self.path, gap.seconds)
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
            # One line per outage, not one per failed reopen of a flapping port.
            lived = boottime() - self._opened_mono
            level = (
                logging.WARNING if self.stats.losses == 1 or lived >= STABLE_S else logging.DEBUG
            )
            log.log(level, "serial port %s lost (%s); reopening when it is back", self.path, exc)
        self._lost_evt.set()

    def _close(self) -> None:
        t, self._transport = self._transport, None
        if t is not None:
            t.close()
