"""What openWakeWord's ONNX models (the openwakeword 0.4.0 wheel) needed: a ``Clip`` whose lower
bound is computed (the log-mel's top-dB floor ``Clip(x, ReduceMax(x) - 80)``), TensorFlow's
``Max(LeakyRelu(conv), -0.4)`` (a clip, then the conv's leaky-ReLU epilogue with a floor), an
elementwise ``Max`` of two blocked tensors, ``GreaterOrEqual`` / ``LessOrEqual`` / ``Where``, and
an ``If`` on a run-time score (both branches and a select) — each against onnxruntime through the
interpreter, the export and the CPU build."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.errors import UnsupportedOpError
from mcopt.onnx_io import import_model
from mcopt.testing.routes import assert_routes_match, outputs_by_route

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(11)


def _model(nodes, inputs, outs, inits=(), opset: int = 13) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes, "oww", inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        initializer=list(inits),
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _c(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


@pytest.mark.parametrize("bound", ["min", "max", "both"])
def test_clip_with_a_computed_bound(bound: str) -> None:
    """``Clip(x, ReduceMax(x) - 80)`` (openWakeWord's melspectrogram) and the upper-bound /
    both-bounds forms (a constant other bound stays the clip's attribute)."""
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Sub", ["m", "k"], ["lo"]),
        helper.make_node("Add", ["m", "k"], ["hi"]),
    ]
    ins = {"min": ["x", "lo", "inf"], "max": ["x", "neg", "lo"], "both": ["x", "lo", "hi"]}
    nodes.append(helper.make_node("Clip", ins[bound], ["y"]))
    inits = [_c("k", 2.0), _c("inf", np.inf), _c("neg", -1.5)]
    m = _model(nodes, [_f("x", [1, 1, 5, 8])], ["y"], inits)
    x = (RNG.standard_normal((1, 1, 5, 8)) * 3).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-6, atol=1e-6)


def test_clip_with_a_computed_tensor_bound_is_a_one_line_error() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Clip", ["x", "r"], ["y"])]
    with pytest.raises(UnsupportedOpError) as e:
        import_model(_model(nodes, [_f("x", [1, 4])], ["y"]))
    assert "ONNX requires a scalar" in str(e.value) and "\n" not in str(e.value)


def _leaky_convs() -> onnx.ModelProto:
    """Two convs, each ``Max(LeakyRelu(conv(x)), -0.4)``, then ``Max`` / ``Min`` of the two
    (blocked tensors on both sides)."""
    w1 = _c("w1", RNG.standard_normal((16, 8, 3, 3)) / 6)
    w2 = _c("w2", RNG.standard_normal((16, 16, 1, 3)) / 6)
    b1, b2 = _c("b1", RNG.standard_normal(16)), _c("b2", RNG.standard_normal(16))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["l1"], alpha=0.2),
        helper.make_node("Max", ["l1", "floor"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[0, 1, 0, 1]),
        helper.make_node("LeakyRelu", ["c2"], ["l2"], alpha=0.2),
        helper.make_node("Max", ["floor", "l2"], ["a2"]),
        helper.make_node("Max", ["a1", "a2"], ["mx"]),
        helper.make_node("Mul", ["a1", "half"], ["h"]),
        helper.make_node("Min", ["mx", "h"], ["y"]),
    ]
    inits = [w1, w2, b1, b2, _c("floor", -0.4), _c("half", 0.5)]
    return _model(nodes, [_f("x", [1, 8, 10, 12])], ["y"], inits)


def test_max_of_leaky_relu_is_the_conv_epilogue() -> None:
    pytest.importorskip("tvm")
    import mcopt

    m = _leaky_convs()
    x = (RNG.standard_normal((1, 8, 10, 12)) * 4).astype(np.float32)
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-5)
    res = mcopt.optimize(m, target="cpu", measure=False, check=False)
    fused = [n for n in res.planned_graph.nodes if n.op == "fused_conv2d"]
    assert [(n.attrs["activation"], n.attrs["alpha"], n.attrs["clip_min"]) for n in fused] == [
        ("leaky_relu", pytest.approx(0.2), pytest.approx(-0.4))
    ] * 2
    ops = {n.op for n in res.planned_graph.nodes}
    assert not ops & {"leaky_relu", "clip"}, ops


