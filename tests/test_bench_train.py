"""Smoke test of benchmarks/bench_train.py: two sections in --quick mode (600 digits, one epoch),
the rows and the rendered table; no timing, no compile."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("mlxtend")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_train  # noqa: E402


def test_quick_sections_render() -> None:
    b = bench_train.Bench(quick=True, log=False)
    b.prune()
    b.binary()
    rows = b.rows
    assert [r["method"] for r in rows][:2] == [
        "one-shot 92 % (no retraining)",
        "prune-retrain 92 % (5 steps)",
    ]
    for r in rows:
        assert 0.0 <= r["acc"] <= 1.0 and r["base_acc"] > 0.9
    pr = [r for r in rows if r["section"] == "prune"]
    assert all(r["nnz_ratio"] == pytest.approx(12.5, rel=0.02) for r in pr)
    md = bench_train.render(rows)
    assert "Pruning with retraining" in md and "XNOR" in md
    assert bench_train._quick("finetune:epochs=30,lr=0.1") == "finetune:epochs=1,lr=0.1"
    assert bench_train._quick("bwn-train") == "bwn-train"
