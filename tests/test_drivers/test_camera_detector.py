"""The optional ONNX detector, run for real with onnxruntime on tiny models built here.

Each model is built with onnx's helpers and its outputs are known: constant tensors (added to
a zero-scaled mean of the input, so the input is used and the graph cannot be folded into
nothing), or tensors computed from the image in a simple way (its mean brightness, its red
channel, its own size), so that letterbox, colour order and input size are checked through
the model itself.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tepi.drivers.camera.detector import (
    Detector,
    DetectorError,
    DetectorSettings,
    nms,
    read_labels,
)
from tepi.drivers.camera.geometry import box_iou

pytestmark = pytest.mark.timeout(60)

Dim = int | str
COCO_FEW = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "dog")


def build(
    path: Path,
    outputs: Mapping[str, npt.ArrayLike],
    *,
    shape: Sequence[Dim] = (1, 3, 320, 320),
    elem: int = TensorProto.FLOAT,
    metadata: dict[str, str] | None = None,
    out_type: int = TensorProto.FLOAT,
) -> Path:
    """A model with one image input whose outputs are the given constants (plus 0 x the
    input's mean)."""
    nodes = [*_mean(elem), helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outs = []
    for name, value in outputs.items():
        arr = np.asarray(value, np.float32)
        inits.append(numpy_helper.from_array(arr, f"{name}_c"))
        sum_name = name if out_type == TensorProto.FLOAT else f"{name}_f"
        nodes.append(helper.make_node("Add", [f"{name}_c", "nothing"], [sum_name]))
        if out_type != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [sum_name], [name], to=out_type))
        outs.append(helper.make_tensor_value_info(name, out_type, list(arr.shape)))
    return _save(path, nodes, inits, shape, elem, outs, metadata)


def _mean(elem: int) -> list[onnx.NodeProto]:
    """Nodes from ``images`` to ``mean``, the mean of the input (uint8 scaled to 0..1)."""
    if elem == TensorProto.FLOAT:
        return [helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0)]
    mean = "mean255" if elem == TensorProto.UINT8 else "mean"
    nodes = [
        helper.make_node("Cast", ["images"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["as_float"], [mean], keepdims=0),
    ]
    if elem == TensorProto.UINT8:
        nodes.append(helper.make_node("Mul", ["mean255", "inv255"], ["mean"]))
    return nodes


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    shape: Sequence[Dim],
    elem: int,
    outs: list[onnx.ValueInfoProto],
    metadata: dict[str, str] | None = None,
) -> Path:
    inits = [*inits, numpy_helper.from_array(np.asarray(1 / 255, np.float32), "inv255")]
    image = helper.make_tensor_value_info("images", elem, list(shape))
    graph = helper.make_graph(nodes, "tiny", [image], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def brightness_model(
    path: Path, *, elem: int = TensorProto.FLOAT, channel: int | None = None, nhwc: bool = False
) -> Path:
    """YOLOv8 layout ``[1, 5, 1]``, one class: a box at (100, 60)-(220, 260) of the 320x320
    input, scored by the input's mean brightness in 0..1, or (float input only) by the mean
    of input channel ``channel``; the input NCHW, or NHWC."""
    if channel is None:
        nodes = _mean(elem)
    else:
        nodes = [
            helper.make_node("Slice", ["images", "c0", "c1", "ax"], ["plane"]),
            helper.make_node("ReduceMean", ["plane"], ["mean"], keepdims=0),
        ]
    nodes += [
        helper.make_node("Reshape", ["mean", "shape111"], ["score"]),
        helper.make_node("Concat", ["box", "score"], ["output0"], axis=1),
    ]
    box = np.asarray([160, 160, 120, 200], np.float32).reshape(1, 4, 1)
    inits = [
        numpy_helper.from_array(np.asarray([1, 1, 1], np.int64), "shape111"),
        numpy_helper.from_array(box, "box"),
        numpy_helper.from_array(np.asarray([channel or 0], np.int64), "c0"),
        numpy_helper.from_array(np.asarray([(channel or 0) + 1], np.int64), "c1"),
        numpy_helper.from_array(np.asarray([3 if nhwc else 1], np.int64), "ax"),
    ]
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 1])
    names = {"names": "{0: 'car'}"}
    shape = (1, 320, 320, 3) if nhwc else (1, 3, 320, 320)
    return _save(path, nodes, inits, shape, elem, [out], names)


