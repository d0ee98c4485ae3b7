"""Convolution factorizations: exact cases to float precision (interpreter and onnxruntime), error that
falls as the rank rises, per-layer rank selection from a calibration error budget / spectral energy,
grouped and strided convs, and real graphs (LeNet-5 on MNIST, tiny CNN; AlexNet marked slow)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from mcopt import interpreter
from mcopt.ir import Graph, TensorType, verify
from mcopt.onnx_io import export_model, import_model
from mcopt.pass_manager import PassContext, PassSummary, get_pass
from mcopt.testing import zoo

METHODS = [
    "factorize-spatial",
    "factorize-depthwise",
    "factorize-tucker",
    "factorize-flattened",
    "factorize-5x5",
]


def conv_graph(
    w: np.ndarray, *, stride: int = 1, pad: int = 1, groups: int = 1, hw: int = 12, seed: int = 0
) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("conv")
    x = g.add_input("x", TensorType((2, w.shape[1] * groups, hw, hw), "float32"))
    b = g.const(rng.standard_normal(w.shape[0]).astype(np.float32), "b")
    attrs = {"strides": (stride, stride), "pads": (pad,) * 4, "groups": groups}
    n = g.add_node("conv2d", [x, g.const(w.astype(np.float32), "w"), b], attrs, name="conv")
    g.outputs.append(g.add_node("relu", [n.output], name="out").output)
    return g


def feed_of(g: Graph, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(v.shape).astype(np.float32) for v in g.inputs]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))


def ort_run(g: Graph, feed: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(
        export_model(g).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {v.name: a for v, a in zip(g.inputs, feed)})


def apply(g: Graph, spec: str, ctx: PassContext | None = None, **opts: object) -> PassSummary:
    ctx = ctx or PassContext()
    get_pass(spec, **opts).run(g, ctx)
    verify(g)
    assert ctx.summary is not None
    return ctx.summary


# --- exact cases ------------------------------------------------------------------------------------------
def test_separable_kernel_rank1_is_exact() -> None:
    """W[o,c,i,j] = sum_{k<r} a_k[c,i] b_k[o,j]: spatial SVD of rank r reproduces it."""
    rng = np.random.default_rng(0)
    o, c, k, r = 16, 8, 3, 2
    a = rng.standard_normal((r, c, k))
    bb = rng.standard_normal((r, o, k))
    w = np.einsum("kci,koj->ocij", a, bb)
    g = conv_graph(w)
    feed = feed_of(g)
    ref = interpreter.run(g, feed)[0]
    s = apply(g, "factorize-spatial", rank=r)
    assert s.layers[0].rank == r
    assert [n.op for n in g.nodes] == ["conv2d", "conv2d", "relu"]
    assert g.nodes[0].inputs[1].shape == (r, c, 3, 1) and g.nodes[1].inputs[1].shape == (o, r, 1, 3)
    assert rel(interpreter.run(g, feed)[0], ref) < 1e-5
    assert rel(ort_run(g, feed)[0], ref) < 1e-5
    assert s.params_after < s.params_before and s.macs_after < s.macs_before


def test_rank1_separable_kernel_found_by_energy() -> None:
    """Without calibration data a rank-1 separable kernel is detected (all energy in one component)."""
    rng = np.random.default_rng(1)
    w = np.einsum("ci,oj->ocij", rng.standard_normal((8, 3)), rng.standard_normal((16, 3)))
    g = conv_graph(w)
    feed = feed_of(g)
    ref = interpreter.run(g, feed)[0]
    s = apply(g, "factorize-spatial", energy=0.999)
    assert s.layers[0].rank == 1 and s.layers[0].error_kind == "weights"
    assert rel(interpreter.run(g, feed)[0], ref) < 1e-5


@pytest.mark.parametrize(
    "spec,make",
    [
        # depthwise: every per-input-channel slice W[:, c] (O x 9) has rank 1
        ("factorize-depthwise", lambda r: np.einsum("oc,cij->ocij", r.standard_normal((12, 6)), r.standard_normal((6, 3, 3)))),
        # Tucker-2 with multilinear rank (4, 3)
        ("factorize-tucker", lambda r: np.einsum("abij,oa,cb->ocij", r.standard_normal((4, 4, 3, 3)), r.standard_normal((12, 4)), np.pad(r.standard_normal((6, 3)), ((0, 0), (0, 1))))),
        # flattened: each filter is one outer product c (x) y (x) x
        ("factorize-flattened", lambda r: np.einsum("oc,oi,oj->ocij", r.standard_normal((12, 6)), r.standard_normal((12, 3)), r.standard_normal((12, 3)))),
    ],
)  # fmt: skip
def test_low_rank_kernels_are_exact(spec: str, make) -> None:  # type: ignore[no-untyped-def]
    w = make(np.random.default_rng(2))
    g = conv_graph(w)
    feed = feed_of(g)
    ref = interpreter.run(g, feed)[0]
    rank = {"factorize-depthwise": 1, "factorize-tucker": 4, "factorize-flattened": 1}[spec]
    s = apply(g, spec, rank=rank)
    assert s.params_after < s.params_before
    assert rel(interpreter.run(g, feed)[0], ref) < 1e-4
    assert rel(ort_run(g, feed)[0], ref) < 1e-4


def test_five_by_five_composite_is_recovered() -> None:
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((4, 6, 3, 3)), rng.standard_normal((10, 4, 3, 3))
    from mcopt.passes.factorize import _compose_33

    g = conv_graph(_compose_33(w2, w1), pad=2)
    feed = feed_of(g)
    ref = interpreter.run(g, feed)[0]
    s = apply(g, "factorize-5x5", rank=4)
    assert [n.inputs[1].shape[2:] for n in g.nodes[:2]] == [(3, 3), (3, 3)]
    assert s.params_after < s.params_before
    assert rel(interpreter.run(g, feed)[0], ref) < 1e-3


@pytest.mark.parametrize("spec", ["factorize-spatial", "factorize-depthwise", "factorize-tucker"])
def test_full_rank_is_exact_with_groups_and_stride(spec: str) -> None:
    w = np.random.default_rng(4).standard_normal((8, 3, 3, 3))
    g = conv_graph(w, stride=2, groups=2, hw=11)
    feed = feed_of(g)
    ref = interpreter.run(g, feed)[0]
    apply(g, spec, rank=64)  # clipped to the exact rank
    assert rel(interpreter.run(g, feed)[0], ref) < 1e-5
    assert rel(ort_run(g, feed)[0], ref) < 1e-5


# --- lossy: error falls as the rank rises ------------------------------------------------------------------
@pytest.mark.parametrize("spec", METHODS)
def test_error_falls_as_rank_rises(spec: str) -> None:
    k = 5 if spec == "factorize-5x5" else 3
    w = np.random.default_rng(5).standard_normal((12, 8, k, k))
    ranks = {
        "factorize-spatial": [1, 8, 16],
        "factorize-depthwise": [1, 4, 8],
        "factorize-tucker": [1, 6, 10],
        "factorize-flattened": [1, 3, 6],
        "factorize-5x5": [1, 6, 12],
    }[spec]
    errs, params = [], []
    for r in ranks:
        g = conv_graph(w, pad=k // 2)
        feed = feed_of(g)
        ref = interpreter.run(g, feed)[0]
        s = apply(g, spec, rank=r)
        errs.append(rel(interpreter.run(g, feed)[0], ref))
        params.append(s.params_after)
        assert s.layers[0].rank == r and s.layers[0].rel_error is not None
    assert errs == sorted(errs, reverse=True) and errs[0] > 2 * errs[-1], errs
    assert params == sorted(params)


# --- rank selection ---------------------------------------------------------------------------------------
def test_rank_from_calibration_budget() -> None:
    rng = np.random.default_rng(6)
    decay = np.exp(-np.arange(12) / 3.0)[:, None, None]
    w = np.einsum(
        "kci,koj->ocij", rng.standard_normal((12, 16, 3)) * decay, rng.standard_normal((12, 32, 3))
    )
    base = conv_graph(w)
    calib = [feed_of(base, seed=10 + i) for i in range(4)]
    chosen = {}
    for budget in (0.3, 0.1):
        g = conv_graph(w)
        ctx = PassContext(calib=calib)
        s = apply(g, "factorize-spatial", ctx, max_rel_error=budget, min_saving=0.0)
        layer = s.layers[0]
        assert layer.error_kind == "calib" and layer.rel_error <= budget
        assert s.output_rel_error is not None
        chosen[budget] = layer.rank
    assert chosen[0.3] < chosen[0.1]


def test_layer_left_alone_when_budget_needs_too_high_rank() -> None:
    w = np.random.default_rng(7).standard_normal((16, 8, 3, 3))
    g = conv_graph(w)
    s = apply(g, "factorize-tucker", energy=0.999, min_saving=0.5)
    assert not s.layers and "conv" in s.skipped
    assert [n.op for n in g.nodes] == ["conv2d", "relu"]


# --- real graphs ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return zoo.mnist_test_set()


def lenet_accuracy(g: Graph, x: np.ndarray, y: np.ndarray) -> float:
    pred = [int(interpreter.run(g, [x[i : i + 1]])[0].argmax()) for i in range(len(x))]
    return float(np.mean(np.array(pred) == y))


@pytest.mark.parametrize("spec", ["factorize-spatial", "factorize-5x5"])
def test_lenet5_factorized_keeps_accuracy(spec: str, mnist: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = mnist
    calib = [[x[i : i + 1]] for i in range(0, 200, 5)]
    g = import_model(str(zoo.lenet5_path()))
    xt, yt = x[1::4], y[1::4]
    acc0 = lenet_accuracy(g, xt, yt)
    s = apply(g, spec, PassContext(calib=calib), max_rel_error=0.05)
    assert s.layers and s.params_saved > 0
    assert all(r.rel_error <= 0.05 for r in s.layers)
    assert lenet_accuracy(g, xt, yt) >= acc0 - 0.02


def test_tiny_cnn_all_methods_run_and_verify() -> None:
    g0 = import_model(zoo.tiny_cnn())
    feed = feed_of(g0)
    calib = [feed_of(g0, seed=20 + i) for i in range(2)]
    for spec in METHODS:
        g = g0.copy()
        s = apply(g, spec, PassContext(calib=calib), max_rel_error=0.5, min_saving=0.0)
        out = interpreter.run(g, feed)[0]
        assert out.shape == interpreter.run(g0, feed)[0].shape
        if s.layers:
            np.testing.assert_allclose(ort_run(g, feed)[0], out, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_alexnet_spatial_and_tucker() -> None:
    g0 = import_model(zoo.light_model("bvlc_alexnet"))
    calib = [feed_of(g0, seed=30 + i) for i in range(2)]
    for spec in ("factorize-spatial", "factorize-tucker"):
        g = g0.copy()
        # random He weights have flat spectra: no rank meets an error budget, so fix the rank
        s = apply(g, spec, PassContext(calib=calib), rank=16, max_rel_error=None, min_saving=0.0)
        assert s.layers and s.params_saved > 0 and s.output_rel_error is not None
