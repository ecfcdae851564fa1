"""The optional object detector: an ONNX model run with onnxruntime on the CPU.

A camera with a ``detector`` gets classes and boxes from a model, at a low rate (about one
frame a second), in place of background subtraction. tepi ships no model and downloads none:
the file comes from the user's config. onnxruntime is an optional dependency (the
``detector`` extra, ``pip install 'tepi[detector]'``) and is imported only when a
:class:`Detector` is built, so an agent without a model never loads it.

Everything here is synchronous: :meth:`Detector.detect` runs in the camera's worker thread,
never on the event loop. onnxruntime releases the GIL while the model runs.

**Settings** (:class:`DetectorSettings`; the names a config would use)::

    model: /var/lib/tepi/models/yolov8n-320.onnx   # required; tepi ships none
    format: auto             # yolo | ssd | auto (from the outputs' shapes)
    labels_file: coco.txt    # or labels: [person, bicycle, ...]; or neither: the model's own
    classes:                 # model label -> tepi class; a label not here is dropped
      {bicycle: two_wheeler, motorcycle: two_wheeler, car: car, bus: bus_truck,
       truck: bus_truck, person: person}       # the default
    score_threshold: 0.4     # a box's score must reach this (0..1)
    iou_threshold: 0.45      # NMS drops a box overlapping a better one by more (0..1)
    threads: 1               # onnxruntime's intra-op threads
    input_size: [320, 320]   # width, height fed to a model whose input size is dynamic
    resize: auto             # letterbox | stretch | auto (letterbox for YOLO, else stretch)
    box_order: yxyx          # an SSD model's box coordinates: yxyx (TF) or xyxy
    channels: rgb            # rgb | bgr, what the model was trained on
    max_detections: 100      # the best this many boxes a frame

A YOLO model comes from Ultralytics' exporter, for example ``yolo export model=yolov8n.pt
format=onnx imgsz=320`` (which writes the labels into the model; Ultralytics' weights are
AGPL-3.0, which a deployment must respect); 320x320 is the size this module's figures are
for. An SSD-MobileNet from the TF Object Detection API converted with tf2onnx, or the ONNX
model zoo's, works as it is.

**Input.** The model has one input of rank 4, in either layout:

- ``NCHW`` ``[1, 3, H, W]`` or ``NHWC`` ``[1, H, W, 3]`` (the layout is where the 3 is);
- ``H`` and ``W`` fixed, or dynamic (then :attr:`DetectorSettings.input_size` is used);
  the batch is 1 or dynamic;
- element type ``float32``, fed RGB scaled to 0..1, or ``uint8``, fed RGB 0..255 (TF
  exports such as SSD-MobileNet take uint8 NHWC). No mean or deviation is subtracted: a
  model that wants it has it in its graph. ``channels: bgr`` feeds BGR instead.

The frame (BGR, any size) is fitted to the input by a **letterbox**: scaled by the same
factor on both axes until it fits, centred, the border filled with grey 114, as YOLO models
are trained; or by a plain **stretch** to the input size, as TF SSD models are trained
(``resize: auto`` picks letterbox for YOLO and stretch for SSD). The scale and the padding are
kept and undone, so every box comes back normalised to the original frame: ``(x0, y0, x1,
y1)`` in 0..1, y down (:mod:`tepi.drivers.camera.geometry`), clipped to the frame.

**Output formats** (``format: auto`` decides from the outputs of one run on a blank frame at
load):

- **YOLO**, one output of rank 3, boxes ``(cx, cy, w, h)`` in input pixels:

  - YOLOv5 (and v7): ``[1, N, 5 + C]``, each row ``cx, cy, w, h, objectness`` then ``C``
    class scores; a box's score is objectness x class score;
  - YOLOv8 and v11 (Ultralytics): ``[1, 4 + C, N]``, each column ``cx, cy, w, h`` then
    ``C`` class scores, no objectness.

  Which one, from the two dimensions ``A`` and ``B`` of ``[1, A, B]``: a dimension that is
  dynamic is ``N``; else, with ``C`` labels, ``A == 4 + C`` means v8 and ``B == 5 + C`` means
  v5; if both hold, the larger dimension is ``N`` (every real export has many more candidates
  than classes: 8400 or 25200 against 80); if neither, the labels do not belong to the model
  and it is refused.
- **SSD**, several outputs, found by name (``box``, ``score``/``conf``, ``class``/``label``,
  ``num`` in the name) or else by shape:

  - raw: ``boxes [1, N, 4]`` and ``scores [1, N, C]`` (one score per class, often with a
    background class at index 0); tepi does the non-max suppression;
  - post-processed (the TF Object Detection API's exports, the ONNX model zoo's
    SSD-MobileNet): ``detection_boxes [1, N, 4]``, ``detection_classes [1, N]`` (class ids,
    as floats or ints), ``detection_scores [1, N]`` and optionally ``num_detections [1]``
    (only the first ``num`` rows count).

  Boxes are normalised to the model input, in TF's order ``(y0, x0, y1, x1)`` by default;
  ``box_order: xyxy`` reads ``(x0, y0, x1, y1)``.

**Labels.** ``labels`` (a list) or ``labels_file`` (one per line) names class index ``i`` as
the model emits it: for YOLO the position among the ``C`` class scores, for SSD the class id
(so an SSD model with a background class at 0 has a first line like ``background``). With
neither, the labels come from the model's own metadata (``names``, which Ultralytics exports
write). ``classes`` then maps those labels to tepi's classes (``two_wheeler``, ``car``,
``bus_truck``, ``person`` by default, from the COCO names); **a label that is not mapped is
dropped**, and only mapped classes compete for a box's best class, so a high background score
never hides a car.

**Post-processing.** Candidates with a score at or above ``score_threshold`` are kept (at
most the best :data:`MAX_CANDIDATES`, which bounds the suppression's cost), then non-max
suppression runs per tepi class (:func:`nms`: a box is dropped when it overlaps a better box of
the same class by an IoU above ``iou_threshold``), then the best ``max_detections`` remain.
Two model classes mapped to one tepi class (bicycle and motorcycle) suppress each other.

**CPU cost.** A frame costs what the model's FLOPs cost, run on one core (``threads: 1``,
onnxruntime's intra-op threads, with its spinning turned off so that an idle pool does not
burn a core shared with the sensors; more threads shorten a frame, they do not make it
cheaper). bench/detector.py builds models of a nano detector's size and measures them: on
this project's x86_64 machine 0.76 GFLOP at 320x320 takes about 9 ms of CPU a frame, 1% of
one core at one frame a second, and twice the FLOPs twice the time; letterbox, decoding and
NMS are 1-3 ms of it. A Raspberry Pi 4 core is roughly ten times slower at float
convolutions. onnxruntime adds about 18 MB of memory, the session about as much again for
such a model. Figures in docs/performance.md.

**Installing.** ``pip install -c constraints.txt 'tepi[detector]'`` (onnxruntime 1.32 has
wheels for aarch64 and x86_64, manylinux_2_28: Debian 12 and Raspberry Pi OS bookworm). The
offline bundle (systemd/bundle.sh) carries tepi's runtime dependencies only, not this extra.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn

import cv2
import numpy as np
import numpy.typing as npt

from tepi.core.errors import TepiError
from tepi.drivers.camera.geometry import Box, Detection

Format = Literal["yolo", "ssd", "auto"]
BoxOrder = Literal["yxyx", "xyxy"]
Resize = Literal["letterbox", "stretch", "auto"]
FloatArray = npt.NDArray[np.float32]

COCO_CLASSES: Mapping[str, str] = MappingProxyType(
    {
        "bicycle": "two_wheeler",
        "motorcycle": "two_wheeler",
        "car": "car",
        "bus": "bus_truck",
        "truck": "bus_truck",
        "person": "person",
    }
)
"""The default ``classes``: COCO's names (YOLO and SSD-MobileNet exports) to tepi's classes."""

MAX_CANDIDATES = 300
"""Boxes above the score threshold that go on to suppression, the best first: NMS costs
O(n^2) time and memory, and a badly chosen threshold must not make one frame take seconds.
Three times the default ``max_detections`` leaves room for the boxes NMS drops."""

MAX_INPUT_SIDE = 4096
LETTERBOX_FILL = 114  # the grey YOLO trains its letterbox with


class DetectorError(TepiError):
    """A model that cannot be used, or a run that failed; the message says what was found
    and what was expected. ``model`` is the file."""

    def __init__(self, model: str, detail: str) -> None:
        self.model = model
        self.detail = detail
        super().__init__(f"detector model {model}: {detail}")


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """What the detector needs to know about a model (docs in the module docstring)."""

    model: Path
    format: Format = "auto"
    labels: tuple[str, ...] = ()
    labels_file: Path | None = None
    classes: Mapping[str, str] = field(default_factory=lambda: dict(COCO_CLASSES))
    score_threshold: float = 0.4
    iou_threshold: float = 0.45
    threads: int = 1
    """onnxruntime's intra-op threads: 1 leaves the other cores to the sensors and cameras."""
    input_size: tuple[int, int] = (320, 320)
    """``(width, height)`` fed to a model whose input size is dynamic; ignored otherwise."""
    resize: Resize = "auto"
    box_order: BoxOrder = "yxyx"
    """The order of an SSD model's box coordinates."""
    channels: Literal["rgb", "bgr"] = "rgb"
    max_detections: int = 100


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    nchw: bool
    width: int
    height: int
    uint8: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """How the outputs decode: ``kind`` and the index of each output used."""

    kind: Literal["yolov5", "yolov8", "ssd", "ssd_post"]
    boxes: int = 0
    scores: int = 0
    classes: int | None = None
    num: int | None = None


