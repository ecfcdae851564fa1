"""Simulator configuration: frozen dataclasses, YAML loading and validation.

The simulator is configured from a YAML file or a plain dict (tests build configs in
Python). Validation collects *every* problem before failing, and each message names the
key path (``devices[0].registers[1].type: unknown type 'flaot32' (did you mean
'float32'?)``) so a person can fix a file in one pass. Rules that span several fields
(overlapping registers, duplicate ids, shared buses) run after the per-field checks.

This module deliberately uses dataclasses instead of pydantic: the simulator depends on
nothing but the standard library and PyYAML.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import yaml

from tepi_sim.errors import ConfigError
from tepi_sim.traffic_settings import TrafficSettings, traffic_settings

__all__ = [
    "BIT_KINDS",
    "BIT_TABLES",
    "CAMERA_AUTH",
    "CAMERA_FAULT_MODES",
    "CAMERA_SCENES",
    "FAULT_MODES",
    "KINDS",
    "REGISTER_TABLES",
    "TYPES",
    "UART_FAULT_MODES",
    "UART_METRICS",
    "UART_PROTOCOLS",
    "WRITABLE_TABLES",
    "CameraConfig",
    "ConfigError",
    "DeviceConfig",
    "RegisterConfig",
    "SimConfig",
    "UartDeviceConfig",
    "load_config",
    "parse_script",
]


def profile_dir() -> Path | None:
    """Where tepi's device profiles are (``profile: NAME`` on a device), or None.

    The simulator depends on nothing in tepi; it only reads these YAML files when tepi is
    installed beside it. ``find_spec`` locates the package without running its code."""
    try:
        spec = importlib.util.find_spec("tepi.drivers")
    except ImportError:
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        found = Path(loc) / "modbus" / "profiles"
        if found.is_dir():
            return found
    return None


REGISTER_TABLES: Final = ("holding", "input")
BIT_TABLES: Final = ("coil", "discrete")
TABLES: Final = REGISTER_TABLES + BIT_TABLES
TYPES: Final = ("int16", "uint16", "int32", "uint32", "float32")
INT_RANGES: Final = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
WORD_ORDERS: Final = ("big", "little")
SENSOR_KINDS: Final = ("pm25", "pm10", "temperature", "humidity", "level", "noise")
KINDS: Final = (*SENSOR_KINDS, "counter", "constant", "toggle", "output", "script")
# Kinds a coil or discrete input may have; ``output`` also needs a writable table.
BIT_KINDS: Final = ("toggle", "constant", "output")
WRITABLE_TABLES: Final = ("coil", "holding")
FLOAT32_MAX: Final = 3.4028234663852886e38
TRANSPORTS: Final = ("rtu", "tcp", "rtu-tcp", "uart")
FAULT_MODES: Final = (
    "none",
    "no_reply",
    "exception",
    "bad_crc",
    "garbage",
    "partial",
    "wrong_unit",
    "disconnect",
    "unplugged",
    "slow",
)

# UART (serial) sensors, each on its own pty (``uart.py``, ``uart_protocols.py``).
UART_PROTOCOLS: Final = ("pms5003", "pms7003", "sds011", "mhz19", "nmea", "line")
UART_FAULT_MODES: Final = (
    "none",
    "garbage",
    "split",
    "bad_checksum",
    "silence",
    "baud_mismatch",
    "unplugged",
)
_PMS_METRICS: Final = (
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
# What each protocol can carry on the wire: metric -> (lowest, highest, integer only). The
# metrics a ``values`` list may fix. ``line`` takes any metric its ``line_format`` names.
UART_METRICS: Final[Mapping[str, Mapping[str, tuple[float, float, bool]]]] = {
    "pms5003": dict.fromkeys(_PMS_METRICS, (0, 65535, True)),
    "pms7003": dict.fromkeys(_PMS_METRICS, (0, 65535, True)),
    "sds011": {"pm25": (0, 6553.5, False), "pm10": (0, 6553.5, False)},
    "mhz19": {"co2": (0, 65535, True), "temperature": (-40, 215, True)},
    "nmea": {
        "speed_knots": (0, 999.99, False),
        "course": (0, 359.9, False),
        "satellites": (0, 99, True),
        "hdop": (0, 99.99, False),
    },
    "line": {},
}
DEFAULT_LINE_FORMAT: Final = "T={temperature:.1f},H={humidity:.1f}"
LINE_ENDINGS: Final = ("\n", "\r\n", "\r")
_NMEA_KEYS: Final = ("talker", "fix", "position", "clock_offset_s")
_LINE_KEYS: Final = ("line_format", "line_ending")
_UART_KEYS: Final = (
    "id",
    "transport",
    "protocol",
    "link",
    "interval_s",
    "fault",
    "values",
    *_NMEA_KEYS,
    *_LINE_KEYS,
)
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Simulated IP cameras (``camera.py``), each an HTTP server on 127.0.0.1.
CAMERA_AUTH: Final = ("none", "basic", "digest")
CAMERA_FAULT_MODES: Final = (
    "none",
    "unauthorized",
    "hang",
    "slow",
    "truncated",
    "black",
    "frozen",
    "blur",
    "covered",
    "moved",
    "reboot",
    "clock",
)
CAMERA_SCENES: Final = ("objects", "traffic")
_CAMERA_KEYS: Final = (
    "id",
    "port",
    "width",
    "height",
    "fps",
    "quality",
    "auth",
    "username",
    "password",
    "objects",
    "seed",
    "scene",
    "traffic",
)

_TOP_KEYS: Final = ("devices", "cameras", "seed")
BAUDRATES: Final = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200)
_DEVICE_KEYS: Final = (
    "id",
    "transport",
    "baudrate",
    "wire_time",
    "needs_pause_s",
    "pipelining",
    "profile",
    "unit",
    "bus",
    "link",
    "port",
    "registers",
    "fill_gaps",
    "fault",
    "fault_code",
    "delay_s",
)
_REGISTER_KEYS: Final = (
    "address",
    "table",
    "kind",
    "type",
    "word_order",
    "scale",
    "value",
    "points",
    "loop",
)


@dataclass(frozen=True, slots=True)
class RegisterConfig:
    """One mapped point: a register (16 or 32 bit) or a bit in a coil/discrete table."""

    address: int
    table: str
    kind: str
    type: str = "uint16"
    word_order: str = "big"
    scale: float = 1.0
    value: float | None = None
    points: tuple[tuple[float, float], ...] = ()  # kind script: (seconds, physical value)
    loop: bool = False  # kind script: repeat from t = 0 after the last point

    @property
    def is_bit(self) -> bool:
        """True for coil and discrete-input points."""
        return self.table in BIT_TABLES

    @property
    def width(self) -> int:
        """Number of 16-bit words (or bits) the point occupies."""
        return 2 if self.type in ("int32", "uint32", "float32") and not self.is_bit else 1


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One simulated Modbus slave with its register map and initial fault."""

    id: str
    transport: str
    unit: int
    registers: tuple[RegisterConfig, ...]
    bus: str | None = None
    link: str | None = None
    port: int = 0
    fill_gaps: bool = True
    fault: str = "none"
    fault_code: int = 4
    delay_s: float = 2.0
    baudrate: int = 9600
    wire_time: bool = False
    needs_pause_s: float = 0.0
    pipelining: bool = True


