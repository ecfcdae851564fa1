"""Registers to values and back, and the plan of read requests for a device.

Values are decoded by hand with ``struct`` rather than pymodbus's helpers, which do not have
all four byte orders (ABCD, BADC, CDAB, DCBA).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from tepi.core.errors import WriteRefused
from tepi.drivers.modbus.config import BIT_TABLES, ByteOrder, RegisterConfig, RegisterType

MAX_REGISTERS = 125
MAX_BITS = 2000
_FMT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
WORD_SWAPPED = frozenset({"CDAB", "DCBA"})
BYTE_SWAPPED = frozenset({"BADC", "DCBA"})
Value = int | float | bool | str


def to_bytes(words: Sequence[int], order: ByteOrder = "ABCD") -> bytes:
    """The value's bytes, most significant first, from registers in wire order.

    ABCD: as on the wire. CDAB: the registers come low word first. BADC: each register has
    its two bytes swapped. DCBA: both (little-endian). The same rule covers 64-bit values.
    """
    ordered = list(reversed(words)) if order in WORD_SWAPPED else list(words)
    raw = b"".join(w.to_bytes(2, "big") for w in ordered)
    return _swap_pairs(raw) if order in BYTE_SWAPPED else raw


def from_bytes(raw: bytes, order: ByteOrder = "ABCD") -> list[int]:
    """The registers, in wire order, that hold ``raw`` (most significant byte first)."""
    if order in BYTE_SWAPPED:
        raw = _swap_pairs(raw)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return list(reversed(words)) if order in WORD_SWAPPED else words


def _swap_pairs(raw: bytes) -> bytes:
    out = bytearray(raw)
    out[0::2], out[1::2] = raw[1::2], raw[0::2]
    return bytes(out)


def decode(words: Sequence[int], kind: RegisterType, order: ByteOrder = "ABCD") -> Value:
    """Decode 16-bit ``words`` (in wire order) as ``kind``."""
    if kind == "bool":
        return bool(words[0])
    if kind == "string":
        # Characters run in register order; only the bytes within a register may be swapped.
        raw = b"".join(w.to_bytes(2, "big") for w in words)
        if order in BYTE_SWAPPED:
            raw = _swap_pairs(raw)
        return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").rstrip()
    value: int | float = struct.unpack(_FMT[kind], to_bytes(words, order))[0]
    return value


def encode(value: Value, kind: RegisterType, order: ByteOrder = "ABCD") -> list[int]:
    """The words (in wire order) that hold ``value`` as ``kind``; inverse of :func:`decode`
    for what can be written (numbers and bools: a string is never writable)."""
    if kind == "bool":
        return [1 if value else 0]
    return from_bytes(struct.pack(_FMT[kind], value), order)


def decode_register(words: Sequence[int], reg: RegisterConfig) -> Value:
    """One configured register's raw value (before scale and enum) from its words."""
    if reg.bit is not None:
        return bool((words[0] >> reg.bit) & 1)
    return decode(words, reg.kind, reg.order)


_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def raw_for_write(value: Value, reg: RegisterConfig) -> list[int] | list[bool]:
    """The words (or bit) to write for ``value``, checked against the register's limits.

    Raises ``WriteRefused`` with a reason a person can act on.
    """
    # The write path (this, encode, ModbusDriver.write, WriteRefused) has no caller in the
    # agent yet, only tests: it waits for the rules and remote-operations issues (a siren
    # switched by a rule, a remote write), which will call ModbusDriver.write.
    if reg.kind == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            raise WriteRefused("out of range", f"{reg.name} is a bool: write true or false")
        return [bool(value)] if reg.table == "coil" else [1 if value else 0]
    if reg.enum is not None:
        raws = [k for k, label in reg.enum.items() if label == value]
        if not raws:
            raise WriteRefused(
                "out of range", f"{reg.name} takes one of {sorted(reg.enum.values())}"
            )
        raw: float = raws[0]
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WriteRefused("bad value", f"{reg.name} takes a number, not {value!r}")
        if not math.isfinite(value):
            raise WriteRefused("bad value", f"{reg.name}: {value} is not a finite number")
        if (reg.min is not None and value < reg.min) or (reg.max is not None and value > reg.max):
            raise WriteRefused(
                "out of range", f"{reg.name} takes {reg.min} to {reg.max}, not {value}"
            )
        raw = (value - reg.offset) / reg.scale
    if reg.kind in _INT_RANGE:
        lo, hi = _INT_RANGE[reg.kind]
        whole = round(raw)
        if abs(whole - raw) > 1e-6 or not lo <= whole <= hi:
            raise WriteRefused(
                "out of range",
                f"{reg.name} is {reg.kind} with scale {reg.scale}: {value} is not representable",
            )
        return encode(whole, reg.kind, reg.order)
    try:
        return encode(raw, reg.kind, reg.order)
    except (OverflowError, struct.error):
        raise WriteRefused(
            "out of range", f"{reg.name}: {value} does not fit a {reg.kind}"
        ) from None


def scaled(raw: Value, reg: RegisterConfig) -> Value:
    """Apply scale and offset; integers stay integers when both are neutral."""
    if isinstance(raw, bool | str) or (reg.scale == 1.0 and reg.offset == 0.0):
        return raw
    return round(raw * reg.scale + reg.offset, 9)


def value_of(raw: Value, reg: RegisterConfig) -> tuple[Value | None, str | None]:
    """The value to send for ``raw`` and, for a bad one, why: scale, enum, finiteness."""
    if reg.enum is not None:
        label = reg.enum.get(int(raw))
        if label is None:
            return None, f"value {raw} not in enum"
        return label, None
    value = scaled(raw, reg)
    if isinstance(value, float) and not math.isfinite(value):
        return None, "not a finite number"
    return value, None


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
