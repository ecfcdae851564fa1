"""What the cameras' image processing costs (tepi.drivers.camera.vision), per call.

The images are synthetic but camera-like: a textured scene (a gradient, rectangles, discs,
lines of many grey levels) with sensor noise, encoded at JPEG quality 75 (docs/cameras.md's
sizes: 640x360 about 23 KB at 70, 1280x720 about 110 KB at 75). Each operation runs
``--repeats`` times after a warm-up and the median wall time is shown; OpenCV is held to
``--threads`` threads (1 by default: one core, as the reference table in
docs/cameras.md was measured, and as a Raspberry Pi shared by several cameras would see it).

- decode: a 640x360 and a 1920x1080 JPEG, grey, at 1/4 (the health checks' input) and,
  for comparison, in colour at full size;
- check: ``HealthChecker.check`` on the 1/4 images (160x90 and 480x270);
- masks: ``apply_masks`` on 1280x720 colour with two polygons compiled once (a
  ``MaskPlan``), and ``compile_masks`` itself;
- encode: ``encode_jpeg`` 1280x720 at 75, ``encode_under`` at 128 KB (fits at once) and at
  30 KB (quality steps, then scaling), ``thumbnail`` at 320 px;
- ``jpeg_size`` and ``frame_hash``.

    .venv/bin/python bench/camera_vision.py
    .venv/bin/python bench/camera_vision.py --repeats 50 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Iterator
from functools import partial

import cv2
import numpy as np
from harness import timed

from tepi.drivers.camera.vision import (
    HealthChecker,
    Image,
    apply_masks,
    compile_masks,
    decode,
    encode_jpeg,
    encode_under,
    frame_hash,
    jpeg_size,
    thumbnail,
)

MASKS = [
    [[0.1, 0.2], [0.45, 0.1], [0.6, 0.55], [0.3, 0.8], [0.12, 0.6]],
    [[0.7, 0.0], [1.0, 0.0], [1.0, 0.3], [0.7, 0.3]],
]


def scene(width: int, height: int, seed: int = 0) -> Image:
    """A textured view with sensor noise, at ``width`` x ``height`` (BGR)."""
    rng = np.random.default_rng(seed)
    img = np.tile(np.linspace(90, 170, 360, dtype=np.float32)[:, None], (1, 640))
    for _ in range(60):
        x, y = int(rng.integers(0, 640)), int(rng.integers(0, 360))
        c = float(rng.integers(20, 235))
        kind = rng.integers(0, 3)
        if kind == 0:
            w, h = int(rng.integers(10, 120)), int(rng.integers(10, 80))
            cv2.rectangle(img, (x, y), (x + w, y + h), c, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(5, 50)), c, -1)
        else:
            end = (int(rng.integers(0, 640)), int(rng.integers(0, 360)))
            cv2.line(img, (x, y), end, c, int(rng.integers(1, 5)))
    big = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)
    noisy = np.clip(np.asarray(big) + rng.normal(0, 3, (height, width)), 0, 255)
    gray = noisy.astype(np.uint8)
    tint = np.array([0.9, 1.0, 1.1], np.float32)  # a little colour, for the chroma planes
    colour: Image = np.clip(gray[:, :, None] * tint, 0, 255).astype(np.uint8)
    return colour


def run(repeats: int) -> dict[str, object]:
    sizes: dict[str, int] = {}
    jpegs: dict[str, bytes] = {}
    for name, (w, h) in {"640x360": (640, 360), "1920x1080": (1920, 1080)}.items():
        jpegs[name] = encode_jpeg(scene(w, h), quality=75)
        sizes[f"jpeg {name} q75"] = len(jpegs[name])
    hd = scene(1280, 720)
    sizes["jpeg 1280x720 q75"] = len(encode_jpeg(hd, quality=75))

    ms: dict[str, float] = {}
    for name, data in jpegs.items():
        ms[f"decode {name}, grey, 1/4"] = timed(repeats, partial(decode, data, reduce=4, gray=True))
        ms[f"decode {name}, colour, full"] = timed(repeats, partial(decode, data))
    for name, data in jpegs.items():
        small = decode(data, reduce=4, gray=True)
        checker = HealthChecker()
        frames = [small, np.ascontiguousarray(np.flipud(np.fliplr(small)))]  # never frozen
        clock = iter(range(10**9))

        def check(
            c: HealthChecker = checker, f: list[Image] = frames, k: Iterator[int] = clock
        ) -> object:
            n = next(k)
            return c.check(f[n % 2], n * 10.0)

        h, w = small.shape
        ms[f"check {w}x{h} (from {name})"] = timed(repeats, check)
    plan = compile_masks(MASKS, 1280, 720)
    ms["compile_masks 1280x720, 2 polygons"] = timed(
        repeats, lambda: compile_masks(MASKS, 1280, 720)
    )
    work = hd.copy()
    ms["apply_masks 1280x720 colour, plan"] = timed(repeats, lambda: apply_masks(work, plan))
    ms["apply_masks 1280x720, fill (128,128,128)"] = timed(
        repeats, lambda: apply_masks(work, plan, fill=(128, 128, 128))
    )
    ms["apply_masks 1280x720, polygons (cached plan)"] = timed(
        repeats, lambda: apply_masks(work, MASKS)
    )
    ms["encode_jpeg 1280x720 q75"] = timed(repeats, lambda: encode_jpeg(hd, quality=75))
    for cap in (128_000, 30_000):
        out = encode_under(hd, max_bytes=cap, quality=75)
        key = f"encode_under 1280x720 q75, {cap // 1000} KB"
        ms[key] = timed(repeats, partial(encode_under, hd, max_bytes=cap, quality=75))
        w, h = jpeg_size(out)
        sizes[f"{key} -> {w}x{h}"] = len(out)
    ms["thumbnail 1280x720 -> 320 px"] = timed(repeats, lambda: thumbnail(hd))
    ms["jpeg_size 1920x1080"] = timed(repeats, lambda: jpeg_size(jpegs["1920x1080"]))
    small = decode(jpegs["1920x1080"], reduce=4, gray=True)
    ms["frame_hash 480x270"] = timed(repeats, lambda: frame_hash(small))
    return {"ms": ms, "bytes": sizes}


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--repeats", type=int, default=30, help="timed runs an operation")
    p.add_argument("--threads", type=int, default=1, help="OpenCV's threads (0: its default)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = p.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    res = run(args.repeats)
    res |= {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}, OpenCV {cv2.__version__}",
        "opencv_threads": cv2.getNumThreads(),
        "repeats": args.repeats,
    }
    if args.json:
        print(json.dumps(res), flush=True)
        return
    print(f"{res['machine']}; OpenCV threads {res['opencv_threads']}")
    print(f"median of {args.repeats} runs\n")
    ms = res["ms"]
    assert isinstance(ms, dict)
    print(f"{'operation':<48} {'ms':>8}")
    for name, value in ms.items():
        print(f"{name:<48} {value:>8.3f}")
    sizes = res["bytes"]
    assert isinstance(sizes, dict)
    print(f"\n{'size':<48} {'bytes':>8}")
    for name, value in sizes.items():
        print(f"{name:<48} {value:>8}")


if __name__ == "__main__":
    main()