def size_model(path: Path) -> Path:
    """YOLOv8 ``[1, 5, 1]`` from a dynamic NCHW input: the box is the centre half of
    whatever size it is fed, (W/2, H/2, W/2, H/2), score 1."""
    nodes = [
        helper.make_node("Shape", ["images"], ["dims"]),
        helper.make_node("Cast", ["dims"], ["fdims"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["fdims", "whwh"], ["g"]),
        helper.make_node("Mul", ["g", "half"], ["box"]),
        helper.make_node("Concat", ["box", "one"], ["flat"], axis=0),
        helper.make_node("Reshape", ["flat", "shape"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray([3, 2, 3, 2], np.int64), "whwh"),
        numpy_helper.from_array(np.asarray(0.5, np.float32), "half"),
        numpy_helper.from_array(np.asarray([1.0], np.float32), "one"),
        numpy_helper.from_array(np.asarray([1, 5, 1], np.int64), "shape"),
    ]
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 1])
    return _save(
        path, nodes, inits, ("n", 3, "h", "w"), TensorProto.FLOAT, [out], {"names": "['car']"}
    )


def v8(rows: Sequence[Sequence[float]]) -> npt.NDArray[np.float32]:
    """YOLOv8's ``[1, 4 + C, N]`` from rows ``cx, cy, w, h, class scores...``."""
    return np.asarray(rows, np.float32).T[None]


def frame(w: int, h: int, value: int | tuple[int, int, int] = 128) -> npt.NDArray[np.uint8]:
    return np.full((h, w, 3), value, np.uint8)


def approx(box: Sequence[float], want: Sequence[float]) -> bool:
    return bool(np.allclose(box, want, atol=1e-5))


# ---- NMS -----------------------------------------------------------------------------------


def test_nms_identical_boxes_keep_the_best() -> None:
    boxes = [[0, 0, 1, 1]] * 3
    assert nms(boxes, [0.5, 0.9, 0.7], 0.5).tolist() == [1]


def test_nms_disjoint_boxes_all_stay_best_first() -> None:
    boxes = [[0, 0, 1, 1], [2, 0, 3, 1], [0, 2, 1, 3]]
    assert nms(boxes, [0.3, 0.9, 0.6], 0.1).tolist() == [1, 2, 0]


def test_nms_chain_order_matters() -> None:
    # a overlaps b, b overlaps c, a and c do not: b goes (under a), so c stays.
    a, b, c = (0.0, 0.0, 10.0, 10.0), (4.0, 0.0, 14.0, 10.0), (8.0, 0.0, 18.0, 10.0)
    assert box_iou(a, b) > 0.3
    assert box_iou(b, c) > 0.3
    assert box_iou(a, c) < 0.3
    chain = np.asarray([a, b, c])
    assert nms(chain, [0.9, 0.8, 0.7], 0.3).tolist() == [0, 2]
    # The middle one best: it takes both neighbours.
    assert nms(chain, [0.8, 0.9, 0.7], 0.3).tolist() == [1]


def test_nms_ties_keep_the_earlier_box() -> None:
    assert nms([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.1]], [0.5, 0.5], 0.5).tolist() == [0]
    assert nms([[0.0, 0.0, 1.0, 1.1], [0.0, 0.0, 1.0, 1.0]], [0.5, 0.5], 0.5).tolist() == [0]


