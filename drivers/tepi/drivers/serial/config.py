"""Config for UART sensors (``driver: serial``): one model, checked per ``protocol``."""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tepi.core.units import Duration
from tepi.drivers.base import DriverConfig
from tepi.drivers.serial.protocols import PROTOCOLS, Aggregate, MetricSpec

__all__ = ["Aggregate", "FieldType", "LineField", "MetricSpec", "Protocol", "SerialConfig"]

# The names of drivers.serial.protocols.PROTOCOLS, spelled out for pydantic's messages.
Protocol = Literal["pms5003", "pms7003", "sds011", "mhz19", "nmea", "line"]
FieldType = Literal["float", "int", "str", "bool"]


class LineField(BaseModel):
    """One field of a text line: its type, unit and scaling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: FieldType = Field(default="float", description="float, int, str or bool.")
    unit: str | None = Field(default=None, max_length=32, description="Unit sent with the value.")
    scale: float = Field(default=1.0, description="value = raw * scale + offset (numbers).")
    offset: float = Field(default=0.0, description="value = raw * scale + offset (numbers).")
    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Metric name to publish; default: the field's own name.",
    )


class SerialConfig(DriverConfig):
    """A sensor on a UART: a USB adapter or the Pi's own serial pins."""

    driver: Literal["serial"] = Field(description="serial: a UART sensor (see docs/serial.md).")
    protocol: Protocol = Field(
        description="pms5003 (also pms7003), sds011, mhz19, nmea (GPS) or line (text lines)."
    )
    port: str = Field(
        min_length=1,
        description="The serial device. Prefer a stable path, /dev/serial/by-id/..., which "
        "stays the same when the adapter is replugged.",
    )
    baudrate: int = Field(
        default=9600,
        ge=300,
        le=4_000_000,
        description="Line speed (8N1). 9600 for the PM and CO2 sensors; GPS: 9600 or 4800.",
    )
    timeout: Duration = Field(
        default=3.0,
        gt=0,
        description="Request/response sensors: how long to wait for the answer. Streaming "
        "sensors: how long a poll waits for a first frame when none came since the last poll.",
    )
    retries: int = Field(
        default=1, ge=0, le=5, description="Request/response: ask again this often."
    )
    mode: Literal["active", "passive"] | None = Field(
        default=None,
        description="pms5003/sds011: active (the sensor streams; default) or passive (asked "
        "on each poll).",
    )
    metrics: list[str] | None = Field(
        default=None,
        description="Which of the protocol's metrics to publish (default: all of them).",
    )
    aggregate: Aggregate | None = Field(
        default=None,
        description="Streaming sensors: how the values that arrived since the last poll "
        "become one: mean (default; last for nmea), last, min, max or count.",
    )
    aggregates: dict[str, list[Aggregate]] = Field(
        default_factory=dict,
        description="Per metric, one or more of mean, last, min, max, count. The first keeps "
        "the metric's name; each further one is published as <metric>_<function>.",
    )
    warmup: Duration | None = Field(
        default=None,
        ge=0,
        description="After the port opens (the sensor is woken or powered), values are sent "
        "with quality uncertain for this long. Default: pms5003 30s, sds011 30s, mhz19 3m "
        "(preheat), others 0.",
    )
    working_period: int | None = Field(
        default=None,
        ge=0,
        le=30,
        description="sds011: minutes between measurements (0 = continuous); set when the "
        "port opens. Unset: left as the sensor has it.",
    )
    abc: bool = Field(
        default=False,
        description="mhz19: automatic baseline calibration. Off by default: it assumes the "
        "sensor sees fresh air (400 ppm) every day, which a street cabinet may not.",
    )
    clock_source: bool = Field(
        default=False,
        description="nmea: use this receiver's time to date readings while the system clock "
        "is not synced, and report the clock's offset from GPS time in health.",
    )
    format: Literal["regex", "kv", "csv"] | None = Field(
        default=None,
        description="line: how a line splits into fields: regex (named groups), kv "
        "(T=23.4,H=55.1) or csv (with columns).",
    )
    regex: str | None = Field(
        default=None, description="line, format regex: a regex with named groups."
    )
    columns: list[str] = Field(
        default_factory=list, description="line, format csv: the name of each column."
    )
    separator: str = Field(
        default=",", min_length=1, max_length=4, description="line: field separator (kv, csv)."
    )
    line_ending: str = Field(
        default="\n",
        min_length=1,
        max_length=2,
        description='line: what ends a line, e.g. "\\n" or "\\r".',
    )
    max_line: int = Field(
        default=256, ge=16, le=4096, description="line: longer lines are dropped and counted."
    )
    fields: dict[str, LineField] = Field(
        default_factory=dict,
        description="line: the fields to publish, by field name, with type, unit and scale.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        p = self.protocol
        line_keys = {"format", "regex", "columns", "fields"}
        set_keys = self.model_fields_set
        if p == "line":
            if self.format is None:
                raise ValueError("protocol line needs format: regex, kv or csv")
            if not self.fields:
                raise ValueError("protocol line needs fields: the fields to publish")
            if self.format == "regex":
                if self.regex is None:
                    raise ValueError("format regex needs regex: a pattern with named groups")
                try:
                    groups = set(re.compile(self.regex).groupindex)
                except re.error as err:
                    raise ValueError(f"regex does not compile: {err}") from None
                missing = sorted(set(self.fields) - groups)
                if missing:
                    raise ValueError(
                        f"fields {', '.join(missing)} are not named groups of the regex "
                        f"(it has: {', '.join(sorted(groups)) or 'none'})"
                    )
            if self.format == "csv":
                if not self.columns:
                    raise ValueError("format csv needs columns: the name of each column")
                missing = sorted(set(self.fields) - set(self.columns))
                if missing:
                    raise ValueError(f"fields {', '.join(missing)} are not in columns")
        else:
            wrong = sorted(
                k for k in line_keys | {"separator", "line_ending", "max_line"} if k in set_keys
            )
            if wrong:
                raise ValueError(f"{', '.join(wrong)} apply to protocol line only, not {p}")
        if self.mode is not None and not PROTOCOLS[p].modes:
            raise ValueError(f"mode applies to pms5003 and sds011, not {p}")
        if self.working_period is not None and p != "sds011":
            raise ValueError(f"working_period applies to sds011 only, not {p}")
        if "abc" in set_keys and p != "mhz19":
            raise ValueError(f"abc applies to mhz19 only, not {p}")
        if not self.streaming and ({"aggregate", "aggregates"} & set_keys):
            raise ValueError(
                "aggregate and aggregates apply to streaming sensors; this one is asked on "
                "each poll and gives one value"
            )
        if self.clock_source and p != "nmea":
            raise ValueError(f"clock_source applies to nmea only, not {p}")
        known = [m.name for m in self.specs(all_metrics=True)]
        for name in [*(self.metrics or []), *self.aggregates]:
            if name not in known:
                raise ValueError(f"{p} has no metric {name!r}; it has: {', '.join(known)}")
        names = [name for name, *_ in self.outputs()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"metric {', '.join(twice)} would be published twice (a field's name, or a "
                "<metric>_<function> from aggregates); rename one"
            )
        for name, funcs in self.aggregates.items():
            if not funcs:
                raise ValueError(f"aggregates.{name} is empty: give at least one function")
            if len(set(funcs)) != len(funcs):
                raise ValueError(f"aggregates.{name} names a function twice")
        return self

    @property
    def streaming(self) -> bool:
        """The sensor pushes data between polls (else the driver asks on each poll)."""
        return PROTOCOLS[self.protocol].streams and self.mode != "passive"

    @property
    def warmup_s(self) -> float:
        return self.warmup if self.warmup is not None else PROTOCOLS[self.protocol].warmup_s

    def specs(self, *, all_metrics: bool = False) -> list[MetricSpec]:
        """The metrics this device publishes (before aggregation suffixes), in order."""
        out = PROTOCOLS[self.protocol].specs(self)
        if not all_metrics and self.metrics is not None:
            chosen = set(self.metrics)
            out = [m for m in out if m.name in chosen]
        return out

    def outputs(self) -> list[tuple[str, str, str | None, Aggregate]]:
        """(published name, source metric, unit, function) for every value a poll gives."""
        out: list[tuple[str, str, str | None, Aggregate]] = []
        for m in self.specs():
            funcs: list[Aggregate]
            if m.name in self.aggregates:
                funcs = self.aggregates[m.name]
            elif self.aggregate is not None:
                funcs = [self.aggregate]
            else:
                funcs = [m.aggregate]
            for i, fn in enumerate(funcs):
                name = m.name if i == 0 else f"{m.name}_{fn}"
                out.append((name, m.name, None if fn == "count" else m.unit, fn))
        return out
