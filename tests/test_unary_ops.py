"""Elementwise ops of exported CNNs and transformers beyond the activations the kernels fuse
(Abs, Erf — GELU's exact form —, Log, Reciprocal, Floor, Ceil, Softplus, Softsign, Elu, Selu):
interpreted, exported and compiled for the CPU, against onnxruntime on the original ONNX."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.testing.routes import assert_routes_match, outputs_by_route

ort = pytest.importorskip("onnxruntime")

OPS = [("Abs", {}), ("Erf", {}), ("Floor", {}), ("Ceil", {}), ("Softplus", {}),
       ("Softsign", {}), ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Log", {}), ("Reciprocal", {})]  # fmt: skip


def _model():  # type: ignore[no-untyped-def]
    """Every op on x (Log / Reciprocal on |x| + 0.5), and GELU spelled out with Erf."""
    c = [numpy_helper.from_array(np.array(v, np.float32), k)
         for k, v in (("half", 0.5), ("one", 1.0), ("rs2", 1 / np.sqrt(2)))]  # fmt: skip
    nodes = [
        helper.make_node("Abs", ["x"], ["ax"]),
        helper.make_node("Add", ["ax", "half"], ["pos"]),
    ]
    outs = []
    for op, attrs in OPS:
        src = "pos" if op in ("Log", "Reciprocal") else "x"
        nodes.append(helper.make_node(op, [src], [op.lower()], **attrs))
        outs.append(op.lower())
    nodes += [
        helper.make_node("Mul", ["x", "rs2"], ["g0"]),
        helper.make_node("Erf", ["g0"], ["g1"]),
        helper.make_node("Add", ["g1", "one"], ["g2"]),
        helper.make_node("Mul", ["x", "g2"], ["g3"]),
        helper.make_node("Mul", ["g3", "half"], ["gelu"]),
    ]
    outs.append("gelu")
    graph = helper.make_graph(
        nodes, "unary", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], initializer=c,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_unary_ops_match_onnxruntime() -> None:
    m = _model()
    x = (np.random.default_rng(0).standard_normal((1, 4, 6, 6)) * 4).astype(np.float32)
    pytest.importorskip("tvm")
    routes = outputs_by_route(m, {"x": x}, passes=["cleanup"])
    assert_routes_match(routes, rtol=1e-5, atol=1e-5)


def test_log_softmax_head_matches_onnxruntime() -> None:
    """Gemm -> LogSoftmax (the classic PyTorch MNIST net's tail) and a LogSoftmax over axis 1 of a
    3-D tensor with large logits: interpreter, export and CPU build."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((10, 20)).astype(np.float32) * 30, "w")
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1),
        helper.make_node("LogSoftmax", ["logits"], ["y"], axis=1),
        helper.make_node("LogSoftmax", ["x"], ["z"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "z")],
        initializer=[w],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = (rng.standard_normal((1, 4, 5)) * 50).astype(np.float32)
    pytest.importorskip("tvm")
    routes = outputs_by_route(m, {"x": x}, passes=["cleanup"])
    for route, outs in routes.items():
        assert all(np.isfinite(o).all() for o in outs), route
    assert_routes_match(routes, rtol=1e-5, atol=1e-3)


def test_silu_and_sigmoid_match_onnxruntime() -> None:
    """SiLU spelled ``x * Sigmoid(x)`` after a conv (fused into its epilogue), on the input (its
    own kernel) and a Sigmoid head (YOLOX's objectness), with inputs far into both tails."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32) / 20, "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["cs"]),
        helper.make_node("Mul", ["c", "cs"], ["silu_conv"]),
        helper.make_node("Sigmoid", ["silu_conv"], ["head"]),
        helper.make_node("Sigmoid", ["x"], ["xs"]),
        helper.make_node("Mul", ["xs", "x"], ["silu_x"]),
    ]
    outs = ["head", "silu_conv", "silu_x"]
    graph = helper.make_graph(
        nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], initializer=[w],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = (rng.standard_normal((1, 4, 9, 9)) * 30).astype(np.float32)
    pytest.importorskip("tvm")
    routes = outputs_by_route(m, {"x": x}, passes=["cleanup"])
    assert_routes_match(routes, rtol=1e-5, atol=1e-5)
