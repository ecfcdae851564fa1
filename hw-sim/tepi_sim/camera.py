"""A simulated IP camera: an aiohttp server on 127.0.0.1 with snapshots, MJPEG and H.264.

Endpoints (paths under :attr:`Camera.base_url`):

* ``/snapshot.jpg`` and the vendors' snapshot URLs ``/ISAPI/Streaming/channels/101/picture``
  (Hikvision), ``/cgi-bin/snapshot.cgi?channel=1`` (Dahua), ``/axis-cgi/jpg/image.cgi``
  (Axis): one JPEG, freshly rendered.
* ``/mjpeg``: ``multipart/x-mixed-replace`` at the camera's fps, each part with its own
  ``Content-Type`` and ``Content-Length``.
* ``/stream.ts``: H.264 (libx264, ultrafast, zerolatency, a keyframe every second) in
  MPEG-TS, chunked, at the camera's size and fps. FFmpeg (PyAV's ``av.open(url)``) reads
  20 frames to guess a stream's frame rate before it hands over the first one, which is 4 s
  at 5 fps; so that a client opens the stream at once, each client first gets a pre-roll of
  the last 20 frames' worth of scene (``?preroll=0`` turns it off and gives real-time
  latency).

Every response has a ``Date`` header from the camera's own clock (real time plus the clock
offset). Snapshot and MJPEG parts carry ``X-Sim-Frame`` (a frame sequence number) and
``X-Sim-Time`` (the real time the scene was rendered at, for :meth:`Camera.truth`): ground
truth for tests, not something a real camera sends.

The scene is :mod:`tepi_sim.scene`'s street with moving objects or, with ``scene:
traffic``, :mod:`tepi_sim.traffic`'s road seen from above, whose ground truth the camera
answers at real times (:meth:`Camera.vehicles`, :meth:`Camera.crossing_events`,
:meth:`Camera.queue_lengths`; scene time is real time minus :attr:`Camera.epoch`).

Frames are rendered (and JPEG-encoded) in worker threads, never on the loop. MJPEG and
H.264 clients share one frame producer that runs only while at least one of them is
connected; a slow client skips frames rather than queueing them. Each H.264 client has an
encoder of its own, fed from the shared frames, also in worker threads.

Faults (:meth:`Camera.set_fault`): ``unauthorized`` (401 whatever the credentials),
``hang`` (requests are accepted and never answered; streams stall), ``slow`` (answers after
``delay_s``), ``truncated`` (JPEGs cut in half), ``black``, ``frozen`` (the very same JPEG
bytes and frame every time), ``blur``, ``covered`` (lens covered: dim, flat grey),
``moved`` (the view points elsewhere), ``reboot`` (the port refuses connections for
``delay_s`` seconds and every connection drops; then the camera is back, fault ``none``),
and ``clock`` (the ``Date`` header is ``delay_s`` seconds off; this one combines with the
others: it is kept apart, as ``clock_offset_s``). ``none`` clears everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from email.utils import formatdate
from functools import partial
from typing import Any, Final

import av
from aiohttp import web

from tepi_sim.errors import StartupError
from tepi_sim.httpauth import BasicAuth, DigestAuth
from tepi_sim.model import CAMERA_FAULT_MODES, CameraConfig
from tepi_sim.scene import Frame, ObjectTruth, Scene
from tepi_sim.traffic import CrossingTruth, TrafficScene, VehicleTruth

__all__ = ["SNAPSHOT_PATHS", "Camera", "Shot", "TsEncoder"]

log = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
SNAPSHOT_PATHS: Final = (
    "/snapshot.jpg",
    "/ISAPI/Streaming/channels/101/picture",
    "/cgi-bin/snapshot.cgi",
    "/axis-cgi/jpg/image.cgi",
)
_PATHS: Final = frozenset((*SNAPSHOT_PATHS, "/mjpeg", "/stream.ts"))
BOUNDARY: Final = "tepisimframe"
PREROLL: Final = 20  # frames FFmpeg reads to estimate the frame rate of an H.264 stream
FRAME_LOG: Final = 10_000  # (sequence, time) of the newest frames rendered
_DEFAULT_DELAY_S: Final = {"slow": 2.0, "reboot": 2.0, "clock": 30.0}
_STOP_GRACE_S: Final = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Shot:
    """One rendered frame: its sequence number, the real time (epoch seconds) the scene
    was rendered at, the BGR image and its JPEG bytes."""

    seq: int
    t: float
    image: Frame
    jpeg: bytes


class _Sink:
    """A write-only file for PyAV's muxer: collects what it writes until taken."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


