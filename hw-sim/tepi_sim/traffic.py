"""A synthetic road seen from above, with exact ground truth for camera analytics.

The view is **orthographic**: the camera looks straight down, so one metre is
:attr:`TrafficSettings.px_per_m` pixels everywhere in the frame (13.3 px/m at the reference
640x360 over 48 m). The road runs across the frame: ``lanes_per_direction`` westbound lanes
(travelling towards -x, right to left) on its upper half, a median, and as many eastbound
lanes (towards +x) on its lower half. The eastbound approach has a stop line at 60 % of the
width and a signal (red for ``red_s`` then green for ``green_s``, starting red at t = 0)
that builds a stopped queue back from the line and releases it.

Vehicles (:data:`CLASS_SIZES`): two-wheelers (most of them), cars and buses/trucks, with
close followers, lane changes, a shadow each, a tree crown and a sign gantry that hide
them for a moment, a slow lighting ramp and optional brightness jumps, camera shake, sensor
noise and optional rain. Their motion comes from :mod:`tepi_sim.traffic_flow` (computed once,
at a fixed step), so :meth:`TrafficScene.truth`, :meth:`~TrafficScene.crossings` and
:meth:`~TrafficScene.queue_length` are exact, and :meth:`~TrafficScene.render` interpolates.

**Contrast.** The road's base grey is :data:`ROAD_GREY` with a texture of +-6 levels. Every
vehicle body differs from that base by at least 28 levels on average over its three channels
(some are dark, some light, some only 30 levels off the road); a vehicle also carries
darker or lighter details (windscreen, roof, rider) and casts a shadow. At the darkest point
of the lighting ramp the contrast scales down with the gain (by ``1 - lighting_depth``). The
sensor noise is +-``noise`` levels, 4 by default: a background subtraction with a threshold
of about 15 levels sees every vehicle whole.

**Ground truth.** Boxes and centres are normalised (0..1, y down) in the image as the camera
sees it: the camera move shifts them, the shake (a few pixels, a nuisance) does not. The
scene repeats every ``duration_s`` (a camera loops it); :meth:`~TrafficScene.crossing_events`
counts each passage of a vehicle's centre over a line (the convention of
``tepi.drivers.camera.geometry``, copied in :func:`side` and :func:`crossing`).

Rendering is thread-safe and costs about 0.7 ms per 640x360 frame (bench/traffic_scene.py):
the background, occluders, noise and rain are drawn once, at construction.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

from tepi_sim.traffic_draw import ROAD_GREY, Painter
from tepi_sim.traffic_flow import (
    CLASS_SIZES,
    DT,
    Flow,
    Lane,
    is_red,
    lanes,
    simulate,
    stop_line_x,
)
from tepi_sim.traffic_settings import CLASSES, LANE_WIDTH_M, TrafficSettings

__all__ = [
    "CLASSES",
    "CLASS_SIZES",
    "ROAD_GREY",
    "CrossingTruth",
    "TrafficLine",
    "TrafficScene",
    "TrafficSettings",
    "TrafficZone",
    "VehicleTruth",
    "crossing",
    "side",
    "vehicle_length_m",
]

Frame = npt.NDArray[np.uint8]
Point = tuple[float, float]
Direction = Literal["in", "out"]

STOPPED_MPS: Final = 0.5
"""A vehicle slower than this is stopped."""
QUEUE_GAP_M: Final = 3.0
"""Stopped vehicles closer than this to the one in front (or to the stop line) queue."""
OCCLUDED_SHARE: Final = 0.5
"""A vehicle with at least this share of its box hidden by an occluder is occluded."""
_NOISE_MARGIN: Final = 64
_OFFSETS: Final = 4096
_RAIN_HZ: Final = 10.0


def vehicle_length_m(cls: str) -> float:
    """Length in metres of a vehicle of class ``cls`` (for tolerances such as "+-1 vehicle")."""
    return CLASS_SIZES[cls][0]


def side(a: Point, b: Point, p: Point) -> float:
    """Which side of the arrow ``a`` -> ``b`` the point ``p`` is on: > 0 on its right as seen
    on the image (y down), < 0 on its left. A copy of ``tepi.drivers.camera.geometry.side``:
    the simulator imports nothing from tepi, and a test checks the two agree."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def crossing(a: Point, b: Point, p0: Point, p1: Point) -> Direction | None:
    """How the move ``p0`` -> ``p1`` crosses the segment ``a``-``b``: ``in`` (from the arrow's
    left to its right, the right including the line itself), ``out``, or None when the move
    does not cross it within the segment (ends included). A copy of
    ``tepi.drivers.camera.geometry.crossing``."""
    left0 = side(a, b, p0) < 0
    left1 = side(a, b, p1) < 0
    if left0 == left1:
        return None
    t0 = side(p0, p1, a)
    t1 = side(p0, p1, b)
    if (t0 > 0 and t1 > 0) or (t0 < 0 and t1 < 0):
        return None
    return "in" if left0 else "out"


