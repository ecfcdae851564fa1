"""The files tepi-switch (root) reads from and writes into the agent's directory
``{data_dir}/update/``, and its checks of them: the switch request the agent wrote
(:func:`parse_request`: every field checked, nothing else trusted) and :class:`AgentDir`, which
reaches that directory without ever following a link the agent may have planted there.
:mod:`tepi.gateway.switcher` is what acts on them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tepi.gateway.bundle import VERSION_RE

__all__ = [
    "BUNDLE_NAME",
    "CONFIRMED",
    "REQUEST",
    "STATUS",
    "TRIAL",
    "UPDATE_DIR",
    "AgentDir",
    "Request",
    "SwitchError",
    "parse_request",
    "venv_version",
    "write_json_durably",
]

# The names in {data_dir}/update/, shared with the agent's side (tepi.gateway.update).
UPDATE_DIR = "update"
REQUEST, TRIAL, CONFIRMED, STATUS = "request.json", "trial.json", "confirmed.json", "status.json"
MAX_JSON = 64 * 1024
_ID = re.compile(r"^[0-9a-f]{16}$")
BUNDLE_NAME = re.compile(r"^bundle-[0-9a-f]{16}\.tar\.gz$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VENV = re.compile(r"^venv-(?P<version>[^-/]+)-\d{8}T\d{6}Z(-\d+)?$")


class SwitchError(Exception):
    """A request that is not carried out; the message says why."""


@dataclass(frozen=True, slots=True)
class Request:
    """request.json, checked."""

    id: str
    bundle: str
    sha256: str
    version: str
    confirm_timeout: float
    devices: list[str] = field(default_factory=list)


def json_object(raw: bytes) -> dict[str, Any] | None:
    """A small JSON object from bytes nobody vouches for, or None."""
    if len(raw) > MAX_JSON:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def parse_request(raw: bytes) -> Request:
    """request.json's bytes as a :class:`Request`; SwitchError for anything else. It comes
    from the unprivileged agent: nothing in it is trusted beyond these checks."""
    if len(raw) > MAX_JSON:
        raise SwitchError("request.json is too large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SwitchError("request.json is not JSON") from None
    if not isinstance(data, dict):
        raise SwitchError("request.json is not an object")

    def text(name: str, pattern: re.Pattern[str]) -> str:
        value = data.get(name)
        if not isinstance(value, str) or not pattern.match(value):
            raise SwitchError(f"request.json: {name} is missing or invalid")
        return value

    timeout = data.get("confirm_timeout", 180)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise SwitchError("request.json: confirm_timeout is not a number")
    devices = data.get("devices", [])
    if not isinstance(devices, list) or len(devices) > 256:
        raise SwitchError("request.json: devices is not a list of at most 256")
    if not all(isinstance(d, str) and _DEVICE.match(d) for d in devices):
        raise SwitchError("request.json: devices holds something that is not a device id")
    return Request(
        id=text("id", _ID),
        bundle=text("bundle", BUNDLE_NAME),
        sha256=text("sha256", _SHA),
        version=text("version", VERSION_RE),
        # Clamped: the agent may ask for a short or a long trial, not for none or forever.
        confirm_timeout=180.0 if math.isnan(timeout) else min(max(float(timeout), 10.0), 3600.0),
        devices=list(devices),
    )


class AgentDir:
    """A directory of the agent's, reached without following links: every operation is
    relative to its descriptor, and no name in it is followed if it is a link."""

    def __init__(self, path: Path) -> None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fd = os.open(path.name, flags, dir_fd=parent)
        finally:
            os.close(parent)
        self.path = path

    def close(self) -> None:
        os.close(self.fd)

    def open_read(self, name: str) -> int:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.fd)

    def read(self, name: str, limit: int = MAX_JSON) -> bytes | None:
        try:
            fd = self.open_read(name)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read(limit + 1)

    def read_json(self, name: str) -> dict[str, Any] | None:
        raw = self.read(name)
        return None if raw is None else json_object(raw)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        tmp = f".{name}.{secrets.token_hex(6)}"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=self.fd
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(data, sort_keys=True).encode())
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        os.fsync(self.fd)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)


def write_json_durably(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(json.dumps(data, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def venv_version(name: str) -> str | None:
    m = _VENV.match(name)
    return m["version"] if m and VERSION_RE.match(m["version"]) else None
