"""Layer pruning (residual blocks), least-squares recovery and sensitivity analysis."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt.analysis.cost import graph_stats
from mcopt.analysis.sensitivity import global_fraction, layer_sensitivity, relative_error
from mcopt.interpreter import run
from mcopt.ir import verify
from mcopt.onnx_io import import_model
from mcopt.pass_manager import LayerPruningRecord, PassContext, PassManager, get_pass
from mcopt.passes.prune_layers import block_effects, find_residual_blocks
from mcopt.testing import zoo


@pytest.fixture(scope="module")
def resnet():
    return import_model(zoo.resnet18_like(32, 10, width=8))


def _feeds(g, n, seed):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(g.inputs[0].shape).astype(np.float32)] for _ in range(n)]


def test_find_and_remove_residual_blocks(resnet) -> None:
    blocks = find_residual_blocks(resnet)
    # identity-shortcut blocks only: 2 in stage 1, 1 in each later stage
    assert len(blocks) == 5
    assert all(len(b.nodes) == 5 for b in blocks)  # conv bn relu conv bn
    feeds = _feeds(resnet, 2, 0)
    eff = block_effects(resnet, feeds)
    assert set(eff) == {b.name for b in blocks} and all(e > 0 for e in eff.values())
    g = resnet.copy()
    ctx = PassContext(calib=feeds)
    assert get_pass("prune-layers", num_blocks=2)(g, ctx)
    verify(g)
    assert len(g.nodes) == len(resnet.nodes) - 12  # 2 x (5 branch nodes + the add)
    assert graph_stats(g).macs < graph_stats(resnet).macs
    record = ctx.analyses.get(LayerPruningRecord)
    assert record is not None
    removed = record.removed
    assert removed == sorted(eff, key=eff.get)[:2] or len(removed) == 2
    run(g, feeds[0])


def test_prune_layers_max_error_and_identity(resnet) -> None:
    g = resnet.copy()
    assert not get_pass("prune-layers", num_blocks=3, max_error=1e-9)(
        g, PassContext(calib=_feeds(g, 1, 0))
    )
    g = resnet.copy()
    n0 = len(g.nodes)
    get_pass("prune-layers", num_blocks=0, identity_tol=1e-6)(g, PassContext(calib=_feeds(g, 1, 0)))
    verify(g)
    assert len(g.nodes) < n0  # the final identity node at least


def test_least_squares_recovery_reduces_error() -> None:
    g0 = import_model(zoo.tiny_cnn())
    calib, held = _feeds(g0, 8, 1), _feeds(g0, 4, 2)
    y0 = np.concatenate([run(g0, f)[0] for f in held])
    errs = {}
    for recover in (False, True):
        g = g0.copy()
        get_pass("prune-channels", ratio=0.5, recover=recover)(g, PassContext(calib=calib))
        verify(g)
        errs[recover] = relative_error(np.concatenate([run(g, f)[0] for f in held]), y0)
    assert errs[True] < 0.5 * errs[False]  # measured: 0.92 -> 0.08
    # the standalone pass does the same after a plain prune-channels
    g = g0.copy()
    pm = PassManager(["prune-channels:ratio=0.5", "refit-lstsq"])
    pm.run(g, PassContext(calib=calib))
    e = relative_error(np.concatenate([run(g, f)[0] for f in held]), y0)
    assert e == pytest.approx(errs[True], rel=0.05)


def test_sensitivity_table_plot_and_ratios(tmp_path, resnet) -> None:
    feeds = _feeds(resnet, 1, 0)
    rep = layer_sensitivity(resnet, feeds, kind="weights", sparsities=(0.3, 0.6, 0.9))
    assert len(rep.layers) == 21 and rep.errors.shape == (21, 3)
    assert (rep.errors[:, 2] >= rep.errors[:, 0]).mean() > 0.8
    assert rep.table().count("\n") == 22
    png = rep.plot(tmp_path / "sens.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    ratios = rep.pick_ratios(0.5)
    assert global_fraction(ratios, dict(zip(rep.layers, rep.params))) == pytest.approx(
        0.5, abs=0.02
    )
    crep = layer_sensitivity(resnet, feeds, kind="channels", sparsities=(0.25, 0.5))
    assert crep.errors.shape == (len(crep.layers), 2) and len(crep.layers) >= 10
    g = resnet.copy()
    get_pass("prune-channels", ratio=0.4, schedule="sensitivity")(g, PassContext(calib=feeds))
    verify(g)
    assert graph_stats(g).params < graph_stats(resnet).params
