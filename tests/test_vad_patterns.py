"""What Silero VAD's ONNX export (the silero-vad wheel) needed: ``Gather`` of constant indices from
a computed tensor (its LSTM state split as ``state[0]`` / ``state[1]``), ``Constant`` nodes sharing
one name (onnxruntime loads them: they become initializers), and a conv with one output channel
on a single pixel (its last layer) — each against onnxruntime through the interpreter, the export
and the CPU build; uneven gather indices are a one-line error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.errors import UnsupportedOpError
from mcopt.onnx_io import import_model
from mcopt.testing.routes import assert_routes_match, outputs_by_route

ort = pytest.importorskip("onnxruntime")


def _model(
    nodes: list[onnx.NodeProto], x_shape: list[int], outs: list[str], inits=()
) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes, "vad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        initializer=list(inits),
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


def _const(name: str, value: np.ndarray, node_name: str = "") -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=node_name,
                            value=numpy_helper.from_array(value))  # fmt: skip


def test_gather_of_a_computed_tensor_matches_onnxruntime() -> None:
    """Scalar indices (axis 0, and a negative one on axis 1), evenly spaced ones (step 2) and a
    descending run; the index tensors are Constant nodes that share one name."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        _const("i0", np.array(0, np.int64), "anon"),
        _const("i1", np.array(-1, np.int64), "anon"),
        _const("i2", np.array([0, 2, 4], np.int64), "anon"),
        _const("i3", np.array([3, 2, 1], np.int64), "anon"),
        helper.make_node("Gather", ["r", "i0"], ["h"], axis=0),
        helper.make_node("Gather", ["r", "i1"], ["c"], axis=1),
        helper.make_node("Gather", ["r", "i2"], ["e"], axis=2),
        helper.make_node("Gather", ["r", "i3"], ["d"], axis=2),
    ]
    m = _model(nodes, [2, 3, 6], ["h", "c", "e", "d"])
    x = np.random.default_rng(0).standard_normal((2, 3, 6)).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-6, atol=1e-6)


def test_uneven_gather_is_a_one_line_error() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), _const("i", np.array([0, 1, 3], np.int64)),
             helper.make_node("Gather", ["r", "i"], ["y"], axis=1)]  # fmt: skip
    with pytest.raises(UnsupportedOpError) as e:
        import_model(_model(nodes, [1, 5], ["y"]))
    assert "not evenly spaced" in str(e.value) and "\n" not in str(e.value)


def test_duplicate_names_of_other_nodes_still_refused() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="twin"),
             helper.make_node("Neg", ["a"], ["y"], name="twin")]  # fmt: skip
    with pytest.raises(Exception, match="two nodes are named 'twin'"):
        import_model(_model(nodes, [1, 4], ["y"]))


def test_one_channel_conv_on_one_pixel_matches_onnxruntime() -> None:
    """Silero VAD's last layer: 128 channels of one pixel -> 1 channel (+ sigmoid)."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((1, 128, 1, 1)).astype(np.float32) / 8, "w")
    b = numpy_helper.from_array(rng.standard_normal(1).astype(np.float32), "b")
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Conv", ["r", "w", "b"], ["c"]),
             helper.make_node("Sigmoid", ["c"], ["y"])]  # fmt: skip
    m = _model(nodes, [1, 128, 1, 1], ["y"], [w, b])
    x = rng.standard_normal((1, 128, 1, 1)).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-6)