def test_nms_threshold_is_strict_and_empty_inputs_work() -> None:
    # IoU exactly 1/3: kept at a threshold of 1/3, suppressed just under it.
    boxes = [[0, 0, 2, 1], [1, 0, 3, 1]]
    assert nms(boxes, [0.9, 0.8], 1 / 3).tolist() == [0, 1]
    assert nms(boxes, [0.9, 0.8], 0.33).tolist() == [0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    # An empty box overlaps nothing.
    assert nms([[0, 0, 0, 0], [0, 0, 0, 0]], [0.9, 0.8], 0.5).tolist() == [0, 1]
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        nms(boxes, [0.9], 0.5)


coord = st.integers(0, 20)
raw_boxes = st.lists(st.tuples(coord, coord, st.integers(1, 10), st.integers(1, 10)), max_size=25)


@settings(max_examples=200, deadline=None)
@given(raw_boxes, st.data(), st.floats(0.0, 1.0))
def test_nms_properties(
    raw: list[tuple[int, int, int, int]], data: st.DataObject, thr: float
) -> None:
    boxes = [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in raw]
    scores = data.draw(
        st.lists(
            st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]), min_size=len(boxes), max_size=len(boxes)
        )
    )
    kept = nms(np.asarray(boxes).reshape(-1, 4), scores, thr).tolist()
    assert len(set(kept)) == len(kept)
    # No two kept boxes overlap by more than the threshold.
    for n, i in enumerate(kept):
        for j in kept[n + 1 :]:
            assert box_iou(boxes[i], boxes[j]) <= thr + 1e-9
    if boxes:
        # The best box (the first of equals) is always kept, and first.
        assert kept[0] == int(np.argmax(scores))
        # Best first.
        assert [scores[i] for i in kept] == sorted((scores[i] for i in kept), reverse=True)
    # Every box dropped was covered by a kept box at least as good.
    for d in set(range(len(boxes))) - set(kept):
        assert any(
            scores[k] >= scores[d] and box_iou(boxes[k], boxes[d]) > thr - 1e-9 for k in kept
        )


# ---- YOLO ----------------------------------------------------------------------------------


def test_yolov8_box_comes_back_through_the_letterbox(tmp_path: Path) -> None:
    # cx, cy, w, h = 160, 160, 100, 50 on a 320x320 input; class 2 is car.
    out = v8([[160, 160, 100, 50, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0]])
    det = Detector(DetectorSettings(build(tmp_path / "m.onnx", {"output0": out}), labels=COCO_FEW))
    assert det.kind == "yolov8"
    assert det.letterbox
    # 640x320 -> scale 0.5, 320x160 centred: padding 80 above. The box (110, 135)-(210, 185)
    # is (220, 110)-(420, 210) in the frame.
    [d] = det.detect(frame(640, 320))
    assert d.label == "car"
    assert d.score == pytest.approx(0.9)
    assert approx(d.box, (220 / 640, 110 / 320, 420 / 640, 210 / 320))
    # A tall 200x400 frame: scale 0.8, 160x320 centred: padding 80 on the left.
    [d] = det.detect(frame(200, 400))
    assert approx(d.box, (30 / 0.8 / 200, 135 / 0.8 / 400, 130 / 0.8 / 200, 185 / 0.8 / 400))


def test_stretch_undoes_each_axis(tmp_path: Path) -> None:
    out = v8([[160, 160, 100, 50, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0]])
    path = build(tmp_path / "m.onnx", {"output0": out})
    det = Detector(DetectorSettings(path, labels=COCO_FEW, resize="stretch"))
    [d] = det.detect(frame(640, 320))
    assert approx(d.box, (110 / 320, 135 / 320, 210 / 320, 185 / 320))


def test_yolov5_scores_are_objectness_times_class(tmp_path: Path) -> None:
    # [1, N, 5 + C]; C = 7: obj 0.5 x car 0.9 = 0.45 passes 0.4, obj 0.5 x bus 0.7 does not.
    rows = np.zeros((1, 3, 12), np.float32)
    rows[0, 0, :5] = [100, 100, 40, 40, 0.5]
    rows[0, 0, 5 + 2] = 0.9
    rows[0, 1, :5] = [250, 250, 40, 40, 0.5]
    rows[0, 1, 5 + 4] = 0.7
    rows[0, 2, :5] = [50, 250, 20, 20, 1.0]
    rows[0, 2, 5 + 0] = 0.8  # a person
    det = Detector(DetectorSettings(build(tmp_path / "m.onnx", {"output0": rows}), labels=COCO_FEW))
    assert det.kind == "yolov5"
    got = det.detect(frame(320, 320))
    assert [(d.label, round(d.score, 5)) for d in got] == [("person", 0.8), ("car", 0.45)]
    assert approx(got[1].box, (80 / 320, 80 / 320, 120 / 320, 120 / 320))


