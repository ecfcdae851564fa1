"""Where a camera's frames come from: a JPEG snapshot URL, an MJPEG stream, or an H.264 stream.

Three sources, one interface: ``await open()``, ``await grab() -> Frame`` once per poll (the
agent schedules, a source never does), ``await aclose()``; each is an async context manager
and has ``counters()`` for the driver's health.

- :class:`SnapshotSource` fetches one JPEG per ``grab()`` over HTTP(S), on one aiohttp session
  (keep-alive). The whole grab, authentication round trip included, is bounded by ``timeout``.
- :class:`MjpegSource` keeps a ``multipart/x-mixed-replace`` stream open in an asyncio task
  started by ``open()``; it parses the parts (:class:`MultipartParser`, bounded), keeps only the
  latest JPEG and reconnects with backoff. ``grab()`` returns the latest frame not yet grabbed.
- :class:`StreamSource` reads RTSP or HTTP H.264 with PyAV in a worker thread of its own (it
  owns no event loop). The thread demuxes every packet (counted for fps), decodes only the
  keyframes by default, converts to a BGR array and leaves it in a lock-protected slot that
  holds only the latest frame; it reconnects with backoff and stops on a flag (its reads are
  bounded by ``timeout``, so it ends within about that after ``aclose()``).

An error a background reader hits is kept and raised, classified, by the next ``grab()`` that
finds no newer frame; while a stream is down (waiting out its reconnect backoff) every grab
raises the error that took it down, at once, so a poll reads ``auth_failed`` or ``connection
refused`` rather than a timeout. Backoff: 1 s doubling to 30 s, back to 1 s after a connection
that gave a frame; 300 s after refused credentials (a camera locks an account).

Errors are tepi's: :class:`CameraAuthFailed` (``auth_failed``);
:class:`~tepi.core.errors.DeviceUnavailable`: ``timeout``, ``connection refused``, ``dns``,
``tls``, ``unreachable``, ``disconnected``, ``connect failed``, ``http <status>`` (a redirect
too: not followed), ``stream ended``, ``stream error``, ``no keyframe``, ``http 4xx``/``5xx``
(streams); :class:`~tepi.core.errors.ProtocolError`: ``not a JPEG``, ``truncated JPEG``,
``too large``, ``not MJPEG``, ``bad multipart``, ``bad http``, ``bad auth challenge``, ``bad
stream``. No message carries a password, an Authorization header or a URL's userinfo or
query (see :func:`redact`).

Authentication (HTTP sources): ``auth="auto"`` sends nothing until the camera asks; it answers
a Digest challenge (aiohttp's ``DigestAuthMiddleware``, preferred when offered), and answers
Basic only when the camera asks for Basic and the URL is ``https`` (auto never sends Basic in
clear); it keeps the scheme that worked. ``"basic"`` sends Basic always (even over http: asked
for explicitly); ``"digest"`` answers Digest only. A refused challenge-response is one failed
login: the grab raises :class:`CameraAuthFailed` and sends nothing more (a camera locks an
account after a few), and the next grab starts without a stale challenge. ``https`` always
verifies the certificate (``ca_file`` for a private CA) and never falls back to plaintext;
redirects are not followed (one could lead to http).

This module imports neither numpy, OpenCV nor PyAV: an agent without cameras never loads them.
"""

from __future__ import annotations

from typing import Any, Literal

from tepi.drivers.camera.mjpeg import MjpegSource, MultipartParser
from tepi.drivers.camera.sourcebase import (
    AuthMode,
    CameraAuthFailed,
    Frame,
    SnapshotSource,
    camera_time,
    redact,
)
from tepi.drivers.camera.stream import StreamSource

__all__ = [
    "AuthMode",
    "CameraAuthFailed",
    "Frame",
    "MjpegSource",
    "MultipartParser",
    "SnapshotSource",
    "Source",
    "StreamSource",
    "camera_time",
    "make_source",
    "redact",
]

Source = SnapshotSource | MjpegSource | StreamSource


def make_source(kind: Literal["snapshot", "mjpeg", "stream"], url: str, **kw: Any) -> Source:
    """A source of ``kind`` for ``url``; ``kw`` are that source's keyword arguments."""
    if kind == "snapshot":
        return SnapshotSource(url, **kw)
    if kind == "mjpeg":
        return MjpegSource(url, **kw)
    if kind == "stream":
        return StreamSource(url, **kw)
    raise ValueError(f"camera source {kind!r}: snapshot, mjpeg or stream")
