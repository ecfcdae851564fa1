"""Camera analytics in the agent: the engine run on a camera's frames, off the event loop.

One :class:`AnalysisRunner` per camera with ``analytics:`` (docs/vision.md). The camera's
source offers it frames as they come (a stream's decoder thread, an MJPEG part, or each poll's
snapshot); the runner keeps to ``analytics.fps`` by taking a frame only when the next one is
due, so frames over the rate are skipped evenly, and it analyses in a thread of its own, so a
slow analysis never delays the decoder, the loop or the sensors. While it works, newer frames
replace each other in a one-frame mailbox: when the box cannot keep up, frames are dropped
evenly (counted as ``dropped``), never queued, and the analysis never falls behind real time.

What comes out:

* **Readings**, as :class:`~tepi.core.records.Values` that the camera's next poll (or a drain
  the runner asks for, ``on_ready``) hands to the buffer like any other reading: ``motion``
  (and ``motion.ZONE``) when it changes, and once per ``count_interval``, stamped at the
  interval's end, the counts per line and direction (and class), each zone's occupancy and
  queue length, the largest motion area, and ``frames`` (frames analysed in the interval, so
  the IOC can tell an interval the camera was down in from an empty road).
* **Object events** (``start``, ``update``, ``end``), each an image of class ``event`` in the
  image buffer with the event as JSON beside it (``event`` in the image's metadata): the
  object's crop when it is first seen and at an update, its best view at the end. Images are
  cut from the frame after the privacy masks are filled. They are encoded in the analysis
  thread and written by a writer thread of their own, through a bounded queue (a full queue
  drops the event image, counted).

Threads: the analysis thread and the writer thread are owned here and stopped by
:meth:`AnalysisRunner.stop`; neither owns an event loop. The engine (``analytics.py``) is
pure and single-threaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from tepi.core.records import Values

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from tepi.drivers.camera.analytics import (
        AnalyticsSettings,
        Analyzer,
        ObjectEvent,
        Observation,
    )
    from tepi.drivers.camera.config import AnalyticsConfig, DetectorConfig
    from tepi.drivers.camera.driver import ImageSink
    from tepi.drivers.camera.sources import Frame

    Image = npt.NDArray[np.uint8]

log = logging.getLogger(__name__)

MAX_PENDING = 2_000
"""Readings (Values) kept for the next poll at most; older ones are dropped, counted. At one
interval's Values a minute plus motion changes, that is hours of a poll loop that is stuck."""

MAX_EVENT_QUEUE = 64
"""Event images encoded and waiting for the writer (each a few KB). When it is full, an update
is dropped at once, a start or end after waiting ``EVENT_WAIT``; each drop is counted."""

MAX_BEST = 64
"""Best views kept for tracks still alive (each a small crop): bounded if tracks pile up."""

EVENT_WAIT = 2.0
"""Seconds a start or end event waits for room in the writer's queue before it is dropped."""

CROP_MARGIN = 0.25  # each side of the object's box, as a share of its size
_MIN_CROP = 48  # px: a crop of a small far object is enlarged to at least this


@dataclass(slots=True)
class _Interval:
    """What one ``count_interval`` has gathered so far."""

    start: float  # analysis time (the frames' monotonic seconds) of its start
    counts: dict[str, int] = field(default_factory=dict)
    occupancy: dict[str, float] = field(default_factory=dict)  # sums, for the mean
    queue_max: dict[str, float] = field(default_factory=dict)
    motion_area: float = 0.0
    zone_area: dict[str, float] = field(default_factory=dict)
    frames: int = 0


_Held = tuple[tuple[bytes, int, int], tuple[float, float, float, float], tuple[str, ...], float]


@dataclass(slots=True)
class _Live:
    """A tracked object with an event open: where it has been and its best view."""

    event_id: str
    start_wall: float
    entered: list[str]
    best: tuple[bytes, int, int] | None = None  # JPEG crop, width, height
    best_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # the crop's
    last_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    label: str | None = None
    score: float = 1.0
    # With event_zones: the start held back until the object enters one of them (its
    # thumbnail, box, zones and time); None once it has gone, or without event_zones.
    held: _Held | None = None


