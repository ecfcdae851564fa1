"""One simulated device: its fault mode, request accounting, and the reply decision.

Transports hand every request PDU addressed to the device to :meth:`Device.handle`, which
counts it and returns an :class:`Action` telling the transport what to put on the wire.
The transport owns the wire details (CRC, MBAP, closing sockets, replugging a pty); the
device owns *what* happens, so every fault behaves the same on RTU and TCP.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from tepi_sim.memory import Memory, Prepared, WriteRecord
from tepi_sim.model import FAULT_MODES, TABLES, DeviceConfig, RegisterConfig
from tepi_sim.protocol import exception_response

__all__ = ["Action", "Device"]

log = logging.getLogger(__name__)

WRITES_KEPT: Final = 10_000  # the newest write records a device keeps

ActionKind = Literal[
    "answer", "silent", "garbage", "bad_crc", "partial", "wrong_unit", "disconnect"
]
# Faults that answer, but wrongly: the transport builds the frame and breaks it.
_FAULTY_ANSWERS: dict[str, ActionKind] = {
    "bad_crc": "bad_crc",
    "partial": "partial",
    "wrong_unit": "wrong_unit",
}


@dataclass(frozen=True, slots=True)
class Action:
    """What a transport does with one request.

    ``answer``: after ``delay_s``, call ``prepare()``, send its PDU, then call its
    ``commit``. ``bad_crc``, ``partial``, ``wrong_unit``: send ``prepare().pdu`` with a broken
    checksum, cut off half way, or as from another unit id (``protocol.rtu_reply``), no commit.
    ``garbage``: send ``data`` raw. ``silent``: send nothing. ``disconnect``: drop the link.
    """

    kind: ActionKind
    prepare: Callable[[], Prepared] | None = None
    delay_s: float = 0.0
    data: bytes = b""


class Device:
    """Runtime state of one configured device."""

    def __init__(
        self,
        config: DeviceConfig,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.memory = Memory(config, seed, clock, on_write=self._record_write)
        self.requests = 0
        # Every write carried out, newest last (the newest WRITES_KEPT); writes_total counts
        # them all, including those the deque has let go.
        self.writes: deque[WriteRecord] = deque(maxlen=WRITES_KEPT)
        self.writes_total = 0
        self._written = asyncio.Event()
        self.fault = "none"
        self.fault_code = config.fault_code
        self.delay_s = config.delay_s
        self._rng = (
            random.Random(f"{seed}:{config.id}:faults") if seed is not None else random.Random()
        )
        self._changed = asyncio.Event()
        self._fault_listeners: list[Callable[[Device], None]] = []
        self.set_fault(config.fault)

    @property
    def id(self) -> str:
        """The device id from the config."""
        return self.config.id

    @property
    def unit(self) -> int:
        """The Modbus unit id this device answers to."""
        return self.config.unit

    def __repr__(self) -> str:
        return (
            f"Device({self.id!r}, unit={self.unit}, fault={self.fault!r}, requests={self.requests})"
        )

    def add_fault_listener(self, callback: Callable[[Device], None]) -> None:
        """Call ``callback(device)`` after every fault change (transports react to disconnect)."""
        self._fault_listeners.append(callback)

    def set_fault(
        self, mode: str, *, delay_s: float | None = None, code: int | None = None
    ) -> None:
        """Switch the fault mode now. ``delay_s`` is for ``slow``; ``code`` for ``exception``."""
        if mode not in FAULT_MODES:
            raise ValueError(
                f"unknown fault mode {mode!r}; expected one of: {', '.join(FAULT_MODES)}"
            )
        if delay_s is not None:
            if delay_s < 0:
                raise ValueError("delay_s must not be negative")
            self.delay_s = delay_s
        if code is not None:
            if not 1 <= code <= 255:
                raise ValueError("exception code must be between 1 and 255")
            self.fault_code = code
        if mode != self.fault:
            log.info("device %s: fault %s -> %s", self.id, self.fault, mode)
        self.fault = mode
        for callback in list(self._fault_listeners):
            callback(self)

    def counter_value(self, address: int, table: str = "holding") -> int:
        """The last value the counter at ``table``/``address`` handed out (0 = none yet)."""
        self._check_table(table)
        return self.memory.counter_value(table, address)

    def counters(self) -> dict[str, int]:
        """Every counter register's last value handed out, by ``table/address``."""
        return self.memory.counters()

    def value(self, address: int, table: str = "holding") -> float:
        """The current physical value of a sensor, constant or toggle point."""
        self._check_table(table)
        return self.memory.value(table, address)

    def set_value(self, address: int, value: float, table: str = "holding") -> None:
        """Set the physical value of a point (a counter's last value); reads see it next."""
        self._check_table(table)
        self.memory.set_value(table, address, value)

    def set_script(
        self,
        address: int,
        points: Sequence[Sequence[float]],
        *,
        table: str | None = None,
        loop: bool = False,
    ) -> RegisterConfig:
        """Make the register at ``address`` follow ``points`` (``[[seconds, value], ...]``,
        seconds from now, physical values) from now on. ``table`` may be left out when only
        one table maps ``address``. Any register but a counter takes a script; ValueError
        for a bit, a counter, or invalid points. Returns the register's config."""
        if table is not None:
            self._check_table(table)
        reg = self.memory.set_script(address, points, table=table, loop=loop)
        log.info("device %s: %s %d follows a new script", self.id, reg.table, reg.address)
        return reg

    def writes_since(self, t: float) -> list[WriteRecord]:
        """The kept writes with a wall time ``t`` after ``t`` (``time.time()`` seconds)."""
        return [w for w in self.writes if w.t > t]

    async def wait_writes(self, n: int = 1, timeout: float | None = 5.0) -> int:  # noqa: ASYNC109
        """Wait until at least ``n`` writes were carried out since the device was made;
        return the count (``writes_total``). TimeoutError if not within ``timeout``."""
        async with asyncio.timeout(timeout):
            while self.writes_total < n:
                self._written.clear()
                await self._written.wait()
        return self.writes_total

    def _record_write(self, record: WriteRecord) -> None:
        self.writes.append(record)
        self.writes_total += 1
        self._written.set()
        log.debug("device %s: write %s", self.id, record)

    async def wait_requests(self, n: int, timeout: float | None = 5.0) -> int:  # noqa: ASYNC109
        """Wait until at least ``n`` requests arrived; return the count. TimeoutError if not."""
        async with asyncio.timeout(timeout):
            while self.requests < n:
                self._changed.clear()
                await self._changed.wait()
        return self.requests

    def handle(self, pdu: bytes) -> Action:
        """Decide the reply to one request addressed to this device's unit."""
        self.requests += 1
        self._changed.set()
        mode = self.fault
        if mode == "no_reply":
            return Action("silent")
        if mode in ("disconnect", "unplugged"):
            return Action("disconnect")
        if mode == "exception":
            fc = pdu[0] if pdu else 0
            return Action(
                "answer", lambda: Prepared(exception_response(fc, self.fault_code), ok=False)
            )
        if mode == "garbage":
            return Action("garbage", data=self.garbage())
        prepare = self._preparer(pdu)
        if mode in _FAULTY_ANSWERS:
            return Action(_FAULTY_ANSWERS[mode], prepare)
        return Action("answer", prepare, delay_s=self.delay_s if mode == "slow" else 0.0)

    def handle_broadcast(self, pdu: bytes) -> None:
        """Unit 0: perform writes (if the device is healthy or just slow), never answer."""
        if self.fault in ("none", "slow") and pdu and pdu[0] in (5, 6, 15, 16):
            self.memory.execute(pdu, broadcast=True).commit()

    def garbage(self) -> bytes:
        """1..20 random bytes to send instead of an answer."""
        return self._rng.randbytes(self._rng.randint(1, 20))

    def _preparer(self, pdu: bytes) -> Callable[[], Prepared]:
        # The reply is built when it is sent, so a slow reply carries the value current
        # at send time and concurrent slow requests never hand out the same counter value.
        return lambda: self.memory.execute(pdu)

    @staticmethod
    def _check_table(table: str) -> None:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; expected one of: {', '.join(TABLES)}")
