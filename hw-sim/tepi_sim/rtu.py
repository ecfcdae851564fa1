"""Modbus RTU over a pseudo-terminal: one pty per bus, one or more slaves on it.

The client opens the pty's *slave* side (``/dev/pts/N``) as if it were a USB-RS485
adapter. The simulator reads the *master* side with ``loop.add_reader`` (no threads) and
also keeps its own fd on the slave open, so a client closing and reopening the port does
not make the master return EIO. The slave is put in raw mode so binary frames pass
through unchanged.

A serial line is half duplex, so replies are produced one at a time by a worker task in
request order; a ``slow`` reply holds up the line just as a slow real device would. When a
device's fault becomes ``disconnect`` the bus is unplugged and replugged: a NEW pty is
opened (before the old one is closed, so the path number changes), the ``link`` symlinks
are repointed to it, and the old pty is closed so the client sees the port vanish. When it
becomes ``unplugged`` the adapter stays out: the pty is closed and the links removed until no
device on the bus is ``unplugged`` any more, when a new pty is plugged in behind the links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import time
import tty
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tepi_sim.device import Action, Device
from tepi_sim.errors import StartupError
from tepi_sim.protocol import RtuParser, rtu_reply

__all__ = ["RtuBus"]

log = logging.getLogger(__name__)

# Bytes that stay incomplete this long are not the start of a frame: resync through them.
SILENCE_S: Final = 0.05
_QUEUE_LIMIT: Final = 64
_SPIN_S: Final = 0.0003


async def _precise_sleep(seconds: float) -> None:
    """Sleep to within microseconds: the event loop's timers round up to whole milliseconds,
    which at 115,200 baud would make the emulated wire a third slower than a real one."""
    if seconds > 0:
        await asyncio.to_thread(time.sleep, seconds)


def _write_at(fd: int, frame: bytes, at: float, on_sent: Callable[[float], None]) -> float | None:
    """Sleep until ``at`` (monotonic), write ``frame`` to ``fd``, close it; when it was
    written, or None if it was not. In a worker thread. ``on_sent`` is told the time, in
    this thread, before the client can have read the frame and answered: the event loop
    may run the client's next request before the coroutine that awaits this one resumes
    (the test at 115,200 baud then counted 38 silences for 39 requests)."""
    try:
        delay = at - time.monotonic() - _SPIN_S
        if delay > 0:
            time.sleep(delay)
        while time.monotonic() < at:  # the last stretch spun: a sleep overshoots by 0.1 ms
            pass
        # Dated before the write: after it, this thread may wait for the GIL (milliseconds
        # on a loaded machine) while the client already reads the reply and answers, and a
        # late date would make the line's silence look shorter than it was.
        sent = time.monotonic()
        on_sent(sent)
        written = os.write(fd, frame)
        return sent if written == len(frame) else None
    except OSError as err:
        log.warning("write failed: %s", err)
        return None
    finally:
        os.close(fd)


class _Pty:
    """An open pseudo-terminal pair; ``path`` is the slave device clients open."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class RtuBus:
    """One RTU line: a pty shared by the devices configured with the same ``bus``."""

    def __init__(self, name: str, devices: list[Device], links: list[str]) -> None:
        self.name = name
        self.devices = {d.unit: d for d in devices}
        self.links = [Path(link) for link in links]
        self.replugs = 0
        self.dropped_frames = 0  # requests dropped because the reply queue was full
        self.baudrate = devices[0].config.baudrate
        # Wire-time emulation: answer only when the request and the reply would have crossed
        # a real line at this baud rate (10-bit characters, 8N1), with the 3.5-character
        # silence a slave waits for before it may answer.
        self.wire_time = any(d.config.wire_time for d in devices)
        self.char_s = 10 / self.baudrate
        self.frame_gap_s = 3.5 * self.char_s if self.baudrate <= 19200 else 0.00175
        # (unit that last answered, seconds of silence before the next request): how well a
        # client keeps the inter-frame silence and a device's pause. The newest 1000.
        self.gaps: deque[tuple[int, float]] = deque(maxlen=1000)
        # A device with needs_pause_s ignores a request that comes sooner after its last
        # answer, as some slow sensors do: unit -> when it last answered.
        self._answered_at: dict[int, float] = {}
        self.ignored_too_soon = 0
        self._last_tx: tuple[int, float] | None = None
        self._rx_at = 0.0
        self.wrong_speed = 0  # reads dropped: the client's line speed was not the bus's
        self._pty: _Pty | None = None
        self._parser = RtuParser()
        self._silence: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[tuple[int, Device, Action, int, float]] = asyncio.Queue(
            _QUEUE_LIMIT
        )
        self._generation = 0
        self._worker: asyncio.Task[None] | None = None
        for device in devices:
            device.add_fault_listener(self._on_fault)

    @property
    def path(self) -> str:
        """The current slave path, e.g. ``/dev/pts/7``."""
        if self._pty is None:
            raise RuntimeError(f"bus {self.name!r} is not running, or unplugged")
        return self._pty.path

    def start(self) -> None:
        """Open the pty, point the links at it and start reading. Needs a running loop."""
        for link in self.links:
            if link.exists() and not link.is_symlink():
                raise StartupError(
                    f"link {link} exists and is not a symlink; remove it or pick another path"
                )
        self._plug()
        self._worker = asyncio.get_running_loop().create_task(
            self._work(), name=f"tepi-sim[{self.name}].rtu"
        )

    async def stop(self) -> None:
        """Stop the worker, close the pty and remove links that still point at it."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self._pull_out()

    def replug(self) -> None:
        """Simulate unplugging and replugging the adapter: new pty, links repointed."""
        old = self._unplug()
        self._plug()
        if old is not None:
            old.close()
        self.replugs += 1
        log.info("bus %s: replugged, now %s", self.name, self.path)

    def _pull_out(self) -> None:
        """Close the pty and remove the links that still point at it."""
        old = self._unplug()
        if old is None:
            return
        for link in self.links:
            with contextlib.suppress(OSError):
                if link.is_symlink() and str(link.readlink()) == old.path:
                    link.unlink()
        old.close()

    def _plug(self) -> None:
        self._pty = _Pty()
        self._generation += 1
        self._parser = RtuParser()
        for link in self.links:
            tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self._pty.path)
            tmp.replace(link)
        asyncio.get_running_loop().add_reader(self._pty.master, self._on_readable)

    def _unplug(self) -> _Pty | None:
        old, self._pty = self._pty, None
        if old is not None:
            asyncio.get_running_loop().remove_reader(old.master)
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        return old

    def _on_fault(self, device: Device) -> None:
        out = any(d.fault == "unplugged" for d in self.devices.values())
        if out and self._pty is not None:
            self._pull_out()
            log.info("bus %s: unplugged", self.name)
        elif not out and self._pty is None and self._worker is not None:
            self._plug()
            self.replugs += 1
            log.info("bus %s: plugged back in, now %s", self.name, self.path)
        elif device.fault == "disconnect" and self._pty is not None:
            self.replug()

    def _on_readable(self) -> None:
        self._rx_at = time.monotonic()  # first: the request's bytes arrived by now
        if self._pty is None:
            return
        try:
            data = os.read(self._pty.master, 4096)
        except BlockingIOError:
            return
        except OSError as err:
            log.error("bus %s: reading the pty failed (%s); replugging", self.name, err)
            self.replug()
            return
        log.debug("bus %s: rx %s", self.name, data.hex(" "))
        if self._last_tx is not None and not self._parser.pending:
            unit, at = self._last_tx
            self.gaps.append((unit, self._rx_at - at))
            self._last_tx = None
        if not self._speed_matches():
            # At another baud rate a real UART sees framing errors, not frames: no answer.
            self.wrong_speed += 1
            with contextlib.suppress(OSError):
                termios.tcflush(self._pty.slave, termios.TCIFLUSH)
            return
        # Half duplex: a client sends only after reading the last reply or giving up on it,
        # so anything it left unread is stale and would reach the next client as noise.
        with contextlib.suppress(OSError):
            termios.tcflush(self._pty.slave, termios.TCIFLUSH)
        self._dispatch(self._parser.feed(data))
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        if self._parser.pending:
            loop = asyncio.get_running_loop()
            self._silence = loop.call_later(SILENCE_S, self._on_silence)

    def _speed_matches(self) -> bool:
        """The client set its side of the pty to the bus's baud rate (shared termios)."""
        assert self._pty is not None
        try:
            ispeed = termios.tcgetattr(self._pty.slave)[4]
        except termios.error:
            return True
        return bool(ispeed == getattr(termios, f"B{self.baudrate}", ispeed))

    def _on_silence(self) -> None:
        self._silence = None
        self._dispatch(self._parser.flush())

    def _dispatch(self, frames: list[tuple[int, bytes]]) -> None:
        for unit, pdu in frames:
            if unit == 0:
                for device in self.devices.values():
                    device.handle_broadcast(pdu)
                continue
            target = self.devices.get(unit)
            if target is None:
                continue  # another slave on the line may answer; we stay quiet
            pause = target.config.needs_pause_s
            if pause and time.monotonic() - self._answered_at.get(unit, 0.0) < pause:
                self.ignored_too_soon += 1
                continue  # not ready yet: a real one would not even have seen the frame
            action = target.handle(pdu)
            if action.kind == "silent":
                continue
            try:
                self._queue.put_nowait(
                    (self._generation, target, action, len(pdu) + 3, self._rx_at)
                )
            except asyncio.QueueFull:
                self.dropped_frames += 1
                log.warning("bus %s: reply queue full, request dropped", self.name)

    async def _work(self) -> None:
        while True:
            generation, device, action, request_len, arrived = await self._queue.get()
            # With wire time: the request's bytes, the slave's 3.5-character wait, and (for an
            # answer, below) the reply's bytes, waited in one precise sleep.
            wire = request_len * self.char_s + self.frame_gap_s if self.wire_time else 0.0
            if wire and action.prepare is None:
                await _precise_sleep(arrived + wire - time.monotonic())
            if action.delay_s:
                await asyncio.sleep(action.delay_s)
            if generation != self._generation or self._pty is None:
                continue  # the line was replugged since: the client is gone
            if action.kind == "disconnect":
                self.replug()
            elif action.kind == "garbage":
                self._send(action.data)
            elif action.prepare is not None:
                prepared = action.prepare()
                corrupt = action.kind != "answer"  # bad_crc, partial, wrong_unit
                frame = rtu_reply(device.unit, prepared.pdu, action.kind)
                if generation != self._generation or self._pty is None:
                    continue
                if wire:
                    # Measured from the request's arrival: the simulator's own work runs
                    # while the emulated bytes are on the wire, as a device's would.
                    at = arrived + wire + len(frame) * self.char_s
                    sent = await self._send_at(frame, at, device.unit)
                else:
                    sent = self._send(frame)
                    if sent is not None:
                        self._last_tx = (device.unit, sent)
                if sent is not None:
                    self._answered_at[device.unit] = sent
                if sent is not None and not corrupt:
                    prepared.commit()

    async def _send_at(self, frame: bytes, at: float, unit: int) -> float | None:
        """Send ``frame`` at ``at`` (monotonic) to the microsecond: a worker thread sleeps and
        writes, so the reply does not wait for the event loop's next turn as well. It writes
        to its own duplicate of the pty's fd, so a replug meanwhile cannot redirect it."""
        assert self._pty is not None
        fd = os.dup(self._pty.master)

        def on_sent(sent: float) -> None:
            # A tuple assigned at once: the event loop's thread sees it whole or not at all.
            self._last_tx = (unit, sent)

        sent_at = await asyncio.to_thread(_write_at, fd, frame, at, on_sent)
        if sent_at is not None:
            log.debug("bus %s: tx %s", self.name, frame.hex(" "))
        return sent_at

    def _send(self, frame: bytes) -> float | None:
        """Send ``frame`` now; when it was sent, or None."""
        pty = self._pty
        if pty is None:
            return None
        try:
            written = os.write(pty.master, frame)
        except OSError as err:
            log.warning("bus %s: write failed: %s", self.name, err)
            return None
        log.debug("bus %s: tx %s", self.name, frame.hex(" "))
        return time.monotonic() if written == len(frame) else None
