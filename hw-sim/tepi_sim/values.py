"""Value generators and the physical-value <-> register-word codec.

Sensor kinds drift as a bounded, mean-reverting random walk. The walk advances in fixed
ticks of ``TICK_S`` seconds and is brought up to date lazily when a value is read (no
timers), so with a ``seed`` the value at a given time since start does not depend on how
often it was read. Toggles flip at random ticks. Constants and outputs hold their value
until it is written. Scripts follow their points: linear between two points, the last
value after the end, or round again with ``loop``. Counters are not time based: the device
increments them once per answered read (see ``device.py``).
"""

from __future__ import annotations

import bisect
import math
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from tepi_sim.model import INT_RANGES, RegisterConfig

__all__ = [
    "TICK_S",
    "Script",
    "Source",
    "Walk",
    "decode_words",
    "encode_value",
    "make_source",
]

TICK_S: Final = 1.0
# A client that stays away for days must not make one read compute forever.
_MAX_TICKS_PER_READ: Final = 1_000_000
_TOGGLE_P: Final = 1 / 20


@dataclass(frozen=True, slots=True)
class _Profile:
    lo: float
    hi: float
    typical: float
    sigma: float  # standard deviation of one tick's step
    revert: float = 0.02  # pull toward ``typical`` per tick


PROFILES: Final = {
    "pm25": _Profile(5.0, 150.0, 25.0, 1.0),
    "pm10": _Profile(10.0, 250.0, 40.0, 1.5),
    "temperature": _Profile(22.0, 36.0, 28.0, 0.05),
    "humidity": _Profile(50.0, 95.0, 70.0, 0.2),
    "level": _Profile(0.2, 4.0, 1.5, 0.01),
    "noise": _Profile(40.0, 90.0, 55.0, 1.0),
}


class Source(Protocol):
    """Where a non-counter point's physical value comes from."""

    kind: str

    def at(self, now: float) -> float:
        """The value at ``now`` (the device clock's seconds)."""
        ...

    def set(self, value: float) -> None:
        """A Modbus write or ``set_value``: take this value."""
        ...


class Walk:
    """A lazily advanced value: a bounded random walk, a toggle, or a held constant or
    output."""

    def __init__(self, kind: str, rng: random.Random, start_time: float, initial: float) -> None:
        self.kind = kind
        self._rng = rng
        self._ticks_done = 0
        self._start = start_time
        self.value = initial

    def at(self, now: float) -> float:
        """Advance to ``now`` (monotonic seconds) and return the current value."""
        due = int((now - self._start) / TICK_S)
        todo = min(due - self._ticks_done, _MAX_TICKS_PER_READ)
        if todo > 0:
            self._ticks_done = due
            for _ in range(todo):
                self._step()
        return self.value

    def set(self, value: float) -> None:
        """Overwrite the current value (a Modbus write); the walk continues from it."""
        self.value = value

    def _step(self) -> None:
        if self.kind == "toggle":
            if self._rng.random() < _TOGGLE_P:
                self.value = 0.0 if self.value else 1.0
            return
        profile = PROFILES.get(self.kind)
        if profile is None:  # constant: held until written
            return
        x = self.value + profile.revert * (profile.typical - self.value)
        x += self._rng.gauss(0.0, profile.sigma)
        # Reflect at the bounds so values stay plausible without sticking to a limit.
        if x < profile.lo:
            x = min(profile.hi, 2 * profile.lo - x)
        elif x > profile.hi:
            x = max(profile.lo, 2 * profile.hi - x)
        self.value = x


class Script:
    """A value that follows ``points`` (seconds since ``start_time``, physical value):
    linear between two points, the first value before the first point, the last value after
    the last one, or with ``loop`` round again from t = 0 every ``points[-1][0]`` seconds.
    Two points at one time make a step. A write (:meth:`set`) ends the script: the written
    value is held until a new script is set."""

    kind = "script"

    def __init__(
        self, points: Sequence[tuple[float, float]], start_time: float, *, loop: bool = False
    ) -> None:
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            raise ValueError("a script needs at least 2 points, the last after the first")
        self.points = tuple(points)
        self.loop = loop
        self.start = start_time
        self.held: float | None = None
        self._times = [t for t, _ in self.points]

    def at(self, now: float) -> float:
        """The scripted value at ``now`` (or the value written since)."""
        if self.held is not None:
            return self.held
        t = now - self.start
        end = self._times[-1]
        if self.loop and t >= end:
            t %= end
        i = bisect.bisect_right(self._times, t)
        if i == 0:
            return self.points[0][1]
        if i == len(self.points):
            return self.points[-1][1]
        (t0, v0), (t1, v1) = self.points[i - 1], self.points[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)  # t0 < t1: equal times never straddle t

    def set(self, value: float) -> None:
        """A write: stop the script and hold ``value``."""
        self.held = value


def make_source(reg: RegisterConfig, rng: random.Random, start_time: float) -> Walk | Script:
    """Create the value source for a non-counter register, with a plausible start value."""
    if reg.kind == "script":
        return Script(reg.points, start_time, loop=reg.loop)
    if reg.kind in ("constant", "output"):
        initial = float(reg.value or 0.0)
    elif reg.kind == "toggle":
        initial = float(rng.random() < 0.5)
    else:
        p = PROFILES[reg.kind]
        initial = p.typical + rng.uniform(-0.1, 0.1) * (p.hi - p.lo)
    return Walk(reg.kind, rng, start_time, initial)


def _to_raw(value: float, reg: RegisterConfig) -> int:
    if reg.type == "float32":
        return int.from_bytes(struct.pack(">f", value), "big")
    lo, hi = INT_RANGES[reg.type]
    raw = max(lo, min(hi, round(value / reg.scale))) if math.isfinite(value) else 0
    return raw & (0xFFFF if reg.width == 1 else 0xFFFFFFFF)


def encode_value(value: float, reg: RegisterConfig) -> list[int]:
    """Physical value -> register words on the wire (saturating integer types)."""
    return raw_to_words(_to_raw(value, reg), reg)


def raw_to_words(raw: int, reg: RegisterConfig) -> list[int]:
    """Unsigned raw integer -> words, honouring the register's word order."""
    if reg.width == 1:
        return [raw & 0xFFFF]
    words = [(raw >> 16) & 0xFFFF, raw & 0xFFFF]
    return words if reg.word_order == "big" else words[::-1]


def words_to_raw(words: list[int], reg: RegisterConfig) -> int:
    """Words (wire order) -> unsigned raw integer."""
    if reg.width == 1:
        return words[0]
    hi, lo = words if reg.word_order == "big" else words[::-1]
    return (hi << 16) | lo


def decode_words(words: list[int], reg: RegisterConfig) -> float:
    """Register words -> physical value (the inverse of :func:`encode_value`)."""
    raw = words_to_raw(words, reg)
    if reg.type == "float32":
        return float(struct.unpack(">f", raw.to_bytes(4, "big"))[0])
    bits = 16 * reg.width
    if reg.type.startswith("int") and raw >= 1 << (bits - 1):
        raw -= 1 << bits
    return raw * reg.scale
