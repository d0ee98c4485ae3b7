"""ONNX ``GRU`` as ``gru``: every direction, both ``linear_before_reset`` forms, with and without
bias / initial state, batch-major, against onnxruntime through the interpreter, the export and the
CPU build (the onnx wheel's six GRU node cases check the interpreter against ONNX's outputs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.errors import UnsupportedOpError
from mcopt.onnx_io import import_model
from mcopt.testing.routes import assert_routes_match, outputs_by_route

pytest.importorskip("onnxruntime")

T, B, F, H = 5, 2, 6, 4


def _gru_model(direction: str, bias: bool, state: bool, lbr: int, layout: int = 0,
               **attrs: object) -> onnx.ModelProto:  # fmt: skip
    d = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(len(direction) + 2 * bias + state + 5 * lbr)
    inits = [numpy_helper.from_array(rng.standard_normal((d, 3 * H, F)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((d, 3 * H, H)).astype(np.float32), "R")]  # fmt: skip
    ins = ["x", "W", "R", "B" if bias else ""]
    if bias:
        inits.append(
            numpy_helper.from_array(rng.standard_normal((d, 6 * H)).astype(np.float32), "B")
        )
    x_shape = [B, T, F] if layout else [T, B, F]
    graph_ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    if state:
        ins += ["", "h0"]
        h_shape = [B, d, H] if layout else [d, B, H]
        graph_ins.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, h_shape))
    node = helper.make_node("GRU", ins, ["y", "y_h"], hidden_size=H, direction=direction,
                            linear_before_reset=lbr, layout=layout, **attrs)  # fmt: skip
    graph = helper.make_graph(
        [node], "gru", graph_ins,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "y_h")],
        initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize(
    "direction, bias, state, lbr, layout",
    [
        ("forward", True, False, 0, 0),
        ("forward", True, True, 1, 0),
        ("reverse", False, True, 0, 0),
        ("bidirectional", True, True, 1, 0),
    ],
)
def test_gru_matches_onnxruntime(
    direction: str, bias: bool, state: bool, lbr: int, layout: int
) -> None:
    m = _gru_model(direction, bias, state, lbr, layout)
    rng = np.random.default_rng(9)
    x_shape = (B, T, F) if layout else (T, B, F)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    if state:
        d = 2 if direction == "bidirectional" else 1
        feeds["h0"] = rng.standard_normal((B, d, H) if layout else (d, B, H)).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, feeds, passes=["cleanup"]), rtol=1e-5, atol=1e-5)


def test_batch_major_gru_build_matches_the_interpreter() -> None:
    """``layout=1`` (onnxruntime's CPU GRU refuses it): the CPU build against the interpreter,
    which the onnx wheel's ``test_gru_batchwise`` case checks against ONNX's outputs."""
    pytest.importorskip("tvm")
    from mcopt.interpreter import run
    from mcopt.targets.relax.builder import build

    g = import_model(_gru_model("bidirectional", True, True, 0, layout=1))
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((B, T, F)).astype(np.float32),
             "h0": rng.standard_normal((B, 2, H)).astype(np.float32)}  # fmt: skip
    for got, want in zip(build(g, "cpu").run(feeds), run(g, feeds)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "attrs, fragment",
    [({"clip": 1.0}, "clip is not imported"),
     ({"activations": ["Relu", "Tanh"]}, "activations")],
)  # fmt: skip
def test_gru_refusals_are_one_line(attrs: dict, fragment: str) -> None:
    with pytest.raises(UnsupportedOpError) as e:
        import_model(_gru_model("forward", True, False, 0, **attrs))
    assert fragment in str(e.value) and "\n" not in str(e.value)
