"""Every core op against onnxruntime: one single-node ONNX model per case, random inputs,
rel. error <= 1e-4 of the output's max magnitude; plus shape inference, checks and attributes."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from mcopt.errors import ShapeError, VerifyError
from mcopt.interpreter import run as interp_run
from mcopt.ir.core import Graph
from mcopt.ir.types import TensorType, dtype_name
from mcopt.ops import all_ops, get_schema

RTOL = 1e-4
RNG = np.random.default_rng(0)


def rand(*shape: int, dtype: Any = np.float32, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return RNG.uniform(lo, hi, size=shape).astype(dtype)


def i64(*vals: int) -> np.ndarray:
    return np.array(vals, dtype=np.int64)


# --- runners --------------------------------------------------------------------------------------
def ort_run(
    op_type: str,
    inputs: list[np.ndarray | None],
    attrs: dict[str, Any] | None = None,
    n_out: int = 1,
    opset: int = 17,
    consts: tuple[int, ...] = (),
) -> list[np.ndarray]:
    """Run one ONNX node; inputs in `consts` (indices) become initializers, None -> omitted."""
    names, vis, inits, feeds = [], [], [], {}
    for i, a in enumerate(inputs):
        if a is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if i in consts:
            inits.append(numpy_helper.from_array(a, name))
        else:
            elem = helper.np_dtype_to_tensor_dtype(a.dtype)
            vis.append(helper.make_tensor_value_info(name, elem, a.shape))
            feeds[name] = a
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op_type, names, outs, **(attrs or {}))
    graph = helper.make_graph(
        [node], "t", vis, [helper.make_empty_tensor_value_info(o) for o in outs], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def mc_run(op: str, inputs: list[np.ndarray | None], attrs: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    """Build a one-node mcopt graph (shape inference via Graph.add_node), run it with the reference
    interpreter and check the inferred output types against what the reference produced."""
    g = Graph("t")
    vals = [
        None if a is None else g.add_input(f"x{i}", TensorType(a.shape, dtype_name(a.dtype)))
        for i, a in enumerate(inputs)
    ]
    node = g.add_node(op, vals, attrs or {}, name="n")
    g.outputs = list(node.outputs)
    outs = interp_run(g, [a for a in inputs if a is not None])
    assert len(outs) == len(node.outputs)
    for v, o in zip(node.outputs, outs):
        assert v.shape == o.shape, f"{op}: inferred {v.shape}, reference gave {o.shape}"
        assert v.dtype == o.dtype.name, f"{op}: inferred {v.dtype}, reference gave {o.dtype}"
    return outs


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> None:
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"dtype {got.dtype} != {want.dtype}"
    if not np.issubdtype(want.dtype, np.floating):
        np.testing.assert_array_equal(got, want)
        return
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin])
    if not fin.any():
        return
    scale = max(float(np.max(np.abs(want[fin]))), 1e-12)
    err = float(np.max(np.abs(got[fin].astype(np.float64) - want[fin]))) / scale
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def check_vs_ort(
    op: str,
    inputs: list[np.ndarray | None],
    attrs: dict[str, Any],
    onnx_op: str,
    onnx_inputs: list[np.ndarray | None] | None = None,
    onnx_attrs: dict[str, Any] | None = None,
    opset: int = 17,
) -> list[np.ndarray]:
    got = mc_run(op, inputs, attrs)
    want = ort_run(
        onnx_op,
        inputs if onnx_inputs is None else onnx_inputs,
        onnx_attrs or {},
        n_out=len(got),
        opset=opset,
    )
    for g_, w in zip(got, want):
        assert_close(g_, w)
    return got


# --- conv2d ---------------------------------------------------------------------------------------
def _conv_case(
    n: int,
    c: int,
    h: int,
    w: int,
    o: int,
    k: tuple[int, int],
    strides: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    dil: tuple[int, int] = (1, 1),
    groups: int = 1,
    bias: bool = True,
) -> None:
    x = rand(n, c, h, w)
    wt = rand(o, c // groups, *k)
    b = rand(o) if bias else None
    attrs = {"strides": strides, "pads": pads, "dilations": dil, "groups": groups}
    onnx_attrs = {
        "kernel_shape": list(k),
        "strides": list(strides),
        "pads": list(pads),
        "dilations": list(dil),
        "group": groups,
    }
    check_vs_ort("conv2d", [x, wt, b], attrs, "Conv", onnx_attrs=onnx_attrs)


@pytest.mark.parametrize(
    "case",
    [
        dict(n=1, c=3, h=9, w=9, o=4, k=(3, 3)),
        dict(n=2, c=8, h=7, w=6, o=5, k=(1, 1), bias=False),
        dict(n=1, c=8, h=9, w=9, o=6, k=(1, 1), strides=(2, 2)),
        dict(n=1, c=8, h=10, w=9, o=6, k=(1, 3), strides=(2, 1), pads=(0, 1, 1, 0)),
        dict(n=2, c=6, h=11, w=10, o=4, k=(3, 3), groups=2, pads=(1, 1, 1, 1)),
        dict(n=1, c=8, h=12, w=12, o=8, k=(3, 3), groups=8, pads=(1, 1, 1, 1)),  # depthwise
        dict(n=2, c=4, h=12, w=11, o=8, k=(3, 3), groups=4, strides=(2, 2), pads=(0, 1, 2, 1)),
        dict(n=1, c=5, h=13, w=13, o=5, k=(5, 5), groups=5, dil=(2, 2), pads=(4, 4, 4, 4)),
        dict(n=1, c=4, h=14, w=13, o=3, k=(3, 2), dil=(2, 3), strides=(2, 1), pads=(1, 0, 2, 3)),
        dict(n=1, c=3, h=23, w=23, o=8, k=(7, 7), strides=(2, 2), pads=(3, 3, 3, 3)),
        dict(n=1, c=1, h=8, w=8, o=4, k=(3, 3), pads=(1, 2, 0, 1)),
        dict(n=1, c=4, h=5, w=5, o=4, k=(5, 5), pads=(2, 2, 2, 2), groups=2),
    ],
)
def test_conv2d(case: dict[str, Any]) -> None:
    _conv_case(**case)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 2),
    cg=st.integers(1, 3),
    groups=st.integers(1, 3),
    og=st.integers(1, 3),
    h=st.integers(1, 10),
    w=st.integers(1, 10),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    dh=st.integers(1, 2),
    dw=st.integers(1, 2),
    pads=st.tuples(*[st.integers(0, 3)] * 4),
    bias=st.booleans(),
)
def test_conv2d_sweep(
    n: int,
    cg: int,
    groups: int,
    og: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    dh: int,
    dw: int,
    pads: tuple[int, int, int, int],
    bias: bool,
) -> None:
    hp, wp = h + pads[0] + pads[2], w + pads[1] + pads[3]
    assume(hp >= dh * (kh - 1) + 1 and wp >= dw * (kw - 1) + 1)
    _conv_case(n, cg * groups, h, w, og * groups, (kh, kw), (sh, sw), pads, (dh, dw), groups, bias)


def test_conv2d_depthwise_large() -> None:
    """Many groups (a MobileNet layer shape) with channel multiplier 1 and 2."""
    _conv_case(1, 64, 14, 14, 64, (3, 3), (2, 2), (1, 1, 1, 1), groups=64)
    _conv_case(1, 32, 9, 9, 64, (3, 3), (1, 1), (1, 1, 1, 1), groups=32)


def test_conv2d_macs() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((1, 8, 10, 10)))
    w = g.const(rand(4, 4, 3, 3))
    node = g.add_node("conv2d", [x, w], {"groups": 2, "pads": (1, 1, 1, 1)})
    assert node.output.shape == (1, 4, 10, 10)
    schema = get_schema("conv2d")
    assert schema.count_macs([x.type, w.type], [node.output.type], node.attrs) == 400 * 4 * 9


# --- dense / matmul / batch_norm -----------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_dense(bias: bool) -> None:
    x, w = rand(3, 20), rand(7, 20)
    b = rand(7) if bias else None
    check_vs_ort("dense", [x, w, b], {}, "Gemm", onnx_attrs={"transB": 1})
    s = get_schema("dense")
    tx, tw = TensorType(x.shape), TensorType(w.shape)
    assert s.count_macs([tx, tw], s.infer_types([tx, tw], {}), {}) == 3 * 7 * 20


def test_dense_batched_shape() -> None:
    (y,) = mc_run("dense", [rand(2, 3, 5), rand(4, 5), rand(4)])
    assert y.shape == (2, 3, 4)


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((3, 4), (4, 5)),
        ((2, 1, 3, 4), (5, 4, 6)),
        ((4,), (4, 5)),
        ((3, 4), (4,)),
        ((2, 3, 4), (4,)),
    ],
)
def test_matmul(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    check_vs_ort("matmul", [rand(*sa), rand(*sb)], {}, "MatMul")


@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (3, 5), (2, 5, 7)])
def test_batch_norm(shape: tuple[int, ...]) -> None:
    c = shape[1]
    ins = [rand(*shape), rand(c), rand(c), rand(c), rand(c, lo=0.1, hi=2.0)]
    check_vs_ort(
        "batch_norm", ins, {"epsilon": 1e-3}, "BatchNormalization", onnx_attrs={"epsilon": 1e-3}
    )
    s = get_schema("batch_norm")
    types = [TensorType(a.shape) for a in ins]
    assert s.count_macs(types, s.infer_types(types, {"epsilon": 1e-3}), {}) == int(np.prod(shape))


# --- pooling --------------------------------------------------------------------------------------
def _pool_case(
    kind: str,
    shape: tuple[int, int, int, int],
    k: tuple[int, int],
    strides: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    ceil_mode: int = 0,
    count_include_pad: int = 0,
    dil: tuple[int, int] = (1, 1),
) -> None:
    x = rand(*shape)
    attrs: dict[str, Any] = {"kernel": k, "strides": strides, "pads": pads, "ceil_mode": ceil_mode}
    onnx_attrs: dict[str, Any] = {
        "kernel_shape": list(k),
        "strides": list(strides),
        "pads": list(pads),
        "ceil_mode": ceil_mode,
    }
    if kind == "max":
        attrs["dilations"] = dil
        onnx_attrs["dilations"] = list(dil)
        check_vs_ort("max_pool", [x], attrs, "MaxPool", onnx_attrs=onnx_attrs)
    else:
        attrs["count_include_pad"] = count_include_pad
        onnx_attrs["count_include_pad"] = count_include_pad
        check_vs_ort("avg_pool", [x], attrs, "AveragePool", onnx_attrs=onnx_attrs)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(
    "case",
    [
        dict(shape=(1, 3, 8, 8), k=(2, 2), strides=(2, 2)),
        dict(shape=(2, 3, 7, 9), k=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
        dict(shape=(1, 2, 7, 7), k=(3, 3), strides=(2, 2), ceil_mode=1),
        dict(shape=(1, 2, 6, 6), k=(2, 2), strides=(3, 3), pads=(0, 0, 1, 1), ceil_mode=1),
        dict(shape=(1, 2, 7, 8), k=(3, 2), strides=(2, 3), pads=(1, 0, 2, 1), ceil_mode=1),
        dict(shape=(1, 2, 1, 7), k=(1, 1), strides=(1, 5), ceil_mode=1),
        dict(shape=(1, 2, 9, 9), k=(3, 3), strides=(1, 1), pads=(2, 0, 1, 2)),
        dict(shape=(1, 1, 7, 7), k=(4, 4), strides=(4, 4), ceil_mode=1),
        dict(shape=(1, 2, 112, 112), k=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    ],
)
@pytest.mark.parametrize("cip", [0, 1])
def test_pool(kind: str, case: dict[str, Any], cip: int) -> None:
    if kind == "max" and cip:
        case = dict(case, dil=(2, 1)) if case["shape"][2] >= 7 else case
    _pool_case(kind, count_include_pad=cip, **case)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["max", "avg"]),
    h=st.integers(1, 10),
    w=st.integers(1, 10),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    sh=st.integers(1, 4),
    sw=st.integers(1, 4),
    pads=st.tuples(*[st.integers(0, 3)] * 4),
    ceil_mode=st.integers(0, 1),
    cip=st.integers(0, 1),
    dil=st.tuples(st.integers(1, 2), st.integers(1, 2)),
)
def test_pool_sweep(
    kind: str,
    h: int,
    w: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    pads: tuple[int, int, int, int],
    ceil_mode: int,
    cip: int,
    dil: tuple[int, int],
) -> None:
    if kind == "avg":
        dil = (1, 1)
    # onnxruntime requires pads < kernel and a non-empty output
    pads = (min(pads[0], kh - 1), min(pads[1], kw - 1), min(pads[2], kh - 1), min(pads[3], kw - 1))
    assume(h + pads[0] + pads[2] >= dil[0] * (kh - 1) + 1)
    assume(w + pads[1] + pads[3] >= dil[1] * (kw - 1) + 1)
    _pool_case(kind, (1, 2, h, w), (kh, kw), (sh, sw), pads, ceil_mode, cip, dil)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 4, 7), (1, 2, 1, 1)])
def test_global_pools(shape: tuple[int, ...]) -> None:
    x = rand(*shape)
    check_vs_ort("global_avg_pool", [x], {}, "GlobalAveragePool")
    check_vs_ort("global_max_pool", [x], {}, "GlobalMaxPool")


# --- lrn / softmax --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 3, 4, 5])
def test_lrn(size: int) -> None:
    x = rand(2, 7, 4, 5, lo=-3, hi=3)
    attrs = {"size": size, "alpha": 1e-2, "beta": 0.75, "bias": 2.0}
    if size % 2:
        check_vs_ort("lrn", [x], attrs, "LRN", onnx_attrs=attrs)
    else:  # onnxruntime only implements odd sizes (and onnx.reference's LRN loops over N, not C)
        assert_close(mc_run("lrn", [x], attrs)[0], _lrn_spec(x, **attrs))


def _lrn_spec(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """The ONNX LRN definition, literally: channels max(0, c - floor((size-1)/2)) ..
    min(C-1, c + ceil((size-1)/2))."""
    c_count = x.shape[1]
    sq = np.zeros(x.shape, np.float64)
    for c in range(c_count):
        lo = max(0, c - (size - 1) // 2)
        hi = min(c_count - 1, c + -(-(size - 1) // 2))
        sq[:, c] = np.sum(x[:, lo : hi + 1].astype(np.float64) ** 2, axis=1)
    return (x / (bias + alpha / size * sq) ** beta).astype(x.dtype)


@pytest.mark.parametrize("axis", [-1, 1, 0, -3])
def test_softmax(axis: int) -> None:
    x = rand(3, 4, 5, lo=-50, hi=50)
    x[0, 0, 0] = 1e4  # would overflow a naive exp
    check_vs_ort("softmax", [x], {"axis": axis}, "Softmax", onnx_attrs={"axis": axis})


# --- elementwise ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "op,onnx_op,lo,hi",
    [
        ("relu", "Relu", -2, 2),
        ("sigmoid", "Sigmoid", -100, 100),
        ("tanh", "Tanh", -5, 5),
        ("hard_swish", "HardSwish", -6, 6),
        ("identity", "Identity", -2, 2),
        ("exp", "Exp", -5, 5),
        ("sqrt", "Sqrt", 0, 10),
        ("neg", "Neg", -2, 2),
        ("dropout", "Dropout", -2, 2),
    ],
)
def test_unary(op: str, onnx_op: str, lo: float, hi: float) -> None:
    x = rand(2, 3, 4, 5, lo=lo, hi=hi)
    check_vs_ort(op, [x], {}, onnx_op)
    assert get_schema(op).elementwise


@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (-0.5, None), (None, 0.25), (None, None)])
def test_clip(lo: float | None, hi: float | None) -> None:
    x = rand(2, 3, 4, lo=-8, hi=8)
    attrs: dict[str, Any] = {}
    if lo is not None:
        attrs["min"] = lo
    if hi is not None:
        attrs["max"] = hi
    bound = [None if v is None else np.array(v, np.float32) for v in (lo, hi)]
    check_vs_ort("clip", [x], attrs, "Clip", onnx_inputs=[x, *bound])


def test_clip_int() -> None:
    x = RNG.integers(-10, 10, size=(3, 4)).astype(np.int32)
    lo, hi = np.array(-3, np.int32), np.array(5, np.int32)
    check_vs_ort("clip", [x], {"min": -3, "max": 5}, "Clip", onnx_inputs=[x, lo, hi])


@pytest.mark.parametrize("alpha", [0.01, 0.3])
def test_leaky_relu(alpha: float) -> None:
    x = rand(2, 3, 4)
    check_vs_ort("leaky_relu", [x], {"alpha": alpha}, "LeakyRelu", onnx_attrs={"alpha": alpha})


def test_hard_sigmoid() -> None:
    x = rand(2, 3, 4, lo=-6, hi=6)
    attrs = {"alpha": 0.3, "beta": 0.4}
    check_vs_ort("hard_sigmoid", [x], attrs, "HardSigmoid", onnx_attrs=attrs)


@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (1,), (2, 3, 4, 5)])
def test_prelu(slope_shape: tuple[int, ...]) -> None:
    check_vs_ort("prelu", [rand(2, 3, 4, 5), rand(*slope_shape)], {}, "PRelu")


@pytest.mark.parametrize(
    "op,onnx_op", [("add", "Add"), ("sub", "Sub"), ("mul", "Mul"), ("div", "Div"), ("pow", "Pow")]
)
@pytest.mark.parametrize(
    "sa,sb", [((2, 3, 4, 5), (3, 1, 1)), ((1,), (2, 3)), ((4, 1), (1, 5)), ((2, 3), (2, 3))]
)
def test_binary(op: str, onnx_op: str, sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    lo = 0.5 if op in ("div", "pow") else -2.0
    a, b = rand(*sa, lo=lo, hi=2), rand(*sb, lo=lo, hi=2)
    check_vs_ort(op, [a, b], {}, onnx_op)
    assert get_schema(op).elementwise


def test_int_div_truncates() -> None:
    a = RNG.integers(-20, 20, size=(4, 5)).astype(np.int32)
    b = RNG.integers(1, 6, size=(5,)).astype(np.int32) * np.array([1, -1, 1, -1, 1], np.int32)
    check_vs_ort("div", [a, b], {}, "Div")


@pytest.mark.parametrize("to", ["int32", "float16", "int64", "uint8", "float32"])
def test_cast(to: str) -> None:
    x = rand(3, 4, lo=0, hi=100)
    onnx_to = helper.np_dtype_to_tensor_dtype(np.dtype(to))
    check_vs_ort("cast", [x], {"to": to}, "Cast", onnx_attrs={"to": onnx_to})


# --- tensor ops -----------------------------------------------------------------------------------
def test_reshape_flatten_transpose() -> None:
    x = rand(2, 3, 4, 5)
    check_vs_ort("reshape", [x], {"shape": (6, 20)}, "Reshape", onnx_inputs=[x, i64(6, 20)])
    for axis in (0, 1, 2, -1, 4):
        check_vs_ort("flatten", [x], {"axis": axis}, "Flatten", onnx_attrs={"axis": axis})
    perm = (0, 2, 3, 1)
    check_vs_ort("transpose", [x], {"perm": perm}, "Transpose", onnx_attrs={"perm": list(perm)})


@pytest.mark.parametrize("axes", [(1,), (-1, 1), (0, 1, 3)])
def test_squeeze(axes: tuple[int, ...]) -> None:
    x = rand(1, 1, 3, 1)
    check_vs_ort("squeeze", [x], {"axes": axes}, "Squeeze", onnx_inputs=[x, i64(*axes)])


@pytest.mark.parametrize("axes", [(0,), (-1,), (1, 3), (-1, 0)])
def test_unsqueeze(axes: tuple[int, ...]) -> None:
    x = rand(2, 3)
    check_vs_ort("unsqueeze", [x], {"axes": axes}, "Unsqueeze", onnx_inputs=[x, i64(*axes)])


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_concat(axis: int) -> None:
    base = [2, 3, 4]
    xs = []
    for n in (1, 2, 3):
        s = list(base)
        s[axis] = n
        xs.append(rand(*s))
    check_vs_ort("concat", xs, {"axis": axis}, "Concat", onnx_attrs={"axis": axis})


@pytest.mark.parametrize("axis,sizes", [(1, (2, 3, 1)), (-1, (4, 1)), (0, (2,))])
def test_split(axis: int, sizes: tuple[int, ...]) -> None:
    x = rand(2, 6, 5)
    outs = check_vs_ort(
        "split",
        [x],
        {"axis": axis, "sizes": sizes},
        "Split",
        onnx_inputs=[x, i64(*sizes)],
        onnx_attrs={"axis": axis},
    )
    assert len(outs) == len(sizes)


@pytest.mark.parametrize(
    "starts,ends,axes,steps",
    [
        ((1,), (3,), (0,), (1,)),
        ((0, 1), (100, -1), (1, 2), (2, 1)),
        ((-1,), (-1000,), (-1,), (-1,)),
        ((4, -2), (0, -100), (2, 0), (-2, -1)),
        ((-3, 5), (2**62, 2), (1, 2), (1, -1)),
        ((10,), (20,), (1,), (1,)),
    ],
)
def test_slice(
    starts: tuple[int, ...], ends: tuple[int, ...], axes: tuple[int, ...], steps: tuple[int, ...]
) -> None:
    x = rand(3, 5, 6)
    attrs = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
    onnx_in = [x, i64(*starts), i64(*ends), i64(*axes), i64(*steps)]
    check_vs_ort("slice", [x], attrs, "Slice", onnx_inputs=onnx_in)


@pytest.mark.parametrize(
    "pads,mode,value",
    [
        ((0, 1, 2, 3, 0, 2, 1, 0), "constant", 0.0),
        ((0, 0, 1, 1, 0, 0, 1, 1), "constant", -2.5),
        ((0, 0, 2, 1, 0, 0, 1, 2), "reflect", 0.0),
        ((1, 0, 2, 1, 0, 1, 1, 3), "edge", 0.0),
        ((0, -1, 2, 0, 0, 1, -2, 1), "constant", 1.0),
    ],
)
def test_pad(pads: tuple[int, ...], mode: str, value: float) -> None:
    x = rand(2, 3, 4, 5)
    onnx_in = [x, i64(*pads), np.array(value, np.float32)]
    check_vs_ort(
        "pad",
        [x],
        {"pads": pads, "mode": mode, "value": value},
        "Pad",
        onnx_inputs=onnx_in,
        onnx_attrs={"mode": mode},
    )


@pytest.mark.parametrize("axes,keepdims", [((2, 3), 1), ((-1,), 0), ((0, 2), 0), ((), 1)])
def test_reduce_mean(axes: tuple[int, ...], keepdims: int) -> None:
    x = rand(2, 3, 4, 5)
    onnx_attrs: dict[str, Any] = {"keepdims": keepdims}
    if axes:
        onnx_attrs["axes"] = list(axes)
    check_vs_ort(
        "reduce_mean",
        [x],
        {"axes": axes, "keepdims": keepdims},
        "ReduceMean",
        onnx_attrs=onnx_attrs,
    )


# --- vocabulary, checks, attributes ---------------------------------------------------------------
DOC_OPS = """conv2d dense matmul batch_norm max_pool avg_pool global_avg_pool global_max_pool lrn
softmax relu sigmoid tanh hard_swish identity exp sqrt neg dropout clip leaky_relu hard_sigmoid prelu
add sub mul div pow reshape flatten transpose squeeze unsqueeze concat split slice pad reduce_mean
cast""".split()


def test_vocabulary_complete() -> None:
    missing = sorted(set(DOC_OPS) - set(all_ops()))
    assert not missing, f"ops from docs/ops.md not registered: {missing}"
    for op in DOC_OPS:
        assert get_schema(op).doc, f"{op} has no doc line"


def T(*shape: int, dtype: str = "float32") -> TensorType:  # noqa: N802
    return TensorType(shape, dtype)


BAD_NODES: list[tuple[str, list[TensorType | None], dict[str, Any], str]] = [
    ("conv2d", [T(1, 3, 8, 8), T(4, 2, 3, 3)], {}, "input channels"),
    ("conv2d", [T(1, 4, 8, 8), T(4, 2, 3, 3)], {"groups": 3}, "groups"),
    ("conv2d", [T(1, 3, 8), T(4, 3, 3, 3)], {}, "4-D"),
    ("conv2d", [T(1, 3, 8, 8), T(4, 3, 3, 3), T(5)], {}, "bias"),
    ("conv2d", [T(1, 3, 8, 8), T(4, 3, 3, 3)], {"pads": (1, 1)}, "pads"),
    ("conv2d", [T(1, 3, 2, 2), T(4, 3, 3, 3)], {}, "empty"),
    ("dense", [T(2, 5), T(3, 4)], {}, "last dim"),
    ("matmul", [T(2, 5), T(4, 3)], {}, "inner"),
    ("batch_norm", [T(1, 3, 4, 4), T(3), T(3), T(4), T(3)], {}, "mean"),
    ("max_pool", [T(1, 3, 4, 4)], {"kernel": (5, 5)}, "empty"),
    ("max_pool", [T(1, 3, 4)], {"kernel": (2, 2)}, "4-D"),
    ("avg_pool", [T(1, 3, 4, 4)], {"kernel": (2,)}, "kernel"),
    ("avg_pool", [T(1, 3, 4, 4)], {"kernel": (2, 2), "ceil_mode": 2}, "ceil_mode"),
    ("global_avg_pool", [T(2, 3)], {}, "rank"),
    ("lrn", [T(1, 3, 4, 4)], {"size": 0}, "size"),
    ("softmax", [T(2, 3)], {"axis": 2}, "axis"),
    ("sigmoid", [T(2, 3, dtype="int32")], {}, "floating"),
    ("add", [T(2, 3), T(4, 3)], {}, "broadcast"),
    ("add", [T(2, 3), T(2, 3, dtype="int32")], {}, "dtypes"),
    ("prelu", [T(2, 3), T(4, 2, 3)], {}, "slope"),
    ("reshape", [T(2, 3)], {"shape": (5,)}, "reshape"),
    ("reshape", [T(2, 3)], {"shape": (-1,)}, "resolved"),
    ("flatten", [T(2, 3)], {"axis": 3}, "axis"),
    ("transpose", [T(2, 3)], {"perm": (0, 0)}, "permutation"),
    ("squeeze", [T(2, 1)], {"axes": (0,)}, "not 1"),
    ("squeeze", [T(2, 1)], {"axes": (2,)}, "out of range"),
    ("unsqueeze", [T(2, 1)], {"axes": (3,)}, "out of range"),
    ("unsqueeze", [T(2, 1)], {"axes": (0, 0)}, "repeated"),
    ("concat", [T(2, 3), T(2, 4)], {"axis": 0}, "outside axis"),
    ("concat", [T(2, 3), T(2, 3, 1)], {"axis": 0}, "rank"),
    ("concat", [T(2, 3)], {"axis": -3}, "axis"),
    ("split", [T(2, 6)], {"axis": 1, "sizes": (2, 3)}, "sum"),
    ("split", [T(2, 6)], {"axis": 2, "sizes": (6,)}, "axis"),
    ("slice", [T(2, 6)], {"starts": (0,), "ends": (1,), "axes": (2,), "steps": (1,)}, "axes"),
    ("slice", [T(2, 6)], {"starts": (0,), "ends": (1,), "axes": (0,), "steps": (0,)}, "non-zero"),
    ("slice", [T(2, 6)], {"starts": (0, 1), "ends": (1,), "axes": (0,), "steps": (1,)}, "values"),
    ("pad", [T(2, 6)], {"pads": (1, 1)}, "pads"),
    ("pad", [T(2, 6)], {"pads": (0, 0, 0, 0), "mode": "wrap"}, "mode"),
    ("pad", [T(2, 6)], {"pads": (-2, 0, -1, 0)}, "crop"),
    ("reduce_mean", [T(2, 6)], {"axes": (2,)}, "axes"),
    ("cast", [T(2, 6)], {"to": "complex64"}, "cast"),
    ("dropout", [T(2, 6)], {"ratio": 1.5}, "ratio"),
]


@pytest.mark.parametrize(
    "op,types,attrs,needle", BAD_NODES, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_NODES)]
)
def test_check_rejects(
    op: str, types: list[TensorType | None], attrs: dict[str, Any], needle: str
) -> None:
    schema = get_schema(op)
    full = schema.normalize_attrs(attrs, "badnode")
    with pytest.raises(ShapeError) as ei:
        schema.infer_types(types, full, node_name="badnode")
    msg = str(ei.value)
    assert "badnode" in msg and op in msg and needle in msg, msg
    assert "\n" not in msg
    # the same through Graph.add_node
    g = Graph()
    vals = [None if t is None else g.add_input(f"x{i}", t) for i, t in enumerate(types)]
    with pytest.raises(ShapeError, match=f"'badnode' \\({op}\\)"):
        g.add_node(op, vals, attrs, name="badnode")


def test_missing_required_input() -> None:
    g = Graph()
    x = g.add_input("x", T(1, 3, 4, 4))
    with pytest.raises(ShapeError, match="missing"):
        g.add_node("conv2d", [x, None], name="c")


def test_unknown_and_required_attrs() -> None:
    g = Graph()
    x = g.add_input("x", T(1, 3, 4, 4))
    with pytest.raises(VerifyError, match="unknown attribute"):
        g.add_node("relu", [x], {"alpha": 1.0}, name="r")
    with pytest.raises(VerifyError, match="kernel_shape"):
        g.add_node("max_pool", [x], {"kernel": (2, 2), "kernel_shape": (2, 2)}, name="p")
    with pytest.raises(VerifyError, match="required"):
        g.add_node("max_pool", [x], {}, name="p")
    with pytest.raises(VerifyError, match="unknown op"):
        g.add_node("no_such_op", [x])


def test_attrs_normalized_to_tuples() -> None:
    g = Graph()
    x = g.add_input("x", T(1, 3, 4, 4))
    node = g.add_node("max_pool", [x], {"kernel": [2, 2], "strides": [2, 2]})
    assert node.attrs["kernel"] == (2, 2) and node.attrs["pads"] == (0, 0, 0, 0)
    assert node.output.shape == (1, 3, 2, 2)


def test_zero_macs_for_cheap_ops() -> None:
    t = T(1, 3, 4, 4)
    for op, attrs in [("relu", {}), ("max_pool", {"kernel": (2, 2)}), ("add", {})]:
        s = get_schema(op)
        ins = [t, t] if op == "add" else [t]
        full = s.normalize_attrs(attrs)
        assert s.count_macs(ins, s.infer_types(ins, full), full) == 0


def test_onnx_helper_sanity() -> None:
    """The harness itself: a model built here passes the ONNX checker."""
    y = ort_run("Relu", [np.array([-1.0, 2.0], np.float32)])[0]
    np.testing.assert_array_equal(y, [0.0, 2.0])
    assert onnx.__version__
