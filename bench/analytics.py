"""What the camera analytics engine (tepi.drivers.camera.analytics) costs per frame.

Frames come from the simulator's traffic scene (640x360, every hard case on: about 10
vehicles in view, a queue, occluders, shake, noise), rendered beforehand so that only the
engine is timed. The engine analyses them at 5 frames a second of scene time at
``--width`` (320 by default), with the scene's lines and queue zone and three size classes.
Each frame's CPU time is the thread's (``time.thread_time``), so other processes on the box
do not inflate it; OpenCV is held to ``--threads`` threads (1: one core, as a Raspberry Pi
shared by several cameras would see it). The figures: median and 95th percentile ms per
frame, and the share of one core at 5 fps.

    .venv/bin/python bench/analytics.py
    .venv/bin/python bench/analytics.py --seconds 120 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import cv2

from tepi.drivers.camera.analytics import (
    AnalyticsSettings,
    Analyzer,
    CountLine,
    SizeClass,
    Zone,
)
from tepi_sim.traffic import TrafficScene, TrafficSettings

FPS = 5.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="scene time analysed")
    ap.add_argument("--width", type=int, default=320, help="analysis width, px")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)

    scene = TrafficScene(TrafficSettings(seed=args.seed, duration_s=max(60.0, args.seconds)))
    settings = AnalyticsSettings(
        width=args.width,
        lines=tuple(CountLine(ln.name, ln.a, ln.b) for ln in scene.lines),
        zones=tuple(Zone(z.name, z.polygon, z.stop_line, z.length_m) for z in scene.zones),
        classes=(
            SizeClass("two_wheeler", 0.0035),
            SizeClass("car", 0.012),
            SizeClass("bus_truck", 1.0),
        ),
    )
    n = round(args.seconds * FPS)
    frames = [scene.render(k / FPS) for k in range(n)]
    analyzer = Analyzer(settings)
    warm = round(5 * FPS)  # the background's first learning is not the steady state
    cpu: list[float] = []
    wall: list[float] = []
    for k, frame in enumerate(frames):
        c0, w0 = time.thread_time(), time.perf_counter()
        analyzer.process(frame, k / FPS)
        c1, w1 = time.thread_time(), time.perf_counter()
        if k >= warm:
            cpu.append((c1 - c0) * 1000)
            wall.append((w1 - w0) * 1000)
    cpu.sort()
    result = {
        "frames": len(cpu),
        "frame": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "width": args.width,
        "threads": args.threads,
        "cpu_ms_median": round(statistics.median(cpu), 3),
        "cpu_ms_p95": round(cpu[int(0.95 * (len(cpu) - 1))], 3),
        "wall_ms_median": round(statistics.median(wall), 3),
        "core_share_at_5fps": round(statistics.mean(cpu) * FPS / 1000, 4),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "opencv": cv2.__version__,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"analytics {result['frame']} at width {args.width}, {args.threads} thread(s), "
        f"{len(cpu)} frames"
    )
    print(
        f"  CPU per frame   median {result['cpu_ms_median']:.2f} ms, "
        f"p95 {result['cpu_ms_p95']:.2f} ms"
    )
    print(f"  wall per frame  median {result['wall_ms_median']:.2f} ms")
    print(f"  one core at 5 fps: {100 * result['core_share_at_5fps']:.2f} %")


if __name__ == "__main__":
    main()
