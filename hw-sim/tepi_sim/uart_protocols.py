"""What the simulated serial sensors say: frames, checksums, commands, and drifting values.

No I/O here. A *player* turns a sensor's state into frames: :meth:`Player.stream` gives
the frames of one streaming tick (every :meth:`Player.period` seconds, None when the sensor
does not stream), and :meth:`Player.feed` takes bytes a client wrote and returns the replies.
Command frames are found in the byte stream by their header and checked by their
checksum; a bad one is skipped one byte at a time, as a sensor's UART parser resyncs.

Each :class:`Frame` carries its healthy bytes, the same frame with a broken checksum (for
the ``bad_checksum`` fault) and, for a data frame, the metric values it carries as a client
decodes them, so a test can compare what it parsed with what was sent.

Protocols (byte formats in ``/work/shared/reference/serial-sensors.md``):

- ``pms5003``/``pms7003``: 32-byte frames ``42 4D 00 1C`` + 13 words + sum. Commands
  ``42 4D CMD DH DL LRC``: E1 passive/active, E2 read (passive), E4 sleep/wake; no replies
  to mode or sleep commands, like most firmware.
- ``sds011``: 10-byte ``AA C0`` data frames; 19-byte ``AA B4`` commands answered with
  ``AA C5`` frames (reporting mode 2, query data 4, device id 5, sleep/work 6, firmware 7,
  working period 8).
- ``mhz19``: request/response only. ``0x86`` reads CO2; ``0x79`` switches automatic baseline
  calibration and is acknowledged with ``FF 79 01 00 00 00 00 00 86``.
- ``nmea``: ``RMC`` and ``GGA`` every tick, and every fifth tick a ``GSV`` or ``VTG`` too.
- ``line``: one text line per tick from a format string.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import operator
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from tepi_sim.model import UART_METRICS, UartDeviceConfig

__all__ = [
    "Frame",
    "Line",
    "Mhz19",
    "Nmea",
    "Player",
    "Pms",
    "Sds011",
    "make_player",
    "mhz19_checksum",
    "nmea_checksum",
    "pms_checksum",
    "sds011_checksum",
]

# Bytes of a command kept while waiting for the rest of it: a sensor's buffer is small.
_COMMAND_BUFFER: Final = 256


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as a healthy sensor sends it (``data``), the same with a wrong checksum
    (``bad``), and for a data frame the values it carries (None for acks and extras)."""

    data: bytes
    bad: bytes
    values: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class _Drift:
    lo: float
    hi: float
    typical: float
    sigma: float  # standard deviation of one step
    revert: float = 0.05  # pull toward ``typical`` per step


class _Source:
    """One metric: a fixed cycle of values from the config, or a bounded random walk that
    takes one step per frame and pulls back toward a typical value."""

    def __init__(self, rng: random.Random, drift: _Drift, fixed: tuple[float, ...] = ()) -> None:
        self._rng = rng
        self._drift = drift
        self._fixed = fixed
        self._i = 0
        self.value = drift.typical + rng.uniform(-0.1, 0.1) * (drift.hi - drift.lo)

    def next(self) -> float:
        if self._fixed:
            self.value = self._fixed[self._i % len(self._fixed)]
            self._i += 1
            return self.value
        d = self._drift
        x = self.value + d.revert * (d.typical - self.value) + self._rng.gauss(0.0, d.sigma)
        if x < d.lo:  # reflect at the bounds: plausible values that do not stick to a limit
            x = min(d.hi, 2 * d.lo - x)
        elif x > d.hi:
            x = max(d.lo, 2 * d.hi - x)
        self.value = x
        return x


def _sum16(data: bytes) -> int:
    return sum(data) & 0xFFFF


def pms_checksum(data: bytes) -> int:
    """The 16-bit sum of a PMS frame's first 30 bytes (or a command's first 5)."""
    return _sum16(data)


def sds011_checksum(data: bytes) -> int:
    """Low 8 bits of the sum of the data bytes (2-7 of a reply, 2-16 of a command)."""
    return sum(data) & 0xFF


