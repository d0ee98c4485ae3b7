"""Boolean logic (``And`` / ``Or`` / ``Xor`` / ``Not``), ``Gather`` with computed or uneven
indices (``take``) and ``GatherElements``: imported, run by the interpreter, built for the CPU and
exported, each checked against onnxruntime on the original model (swift-f0's pitch decoding:
a masked argmax, a window of logits around it, a table lookup)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.interpreter import run
from mcopt.ir.verify import verify
from mcopt.onnx_io import export_model, import_model

F, I64 = TensorProto.FLOAT, np.int64


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[int, list[int]]],
           outputs: dict[str, int], inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:  # fmt: skip
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], build: bool = True) -> None:
    import onnxruntime as ort

    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    g = import_model(model)
    verify(g)
    got: list[Any] = list(run(g, feeds))
    exported = export_model(g, opset=17)
    onnx.checker.check_model(exported, full_check=True)
    got_exp = ort.InferenceSession(exported.SerializeToString()).run(None, feeds)
    engines = [("interpreter", got), ("exported", got_exp)]
    if build:
        pytest.importorskip("tvm")
        from mcopt.targets.relax.builder import build as build_cpu

        engines.append(("cpu build", [np.asarray(y) for y in build_cpu(g, "cpu").run(feeds)]))
    for name, outs in engines:
        for w, y in zip(want, outs):
            assert np.asarray(y).dtype == w.dtype, name
            np.testing.assert_allclose(np.asarray(y), w, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_binary_logic(op: str) -> None:
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["p"]),
        helper.make_node("Less", ["z", "half"], ["q"]),
        helper.make_node(op, ["p", "q"], ["m"]),
        helper.make_node("Not", ["m"], ["n"]),
        helper.make_node("Where", ["n", "x", "z"], ["y"]),
    ]
    inits = {"zero": np.float32(0), "half": np.full((1, 5), 0.5, np.float32)}
    m = _model(nodes, {"x": (F, [3, 5]), "z": (F, [3, 1])}, {"y": F, "m": TensorProto.BOOL}, inits)
    rng = np.random.default_rng(0)
    _check(m, {"x": rng.standard_normal((3, 5), np.float32), "z": rng.random((3, 1), np.float32)})


def test_logic_on_floats_is_a_one_line_error() -> None:
    from mcopt.errors import ModelLoadError

    m = _model([helper.make_node("And", ["x", "x"], ["y"], name="and0")], {"x": (F, [2])}, {"y": F})
    with pytest.raises(ModelLoadError) as e:
        import_model(m)
    assert "'and0' (And)" in str(e.value) and "\n" not in str(e.value)


def test_swift_f0_style_decoding() -> None:
    """A masked argmax over bins, a window of 5 logits around it (``GatherElements`` on the
    padded logits), a softmax over the window and a table lookup at the argmax (``Gather`` of a
    computed index from a 1-D table, and from a computed bool mask)."""
    frames, bins = 7, 12
    freq = np.linspace(50, 800, bins).astype(np.float32)
    nodes = [
        helper.make_node("GreaterOrEqual", ["freq", "fmin"], ["ge"]),
        helper.make_node("LessOrEqual", ["freq", "fmax"], ["le"]),
        helper.make_node("And", ["ge", "le"], ["mask"]),
        helper.make_node("Where", ["mask", "logits", "ninf"], ["masked"]),
        helper.make_node("ArgMax", ["masked"], ["am"], axis=-1, keepdims=1),
        helper.make_node("Add", ["am", "offsets"], ["win"]),  # am - 2 .. am + 2
        helper.make_node("Pad", ["masked", "pads", "ninf"], ["padded"], mode="constant"),
        helper.make_node("Add", ["win", "two"], ["win_p"]),
        helper.make_node("GatherElements", ["padded", "win_p"], ["wl"], axis=-1),
        helper.make_node("Softmax", ["wl"], ["w"], axis=-1),
        helper.make_node("Clip", ["win", "lo", "hi"], ["wc"]),
        helper.make_node("Gather", ["freq", "wc"], ["wf"], axis=0),
        helper.make_node("Mul", ["w", "wf"], ["prod"]),
        helper.make_node("ReduceSum", ["prod", "ax"], ["pitch"], keepdims=0),
        helper.make_node("ArgMax", ["logits"], ["raw"], axis=-1, keepdims=0),
        helper.make_node("Gather", ["mask", "raw"], ["voiced"], axis=0),
    ]
    inits = {
        "freq": freq, "fmin": np.float32(100), "fmax": np.float32(600),
        "ninf": np.float32(-np.inf), "offsets": np.arange(-2, 3, dtype=I64),
        "pads": np.array([0, 2, 0, 2], I64), "two": np.array(2, I64),
        "lo": np.array(0, I64), "hi": np.array(bins - 1, I64), "ax": np.array([-1], I64),
    }  # fmt: skip
    m = _model(
        nodes,
        {"logits": (F, [frames, bins])},
        {"pitch": F, "voiced": TensorProto.BOOL, "am": TensorProto.INT64},
        inits,
    )
    rng = np.random.default_rng(1)
    _check(m, {"logits": rng.standard_normal((frames, bins)).astype(np.float32)})


@pytest.mark.parametrize(
    "idx", [np.array([[2, 0], [-1, 3]], I64), np.array([4, 0, 1, 1], I64)], ids=["2d", "uneven"]
)
def test_gather_of_constant_uneven_indices_is_a_take(idx: np.ndarray) -> None:
    """Constant indices that are no slice (a 2-D index set, an uneven run) into a computed
    tensor: a ``take`` (refused before); negative ones count from the end."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Gather", ["r", "i"], ["y"], axis=1),
    ]
    m = _model(nodes, {"x": (F, [2, 5, 3])}, {"y": F}, {"i": idx})
    g = import_model(m)
    assert [n.op for n in g.nodes] == ["relu", "take"]
    x = np.random.default_rng(2).standard_normal((2, 5, 3)).astype(np.float32)
    _check(m, {"x": x})


