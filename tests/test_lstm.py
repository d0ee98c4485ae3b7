"""ONNX ``LSTM`` as ``lstm``: every direction, with and without bias / initial states, and a CRNN
tail (conv features -> squeeze -> transpose -> bidirectional LSTM -> Gemm) against onnxruntime
through the interpreter, the export and the CPU build; what is not imported is a one-line error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import mcopt
from mcopt import interpreter
from mcopt.errors import UnsupportedOpError
from mcopt.onnx_io import export_model, import_model
from mcopt.testing.routes import assert_routes_match, outputs_by_route

ort = pytest.importorskip("onnxruntime")

T, B, F, H = 6, 2, 5, 4


def _lstm_model(
    direction: str, bias: bool, states: bool, hid: int | None = None, **attrs: object
) -> onnx.ModelProto:
    H = hid or globals()["H"]  # noqa: N806
    d = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(len(direction) + 2 * bias + states)
    inits = [numpy_helper.from_array(rng.standard_normal((d, 4 * H, F)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((d, 4 * H, H)).astype(np.float32), "R")]  # fmt: skip
    ins = ["x", "W", "R", "B" if bias else ""]
    if bias:
        inits.append(
            numpy_helper.from_array(rng.standard_normal((d, 8 * H)).astype(np.float32), "B")
        )
    graph_ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, F])]
    if states:
        ins += ["", "h0", "c0"]
        graph_ins += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [d, B, H])
                      for n in ("h0", "c0")]  # fmt: skip
    node = helper.make_node("LSTM", ins, ["y", "y_h", "y_c"], hidden_size=H,
                            direction=direction, **attrs)  # fmt: skip
    graph = helper.make_graph(
        [node], "lstm", graph_ins,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "y_h", "y_c")],
        initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize(
    "direction, bias, states",
    [("forward", True, False), ("reverse", False, True), ("bidirectional", True, True)],
)
def test_lstm_matches_onnxruntime(direction: str, bias: bool, states: bool) -> None:
    m = _lstm_model(direction, bias, states)
    rng = np.random.default_rng(7)
    feeds = {"x": rng.standard_normal((T, B, F)).astype(np.float32)}
    if states:
        d = 2 if direction == "bidirectional" else 1
        feeds |= {n: rng.standard_normal((d, B, H)).astype(np.float32) for n in ("h0", "c0")}
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, feeds, passes=["cleanup"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "direction, bias, states",
    [("forward", True, False), ("reverse", True, True), ("bidirectional", False, True)],
)
def test_lstm_sequence_kernel_matches_onnxruntime(direction: str, bias: bool, states: bool) -> None:
    """A hidden size the SIMD width divides: the CPU build runs the whole recurrence as one kernel
    (targets/cpu/kernels/lstm.py); inputs large enough to saturate the gates (the exp clamp)."""
    hid = 32
    m = _lstm_model(direction, bias, states, hid=hid)
    rng = np.random.default_rng(9)
    feeds = {"x": (rng.standard_normal((T, B, F)) * 4).astype(np.float32)}
    if states:
        d = 2 if direction == "bidirectional" else 1
        feeds |= {n: rng.standard_normal((d, B, hid)).astype(np.float32) for n in ("h0", "c0")}
    pytest.importorskip("tvm")
    res = mcopt.optimize(m, target="cpu", passes=["cleanup"], measure=False, check=False)
    calls = [r["name"] for r in res.compiled.profile(feeds, repeat=1)]
    assert any(c.startswith("lstm_sequence") for c in calls), calls
    assert_routes_match(outputs_by_route(m, feeds, passes=["cleanup"]), rtol=1e-5, atol=1e-5)


def test_lstm_sequence_kernel_against_its_reference() -> None:
    """The kernel alone (both SIMD widths the CPU builds use) against its float64 numpy twin."""
    tvm = pytest.importorskip("tvm")
    from mcopt.targets.cpu.kernels import lstm as LK
    from mcopt.targets.cpu.kernels.target_info import host_target

    S, Bt, Hd, D = 5, 2, 32, 2  # noqa: N806
    rng = np.random.default_rng(4)
    proj = (rng.standard_normal((S * Bt, D * 4 * Hd)) * 3).astype(np.float32)
    r = (rng.standard_normal((D, 4 * Hd, Hd)) / 4).astype(np.float32)
    h0 = rng.standard_normal((D, Bt, Hd)).astype(np.float32)
    c0 = rng.standard_normal((D, Bt, Hd)).astype(np.float32)
    ref = LK.reference(proj, r, h0, c0, S, Bt, Hd, D, False)
    dev = tvm.cpu()
    for lanes in (8, 16):
        f = LK.lstm_sequence(S, Bt, Hd, D, False, True, True, lanes)
        lib = tvm.compile(tvm.IRModule({"main": f}), target=host_target())
        args = [tvm.runtime.tensor(a, dev) for a in (proj, LK.pack_recurrent(r, lanes), h0, c0)]
        out = tvm.runtime.tensor(np.zeros((S + 1, D, Bt, Hd), np.float32), dev)
        lib["main"](*args, out)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=2e-6)


def test_batch_major_lstm_matches_onnxruntime() -> None:
    """``layout=1``: x (B, T, F), states (B, D, H), y (B, T, D, H)."""
    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 4 * H, F)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((2, 4 * H, H)).astype(np.float32), "R")]  # fmt: skip
    node = helper.make_node("LSTM", ["x", "W", "R", "", "", "h0"], ["y", "y_h", "y_c"],
                            hidden_size=H, direction="bidirectional", layout=1)  # fmt: skip
    graph = helper.make_graph(
        [node], "lstm_bm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, F]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [B, 2, H])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "y_h", "y_c")],
        initializer=inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    h0 = rng.standard_normal((B, 2, H)).astype(np.float32)
    # onnxruntime refuses layout=1: the reference is onnx's own evaluator
    refs = ReferenceEvaluator(m).run(None, {"x": x, "h0": h0})
    got = interpreter.run(import_model(m), [x, h0])
    pytest.importorskip("tvm")
    built = mcopt.optimize(m, target="cpu", passes=["cleanup"]).run(x, h0)
    for r, a, b in zip(refs, got, built):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b, r, rtol=1e-5, atol=1e-5)


def test_crnn_tail_matches_onnxruntime() -> None:
    """ddddocr's shape: (1, C, 1, W) features -> (W, 1, C) -> bidirectional LSTM -> per-step
    classifier; the LSTM's initial states built from Shape / ConstantOfShape fold away."""
    rng = np.random.default_rng(3)
    c, w, hid, k = 8, 10, 6, 5
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 4 * hid, c)).astype(np.float32) / 3, "W"),
        numpy_helper.from_array(rng.standard_normal((2, 4 * hid, hid)).astype(np.float32) / 3, "R"),
        numpy_helper.from_array(rng.standard_normal((2, 8 * hid)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((2 * hid, k)).astype(np.float32), "G"),
        numpy_helper.from_array(np.array([2, 1, hid], np.int64), "state_shape"),
        numpy_helper.from_array(np.array([w, 2 * hid], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Squeeze", ["x", "axes"], ["s"]),
        helper.make_node("Transpose", ["s"], ["seq"], perm=[2, 0, 1]),
        helper.make_node("ConstantOfShape", ["state_shape"], ["h0"]),
        helper.make_node(
            "LSTM",
            ["seq", "W", "R", "B", "", "h0", "h0"],
            ["y"],
            hidden_size=hid,
            direction="bidirectional",
        ),  # fmt: skip
        helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["yt", "flat"], ["feat"]),
        helper.make_node("MatMul", ["feat", "G"], ["logits"]),
    ]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
    graph = helper.make_graph(
        nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 1, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    x = rng.standard_normal((1, c, 1, w)).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "attrs, fragment",
    [
        ({"clip": 3.0}, "clip"),
        ({"input_forget": 1}, "input_forget"),
        ({"activations": ["Relu", "Tanh", "Tanh"]}, "activations"),
    ],
)
def test_lstm_refusals_are_one_line(attrs: dict, fragment: str) -> None:
    with pytest.raises(UnsupportedOpError) as e:
        import_model(_lstm_model("forward", True, False, **attrs))
    msg = str(e.value)
    assert fragment in msg and "LSTM" in msg and "\n" not in msg


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_quantize_int8_makes_lstm_weights_int8(direction: str) -> None:
    """``quantize-int8`` turns the LSTM into ``qlstm`` (int8 W and R, one scale per gate row):
    the interpreter, the ONNX export (Cast + Mul + LSTM) and the CPU build (the recurrence kernel
    reading the int8 codes) agree on the quantized graph, which stays close to the float one."""
    from mcopt.pass_manager import PassContext, PassManager

    hid = 32
    m = _lstm_model(direction, True, True, hid=hid)
    for t in m.graph.initializer:  # trained-like magnitudes: the gates not saturated
        if t.name in ("W", "R"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 0.2, t.name))
    rng = np.random.default_rng(5)
    d = 2 if direction == "bidirectional" else 1
    feeds = {"x": rng.standard_normal((T, B, F)).astype(np.float32)}
    feeds |= {n: rng.standard_normal((d, B, hid)).astype(np.float32) for n in ("h0", "c0")}
    g = import_model(m)
    PassManager(["cleanup", "quantize-int8"]).run(g, PassContext())
    (node,) = [n for n in g.nodes if n.op in ("lstm", "qlstm")]
    assert node.op == "qlstm" and node.inputs[1].dtype == node.inputs[2].dtype == "int8"
    ref = interpreter.run(g, [feeds[v.name] for v in g.inputs])
    exported = ort.InferenceSession(export_model(g).SerializeToString()).run(None, feeds)
    floats = ort.InferenceSession(m.SerializeToString()).run(None, feeds)
    for a, b, f in zip(ref, exported, floats):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
        assert 0 < np.abs(a - f).max() < 0.05  # lossy, a little
    pytest.importorskip("tvm")
    res = mcopt.optimize(m, target="cpu", passes=["cleanup", "quantize-int8"], measure=False,
                         check=False)  # fmt: skip
    calls = [r["name"] for r in res.compiled.profile(feeds, repeat=1)]
    assert any(c.startswith("lstm_sequence") for c in calls), calls
    for a, c in zip(ref, res.compiled.run(dict(feeds))):
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5)


