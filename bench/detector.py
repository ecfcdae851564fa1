"""What the optional ONNX detector costs (tepi.drivers.camera.detector), per frame, at 1 fps.

tepi ships no model, so this builds one of a realistic size with onnx's helpers: a plain
convolutional detector shaped like a nano YOLO at 320x320. A stride-2 3x3 stem, then four
stages of a stride-2 3x3 convolution and a 3x3 convolution (ReLU after each), and 1x1 heads
on the last three stages (strides 8, 16, 32: 40x40, 20x20 and 10x10 cells) concatenated
into YOLOv8's ``[1, 84, 2100]`` (4 box values and 80 class scores per cell, the class
scores through a sigmoid, the boxes around each cell's centre). Its weights are random
(seeded), with the class biases set so that the bench's frame gives some candidates above the
threshold, as a busy street might, so that decoding and NMS do some work (how many depends
on the width's weights: the table's ``dets``).

At width 1 it costs about 0.76 GFLOP (FLOPs = 2 x multiply-adds, the way Ultralytics counts:
YOLOv8n is 8.7 GFLOP at 640x640, so about 2.2 at 320x320, and YOLO11n 6.5, so about 1.6),
with 4.9 MB of float32 weights. ``--widths`` scales every layer's channels: FLOPs
grow with the square of the width, so 0.7 and 1.41 give about half and double.

Each model runs for ``--seconds`` at ``--fps`` (1 by default) on a 640x360 camera-like frame
through :meth:`Detector.detect` (letterbox, colour, the run, decoding, NMS), sleeping
between frames as the camera driver would. Shown per model: the CPU time a frame (the
process's CPU time around each ``detect``, median and 95th percentile), the model run alone
(``model``: the median CPU time of ``session.run``; the rest is resizing, decoding and NMS),
and the CPU share of one core over the whole run, idle time included, which is what the
other devices on the box feel. CPU time, not wall time: on a shared machine the wall time
also counts the waits for a core.

    .venv/bin/python bench/detector.py
    .venv/bin/python bench/detector.py --seconds 60 --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tepi.drivers.camera.detector import COCO_CLASSES, Detector, DetectorSettings

_COCO80 = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant"
    " stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe"
    " backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite"
    " baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup"
    " fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut"
    " cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard"
    " cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear"
    " hair_drier toothbrush"
)
COCO80 = tuple(_COCO80.split())  # YOLO's class order
SIZE = 320
STAGES = (32, 64, 128, 256)  # channels at strides 4, 8, 16, 32 (width 1)
STEM = 16


def build(path: Path, width: float, seed: int = 0) -> float:
    """Write the model at ``width`` to ``path``; its GFLOP for one 320x320 frame."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    flops = 0.0

    def ch(c: int) -> int:
        return max(8, round(c * width / 8) * 8)

    def conv(x: str, cin: int, cout: int, *, k: int, stride: int, side: int, name: str) -> str:
        nonlocal flops
        w = rng.normal(0, (2 / (cin * k * k)) ** 0.5, (cout, cin, k, k)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}.w"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.b"))
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.w", f"{name}.b"],
                [f"{name}.c"],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}.c"], [name]))
        flops += 2 * cin * cout * k * k * (side // stride) ** 2
        return name

    x = conv("images", 3, ch(STEM), k=3, stride=2, side=SIZE, name="stem")
    cin, side, feats = ch(STEM), SIZE // 2, []
    for i, c in enumerate(STAGES):
        x = conv(x, cin, ch(c), k=3, stride=2, side=side, name=f"s{i}.down")
        side //= 2
        x = conv(x, ch(c), ch(c), k=3, stride=1, side=side, name=f"s{i}.conv")
        cin = ch(c)
        if i:
            feats.append((x, cin, side))
    heads = []
    for j, (f, c, s) in enumerate(feats):
        box_w = rng.normal(0, 0.01, (4, c, 1, 1)).astype(np.float32)
        cls_w = rng.normal(0, 0.5, (80, c, 1, 1)).astype(np.float32)
        inits += [
            numpy_helper.from_array(np.concatenate([box_w, cls_w]), f"h{j}.w"),
            numpy_helper.from_array(
                np.concatenate([np.zeros(4), np.full(80, -6.0)]).astype(np.float32), f"h{j}.b"
            ),
            numpy_helper.from_array(np.asarray([1, 84, s * s], np.int64), f"h{j}.shape"),
        ]
        nodes += [
            helper.make_node("Conv", [f, f"h{j}.w", f"h{j}.b"], [f"h{j}.c"], kernel_shape=[1, 1]),
            helper.make_node("Reshape", [f"h{j}.c", f"h{j}.shape"], [f"h{j}"]),
        ]
        flops += 2 * c * 84 * s * s
        heads.append(f"h{j}")
    # Boxes as YOLOv8 decodes them: the cell's centre plus what the head says, a cell wide.
    grid = []
    for _, _, s in feats:
        step = SIZE / s
        cy, cx = np.mgrid[0:s, 0:s].reshape(2, -1) * step + step / 2
        grid.append(np.stack([cx, cy, np.full(s * s, step), np.full(s * s, step)]))
    anchors = np.concatenate(grid, axis=1)[None].astype(np.float32)
    cells = anchors.shape[2]
    inits += [
        numpy_helper.from_array(np.asarray([4, 80], np.int64), "split"),
        numpy_helper.from_array(anchors, "anchors"),
    ]
    nodes += [
        helper.make_node("Concat", heads, ["raw"], axis=2),
        helper.make_node("Split", ["raw", "split"], ["offsets", "logits"], axis=1),
        helper.make_node("Add", ["offsets", "anchors"], ["box"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
        helper.make_node("Concat", ["box", "scores"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        f"bench-detector-w{width}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 84, cells])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return flops / 1e9


def frame(seed: int = 0) -> npt.NDArray[np.uint8]:
    """A 640x360 BGR frame with texture and noise (not a real scene: the cost of a
    convolution does not depend on what the pixels show)."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.linspace(60, 190, 640, dtype=np.float32), (360, 1))
    img = base[:, :, None] + rng.normal(0, 20, (360, 640, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def measure(path: Path, seconds: float, fps: float, threads: int) -> dict[str, float]:
    settings = DetectorSettings(path, labels=COCO80, classes=dict(COCO_CLASSES), threads=threads)
    det = Detector(settings)
    img = frame()
    for _ in range(3):  # warm-up: the first runs allocate
        det.detect(img)
    cpu_ms: list[float] = []
    found: list[int] = []
    period = 1 / fps
    start_cpu, start = time.process_time(), time.monotonic()
    deadline = start + seconds
    tick = start
    while tick < deadline:
        c0 = time.process_time()
        found.append(len(det.detect(img)))
        cpu_ms.append((time.process_time() - c0) * 1e3)
        tick += period
        time.sleep(max(0.0, tick - time.monotonic()))
    share = (time.process_time() - start_cpu) / (time.monotonic() - start)
    # The model alone, for comparison: the session's run on a tensor of the input's shape
    # (a convolution costs the same whatever the pixels).
    tensor = np.zeros((1, 3, SIZE, SIZE), np.float32)
    session = det._session  # the bench may look inside
    run_ms = []
    for _ in range(max(5, min(30, len(cpu_ms)))):
        c0 = time.process_time()
        session.run(None, {"images": tensor})
        run_ms.append((time.process_time() - c0) * 1e3)
    cpu_ms.sort()
    return {
        "frames": len(cpu_ms),
        "cpu_ms_median": statistics.median(cpu_ms),
        "cpu_ms_p95": cpu_ms[min(len(cpu_ms) - 1, int(0.95 * len(cpu_ms)))],
        "run_cpu_ms_median": statistics.median(run_ms),
        "core_share_pct": 100 * share,
        "detections_median": statistics.median(found),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seconds", type=float, default=20, help="how long each model runs")
    p.add_argument("--fps", type=float, default=1, help="frames a second")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime's intra-op threads")
    p.add_argument(
        "--widths", type=float, nargs="+", default=[0.7, 1.0, 1.41], help="channel multipliers"
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            path = Path(tmp) / f"w{width}.onnx"
            gflop = build(path, width)
            res = measure(path, args.seconds, args.fps, args.threads)
            rows.append({"width": width, "gflop": gflop, "mb": path.stat().st_size / 1e6} | res)
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python"
        f" {sys.version.split()[0]}, onnxruntime {ort.__version__}",
        "threads": args.threads,
        "fps": args.fps,
        "seconds": args.seconds,
        "input": f"640x360 BGR, letterboxed to {SIZE}x{SIZE} float32 NCHW",
        "models": rows,
    }
    if args.json:
        print(json.dumps(out), flush=True)
        return
    print(f"{out['machine']}; {args.threads} thread(s), {args.fps} fps, {args.seconds} s each")
    print(f"{out['input']}\n")
    head = ("width", "GFLOP", "MB", "frames", "CPU ms/frame", "p95", "model", "% core", "dets")
    print("{:>6} {:>6} {:>5} {:>7} {:>13} {:>7} {:>7} {:>7} {:>5}".format(*head))
    for r in rows:
        print(
            f"{r['width']:>6.2f} {r['gflop']:>6.2f} {r['mb']:>5.1f} {r['frames']:>7.0f}"
            f" {r['cpu_ms_median']:>13.1f} {r['cpu_ms_p95']:>7.1f} {r['run_cpu_ms_median']:>7.1f}"
            f" {r['core_share_pct']:>7.2f} {r['detections_median']:>5.0f}"
        )


if __name__ == "__main__":
    main()