def mhz19_checksum(frame: bytes) -> int:
    """``(0xFF - (sum of bytes 1..7 & 0xFF)) + 1``, taken ``& 0xFF``."""
    return ((0xFF - (sum(frame[1:8]) & 0xFF)) + 1) & 0xFF


def nmea_checksum(body: str) -> int:
    """XOR of the characters between ``$`` and ``*``."""
    return functools.reduce(operator.xor, body.encode("ascii"), 0)


class _Scanner:
    """Fixed-length command frames found in a byte stream by header and checked by
    ``valid``; past anything invalid it moves on by one byte. The buffer is bounded."""

    def __init__(self, header: bytes, length: int, valid: Callable[[bytes], bool]) -> None:
        self._header = header
        self._length = length
        self._valid = valid
        self._buf = bytearray()
        self.rejected = 0  # candidate frames dropped for a bad checksum or trailer

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while True:
            start = buf.find(self._header)
            if start < 0:
                # Headers are one or two bytes: the last byte may begin the next one.
                keep = int(len(self._header) > 1 and buf.endswith(self._header[:1]))
                del buf[: len(buf) - keep]
                break
            del buf[:start]
            if len(buf) < self._length:
                break
            frame = bytes(buf[: self._length])
            if self._valid(frame):
                out.append(frame)
                del buf[: self._length]
            else:
                self.rejected += 1
                del buf[:1]
        if len(buf) > _COMMAND_BUFFER:
            del buf[:-_COMMAND_BUFFER]
        return out


