"""What a streaming sensor sent between two polls, summed up per metric in constant memory.

A 1 Hz sensor polled every minute gives sixty values per metric. Publishing one of them at
random would be a sample, not a measurement: the window keeps, per metric, the count, the
sum, the minimum, the maximum and the last value, and a poll publishes the function the
config asks for (mean by default). Text and booleans have no mean: they give the last value
(min and max of them are the last value too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tepi.core.records import Value
from tepi.drivers.serial.protocols import Aggregate


@dataclass(slots=True)
class Acc:
    """One metric's values in a window."""

    count: int = 0
    total: float = 0.0
    low: float = 0.0
    high: float = 0.0
    last: Value = None
    numeric: bool = True

    def add(self, value: Value) -> None:
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric:
            assert isinstance(value, int | float)
            v = float(value)
            if self.count == 0 or not self.numeric:
                self.low = self.high = v
                self.total = 0.0
            else:
                self.low = min(self.low, v)
                self.high = max(self.high, v)
            self.total += v
        self.numeric = numeric and (self.numeric or self.count == 0)
        self.count += 1
        self.last = value

    def result(self, fn: Aggregate) -> Value:
        if fn == "count":
            return self.count
        if fn == "last" or not self.numeric:
            return self.last
        if fn == "mean":
            return round(self.total / self.count, 4)
        value = self.low if fn == "min" else self.high
        return int(value) if isinstance(self.last, int) and value.is_integer() else value


class Window:
    """Values per metric since the last :meth:`take`."""

    def __init__(self) -> None:
        self._acc: dict[str, Acc] = {}
        self.frames = 0  # data frames since the last take
        self.warming = False  # a frame from a sensor's warm-up is in the window

    def add(self, values: Mapping[str, Value], *, warming: bool = False) -> None:
        self.frames += 1
        self.warming = self.warming or warming
        for name, value in values.items():
            if value is None:
                continue
            acc = self._acc.get(name)
            if acc is None:
                acc = Acc()
                acc.add(value)
                self._acc[name] = acc
            else:
                acc.add(value)

    def take(self) -> tuple[int, dict[str, Acc], bool]:
        """(frames, accumulators, whether any frame came in a warm-up) since the last take;
        the window starts empty again."""
        out = (self.frames, self._acc, self.warming)
        self._acc = {}
        self.frames = 0
        self.warming = False
        return out
