"""Register decoding against known vectors, round trips, and the read plan."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tepi.drivers.modbus.codec import (
    BYTE_SWAPPED,
    MAX_REGISTERS,
    decode,
    decode_register,
    encode,
    plan_reads,
    scaled,
    value_of,
)
from tepi.drivers.modbus.config import INTEGER_TYPES, WIDTH, RegisterConfig


# One value, 0x0102030405060708 / 0x01020304, in every order: the registers on the wire.
@pytest.mark.parametrize(
    ("words", "kind", "order", "expected"),
    [
        ([0x0001], "uint16", "ABCD", 1),
        ([0x0100], "uint16", "BADC", 1),
        ([0x0100], "uint16", "DCBA", 1),
        ([0xFFFF], "uint16", "ABCD", 65535),
        ([0xFFFF], "int16", "ABCD", -1),
        ([0x8000], "int16", "ABCD", -32768),
        ([0x0102, 0x0304], "uint32", "ABCD", 0x01020304),
        ([0x0201, 0x0403], "uint32", "BADC", 0x01020304),
        ([0x0304, 0x0102], "uint32", "CDAB", 0x01020304),
        ([0x0403, 0x0201], "uint32", "DCBA", 0x01020304),
        ([0xFFFF, 0xFFFE], "int32", "ABCD", -2),
        ([0x4148, 0x0000], "float32", "ABCD", 12.5),  # 12.5 = 0x41480000
        ([0x4841, 0x0000], "float32", "BADC", 12.5),
        ([0x0000, 0x4148], "float32", "CDAB", 12.5),
        ([0x0000, 0x4841], "float32", "DCBA", 12.5),
        ([0xC2C8, 0x0000], "float32", "ABCD", -100.0),
        ([0x0102, 0x0304, 0x0506, 0x0708], "uint64", "ABCD", 0x0102030405060708),
        ([0x0201, 0x0403, 0x0605, 0x0807], "uint64", "BADC", 0x0102030405060708),
        ([0x0708, 0x0506, 0x0304, 0x0102], "uint64", "CDAB", 0x0102030405060708),
        ([0x0807, 0x0605, 0x0403, 0x0201], "uint64", "DCBA", 0x0102030405060708),
        ([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD], "int64", "ABCD", -3),
        ([0x4029, 0x0000, 0x0000, 0x0000], "float64", "ABCD", 12.5),  # 0x4029000000000000
        ([0x0000, 0x0000, 0x0000, 0x4029], "float64", "CDAB", 12.5),
        ([0x0000, 0x0000, 0x0000, 0x2940], "float64", "DCBA", 12.5),
        ([0x0000], "bool", "ABCD", False),
        ([0x0003], "bool", "ABCD", True),
        ([0x5344, 0x4D31, 0x3230, 0x0000], "string", "ABCD", "SDM120"),
        ([0x4453, 0x314D, 0x3032, 0x0000], "string", "BADC", "SDM120"),
        ([0x4142, 0x4320, 0x2020], "string", "ABCD", "ABC"),  # space padding is trimmed
    ],
)
def test_known_vectors(words: list[int], kind: str, order: str, expected: float) -> None:
    got = decode(words, kind, order)  # type: ignore[arg-type]
    assert got == expected
    assert type(got) is type(expected)


ORDERS = st.sampled_from(["ABCD", "BADC", "CDAB", "DCBA"])


def encode_string(text: str, order: str, length: int) -> list[int]:
    """The registers holding ``text``, NUL-padded to ``length`` (the driver never writes one)."""
    raw = text.encode().ljust(2 * length, b"\0")
    if order in BYTE_SWAPPED:
        raw = bytes(b for i in range(0, len(raw), 2) for b in (raw[i + 1], raw[i]))
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


int_kinds = st.sampled_from(
    [
        ("int16", -(2**15), 2**15 - 1),
        ("uint16", 0, 2**16 - 1),
        ("int32", -(2**31), 2**31 - 1),
        ("uint32", 0, 2**32 - 1),
        ("int64", -(2**63), 2**63 - 1),
        ("uint64", 0, 2**64 - 1),
    ]
)


@given(int_kinds.flatmap(lambda k: st.tuples(st.just(k[0]), st.integers(k[1], k[2]))), ORDERS)
def test_integers_round_trip(kv: tuple[str, int], order: str) -> None:
    kind, value = kv
    words = encode(value, kind, order)  # type: ignore[arg-type]
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, kind, order) == value  # type: ignore[arg-type]


@given(st.floats(width=32, allow_nan=False), ORDERS)
def test_float32_round_trip(value: float, order: str) -> None:
    assert decode(encode(value, "float32", order), "float32", order) == value  # type: ignore[arg-type]


@given(st.floats(allow_nan=False), ORDERS)
def test_float64_round_trip(value: float, order: str) -> None:
    assert decode(encode(value, "float64", order), "float64", order) == value  # type: ignore[arg-type]


@given(st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=20), ORDERS)
def test_strings_round_trip(text: str, order: str) -> None:
    text = text.rstrip()
    length = max(1, (len(text.encode()) + 1) // 2)
    words = encode_string(text, order, length)
    assert len(words) == length
    assert decode(words, "string", order) == text  # type: ignore[arg-type]


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
def test_any_two_words_decode_as_float_without_raising(words: list[int]) -> None:
    value = decode(words, "float32", "ABCD")
    assert isinstance(value, float)
    assert math.isnan(value) or struct.pack(">f", value) == struct.pack(">HH", *words)


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8))
def test_any_words_decode_as_a_string_without_raising(words: list[int]) -> None:
    assert isinstance(decode(words, "string", "ABCD"), str)


def test_bits_enums_and_word_order_aliases() -> None:
    bit3 = reg("b", 0, bit=3)
    assert bit3.kind == "bool"
    assert decode_register([0b1000], bit3) is True
    assert decode_register([0b0111], bit3) is False
    mode = reg("mode", 0, type="uint16", enum={0: "off", 1: "auto"})
    assert value_of(1, mode) == ("auto", None)
    assert value_of(7, mode) == (None, "value 7 not in enum")
    assert reg("x", 0, type="float32", word_order="little").order == "CDAB"
    assert reg("x", 0, type="float32").order == "ABCD"


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"type": "string"}, "needs length"),
        ({"type": "uint16", "length": 2}, "needs length"),
        ({"bit": 3, "type": "uint16"}, "read as a bool"),
        ({"bit": 3, "table": "coil"}, "a bit already"),
        ({"type": "float32", "enum": {1: "a"}}, "integer type"),
        ({"type": "uint16", "enum": {1: "a"}, "scale": 2}, "scale and offset"),
        ({"type": "float32", "byte_order": "DCBA", "word_order": "little"}, "not both"),
        ({"type": "float64", "address": 65533}, "runs past"),
        ({"type": "uint16", "enum": {0: False}}, "quote it"),
    ],
)
def test_register_options_that_do_not_fit_together_are_refused(
    spec: dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        RegisterConfig.model_validate({"name": "r", "address": 0, **spec})


def reg(name: str, address: int, **kw: object) -> RegisterConfig:
    return RegisterConfig.model_validate({"name": name, "address": address, **kw})


def test_scale_and_offset() -> None:
    assert scaled(253, reg("pm25", 0, scale=0.1)) == pytest.approx(25.3)
    assert scaled(100, reg("t", 0, scale=0.5, offset=-40)) == 10.0
    assert scaled(7, reg("n", 0)) == 7
    assert isinstance(scaled(7, reg("n", 0)), int)


def test_plan_merges_adjacent_registers_per_table() -> None:
    regs = [
        reg("a", 0),
        reg("b", 1),
        reg("c", 2, type="float32"),
        reg("d", 10),
        reg("e", 0, table="input"),
        reg("f", 5, table="coil"),
    ]
    plan = plan_reads(regs)
    got = sorted((p.table, p.address, p.count, tuple(r.name for r in p.registers)) for p in plan)
    assert got == [
        ("coil", 5, 1, ("f",)),
        ("holding", 0, 4, ("a", "b", "c")),
        ("holding", 10, 1, ("d",)),
        ("input", 0, 1, ("e",)),
    ]


def test_plan_never_exceeds_the_protocol_limit() -> None:
    regs = [reg(f"r{i}", i) for i in range(300)]
    plan = plan_reads(regs)
    assert all(p.count <= MAX_REGISTERS for p in plan)
    assert sum(len(p.registers) for p in plan) == 300
    assert len(plan) == 3


@given(
    st.lists(
        st.tuples(st.integers(0, 400), st.sampled_from(["uint16", "float32"])),
        min_size=1,
        max_size=60,
        unique_by=lambda t: t[0],
    ),
    st.integers(0, 20),
)
def test_plan_covers_every_register_within_limits(spec: list[tuple[int, str]], gap: int) -> None:
    regs = [reg(f"r{a}", a, type=k) for a, k in spec]
    plan = plan_reads(regs, max_gap=gap)
    seen = [r.name for p in plan for r in p.registers]
    assert sorted(seen) == sorted(r.name for r in regs)
    for p in plan:
        assert 1 <= p.count <= MAX_REGISTERS
        for r in p.registers:
            assert p.address <= r.address
            assert r.address + r.width <= p.address + p.count


NUMBER_KINDS = sorted(set(WIDTH) - {"bool", "string"})
register_specs = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(NUMBER_KINDS),
            "byte_order": ORDERS,
            "scale": st.sampled_from([1.0, 0.1, -2.5, 1e300]),
            "offset": st.sampled_from([0.0, -40.0]),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("string"), "length": st.integers(1, 8), "byte_order": ORDERS}
    ),
    st.fixed_dictionaries({"bit": st.integers(0, 15)}),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(sorted(INTEGER_TYPES)),
            "enum": st.dictionaries(st.integers(-2, 5), st.text(min_size=1), min_size=1),
        }
    ),
)


@given(register_specs, st.data())
def test_any_words_give_a_value_or_the_reason_it_is_bad(spec: dict[str, Any], data: Any) -> None:
    """Whatever a device answers for a register of any type, order, scale, bit or enum: a
    value the payload can carry (JSON, no NaN or infinity), or None and the reason."""
    reg = RegisterConfig.model_validate({"name": "r", "address": 0, **spec})
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=reg.width, max_size=reg.width))
    value, why = value_of(decode_register(words, reg), reg)
    assert (value is None) == (why is not None)
    json.dumps(value, allow_nan=False)
