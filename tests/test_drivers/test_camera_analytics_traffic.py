"""Camera analytics against the traffic scene's exact ground truth (tepi_sim.traffic).

Each scene is generated here with a fixed seed and analysed at 5 frames a second from its
start; counts are compared from ``WARMUP`` seconds on (the first background is learnt from a
road with vehicles on it). Issue 20's targets: counts per line and direction within 3 % over
scenes of at least 200 crossings each way with the hard cases on; the queue within one vehicle
length at sampled moments; nothing at all from a scene without vehicles.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

from tepi.drivers.camera.analytics import (
    AnalyticsSettings,
    Analyzer,
    CountLine,
    Observation,
    SizeClass,
    Zone,
)
from tepi_sim.traffic import TrafficScene, TrafficSettings, vehicle_length_m

pytestmark = pytest.mark.timeout(300)

FPS = 5.0
WARMUP = 10.0
END_MARGIN = 1.0
# Box areas (share of the frame, shadow included) at the scene's 13.3 px/m: a two-wheeler
# (2 x 0.8 m) is about 0.0015, a car (4.5 x 1.8 m) 0.007, a bus (11 x 2.5 m) 0.022.
CLASSES = (
    SizeClass("two_wheeler", 0.0035),
    SizeClass("car", 0.012),
    SizeClass("bus_truck", 1.0),
)


@dataclass
class Run:
    scene: TrafficScene
    start: float
    end: float
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    classes: Counter[tuple[str, str, str | None]] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    queues: list[tuple[float, float, float, float]] = field(default_factory=list)
    # When the true queue of a zone jumped by more than a metre from one frame to the next
    # (a vehicle stopped at its end, or the queue moved off): the moments near one are
    # where a measure that lags by a frame or two is off.
    queue_steps: list[float] = field(default_factory=list)
    motion: int = 0
    relearning: list[float] = field(default_factory=list)
    observations: int = 0

    def truth(self) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for line, ways in self.scene.crossings(self.start, self.end).items():
            for way, n in ways.items():
                out[(line, way)] = n
        return out


def analyse(settings: TrafficSettings, seconds: float, count_from: float = WARMUP) -> Run:
    scene = TrafficScene(settings)
    analyzer = Analyzer(
        AnalyticsSettings(
            lines=tuple(CountLine(ln.name, ln.a, ln.b) for ln in scene.lines),
            zones=tuple(Zone(z.name, z.polygon, z.stop_line, z.length_m) for z in scene.zones),
            classes=CLASSES,
        )
    )
    n = round(seconds * FPS)
    # Crossings are scored by when each was seen, ours and the truth's alike, up to a
    # second before the last frame: one a vehicle makes after it (the last frame is at
    # (n - 1) / FPS), or just before it while its centre is still within the line's
    # ``hysteresis``, cannot be seen, and scoring it was a miss the engine did not make.
    run = Run(scene, count_from, (n - 1) / FPS - END_MARGIN)
    truth_before: dict[str, float] = {}
    for k in range(n):
        t = k / FPS
        o: Observation = analyzer.process(scene.render(t), t)
        run.observations += 1
        if o.relearning:
            run.relearning.append(t)
        if t < count_from:
            continue
        for z in scene.zones:
            q = scene.queue_length(z.name, t)
            if abs(q - truth_before.get(z.name, q)) > 1.0:
                run.queue_steps.append(t)
            truth_before[z.name] = q
        for c in o.crossings:
            if not run.start <= c.t < run.end:
                continue
            run.counts[(c.line, c.direction)] += 1
            run.classes[(c.line, c.direction, c.label)] += 1
        run.events.update(e.kind for e in o.events)
        run.motion += o.motion
        if k % round(FPS) == 0:  # the queue, once a second
            for z in scene.zones:
                got = o.zones[z.name].queue_length
                assert got is not None
                run.queues.append((t, got, scene.queue_length(z.name, t), _tail(scene, z.name, t)))
    return run


def _tail(scene: TrafficScene, zone: str, t: float) -> float:
    """The length of the last vehicle of the true queue (4.5 m, a car's, with no queue)."""
    q = scene.queue_length(zone, t)
    z = next(z for z in scene.zones if z.name == zone)
    if q <= 0:
        return vehicle_length_m("car")
    back = z.stop_line[0][0] - q / scene.settings.width_m  # x of the queue's back, eastbound
    lanes = [v for v in scene.truth(t) if v.stopped and v.lane in z.lanes]
    if not lanes:
        return vehicle_length_m("car")
    last = min(lanes, key=lambda v: abs(v.box[0] - back))
    return vehicle_length_m(last.cls)


# The default scene has every hard case on: close followers, lane changes, a stopped queue
# at the signal, the tree and gantry occluding, shadows, the lighting ramp, shake and noise.
HARD = TrafficSettings(seed=0, duration_s=300.0)
# The same with rain speckle and exposure jumps on top, on another seed.
WET = TrafficSettings(
    seed=1, duration_s=300.0, rain=0.3, brightness_jumps_per_min=1.0, lighting_period_s=300.0
)


# A slow bus in view while the first background is learnt leaves its picture in it; when it
# has gone, that is a hole the vehicles passing through it merge with (seed 7).
IMPRINTED = TrafficSettings(seed=7, duration_s=300.0)
# A vehicle learnt into the first background over a lane marking (seed 9).
MARKED = TrafficSettings(seed=9, duration_s=300.0)


@pytest.fixture(scope="module")
def hard() -> Run:
    return analyse(HARD, 300.0)


@pytest.fixture(scope="module")
def wet() -> Run:
    return analyse(WET, 300.0)


@pytest.fixture(scope="module")
def marked() -> Run:
    return analyse(MARKED, 300.0)


def _check_counts(run: Run) -> None:
    truth = run.truth()
    ins = sum(n for (_, way), n in truth.items() if way == "in")
    outs = sum(n for (_, way), n in truth.items() if way == "out")
    assert ins >= 200
    assert outs >= 200
    for key in set(truth) | set(run.counts):
        want, got = truth[key], run.counts[key]
        assert abs(got - want) <= 0.03 * want, f"{key}: counted {got}, truth {want}"


def test_counts_per_line_and_direction_within_3_percent(hard: Run) -> None:
    _check_counts(hard)


def test_counts_within_3_percent_after_a_start_that_learnt_a_bus() -> None:
    """The bus that was in the first background is a hole once it has gone; the vehicles
    driving through it merged with it, so it "moved", became a confirmed track, stood there
    and took over those that passed later: 21 % of a lane was not counted. Such a still
    track is found by its edges and dropped (Background.ghostly)."""
    _check_counts(analyse(IMPRINTED, 300.0))


def test_counts_within_3_percent_after_a_start_that_learnt_a_vehicle_over_a_marking(
    marked: Run,
) -> None:
    """A vehicle learnt into the first background over a lane marking leaves a hole whose
    outline has the marking's edges in the frame, so its edges do not show it is a hole; it
    stood as a track for two minutes and took over 13 % of lane 1's vehicles. Inside it,
    the frame looks like the road around it and the background does not
    (``Background.ghostly``, ``_like_around``): 2.6 % now."""
    _check_counts(marked)


def test_a_queue_starting_off_is_not_held_by_a_slow_steady_speed(marked: Run) -> None:
    """A track counts as moving (its pixels not stopped) once it is not stopped and fast
    now; it no longer needs a steady speed over the last second too, which a vehicle
    starting off from a queue at green reaches about a second late. On this scene, whose
    queues start off often, the mean error of the queue went from 0.58 to 0.38 m (and
    the moments off by more than a vehicle from 21 to 19 of 290)."""
    mean = sum(abs(got - want) for _, got, want, _ in marked.queues) / len(marked.queues)
    assert mean < 0.45


def test_counts_within_3_percent_in_rain_and_exposure_jumps(wet: Run) -> None:
    """Lane 2 was 3.2 % low here (92/95) until a blob that narrows between two vehicles side
    by side was cut in two: 93/94 now, every other line within 2.2 %."""
    _check_counts(wet)


def test_per_class_counts(hard: Run) -> None:
    """Classes by box size; the issue sets no target for them (the totals carry the 3 %).
    What is asserted: two-wheelers, most of the traffic, within 15 % of the truth per line
    and direction (2 % measured; 4 % before blobs were cut between vehicles side by side)."""
    truth: Counter[tuple[str, str, str]] = Counter(
        (e.line, e.direction, e.cls) for e in hard.scene.crossing_events(WARMUP, hard.end)
    )
    for (line, way, cls), want in truth.items():
        if cls == "two_wheeler" and want >= 50:
            got = hard.classes[(line, way, cls)]
            assert abs(got - want) <= 0.15 * want, f"{line} {way}: {got} two-wheelers, {want}"


def test_every_crossing_has_a_track_start_and_end(hard: Run) -> None:
    """One start and one end per object: as many as there were vehicles in view, give or
    take the breaks of tracks at the occluders (a broken track is one more start)."""
    vehicles = {
        e.vehicle for e in hard.scene.crossing_events(WARMUP, hard.end) if e.line == "all-lanes"
    }
    assert abs(hard.events["start"] - hard.events["end"]) <= 20  # those still in view
    assert len(vehicles) <= hard.events["start"] <= 1.4 * len(vehicles)


@pytest.mark.xfail(
    strict=True,
    reason="the queue is a frame or a few early or late around the instants it changes "
    "(7 of 290 moments of the hard scene are off by more than one vehicle)",
)
def test_queue_length_within_one_vehicle(hard: Run) -> None:
    bad = [(t, got, want) for t, got, want, tail in hard.queues if abs(got - want) > tail]
    assert not bad


def test_queue_length_mostly_within_one_vehicle(hard: Run) -> None:
    """What is met now (a guard against getting worse while the target above is not met):
    at most 2.5 % of the moments (once a second) are off by more than the length of the
    queue's last vehicle (7 of 290, 2.4 %, measured, and a mean error of 0.19 m; 8 and 0.27 m
    with one speed for a track to stop and to move again, not two; 9 and 0.31 m
    before a queue shorter for one frame kept its length; 10 and
    0.41 m before blobs that narrow between two vehicles were cut; 11 and 0.58 m before
    moving pixels ahead of a queue ended it; 13 when two two-wheelers stopped at the frame's
    edge, whose merging boxes moved, were taken for moving; 19 when a track's box that
    jittered made it "moving"), and the mean error is under 0.35 m; and none is off with the
    true queue steady from 2 s before to 1 s after."""
    bad = [(t, got, want) for t, got, want, tail in hard.queues if abs(got - want) > tail]
    assert len(bad) <= 0.025 * len(hard.queues), bad
    mean = sum(abs(got - want) for _, got, want, _ in hard.queues) / len(hard.queues)
    assert mean < 0.25
    # Off only while the queue changes: each such moment from 2 s before to 1 s after the
    # true queue jumped (a vehicle stopped at its end, or it moved off), none with it steady.
    assert hard.queue_steps
    steady = [b for b in bad if not any(b[0] - 2.0 < s <= b[0] + 1.0 for s in hard.queue_steps)]
    assert not steady, steady
    assert max(want for _, _, want, _ in hard.queues) > 20  # the scene has long queues


def test_no_vehicles_no_events_and_no_motion() -> None:
    """Noise, the lighting ramp (fast), exposure jumps, rain speckle and shake, and nothing
    on the road: nothing may come out."""
    run = analyse(
        TrafficSettings(
            seed=2,
            duration_s=120.0,
            vehicles=False,
            rain=1.0,
            brightness_jumps_per_min=2.0,
            lighting_period_s=60.0,
            lighting_depth=0.4,
            shake_px=2.0,
        ),
        120.0,
    )
    assert run.observations == 600
    assert run.events == Counter()
    assert run.counts == Counter()
    assert run.motion == 0
    assert all(got == 0 for _, got, _, _ in run.queues)


def test_a_camera_move_is_relearnt_and_counting_goes_on() -> None:
    at = 40.0
    run = analyse(
        TrafficSettings(seed=4, duration_s=120.0, camera_move_at=at), 110.0, count_from=at + 5
    )
    moved = [t for t in run.relearning if t >= at]
    assert moved
    assert moved[0] <= at + 2.0
    assert moved[-1] <= moved[0] + 3.0
    # After the move (the lines stay where they are drawn on the image), counts go on.
    truth = run.truth()
    assert sum(truth.values()) >= 100
    assert abs(sum(run.counts.values()) - sum(truth.values())) <= 0.05 * sum(truth.values())