def test_nms_runs_per_tepi_class_and_unmapped_labels_go(tmp_path: Path) -> None:
    near = [100, 100, 60, 60]
    shifted = [104, 100, 60, 60]
    rows = [
        [*near, 0, 0, 0.9, 0, 0, 0, 0],  # car
        [*shifted, 0, 0, 0.8, 0, 0, 0, 0],  # car on the same car: suppressed
        [*shifted, 0.7, 0, 0, 0, 0, 0, 0],  # a person on it: another class, kept
        [*near, 0, 0.6, 0, 0, 0, 0, 0],  # bicycle: two_wheeler
        [*shifted, 0, 0, 0, 0.65, 0, 0, 0],  # motorcycle on it: also two_wheeler, wins
        [200, 200, 50, 50, 0, 0, 0, 0, 0, 0, 0.99],  # a dog: not mapped, dropped
        [200, 200, 50, 50, 0, 0, 0.3, 0, 0, 0, 0.99],  # below the threshold as a car
    ]
    det = Detector(
        DetectorSettings(build(tmp_path / "m.onnx", {"output0": v8(rows)}), labels=COCO_FEW)
    )
    got = det.detect(frame(320, 320))
    assert [(d.label, round(d.score, 5)) for d in got] == [
        ("car", 0.9),
        ("person", 0.7),
        ("two_wheeler", 0.65),
    ]
    # A lower IoU threshold does not change the classes kept; a looser one keeps both cars.
    loose = Detector(DetectorSettings(det.settings.model, labels=COCO_FEW, iou_threshold=0.95))
    assert [d.label for d in loose.detect(frame(320, 320))].count("car") == 2


def test_threshold_and_max_detections(tmp_path: Path) -> None:
    rows = [[30 + 60 * i, 160, 40, 40, 0.0, 0.0, 0.5 + 0.1 * i, 0, 0, 0, 0] for i in range(5)]
    path = build(tmp_path / "m.onnx", {"output0": v8(rows)})

    def scores(**kw: Any) -> list[float]:
        det = Detector(DetectorSettings(path, labels=COCO_FEW, **kw))
        return [round(d.score, 5) for d in det.detect(frame(320, 320))]

    assert scores() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert scores(score_threshold=0.7) == [0.9, 0.8, 0.7]
    assert scores(max_detections=2) == [0.9, 0.8]
    assert scores(classes={"person": "person"}) == []
    assert scores(classes={}, score_threshold=0.0) == []  # nothing mapped: nothing at all


def test_the_score_follows_the_image_float_and_uint8(tmp_path: Path) -> None:
    for elem in (TensorProto.FLOAT, TensorProto.UINT8):
        det = Detector(
            DetectorSettings(
                brightness_model(tmp_path / f"b{elem}.onnx", elem=elem), classes={"car": "car"}
            )
        )
        assert det.labels == ("car",)  # from the model's metadata
        [d] = det.detect(frame(320, 320, 204))
        assert d.score == pytest.approx(0.8, abs=1e-3)
        assert det.detect(frame(320, 320, 51)) == []  # 0.2: under the threshold
        # 320x160 letterboxed: half the input is the frame (255), half the grey fill (114).
        [d] = det.detect(frame(320, 160, 255))
        assert d.score == pytest.approx((255 + 114) / 2 / 255, abs=1e-3)


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
def test_the_model_sees_rgb_unless_told(tmp_path: Path, nhwc: bool) -> None:
    # Scored by input channel 0 alone, found where the layout puts it.
    path = brightness_model(tmp_path / "red.onnx", channel=0, nhwc=nhwc)
    rgb = Detector(DetectorSettings(path, classes={"car": "car"}))
    red, blue = frame(320, 320, (0, 0, 255)), frame(320, 320, (255, 0, 0))  # BGR
    assert [d.score for d in rgb.detect(red)] == [pytest.approx(1.0)]
    assert rgb.detect(blue) == []
    bgr = Detector(DetectorSettings(path, classes={"car": "car"}, channels="bgr"))
    assert bgr.detect(red) == []
    assert [d.score for d in bgr.detect(blue)] == [pytest.approx(1.0)]


