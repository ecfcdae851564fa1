"""A read request's answer decoded in one step: the plan is compiled once, at config time.

:func:`compile_request` turns a :class:`~tepi.drivers.modbus.codec.ReadRequest` into a
:class:`Decoder`: one ``struct`` format that unpacks every register of the answer in one call
(pad bytes over the gaps), a byte permutation applied first when some register's byte or word
order is not ABCD, and a short list of the values that need more than the raw number (scale
and offset, an enum, a bit, a string, a float that may not be finite). A poll then costs one
``unpack`` and a loop over those few values, not five calls per register.

The result is defined by the per-register path in ``codec`` (``decode_register`` then
``value_of``), which stays for writes and tools; a property test holds the two together. One
deliberate difference: an integer register with a decimal scale (0.1, 0.01, ...) and no offset
is divided by the power of ten, which gives the correctly rounded value (what the round to 9
decimals of ``raw * scale`` aims at) without the cost of ``round``.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tepi.drivers.modbus.codec import (
    BYTE_SWAPPED,
    WORD_SWAPPED,
    ReadRequest,
    decode_register,
    value_of,
)
from tepi.drivers.modbus.config import BIT_TABLES, INTEGER_TYPES, RegisterConfig

Value = int | float | bool | str

_CODE = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
    "bool": "H",
}
# What a raw value needs beyond itself (the op of a value in ``Decoder.ops``).
_BOOL = 1  # bool(raw): a bool register, or a coil
_BIT = 2  # one bit of a register
_ENUM = 3  # a label, or bad
_DIV = 4  # integer / 10**k: a decimal scale, no offset
_SCALE = 5  # round(raw * scale + offset, 9)
_FLOAT = 6  # a float as it is, bad when not finite
_STRING = 7  # text up to the first NUL
_SPLIT = 8  # overlaps another register: decoded on its own (``codec``'s path)
_INT64 = 2**63


def _decimal_divisor(scale: float) -> int | None:
    """10**k when ``scale`` is exactly the float 1e-k (0.1, 0.01, ...), else None."""
    return next((10**k for k in range(1, 10) if scale == float(f"1e-{k}")), None)


@dataclass(frozen=True, slots=True)
class Decoder:
    """How one request's answer becomes its registers' values; see the module docstring."""

    names: tuple[str, ...]
    units: tuple[str | None, ...]
    bits: bool  # a coil or discrete-input read: the answer is a list of bools
    fmt: struct.Struct | None  # registers: the whole answer in one unpack
    permute: Callable[[bytes], tuple[int, ...]] | None  # byte order fix, before unpack
    offsets: tuple[int, ...]  # bits: each value's index in the answer
    # (index, op, a, b): the values that need work, op one of the _ constants above.
    ops: tuple[tuple[int, int, Any, Any], ...]
    # Every value it gives is one the buffer keeps (``tepi.core.records.storable``): no
    # unsigned 64-bit register (2**63 and up is out of SQLite's range) and none decoded on
    # its own; floats that are not finite are already bad, and bits and labels always fit.
    storable: bool = False

    def __call__(
        self, data: bytes | Sequence[bool]
    ) -> tuple[list[Value | None], list[str | None] | None]:
        """The values, in ``names`` order, and their reasons (None: all good)."""
        if self.bits:
            values: list[Any] = [data[i] for i in self.offsets]
        else:
            assert isinstance(data, bytes | bytearray)
            assert self.fmt is not None
            raw = data if self.permute is None else bytes(self.permute(data))
            values = list(self.fmt.unpack_from(raw))
        reasons: list[str | None] | None = None
        for i, op, a, b in self.ops:
            v = values[i]
            why: str | None = None
            if op == _DIV:
                values[i] = v / a
                continue
            if op == _SCALE:
                v = round(v * a + b, 9)
                if math.isfinite(v):
                    values[i] = v
                    continue
                why = "not a finite number"
            elif op == _FLOAT:
                if math.isfinite(v):
                    continue
                why = "not a finite number"
            elif op == _BOOL:
                values[i] = bool(v)
                continue
            elif op == _BIT:
                values[i] = bool((v >> a) & 1)
                continue
            elif op == _ENUM:
                # b: None for an integer, a bit's index, or -1 for a bool register
                if b is None:
                    key: int | bool = int(v)
                else:
                    key = bool(v) if b == -1 else bool((v >> b) & 1)
                label = a.get(int(key))
                if label is not None:
                    values[i] = label
                    continue
                why = f"value {key} not in enum"
            elif op == _STRING:
                text = v.split(b"\0", 1)[0].decode("utf-8", errors="replace").rstrip()
                values[i] = text
                continue
            elif op == _SPLIT:
                values[i], why = _split_value(data, a)
                if why is None:
                    continue
            if reasons is None:
                reasons = [None] * len(values)
            values[i] = None
            reasons[i] = why
        return values, reasons


def _split_value(
    data: bytes | Sequence[bool], job: tuple[int, RegisterConfig]
) -> tuple[Value | None, str | None]:
    """A register that overlaps another, by the per-register path."""
    start, reg = job
    assert isinstance(data, bytes | bytearray)
    raw = data[2 * start : 2 * (start + reg.width)]
    words = [int.from_bytes(raw[k : k + 2], "big") for k in range(0, len(raw), 2)]
    return value_of(decode_register(words, reg), reg)


def _value_op(reg: RegisterConfig) -> tuple[int, Any, Any] | None:
    """What a register's raw value (as unpacked) needs, or None when it is the value."""
    kind = reg.kind
    if reg.enum is not None:
        return (_ENUM, reg.enum, -1 if kind == "bool" and reg.bit is None else reg.bit)
    if reg.bit is not None:
        return (_BIT, reg.bit, None)
    if kind == "bool":
        return (_BOOL, None, None)
    if kind == "string":
        return (_STRING, None, None)
    neutral = reg.scale == 1.0 and reg.offset == 0.0
    if kind in INTEGER_TYPES:
        if neutral:
            return None
        div = _decimal_divisor(reg.scale) if reg.offset == 0.0 else None
        if div is not None:
            return (_DIV, div, None)
        return (_SCALE, reg.scale, reg.offset)
    if neutral:
        return (_FLOAT, None, None)
    return (_SCALE, reg.scale, reg.offset)