def nms(boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float) -> npt.NDArray[np.intp]:
    """Greedy non-max suppression: the indices of the boxes kept, best score first.

    ``boxes`` is ``(N, 4)`` as ``(x0, y0, x1, y1)`` and ``scores`` ``(N,)``. The best box is
    kept and every box that overlaps it with an IoU strictly above ``iou_threshold`` is
    dropped; then the best of the rest, and so on. Equal scores keep the earlier box first (a
    stable order), so the result does not depend on the sort's mood. An empty box has an IoU
    of 0 with everything.

    The IoU of every pair is computed at once (``N`` is at most :data:`MAX_CANDIDATES` here,
    so the matrix stays under a megabyte), which leaves Python one cheap step per box.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"nms: {len(b)} boxes but {len(s)} scores")
    order = np.argsort(-s, kind="stable")
    b = b[order]
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    iw = np.clip(np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0), 0, None)
    ih = np.clip(np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0), 0, None)
    inter = iw * ih
    union = area[:, None] + area - inter
    over = inter > iou_threshold * union  # IoU > threshold, without dividing by 0
    over &= union > 0
    dropped = np.zeros(len(b), dtype=bool)
    keep: list[int] = []
    for i in range(len(b)):
        if not dropped[i]:
            keep.append(i)
            dropped |= over[i]
    return order[np.asarray(keep, dtype=np.intp)]


def read_labels(path: Path) -> tuple[str, ...]:
    """A labels file: one label a line, line ``i`` naming class ``i`` (blank lines count)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DetectorError(str(path), f"cannot read the labels file: {err}") from err
    return tuple(line.strip() for line in text.splitlines())


