"""The camera's analytics in the agent (tepi.drivers.camera.analysis): the engine on a
traffic scene's frames in its own thread, its readings per interval, motion changes, and
object events stored in a real image buffer with their event, masked.

The engine's accuracy against the scene's ground truth is in test_camera_analytics*.py; this
checks what the runner makes of it: counts that add up to the engine's crossings, intervals
stamped at their ends, one start and one end per object, images cut after the masks, frames
dropped evenly rather than queued, and a clean stop that loses no count."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import orjson
import pytest

from tepi.buffer.images import ImageStore
from tepi.drivers.camera.analysis import CROP_MARGIN, AnalysisRunner
from tepi.drivers.camera.analytics import Analyzer
from tepi.drivers.camera.config import AnalyticsConfig
from tepi.drivers.camera.sources import Frame
from tepi.drivers.camera.vision import apply_masks, compile_masks
from tepi_sim.traffic import TrafficScene
from tepi_sim.traffic_settings import TrafficSettings

pytestmark = pytest.mark.timeout(120)

FPS = 5.0
MASK = [(0.0, 0.0), (0.3, 0.0), (0.3, 1.0), (0.0, 1.0)]  # the left 30 %, road included


class Sink:
    """The image buffer as the agent gives it to a camera: a real ImageStore."""

    max_image_bytes = 1_000_000

    def __init__(self, path: Path) -> None:
        self.db = ImageStore(path, 200_000_000, sync=False).open()

    async def store_image(self, **kw: Any) -> tuple[int, str]:
        meta = await asyncio.to_thread(lambda: self.db.put(**kw))
        return meta.seq, str(meta.path)

    async def store(
        self, camera: str, cls: str, jpeg: bytes, **kw: Any
    ) -> tuple[int, str]:  # the ImageSink protocol
        return await self.store_image(camera=camera, cls=cls, jpeg=jpeg, **kw)


def config(scene: TrafficScene, **over: Any) -> AnalyticsConfig:
    return AnalyticsConfig.model_validate(
        {
            "fps": FPS,
            "count_interval": 10,
            "lines": [{"name": x.name, "points": [x.a, x.b]} for x in scene.lines],
            "zones": [
                {
                    "name": z.name,
                    "polygon": list(z.polygon),
                    "stop_line": list(z.stop_line),
                    "length_m": z.length_m,
                }
                for z in scene.zones
            ],
            "classes": [
                {"name": "two_wheeler", "max_area": 0.004},
                {"name": "car", "max_area": 0.03},
                {"name": "bus_truck"},
            ],
            **over,
        }
    )


def frame_of(img: Any, wall: float) -> Frame:
    h, w = img.shape[:2]
    return Frame(None, img, w, h, 0.0, wall, None, None)


async def until(pred: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.002)


async def feed(
    runner: AnalysisRunner, scene: TrafficScene, seconds: float, twin: Analyzer | None = None
) -> Counter[str]:
    """The scene at FPS, each frame analysed before the next is offered, as a source at that
    rate on an idle box would; the frames' clocks follow the scene's time. ``twin``, an
    engine of the same settings, sees the same frames: what it counts (``LINE.DIRECTION``
    and ``LINE.DIRECTION.CLASS``) is what the runner must report."""
    mono0, wall0 = time.monotonic(), time.time()
    counted: Counter[str] = Counter()
    for i in range(int(seconds * FPS)):
        t = i / FPS
        want = runner.analysed + 1
        img = scene.render(t)
        runner.offer(frame_of(img, wall0 + t), mono0 + t)
        if twin is not None:
            for x in twin.process(img, mono0 + t).crossings:
                counted[f"{x.line}.{x.direction}"] += 1
                counted[f"{x.line}.{x.direction}.{x.label}"] += 1
        # Analysed, and its event images stored: the scene runs many times faster than real
        # time here, and a real source would not outrun the image buffer's writes.
        await until(functools.partial(done, runner, want))
    return counted


def done(runner: AnalysisRunner, n: int) -> bool:
    return runner.analysed >= n and runner.stats()["events_queued"] < 8


async def test_counts_motion_and_events_from_a_traffic_scene(tmp_path: Path) -> None:
    scene = TrafficScene(TrafficSettings(seed=3, duration_s=60.0, signal=True))
    sink = Sink(tmp_path)
    masks = [MASK]
    plans: dict[tuple[int, int], Any] = {}

    def mask(img: Any) -> Any:
        h, w = img.shape[:2]
        plan = plans.setdefault((w, h), compile_masks(masks, w, h))
        return apply_masks(img, plan)

    cfg = config(scene)
    runner = AnalysisRunner("cam-1", cfg, masks, images=sink, mask=mask)
    ready = asyncio.Event()
    runner.on_ready = ready.set
    await runner.start()
    assert runner.settings is not None
    try:
        counted = await feed(runner, scene, 60.0, Analyzer(runner.settings))
    finally:
        await runner.stop()
    values = runner.drain()
    stats = runner.stats()
    sink.db.close()
    assert ready.is_set()  # the poll loop was told readings wait
    assert stats["analysed"] == 300
    assert stats["dropped"] == 0
    assert stats["events_dropped"] == 0
    assert stats["event_errors"] == 0
    assert stats["errors"] == 0, stats["last_error"]

    # Counts: one Values per interval, stamped at the interval's end, adding up per line.
    intervals = [v for v in values if "frames" in v.metrics]
    assert 6 <= len(intervals) <= 7  # 60 s in 10 s intervals, and the stop's partial one
    assert sum(int(v.values[v.metrics.index("frames")] or 0) for v in intervals) == 300
    stamps = [v.ts for v in intervals]
    assert stamps == sorted(stamps)
    totals: Counter[str] = Counter()
    for v in intervals:
        for m, x in zip(v.metrics, v.values, strict=True):
            if m.startswith("count."):
                assert isinstance(x, int)
                totals[m] += x
    classes = ("two_wheeler", "car", "bus_truck")
    for line in (x.name for x in scene.lines):
        for d in ("in", "out"):
            got = totals[f"count.{line}.{d}"]
            assert got == counted[f"{line}.{d}"], (line, d, totals, counted)
            for cls in classes:
                assert totals[f"count.{line}.{d}.{cls}"] == counted[f"{line}.{d}.{cls}"]
            by_class = sum(totals[f"count.{line}.{d}.{k}"] for k in classes)
            assert by_class == got  # every counted object has a class
    # Against the scene's truth only roughly here (the engine's accuracy has its own tests).
    truth = scene.crossings(0.0, 60.0)
    true_total = sum(n for dirs in truth.values() for n in dirs.values())
    got_total = sum(v for k, v in totals.items() if k.count(".") == 2)
    assert 0.5 * true_total <= got_total <= 1.2 * true_total, (totals, truth)
    # Motion: its state at the first frame, then each change, not a reading a frame.
    motion = [v.values[v.metrics.index("motion")] for v in values if "motion" in v.metrics]
    assert True in motion
    assert all(a != b for a, b in itertools.pairwise(motion))  # changes only
    assert len(motion) < 20

    # Events: one start and one end per object, the end's image its best view, and every
    # image cut after the mask (the road's left 30 % is black in any crop that covers it).
    with ImageStore(tmp_path, 200_000_000, sync=False) as store:
        events: list[tuple[Any, Any, bytes]] = []
        while (meta := store.next([e[0].seq for e in events])) is not None:
            events.append((meta, orjson.loads(meta.event or "null"), store.read(meta.seq)))
    assert events
    kinds: dict[str, Counter[str]] = {}
    for meta, ev, data in events:
        assert meta.cls == "event"
        assert ev is not None
        assert meta.reason == f"event:{ev['type']}"
        kinds.setdefault(ev["id"], Counter())[ev["type"]] += 1
        check_masked(ev, data, scene)
    assert len(kinds) >= 10
    for eid, c in kinds.items():
        assert c["start"] == 1, (eid, c)
        assert c["end"] == 1, (eid, c)
    ends = [ev for _, ev, _ in events if ev["type"] == "end"]
    assert all(ev["image"] == "best" and ev["end"] >= ev["start"] for ev in ends)


def check_masked(ev: dict[str, Any], jpeg: bytes, scene: TrafficScene) -> None:
    """The part of the crop left of x = 0.3 of the frame is black."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    w = scene.settings.width
    x0, _, x1, _ = ev["box"]
    mx = (x1 - x0) * CROP_MARGIN
    px0 = max(0, int((x0 - mx) * w))
    crop_w = img.shape[1]
    full_w = max(1, min(w, max(px0 + 48, int((x1 + mx) * w) + 1)) - px0)
    scale = crop_w / full_w
    masked_px = int((0.3 * w - px0) * scale) - 4  # JPEG and rounding blur the edge
    if masked_px > 2:
        assert float(img[:, :masked_px].mean()) < 12, (ev, masked_px)


