"""ONNX ops imported as a few mcopt ops each (``onnx_io/import_composed.py``): ``CastLike``,
``Mean``, ``SpaceToDepth``, ``Celu``, ``ThresholdedRelu``, ``LpNormalization``,
``MeanVarianceNormalization``, ``GroupNormalization`` — every route (interpreter, CPU build,
export) against onnxruntime. The onnx wheel's node cases check them against ONNX's own outputs
(tests/test_onnx_backend_models.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.testing.routes import assert_routes_match, outputs_by_route

pytest.importorskip("onnxruntime")
F = TensorProto.FLOAT


def _model(nodes, shape, outs, inits=(), opset=18):  # type: ignore[no-untyped-def]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F, shape)],
        [helper.make_tensor_value_info(o, F, None) for o in outs], list(inits),
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _routes(m, shape):  # type: ignore[no-untyped-def]
    pytest.importorskip("tvm")
    x = (np.random.default_rng(0).standard_normal(shape) * 2).astype(np.float32)
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-5)


def test_space_to_depth_stem() -> None:
    """A space-to-depth stem (YOLOv2's reorg, TResNet / some mobile stems): then a conv."""
    w = numpy_helper.from_array(
        np.random.default_rng(1).standard_normal((8, 12, 3, 3)).astype(np.float32) / 6, "w"
    )
    nodes = [
        helper.make_node("SpaceToDepth", ["x"], ["s"], blocksize=2),
        helper.make_node("Conv", ["s", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    _routes(_model(nodes, [1, 3, 16, 12], ["y", "s"], [w]), [1, 3, 16, 12])


def test_group_norm_and_activations() -> None:
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias"),
        numpy_helper.from_array(np.float16(1.0), "half"),
    ]
    nodes = [
        helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["g"], num_groups=4),
        helper.make_node("Celu", ["g"], ["c"], alpha=0.7),
        helper.make_node("ThresholdedRelu", ["g"], ["t"], alpha=0.3),
        helper.make_node("Mean", ["c", "t", "g"], ["m"]),
        helper.make_node("LpNormalization", ["m"], ["l"], axis=1, p=2),
        helper.make_node("MeanVarianceNormalization", ["l"], ["v"], axes=[0, 2, 3]),
        helper.make_node("CastLike", ["v", "half"], ["h"]),
        helper.make_node("Cast", ["h"], ["y"], to=F),
    ]
    _routes(_model(nodes, [2, 8, 5, 6], ["y"], inits, opset=21), [2, 8, 5, 6])