def _permutation(
    regs: Sequence[tuple[int, RegisterConfig]], size: int
) -> Callable[[bytes], tuple[int, ...]] | None:
    """The byte permutation that makes every register's bytes big-endian (ABCD), or None."""
    perm = list(range(size))
    moved = False
    for start, reg in regs:
        order = reg.order
        if reg.kind == "string":
            swap_words = False
        elif order not in WORD_SWAPPED and order not in BYTE_SWAPPED:
            continue
        else:
            swap_words = order in WORD_SWAPPED
        if reg.kind == "string" and order not in BYTE_SWAPPED:
            continue
        words = list(range(start, start + reg.width))
        if swap_words:
            words.reverse()
        src = [2 * w + b for w in words for b in (0, 1)]
        if order in BYTE_SWAPPED:
            src = [src[k ^ 1] for k in range(len(src))]
        for k, s in enumerate(src):
            perm[2 * start + k] = s
        moved = True
    if not moved:
        return None
    return operator.itemgetter(*perm)


def compile_request(req: ReadRequest) -> Decoder:
    """The decoder for ``req``'s answer (see the module docstring)."""
    regs = req.registers
    names = tuple(r.name for r in regs)
    units = tuple(r.unit for r in regs)
    ops: list[tuple[int, int, Any, Any]] = []
    if req.table in BIT_TABLES:
        for i, reg in enumerate(regs):
            op = _value_op(reg)
            if op is not None:
                ops.append((i, *op))
        offsets = tuple(r.address - req.address for r in regs)
        return Decoder(names, units, True, None, None, offsets, tuple(ops), storable=True)
    fmt = [">"]
    pos = 0  # in registers, from the request's start
    placed: list[tuple[int, RegisterConfig]] = []
    for i, reg in enumerate(regs):
        start = reg.address - req.address
        if start < pos:
            # It overlaps the register before it (a bit of a word, a float over two ints):
            # no single format has both; it is decoded on its own, which is rare. Its place
            # in the unpacked values is held by a zero-length string (``0s`` gives b"").
            fmt.append("0s")
            ops.append((i, _SPLIT, (start, reg), None))
            continue
        if start > pos:
            fmt.append(f"{2 * (start - pos)}x")
        fmt.append(f"{2 * reg.width}s" if reg.kind == "string" else _CODE[reg.kind])
        pos = start + reg.width
        placed.append((start, reg))
        op = _value_op(reg)
        if op is not None:
            ops.append((i, *op))
    if pos < req.count:
        fmt.append(f"{2 * (req.count - pos)}x")
    return Decoder(
        names,
        units,
        False,
        struct.Struct("".join(fmt)),
        _permutation(placed, 2 * req.count),
        (),
        tuple(ops),
        storable=all(r.kind != "uint64" for r in regs) and all(op[1] != _SPLIT for op in ops),
    )
