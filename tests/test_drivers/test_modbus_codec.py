"""Register decoding against known vectors, round trips, and the read plan."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import MAX_REGISTERS, decode, encode, plan_reads, scaled
from drivers.modbus.config import RegisterConfig


@pytest.mark.parametrize(
    ("words", "kind", "order", "expected"),
    [
        ([0x0001], "uint16", "big", 1),
        ([0xFFFF], "uint16", "big", 65535),
        ([0xFFFF], "int16", "big", -1),
        ([0x8000], "int16", "big", -32768),
        ([0x0001, 0x0002], "uint32", "big", 0x00010002),
        ([0x0002, 0x0001], "uint32", "little", 0x00010002),
        ([0xFFFF, 0xFFFE], "int32", "big", -2),
        ([0x4148, 0x0000], "float32", "big", 12.5),  # 12.5 = 0x41480000
        ([0x0000, 0x4148], "float32", "little", 12.5),
        ([0xC2C8, 0x0000], "float32", "big", -100.0),
        ([0x0000], "bool", "big", False),
        ([0x0003], "bool", "big", True),
    ],
)
def test_known_vectors(words: list[int], kind: str, order: str, expected: float) -> None:
    got = decode(words, kind, order)  # type: ignore[arg-type]
    assert got == expected
    assert type(got) is type(expected)


int_kinds = st.sampled_from(
    [
        ("int16", -(2**15), 2**15 - 1),
        ("uint16", 0, 2**16 - 1),
        ("int32", -(2**31), 2**31 - 1),
        ("uint32", 0, 2**32 - 1),
    ]
)


@given(
    int_kinds.flatmap(lambda k: st.tuples(st.just(k[0]), st.integers(k[1], k[2]))),
    st.sampled_from(["big", "little"]),
)
def test_integers_round_trip(kv: tuple[str, int], order: str) -> None:
    kind, value = kv
    words = encode(value, kind, order)  # type: ignore[arg-type]
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, kind, order) == value  # type: ignore[arg-type]


@given(st.floats(width=32, allow_nan=False), st.sampled_from(["big", "little"]))
def test_float32_round_trip(value: float, order: str) -> None:
    assert decode(encode(value, "float32", order), "float32", order) == value


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
def test_any_two_words_decode_as_float_without_raising(words: list[int]) -> None:
    value = decode(words, "float32", "big")
    assert isinstance(value, float)
    assert math.isnan(value) or struct.pack(">f", value) == struct.pack(">HH", *words)


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
