"""A device's data tables: executes request PDUs against its register map.

Execution is split in two so faults stay exact: :meth:`Memory.execute` builds the reply
PDU and returns it with a ``commit`` callback, and only the transport calls ``commit``,
right after the reply was actually written. Counters therefore advance once per answered
read and never for a request that was dropped, corrupted or answered too late to send;
writes follow the same rule (a faulted request has no effect). Each write that is carried
out is reported, as a :class:`WriteRecord`, to the ``on_write`` callback (the device keeps
the log).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tepi_sim.model import BIT_TABLES, TABLES, DeviceConfig, RegisterConfig, parse_script
from tepi_sim.protocol import (
    EXC_ILLEGAL_ADDRESS,
    Request,
    RequestError,
    bits_response,
    exception_response,
    parse_request,
    registers_response,
    write_response,
)
from tepi_sim.values import (
    Script,
    Source,
    decode_words,
    encode_value,
    make_source,
    raw_to_words,
)

__all__ = ["Memory", "Prepared", "WriteRecord"]


def _noop() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A reply PDU and what to apply once it has been sent."""

    pdu: bytes
    commit: Callable[[], None] = _noop
    ok: bool = True  # False for exception replies


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One Modbus write a device carried out (function code 5, 6, 15 or 16).

    ``t`` is the wall time (``time.time()``) and ``mono`` the monotonic time
    (``time.monotonic()``) at which it took effect: right after the reply was sent, or on
    arrival for a broadcast (unit 0, never answered). ``values`` holds what was written,
    from ``address`` on: bools for coils, the raw 16-bit words (0..65535) for registers.
    """

    t: float
    mono: float
    fc: int
    table: str
    address: int
    values: tuple[bool, ...] | tuple[int, ...]
    broadcast: bool = False

    @property
    def value(self) -> bool | int:
        """The first value written (the only one, for function codes 5 and 6)."""
        return self.values[0]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``t``, ``mono``, ``fc``, ``table``, ``address``, ``value`` (the first),
        ``values`` (all of them) and ``broadcast``."""
        return {
            "t": self.t,
            "mono": self.mono,
            "fc": self.fc,
            "table": self.table,
            "address": self.address,
            "value": self.value,
            "values": list(self.values),
            "broadcast": self.broadcast,
        }


class _Point:
    """One configured register or bit and its live state."""

    def __init__(self, reg: RegisterConfig, rng: random.Random, start: float) -> None:
        self.reg = reg
        self.count = 0  # counters: the last value handed out
        self.walk: Source | None = None if reg.kind == "counter" else make_source(reg, rng, start)

    def modulus(self) -> int:
        return 1 << (16 * self.reg.width)

    def words(self, now: float, *, next_count: bool) -> list[int]:
        if self.walk is None:
            value = (self.count + 1) % self.modulus() if next_count else self.count
            return raw_to_words(value, self.reg)
        return encode_value(self.walk.at(now), self.reg)


