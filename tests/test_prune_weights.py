"""Fine-grained weight pruning: sparsity targets, thresholds, CSR accounting, export."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt.analysis.cost import graph_stats
from mcopt.analysis.sensitivity import SensitivityReport
from mcopt.interpreter import run
from mcopt.ir import Sparse, verify
from mcopt.onnx_io import export_model, import_model
from mcopt.pass_manager import PassContext, get_pass
from mcopt.testing import zoo


@pytest.fixture(scope="module")
def graph():
    return import_model(zoo.resnet18_like(32, 10, width=8))


def _weights(g):
    return {n.name: n.inputs[1] for n in g.nodes if n.op in ("conv2d", "dense")}


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sparsity_target_and_csr_bytes(graph, scope: str) -> None:
    g = graph.copy()
    s0 = graph_stats(g)
    assert get_pass("prune-weights", sparsity=0.8, scope=scope)(g, PassContext())
    verify(g)
    ws = _weights(g)
    zeros = sum(w.type.size - np.count_nonzero(w.const) for w in ws.values())
    total = sum(w.type.size for w in ws.values())
    assert zeros / total == pytest.approx(0.8, abs=0.01)
    if scope == "layer":
        for w in ws.values():
            assert 1 - np.count_nonzero(w.const) / w.type.size == pytest.approx(0.8, abs=0.02)
    encoded = [w for w in ws.values() if isinstance(w.type.encoding, Sparse)]
    assert encoded and all(w.type.encoding.nnz == np.count_nonzero(w.const) for w in encoded)
    s1 = graph_stats(g)
    assert s1.weight_bytes < 0.5 * s0.weight_bytes  # CSR bytes are counted
    assert any(k.startswith("csr") for k in s1.bytes_by_dtype)
    x = np.random.default_rng(0).standard_normal(g.inputs[0].shape).astype(np.float32)
    import onnxruntime as ort

    sess = ort.InferenceSession(
        export_model(g).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(
        sess.run(None, {"input": x})[0], run(g, [x])[0], rtol=1e-4, atol=1e-4
    )


def test_threshold_std_factor_and_options(graph) -> None:
    g = graph.copy()
    get_pass("prune-weights", threshold=0.05, skip=["fc_0"])(g, PassContext())
    for name, w in _weights(g).items():
        if name == "fc_0":
            assert np.count_nonzero(w.const) == w.type.size
        else:
            nz = w.const[w.const != 0]
            assert np.all(np.abs(nz) >= 0.05)
    g = graph.copy()
    get_pass("prune-weights", std_factor=1.0, layer_sparsity="[conv_1=0.9]")(g, PassContext())
    w1 = _weights(g)["conv_1"].const
    assert 1 - np.count_nonzero(w1) / w1.size == pytest.approx(0.9, abs=0.01)
    w2 = graph.find_node("conv_2").inputs[1].const
    p2 = _weights(g)["conv_2"].const
    assert np.all((p2 == 0) == (np.abs(w2) < np.std(w2)))


def test_encode_auto_keeps_dense_at_low_sparsity(graph) -> None:
    g = graph.copy()
    get_pass("prune-weights", sparsity=0.1)(g, PassContext())
    assert all(w.type.encoding is None for w in _weights(g).values())
    g = graph.copy()
    get_pass("prune-weights", sparsity=0.1, encode="always")(g, PassContext())
    assert all(isinstance(w.type.encoding, Sparse) for w in _weights(g).values())


def test_sensitivity_scope(graph) -> None:
    g = graph.copy()
    x = np.random.default_rng(0).standard_normal(g.inputs[0].shape).astype(np.float32)
    ctx = PassContext(calib=[[x]])
    get_pass("prune-weights", sparsity=0.6, scope="sensitivity")(g, ctx)
    verify(g)
    ws = _weights(g)
    zeros = sum(w.type.size - np.count_nonzero(w.const) for w in ws.values())
    assert zeros / sum(w.type.size for w in ws.values()) == pytest.approx(0.6, abs=0.03)
    assert SensitivityReport in ctx.analyses
    sp = [1 - np.count_nonzero(w.const) / w.type.size for w in ws.values()]
    assert max(sp) - min(sp) > 0.05  # per-layer ratios differ


def test_lenet300_weight_pruning_accuracy() -> None:
    g = import_model(str(zoo.lenet300_path()))
    x, y = zoo.mnist_test_set()

    def acc(gr):
        return np.mean(
            [
                run(gr, [xi.reshape(gr.inputs[0].shape)])[0].argmax() == yi
                for xi, yi in zip(x[:200], y[:200])
            ]
        )

    base = acc(g)
    g2 = g.copy()
    get_pass("prune-weights", sparsity=0.5, scope="global")(g2, PassContext())
    assert acc(g2) >= base - 0.03
    assert graph_stats(g2).weight_bytes < 0.8 * graph_stats(g).weight_bytes


def test_masked_refit_recovers_accuracy() -> None:
    g = import_model(str(zoo.lenet300_path()))
    x, y = zoo.mnist_test_set()
    feeds = [[xi[None]] for xi in x[:300]]

    def acc(gr):
        return np.mean(
            [run(gr, [xi[None]])[0].argmax() == yi for xi, yi in zip(x[600:900], y[600:900])]
        )

    accs = {}
    for refit in (False, True):
        g2 = g.copy()
        get_pass("prune-weights", sparsity=0.9, scope="global", refit=refit, calib_batches=300)(
            g2, PassContext(calib=feeds)
        )
        verify(g2)
        w = g2.nodes_of("dense")[0].inputs[1]
        assert 1 - np.count_nonzero(w.const) / w.type.size > 0.85  # zeros stay zero
        accs[refit] = acc(g2)
    assert accs[True] > accs[False] + 0.03