def test_a_dynamic_input_gets_the_configured_size(tmp_path: Path) -> None:
    path = size_model(tmp_path / "dyn.onnx")
    det = Detector(DetectorSettings(path, classes={"car": "car"}, input_size=(256, 192)))
    assert det.input_size == (256, 192)
    # The model draws the centre half of what it is fed; undone, that is the frame's centre
    # half when the frame has the input's shape, and narrower when it was letterboxed.
    [d] = det.detect(frame(512, 384))
    assert approx(d.box, (0.25, 0.25, 0.75, 0.75))
    [d] = det.detect(frame(384, 384))  # scale 0.5, 192x192 at x = 32..224
    assert approx(d.box, ((64 - 32) / 192, 0.25, (192 - 32) / 192, 0.75))
    # A fixed size wins over the setting.
    out = v8([[160, 160, 100, 50, 0, 0, 0.9, 0, 0, 0, 0]])
    fixed = build(tmp_path / "fixed.onnx", {"output0": out})
    assert Detector(DetectorSettings(fixed, labels=COCO_FEW, input_size=(64, 64))).input_size == (
        320,
        320,
    )


def dynamic_rows_model(path: Path, rows: npt.NDArray[np.float32], axis: int) -> Path:
    """``rows`` (shape ``[1, A, B]``) with dimension ``axis`` dynamic, as in a dynamic
    export: its length is the batch (dynamic, 1 here) times its length in ``rows``, so
    onnxruntime cannot know it before a run."""
    nodes = [
        helper.make_node("Shape", ["images"], ["dims"]),
        helper.make_node("Gather", ["dims", "zero_i"], ["batch"]),
        helper.make_node("Mul", ["batch", "length"], ["end"]),
        helper.make_node("Slice", ["rows", "zero_i", "end", "axis"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(rows, "rows"),
        numpy_helper.from_array(np.asarray([0], np.int64), "zero_i"),
        numpy_helper.from_array(np.asarray([rows.shape[axis]], np.int64), "length"),
        numpy_helper.from_array(np.asarray([axis], np.int64), "axis"),
    ]
    dims: list[Dim] = list(rows.shape)
    dims[axis] = "candidates"
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, dims)
    return _save(path, nodes, inits, ("n", 3, 320, 320), TensorProto.FLOAT, [out])


def test_a_dynamic_dimension_is_the_candidates(tmp_path: Path) -> None:
    # C = 7, and YOLOv5 [1, N, 12] with N = 11 = 4 + C: [1, 11, 12] reads as v8 or v5 alike,
    # and by size it would be v8. Only the dynamic N tells it is v5.
    rows = np.zeros((1, 11, 12), np.float32)
    rows[0, 0, :5] = [160, 160, 100, 50, 1.0]
    rows[0, 0, 5 + 2] = 0.9  # car
    fixed = build(tmp_path / "fixed.onnx", {"output0": rows})
    assert Detector(DetectorSettings(fixed, labels=COCO_FEW)).kind == "yolov8"  # the rule's limit
    path = dynamic_rows_model(tmp_path / "dyn.onnx", rows, axis=1)
    det = Detector(DetectorSettings(path, labels=COCO_FEW))
    assert det.kind == "yolov5"
    [d] = det.detect(frame(320, 320))
    assert d.label == "car"
    assert approx(d.box, (110 / 320, 135 / 320, 210 / 320, 185 / 320))
    # Ultralytics' dynamic export, [1, 4 + C, anchors], with labels that do not fit.
    v8_path = dynamic_rows_model(tmp_path / "dyn8.onnx", v8([[160, 160, 100, 50, 0, 0, 0.9]]), 2)
    assert Detector(DetectorSettings(v8_path, labels=COCO_FEW[:3])).kind == "yolov8"
    bad(
        v8_path,
        r"\[1, 4 \+ C, N\] \(YOLOv8\) with 7 channels, but 2 labels need 6",
        labels=("a", "b"),
    )


def test_grey_frames_and_wrong_images(tmp_path: Path) -> None:
    out = v8([[160, 160, 100, 50, 0, 0, 0.9, 0, 0, 0, 0]])
    det = Detector(DetectorSettings(build(tmp_path / "m.onnx", {"output0": out}), labels=COCO_FEW))
    gray = np.full((320, 320), 90, np.uint8)
    assert [d.label for d in det.detect(gray)] == ["car"]
    with pytest.raises(ValueError, match="BGR uint8"):
        det.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="BGR uint8"):
        det.detect(np.zeros((10, 10, 4), np.uint8))


