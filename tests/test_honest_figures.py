"""Error figures that do not flatter and passes that do no quiet harm, on the trained LeNet-5:
NaN / Inf-aware errors, held-out measurement, GPTQ / refit kept only where they help on held-out
inputs, real 4-bit storage, reasons for skipped layers, the classifier left alone, warnings for
passes that need retraining, clear errors for fixed point outside the fpga target."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

import mcopt
from mcopt.errors import MCoptError, PassError
from mcopt.huffman import load_compressed, save_compressed
from mcopt.pass_manager import Pass, output_errors, run_passes
from mcopt.testing import zoo

X, Y = zoo.mnist_test_set()


def test_output_errors_see_nan_and_inf() -> None:
    a = np.array([1.0, np.nan, np.inf])
    assert output_errors([a], [a.copy()]) == (0.0, 0.0)  # the same non-finite values agree
    assert output_errors([a], [np.array([1.0, 2.0, np.inf])]) == (math.inf, math.inf)
    assert output_errors([np.ones(3)], [np.array([1.0, 1.0, np.nan])]) == (math.inf, math.inf)
    assert output_errors([np.ones(3)], [np.array([1.0, 1.0, -np.inf])])[1] == math.inf


def test_a_lossless_pass_that_makes_nan_fails_loudly() -> None:
    class Poison(Pass):
        name = "poison-test-pass"
        lossless = True

        def run(self, graph, ctx):  # type: ignore[no-untyped-def]
            w = graph.nodes_of("dense")[-1].inputs[1]
            w.const = np.full_like(w.const, np.nan)
            return True

    g = mcopt.load(zoo.lenet5_path())
    with pytest.raises(PassError, match="poison-test-pass.*non-finite"):
        run_passes(g, [Poison()], inputs=[X[:1]])


def test_errors_are_measured_on_inputs_no_pass_fitted() -> None:
    res = mcopt.optimize(
        zoo.lenet5_path(), target=None, passes=["cleanup", "quantize-int8"], calib=X[:40]
    )
    assert res.output_error["samples"] == 8
    assert res.output_error["source"].startswith("held-out calibration inputs (8 of 40")


def test_gptq_is_kept_only_where_it_beats_round_to_nearest() -> None:
    res = mcopt.optimize(
        zoo.lenet5_path(),
        target=None,
        passes=["cleanup", "quantize-int8:weight_bits=3,rounding=gptq"],
        calib=X[:40],
    )
    d = res.report["quantize-int8"].details
    errs = d["heldout_rel_error"]
    kept_nearest = d.get("kept", "").startswith("round-to-nearest")
    assert kept_nearest == (errs["gptq"] > errs["nearest"])
    assert res.output_error["max_rel"] == pytest.approx(min(errs.values()), rel=1e-6)


def test_refit_is_kept_only_where_it_lowers_the_held_out_error() -> None:
    res = mcopt.optimize(
        zoo.lenet5_path(),
        target=None,
        passes=["cleanup", "prune-weights:sparsity=0.7,refit=true"],
        calib=X[:40],
    )
    d = res.report["prune-weights"].details
    errs = d["heldout_rel_error"]
    assert res.output_error["max_rel"] == pytest.approx(min(errs.values()), rel=1e-6)


def test_four_bit_weights_are_stored_at_four_bits() -> None:
    sizes = {}
    for bits in (8, 4):
        res = mcopt.optimize(
            zoo.lenet5_path(),
            target=None,
            passes=["cleanup", f"quantize-int8:weight_bits={bits}"],
            calib=X[:16],
        )
        with tempfile.TemporaryDirectory() as d:
            st = save_compressed(res.graph, Path(d) / "m.mcz")
            back = load_compressed(Path(d) / "m.mcz")
        assert all(
            np.array_equal(a.const, b.const)
            for a, b in zip(res.graph.constants(), back.constants())
        )
        sizes[bits] = st["payload"]
        # (the report also counts each per-channel scale, which the .mcz keeps in its header)
        assert abs(st["payload"] - res.cost_after.totals()["weight_bytes"]) < 0.1 * st["payload"]
    assert sizes[4] < 0.6 * sizes[8]  # the file holds what the report counts


def test_product_quantize_says_why_it_skips() -> None:
    res = mcopt.optimize(
        zoo.lenet5_path(),
        target=None,
        passes=["cleanup", "product-quantize:min_params=0"],
        calib=X[:8],
    )
    rec = res.report["product-quantize"]
    assert rec.changed  # the 4-bit default quantizes the big FC layers
    skipped = rec.details["skipped"]  # conv1: rows of 25 weights do not split into 4-vectors
    assert "Conv_0" in skipped and "sub_dim" in skipped["Conv_0"]


def test_lowrank_dense_leaves_the_classifier_alone() -> None:
    res = mcopt.optimize(
        zoo.lenet5_path(),
        target=None,
        passes=["cleanup", "lowrank-dense:param_ratio=0.25"],
        data=(X[:400], Y[:400]),
    )
    assert "Gemm_11" in res.report["lowrank-dense"].details["skipped"]
    assert res.report.final_metric > 0.5  # not 0.6 %: the 10-class classifier keeps its rank


def test_binary_passes_warn_without_retraining() -> None:
    with pytest.warns(UserWarning, match="without a training pass"):
        mcopt.optimize(
            zoo.lenet5_path(), target=None, passes=["cleanup", "binarize-weights"], calib=X[:8]
        )


def test_fixed_point_outside_fpga_says_what_to_use() -> None:
    with pytest.raises(MCoptError, match="target='fpga'"):
        mcopt.optimize(
            zoo.lenet5_path(),
            target="cpu",
            passes=["cleanup", "fixed-point"],
            calib=X[:8],
            measure=False,
        )
    res = mcopt.optimize(
        zoo.lenet5_path(), target=None, passes=["cleanup", "fixed-point"], calib=X[:8]
    )
    with tempfile.TemporaryDirectory() as d:
        res.save(d)
    assert any("target='fpga'" in n for n in res.notes)


def test_fixed_point_names_an_op_it_cannot_take() -> None:
    from mcopt.ir.core import Graph
    from mcopt.ir.types import ttype

    g = Graph("hs")
    x = g.add_input("x", ttype((1, 4)))
    y = g.add_node("hard_swish", [x], name="act").output
    g.outputs.append(y)
    with pytest.raises(MCoptError, match="'act' \\(hard_swish\\).*covers"):
        run_passes(g, ["fixed-point"])
