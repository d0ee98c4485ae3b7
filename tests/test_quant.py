"""Uniform quantization: ops (mcopt/ops/quant.py), the quantize-int8 pass, GPTQ rounding and QDQ
ONNX export/import (no TVM)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mcopt.errors import OptionError
from mcopt.interpreter import run
from mcopt.ir.types import UniformQuant
from mcopt.onnx_io import export_model, import_model
from mcopt.ops.quant import dequantize_array, qconv2d_ref, quantize_array, weight_type
from mcopt.pass_manager import Int8FloatLayers, PassContext, PassManager
from mcopt.passes.gptq import HessianAccumulator, gptq_quantize, im2col, layer_loss
from mcopt.testing import zoo

ort = pytest.importorskip("onnxruntime")


def _tiny(n_feeds: int = 8, seed: int = 0):
    g = import_model(zoo.tiny_cnn())
    inp = g.inputs[0]
    rng = np.random.default_rng(seed)
    feeds = [{inp.name: rng.standard_normal(inp.shape).astype(np.float32)} for _ in range(n_feeds)]
    return g, feeds


def _rel(g, g0, feeds):
    return float(np.mean([
        np.linalg.norm(run(g, f)[0] - run(g0, f)[0]) / np.linalg.norm(run(g0, f)[0]) for f in feeds
    ]))  # fmt: skip


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_quantize_matches_onnxruntime():
    from onnx import TensorProto, helper

    x = (np.random.default_rng(0).standard_normal((2, 3, 4, 5)) * 3).astype(np.float32)
    x[0, 0, 0, :3] = [0.25, 0.75, -0.25]  # exact rounding ties at scale 0.5: half to even
    for dtype, zp in (("uint8", 128), ("int8", 0)):
        el = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
        graph = helper.make_graph(
            [node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", el, x.shape)],
            [helper.make_tensor("s", TensorProto.FLOAT, [], [0.5]),
             helper.make_tensor("z", el, [], [zp])],
        )  # fmt: skip
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        got = _session(m).run(None, {"x": x})[0]
        np.testing.assert_array_equal(quantize_array(x, (0.5,), (zp,), dtype), got)
        back = dequantize_array(got, (0.5,), (zp,))
        assert np.abs(back - np.clip(x, -64, 63.5)).max() <= 0.25 + 1e-6


def test_qconv2d_reference_is_integer_conv():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (1, 4, 6, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, (5, 4, 3, 3)).astype(np.int8)
    at = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1, x_scale=0.1,
              x_zero_point=10, out_dtype="float32", out_scale=1.0,
              out_zero_point=0, act_min=-np.inf, act_max=np.inf)  # fmt: skip
    y = qconv2d_ref(x, w, None, in_types=(None, weight_type(w.shape, (0.01,) * 5), None), **at)
    # the float conv of the dequantized tensors (padding = real zero)
    xf = (x.astype(np.float64) - 10) * 0.1
    xp = np.pad(xf, ((0, 0), (0, 0), (1, 1), (1, 1)))
    wf = w.astype(np.float64) * 0.01
    ref = np.zeros((1, 5, 6, 6))
    for i in range(6):
        for j in range(6):
            ref[0, :, i, j] = np.tensordot(wf, xp[0, :, i : i + 3, j : j + 3], 3)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)


def test_weight_scales_live_only_on_the_weight_type():
    """qconv2d / qdense keep their weight scales in the weight operand's UniformQuant encoding
    (no w_scale attribute); the interpreter hands the types to the reference; the verifier names
    the node when the weight carries no valid scales."""
    from mcopt.errors import VerifyError
    from mcopt.ir import Graph, TensorType, verify
    from mcopt.ir.verify import verify_problems

    rng = np.random.default_rng(2)
    xa = rng.integers(0, 256, (1, 4, 6, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, (5, 4, 3, 3)).astype(np.int8)
    ws = tuple(rng.uniform(1e-3, 1e-2, 5))
    g = Graph("q")
    x = g.add_input("x", TensorType(xa.shape, "uint8"))
    wv = g.const(w, "w")
    wv.type = weight_type(w.shape, ws)
    n = g.add_node("qconv2d", [x, wv], {"x_scale": 0.1, "x_zero_point": 10, "pads": (1,) * 4},
                   name="qc")  # fmt: skip
    g.outputs = [n.output]
    verify(g)
    assert "w_scale" not in n.attrs
    y = run(g, {"x": xa})[0]
    np.testing.assert_array_equal(y, qconv2d_ref(xa, w, None, in_types=(None, wv.type), **n.attrs))
    one = weight_type(w.shape, (0.01,))  # one scale for the tensor == the same scale per channel
    np.testing.assert_array_equal(
        qconv2d_ref(xa, w, None, in_types=(None, one), **n.attrs),
        qconv2d_ref(xa, w, None, in_types=(None, weight_type(w.shape, (0.01,) * 5)), **n.attrs),
    )
    with pytest.raises(VerifyError, match="unknown attribute"):
        g.add_node("qconv2d", [x, wv], {"w_scale": ws})
    bad = {
        "UniformQuant encoding": TensorType(w.shape, "int8"),
        "1 or 5 scales": weight_type(w.shape, ws[:3]),
        "symmetric": TensorType(w.shape, "int8", UniformQuant(8, True, ws, (1,) * 5, axis=0)),
        "axis 0": TensorType(w.shape, "int8", UniformQuant(8, True, ws, (0,) * 5, axis=1)),
    }
    for why, t in bad.items():
        wv.type = t
        problems = verify_problems(g)
        assert len(problems) == 1 and "\n" not in problems[0], problems
        assert problems[0].startswith("node 'qc' (qconv2d): ") and why in problems[0], problems


def test_pass_quantizes_with_bounded_error_and_real_bytes():
    g0, feeds = _tiny()
    g = g0.copy()
    PassManager(["cleanup", "quantize-int8"]).run(g, PassContext(calib=feeds))
    ops = {n.op for n in g.nodes}
    assert {"qconv2d", "qdense", "quantize"} <= ops and "conv2d" not in ops
    wq = [n.inputs[1] for n in g.nodes if n.op in ("qconv2d", "qdense")]
    assert all(v.dtype == "int8" and isinstance(v.type.encoding, UniformQuant) for v in wq)
    assert all(v.type.nbytes < v.type.size + 32 * 8 * v.shape[0] // 8 + 1 for v in wq)
    assert any(n.attrs["out_dtype"] == "uint8" for n in g.nodes if n.op == "qconv2d")
    assert _rel(g, g0, feeds) < 0.05


@pytest.mark.parametrize("opts", ["calibration=percentile", "calibration=mse",
                                  "activations=symmetric,reduce_range=False"])  # fmt: skip
def test_pass_options(opts):
    g0, feeds = _tiny(4)
    g = g0.copy()
    PassManager(["cleanup", f"quantize-int8:{opts}"]).run(g, PassContext(calib=feeds))
    assert _rel(g, g0, feeds) < 0.08


def test_mixed_precision_keep_float_and_sensitivity():
    g0, feeds = _tiny(4)
    PassManager(["cleanup"]).run(g0)
    g = g0.copy()
    PassManager(["quantize-int8:keep_float=[fc_0]"]).run(g, PassContext(calib=feeds))
    assert [n.name for n in g.nodes if n.op == "dense"] == ["fc_0"]
    g2 = g0.copy()
    ctx = PassContext(calib=feeds)
    PassManager(["quantize-int8:float_layers=2,weight_bits=4"]).run(g2, ctx)
    record = ctx.analyses.get(Int8FloatLayers)
    assert record is not None
    kept = record.layers
    assert len(kept) == 2 and {n.name for n in g2.nodes if n.op in ("conv2d", "dense")} == set(kept)
    with pytest.raises(Exception, match="keep_float"):
        PassManager(["quantize-int8:keep_float=[nope]"]).run(g0.copy(), PassContext(calib=feeds))
    with pytest.raises(Exception, match="rounding"):
        PassManager(["quantize-int8:rounding=magic"]).run(g0.copy(), PassContext(calib=feeds))
    from mcopt.passes.quantize import QuantizeInt8

    with pytest.raises(OptionError, match="weight_bits"):
        QuantizeInt8(weight_bits=9).run(g0.copy(), PassContext(calib=feeds))


def test_gptq_beats_round_to_nearest_at_4_bits():
    g0, feeds = _tiny(16)
    test = _tiny(6, seed=1)[1]
    errs = {}
    for r in ("nearest", "gptq"):
        g = g0.copy()
        spec = f"quantize-int8:weight_bits=4,rounding={r},bias_correction=False"
        PassManager(["cleanup", spec]).run(g, PassContext(calib=feeds))
        errs[r] = _rel(g, g0, test)
    assert errs["gptq"] < 0.6 * errs["nearest"], errs
    # layer level: the calibration loss tr(dW H dW^T) is lower on held-out inputs
    PassManager(["cleanup"]).run(g0)
    node = next(n for n in g0.nodes if n.op == "conv2d" and n.inputs[1].shape[1] > 3)
    from mcopt.interpreter import run_values

    w = node.inputs[1].const
    cols = [im2col(run_values(g0, f, keep=[node.inputs[0]])[1][node.inputs[0].name],
                   w.shape[2:], node.attrs) for f in feeds + test]  # fmt: skip
    tr, te = HessianAccumulator(cols[0].shape[0]), HessianAccumulator(cols[0].shape[0])
    for c in cols[:16]:
        tr.add(c)
    for c in cols[16:]:
        te.add(c)
    w2 = w.reshape(w.shape[0], -1).astype(np.float64)
    s = np.abs(w2).max(1) / 7
    rtn = np.clip(np.rint(w2 / s[:, None]), -8, 7) * s[:, None]
    gq = gptq_quantize(w2, tr.h, s, -8, 7) * s[:, None]
    assert layer_loss(w2, gq, te.h) < 0.8 * layer_loss(w2, rtn, te.h)


def test_qdq_export_runs_in_onnxruntime_and_reimports():
    for proto in (onnx.load(zoo.lenet5_path()), zoo.tiny_cnn()):
        g0 = import_model(proto)
        inp = g0.inputs[0]
        rng = np.random.default_rng(0)
        feeds = [{inp.name: rng.standard_normal(inp.shape).astype(np.float32)} for _ in range(3)]
        g = g0.copy()
        PassManager(["cleanup", "quantize-int8"]).run(g, PassContext(calib=feeds))
        model = export_model(g, 17)
        onnx.checker.check_model(model, full_check=True)
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        int8_inits = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert int8_inits, "weights must be stored as int8 initializers"
        sess = _session(model)
        for f in feeds:
            ref = run(g, f)[0]
            # float epilogue: same up to float rounding of the accumulation order
            np.testing.assert_allclose(sess.run(None, f)[0], ref, rtol=1e-4, atol=1e-4)
        g2 = import_model(model)
        assert {"quantize", "dequantize"} <= {n.op for n in g2.nodes}
        PassManager(["quantize-int8"]).run(g2, PassContext(calib=feeds))
        assert {"qconv2d", "qdense"} <= {n.op for n in g2.nodes}
        for f in feeds:
            np.testing.assert_allclose(run(g2, f)[0], run(g, f)[0], rtol=1e-4, atol=1e-4)


class _FakeTarget:
    def __init__(self, reduce: bool) -> None:
        self.name, self.reduce = "fake", reduce

    def int8_reduce_range(self) -> bool:
        return self.reduce


@pytest.mark.parametrize(("target", "limit"), [(None, 63), (_FakeTarget(True), 63),
                                               (_FakeTarget(False), 127)])  # fmt: skip
def test_reduce_range_auto_asks_the_target(target, limit):
    """``reduce_range="auto"``: 7-bit weight codes without a target (as onnxruntime) or where the
    target asks for them; full 8-bit codes where its int8 dot product is exact with them."""
    g0, feeds = _tiny(4)
    g = g0.copy()
    ctx = PassContext(calib=feeds, target=target)
    PassManager(["cleanup", "quantize-int8"]).run(g, ctx)
    codes = [np.abs(n.inputs[1].const.astype(np.int32)).max() for n in g.nodes if n.op == "qconv2d"]
    assert codes and max(codes) == limit, codes  # the largest weight of a channel hits qmax
    assert _rel(g, g0, feeds) < 0.08


@pytest.mark.parametrize(("mcpu", "reduce"), [("haswell", True), ("cascadelake", False),
                                              ("x86-64", False)])  # fmt: skip
def test_target_services_reduce_range_follows_the_dot_product(mcpu, reduce):
    """7-bit weights only where ``vpmaddubsw`` (saturating int16 pairs) is the fast path."""
    tvm = pytest.importorskip("tvm")
    from mcopt.targets.registry import TargetSpec, register_target
    from mcopt.targets.services import TargetServices

    name = f"test-x86-{mcpu}"
    register_target(
        TargetSpec(name, "llvm", lambda: tvm.target.Target({"kind": "llvm", "mcpu": mcpu})),
        replace=True,
    )
    assert TargetServices(name).int8_reduce_range() is reduce


def test_auto_search_spells_out_the_targets_reduce_range():
    """``passes="auto"`` optimizes candidates without a target: the int8 candidate carries the
    target's ``reduce_range`` in its pipeline (reproducible from the report)."""
    pytest.importorskip("tvm")
    from mcopt.pass_manager import get_pass
    from mcopt.search import _int8_spec
    from mcopt.targets.services import services_for

    assert _int8_spec(None) == "quantize-int8"
    name, _, opts = _int8_spec("cpu").partition(":")
    key, _, val = opts.partition("=")
    p = get_pass(name, **{key: val})
    assert p.reduce_range is services_for("cpu").int8_reduce_range()