def test_out_of_range_indices_are_clamped() -> None:
    """ONNX leaves them undefined; mcopt's reference, kernels and training form clamp alike."""
    from mcopt.ops.tensor import gather_elements_ref, take_ref

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    i = np.array([[5, -9, 1, 0]], I64)
    np.testing.assert_array_equal(take_ref(x, i[0], axis=1), x[:, [3, 0, 1, 0]])
    np.testing.assert_array_equal(gather_elements_ref(x, i, axis=0), [[8, 1, 6, 3]])
    pytest.importorskip("tvm")
    from mcopt.ir import Graph, TensorType
    from mcopt.targets.relax.builder import build

    for op, ref in (("take", take_ref(x, i, axis=1)), ("gather_elements", None)):
        g = Graph(op)
        xv = g.add_input("x", TensorType((3, 4)))
        iv = g.const(i)
        g.outputs.append(g.add_node(op, [xv, iv], {"axis": 1 if op == "take" else 0}).output)
        want = run(g, {"x": x})[0]
        if ref is not None:
            np.testing.assert_array_equal(want, ref)
        np.testing.assert_array_equal(build(g, "cpu").run(x)[0], want)


def test_training_forms_match_the_interpreter() -> None:
    torch = pytest.importorskip("torch")
    from mcopt.train.module import to_torch

    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["p"]),
        helper.make_node("Not", ["p"], ["q"]),
        helper.make_node("Xor", ["p", "q"], ["t"]),
        helper.make_node("Where", ["t", "x", "zero"], ["r"]),
        helper.make_node("ArgMax", ["r"], ["am"], axis=-1, keepdims=1),
        helper.make_node("GatherElements", ["r", "am"], ["top"], axis=-1),
        helper.make_node("Gather", ["r", "i"], ["cols"], axis=1),
        helper.make_node("ReduceSum", ["cols", "ax"], ["s"], keepdims=1),
        helper.make_node("TopK", ["x", "k"], ["best", "where"], axis=1),
        helper.make_node("ReduceSum", ["best", "ax"], ["bs"], keepdims=1),
        helper.make_node("Add", ["top", "s"], ["t2"]),
        helper.make_node("Add", ["t2", "bs"], ["y"]),
    ]
    inits = {
        "zero": np.float32(0), "i": np.array([3, -1, 0], I64), "ax": np.array([1], I64),
        "k": np.array([2], I64),
    }  # fmt: skip
    g = import_model(_model(nodes, {"x": (F, [2, 6])}, {"y": F}, inits))
    x = np.random.default_rng(3).standard_normal((2, 6)).astype(np.float32)
    got = to_torch(g)(torch.from_numpy(x))
    got = got if isinstance(got, list | tuple) else [got]
    for a, b in zip(got, run(g, [x])):
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("axis", [-1, 1])
def test_topk_then_gather(largest: int, axis: int) -> None:
    """YOLOv10 / DETR-style post-processing: the k best scores (``TopK``, ties among the rounded
    scores in index order) and the boxes at their indices (``GatherElements``)."""
    nodes = [
        helper.make_node("TopK", ["s", "k"], ["v", "i"], axis=axis, largest=largest),
        helper.make_node("GatherElements", ["b", "i"], ["y"], axis=axis),
    ]
    m = _model(
        nodes,
        {"s": (F, [2, 9, 9]), "b": (F, [2, 9, 9])},
        {"v": F, "i": TensorProto.INT64, "y": F},
        {"k": np.array([4], I64)},
    )
    rng = np.random.default_rng(4)
    s = np.round(rng.random((2, 9, 9)) * 4).astype(np.float32) / 4  # many ties
    _check(m, {"s": s, "b": rng.standard_normal((2, 9, 9)).astype(np.float32)})


def test_topk_with_a_computed_k_is_refused() -> None:
    from mcopt.errors import UnsupportedOpError

    nodes = [
        helper.make_node("ArgMax", ["s"], ["a"], axis=0, keepdims=1),
        helper.make_node("TopK", ["s", "a"], ["v", "i"], name="topk0"),
    ]
    m = _model(nodes, {"s": (F, [5])}, {"v": F, "i": TensorProto.INT64})
    with pytest.raises(UnsupportedOpError) as e:
        import_model(m)
    assert "'topk0'" in str(e.value) and "constant K" in str(e.value)
