"""Energy per inference (mcopt.analysis.energy): Horowitz 45 nm table, per layer, encoding-aware."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcopt.analysis.cost import analyze
from mcopt.analysis.energy import (
    HOROWITZ_45NM,
    EnergyReport,
    EnergyTable,
    estimate_energy,
    format_energy,
)
from mcopt.api import load
from mcopt.ir.core import Graph
from mcopt.pass_manager import PassContext, run_passes
from mcopt.testing import zoo

_COMPONENTS = ("compute_pj", "rf_pj", "sram_pj", "dram_pj")


@pytest.fixture(scope="module")
def lenet() -> Graph:
    return load(zoo.lenet5_path())


@pytest.fixture(scope="module")
def calib() -> list[dict[str, np.ndarray]]:
    x, _ = zoo.mnist_test_set()
    return [{"input": x[i : i + 1]} for i in range(8)]


def _compressed(g: Graph, calib: list, *passes: str) -> Graph:
    out, _ = run_passes(g, ["cleanup", *passes], PassContext(calib=calib), copy=True)
    return out


def _layers(rep: EnergyReport, op: str) -> list:
    return [r for r in rep.rows if r.op == op]


def test_scaling_rules_match_horowitz() -> None:
    t = HOROWITZ_45NM
    assert t.iadd(32) == pytest.approx(0.1) and t.imul(32, 32) == pytest.approx(3.1)
    assert t.fadd(32) == pytest.approx(0.9) and t.fmul(32) == pytest.approx(3.7)
    assert t.rf(32) == pytest.approx(1.0)
    assert t.sram_bytes(4) == pytest.approx(5.0) and t.dram_bytes(4) == pytest.approx(640.0)
    # Horowitz's 8-bit entries (0.03 pJ add, 0.2 pJ mult) fit linear / quadratic scaling
    assert t.iadd(8) == pytest.approx(0.03, abs=0.006)
    assert t.imul(8, 8) == pytest.approx(0.2, abs=0.01)
    # fp16: 0.4 pJ add, 1.1 pJ mult
    assert t.fadd(16) == pytest.approx(0.4, abs=0.06)
    assert t.fmul(16) == pytest.approx(1.1, abs=0.2)


def test_totals_are_the_sum_of_rows(lenet: Graph) -> None:
    rep = estimate_energy(lenet)
    assert [r.name for r in rep.rows] == [n.name for n in lenet.nodes]
    for key in _COMPONENTS:
        assert getattr(rep, key) == pytest.approx(sum(getattr(r, key) for r in rep.rows))
    assert rep.total_pj == pytest.approx(sum(r.total_pj for r in rep.rows))
    assert rep.total_pj == pytest.approx(sum(getattr(rep, k) for k in _COMPONENTS))
    assert rep.total_uj == pytest.approx(rep.total_pj * 1e-6)
    # weights: the encoded bytes the cost analysis counts, MACs the schema's
    cost = analyze(lenet)
    assert sum(r.weight_bytes for r in rep.rows) == cost.weight_bytes
    assert sum(r.macs for r in rep.rows) == cost.macs
    assert rep.dram_pj == pytest.approx(cost.weight_bytes * 640 / 4)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["total_pj"] == pytest.approx(rep.total_pj)
    assert len(d["rows"]) == len(rep.rows)
    assert sum(r["total_pj"] for r in d["rows"]) == pytest.approx(d["total_pj"])


def test_fp32_conv_row_by_hand(lenet: Graph) -> None:
    """Conv_0: 6x1x5x5 weights + 6 biases (fp32), output 1x6x28x28, 117,600 MACs."""
    row = estimate_energy(lenet).by_name()["Conv_0"]
    macs, outs = 117_600, 6 * 28 * 28
    assert row.macs == macs and row.arith == "fp32"
    assert row.compute_pj == pytest.approx(macs * (3.7 + 0.9))
    assert row.rf_pj == pytest.approx(macs * 2 * 1.0 + outs * 1.0)
    assert row.dram_pj == pytest.approx((150 + 6) * 4 * 160)
    assert row.sram_pj == pytest.approx((28 * 28 * 4 + outs * 4) * 5 / 4)


def test_dram_dominates_fc_layers(lenet: Graph) -> None:
    rep = estimate_energy(lenet)
    dense = _layers(rep, "dense")
    assert len(dense) == 3
    for r in dense:  # each weight is used once per inference: its DRAM read costs >100x its MACs
        assert r.dram_share > 0.9, (r.name, r.dram_share)
    # the first conv reuses its 150 weights 784 times: arithmetic, not DRAM, dominates
    conv1 = rep.by_name()["Conv_0"]
    assert conv1.dram_share < 0.2 < conv1.compute_pj / conv1.total_pj
    assert rep.dram_pj / rep.total_pj > 0.8  # LeNet-5 is FC-heavy: the whole model is DRAM-bound
    md = rep.to_markdown()
    assert "| **total** |" in md and all(r.name in md for r in rep.rows)
    assert format_energy(rep.total_pj).endswith("uJ")
    assert "per inference" in rep.summary()


def test_energy_falls_after_weight_pruning(lenet: Graph, calib: list) -> None:
    before = estimate_energy(lenet)
    pruned = _compressed(lenet, calib, "prune-weights:sparsity=0.9")
    after = estimate_energy(pruned)
    assert after.total_pj < 0.3 * before.total_pj  # CSR at 10 % density: ~5x fewer DRAM bytes
    b, a = before.by_name(), after.by_name()
    for name in ("Gemm_7", "Gemm_9", "Gemm_11", "Conv_3"):
        assert a[name].weight_bytes < 0.25 * b[name].weight_bytes
        assert a[name].dram_pj < 0.25 * b[name].dram_pj
        assert a[name].macs == b[name].macs  # the dense MAC count is unchanged...
        assert a[name].effective_macs == pytest.approx(
            0.1 * b[name].macs, rel=0.05
        )  # ...but skipped
        assert a[name].stored_params < 0.15 * a[name].params
        assert a[name].compute_pj < 0.15 * b[name].compute_pj
    # the real encoded bytes: exactly what the IR's TensorType.nbytes says
    assert sum(r.weight_bytes for r in after.rows) == analyze(pruned).weight_bytes
    assert after.sram_pj == pytest.approx(before.sram_pj)  # activations unchanged


def test_energy_falls_after_int8(lenet: Graph, calib: list) -> None:
    before = estimate_energy(lenet)
    q = _compressed(lenet, calib, "quantize-int8")
    after = estimate_energy(q)
    assert after.total_pj < 0.35 * before.total_pj
    assert after.dram_pj < 0.3 * before.dram_pj  # 8-bit weights (+ int32 biases, scales)
    assert after.compute_pj < 0.2 * before.compute_pj  # int8 MACs, int32 accumulation
    qrows = [r for r in after.rows if r.op in ("qconv2d", "qdense")]
    assert len(qrows) == 5 and {r.arith for r in qrows} == {"int8"}
    fp = {r.macs: r for r in before.rows if r.op in ("conv2d", "dense")}
    for r in qrows:  # per MAC, int8 arithmetic is far cheaper than fp32
        assert r.compute_pj / r.macs < 0.2 * fp[r.macs].compute_pj / r.macs
    for r in (r for r in qrows if r.op == "qdense"):
        assert r.dram_share > 0.9


def test_binary_fixed_point_and_shared_weights(lenet: Graph, calib: list) -> None:
    base = estimate_energy(lenet).total_pj
    xnor = estimate_energy(_compressed(lenet, calib, "xnor"))
    assert {r.arith for r in xnor.rows if r.op.startswith("binary_")} == {"xnor"}
    assert xnor.total_pj < 0.2 * base
    bwn = estimate_energy(_compressed(lenet, calib, "binarize-weights"))
    assert {r.arith for r in bwn.rows if r.op.startswith("binary_")} == {"bwn"}
    assert xnor.compute_pj < bwn.compute_pj < base  # XNOR+popcount < float adds < float MACs
    fx = estimate_energy(_compressed(lenet, calib, "fixed-point"))
    assert {r.arith for r in fx.rows if r.op in ("fx_conv2d", "fx_dense")} == {"fx8"}
    assert fx.total_pj < 0.35 * base
    shared_graph = _compressed(lenet, calib, "kmeans-share")
    shared = estimate_energy(shared_graph)
    # the codebook decode is folded into the layer that uses it; its output is no activation
    assert not [r for r in shared.rows if r.op == "codebook_weight"]
    fc1 = shared.by_name()["Gemm_7"]
    assert fc1.folded and fc1.weight_bytes < 48_000  # 5-bit indices + 32 centroids, not 192 kB
    assert sum(r.weight_bytes for r in shared.rows) == analyze(shared_graph).weight_bytes
    assert shared.sram_pj == pytest.approx(estimate_energy(lenet).sram_pj)
    assert shared.total_pj < 0.35 * base


def test_weight_memory_and_custom_table(lenet: Graph) -> None:
    dram = estimate_energy(lenet)
    sram = estimate_energy(lenet, weight_memory="sram")
    assert sram.dram_pj == pytest.approx(dram.dram_pj * 5 / 640)
    assert sram.total_pj < dram.total_pj / 5
    cheap = estimate_energy(lenet, table=EnergyTable(dram=64.0))
    assert cheap.dram_pj == pytest.approx(dram.dram_pj / 10)
    with pytest.raises(ValueError, match="weight_memory"):
        estimate_energy(lenet, weight_memory="flash")
