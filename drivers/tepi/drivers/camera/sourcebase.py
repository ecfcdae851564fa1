"""What the camera sources share (see :mod:`tepi.drivers.camera.sources` for the three and
their errors): the frame, the limits and backoffs, the counters, how an error is classified,
the HTTP side (one aiohttp session, authentication, TLS), the latest-frame slot of a
background reader, and :class:`SnapshotSource`, which is that HTTP side and little more.
Imports neither numpy, OpenCV nor PyAV."""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, Self

import aiohttp
from aiohttp import hdrs
from yarl import URL

from tepi.core.errors import DeviceError, DeviceUnavailable, DriverFault, ProtocolError

if TYPE_CHECKING:
    from types import TracebackType

    import numpy as np
    import numpy.typing as npt

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


class _HttpSource(_Base):
    """What the HTTP sources (snapshots, MJPEG) share: the URL's client, its counters and
    the limits of a JPEG."""

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


class SnapshotSource(_HttpSource):
    """One JPEG per ``grab()`` from a snapshot URL (see the module)."""

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
