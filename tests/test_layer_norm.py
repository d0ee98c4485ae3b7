"""``layer_norm``: ONNX ``LayerNormalization`` imported, PyTorch's spelled-out form (opset < 17)
rewritten to it by ``canonical-layer-norm`` (with ``* gamma + beta`` as its scale / bias), both
against onnxruntime through the interpreter, the export (opset 17 and spelled out at 13) and the
CPU build; look-alikes stay; the training form matches the reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt import interpreter
from mcopt.onnx_io import export_model, import_model
from mcopt.pass_manager import PassContext, get_pass
from mcopt.testing.routes import assert_routes_match, outputs_by_route

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(21)


def _model(nodes, shape, inits=(), opset: int = 17) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=list(inits),
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _c(name: str, a: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


@pytest.mark.parametrize("axis,bias", [(-1, True), (1, False)])
def test_layer_normalization_op(axis: int, bias: bool) -> None:
    shape = [2, 3, 8]
    norm = shape[axis % 3 :]
    ins = ["x", "s", "b"] if bias else ["x", "s"]
    nodes = [
        helper.make_node("LayerNormalization", ins, ["n"], axis=axis, epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    inits = [_c("s", RNG.standard_normal(norm)), _c("b", RNG.standard_normal(norm))]
    m = _model(nodes, shape, inits if bias else inits[:1])
    x = (RNG.standard_normal(shape) * 3 + 1).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-5)


def _spelled_out(square: str = "pow", axes=(-1,), gamma_shape=(8,), eps_first=False):  # type: ignore[no-untyped-def]
    """PyTorch's export of ``nn.LayerNorm(8)`` below opset 17 (hey_jarvis's heads)."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1], keepdims=1),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"])
        if square == "pow"
        else helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["v"], axes=list(axes), keepdims=1),
        helper.make_node("Add", ["eps", "v"] if eps_first else ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["nd"]),
        helper.make_node("Mul", ["g", "nd"], ["sc"]),
        helper.make_node("Add", ["sc", "bt"], ["y"]),
    ]
    inits = [
        _c("two", 2.0),
        _c("eps", 1e-5),
        _c("g", RNG.standard_normal(gamma_shape)),
        _c("bt", RNG.standard_normal(8)),
    ]
    return _model(nodes, [2, 4, 8], inits, opset=13)


@pytest.mark.parametrize("square,eps_first", [("pow", False), ("mul", True)])
def test_spelled_out_layer_norm_is_one_op(square: str, eps_first: bool) -> None:
    m = _spelled_out(square, eps_first=eps_first)
    g = import_model(m)
    assert get_pass("canonical-layer-norm").run(g, PassContext())
    get_pass("dce").run(g, PassContext())
    assert [n.op for n in g.nodes] == ["layer_norm"]
    ln = g.nodes[0]
    assert len([v for v in ln.inputs if v is not None]) == 3 and ln.attrs["axis"] == 2
    x = (RNG.standard_normal((2, 4, 8)) * 2).astype(np.float32)
    ref = interpreter.run(import_model(m), [x])[0]
    np.testing.assert_allclose(interpreter.run(g, [x])[0], ref, rtol=1e-5, atol=1e-5)
    for opset in (17, 13):  # LayerNormalization, and spelled out again
        exported = export_model(g, opset=opset)
        ops = {n.op_type for n in exported.graph.node}
        assert ("LayerNormalization" in ops) == (opset == 17), ops
        sess = ort.InferenceSession(
            exported.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-5)


def test_look_alikes_stay() -> None:
    """The variance over other dims than the mean; a gamma that varies along the batch."""
    g = import_model(_spelled_out(axes=(-2, -1)))
    assert not get_pass("canonical-layer-norm").run(g, PassContext())
    g = import_model(_spelled_out(gamma_shape=(2, 1, 8)))
    assert get_pass("canonical-layer-norm").run(g, PassContext())
    get_pass("dce").run(g, PassContext())
    assert [n.op for n in g.nodes] == ["layer_norm", "mul", "add"]


def test_layer_norm_training_form_matches_the_reference() -> None:
    torch = pytest.importorskip("torch")
    from mcopt.train.module import to_torch

    g = import_model(_spelled_out())
    get_pass("canonical-layer-norm").run(g, PassContext())
    get_pass("dce").run(g, PassContext())
    x = RNG.standard_normal((2, 4, 8)).astype(np.float32)
    ref = interpreter.run(g, [x])[0]
    mod = to_torch(g)
    got = mod(torch.as_tensor(x))
    got = got[0] if isinstance(got, (list, tuple)) else got
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in mod.parameters()) == 16  # the scale and the bias train