async def test_a_slow_analysis_drops_frames_evenly_and_never_queues(tmp_path: Path) -> None:
    scene = TrafficScene(TrafficSettings(seed=5, duration_s=30.0))
    runner = AnalysisRunner("cam-1", config(scene, events=False), [], images=None, mask=lambda i: i)
    await runner.start()
    try:
        mono0 = time.monotonic()
        frames = [scene.render(i / 25) for i in range(25)]
        # A 25 fps source offered as fast as it comes, all at once: the runner wants 5 a
        # second of source time and can only take what its thread is free for.
        for i in range(250):
            runner.offer(frame_of(frames[i % 25], time.time()), mono0 + i / 25)
        await until(lambda: runner._slot is None)
    finally:
        await runner.stop()
    s = runner.stats()
    wanted = 250 - int(s["skipped"])  # 1 in 5 frames of 25 fps, 10 s of source time
    assert 50 <= wanted <= 51, s
    assert s["analysed"] + s["dropped"] == wanted  # each wanted frame analysed or dropped
    assert int(s["dropped"]) > 0  # all came at once: the analysis could not keep up
    assert runner.offered == 250


async def test_a_stop_reports_the_interval_so_far_and_ends_open_events(tmp_path: Path) -> None:
    scene = TrafficScene(TrafficSettings(seed=7, duration_s=30.0, signal=False))
    sink = Sink(tmp_path)
    runner = AnalysisRunner(
        "cam-1",
        config(scene, count_interval=3600),
        [],
        images=sink,
        mask=lambda i: i,
    )
    await runner.start()
    await feed(runner, scene, 20.0)
    assert not [v for v in runner.drain() if "frames" in v.metrics]  # the hour is not over
    open_tracks = runner.stats()["tracks"]
    await runner.stop()
    last = [v for v in runner.drain() if "frames" in v.metrics]
    assert len(last) == 1
    assert last[0].values[last[0].metrics.index("frames")] == 100
    assert (
        sum(
            int(x or 0)
            for m, x in zip(last[0].metrics, last[0].values, strict=True)
            if m.startswith("count.all-lanes.") and m.count(".") == 2
        )
        > 0
    )
    ids: dict[str, set[str]] = {}
    sink.db.close()
    with ImageStore(tmp_path, 200_000_000, sync=False) as store:
        seen: list[int] = []
        while (meta := store.next(seen)) is not None:
            seen.append(meta.seq)
            ev = orjson.loads(meta.event or "null")
            ids.setdefault(ev["id"], set()).add(ev["type"])
    assert int(open_tracks) > 0
    assert all("end" in kinds and "start" in kinds for kinds in ids.values()), ids


