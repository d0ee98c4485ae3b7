"""``canonical-activations``: hard-swish / hard-sigmoid / SiLU written out of elementwise ops (Paddle2ONNX,
PyTorch below opset 14) become the one op — the same outputs (interpreter and onnxruntime on the
original ONNX), and a lookalike with other constants or a shared intermediate stays."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt import interpreter
from mcopt.ir import verify
from mcopt.onnx_io import import_model
from mcopt.pass_manager import PassContext, PassManager
from mcopt.passes import DEFAULT_CLEANUP


def _model(
    body: list[onnx.NodeProto], consts: dict[str, float], outs: list[str]
) -> onnx.ModelProto:
    """x (1, 4, 5, 5) -> Conv 3x3 -> ``body`` (reads "c") -> outs."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4)]
    graph = helper.make_graph(
        nodes + body, "act", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        initializer=inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    m.ir_version = 7
    return m


def _relu6_plus3(src: str = "c", out: str = "r", swap: bool = False) -> list[onnx.NodeProto]:
    add = ["three", src] if swap else [src, "three"]
    return [
        helper.make_node("Add", add, [out + "_a"]),
        helper.make_node("Clip", [out + "_a", "zero", "six"], [out]),
    ]


C = {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1.0 / 6.0, "sqrt2": float(np.sqrt(2.0)),
     "rsqrt2": float(1 / np.sqrt(2.0)), "one": 1.0, "half": 0.5}  # fmt: skip


def _erf_plus_one(div: bool = True, swap: bool = False) -> list[onnx.NodeProto]:
    scaled = (helper.make_node("Div", ["c", "sqrt2"], ["d"]) if div
              else helper.make_node("Mul", ["rsqrt2", "c"], ["d"]))  # fmt: skip
    add = ["one", "e"] if swap else ["e", "one"]
    return [scaled, helper.make_node("Erf", ["d"], ["e"]), helper.make_node("Add", add, ["a"])]


FORMS = {
    # Paddle2ONNX: x * clip(x + 3, 0, 6) / 6
    "paddle": (_relu6_plus3() + [helper.make_node("Mul", ["c", "r"], ["m"]),
                                 helper.make_node("Div", ["m", "six"], ["y"])], "hard_swish"),
    # x * (clip(3 + x) * 1/6), operands swapped
    "sixth": (_relu6_plus3(swap=True) + [helper.make_node("Mul", ["sixth", "r"], ["h"]),
                                         helper.make_node("Mul", ["h", "c"], ["y"])], "hard_swish"),
    # (clip(x + 3) * x) * 1/6
    "product": (_relu6_plus3() + [helper.make_node("Mul", ["r", "c"], ["m"]),
                                  helper.make_node("Mul", ["m", "sixth"], ["y"])], "hard_swish"),
    # PyTorch's hardswish below opset 14
    "torch": ([helper.make_node("HardSigmoid", ["c"], ["h"], alpha=1.0 / 6.0, beta=0.5),
               helper.make_node("Mul", ["c", "h"], ["y"])], "hard_swish"),
    # x * sigmoid(x), both orders (YOLOv5 / YOLOX / EfficientNet exports)
    "silu": ([helper.make_node("Sigmoid", ["c"], ["s"]),
              helper.make_node("Mul", ["c", "s"], ["y"])], "silu"),
    "silu_swapped": ([helper.make_node("Sigmoid", ["c"], ["s"]),
                      helper.make_node("Mul", ["s", "c"], ["y"])], "silu"),
    # GELU, erf form: Paddle2ONNX's (x * (erf(x / sqrt2) + 1)) * 0.5 (PP-OCRv5/v6), PyTorch's
    # (x * 0.5) * (1 + erf(x * 1/sqrt2)) and x * ((1 + erf) * 0.5)
    "gelu_paddle": (_erf_plus_one() + [helper.make_node("Mul", ["c", "a"], ["m"]),
                                       helper.make_node("Mul", ["m", "half"], ["y"])], "gelu"),
    "gelu_torch": ([helper.make_node("Mul", ["c", "half"], ["h"])]
                   + _erf_plus_one(div=False, swap=True)
                   + [helper.make_node("Mul", ["h", "a"], ["y"])], "gelu"),
    "gelu_inner": (_erf_plus_one() + [helper.make_node("Mul", ["half", "a"], ["h"]),
                                      helper.make_node("Mul", ["h", "c"], ["y"])], "gelu"),
    # clip(x + 3, 0, 6) / 6 alone: a hard-sigmoid (an SE gate)
    "gate": (_relu6_plus3() + [helper.make_node("Div", ["r", "six"], ["y"])], "hard_sigmoid"),
}  # fmt: skip


def _check(model: onnx.ModelProto) -> list[str]:
    """Cleanup the imported model; outputs equal before/after and to onnxruntime; the ops."""
    ort = pytest.importorskip("onnxruntime")
    g = import_model(model)
    x = np.random.default_rng(1).standard_normal((1, 4, 5, 5)).astype(np.float32) * 3
    before = interpreter.run(g, [x])
    PassManager(["cleanup"]).run(g, PassContext())
    verify(g)
    after = interpreter.run(g, [x])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for a, b, o in zip(after, before, sess.run(None, {"x": x})):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a, o, rtol=1e-5, atol=1e-5)
    return [n.op for n in g.nodes]


