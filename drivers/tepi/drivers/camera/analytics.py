"""Camera analytics: motion, object tracks, line counts and zone figures from frames.

Synchronous and pure: :class:`Analyzer` takes a frame and its time and returns an
:class:`Observation`; it does no I/O, starts no thread and keeps no global state, so the
camera driver runs one per camera in a worker thread. OpenCV's own thread pool is the
caller's to size (``cv2.setNumThreads``); the figures below are with one thread.
Positions are normalised as in :mod:`tepi.drivers.camera.geometry`.

**The pipeline, per frame.**

1. The frame is shrunk to ``width`` pixels (``INTER_AREA``, aspect kept) and blurred (3x3),
   in colour (a green car as bright as the road differs in its channels, not in its grey);
   privacy ``masks`` and ``ignore`` zones are rasterised once per size and left out of
   everything below.
2. The background model (:mod:`tepi.drivers.camera.motion`) gives the foreground: a
   per-frame gain/offset fit to the background follows slow and sudden light changes, the
   range of the background over a ``shake``-pixel neighbourhood absorbs camera shake, a
   pixel is foreground when its mean over the channels lies ``threshold`` (normalised grey
   levels) outside that range, an opening removes noise and rain speckle, and the
   background learns slowly (``hold_time``) under objects and inside the boxes of tracked
   objects, so that a stopped queue stays foreground for minutes. A camera move (phase
   correlation of the frame with the background) or a change of most of the frame that
   lasts ``relearn_after`` seconds relearns the background from the median of the frames of
   the next ``relearn_time`` seconds; meanwhile ``relearning`` is set, nothing is detected,
   and every track ends. The first frames after :meth:`Analyzer.reset` are a relearning too.
3. Objects: the foreground's connected components of at least ``min_area`` of the frame
   (one that narrows between two objects side by side is cut there: :func:`_split`),
   or, when a detector ran on the frame, its detections. The tracker
   (:mod:`tepi.drivers.camera.tracker`) follows them through short occlusions, through
   merges of touching objects and across the cut a fixed occluder makes in them; it
   confirms a track after ``min_hits`` frames once the object has moved (a blob that never
   moves is a *ghost*, a change of the background such as a car that was there when it was
   learnt: the background is relearnt there), and counts its centre's crossings of each
   line, with hysteresis, once per line. A hole that a passing vehicle merged with has
   "moved" and is confirmed; a confirmed track that stands still is checked once a second
   by its outline's edges (in the background and not in the frame: a hole; or, where the
   frame has edges of its own there, by its inside looking like the road around it in the
   frame and not in the background), dropped and relearnt (``Background.ghostly``).
4. Stopped pixels: foreground pixels unchanged (beyond shake) from the frame a second
   before, for ``stopped_time``, and the foreground inside the boxes of stopped tracks (a
   track stops under ``stopping_speed`` and moves again over ``starting_speed``); the
   boxes of moving tracks (not stopped, and fast enough now) are never stopped. Motion is
   the rest of the foreground of objects of ``min_area``: ``motion_area`` is its share of
   the analysed area (of the camera, or of a zone), and ``motion`` turns on when two frames
   in a row have at least ``min_area`` of it, and stays on for ``motion_off_delay``
   seconds after.
5. Zones: ``occupancy`` is the share of the zone's pixels that are foreground (moving or
   stopped objects); ``queue_length`` runs from the stop line away from it over the zone's
   stopped pixels, in bins of ``queue_bin`` metres, across gaps up to ``queue_gap`` metres
   (and needs its head within ``queue_gap`` of the line), and is the distance to the end
   of that run, on the zone's linear scale (perspective ignored). It is the longest run of
   the zone as a whole, not per lane. Moving foreground between the line and the run's
   head ends it there: the queue is pulling away at green, and its first vehicles still
   look stopped for a moment. A queue shorter than in the frame before, but not gone, is
   reported at its length before for that one frame (``_steady_queue``).

**Classes.** A track's class is the detector's label when it has one, else the first
:class:`SizeClass` (by ``max_area``) that its typical box area (the median over the frames
where it was wholly in view) fits, else the biggest class. Sizes are in the image, so a
class's ``max_area`` holds for the part of the picture where the counting lines are.

**Events.** ``start`` when a track is confirmed, ``update`` when the zones it is in change
(at most every ``update_interval`` seconds), ``end`` when it is lost for good (or the
background is relearned). ``best`` lists the tracks whose view improved on this frame (a
bigger box, wholly in view): the caller keeps that frame's crop for the end event.

**Measured** (tests/test_drivers/test_camera_analytics_traffic.py, the simulator's traffic
scene, 640x360 analysed at 320 wide and 5 fps, 300 s, crossings counted from 10 s to a
second before the last frame, defaults here):

- seed 0, every hard case (followers, queue, lane changes, tree and gantry, shadows,
  lighting ramp, shake 2 px, noise 4): every line and direction within 3 % (lane 1 103/103,
  lane 2 91/91, lane 3 96/96, lane 4 91/91, all lanes in 193/193, out 184/185; no count in
  the wrong direction);
- seed 1, the same with rain 0.3 and an exposure jump a minute: every line within 3 %
  (lane 2 93/94, all lanes in 185/189); no count the wrong way;
- seed 7, whose first background learnt a slow bus: every line within 3 % (21 % of a lane
  lost before still tracks on a hole in the background were dropped);
- seed 9, whose first background learnt a vehicle over a lane marking: every line within
  3 % (lane 1 13 % low before a hole's inside was compared with the road around it);
- classes by size (two-wheeler <= 0.0035 of the frame, car <= 0.012, bus/truck above):
  two-wheelers within 2 % per line and direction, cars and buses within about 25 % (a bus
  seen cut short, or two vehicles in one box, takes the next class; no target in issue 20);
- queue length within the length of its last vehicle at 97.6 % of the moments sampled
  once a second (7 of 290 off; mean error 0.19 m; 95.5 % in rain with exposure jumps); it
  is a frame or a few early or late around the instants a vehicle joins it or it moves off;
- no vehicles, with rain 1.0, exposure jumps, a fast deep lighting ramp and shake: no
  event, no motion, no count;
- a camera knocked 4 % of the frame: relearnt within 2 s, counts afterwards within 5 %.

**Cost** (bench/analytics.py, one OpenCV thread, this 2-core machine shared with other
work): 2.5-2.9 ms of CPU a 640x360 frame at width 320, 1.3-1.5 % of a core at 5 fps; 8 ms
at width 640.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
from cv2.typing import MatLike

from tepi.drivers.camera.geometry import Box, Detection, Direction, Point, box_center, inside
from tepi.drivers.camera.motion import Background, BackgroundResult, MotionParams
from tepi.drivers.camera.tracker import LineDef, Tracker, TrackerParams, TrackState
from tepi.drivers.camera.vision import Image, compile_masks

__all__ = [
    "AnalyticsSettings",
    "Analyzer",
    "CountLine",
    "Crossing",
    "ObjectEvent",
    "Observation",
    "SizeClass",
    "Track",
    "Zone",
    "ZoneState",
]


@dataclass(frozen=True, slots=True)
class CountLine:
    """A counting line from ``a`` to ``b``; ``in`` is left to right of that arrow."""

    name: str
    a: Point
    b: Point


@dataclass(frozen=True, slots=True)
class Zone:
    """A polygon zone. ``queue_length`` needs ``stop_line`` and ``length_m``: the real length
    in metres from the stop line to the zone's farthest point, measured perpendicular to the
    stop line. The scale is linear: perspective is ignored, so a zone that recedes far from
    the camera under-measures its far end; keep queue zones short or seen from above."""

    name: str
    polygon: tuple[Point, ...]
    stop_line: tuple[Point, Point] | None = None
    length_m: float | None = None


@dataclass(frozen=True, slots=True)
class SizeClass:
    """A track whose typical box area (a fraction of the frame) is at most ``max_area`` gets
    this class (the first match by ``max_area``); bigger than all, the last."""

    name: str
    max_area: float


@dataclass(frozen=True, slots=True)
class AnalyticsSettings:
    """The analysis of one camera. Times in seconds, areas as fractions of the frame,
    distances normalised (0..1 of the frame) unless the name says metres."""

    width: int = 320
    """Analysis width in pixels: the frame is resized to it, aspect kept."""
    masks: tuple[tuple[Point, ...], ...] = ()
    """Privacy masks: never analysed."""
    ignore: tuple[tuple[Point, ...], ...] = ()
    """Ignore zones (trees, a flag, a screen): no motion and no objects there."""
    lines: tuple[CountLine, ...] = ()
    zones: tuple[Zone, ...] = ()
    classes: tuple[SizeClass, ...] = ()
    threshold: int = 15
    """Grey levels (0..255) a pixel must differ from the background, after the light is
    normalised, to be foreground; raised automatically to four times the measured noise."""
    min_area: float = 0.0004
    """Smallest object, and the least motion that turns ``motion`` on."""
    motion_off_delay: float = 5.0
    max_lost: float = 1.0
    """How long a confirmed track is predicted on without a match (occlusions)."""
    min_hits: int = 3
    """Frames before a track is confirmed (events, counts)."""
    learn_time: float = 20.0
    """Time constant of the background where there is no object."""
    hold_time: float = 600.0
    """Time constant of the background under objects: a stopped queue stays foreground for
    a good part of it (after one ``hold_time`` an object of contrast c shows c/e)."""
    shake: int = 1
    """Camera shake tolerated, in analysis pixels (a pixel is compared with the background's
    range over this radius)."""
    global_fraction: float = 0.5
    """A frame where more than this share of the analysed area changed is a global change
    (camera moved, light jumped): no motion, no objects."""
    relearn_after: float = 1.0
    """A global change lasting this long relearns the background."""
    relearn_time: float = 2.0
    """How long relearning lasts (fast learning, nothing detected)."""
    hysteresis: float = 0.01
    """A centre must be this far from a line for its side to count (wiggles on the line)."""
    stopped_speed: float = 0.0175
    """Frame widths or heights per second. A track not stopped (``stopping_speed``) and
    faster than 1.5 times this is moving (its pixels are never stopped); one slower than
    half of it over the last second is checked for a hole in the background. Before, a
    moving track had to be faster than this over the last second too (its steady speed):
    the first vehicle of a queue starting off at green looked stopped for about a second
    more. Over the 24 scenes, queue moments off 241 with that, 232 without (231 with 1.4
    times, 239 with 1.6, 327 with 2)."""
    stopping_speed: float = 0.0155
    """A moving track slower than this has stopped: its box's foreground is queue at once.
    It moves again once faster than ``starting_speed``: a stopped track's measured speed
    wanders up to about 0.02, and one threshold for both made queues flicker below 0.0175
    and join them early above it (a vehicle still rolling to its stop). Over the 24 scenes
    of bench/analytics_accuracy.py, queue moments off by more than a vehicle: 269 with one
    threshold of 0.0175 (321 at 0.015, 386 at 0.012), 244 with 0.0155 and 0.022, 250 with
    0.014 and 0.022."""
    starting_speed: float = 0.022
    """A stopped track faster than this moves again (see ``stopping_speed``)."""
    stopped_time: float = 0.6
    """A foreground pixel unchanged for this long belongs to a stopped object (queues)."""
    queue_gap: float = 3.0
    """Metres of gap allowed within a queue, and between the stop line and its head."""
    queue_bin: float = 0.5
    """Metres per step of the queue's measure."""
    update_interval: float = 5.0
    """Least time between two events of one track (zone changes wait for it)."""


