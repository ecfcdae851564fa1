"""Serial (UART) sensors on pseudo-terminals: one pty per sensor, streaming and answering.

A client opens the pty's slave side (``/dev/pts/N``, or the ``link`` symlink that stands
in for ``/dev/serial/by-id/...``) as if it were a USB-serial adapter with the sensor on
it. The pty comes from :class:`tepi_sim.rtu._Pty`, as the Modbus buses' do: raw mode, the
master read with ``loop.add_reader``, and the simulator's own fd on the slave kept open
so a client closing and reopening the port does not make the master fail.

Two tasks per sensor, both on the event loop: a *ticker* asks the protocol player
(``uart_protocols.py``) for frames every :meth:`Player.period` seconds while the sensor
streams, and a *writer* puts frames on the wire one at a time (a UART sends one frame
after another), applying the fault mode at the moment of sending. Commands from the client
are fed to the player from the reader callback, and its replies join the same queue.

What a healthy sensor would have sent is recorded: ``sent`` holds ``(time.monotonic(),
{metric: value})`` for each data frame written intact, ``frames_sent`` counts every intact
frame (data, replies, NMEA extras). Frames broken on purpose are counted apart.

When nobody reads the port, a real UART drops what arrives. A pty would instead keep it
until its buffer is full and then refuse writes, so when a write would block the slave's
input is flushed (counted in ``overruns``) and the write goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import termios
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from tepi_sim.errors import StartupError
from tepi_sim.model import UART_FAULT_MODES, UartDeviceConfig
from tepi_sim.rtu import _Pty
from tepi_sim.uart_protocols import Frame, Player, make_player

__all__ = ["SENT_LIMIT", "UartDevice"]

log = logging.getLogger(__name__)

SENT_LIMIT: Final = 10_000
_QUEUE_LIMIT: Final = 64
_GARBAGE_MAX: Final = 20
# Bytes that start or end a frame in one of the protocols: noise full of them is what
# tests a parser's resync.
_HEADER_BYTES: Final = b"\x42\x4d\xaa\xc0\xab\xff\x86$"
# A UART at the wrong speed never sees these (``baud_mismatch`` maps every byte to
# others), so its output never holds a frame start or a line end.
_SYNC_BYTES: Final = frozenset(b"\x42\x4d\xaa\xff$\r\n")
_SPLIT_GAP_S: Final = (0.005, 0.03)


def check_links(links: list[Path]) -> None:
    """StartupError if a link path is taken by something that is not a symlink."""
    for link in links:
        if link.exists() and not link.is_symlink():
            raise StartupError(
                f"link {link} exists and is not a symlink; remove it or pick another path"
            )


def point_links(links: list[Path], target: str) -> None:
    """Point every link at ``target``, each replaced atomically."""
    for link in links:
        tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)


def remove_links(links: list[Path], target: str) -> None:
    """Remove the links that still point at ``target`` (another process may own the rest)."""
    for link in links:
        with contextlib.suppress(OSError):
            if link.is_symlink() and str(link.readlink()) == target:
                link.unlink()


class UartDevice:
    """One serial sensor on its own pty: its protocol player, fault mode and records.

    State for tests: ``player`` (``player.mode``/``asleep`` for PMS, ``reporting``,
    ``working_period_min``, ``asleep``, ``device_id`` for SDS011, ``abc`` for MH-Z19,
    ``fix`` for NMEA), or all of it at once from :meth:`status`.
    """

    def __init__(
        self,
        config: UartDeviceConfig,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        values_rng = random.Random(f"{seed}:{config.id}:uart") if seed is not None else None
        self.player: Player = make_player(config, values_rng or random.Random(), clock)
        self._rng = (
            random.Random(f"{seed}:{config.id}:faults") if seed is not None else random.Random()
        )
        # A fixed scrambling per device: the same wrong speed always garbles alike.
        table_rng = random.Random(f"{config.id}:baud")
        allowed = [b for b in range(256) if b not in _SYNC_BYTES]
        self._scramble_table = bytes(table_rng.choice(allowed) for _ in range(256))
        self.fault = "none"
        self.sent: deque[tuple[float, dict[str, float]]] = deque(maxlen=SENT_LIMIT)
        self.frames_sent = 0  # frames written intact: data, replies and extras
        self.bad_frames_sent = 0  # frames written with a wrong checksum (bad_checksum)
        self.scrambled_frames = 0  # frames written garbled (baud_mismatch)
        self.dropped_frames = 0  # frames that found the send queue full
        self.overruns = 0  # writes that found the port full: nobody was reading it
        self.bytes_received = 0
        self.replugs = 0
        self.links = [Path(config.link)] if config.link else []
        self._pty: _Pty | None = None
        self._generation = 0
        self._bad_next = False
        self._running = False
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(_QUEUE_LIMIT)
        self._wake = asyncio.Event()  # the player's state may have changed: re-plan ticks
        self._changed = asyncio.Event()  # a frame was written
        self._tasks: list[asyncio.Task[None]] = []
        self.set_fault(config.fault)

    @property
    def id(self) -> str:
        """The device id from the config."""
        return self.config.id

    @property
    def protocol(self) -> str:
        """The protocol from the config (``pms5003``, ``nmea``, ...)."""
        return self.config.protocol

    @property
    def path(self) -> str:
        """The current slave path, e.g. ``/dev/pts/7``."""
        if self._pty is None:
            raise RuntimeError(f"uart device {self.id!r} is not running, or unplugged")
        return self._pty.path

    def __repr__(self) -> str:
        return (
            f"UartDevice({self.id!r}, protocol={self.protocol!r}, fault={self.fault!r}, "
            f"frames_sent={self.frames_sent})"
        )

    def state(self) -> dict[str, Any]:
        """The sensor's settable state (mode, sleep, reporting, ABC, ...)."""
        return self.player.state()

    def status(self) -> dict[str, Any]:
        """Counters, path (None while unplugged) and state, as the control socket reports."""
        return {
            "protocol": self.protocol,
            "fault": self.fault,
            "path": self._pty.path if self._pty is not None else None,
            "frames_sent": self.frames_sent,
            "bad_frames_sent": self.bad_frames_sent,
            "scrambled_frames": self.scrambled_frames,
            "dropped_frames": self.dropped_frames,
            "overruns": self.overruns,
            "replugs": self.replugs,
            **self.state(),
        }

    def set_fault(self, mode: str) -> None:
        """Switch the fault mode now. ``unplugged`` closes the pty and removes the link;
        leaving it plugs a new pty in behind the link."""
        if mode not in UART_FAULT_MODES:
            raise ValueError(
                f"unknown uart fault mode {mode!r}; expected one of: {', '.join(UART_FAULT_MODES)}"
            )
        if mode != self.fault:
            log.info("uart device %s: fault %s -> %s", self.id, self.fault, mode)
        self.fault = mode
        self._bad_next = False
        if mode == "unplugged" and self._pty is not None:
            self._pull_out()
            log.info("uart device %s: unplugged", self.id)
        elif mode != "unplugged" and self._pty is None and self._running:
            self._plug()
            self.replugs += 1
            log.info("uart device %s: plugged back in, now %s", self.id, self.path)
        self._wake.set()

    async def wait_frames(self, n: int, timeout: float | None = 5.0) -> int:  # noqa: ASYNC109
        """Wait until ``frames_sent`` reaches ``n``; return it. TimeoutError if it does not."""
        async with asyncio.timeout(timeout):
            while self.frames_sent < n:
                self._changed.clear()
                await self._changed.wait()
        return self.frames_sent

    def start(self) -> None:
        """Open the pty (unless unplugged), point the link at it, start streaming."""
        check_links(self.links)
        if self.fault != "unplugged":
            try:
                self._plug()
            except OSError as err:  # the link's folder is missing or not writable
                self._pull_out()
                msg = f"uart device {self.id!r}: cannot create its link: {err}"
                raise StartupError(msg) from err
        self._running = True
        loop = asyncio.get_running_loop()
        for work, role in ((self._tick(), "ticker"), (self._write_loop(), "writer")):
            task = loop.create_task(work, name=f"tepi-sim[{self.id}].uart-{role}")
            task.add_done_callback(self._task_done)
            self._tasks.append(task)

    async def stop(self) -> None:
        """Stop both tasks, close the pty and remove the link if it still points at it."""
        self._running = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._pull_out()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "uart device %s: %s crashed", self.id, task.get_name(), exc_info=task.exception()
            )

    def _plug(self) -> None:
        self._pty = _Pty()
        self._generation += 1
        point_links(self.links, self._pty.path)
        asyncio.get_running_loop().add_reader(self._pty.master, self._on_readable)

    def _pull_out(self) -> None:
        old, self._pty = self._pty, None
        if old is None:
            return
        asyncio.get_running_loop().remove_reader(old.master)
        remove_links(self.links, old.path)
        old.close()

    def _on_readable(self) -> None:
        pty = self._pty
        if pty is None:
            return
        try:
            data = os.read(pty.master, 4096)
        except BlockingIOError:
            return
        except OSError as err:
            log.error("uart device %s: reading the pty failed (%s); replugging", self.id, err)
            self._pull_out()
            self._plug()
            self.replugs += 1
            return
        self.bytes_received += len(data)
        log.debug("uart device %s: rx %s", self.id, data.hex(" "))
        if self.fault in ("silence", "baud_mismatch"):
            return  # dead, or hearing the client at the wrong speed: no command gets through
        for frame in self.player.feed(data):
            self._enqueue(frame)
        self._wake.set()

    def _enqueue(self, frame: Frame) -> None:
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped_frames += 1
            log.debug("uart device %s: send queue full, frame dropped", self.id)

    async def _tick(self) -> None:
        """Stream while the player says so, keeping the cadence across state changes."""
        loop = asyncio.get_running_loop()
        last: float | None = None
        while True:
            self._wake.clear()
            period = self.player.period()
            if period is None:
                last = None
                await self._wake.wait()
                continue
            now = loop.time()
            if last is None:
                last = now
            due = last + period
            if now < due:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due - now):
                        await self._wake.wait()
                continue  # woken early: the period may have changed
            last = due if now - due < period else now  # after a stall: no burst
            if self.fault not in ("silence", "unplugged"):
                for frame in self.player.stream():
                    self._enqueue(frame)

    async def _write_loop(self) -> None:
        while True:
            frame = await self._queue.get()
            await self._transmit(frame)

    async def _transmit(self, frame: Frame) -> None:
        """Put one frame on the wire as the current fault mode has it, and record it."""
        fault = self.fault
        if fault in ("silence", "unplugged") or self._pty is None:
            return
        if fault == "baud_mismatch":
            if self._write(self._scramble(frame.data)):
                self.scrambled_frames += 1
            return
        data, bad = frame.data, False
        if fault == "bad_checksum":
            self._bad_next = bad = not self._bad_next
            if bad:
                data = frame.bad
        if fault == "garbage":
            noise = self._garbage()
            if noise and not self._write(noise):
                return
        if fault == "split":
            if not await self._write_split(data):
                return
        elif not self._write(data):
            return
        if bad:
            self.bad_frames_sent += 1
        else:
            self.frames_sent += 1
            if frame.values is not None:
                self.sent.append((time.monotonic(), dict(frame.values)))
        self._changed.set()

    async def _write_split(self, data: bytes) -> bool:
        """``data`` in 2-4 pieces a few milliseconds apart, as a slow or busy UART gives it."""
        generation = self._generation
        pieces = min(self._rng.randint(2, 4), len(data))
        cuts = sorted(self._rng.sample(range(1, len(data)), pieces - 1))
        for i, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(data)], strict=True)):
            if i:
                await asyncio.sleep(self._rng.uniform(*_SPLIT_GAP_S))
                if generation != self._generation or self._pty is None:
                    return False  # unplugged meanwhile: the rest of the frame is lost
            if not self._write(data[start:end]):
                return False
        return True

    def _garbage(self) -> bytes:
        """0-20 noise bytes, many of them frame headers; for a line sensor a junk line."""
        n = self._rng.randint(0, _GARBAGE_MAX)
        noise = bytes(
            self._rng.choice(_HEADER_BYTES)
            if self._rng.random() < 0.3
            else self._rng.randrange(256)
            for _ in range(n)
        )
        if noise and self.protocol == "line":
            noise += self.config.line_ending.encode()
        return noise

    def _scramble(self, data: bytes) -> bytes:
        """What a UART at the wrong speed makes of ``data``: each byte mapped to another by a
        fixed table that never yields a frame start or line end, some lost, some doubled."""
        out = bytearray()
        for byte in data:
            roll = self._rng.random()
            if roll < 0.08:
                continue
            out.append(self._scramble_table[byte])
            if roll > 0.92:
                out.append(self._scramble_table[byte])
        return bytes(out)

    def _write(self, data: bytes) -> bool:
        """Write all of ``data`` now; False if the pty is gone or the write failed."""
        pty = self._pty
        if pty is None:
            return False
        view = memoryview(data)
        flushed = False
        while view:
            try:
                written = os.write(pty.master, view)
            except BlockingIOError:
                if flushed:
                    return False
                # Nobody reads the port: drop what is waiting in it, as a UART would have.
                self.overruns += 1
                flushed = True
                with contextlib.suppress(OSError):
                    termios.tcflush(pty.slave, termios.TCIFLUSH)
                continue
            except OSError as err:
                log.warning("uart device %s: write failed: %s", self.id, err)
                return False
            view = view[written:]
        log.debug("uart device %s: tx %s", self.id, data.hex(" "))
        return True