class TsEncoder:
    """H.264 in MPEG-TS: libx264 (ultrafast, zerolatency, a keyframe every ``fps`` frames)
    writing into memory. Its calls take a lock: a cancelled ``asyncio.to_thread(encode)``
    still runs to its end in its thread, and FFmpeg must not see ``close`` meanwhile."""

    def __init__(self, width: int, height: int, fps: int) -> None:
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format="mpegts")
        stream = self._container.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "tune": "zerolatency"}
        )
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = fps
        self._stream = stream
        self._fps = fps
        self._pts = -1
        self._t0: float | None = None
        self._lock = threading.Lock()
        self._closed = False

    def encode(self, image: Frame, t: float) -> bytes:
        """Encode one BGR frame taken at real time ``t``; the bytes of TS it yielded (none
        once closed)."""
        with self._lock:
            if self._closed:
                return b""
            if self._t0 is None:
                self._t0 = t
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            self._pts = max(self._pts + 1, round((t - self._t0) * self._fps))
            frame.pts = self._pts
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            return self._sink.take()

    def close(self) -> bytes:
        """Flush the encoder and close the container; the last bytes. Safe to call twice."""
        with self._lock:
            if self._closed:
                return b""
            self._closed = True
            with contextlib.suppress(av.FFmpegError):
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
            self._container.close()
            return self._sink.take()