def test_canonical_activations_runs_in_cleanup() -> None:
    assert "canonical-activations" in DEFAULT_CLEANUP


@pytest.mark.parametrize("form", sorted(FORMS))
def test_decomposed_forms_become_one_op(form: str) -> None:
    body, op = FORMS[form]
    assert _check(_model(body, C, ["y"])) == ["conv2d", op]


def test_lookalikes_stay() -> None:
    """clip(x + 2, 0, 6) / 6, a hard-sigmoid of other parameters times x, and a clip that is also
    an output are not hard-swish."""
    body = [
        helper.make_node("Add", ["c", "two"], ["a"]),
        helper.make_node("Clip", ["a", "zero", "six"], ["r"]),
        helper.make_node("Mul", ["c", "r"], ["m"]),
        helper.make_node("Div", ["m", "six"], ["y"]),
        helper.make_node("HardSigmoid", ["c"], ["h"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["c", "h"], ["z"]),
        *_relu6_plus3(out="r2"),
        helper.make_node("Mul", ["c", "r2"], ["m2"]),
        helper.make_node("Div", ["m2", "six"], ["v"]),
    ]
    ops = _check(_model(body, {**C, "two": 2.0}, ["y", "z", "v", "r2"]))
    assert "hard_swish" not in ops and ops.count("clip") == 2


def test_silu_lookalikes_stay() -> None:
    """``x * sigmoid(y)`` (a gate of another tensor) and a sigmoid that is also an output stay."""
    body = [
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["s"]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
        helper.make_node("Sigmoid", ["c"], ["s2"]),
        helper.make_node("Mul", ["c", "s2"], ["z"]),
    ]
    ops = _check(_model(body, {}, ["y", "z", "s2"]))
    assert "silu" not in ops and ops.count("sigmoid") == 2


def test_gelu_lookalikes_stay() -> None:
    """``x * (1 + erf(x / 2)) * 0.5`` (another scale) and ``y * (1 + erf(x / sqrt2)) * 0.5`` (erf
    of another tensor) are not GELU."""
    body = [
        helper.make_node("Div", ["c", "two"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["c", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Div", ["c", "sqrt2"], ["d2"]),
        helper.make_node("Erf", ["d2"], ["e2"]),
        helper.make_node("Add", ["e2", "one"], ["a2"]),
        helper.make_node("Mul", ["r", "a2"], ["m2"]),
        helper.make_node("Mul", ["m2", "half"], ["z"]),
    ]
    ops = _check(_model(body, {**C, "two": 2.0}, ["y", "z"]))
    assert "gelu" not in ops and ops.count("erf") == 2