# ---- SSD -----------------------------------------------------------------------------------


def test_ssd_raw_boxes_and_scores(tmp_path: Path) -> None:
    labels = ("background", "person", "car")
    boxes = [[[0.1, 0.2, 0.5, 0.6], [0.6, 0.6, 0.9, 0.9], [0.1, 0.2, 0.5, 0.62]]]
    # Box 0: background is higher than car, but only mapped classes compete.
    scores = [[[0.9, 0.1, 0.5], [0.1, 0.8, 0.1], [0.1, 0.1, 0.45]]]
    path = build(tmp_path / "ssd.onnx", {"boxes": boxes, "scores": scores})
    det = Detector(DetectorSettings(path, labels=labels))
    assert det.kind == "ssd"
    assert not det.letterbox  # TF SSD is trained on stretched frames
    got = det.detect(frame(640, 360))
    assert [(d.label, round(d.score, 5)) for d in got] == [("person", 0.8), ("car", 0.5)]
    assert approx(got[1].box, (0.2, 0.1, 0.6, 0.5))  # (y0, x0, y1, x1) read as TF writes it
    xyxy = Detector(DetectorSettings(path, labels=labels, box_order="xyxy"))
    assert approx(xyxy.detect(frame(640, 360))[1].box, (0.1, 0.2, 0.5, 0.6))
    # Letterboxed: 640x360 into 320x320 is 320x180 at y = 70..250.
    boxed = Detector(DetectorSettings(path, labels=labels, resize="letterbox"))
    y0, y1 = (0.1 * 320 - 70) / 180, (0.5 * 320 - 70) / 180
    assert approx(boxed.detect(frame(640, 360))[1].box, (0.2, max(0.0, y0), 0.6, y1))


def test_ssd_post_processed_uint8_nhwc_like_the_model_zoo(tmp_path: Path) -> None:
    labels_file = tmp_path / "coco.txt"
    labels_file.write_text("???\nperson\nbicycle\ncar\nmotorcycle\n")
    outputs: dict[str, Any] = {
        "detection_boxes": [[[0.1, 0.1, 0.4, 0.3], [0.5, 0.5, 0.9, 0.8], [0.0, 0.0, 0.2, 0.2]]],
        "detection_classes": [[3.0, 4.0, 1.0]],
        "detection_scores": [[0.9, 0.7, 0.95]],
        "num_detections": [2.0],  # the third row is padding
    }
    path = build(tmp_path / "zoo.onnx", outputs, shape=("n", "h", "w", 3), elem=TensorProto.UINT8)
    det = Detector(DetectorSettings(path, labels_file=labels_file, input_size=(300, 300)))
    assert det.kind == "ssd_post"
    assert det.labels[:2] == ("???", "person")
    got = det.detect(frame(300, 300))
    assert [(d.label, round(d.score, 5)) for d in got] == [("car", 0.9), ("two_wheeler", 0.7)]
    assert approx(got[0].box, (0.1, 0.1, 0.3, 0.4))
    # Padding rows stay out even at a threshold of 0.
    zero = Detector(DetectorSettings(path, labels_file=labels_file, score_threshold=0.0))
    assert len(zero.detect(frame(300, 300))) == 2


def test_ssd_classes_as_integers(tmp_path: Path) -> None:
    path = build(tmp_path / "int.onnx", {"boxes": [[[0.1, 0.1, 0.4, 0.3]]], "scores": [[0.8]]})
    model = onnx.load(str(path))  # and int64 class ids, as some exports give them
    model.graph.initializer.append(numpy_helper.from_array(np.asarray([[2]], np.int64), "cls_c"))
    model.graph.node.append(helper.make_node("Identity", ["cls_c"], ["classes"]))
    model.graph.output.append(helper.make_tensor_value_info("classes", TensorProto.INT64, [1, 1]))
    onnx.save(model, str(path))
    det = Detector(DetectorSettings(path, labels=("background", "person", "car")))
    assert det.kind == "ssd_post"
    [d] = det.detect(frame(320, 320))
    assert d.label == "car"
    assert d.score == pytest.approx(0.8)


