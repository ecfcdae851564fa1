"""Registers to values and back, and the plan of read requests for a device.

Values are decoded by hand with ``struct`` rather than pymodbus's helpers, because the later
Modbus work needs byte orders (BADC, CDAB, ...) that those helpers do not have.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.config import BIT_TABLES, RegisterConfig, RegisterType

MAX_REGISTERS = 125
MAX_BITS = 2000
_FMT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}


def decode(words: Sequence[int], kind: RegisterType, word_order: str = "big") -> int | float | bool:
    """Decode 16-bit ``words`` (in wire order) as ``kind``."""
    if kind == "bool":
        return bool(words[0])
    ordered = list(words) if word_order == "big" else list(reversed(words))
    raw = b"".join(w.to_bytes(2, "big") for w in ordered)
    value: int | float = struct.unpack(_FMT[kind], raw)[0]
    return value


def encode(value: float | bool, kind: RegisterType, word_order: str = "big") -> list[int]:
    """The words (in wire order) that hold ``value`` as ``kind``; inverse of :func:`decode`."""
    if kind == "bool":
        return [1 if value else 0]
    raw = struct.pack(_FMT[kind], value)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if word_order == "big" else list(reversed(words))


def scaled(raw: int | float | bool, reg: RegisterConfig) -> int | float | bool:
    """Apply scale and offset; integers stay integers when both are neutral."""
    if isinstance(raw, bool) or (reg.scale == 1.0 and reg.offset == 0.0):
        return raw
    return round(raw * reg.scale + reg.offset, 9)


def bad_value(value: int | float | bool) -> str | None:
    """Why a decoded value cannot be sent, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    return None


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: ``count`` registers or bits from ``address`` in ``table``."""

    table: str
    address: int
    count: int
    registers: tuple[RegisterConfig, ...]


def plan_reads(
    registers: Sequence[RegisterConfig],
    *,
    max_gap: int = 0,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadRequest]:
    """Merge registers into as few requests as possible.

    Registers of one table merge when the gap between them is at most ``max_gap`` (0 merges
    only adjacent or overlapping ones) and the request stays within the protocol's limit.
    """
    plan: list[ReadRequest] = []
    by_table: dict[str, list[RegisterConfig]] = {}
    for reg in registers:
        by_table.setdefault(reg.table, []).append(reg)
    for table, regs in by_table.items():
        limit = max_bits if table in BIT_TABLES else max_registers
        regs.sort(key=lambda r: (r.address, r.width))
        start = end = -1
        members: list[RegisterConfig] = []
        for reg in regs:
            r_end = reg.address + reg.width
            if members and reg.address - end <= max_gap and max(end, r_end) - start <= limit:
                members.append(reg)
                end = max(end, r_end)
                continue
            if members:
                plan.append(ReadRequest(table, start, end - start, tuple(members)))
            start, end, members = reg.address, r_end, [reg]
        if members:
            plan.append(ReadRequest(table, start, end - start, tuple(members)))
    return plan
