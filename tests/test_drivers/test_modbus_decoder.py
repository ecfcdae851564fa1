"""The compiled decoder (one unpack a request) gives what the per-register path gives."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tepi.core.records import storable
from tepi.drivers.modbus.codec import ReadRequest, decode_register, plan_reads, value_of
from tepi.drivers.modbus.config import RegisterConfig
from tepi.drivers.modbus.decoder import compile_request

TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
ORDERS = ["ABCD", "BADC", "CDAB", "DCBA"]
SCALES = [1.0, 0.1, 0.01, 0.001, 0.5, 2.0, 10.0, 0.25, 1e-9]


@st.composite
def register(draw: st.DrawFn, n: int, table: str) -> dict[str, Any]:
    reg: dict[str, Any] = {"name": f"m{n}", "address": draw(st.integers(0, 40)), "table": table}
    if table in ("coil", "discrete"):
        if draw(st.booleans()):
            reg["enum"] = {0: "off", 1: "on"} if draw(st.booleans()) else {1: "on"}
        return reg
    shape = draw(st.sampled_from(["number", "number", "number", "bit", "bool", "string"]))
    if shape == "bit":
        reg["bit"] = draw(st.integers(0, 15))
    elif shape == "bool":
        reg["type"] = "bool"
    elif shape == "string":
        reg["type"] = "string"
        reg["length"] = draw(st.integers(1, 6))
        reg["byte_order"] = draw(st.sampled_from(ORDERS))
    else:
        reg["type"] = draw(st.sampled_from(TYPES))
        reg["byte_order"] = draw(st.sampled_from(ORDERS))
        if draw(st.integers(0, 4)) == 0 and reg["type"] in TYPES[:6]:
            reg["enum"] = {k: f"s{k}" for k in draw(st.sets(st.integers(0, 5), max_size=4))}
        else:
            reg["scale"] = draw(st.sampled_from(SCALES))
            reg["offset"] = draw(st.sampled_from([0.0, 0.0, 1.5, -40.0]))
    if shape in ("bit", "bool") and draw(st.booleans()):
        reg["enum"] = {0: "closed", 1: "open"} if draw(st.booleans()) else {0: "closed"}
    return reg


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        # A decimal scale is a division here (correctly rounded) and round(raw * scale, 9)
        # there: they agree to the last bits.
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    return type(a) is type(b) and a == b


def check(req: ReadRequest, data: bytes | list[bool]) -> None:
    decoder = compile_request(req)
    values, reasons = decoder(data)
    if decoder.storable:  # the poller then trusts every value to fit the buffer
        assert all(storable(v) is None for v in values if v is not None), (req, values)
    for i, reg in enumerate(req.registers):
        start = reg.address - req.address
        if isinstance(data, list):
            raw: Any = data[start]
            want = value_of(raw, reg)
        else:
            words = [int.from_bytes(data[2 * k : 2 * k + 2], "big") for k in range(req.count)]
            want = value_of(decode_register(words[start : start + reg.width], reg), reg)
        got = (values[i], None if reasons is None else reasons[i])
        assert got[1] == want[1], (reg, data, got, want)
        assert same(got[0], want[0]), (reg, data, got, want)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_compiled_decoder_matches_the_per_register_path(data: st.DataObject) -> None:
    table = data.draw(st.sampled_from(["holding", "input", "coil", "discrete"]))
    n = data.draw(st.integers(1, 8))
    regs = []
    for i in range(n):
        try:
            regs.append(RegisterConfig.model_validate(data.draw(register(i, table))))
        except ValidationError:
            continue
    assume(regs)
    for req in plan_reads(regs, max_gap=data.draw(st.integers(0, 10))):
        if table in ("coil", "discrete"):
            check(req, data.draw(st.lists(st.booleans(), min_size=req.count, max_size=req.count)))
        else:
            check(req, data.draw(st.binary(min_size=2 * req.count, max_size=2 * req.count)))


def reg(**kw: Any) -> RegisterConfig:
    return RegisterConfig.model_validate(kw)


def test_one_request_decodes_scale_enum_bit_string_and_word_order() -> None:
    regs = [
        reg(name="t", address=0, type="int16", scale=0.1),
        reg(name="f", address=1, type="float32", word_order="little"),
        reg(name="mode", address=3, enum={0: "off", 1: "on"}),
        reg(name="alarm", address=4, bit=3),
        reg(name="label", address=6, type="string", length=2),
        reg(name="nan", address=8, type="float32"),
    ]
    (req,) = plan_reads(regs, max_gap=2)
    data = (  # 1.5 as float32 is 0x3FC00000; CDAB sends the low word first
        (-123).to_bytes(2, "big", signed=True)
        + bytes.fromhex("0000 3fc0")
        + (7).to_bytes(2, "big")
        + (0b1000).to_bytes(2, "big")
        + b"\0\0"
        + b"ok\0\0"
        + bytes.fromhex("7fc0 0000")
    )
    values, reasons = compile_request(req)(data)
    assert values == [-12.3, 1.5, None, True, "ok", None]
    assert reasons == [None, None, "value 7 not in enum", None, None, "not a finite number"]


def test_overlapping_registers_each_get_their_value() -> None:
    regs = [
        reg(name="word", address=0),
        reg(name="b0", address=0, bit=0),
        reg(name="b15", address=0, bit=15),
        reg(name="wide", address=0, type="uint32"),
    ]
    (req,) = plan_reads(regs)
    values, reasons = compile_request(req)(bytes.fromhex("8001 0002"))
    assert reasons is None
    got = dict(zip(compile_request(req).names, values, strict=True))
    assert got == {"word": 0x8001, "b0": True, "b15": True, "wide": 0x80010002}


@pytest.mark.parametrize(
    ("scale", "shown"), [(0.1, "400000012.3"), (0.01, "40000001.23"), (0.001, "4000000.123")]
)
def test_a_decimal_scale_gives_the_short_decimal(scale: float, shown: str) -> None:
    """round(raw * scale, 9) can miss the decimal (40000001.230000004 for 0.01)."""
    (req,) = plan_reads([reg(name="v", address=0, type="uint32", scale=scale)])
    values, _ = compile_request(req)((4_000_000_123).to_bytes(4, "big"))
    assert repr(values[0]) == shown
