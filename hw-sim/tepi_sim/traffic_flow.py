"""The vehicles of the traffic scene: arrivals, car following, a signal and lane changes.

The whole scene is simulated once, at construction, at a fixed step of :data:`DT` seconds
(20 Hz) from ``-WARMUP_S`` (so the road is already busy at t = 0) to the scene's duration.
Between two steps a vehicle moves in a straight line, which makes the trajectories exact,
piecewise linear functions of time: the ground truth (boxes, crossings, queues) is read
from them, never estimated from pictures.

Car following is the Intelligent Driver Model (Treiber, Hennecke, Helbing 2000): each
vehicle accelerates towards its desired speed and brakes for its leader, keeping a jam gap
``s0`` and a time headway ``T``. A red signal is a stopped leader at the stop line for every
vehicle that can still stop comfortably. A vehicle changing lanes belongs to both lanes
while it moves across (about 2 s): it follows the leaders of both and both lanes' followers
follow it, so no two vehicles ever overlap. A last clamp after each step keeps every gap at
``MIN_GAP_M`` or more even when the model would brake harder than a vehicle can.

Positions are world metres: ``x`` along the road from the frame's left edge (before any
camera move), ``y`` across it from the frame's top edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from tepi_sim.traffic_settings import CLASSES, LANE_WIDTH_M, MEDIAN_M, TrafficSettings

__all__ = ["CLASS_SIZES", "DT", "Flow", "Lane", "simulate"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DT: Final = 0.05
WARMUP_S: Final = 60.0
MIN_GAP_M: Final = 0.3
ENTRY_M: Final = 25.0  # vehicles appear this far before the frame's edge, and leave as far after
LANE_CHANGE_S: Final = 2.0
AMBER_DECEL: Final = 3.5  # a vehicle that would need harder braking runs the red (amber)

CLASS_SIZES: Final = {"two_wheeler": (2.0, 0.8), "car": (4.5, 1.8), "bus_truck": (11.0, 2.5)}
"""Length and width in metres of each class."""

# Per class: jam gap s0 (m), time headway T (s), max acceleration a, comfortable braking b.
_IDM: Final = {
    "two_wheeler": (0.8, 0.9, 2.0, 2.5),
    "car": (1.5, 1.2, 1.6, 2.5),
    "bus_truck": (2.0, 1.5, 1.0, 2.0),
}
_CLOSE_T: Final = 0.35  # time headway of a close follower
_BUS_MAX_MPS: Final = 11.0


@dataclass(frozen=True, slots=True)
class Lane:
    """One lane: its index from the top of the frame, its centre ``y`` in metres and its
    travel direction along x (-1 westbound, +1 eastbound)."""

    index: int
    y: float
    direction: int


def lanes(settings: TrafficSettings) -> tuple[Lane, ...]:
    """The lanes top to bottom: westbound ones on the upper half of the road."""
    n = settings.lanes_per_direction
    top = (settings.height_m - settings.road_m) / 2
    out = [Lane(i, top + LANE_WIDTH_M * (i + 0.5), -1) for i in range(n)]
    low = top + n * LANE_WIDTH_M + MEDIAN_M
    out += [Lane(n + j, low + LANE_WIDTH_M * (j + 0.5), 1) for j in range(n)]
    return tuple(out)


def stop_line_x(settings: TrafficSettings) -> float:
    """Where the eastbound stop line is, metres from the frame's left edge."""
    return 0.6 * settings.width_m


def is_red(settings: TrafficSettings, t: float) -> bool:
    """Whether the signal shows red at scene time ``t`` (each cycle starts with red)."""
    if not settings.signal:
        return False
    return (t % (settings.red_s + settings.green_s)) < settings.red_s


@dataclass(frozen=True, slots=True)
class Flow:
    """The simulated trajectories, stored ragged: vehicle ``i`` is on the road from step
    ``k_in[i]`` (inclusive) to ``k_out[i]`` (exclusive); its samples are at
    ``off[i] .. off[i] + k_out[i] - k_in[i]`` of ``x``, ``y``, ``v`` and ``lanes`` (a bit
    mask of the lanes it is in). Step ``k`` is scene time ``t0 + k * DT``. ``direction`` is
    each vehicle's travel along x: -1 westbound, +1 eastbound."""

    t0: float
    steps: int
    cls: tuple[str, ...]
    direction: F64
    length: F64
    width: F64
    colour: npt.NDArray[np.uint8]
    k_in: I64
    k_out: I64
    off: I64
    x: F64
    y: F64
    v: F64
    lanes: npt.NDArray[np.uint8]

    def active(self, k: int) -> I64:
        """The vehicles on the road at step ``k``."""
        return np.flatnonzero((self.k_in <= k) & (k < self.k_out))


