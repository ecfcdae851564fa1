"""Config model for IP cameras (``driver: camera``) and the camera profiles.

A profile (``profile: hikvision``) is a YAML file in ``profiles/``: the vendor's URL for a
snapshot, an MJPEG stream and an H.264 stream, with ``{host}`` where the camera's address goes,
and ``defaults`` for device keys (``auth``). ``url`` set on the device wins over the profile's.
"""

from __future__ import annotations

import difflib
import os
from functools import cache
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from tepi.core.secrets import resolve_credential
from tepi.core.units import Duration
from tepi.drivers.base import DriverConfig

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
SOURCES = ("snapshot", "mjpeg", "stream")
Source = Literal["snapshot", "mjpeg", "stream"]


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


@cache
def load_profile(name: str) -> dict[str, Any]:
    """The profile as written; ValueError naming the known ones."""
    import yaml

    path = PROFILE_DIR / f"{name}.yaml"
    if "/" in name or not path.is_file():
        known = profile_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown camera profile {name!r}{hint}; known: {', '.join(known)}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"camera profile {name!r} ({path}) is not a mapping")  # noqa: TRY004
    return data


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraChecks(_Model):
    """Thresholds of the image health checks (docs/cameras.md#health says what each
    catches). The checks run on the image decoded at 1/4 or 1/8 scale, masks applied."""

    black_level: float = Field(
        default=16.0,
        ge=0,
        le=255,
        description="black: mean brightness (0-255) below this, with almost no contrast: a "
        "dead sensor, a cut video cable, a camera at night without IR.",
    )
    frozen_polls: int = Field(
        default=3,
        ge=2,
        le=1000,
        description="frozen: the same picture (no sensor noise at all) this many polls in a "
        "row: an encoder or a firmware hung, serving its last frame.",
    )
    tamper_polls: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="covered_or_moved and blurred: the change must last this many polls, so "
        "a bus passing in front of the lens does not count.",
    )
    tamper_similarity: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="covered_or_moved: the scene's structure (edges) matches the learned "
        "reference less than this (0-1): a covered lens, a camera turned or knocked.",
    )
    tamper_relearn: Duration = Field(
        default=600.0,
        gt=0,
        description="After covered_or_moved has held this long, the new view becomes the "
        "reference (a camera moved on purpose stops alarming).",
    )
    blur_ratio: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="blurred: sharpness below this share of the learned normal sharpness: "
        "focus lost, a fogged or dirty dome, water on the lens.",
    )
    clock_drift_max: Duration = Field(
        default=5.0,
        gt=0,
        description="Warn (reason clock_drift) when the camera's clock is off by more than "
        "this: its own timestamps and recordings would not match the IOC's.",
    )


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"
PointXY = tuple[float, float]


def _check_points(points: list[PointXY] | tuple[PointXY, ...], what: str) -> None:
    for x, y in points:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(
                f"{what}: point [{x}, {y}] is outside 0..1 (points are fractions of the "
                "image's width and height, 0,0 at the top left)"
            )


