"""Binary weights / XNOR-Net: packing, references, the passes, storage, and the compiled kernels."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt.analysis.cost import graph_stats
from mcopt.interpreter import run
from mcopt.ir import Graph, TensorType, ttype
from mcopt.ir.types import Binary
from mcopt.ops.binary import (
    binarize_weight,
    pack_bits,
    unpack_bits,
    unpack_weight,
    xnor_conv2d_int,
    xnor_dense_int,
)
from mcopt.pass_manager import PassContext, get_pass


def conv_graph(
    n, c, h, o, k, s, p, *, binary_input=1, beta="position", bias=True, ones=False, seed=0
):
    rng = np.random.default_rng(seed)
    g = Graph("t")
    x = g.add_input("x", ttype((n, c, h, h)))
    words, alpha = binarize_weight(rng.standard_normal((o, c, k, k)).astype(np.float32))
    if ones:
        alpha = np.ones_like(alpha)
    b = g.const(rng.standard_normal(o).astype(np.float32), "b") if bias else None
    node = g.add_node(
        "binary_conv2d",
        [x, g.const(words, "wb"), g.const(alpha, "alpha"), b],
        {
            "channels": c,
            "kernel": (k, k),
            "strides": (s, s),
            "pads": (p,) * 4,
            "binary_input": binary_input,
            "beta": beta,
        },
    )
    g.outputs = [node.output]
    return g


def dense_graph(m, k, o, *, binary_input=1, beta="position", ones=False, seed=0):
    rng = np.random.default_rng(seed)
    g = Graph("t")
    x = g.add_input("x", ttype((m, k)))
    words, alpha = binarize_weight(rng.standard_normal((o, k)).astype(np.float32))
    if ones:
        alpha = np.ones_like(alpha)
    node = g.add_node(
        "binary_dense",
        [
            x,
            g.const(words, "wb"),
            g.const(alpha, "alpha"),
            g.const(
                np.zeros(o, np.float32) if ones else rng.standard_normal(o).astype(np.float32), "b"
            ),
        ],
        {"in_features": k, "binary_input": binary_input, "beta": beta},
    )
    g.outputs = [node.output]
    return g


@pytest.mark.parametrize("k", [1, 31, 32, 33, 100])
def test_pack_roundtrip(k: int) -> None:
    bits = np.random.default_rng(k).random((3, k)) > 0.5
    words = pack_bits(bits)
    assert words.dtype == np.int32 and words.shape == (3, -(-k // 32))
    assert np.array_equal(unpack_bits(words, k), bits)


def test_alpha_is_mean_abs_and_storage_is_32x() -> None:
    w = np.random.default_rng(0).standard_normal((64, 32, 3, 3)).astype(np.float32)
    words, alpha = binarize_weight(w)
    np.testing.assert_allclose(alpha, np.abs(w).reshape(64, -1).mean(1), rtol=1e-6)
    assert np.array_equal(unpack_weight(words, w.shape), np.where(w >= 0, 1, -1))
    # real bytes: the words + alpha == the Binary encoding of the float weight (K = 288 = 9 words)
    assert words.nbytes + alpha.nbytes == TensorType(w.shape, encoding=Binary(64)).nbytes
    assert w.nbytes / words.nbytes == 32


def test_xnor_integer_reference_is_popcount() -> None:
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((4, 70)), rng.standard_normal((5, 70))
    words, _ = binarize_weight(w)
    xw = pack_bits(x >= 0).view(np.uint32)
    pc = np.bitwise_count(xw[:, None, :] ^ words.view(np.uint32)[None]).sum(-1).astype(np.int64)
    assert np.array_equal(xnor_dense_int(x, unpack_weight(words, w.shape)), 70 - 2 * pc)
    xs = rng.standard_normal((1, 3, 6, 6))
    ws = np.where(rng.standard_normal((2, 3, 3, 3)) >= 0, 1, -1)
    got = xnor_conv2d_int(xs, ws, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    ref = np.zeros((1, 2, 6, 6), np.int64)
    xp = np.pad(np.where(xs >= 0, 1, -1), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for o in range(2):
        for i in range(6):
            for j in range(6):
                ref[0, o, i, j] = (xp[0, :, i : i + 3, j : j + 3] * ws[o]).sum()
    assert np.array_equal(got, ref)


def test_binarize_passes_on_lenet5() -> None:
    from mcopt.onnx_io import import_model
    from mcopt.testing import zoo

    x, y = zoo.mnist_test_set()
    g0 = import_model(str(zoo.lenet5_path()), {"input": [200, 1, 28, 28]})
    logs: list[str] = []
    g = g0.copy()
    assert get_pass("binarize-weights")(g, PassContext(log=logs.append))
    ops = [n.op for n in g.nodes if n.op in ("conv2d", "dense", "binary_conv2d", "binary_dense")]
    assert ops == [
        "conv2d",
        "binary_conv2d",
        "binary_dense",
        "binary_dense",
        "dense",
    ]  # first/last kept
    assert "relative weight error" in logs[-1]
    acc = (run(g, [x[1:400:2]])[0].argmax(1) == y[1:400:2]).mean()
    assert acc > 0.85  # BWN without retraining (fp32: ~0.98)
    assert graph_stats(g).weight_bytes < graph_stats(g0).weight_bytes / 10
    gx = g0.copy()
    assert get_pass("xnor", skip_first_last=False)(gx, PassContext(log=logs.append))
    assert all(n.attrs["binary_input"] == 1 for n in gx.nodes if n.op.startswith("binary_"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: conv_graph(2, 40, 10, 24, 3, 2, 1),
        lambda: conv_graph(1, 16, 8, 8, 3, 1, 1, binary_input=0),
        lambda: conv_graph(1, 8, 8, 8, 3, 1, 1, beta="tensor"),
        lambda: dense_graph(3, 64, 10),
    ],
)
def test_onnx_export_runs_in_onnxruntime(make) -> None:
    ort = pytest.importorskip("onnxruntime")
    from mcopt.onnx_io import export_model

    g = make()
    x = np.random.default_rng(0).standard_normal(g.inputs[0].shape).astype(np.float32)
    sess = ort.InferenceSession(
        export_model(g, 17).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    ref = run(g, [x])[0]
    got = sess.run(None, {g.inputs[0].name: x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


# --- compiled kernels -------------------------------------------------------------------------------
tvm = pytest.importorskip("tvm")


@pytest.mark.tvm
@pytest.mark.parametrize(
    "shape",
    [
        (1, 3, 9, 16, 3, 1, 1),
        (2, 40, 10, 24, 3, 2, 1),
        (1, 64, 8, 32, 3, 1, 1),
        (1, 5, 8, 3, 1, 1, 0),
    ],
)
def test_xnor_conv_integer_path_exact(shape) -> None:
    from mcopt.targets.relax.builder import build

    g = conv_graph(*shape, beta="none", bias=False, ones=True)
    x = np.random.default_rng(2).standard_normal(g.inputs[0].shape).astype(np.float32)
    assert np.array_equal(build(g).run(x)[0], run(g, [x])[0])  # float32(dot) exactly


@pytest.mark.tvm
@pytest.mark.parametrize("beta", ["position", "tensor", "none"])
def test_xnor_conv_scaled_close(beta: str) -> None:
    from mcopt.targets.relax.builder import build

    g = conv_graph(2, 40, 10, 24, 3, 2, 1, beta=beta)
    x = np.random.default_rng(3).standard_normal(g.inputs[0].shape).astype(np.float32)
    ref = run(g, [x])[0]
    np.testing.assert_allclose(build(g).run(x)[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.tvm
@pytest.mark.parametrize("m,k,o", [(1, 100, 24), (16, 1024, 64), (3, 64, 10)])
def test_xnor_dense_exact_and_close(m: int, k: int, o: int) -> None:
    from mcopt.targets.relax.builder import build

    x = np.random.default_rng(4).standard_normal((m, k)).astype(np.float32)
    g = dense_graph(m, k, o, beta="none", ones=True)
    assert np.array_equal(build(g).run(x)[0], run(g, [x])[0])
    g = dense_graph(m, k, o)
    ref = run(g, [x])[0]
    np.testing.assert_allclose(build(g).run(x)[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.tvm
def test_bwn_lowers_to_float_conv() -> None:
    from mcopt.targets.relax.builder import build

    g = conv_graph(1, 16, 8, 8, 3, 1, 1, binary_input=0)
    x = np.random.default_rng(5).standard_normal(g.inputs[0].shape).astype(np.float32)
    ref = run(g, [x])[0]
    np.testing.assert_allclose(build(g).run(x)[0], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
