"""A device's data tables: executes request PDUs against its register map.

Execution is split in two so faults stay exact: :meth:`Memory.execute` builds the reply
PDU and returns it with a ``commit`` callback, and only the transport calls ``commit``,
right after the reply was actually written. Counters therefore advance once per answered
read and never for a request that was dropped, corrupted or answered too late to send;
writes follow the same rule (a faulted request has no effect).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tepi_sim.model import BIT_TABLES, DeviceConfig, RegisterConfig
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
from tepi_sim.values import Walk, decode_words, encode_value, make_source, raw_to_words

__all__ = ["Memory", "Prepared"]


def _noop() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A reply PDU and what to apply once it has been sent."""

    pdu: bytes
    commit: Callable[[], None] = _noop
    ok: bool = True  # False for exception replies


class _Point:
    """One configured register or bit and its live state."""

    def __init__(self, reg: RegisterConfig, rng: random.Random, start: float) -> None:
        self.reg = reg
        self.count = 0  # counters: the last value handed out
        self.walk: Walk | None = None if reg.kind == "counter" else make_source(reg, rng, start)

    def modulus(self) -> int:
        return 1 << (16 * self.reg.width)

    def words(self, now: float, *, next_count: bool) -> list[int]:
        if self.walk is None:
            value = (self.count + 1) % self.modulus() if next_count else self.count
            return raw_to_words(value, self.reg)
        return encode_value(self.walk.at(now), self.reg)


class Memory:
    """The four Modbus tables of one device, built from its register map."""

    def __init__(self, config: DeviceConfig, seed: int | None, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
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

    def execute(self, pdu: bytes) -> Prepared:
        """Run one request PDU. Exceptions are returned as PDUs, never raised."""
        fc = pdu[0] if pdu else 0
        try:
            request = parse_request(pdu)
            self._check_range(request)
            if request.fc in (1, 2, 3, 4):
                return self._read(request)
            return self._write(request, pdu)
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

    def _write(self, request: Request, pdu: bytes) -> Prepared:
        table = request.table

        def commit() -> None:
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