class CountLineConfig(_Model):
    """A counting line across a lane (docs/vision.md#lines)."""

    name: str = Field(
        pattern=_NAME,
        description="The line's name, in its metrics (count.NAME.in): letters, digits, _ or -.",
    )
    points: tuple[PointXY, PointXY] = Field(
        description="[[x, y], [x, y]]: the line from its first point to its second, in 0..1 "
        "of the image. Crossing from the left of this arrow to its right (as seen on the "
        "image) counts in, the other way out.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        _check_points(self.points, f"line {self.name}")
        if self.points[0] == self.points[1]:
            raise ValueError(f"line {self.name}: its two points are the same")
        return self


class ZoneConfig(_Model):
    """A polygon zone: motion, occupancy, and with a stop line the queue length."""

    name: str = Field(
        pattern=_NAME,
        description="The zone's name, in its metrics (occupancy.NAME): letters, digits, _ or -.",
    )
    polygon: list[PointXY] = Field(
        description="The zone: at least 3 [x, y] points in 0..1 of the image.",
    )
    stop_line: tuple[PointXY, PointXY] | None = Field(
        default=None,
        description="[[x, y], [x, y]]: where the queue starts (the stop line of the lane the "
        "zone covers). With length_m, the zone reports queue_length.",
    )
    length_m: float | None = Field(
        default=None,
        gt=0,
        le=10000,
        description="The real length in metres from the stop line to the zone's far end "
        "(measured along the lane): the scale of queue_length.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(self.polygon) < 3:
            raise ValueError(f"zone {self.name}: a polygon needs at least 3 points")
        _check_points(self.polygon, f"zone {self.name}")
        if self.stop_line is not None:
            _check_points(self.stop_line, f"zone {self.name} stop_line")
            if self.stop_line[0] == self.stop_line[1]:
                raise ValueError(f"zone {self.name}: the stop line's two points are the same")
        if (self.stop_line is None) != (self.length_m is None):
            raise ValueError(
                f"zone {self.name}: queue_length needs both stop_line and length_m (set both, "
                "or neither)"
            )
        return self


class SizeClassConfig(_Model):
    """A class of object by its size on the image (without a detector)."""

    name: str = Field(
        pattern=_NAME,
        description="The class, in the count metrics (count.LINE.in.NAME), e.g. two_wheeler.",
    )
    max_area: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Objects whose box covers at most this share of the image (0-1) get this "
        "class; the classes are tried from the smallest. null: the largest class.",
    )


class DetectorConfig(_Model):
    """An ONNX object detector run on some frames (docs/vision.md#the-detector)."""

    model: Path = Field(description="The .onnx model file. tepi ships and downloads none.")
    format: Literal["auto", "yolo", "ssd"] = Field(
        default="auto",
        description="The model's outputs: yolo (v5 or v8 layout), ssd, or auto (from their "
        "shapes).",
    )
    labels: list[str] | Path = Field(
        description="The model's class names in order, or a file with one per line.",
    )
    classes: dict[str, str] = Field(
        default_factory=lambda: {
            "person": "person",
            "bicycle": "two_wheeler",
            "motorcycle": "two_wheeler",
            "car": "car",
            "bus": "bus_truck",
            "truck": "bus_truck",
        },
        description="The model's labels to tepi's classes; labels not listed are ignored.",
    )
    score: float = Field(
        default=0.4, gt=0, lt=1, description="Detections scoring less are dropped (0-1)."
    )
    iou: float = Field(
        default=0.45,
        gt=0,
        lt=1,
        description="Non-max suppression: of two boxes of one class overlapping more than "
        "this (intersection over union), the weaker is dropped.",
    )
    interval: Duration = Field(
        default=1.0,
        gt=0,
        description="Run the detector on one analysed frame this often; between runs the "
        "tracker follows the objects by background subtraction.",
    )
    threads: int = Field(default=1, ge=1, le=8, description="CPU threads for the model.")
    input_size: tuple[int, int] = Field(
        default=(320, 320),
        description="[width, height] fed to a model whose input size is not fixed.",
    )
    resize: Literal["auto", "letterbox", "stretch"] = Field(
        default="auto",
        description="How a frame is fitted to the model's input: letterbox (as YOLO models "
        "are trained), stretch (as TF SSD models are), or auto (by the format).",
    )
    box_order: Literal["yxyx", "xyxy"] = Field(
        default="yxyx", description="The order of an SSD model's box coordinates."
    )
    channels: Literal["rgb", "bgr"] = Field(
        default="rgb", description="The colour order the model was trained on."
    )


class AnalyticsConfig(_Model):
    """Motion, counting and zones on the camera's frames (docs/vision.md)."""

    fps: float = Field(
        default=5.0,
        ge=0.1,
        le=30,
        description="Frames analysed a second (a stream or mjpeg source; a snapshot source "
        "is analysed once a poll). Frames over this rate are skipped evenly.",
    )
    width: int = Field(
        default=320,
        ge=64,
        le=1920,
        description="The analysis works on the frame scaled to this width (px).",
    )
    ignore: list[list[PointXY]] = Field(
        default_factory=list,
        description="Polygons where motion is ignored (trees, flags, a screen); unlike masks "
        "they are not blacked out in images.",
    )
    lines: list[CountLineConfig] = Field(
        default_factory=list, description="Counting lines; each gives count.NAME.in and .out."
    )
    zones: list[ZoneConfig] = Field(
        default_factory=list,
        description="Zones: motion, occupancy and (with a stop line) queue_length each.",
    )
    classes: list[SizeClassConfig] = Field(
        default_factory=list,
        description="Count by size class too (count.LINE.in.CLASS); e.g. two_wheeler up to "
        "0.004, car up to 0.03, bus_truck. With a detector, its classes are used.",
    )
    count_interval: Duration = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="Counts, occupancy and queue length are reported once per this interval.",
    )
    motion_off_delay: Duration = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="Motion goes off after this long without any.",
    )
    events: bool = Field(
        default=True,
        description="Object events (start, update, end) with images in the image buffer.",
    )
    event_zones: list[str] = Field(
        default_factory=list,
        description="Only objects that enter one of these zones give events (as Frigate's "
        "required_zones): a busy road's through traffic gives none. Empty: every object.",
    )
    min_area: float = Field(
        default=0.0004,
        gt=0,
        lt=1,
        description="The smallest object, as a share of the image (0-1).",
    )
    threshold: int = Field(
        default=15,
        ge=1,
        le=255,
        description="How far a pixel must differ from the background to count: levels "
        "(0-255) averaged over its colour channels, after the frame's light is matched to "
        "the background's.",
    )
    max_lost: Duration = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How long an object hidden (behind a pole, a bus) is followed before it "
        "is given up.",
    )
    detector: DetectorConfig | None = Field(
        default=None, description="An optional ONNX detector (docs/vision.md#the-detector)."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        for i, poly in enumerate(self.ignore):
            if len(poly) < 3:
                raise ValueError(f"ignore[{i}]: a polygon needs at least 3 points")
            _check_points(poly, f"ignore[{i}]")
        for what, names in (
            ("lines", [x.name for x in self.lines]),
            ("zones", [z.name for z in self.zones]),
            ("classes", [c.name for c in self.classes]),
        ):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{what}: {', '.join(twice)} named more than once")
        unknown = sorted(set(self.event_zones) - {z.name for z in self.zones})
        if unknown:
            raise ValueError(f"event_zones: no zone named {', '.join(unknown)} in zones")
        open_ended = [c.name for c in self.classes if c.max_area is None]
        if len(open_ended) > 1:
            raise ValueError(
                f"classes: only one class can have no max_area (the largest): {open_ended}"
            )
        areas = [c.max_area for c in self.classes if c.max_area is not None]
        if len(set(areas)) != len(areas):
            raise ValueError("classes: two classes have the same max_area")
        return self


class CameraConfig(DriverConfig):
    """An IP camera: health every ``poll_interval``, a snapshot every ``snapshot_interval``."""

    driver: Literal["camera"] = Field(description="camera: an IP camera (docs/cameras.md).")
    profile: str | None = Field(
        default=None,
        description="hikvision, dahua, axis or onvif: the vendor's URLs and defaults, so that "
        "host and credentials are all a camera needs. url wins over the profile's.",
    )
    host: str | None = Field(
        default=None,
        description="The camera's address (host or host:port), for the profile's URLs.",
    )
    url: str | None = Field(
        default=None,
        description="http(s):// snapshot or MJPEG URL, or rtsp(s):// H.264 stream. With a "
        "profile, the profile's URL for source is used when this is not set.",
    )
    source: Source | None = Field(
        default=None,
        description="snapshot (one JPEG a poll), mjpeg (a multipart JPEG stream) or stream "
        "(H.264 over RTSP or HTTP, decoded with PyAV). Default: stream for rtsp://, else "
        "snapshot.",
    )
    username: str | None = Field(default=None, description="Camera user name.")
    password_file: Path | None = Field(
        default=None,
        description="File holding the camera's password (a relative name is looked up in "
        "$CREDENTIALS_DIRECTORY). Never logged.",
    )
    password_env: str | None = Field(
        default=None, description="Environment variable holding the camera's password."
    )
    auth: Literal["auto", "basic", "digest"] = Field(
        default="auto",
        description="auto: what the camera asks for (Digest preferred; Basic only when it "
        "asks for Basic). A wrong password is tried once, then backs off (auth_retry).",
    )
    auth_retry: Duration = Field(
        default=300.0,
        gt=0,
        description="After a refused password, wait this long before trying again: cameras "
        "lock an account that keeps failing.",
    )
    ca_file: Path | None = Field(
        default=None, description="CA that signs an https:// camera's certificate."
    )
    timeout: Duration = Field(
        default=5.0, gt=0, description="Longest wait for a snapshot or a stream's frame."
    )
    poll_interval: Duration = Field(
        default=10.0, gt=0, description="How often health is checked (and a frame fetched)."
    )
    snapshot_interval: Duration | None = Field(
        default=300.0,
        gt=0,
        description="A snapshot is stored at the first poll this long after the last one; "
        "null: only on request or event.",
    )
    snapshot_width: int = Field(
        default=1280, ge=32, le=8192, description="Largest width of a stored snapshot (px)."
    )
    snapshot_height: int = Field(
        default=720, ge=32, le=8192, description="Largest height of a stored snapshot (px)."
    )
    snapshot_quality: int = Field(
        default=75, ge=10, le=100, description="JPEG quality of stored snapshots."
    )
    thumbnail_width: int | None = Field(
        default=320,
        ge=32,
        le=1920,
        description="Width of the thumbnail stored with each snapshot; null: none.",
    )
    decode: Literal["keyframes", "all"] | None = Field(
        default=None,
        description="For source stream: decode only key frames (health needs no more), or "
        "every frame. Default: all with analytics, else keyframes.",
    )
    transport: Literal["tcp", "udp"] = Field(
        default="tcp",
        description="For rtsp:// streams: the video inside the RTSP connection (tcp: through "
        "NAT and firewalls, no loss) or over udp.",
    )
    masks: list[list[tuple[float, float]]] = Field(
        default_factory=list,
        description="Privacy masks: polygons of [x, y] points in 0..1 of the image's width "
        "and height. Filled before any pixel is analysed, stored or sent.",
    )
    checks: CameraChecks = Field(
        default_factory=CameraChecks, description="Thresholds of the health checks."
    )
    analytics: AnalyticsConfig | None = Field(
        default=None,
        description="Motion, object events, counting lines and zones on this camera's frames "
        "(docs/vision.md). Off when not set.",
    )

    @model_validator(mode="before")
    @classmethod
    def _profile(cls, data: object) -> object:
        if not isinstance(data, dict) or data.get("profile") is None:
            return data
        prof = load_profile(str(data["profile"]))
        known = set(cls.model_fields)
        merged = {
            **{k: v for k, v in (prof.get("defaults") or {}).items() if k in known},
            **data,
        }
        if merged.get("url") is None:
            kind = merged.get("source") or "snapshot"
            template = prof.get(kind)
            if not template:
                offered = [s for s in SOURCES if prof.get(s)]
                raise ValueError(
                    f"profile {data['profile']!r} has no {kind} URL: set url"
                    + (f" (or source: {' or '.join(offered)})" if offered else "")
                )
            if merged.get("host") is None:
                raise ValueError(f"profile {data['profile']!r} needs host (the camera's address)")
            merged["url"] = str(template).format(host=merged["host"])
        return merged

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.url is None:
            raise ValueError("set url (or profile and host)")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https", "rtsp", "rtsps"):
            raise ValueError(
                f"url: the scheme must be http, https, rtsp or rtsps, not {parts.scheme or 'none'}"
            )
        if not parts.hostname:
            raise ValueError("url has no host")
        if parts.username or parts.password:
            raise ValueError(
                "url holds credentials: use username and password_file (a password in the "
                "config would end up in logs and backups)"
            )
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("set password_file or password_env, not both")
        if self.kind != "stream" and parts.scheme.startswith("rtsp"):
            raise ValueError(f"source {self.kind} needs an http(s):// url, not rtsp")
        if self.ca_file is not None and parts.scheme not in ("https", "rtsps"):
            raise ValueError("ca_file is set but the url is not https:// or rtsps://")
        if self.analytics is not None and self.kind == "stream" and self.decode == "keyframes":
            raise ValueError(
                "analytics needs every frame of the stream: remove decode: keyframes (with "
                "analytics the default is all)"
            )
        for i, poly in enumerate(self.masks):
            if len(poly) < 3:
                raise ValueError(f"masks[{i}]: a polygon needs at least 3 points")
            for x, y in poly:
                if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                    raise ValueError(
                        f"masks[{i}]: point [{x}, {y}] is outside 0..1 (points are fractions "
                        "of the image's width and height)"
                    )
        return self

    @property
    def decode_mode(self) -> Literal["keyframes", "all"]:
        if self.decode is not None:
            return self.decode
        return "all" if self.analytics is not None else "keyframes"

    @property
    def kind(self) -> Source:
        if self.source is not None:
            return self.source
        return "stream" if (self.url or "").startswith("rtsp") else "snapshot"

    def read_password(self, secrets_dir: Path | None = None) -> SecretStr | None:
        """The password from its file or variable; OSError/KeyError if missing."""
        if self.password_env is not None:
            return SecretStr(os.environ[self.password_env])
        if self.password_file is None:
            return None
        path = resolve_credential(self.password_file, secrets_dir)
        return SecretStr(path.read_text().strip("\r\n"))
