"""The H.264 source: RTSP or HTTP read with PyAV in a worker thread of its own (it owns
no event loop), the latest decoded frame kept (see :mod:`tepi.drivers.camera.sources`).
PyAV is imported where it is used, never by an agent without such a camera."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote

from yarl import URL

from tepi.core.errors import DeviceError, DeviceUnavailable, DriverFault, ProtocolError
from tepi.drivers.camera.sourcebase import (
    _FPS_KEEP,
    _STREAM_SCHEMES,
    AUTH_BACKOFF,
    BACKOFF_MAX,
    BACKOFF_MIN,
    CameraAuthFailed,
    Frame,
    _Base,
    _classify_os,
    _Counters,
    _grab_latest,
    _Slot,
    redact,
)

log = logging.getLogger(__name__)


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
