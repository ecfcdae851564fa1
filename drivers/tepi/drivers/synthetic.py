"""``driver: synthetic``: a device that needs no hardware.

It gives ``metrics`` values per poll, named ``m0`` … ``m{n-1}``, with no I/O. Integrators use it
to commission an IOC pipeline before the field devices are wired; the benchmarks in bench/ use
it as a source whose cost is near zero, so that what they measure is the agent's own pipeline.

Patterns: ``counter`` gives every metric the poll number (1, 2, 3, …), so a consumer can prove
that no reading was lost; ``wave`` gives slow, plausible sensor-like values.
"""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import Literal, Self

from pydantic import Field

from tepi.core.clock import boottime
from tepi.core.records import MetricInfo, Value, Values
from tepi.drivers.base import DriverConfig


class SyntheticConfig(DriverConfig):
    driver: Literal["synthetic"] = Field(description="synthetic: values made up, no hardware.")
    metrics: int = Field(
        default=10, ge=1, le=10_000, description="Values per poll, named m0, m1, …"
    )
    pattern: Literal["counter", "wave"] = Field(
        default="counter",
        description="counter: every metric is the poll number. wave: smooth sensor-like values.",
    )


class SyntheticDriver:
    """See the module docstring."""

    def __init__(self, config: SyntheticConfig, _resources: object = None) -> None:
        self.config = config
        self._names = tuple(f"m{i}" for i in range(config.metrics))
        self._units: tuple[str | None, ...] = (None,) * config.metrics
        self._polls = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def read(self) -> list[Values]:
        self._polls += 1
        ts, mono = time.time(), boottime()
        values: list[Value]
        if self.config.pattern == "counter":
            values = [self._polls] * len(self._names)
        else:
            values = [
                round(20.0 + 5.0 * math.sin(mono / 600.0 + i), 2) for i in range(len(self._names))
            ]
        return [Values(self._names, self._units, values, ts, mono)]

    def metrics(self) -> list[MetricInfo]:
        return [MetricInfo(name, None) for name in self._names]
