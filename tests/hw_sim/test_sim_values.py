"""Value generation and the physical value <-> register words codec."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tepi_sim.model import RegisterConfig
from tepi_sim.values import PROFILES, TICK_S, Walk, decode_words, encode_value, make_source


def test_float32_word_orders() -> None:
    big = RegisterConfig(0, "holding", "temperature", "float32", "big")
    little = RegisterConfig(0, "holding", "temperature", "float32", "little")
    assert encode_value(1.0, big) == [0x3F80, 0x0000]
    assert encode_value(1.0, little) == [0x0000, 0x3F80]
    assert decode_words([0x0000, 0x3F80], little) == 1.0


def test_scale_and_signed_types() -> None:
    level = RegisterConfig(0, "holding", "level", "int16", scale=0.01)
    assert encode_value(-1.23, level) == [0x10000 - 123]
    assert decode_words([0x10000 - 123], level) == pytest.approx(-1.23)
    big = RegisterConfig(0, "holding", "counter", "uint32")
    assert encode_value(70000, big) == [1, 70000 - 65536]


def test_integer_types_saturate() -> None:
    reg = RegisterConfig(0, "holding", "pm25", "uint16", scale=0.1)
    assert encode_value(1e9, reg) == [0xFFFF]
    assert encode_value(-5, reg) == [0]


@given(
    reg_type=st.sampled_from(["int16", "uint16", "int32", "uint32"]),
    order=st.sampled_from(["big", "little"]),
    raw=st.integers(-(2**31), 2**32 - 1),
)
def test_integer_round_trip(reg_type: str, order: str, raw: int) -> None:
    reg = RegisterConfig(0, "holding", "level", reg_type, order, scale=0.5)
    bits = 16 if reg_type.endswith("16") else 32
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if reg_type[0] == "i" else (0, 2**bits - 1)
    raw = max(lo, min(hi, raw))
    assert decode_words(encode_value(raw * 0.5, reg), reg) == raw * 0.5


@pytest.mark.parametrize("kind", sorted(PROFILES))
def test_walk_stays_in_bounds_and_moves_smoothly(kind: str) -> None:
    reg = RegisterConfig(0, "holding", kind)
    walk = make_source(reg, random.Random(1), start_time=0.0)
    profile = PROFILES[kind]
    values = [walk.at(t * TICK_S) for t in range(5000)]
    assert all(profile.lo <= v <= profile.hi for v in values)
    assert len(set(values)) > 100  # it does drift
    steps = [abs(b - a) for a, b in itertools.pairwise(values)]
    assert max(steps) < 8 * profile.sigma + 0.1 * (profile.hi - profile.lo)


def test_walk_does_not_depend_on_read_pattern() -> None:
    reg = RegisterConfig(0, "holding", "pm25")
    often = make_source(reg, random.Random("s"), 0.0)
    rarely = make_source(reg, random.Random("s"), 0.0)
    for t in range(100):
        often.at(t * 0.37)
    assert often.at(37.0) == rarely.at(37.0)


def test_toggle_flips_now_and_then() -> None:
    walk = Walk("toggle", random.Random(3), 0.0, 0.0)
    values = [walk.at(float(t)) for t in range(2000)]
    assert set(values) == {0.0, 1.0}
    flips = sum(a != b for a, b in itertools.pairwise(values))
    assert 20 < flips < 300


def test_constant_holds_until_written() -> None:
    reg = RegisterConfig(0, "holding", "constant", value=42.0)
    walk = make_source(reg, random.Random(), 0.0)
    assert walk.at(1000.0) == 42.0
    walk.set(7.0)
    assert walk.at(2000.0) == 7.0
