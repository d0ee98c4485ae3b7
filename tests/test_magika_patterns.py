"""What Google's Magika file-type model (the ``magika`` wheel, a JAX export) needed: ``Max`` with a
``-inf`` constant (jax2tf's softmax), ``Expand``, the byte one-hot written ``Equal(i, arange(K))``
+ ``Cast`` + ``MatMul`` (rewritten as an embedding lookup), and a ``k x 1`` conv over a one-pixel-wide
image (run with its rows as the width) — each against onnxruntime through the interpreter, the
export and the CPU build."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.errors import NonFiniteError
from mcopt.onnx_io import export_model, import_model
from mcopt.pass_manager import PassContext, PassManager
from mcopt.testing.routes import assert_routes_match, outputs_by_route

ort = pytest.importorskip("onnxruntime")


def _model(nodes, inputs, outs, inits=()) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes, "magika", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        initializer=list(inits),
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def _run_ort(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _softmax_model(c: float) -> onnx.ModelProto:
    inf = numpy_helper.from_array(np.array(c, np.float32), "neg_inf")
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Max", ["neg_inf", "m"], ["mm"]),
        helper.make_node("Sub", ["x", "mm"], ["d"]),
        helper.make_node("Exp", ["d"], ["e"]),
        helper.make_node("ReduceSum", ["e", "ax"], ["s"], keepdims=1),
        helper.make_node("Div", ["e", "s"], ["y"]),
    ]
    ax = numpy_helper.from_array(np.array([1], np.int64), "ax")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 7])
    return _model(nodes, [x], ["y"], [inf, ax])


def test_max_with_minus_inf_is_an_idiom_not_a_broken_weight() -> None:
    m = _softmax_model(-np.inf)
    x = np.random.default_rng(0).standard_normal((2, 7)).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-6, atol=1e-6)


def test_inf_in_a_weight_that_computes_is_still_refused() -> None:
    w = numpy_helper.from_array(np.array([[1.0, np.inf]], np.float32).T, "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], ["y"], [w])
    with pytest.raises(NonFiniteError, match="'w'"):
        import_model(m)


def _one_hot_model(rows: int = 10, feats: int = 4, n: int = 16, swapped: bool = False):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(np.array([1, n, 1], np.int64), "shape3"),
        numpy_helper.from_array(np.arange(rows, dtype=np.int32).reshape(1, 1, rows), "iota"),
        numpy_helper.from_array(rng.standard_normal((rows, feats)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(feats).astype(np.float32), "b"),
    ]
    eq = ["iota", "e"] if swapped else ["e", "iota"]
    nodes = [
        helper.make_node("Reshape", ["i", "shape3"], ["r"]),
        helper.make_node("Expand", ["r", "shape3"], ["e"]),  # to its own shape, as jax2tf writes it
        helper.make_node("Equal", eq, ["oh"]),
        helper.make_node("Cast", ["oh"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["f", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["y"]),
    ]
    i = helper.make_tensor_value_info("i", TensorProto.INT32, [1, n])
    return _model(nodes, [i], ["y"], inits)


@pytest.mark.parametrize("swapped", [False, True])
def test_one_hot_matmul_is_an_embedding_lookup(swapped: bool) -> None:
    """Indices outside [0, rows) (negative, rows, beyond) give the bias alone, as the one-hot
    product does."""
    m = _one_hot_model(swapped=swapped)
    i = np.array([[0, 3, 9, -1, 10, 12, 5, 5, 1, 2, 8, 7, 6, 4, -7, 9]], np.int32)
    g = import_model(m)
    PassManager(["cleanup"]).run(g, PassContext())
    ops = [n.op for n in g.nodes]
    assert "embedding" in ops and "equal" not in ops and "dense" not in ops, ops
    ref = _run_ort(m, {"i": i})
    got = _run_ort(export_model(g), {"i": i})  # the export: Gather of the zero-padded table
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6, atol=1e-6)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"i": i}, passes=["cleanup"]), rtol=1e-6, atol=1e-6)


def test_one_hot_against_another_constant_stays_a_product() -> None:
    m = _one_hot_model()
    iota = next(t for t in m.graph.initializer if t.name == "iota")
    iota.CopyFrom(
        numpy_helper.from_array(np.arange(1, 11, dtype=np.int32).reshape(1, 1, 10), "iota")
    )
    g = import_model(m)
    PassManager(["cleanup"]).run(g, PassContext())
    assert "embedding" not in [n.op for n in g.nodes]


@pytest.mark.parametrize(
    ("kernel", "pads", "stride"), [((5, 1), (0, 0, 0, 0), 1), ((3, 1), (1, 0, 1, 0), 2)]
)
def test_conv_over_a_width_one_image(
    kernel: tuple[int, int], pads: tuple[int, ...], stride: int
) -> None:
    """A 1-D conv as TensorFlow / JAX export it, ``(N, C, L, 1)``, bias and ReLU after it."""
    pytest.importorskip("tvm")
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((32, 16, *kernel)).astype(np.float32) / 8, "w")
    b = numpy_helper.from_array(rng.standard_normal((32, 1, 1)).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=list(pads), strides=[stride, 1]),
        helper.make_node("Add", ["c", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 40, 1])
    m = _model(nodes, [x], ["y"], [w, b])
    feeds = {"x": rng.standard_normal((1, 16, 40, 1)).astype(np.float32)}
    assert_routes_match(outputs_by_route(m, feeds, passes=["cleanup"]), rtol=1e-5, atol=1e-5)

    from mcopt.targets.cpu.planning import plan_cpu

    g = import_model(m)
    PassManager(["cleanup"]).run(g, PassContext())
    p = plan_cpu(g, lanes=8)
    convs = [n for n in p.nodes if "conv" in n.op]
    assert len(convs) == 1 and convs[0].inputs[0].shape == (1, 16, 1, 40), [
        (n.op, n.inputs[0].shape) for n in convs
    ]
    # the bias and the ReLU are the conv's epilogue, before the reshape back
    assert [n.op for n in p.nodes if n.op not in ("reshape",)] == [convs[0].op], [
        n.op for n in p.nodes
    ]


def test_expand_and_elementwise_max_min_compare() -> None:
    nodes = [
        helper.make_node("Expand", ["x", "shape"], ["e"]),
        helper.make_node("Max", ["e", "z"], ["mx"]),
        helper.make_node("Min", ["mx", "one", "e"], ["mn"]),
        helper.make_node("Greater", ["e", "z"], ["gt"]),
        helper.make_node("Cast", ["gt"], ["gf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["mn", "gf"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([2, 3, 4], np.int64), "shape"),
        numpy_helper.from_array(np.zeros((1, 1, 4), np.float32), "z"),
        numpy_helper.from_array(np.array(0.5, np.float32), "one"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1])
    m = _model(nodes, [x], ["y"], inits)
    feeds = {"x": np.array([[[-1.0], [0.25], [2.0]]], np.float32)}
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, feeds, passes=["cleanup"]), rtol=1e-6, atol=1e-6)


def test_int8_conv_over_a_width_one_image() -> None:
    """The int8 build of Magika's conv shape runs the swapped orientation too and computes what
    the quantized graph says (the interpreter of the same int8 graph)."""
    pytest.importorskip("tvm")
    import mcopt
    from mcopt import interpreter

    rng = np.random.default_rng(6)
    w = numpy_helper.from_array(rng.standard_normal((32, 16, 5, 1)).astype(np.float32) / 8, "w")
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 40, 1])
    m = _model(nodes, [x], ["y"], [w, b])
    calib = [{"x": rng.standard_normal((1, 16, 40, 1)).astype(np.float32)} for _ in range(4)]
    res = mcopt.optimize(m, target="cpu", passes=["cleanup", "quantize-int8"], calib=calib,
                         measure=False, check=False)  # fmt: skip
    convs = [n for n in res.planned_graph.nodes if "conv" in n.op]
    assert convs and all(n.inputs[0].shape[2:] == (1, 40) for n in convs), [
        (n.op, n.inputs[0].shape) for n in convs
    ]
    feed = rng.standard_normal((1, 16, 40, 1)).astype(np.float32)
    ref = interpreter.run(res.graph, [feed])[0]
    np.testing.assert_allclose(res.compiled.run(feed)[0], ref, rtol=1e-5, atol=1e-5)
