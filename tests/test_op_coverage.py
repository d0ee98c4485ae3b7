"""An op is one place: every op in the vocabulary has an ONNX exporter, a TVM lowering and a
training form, or sits on an explicit waiver list here that says why not (a new op without them
fails this test instead of failing a user). Importers are per ONNX op (``onnx_io.import_ops``)
and are exercised op by op by tests/test_onnx_io.py's single-op round trips; all ONNX code lives in
``mcopt/onnx_io`` (checked below)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mcopt.ops import all_ops

ROOT = Path(__file__).resolve().parent.parent
_ONNX_IMPORT = re.compile(r"^\s*(import onnx\b(?!runtime)|from onnx\b(?!runtime))", re.M)

_FIXED = (
    "integer-only fixed-point op of an FPGA design (target='fpga' emits HLS C for it); ONNX and "
    "the CPU/GPU targets run the quantize-int8 form instead"
)
_PLANNED = (
    "target-planned op: only the planned copy of a graph that the CPU build lowers holds it "
    "(export or train the graph it was planned from)"
)
FIXED_POINT = ["fx_add", "fx_avg_pool", "fx_clip", "fx_conv2d", "fx_dense", "fx_dequantize",
               "fx_max_pool", "fx_quantize", "fx_relu"]  # fmt: skip
PLANNED = ["fused_conv2d", "fused_dense", "fused_qconv2d", "permute_channels"]

NO_EXPORTER: dict[str, str] = {op: _FIXED for op in FIXED_POINT} | {op: _PLANNED for op in PLANNED}
NO_LOWERING: dict[str, str] = {op: _FIXED for op in FIXED_POINT}


def test_every_op_has_an_exporter_or_a_waiver() -> None:
    import mcopt.onnx_io.export_ops  # noqa: F401  (registers the exporters)
    from mcopt.onnx_io.exporter import EXPORTERS

    ops = set(all_ops())
    missing = sorted(ops - set(EXPORTERS) - set(NO_EXPORTER))
    assert not missing, f"ops with neither an ONNX exporter nor a waiver: {missing}"
    stale = sorted(set(NO_EXPORTER) & set(EXPORTERS))
    assert not stale, f"waived ops that have an exporter now (drop the waiver): {stale}"


def test_every_op_has_a_lowering_or_a_waiver() -> None:
    pytest.importorskip("tvm")
    from mcopt.targets.relax.lower import LOWERINGS

    ops = set(all_ops())
    missing = sorted(ops - set(LOWERINGS) - set(NO_LOWERING))
    assert not missing, f"ops with neither a TVM lowering nor a waiver: {missing}"
    stale = sorted(set(NO_LOWERING) & set(LOWERINGS))
    assert not stale, f"waived ops that have a lowering now (drop the waiver): {stale}"


def test_every_op_has_a_training_form_or_a_waiver() -> None:
    from mcopt.train.forms import TRAIN_FORMS, WAIVED

    assert not (set(TRAIN_FORMS) & set(WAIVED)), "an op is both trained and waived"
    missing = sorted(set(all_ops()) - set(TRAIN_FORMS) - set(WAIVED))
    assert not missing, f"ops with neither a training form nor a waiver: {missing}"
    assert all(WAIVED.values()), "a waiver needs its reason"


def test_onnx_code_lives_in_onnx_io() -> None:
    """No module outside mcopt/onnx_io (and the benchmarks' / tests' own tooling) builds ONNX."""
    offenders = []
    for base in ("mcopt", "passes", "targets"):
        for path in (ROOT / base).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(("mcopt/onnx_io/", "mcopt/testing/", "targets/relax/baseline.py")):
                continue
            if _ONNX_IMPORT.search(path.read_text()):
                offenders.append(rel)
    assert not offenders, f"ONNX code outside mcopt/onnx_io: {offenders}"
