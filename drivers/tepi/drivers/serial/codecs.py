"""Frames and lines of the UART sensors to values, and the command frames to send them.

Pure functions, no I/O: each protocol has a framer factory (see ``framing``), a decoder that
checks the whole frame again (so it is safe on any bytes) and the commands a driver needs.
Values are plain Python numbers, named as tepi publishes them. Facts come from the makers'
datasheets (see the project's serial-sensors reference).

A frame or line that cannot be decoded raises ``FrameError``; one whose checksum is wrong
raises its subclass ``ChecksumError``. Both carry a short, stable ``reason`` for counting.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from operator import xor
from typing import Literal

from tepi.drivers.serial.framing import BinaryFramer, LineFramer


class FrameError(ValueError):
    """A frame or line that cannot be decoded; ``reason`` is short and stable, for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ChecksumError(FrameError):
    """A frame or line whose checksum does not match its content."""


def _check_range(value: int, what: str, top: int = 0xFF) -> None:
    if not 0 <= value <= top:
        raise ValueError(f"{what} must be 0..{top:#x}, got {value}")


# ---- Plantower PMS5003 / PMS7003 -----------------------------------------------------------------

PMS_FRAME_LEN = 32
PMS_METRICS: tuple[str, ...] = (
    "pm1_cf1",
    "pm25_cf1",
    "pm10_cf1",
    "pm1_atm",
    "pm25_atm",
    "pm10_atm",
    "n0_3",
    "n0_5",
    "n1_0",
    "n2_5",
    "n5_0",
    "n10",
)
_PMS_HEADER = b"BM"
_PMS_LENGTH = (PMS_FRAME_LEN - 4).to_bytes(2, "big")  # the length field counts data + checksum
_PMS_WORDS = struct.Struct(">2s2s13HH")


def _pms_size(head: bytes) -> int | None:
    return PMS_FRAME_LEN if head[2:4] == _PMS_LENGTH else None


def _pms_valid(frame: bytes) -> bool:
    return sum(frame[:30]) & 0xFFFF == int.from_bytes(frame[30:32], "big")


def pms_framer() -> BinaryFramer:
    """Frames ``42 4D 00 1C`` + 13 words + checksum: 32 bytes."""
    return BinaryFramer(_PMS_HEADER, 4, _pms_size, _pms_valid, max_frame=PMS_FRAME_LEN)


def pms_decode(frame: bytes) -> dict[str, int]:
    """The 12 measurements of a PMS frame (the reserved 13th word is not a measurement)."""
    if len(frame) != PMS_FRAME_LEN:
        raise FrameError("length", f"{len(frame)} bytes, a PMS frame has {PMS_FRAME_LEN}")
    header, length, *words, checksum = _PMS_WORDS.unpack(frame)
    if header != _PMS_HEADER or length != _PMS_LENGTH:
        raise FrameError("header", frame[:4].hex(" "))
    if not _pms_valid(frame):
        raise ChecksumError("checksum", f"frame says {checksum:#06x}")
    return dict(zip(PMS_METRICS, words[:12], strict=True))


def pms_command(cmd: int, data: int = 0) -> bytes:
    """``42 4D CMD DATAH DATAL LRCH LRCL``; LRC is the 16-bit sum of the first 5 bytes."""
    _check_range(cmd, "command")
    _check_range(data, "data", 0xFFFF)
    body = _PMS_HEADER + bytes([cmd]) + data.to_bytes(2, "big")
    return body + (sum(body) & 0xFFFF).to_bytes(2, "big")


PMS_PASSIVE = pms_command(0xE1, 0)
PMS_ACTIVE = pms_command(0xE1, 1)
PMS_READ = pms_command(0xE2, 0)
PMS_WAKE = pms_command(0xE4, 1)


# ---- Nova Fitness SDS011 -------------------------------------------------------------------------

SDS_METRICS = ("pm25", "pm10")
_SDS_FRAME_LEN = 10
_SDS_DATA, _SDS_REPLY, _SDS_TAIL = 0xC0, 0xC5, 0xAB