def test_compare_and_where() -> None:
    nodes = [
        helper.make_node("GreaterOrEqual", ["x", "t"], ["ge"]),
        helper.make_node("LessOrEqual", ["x", "u"], ["le"]),
        helper.make_node("Where", ["ge", "x", "u"], ["w1"]),
        helper.make_node("Neg", ["x"], ["n"]),
        helper.make_node("Where", ["le", "n", "w1"], ["y"]),
    ]
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 1.0, 3.0]], np.float32)
    m = _model(nodes, [_f("x", [1, 6])], ["y"], [_c("t", 0.5), _c("u", -0.5)])
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=0, atol=0)


def _runtime_if(then_shape: int = 1) -> onnx.ModelProto:
    """openWakeWord's verifier: a score, and when it reaches 0.5 a second model's score."""
    then_g = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["t0"], axes=[1], keepdims=1),
         helper.make_node("Sigmoid", ["t0"], ["t_out"])], "then", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    if then_shape != 1:
        then_g.node.append(helper.make_node("Concat", ["t_out", "t_out"], ["t2"], axis=1))
        then_g.output[0].name = "t2"
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["p"], ["e_out"])], "else", [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["s"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["s"], ["p"]),
        helper.make_node("GreaterOrEqual", ["p", "half"], ["c"]),
        helper.make_node("Cast", ["c"], ["cb"], to=TensorProto.BOOL),
        helper.make_node("If", ["cb"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    return _model(nodes, [_f("x", [1, 6])], ["y"], [_c("half", 0.5)])


@pytest.mark.parametrize("shift", [-5.0, 5.0], ids=["else", "then"])
def test_if_on_a_run_time_value_runs_both_branches_and_selects(shift: float) -> None:
    m = _runtime_if()
    g = import_model(m)
    assert "where" in {n.op for n in g.nodes}
    x = (RNG.standard_normal((1, 6)) + shift).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-6, atol=1e-6)


def test_if_on_a_run_time_value_with_branches_of_two_shapes_is_a_one_line_error() -> None:
    with pytest.raises(UnsupportedOpError) as e:
        import_model(_runtime_if(then_shape=2))
    msg = str(e.value)
    assert "computed at run time" in msg and "else_branch" in msg and "\n" not in msg


def test_max_min_with_a_scalar_become_clips_and_broadcasting_ones_stay() -> None:
    from mcopt.pass_manager import PassContext, get_pass

    nodes = [
        helper.make_node("Max", ["x", "lo"], ["a"]),
        helper.make_node("Min", ["hi", "a"], ["b"]),
        helper.make_node("Max", ["b", "col"], ["y"]),  # (2, 1) broadcasts (1, 4) to (2, 4)
    ]
    inits = [_c("lo", -0.5), _c("hi", [[0.75]]), _c("col", [[0.0], [-1.0]])]
    m = _model(nodes, [_f("x", [1, 4])], ["y"], inits)
    g = import_model(m)
    assert get_pass("canonical-activations").run(g, PassContext())
    assert [n.op for n in g.nodes] == ["clip", "clip", "maximum"]
    assert [(n.attrs["min"], n.attrs["max"]) for n in g.nodes[:2]] == [
        (-0.5, np.inf),
        (-np.inf, 0.75),
    ]
    x = np.array([[-2.0, -0.25, 0.5, 2.0]], np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=0, atol=0)


def test_int8_leaky_relu_with_its_floor_is_the_int8_conv_epilogue() -> None:
    """``quantize-int8``: each conv's ``Max(LeakyRelu(y), -0.4)`` and the quantize after it run in
    the int8 kernel (``post_act="leaky_relu"``, the floor moved before it as ``y >= -2``); the
    build computes what its int8 graph says."""
    pytest.importorskip("tvm")
    import mcopt

    m = _leaky_convs()
    calib = [{"x": (RNG.standard_normal((1, 8, 10, 12)) * 4).astype(np.float32)} for _ in range(4)]
    res = mcopt.optimize(m, target="cpu", passes=["cleanup", "quantize-int8"], calib=calib,
                         measure=False, check=False)  # fmt: skip
    fused = [n for n in res.planned_graph.nodes if n.op == "fused_qconv2d"]
    assert fused and fused[0].attrs["post_act"] == "leaky_relu"
    assert fused[0].attrs["post_alpha"] == pytest.approx(0.2)
    assert fused[0].attrs["post_min"] == pytest.approx(-2.0)
    assert "leaky_relu" not in {n.op for n in res.planned_graph.nodes}
    from mcopt import interpreter

    x = calib[0]["x"]
    ref = interpreter.run(res.graph, [x])[0]
    np.testing.assert_allclose(res.compiled.run(x)[0], ref, rtol=1e-5, atol=1e-4)