@dataclass(slots=True)
class _Plan:
    """One vehicle before it enters: arrival time, lane, class and driving parameters."""

    t: float
    lane: int
    cls: str
    v0: float
    close: bool
    offset: float  # lateral offset from the lane centre, metres
    change_at: float | None  # metres into the frame where it starts a lane change


def _plans(
    settings: TrafficSettings, all_lanes: tuple[Lane, ...], rng: np.random.Generator
) -> list[_Plan]:
    """Arrivals per lane: exponential headways, and close followers right behind."""
    if not settings.vehicles or settings.flow_per_lane_min <= 0:
        return []
    mix = np.asarray(settings.class_mix, dtype=np.float64)
    mix = mix / mix.sum()
    mean_gap = 60.0 / settings.flow_per_lane_min
    lo, hi = settings.speed_mps
    plans: list[_Plan] = []
    for lane in all_lanes:
        t = -WARMUP_S + float(rng.uniform(0, mean_gap))
        while t < settings.duration_s:
            cls = CLASSES[int(rng.choice(len(CLASSES), p=mix))]
            close = bool(rng.random() < settings.close_followers)
            v0 = float(rng.uniform(lo, hi))
            if cls == "bus_truck":
                v0 = min(v0, _BUS_MAX_MPS)
            half = (LANE_WIDTH_M - CLASS_SIZES[cls][1]) / 2 - 0.4
            offset = float(rng.uniform(-half, half)) if cls == "two_wheeler" else 0.0
            change = None
            if settings.lanes_per_direction > 1 and rng.random() < settings.lane_changes:
                change = float(rng.uniform(0.05, 0.55)) * settings.width_m
            plans.append(_Plan(t, lane.index, cls, v0, close, offset, change))
            # The next arrival: right behind (a close follower) or after an exponential gap.
            t += float(rng.uniform(0.4, 1.0)) if close else float(rng.exponential(mean_gap))
    plans.sort(key=lambda p: p.t)
    return plans


_PALETTE: Final = np.array(
    [
        # dark
        (28, 28, 30),
        (52, 38, 30),
        (35, 30, 60),
        # light
        (232, 232, 230),
        (205, 208, 212),
        (180, 190, 200),
        # colours
        (40, 40, 180),
        (150, 80, 40),
        (40, 180, 210),
        (60, 130, 60),
        # close to the road (grey 95): 30 levels or so either way
        (128, 126, 124),
        (64, 66, 66),
        (120, 118, 136),
        (66, 70, 58),
    ],
    dtype=np.uint8,
)
"""Body colours (BGR). Every one differs from the road's base grey (95) by at least 28
levels on average over its three channels (see :data:`tepi_sim.traffic.ROAD_GREY`)."""


