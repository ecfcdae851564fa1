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

import asyncio
import contextlib
import errno
import logging
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import quote

import aiohttp
from aiohttp import hdrs
from yarl import URL

from tepi.core.errors import DeviceError, DeviceUnavailable, DriverFault, ProtocolError

if TYPE_CHECKING:
    from types import TracebackType

    import numpy as np
    import numpy.typing as npt

__all__ = [
    "AuthMode",
    "CameraAuthFailed",
    "Frame",
    "MjpegSource",
    "MultipartParser",
    "SnapshotSource",
    "Source",
    "StreamSource",
    "make_source",
    "redact",
]

log = logging.getLogger(__name__)

AuthMode = Literal["auto", "basic", "digest"]

MAX_BYTES = 8 * 1024 * 1024  # the largest JPEG (snapshot body or MJPEG part) accepted
MAX_PART_HEADERS = 8 * 1024  # the headers of one MJPEG part
BACKOFF_MIN = 1.0  # reconnect backoff of a stream: 1 s doubling ...
BACKOFF_MAX = 30.0  # ... to 30 s, back to 1 s once a connection gave a frame
AUTH_BACKOFF = 300.0  # a stream whose credentials were refused retries this seldom (lockout)
FPS_WINDOW = 5.0  # fps is measured over the frames of the last 5 s
_FPS_KEEP = 512  # arrival times kept for it (bounded: 100 fps over 5 s)
_JPEG_TYPES = ("image/jpeg", "image/jpg", "image/pjpeg", "application/octet-stream", "")
_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")


class CameraAuthFailed(DeviceUnavailable):
    """The camera refused the credentials (401/403 after they were sent), asked for them when
    none are configured, or asked for a scheme tepi will not answer (Basic over http in auto)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("auth_failed", detail)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame from a camera, as the source got it."""

    jpeg: bytes | None  # the camera's JPEG as sent (snapshot, MJPEG)
    image: npt.NDArray[np.uint8] | None  # a decoded BGR frame (streams)
    width: int | None  # known without decoding (streams); None for a JPEG
    height: int | None
    fetch_ms: float  # snapshot: request to last byte; stream: the frame's age at grab
    received: float  # time.time() when it was received (streams: decoded)
    camera_time: float | None  # the camera's clock (HTTP Date), UTC seconds; None if unknown
    fps: float | None  # streams: frames a second over the last ~5 s