@dataclass(frozen=True, slots=True)
class ZoneState:
    motion: bool
    motion_area: float
    occupancy: float
    queue_length: float | None


@dataclass(frozen=True, slots=True)
class Crossing:
    line: str
    direction: Direction
    label: str | None
    track: int
    t: float


@dataclass(frozen=True, slots=True)
class Track:
    id: int
    box: Box
    label: str | None
    stopped: bool
    zones: tuple[str, ...]
    score: float


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    kind: Literal["start", "update", "end"]
    track: int
    box: Box
    label: str | None
    zones: tuple[str, ...]
    start: float
    t: float
    best_box: Box | None


@dataclass(frozen=True, slots=True)
class Observation:
    t: float
    motion: bool
    motion_area: float
    zones: dict[str, ZoneState]
    crossings: list[Crossing]
    tracks: list[Track]
    events: list[ObjectEvent]
    best: list[int]
    relearning: bool


@dataclass(slots=True)
class _ZonePlan:
    zone: Zone
    mask: npt.NDArray[np.uint8]
    pixels: int
    flat: npt.NDArray[np.intp] | None = None  # the zone's pixels (flat indices), queues only
    bins: npt.NDArray[np.intp] | None = None  # each one's distance bin from the stop line
    bin_pixels: npt.NDArray[np.intp] | None = None
    last_motion: float = -math.inf
    seen: bool = False  # motion in the last frame
    queue_raw: float = 0.0  # the queue measured in the last frame (``_steady_queue``)