def test_quantize_int8_recurrent_false_keeps_the_float_lstm() -> None:
    from mcopt.pass_manager import PassContext, PassManager

    g = import_model(_lstm_model("forward", True, False))
    PassManager(["cleanup", "quantize-int8:recurrent=false"]).run(g, PassContext())
    assert [n.op for n in g.nodes if "lstm" in n.op] == ["lstm"]


def test_int8_recurrence_kernel_against_its_reference() -> None:
    tvm = pytest.importorskip("tvm")
    from mcopt.ops.recurrent import dequantize_rows
    from mcopt.targets.cpu.kernels import lstm as LK
    from mcopt.targets.cpu.kernels.target_info import host_target

    S, Bt, Hd, D = 4, 1, 16, 2  # noqa: N806
    rng = np.random.default_rng(8)
    proj = rng.standard_normal((S * Bt, D * 4 * Hd)).astype(np.float32)
    q = rng.integers(-127, 128, (D, 4 * Hd, Hd)).astype(np.int8)
    rs = (rng.random((D, 4 * Hd)) / 200 + 1e-3).astype(np.float32)
    ref = LK.reference(proj, dequantize_rows(q, rs), None, None, S, Bt, Hd, D, False)
    f = LK.lstm_sequence(S, Bt, Hd, D, False, False, False, 16, int8=True)
    lib = tvm.compile(tvm.IRModule({"main": f}), target=host_target())
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (proj, LK.pack_recurrent(q, 16), rs)]
    out = tvm.runtime.tensor(np.zeros((S + 1, D, Bt, Hd), np.float32), dev)
    lib["main"](*args, out)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=2e-6)
