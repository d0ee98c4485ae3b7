"""Smoke test of benchmarks/bench_rewrites.py: its core function on LeNet-5, no compile, no timing."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_rewrites  # noqa: E402


def test_rewrite_specs_fixed_ratio_for_random_weights() -> None:
    vgg = bench_rewrites.rewrite_specs("vgg19", param_ratio=0.3)
    assert vgg["factorize-tucker"] == "factorize-tucker:param_ratio=0.3"
    assert vgg["winograd-f2"] == "winograd:tile=2"
    assert "factorize-tucker@ratio" not in vgg
    lenet = bench_rewrites.rewrite_specs("lenet5", lenet_budget=0.2)
    assert "max_rel_error=0.2" in lenet["factorize-spatial"]
    assert "param_ratio=0.25" in lenet["factorize-spatial@ratio"]


def test_lenet5_rows_without_compile() -> None:
    lines: list[str] = []
    case = bench_rewrites.load_case("lenet5", n_digits=100)
    case.calib = case.calib[:100]  # keep it fast: 100 calibration digits, 100 eval digits
    rows = bench_rewrites.bench_model(
        "lenet5", ["lowrank-dense", "winograd-f2"], compile=False, log=lines.append, case=case
    )
    by = {r["rewrite"]: r for r in rows}
    assert list(by) == ["original", "lowrank-dense", "lowrank-dense@ratio", "winograd-f2"]
    base = by["original"]
    assert base["top1_agree"] == 1.0 and base["out_max_rel"] == 0.0
    assert 0.9 <= base["accuracy"] <= 1.0  # the trained LeNet-5 on real digits
    for label in ("lowrank-dense", "lowrank-dense@ratio"):
        r = by[label]
        assert r["params"] < base["params"] and r["macs"] < base["macs"]
        assert r["rewritten_layers"] >= 1 and r["ranks"]
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["top1_agree"] <= 1.0
        assert "mcopt_ms" not in r  # no compile, no timing
    # fixed ratio: every rewritten dense layer keeps ~25% of its params (the ratio is on the
    # weight matrix; the bias, counted in params, is kept whole)
    for layer in by["lowrank-dense@ratio"]["layers"]:
        assert layer["params_after"] <= 0.26 * layer["params_before"]
    assert by["winograd-f2"]["note"].startswith("no change")  # LeNet-5 has only 5x5 convs
    md = bench_rewrites.tables(rows, "## t\n")
    assert "### lenet5" in md and "`lowrank-dense:param_ratio=0.25,calib_samples=500`" in md
    assert "no change" in md