def test_values_of_the_runner_are_what_the_buffer_takes() -> None:
    scene = TrafficScene(TrafficSettings(seed=1, duration_s=10.0))
    runner = AnalysisRunner("cam-1", config(scene), [], images=None, mask=lambda i: i)
    names = [n for n, _ in runner.metric_names()]
    assert len(names) == len(set(names))
    assert "count.lane-1.in.two_wheeler" in names
    assert "queue_length.approach-east" in names
    assert "queue_length_max.approach-east" in names


async def test_a_detector_gives_the_tracker_its_objects_and_classes(tmp_path: Path) -> None:
    """A model (built here) that finds one bus, always at the same place: with the detector
    configured, the object comes from it, not from motion (the picture never changes), and
    its event carries the model's class mapped to tepi's."""
    from onnxkit import build, v8

    # cx, cy, w, h = 160, 160, 80, 40 on a 320x320 input; class 1 of ("car", "bus").
    model = build(tmp_path / "bus.onnx", {"output0": v8([[160, 160, 80, 40, 0.1, 0.95]])})
    scene = TrafficScene(TrafficSettings(seed=2, duration_s=10.0, vehicles=False))
    cfg = AnalyticsConfig.model_validate(
        {
            "fps": FPS,
            "count_interval": 3600,
            "detector": {"model": str(model), "labels": ["car", "bus"], "interval": "50ms"},
        }
    )
    sink = Sink(tmp_path / "images")
    runner = AnalysisRunner("cam-1", cfg, [], images=sink, mask=lambda i: i)
    await runner.start()
    still = scene.render(0.0)
    mono0, wall0 = time.monotonic(), time.time()
    for i in range(20):
        want = runner.analysed + 1
        runner.offer(frame_of(still.copy(), wall0 + i / FPS), mono0 + i / FPS)
        await until(functools.partial(done, runner, want))
    await runner.stop()
    stats = runner.stats()
    assert stats["errors"] == 0, stats["last_error"]
    sink.db.close()
    with ImageStore(tmp_path / "images", 200_000_000, sync=False) as store:
        seen: list[int] = []
        events = []
        while (meta := store.next(seen)) is not None:
            seen.append(meta.seq)
            events.append(orjson.loads(meta.event or "null"))
    starts = [e for e in events if e["type"] == "start"]
    assert len(starts) == 1, events
    assert starts[0]["label"] == "bus_truck"  # the model's "bus", as the default map has it
    # 640x360 letterboxed into 320x320: scale 0.5, 70 px of padding above and below, so the
    # box's y 140..180 in the input is 70..110 of the picture at half size: 140..220 of 360.
    x0, y0, x1, y1 = starts[0]["box"]
    assert (x0, x1) == pytest.approx((0.375, 0.625), abs=0.02)
    assert (y0, y1) == pytest.approx((140 / 360, 220 / 360), abs=0.02)