@dataclass(frozen=True, slots=True)
class UartDeviceConfig:
    """One simulated serial sensor on its own pty, speaking ``protocol``.

    ``values`` fixes a metric to a list of values played in a cycle (one per data frame);
    the other metrics drift. The ``nmea`` and ``line`` keys apply to those protocols only.
    """

    id: str
    protocol: str
    link: str | None = None
    interval_s: float = 1.0
    fault: str = "none"
    values: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: MappingProxyType({}))
    talker: str = "GP"
    fix: bool = True
    position: tuple[float, float, float] = (16.0544, 108.2022, 12.5)  # lat, lon, altitude m
    clock_offset_s: float = 0.0
    line_format: str = DEFAULT_LINE_FORMAT
    line_ending: str = "\n"

    @property
    def transport(self) -> str:
        """Always ``uart``: the transport key these devices are configured with."""
        return "uart"


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """One simulated IP camera: an HTTP server on 127.0.0.1 (``port`` 0: a free one)
    serving snapshots, MJPEG and an H.264 stream of a synthetic scene of ``width`` x
    ``height`` pixels at ``fps``: ``scene`` ``objects`` (``objects`` moving objects placed
    from ``seed``) or ``traffic`` (the road of :mod:`tepi_sim.traffic`, set by ``traffic``,
    whose width, height and seed are the camera's)."""

    id: str
    port: int = 0
    width: int = 640
    height: int = 360
    fps: int = 5
    quality: int = 80
    auth: str = "none"
    username: str = ""
    password: str = ""
    objects: int = 3
    seed: int = 0
    scene: str = "objects"
    traffic: TrafficSettings = field(default_factory=TrafficSettings)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The whole simulator: its Modbus devices, its serial sensors (``transport: uart``),
    its cameras and an optional seed for reproducible values."""

    devices: tuple[DeviceConfig, ...]
    seed: int | None = None
    uart_devices: tuple[UartDeviceConfig, ...] = ()
    cameras: tuple[CameraConfig, ...] = ()


def load_config(source: SimConfig | Mapping[str, Any] | str | Path) -> SimConfig:
    """Build a validated :class:`SimConfig` from a YAML file path or a dict.

    Raises :class:`ConfigError` listing every problem found.
    """
    if isinstance(source, SimConfig):
        return source
    if isinstance(source, Mapping):
        return _Validator().config(source, None)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"cannot read config file: {err.strerror}"], str(path)) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"invalid YAML: {err}"], str(path)) from err
    return _Validator().config(data, str(path))


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return (
        f" (did you mean '{close[0]}'?)" if close else f" (expected one of: {', '.join(choices)})"
    )


def _fits(value: float, reg_type: str, scale: float) -> str | None:
    """Why a physical ``value`` does not fit a register of ``reg_type`` and ``scale``, or
    None if it does."""
    if reg_type in INT_RANGES:
        lo, hi = INT_RANGES[reg_type]
        if not lo <= round(value / scale) <= hi:
            return (
                f"{value:g} does not fit {reg_type} with scale {scale:g} "
                f"(from {lo * scale:g} to {hi * scale:g})"
            )
    elif abs(value) > FLOAT32_MAX:
        return f"{value:g} does not fit float32"
    return None


def parse_script(
    points: object, reg_type: str, scale: float, path: str
) -> tuple[tuple[tuple[float, float], ...], list[str]]:
    """Check a script's ``points``: ``[[t_s, value], ...]``, at least two, numbers, times
    from 0 up and never going back (two points at one time make a step), the last one after
    the first, every value fitting the register. Returns the points and every problem, each
    as ``"<path>: <message>"`` with the key path of the point at fault."""
    problems: list[str] = []
    if not isinstance(points, list | tuple) or len(points) < 2:
        got = f"{len(points)} point(s)" if isinstance(points, list | tuple) else repr(points)
        return (), [f"{path}: must be a list of at least 2 [seconds, value] points, got {got}"]
    out: list[tuple[float, float]] = []
    for k, point in enumerate(points):
        where = f"{path}[{k}]"
        if not isinstance(point, list | tuple) or len(point) != 2:
            problems.append(f"{where}: must be a [seconds, value] pair, got {point!r}")
            continue
        t, value = point
        bad = False
        for name, x in (("seconds", t), ("value", value)):
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                problems.append(f"{where}: {name} must be a finite number, got {x!r}")
                bad = True
        if bad:
            continue
        if t < 0:
            problems.append(f"{where}: seconds must not be negative, got {t}")
            continue
        if out and t < out[-1][0]:
            problems.append(
                f"{where}: points must be sorted by time: {t:g} s comes after {out[-1][0]:g} s"
            )
            continue
        why = _fits(float(value), reg_type, scale)
        if why is not None:
            problems.append(f"{where}: {why}")
            continue
        out.append((float(t), float(value)))
    if not problems and out[-1][0] <= out[0][0]:
        problems.append(f"{path}: the last point must come after the first (a script needs time)")
    return (tuple(out) if not problems else ()), problems


class _Validator:
    """Walks raw data, records errors with key paths, and builds the dataclasses."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, path: str, msg: str) -> None:
        self.errors.append(f"{path}: {msg}")

    def keys(
        self,
        data: Mapping[str, Any],
        allowed: tuple[str, ...],
        path: str,
        elsewhere: tuple[tuple[str, ...], str] = ((), ""),
    ) -> None:
        """Report keys not in ``allowed``; those in ``elsewhere[0]`` as only valid for the
        ``elsewhere[1]`` (a Modbus key on a serial sensor, say)."""
        other, where = elsewhere
        for key in data:
            if key in allowed:
                continue
            if key in other:
                self.err(f"{path}.{key}", f"only valid for {where}")
            else:
                self.err(
                    f"{path}.{key}" if path else str(key),
                    "unknown key" + _suggest(str(key), allowed),
                )

    def choice(
        self,
        data: Mapping[str, Any],
        key: str,
        choices: tuple[str, ...],
        path: str,
        default: str | None = None,
    ) -> str:
        value = data.get(key, default)
        if value is None:
            self.err(f"{path}.{key}", "required" + _suggest("", choices))
            return choices[0]
        if value not in choices:
            self.err(f"{path}.{key}", f"unknown {key} {value!r}" + _suggest(str(value), choices))
            return choices[0]
        return str(value)

    def integer(
        self,
        data: Mapping[str, Any],
        key: str,
        path: str,
        bounds: tuple[int, int],
        default: int | None = None,
    ) -> int:
        lo, hi = bounds
        value = data.get(key, default)
        if value is None:
            self.err(f"{path}.{key}", "required")
            return lo
        if isinstance(value, bool) or not isinstance(value, int):
            self.err(f"{path}.{key}", f"must be an integer, got {value!r}")
            return lo
        if not lo <= value <= hi:
            self.err(f"{path}.{key}", f"must be between {lo} and {hi}, got {value}")
            return lo
        return value

    def number(self, data: Mapping[str, Any], key: str, path: str, default: float) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.err(f"{path}.{key}", f"must be a number, got {value!r}")
            return default
        return float(value)

    def config(self, data: object, source: str | None) -> SimConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(["top level must be a mapping with a 'devices' list"], source)
        self.keys(data, _TOP_KEYS, "")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            self.err("seed", f"must be an integer, got {seed!r}")
            seed = None
        raw_devices = data.get("devices")
        raw_cameras = data.get("cameras")
        devices: list[DeviceConfig | UartDeviceConfig] = []
        cameras: list[CameraConfig] = []
        if raw_cameras is not None and not isinstance(raw_cameras, list):
            self.err("cameras", "must be a list of cameras")
        elif raw_cameras:
            cameras = [self.camera(raw, f"cameras[{i}]") for i, raw in enumerate(raw_cameras)]
        if raw_devices is None and cameras:
            pass  # a simulator of cameras only
        elif not isinstance(raw_devices, list) or not raw_devices:
            self.err("devices", "must be a non-empty list of devices")
        else:
            for i, raw in enumerate(raw_devices):
                device = self.device(raw, f"devices[{i}]")
                if device is not None:
                    devices.append(device)
            self.cross_device(devices)
        self.cross_camera(devices, cameras)
        if self.errors:
            raise ConfigError(self.errors, source)
        return SimConfig(
            devices=tuple(d for d in devices if isinstance(d, DeviceConfig)),
            seed=seed,
            uart_devices=tuple(d for d in devices if isinstance(d, UartDeviceConfig)),
            cameras=tuple(cameras),
        )

    def camera(self, raw: object, path: str) -> CameraConfig:
        """A simulated IP camera. Returned even when invalid (defaults in place of the bad
        values), so the cross checks still see every camera at its index."""
        if not isinstance(raw, Mapping):
            self.err(path, "must be a mapping")
            return CameraConfig(id=f"<{path}>")
        self.keys(raw, _CAMERA_KEYS, path)
        cam_id = raw.get("id")
        if not isinstance(cam_id, str) or not cam_id.strip() or any(c.isspace() for c in cam_id):
            self.err(f"{path}.id", "required, a non-empty string without spaces")
            cam_id = f"<{path}>"
        port = self.integer(raw, "port", path, (0, 65535), default=0)
        width = self.integer(raw, "width", path, (32, 3840), default=640)
        height = self.integer(raw, "height", path, (32, 2160), default=360)
        for key, size in (("width", width), ("height", height)):
            if size % 2:
                self.err(f"{path}.{key}", f"must be even (H.264 4:2:0 needs it), got {size}")
        fps = self.integer(raw, "fps", path, (1, 30), default=5)
        quality = self.integer(raw, "quality", path, (1, 100), default=80)
        auth = self.choice(raw, "auth", CAMERA_AUTH, path, default="none")
        creds = {"username": "", "password": ""}
        auth_known = raw.get("auth", "none") in CAMERA_AUTH  # else credentials are moot
        for key in creds if auth_known else ():
            value = raw.get(key)
            if value is None:
                if auth != "none":
                    self.err(f"{path}.{key}", f"required with auth {auth}")
                continue
            if not isinstance(value, str) or not value:
                self.err(f"{path}.{key}", f"must be a non-empty string, got {value!r}")
            elif auth == "none":
                self.err(f"{path}.{key}", "only used with auth basic or digest")
            else:
                creds[key] = value
        if ":" in creds["username"]:
            self.err(f"{path}.username", "must not contain ':'")
        objects = self.integer(raw, "objects", path, (0, 20), default=3)
        seed = self.integer(raw, "seed", path, (0, 2**63 - 1), default=0)
        scene = self.choice(raw, "scene", CAMERA_SCENES, path, default="objects")
        if scene == "traffic" and "objects" in raw:
            self.err(f"{path}.objects", "only used with scene objects")
        base = TrafficSettings(width=width, height=height, seed=seed)
        traffic = base
        if "traffic" in raw and scene != "traffic":
            self.err(f"{path}.traffic", "only used with scene traffic")
        elif scene == "traffic":
            traffic, problems = traffic_settings(
                raw.get("traffic"), f"{path}.traffic", base, fixed=("width", "height", "seed")
            )
            self.errors.extend(problems)
        return CameraConfig(
            id=cam_id,
            port=port,
            width=width,
            height=height,
            fps=fps,
            quality=quality,
            auth=auth,
            username=creds["username"],
            password=creds["password"],
            objects=objects,
            seed=seed,
            scene=scene,
            traffic=traffic,
        )

    def cross_camera(
        self, devices: list[DeviceConfig | UartDeviceConfig], cameras: list[CameraConfig]
    ) -> None:
        """Camera ids unique among devices and cameras; fixed ports not used twice."""
        owners: dict[str, str] = {d.id: f"devices[{i}]" for i, d in enumerate(devices)}
        ports: dict[int, str] = {
            d.port: d.id for d in devices if isinstance(d, DeviceConfig) and d.port
        }
        for i, cam in enumerate(cameras):
            path = f"cameras[{i}]"
            if cam.id in owners:
                self.err(f"{path}.id", f"duplicate id {cam.id!r} (also {owners[cam.id]})")
            owners.setdefault(cam.id, path)
            if cam.port:
                if cam.port in ports:
                    self.err(
                        f"{path}.port", f"port {cam.port} is already used by {ports[cam.port]!r}"
                    )
                ports.setdefault(cam.port, cam.id)

    def device(self, raw: object, path: str) -> DeviceConfig | UartDeviceConfig | None:
        if not isinstance(raw, Mapping):
            self.err(path, "must be a mapping")
            return None
        if raw.get("transport") == "uart":
            return self.uart_device(raw, path)
        uart_only = tuple(k for k in _UART_KEYS if k not in _DEVICE_KEYS)
        self.keys(raw, _DEVICE_KEYS, path, (uart_only, "transport uart"))
        dev_id = raw.get("id")
        if not isinstance(dev_id, str) or not dev_id.strip():
            self.err(f"{path}.id", "required, a non-empty string")
            dev_id = f"<{path}>"
        transport = self.choice(raw, "transport", TRANSPORTS, path)
        unit = self.integer(raw, "unit", path, (1, 247))
        port = self.integer(raw, "port", path, (0, 65535), default=0)
        for key, allowed in (("bus", ("rtu", "rtu-tcp", "tcp")), ("link", ("rtu",))):
            if key in raw and transport not in allowed:
                self.err(f"{path}.{key}", f"only valid for transport {' or '.join(allowed)}")
            if key in raw and (not isinstance(raw[key], str) or not raw[key]):
                self.err(f"{path}.{key}", "must be a non-empty string")
        baudrate = raw.get("baudrate", 9600)
        if "baudrate" in raw and transport != "rtu":
            self.err(f"{path}.baudrate", "only valid for transport rtu")
        elif baudrate not in BAUDRATES:
            self.err(
                f"{path}.baudrate",
                f"must be one of {', '.join(map(str, BAUDRATES))}, got {baudrate!r}",
            )
            baudrate = 9600
        wire_time = raw.get("wire_time", False)
        if "wire_time" in raw and transport != "rtu":
            self.err(f"{path}.wire_time", "only valid for transport rtu")
        elif not isinstance(wire_time, bool):
            self.err(f"{path}.wire_time", f"must be true or false, got {wire_time!r}")
            wire_time = False
        needs_pause_s = self.number(raw, "needs_pause_s", path, 0.0)
        if "needs_pause_s" in raw and transport != "rtu":
            self.err(f"{path}.needs_pause_s", "only valid for transport rtu")
        if needs_pause_s < 0:
            self.err(f"{path}.needs_pause_s", "must not be negative")
        pipelining = raw.get("pipelining", True)
        if "pipelining" in raw and transport != "tcp":
            self.err(f"{path}.pipelining", "only valid for transport tcp")
        elif not isinstance(pipelining, bool):
            self.err(f"{path}.pipelining", f"must be true or false, got {pipelining!r}")
            pipelining = True
        if "port" in raw and transport not in ("tcp", "rtu-tcp"):
            self.err(f"{path}.port", "only valid for transport tcp or rtu-tcp")
        fill_gaps = raw.get("fill_gaps", True)
        if not isinstance(fill_gaps, bool):
            self.err(f"{path}.fill_gaps", f"must be true or false, got {fill_gaps!r}")
            fill_gaps = True
        fault = self.choice(raw, "fault", FAULT_MODES, path, default="none")
        fault_code = self.integer(raw, "fault_code", path, (1, 255), default=4)
        delay_s = self.number(raw, "delay_s", path, 2.0)
        if delay_s < 0:
            self.err(f"{path}.delay_s", "must not be negative")
        registers: list[RegisterConfig] = []
        raw_regs = raw.get("registers")
        if "profile" in raw:
            from_profile = self.profile(raw["profile"], f"{path}.profile")
            raw_regs = from_profile + (raw_regs if isinstance(raw_regs, list) else [])
        if not isinstance(raw_regs, list) or not raw_regs:
            self.err(f"{path}.registers", "must be a non-empty list of registers")
        else:
            for j, raw_reg in enumerate(raw_regs):
                reg = self.register(raw_reg, f"{path}.registers[{j}]")
                if reg is not None:
                    registers.append(reg)
            self.overlaps(registers, f"{path}.registers")
        return DeviceConfig(
            id=dev_id,
            transport=transport,
            unit=unit,
            registers=tuple(registers),
            bus=raw.get("bus"),
            link=raw.get("link") if transport == "rtu" else None,
            port=port,
            fill_gaps=fill_gaps,
            fault=fault,
            fault_code=fault_code,
            delay_s=delay_s,
            baudrate=baudrate,
            wire_time=wire_time,
            needs_pause_s=needs_pause_s,
            pipelining=pipelining,
        )

    def uart_device(self, raw: Mapping[str, Any], path: str) -> UartDeviceConfig:
        """A serial sensor (``transport: uart``): its protocol and that protocol's options.
        Like a Modbus device it is returned even when invalid (with defaults in place of
        the bad values), so the cross-device rules still see every device at its index."""
        modbus_only = tuple(k for k in _DEVICE_KEYS if k not in _UART_KEYS)
        self.keys(raw, _UART_KEYS, path, (modbus_only, "transport rtu, tcp or rtu-tcp"))
        dev_id = raw.get("id")
        if not isinstance(dev_id, str) or not dev_id.strip():
            self.err(f"{path}.id", "required, a non-empty string")
            dev_id = f"<{path}>"
        protocol = self.choice(raw, "protocol", UART_PROTOCOLS, path)
        link = raw.get("link")
        if "link" in raw and (not isinstance(link, str) or not link):
            self.err(f"{path}.link", "must be a non-empty string")
            link = None
        interval_s = self.number(raw, "interval_s", path, 1.0)
        if not 0.001 <= interval_s <= 86400:
            self.err(f"{path}.interval_s", f"must be between 0.001 and 86400, got {interval_s}")
        fault = self.choice(raw, "fault", UART_FAULT_MODES, path, default="none")
        for keys, owner in ((_NMEA_KEYS, "nmea"), (_LINE_KEYS, "line")):
            for key in keys:
                if key in raw and protocol != owner:
                    self.err(f"{path}.{key}", f"only valid for protocol {owner}")
        values = self.uart_values(raw.get("values", {}), protocol, f"{path}.values")
        talker = raw.get("talker", "GP")
        if not isinstance(talker, str) or not re.fullmatch(r"[A-Z]{2}", talker):
            self.err(f"{path}.talker", f"must be two capital letters like GP or GN, got {talker!r}")
            talker = "GP"
        fix = raw.get("fix", True)
        if not isinstance(fix, bool):
            self.err(f"{path}.fix", f"must be true or false, got {fix!r}")
            fix = True
        position = self.position(raw.get("position", [16.0544, 108.2022, 12.5]), path)
        clock_offset_s = self.number(raw, "clock_offset_s", path, 0.0)
        line_ending = self.choice(raw, "line_ending", LINE_ENDINGS, path, default="\n")
        line_format = raw.get("line_format", DEFAULT_LINE_FORMAT)
        if protocol == "line" and not self.line_format(line_format, values, f"{path}.line_format"):
            line_format = DEFAULT_LINE_FORMAT
        return UartDeviceConfig(
            id=dev_id,
            protocol=protocol,
            link=link,
            interval_s=interval_s,
            fault=fault,
            values=values,
            talker=talker,
            fix=fix,
            position=position,
            clock_offset_s=clock_offset_s,
            line_format=line_format,
            line_ending=line_ending,
        )

    def uart_values(self, raw: object, protocol: str, path: str) -> Mapping[str, tuple[float, ...]]:
        """``{metric: [value, ...]}``: metrics the protocol carries, values that fit the wire."""
        if not isinstance(raw, Mapping):
            self.err(path, f"must be a mapping of metric to a list of values, got {raw!r}")
            return MappingProxyType({})
        known = UART_METRICS.get(protocol, {})
        out: dict[str, tuple[float, ...]] = {}
        for metric, seq in raw.items():
            where = f"{path}.{metric}"
            if protocol == "line":
                if not isinstance(metric, str) or not _IDENTIFIER.fullmatch(metric):
                    self.err(where, "a metric name must be an identifier like 'pressure'")
                    continue
                lo, hi, integer = -math.inf, math.inf, False
            elif metric not in known:
                suggestion = _suggest(str(metric), tuple(known))
                self.err(where, f"unknown metric for {protocol}{suggestion}")
                continue
            else:
                lo, hi, integer = known[metric]
            if not isinstance(seq, list) or not seq:
                self.err(where, "must be a non-empty list of numbers")
                continue
            ok = True
            for k, value in enumerate(seq):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    self.err(f"{where}[{k}]", f"must be a number, got {value!r}")
                elif not math.isfinite(value) or not lo <= value <= hi:
                    self.err(f"{where}[{k}]", f"must be between {lo:g} and {hi:g}, got {value}")
                elif integer and value != int(value):
                    self.err(f"{where}[{k}]", f"{metric} is a whole number, got {value}")
                else:
                    continue
                ok = False
            if ok:
                out[str(metric)] = tuple(float(v) for v in seq)
        return MappingProxyType(out)

    def position(self, raw: object, path: str) -> tuple[float, float, float]:
        """``[latitude, longitude, altitude_m]`` in degrees and metres."""
        if (
            not isinstance(raw, list)
            or len(raw) != 3
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in raw)
        ):
            self.err(f"{path}.position", f"must be [latitude, longitude, altitude_m], got {raw!r}")
            return (0.0, 0.0, 0.0)
        lat, lon, alt = (float(v) for v in raw)
        if not -90 <= lat <= 90:
            self.err(f"{path}.position", f"latitude must be between -90 and 90, got {lat}")
        if not -180 <= lon <= 180:
            self.err(f"{path}.position", f"longitude must be between -180 and 180, got {lon}")
        if not -1000 <= alt <= 99999:
            self.err(f"{path}.position", f"altitude must be between -1000 and 99999 m, got {alt}")
        return (lat, lon, alt)

    def line_format(self, fmt: object, values: Mapping[str, tuple[float, ...]], path: str) -> bool:
        """The format string names only metrics the line sensor has, as plain identifiers.
        True if it is valid."""
        if not isinstance(fmt, str) or not fmt:
            self.err(path, f"must be a non-empty format string, got {fmt!r}")
            return False
        sample = {"temperature": 0.0, "humidity": 0.0, **{m: v[0] for m, v in values.items()}}
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None]
            for name in fields:
                if not _IDENTIFIER.fullmatch(name):
                    self.err(path, f"field {{{name}}} must name a metric, like {{temperature}}")
                    return False
                if name not in sample:
                    self.err(
                        path,
                        f"unknown metric {{{name}}}; add it to values, or use one of: "
                        + ", ".join(sample),
                    )
                    return False
            text = fmt.format(**sample)
        except (ValueError, IndexError) as err:
            self.err(path, f"invalid format string: {err}")
            return False
        if "\n" in text or "\r" in text:
            self.err(path, "must not contain a line break (line_ending adds one)")
            return False
        return True

    def profile(self, name: object, path: str) -> list[dict[str, Any]]:
        """The register map of one of tepi's device profiles, played as its ``sim`` hints say
        (a kind and a value; by default a constant 0)."""
        profiles = profile_dir()
        if profiles is None:
            self.err(path, "device profiles come from tepi, which is not installed here")
            return []
        known = sorted(p.stem for p in profiles.glob("*.yaml"))
        if not isinstance(name, str) or name not in known:
            self.err(path, f"unknown profile {name!r}{_suggest(str(name), tuple(known))}")
            return []
        data = yaml.safe_load((profiles / f"{name}.yaml").read_text())
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, int]] = set()
        for reg in data.get("registers", []):
            table = reg.get("table", "holding")
            if (table, reg["address"]) in seen:
                continue  # two bits of one register: play the register once
            seen.add((table, reg["address"]))
            kind = reg.get("type", "uint16") if "bit" not in reg else "uint16"
            if kind not in TYPES:
                self.err(path, f"profile {name}: {reg['name']} is {kind}, which is not simulated")
                continue
            sim = reg.get("sim", {})
            entry: dict[str, Any] = {
                "address": reg["address"],
                "table": table,
                "kind": sim.get("kind", "constant"),
                "type": kind,
            }
            if entry["kind"] == "constant":
                entry["value"] = sim.get("value", 0)
            order = (
                reg.get("byte_order")
                or {"big": "ABCD", "little": "CDAB"}[reg.get("word_order", "big")]
            )
            if order not in ("ABCD", "CDAB"):
                self.err(path, f"profile {name}: byte order {order} is not simulated")
                continue
            entry["word_order"] = "big" if order == "ABCD" else "little"
            if kind != "float32" and "scale" in reg:
                entry["scale"] = reg["scale"]
            out.append(entry)
        return out

    def register(self, raw: object, path: str) -> RegisterConfig | None:
        if not isinstance(raw, Mapping):
            self.err(path, "must be a mapping")
            return None
        before = len(self.errors)
        self.keys(raw, _REGISTER_KEYS, path)
        address = self.integer(raw, "address", path, (0, 65535))
        table = self.choice(raw, "table", TABLES, path, default="holding")
        kind = self.choice(raw, "kind", KINDS, path)
        is_bit = table in BIT_TABLES
        if is_bit:
            for key in ("type", "word_order", "scale"):
                if key in raw:
                    self.err(f"{path}.{key}", f"not used for table '{table}' (bits are bool)")
            if kind not in BIT_KINDS:
                self.err(
                    f"{path}.kind",
                    f"kind '{kind}' needs a register table; bits support {', '.join(BIT_KINDS)}",
                )
            reg_type, word_order, scale = "uint16", "big", 1.0
        else:
            reg_type = self.choice(raw, "type", TYPES, path, default="uint16")
            word_order = self.choice(raw, "word_order", WORD_ORDERS, path, default="big")
            scale = self.number(raw, "scale", path, 1.0)
            if scale <= 0:
                self.err(f"{path}.scale", f"must be positive, got {scale}")
            if reg_type == "float32" and "scale" in raw:
                self.err(
                    f"{path}.scale", "not used with float32 (the physical value is stored directly)"
                )
            if kind == "counter" and reg_type not in ("uint16", "uint32"):
                self.err(f"{path}.type", f"a counter must be uint16 or uint32, got '{reg_type}'")
            if kind == "counter" and scale != 1.0:
                self.err(f"{path}.scale", "a counter has no scale")
        if kind == "output" and table not in WRITABLE_TABLES:
            self.err(
                f"{path}.kind",
                f"kind 'output' needs a table a client can write: {', '.join(WRITABLE_TABLES)}",
            )
        if reg_type in ("int32", "uint32", "float32") and address == 65535:
            self.err(
                f"{path}.address", "a 32-bit register needs two words; 65535 is the last address"
            )
        value = raw.get("value")
        if kind in ("constant", "output") and (kind == "constant" or value is not None):
            if value is None:
                self.err(f"{path}.value", "required for kind 'constant'")
            elif not isinstance(value, int | float) or (isinstance(value, bool) and not is_bit):
                # A bool is a number to Python; only a bit takes true or false.
                self.err(f"{path}.value", f"must be a number, got {value!r}")
            elif not is_bit and reg_type in INT_RANGES and scale > 0:
                lo, hi = INT_RANGES[reg_type]
                if not lo <= round(value / scale) <= hi:
                    self.err(f"{path}.value", f"{value} / scale {scale} does not fit {reg_type}")
        elif "value" in raw:
            self.err(f"{path}.value", "only used with kind 'constant' or 'output'")
        points: tuple[tuple[float, float], ...] = ()
        if kind == "script":
            if "points" not in raw:
                self.err(f"{path}.points", "required for kind 'script': [[seconds, value], ...]")
            elif scale > 0:
                points, problems = parse_script(raw["points"], reg_type, scale, f"{path}.points")
                self.errors.extend(problems)
        elif "points" in raw:
            self.err(f"{path}.points", "only used with kind 'script'")
        loop = raw.get("loop", False)
        if "loop" in raw and kind != "script":
            self.err(f"{path}.loop", "only used with kind 'script'")
        elif not isinstance(loop, bool):
            self.err(f"{path}.loop", f"must be true or false, got {loop!r}")
            loop = False
        if len(self.errors) != before:
            return None
        return RegisterConfig(
            address=address,
            table=table,
            kind=kind,
            type=reg_type,
            word_order=word_order,
            scale=scale,
            value=float(value) if value is not None else None,
            points=points,
            loop=loop,
        )

    def overlaps(self, registers: list[RegisterConfig], path: str) -> None:
        owner: dict[tuple[str, int], int] = {}
        for j, reg in enumerate(registers):
            for offset in range(reg.width):
                key = (reg.table, reg.address + offset)
                if key in owner:
                    self.err(
                        f"{path}[{j}].address",
                        f"{reg.table} address {reg.address + offset} is already used by "
                        f"{path}[{owner[key]}]",
                    )
                    break
                owner[key] = j

    def cross_device(self, devices: list[DeviceConfig | UartDeviceConfig]) -> None:
        seen_ids: dict[str, int] = {}
        bus_units: dict[tuple[str, str, int], str] = {}
        ports: dict[int, str] = {}
        link_bus: dict[str, str] = {}
        gateway_pipelining: dict[str, tuple[bool, str]] = {}
        for i, dev in enumerate(devices):
            path = f"devices[{i}]"
            if dev.id in seen_ids:
                self.err(
                    f"{path}.id", f"duplicate id {dev.id!r} (also devices[{seen_ids[dev.id]}])"
                )
            seen_ids.setdefault(dev.id, i)
            if isinstance(dev, UartDeviceConfig):
                # Every serial sensor has a pty of its own, so its link is its own too.
                own = f"<uart:{dev.id}>"
                if dev.link is not None and link_bus.setdefault(dev.link, own) != own:
                    self.err(f"{path}.link", f"{dev.link!r} is already the link of another pty")
                continue
            if dev.transport in ("rtu", "rtu-tcp") or dev.bus is not None:
                bus = dev.bus or f"<own:{dev.id}>"
                if (dev.transport, bus, dev.unit) in bus_units:
                    self.err(
                        f"{path}.unit",
                        f"unit {dev.unit} is already used on bus {bus!r} "
                        f"by {bus_units[dev.transport, bus, dev.unit]!r}",
                    )
                bus_units.setdefault((dev.transport, bus, dev.unit), dev.id)
                if dev.transport == "tcp":
                    first, by = gateway_pipelining.setdefault(bus, (dev.pipelining, dev.id))
                    if dev.pipelining != first:
                        self.err(
                            f"{path}.pipelining",
                            f"gateway {bus!r} has pipelining: {str(first).lower()} (from "
                            f"{by!r}): every unit behind one gateway shares its behaviour",
                        )
                if dev.link is not None:
                    other = link_bus.setdefault(dev.link, bus)
                    if other != bus:
                        self.err(f"{path}.link", f"{dev.link!r} is already the link of another pty")
            elif dev.port:
                if dev.port in ports:
                    self.err(
                        f"{path}.port", f"port {dev.port} is already used by {ports[dev.port]!r}"
                    )
                ports.setdefault(dev.port, dev.id)
