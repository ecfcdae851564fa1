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
    decode: Literal["keyframes", "all"] = Field(
        default="keyframes",
        description="For source stream: decode only key frames (health needs no more), or "
        "every frame.",
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
