"""The MJPEG source: a ``multipart/x-mixed-replace`` stream read in a task of its own,
parsed by :class:`MultipartParser` (bounded), the latest JPEG kept (see
:mod:`tepi.drivers.camera.sources`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from aiohttp import hdrs

from tepi.core.errors import DeviceError, DeviceUnavailable, DriverFault, ProtocolError
from tepi.core.tasks import cancel_and_wait
from tepi.drivers.camera.sourcebase import (
    AUTH_BACKOFF,
    BACKOFF_MAX,
    BACKOFF_MIN,
    MAX_BYTES,
    MAX_PART_HEADERS,
    AuthMode,
    CameraAuthFailed,
    Frame,
    _check_jpeg,
    _classify,
    _content_type,
    _grab_latest,
    _HttpSource,
    _Slot,
    camera_time,
)

log = logging.getLogger(__name__)


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


class MjpegSource(_HttpSource):
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
        super().__init__(
            url,
            username=username,
            password=password,
            auth=auth,
            timeout=timeout,
            ca_file=ca_file,
            max_bytes=max_bytes,
        )
        # Called on the loop with every part and its time.monotonic() (camera analytics).
        self.on_frame: Callable[[Frame, float], None] | None = None
        self._slot = _Slot()
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self._task is not None:
            return
        self._http.open()
        self._task = asyncio.create_task(self._run(), name=f"mjpeg {self._http.shown}")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
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