def _sds_size(head: bytes) -> int | None:
    return _SDS_FRAME_LEN if head[1] in (_SDS_DATA, _SDS_REPLY) else None


def _sds_valid(frame: bytes) -> bool:
    return frame[9] == _SDS_TAIL and sum(frame[2:8]) & 0xFF == frame[8]


def sds_framer() -> BinaryFramer:
    """10-byte frames ``AA C0|C5 .. .. .. .. .. .. CS AB``: data and command replies."""
    return BinaryFramer(b"\xaa", 2, _sds_size, _sds_valid, max_frame=_SDS_FRAME_LEN)


def _sds_check(frame: bytes) -> None:
    if len(frame) != _SDS_FRAME_LEN:
        raise FrameError("length", f"{len(frame)} bytes, an SDS011 frame has 10")
    if frame[0] != 0xAA or frame[1] not in (_SDS_DATA, _SDS_REPLY) or frame[9] != _SDS_TAIL:
        raise FrameError("header", frame.hex(" "))
    if not _sds_valid(frame):
        raise ChecksumError("checksum", f"frame says {frame[8]:#04x}")


def sds_decode(frame: bytes) -> dict[str, float] | None:
    """PM2.5 and PM10 in µg/m³ from a ``C0`` data frame; None for a ``C5`` command reply."""
    _sds_check(frame)
    if frame[1] != _SDS_DATA:
        return None
    pm25, pm10 = struct.unpack_from("<HH", frame, 2)
    return {"pm25": pm25 / 10, "pm10": pm10 / 10}


def sds_command(command: int, data: bytes = b"", device_id: int = 0xFFFF) -> bytes:
    """The 19-byte ``AA B4`` command frame. ``device_id`` 0xFFFF addresses every sensor; it
    goes high byte first, as the datasheet's example id A160 appears as ``A1 60``."""
    _check_range(command, "command")
    _check_range(device_id, "device_id", 0xFFFF)
    if len(data) > 12:
        raise ValueError(f"SDS011 commands carry at most 12 data bytes, got {len(data)}")
    body = bytes([command]) + data.ljust(12, b"\0") + device_id.to_bytes(2, "big")
    return b"\xaa\xb4" + body + bytes([sum(body) & 0xFF, _SDS_TAIL])


_SDS_SET = 1


def sds_set_working_period(minutes: int) -> bytes:
    """Work 30 s every ``minutes`` (1..30) and sleep in between; 0 is continuous."""
    if not 0 <= minutes <= 30:
        raise ValueError(f"the SDS011 working period is 0..30 minutes, got {minutes}")
    return sds_command(8, bytes([_SDS_SET, minutes]))


def sds_set_query_mode(query: bool) -> bytes:
    """Answer only to ``SDS_QUERY`` (True) or report every second (False, the default)."""
    return sds_command(2, bytes([_SDS_SET, int(query)]))


SDS_QUERY = sds_command(4)


def sds_sleep(sleep: bool) -> bytes:
    """Stop the fan and laser (True) or start them again (False)."""
    return sds_command(6, bytes([_SDS_SET, int(not sleep)]))


# ---- Winsen MH-Z19B ------------------------------------------------------------------------------

MHZ_READ = bytes.fromhex("FF0186000000000079")
_MHZ_FRAME_LEN = 9
_MHZ_COMMANDS = frozenset({0x86, 0x79, 0x87, 0x99})  # read; ABC, zero point, range (acks)


def mhz_checksum(frame: bytes) -> int:
    """(0xFF - (sum of bytes 1..7 & 0xFF)) + 1, taken & 0xFF."""
    return (0xFF - (sum(frame[1:8]) & 0xFF) + 1) & 0xFF


def mhz_command(cmd: int, data: bytes = b"") -> bytes:
    """``FF 01 CMD`` + 5 data bytes (zero padded) + checksum."""
    _check_range(cmd, "command")
    if len(data) > 5:
        raise ValueError(f"MH-Z19 commands carry at most 5 data bytes, got {len(data)}")
    frame = bytes([0xFF, 0x01, cmd]) + data.ljust(5, b"\0")
    return frame + bytes([mhz_checksum(frame)])


