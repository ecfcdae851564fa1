"""The traffic scene's ground truth: determinism, crossings both ways that a brute-force
recount from the truth boxes confirms, car following without overlaps, a queue that forms
at red and clears at green, a scene without vehicles, shake, lighting, the camera move, and
the direction convention shared with tepi's geometry."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tepi.drivers.camera import geometry
from tepi_sim import ConfigError, Simulator, load_config, traffic
from tepi_sim.camera import Camera
from tepi_sim.control import ControlServer
from tepi_sim.traffic import (
    CLASS_SIZES,
    QUEUE_GAP_M,
    STOPPED_MPS,
    TrafficScene,
    TrafficSettings,
    VehicleTruth,
    vehicle_length_m,
)
from tepi_sim.traffic_settings import traffic_settings

pytestmark = pytest.mark.timeout(120)

Image = npt.NDArray[np.uint8]
QUIET = TrafficSettings(noise=0, shake_px=0.0, lighting_depth=0.0)
"""No noise, shake or lighting: frames are exact functions of the scene time."""


DEFAULT = TrafficSettings()


@functools.cache
def scene(settings: TrafficSettings = DEFAULT) -> TrafficScene:
    """Scenes are built once per settings (about 0.6 s each)."""
    return TrafficScene(settings)


def _grey(frame: Image) -> npt.NDArray[np.float32]:
    return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), dtype=np.float32)


def _times(t0: float, t1: float, step: float) -> list[float]:
    return [t0 + k * step for k in range(round((t1 - t0) / step))]


def _overlap(p: tuple[float, float, float, float], q: tuple[float, float, float, float]) -> bool:
    return min(p[2], q[2]) > max(p[0], q[0]) and min(p[3], q[3]) > max(p[1], q[1])


def test_the_same_seed_gives_the_same_scene_and_another_seed_another() -> None:
    a, b = TrafficScene(QUIET), scene(QUIET)
    other = scene(replace(QUIET, seed=7))
    for t in (0.0, 12.3, 150.05, 299.9):
        assert a.truth(t) == b.truth(t)
        assert np.array_equal(a.render(t), b.render(t))
    assert a.crossing_events() == b.crossing_events()
    assert a.crossings() != other.crossings()
    assert not np.array_equal(a.render(50.0), other.render(50.0))


def test_noise_changes_every_render_but_not_the_truth() -> None:
    noisy = scene()
    first, second = noisy.render(10.0), noisy.render(10.0)
    assert not np.array_equal(first, second)
    diff = np.abs(first.astype(np.int16) - second.astype(np.int16))
    assert diff.max() <= 2 * noisy.settings.noise
    tiny = scene(replace(DEFAULT, width=64, height=36, shake_px=0.0))
    frames = (tiny.render(1.0) for _ in range(5000))  # past the noise offsets' cycle
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(frames))


def test_lanes_in_both_directions_cross_both_ways_over_200_times() -> None:
    counts = scene().crossings()
    westbound = [f"lane-{k}" for k in (1, 2)]
    eastbound = [f"lane-{k}" for k in (3, 4)]
    for name in westbound:  # lines are drawn top to bottom: right to left is `in`
        assert counts[name]["in"] > 50
        assert counts[name]["out"] == 0
    for name in eastbound:
        assert counts[name]["out"] > 50
        assert counts[name]["in"] == 0
    assert counts["all-lanes"]["in"] >= 100
    assert counts["all-lanes"]["out"] >= 100
    assert counts["all-lanes"]["in"] + counts["all-lanes"]["out"] >= 200
    # Every vehicle crosses its lane's line and the all-lanes line, bar those between the
    # two when the run starts or ends.
    per_lane = sum(counts[n]["in"] + counts[n]["out"] for n in westbound + eastbound)
    assert per_lane == pytest.approx(counts["all-lanes"]["in"] + counts["all-lanes"]["out"], abs=10)


def test_crossings_agree_with_a_brute_force_recount_from_the_truth() -> None:
    s = scene()
    step = 0.025  # half the simulation step: the truth interpolates between steps
    counted: Counter[tuple[str, str]] = Counter()
    classes: Counter[tuple[str, str, str]] = Counter()
    previous: dict[int, VehicleTruth] = {}
    for t in _times(0.0, 120.0, step):
        now = {v.id: v for v in s.truth(t)}
        for vid, v in now.items():
            before = previous.get(vid)
            if before is None:
                continue
            for line in s.lines:
                way = traffic.crossing(line.a, line.b, before.center, v.center)
                if way is not None:
                    counted[line.name, way] += 1
                    classes[line.name, way, v.cls] += 1
        previous = now
    truth = s.crossings(0.0, 120.0 - step)
    assert sum(counted.values()) > 100
    for line in s.lines:
        for direction in ("in", "out"):
            assert counted[line.name, direction] == truth[line.name][direction], line.name
    events = s.crossing_events(0.0, 120.0 - step)
    by_class = Counter((e.line, e.direction, e.cls) for e in events)
    assert by_class == classes
    assert [e.t for e in events] == sorted(e.t for e in events)


def test_crossings_over_several_runs_repeat_the_first() -> None:
    s = scene()
    one = s.crossings()
    two = s.crossings(0.0, 2 * s.duration)
    later = s.crossings(s.duration, math.inf)
    assert later == one
    for name, ways in one.items():
        for way, n in ways.items():
            assert two[name][way] == 2 * n
    assert all(s.duration <= e.t < 2 * s.duration for e in s.crossing_events(s.duration))


def test_vehicles_never_overlap_and_classes_sizes_and_speeds_vary() -> None:
    s = scene()
    seen: dict[int, VehicleTruth] = {}
    close = 0
    lanes_of: dict[int, set[int]] = {}
    for t in _times(0.0, 300.0, 0.1):
        vehicles = s.truth(t)
        for p, q in itertools.combinations(vehicles, 2):
            assert not _overlap(p.box, q.box), (t, p, q)
        for v in vehicles:
            seen.setdefault(v.id, v)
            lanes_of.setdefault(v.id, set()).add(v.lane)
        # Close followers: moving, and nearer the one in front than its own length.
        for p, q in itertools.combinations(vehicles, 2):
            if p.lane != q.lane or p.speed_mps < 3.0 or q.speed_mps < 3.0:
                continue
            gap_m = (max(p.box[0], q.box[0]) - min(p.box[2], q.box[2])) * s.settings.width_m
            if 0 < gap_m < min(vehicle_length_m(p.cls), vehicle_length_m(q.cls)):
                close += 1
    classes = Counter(v.cls for v in seen.values())
    assert set(classes) == set(CLASS_SIZES)
    assert classes["two_wheeler"] > classes["car"] > classes["bus_truck"] > 0
    speeds = [v.speed_mps for v in seen.values() if v.speed_mps > 1]
    assert max(speeds) - min(speeds) > 4.0
    assert close > 50
    assert sum(len(lanes) > 1 for lanes in lanes_of.values()) >= 5, "lane changes"


@pytest.mark.parametrize("lanes", [1, 3])
def test_other_lane_counts_and_heavy_flow_keep_every_rule(lanes: int) -> None:
    s = scene(replace(QUIET, lanes_per_direction=lanes, width_m=60.0, flow_per_lane_min=30.0))
    counts = s.crossings(0.0, 100.0)
    assert [line.name for line in s.lines][-1] == "all-lanes"
    assert len(s.lines) == 2 * lanes + 1
    for line in s.lines[:-1]:
        (lane,) = line.lanes
        travel = "in" if lane < lanes else "out"  # the upper half is westbound
        assert counts[line.name][travel] > 10
        assert counts[line.name]["in" if travel == "out" else "out"] == 0
    for t in _times(0.0, 100.0, 0.1):
        for p, q in itertools.combinations(s.truth(t), 2):
            assert not _overlap(p.box, q.box), (t, p, q)


def _queue_from_truth(s: TrafficScene, t: float, zone_lanes: tuple[int, ...]) -> float:
    """The queue worked out from the truth boxes alone, by the documented rule."""
    zone = s.zones[0]
    stop_x = zone.stop_line[0][0]
    per_m = s.settings.width_m  # normalised x to metres
    best = 0.0
    for lane in zone_lanes:
        inlane = sorted(
            (v for v in s.truth(t) if v.lane == lane and v.box[2] <= stop_x + 0.5 / per_m),
            key=lambda v: -v.box[2],
        )
        edge = stop_x
        length = 0.0
        for v in inlane:
            if (edge - v.box[2]) * per_m > QUEUE_GAP_M or v.speed_mps >= STOPPED_MPS:
                break
            edge = v.box[0]
            length = (stop_x - edge) * per_m
        best = max(best, length)
    return min(best, zone.length_m)


def test_a_queue_forms_at_red_clears_at_green_and_matches_the_truth_boxes() -> None:
    s = scene(replace(TrafficSettings(), lane_changes=0.0))
    (zone,) = s.zones
    cycle = s.settings.red_s + s.settings.green_s
    assert zone.length_m == pytest.approx(0.6 * s.settings.width_m)
    peaks = []
    for start in np.arange(0.0, s.duration - cycle, cycle):
        red = _times(float(start), float(start) + s.settings.red_s, 0.5)
        assert all(s.is_red(t) for t in red)
        lengths = [s.queue_length(zone.name, t) for t in red]
        peaks.append(max(lengths))
        cleared = float(start) + s.settings.red_s + s.settings.green_s * 0.8
        assert not s.is_red(cleared)
        assert s.queue_length(zone.name, cleared) == 0.0
    assert min(peaks) > 2 * vehicle_length_m("two_wheeler")  # every red stops someone
    assert sum(peaks) / len(peaks) > 2 * vehicle_length_m("car")
    spill = 0
    samples = _times(0.0, s.duration, 0.7)
    for t in samples:
        expected = _queue_from_truth(s, t, zone.lanes)
        got = s.queue_length(zone.name, t)
        if expected >= zone.length_m - QUEUE_GAP_M and got == zone.length_m:
            spill += 1  # the queue may go on beyond the frame, where no box shows it
            continue
        assert got == pytest.approx(expected, abs=1e-6), t
    assert spill < len(samples) / 10
    with pytest.raises(KeyError, match="approach-east"):
        s.queue_length("nowhere", 0.0)


def test_a_scene_without_vehicles_has_no_vehicle_pixels() -> None:
    empty_settings = replace(TrafficSettings(), vehicles=False, shake_px=0.0)
    empty = scene(empty_settings)
    clean = scene(replace(empty_settings, noise=0))
    busy = scene(replace(empty_settings, vehicles=True, noise=0))
    assert empty.crossing_events() == []
    lights = scene(replace(empty_settings, noise=0, lighting_depth=0.0))
    reference = lights.render(0.0).astype(np.float64)
    for t in _times(0.0, 300.0, 7.3):
        assert empty.truth(t) == []
        frame = empty.render(t).astype(np.int16)
        # Noise only: within the noise amplitude of the same scene without noise...
        assert np.abs(frame - clean.render(t)).max() <= empty.settings.noise + 1
        # ... which is the bare road, scaled by the lighting gain.
        scaled = np.clip(reference * clean.gain(t), 0, 255)
        assert np.abs(clean.render(t) - scaled).max() <= 1.0
    # The same check does see vehicles when there are some.
    t = 100.0
    assert busy.truth(t)
    assert np.abs(busy.render(t).astype(np.int16) - clean.render(t)).max() > 40


def test_every_vehicle_stands_out_from_the_road_by_the_documented_contrast() -> None:
    bare = replace(QUIET, occluders=False)  # nothing hides any part of a vehicle
    busy = scene(bare)
    empty = scene(replace(bare, vehicles=False))
    w, h = busy.width, busy.height
    checked = 0
    near = 0
    for t in _times(0.0, 300.0, 3.1):
        diff = np.abs(busy.render(t).astype(np.int16) - empty.render(t)).mean(axis=2)
        for v in busy.truth(t):
            x0, y0, x1, y1 = v.box
            if x0 <= 0.0 or x1 >= 1.0:
                continue
            # The middle of the body (a two-wheeler's rider aside): its median pixel.
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            qx, qy = (x1 - x0) / 4, (y1 - y0) / 4
            core = diff[round((cy - qy) * h) : round((cy + qy) * h) + 1,
                        round((cx - qx) * w) : round((cx + qx) * w) + 1]  # fmt: skip
            if v.cls == "two_wheeler":  # the rider's helmet is in the middle: use the ends
                core = np.concatenate(
                    [
                        diff[round(cy * h), round((x0 + qx / 2) * w)].reshape(1),
                        diff[round(cy * h), round((x1 - qx / 2) * w)].reshape(1),
                    ]
                )
            level = float(np.median(core))
            assert level >= 20, (t, v)  # 28 from the base grey, less the texture's 6 and marks
            near += level < 45
            checked += 1
    assert checked > 500
    assert near > checked / 10, "some vehicles are close to the road's grey"


@pytest.mark.parametrize("size", [(64, 36), (320, 180), (1280, 720)])
def test_any_frame_size_renders_the_same_scene(size: tuple[int, int]) -> None:
    w, h = size
    small = scene(replace(QUIET, width=w, height=h))
    frame = small.render(100.0)
    assert frame.shape == (h, w, 3)
    assert frame.dtype == np.uint8
    reference = scene(QUIET)
    assert [v.id for v in small.truth(100.0)] == [v.id for v in reference.truth(100.0)]
    for v, r in zip(small.truth(100.0), reference.truth(100.0), strict=True):
        assert v.center == pytest.approx(r.center)


def test_shake_moves_the_whole_frame_by_the_configured_pixels() -> None:
    still = replace(QUIET, vehicles=False)
    shaky = scene(replace(still, shake_px=3.0))
    assert np.array_equal(scene(still).render(0.0), scene(still).render(7.7))
    shifts = {shaky.shake(t) for t in _times(0.0, 10.0, 0.1)}
    assert max(max(abs(dx), abs(dy)) for dx, dy in shifts) == 3
    assert len(shifts) > 10
    base = _grey(shaky.render(0.0))
    sx0, sy0 = shaky.shake(0.0)
    for t in (0.3, 1.1, 2.9):
        frame = _grey(shaky.render(t))
        (dx, dy), _ = cv2.phaseCorrelate(frame, base)
        sx, sy = shaky.shake(t)
        assert (round(dx), round(dy)) == (sx - sx0, sy - sy0), t


def test_the_lighting_ramp_and_brightness_jumps_change_the_frames() -> None:
    dusk = scene(replace(QUIET, vehicles=False, lighting_depth=0.4, lighting_period_s=200.0))
    bright = float(dusk.render(0.0).mean())
    dim = float(dusk.render(100.0).mean())
    assert dim / bright == pytest.approx(0.6, abs=0.02)
    assert dusk.gain(50.0) == pytest.approx(0.8)
    jumpy = scene(replace(QUIET, vehicles=False, brightness_jumps_per_min=2.0))
    gains = [jumpy.gain(t) for t in _times(0.0, 300.0, 0.5)]
    steps = [b / a for a, b in itertools.pairwise(gains) if abs(b / a - 1) > 0.1]
    assert len(steps) >= 4
    assert all(x == pytest.approx(1.3) or x == pytest.approx(1 / 1.3) for x in steps)


def test_rain_adds_short_bright_streaks() -> None:
    dry = scene(replace(QUIET, vehicles=False))
    wet = scene(replace(QUIET, vehicles=False, rain=1.0))
    diff = wet.render(3.0).astype(np.int16) - dry.render(3.0)
    assert diff.min() >= 0
    share = float((diff.max(axis=2) > 20).mean())
    assert 0.005 < share < 0.1
    assert not np.array_equal(wet.render(3.0), wet.render(3.25)), "the streaks fall"


def test_the_camera_move_shifts_the_view_and_the_truth_for_good() -> None:
    s = scene(replace(QUIET, camera_move_at=100.0))
    before = {v.id: v for v in s.truth(99.99)}
    after = {v.id: v for v in s.truth(100.0)}
    common = [i for i in before if i in after and 0.2 < before[i].center[0] < 0.8]
    assert common
    for i in common:
        dx = after[i].center[0] - before[i].center[0]
        assert dx == pytest.approx(-0.04, abs=0.004)  # 4 % of the width, as the move
    empty = scene(replace(QUIET, vehicles=False, camera_move_at=100.0))
    a = _grey(empty.render(50.0))
    b = _grey(empty.render(200.0))
    (dx, dy), _ = cv2.phaseCorrelate(b, a)
    assert (round(dx), round(dy)) == (round(0.04 * 640), round(0.05 * 360))


def test_occlusions_are_short() -> None:
    s = scene()
    runs: dict[int, list[float]] = {}
    hidden_at: dict[int, float] = {}
    for t in _times(0.0, 300.0, 0.2):
        for v in s.truth(t):
            if v.occluded and v.id not in hidden_at:
                hidden_at[v.id] = t
            elif not v.occluded and v.id in hidden_at:
                runs.setdefault(v.id, []).append(t - hidden_at.pop(v.id))
    lengths = [x for xs in runs.values() for x in xs]
    assert len(lengths) > 50
    assert max(lengths) < 3.0
    assert sum(x >= 0.4 for x in lengths) > 10  # hidden for two frames or more at 5 fps


def test_lines_and_zones_are_normalised_and_span_their_lanes() -> None:
    s = scene()
    for line in s.lines:
        for x, y in (line.a, line.b):
            assert 0.0 <= x <= 1.0
            assert 0.0 <= y <= 1.0
    names = [line.name for line in s.lines]
    assert names == ["lane-1", "lane-2", "lane-3", "lane-4", "all-lanes"]
    assert [z.name for z in s.zones] == ["approach-east"]
    no_signal = scene(replace(QUIET, signal=False))
    assert no_signal.zones == ()
    assert not any(no_signal.is_red(t) for t in _times(0.0, 60.0, 1.0))


unit = st.floats(-0.5, 1.5, allow_nan=False)
points = st.tuples(unit, unit)


@given(points, points, points, points)
def test_the_simulator_s_crossing_agrees_with_tepi_s(
    a: tuple[float, float], b: tuple[float, float], p: tuple[float, float], q: tuple[float, float]
) -> None:
    assert traffic.side(a, b, p) == geometry.side(a, b, p)
    assert traffic.crossing(a, b, p, q) == geometry.crossing(a, b, p, q)


# -- the simulated camera, its config and the control socket ---------------------------------------


def test_a_camera_config_selects_the_traffic_scene_with_its_settings() -> None:
    config = load_config(
        {
            "cameras": [
                {
                    "id": "road",
                    "width": 320,
                    "height": 180,
                    "seed": 9,
                    "scene": "traffic",
                    "traffic": {
                        "rain": 0.5,
                        "class_mix": {"car": 1},
                        "speed_mps": [5, 9],
                        "camera_move_at": 120,
                    },
                },
                {"id": "street"},
            ]
        }
    )
    road, street = config.cameras
    assert (road.scene, street.scene) == ("traffic", "objects")
    assert road.traffic == replace(
        DEFAULT,
        width=320,
        height=180,
        seed=9,
        rain=0.5,
        class_mix=(0.0, 1.0, 0.0),
        speed_mps=(5.0, 9.0),
        camera_move_at=120.0,
    )
    camera = Camera(road, epoch=1000.0)
    assert camera.traffic is not None
    assert camera.shoot(1010.0).image.shape == (180, 320, 3)
    assert {v.cls for v in camera.vehicles(1100.0)} == {"car"}
    with pytest.raises(ValueError, match="use vehicles"):
        camera.truth(1010.0)
    with pytest.raises(ValueError, match="objects scene"):
        Camera(street).vehicles()


def test_traffic_config_errors_name_key_paths() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            {
                "cameras": [
                    {
                        "id": "a",
                        "scene": "traffic",
                        "objects": 2,
                        "traffic": {
                            "rian": 0.5,
                            "width": 100,
                            "noise": 2.5,
                            "class_mix": {"tram": 1},
                            "speed_mps": [9, 5],
                            "occluders": "yes",
                            "camera_move_at": 400,
                        },
                    },
                    {"id": "b", "traffic": {"rain": 1}},
                    {"id": "c", "scene": "trafic"},
                    {
                        "id": "d",
                        "scene": "traffic",
                        "traffic": {"lanes_per_direction": 3, "width_m": 30},
                    },
                ]
            }
        )
    assert info.value.errors == [
        "cameras[0].objects: only used with scene objects",
        "cameras[0].traffic.rian: unknown key (did you mean 'rain'?)",
        "cameras[0].traffic.width: set on the camera, not under traffic",
        "cameras[0].traffic.noise: must be an integer, got 2.5",
        "cameras[0].traffic.class_mix: unknown class 'tram'; classes are two_wheeler, car, "
        "bus_truck",
        "cameras[0].traffic.speed_mps: low must not exceed high, got [9, 5]",
        "cameras[0].traffic.occluders: must be true or false, got 'yes'",
        "cameras[0].traffic.camera_move_at: 400 s is past the scene's duration_s 300 s",
        "cameras[1].traffic: only used with scene traffic",
        "cameras[2].scene: unknown scene 'trafic' (did you mean 'traffic'?)",
        "cameras[3].traffic: 6 lanes and the median need 22 m plus 2 m of verge, but the frame "
        "is 16.9 m high; raise width_m or lower lanes_per_direction",
    ]


async def test_the_control_socket_answers_the_traffic_ground_truth(tmp_path: Path) -> None:
    config = {"cameras": [{"id": "road", "scene": "traffic"}, {"id": "street"}]}
    async with Simulator(config) as sim:
        camera = sim.camera("road")
        assert camera.traffic is not None
        s = camera.traffic
        control = ControlServer(sim, tmp_path / "ctl.sock")
        await control.start()
        try:
            reader, writer = await asyncio.open_unix_connection(tmp_path / "ctl.sock")

            async def ask(cmd: dict[str, Any]) -> dict[str, Any]:
                writer.write(json.dumps(cmd).encode() + b"\n")
                answer: dict[str, Any] = json.loads(await reader.readline())
                return answer

            geometry_answer = await ask({"query": "traffic", "camera": "road"})
            assert geometry_answer["ok"] is True
            info = geometry_answer["traffic"]
            epoch = info["epoch"]
            assert epoch == camera.epoch
            assert info["duration_s"] == s.duration
            assert [ln["name"] for ln in info["lines"]] == [ln.name for ln in s.lines]
            assert info["lines"][0]["a"] == list(s.lines[0].a)
            (zone,) = info["zones"]
            assert zone["name"] == "approach-east"
            assert zone["length_m"] == s.zones[0].length_m
            assert zone["stop_line"] == [list(p) for p in s.zones[0].stop_line]

            answer = await ask(
                {"query": "crossings", "camera": "road", "since": epoch, "until": epoch + 120}
            )
            expected = s.crossings(0.0, 120.0)
            counts = answer["crossings"]
            assert {n: {"in": c["in"], "out": c["out"]} for n, c in counts.items()} == expected
            by_class = Counter((e.line, e.direction, e.cls) for e in s.crossing_events(0.0, 120.0))
            for (line, direction, cls), n in by_class.items():
                assert counts[line]["classes"][direction][cls] == n
            assert sum(counts["all-lanes"]["classes"]["in"].values()) == counts["all-lanes"]["in"]
            # Across the scene's loop: the second run repeats the first.
            looped = await ask(
                {
                    "query": "crossings",
                    "camera": "road",
                    "since": epoch + s.duration,
                    "until": epoch + s.duration + 120,
                    "events": True,
                }
            )
            assert looped["crossings"] == counts
            first = looped["events"][0]
            assert first["t"] == pytest.approx(epoch + s.duration + s.crossing_events(0, 120)[0].t)
            assert first["scene_t"] == pytest.approx(s.duration + s.crossing_events(0, 120)[0].t)
            # The same window by scene time.
            by_scene = await ask({"query": "crossings", "camera": "road", "t0": 0, "t1": 120})
            assert by_scene["crossings"] == counts
            assert (by_scene["t0"], by_scene["t1"]) == (0.0, 120.0)

            red = s.settings.red_s - 1.0  # late in the first red: a queue
            queue = await ask({"query": "queue", "camera": "road", "at": epoch + red})
            assert queue["red"] is True
            assert queue["queue"]["approach-east"] == s.queue_length("approach-east", red)
            assert queue["queue"]["approach-east"] > 0
            assert await ask({"query": "queue", "camera": "road", "t": red}) == queue
            assert queue["t"] == pytest.approx(red)
            now = await ask({"query": "queue", "camera": "road"})
            assert set(now["queue"]) == {"approach-east"}
            both = await ask({"query": "queue", "camera": "road", "t": 1, "at": epoch})
            assert both["error"] == 'give "at" (wall time) or "t" (scene time), not both'

            assert "objects scene" in (await ask({"query": "queue", "camera": "street"}))["error"]
            assert "no camera 'x'" in (await ask({"query": "traffic", "camera": "x"}))["error"]
            bad = await ask({"query": "crossings", "camera": "road", "since": "yesterday"})
            assert bad["error"] == '"since" must be a number (wall time, seconds)'
            bad = await ask({"query": "queue", "camera": "road", "zone": "z"})
            assert bad["error"] == "unknown keys for queue: zone"
            writer.close()
        finally:
            await control.stop()


async def test_the_camera_serves_the_traffic_scene_over_http() -> None:
    async with Simulator({"cameras": [{"id": "road", "scene": "traffic"}]}) as sim:
        camera = sim.camera("road")
        assert camera.traffic is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(camera.snapshot_url) as resp,
        ):
            assert resp.status == 200
            t = float(resp.headers["X-Sim-Time"])
            jpeg = await resp.read()
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
        assert image.shape == (360, 640, 3)
        # The same scene time rendered here: only noise and JPEG apart (blurred away).

        def blurred(frame: Image) -> npt.NDArray[np.float32]:
            return np.asarray(cv2.blur(frame, (7, 7)), dtype=np.float32)

        served = blurred(np.asarray(image, dtype=np.uint8))
        same = float(np.abs(served - blurred(camera.traffic.render(t - camera.epoch))).mean())
        other = float(np.abs(served - blurred(camera.traffic.render(t - camera.epoch + 5))).mean())
        assert same < 2.0
        assert other > 2 * same
        status = camera.status()
        assert (status["scene"], status["epoch"]) == ("traffic", camera.epoch)


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.floats(-5, 50), max_size=4),
    st.dictionaries(st.sampled_from(["car", "bus", "two_wheeler"]), st.floats(-1, 2)),
)


_KEYS = [f.name for f in fields(TrafficSettings)]


@given(st.dictionaries(st.sampled_from([*_KEYS, "lanes", "sede"]), _JUNK, max_size=6))
def test_traffic_settings_take_any_mapping_and_report_rather_than_raise(
    raw: dict[str, object],
) -> None:
    settings, problems = traffic_settings(raw, "traffic")
    assert isinstance(settings, TrafficSettings)
    assert all(p.startswith("traffic") for p in problems)
    if not problems:  # everything given was taken as it was
        for key, value in raw.items():
            got = getattr(settings, key)
            assert got == (tuple(value) if isinstance(value, list) else value) or isinstance(
                value, dict
            )


@given(
    st.floats(0.0, 1.0),
    st.integers(0, 30),
    st.tuples(st.floats(1.0, 20.0), st.floats(0.0, 20.0)),
    st.booleans(),
)
def test_valid_traffic_settings_come_through_unchanged(
    rain: float, noise: int, speeds: tuple[float, float], signal: bool
) -> None:
    low, extra = speeds
    raw = {"rain": rain, "noise": noise, "speed_mps": [low, low + extra], "signal": signal}
    settings, problems = traffic_settings(raw, "traffic")
    assert problems == []
    assert (settings.rain, settings.noise, settings.signal) == (rain, noise, signal)
    assert settings.speed_mps == (low, low + extra)


def test_the_camera_s_image_faults_apply_to_the_traffic_scene() -> None:
    s = scene()
    normal = s.render(42.0)
    grey = cv2.cvtColor(normal, cv2.COLOR_BGR2GRAY)
    assert float(s.render(42.0, "black").mean()) < 1.0
    covered = s.render(42.0, "covered")
    assert 36 < float(covered.mean()) < 42
    assert float(covered.std()) < 2
    blurred = cv2.cvtColor(s.render(42.0, "blur"), cv2.COLOR_BGR2GRAY)
    sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    assert float(cv2.Laplacian(blurred, cv2.CV_64F).var()) < sharp / 20
    moved = s.render(42.0, "moved")
    assert moved.shape == normal.shape
    assert float(np.abs(moved.astype(np.int16) - normal).mean()) > 20


def test_a_tepi_sim_process_answers_a_yaml_traffic_camera_s_truth(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text(
        "cameras:\n"
        "  - id: road\n"
        "    seed: 3\n"
        "    scene: traffic\n"
        "    traffic: {rain: 0.2, class_mix: {two_wheeler: 0.8, car: 0.2}}\n",
        encoding="utf-8",
    )
    control = tmp_path / "ctl.sock"
    hw_sim = Path(__file__).resolve().parents[2] / "hw-sim"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tepi_sim.cli", "--config", str(config), "--control", str(control)],
        env={**os.environ, "PYTHONPATH": str(hw_sim)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # blocks until the simulator says it is ready
            if line.strip() == "ready":
                break
        else:
            raise AssertionError(f"no ready line; stderr: {proc.communicate()[1]}")
        with socket.socket(socket.AF_UNIX) as ctl:
            ctl.settimeout(10)
            ctl.connect(str(control))
            stream = ctl.makefile("rwb")
            stream.write(b'{"query": "crossings", "camera": "road", "t0": 0, "t1": 300}\n')
            stream.write(b'{"query": "queue", "camera": "road", "t": 11.5}\n')
            stream.flush()
            crossings = json.loads(stream.readline())
            queue = json.loads(stream.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    # The same settings built here give the same truth: the scene depends on them alone.
    here = scene(replace(DEFAULT, seed=3, rain=0.2, class_mix=(0.8, 0.2, 0.0)))
    expected = here.crossings(0.0, 300.0)
    got = {n: {"in": c["in"], "out": c["out"]} for n, c in crossings["crossings"].items()}
    assert got == expected
    assert queue["queue"] == {"approach-east": here.queue_length("approach-east", 11.5)}
    assert proc.returncode == 0
