"""Tiny ONNX models for the tests, built with onnx's helpers, whose outputs are known: the
detector's own tests and the camera analytics' tests with a detector use them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

Dim = int | str


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
    nodes = [*mean_nodes(elem), helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
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
    return save_model(path, nodes, inits, shape, elem, outs, metadata)


def mean_nodes(elem: int) -> list[onnx.NodeProto]:
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


def save_model(
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


def v8(rows: Sequence[Sequence[float]]) -> npt.NDArray[np.float32]:
    """YOLOv8's ``[1, 4 + C, N]`` from rows ``cx, cy, w, h, class scores...``."""
    return np.asarray(rows, np.float32).T[None]