def simulate(settings: TrafficSettings) -> Flow:
    """Run the whole scene once (deterministic from ``settings.seed``)."""
    rng = np.random.default_rng([settings.seed, 0x7AFF1C])
    all_lanes = lanes(settings)
    plans = _plans(settings, all_lanes, rng)
    n = len(plans)
    t0 = -WARMUP_S
    steps = math.ceil((settings.duration_s - t0) / DT) + 2
    cls = tuple(p.cls for p in plans)
    length = np.array([CLASS_SIZES[c][0] for c in cls], dtype=np.float64)
    width = np.array([CLASS_SIZES[c][1] for c in cls], dtype=np.float64)
    idm = np.array([_IDM[c] for c in cls], dtype=np.float64).reshape(n, 4)
    s0, headway, a_max, b = idm[:, 0], idm[:, 1].copy(), idm[:, 2], idm[:, 3]
    close = np.array([p.close for p in plans], dtype=bool)
    headway[close] = _CLOSE_T
    v0 = np.array([p.v0 for p in plans], dtype=np.float64)
    colour = _PALETTE[rng.integers(0, len(_PALETTE), size=n)] if n else np.zeros((0, 3), np.uint8)
    lane_of = [all_lanes[p.lane] for p in plans]
    direction = np.array([ln.direction for ln in lane_of], dtype=np.float64)
    entry = np.where(direction > 0, -ENTRY_M, settings.width_m + ENTRY_M)
    exit_s = settings.width_m + 2 * ENTRY_M  # distance travelled when a vehicle leaves
    stop_s = stop_line_x(settings) + ENTRY_M  # the eastbound stop line, as distance travelled
    by_lane = {ln.index: ln for ln in all_lanes}

    # State over all planned vehicles; only the active ones move.
    s = np.zeros(n)  # distance travelled from the entry point (of the centre)
    v = np.zeros(n)
    y = np.array([ln.y + p.offset for ln, p in zip(lane_of, plans, strict=True)], dtype=np.float64)
    mask = np.array([1 << p.lane for p in plans], dtype=np.int64)
    y_from = y.copy()
    y_to = y.copy()
    change_start = np.full(n, np.nan)
    changed = np.zeros(n, dtype=bool)
    active = np.zeros(n, dtype=bool)
    k_in = np.full(n, steps, dtype=np.int64)
    k_out = np.full(n, steps, dtype=np.int64)
    waiting: dict[int, list[int]] = {ln.index: [] for ln in all_lanes}
    nxt = 0
    rec_k: list[I64] = []
    rec_i: list[I64] = []
    rec_x: list[F64] = []
    rec_y: list[F64] = []
    rec_v: list[F64] = []
    rec_m: list[I64] = []

    for k in range(steps):
        t = t0 + k * DT
        while nxt < n and plans[nxt].t <= t:
            waiting[plans[nxt].lane].append(nxt)
            nxt += 1
        # Entries: the first waiting vehicle of a lane goes in when the lane has room.
        for lane_index, queue in waiting.items():
            if not queue:
                continue
            i = queue[0]
            bit = 1 << lane_index
            others = np.flatnonzero(active & ((mask & bit) != 0))
            v_start = v0[i]
            if others.size:
                j = others[np.argmin(s[others])]
                gap = s[j] - length[j] / 2 - length[i] / 2
                if gap < s0[i] + 0.5 * min(v0[i], v[j]) * headway[i] + 1.0:
                    continue
                if gap < 40.0:
                    v_start = min(v0[i], v[j])
            queue.pop(0)
            active[i] = True
            k_in[i] = k
            v[i] = v_start
        act = np.flatnonzero(active)
        if act.size:
            rec_k.append(np.full(act.size, k, dtype=np.int64))
            rec_i.append(act)
            rec_x.append(entry[act] + direction[act] * s[act])
            rec_y.append(y[act].copy())
            rec_v.append(v[act].copy())
            rec_m.append(mask[act].copy())
        else:
            continue
        _lane_changes(
            act,
            t,
            state=(s, v, length, y, y_from, y_to, change_start),
            mask=mask,
            changed=changed,
            plans=plans,
            by_lane=by_lane,
            settings=settings,
        )
        # Leaders: the nearest vehicle ahead that shares a lane.
        sa, va, la, ma = s[act], v[act], length[act], mask[act]
        shared = (ma[:, None] & ma[None, :]) != 0
        ahead = shared & (sa[None, :] > sa[:, None])
        gaps = np.where(
            ahead, (sa[None, :] - la[None, :] / 2) - (sa[:, None] + la[:, None] / 2), np.inf
        )
        lead = np.argmin(gaps, axis=1)
        gap = gaps[np.arange(act.size), lead]
        v_lead = np.where(np.isfinite(gap), va[lead], va)
        if is_red(settings, t):
            front = sa + la / 2
            to_line = stop_s - front
            east = direction[act] > 0
            can_stop = east & (to_line > -0.05) & (to_line >= va * va / (2 * AMBER_DECEL) - 0.5)
            line_gap = to_line + s0[act] - 0.2  # stop with the front just behind the line
            use = can_stop & (line_gap < gap)
            gap = np.where(use, line_gap, gap)
            v_lead = np.where(use, 0.0, v_lead)
        acc = _idm(
            va, v0[act], v_lead, gap, s0=s0[act], headway=headway[act], a=a_max[act], b=b[act]
        )
        v_new = np.maximum(va + acc * DT, 0.0)
        s_new = sa + (va + v_new) / 2 * DT
        # Never closer than MIN_GAP_M to the leader's new position (a clamp, seldom used).
        # Repeated so that a clamped leader's own clamp reaches its followers.
        has = np.isfinite(gaps[np.arange(act.size), lead])
        for _ in range(3):
            limit = s_new[lead] - la[lead] / 2 - la / 2 - MIN_GAP_M
            over = has & (s_new > limit)
            if not over.any():
                break
            s_new = np.where(over, np.maximum(limit, sa), s_new)
            v_new = np.where(over, np.minimum(v_new, va[lead]), v_new)
        s[act], v[act] = s_new, v_new
        gone = act[s_new > exit_s]
        active[gone] = False
        k_out[gone] = k + 1

    k_out = np.where(active, steps, k_out)
    k_out = np.where(k_in >= steps, k_in, k_out)  # never entered: an empty range
    if rec_k:
        rk, ri = np.concatenate(rec_k), np.concatenate(rec_i)
        order = np.lexsort((rk, ri))
        x_all, y_all = np.concatenate(rec_x)[order], np.concatenate(rec_y)[order]
        v_all, m_all = np.concatenate(rec_v)[order], np.concatenate(rec_m)[order]
    else:
        x_all = y_all = v_all = np.zeros(0)
        m_all = np.zeros(0, dtype=np.int64)
    counts = k_out - k_in
    off = (
        np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        if n
        else np.zeros(0, np.int64)
    )
    return Flow(
        t0=t0,
        steps=steps,
        cls=cls,
        direction=direction,
        length=length,
        width=width,
        colour=colour,
        k_in=k_in,
        k_out=k_out,
        off=off,
        x=x_all,
        y=y_all,
        v=v_all,
        lanes=m_all.astype(np.uint8),
    )