def mhz_abc(on: bool) -> bytes:
    """Turn automatic baseline calibration on or off."""
    return mhz_command(0x79, b"\xa0" if on else b"\0")


def _mhz_size(head: bytes) -> int | None:
    return _MHZ_FRAME_LEN if head[1] in _MHZ_COMMANDS else None


def _mhz_valid(frame: bytes) -> bool:
    return frame[8] == mhz_checksum(frame)


def mhz_framer() -> BinaryFramer:
    """9-byte answers ``FF CMD ...`` to a read (``86``) or a setting (``79``, ``87``, ``99``)."""
    return BinaryFramer(b"\xff", 2, _mhz_size, _mhz_valid, max_frame=_MHZ_FRAME_LEN)


def mhz_decode(frame: bytes) -> dict[str, int] | None:
    """CO2 (ppm) and the rough temperature (°C) from a read answer; None for an ack."""
    if len(frame) != _MHZ_FRAME_LEN:
        raise FrameError("length", f"{len(frame)} bytes, an MH-Z19 frame has 9")
    if frame[0] != 0xFF or frame[1] not in _MHZ_COMMANDS:
        raise FrameError("header", frame[:2].hex(" "))
    if not _mhz_valid(frame):
        raise ChecksumError("checksum", f"frame says {frame[8]:#04x}")
    if frame[1] != 0x86:
        return None
    return {"co2": 256 * frame[2] + frame[3], "temperature": frame[4] - 40}


# ---- NMEA 0183 -----------------------------------------------------------------------------------

NMEA_MAX_LEN = 82
_KNOT = 1852 / 3600  # m/s
_SENTENCE = re.compile(r"\$([^$*]*)\*([0-9A-Fa-f]{2})")
_ADDRESS = re.compile(r"([A-Z]{2})([A-Z]{3})")
_TIME = re.compile(r"(\d\d)(\d\d)(\d\d(?:\.\d+)?)")
_DATE = re.compile(r"(\d\d)(\d\d)(\d\d)")
_LAT = re.compile(r"(\d\d)(\d\d(?:\.\d*)?)")
_LON = re.compile(r"(\d\d\d)(\d\d(?:\.\d*)?)")
_UNSIGNED = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_SIGNED = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_INT = re.compile(r"\d+")
_RMC_FIELDS = (12, 13, 14)  # with the address: NMEA 2.0, 2.3 (mode), 4.1 (nav status)
_GGA_FIELDS = 15


def nmea_framer(max_len: int = 128) -> LineFramer:
    """Sentence lines (``\\r\\n`` endings); ``max_len`` leaves room over the 82 of the standard."""
    return LineFramer(ending=b"\n", max_len=max_len)


@dataclass(frozen=True, slots=True)
class Fix:
    """A position fix from an RMC or GGA sentence; fields the sentence left empty are None."""

    sentence: str
    talker: str
    utc: dt.datetime | None
    time_of_day: float | None
    valid: bool
    lat: float | None
    lon: float | None
    altitude: float | None
    satellites: int | None
    fix_quality: int | None
    hdop: float | None
    speed_ms: float | None
    course: float | None


def nmea_checksum(body: bytes) -> int:
    """XOR of the bytes between ``$`` and ``*``."""
    return reduce(xor, body, 0)


