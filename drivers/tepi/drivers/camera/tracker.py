"""The object tracker of camera analytics: boxes in, tracks, crossings and events out.

Each track predicts its centre at constant velocity (measured on the inner edge while the
box is cut by the frame's edge: an object coming into view grows at its outer edge). A
frame's boxes (blobs of background subtraction or a detector's objects) are assigned to the
predictions greedily, best pair first, by a cost of overlap and centre distance, within a
gate that grows with the box; with a few objects per frame this is as good as the Hungarian
method and needs no SciPy.

- **Touching objects.** A box that holds the predicted centres of two or more tracks, and is
  bigger than the one it was assigned to, is a merge: every track in it goes on at its own
  predicted position (held inside the merged box), keeps its identity, and counts nothing
  twice. When the box splits, the tracks that were merged take the free boxes nearby with
  a wider gate (inside the merge their predictions drift).
- **Split objects.** A box that lies mostly inside another track's prediction, or right in
  front of it in its lane (a gantry or a pole cuts a passing vehicle in two: up to the
  object's length, as seen whole, from its rear), is a part of that object and joins it,
  unless another track expects that box or the union would be much bigger than the object
  has been.
- **Occlusion.** A track seen twice or more that finds no box goes on predicted for
  ``max_lost`` seconds; one seen once is dropped at its first miss (noise does not persist).
  A lost track also takes a free box where its steady velocity (over the last second it was
  seen) puts it: going behind an occluder front first, its box shrank and its velocity fell.
- **Confirmation.** A track is confirmed, and only then reported, after ``min_hits``
  frames, once its centre has moved (a detector's objects need not move); a line it
  crossed before that counts at confirmation. A blob that stays where it appeared for
  ``ghost_time``, away from the frame's edge, is a ghost: the caller relearns the
  background there.
- **Counting.** Per line, a track's side is committed only when its centre is more than
  ``hysteresis`` (normalised) from the line: a centre that wiggles on the line commits
  nothing. A change of committed side counts when the path from the last committed point to
  the new one crosses the segment (:func:`geometry.crossing`), once per line per track.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tepi.drivers.camera.geometry import (
    Box,
    Detection,
    Direction,
    Point,
    box_center,
    box_iou,
    crossing,
    side,
)

__all__ = ["Counted", "LineDef", "StepResult", "TrackState", "Tracker", "TrackerParams"]

_AREAS = 30  # area samples kept per track for its size class
_MOVED = 0.015  # a blob is an object once its centre has gone this far (5 px at 320)
_EDGE = 0.01  # a box this close to the frame's edge is not wholly in view
STEADY_WINDOW = 1.0
"""Seconds over which :attr:`TrackState.steady_speed` measures a displacement."""


@dataclass(frozen=True, slots=True)
class TrackerParams:
    max_lost: float = 1.0
    min_hits: int = 3
    hysteresis: float = 0.01
    merge_growth: float = 1.3
    ghost_time: float = 2.0


@dataclass(frozen=True, slots=True)
class LineDef:
    name: str
    a: Point
    b: Point


@dataclass(slots=True)
class TrackState:
    """One track, mutable, owned by the :class:`Tracker`."""

    id: int
    cx: float
    cy: float
    w: float
    h: float
    t_seen: float
    start: float
    vx: float = 0.0
    vy: float = 0.0
    hits: int = 1
    confirmed: bool = False
    merged: bool = False
    label: str | None = None
    score: float = 0.0
    areas: deque[float] = field(default_factory=lambda: deque(maxlen=_AREAS))
    sides: dict[str, int] = field(default_factory=dict)
    anchors: dict[str, Point] = field(default_factory=dict)
    counted: set[str] = field(default_factory=set)
    pending: list[Counted] = field(default_factory=list)
    origin: Point = (0.0, 0.0)  # the centre when first seen
    moved: bool = False  # has gone more than _MOVED from its origin
    seen: Box = (0.0, 0.0, 0.0, 0.0)  # the box last observed (or held in a merge)
    best_score: float = 0.0
    best_box: Box | None = None
    zones: tuple[str, ...] = ()
    stopped: bool = False
    """Set by the analytics engine each frame, with hysteresis on :attr:`speed`."""
    trail: deque[tuple[float, Box]] = field(default_factory=deque)
    """(t, box seen) over the last :data:`STEADY_WINDOW` seconds and one before: see
    :attr:`steady_speed`."""

    @property
    def box(self) -> Box:
        return (
            self.cx - self.w / 2,
            self.cy - self.h / 2,
            self.cx + self.w / 2,
            self.cy + self.h / 2,
        )

    @property
    def speed(self) -> float:
        return math.hypot(self.vx, self.vy)

    @property
    def steady_speed(self) -> float | None:
        """The displacement over the last :data:`STEADY_WINDOW` seconds, per second, of the
        centre (of the inner edge of a box the frame's edge cuts, as in ``_edge_speed``):
        what the object did, not how its box jittered from one frame to the next (a stopped
        two-wheeler whose box merges with its neighbours' and splits again moves its centre
        back and forth, and ``speed`` follows that). None until the track has a window's
        history: a track just made from a blob that split has no steady speed yet."""
        steady = self._steady_velocity()
        return None if steady is None else math.hypot(steady[0], steady[1])

    def steady_at(self, t: float) -> Point | None:
        """Where the centre would be at ``t`` at its steady velocity (see
        :attr:`steady_speed`) from the last box seen; None without a window's history."""
        steady = self._steady_velocity()
        if steady is None:
            return None
        t1, b = self.trail[-1]
        cx, cy = box_center(b)
        return cx + steady[0] * (t - t1), cy + steady[1] * (t - t1)

    def _steady_velocity(self) -> Point | None:
        trail = self.trail
        if len(trail) < 2 or trail[-1][0] - trail[0][0] < STEADY_WINDOW:
            return None
        t0, a = trail[0]
        t1, b = trail[-1]
        dt = t1 - t0
        return _edge_speed(a[0], a[2], b[0], b[2], dt), _edge_speed(a[1], a[3], b[1], b[3], dt)

    def remember(self, t: float) -> None:
        """Add the box now to the trail, keeping one point older than the window."""
        trail = self.trail
        trail.append((t, self.seen))
        while len(trail) > 2 and t - trail[1][0] >= STEADY_WINDOW:
            trail.popleft()

    def predicted(self, t: float) -> tuple[float, float]:
        dt = t - self.t_seen
        return self.cx + self.vx * dt, self.cy + self.vy * dt

    def typical_area(self) -> float:
        return statistics.median(self.areas) if self.areas else self.w * self.h


@dataclass(frozen=True, slots=True)
class Counted:
    line: str
    direction: Direction
    track: int
    t: float


@dataclass(slots=True)
class StepResult:
    crossings: list[Counted]
    confirmed: list[TrackState]  # newly confirmed this frame
    ended: list[TrackState]  # confirmed tracks lost for good this frame
    best: list[int]
    ghosts: list[Box]  # foreground that never moved: the caller relearns the background there


def _contains(box: Box, p: Point, pad: float = 0.0) -> bool:
    return box[0] - pad <= p[0] <= box[2] + pad and box[1] - pad <= p[1] <= box[3] + pad


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _overlap(p: Box, q: Box) -> float:
    """The share of ``p``'s area that lies inside ``q``."""
    iw = min(p[2], q[2]) - max(p[0], q[0])
    ih = min(p[3], q[3]) - max(p[1], q[1])
    a = _area(p)
    return iw * ih / a if iw > 0 and ih > 0 and a > 0 else 0.0


def _union(p: Box, q: Box) -> Box:
    return (min(p[0], q[0]), min(p[1], q[1]), max(p[2], q[2]), max(p[3], q[3]))


def _in_view(box: Box) -> bool:
    return box[0] > _EDGE and box[1] > _EDGE and box[2] < 1 - _EDGE and box[3] < 1 - _EDGE


class Tracker:
    """Tracks of one stream (see the module's docstring). ``labeller`` names a track from its
    typical box area (the size classes); a detector's label takes precedence."""

    def __init__(
        self,
        params: TrackerParams,
        lines: Sequence[LineDef],
        labeller: Callable[[float], str | None],
    ) -> None:
        self.params = params
        self.lines = tuple(lines)
        self._labeller = labeller
        self.tracks: list[TrackState] = []
        self._next_id = 1

    def reset(self) -> list[TrackState]:
        """Forget every track; returns the confirmed ones, which the caller ends."""
        ended = [tr for tr in self.tracks if tr.confirmed]
        self.tracks = []
        return ended

    def drop(self, track_id: int) -> TrackState | None:
        """Forget one track (a ghost found by the caller); returns it, which the caller
        ends if it was confirmed."""
        for i, tr in enumerate(self.tracks):
            if tr.id == track_id:
                return self.tracks.pop(i)
        return None

    def label(self, tr: TrackState) -> str | None:
        return tr.label if tr.label is not None else self._labeller(tr.typical_area())

    def step(self, t: float, detections: Sequence[Detection], *, blobs: bool = True) -> StepResult:
        """Assign ``detections`` (``blobs``: of background subtraction, else a detector's)
        to the tracks at time ``t``."""
        p = self.params
        result = StepResult([], [], [], [], [])
        preds = [tr.predicted(t) for tr in self.tracks]
        pboxes = [
            (x - tr.w / 2, y - tr.h / 2, x + tr.w / 2, y + tr.h / 2)
            for tr, (x, y) in zip(self.tracks, preds, strict=True)
        ]
        boxes = [d.box for d in detections]

        # Greedy assignment, cheapest pair first.
        pairs: list[tuple[float, int, int]] = []
        centres = [box_center(db) for db in boxes]
        diags = [math.hypot(db[2] - db[0], db[3] - db[1]) for db in boxes]
        for i, (tr, pb) in enumerate(zip(self.tracks, pboxes, strict=True)):
            pc = preds[i]
            diag = math.hypot(tr.w, tr.h)
            for j, db in enumerate(boxes):
                dc = centres[j]
                size = max(0.5 * (diag + diags[j]), 1e-6)
                dist = math.hypot(pc[0] - dc[0], pc[1] - dc[1]) / size
                if dist > 1.5:
                    continue  # too far to overlap either
                iou = box_iou(pb, db)
                if iou > 0 or dist < 0.75:
                    pairs.append((1.0 - iou + dist, i, j))
        pairs.sort()
        track_det: dict[int, int] = {}
        det_track: dict[int, int] = {}
        for _, i, j in pairs:
            if i not in track_det and j not in det_track:
                track_det[i] = j
                det_track[j] = i

        # Merges: a box holding the predicted centres of several tracks.
        merged: dict[int, int] = {}  # track -> detection
        for j, db in enumerate(boxes):
            holders = [
                i
                for i, tr in enumerate(self.tracks)
                if (tr.hits >= 2 or tr.confirmed)
                and (track_det.get(i) in (None, j))
                and _contains(db, preds[i])
            ]
            if len(holders) < 2:
                continue
            if j in det_track:
                own = self.tracks[det_track[j]]
                if _area(db) < p.merge_growth * own.w * own.h:
                    continue
            for i in holders:
                merged[i] = j
                track_det.pop(i, None)
            det_track.pop(j, None)

        def take_free(expected: dict[int, Point], gate: float) -> None:
            """Tracks without a box take the free boxes whose centre is within ``gate``
            (in box sizes) of where each is expected, closest pair first."""
            taken = set(merged.values())
            pairs: list[tuple[float, int, int]] = []
            for i, (ex, ey) in expected.items():
                tr = self.tracks[i]
                for j, (dx, dy) in enumerate(centres):
                    if j in det_track or j in taken:
                        continue
                    size = max(0.5 * (math.hypot(tr.w, tr.h) + diags[j]), 1e-6)
                    dist = math.hypot(ex - dx, ey - dy) / size
                    if dist < gate:
                        pairs.append((dist, i, j))
            for _, i, j in sorted(pairs):
                if i not in track_det and j not in det_track:
                    track_det[i] = j
                    det_track[j] = i

        # A merge that splits: the tracks that were merged and are now without a box take
        # the free boxes nearby, with a wider gate (inside the merge, a track's prediction
        # drifts from where its object went).
        take_free(
            {
                i: preds[i]
                for i, tr in enumerate(self.tracks)
                if tr.merged and i not in track_det and i not in merged
            },
            1.2,
        )
        # Out from behind an occluder: going in, the object's front was hidden first, so
        # its box shrank at the front and its velocity fell; predicted on at that speed, it
        # is looked for well behind where it comes out, and would be a new track on the far
        # side of a line it crossed while hidden. A lost track also takes a free box where
        # its steady speed (over the last second it was seen) puts it.
        steady = {
            i: tr.steady_at(t)
            for i, tr in enumerate(self.tracks)
            if i not in track_det and i not in merged and tr.hits >= 2 and tr.t_seen < t
        }
        take_free({i: p for i, p in steady.items() if p is not None}, 0.75)

        # Parts of one object: an unassigned box mostly inside an assigned track's prediction.
        extra: dict[int, Box] = {}
        for j, db in enumerate(boxes):
            if j in det_track or j in merged.values():
                continue
            # A box another track expects (one hidden or not yet matched) is not a part.
            claimed = any(
                _overlap(db, pb) > 0.2 for k, pb in enumerate(pboxes) if k not in track_det
            )
            for i, dj in track_det.items():
                tr = self.tracks[i]
                inside = _overlap(db, pboxes[i]) >= 0.5
                if not inside and (claimed or not _ahead(tr, boxes[dj], db)):
                    continue
                union = _union(extra.get(i, boxes[dj]), db)
                if tr.areas and _area(union) > 1.5 * tr.typical_area():
                    continue  # more than the object: the next one in a slow queue
                extra[i] = union
                det_track[j] = i
                break

        alive: list[TrackState] = []
        for i, tr in enumerate(self.tracks):
            if (
                not tr.confirmed
                and not tr.moved
                and t - tr.start >= p.ghost_time
                and _in_view(tr.box)  # at the edge, it came into view: the tail of a queue
            ):
                # Foreground that appeared where it is and never moved: not an object that
                # came into view but a change of the background (a car that was there when
                # the background was learnt, and left).
                result.ghosts.append(tr.box)
            elif i in track_det:
                det = detections[track_det[i]]
                self._observe(tr, extra.get(i, det.box), t, det, result)
                alive.append(tr)
            elif i in merged:
                self._coast(tr, preds[i], boxes[merged[i]], t, result)
                alive.append(tr)
            elif tr.hits >= 2 and t - tr.t_seen <= p.max_lost and _centre_in_frame(preds[i]):
                alive.append(tr)  # occluded: predicted on, not moved until seen again
            elif tr.confirmed:
                result.ended.append(tr)
        for j, det in enumerate(detections):
            if j in det_track or j in merged.values():
                continue
            if any(_contains(pb, box_center(det.box)) for pb in pboxes):
                continue  # inside a track's prediction: not a new object
            tr = TrackState(self._next_id, *box_center(det.box), 0.0, 0.0, t, t)
            tr.origin = (tr.cx, tr.cy)
            tr.moved = not blobs  # a detector's object needs no motion to be one
            self._next_id += 1
            tr.hits = 0
            self._observe(tr, det.box, t, det, result)
            alive.append(tr)
        self.tracks = alive
        return result

    def _observe(
        self, tr: TrackState, box: Box, t: float, det: Detection, result: StepResult
    ) -> None:
        cx, cy = box_center(box)
        dt = t - tr.t_seen
        if tr.hits >= 1 and dt > 0:
            prev = tr.seen
            vx = _edge_speed(prev[0], prev[2], box[0], box[2], dt)
            vy = _edge_speed(prev[1], prev[3], box[1], box[3], dt)
            k = 1.0 if tr.hits == 1 else 0.5
            tr.vx += k * (vx - tr.vx)
            tr.vy += k * (vy - tr.vy)
        w, h = box[2] - box[0], box[3] - box[1]
        if tr.hits == 0 or tr.merged:
            tr.w, tr.h = w, h
        else:
            tr.w += 0.5 * (w - tr.w)
            tr.h += 0.5 * (h - tr.h)
        tr.cx, tr.cy = cx, cy
        tr.seen = box
        tr.t_seen = t
        tr.hits += 1
        tr.merged = False
        if det.label is not None:
            tr.label = det.label
        tr.score = det.score
        if _in_view(box):
            tr.areas.append(w * h)
        self._moved(tr, t, result)
        score = w * h * (1.0 if _in_view(box) else 0.5)
        if score > tr.best_score * 1.05:
            tr.best_score, tr.best_box = score, box
            if tr.confirmed:
                result.best.append(tr.id)

    def _coast(self, tr: TrackState, pred: Point, blob: Box, t: float, result: StepResult) -> None:
        """A track inside a merged box: at its prediction, held inside the box."""
        hw, hh = min(tr.w, blob[2] - blob[0]) / 2, min(tr.h, blob[3] - blob[1]) / 2
        cx = min(max(pred[0], blob[0] + hw), blob[2] - hw)
        cy = min(max(pred[1], blob[1] + hh), blob[3] - hh)
        dt = t - tr.t_seen
        if dt > 0 and (cx, cy) != pred:
            # Held back by the box's edge: the object slows (a queue forming).
            tr.vx, tr.vy = (cx - tr.cx) / dt, (cy - tr.cy) / dt
        tr.cx, tr.cy = cx, cy
        tr.seen = tr.box
        tr.t_seen = t
        tr.hits += 1
        tr.merged = True
        self._moved(tr, t, result)

    def _moved(self, tr: TrackState, t: float, result: StepResult) -> None:
        """Commit the track's side of each line and count the crossings."""
        tr.remember(t)
        c = (tr.cx, tr.cy)
        h = self.params.hysteresis
        for ln in self.lines:
            length = math.dist(ln.a, ln.b) or 1.0
            d = side(ln.a, ln.b, c) / length
            if abs(d) <= h:
                continue
            s = 1 if d > 0 else -1
            old = tr.sides.get(ln.name)
            if old is not None and old != s and ln.name not in tr.counted:
                direction = crossing(ln.a, ln.b, tr.anchors[ln.name], c)
                if direction is not None:
                    tr.counted.add(ln.name)
                    tr.pending.append(Counted(ln.name, direction, tr.id, t))
            tr.sides[ln.name] = s
            tr.anchors[ln.name] = c
        if not tr.moved and math.dist(c, tr.origin) > _MOVED:
            tr.moved = True
        if not tr.confirmed and tr.hits >= self.params.min_hits and tr.moved:
            tr.confirmed = True
            result.confirmed.append(tr)
            if tr.best_box is not None:
                result.best.append(tr.id)
        if tr.confirmed and tr.pending:
            result.crossings.extend(tr.pending)
            tr.pending = []


def _edge_speed(a0: float, a1: float, b0: float, b1: float, dt: float) -> float:
    """Speed along one axis from a box's extent ``a0..a1`` then ``b0..b1``: of its centre,
    or of its inner edge while the other is cut by the frame's edge (an object coming into
    view grows at its outer edge, and its centre moves at half its speed)."""
    lo_cut = min(a0, b0) <= _EDGE
    hi_cut = max(a1, b1) >= 1 - _EDGE
    if lo_cut and not hi_cut:
        return (b1 - a1) / dt
    if hi_cut and not lo_cut:
        return (b0 - a0) / dt
    return ((b0 + b1) - (a0 + a1)) / 2 / dt


def _ahead(tr: TrackState, seen: Box, part: Box) -> bool:
    """Whether ``part`` is the front of the object that ``seen`` (its box this frame) is the
    rear of: right ahead of it along its heading, in its lane, within half its length. A
    fixed occluder (a gantry, a pole) cuts a passing object in two; a new object never
    appears just in front of a moving one."""
    speed = math.hypot(tr.vx, tr.vy)
    if speed < 0.02 or tr.hits < 2:
        return False
    hx, hy = tr.vx / speed, tr.vy / speed

    def extent(b: Box, ux: float, uy: float) -> tuple[float, float]:
        xs = (b[0] * ux, b[2] * ux)
        ys = (b[1] * uy, b[3] * uy)
        return min(xs) + min(ys), max(xs) + max(ys)

    s0, s1 = extent(seen, hx, hy)
    p0, p1 = extent(part, hx, hy)
    if not (p0 > s0 and p1 > s1):
        return False
    if p0 - s1 > max(0.04, 0.5 * (s1 - s0)):
        # Further ahead than half the part seen: still the object's front if it lies within
        # the object's length (as seen whole) from its rear. Going under the gantry a car
        # shows its rear, and its front a gantry's width ahead.
        whole = max(
            (e1 - e0 for _, b in tr.trail if _in_view(b) for e0, e1 in (extent(b, hx, hy),)),
            default=0.0,
        )
        if p1 - s0 > 1.2 * whole:
            return False
    l0, l1 = extent(seen, -hy, hx)
    m0, m1 = extent(part, -hy, hx)
    lateral = min(l1, m1) - max(l0, m0)
    return lateral >= 0.5 * min(l1 - l0, m1 - m0)


def _centre_in_frame(p: Point) -> bool:
    return 0.0 <= p[0] <= 1.0 and 0.0 <= p[1] <= 1.0
