"""Printed-IR snapshots: the graph each pass family leaves on the trained LeNet-5 (and a CNN with
residual adds, depthwise convs, batch norm and concat for the structural passes), compared with the
files in tests/snapshots/. Float literals are masked (``#``): the snapshots pin the structure — ops,
names, shapes, dtypes, encodings, integer attributes — not the last digit of a calibrated scale.

Regenerate after an intended change: ``MCOPT_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_snapshots.py``
and review the diff like code."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mcopt.api import load
from mcopt.pass_manager import PassContext, run_passes
from mcopt.testing import zoo

SNAP = Path(__file__).parent / "snapshots"
X, _ = zoo.mnist_test_set()
CALIB = [{"input": X[i : i + 1]} for i in range(8)]

FAMILIES: dict[str, tuple[str, list[str]]] = {
    "cleanup": ("tiny_cnn", ["cleanup"]),
    "prune-weights": ("lenet5", ["cleanup", "prune-weights:sparsity=0.8"]),
    "prune-channels": ("tiny_cnn", ["cleanup", "prune-channels:ratio=0.5"]),
    "remove-dead-neurons": (
        "lenet5",
        ["cleanup", "prune-weights:sparsity=0.99", "remove-dead-neurons"],
    ),
    "fc-to-gap": ("lenet5", ["cleanup", "fc-to-gap:hidden=16"]),
    "lowrank-dense": ("lenet5", ["cleanup", "lowrank-dense:param_ratio=0.5"]),
    "factorize-spatial": ("lenet5", ["cleanup", "factorize-spatial"]),
    "winograd": ("tiny_cnn", ["cleanup", "winograd"]),
    "quantize-int8": ("lenet5", ["cleanup", "quantize-int8"]),
    "quantize-int4": ("lenet5", ["cleanup", "quantize-int8:weight_bits=4"]),
    "fixed-point": ("lenet5", ["cleanup", "fixed-point:dynamic=true"]),
    "binarize-weights": ("lenet5", ["cleanup", "binarize-weights"]),
    "xnor": ("lenet5", ["cleanup", "xnor"]),
    "kmeans-share": ("lenet5", ["cleanup", "prune-weights:sparsity=0.8", "kmeans-share"]),
    "product-quantize": ("lenet5", ["cleanup", "product-quantize"]),
    "residual-quantize": ("lenet5", ["cleanup", "residual-quantize"]),
}

_FLOAT = re.compile(r"(?<![\w.])-?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][-+]?\d+|inf|nan)(?![\w])")


def masked(text: str) -> str:
    return _FLOAT.sub("#", text)


def _graph(model: str):  # type: ignore[no-untyped-def]
    if model == "lenet5":
        return load(zoo.lenet5_path())
    return load(zoo.tiny_cnn(seed=0))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pass_family_snapshot(family: str) -> None:
    model, passes = FAMILIES[family]
    g = _graph(model)
    calib = CALIB if model == "lenet5" else None
    g, _ = run_passes(g, passes, PassContext(calib=calib))
    text = masked(str(g)) + "\n"
    path = SNAP / f"{family}.txt"
    if os.environ.get("MCOPT_UPDATE_SNAPSHOTS") or not path.exists():
        if not os.environ.get("MCOPT_UPDATE_SNAPSHOTS"):
            pytest.fail(f"no snapshot {path.name}: run with MCOPT_UPDATE_SNAPSHOTS=1 and review it")
        path.write_text(text)
    assert text == path.read_text(), f"{family}: the printed IR changed (see {path})"


def test_masking_keeps_integers_and_names() -> None:
    s = "%Gemm_7 = dense(%x) {scale=(0.5,1e-3), pads=(2,2), act_max=inf} : f32[1,120]"
    assert masked(s) == "%Gemm_7 = dense(%x) {scale=(#,#), pads=(2,2), act_max=#} : f32[1,120]"