def nmea_parse(line: bytes, *, date: dt.date | None = None) -> Fix | None:
    """The fix in an RMC or GGA sentence; None for any other sentence (GSV, VTG, $P...).

    ``date`` dates a GGA (which carries only the time of day), typically from the last RMC;
    an RMC uses its own date. The standard's 82 characters include the ``\\r\\n``: lines up
    to 82 without them are accepted, for receivers that overstep by a little.
    Raises ``ChecksumError`` for a wrong ``*HH``, ``FrameError`` for anything malformed.
    """
    line = line.strip()
    if len(line) > NMEA_MAX_LEN:
        raise FrameError("too long", f"{len(line)} characters, NMEA allows {NMEA_MAX_LEN}")
    if not line.isascii() or not line.decode("ascii").isprintable():
        raise FrameError("not printable ASCII")
    text = line.decode("ascii")
    match = _SENTENCE.fullmatch(text)
    if match is None:
        if not text.startswith("$"):
            raise FrameError("not a sentence", text[:20])
        raise FrameError("no checksum" if "*" not in text else "malformed", text)
    body, given = match[1], int(match[2], 16)
    computed = nmea_checksum(body.encode("ascii"))
    if computed != given:
        raise ChecksumError("checksum", f"sentence says {given:02X}, computed {computed:02X}")
    fields = body.split(",")
    if fields[0].startswith("P"):
        return None  # proprietary ($PUBX, $PMTK...)
    address = _ADDRESS.fullmatch(fields[0])
    if address is None:
        raise FrameError("bad address", fields[0])
    talker, kind = address[1], address[2]
    if kind == "RMC":
        return _rmc(talker, fields)
    if kind == "GGA":
        return _gga(talker, fields, date)
    return None


def _rmc(talker: str, f: list[str]) -> Fix:
    if len(f) not in _RMC_FIELDS:
        raise FrameError("field count", f"RMC with {len(f)} fields")
    if f[2] not in ("A", "V", ""):
        raise FrameError("bad status", f[2])
    tod = _time(f[1])
    day = _date(f[9])
    knots = _number(f[7], "speed")
    mode_ok = len(f) < 13 or f[12] != "N"  # NMEA 2.3: N = data not valid
    return Fix(
        sentence="RMC",
        talker=talker,
        utc=_utc(day, tod),
        time_of_day=tod,
        valid=f[2] == "A" and mode_ok,
        lat=_coord(f[3], f[4], _LAT, "NS", 90.0),
        lon=_coord(f[5], f[6], _LON, "EW", 180.0),
        altitude=None,
        satellites=None,
        fix_quality=None,
        hdop=None,
        speed_ms=None if knots is None else knots * _KNOT,
        course=_number(f[8], "course"),
    )


def _gga(talker: str, f: list[str], day: dt.date | None) -> Fix:
    if len(f) != _GGA_FIELDS:
        raise FrameError("field count", f"GGA with {len(f)} fields")
    tod = _time(f[1])
    quality = _integer(f[6], "fix quality")
    altitude = _number(f[9], "altitude", signed=True)
    if altitude is not None and f[10] not in ("M", ""):
        raise FrameError("bad altitude unit", f[10])
    return Fix(
        sentence="GGA",
        talker=talker,
        utc=_utc(day, tod),
        time_of_day=tod,
        valid=bool(quality),
        lat=_coord(f[2], f[3], _LAT, "NS", 90.0),
        lon=_coord(f[4], f[5], _LON, "EW", 180.0),
        altitude=altitude,
        satellites=_integer(f[7], "satellites"),
        fix_quality=quality,
        hdop=_number(f[8], "hdop"),
        speed_ms=None,
        course=None,
    )


def _number(text: str, what: str, *, signed: bool = False) -> float | None:
    if not text:
        return None
    if (_SIGNED if signed else _UNSIGNED).fullmatch(text) is None:
        raise FrameError(f"bad {what}", text)
    return float(text)


def _integer(text: str, what: str) -> int | None:
    if not text:
        return None
    if _INT.fullmatch(text) is None:
        raise FrameError(f"bad {what}", text)
    return int(text)


def _time(text: str) -> float | None:
    """Seconds since midnight from ``hhmmss.ss``; 60 is allowed for a leap second."""
    if not text:
        return None
    m = _TIME.fullmatch(text)
    if m is None or int(m[1]) > 23 or int(m[2]) > 59 or float(m[3]) >= 61:
        raise FrameError("bad time", text)
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


