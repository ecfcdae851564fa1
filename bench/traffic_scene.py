"""What the simulator's traffic scene (tepi_sim.traffic) costs: building it and each frame.

The analytics' accuracy tests render thousands of frames of this scene, so its cost bounds
theirs. Measured, each as the median wall time over ``--repeats`` runs after a warm-up, on
one OpenCV thread (``--threads``):

- build: ``TrafficScene(TrafficSettings())``, which simulates the 300 s scene at 20 Hz;
- render: one frame at 640x360 (the reference) and 1280x720, with the default noise, shake
  and lighting, and with rain and brightness jumps on as well; plus a JPEG at quality 80,
  as the simulated camera serves it;
- truth, crossings and queue_length at one instant.

    .venv/bin/python bench/traffic_scene.py
    .venv/bin/python bench/traffic_scene.py --repeats 200 --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys

import cv2
from harness import timed

from tepi_sim.traffic import TrafficScene, TrafficSettings


def run(repeats: int) -> dict[str, float]:
    ms: dict[str, float] = {}
    ms["build 640x360, 300 s"] = timed(
        max(1, repeats // 20), lambda: TrafficScene(TrafficSettings())
    )
    scenes = {
        "640x360": TrafficScene(TrafficSettings()),
        "640x360, rain and jumps": TrafficScene(
            TrafficSettings(rain=1.0, brightness_jumps_per_min=2.0)
        ),
        "1280x720": TrafficScene(TrafficSettings(width=1280, height=720)),
    }
    for name, scene in scenes.items():
        times = itertools.count()

        def frame(s: TrafficScene = scene, k: itertools.count[int] = times) -> object:
            return s.render(next(k) * 0.2)  # 5 fps through the scene

        ms[f"render {name}"] = timed(repeats, frame)
    reference = scenes["640x360"]
    ms["render + JPEG q80 640x360"] = timed(
        repeats, lambda: reference.encode_jpeg(reference.render(123.4), 80)
    )
    ms["truth at one instant"] = timed(repeats, lambda: reference.truth(123.4))
    ms["crossings 0..300 s"] = timed(repeats, reference.crossings)
    ms["queue_length at one instant"] = timed(
        repeats, lambda: reference.queue_length("approach-east", 123.4)
    )
    return ms


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--repeats", type=int, default=100, help="timed runs an operation")
    p.add_argument("--threads", type=int, default=1, help="OpenCV's threads (0: its default)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = p.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    ms = run(args.repeats)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"OpenCV {cv2.__version__}"
    )
    if args.json:
        print(json.dumps({"ms": ms, "machine": machine, "repeats": args.repeats}), flush=True)
        return
    print(f"{machine}; OpenCV threads {cv2.getNumThreads()}; median of {args.repeats} runs\n")
    print(f"{'operation':<40} {'ms':>9}")
    for name, value in ms.items():
        print(f"{name:<40} {value:>9.3f}")


if __name__ == "__main__":
    main()