class Memory:
    """The four Modbus tables of one device, built from its register map."""

    def __init__(
        self,
        config: DeviceConfig,
        seed: int | None,
        clock: Callable[[], float],
        on_write: Callable[[WriteRecord], None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_write = on_write
        start = clock()
        self._points: dict[tuple[str, int], tuple[_Point, int]] = {}
        for reg in config.registers:
            # One RNG per point: adding a register does not change the others' values.
            rng = (
                random.Random(f"{seed}:{config.id}:{reg.table}:{reg.address}")
                if seed is not None
                else random.Random()
            )
            point = _Point(reg, rng, start)
            for offset in range(reg.width):
                self._points[reg.table, reg.address + offset] = (point, offset)
        self._gaps: dict[tuple[str, int], int] = {}  # writes to unmapped addresses (fill_gaps)

    def point(self, table: str, address: int) -> _Point:
        """The point that starts at ``address`` (KeyError if none)."""
        point, offset = self._points[table, address]
        if offset:
            raise KeyError((table, address))
        return point

    def counter_value(self, table: str, address: int) -> int:
        """The last value a counter handed out (0 before the first answered read)."""
        point = self.point(table, address)
        if point.walk is not None:
            raise ValueError(f"{table} {address} is a {point.reg.kind}, not a counter")
        return point.count

    def counters(self) -> dict[str, int]:
        """Every counter's last value handed out, by ``table/address``."""
        return {
            f"{table}/{address}": point.count
            for (table, address), (point, offset) in self._points.items()
            if point.walk is None and not offset
        }

    def value(self, table: str, address: int) -> float:
        """The current physical value of a non-counter point."""
        point = self.point(table, address)
        if point.walk is None:
            return float(point.count)
        return point.walk.at(self._clock())

    def set_value(self, table: str, address: int, value: float) -> None:
        """Set a point's physical value (a counter's count) from outside, as a test does."""
        point = self.point(table, address)
        if point.walk is None:
            point.count = int(value) % point.modulus()
        else:
            point.walk.set(value)

    def find(self, address: int, table: str | None = None) -> _Point:
        """The point that starts at ``address`` in ``table``, or in whichever table has one
        there when ``table`` is None. ValueError naming the mapped points if there is none,
        and the tables if there is more than one."""
        tables = (table,) if table is not None else TABLES
        found = [hit[0] for t in tables if (hit := self._points.get((t, address))) and not hit[1]]
        if len(found) == 1:
            return found[0]
        if found:
            where = " and ".join(p.reg.table for p in found)
            raise ValueError(f"address {address} is mapped in {where}: name the table")
        mapped = [
            f"{p.reg.table} {p.reg.address}" for p, offset in self._points.values() if not offset
        ]
        what = f"{table} address" if table is not None else "address"
        raise ValueError(
            f"no register starts at {what} {address}; mapped: {', '.join(mapped) or 'none'}"
        )

    def set_script(
        self,
        address: int,
        points: Sequence[Sequence[float]],
        *,
        table: str | None = None,
        loop: bool = False,
    ) -> RegisterConfig:
        """Make a register follow ``points`` from now on (t = 0 is now). Any non-counter
        register may take a script; its type and scale apply. ValueError if the register
        cannot, or the points are invalid. Returns the register's config."""
        point = self.find(address, table)
        reg = point.reg
        if point.walk is None or reg.is_bit:
            raise ValueError(
                f"{reg.table} {reg.address} is a {'bit' if reg.is_bit else reg.kind}: "
                "only registers other than counters take a script"
            )
        checked, problems = parse_script(points, reg.type, reg.scale, "points")
        if problems:
            raise ValueError("; ".join(problems))
        point.walk = Script(checked, self._clock(), loop=loop)
        return reg

    def restart_scripts(self) -> None:
        """Start every script again from t = 0, now (the simulator starts)."""
        now = self._clock()
        for point, offset in self._points.values():
            if not offset and isinstance(point.walk, Script):
                point.walk.start = now

    def execute(self, pdu: bytes, *, broadcast: bool = False) -> Prepared:
        """Run one request PDU. Exceptions are returned as PDUs, never raised."""
        fc = pdu[0] if pdu else 0
        try:
            request = parse_request(pdu)
            self._check_range(request)
            if request.fc in (1, 2, 3, 4):
                return self._read(request)
            return self._write(request, pdu, broadcast)
        except RequestError as err:
            return Prepared(exception_response(fc, err.code), ok=False)

    def _check_range(self, request: Request) -> None:
        if request.address + request.count > 0x10000:
            raise RequestError(EXC_ILLEGAL_ADDRESS)
        if self._config.fill_gaps:
            return
        for address in range(request.address, request.address + request.count):
            if (request.table, address) not in self._points:
                raise RequestError(EXC_ILLEGAL_ADDRESS)

    def _read(self, request: Request) -> Prepared:
        now = self._clock()
        cache: dict[int, list[int]] = {}
        counters: list[_Point] = []
        words: list[int] = []
        for address in range(request.address, request.address + request.count):
            hit = self._points.get((request.table, address))
            if hit is None:
                words.append(self._gaps.get((request.table, address), 0))
                continue
            point, offset = hit
            key = id(point)
            if key not in cache:  # both words of a 32-bit value come from one sample
                cache[key] = point.words(now, next_count=True)
                if point.walk is None:
                    counters.append(point)
            words.append(cache[key][offset])

        def commit() -> None:
            for point in counters:
                point.count = (point.count + 1) % point.modulus()

        if request.table in BIT_TABLES:
            return Prepared(bits_response(request.fc, [bool(w) for w in words]), commit)
        return Prepared(registers_response(request.fc, words), commit)

    def _write(self, request: Request, pdu: bytes, broadcast: bool) -> Prepared:
        table = request.table

        def commit() -> None:
            wall, mono = time.time(), time.monotonic()
            now = self._clock()
            touched: dict[int, tuple[_Point, list[int]]] = {}
            for i, raw in enumerate(request.values):
                address = request.address + i
                hit = self._points.get((table, address))
                if hit is None:
                    self._gaps[table, address] = raw
                    continue
                point, offset = hit
                if id(point) not in touched:
                    touched[id(point)] = (point, point.words(now, next_count=False))
                touched[id(point)][1][offset] = raw
            for point, words in touched.values():
                self._store(point, words)
            if self._on_write is not None:
                values: tuple[bool, ...] | tuple[int, ...] = (
                    tuple(bool(v) for v in request.values)
                    if table in BIT_TABLES
                    else tuple(request.values)
                )
                self._on_write(
                    WriteRecord(wall, mono, request.fc, table, request.address, values, broadcast)
                )

        return Prepared(write_response(request, pdu), commit)

    @staticmethod
    def _store(point: _Point, words: list[int]) -> None:
        if point.walk is None:
            value = decode_words(words, point.reg)
            point.count = int(value) % point.modulus()
        elif point.reg.table in BIT_TABLES:
            point.walk.set(float(bool(words[0])))
        else:
            point.walk.set(decode_words(words, point.reg))
