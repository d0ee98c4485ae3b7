"""Winograd F(2x2,3x3) / F(4x4,3x3): the op against direct convolution, the pass on real graphs, MACs
accounting (2.25x / 4x fewer multiplies) and ONNX export run by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from mcopt import interpreter
from mcopt.analysis.cost import analyze, graph_stats
from mcopt.ir import Graph, TensorType, verify
from mcopt.onnx_io import export_model, import_model
from mcopt.ops.nn import conv2d_ref
from mcopt.ops.winograd import (
    TRANSFORMS,
    winograd_conv2d_ref,
    winograd_weight,
    winograd_weight_inverse,
)
from mcopt.pass_manager import PassContext, PassManager, get_pass
from mcopt.testing import zoo

RNG = np.random.default_rng(0)


def ort_run(g: Graph, feed: list[np.ndarray]) -> list[np.ndarray]:
    model = export_model(g)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {v.name: a for v, a in zip(g.inputs, feed)})


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("m", [2, 4])
def test_1d_transforms_compute_correlation(m: int) -> None:
    bt, g, at = TRANSFORMS[m]
    d = RNG.standard_normal(m + 2)
    f = RNG.standard_normal(3)
    y = at @ ((g @ f) * (bt @ d))
    ref = np.array([d[i : i + 3] @ f for i in range(m)])
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(
    "shape,pads",
    [((2, 5, 8, 8), (1, 1, 1, 1)), ((1, 3, 7, 9), (0, 1, 2, 0)), ((1, 4, 3, 3), (0,) * 4)],
)
def test_reference_matches_direct_conv(
    m: int, shape: tuple[int, ...], pads: tuple[int, ...]
) -> None:
    x = RNG.standard_normal(shape).astype(np.float32)
    w = RNG.standard_normal((6, shape[1], 3, 3)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    y = winograd_conv2d_ref(x, winograd_weight(w, m), b, m=m, pads=pads)
    ref = conv2d_ref(x, w, b, strides=(1, 1), pads=pads, dilations=(1, 1), groups=1)
    assert y.shape == ref.shape and y.dtype == np.float32
    assert rel(y, ref) < (1e-6 if m == 2 else 1e-5)
    # float64 inputs: exact to double precision
    y64 = winograd_conv2d_ref(
        x.astype(np.float64),
        winograd_weight(w.astype(np.float64), m),
        b.astype(np.float64),
        m=m,
        pads=pads,
    )
    ref64 = conv2d_ref(
        x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
        strides=(1, 1), pads=pads, dilations=(1, 1), groups=1,
    )  # fmt: skip
    assert rel(y64, ref64) < 1e-12


@pytest.mark.parametrize("m", [2, 4])
def test_weight_transform_roundtrip(m: int) -> None:
    w = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
    u = winograd_weight(w, m)
    assert u.shape == (m + 2, m + 2, 4, 8)
    np.testing.assert_allclose(winograd_weight_inverse(u, m), w, rtol=0, atol=1e-5)


def _conv_graph(c: int = 16, o: int = 32, hw: int = 16) -> Graph:
    g = Graph("conv")
    x = g.add_input("x", TensorType((1, c, hw, hw), "float32"))
    w = g.const(RNG.standard_normal((o, c, 3, 3)).astype(np.float32) / np.sqrt(9 * c), "w")
    b = g.const(RNG.standard_normal(o).astype(np.float32), "b")
    n = g.add_node("conv2d", [x, w, b], {"pads": (1, 1, 1, 1)}, name="conv")
    g.outputs.append(g.add_node("relu", [n.output], name="out").output)
    return g


@pytest.mark.parametrize("m,ratio,growth", [(2, 2.25, 16 / 9), (4, 4.0, 36 / 9)])
def test_macs_and_params_accounting(m: int, ratio: float, growth: float) -> None:
    g = _conv_graph()
    before = analyze(g).rows[0]
    ctx = PassContext()
    assert get_pass("winograd", tile=m).run(g, ctx)
    verify(g)
    after = analyze(g).rows[0]
    assert after.op == "winograd_conv2d"
    assert before.macs / after.macs == pytest.approx(ratio)
    assert ctx.summary is not None
    rec = ctx.summary.layers[0]
    assert rec.macs_before / rec.macs_after == pytest.approx(ratio)
    w_before, w_after = rec.params_before - 32, rec.params_after - 32  # minus bias
    assert w_after / w_before == pytest.approx(growth)
    assert ctx.summary.lossless is True


@pytest.mark.parametrize("m", [2, 4])
def test_pass_on_tiny_cnn_is_lossless_and_exports(m: int) -> None:
    g = import_model(zoo.tiny_cnn())
    feed = [RNG.standard_normal(v.shape).astype(np.float32) for v in g.inputs]
    ref = interpreter.run(g, feed)[0]
    ctx = PassContext()
    g2, report = PassManager([f"winograd:tile={m}"]).run(g, ctx, inputs=feed, copy=True)
    verify(g2)
    summary = ctx.summary
    assert summary is not None
    assert len(summary.layers) == 3  # stem, two residual 3x3 convs
    assert "dw" in " ".join(summary.skipped)  # depthwise 3x3 is skipped (groups != 1)
    assert report.records[0].max_rel_err is not None and report.records[0].max_rel_err < 1e-4
    assert graph_stats(g2).macs < graph_stats(g).macs
    out = interpreter.run(g2, feed)[0]
    assert rel(out, ref) < 1e-4
    assert rel(ort_run(g2, feed)[0], ref) < 1e-4  # exported as standard Conv


def test_layers_and_min_channels_options() -> None:
    g = import_model(zoo.tiny_cnn())
    ctx = PassContext()
    get_pass("winograd", min_channels=4).run(g, ctx)
    done = [r.layer for r in ctx.summary.layers]
    assert len(done) == 2 and any("min_channels" in why for why in ctx.summary.skipped.values())
    g = import_model(zoo.tiny_cnn())
    get_pass("winograd", layers=(done[0],)).run(g, ctx)
    assert [r.layer for r in ctx.summary.layers] == [done[0]]
    with pytest.raises(Exception, match="tile"):
        get_pass("winograd", tile=3)


@pytest.mark.slow
def test_vgg19_all_3x3_convs() -> None:
    g = import_model(zoo.light_model("vgg19"))
    feed = [RNG.standard_normal(v.shape).astype(np.float32) for v in g.inputs]
    ref = interpreter.run(g, feed)[0]
    macs0 = graph_stats(g).macs
    ctx = PassContext()
    assert get_pass("winograd", tile=4).run(g, ctx)
    verify(g)
    assert len(ctx.summary.layers) == 16
    assert graph_stats(g).macs < macs0 / 2.5
    assert rel(interpreter.run(g, feed)[0], ref) < 1e-3
