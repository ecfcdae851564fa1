"""The serial protocols as objects: what the driver needs from each, behind one interface.

A :class:`SerialProtocol` knows its sensor family: the framer that cuts its byte stream, how a
frame becomes metric values, whether the sensor streams or is asked (and the request it is
asked with), the set-up commands sent each time the port opens, its warm-up, and its metrics
with their default aggregate. :data:`PROTOCOLS` maps each ``protocol:`` name of the config to
its class; the driver picks its protocol there once, when it is built, and from then on only
calls it. Class attributes are the facts the config checks without a device
(:class:`~tepi.drivers.serial.config.SerialConfig`); an instance is one device's protocol,
built from its config.

A new protocol is a class here, an entry in :data:`PROTOCOLS` and its name in the config's
``Protocol`` literal (a test checks both agree); its frames and commands go in ``codecs``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from tepi.core.records import Value
from tepi.drivers.serial import codecs
from tepi.drivers.serial.framing import BinaryFramer, LineFramer

if TYPE_CHECKING:
    from tepi.drivers.serial.config import SerialConfig

Aggregate = Literal["mean", "last", "min", "max", "count"]
# Where a clock-source GPS reports a valid time: (UTC seconds, CLOCK_BOOTTIME, device id).
GpsTime = Callable[[float, float, str], None]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric a protocol gives: its unit and how a streaming window is summed up."""

    name: str
    unit: str | None
    aggregate: Aggregate = "mean"


class SerialProtocol(ABC):
    """One sensor family's protocol, for one device (see the module docstring)."""

    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    """The metrics, in publishing order (``line``: from the config's fields, see specs)."""
    warmup_s: ClassVar[float] = 0.0
    """Default seconds after the port opens during which values are ``uncertain``."""
    modes: ClassVar[tuple[str, ...]] = ()
    """The ``mode:`` values the sensor can be set to; empty: the key does not apply."""
    streams: ClassVar[bool] = True
    """The sensor streams unless ``mode: passive``; False: it is always asked."""

    def __init__(self, cfg: SerialConfig, gps_time: GpsTime | None = None) -> None:
        self.cfg = cfg

    @classmethod
    def specs(cls, cfg: SerialConfig) -> list[MetricSpec]:
        """Every metric a device with this config can publish, in order."""
        return list(cls.metrics)

    @abstractmethod
    def framer(self) -> BinaryFramer | LineFramer:
        """A new framer for this device's byte stream."""

    @abstractmethod
    def decode(self, frame: bytes, mono: float) -> Mapping[str, Value] | None:
        """The values in a frame; None for a frame that carries none (a command's reply).
        Raises ``codecs.FrameError`` for a frame that is malformed. ``mono`` is when the
        frame's bytes arrived (CLOCK_BOOTTIME)."""

    def request(self) -> bytes:
        """The command that asks for one frame (request/response sensors only)."""
        raise TypeError(f"protocol {self.cfg.protocol} is never asked, it streams")

    def setup(self) -> list[bytes]:
        """Commands sent each time the port opens."""
        return []


_PM = "ug/m3"
_COUNT = "1/0.1L"


class Pms(SerialProtocol):
    """Plantower PMS5003 / PMS7003: 32-byte frames, streamed (active) or read (passive)."""

    # mass concentrations (pm*) in ug/m3, particle counts (n*) per 0.1 L of air
    metrics = tuple(
        MetricSpec(m, _PM if m.startswith("pm") else _COUNT) for m in codecs.PMS_METRICS
    )
    warmup_s = 30.0
    modes = ("active", "passive")

    def framer(self) -> BinaryFramer:
        return codecs.pms_framer()

    def decode(self, frame: bytes, mono: float) -> Mapping[str, Value]:
        return codecs.pms_decode(frame)

    def request(self) -> bytes:
        return codecs.PMS_READ

    def setup(self) -> list[bytes]:
        return [codecs.PMS_WAKE, codecs.PMS_ACTIVE if self.cfg.streaming else codecs.PMS_PASSIVE]


class Sds011(SerialProtocol):
    """Nova Fitness SDS011: 10-byte frames, reporting (active) or queried (passive)."""

    metrics = tuple(MetricSpec(m, _PM) for m in codecs.SDS_METRICS)
    warmup_s = 30.0
    modes = ("active", "passive")

    def framer(self) -> BinaryFramer:
        return codecs.sds_framer()

    def decode(self, frame: bytes, mono: float) -> Mapping[str, Value] | None:
        return codecs.sds_decode(frame)

    def request(self) -> bytes:
        return codecs.SDS_QUERY

    def setup(self) -> list[bytes]:
        cfg = self.cfg
        cmds = [codecs.sds_sleep(False), codecs.sds_set_query_mode(not cfg.streaming)]
        if cfg.working_period is not None:
            cmds.append(codecs.sds_set_working_period(cfg.working_period))
        return cmds