class Detector:
    """One loaded model. Building it loads the session, checks the input and outputs and
    runs the model once on a blank frame (which also warms it up). :meth:`detect` keeps no
    state between calls and onnxruntime's ``run`` is thread-safe, so two worker threads may
    share a detector; each call then takes a core."""

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self._where = str(settings.model)
        if not 0 <= settings.score_threshold <= 1 or not 0 <= settings.iou_threshold <= 1:
            self._fail("score_threshold and iou_threshold must be within 0..1")
        if settings.threads < 1 or settings.max_detections < 1:
            self._fail("threads and max_detections must be at least 1")
        self._session = self._load()
        self._input = self._check_input()
        self.input_size = (self._input.width, self._input.height)
        self.labels = self._labels()
        # The class indices that map to a tepi class, and the tepi class of each.
        usable = [i for i, name in enumerate(self.labels) if name in settings.classes]
        self._usable = np.asarray(usable, dtype=np.intp)
        self._tepi_class = {i: settings.classes[self.labels[i]] for i in usable}
        ids = {c: n for n, c in enumerate(sorted(set(self._tepi_class.values())))}
        self._class_id = np.full(max(1, len(self.labels)), -1, np.intp)  # model -> tepi class
        for i, name in self._tepi_class.items():
            self._class_id[i] = ids[name]
        blank = np.zeros((self._input.height, self._input.width, 3), np.uint8)
        outputs = self._run(self._tensor(blank), at_load=True)
        self._plan = self._check_outputs([o.shape for o in outputs])
        fmt = "yolo" if self._plan.kind.startswith("yolo") else "ssd"
        letterbox = settings.resize == "letterbox" or (settings.resize == "auto" and fmt == "yolo")
        self.letterbox = letterbox
        self.kind = self._plan.kind

    # ---- loading and checking ----------------------------------------------------------

    def _fail(self, detail: str) -> NoReturn:
        raise DetectorError(self._where, detail)

    def _load(self) -> Any:
        path = self.settings.model
        if not path.is_file():
            self._fail("no such file (the model comes from the config: tepi ships none)")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.settings.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # A spinning pool keeps a core busy between frames; one frame a second needs none.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only: its warnings go to stderr, not our log
        try:
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's errors derive from Exception alone
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DetectorError(self._where, f"not a model onnxruntime can load: {first}") from err

    def _check_input(self) -> _Input:
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            self._fail(f"expected one input (an image), found {len(inputs)}: {names}")
        inp = inputs[0]
        shape = list(inp.shape)
        if len(shape) != 4:
            self._fail(f"expected an image input of rank 4 (NCHW or NHWC), found {shape}")
        if shape[1] == 3:
            nchw, (h, w) = True, shape[2:4]
        elif shape[3] == 3:
            nchw, (h, w) = False, shape[1:3]
        else:
            self._fail(f"expected 3 colour channels, [1, 3, H, W] or [1, H, W, 3], found {shape}")
        if isinstance(shape[0], int) and shape[0] != 1:
            self._fail(f"expected a batch of 1 (or a dynamic batch), found {shape}")
        types = {"tensor(float)": False, "tensor(uint8)": True}
        if inp.type not in types:
            self._fail(f"expected a float32 or uint8 input, found {inp.type}")
        width, height = self.settings.input_size
        if isinstance(w, int) and w > 0:
            width = w
        if isinstance(h, int) and h > 0:
            height = h
        if not (0 < width <= MAX_INPUT_SIDE and 0 < height <= MAX_INPUT_SIDE):
            self._fail(f"an input of {width}x{height}: expected 1..{MAX_INPUT_SIDE} a side")
        return _Input(inp.name, nchw, width, height, types[inp.type])

    def _labels(self) -> tuple[str, ...]:
        s = self.settings
        if s.labels and s.labels_file is not None:
            self._fail("give labels or labels_file, not both")
        if s.labels:
            return tuple(s.labels)
        if s.labels_file is not None:
            return read_labels(s.labels_file)
        names = self._session.get_modelmeta().custom_metadata_map.get("names")
        if names:
            try:
                parsed = ast.literal_eval(names)  # Ultralytics: "{0: 'person', ...}"
            except (ValueError, SyntaxError):
                parsed = None
            if isinstance(parsed, dict) and sorted(parsed) == list(range(len(parsed))):
                return tuple(str(parsed[i]) for i in range(len(parsed)))
            if isinstance(parsed, list):
                return tuple(str(n) for n in parsed)
        return self._fail("no labels: give labels or labels_file (the model names none)")

    def _check_outputs(self, shapes: list[tuple[int, ...]]) -> _Plan:
        names = [o.name for o in self._session.get_outputs()]
        found = ", ".join(f"{n} {list(s)}" for n, s in zip(names, shapes, strict=True))
        fmt = self.settings.format
        if fmt == "auto":
            if len(shapes) == 1 and len(shapes[0]) == 3:
                fmt = "yolo"
            elif len(shapes) > 1 and any(len(s) == 3 and s[-1] == 4 for s in shapes):
                fmt = "ssd"
            else:
                self._fail(
                    "cannot tell the format: expected one output [1, A, B] (YOLO) or boxes"
                    f" [1, N, 4] with scores (SSD), found {found}"
                )
        if fmt == "yolo":
            return self._yolo_plan(shapes[0], found)
        return self._ssd_plan(names, shapes, found)

    def _yolo_plan(self, shape: tuple[int, ...], found: str) -> _Plan:
        if len(shape) != 3 or shape[0] != 1:
            self._fail(f"YOLO: expected the first output [1, A, B], found {found}")
        a, b = shape[1], shape[2]
        c = len(self.labels)
        static = self._session.get_outputs()[0].shape
        dynamic_a = len(static) == 3 and not isinstance(static[1], int)
        dynamic_b = len(static) == 3 and not isinstance(static[2], int)
        if dynamic_a != dynamic_b:
            v8 = dynamic_b  # the dynamic one is N
        elif a == 4 + c and b == 5 + c:
            v8 = b > a  # both readings fit: N is the larger
        elif a == 4 + c or b == 5 + c:
            v8 = a == 4 + c
        else:
            self._fail(
                f"YOLO: {c} labels need [1, {4 + c}, N] (YOLOv8) or [1, N, {5 + c}] (YOLOv5),"
                f" found {found} (do the labels belong to this model?)"
            )
        channels, want = (a, 4 + c) if v8 else (b, 5 + c)
        if channels != want:
            layout = "[1, 4 + C, N] (YOLOv8)" if v8 else "[1, N, 5 + C] (YOLOv5)"
            self._fail(
                f"YOLO: read as {layout} with {channels} channels, but {c} labels need"
                f" {want}: found {found} (do the labels belong to this model?)"
            )
        return _Plan("yolov8" if v8 else "yolov5")

    def _ssd_plan(self, names: list[str], shapes: list[tuple[int, ...]], found: str) -> _Plan:
        roles: dict[str, int] = {}
        words = {"num": ("num",), "boxes": ("box",), "classes": ("class", "label")}
        words["scores"] = ("score", "conf")
        for i, name in enumerate(names):
            low = name.lower()
            for role, keys in words.items():
                if role not in roles and any(k in low for k in keys):
                    roles[role] = i
                    break
        taken = set(roles.values())
        for i, s in enumerate(shapes):  # unnamed outputs: by shape
            if i in taken:
                continue
            if len(s) == 3 and s[-1] == 4 and "boxes" not in roles:
                roles["boxes"] = i
            elif len(s) == 3 and "scores" not in roles:
                roles["scores"] = i
            elif len(s) <= 1 and "num" not in roles:
                roles["num"] = i
        if "boxes" not in roles or "scores" not in roles:
            self._fail(f"SSD: expected boxes [1, N, 4] and scores, found {found}")
        box, score = shapes[roles["boxes"]], shapes[roles["scores"]]
        if len(box) != 3 or box[0] != 1 or box[2] != 4:
            self._fail(f"SSD: expected boxes [1, N, 4], found {found}")
        n = box[1]
        if len(score) == 3:
            if score[:2] != (1, n) or score[2] != len(self.labels):
                self._fail(
                    f"SSD: expected scores [1, {n}, {len(self.labels)}] (one per label),"
                    f" found {found}"
                )
            return _Plan("ssd", roles["boxes"], roles["scores"])
        if "classes" not in roles or score != (1, n) or shapes[roles["classes"]] != (1, n):
            self._fail(
                f"SSD: expected scores [1, {n}, C], or classes and scores [1, {n}], found {found}"
            )
        return _Plan(
            "ssd_post", roles["boxes"], roles["scores"], roles["classes"], roles.get("num")
        )

    # ---- running -----------------------------------------------------------------------

    def _tensor(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
        x: npt.NDArray[Any] = rgb[None]
        if self._input.nchw:
            x = x.transpose(0, 3, 1, 2)
        if not self._input.uint8:
            x = x.astype(np.float32) * np.float32(1 / 255)
        return np.ascontiguousarray(x)

    def _run(self, tensor: npt.NDArray[Any], *, at_load: bool = False) -> list[FloatArray]:
        try:
            outputs = self._session.run(None, {self._input.name: tensor})
        except Exception as err:  # onnxruntime's errors derive from Exception alone
            what = "does not run on a blank frame" if at_load else "failed"
            shape = list(tensor.shape)
            raise DetectorError(self._where, f"the model {what} ({shape}): {err}") from err
        return [np.asarray(o) for o in outputs]

    def detect(self, image: npt.NDArray[np.uint8]) -> list[Detection]:
        """The objects in ``image`` (BGR, or grey, uint8, any size), best score first, with
        boxes normalised to ``image`` and labels mapped to tepi's classes."""
        if image.ndim == 2:
            image = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"detect: expected a BGR uint8 image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        fitted, scale_x, scale_y, pad_x, pad_y = self._fit(image)
        if self.settings.channels == "rgb":
            fitted = np.asarray(cv2.cvtColor(fitted, cv2.COLOR_BGR2RGB), np.uint8)
        outputs = self._run(self._tensor(fitted))
        boxes, scores, classes = self._decode(outputs)
        if not len(boxes):
            return []
        # Input pixels -> the original frame's pixels -> 0..1.
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pad_x) / (scale_x * w)
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - pad_y) / (scale_y * h)
        np.clip(boxes, 0.0, 1.0, out=boxes)
        real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, classes = boxes[real], scores[real], classes[real]
        tepi_classes = self._class_id[classes]
        kept: list[int] = []
        for cls in np.unique(tepi_classes):
            idx = np.flatnonzero(tepi_classes == cls)
            kept.extend(idx[nms(boxes[idx], scores[idx], self.settings.iou_threshold)])
        kept.sort(key=lambda i: (-scores[i], i))
        return [
            Detection(
                box=_box(boxes[i]),
                label=self._tepi_class[int(classes[i])],
                score=float(scores[i]),
            )
            for i in kept[: self.settings.max_detections]
        ]

    def _fit(
        self, image: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.uint8], float, float, float, float]:
        """The image at the input size, and the scale and padding to undo: input pixel
        ``x`` is original pixel ``(x - pad_x) / scale_x``."""
        h, w = image.shape[:2]
        iw, ih = self._input.width, self._input.height
        if not self.letterbox:
            out = cv2.resize(image, (iw, ih), interpolation=cv2.INTER_LINEAR)
            return np.asarray(out, np.uint8), iw / w, ih / h, 0.0, 0.0
        s = min(iw / w, ih / h)
        nw, nh = min(iw, max(1, round(w * s))), min(ih, max(1, round(h * s)))
        left, top = (iw - nw) // 2, (ih - nh) // 2
        canvas = np.full((ih, iw, 3), LETTERBOX_FILL, np.uint8)
        canvas[top : top + nh, left : left + nw] = cv2.resize(
            image, (nw, nh), interpolation=cv2.INTER_LINEAR
        )
        return canvas, nw / w, nh / h, float(left), float(top)

    def _decode(
        self, outputs: list[FloatArray]
    ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.intp]]:
        """Candidates above the score threshold: boxes ``(x0, y0, x1, y1)`` in input pixels,
        scores, and model class indices (only those mapped to a tepi class)."""
        plan, thr = self._plan, self.settings.score_threshold
        if plan.kind in ("yolov5", "yolov8"):
            rows = outputs[0][0].astype(np.float32)
            if plan.kind == "yolov8":
                rows, cls = rows.T, rows.T[:, 4:]
            else:
                cls = rows[:, 5:] * rows[:, 4:5]
            boxes = _cxcywh_to_xyxy(rows[:, :4])
            best, score = self._best(cls)
        else:
            raw = outputs[plan.boxes][0].astype(np.float32)
            if self.settings.box_order == "yxyx":
                raw = raw[:, [1, 0, 3, 2]]
            boxes = raw * np.asarray([self._input.width, self._input.height] * 2, dtype=np.float32)
            if plan.kind == "ssd":
                best, score = self._best(outputs[plan.scores][0].astype(np.float32))
            else:
                assert plan.classes is not None
                score = outputs[plan.scores][0].astype(np.float32)
                ids = np.rint(outputs[plan.classes][0]).astype(np.intp)
                valid = np.isin(ids, self._usable)
                if plan.num is not None:  # rows past num_detections are padding
                    valid[max(0, int(np.asarray(outputs[plan.num]).reshape(-1)[0])) :] = False
                score = np.where(valid, score, np.float32(-np.inf))
                best = ids
        keep = np.flatnonzero(score >= thr)
        if len(keep) > MAX_CANDIDATES:
            keep = keep[np.argsort(-score[keep], kind="stable")[:MAX_CANDIDATES]]
        return boxes[keep].copy(), score[keep], best[keep]

    def _best(self, cls: FloatArray) -> tuple[npt.NDArray[np.intp], FloatArray]:
        """Each row's best mapped class and its score (-inf when no class is mapped)."""
        if not len(self._usable):
            return np.zeros(len(cls), np.intp), np.full(len(cls), -np.inf, np.float32)
        sub = cls[:, self._usable]
        arg = np.argmax(sub, axis=1)
        return self._usable[arg], sub[np.arange(len(sub)), arg]


def _cxcywh_to_xyxy(b: FloatArray) -> FloatArray:
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    return np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], 1)


def _box(row: FloatArray) -> Box:
    x0, y0, x1, y1 = (float(v) for v in row)
    return (x0, y0, x1, y1)