@dataclass(frozen=True, slots=True)
class MetricPlan:
    """The analytics' metric names, fixed by the config: the interval's tuple (shared by
    every interval's Values) and where each line, direction and class counts in it."""

    counts: tuple[str, ...]
    count_index: dict[tuple[str, str, str | None], int]
    interval: tuple[str, ...]
    interval_units: tuple[str | None, ...]
    zones: tuple[str, ...]

    @classmethod
    def of(cls, cfg: AnalyticsConfig) -> MetricPlan:
        classes: list[str] = [c.name for c in cfg.classes]
        if cfg.detector is not None:
            classes = sorted(set(cfg.detector.classes.values()))
        counts: list[str] = []
        index: dict[tuple[str, str, str | None], int] = {}
        for line in cfg.lines:
            for direction in ("in", "out"):
                index[(line.name, direction, None)] = len(counts)
                counts.append(f"count.{line.name}.{direction}")
                for k in classes:
                    index[(line.name, direction, k)] = len(counts)
                    counts.append(f"count.{line.name}.{direction}.{k}")
        zones = tuple(z.name for z in cfg.zones)
        queues = [z.name for z in cfg.zones if z.stop_line is not None]
        interval = (
            *counts,
            *(f"occupancy.{z}" for z in zones),
            *(f"queue_length.{z}" for z in queues),
            *(f"queue_length_max.{z}" for z in queues),
            "motion_area",
            *(f"motion_area.{z}" for z in zones),
            "frames",
        )
        units: list[str | None] = [None] * len(counts)
        units += ["%"] * len(zones) + ["m"] * (2 * len(queues)) + ["%"] * (1 + len(zones))
        units.append(None)
        return cls(tuple(counts), index, interval, tuple(units), zones)

    def all(self) -> list[tuple[str, str | None]]:
        """Every metric, with its unit: motion's (on a change) and the interval's."""
        out: list[tuple[str, str | None]] = [("motion", None)]
        out += [(f"motion.{z}", None) for z in self.zones]
        out += list(zip(self.interval, self.interval_units, strict=True))
        return out