class Mhz19(SerialProtocol):
    """Winsen MH-Z19B CO2: asked on each poll, 3 minutes of preheat."""

    metrics = (MetricSpec("co2", "ppm"), MetricSpec("temperature", "degC"))
    warmup_s = 180.0
    streams = False

    def framer(self) -> BinaryFramer:
        return codecs.mhz_framer()

    def decode(self, frame: bytes, mono: float) -> Mapping[str, Value] | None:
        return codecs.mhz_decode(frame)

    def request(self) -> bytes:
        return codecs.MHZ_READ

    def setup(self) -> list[bytes]:
        return [codecs.mhz_abc(self.cfg.abc)]


class Nmea(SerialProtocol):
    """NMEA 0183 GPS: RMC and GGA sentences; a clock source reports each valid time."""

    metrics = (
        MetricSpec("latitude", "deg", "last"),
        MetricSpec("longitude", "deg", "last"),
        MetricSpec("altitude", "m", "last"),
        MetricSpec("speed", "m/s", "last"),
        MetricSpec("course", "deg", "last"),
        MetricSpec("satellites", None, "last"),
        MetricSpec("fix_quality", None, "last"),
        MetricSpec("hdop", None, "last"),
    )

    def __init__(self, cfg: SerialConfig, gps_time: GpsTime | None = None) -> None:
        super().__init__(cfg)
        self.gps_time = gps_time if cfg.clock_source else None

    def framer(self) -> LineFramer:
        return codecs.nmea_framer()

    def decode(self, frame: bytes, mono: float) -> Mapping[str, Value] | None:
        fix = codecs.nmea_parse(frame)
        if fix is None:
            return None
        out: dict[str, Value] = {}
        if fix.valid:
            out["latitude"], out["longitude"] = fix.lat, fix.lon
        if fix.sentence == "GGA":
            out["fix_quality"] = fix.fix_quality
            out["satellites"] = fix.satellites
            out["hdop"] = fix.hdop
            if fix.valid:
                out["altitude"] = fix.altitude
        elif fix.valid:
            out["speed"] = fix.speed_ms
            out["course"] = fix.course
            if fix.utc is not None and self.gps_time is not None:
                self.gps_time(fix.utc.timestamp(), mono, self.cfg.id)
        return out


class Line(SerialProtocol):
    """Text lines from a microcontroller node, split by ``format`` into configured fields."""

    def __init__(self, cfg: SerialConfig, gps_time: GpsTime | None = None) -> None:
        super().__init__(cfg)
        assert cfg.format is not None
        self.parser = codecs.LineParser(
            mode=cfg.format, regex=cfg.regex, columns=cfg.columns, separator=cfg.separator
        )

    @classmethod
    def specs(cls, cfg: SerialConfig) -> list[MetricSpec]:
        return [
            MetricSpec(f.name or name, f.unit, "mean" if f.type in ("float", "int") else "last")
            for name, f in cfg.fields.items()
        ]

    def framer(self) -> LineFramer:
        return LineFramer(ending=self.cfg.line_ending.encode(), max_len=self.cfg.max_line)

    def decode(self, frame: bytes, mono: float) -> Mapping[str, Value]:
        raw = self.parser.parse(frame)
        out: dict[str, Value] = {}
        for name, f in self.cfg.fields.items():
            text = raw.get(name)
            if text is None:
                continue
            try:
                out[f.name or name] = convert(text, f.type, f.scale, f.offset)
            except ValueError as err:
                raise codecs.FrameError(f"field {name}: {err}") from None
        return out


def convert(text: str, kind: str, scale: float, offset: float) -> Value:
    """A text field as its configured type (ValueError if it is not one)."""
    text = text.strip()
    if kind == "str":
        return text
    if kind == "bool":
        low = text.lower()
        if low in ("1", "true", "on", "yes"):
            return True
        if low in ("0", "false", "off", "no"):
            return False
        raise ValueError(f"{text!r} is not a boolean")
    if kind == "int":
        n = int(text, 0) if text.lower().startswith(("0x", "-0x")) else int(text)
        if scale == 1.0 and offset == 0.0:
            return n
        return n * scale + offset
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value * scale + offset


PROTOCOLS: dict[str, type[SerialProtocol]] = {
    "pms5003": Pms,
    "pms7003": Pms,
    "sds011": Sds011,
    "mhz19": Mhz19,
    "nmea": Nmea,
    "line": Line,
}
"""The protocol of each ``protocol:`` name; the one place a name picks code."""