@dataclass(frozen=True, slots=True)
class TrafficLine:
    """A counting line from ``a`` to ``b`` (normalised), and the lanes (indices from the
    top) it spans."""

    name: str
    a: Point
    b: Point
    lanes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TrafficZone:
    """A queue zone: ``polygon`` (normalised) over the lanes of one approach, from its
    ``stop_line`` (a, b) back to the frame's edge; ``length_m`` is the real distance from
    the stop line to the zone's far end, measured perpendicular to the stop line."""

    name: str
    polygon: tuple[Point, ...]
    stop_line: tuple[Point, Point]
    length_m: float
    lanes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class VehicleTruth:
    """One vehicle in view at one instant.

    ``box`` is (x0, y0, x1, y1) normalised and clipped to the frame; ``center`` is the
    centre of the whole box (unclipped). ``lane`` is the index from the top of the lane its
    centre is in; ``heading`` the unit vector of its travel on the image ((1, 0): left to
    right). ``occluded``: at least :data:`OCCLUDED_SHARE` of it is hidden."""

    id: int
    cls: str
    box: tuple[float, float, float, float]
    center: Point
    lane: int
    heading: Point
    speed_mps: float
    stopped: bool
    occluded: bool


@dataclass(frozen=True, slots=True)
class CrossingTruth:
    """A vehicle's centre crossing a line: scene time, line name, direction, vehicle id and
    class."""

    t: float
    line: str
    direction: Direction
    vehicle: int
    cls: str


class _State(NamedTuple):
    """Vehicles on the road at one instant: ids, world position and speed, lane masks."""

    ids: npt.NDArray[np.int64]
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    v: npt.NDArray[np.float64]
    masks: npt.NDArray[np.int64]


