"""The records a value travels in: a driver's :class:`Sample`, then a :class:`Reading`.

A driver returns samples (one metric of its own device); the poller turns each into a reading
(with the device id and how its clock was), which the buffer stores and the uplink sends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Value = float | int | bool | str | None
_INT64 = 2**63


def storable(value: Value) -> str | None:
    """Why the buffer cannot keep ``value`` (SQLite integers are 64-bit, JSON has no NaN),
    or None: a uint64 register at 2**63 or more, or a text node's 1e999."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        return "value out of range"
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    return None


@dataclass(slots=True, frozen=True)
class Reading:
    """One value read from one metric of one device, stamped when it was read.

    ``ts`` is wall-clock UTC seconds; ``mono`` is seconds since boot (CLOCK_BOOTTIME), so a
    timestamp taken before the clock was synced can be corrected later from the boot id.
    ``reason`` is None for a good reading and says why for a bad one. ``synced`` is False
    when the kernel did not consider the wall clock synchronised as the value was read: its
    ``ts`` may be far off, and the sender corrects it from ``mono`` once the clock syncs.
    ``gps_time`` is True when the wall clock was not synced but ``ts`` was dated from a GPS
    receiver's time (``synced`` is then True). ``uncertain`` marks a value that was read but
    is not yet trustworthy (a sensor warming up): ``reason`` says why and ``value`` is kept.
    """

    device: str
    metric: str
    value: Value
    unit: str | None
    ts: float
    mono: float
    reason: str | None = None
    synced: bool = True
    uncertain: bool = False
    gps_time: bool = False

    @property
    def quality(self) -> str:
        """good, uncertain (a value with a reason) or bad (no value, a reason)."""
        if self.reason is None:
            return "good"
        return "uncertain" if self.uncertain else "bad"


@dataclass(slots=True, frozen=True)
class Sample:
    """One metric's value from one read, with the wall and boot clocks at read time."""

    metric: str
    value: Value
    unit: str | None
    ts: float
    mono: float
    reason: str | None = None
    uncertain: bool = False  # a value kept, with ``reason`` saying why it is not yet good


@dataclass(slots=True)
class Values:
    """Several metrics of one device read at one instant: a poll's samples in compact form.

    What a driver that reads many values at once (a Modbus request) returns instead of one
    :class:`Sample` each: the names and units are the driver's own tuples, shared by every
    poll, and ``values`` is one list. ``reasons`` is None when every value is good; else it
    says, per value, why a value is bad (the value is then None)."""

    metrics: tuple[str, ...]
    units: tuple[str | None, ...]
    values: list[Value]
    ts: float
    mono: float
    reasons: list[str | None] | None = None
    storable: bool = False
    """True when the driver knows every value is one the buffer keeps (see ``storable``):
    a compiled Modbus decoder with no unsigned 64-bit register. The poller then skips its
    check of each value; False (the default) has it checked."""

    def samples(self) -> list[Sample]:
        """The same values one :class:`Sample` each (tools and tests; not the hot path)."""
        reasons = self.reasons or [None] * len(self.values)
        return [
            Sample(m, v, u, self.ts, self.mono, why)
            for m, u, v, why in zip(self.metrics, self.units, self.values, reasons, strict=True)
        ]


@dataclass(slots=True, frozen=True)
class MetricInfo:
    """A metric a device is configured to give: used to report it bad when the device fails."""

    name: str
    unit: str | None


def as_samples(polled: Sequence[Sample | Values]) -> list[Sample]:
    """A read's result one :class:`Sample` a value (tools and tests; not the hot path)."""
    out: list[Sample] = []
    for item in polled:
        if isinstance(item, Values):
            out.extend(item.samples())
        else:
            out.append(item)
    return out