@dataclass(slots=True)
class _Plan:
    """Everything rasterised for one analysis size."""

    width: int
    height: int
    valid: npt.NDArray[np.uint8]
    privacy: npt.NDArray[np.uint8]
    zones: list[_ZonePlan] = field(default_factory=list)


@dataclass(slots=True)
class _EventState:
    last: float
    zones: tuple[str, ...]


class Analyzer:
    """The analysis of one stream (see the module's docstring)."""

    def __init__(self, settings: AnalyticsSettings) -> None:
        s = settings
        self.settings = s
        self._classes = tuple(sorted(s.classes, key=lambda c: c.max_area))
        self._background = Background(
            MotionParams(
                threshold=s.threshold,
                learn_time=s.learn_time,
                hold_time=s.hold_time,
                shake=s.shake,
                global_fraction=s.global_fraction,
                relearn_after=s.relearn_after,
                relearn_time=s.relearn_time,
            )
        )
        self._tracker = Tracker(
            TrackerParams(
                max_lost=s.max_lost,
                min_hits=s.min_hits,
                hysteresis=s.hysteresis,
            ),
            [LineDef(ln.name, ln.a, ln.b) for ln in s.lines],
            self._size_class,
        )
        self._plan: _Plan | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the background and the tracks (a new stream); no end events follow."""
        self._background.reset()
        self._tracker.reset()
        self._events: dict[int, _EventState] = {}
        self._ghost_checked: dict[int, float] = {}  # track id: when last checked
        self._history: deque[tuple[float, npt.NDArray[np.float32]]] = deque(maxlen=64)
        self._age: npt.NDArray[np.float32] | None = None
        self._t: float | None = None
        self._last_motion = -math.inf
        self._seen = False
        if self._plan is not None:
            for z in self._plan.zones:
                z.last_motion = -math.inf
                z.seen = False

    def process(
        self, image: Image, t: float, detections: Sequence[Detection] | None = None
    ) -> Observation:
        s = self.settings
        frame = self._prepare(image)
        plan = self._plan_for(frame.shape[1], frame.shape[0])
        dt = 0.0 if self._t is None else max(0.0, t - self._t)
        self._t = t
        bg = self._background.apply(frame, plan.valid, t)
        fg = bg.fg
        events: list[ObjectEvent] = []
        crossings: list[Crossing] = []
        best: list[int] = []

        if bg.relearning:
            for tr in self._tracker.reset():
                events.append(self._event("end", tr, t))
            self._events.clear()
            self._age = None
        blobs, fg = self._blobs(fg, plan)
        if not bg.relearning and not bg.global_change:
            if detections is None:
                objects = blobs
            else:
                objects = [d for d in detections if not self._private(d.box, plan)]
            step = self._tracker.step(t, objects, blobs=detections is None)
            for box in step.ghosts:
                self._background.absorb(bg, _pixels(box, plan, 2))
            for tr in step.confirmed:
                events.append(self._event("start", tr, t))
            for c in step.crossings:
                tr_c = next(tr for tr in self._tracker.tracks if tr.id == c.track)
                crossings.append(
                    Crossing(c.line, c.direction, self._tracker.label(tr_c), c.track, c.t)
                )
            for tr in step.ended:
                events.append(self._event("end", tr, t))
            best = step.best
            for tr in self._ghosts(bg, plan, t):
                events.append(self._event("end", tr, t))

        self._background.learn(bg, [_pixels(tr.box, plan, 1) for tr in self._tracker.tracks])
        self._track_stops()
        stopped = self._stopped(fg, bg.normalised, t, dt)
        moving = cv2.bitwise_and(fg, cv2.bitwise_not(stopped))
        min_px = max(1, round(s.min_area * plan.width * plan.height))
        n_moving = cv2.countNonZero(moving)
        # Motion is on after two frames in a row with some: a single frame's worth is more
        # likely rain in the dark than an object.
        if n_moving >= min_px and self._seen:
            self._last_motion = t
        self._seen = n_moving >= min_px
        n_valid = max(1, cv2.countNonZero(plan.valid))
        zones: dict[str, ZoneState] = {}
        for z in plan.zones:
            zm = cv2.countNonZero(cv2.bitwise_and(moving, z.mask))
            seen = zm >= min(min_px, max(1, z.pixels // 4))
            if seen and z.seen:
                z.last_motion = t
            z.seen = seen
            occupied = cv2.countNonZero(cv2.bitwise_and(fg, z.mask))
            zones[z.zone.name] = ZoneState(
                motion=t - z.last_motion <= s.motion_off_delay,
                motion_area=zm / max(1, z.pixels),
                occupancy=occupied / max(1, z.pixels),
                queue_length=self._steady_queue(z, self._queue(z, stopped, fg)),
            )

        tracks = []
        for tr in self._tracker.tracks:
            tr.zones = tuple(z.name for z in s.zones if inside(z.polygon, (tr.cx, tr.cy)))
            if not tr.confirmed:
                continue
            tracks.append(
                Track(
                    tr.id,
                    tr.box,
                    self._tracker.label(tr),
                    tr.stopped,
                    tr.zones,
                    tr.score,
                )
            )
            state = self._events.get(tr.id)
            if state is None:
                continue
            if tr.zones != state.zones and t - state.last >= s.update_interval:
                events.append(self._event("update", tr, t))
        return Observation(
            t=t,
            motion=t - self._last_motion <= s.motion_off_delay,
            motion_area=n_moving / n_valid,
            zones=zones,
            crossings=crossings,
            tracks=tracks,
            events=events,
            best=best,
            relearning=bg.relearning,
        )

    # ---- the parts -----------------------------------------------------------------------

    def _prepare(self, image: Image) -> npt.NDArray[np.uint8]:
        h, w = image.shape[:2]
        aw = min(self.settings.width, w)
        ah = max(1, round(h * aw / w))
        small = (
            image
            if (aw, ah) == (w, h)
            else cv2.resize(image, (aw, ah), interpolation=cv2.INTER_AREA)
        )
        return np.asarray(cv2.GaussianBlur(small, (3, 3), 0), dtype=np.uint8)

    def _plan_for(self, width: int, height: int) -> _Plan:
        plan = self._plan
        if plan is not None and (plan.width, plan.height) == (width, height):
            return plan
        s = self.settings
        privacy = compile_masks(s.masks, width, height).mask
        ignored = compile_masks(s.ignore, width, height).mask
        valid = _u8(cv2.bitwise_not(cv2.bitwise_or(privacy, ignored)))
        plan = _Plan(width, height, valid, privacy)
        for zone in s.zones:
            zmask = _u8(cv2.bitwise_and(compile_masks([zone.polygon], width, height).mask, valid))
            zp = _ZonePlan(zone, zmask, cv2.countNonZero(zmask))
            if zone.stop_line is not None and zone.length_m is not None and zp.pixels:
                _queue_bins(zp, width, height, s.queue_bin)
            plan.zones.append(zp)
        self._plan = plan
        self._background.reset()
        self._history.clear()
        self._age = None
        return plan

    def _blobs(
        self, fg: npt.NDArray[np.uint8], plan: _Plan
    ) -> tuple[list[Detection], npt.NDArray[np.uint8]]:
        """The foreground's blobs of at least ``min_area``, as boxes, and the foreground with
        the smaller ones taken out.

        Outer contours, not connected components: a fifth of the cost here, and the same
        boxes; a blob's pixel count is its contour's area plus half its perimeter (the
        boundary pixels the polygon through their centres cuts in half)."""
        contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        min_px = self.settings.min_area * plan.width * plan.height
        out = []
        small = []
        for c in contours:
            area = cv2.contourArea(c)
            if area + cv2.arcLength(c, True) / 2 + 1 < min_px:
                small.append(c)
                continue
            x, y, w, h = cv2.boundingRect(c)
            # A blob that fills most of its box has no neck: not looked into (most blobs).
            parts = _split(c, (x, y, w, h), min_px) if area < _SOLID * w * h else [(x, y, w, h)]
            for bx, by, bw, bh in parts:
                out.append(
                    Detection(
                        (
                            bx / plan.width,
                            by / plan.height,
                            (bx + bw) / plan.width,
                            (by + bh) / plan.height,
                        )
                    )
                )
        if not small:
            return out, fg
        kept = fg.copy()
        cv2.drawContours(kept, small, -1, 0, -1)
        return out, kept

    def _ghosts(self, bg: BackgroundResult, plan: _Plan, t: float) -> list[TrackState]:
        """Drop the tracks that stand still on a hole in the background, and learn the
        frame there: returns the confirmed ones dropped (they end).

        A vehicle learnt into the background (there when it was learnt, or stopped for
        longer than ``hold_time``) leaves a hole when it goes. A blob that never moved is
        found by the tracker (its ghosts); but a vehicle passing through the hole merges
        with it, and the hole becomes a confirmed track that then stands there, keeps its
        box from being learnt and takes over many of the vehicles that pass (they are not
        counted). So each confirmed track is checked once a second with
        :meth:`Background.ghostly` (a few Sobel filters over its box: cheap)."""
        checked = self._ghost_checked
        dropped: list[TrackState] = []
        still = 0.5 * self.settings.stopped_speed
        for tr in list(self._tracker.tracks):
            steady = tr.steady_speed
            if not tr.confirmed or tr.merged or steady is None or steady > still:
                continue  # the tracker finds the holes that never moved; these stand still
            if t - checked.get(tr.id, -math.inf) < _GHOST_CHECK:
                continue
            checked[tr.id] = t
            box = _pixels(tr.box, plan, 2)
            if self._background.ghostly(bg, box):
                self._background.absorb(bg, box)
                self._tracker.drop(tr.id)
                if tr.confirmed:
                    dropped.append(tr)
        if len(checked) > 4 * len(self._tracker.tracks) + 64:
            alive = {tr.id for tr in self._tracker.tracks}
            for k in [k for k in checked if k not in alive]:
                del checked[k]
        return dropped

    def _private(self, box: Box, plan: _Plan) -> bool:
        cx, cy = box_center(box)
        x = min(plan.width - 1, max(0, int(cx * plan.width)))
        y = min(plan.height - 1, max(0, int(cy * plan.height)))
        return bool(plan.privacy[y, x])

    def _track_stops(self) -> None:
        """Each track's ``stopped``, with hysteresis (see ``stopping_speed``)."""
        s = self.settings
        for tr in self._tracker.tracks:
            tr.stopped = tr.speed < (s.starting_speed if tr.stopped else s.stopping_speed)

    def _stopped(
        self, fg: npt.NDArray[np.uint8], normalised: npt.NDArray[np.float32], t: float, dt: float
    ) -> npt.NDArray[np.uint8]:
        """Foreground pixels that have not changed for ``stopped_time``: 255, else 0.

        A pixel is compared with the frame about :data:`_STILL_WINDOW` seconds before, not
        the last one: the uniform roof of a bus creeping off at walking pace looks the same
        from one frame to the next, not over a second."""
        if normalised.ndim == 3:  # grey is enough to tell still from moving, at a third
            normalised = np.asarray(cv2.transform(normalised, _MEAN3), dtype=np.float32)
        hist = self._history
        if hist and hist[0][1].shape != normalised.shape:
            hist.clear()
        ref = None
        while hist and t - hist[0][0] >= _STILL_WINDOW:
            ref = hist.popleft()[1]
        if ref is not None:
            hist.appendleft((t - _STILL_WINDOW, ref))  # the reference until a newer one ages
        elif hist:
            ref = hist[0][1]
        hist.append((t, normalised))
        if ref is None or self._age is None or self._age.shape != fg.shape:
            self._age = np.zeros(fg.shape, np.float32)
            return np.zeros(fg.shape, np.uint8)
        # Changed beyond what shake and noise explain.
        excess = self._background.excess(normalised, ref, frames=True)
        changed = _u8(cv2.threshold(excess, self.settings.threshold, 255, cv2.THRESH_BINARY)[1])
        changed = _u8(cv2.dilate(changed, np.ones((3, 3), np.uint8)))
        # A tracked object seen on its own and moving is not stopped, even where its
        # uniform body looks the same as a second ago (a queue starting off).
        h, w = fg.shape
        # Moving: faster than 1.5 times ``stopped_speed`` now, and not stopped (a stopped
        # track stays so until faster than ``starting_speed``: a stopped two-wheeler whose
        # box jitters as it merges with its neighbours and splits again is not taken for one
        # starting off). And its pixels must show it: a box that grows over a neighbour as
        # their blobs merge (two-wheelers stopped at the frame's edge) moves its centre, not
        # the object.
        fast = 1.5 * self.settings.stopped_speed
        evidence = changed.copy()
        for tr in self._tracker.tracks:
            if tr.confirmed and not tr.merged and not tr.stopped and tr.speed > fast:
                bx0, by0, bx1, by1 = tr.box
                px0, py0 = max(0, int(bx0 * w)), max(0, int(by0 * h))
                px1, py1 = max(0, int(bx1 * w)), max(0, int(by1 * h))
                inside = evidence[py0:py1, px0:px1]
                if inside.size and cv2.countNonZero(inside) >= _MOVING_SHARE * inside.size:
                    cv2.rectangle(changed, (px0, py0), (px1, py1), 255, -1)
        still = _u8(cv2.bitwise_and(fg, cv2.bitwise_not(changed))).astype(np.float32)
        self._age += np.float32(dt)
        self._age *= still * np.float32(1 / 255)
        stopped = (self._age >= self.settings.stopped_time).astype(np.uint8) * np.uint8(255)
        # And the foreground of the tracks that have stopped: they know at once, where the
        # pixels need a second or two (a queue builds fast at a red light).
        slow = np.zeros_like(stopped)
        for tr in self._tracker.tracks:
            if tr.confirmed and tr.stopped:
                x0, y0, x1, y1 = tr.box
                cv2.rectangle(slow, (int(x0 * w), int(y0 * h)), (int(x1 * w), int(y1 * h)), 255, -1)
        return _u8(cv2.bitwise_or(stopped, cv2.bitwise_and(slow, fg)))

    def _queue(
        self, z: _ZonePlan, stopped: npt.NDArray[np.uint8], fg: npt.NDArray[np.uint8]
    ) -> float | None:
        if z.flat is None or z.bins is None or z.bin_pixels is None:
            return None
        s = self.settings
        n = len(z.bin_pixels)
        hit = stopped.ravel()[z.flat] > 0
        counts = np.bincount(z.bins[hit], minlength=n)
        moving = np.bincount(z.bins[(fg.ravel()[z.flat] > 0) & ~hit], minlength=n)
        # A few pixels across the zone: a two-wheeler is a thin stripe of a wide zone.
        occupied = counts >= 3
        pulling_away = ((moving >= _MOVING_PX) & ~occupied).tolist()
        gap_bins = max(1, round(s.queue_gap / s.queue_bin))
        end, last = 0, -1
        for i, on in enumerate(occupied.tolist()):
            if on:
                end, last = i + 1, i
            elif (last < 0 and pulling_away[i]) or i - last > gap_bins:
                break
        assert z.zone.length_m is not None
        return min(z.zone.length_m, end * s.queue_bin)

    @staticmethod
    def _steady_queue(z: _ZonePlan, got: float | None) -> float | None:
        """A queue that got shorter but not gone shows its length of the frame before once
        more: a stopped queue empties from its head (``pulling_away``: 0 at once), and a
        shorter figure for one frame is a vehicle of it that looked moving for a moment (a
        box that jittered, pixels that changed under a shadow). Over the 24 scenes of
        bench/analytics_accuracy.py, queue moments off: 290 before, 269 with this."""
        if got is None:
            return None
        before, z.queue_raw = z.queue_raw, got
        return max(got, before) if got > 0 else got

    def _size_class(self, area: float) -> str | None:
        for c in self._classes:
            if area <= c.max_area:
                return c.name
        return self._classes[-1].name if self._classes else None

    def _event(
        self, kind: Literal["start", "update", "end"], tr: TrackState, t: float
    ) -> ObjectEvent:
        if kind == "end":
            self._events.pop(tr.id, None)
        else:
            self._events[tr.id] = _EventState(t, tr.zones)
        return ObjectEvent(
            kind, tr.id, tr.box, self._tracker.label(tr), tr.zones, tr.start, t, tr.best_box
        )


