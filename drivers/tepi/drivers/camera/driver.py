"""``driver: camera``: an IP camera polled like any device, its health as readings.

Each poll fetches one frame (a snapshot, the latest frame of an MJPEG stream, or the latest
decoded frame of an H.264 stream), fills the privacy masks, runs the health checks on a
reduced image and returns the health metrics as one :class:`Values`. When a snapshot is due
(``snapshot_interval``) or asked for (``snapshot()``: ``tepi snapshot``, and later motion events,
alarms and remote commands), the masked frame is also scaled, encoded under the per-message
cap with a thumbnail, and handed to the image buffer. No masked pixel is ever stored or sent:
the masks are filled on the decoded pixels before anything else looks at them.

The pixel work (JPEG decoding, masks, checks, encoding) runs in one worker thread shared by
the cameras (``_pixels``); OpenCV releases the GIL while it works, so the event loop keeps
its pace.

The camera's own state, kept in health (``protocol``) and logged on each change:
``ok``; ``degraded`` with a reason (``black``, ``frozen``, ``covered_or_moved``,
``blurred``, ``clock_drift``); ``offline`` (no frame); ``auth_failed`` (a refused password:
tried once, then not again for ``auth_retry``, so the camera does not lock the account).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, cast

from tepi.core.clock import boottime, clock_synced
from tepi.core.errors import DeviceError, DeviceUnavailable, ProtocolError
from tepi.core.records import MetricInfo, Sample, Value, Values
from tepi.drivers.base import SharedResources
from tepi.drivers.camera.config import CameraConfig

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from tepi.drivers.camera.analysis import AnalysisRunner
    from tepi.drivers.camera.sources import Frame

    Image = npt.NDArray[np.uint8]

log = logging.getLogger(__name__)

# The health checks want about this many pixels across: the JPEG is decoded at the largest
# DCT reduction (1/2, 1/4, 1/8) that keeps at least this width, which is most of the saving.
CHECK_WIDTH = 240


class ImageSink(Protocol):
    """Where a camera's images go (the agent's image buffer)."""

    max_image_bytes: int

    async def store(
        self,
        camera: str,
        cls: str,
        jpeg: bytes,
        *,
        reason: str,
        ts: float,
        mono: float,
        width: int,
        height: int,
        parent: int | None = None,
        event: str | None = None,
    ) -> tuple[int, str]:
        """Store one image; its seq and the file it is in. Raises OSError (or a subclass)
        when it cannot."""
        ...


@dataclass(frozen=True, slots=True)
class Stored:
    """What one snapshot left in the image buffer."""

    seq: int
    thumbnail: int | None
    width: int
    height: int
    size: int
    path: str  # where it was stored (until the broker has it)
    data: bytes  # the JPEG


@dataclass(slots=True)
class _Processed:
    health: Any  # vision.HealthResult
    width: int
    height: int
    snapshot: tuple[bytes, int, int] | None  # JPEG, width, height
    thumbnail: tuple[bytes, int, int] | None


class CameraDriver:
    """See the module docstring."""

    quarantine = False  # alone on its own address: backing off only delays the recovery

    def __init__(self, config: CameraConfig, resources: SharedResources) -> None:
        self.config = config
        self.images: ImageSink | None = getattr(resources, "images", None)
        kind = config.kind
        names = ["online", "fetch_ms", "width", "height"]
        if kind != "stream":
            names.append("image_bytes")
        if kind != "snapshot":
            names.append("fps")
        names += ["brightness", "sharpness", "black", "frozen", "covered_or_moved", "blurred"]
        if kind == "snapshot":
            names.append("clock_drift_s")
        self._names = tuple(names)
        units = {"fetch_ms": "ms", "width": "px", "height": "px", "image_bytes": "B"}
        units |= {"fps": "Hz", "clock_drift_s": "s"}
        self._units = tuple(units.get(n) for n in names)
        self._source: Any = None
        self._checker: Any = None
        self._masks: dict[tuple[int, int], Any] = {}
        self._lock = asyncio.Lock()
        self._auth_until = 0.0
        self._last_snapshot: float | None = None
        self.state = "starting"
        self.reason: str | None = None
        # Called with (state, reason) on each change of state (the agent's rules watch it).
        self.on_state: Callable[[str, str | None], None] | None = None
        self.snapshots = 0
        self.snapshot_errors = 0
        self.last_snapshot_seq: int | None = None
        # Analytics (docs/vision.md): readings between polls, handed over by ``drain``; the
        # poll loop sets ``on_ready`` to be told when some wait.
        self.analysis: AnalysisRunner | None = None
        self.on_ready: Callable[[], None] | None = None
        self._analytics_metrics: list[MetricInfo] = []
        if config.analytics is not None:
            from tepi.drivers.camera.analysis import MetricPlan

            plan = MetricPlan.of(config.analytics).all()
            self._analytics_metrics = [MetricInfo(n, u) for n, u in plan]

    # ---- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        from tepi.drivers.camera.sources import make_source
        from tepi.drivers.camera.vision import HealthChecker, Thresholds

        c = self.config
        try:
            secret = c.read_password()
        except (OSError, KeyError) as err:
            # Which file or variable, never its content.
            where = c.password_env or str(c.password_file)
            raise DeviceUnavailable(
                "password unreadable", f"{where}: {type(err).__name__}"
            ) from None
        password = secret.get_secret_value() if secret is not None else None
        kw: dict[str, Any] = {
            "timeout": c.timeout,
            "username": c.username,
            "password": password,
            "ca_file": None if c.ca_file is None else str(c.ca_file),
        }
        if c.kind == "stream":
            kw["decode"] = c.decode_mode
            kw["transport"] = c.transport
        else:
            kw["auth"] = c.auth
        assert c.url is not None
        self._source = make_source(c.kind, c.url, **kw)
        if c.analytics is not None:
            from tepi.drivers.camera.analysis import AnalysisRunner

            runner = AnalysisRunner(
                c.id,
                c.analytics,
                c.masks,
                images=self.images,
                mask=self._masked,
                thumbnail_width=c.thumbnail_width or 320,
                best_width=min(640, c.snapshot_width),
                quality=c.snapshot_quality,
            )
            runner.on_ready = self._ready
            try:
                await runner.start()  # loads the detector: a model it cannot use fails the open
            except Exception as err:
                raise DeviceUnavailable("analytics", f"{type(err).__name__}: {err}") from err
            self.analysis = runner
            if c.kind != "snapshot":
                self._source.on_frame = runner.offer
        await self._source.open()
        k = c.checks
        self._checker = HealthChecker(
            Thresholds(
                black_level=k.black_level,
                frozen_polls=k.frozen_polls,
                tamper_polls=k.tamper_polls,
                tamper_similarity=k.tamper_similarity,
                tamper_relearn=k.tamper_relearn,
                blur_sharpness=k.blur_ratio,
            )
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._source is not None:
            source, self._source = self._source, None
            await source.aclose()
        if self.analysis is not None:
            runner, self.analysis = self.analysis, None
            await runner.stop()

    def metrics(self) -> list[MetricInfo]:
        own = [MetricInfo(n, u) for n, u in zip(self._names, self._units, strict=True)]
        return own + self._analytics_metrics

    def _ready(self) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def drain(self) -> list[Values]:
        """The analytics' readings since the last poll or drain (none without analytics)."""
        return [] if self.analysis is None else self.analysis.drain()

    async def finish(self) -> None:
        """A clean stop: the analytics end their open events and report the interval so
        far, for the poll loop's last drain."""
        if self.analysis is not None:
            if self._source is not None:
                self._source.on_frame = None
            await self.analysis.stop()  # its readings stay for the drain

    def failure_samples(self, reason: str, ts: float, mono: float) -> list[Sample]:
        """What the poller sends when a poll fails: ``online`` false (a good reading: the
        camera is known to be down), every other metric bad with the reason."""
        return [
            Sample(n, False, u, ts, mono) if n == "online" else Sample(n, None, u, ts, mono, reason)
            for n, u in zip(self._names, self._units, strict=True)
        ]

    def protocol_stats(self) -> dict[str, object]:
        out: dict[str, object] = {
            "kind": "camera",
            "state": self.state,
            "reason": self.reason,
            "snapshots": self.snapshots,
            "snapshot_errors": self.snapshot_errors,
            "last_snapshot_seq": self.last_snapshot_seq,
        }
        if self.analysis is not None:
            out["analytics"] = self.analysis.stats()
        if self._source is not None:
            out["source"] = dict(self._source.counters())
        return out

    # ---- polling ----------------------------------------------------------------------

    async def read(self) -> Sequence[Values]:
        async with self._lock:
            now = boottime()
            interval = self.config.snapshot_interval
            due = interval is not None and (
                self._last_snapshot is None
                or now - self._last_snapshot >= interval - self.config.poll_interval / 2
            )
            frame, done = await self._grab(snapshot=due)
            if due:
                await self._store(frame, done, "periodic")
            if self.analysis is not None and self.config.kind == "snapshot":
                self.analysis.offer(frame, time.monotonic())
            return [self._values(frame, done), *self.drain()]

    async def snapshot(self, reason: str) -> Stored:
        """Take a snapshot now and store it (``request_snapshot``). Raises DeviceError
        when the camera gives no frame, OSError when the image buffer refuses it."""
        async with self._lock:
            frame, done = await self._grab(snapshot=True)
            stored = await self._store(frame, done, reason)
            if stored is None:
                raise OSError("no image buffer to store the snapshot in")
            return stored

    async def _grab(self, *, snapshot: bool) -> tuple[Frame, _Processed]:
        if self._source is None:
            raise DeviceUnavailable("not open")
        if boottime() < self._auth_until:
            # Not asked again until auth_retry has passed: a camera locks the account.
            raise DeviceUnavailable("auth_failed", "the camera refused the password; waiting")
        from tepi.drivers.camera.sources import CameraAuthFailed
        from tepi.drivers.camera.vision import ImageError

        try:
            frame = await self._source.grab()
        except CameraAuthFailed:
            self._auth_until = boottime() + self.config.auth_retry
            self._set_state("auth_failed", None)
            raise
        except DeviceError as err:
            self._set_state("offline", err.reason)
            raise
        try:
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(_pixels(), self._process, frame, snapshot)
        except ImageError as err:
            self._set_state("offline", str(err))
            raise ProtocolError(str(err)) from None
        return frame, done

    def _values(self, frame: Frame, done: _Processed) -> Values:
        h = done.health
        drift: float | None = None
        reason = h.reason
        if frame.camera_time is not None:
            drift = round(frame.camera_time - frame.received, 1)
            # The Date header has whole seconds: a second of slack. Our own clock must be
            # right before the camera's can be called wrong.
            limit = self.config.checks.clock_drift_max + 1
            if reason is None and abs(drift) > limit and clock_synced():
                reason = "clock_drift"
        self._set_state("degraded" if reason else "ok", reason)
        v: dict[str, Value] = {
            "online": True,
            "fetch_ms": round(frame.fetch_ms, 1),
            "width": done.width,
            "height": done.height,
            "image_bytes": len(frame.jpeg) if frame.jpeg is not None else None,
            "fps": None if frame.fps is None else round(frame.fps, 2),
            "brightness": h.brightness,
            "sharpness": h.sharpness,
            "black": h.black,
            "frozen": h.frozen,
            "covered_or_moved": h.covered_or_moved,
            "blurred": h.blurred,
            "clock_drift_s": drift,
        }
        values = [v[n] for n in self._names]
        reasons: list[str | None] | None = None
        if any(x is None for x in values):
            reasons = ["not available" if x is None else None for x in values]
        mono = boottime() - (time.time() - frame.received)
        return Values(self._names, self._units, values, frame.received, mono, reasons)

    def _set_state(self, state: str, reason: str | None) -> None:
        if (state, reason) == (self.state, self.reason):
            return
        was = self.state
        self.state, self.reason = state, reason
        name = self.config.id
        if state == "ok":
            if was != "starting":
                log.info("camera %s: ok again (was %s)", name, was)
        elif state == "degraded":
            log.warning("camera %s: degraded: %s", name, reason)
        elif state == "auth_failed":
            log.error(
                "camera %s: the camera refused the user name or password; not trying again "
                "for %.0f s (a camera locks an account that keeps failing)",
                name,
                self.config.auth_retry,
            )
        # offline is logged by the poller (first failure and recovery), like any device.
        if self.on_state is not None:
            self.on_state(state, reason)

    # ---- pixels (worker thread) -------------------------------------------------------

    def _mask_plan(self, width: int, height: int) -> Any:
        from tepi.drivers.camera.vision import compile_masks

        plan = self._masks.get((width, height))
        if plan is None:
            if len(self._masks) > 8:  # a camera whose size keeps changing: bounded
                self._masks.clear()
            plan = self._masks[(width, height)] = compile_masks(self.config.masks, width, height)
        return plan

    def _masked(self, img: Image) -> Image:
        """``img`` with the masks filled, in place (every caller owns its array)."""
        if not self.config.masks:
            return img
        from tepi.drivers.camera.vision import apply_masks

        h, w = img.shape[:2]
        return apply_masks(img, self._mask_plan(w, h))

    def _process(self, frame: Frame, snapshot: bool) -> _Processed:
        """Health checks on a reduced grey image, and, when a snapshot is due, the snapshot
        and its thumbnail. A camera's JPEG that already fits (its size, the per-message cap)
        and has no mask to fill is stored as it came: no full decode and no re-encoding,
        which is most of a snapshot's CPU, and no second generation of JPEG loss."""
        import cv2

        from tepi.drivers.camera import vision

        c = self.config
        limit = self.images.max_image_bytes if self.images is not None else 10**9
        snap = thumb = None
        if frame.jpeg is not None:
            width, height = vision.jpeg_size(frame.jpeg)
            reduce = next(r for r in (8, 4, 2, 1) if r == 1 or width // r >= CHECK_WIDTH)
            as_is = (
                snapshot
                and not c.masks
                and width <= c.snapshot_width
                and height <= c.snapshot_height
                and len(frame.jpeg) <= limit
            )
            if as_is:
                assert frame.jpeg is not None
                snap = (frame.jpeg, width, height)
                colour = vision.decode(frame.jpeg, reduce=reduce)
                small = cast("Image", cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
                if c.thumbnail_width is not None:
                    thumb = self._thumbnail(colour)
                health = self._checker.check(small, time.monotonic())
                return _Processed(health, width, height, snap, thumb)
            small = self._masked(vision.decode(frame.jpeg, reduce=reduce, gray=True))
            full = self._masked(vision.decode(frame.jpeg)) if snapshot else None
        else:
            assert frame.image is not None
            full = self._masked(frame.image.copy())  # the source's frame stays as it came
            height, width = full.shape[:2]
            scale = max(1, width // CHECK_WIDTH)
            gray = cast("Image", cv2.cvtColor(full, cv2.COLOR_BGR2GRAY))
            small = vision.fit(gray, max_width=width // scale, max_height=height // scale)
        health = self._checker.check(small, time.monotonic())
        if snapshot and full is not None:
            img = vision.fit(full, max_width=c.snapshot_width, max_height=c.snapshot_height)
            data = vision.encode_under(img, max_bytes=limit, quality=c.snapshot_quality)
            sw, sh = vision.jpeg_size(data)
            snap = (data, sw, sh)
            if c.thumbnail_width is not None:
                thumb = self._thumbnail(img)
        return _Processed(health, width, height, snap, thumb)

    def _thumbnail(self, img: Image) -> tuple[bytes, int, int]:
        from tepi.drivers.camera import vision

        assert self.config.thumbnail_width is not None
        data = vision.thumbnail(img, width=self.config.thumbnail_width)
        w, h = vision.jpeg_size(data)
        return data, w, h

    async def _store(self, frame: Frame, done: _Processed, reason: str) -> Stored | None:
        if done.snapshot is None or self.images is None:
            return None
        data, w, h = done.snapshot
        ts = frame.received
        mono = boottime() - (time.time() - ts)
        try:
            seq, path = await self.images.store(
                self.config.id, "snapshot", data, reason=reason, ts=ts, mono=mono, width=w, height=h
            )
            thumb_seq = None
            if done.thumbnail is not None:
                tdata, tw, th = done.thumbnail
                thumb_seq, _ = await self.images.store(
                    self.config.id,
                    "thumbnail",
                    tdata,
                    reason=reason,
                    ts=ts,
                    mono=mono,
                    width=tw,
                    height=th,
                    parent=seq,
                )
        except OSError as err:
            # Refused by a quota or the disk: counted there; the health poll goes on.
            self.snapshot_errors += 1
            if self.snapshot_errors == 1:
                log.warning("camera %s: snapshot not stored: %s", self.config.id, err)
            if reason != "periodic":
                raise
            self._last_snapshot = boottime()
            return None
        self._last_snapshot = boottime()
        self.snapshots += 1
        self.last_snapshot_seq = seq
        return Stored(seq, thumb_seq, w, h, len(data), path, data)


_PIXEL_THREAD: ThreadPoolExecutor | None = None


def _pixels() -> ThreadPoolExecutor:
    """The one worker thread every camera's pixel work runs in, one frame at a time.

    One thread, not asyncio's pool of several: a frame's work is a few milliseconds and the
    cameras poll every few seconds, so they rarely queue; one thread keeps one malloc arena
    for the decoded frames (a pool keeps one per thread that worked) and takes the GIL from
    the event loop less often. OpenCV's own thread pool is
    set to one thread for the same reasons (its workers' wake-ups cost more CPU than they
    save on images this small)."""
    global _PIXEL_THREAD  # noqa: PLW0603 - made with the first camera
    if _PIXEL_THREAD is None:
        import cv2

        cv2.setNumThreads(1)
        _PIXEL_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tepi-pixels")
    return _PIXEL_THREAD


__all__ = ["CameraDriver", "ImageSink", "Stored"]