def test_dead_unit_with_a_bias_keeps_the_int32_accumulator_in_range():
    """A dense unit whose weights are ~0 under a real bias (a dead unit of an L2-regularized MLP,
    as scikit-learn trains them): its per-channel weight scale would make the int32 bias
    ``bias / (x_scale * w_scale)`` overflow; the scale is raised to leave the accumulator room,
    and the layer quantizes with a small error."""
    from mcopt.ir import Graph, ttype

    rng = np.random.default_rng(0)
    g = Graph("dead")
    x = g.add_input("x", ttype((1, 64)))
    w = rng.standard_normal((16, 64)).astype(np.float32) * 0.3
    w[3] = 1e-30  # a dead unit
    b = rng.uniform(0.1, 0.3, 16).astype(np.float32)
    d = g.add_node("dense", [x, g.const(w, "w"), g.const(b, "b")], name="fc")
    g.outputs = [g.add_node("relu", [d.output], name="y").output]
    feeds = [{"x": rng.random((1, 64)).astype(np.float32)} for _ in range(8)]
    ref = [run(g, f)[0] for f in feeds]
    PassManager(["quantize-int8"]).run(g, PassContext(calib=feeds[:4]))
    (q,) = g.nodes_of("qdense")
    assert np.abs(q.inputs[2].const.astype(np.int64)).max() < 2**30
    for f, r in zip(feeds, ref):
        got = run(g, f)[0]  # raised OverflowError before
        np.testing.assert_allclose(got, r, atol=0.02 * np.abs(r).max())


def test_int8_dense_on_token_features():
    """A dense layer over a (N, T, C) token tensor (PP-OCR's SVTR recognizer): the bias correction
    averages the input over its last axis, the features (it averaged axis 1, the tokens: a shape
    error in the pass)."""
    from onnx import TensorProto, helper, numpy_helper

    import mcopt

    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4])], initializer=inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    calib = [{"x": rng.standard_normal((1, 5, 8)).astype(np.float32)} for _ in range(8)]
    res = mcopt.optimize(m, target=None, passes=["cleanup", "quantize-int8"], calib=calib)
    assert any(n.op == "qdense" for n in res.graph.nodes)
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    ref = run(mcopt.load(m), [x])[0]
    got = run(res.graph, [x])[0]
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