class TrafficScene:
    """The traffic scene of ``settings``; see the module doc."""

    def __init__(self, settings: TrafficSettings) -> None:
        self.settings = settings
        s = settings
        self.width, self.height = s.width, s.height
        self.px_per_m = s.px_per_m
        self.duration = s.duration_s
        self.road_lanes: tuple[Lane, ...] = lanes(s)
        self.flow: Flow = simulate(s)
        rng = np.random.default_rng([s.seed, 0x5CE7E])
        self._move = (
            (round(0.04 * s.width), round(0.05 * s.height))
            if s.camera_move_at is not None
            else (0, 0)
        )
        self._margin = math.ceil(s.shake_px) + max(self._move) + 2
        painter = Painter(s, self.road_lanes, self._margin)
        self._painter = painter
        self._canvas = painter.background(rng)
        self._occluders = painter.occluders(rng) if s.occluders else ()
        hidden = np.zeros(self._canvas.shape[:2], dtype=np.int32)
        for occ in self._occluders:
            h, w = occ.mask.shape
            hidden[occ.y : occ.y + h, occ.x : occ.x + w] |= occ.mask
        # Summed-area table of the hidden pixels: the hidden share of any box in O(1).
        self._hidden_sat = cv2.integral(hidden.astype(np.uint8))
        self._noise_amp = s.noise
        self._noise = rng.integers(
            0,
            2 * s.noise + 1,
            size=(s.height + _NOISE_MARGIN, s.width + _NOISE_MARGIN, 3),
            dtype=np.uint8,
        )
        self._offsets = rng.integers(0, _NOISE_MARGIN, size=(_OFFSETS, 2))
        for k in range(_OFFSETS):  # two renders in a row never read the same noise window
            if (self._offsets[k] == self._offsets[k - 1]).all():
                self._offsets[k, 1] = (self._offsets[k, 1] + 1) % _NOISE_MARGIN
        self._renders = itertools.count()
        self._rain = painter.rain(rng) if s.rain > 0 else ()
        self._jumps = self._make_jumps(rng)
        self._phase = rng.uniform(0, 2 * math.pi, size=4)
        self._black_noise = np.right_shift(self._noise, 2)
        self.lines, self.zones = self._geometry()
        self._events = self._all_events()

    # -- geometry ------------------------------------------------------------------------

    def _geometry(self) -> tuple[tuple[TrafficLine, ...], tuple[TrafficZone, ...]]:
        """One line per lane at 75 % of the width, one across the whole road at 90 %, and
        the eastbound approach's queue zone from its stop line back to the left edge. Every
        line is drawn top to bottom, so westbound traffic crosses ``in``, eastbound ``out``."""
        s = self.settings
        hm = s.height_m
        half = LANE_WIDTH_M / 2
        lines = [
            TrafficLine(
                f"lane-{ln.index + 1}",
                (0.75, (ln.y - half) / hm),
                (0.75, (ln.y + half) / hm),
                (ln.index,),
            )
            for ln in self.road_lanes
        ]
        top = self.road_lanes[0].y - half
        bottom = self.road_lanes[-1].y + half
        lines.append(
            TrafficLine(
                "all-lanes",
                (0.9, top / hm),
                (0.9, bottom / hm),
                tuple(ln.index for ln in self.road_lanes),
            )
        )
        zones: list[TrafficZone] = []
        if s.signal:
            east = [ln for ln in self.road_lanes if ln.direction > 0]
            y0 = (east[0].y - half) / hm
            y1 = (east[-1].y + half) / hm
            xs = stop_line_x(s) / s.width_m
            zones.append(
                TrafficZone(
                    "approach-east",
                    ((0.0, y0), (xs, y0), (xs, y1), (0.0, y1)),
                    ((xs, y0), (xs, y1)),
                    stop_line_x(s),
                    tuple(ln.index for ln in east),
                )
            )
        return tuple(lines), tuple(zones)

    def _px(self, metres: float) -> int:
        return round(metres * self.px_per_m)

    def _view(self, t: float) -> tuple[int, int]:
        """The camera move's offset (pixels) at scene time ``t`` (within one run)."""
        at = self.settings.camera_move_at
        return self._move if at is not None and t >= at else (0, 0)

    def _wrap(self, t: float) -> float:
        return t % self.duration

    def _make_jumps(self, rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
        """Brightness jumps (start, end, gain): exponential gaps, 4-12 s each, alternately
        brighter and darker."""
        s = self.settings
        if s.brightness_jumps_per_min <= 0:
            return ()
        out = []
        t = float(rng.exponential(60.0 / s.brightness_jumps_per_min))
        k = 0
        while t < s.duration_s:
            length = float(rng.uniform(4.0, 12.0))
            gain = s.jump_factor if k % 2 == 0 else 1 / s.jump_factor
            out.append((t, t + length, gain))
            k += 1
            t += length + float(rng.exponential(60.0 / s.brightness_jumps_per_min))
        return tuple(out)

    # -- the state at one instant -----------------------------------------------------------

    def gain(self, t: float) -> float:
        """The global brightness gain at scene time ``t``: the lighting ramp (1 at t = 0,
        ``1 - lighting_depth`` half a period later) times any brightness jump."""
        s = self.settings
        tt = self._wrap(t)
        ramp = 0.5 - 0.5 * math.cos(2 * math.pi * tt / s.lighting_period_s)
        g = 1.0 - s.lighting_depth * ramp
        for start, end, jump in self._jumps:
            if start <= tt < end:
                g *= jump
        return g

    def shake(self, t: float) -> tuple[int, int]:
        """The whole frame's jitter at scene time ``t``, pixels (dx, dy), each within
        ``shake_px``: two sines of incommensurate frequencies per axis."""
        amp = self.settings.shake_px
        if amp <= 0:
            return (0, 0)
        p = self._phase
        tau = 2 * math.pi * self._wrap(t)
        dx = 0.6 * math.sin(1.7 * tau + p[0]) + 0.4 * math.sin(4.3 * tau + p[1])
        dy = 0.6 * math.sin(1.3 * tau + p[2]) + 0.4 * math.sin(3.7 * tau + p[3])
        return (round(amp * dx), round(amp * dy))

    def _at(self, t: float) -> _State:
        """Vehicles on the road at scene time ``t`` (wrapped into one run): ids, world x, y
        and speed (interpolated between steps), lane masks of the step before."""
        f = self.flow
        pos = (self._wrap(t) - f.t0) / DT
        k = math.floor(pos)
        u = pos - k
        ids = f.active(k)
        i0 = f.off[ids] + (k - f.k_in[ids])
        i1 = np.where(k + 1 < f.k_out[ids], i0 + 1, i0)
        x = f.x[i0] * (1 - u) + f.x[i1] * u
        y = f.y[i0] * (1 - u) + f.y[i1] * u
        v = f.v[i0] * (1 - u) + f.v[i1] * u
        return _State(ids, x, y, v, f.lanes[i0].astype(np.int64))

    def truth(self, t: float) -> list[VehicleTruth]:
        """Every vehicle at least partly in view at scene time ``t``, by id."""
        ids, x, y, v, _ = self._at(t)
        if ids.size == 0:
            return []
        f, ppm = self.flow, self.px_per_m
        offx, offy = self._view(self._wrap(t))
        w, h = self.width, self.height
        half_l, half_w = f.length[ids] / 2, f.width[ids] / 2
        x0 = ((x - half_l) * ppm - offx) / w
        x1 = ((x + half_l) * ppm - offx) / w
        y0 = ((y - half_w) * ppm - offy) / h
        y1 = ((y + half_w) * ppm - offy) / h
        direction = f.direction[ids]
        lane_ys = np.array([ln.y for ln in self.road_lanes])
        out = []
        for n, i in enumerate(ids):
            box = (
                max(0.0, float(x0[n])),
                max(0.0, float(y0[n])),
                min(1.0, float(x1[n])),
                min(1.0, float(y1[n])),
            )
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            full = (float(x0[n]), float(y0[n]), float(x1[n]), float(y1[n]))
            out.append(
                VehicleTruth(
                    id=int(i),
                    cls=f.cls[i],
                    box=box,
                    center=((full[0] + full[2]) / 2, (full[1] + full[3]) / 2),
                    lane=int(np.argmin(np.abs(lane_ys - y[n]))),
                    heading=(float(direction[n]), 0.0),
                    speed_mps=float(v[n]),
                    stopped=bool(v[n] < STOPPED_MPS),
                    occluded=self._hidden_share(full, (offx, offy)) >= OCCLUDED_SHARE,
                )
            )
        return out

    def _hidden_share(self, box: tuple[float, float, float, float], view: tuple[int, int]) -> float:
        """The share of ``box`` (normalised, unclipped) that an occluder hides."""
        if not self._occluders:
            return 0.0
        m = self._margin
        sat = self._hidden_sat
        hh, ww = sat.shape[0] - 1, sat.shape[1] - 1
        xa = min(ww, max(0, round(box[0] * self.width) + m + view[0]))
        xb = min(ww, max(0, round(box[2] * self.width) + m + view[0]))
        ya = min(hh, max(0, round(box[1] * self.height) + m + view[1]))
        yb = min(hh, max(0, round(box[3] * self.height) + m + view[1]))
        area = (xb - xa) * (yb - ya)
        if area <= 0:
            return 0.0
        hidden = int(sat[yb, xb]) - int(sat[ya, xb]) - int(sat[yb, xa]) + int(sat[ya, xa])
        return float(hidden / area)

    def is_red(self, t: float) -> bool:
        """Whether the eastbound signal shows red at scene time ``t``."""
        return is_red(self.settings, self._wrap(t))

    def queue_length(self, zone: str, t: float) -> float:
        """The stopped queue in ``zone`` at scene time ``t``, metres from the stop line to
        the back of the last vehicle of the contiguous queue; 0 with no queue.

        Per lane of the zone, the queue starts with a stopped vehicle whose front is within
        :data:`QUEUE_GAP_M` of the stop line and goes on through stopped vehicles each
        within that gap of the one in front; the zone's figure is its longest lane's,
        capped at the zone's ``length_m`` (what a camera can see)."""
        found = [z for z in self.zones if z.name == zone]
        if not found:
            known = ", ".join(z.name for z in self.zones) or "none"
            raise KeyError(f"no zone {zone!r}; zones: {known}")
        z = found[0]
        ids, x, _, v, masks = self._at(t)
        f = self.flow
        stop = stop_line_x(self.settings)
        best = 0.0
        for lane in z.lanes:
            bit = 1 << lane
            inlane = (masks & bit) != 0
            front = x[inlane] + f.length[ids[inlane]] / 2
            rear = x[inlane] - f.length[ids[inlane]] / 2
            speed = v[inlane]
            order = np.argsort(-front)
            edge = stop  # where the queue's back is so far
            length = 0.0
            for j in order:
                if front[j] > stop + 0.5:
                    continue  # past the stop line
                if edge - front[j] > QUEUE_GAP_M or speed[j] >= STOPPED_MPS:
                    break
                edge = float(rear[j])
                length = stop - edge
            best = max(best, length)
        return min(best, z.length_m)

    # -- crossings ---------------------------------------------------------------------------

    def _all_events(self) -> list[CrossingTruth]:
        """Every crossing of every line in one run, from the trajectories' samples (the
        centre moves in a straight line between two samples)."""
        f = self.flow
        n = len(f.cls)
        if n == 0 or f.x.size == 0:
            return []
        counts = f.k_out - f.k_in
        veh = np.repeat(np.arange(n), counts)
        k = np.repeat(f.k_in, counts) + (np.arange(f.x.size) - np.repeat(f.off, counts))
        t = f.t0 + k * DT
        at = self.settings.camera_move_at
        moved = (t >= at) if at is not None else np.zeros(t.size, bool)
        offx = np.where(moved, self._move[0], 0)
        offy = np.where(moved, self._move[1], 0)
        cx = (f.x * self.px_per_m - offx) / self.width
        cy = (f.y * self.px_per_m - offy) / self.height
        # Pairs of consecutive samples of one vehicle, on the same side of the camera move.
        pair = (veh[:-1] == veh[1:]) & (moved[:-1] == moved[1:])
        events: list[CrossingTruth] = []
        for line in self.lines:
            (ax, ay), (bx, by) = line.a, line.b
            sd = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
            left = sd < 0
            for j in np.flatnonzero(pair & (left[:-1] != left[1:])):
                p0 = (float(cx[j]), float(cy[j]))
                p1 = (float(cx[j + 1]), float(cy[j + 1]))
                way = crossing(line.a, line.b, p0, p1)
                if way is None:
                    continue
                frac = float(sd[j] / (sd[j] - sd[j + 1]))
                when = float(t[j]) + DT * frac
                if 0.0 <= when < self.duration:
                    events.append(CrossingTruth(when, line.name, way, int(veh[j]), f.cls[veh[j]]))
        events.sort(key=lambda e: (e.t, e.line, e.vehicle))
        return events

    def crossing_events(self, t0: float = 0.0, t1: float = math.inf) -> list[CrossingTruth]:
        """Crossings with ``t0 <= t < t1``, by time. The scene repeats every ``duration_s``,
        so times past it count the runs after the first; ``t1`` infinite means the end of
        the run that ``t0`` is in."""
        d = self.duration
        if math.isinf(t1):
            t1 = (math.floor(t0 / d) + 1) * d
        out: list[CrossingTruth] = []
        for run in range(math.floor(t0 / d), math.ceil(t1 / d)):
            base = run * d
            for e in self._events:
                when = base + e.t
                if t0 <= when < t1:
                    out.append(CrossingTruth(when, e.line, e.direction, e.vehicle, e.cls))
        return out

    def crossings(self, t0: float = 0.0, t1: float = math.inf) -> dict[str, dict[str, int]]:
        """Crossings per line and direction with ``t0 <= t < t1`` (see
        :meth:`crossing_events`): ``{line: {"in": n, "out": n}}``, every line present."""
        out = {line.name: {"in": 0, "out": 0} for line in self.lines}
        for e in self.crossing_events(t0, t1):
            out[e.line][e.direction] += 1
        return out

    # -- rendering ---------------------------------------------------------------------------

    def render(self, t: float, fault: str = "none") -> Frame:
        """A new BGR frame of the scene at time ``t``. Deterministic in (seed, t) but for
        the sensor noise, which changes with every render. ``fault`` draws one of the
        camera's image faults (``black``, ``covered``, ``blur``, ``moved``)."""
        s, m = self.settings, self._margin
        h, w = s.height, s.width
        n = next(self._renders)
        ny, nx = self._offsets[n % _OFFSETS]
        if fault == "black":
            return self._black_noise[ny : ny + h, nx : nx + w].copy()
        if fault == "covered":
            covered: Frame = np.full((h, w, 3), 38, np.uint8)
            covered += self._black_noise[ny : ny + h, nx : nx + w]
            return covered
        tt = self._wrap(t)
        vx, vy = self._view(tt)
        sx, sy = self.shake(tt)
        ox, oy = m + vx + sx, m + vy + sy
        frame: Frame = self._canvas[oy : oy + h, ox : ox + w].copy()
        if self.flow.x.size:
            now = self._at(tt)
            self._painter.draw_vehicles(frame, self.flow, (now.ids, now.x, now.y), ox - m, oy - m)
        for occ in self._occluders:
            self._painter.paste(frame, occ, ox, oy)
        g = self.gain(tt)
        lut = np.clip(np.arange(256) * g - self._noise_amp + 0.5, 0, 255).astype(np.uint8)
        frame = np.asarray(cv2.LUT(frame, lut), dtype=np.uint8)
        if self._noise_amp:
            cv2.add(frame, self._noise[ny : ny + h, nx : nx + w], dst=frame)
        if self._rain:
            layer = self._rain[int(tt * _RAIN_HZ) % len(self._rain)]
            cv2.add(frame, layer, dst=frame)
        if fault == "moved":
            frame = np.ascontiguousarray(np.roll(frame, (h // 4, w // 3), axis=(0, 1))[:, ::-1])
        elif fault == "blur":
            frame = np.asarray(cv2.GaussianBlur(frame, (0, 0), 0.01 * w), dtype=np.uint8)
        return frame

    def encode_jpeg(self, frame: Frame, quality: int) -> bytes:
        """``frame`` as JPEG bytes at ``quality`` (1..100)."""
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover - imencode fails only on invalid input
            raise RuntimeError("JPEG encoding failed")
        return buf.tobytes()