_MEAN3 = np.full((1, 3), 1 / 3, np.float32)
_GHOST_CHECK = 1.0
"""Seconds between two checks of one still track for a ghost."""
_MOVING_PX = 10
"""Moving foreground pixels in a bin of the queue's measure, with no stopped ones, that end
the queue when they come between the stop line and its head: its first vehicle is pulling
away (a queue starting off at green), so no stopped queue starts at the line. The figure
matters little: over the 24 scenes of bench/analytics_accuracy.py, 354 queue moments off
with 3 pixels, 346 with 10 and 345 with 30 (there, analysed 320 pixels wide, a bin of the
two-lane zone is about 3 by 47 pixels)."""
_STILL_WINDOW = 0.6
"""Seconds between the two frames compared to tell a stopped pixel."""
_MOVING_SHARE = 0.05
"""A track taken for moving needs this share of its box's pixels changed over
:data:`_STILL_WINDOW` (a car creeping at 0.5 m/s changes about a tenth: its front and rear)."""


def _pixels(box: Box, plan: _Plan, pad: int) -> tuple[int, int, int, int]:
    """``box`` in the analysis image's pixels, ``pad`` pixels larger each way."""
    w, h = plan.width, plan.height
    return (
        int(box[0] * w) - pad,
        int(box[1] * h) - pad,
        int(box[2] * w) + pad,
        int(box[3] * h) + pad,
    )