def _idm(v: F64, v0: F64, v_lead: F64, gap: F64, *, s0: F64, headway: F64, a: F64, b: F64) -> F64:
    """The IDM acceleration, bounded to -9 m/s² (an emergency stop) below."""
    s_star = s0 + np.maximum(0.0, v * headway + v * (v - v_lead) / (2 * np.sqrt(a * b)))
    free = 1 - (v / v0) ** 4
    with np.errstate(divide="ignore", invalid="ignore"):
        inter = np.where(np.isfinite(gap), (s_star / np.maximum(gap, 0.01)) ** 2, 0.0)
    out: F64 = np.clip(a * (free - inter), -9.0, a)
    return out


def _lane_changes(
    act: I64,
    t: float,
    *,
    state: tuple[F64, F64, F64, F64, F64, F64, F64],
    mask: I64,
    changed: npt.NDArray[np.bool_],
    plans: list[_Plan],
    by_lane: dict[int, Lane],
    settings: TrafficSettings,
) -> None:
    """Start the lane changes that are due and have room; move those under way across.

    ``state`` is (s, v, length, y, y_from, y_to, change_start), updated in place."""
    s, v, length, y, y_from, y_to, change_start = state
    moving = act[np.isfinite(change_start[act])]
    for i in moving:
        u = (t - change_start[i]) / LANE_CHANGE_S
        if u >= 1.0:
            y[i] = y_to[i]
            target = min(by_lane.values(), key=lambda ln: abs(ln.y - y_to[i]))
            mask[i] = 1 << target.index
            change_start[i] = np.nan
            changed[i] = True
        else:
            y[i] = y_from[i] + (y_to[i] - y_from[i]) * (3 * u * u - 2 * u * u * u)
    for i in act:
        plan = plans[i]
        if plan.change_at is None or changed[i] or np.isfinite(change_start[i]):
            continue
        into = s[i] - ENTRY_M  # metres into the frame
        if not plan.change_at <= into <= plan.change_at + 25.0:
            continue
        lane = by_lane[plan.lane]
        n = settings.lanes_per_direction
        first = 0 if lane.direction < 0 else n
        into_lane = lane.index + 1 if lane.index + 1 < first + n else lane.index - 1
        bit = 1 << into_lane
        others = act[(mask[act] & bit) != 0]
        front = s[i] + length[i] / 2
        rear = s[i] - length[i] / 2
        ok = True
        for j in others:
            if s[j] >= s[i]:  # ahead: room to brake behind it
                ok = (s[j] - length[j] / 2) - front >= max(3.0, 0.6 * v[i])
            else:  # behind: its driver has room to brake
                ok = rear - (s[j] + length[j] / 2) >= max(4.0, 0.9 * v[j])
            if not ok:
                break
        if not ok:
            continue
        mask[i] |= bit
        change_start[i] = t
        y_from[i] = y[i]
        y_to[i] = by_lane[into_lane].y + (y[i] - lane.y)