async def test_a_model_it_cannot_use_fails_the_start_with_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model\n")
    cfg = AnalyticsConfig.model_validate({"detector": {"model": str(bad), "labels": ["car"]}})
    runner = AnalysisRunner("cam-1", cfg, [], images=None, mask=lambda i: i)
    with pytest.raises(Exception, match=r"bad\.onnx"):
        await runner.start()
    await runner.stop()  # nothing was started: a no-op


async def test_event_zones_keep_the_events_to_objects_that_enter_them(tmp_path: Path) -> None:
    """With event_zones, only objects that enter the queue zone (eastbound, before the stop
    line) give events: a westbound vehicle never does. Each event still has its start (held
    until the entry, with its first thumbnail) and its end; the counts are not affected."""
    scene = TrafficScene(TrafficSettings(seed=3, duration_s=60.0, signal=True))
    [zone] = scene.zones
    sink = Sink(tmp_path)
    cfg = config(scene, event_zones=[zone.name])
    runner = AnalysisRunner("cam-1", cfg, [], images=sink, mask=lambda i: i)
    await runner.start()
    assert runner.settings is not None
    try:
        counted = await feed(runner, scene, 40.0, Analyzer(runner.settings))
    finally:
        await runner.stop()
    stats = runner.stats()
    sink.db.close()
    assert stats["events_dropped"] == 0
    assert int(stats["events_filtered"]) > 0  # the westbound traffic, at least
    kinds: dict[str, Counter[str]] = {}
    with ImageStore(tmp_path, 200_000_000, sync=False) as store:
        seen: list[int] = []
        while (meta := store.next(seen)) is not None:
            seen.append(meta.seq)
            ev = orjson.loads(meta.event or "null")
            assert zone.name in ev["entered_zones"], ev
            kinds.setdefault(ev["id"], Counter())[ev["type"]] += 1
    assert kinds
    assert all(c["start"] == 1 and c["end"] == 1 for c in kinds.values()), kinds
    # Counting goes on for every object: the westbound lines counted too.
    totals = Counter[str]()
    for v in runner.drain():
        for m, x in zip(v.metrics, v.values, strict=True):
            if m.startswith("count.") and m.count(".") == 2:
                totals[m] += int(x or 0)
    assert totals["count.all-lanes.in"] == counted["all-lanes.in"] > 0