_NECK = 0.5
"""A blob is two objects side by side where, across it, it narrows to this share of the
thinner of its two halves (see :func:`_split`). Over the 24 scenes of
bench/analytics_accuracy.py, the error summed over every line: 226 crossings at 0.2, 191 at
0.5, 206 at 0.6 (253 with no cut)."""
_SOLID = 0.8
"""Only a blob that fills less than this share of its box is looked into for a neck: two
objects side by side leave its corners empty. It keeps the cut's cost to about 0.3 ms a
frame (0.6 ms looking into every blob), with the same accuracy."""


def _split(
    contour: MatLike, box: tuple[int, int, int, int], min_px: float
) -> list[tuple[int, int, int, int]]:
    """A blob's box, or two: two vehicles side by side in neighbouring lanes touch by a
    corner or a shadow and make one blob, with a neck between them. Counted as one, one of
    them was lost (most of the misses over the 24 scenes of bench/analytics_accuracy.py).
    The blob's pixels are summed along each row and each column; where the sums fall, in
    the middle half, to :data:`_NECK` of the largest on both sides, and each side has at
    least ``min_px`` pixels, it is cut there (the deeper neck of the two directions)."""
    x, y, w, h = box
    if w < 6 and h < 6:
        return [box]
    mask = np.zeros((h, w), np.uint8)
    cv2.drawContours(mask, [contour], -1, 1, -1, offset=(-x, -y))
    best: tuple[float, int, int] | None = None  # (depth, axis, index)
    for axis in (0, 1):  # 0: rows (a cut across, between lanes), 1: columns
        sums = mask.sum(axis=1 - axis, dtype=np.int32)
        n = len(sums)
        if n < 6:
            continue
        lo, hi = n // 4, n - n // 4
        side = np.minimum(np.maximum.accumulate(sums), np.maximum.accumulate(sums[::-1])[::-1])
        depth = sums[lo:hi] / np.maximum(side[lo:hi], 1)
        total = np.cumsum(sums)
        a = total[lo:hi] - sums[lo:hi]  # the pixels before each candidate row, and after
        b = total[-1] - total[lo:hi]
        ok = (depth <= _NECK) & (a >= min_px) & (b >= min_px)
        if ok.any():
            k = int(np.argmin(np.where(ok, depth, np.inf)))
            if best is None or depth[k] < best[0]:
                best = (float(depth[k]), axis, lo + k)
    if best is None:
        return [box]
    _, axis, i = best
    out = []
    for part in (
        (mask[:i], 0) if axis == 0 else (mask[:, :i], 0),
        (mask[i + 1 :], i + 1) if axis == 0 else (mask[:, i + 1 :], i + 1),
    ):
        m, off = part
        px, py, pw, ph = cv2.boundingRect(m)
        if axis == 0:
            out.append((x + px, y + off + py, pw, ph))
        else:
            out.append((x + off + px, y + py, pw, ph))
    return out