class Player:
    """A sensor's protocol and state. Subclasses stream, answer commands, or both."""

    def __init__(self, config: UartDeviceConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng

    def source(self, metric: str, drift: _Drift) -> _Source:
        """The value source of ``metric``: the configured cycle, else a walk over ``drift``."""
        return _Source(self._rng, drift, self.config.values.get(metric, ()))

    def period(self) -> float | None:
        """Seconds between streamed ticks now, or None while the sensor does not stream."""
        return self.config.interval_s

    def stream(self) -> list[Frame]:
        """The frames of one streaming tick."""
        return []

    def feed(self, data: bytes) -> list[Frame]:
        """Bytes from the client; the replies to any complete, valid commands in them."""
        del data
        return []

    def state(self) -> dict[str, Any]:
        """The sensor's settable state, for tests and the control socket."""
        return {}


PMS_WORDS: Final = tuple(UART_METRICS["pms5003"])
# Derived from one PM2.5 walk so the sizes stay ordered as a real sensor's: PM1 < PM2.5 <
# PM10, and fewer large particles than small ones.
_PMS_RATIOS: Final = {
    "pm1": 0.68,
    "pm25": 1.0,
    "pm10": 1.25,
    "n0_3": 110.0,
    "n0_5": 32.0,
    "n1_0": 6.0,
    "n2_5": 0.6,
    "n5_0": 0.12,
    "n10": 0.03,
}


class Pms(Player):
    """Plantower PMS5003/PMS7003: streams in active mode, answers E2 in passive mode."""

    def __init__(self, config: UartDeviceConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self.mode = "active"  # or "passive"
        self.asleep = False
        self._base = _Source(rng, _Drift(5.0, 150.0, 25.0, 1.0))
        self._fixed = {m: self.source(m, _Drift(0, 0, 0, 0)) for m in config.values}
        self._scanner = _Scanner(b"\x42\x4d", 7, lambda f: _sum16(f[:5]) == int.from_bytes(f[5:]))
        # Word 13: firmware version (high byte) and error code (low byte).
        self._reserved = 0x9700 if config.protocol == "pms7003" else 0x9100

    def period(self) -> float | None:
        return self.config.interval_s if self.mode == "active" and not self.asleep else None

    def stream(self) -> list[Frame]:
        return [self._data_frame()]

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        for cmd in self._scanner.feed(data):
            code, value = cmd[2], int.from_bytes(cmd[3:5])
            if self.asleep and not (code == 0xE4 and value == 1):
                continue  # asleep, the sensor hears only "wake up"
            if code == 0xE1 and value in (0, 1):
                self.mode = "active" if value else "passive"
            elif code == 0xE2 and self.mode == "passive":
                out.append(self._data_frame())
            elif code == 0xE4 and value in (0, 1):
                self.asleep = not value
        return out

    def state(self) -> dict[str, Any]:
        return {"mode": self.mode, "asleep": self.asleep}

    def _data_frame(self) -> Frame:
        base = self._base.next()
        values: dict[str, float] = {}
        for metric in PMS_WORDS:
            if metric in self._fixed:
                values[metric] = self._fixed[metric].next()
            else:
                size = metric.rsplit("_", 1)[0] if metric.startswith("pm") else metric
                values[metric] = float(round(base * _PMS_RATIOS[size]))
        words = [int(values[m]) for m in PMS_WORDS] + [self._reserved]
        body = b"\x42\x4d\x00\x1c" + b"".join(w.to_bytes(2) for w in words)
        checksum = _sum16(body)
        return Frame(
            body + checksum.to_bytes(2),
            body + (checksum ^ 0x0101).to_bytes(2),
            values,
        )


class Sds011(Player):
    """Nova SDS011: streams (active reporting) or answers query-data commands."""

    def __init__(self, config: UartDeviceConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self.reporting = "active"  # or "query"
        self.working_period_min = 0  # 0: continuous, n: one frame every n minutes
        self.asleep = False
        self.device_id = zlib.crc32(config.id.encode()) & 0xFFFF or 1
        self._pm25 = self.source("pm25", _Drift(5.0, 150.0, 25.0, 1.0))
        self._pm10 = self.source("pm10", _Drift(10.0, 250.0, 40.0, 1.5))
        self._scanner = _Scanner(b"\xaa\xb4", 19, self._valid)

    @staticmethod
    def _valid(frame: bytes) -> bool:
        return frame[18] == 0xAB and sds011_checksum(frame[2:17]) == frame[17]

    def period(self) -> float | None:
        if self.asleep or self.reporting == "query":
            return None
        return self.working_period_min * 60.0 or self.config.interval_s

    def stream(self) -> list[Frame]:
        return [self._data_frame()]

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        for cmd in self._scanner.feed(data):
            target = int.from_bytes(cmd[15:17])
            if target not in (0xFFFF, self.device_id):
                continue  # addressed to another sensor on the line
            reply = self._command(cmd[2], cmd[3], cmd[4], cmd)
            if reply is not None:
                out.append(reply)
        return out

    def _command(self, command: int, write: int, value: int, cmd: bytes) -> Frame | None:
        if self.asleep and command != 6:
            return None  # asleep, the sensor hears only sleep/work
        if command == 2:  # reporting mode: 0 active, 1 query
            if write:
                self.reporting = "query" if value else "active"
            return self._reply(2, write, int(self.reporting == "query"), 0)
        if command == 4:
            return self._data_frame()
        if command == 5:  # new device id in data bytes 12-13
            self.device_id = int.from_bytes(cmd[13:15])
            return self._reply(5, 0, 0, 0)
        if command == 6:  # 0 sleep, 1 work
            if write:
                self.asleep = not value
            return self._reply(6, write, int(not self.asleep), 0)
        if command == 7:  # firmware version: year, month, day
            return self._reply(7, 18, 11, 16)
        if command == 8 and value <= 30:  # working period in minutes, 0 = continuous
            if write:
                self.working_period_min = value
            return self._reply(8, write, self.working_period_min, 0)
        return None

    def state(self) -> dict[str, Any]:
        return {
            "reporting": self.reporting,
            "working_period_min": self.working_period_min,
            "asleep": self.asleep,
            "device_id": self.device_id,
        }

    def _frame(self, kind: int, payload: bytes) -> Frame:
        body = payload + self.device_id.to_bytes(2)
        checksum = sds011_checksum(body)
        head = bytes((0xAA, kind))
        return Frame(
            head + body + bytes((checksum, 0xAB)),
            head + body + bytes(((checksum + 0x55) & 0xFF, 0xAB)),
        )

    def _reply(self, command: int, b3: int, b4: int, b5: int) -> Frame:
        return self._frame(0xC5, bytes((command, b3, b4, b5)))

    def _data_frame(self) -> Frame:
        pm25 = min(65535, round(self._pm25.next() * 10))
        pm10 = min(65535, round(self._pm10.next() * 10))
        frame = self._frame(0xC0, pm25.to_bytes(2, "little") + pm10.to_bytes(2, "little"))
        return Frame(frame.data, frame.bad, {"pm25": pm25 / 10, "pm10": pm10 / 10})


class Mhz19(Player):
    """Winsen MH-Z19B: answers ``0x86`` reads; ``0x79`` switches ABC (acknowledged)."""

    def __init__(self, config: UartDeviceConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self.abc = True  # automatic baseline calibration, on from the factory
        self._co2 = self.source("co2", _Drift(400.0, 1200.0, 600.0, 10.0))
        self._temperature = self.source("temperature", _Drift(22.0, 36.0, 28.0, 0.1))
        self._scanner = _Scanner(b"\xff", 9, lambda f: mhz19_checksum(f) == f[8])

    def period(self) -> float | None:
        return None

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        for cmd in self._scanner.feed(data):
            if cmd[2] == 0x86:
                co2 = round(self._co2.next())
                temperature = round(self._temperature.next())
                frame = self._frame(bytes((0x86, co2 >> 8, co2 & 0xFF, temperature + 40, 0, 0, 0)))
                out.append(Frame(frame.data, frame.bad, {"co2": co2, "temperature": temperature}))
            elif cmd[2] == 0x79:
                self.abc = cmd[3] == 0xA0
                out.append(self._frame(bytes((0x79, 1, 0, 0, 0, 0, 0))))
        return out

    def state(self) -> dict[str, Any]:
        return {"abc": self.abc}

    @staticmethod
    def _frame(body: bytes) -> Frame:
        frame = b"\xff" + body + b"\x00"
        checksum = mhz19_checksum(frame)
        return Frame(frame[:8] + bytes((checksum,)), frame[:8] + bytes(((checksum + 1) & 0xFF,)))


def _nmea_coordinate(value: float, digits: int, hemispheres: str) -> tuple[str, str, float]:
    """Degrees -> (``d..dmm.mmmm``, hemisphere, the degrees that text says)."""
    degrees = int(abs(value))
    minutes = round((abs(value) - degrees) * 60, 4)
    if minutes >= 60:
        degrees, minutes = degrees + 1, minutes - 60
    sign = 1 if value >= 0 else -1
    text = f"{degrees:0{digits}d}{minutes:07.4f}"
    return text, hemispheres[value < 0], sign * (degrees + minutes / 60)


class Nmea(Player):
    """An NMEA 0183 GPS receiver: RMC and GGA each tick; a GSV or VTG every fifth tick."""

    def __init__(
        self,
        config: UartDeviceConfig,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(config, rng)
        self.fix = config.fix
        self._clock = clock
        self._tick = 0
        self._speed = self.source("speed_knots", _Drift(0.0, 0.5, 0.05, 0.03))
        self._course = self.source("course", _Drift(0.0, 359.9, 180.0, 3.0, revert=0.0))
        self._satellites = self.source("satellites", _Drift(4.0, 12.0, 8.0, 0.3))
        self._hdop = self.source("hdop", _Drift(0.6, 2.5, 0.9, 0.05))

    def state(self) -> dict[str, Any]:
        return {"fix": self.fix, "talker": self.config.talker}

    def _sentence(self, body: str, values: dict[str, float] | None) -> Frame:
        checksum = nmea_checksum(body)
        return Frame(
            f"${body}*{checksum:02X}\r\n".encode("ascii"),
            f"${body}*{checksum ^ 0x5A:02X}\r\n".encode("ascii"),
            values,
        )

    def stream(self) -> list[Frame]:
        talker = self.config.talker
        hundredths = math.floor((self._clock() + self.config.clock_offset_s) * 100)
        utc = hundredths / 100
        when = dt.datetime.fromtimestamp(hundredths // 100, dt.UTC)
        hhmmss = f"{when:%H%M%S}.{hundredths % 100:02d}"
        speed = round(self._speed.next(), 2)
        course = round(self._course.next(), 1)
        satellites = round(self._satellites.next())
        hdop = round(self._hdop.next(), 2)
        lat_deg, lon_deg, altitude = self.config.position
        lat, ns, lat_sent = _nmea_coordinate(lat_deg, 2, "NS")
        lon, ew, lon_sent = _nmea_coordinate(lon_deg, 3, "EW")
        if self.fix:
            rmc = f"{talker}RMC,{hhmmss},A,{lat},{ns},{lon},{ew},{speed:.2f},{course:.1f},"
            rmc += f"{when:%d%m%y},,,A"
            gga = f"{talker}GGA,{hhmmss},{lat},{ns},{lon},{ew},1,{satellites:02d},{hdop:.2f},"
            gga += f"{altitude:.1f},M,0.0,M,,"
            position = {"lat": lat_sent, "lon": lon_sent}
            rmc_values = {"utc": utc, "valid": 1.0, **position}
            rmc_values |= {"speed_knots": speed, "course": course}
            gga_values = {"utc": utc, "quality": 1.0, **position, "satellites": float(satellites)}
            gga_values |= {"hdop": hdop, "altitude": altitude}
        else:
            rmc = f"{talker}RMC,{hhmmss},V,,,,,,,{when:%d%m%y},,,N"
            gga = f"{talker}GGA,{hhmmss},,,,,0,00,99.99,,M,,M,,"
            rmc_values = {"utc": utc, "valid": 0.0}
            gga_values = {"utc": utc, "quality": 0.0, "satellites": 0.0}
        frames = [self._sentence(rmc, rmc_values), self._sentence(gga, gga_values)]
        self._tick += 1
        if self._tick % 5 == 0:  # sentences a reading parser must skip
            if self._tick % 10:
                extra = f"{talker}GSV,1,1,04,05,61,259,44,13,39,064,41,15,29,306,38,20,18,140,35"
            else:
                extra = f"{talker}VTG,{course:.1f},T,,M,{speed:.2f},N,{speed * 1.852:.2f},K,A"
            frames.append(self._sentence(extra, None))
        return frames


_DIGIT: Final = re.compile(rb"[0-9]")


class Line(Player):
    """A line-oriented sensor: ``line_format`` over its metrics, one line per tick. The
    line has no checksum, so its ``bad`` variant has a digit turned into ``#``."""

    def __init__(self, config: UartDeviceConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self._sources = {
            "temperature": self.source("temperature", _Drift(22.0, 36.0, 28.0, 0.05)),
            "humidity": self.source("humidity", _Drift(50.0, 95.0, 70.0, 0.2)),
        }
        for metric in config.values:
            self._sources.setdefault(metric, self.source(metric, _Drift(0, 0, 0, 0)))

    def stream(self) -> list[Frame]:
        values = {metric: source.next() for metric, source in self._sources.items()}
        data = (self.config.line_format.format(**values) + self.config.line_ending).encode()
        bad = _DIGIT.sub(b"#", data, count=1) if _DIGIT.search(data) else b"#" + data
        return [Frame(data, bad, values)]


def make_player(config: UartDeviceConfig, rng: random.Random, clock: Callable[[], float]) -> Player:
    """The player for ``config.protocol``. ``clock`` is the wall clock (NMEA's UTC)."""
    if config.protocol in ("pms5003", "pms7003"):
        return Pms(config, rng)
    if config.protocol == "sds011":
        return Sds011(config, rng)
    if config.protocol == "mhz19":
        return Mhz19(config, rng)
    if config.protocol == "nmea":
        return Nmea(config, rng, clock)
    return Line(config, rng)
