"""ONNX import/export: single-op round trips against onnxruntime, shape folding, bad inputs, zoo
models and random conv graphs (hypothesis)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from mcopt.errors import ModelLoadError, OptionError, ShapeError, UnsupportedOpError
from mcopt.interpreter import run
from mcopt.ir import Graph, verify
from mcopt.onnx_io import export_model, import_model, load_onnx, save_model

F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


# --- helpers ---------------------------------------------------------------------------------------
def make(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, Sequence[int | str] | None],
    outputs: Sequence[str] = ("y",),
    inits: dict[str, Any] | None = None,
    opset: int = 17,
    out_types: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """A model from nodes; `inits` values are arrays (float lists become float32)."""
    init_protos = []
    for name, val in (inits or {}).items():
        arr = np.asarray(val)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        init_protos.append(numpy_helper.from_array(arr, name))
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, (out_types or {}).get(o, F), None) for o in outputs],
        init_protos,
    )
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(
        graph, opset_imports=opsets, ir_version=max(helper.find_min_ir_version_for(opsets), 7)
    )


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def feeds_for(graph: Graph, positive: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        a = rng.standard_normal(v.shape).astype(v.dtype)
        out[v.name] = np.abs(a) + 0.5 if positive else a
    return out


def assert_close(got: np.ndarray, want: np.ndarray, what: str, rtol: float = 1e-4) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    err = (
        float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if want.size else 0.0
    )
    assert err <= rtol * scale, f"{what}: max abs error {err} > {rtol} * {scale}"


def roundtrip(model: onnx.ModelProto, positive: bool = False, opset: int = 17, **kw: Any) -> Graph:
    """import -> interpreter == ORT(original); export -> checker(full) -> ORT == ORT(original)."""
    graph = import_model(model, **kw)
    verify(graph)
    feeds = feeds_for(graph, positive)
    want = ort_run(model, feeds)
    got = run(graph, feeds)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(np.asarray(g), w, f"interpreter output {i}")
    exported = export_model(graph, opset=opset)
    onnx.checker.check_model(exported, full_check=True)
    assert [i.name for i in exported.graph.input] == [v.name for v in graph.inputs]
    assert [o.name for o in exported.graph.output] == [o.name for o in model.graph.output]
    for i, (g, w) in enumerate(zip(ort_run(exported, feeds), want)):
        assert_close(g, w, f"exported output {i}")
    return graph


def node(op: str, ins: Sequence[str], outs: Sequence[str] = ("y",), **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, list(ins), list(outs), name=f"{op.lower()}_node", **attrs)


X4 = {"x": [2, 3, 8, 8]}
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
Bv = RNG.standard_normal(4).astype(np.float32)


def _f(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


I64 = np.int64
# (id, model, positive-inputs)
# fmt: off
CASES: list[tuple[str, onnx.ModelProto, bool]] = [
    ("conv", make([node("Conv", ["x", "w", "b"], pads=[1, 1, 1, 1], strides=[2, 2])], X4, inits={"w": W, "b": Bv}), False),
    ("conv_group_dil", make([node("Conv", ["x", "w"], group=2, dilations=[2, 2], pads=[2, 1, 0, 2])], {"x": [1, 4, 9, 9]}, inits={"w": _f(6, 2, 3, 3)}), False),
    ("conv_same_upper", make([node("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2])], {"x": [1, 3, 7, 7]}, inits={"w": W}), False),
    ("conv_same_lower", make([node("Conv", ["x", "w"], auto_pad="SAME_LOWER")], {"x": [1, 3, 7, 6]}, inits={"w": _f(2, 3, 2, 2)}), False),
    ("conv_valid", make([node("Conv", ["x", "w"], auto_pad="VALID", kernel_shape=[3, 3])], X4, inits={"w": W}), False),
    ("conv1d", make([node("Conv", ["x", "w", "b"], pads=[1, 2], strides=[2])], {"x": [2, 3, 10]}, inits={"w": _f(4, 3, 3), "b": Bv}), False),
    ("gemm", make([node("Gemm", ["a", "b", "c"], transB=1)], {"a": [2, 5]}, inits={"b": _f(4, 5), "c": _f(4)}), False),
    ("gemm_alpha_beta_transA", make([node("Gemm", ["a", "b", "c"], transA=1, alpha=0.5, beta=2.0)], {"a": [5, 2]}, inits={"b": _f(5, 4), "c": _f(1, 4)}), False),
    ("gemm_c_matrix", make([node("Gemm", ["a", "b", "c"], beta=0.3)], {"a": [2, 5]}, inits={"b": _f(5, 4), "c": _f(2, 4)}), False),
    ("gemm_dynamic_b", make([node("Gemm", ["a", "b", "c"], alpha=2.0, transB=1, beta=0.5)], {"a": [2, 5], "b": [4, 5]}, inits={"c": _f(4)}), False),
    ("matmul_const", make([node("MatMul", ["x", "w"])], {"x": [2, 3, 5]}, inits={"w": _f(5, 4)}), False),
    ("matmul", make([node("MatMul", ["a", "b"])], {"a": [2, 3, 5], "b": [2, 5, 4]}), False),
    ("batchnorm", make([node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)], X4, inits={"s": _f(3), "b": _f(3), "m": _f(3), "v": np.abs(_f(3)) + 0.1}), False),
    ("maxpool", make([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], X4), False),
    ("maxpool_ceil", make([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], X4), False),
    ("maxpool_ceil_last_window", make([node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)], {"x": [1, 2, 5, 5]}, opset=11), False),
    ("avgpool_ceil_last_window", make([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)], {"x": [1, 2, 6, 6]}, opset=11), False),
    ("avgpool_ceil_incl_pad", make([node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)], {"x": [1, 2, 5, 5]}, opset=11), False),
    ("avgpool_ceil_incl_pad_big", make([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1, count_include_pad=1)], {"x": [1, 2, 8, 7]}, opset=19), False),
    ("maxpool_dil", make([node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2])], X4, opset=12), False),
    ("maxpool_same_upper", make([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")], {"x": [1, 2, 7, 7]}), False),
    ("maxpool_unused_indices", make([node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])], X4), False),
    ("avgpool_incl_pad", make([node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)], X4), False),
    ("avgpool_excl_pad_ceil", make([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)], {"x": [1, 2, 9, 9]}), False),
    ("gap", make([node("GlobalAveragePool", ["x"])], X4), False),
    ("gmp", make([node("GlobalMaxPool", ["x"])], X4), False),
    *[(op.lower(), make([node(op, ["x"])], X4, opset=14), op == "Sqrt") for op in ("Relu", "Sigmoid", "Tanh", "Exp", "Neg", "Sqrt", "HardSwish", "Identity")],
    ("clip_attrs_opset9", make([node("Clip", ["x"], min=0.0, max=6.0)], X4, opset=9), False),
    ("clip_opset13", make([node("Clip", ["x", "lo", "hi"])], X4, inits={"lo": np.float32(-0.5), "hi": np.float32(0.7)}, opset=13), False),
    ("clip_opset13_max_only", make([node("Clip", ["x", "", "hi"])], X4, inits={"hi": np.float32(0.2)}, opset=13), False),
    ("leakyrelu", make([node("LeakyRelu", ["x"], alpha=0.1)], X4), False),
    ("prelu", make([node("PRelu", ["x", "s"])], X4, inits={"s": _f(3, 1, 1)}), False),
    ("hardsigmoid", make([node("HardSigmoid", ["x"], alpha=0.3, beta=0.4)], X4), False),
    ("softmax_opset11_4d", make([node("Softmax", ["x"])], X4, opset=11), False),
    ("softmax_opset11_2d", make([node("Softmax", ["x"])], {"x": [3, 7]}, opset=11), False),
    ("softmax_opset11_last", make([node("Softmax", ["x"], axis=3)], X4, opset=11), False),
    ("softmax_opset13", make([node("Softmax", ["x"], axis=1)], X4, opset=13), False),
    ("add_bcast_const", make([node("Add", ["x", "c"])], X4, inits={"c": _f(1, 3, 1, 1)}), False),
    ("sub_two_inputs", make([node("Sub", ["x", "z"])], {"x": [2, 3, 4, 4], "z": [4]}), False),
    ("mul_scalar", make([node("Mul", ["x", "c"])], X4, inits={"c": np.float32(1.5)}), False),
    ("div", make([node("Div", ["x", "z"])], {"x": [2, 3], "z": [2, 1]}), True),
    ("pow_int_exponent", make([node("Pow", ["x", "e"])], X4, inits={"e": np.int64(2)}, opset=13), True),
    ("sum3", make([node("Sum", ["x", "z", "u"])], {"x": [2, 3], "z": [2, 3], "u": [3]}), False),
    ("concat", make([node("Concat", ["x", "z"], axis=-1)], {"x": [2, 3, 4], "z": [2, 3, 2]}), False),
    ("reshape", make([node("Reshape", ["x", "s"])], X4, inits={"s": np.array([0, -1, 16], I64)}), False),
    ("flatten", make([node("Flatten", ["x"], axis=2)], X4), False),
    ("transpose", make([node("Transpose", ["x"], perm=[0, 2, 3, 1])], X4), False),
    ("transpose_default", make([node("Transpose", ["x"])], {"x": [2, 3, 4]}), False),
    ("squeeze_opset11", make([node("Squeeze", ["x"], axes=[-2])], {"x": [2, 3, 1, 4]}, opset=11), False),
    ("squeeze_opset13", make([node("Squeeze", ["x", "a"])], {"x": [2, 1, 1, 4]}, inits={"a": np.array([1, 2], I64)}, opset=13), False),
    ("squeeze_all", make([node("Squeeze", ["x"])], {"x": [1, 3, 1, 4]}, opset=13), False),
    ("unsqueeze_opset11", make([node("Unsqueeze", ["x"], axes=[0, -1])], {"x": [2, 3]}, opset=11), False),
    ("unsqueeze_opset13", make([node("Unsqueeze", ["x", "a"])], {"x": [2, 3]}, inits={"a": np.array([1], I64)}, opset=13), False),
    ("pad_opset9", make([node("Pad", ["x"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=1.5)], X4, opset=9), False),
    ("pad_opset13", make([node("Pad", ["x", "p", "v"])], X4, inits={"p": np.array([0, 1, 1, 0, 0, 0, 2, 1], I64), "v": np.float32(-1.0)}, opset=13), False),
    ("pad_reflect", make([node("Pad", ["x", "p"], mode="reflect")], X4, inits={"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], I64)}, opset=13), False),
    ("pad_edge_axes", make([node("Pad", ["x", "p", "", "a"], mode="edge")], X4, inits={"p": np.array([1, 2, 2, 0], I64), "a": np.array([2, -1], I64)}, opset=18), False),
    ("dropout_opset9", make([node("Dropout", ["x"], ratio=0.3)], X4, opset=9), False),
    ("dropout_opset13", make([node("Dropout", ["x", "r"])], X4, inits={"r": np.float32(0.2)}, opset=13), False),
    ("lrn", make([node("LRN", ["x"], size=3, alpha=1e-3, beta=0.7, bias=2.0)], X4), False),
    ("reducemean_opset13", make([node("ReduceMean", ["x"], axes=[2, 3])], X4, opset=13), False),
    ("reducemean_opset18", make([node("ReduceMean", ["x", "a"], keepdims=0)], X4, inits={"a": np.array([-1, 1], I64)}, opset=18), False),
    ("split_opset11", make([node("Split", ["x"], ["y", "z"], axis=1, split=[1, 2])], X4, ["y", "z"], opset=11), False),
    ("split_opset13", make([node("Split", ["x", "s"], ["y", "z"], axis=-1)], X4, ["y", "z"], inits={"s": np.array([5, 3], I64)}, opset=13), False),
    ("split_equal", make([node("Split", ["x"], ["y", "z"], axis=2)], X4, ["y", "z"], opset=13), False),
    ("split_num_outputs", make([node("Split", ["x"], ["y", "z", "u"], axis=3, num_outputs=3)], X4, ["y", "z", "u"], opset=18), False),
    ("slice_opset9", make([node("Slice", ["x"], starts=[1, -3], ends=[100, -1], axes=[1, 3])], X4, opset=9), False),
    ("slice_neg_step", make([node("Slice", ["x", "s", "e", "a", "t"])], X4, inits={"s": np.array([-1, 6], I64), "e": np.array([-100, 0], I64), "a": np.array([2, 3], I64), "t": np.array([-2, -3], I64)}, opset=13), False),
    ("cast", make([node("Cast", ["x"], to=TensorProto.INT32)], X4, out_types={"y": TensorProto.INT32}), False),
    ("batchnorm_2d", make([node("BatchNormalization", ["x", "s", "b", "m", "v"])], {"x": [4, 3]}, inits={"s": _f(3), "b": _f(3), "m": _f(3), "v": np.abs(_f(3)) + 0.1}), False),
    ("concat_const", make([node("Concat", ["x", "c"], axis=1)], {"x": [2, 3]}, inits={"c": _f(2, 2)}), False),
    ("constant_node", make([node("Constant", [], ["c"], value=numpy_helper.from_array(_f(3, 1, 1))), node("Mul", ["x", "c"])], X4), False),
]
# fmt: on


@pytest.mark.parametrize("model,positive", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_single_op_roundtrip(model: onnx.ModelProto, positive: bool) -> None:
    roundtrip(model, positive)


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_export_opsets(opset: int) -> None:
    m = make([node("HardSwish", ["x"], ["h"]), node("ReduceMean", ["h"], axes=[1])], X4, opset=14)
    roundtrip(m, opset=opset)
    with pytest.raises(OptionError):
        export_model(import_model(m), opset=12)


def test_export_of_a_built_graph() -> None:
    from mcopt.ir import ttype

    g = Graph("built")
    x = g.add_input("inp", ttype((1, 3, 6, 6)))
    conv = g.add_node(
        "conv2d", [x, g.const(W, "w"), g.const(Bv, "b")], {"pads": (1, 1, 1, 1)}, name="c"
    )
    relu6 = g.add_node("clip", [conv.output], {"min": 0.0, "max": 6.0}, name="r6")
    upper = g.add_node("clip", [relu6.output], {"max": 1.0}, name="upper_only")
    g.outputs = [upper.output]
    verify(g)
    g.outputs.append(g.const(np.arange(3, dtype=np.float32), "table"))  # a constant output
    e = export_model(g)
    onnx.checker.check_model(e, full_check=True)
    assert [o.name for o in e.graph.output] == [upper.output.name, "table"]
    feeds = feeds_for(g)
    got = ort_run(e, feeds)
    want = run(g, feeds)
    assert_close(got[0], want[0], "built graph")
    np.testing.assert_array_equal(got[1], np.arange(3, dtype=np.float32))
    g.add_node("relu", [x], name="tail")
    g.nodes[-1].op = "not_an_onnx_op"
    with pytest.raises(UnsupportedOpError, match="node 'tail'"):
        export_model(g)


# --- shape folding ---------------------------------------------------------------------------------
def _flatten_by_shape_model(batch: int | str = "N") -> onnx.ModelProto:
    nodes = [
        node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0, name="gather"),
        helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0, name="concat"),
        node("Reshape", ["x", "target"], ["y"]),
    ]
    return make(
        nodes,
        {"x": [batch, 3, 4, 4]},
        inits={"zero": np.array([0], I64), "minus1": np.array([-1], I64)},
        opset=13,
    )


def test_shape_arithmetic_folds_to_constants() -> None:
    g = roundtrip(_flatten_by_shape_model())
    assert [n.op for n in g.nodes] == ["reshape"]
    assert g.nodes[0].attrs["shape"] == (1, 48)
    g3 = import_model(_flatten_by_shape_model(), input_shapes={"x": [3, 3, 4, 4]})
    assert g3.nodes[0].attrs["shape"] == (3, 48)
    assert g3.metadata["dynamic_dims"] == {"x": {0: "N"}}
    g2 = import_model(_flatten_by_shape_model(), default_batch=2)
    assert g2.inputs[0].shape == (2, 3, 4, 4)


def test_constant_of_shape_range_and_scalar_shape_ops_fold() -> None:
    nodes = [
        node("Shape", ["x"], ["shp"]),
        helper.make_node("Slice", ["shp", "one", "two"], ["c"], name="slice_shape"),
        helper.make_node(
            "ConstantOfShape",
            ["c"],
            ["ones"],
            value=numpy_helper.from_array(np.array([1.0], np.float32)),
        ),
        helper.make_node("Range", ["r0", "r1", "r2"], ["rng"]),
        helper.make_node("Cast", ["rng"], ["rngf"], to=F),
        helper.make_node("Size", ["x"], ["sz"]),
        helper.make_node("Cast", ["sz"], ["szf"], to=F),
        helper.make_node("Mul", ["ones", "rngf"], ["m"]),  # (3,) * (3,)
        helper.make_node("Div", ["m", "szf"], ["d"]),
        helper.make_node("Unsqueeze", ["d", "ax"], ["du"]),  # (3,1,1)
        node("Add", ["x", "du"]),
    ]
    inits = {"one": np.array([1], I64), "two": np.array([2], I64), "r0": np.int64(0),
             "r1": np.int64(3), "r2": np.int64(1), "ax": np.array([1, 2], I64)}  # fmt: skip
    g = roundtrip(make(nodes, {"x": [2, 3, 4, 4]}, inits=inits, opset=13))
    assert [n.op for n in g.nodes] == ["add"]


def test_dead_nodes_are_skipped_and_identity_of_const_aliases() -> None:
    nodes = [
        helper.make_node("NonMaxSuppression", ["bx", "sc"], ["dead"], name="unused_nms"),
        helper.make_node("Identity", ["c"], ["ci"], name="id_c"),
        node("Add", ["x", "ci"]),
    ]
    inputs = {**X4, "bx": [1, 4, 4], "sc": [1, 1, 4]}
    g = roundtrip(make(nodes, inputs, inits={"c": np.float32(2.0)}))
    assert [n.op for n in g.nodes] == ["add"]


def test_folded_output_and_aliased_outputs_keep_names() -> None:
    nodes = [node("Shape", ["x"], ["shp"]), node("Relu", ["x"], ["r"])]
    m = make(nodes, X4, ["shp", "r", "x"], out_types={"shp": TensorProto.INT64})
    g = import_model(m)
    assert [v.name for v in g.outputs] == ["shp", "r", "x"]
    e = export_model(g)
    onnx.checker.check_model(e, full_check=True)
    feeds = feeds_for(g)
    for a, b in zip(ort_run(e, feeds), ort_run(m, feeds)):
        np.testing.assert_array_equal(a, b)


def test_ir3_initializers_listed_as_inputs_are_constants() -> None:
    m = make([node("Conv", ["x", "w"])], X4, inits={"w": W}, opset=9)
    m.graph.input.append(helper.make_tensor_value_info("w", F, [4, 3, 3, 3]))
    m.ir_version = 3
    g = import_model(m)
    assert [v.name for v in g.inputs] == ["x"] and g.nodes[0].inputs[1].is_const


def test_names_and_metadata() -> None:
    m = make([node("Relu", ["x"])], {"x": ["batch", 3, 4, 4]}, opset=12)
    m.producer_name, m.producer_version = "pytorch", "2.3"
    g = import_model(m)
    assert g.nodes[0].name == "relu_node" and g.outputs[0].name == "y"
    assert g.metadata["opset"] == 12 and g.metadata["producer"] == "pytorch 2.3"
    assert g.metadata["dynamic_dims"] == {"x": {0: "batch"}}
    anon = make([helper.make_node("Relu", ["x"], ["y"])], X4)
    assert import_model(anon).nodes[0].name == "Relu_0"
    clash = make([node("Relu", ["x"], ["a"]), node("Softmax", ["a"])], X4, opset=11)
    g = import_model(clash)  # the flatten/softmax/reshape intermediates never steal ONNX names
    assert [v.name for v in g.outputs] == ["y"] and g.nodes[-1].name == "softmax_node"


def test_export_dedups_shared_arrays_and_save_is_atomic(tmp_path: Path) -> None:
    g = import_model(make([node("Add", ["x", "c"], ["a"]), node("Mul", ["a", "d"])], X4,
                          inits={"c": _f(3, 1, 1), "d": np.float32(2.0)}))  # fmt: skip
    shared = g.nodes[0].inputs[1]
    g.nodes[1].set_input(1, g.const(shared.const, name="again", dtype=np.float32))
    g.nodes[1].inputs[1].const = shared.const  # same array object
    e = export_model(g)
    assert len(e.graph.initializer) == 1
    out = save_model(g, tmp_path / "sub" / "m.onnx")
    assert out.exists() and [p.name for p in out.parent.iterdir()] == ["m.onnx"]
    assert import_model(out).outputs[0].name == "y"
    save_model(load_onnx(out), out)  # overwrite in place via os.replace
    assert load_onnx(out).graph.output[0].name == "y"


def test_external_data(tmp_path: Path) -> None:
    m = make([node("Conv", ["x", "w"])], X4, inits={"w": _f(4, 3, 3, 3)})
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.bin", size_threshold=0)  # fmt: skip
    g = import_model(str(path))
    assert g.nodes[0].inputs[1].const.shape == (4, 3, 3, 3)
    (tmp_path / "ext.bin").unlink()
    with pytest.raises(ModelLoadError, match="external"):
        import_model(path)


# --- bad input -------------------------------------------------------------------------------------
def _snapshot(p: Path) -> tuple[bytes, int]:
    return p.read_bytes(), p.stat().st_mtime_ns


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = make([node("Conv", ["x", "w"])], X4, inits={"w": W}).SerializeToString()
    files = {
        "truncated": good[: len(good) // 2],
        "text": b"this is a text file, not a model\n" * 3,
        "png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
        "empty": b"",
    }
    out = {}
    for name, data in files.items():
        p = tmp_path / f"{name}.onnx"
        p.write_bytes(data)
        out[name] = p
    return out


@pytest.mark.parametrize("kind", ["truncated", "text", "png", "empty"])
def test_bad_files_raise_model_load_error(tmp_path: Path, kind: str) -> None:
    p = _bad_files(tmp_path)[kind]
    before = _snapshot(p)
    with pytest.raises(ModelLoadError) as ei:
        import_model(p)
    msg = str(ei.value)
    assert str(p) in msg and "\n" not in msg
    assert _snapshot(p) == before


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        import_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="directory"):
        import_model(tmp_path)
    with pytest.raises(ModelLoadError):
        import_model(b"garbage bytes")


def _unsupported_models() -> dict[str, onnx.ModelProto]:
    nms = make(
        [helper.make_node("NonMaxSuppression", ["x", "s"], ["y"], name="nms_1")],
        {"x": [1, 4, 4], "s": [1, 1, 4]},
        out_types={"y": TensorProto.INT64},
    )
    custom = make(
        [helper.make_node("MyOp", ["x"], ["y"], name="custom_1", domain="com.example")], X4
    )
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    return {"nms_1": nms, "custom_1": custom}


@pytest.mark.parametrize("node_name", ["nms_1", "custom_1"])
def test_unsupported_op(tmp_path: Path, node_name: str) -> None:
    p = tmp_path / "m.onnx"
    p.write_bytes(_unsupported_models()[node_name].SerializeToString())
    before = _snapshot(p)
    with pytest.raises(UnsupportedOpError) as ei:
        import_model(p)
    msg = str(ei.value)
    assert f"node '{node_name}'" in msg and "not supported" in msg and "\n" not in msg
    assert _snapshot(p) == before


@pytest.mark.parametrize(
    "nodes,inputs,match",
    [
        (
            [
                node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2]),
                node("Cast", ["i"], ["z"], to=F),
            ],
            X4,
            "Indices",
        ),
        (
            [
                # opset 13 BatchNormalization has 1 or 5 outputs (a 2-output one is invalid ONNX)
                node(
                    "BatchNormalization", ["x", "s", "s", "s", "s"], ["y", "rm", "rv", "sm", "sv"]
                ),
                node("Relu", ["rm"], ["z"]),
            ],
            X4,
            "training",
        ),
        ([node("Dropout", ["x"], ["y", "mask"]), node("Cast", ["mask"], ["z"], to=F)], X4, "mask"),
        ([node("Conv", ["x", "w"], ["z"])], {"x": [1, 3, 4, 4, 4]}, "3-D Conv"),
    ],
    ids=["maxpool_indices", "bn_training", "dropout_mask", "conv3d"],
)
def test_unsupported_node_forms(
    nodes: list[onnx.NodeProto], inputs: dict[str, Any], match: str
) -> None:
    m = make(nodes, inputs, ["z"], inits={"s": _f(3), "w": _f(2, 3, 1, 1, 1)}, opset=13)
    with pytest.raises(UnsupportedOpError, match=match):
        import_model(m)


def test_old_opset_upgraded(tmp_path: Path) -> None:
    """opset < 9 is upgraded with onnx.version_converter; opset-6 PRelu keeps its per-channel slope."""
    slope = np.array([0.1, -0.5, 2.0], np.float32)
    m = make(
        [node("Relu", ["x"], ["r"]), node("PRelu", ["x", "s"], ["p"]), node("Sum", ["r", "p"])],
        X4,
        inits={"s": slope},
        opset=6,
    )
    p = tmp_path / "old.onnx"
    p.write_bytes(m.SerializeToString())
    before = _snapshot(p)
    g = import_model(p)
    assert _snapshot(p) == before  # the user's file is never modified
    assert g.metadata["upgraded_from_opset"] == 6 and g.metadata["opset"] == 9
    x = RNG.standard_normal(X4["x"]).astype(np.float32)
    want = np.maximum(x, 0) + np.where(x >= 0, x, x * slope.reshape(3, 1, 1))
    np.testing.assert_allclose(run(g, [x])[0], want, rtol=1e-6, atol=1e-6)
    before_proto = m.SerializeToString()
    import_model(m)
    assert m.SerializeToString() == before_proto  # a ModelProto argument is not modified either


def test_ir3_model_with_initializers_not_in_inputs_is_upgraded(tmp_path: Path) -> None:
    """An IR-3 / opset-7 model whose weight is only an initializer (onnxruntime's own
    ``datasets/mul_1.onnx``): the converter needed it listed as an input ("Input W is
    undefined!"); it imports with one input and the weight a constant, the file untouched."""
    w = RNG.standard_normal((3, 2)).astype(np.float32)
    m = make([node("Mul", ["x", "w"], ["z"])], {"x": [3, 2]}, ["z"], inits={"w": w}, opset=7)
    m.ir_version = 3
    assert [i.name for i in m.graph.input] == ["x"]
    p = tmp_path / "ir3.onnx"
    p.write_bytes(m.SerializeToString())
    before = _snapshot(p)
    g = import_model(p)
    assert _snapshot(p) == before
    assert [v.name for v in g.inputs] == ["x"] and g.metadata["upgraded_from_opset"] == 7
    x = RNG.standard_normal((3, 2)).astype(np.float32)
    np.testing.assert_array_equal(run(g, [x])[0], x * w)


@pytest.mark.parametrize(
    ("nodes", "opset", "says"),
    [
        ([node("NoSuchOp", ["x"])], 6, "'NoSuchOp', which is not an ONNX operator"),
        (
            [node("BatchNormalization", ["x", "s", "b", "m", "v"], spatial=0)],
            6,
            "upgrading it to opset 9 with onnx.version_converter failed (RuntimeError: Attribute "
            "spatial",
        ),
        ([node("GlobalMaxPool", ["x"])], 22, "downgrading it to opset 21"),
    ],
    ids=["unknown_op", "converter_error", "no_downgrade_adapter"],
)
def test_opset_conversion_failure_is_one_line(
    tmp_path: Path, nodes: list[onnx.NodeProto], opset: int, says: str
) -> None:
    p = tmp_path / "old.onnx"
    inits = {k: np.ones(3, np.float32) for k in "sbmv"}
    p.write_bytes(make(nodes, X4, inits=inits, opset=opset).SerializeToString())
    before = _snapshot(p)
    with pytest.raises(ModelLoadError) as ei:
        import_model(p)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and f"opset {opset}" in msg and says in msg, msg
    assert "/project/" not in msg and "Assertion" not in msg
    assert _snapshot(p) == before


def test_new_opset_downgraded() -> None:
    g = import_model(make([node("Relu", ["x"])], X4, opset=22))
    assert g.metadata["downgraded_from_opset"] == 22 and g.metadata["opset"] == 21
    assert "upgraded_from_opset" not in g.metadata
    assert "upgraded_from_opset" not in import_model(make([node("Relu", ["x"])], X4)).metadata


def test_dynamic_dims(tmp_path: Path) -> None:
    m = make([node("Relu", ["x"])], {"x": ["N", 3, "H", "W"]})
    p = tmp_path / "dyn.onnx"
    p.write_bytes(m.SerializeToString())
    before = _snapshot(p)
    with pytest.raises(ShapeError) as ei:
        import_model(p)
    msg = str(ei.value)
    assert "'x'" in msg and "dim 2" in msg and "input_shapes" in msg and "--input-shape" in msg
    assert _snapshot(p) == before
    g = import_model(p, input_shapes={"x": [2, 3, 5, 6]})
    assert g.inputs[0].shape == (2, 3, 5, 6)
    assert g.metadata["dynamic_dims"] == {"x": {0: "N", 2: "H", 3: "W"}}
    with pytest.raises(ShapeError, match="unknown input"):
        import_model(p, input_shapes={"y": [1, 3, 4, 4]})
    with pytest.raises(ShapeError, match="rank"):
        import_model(p, input_shapes={"x": [1, 3, 4]})
    unranked = make([node("Relu", ["x"])], {"x": None})
    with pytest.raises(ShapeError, match="no shape"):
        import_model(unranked)


# --- real models -----------------------------------------------------------------------------------
def _zoo() -> Any:
    return pytest.importorskip("mcopt.testing.zoo")


def _check_model(
    model: onnx.ModelProto, rtol: float = 1e-4, export: bool = True, **kw: Any
) -> Graph:
    graph = import_model(model, **kw)
    feeds = feeds_for(graph, seed=1)
    want = ort_run(model, feeds)
    for i, (g, w) in enumerate(zip(run(graph, feeds), want)):
        assert_close(np.asarray(g), w, f"interpreter output {i}", rtol)
    if export:
        exported = export_model(graph)
        onnx.checker.check_model(exported, full_check=True)
        for i, (g, w) in enumerate(zip(ort_run(exported, feeds), want)):
            assert_close(g, w, f"exported output {i}", rtol)
    return graph


def test_zoo_tiny_cnn_and_small_mobilenet() -> None:
    zoo = _zoo()
    _check_model(zoo.tiny_cnn())
    g = _check_model(zoo.tiny_cnn(dynamic_batch=True), input_shapes={"input": [2, 3, 32, 32]})
    assert g.inputs[0].shape[0] == 2 and g.metadata["dynamic_dims"] == {"input": {0: "N"}}
    g = _check_model(zoo.mobilenet_v2(width_mult=0.25, resolution=32, num_classes=10))
    assert len(g.nodes_of("conv2d")) == 52


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bvlc_alexnet", "vgg19", "squeezenet", "resnet50", "shufflenet",
                                  "inception_v1", "inception_v2", "densenet121", "zfnet512"])  # fmt: skip