def redact(url: str | URL) -> str:
    """The URL for a message or a log: no userinfo, no query (cameras put passwords in both:
    ``?usr=admin&pwd=...``), no fragment."""
    try:
        u = URL(url) if isinstance(url, str) else url
        if not u.absolute:
            return "<url>"
        shown = str(u.with_user(None).with_password(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<url>"
    return shown + ("?..." if u.raw_query_string else "")


def camera_time(date: str | None) -> float | None:
    """UTC seconds from an HTTP ``Date`` header; None if it is missing or not a date."""
    if not date:
        return None
    try:
        dt = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt.tzinfo is None:  # "-0000": UTC, by RFC 5322
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def _check_jpeg(body: bytes) -> None:
    if not body.startswith(_SOI):
        raise ProtocolError("not a JPEG", f"{len(body)} bytes, starting {body[:4].hex()}")
    if not body.rstrip(b"\r\n\x00 ").endswith(_EOI):
        raise ProtocolError("truncated JPEG", f"{len(body)} bytes, no end-of-image marker")


def _fps(times: deque[float], now: float, stamps: deque[float] | None = None) -> float | None:
    """Frames a second over the frames that arrived in the last FPS_WINDOW seconds: from
    their arrival times, or, given ``stamps`` (a stream's presentation times, one a frame),
    from those. A stream's own times: FFmpeg reads the first frames ahead while it opens a
    stream, and they come out of the demuxer together, which by arrival read as 70 fps on a
    5 fps stream for the first seconds of every connection."""
    first = next((i for i, t in enumerate(times) if t > now - FPS_WINDOW), len(times))
    span_of = list(times)[first:] if stamps is None else list(stamps)[first:]
    if len(span_of) < 2:
        return None
    span = max(span_of) - min(span_of)
    return (len(span_of) - 1) / span if span > 0 else None


@dataclass(slots=True)
class _Counters:
    requests: int = 0  # HTTP requests sent / stream connections opened
    bytes: int = 0  # bytes of image data received
    frames: int = 0  # frames received (snapshots, MJPEG parts, video packets demuxed)
    decoded: int = 0  # frames decoded (StreamSource)
    reconnects: int = 0  # a stream connected again after it dropped or failed
    auth_failures: int = 0
    errors: int = 0
    last_error: float = 0.0  # time.time() of the last error, 0.0 if none
    last_reason: str = ""  # its reason (not in counters(): a str)

    def failed(self, err: DeviceError) -> None:
        self.errors += 1
        self.last_error = time.time()
        self.last_reason = err.reason
        if isinstance(err, CameraAuthFailed):
            self.auth_failures += 1

    def as_dict(self) -> dict[str, int | float]:
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "frames": self.frames,
            "decoded": self.decoded,
            "reconnects": self.reconnects,
            "auth_failures": self.auth_failures,
            "errors": self.errors,
            "last_error": self.last_error,
        }


# ---- error classification ------------------------------------------------------------------


def _classify_os(err: OSError) -> tuple[str, str]:
    if isinstance(err, ConnectionRefusedError) or err.errno == errno.ECONNREFUSED:
        return "connection refused", ""
    if isinstance(err, TimeoutError) or err.errno == errno.ETIMEDOUT:
        return "timeout", ""
    if err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable", ""
    if isinstance(err, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "disconnected", ""
    name = errno.errorcode.get(err.errno or 0, type(err).__name__)
    return "connect failed", name


def _classify(err: BaseException, where: str, timeout: float) -> DeviceError:
    """An exception from aiohttp, ssl or the OS as tepi's error. Messages name the exception's
    type and the redacted URL, never ``str(err)`` of a connection error (it holds the host and
    port at most; aiohttp's never include credentials, but keep them short and stable)."""
    if isinstance(err, DeviceError):
        return err
    if isinstance(err, aiohttp.ClientConnectorCertificateError):
        return DeviceUnavailable("tls", f"{where}: certificate not trusted")
    if isinstance(err, aiohttp.ClientSSLError | ssl.SSLError):
        return DeviceUnavailable("tls", f"{where}: {type(err).__name__}")
    if isinstance(err, aiohttp.ClientConnectorDNSError):
        return DeviceUnavailable("dns", f"{where}: host name not resolved")
    if isinstance(err, TimeoutError):  # asyncio's, aiohttp's ServerTimeoutError, ConnectionTimeout
        return DeviceUnavailable("timeout", f"{where}: no answer in {timeout:g} s")
    if isinstance(err, aiohttp.ClientConnectorError):
        reason, name = _classify_os(err.os_error)
        return DeviceUnavailable(reason, f"{where}" + (f": {name}" if name else ""))
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return DeviceUnavailable("disconnected", f"{where}: the camera closed the connection")
    if isinstance(err, aiohttp.ClientPayloadError):
        return ProtocolError("truncated JPEG", f"{where}: the body ended early")
    if isinstance(err, aiohttp.ClientResponseError):
        return ProtocolError("bad http", f"{where}: {err.status} {type(err).__name__}")
    if isinstance(err, aiohttp.ClientOSError):
        reason, name = _classify_os(err)
        return DeviceUnavailable(reason, f"{where}" + (f": {name}" if name else ""))
    if type(err) is aiohttp.ClientError:  # DigestAuthMiddleware: a challenge it cannot answer
        return ProtocolError("bad auth challenge", f"{where}: {err}")
    if isinstance(err, aiohttp.ClientError):
        return DeviceUnavailable("http error", f"{where}: {type(err).__name__}")
    if isinstance(err, OSError):
        reason, name = _classify_os(err)
        return DeviceUnavailable(reason, f"{where}" + (f": {name}" if name else ""))
    assert isinstance(err, Exception)
    return DriverFault(err)


def _challenges(resp: aiohttp.ClientResponse) -> set[str]:
    """The auth schemes a 401 offers, lower case (``digest``, ``basic``)."""
    offered: set[str] = set()
    for value in resp.headers.getall(hdrs.WWW_AUTHENTICATE, ()):
        # A scheme is a token followed by a space or the end, at the start or after a comma.
        for m in re.finditer(r"(?:^|,)\s*([A-Za-z][\w-]*)(?=\s|$)", value):
            offered.add(m.group(1).lower())
    return offered


# ---- HTTP: one session, authentication, TLS ------------------------------------------------


class _Http:
    """One camera's aiohttp session and the auth state of ``auth`` (see the module)."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None,
        password: str | None,
        auth: AuthMode,
        timeout: float,
        ca_file: str | None,
        counters: _Counters,
    ) -> None:
        u = URL(url)
        if u.scheme not in ("http", "https") or not u.host:
            raise ValueError(f"camera url {redact(u)}: http:// or https:// with a host")
        if auth not in ("auto", "basic", "digest"):
            raise ValueError(f"auth {auth!r}: auto, basic or digest")
        if u.user is not None:  # credentials in the URL: taken out, never sent as aiohttp would
            if username is not None:
                raise ValueError(f"camera url {redact(u)}: credentials in the url and username")
            username, password = u.user, u.password or ""
        if username is not None and ":" in username:
            raise ValueError("camera username: ':' is not allowed (RFC 7617)")
        if ca_file is not None and u.scheme != "https":
            raise ValueError(f"ca_file is for https:// urls, not {redact(u)}")
        self.url = u.with_user(None).with_password(None)
        self.shown = redact(u)
        self.https = u.scheme == "https"
        self.username = username
        self.password = password if password is not None else ""
        self.auth = auth
        self.timeout = timeout
        self.ca_file = ca_file
        self.counters = counters
        self.session: aiohttp.ClientSession | None = None
        # auto: None until a scheme worked (or for good, if the camera asks for none)
        self.scheme: Literal["basic", "digest"] | None = None if auth == "auto" else auth
        self._digest: aiohttp.DigestAuthMiddleware | None = None

    def open(self) -> None:
        if self.session is not None:
            return
        ssl_ctx: ssl.SSLContext | bool = False
        if self.https:
            ssl_ctx = ssl.create_default_context(cafile=self.ca_file)
        connector = aiohttp.TCPConnector(limit=2, ssl=ssl_ctx, enable_cleanup_closed=False)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.timeout, sock_connect=self.timeout, sock_read=self.timeout
            ),
            headers={hdrs.USER_AGENT: "tepi"},
            trust_env=False,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def aclose(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()

    async def _counted(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        self.counters.requests += 1
        return await handler(request)

    def _digest_mw(self) -> aiohttp.DigestAuthMiddleware:
        if self._digest is None:
            self._digest = aiohttp.DigestAuthMiddleware(self.username or "", self.password)
        return self._digest

    async def _send(self, scheme: Literal["basic", "digest"] | None) -> aiohttp.ClientResponse:
        assert self.session is not None, "open() first"
        kw: dict[str, Any] = {}
        if scheme == "basic":
            basic = aiohttp.encode_basic_auth(self.username or "", self.password, encoding="utf-8")
            kw["headers"] = {hdrs.AUTHORIZATION: basic}
            mws: tuple[Any, ...] = (self._counted,)
        elif scheme == "digest" or (self.auth == "auto" and self.username is not None):
            # auto sends nothing until challenged: the middleware answers Digest only.
            mws = (self._digest_mw(), self._counted)
        else:
            mws = (self._counted,)
        return await self.session.get(self.url, allow_redirects=False, middlewares=mws, **kw)

    def _refused(self, resp: aiohttp.ClientResponse, what: str) -> CameraAuthFailed:
        self._digest = None  # the next grab starts with no stale challenge: one try, not two
        resp.release()
        return CameraAuthFailed(f"{self.shown}: {what}")

    async def get(self) -> aiohttp.ClientResponse:
        """A 2xx response (the caller releases it), after the auth the camera asks for."""
        resp = await self._send(self.scheme)
        if resp.status not in (401, 403):
            self._check_status(resp)
            if self.scheme is None and hdrs.AUTHORIZATION in resp.request_info.headers:
                self.scheme = "digest"  # auto: Digest worked, keep it
            return resp
        sent = hdrs.AUTHORIZATION in resp.request_info.headers
        if self.username is None:
            raise self._refused(resp, f"http {resp.status}: the camera asks for credentials")
        if sent:
            scheme = "digest" if self.scheme is None else self.scheme
            raise self._refused(resp, f"http {resp.status}: {scheme} credentials refused")
        if resp.status == 403:
            raise self._refused(resp, "http 403: forbidden")
        offered = _challenges(resp)
        if self.scheme == "digest":
            raise self._refused(resp, f"the camera offers {sorted(offered)}, auth is digest")
        if self.scheme is None and "basic" in offered:
            if not self.https:
                raise self._refused(
                    resp,
                    "the camera asks for Basic auth over plain http; auto never sends a "
                    "password in clear (use https, or set auth: basic to allow it)",
                )
            resp.release()
            self.scheme = "basic"
            resp = await self._send("basic")
            if resp.status in (401, 403):
                raise self._refused(resp, f"http {resp.status}: basic credentials refused")
            self._check_status(resp)
            return resp
        raise self._refused(resp, f"the camera asks for {sorted(offered) or 'no known scheme'}")

    def _check_status(self, resp: aiohttp.ClientResponse) -> None:
        if 200 <= resp.status < 300:
            return
        status = resp.status
        resp.release()
        if 300 <= status < 400:
            raise DeviceUnavailable(
                f"http {status}", f"{self.shown}: a redirect (not followed): set the url to it"
            )
        raise DeviceUnavailable(f"http {status}", self.shown)


def _content_type(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, str]]:
    """The media type, lower case, and its parameters (quotes removed)."""
    raw = resp.headers.get(hdrs.CONTENT_TYPE, "")
    kind, _, rest = raw.partition(";")
    params: dict[str, str] = {}
    for item in rest.split(";"):
        key, eq, value = item.partition("=")
        if eq:
            params[key.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


class _Base:
    """open/aclose as an async context manager."""

    async def open(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# ---- snapshots -----------------------------------------------------------------------------


class SnapshotSource(_Base):
    """One JPEG per ``grab()`` from a snapshot URL (see the module)."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        auth: AuthMode = "auto",
        timeout: float = 5.0,
        ca_file: str | None = None,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if timeout <= 0 or max_bytes <= 0:
            raise ValueError("timeout and max_bytes must be positive")
        self._counters = _Counters()
        self._http = _Http(
            url,
            username=username,
            password=password,
            auth=auth,
            timeout=timeout,
            ca_file=ca_file,
            counters=self._counters,
        )
        self.timeout = timeout
        self.max_bytes = max_bytes

    @property
    def url(self) -> str:
        """The URL, redacted: for messages."""
        return self._http.shown

    @property
    def last_reason(self) -> str:
        return self._counters.last_reason

    def counters(self) -> dict[str, int | float]:
        return self._counters.as_dict()

    async def open(self) -> None:
        self._http.open()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def grab(self) -> Frame:
        if self._http.session is None:
            raise RuntimeError("SnapshotSource.grab() before open()")
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._http.get()
                try:
                    body = await self._read(resp)
                finally:
                    resp.release()
        except Exception as err:
            e = _classify(err, self._http.shown, self.timeout)
            self._counters.failed(e)
            if e is err:
                raise
            if isinstance(e, DriverFault):
                raise e from err
            raise e from None  # never chain aiohttp's own message (it may hold a URL's query)
        fetch_ms = (time.monotonic() - start) * 1000.0
        self._counters.frames += 1
        return Frame(
            jpeg=body,
            image=None,
            width=None,
            height=None,
            fetch_ms=fetch_ms,
            received=time.time(),
            camera_time=camera_time(resp.headers.get(hdrs.DATE)),
            fps=None,
        )

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        kind, _ = _content_type(resp)
        if kind not in _JPEG_TYPES:
            raise ProtocolError("not a JPEG", f"{self._http.shown}: Content-Type {kind[:60]}")
        if resp.content_length is not None and resp.content_length > self.max_bytes:
            raise ProtocolError(
                "too large", f"{self._http.shown}: {resp.content_length} bytes > {self.max_bytes}"
            )
        buf = bytearray()
        async for chunk in resp.content.iter_any():
            buf += chunk
            self._counters.bytes += len(chunk)
            if len(buf) > self.max_bytes:
                resp.close()  # do not read the rest
                raise ProtocolError("too large", f"{self._http.shown}: over {self.max_bytes} bytes")
        body = bytes(buf)
        if resp.content_length is not None and len(body) != resp.content_length:
            raise ProtocolError(
                "truncated JPEG", f"{len(body)} of {resp.content_length} bytes"
            )  # pragma: no cover - aiohttp raises ClientPayloadError first
        _check_jpeg(body)
        return body


# ---- MJPEG ---------------------------------------------------------------------------------


class MultipartParser:
    """Splits a ``multipart/x-mixed-replace`` byte stream into its parts' bodies.

    Parts may carry a Content-Length (read exactly) or not (the body ends at the next
    delimiter line). A delimiter line is ``--boundary``; a boundary given with its dashes
    (``boundary=--frame`` then ``--frame`` lines, a common camera quirk) works too: a line is a
    delimiter if it holds only dashes before the boundary's name. What is buffered never
    exceeds ``max_part + max_headers`` and a bit; anything malformed raises ProtocolError
    (``too large`` for a part over ``max_part``, ``bad multipart`` otherwise), after which the
    parser is spent (the source reconnects).
    """

    _SEEK, _HEADERS, _BODY, _DONE = range(4)

    def __init__(
        self, boundary: str, max_part: int = MAX_BYTES, max_headers: int = MAX_PART_HEADERS
    ) -> None:
        name = boundary.strip().lstrip("-")
        if not name:
            raise ProtocolError("bad multipart", "empty boundary")
        self._token = b"--" + name.encode("latin-1", "replace")
        self.max_part = max_part
        self.max_headers = max_headers
        self._buf = bytearray()
        self._state = self._SEEK
        self._scan = 0  # where the next search for the token starts
        self._length: int | None = None
        self._garbage = 0  # bytes skipped while seeking a delimiter since the last part

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def bound(self) -> int:
        """The most this parser holds between two feeds."""
        return self.max_part + self.max_headers + len(self._token) + 4

    def feed(self, data: bytes) -> list[bytes]:
        """The bodies of the parts that ``data`` completed, in order."""
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._state == self._SEEK:
                if not self._seek():
                    break
            elif self._state == self._HEADERS:
                if not self._headers():
                    break
            elif self._state == self._BODY:
                part = self._body()
                if part is None:
                    break
                out.append(part)
            else:  # _DONE: the closing delimiter came; ignore what follows
                self._buf.clear()
                break
        return out

    def _delimiter_at(self, i: int) -> int | None:
        """Where the line holding the token at ``i`` starts, if it is a delimiter line."""
        start = self._buf.rfind(b"\n", 0, i) + 1
        if all(c == 0x2D for c in self._buf[start:i]):  # only dashes before the token
            return start
        return None

    def _seek(self) -> bool:
        buf = self._buf
        while True:
            i = buf.find(self._token, self._scan)
            if i < 0:
                keep = len(self._token) + 64  # a token cut by the chunk, and dashes before it
                if len(buf) > keep:
                    drop = len(buf) - keep
                    self._garbage += drop
                    del buf[:drop]
                self._scan = 0
                if self._garbage > self.max_part:
                    raise ProtocolError("bad multipart", "no boundary in the stream")
                return False
            start = self._delimiter_at(i)
            if start is None:
                self._scan = i + 1
                continue
            break
        self._garbage += start
        del buf[:start]  # what came before the delimiter line
        i -= start
        end = i + len(self._token)
        nl = buf.find(b"\n", end)
        if nl < 0:
            if len(buf) - i > self.max_headers:
                raise ProtocolError("bad multipart", "delimiter line too long")
            self._scan = i
            return False
        closing = buf[end : end + 2] == b"--"
        del buf[: nl + 1]
        self._scan = 0
        if closing:
            self._state = self._DONE
        else:
            self._state = self._HEADERS
            self._length = None
        return True

    def _headers(self) -> bool:
        buf = self._buf
        pos = 0
        length: int | None = None
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) > self.max_headers:
                    raise ProtocolError("bad multipart", "part headers too long")
                return False
            line = bytes(buf[pos:nl]).rstrip(b"\r")
            pos = nl + 1
            if pos > self.max_headers:
                raise ProtocolError("bad multipart", "part headers too long")
            if not line:
                break
            name, colon, value = line.partition(b":")
            if not colon:
                raise ProtocolError("bad multipart", "a part header without ':'")
            if name.strip().lower() == b"content-length":
                v = value.strip()
                if not v.isdigit() or len(v) > 12:
                    raise ProtocolError("bad multipart", "bad Content-Length")
                length = int(v)
                if length > self.max_part:
                    raise ProtocolError("too large", f"a part of {length} bytes > {self.max_part}")
        del buf[:pos]
        self._length = length
        self._state = self._BODY
        self._scan = 0
        return True

    def _body(self) -> bytes | None:
        buf = self._buf
        if self._length is not None:
            if len(buf) < self._length:
                return None
            part = bytes(buf[: self._length])
            del buf[: self._length]
        else:
            while True:
                i = buf.find(self._token, self._scan)
                if i < 0:
                    if len(buf) > self.max_part + len(self._token) + 2:
                        raise ProtocolError("too large", f"a part over {self.max_part} bytes")
                    self._scan = max(0, len(buf) - len(self._token) - 64)
                    return None
                start = self._delimiter_at(i)
                if start is None:
                    self._scan = i + 1
                    continue
                break
            end = start
            if buf[end - 2 : end] == b"\r\n":
                end -= 2
            elif buf[end - 1 : end] == b"\n":
                end -= 1
            if end > self.max_part:
                raise ProtocolError("too large", f"a part over {self.max_part} bytes")
            part = bytes(buf[:end])
            del buf[:start]  # the delimiter line stays, for _seek
        self._state = self._SEEK
        self._scan = 0
        self._garbage = 0
        return part


class _Slot:
    """The latest frame, the error hit since the last grab, and whether the stream is down
    (waiting out its backoff); a StreamSource's worker thread writes it under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frame: Frame | None = None
        self.mono = 0.0  # time.monotonic() when the frame came
        self.fresh = False  # not grabbed yet
        self.error: DeviceError | None = None
        self.down: DeviceError | None = None  # the error that ended the last connection
        self.times: deque[float] = deque(maxlen=_FPS_KEEP)  # frame arrival times, for fps
        self.stamps: deque[float] | None = None  # a stream's frames' own times (seconds)


async def _grab_latest(
    slot: _Slot, event: asyncio.Event, wait_s: float, counters: _Counters
) -> Frame:
    """The latest frame not yet grabbed; else the error since the last grab; else, while the
    stream is down (waiting to reconnect), the error that took it down again, at once; else
    wait for a frame up to ``wait_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    since = time.monotonic()
    while True:
        with slot.lock:
            if slot.fresh and slot.frame is not None:
                slot.fresh = False  # an error after this frame stays, for the next grab
                now = time.monotonic()
                f = slot.frame
                age_ms = (now - slot.mono) * 1000.0
                fps = _fps(slot.times, now, slot.stamps)
                return Frame(
                    jpeg=f.jpeg,
                    image=f.image,
                    width=f.width,
                    height=f.height,
                    fetch_ms=age_ms,
                    received=f.received,
                    camera_time=f.camera_time,
                    fps=fps,
                )
            err, slot.error = slot.error, None
            err = err or slot.down
            event.clear()
        if err is not None:
            raise err
        remaining = deadline - loop.time()
        if remaining <= 0:
            with slot.lock:
                if slot.times and slot.times[-1] >= since:  # packets came, no frame decoded
                    e = DeviceUnavailable(
                        "no keyframe",
                        f"frames arrive but none was decoded in {wait_s:g} s: is the camera's "
                        "keyframe interval (GOP) longer than the timeout? (or use decode: all)",
                    )
                else:
                    e = DeviceUnavailable("timeout", f"no frame for {wait_s:g} s")
                counters.failed(e)
            raise e
        try:
            async with asyncio.timeout(remaining):
                await event.wait()
        except TimeoutError:
            pass


class MjpegSource(_Base):
    """An MJPEG stream read in the background; ``grab()`` gives the latest JPEG not yet grabbed
    (see the module)."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        auth: AuthMode = "auto",
        timeout: float = 5.0,
        ca_file: str | None = None,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if timeout <= 0 or max_bytes <= 0:
            raise ValueError("timeout and max_bytes must be positive")
        self._counters = _Counters()
        # Called on the loop with every part and its time.monotonic() (camera analytics).
        self.on_frame: Callable[[Frame, float], None] | None = None
        self._http = _Http(
            url,
            username=username,
            password=password,
            auth=auth,
            timeout=timeout,
            ca_file=ca_file,
            counters=self._counters,
        )
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._slot = _Slot()
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return self._http.shown

    @property
    def last_reason(self) -> str:
        return self._counters.last_reason

    def counters(self) -> dict[str, int | float]:
        return self._counters.as_dict()

    async def open(self) -> None:
        if self._task is not None:
            return
        self._http.open()
        self._task = asyncio.create_task(self._run(), name=f"mjpeg {self._http.shown}")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.aclose()

    async def grab(self) -> Frame:
        if self._task is None:
            raise RuntimeError("MjpegSource.grab() before open()")
        return await _grab_latest(self._slot, self._event, self.timeout, self._counters)

    def _fail(self, err: DeviceError, *, down: bool = False) -> None:
        self._counters.failed(err)
        self._slot.error = err
        if down:
            self._slot.down = err
        self._event.set()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        first = True
        while True:
            if not first:
                self._counters.reconnects += 1
            first = False
            got = False
            self._slot.down = None  # connecting: a grab waits for the first frame
            try:
                got = await self._connection()
                err: DeviceError = DeviceUnavailable("stream ended", self._http.shown)
            except asyncio.CancelledError:
                raise
            except aiohttp.ClientPayloadError:
                err = DeviceUnavailable("disconnected", f"{self._http.shown}: the stream broke")
            except Exception as e:  # noqa: BLE001 - classified, raised by the next grab
                err = _classify(e, self._http.shown, self.timeout)
                if isinstance(err, DriverFault):
                    log.warning("camera %s: MJPEG reader: %s", self._http.shown, err.detail)
            self._fail(err, down=True)
            if got:
                backoff = BACKOFF_MIN
            wait = AUTH_BACKOFF if isinstance(err, CameraAuthFailed) else backoff
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connection(self) -> bool:
        """One connection: read parts until the stream ends; whether it gave a frame."""
        async with asyncio.timeout(self.timeout):
            resp = await self._http.get()
        got = False
        try:
            kind, params = _content_type(resp)
            if not kind.startswith("multipart/") or "boundary" not in params:
                raise ProtocolError("not MJPEG", f"{self._http.shown}: Content-Type {kind[:60]}")
            date = camera_time(resp.headers.get(hdrs.DATE))
            since = time.monotonic()
            parser = MultipartParser(params["boundary"], max_part=self.max_bytes)
            async for chunk in resp.content.iter_any():
                self._counters.bytes += len(chunk)
                for part in parser.feed(chunk):
                    try:
                        _check_jpeg(part)
                    except ProtocolError as e:
                        self._fail(e)  # one bad part: counted, the stream goes on
                        continue
                    got = True
                    self._publish(part, date, since)
        finally:
            resp.close()
        return got

    def _publish(self, jpeg: bytes, date: float | None, since: float) -> None:
        now = time.monotonic()
        self._counters.frames += 1
        slot = self._slot
        with slot.lock:
            slot.times.append(now)
            slot.frame = Frame(
                jpeg=jpeg,
                image=None,
                width=None,
                height=None,
                fetch_ms=0.0,
                received=time.time(),
                # the Date of the response, moved on by the time since: the camera's clock
                camera_time=None if date is None else date + (now - since),
                fps=None,
            )
            slot.mono = now
            slot.fresh = True
            slot.error = None
            frame = slot.frame
        self._event.set()
        hook = self.on_frame
        if hook is not None:
            hook(frame, now)


# ---- H.264 streams (PyAV) ------------------------------------------------------------------


def _classify_av(
    err: BaseException, where: str, timeout: float, stalled: bool = False
) -> DeviceError:
    """A PyAV/FFmpeg error as tepi's. Never ``str(err)``: PyAV puts the URL (with its
    password) in the message as the error's filename; only the errno text is used.
    ``stalled``: nothing came for the whole timeout before it, so PyAV's interrupt ended the
    wait (FFmpeg's RTSP reports that as invalid data)."""
    import av

    if isinstance(err, DeviceError):
        return err
    if stalled and isinstance(err, av.ExitError | av.InvalidDataError | av.TimeoutError):
        return DeviceUnavailable("timeout", f"{where}: no data in {timeout:g} s")
    if isinstance(err, av.FFmpegError):
        text = f"{type(err).__name__}: {err.strerror}"
        if isinstance(err, av.HTTPUnauthorizedError | av.HTTPForbiddenError):
            return CameraAuthFailed(f"{where}: {text}")
        if isinstance(err, av.HTTPNotFoundError):
            return DeviceUnavailable("http 404", where)
        if isinstance(err, av.HTTPServerError):
            return DeviceUnavailable("http 5xx", f"{where}: {text}")
        if isinstance(err, av.HTTPError):
            return DeviceUnavailable("http 4xx", f"{where}: {text}")
        if isinstance(err, av.ExitError | av.TimeoutError):  # ExitError: our read timeout
            return DeviceUnavailable("timeout", f"{where}: no data in {timeout:g} s")
        if isinstance(err, av.ConnectionRefusedError):
            return DeviceUnavailable("connection refused", where)
        if isinstance(err, av.InvalidDataError):
            return ProtocolError("bad stream", f"{where}: {text}")
        if isinstance(err, OSError):
            reason, _ = _classify_os(err)
            if reason == "connect failed":
                reason = "stream error"
            return DeviceUnavailable(reason, f"{where}: {text}")
        return DeviceUnavailable("stream error", f"{where}: {text}")
    if isinstance(err, OSError):
        reason, name = _classify_os(err)
        return DeviceUnavailable(reason, f"{where}: {name or type(err).__name__}")
    assert isinstance(err, Exception)
    return DriverFault(err)


class StreamSource(_Base):
    """An RTSP or HTTP H.264 stream decoded by PyAV in a worker thread (see the module).

    ``decode="keyframes"`` (the default) decodes only the keyframes (typically one a second or
    two), the frames analysis needs; ``"all"`` decodes every frame. Every packet is demuxed
    and counted, for fps. With keyframes only, a grab gets at most one new frame per keyframe
    interval (GOP): polled faster, it waits for the next one; a GOP longer than ``timeout``
    makes it raise ``no keyframe`` (packets arrive, nothing to decode).

    Credentials, if given, go into the URL's userinfo (that is how FFmpeg authenticates RTSP
    and HTTP: it answers the camera's Basic or Digest challenge, Basic even over plain
    ``http``/``rtsp``, which this class cannot prevent); ``https``/``rtsps`` verify the
    certificate and host name (FFmpeg's ``tls_verify``; ``ca_file`` for a private CA).
    ``bytes`` in ``counters()`` counts the video packets' payload, not the wire.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        decode: Literal["keyframes", "all"] = "keyframes",
        transport: Literal["tcp", "udp"] = "tcp",
        ca_file: str | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if decode not in ("keyframes", "all"):
            raise ValueError(f"decode {decode!r}: keyframes or all")
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport {transport!r}: tcp or udp")
        u = URL(url)
        if u.scheme not in _STREAM_SCHEMES or not u.host:
            raise ValueError(f"stream url {redact(u)}: rtsp://, rtsps://, http:// or https://")
        if ca_file is not None and u.scheme not in ("https", "rtsps"):
            raise ValueError(f"ca_file is for https:// and rtsps:// urls, not {redact(u)}")
        self.shown = redact(u)
        if username is not None:
            if u.user is not None:
                raise ValueError(f"stream url {self.shown}: credentials in the url and username")
            # FFmpeg takes the userinfo percent-encoded; spliced into the URL as given (yarl
            # would normalise its query, which a camera may not accept).
            userinfo = quote(username, safe="") + ":" + quote(password or "", safe="")
            scheme, _, rest = url.strip().partition("://")
            self._url = f"{scheme}://{userinfo}@{rest}"
        else:
            self._url = url
        self.timeout = timeout
        self.decode = decode
        # Probe briefly: by default FFmpeg reads up to 5 s of stream before open() returns
        # (4.4 s measured on a 5 fps stream: near the timeout). The decoder configures itself
        # from the stream's own parameter sets, and fps is measured here, not probed.
        options: dict[str, str] = {"analyzeduration": "500000", "fpsprobesize": "0"}
        # FFmpeg's socket I/O timeout (microseconds) is only a backstop, longer than PyAV's
        # own (its interrupt callback, classified "timeout"): RTSP reports its expiry as
        # invalid data.
        socket_us = str(int((timeout * 2 + 1) * 1_000_000))
        if u.scheme in ("rtsp", "rtsps"):
            options["rtsp_transport"] = transport
            options["timeout"] = socket_us
        else:
            options["rw_timeout"] = socket_us
        if u.scheme in ("https", "rtsps"):
            options["tls_verify"] = "1"
            if ca_file is not None:
                options["ca_file"] = ca_file
        self._options = options
        self._counters = _Counters()  # written by the worker under the slot's lock
        self._slot = _Slot()
        self._event = asyncio.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stuck = False  # aclose() gave up waiting for the worker
        self._progress = 0.0  # worker: when the current wait for the camera began
        # Called in the worker with every decoded frame and its time.monotonic() (camera
        # analytics); it must not block.
        self.on_frame: Callable[[Frame, float], None] | None = None

    @property
    def url(self) -> str:
        return self.shown

    @property
    def last_reason(self) -> str:
        with self._slot.lock:
            return self._counters.last_reason

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def counters(self) -> dict[str, int | float]:
        with self._slot.lock:
            return self._counters.as_dict()

    async def open(self) -> None:
        if self._thread is not None:
            return
        import av  # only here: an agent without a stream camera never loads FFmpeg

        del av
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._work, name=f"camera-stream {self.shown}", daemon=True
        )
        self._thread.start()

    async def aclose(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        assert self._done is not None
        limit = self.timeout * 2 + 1.0  # one bounded read (or open) and its cleanup
        try:
            async with asyncio.timeout(limit):
                await asyncio.shield(self._done)
        except TimeoutError:
            pass
        else:
            thread.join(1.0)  # it has returned from _work: only its last bytecodes remain
        if thread.is_alive():
            self.stuck = True
            log.warning(
                "camera %s: the stream worker did not stop within %.0f s (left as a daemon)",
                self.shown,
                limit,
            )

    async def grab(self) -> Frame:
        if self._thread is None:
            raise RuntimeError("StreamSource.grab() before open()")
        return await _grab_latest(self._slot, self._event, self.timeout, self._counters)

    # -- the worker thread: owns no event loop; hands over through the slot ------------------

    def _notify(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(self._event.set)

    def _fail(self, err: DeviceError, *, down: bool = False) -> None:
        with self._slot.lock:
            self._counters.failed(err)
            self._slot.error = err
            if down:
                self._slot.down = err
        self._notify()

    def _work(self) -> None:
        try:
            self._loop_streams()
        except BaseException as err:  # a bug: say so at the next grab, never die silently
            if isinstance(err, Exception):
                self._fail(DriverFault(err), down=True)
            log.exception("camera %s: stream worker failed", self.shown)
        finally:
            loop, done = self._loop, self._done
            if loop is not None and done is not None:

                def finish() -> None:
                    if not done.done():
                        done.set_result(None)

                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(finish)

    def _loop_streams(self) -> None:
        import av

        backoff = BACKOFF_MIN
        first = True
        while not self._stop.is_set():
            with self._slot.lock:
                if not first:
                    self._counters.reconnects += 1
                self._slot.down = None  # connecting: a grab waits for the first frame
            first = False
            got = False
            err: DeviceError
            try:
                with self._slot.lock:
                    self._counters.requests += 1
                self._progress = time.monotonic()
                container = av.open(
                    self._url, timeout=(self.timeout, self.timeout), options=dict(self._options)
                )
                self._progress = time.monotonic()
                try:
                    got = self._pump(container)
                finally:
                    container.close()
                err = DeviceUnavailable("stream ended", self.shown)
            except Exception as e:  # noqa: BLE001 - classified, raised by the next grab
                stalled = time.monotonic() - self._progress >= self.timeout * 0.9
                err = _classify_av(e, self.shown, self.timeout, stalled)
            if self._stop.is_set():
                return
            self._fail(err, down=True)
            if got:
                backoff = BACKOFF_MIN
            wait = AUTH_BACKOFF if isinstance(err, CameraAuthFailed) else backoff
            if self._stop.wait(wait):
                return
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _pump(self, container: Any) -> bool:
        """Demux until the stream ends or stop is set; whether a frame was decoded."""
        if not container.streams.video:
            raise ProtocolError("bad stream", f"{self.shown}: no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if self.decode == "keyframes":
            ctx.skip_frame = "NONKEY"
        got = False
        slot = self._slot
        with slot.lock:  # a new connection: its frames' times start afresh
            slot.times.clear()
            slot.stamps = None
        for packet in container.demux(stream):
            if self._stop.is_set():
                break
            if packet.size:
                now = self._progress = time.monotonic()
                base = packet.time_base
                pts = packet.pts
                with slot.lock:
                    self._counters.frames += 1
                    self._counters.bytes += packet.size
                    if pts is not None and base is not None:
                        if slot.stamps is None or len(slot.stamps) != len(slot.times):
                            slot.stamps = deque(maxlen=_FPS_KEEP)
                            slot.times.clear()
                        slot.stamps.append(float(pts * base))
                    slot.times.append(now)
            for frame in packet.decode():
                image = frame.to_ndarray(format="bgr24")
                now = time.monotonic()
                with slot.lock:
                    self._counters.decoded += 1
                    slot.frame = Frame(
                        jpeg=None,
                        image=image,
                        width=frame.width,
                        height=frame.height,
                        fetch_ms=0.0,
                        received=time.time(),
                        camera_time=None,
                        fps=None,
                    )
                    slot.mono = now
                    slot.fresh = True
                    slot.error = None
                    decoded = slot.frame
                got = True
                self._notify()
                hook = self.on_frame
                if hook is not None:
                    hook(decoded, now)
        return got


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