class Camera:
    """One simulated IP camera. ``await start()`` / ``await stop()`` or ``async with``.

    ``epoch`` is the real time (epoch seconds) of scene time 0; by default the time the
    camera object is made."""

    def __init__(self, config: CameraConfig, *, epoch: float | None = None) -> None:
        self.config = config
        self.id = config.id
        self.epoch = time.time() if epoch is None else epoch
        self.scene = Scene(config.width, config.height, objects=config.objects, seed=config.seed)
        # The traffic scene is simulated here, once (about 0.6 s for 300 s of scene).
        self.traffic = TrafficScene(config.traffic) if config.scene == "traffic" else None
        self.port = config.port
        self.fault = "none"
        self.delay_s = 0.0
        self.clock_offset_s = 0.0
        self.requests: Counter[str] = Counter()
        self.frames_served = 0
        self.auth_failures = 0
        self.auth_challenges = 0
        self.reboots = 0
        self.streams = 0  # MJPEG and H.264 clients connected now
        self.frames: deque[tuple[int, float]] = deque(maxlen=FRAME_LOG)
        realm = f"tepi-sim {config.id}"
        self._auth: BasicAuth | DigestAuth | None = None
        if config.auth == "basic":
            self._auth = BasicAuth(config.username, config.password, realm)
        elif config.auth == "digest":
            self._auth = DigestAuth(config.username, config.password, realm)
        self._seq = itertools.count(1)
        self._frozen: Shot | None = None
        self._frozen_lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._running = False
        self._closing = asyncio.Event()  # set: streams and hung requests end (reboot, stop)
        self._down = asyncio.Event()  # set once the port refuses connections, all dropped
        self._up = asyncio.Event()  # set while the port accepts connections
        self._down.set()
        self._reboot_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # ends a reboot early
        # The shared frame producer.
        self._latest: Shot | None = None
        self._new_shot = asyncio.Condition()
        self._subscribers = 0
        self._producer: asyncio.Task[None] | None = None

    # -- public API -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the bound port once started)."""
        return f"http://{HOST}:{self.port}"

    @property
    def snapshot_url(self) -> str:
        """The generic snapshot URL, ``{base_url}/snapshot.jpg``."""
        return f"{self.base_url}/snapshot.jpg"

    @property
    def listening(self) -> bool:
        """True while the port accepts connections (not stopped, not rebooting)."""
        return self._up.is_set()

    @property
    def producing(self) -> bool:
        """True while frames are rendered for streams (only while a stream client is on)."""
        return self._producer is not None and not self._producer.done()

    def clock(self) -> float:
        """The camera's own time (epoch seconds): real time plus the clock offset."""
        return time.time() + self.clock_offset_s

    def truth(self, t: float | None = None) -> list[ObjectTruth]:
        """The objects in view at real time ``t`` (epoch seconds; default now), with their
        boxes normalised to 0..1. ``X-Sim-Time`` on a frame is the ``t`` it shows.
        ValueError for a camera of the traffic scene: its truth is :meth:`vehicles`."""
        if self.traffic is not None:
            raise ValueError(f"camera {self.id!r} shows the traffic scene: use vehicles()")
        return self.scene.truth((time.time() if t is None else t) - self.epoch)

    # -- the traffic scene's ground truth (scene time = real time - epoch) -----------------

    def _traffic(self) -> TrafficScene:
        if self.traffic is None:
            raise ValueError(f"camera {self.id!r} shows the objects scene, not traffic")
        return self.traffic

    def vehicles(self, t: float | None = None) -> list[VehicleTruth]:
        """The vehicles in view at real time ``t`` (epoch seconds; default now).
        ValueError unless the camera shows the traffic scene."""
        return self._traffic().truth((time.time() if t is None else t) - self.epoch)

    def crossing_events(
        self, since: float | None = None, until: float | None = None
    ) -> list[CrossingTruth]:
        """The crossings between real times ``since`` (default: the epoch) and ``until``
        (default: now), by time; their ``t`` is real time (epoch seconds)."""
        scene = self._traffic()
        t0 = (self.epoch if since is None else since) - self.epoch
        t1 = (time.time() if until is None else until) - self.epoch
        return [
            CrossingTruth(e.t + self.epoch, e.line, e.direction, e.vehicle, e.cls)
            for e in scene.crossing_events(max(0.0, t0), max(0.0, t1))
        ]

    def queue_lengths(self, t: float | None = None) -> dict[str, float]:
        """Each queue zone's queue length in metres at real time ``t`` (default now)."""
        scene = self._traffic()
        at = (time.time() if t is None else t) - self.epoch
        return {z.name: scene.queue_length(z.name, at) for z in scene.zones}

    def counters(self) -> dict[str, Any]:
        """Requests per endpoint (any other path counts as ``other``), frames served, auth
        failures (wrong credentials) and challenges (requests without credentials),
        reboots, connections now open and streaming clients now connected."""
        connections = 0
        if self._runner is not None and self._runner.server is not None:
            connections = len(self._runner.server.connections)
        return {
            "requests": dict(self.requests),
            "frames_served": self.frames_served,
            "auth_failures": self.auth_failures,
            "auth_challenges": self.auth_challenges,
            "reboots": self.reboots,
            "clients_connected": connections,
            "streams": self.streams,
        }

    def status(self) -> dict[str, Any]:
        """What the control socket's ``{"query": "cameras"}`` answers for this camera."""
        return {
            "url": self.base_url,
            "listening": self.listening,
            "fault": self.fault,
            "delay_s": self.delay_s,
            "clock_offset_s": self.clock_offset_s,
            "auth": self.config.auth,
            "width": self.config.width,
            "height": self.config.height,
            "fps": self.config.fps,
            "scene": self.config.scene,
            "epoch": self.epoch,
            "counters": self.counters(),
        }

    def set_fault(self, mode: str, delay_s: float | None = None) -> None:
        """Switch the fault mode (see the module doc); ValueError for an unknown mode.

        ``delay_s``: the answer delay of ``slow``, the down time of ``reboot``, the clock
        offset of ``clock`` (may be negative). ``clock`` leaves the other fault as it is;
        ``none`` clears both. ``reboot`` needs a running loop and a started camera."""
        if mode not in CAMERA_FAULT_MODES:
            raise ValueError(
                f"unknown fault mode {mode!r} for camera {self.id!r}; "
                f"expected one of: {', '.join(CAMERA_FAULT_MODES)}"
            )
        if delay_s is not None and mode not in _DEFAULT_DELAY_S:
            raise ValueError(f"delay_s applies to faults {', '.join(_DEFAULT_DELAY_S)} only")
        delay = _DEFAULT_DELAY_S.get(mode, 0.0) if delay_s is None else float(delay_s)
        if mode != "clock" and delay < 0:
            raise ValueError(f"delay_s must not be negative, got {delay}")
        if mode == "clock":
            self.clock_offset_s = delay
            return
        rebooting = self._reboot_task is not None and not self._reboot_task.done()
        if mode == "reboot" and (not self._running or rebooting):
            state = "already rebooting" if rebooting else "not running"
            raise ValueError(f"camera {self.id!r} is {state}: it cannot reboot")
        log.info("camera %s: fault %s (delay %.3g s)", self.id, mode, delay)
        if mode == "none":
            self.clock_offset_s = 0.0
        with self._frozen_lock:
            self._frozen = None  # `frozen` freezes the next frame rendered
        self.fault = mode
        self.delay_s = delay if mode in _DEFAULT_DELAY_S else 0.0
        if rebooting:
            self._wake.set()  # another fault: come back now
        if mode == "reboot":
            self._wake = asyncio.Event()
            self._reboot_task = asyncio.get_running_loop().create_task(
                self._reboot(delay), name=f"tepi-sim.camera.{self.id}.reboot"
            )

    async def wait_listening(self, listening: bool = True) -> None:
        """Return once the port accepts connections (``listening``), or once it refuses them
        and every connection has been dropped (``listening=False``)."""
        await (self._up if listening else self._down).wait()

    async def start(self) -> None:
        """Listen on 127.0.0.1 (``port`` 0: a free port, then kept across reboots).
        StartupError if the port is taken."""
        if self._running:
            raise RuntimeError(f"camera {self.id!r} already started")
        self._running = True
        try:
            await self._open()
        except BaseException:
            self._running = False
            self._down.set()
            raise

    async def stop(self) -> None:
        """Drop every connection and stop listening. Safe to call twice."""
        if not self._running:
            return
        self._running = False
        if self._reboot_task is not None:
            self._wake.set()
            await self._reboot_task
            self._reboot_task = None
        await self._close()

    async def __aenter__(self) -> Camera:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- rendering (worker threads) ---------------------------------------------------------

    def shoot(self, t: float | None = None) -> Shot:
        """Render one frame now (or at real time ``t``) with the current fault, as a real
        camera would show it. Blocking (a few ms): the server calls it in worker threads."""
        fault = self.fault
        if fault == "frozen":
            with self._frozen_lock:
                if self._frozen is None:
                    self._frozen = self._render(t, "none")
                return self._frozen
        return self._render(t, fault)

    def _render(self, t: float | None, fault: str) -> Shot:
        when = time.time() if t is None else t
        scene = self.scene if self.traffic is None else self.traffic
        image = scene.render(when - self.epoch, fault)
        jpeg = scene.encode_jpeg(image, self.config.quality)
        shot = Shot(seq=next(self._seq), t=when, image=image, jpeg=jpeg)
        self.frames.append((shot.seq, shot.t))
        return shot

    # -- the server -----------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for path in SNAPSHOT_PATHS:
            app.router.add_get(path, self._snapshot)
        app.router.add_get("/mjpeg", self._mjpeg)
        app.router.add_get("/stream.ts", self._stream_ts)
        app.on_response_prepare.append(self._stamp)
        return app

    async def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, self.port))
        except OSError as err:
            sock.close()
            raise StartupError(
                f"camera {self.id}: cannot listen on {HOST}:{self.port}: {err.strerror}"
            ) from err
        self.port = sock.getsockname()[1]
        # handler_cancellation: a client that goes away ends its request (a hung one, a
        # stream) at once, rather than at the next write or never.
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=_STOP_GRACE_S,
        )
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self._closing.clear()
        self._down.clear()
        self._up.set()
        log.info("camera %s listening on %s", self.id, self.base_url)

    async def _close(self) -> None:
        self._up.clear()
        self._closing.set()
        async with self._new_shot:
            self._new_shot.notify_all()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()  # stops listening first, then drops the connections
        if self._producer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer
        self._down.set()

    async def _reboot(self, down_s: float) -> None:
        self.reboots += 1
        await self._close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), down_s)
        if not self._running:
            return
        if self.fault == "reboot":
            self.fault, self.delay_s = "none", 0.0
        try:
            await self._open()
        except StartupError as err:  # someone took the port meanwhile: stay down
            log.error("%s", err)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the request, then apply the transport faults and authentication."""
        self.requests[request.path if request.path in _PATHS else "other"] += 1
        if self.fault == "hang":
            await self._closing.wait()  # never answers (ends when the client goes away)
            return self._drop(request)
        if self.fault == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.delay_s)
        if self.fault == "unauthorized":
            return self._challenge(stale=False)
        if self._auth is not None:
            verdict = self._auth.check(
                request.headers.get("Authorization"), request.method, request.raw_path
            )
            if verdict == "failed":
                self.auth_failures += 1
            elif verdict == "missing":
                self.auth_challenges += 1
            if verdict != "ok":
                return self._challenge(stale=verdict == "stale")
        return await handler(request)

    def _drop(self, request: web.Request) -> web.StreamResponse:
        """Cut the connection (as a camera that reboots or dies does); aiohttp writes
        nothing more on it."""
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)

    def _challenge(self, *, stale: bool) -> web.Response:
        auth = self._auth or DigestAuth("", "", f"tepi-sim {self.id}")
        return web.Response(
            status=401,
            text="401 Unauthorized\n",
            headers={"WWW-Authenticate": auth.challenge(stale=stale)},
        )

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        """The camera's clock in ``Date`` (aiohttp only adds one if none is set)."""
        del request
        response.headers["Date"] = formatdate(self.clock(), usegmt=True)
        response.headers["Server"] = "tepi-sim camera"

    def _jpeg(self, shot: Shot) -> bytes:
        return shot.jpeg[: len(shot.jpeg) // 2] if self.fault == "truncated" else shot.jpeg

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        channel = request.query.get("channel", "1")
        if request.path == "/cgi-bin/snapshot.cgi" and channel != "1":
            raise web.HTTPBadRequest(text=f"no channel {channel}; this camera has channel 1\n")
        shot = await asyncio.to_thread(self.shoot)
        self.frames_served += 1
        return web.Response(
            body=self._jpeg(shot),
            content_type="image/jpeg",
            headers={
                "Cache-Control": "no-store",
                "X-Sim-Frame": str(shot.seq),
                "X-Sim-Time": f"{shot.t:.6f}",
            },
        )

    async def _mjpeg(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        async with contextlib.aclosing(self._subscribe()) as shots:
            async for shot in shots:
                jpeg = self._jpeg(shot)
                head = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\nX-Sim-Frame: {shot.seq}\r\n"
                    f"X-Sim-Time: {shot.t:.6f}\r\n\r\n"
                )
                try:
                    await response.write(head.encode() + jpeg + b"\r\n")
                except ConnectionError:  # the client went away
                    break
                self.frames_served += 1
        if self._closing.is_set():
            self._drop(request)
        return response

    async def _stream_ts(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "video/mp2t", "Cache-Control": "no-store"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        fps = self.config.fps
        encoder = await asyncio.to_thread(
            TsEncoder, self.config.width, self.config.height, self.config.fps
        )
        try:
            with contextlib.suppress(ConnectionError):  # the client went away
                if request.query.get("preroll", "1") != "0":
                    now = time.time()
                    times = [now - (PREROLL - k) / fps for k in range(PREROLL)]
                    data = await asyncio.to_thread(self._preroll, encoder, times)
                    self.frames_served += PREROLL
                    await response.write(data)
                async with contextlib.aclosing(self._subscribe()) as shots:
                    async for shot in shots:
                        data = await asyncio.to_thread(encoder.encode, shot.image, shot.t)
                        self.frames_served += 1
                        if data:
                            await response.write(data)
        finally:
            await asyncio.to_thread(encoder.close)
        if self._closing.is_set():
            self._drop(request)
        return response

    def _preroll(self, encoder: TsEncoder, times: list[float]) -> bytes:
        return b"".join(encoder.encode(self.shoot(t).image, t) for t in times)

    # -- the shared frame producer ----------------------------------------------------------

    async def _subscribe(self) -> AsyncGenerator[Shot, None]:
        """Every new frame, at the camera's fps, until the server goes down. A slow reader
        gets the newest frame and skips the ones it missed. Stalls while ``hang``."""
        self._subscribers += 1
        self.streams += 1
        if self._producer is None or self._producer.done():
            self._producer = asyncio.get_running_loop().create_task(
                self._produce(), name=f"tepi-sim.camera.{self.id}.frames"
            )
        last = 0
        try:
            while not self._closing.is_set():
                async with self._new_shot:
                    await self._new_shot.wait_for(partial(self._newer, last))
                shot = self._latest
                if self._closing.is_set() or shot is None:
                    return
                last = shot.seq
                if self.fault != "hang":
                    yield shot
        finally:
            self._subscribers -= 1
            self.streams -= 1

    def _newer(self, seq: int) -> bool:
        return self._closing.is_set() or (self._latest is not None and self._latest.seq != seq)

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.config.fps
        due = loop.time()
        while self._subscribers > 0 and not self._closing.is_set():
            shot = await asyncio.to_thread(self.shoot)
            if shot is self._frozen:  # frozen: the same frame, as a new delivery
                shot = replace(shot, seq=next(self._seq))
            self._latest = shot
            async with self._new_shot:
                self._new_shot.notify_all()
            due += period
            delay = due - loop.time()
            if delay < 0:  # fell behind (a loaded machine): carry on from now
                due, delay = loop.time(), 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
        self._latest = None