class AnalysisRunner:
    """The analytics of one camera; see the module docstring.

    ``mask`` fills the privacy masks in a full-size BGR frame, in place (the driver's own
    mask plan). ``images`` is the image buffer (None: events give no images and are not
    kept). ``on_ready`` is called on the loop when readings wait for a drain (motion went on
    or off, an interval ended); the agent wires it to the device's poll loop."""

    def __init__(
        self,
        camera: str,
        cfg: AnalyticsConfig,
        masks: Sequence[Sequence[tuple[float, float]]],
        *,
        images: ImageSink | None,
        mask: Callable[[Image], Image],
        thumbnail_width: int = 320,
        best_width: int = 640,
        quality: int = 75,
    ) -> None:
        self.camera = camera
        self.cfg = cfg
        self._masks = [tuple((float(x), float(y)) for x, y in m) for m in masks]
        self.images = images
        self._mask = mask
        self._thumb_w = thumbnail_width
        self._best_w = best_width
        self._quality = quality
        self.on_ready: Callable[[], None] | None = None
        self._period = 1.0 / cfg.fps
        self._next_due: float | None = None
        self._cond = threading.Condition()
        self._slot: tuple[Frame, float] | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._events: queue.Queue[tuple[bytes, int, int, float, float, str] | None] = queue.Queue(
            MAX_EVENT_QUEUE
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._analyzer: Analyzer | None = None
        self.settings: AnalyticsSettings | None = None  # the engine's, once started
        self._detector: Any = None
        self._next_detect = 0.0
        # Readings for the next drain; guarded by _out_lock (the analysis thread adds, the
        # loop drains).
        self._out_lock = threading.Lock()
        self._pending: deque[Values] = deque()
        self._interval: _Interval | None = None
        self._motion: dict[str, bool] = {}
        self._live: dict[int, _Live] = {}
        self._required = frozenset(cfg.event_zones)
        plan = MetricPlan.of(cfg)
        self._count_names, self._count_index = plan.counts, plan.count_index
        self._interval_metrics, self._interval_units = plan.interval, plan.interval_units
        # Counters (health); written by the analysis thread, read by anyone (plain ints).
        self.offered = 0
        self.skipped = 0  # over the rate: not wanted
        self.dropped = 0  # wanted, but a newer frame came before the analysis was free
        self.analysed = 0
        self.cpu_s = 0.0
        self.last_ms: float | None = None
        self._recent: deque[tuple[float, float]] = deque(maxlen=64)  # (mono, cpu s)
        self.events = 0
        self.events_dropped = 0
        self.events_filtered = 0  # objects that never entered an event zone: no event
        self.event_errors = 0
        self.readings_dropped = 0
        self.relearning = False
        self.errors = 0
        self.last_error: str | None = None
        self._last_obs: Observation | None = None
        self._last_wall: float | None = None  # when the last frame analysed was received

    # ---- metrics ------------------------------------------------------------------------

    def metric_names(self) -> list[tuple[str, str | None]]:
        """Every metric the analytics give, with its unit."""
        return MetricPlan.of(self.cfg).all()

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Build the engine (and load the detector, in a worker thread: a bad model raises
        here, before any frame) and start the threads."""
        import cv2

        from tepi.drivers.camera.analytics import (
            AnalyticsSettings,
            Analyzer,
            CountLine,
            SizeClass,
            Zone,
        )

        # OpenCV's own pool, one thread, as for the pixel thread (driver._pixels): its
        # workers' wake-ups cost more than they save on frames this small, and on a loaded
        # 2-core box a frame took 4 times longer with them.
        cv2.setNumThreads(1)
        c = self.cfg
        classes = sorted(
            (SizeClass(k.name, k.max_area if k.max_area is not None else 1.0) for k in c.classes),
            key=lambda k: k.max_area,
        )
        settings = AnalyticsSettings(
            width=c.width,
            masks=tuple(self._masks),
            ignore=tuple(tuple((float(x), float(y)) for x, y in p) for p in c.ignore),
            lines=tuple(CountLine(x.name, x.points[0], x.points[1]) for x in c.lines),
            zones=tuple(Zone(z.name, tuple(z.polygon), z.stop_line, z.length_m) for z in c.zones),
            classes=tuple(classes),
            threshold=c.threshold,
            min_area=c.min_area,
            motion_off_delay=c.motion_off_delay,
            max_lost=c.max_lost,
        )
        self.settings = settings
        self._analyzer = Analyzer(settings)
        if c.detector is not None:
            self._detector = await asyncio.to_thread(_load_detector, c.detector)
        self._loop = asyncio.get_running_loop()
        self._stop = False
        self._thread = threading.Thread(
            target=self._work, name=f"camera-analytics {self.camera}", daemon=True
        )
        self._writer = threading.Thread(
            target=self._write_events, name=f"camera-events {self.camera}", daemon=True
        )
        self._thread.start()
        self._writer.start()

    async def stop(self) -> None:
        """Stop the analysis (the frame in hand is finished), end the open events and
        flush the interval so far (a clean stop loses no count), then let the writer
        store what is queued."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        await asyncio.to_thread(thread.join, 10.0)
        if not thread.is_alive():
            # Stamped at the last frame analysed: what the interval so far covers.
            wall = self._last_wall if self._last_wall is not None else time.time()
            self._end_all(wall)
            self._flush(wall)
        writer, self._writer = self._writer, None
        if writer is not None:
            # Behind what is queued (the writer needs the loop, which runs meanwhile).
            await asyncio.to_thread(self._events.put, None)
            await asyncio.to_thread(writer.join, 30.0)

    # ---- frames in ----------------------------------------------------------------------

    def offer(self, frame: Frame, mono: float) -> None:
        """A frame from the source (any thread; never blocks): taken when due at ``fps``."""
        self.offered += 1
        due = self._next_due
        if due is not None and mono < due - self._period * 0.25:
            self.skipped += 1
            return
        # Keep the cadence, but never run ahead of a source slower than fps or catch up
        # after a gap: the next frame is due one period after this one's due time.
        self._next_due = (
            mono + self._period
            if due is None or mono - due > self._period
            else (due + self._period)
        )
        with self._cond:
            if self._slot is not None:
                self.dropped += 1
            self._slot = (frame, mono)
            self._cond.notify()

    # ---- the analysis thread ------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                if self._slot is None and not self._stop:
                    self._cond.wait(1.0)
                if self._stop:
                    return
                taken, self._slot = self._slot, None
            if taken is None:
                # No frame for a second (the camera is down, or a slow snapshot source): an
                # interval that has ended is reported all the same, with the frames it had.
                self._tick(time.monotonic(), time.time())
                continue
            frame, mono = taken
            started = time.thread_time()
            try:
                self._analyse(frame, mono)
            except Exception as err:
                self.errors += 1
                self.last_error = f"{type(err).__name__}: {err}"
                if self.errors == 1:
                    log.exception("camera %s: analytics failed on a frame", self.camera)
            spent = time.thread_time() - started
            self.cpu_s += spent
            self.last_ms = spent * 1000
            self._recent.append((mono, spent))

    def _analyse(self, frame: Frame, mono: float) -> None:
        from tepi.drivers.camera import vision

        assert self._analyzer is not None
        wall = frame.received
        if frame.image is not None:
            image = frame.image
        else:
            assert frame.jpeg is not None
            image = vision.decode(frame.jpeg)
        detections = None
        if self._detector is not None and mono >= self._next_detect:
            assert self.cfg.detector is not None
            self._next_detect = mono + self.cfg.detector.interval
            detections = self._detector.detect(image)
        obs = self._analyzer.process(image, mono, detections)
        self._last_wall = wall
        self.analysed += 1
        self.relearning = obs.relearning
        ready = self._motion_changes(obs, wall)
        self._gather(obs, mono, wall)
        if self.cfg.events and (obs.events or obs.best):
            self._on_events(obs, image, wall)
        if ready:
            self._ready()

    # ---- readings -----------------------------------------------------------------------

    def _push(self, values: Values) -> None:
        with self._out_lock:
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()
                self.readings_dropped += 1
            self._pending.append(values)

    def _ready(self) -> None:
        loop, hook = self._loop, self.on_ready
        if loop is None or hook is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent has stopped
            loop.call_soon_threadsafe(hook)

    def drain(self) -> list[Values]:
        """The readings made since the last drain (the camera's poll hands them over)."""
        with self._out_lock:
            out = list(self._pending)
            self._pending.clear()
        return out

    def _motion_changes(self, obs: Observation, wall: float) -> bool:
        states = {"motion": obs.motion}
        for name, z in obs.zones.items():
            states[f"motion.{name}"] = z.motion
        changed = [(k, v) for k, v in states.items() if self._motion.get(k) != v]
        if not changed:
            return False
        self._motion.update(changed)
        mono = _boottime_of(wall)
        self._push(
            Values(
                tuple(k for k, _ in changed),
                (None,) * len(changed),
                [v for _, v in changed],
                wall,
                mono,
            )
        )
        return True

    def _gather(self, obs: Observation, mono: float, wall: float) -> None:
        every = self.cfg.count_interval
        iv = self._interval
        if iv is None:
            iv = self._interval = _Interval(start=mono - mono % every)
        elif mono >= iv.start + every:
            self._flush(wall - (mono - (iv.start + every)))
            iv = self._interval = _Interval(start=mono - mono % every)
            self._ready()
        iv.frames += 1
        iv.motion_area = max(iv.motion_area, obs.motion_area)
        for name, z in obs.zones.items():
            iv.occupancy[name] = iv.occupancy.get(name, 0.0) + z.occupancy
            iv.zone_area[name] = max(iv.zone_area.get(name, 0.0), z.motion_area)
            if z.queue_length is not None:
                iv.queue_max[name] = max(iv.queue_max.get(name, 0.0), z.queue_length)
        for x in obs.crossings:
            keys: list[tuple[str, str, str | None]] = [(x.line, x.direction, None)]
            if x.label is not None:
                keys.append((x.line, x.direction, x.label))
            for key in keys:
                i = self._count_index.get(key)
                if i is not None:
                    name = self._count_names[i]
                    iv.counts[name] = iv.counts.get(name, 0) + 1
        self._last_obs = obs

    def _tick(self, mono: float, wall: float) -> None:
        iv = self._interval
        if iv is not None and mono >= iv.start + self.cfg.count_interval:
            end = iv.start + self.cfg.count_interval
            self._flush(wall - (mono - end))
            self._ready()

    def _flush(self, wall_end: float) -> None:
        """The interval so far as one Values, stamped at its end."""
        iv = self._interval
        if iv is None or iv.frames == 0:
            return
        self._interval = None
        last = self._last_obs
        values: list[object] = [iv.counts.get(n, 0) for n in self._count_names]
        zones = [z.name for z in self.cfg.zones]
        values += [round(100 * iv.occupancy.get(z, 0.0) / iv.frames, 2) for z in zones]
        queues = [z.name for z in self.cfg.zones if z.stop_line is not None]
        now_q = [
            None if last is None or last.zones.get(z) is None else last.zones[z].queue_length
            for z in queues
        ]
        values += [None if q is None else round(q, 1) for q in now_q]
        values += [round(iv.queue_max.get(z, 0.0), 1) for z in queues]
        values.append(round(100 * iv.motion_area, 2))
        values += [round(100 * iv.zone_area.get(z, 0.0), 2) for z in zones]
        values.append(iv.frames)
        reasons: list[str | None] | None = None
        if any(v is None for v in values):
            reasons = ["no queue measured" if v is None else None for v in values]
        self._push(
            Values(
                self._interval_metrics,
                self._interval_units,
                values,  # type: ignore[arg-type]
                wall_end,
                _boottime_of(wall_end),
                reasons,
            )
        )

    # ---- events -------------------------------------------------------------------------

    def _on_events(self, obs: Observation, image: Image, wall: float) -> None:
        masked: Image | None = None

        def frame() -> Image:
            nonlocal masked
            if masked is None:
                masked = self._mask(image.copy()) if self._masks else image
            return masked

        by_id = {t.id: t for t in obs.tracks}
        for tid in obs.best:
            live = self._live.get(tid)
            track = by_id.get(tid)
            if live is None or track is None:
                continue
            live.best = self._crop(frame(), track.box, self._best_w)
            live.best_box = live.last_box = track.box
        for ev in obs.events:
            self._event(ev, frame, wall)

    def _event(self, ev: ObjectEvent, frame: Callable[[], Image], wall: float) -> None:
        live = self._live.get(ev.track)
        if ev.kind == "start" or live is None:
            if len(self._live) >= MAX_BEST:  # bounded: the oldest open event loses its best
                oldest = min(self._live, key=lambda k: self._live[k].start_wall)
                self._live[oldest].best = None
            start_wall = wall - max(0.0, ev.t - ev.start)
            live = self._live[ev.track] = _Live(
                event_id=f"{self.camera}-{int(start_wall * 1000):x}-{ev.track}",
                start_wall=start_wall,
                entered=[],
            )
        for z in ev.zones:
            if z not in live.entered:
                live.entered.append(z)
        live.label = ev.label
        live.last_box = ev.box
        required = self._required
        if required and not required.intersection(live.entered):
            # Not (yet) in a zone the events are for: its start waits, its updates go, and
            # an end without an entry means the object gives no event at all.
            if ev.kind == "start":
                img = self._crop(frame(), ev.box, self._thumb_w)
                live.held = (img, ev.box, tuple(ev.zones), wall)
                live.best, live.best_box = img, ev.box
            elif ev.kind == "end":
                self._live.pop(ev.track, None)
                self.events_filtered += 1
            return
        if live.held is not None:  # it has entered one: the start goes first, as it was
            img, box, zones, at = live.held
            live.held = None
            self._queue_event(
                live, "start", box=box, zones=zones, wall=at, img=img, image_kind="thumbnail"
            )
            if ev.kind == "start":
                return
        if ev.kind == "end":
            self._live.pop(ev.track, None)
            if live.best is not None:  # the box is the one the image was cut around
                img, box = live.best, live.best_box
            else:
                box = ev.best_box or ev.box
                img = self._crop(frame(), box, self._best_w)
            self._queue_event(
                live, "end", box=box, zones=ev.zones, wall=wall, img=img, image_kind="best"
            )
        else:
            img = self._crop(frame(), ev.box, self._thumb_w)
            kind = "thumbnail" if ev.kind == "start" else "current"
            if live.best is None:  # until a better view comes (and for an end at a stop)
                live.best, live.best_box = img, ev.box
            self._queue_event(
                live, ev.kind, box=ev.box, zones=ev.zones, wall=wall, img=img, image_kind=kind
            )

    def _end_all(self, wall: float) -> None:
        """At a stop: the end of every open event (its best view and its box)."""
        for live in list(self._live.values()):
            if live.best is not None and live.held is None:
                self._queue_event(
                    live, "end", box=live.best_box, zones=(), wall=wall, img=live.best,
                    image_kind="best",
                )  # fmt: skip
        self._live.clear()

    def _crop(
        self, img: Image, box: tuple[float, float, float, float], width: int
    ) -> tuple[bytes, int, int]:
        from tepi.drivers.camera import vision

        h, w = img.shape[:2]
        x0, y0, x1, y1 = box
        mx, my = (x1 - x0) * CROP_MARGIN, (y1 - y0) * CROP_MARGIN
        px0 = max(0, int((x0 - mx) * w))
        py0 = max(0, int((y0 - my) * h))
        px1 = min(w, max(px0 + _MIN_CROP, int((x1 + mx) * w) + 1))
        py1 = min(h, max(py0 + _MIN_CROP, int((y1 + my) * h) + 1))
        crop = img[py0:py1, px0:px1]
        if crop.shape[1] > width:
            crop = vision.fit(crop, max_width=width, max_height=width)
        data = vision.encode_jpeg(crop, quality=self._quality)
        return data, int(crop.shape[1]), int(crop.shape[0])

    def _queue_event(
        self,
        live: _Live,
        kind: str,
        *,
        box: tuple[float, float, float, float],
        zones: Sequence[str],
        wall: float,
        img: tuple[bytes, int, int],
        image_kind: str,
    ) -> None:
        event = {
            "id": live.event_id,
            "type": kind,
            "label": live.label,
            "start": round(live.start_wall, 3),
            "end": round(wall, 3) if kind == "end" else None,
            "box": [round(min(1.0, max(0.0, float(v))), 4) for v in box],
            "zones": [str(z) for z in zones],
            "entered_zones": list(live.entered),
            "score": round(min(1.0, max(0.0, float(live.score))), 3),
            "image": image_kind,
        }
        data, w, h = img
        item = (data, w, h, wall, _boottime_of(wall), orjson.dumps(event).decode())
        try:
            if kind == "update":
                self._events.put_nowait(item)  # an update is the first to go
            else:
                # A start or an end waits a little for the writer (the analysis drops
                # frames meanwhile, as when it is slow): an object's start without its end
                # is worth more than a frame.
                self._events.put(item, timeout=EVENT_WAIT)
        except queue.Full:
            self.events_dropped += 1
            return
        self.events += 1

    def _write_events(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            if self.images is None or self._loop is None:
                continue
            data, w, h, wall, mono, event = item
            reason = "event:" + orjson.loads(event)["type"]
            try:
                fut = asyncio.run_coroutine_threadsafe(
                    self.images.store(
                        self.camera,
                        "event",
                        data,
                        reason=reason,
                        ts=wall,
                        mono=mono,
                        width=w,
                        height=h,
                        event=event,
                    ),
                    self._loop,
                )
                fut.result(timeout=60)
            except Exception as err:  # noqa: BLE001 - refused by a quota or the disk: counted
                self.event_errors += 1
                if self.event_errors == 1:
                    log.warning("camera %s: an event image was not stored: %s", self.camera, err)

    # ---- health -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        recent = list(self._recent)
        fps = cpu_ms = None
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            span = recent[-1][0] - recent[0][0]
            fps = round((len(recent) - 1) / span, 2)
            cpu_ms = round(1000 * sum(s for _, s in recent) / len(recent), 2)
        return {
            "fps_target": self.cfg.fps,
            "fps": fps,
            "analysed": self.analysed,
            "skipped": self.skipped,
            "dropped": self.dropped,
            "cpu_ms_per_frame": cpu_ms,
            "cpu_s": round(self.cpu_s, 3),
            "relearning": self.relearning,
            "tracks": len(self._live),
            "events": self.events,
            "events_queued": self._events.qsize(),
            "events_filtered": self.events_filtered,
            "events_dropped": self.events_dropped,
            "event_errors": self.event_errors,
            "readings_dropped": self.readings_dropped,
            "errors": self.errors,
            "last_error": self.last_error,
        }


def _boottime_of(wall: float) -> float:
    """The boot clock at wall time ``wall`` (a frame's ``received``)."""
    from tepi.core.clock import boottime

    return boottime() - (time.time() - wall)


def _load_detector(cfg: DetectorConfig) -> Any:
    """The camera's detector, loaded and checked (DetectorError names what is wrong)."""
    from pathlib import Path

    from tepi.drivers.camera.detector import Detector, DetectorSettings

    labels = cfg.labels
    return Detector(
        DetectorSettings(
            model=cfg.model,
            format=cfg.format,
            labels=() if isinstance(labels, Path) else tuple(labels),
            labels_file=labels if isinstance(labels, Path) else None,
            classes=dict(cfg.classes),
            score_threshold=cfg.score,
            iou_threshold=cfg.iou,
            threads=cfg.threads,
            input_size=cfg.input_size,
            resize=cfg.resize,
            box_order=cfg.box_order,
            channels=cfg.channels,
        )
    )