def _date(text: str) -> dt.date | None:
    """``ddmmyy``; years 80..99 are 1980..1999 (GPS time starts in 1980), the rest 20yy."""
    if not text:
        return None
    m = _DATE.fullmatch(text)
    if m is None:
        raise FrameError("bad date", text)
    yy = int(m[3])
    try:
        return dt.date(1900 + yy if yy >= 80 else 2000 + yy, int(m[2]), int(m[1]))
    except ValueError:
        raise FrameError("bad date", text) from None


def _utc(day: dt.date | None, tod: float | None) -> dt.datetime | None:
    if day is None or tod is None:
        return None
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return midnight + dt.timedelta(seconds=tod)


def _coord(
    value: str, hemisphere: str, pattern: re.Pattern[str], signs: str, limit: float
) -> float | None:
    """Decimal degrees from ``(d)ddmm.mmmm`` and its hemisphere; south and west negative."""
    if not value and not hemisphere:
        return None
    m = pattern.fullmatch(value)
    if m is None or len(hemisphere) != 1 or hemisphere not in signs:
        raise FrameError("bad position", f"{value},{hemisphere}")
    minutes = float(m[2])
    degrees = int(m[1]) + minutes / 60
    if minutes >= 60 or degrees > limit:
        raise FrameError("bad position", f"{value},{hemisphere}")
    return -degrees if hemisphere == signs[1] else degrees


# ---- line-oriented text sensors ------------------------------------------------------------------


class LineParser:
    """Named field texts from one line of a text sensor.

    ``regex``: the whole line (whitespace stripped) must match; the named groups that took
    part are the fields. ``kv``: ``T=23.4,H=55.1``, pairs split by ``separator`` then
    ``kv_separator``. ``csv``: values split by ``separator`` and named by ``columns`` (no
    quoting). Converting the texts to numbers is the caller's job.
    """

    def __init__(
        self,
        *,
        mode: Literal["regex", "kv", "csv"],
        regex: str | None = None,
        columns: Sequence[str] = (),
        separator: str = ",",
        kv_separator: str = "=",
    ) -> None:
        if mode not in ("regex", "kv", "csv"):
            raise ValueError(f"mode must be regex, kv or csv, not {mode!r}")
        if (regex is not None) != (mode == "regex"):
            raise ValueError("a regex is needed for mode regex, and only there")
        if bool(columns) != (mode == "csv"):
            raise ValueError("columns are needed for mode csv, and only there")
        if not separator or not kv_separator:
            raise ValueError("separators must not be empty")
        if len(set(columns)) != len(columns):
            raise ValueError(f"columns must be distinct, got {list(columns)}")
        self._mode = mode
        self._pattern: re.Pattern[str] | None = None
        if regex is not None:
            try:
                self._pattern = re.compile(regex)
            except re.error as err:
                raise ValueError(f"invalid regex {regex!r}: {err}") from err
            if not self._pattern.groupindex:
                raise ValueError(f"regex {regex!r} has no named group: use (?P<name>...)")
        self._columns = tuple(columns)
        self._separator = separator
        self._kv_separator = kv_separator

    def parse(self, line: bytes) -> dict[str, str]:
        """The raw field texts by name. Raises ``FrameError`` for a line that does not fit."""
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise FrameError("not UTF-8") from None
        if self._pattern is not None:
            m = self._pattern.fullmatch(text)
            if m is None:
                raise FrameError("no match", text[:40])
            return {k: v for k, v in m.groupdict().items() if v is not None}
        parts = [p.strip() for p in text.split(self._separator)]
        if self._mode == "csv":
            if len(parts) != len(self._columns):
                raise FrameError(
                    "column count", f"{len(parts)} values, {len(self._columns)} columns"
                )
            return dict(zip(self._columns, parts, strict=True))
        return self._pairs(parts)

    def _pairs(self, parts: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in filter(None, parts):  # tolerate a trailing separator
            key, sep, value = part.partition(self._kv_separator)
            key = key.strip()
            if not sep or not key:
                raise FrameError("not key=value", part[:40])
            if key in out:
                raise FrameError("repeated key", key)
            out[key] = value.strip()
        if not out:
            raise FrameError("empty line")
        return out