def test_zoo_light_models(name: str) -> None:
    zoo = _zoo()
    assert name in zoo.LIGHT_MODELS
    _check_model(zoo.light_model(name, seed=0))


@pytest.mark.slow
def test_zoo_full_mobilenet_v2() -> None:
    _check_model(_zoo().mobilenet_v2())


# --- random conv graphs (hypothesis) ---------------------------------------------------------------
@st.composite
def conv_graphs(draw: st.DrawFn) -> onnx.ModelProto:
    c0 = draw(st.integers(1, 6))
    h0 = draw(st.integers(5, 10))
    w0 = draw(st.integers(5, 10))
    tensors: list[tuple[str, tuple[int, int, int, int]]] = [("x", (1, c0, h0, w0))]
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    for i in range(draw(st.integers(1, 6))):
        name, (n, c, h, w) = tensors[draw(st.integers(0, len(tensors) - 1))]
        out = f"t{i}"
        kind = draw(st.sampled_from(["conv", "relu", "add", "concat", "maxpool", "avgpool", "gap"]))
        if kind == "conv":
            k = draw(st.sampled_from([1, 3]))
            k = min(k, h, w)
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, k // 2))
            groups = draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0]))
            o = groups * draw(st.integers(1, 3))
            inits[f"w{i}"] = rng.standard_normal((o, c // groups, k, k)).astype(np.float32)
            inits[f"b{i}"] = rng.standard_normal(o).astype(np.float32)
            nodes.append(helper.make_node("Conv", [name, f"w{i}", f"b{i}"], [out], name=f"conv{i}",
                                          strides=[s, s], pads=[p] * 4, group=groups))  # fmt: skip
            shape = (n, o, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        elif kind in ("maxpool", "avgpool") and min(h, w) >= 2:
            k = draw(st.integers(2, min(3, h, w)))
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, k - 1))
            ceil = draw(st.integers(0, 1))
            op = "MaxPool" if kind == "maxpool" else "AveragePool"
            extra = {} if op == "MaxPool" else {"count_include_pad": draw(st.integers(0, 1))}
            nodes.append(helper.make_node(op, [name], [out], name=f"pool{i}", kernel_shape=[k, k],
                                          strides=[s, s], pads=[p] * 4, ceil_mode=ceil, **extra))  # fmt: skip
            dims = []
            for d in (h, w):
                span = d + 2 * p - k
                q = -(-span // s) if ceil else span // s
                if ceil and q * s >= d + p:  # the last window must start inside input + left pad
                    q -= 1
                dims.append(q + 1)
            shape = (n, c, dims[0], dims[1])
        elif kind == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", [name], [out], name=f"gap{i}"))
            shape = (n, c, 1, 1)
        elif kind in ("add", "concat"):
            others = [
                t
                for t in tensors
                if (t[1] == (n, c, h, w) if kind == "add" else t[1][2:] == (h, w))
            ]
            other = draw(st.sampled_from(others))[0]
            op = "Add" if kind == "add" else "Concat"
            attrs = {"axis": 1} if op == "Concat" else {}
            nodes.append(helper.make_node(op, [name, other], [out], name=f"{kind}{i}", **attrs))
            c2 = next(t[1][1] for t in tensors if t[0] == other)
            shape = (n, c + c2 if kind == "concat" else c, h, w)
        else:
            nodes.append(helper.make_node("Relu", [name], [out], name=f"relu{i}"))
            shape = (n, c, h, w)
        tensors.append((out, shape))
    outputs = [tensors[-1][0]]
    if len(tensors) > 2 and draw(st.booleans()):
        outputs.append(tensors[draw(st.integers(1, len(tensors) - 2))][0])
    return make(
        nodes,
        {"x": list(tensors[0][1])},
        outputs,
        inits=inits,
        opset=draw(st.sampled_from([11, 13, 17])),
    )


@settings(max_examples=30, deadline=None)
@given(conv_graphs())
def test_random_conv_graphs_roundtrip(model: onnx.ModelProto) -> None:
    roundtrip(model)