def _u8(a: object) -> npt.NDArray[np.uint8]:
    return np.asarray(a, dtype=np.uint8)


def _queue_bins(z: _ZonePlan, width: int, height: int, bin_m: float) -> None:
    """Each zone pixel's distance from the stop line, in bins of ``bin_m`` metres, scaled so
    that the zone's farthest pixel is ``length_m`` away (perpendicular, in image pixels)."""
    assert z.zone.stop_line is not None
    assert z.zone.length_m is not None
    (ax, ay), (bx, by) = z.zone.stop_line
    ax, bx, ay, by = ax * width, bx * width, ay * height, by * height
    ys, xs = np.nonzero(z.mask)
    px, py = xs + 0.5, ys + 0.5
    norm = math.hypot(bx - ax, by - ay) or 1.0
    dist = np.abs((bx - ax) * (py - ay) - (by - ay) * (px - ax)) / norm
    far = float(dist.max()) or 1.0
    metres = dist / far * z.zone.length_m
    n_bins = max(1, math.ceil(z.zone.length_m / bin_m))
    bins = np.minimum(n_bins - 1, (metres / bin_m).astype(np.intp))
    z.flat = (ys * width + xs).astype(np.intp)
    z.bins = bins
    z.bin_pixels = np.bincount(bins, minlength=n_bins).astype(np.intp)