# ---- models it cannot use ------------------------------------------------------------------


def bad(path: Path, match: str, **kw: object) -> None:
    with pytest.raises(DetectorError, match=match) as err:
        Detector(DetectorSettings(path, **kw))  # type: ignore[arg-type]
    assert str(path) in str(err.value)


def test_missing_file_and_text_file(tmp_path: Path) -> None:
    bad(tmp_path / "none.onnx", "no such file", labels=COCO_FEW)
    text = tmp_path / "labels.onnx"
    text.write_text("person\ncar\n")
    bad(text, "not a model onnxruntime can load", labels=COCO_FEW)


def test_bad_inputs(tmp_path: Path) -> None:
    out = {"output0": v8([[160, 160, 100, 50, 0, 0, 0.9, 0, 0, 0, 0]])}
    bad(
        build(tmp_path / "r3.onnx", out, shape=(1, 320, 320)),
        r"rank 4 .*\[1, 320, 320\]",
        labels=COCO_FEW,
    )
    bad(
        build(tmp_path / "c1.onnx", out, shape=(1, 1, 320, 320)),
        r"3 colour channels.*\[1, 1, 320, 320\]",
        labels=COCO_FEW,
    )
    bad(build(tmp_path / "b4.onnx", out, shape=(4, 3, 320, 320)), "batch of 1", labels=COCO_FEW)
    bad(
        build(tmp_path / "f64.onnx", out, elem=TensorProto.FLOAT16),
        r"float32 or uint8 .*tensor\(float16\)",
        labels=COCO_FEW,
    )


def test_bad_outputs_and_labels(tmp_path: Path) -> None:
    out = {"output0": v8([[160, 160, 100, 50, 0, 0, 0.9, 0, 0, 0, 0]])}
    yolo = build(tmp_path / "y.onnx", out)
    bad(
        yolo,
        r"2 labels need \[1, 6, N\] .* or \[1, N, 7\] .*output0 \[1, 11, 1\]",
        labels=("a", "b"),
    )
    bad(yolo, "no labels")
    bad(yolo, "not both", labels=COCO_FEW, labels_file=tmp_path / "x.txt")
    bad(yolo, "within 0..1", labels=COCO_FEW, score_threshold=1.5)
    bad(yolo, "SSD: expected boxes", labels=COCO_FEW, format="ssd")
    flat = build(tmp_path / "flat.onnx", {"output0": np.zeros((1, 10), np.float32)})
    bad(flat, r"cannot tell the format.*output0 \[1, 10\]", labels=COCO_FEW)
    ssd = build(tmp_path / "s.onnx", {"boxes": np.zeros((1, 5, 4)), "scores": np.zeros((1, 5, 3))})
    bad(ssd, r"scores \[1, 5, 7\]", labels=COCO_FEW)
    with pytest.raises(DetectorError, match="cannot read the labels file"):
        read_labels(tmp_path / "missing.txt")


# ---- the import ----------------------------------------------------------------------------


def test_onnxruntime_is_imported_only_by_a_detector(tmp_path: Path) -> None:
    path = build(tmp_path / "m.onnx", {"output0": v8([[160, 160, 100, 50, 0, 0, 0.9, 0, 0, 0, 0]])})
    code = (
        "import importlib, pkgutil, sys\n"
        "import tepi.drivers.camera as cam\n"
        "import tepi.gateway.runtime\n"
        "for m in pkgutil.iter_modules(cam.__path__):\n"
        "    importlib.import_module(f'tepi.drivers.camera.{m.name}')\n"
        "print('onnxruntime' in sys.modules)\n"
        "from pathlib import Path\n"
        "from tepi.drivers.camera.detector import Detector, DetectorSettings\n"
        f"Detector(DetectorSettings(Path({str(path)!r}), labels={COCO_FEW!r}))\n"
        "print('onnxruntime' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
