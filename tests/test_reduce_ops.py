"""ReduceMax / ReduceMin / ReduceSum and ArgMax / ArgMin (a classifier's label output, CBAM-style
channel pooling): imported, interpreted, exported, compiled for the CPU and as training forms —
against onnxruntime on the original ONNX."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt import interpreter
from mcopt.onnx_io import import_model
from mcopt.testing.routes import assert_routes_match, outputs_by_route

ort = pytest.importorskip("onnxruntime")


def _model():  # type: ignore[no-untyped-def]
    """x (1, 6, 5, 4) -> channel max / min / sum maps, and the argmax / argmin (last of ties) of a
    conv's per-pixel scores over the channels."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 6, 1, 1)).astype(np.float32), "w")
    ax = numpy_helper.from_array(np.array([1], np.int64), "ax")
    nodes = [
        helper.make_node("ReduceMax", ["x", "ax"], ["mx"], keepdims=1),
        helper.make_node("ReduceMin", ["x", "ax"], ["mn"], keepdims=0),
        helper.make_node("ReduceSum", ["x", "ax"], ["sm"], keepdims=1),
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("ArgMax", ["c"], ["am"], axis=1, keepdims=0),
        helper.make_node("ArgMin", ["c"], ["an"], axis=-1, keepdims=1, select_last_index=1),
    ]
    outs = [("mx", TensorProto.FLOAT), ("mn", TensorProto.FLOAT), ("sm", TensorProto.FLOAT),
            ("am", TensorProto.INT64), ("an", TensorProto.INT64)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "reduce", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 5, 4])],
        [helper.make_tensor_value_info(n, t, None) for n, t in outs], initializer=[w, ax],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_reductions_and_arg_extremes_match_onnxruntime() -> None:
    m = _model()
    x = np.random.default_rng(1).standard_normal((1, 6, 5, 4)).astype(np.float32)
    x[0, :, 0, 0] = 1.0  # ties: select_last_index matters
    pytest.importorskip("tvm")
    routes = outputs_by_route(m, {"x": x}, passes=["cleanup"])
    assert_routes_match(routes, rtol=1e-5, atol=1e-5)


def test_training_forms() -> None:
    torch = pytest.importorskip("torch")
    from mcopt.train.module import to_torch

    m = _model()
    g = import_model(m)
    x = np.random.default_rng(2).standard_normal((1, 6, 5, 4)).astype(np.float32)
    got = to_torch(g)(torch.from_numpy(x))
    for a, b in zip(got, interpreter.run(g, [x])):
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-5, atol=1e-5)


def test_composed_reductions_and_mish_build() -> None:
    """ReduceL1 / ReduceL2 (an embedding normalized by its L2 norm) / ReduceSumSquare /
    ReduceLogSum / ReduceLogSumExp and Mish, spelled out of mcopt ops: every route (interpreter,
    CPU build, export) against onnxruntime."""
    pytest.importorskip("tvm")
    ax = numpy_helper.from_array(np.array([1], np.int64), "ax")
    nodes = [
        helper.make_node("Mish", ["x"], ["m"]),
        helper.make_node("ReduceL2", ["m", "ax"], ["n2"], keepdims=1),
        helper.make_node("Div", ["m", "n2"], ["unit"]),
        helper.make_node("ReduceL1", ["x", "ax"], ["n1"], keepdims=0),
        helper.make_node("ReduceSumSquare", ["x", "ax"], ["sq"], keepdims=1),
        helper.make_node("Abs", ["x"], ["ab"]),
        helper.make_node("ReduceLogSum", ["ab", "ax"], ["ls"], keepdims=0),
        helper.make_node("ReduceLogSumExp", ["x", "ax"], ["lse"], keepdims=0),
    ]
    outs = ["unit", "n1", "sq", "ls", "lse"]
    graph = helper.make_graph(
        nodes, "composed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 5])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs],
        initializer=[ax],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = (np.random.default_rng(1).standard_normal((2, 6, 5)) * 3).astype(np.float32)
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-5)
