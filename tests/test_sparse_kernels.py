"""Sparse kernels for pruned weights (CSR / BSR SpMV-SpMM for dense, direct sparse conv): the
compiled kernels against numpy and, through ``build``, against the reference interpreter on graphs
pruned by ``prune-weights``."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt import interpreter  # noqa: E402
from mcopt.ir import Graph, TensorType, verify  # noqa: E402
from mcopt.pass_manager import PassContext, get_pass  # noqa: E402
from mcopt.targets.cpu.kernels.epilogue import Epilogue  # noqa: E402
from mcopt.targets.cpu.kernels.sparse import (  # noqa: E402
    block_fill,
    choose_block,
    conv_csr_arrays,
    run_conv_numpy,
    run_dense_numpy,
    sparse_conv2d,
    sparse_conv_plan,
    sparse_dense,
    sparse_wins,
    to_bsr,
)

pytestmark = pytest.mark.tvm
RNG = np.random.default_rng(0)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def prune(w: np.ndarray, s: float) -> np.ndarray:
    t = np.quantile(np.abs(w), s)
    return np.where(np.abs(w) > t, w, 0).astype(np.float32)


def _run(func, arrays, out_shape):
    from mcopt.targets.cpu.kernels import host_target

    lib = tvm.compile(tvm.IRModule({"main": func}), target=host_target())
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays], out)
    return out.numpy()


def test_bsr_format_roundtrip_and_fill() -> None:
    w = prune(RNG.standard_normal((16, 20)).astype(np.float32), 0.7)
    x = RNG.standard_normal((3, 20)).astype(np.float32)
    for block in [(1, 1), (8, 1), (4, 2), (3, 3)]:
        b = to_bsr(w, block)
        assert b.data.shape[1:] == (block[1], block[0])
        np.testing.assert_allclose(run_dense_numpy(x, b), x.astype(np.float64) @ w.T, atol=1e-5)
    assert block_fill(w, (1, 1)) == 1.0 and block_fill(w, (8, 1)) < 0.6
    assert choose_block(w) == (1, 1)
    wb = np.repeat(prune(RNG.standard_normal((2, 20)).astype(np.float32), 0.7), 8, axis=0)
    assert choose_block(wb) == (8, 1)  # block-pruned rows: 8x1 blocks are full
    zero = to_bsr(np.zeros((4, 4), np.float32))
    assert zero.nnzb == 1 and not zero.data.any()


@pytest.mark.parametrize("m,block", [(1, (1, 1)), (3, (1, 1)), (3, (8, 1)), (1, (4, 2))])
def test_sparse_dense_kernel(m: int, block: tuple[int, int]) -> None:
    n, k = 60, 50
    w = prune(RNG.standard_normal((n, k)).astype(np.float32), 0.8)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    b = RNG.standard_normal(n).astype(np.float32)
    bsr = to_bsr(w, block)
    f = sparse_dense(m, n, k, bsr.nnzb, block, Epilogue(bias=True, activation="relu"))
    got = _run(f, [x, bsr.data, bsr.indices, bsr.indptr, b], (m, n))
    ref = np.maximum(x.astype(np.float64) @ w.T + b, 0)
    assert rel(got, ref) <= 1e-5


@pytest.mark.parametrize(
    "r,shape,pads", [(1, (2, 8, 9, 11), (1, 1, 1, 1)), (4, (1, 6, 7, 7), (0, 1, 2, 0))]
)
def test_sparse_conv_kernel(r: int, shape: tuple[int, ...], pads: tuple[int, ...]) -> None:
    o = 12
    w = prune(RNG.standard_normal((o, shape[1], 3, 3)).astype(np.float32), 0.8)
    x = RNG.standard_normal(shape).astype(np.float32)
    b = RNG.standard_normal(o).astype(np.float32)
    plan = sparse_conv_plan(shape, (3, 3), pads, r, 8)
    data, chan, off, indptr = conv_csr_arrays(w, plan.wp, (r, 1))
    f, plan = sparse_conv2d(shape, w.shape, pads, data.shape[0], r, Epilogue(bias=True))
    ref = run_conv_numpy(x, w, pads, b)
    got = _run(f, [x, data, chan, off, indptr, b], ref.shape)
    assert rel(got, ref) <= 1e-5


def test_crossover_policy() -> None:
    big = prune(RNG.standard_normal((2048, 2560)).astype(np.float32), 0.7)  # 20 MB: DRAM-bound
    small = prune(RNG.standard_normal((64, 64)).astype(np.float32), 0.7)
    assert sparse_wins("dense", big) and not sparse_wins("dense", small)
    assert sparse_wins("dense", small, block=(8, 1))
    assert sparse_wins("conv", prune(RNG.standard_normal((8, 72)), 0.9))
    assert not sparse_wins("conv", prune(RNG.standard_normal((8, 72)), 0.5))


def _pruned_graph() -> Graph:
    g = Graph("sparse")
    x = g.add_input("x", TensorType((1, 8, 10, 10), "float32"))
    w1 = g.const(RNG.standard_normal((16, 8, 3, 3)).astype(np.float32) / 8, "w1")
    h = g.add_node("conv2d", [x, w1, g.const(RNG.standard_normal(16).astype(np.float32))],
                   {"pads": (1, 1, 1, 1)}, name="c1").output  # fmt: skip
    h = g.add_node("relu", [h], name="r1").output
    w2 = g.const(RNG.standard_normal((16, 16, 1, 1)).astype(np.float32) / 4, "w2")
    h = g.add_node("conv2d", [h, w2], {"strides": (2, 2)}, name="c2").output  # strided: dense
    h = g.add_node("flatten", [h], name="f").output
    w3 = g.const(RNG.standard_normal((10, 400)).astype(np.float32) / 20, "w3")
    h = g.add_node("dense", [h, w3, g.const(RNG.standard_normal(10).astype(np.float32))], name="fc")
    g.outputs.append(h.output)
    return g


@pytest.mark.parametrize("mode", ["always", "never"])
def test_build_pruned_graph_matches_interpreter(mode: str) -> None:
    from mcopt.targets import build
    from mcopt.targets.relax import lower_sparse

    g = _pruned_graph()
    assert get_pass("prune-weights", sparsity=0.9, encode="always").run(g, PassContext())
    verify(g)
    x = RNG.standard_normal((1, 8, 10, 10)).astype(np.float32)
    ref = interpreter.run(g, [x])[0]
    old = lower_sparse.POLICY["mode"]
    lower_sparse.POLICY["mode"] = mode
    try:
        from mcopt.targets.relax.lower import lower

        text = str(lower(g))  # the plain lowering (mcopt-plain)
        assert ("sparse_conv2d" in text) == ("sparse_dense" in text) == (mode == "always")
        compiled = build(g, "cpu")  # the default (planned) build
        got = compiled.run(x)[0]
    finally:
        lower_sparse.POLICY["mode"] = old
    assert rel(got, ref) <= 1e-5
    # the default build runs the pruned dense layer on the sparse kernel (and says so)
    sparse_fc = compiled.choices.get("dense layer: sparse kernel (pruned weight)", 0)
    assert sparse_fc == (1 if mode == "always" else 0)
