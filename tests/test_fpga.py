"""The fpga target: generated C compiled with gcc, bit-exact against the numpy integer reference;
folding / resource estimate; optimize(target="fpga")."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import mcopt
import mcopt.testing.zoo as zoo
from mcopt import interpreter
from mcopt.api import load
from mcopt.errors import TargetError
from mcopt.ir.core import Graph
from mcopt.pass_manager import PassContext, PassManager
from mcopt.targets.fpga.builder import FPGA, build_fpga
from mcopt.targets.fpga.folding import FpgaDevice, bram36_blocks, plan_folding
from mcopt.targets.registry import get_target

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _fixed(g: Graph, spec: str, calib: list) -> Graph:
    out, _ = PassManager([spec]).run(g.copy(), ctx=PassContext(calib=calib))
    return out


@pytest.fixture(scope="module")
def lenet() -> Graph:
    g, _ = PassManager(["cleanup"]).run(load(zoo.lenet5_path()), ctx=PassContext())
    return g


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return zoo.mnist_test_set()[0]


@pytest.fixture(scope="module")
def resnet() -> Graph:
    g = load(zoo.resnet18_like(width=8, resolution=32))
    g, _ = PassManager(["cleanup"]).run(g, ctx=PassContext())  # folds batch norm
    return g


def _int_reference(g: Graph, feed: dict) -> list[np.ndarray]:
    """The integer values feeding each fx_dequantize, from the numpy reference."""
    pre = [o.producer.inputs[0] for o in g.outputs]
    _, kept = interpreter.run_values(g, feed, keep=pre)
    return [kept[v.name] for v in pre]


def _check_bit_exact(g: Graph, feeds: list[dict], tmp_path) -> None:
    model = build_fpga(g, workdir=tmp_path)
    qnode = next(n for n in g.nodes if n.op == "fx_quantize")
    for feed in feeds:
        ref = interpreter.run(g, feed)
        got = model.run(feed)
        for r, c in zip(ref, got):
            assert r.dtype == c.dtype == np.float32
            np.testing.assert_array_equal(c, r)
        xq = interpreter.run_values(g, feed, keep=[qnode.output])[1][qnode.output.name]
        for r, c in zip(_int_reference(g, feed), model.run_integer(xq)):
            assert r.dtype == c.dtype
            np.testing.assert_array_equal(c, r)


@pytest.mark.parametrize(
    "spec", ["fixed-point:bits=8,dynamic=true", "fixed-point:bits=16,dynamic=true"]
)
def test_lenet_c_is_bit_exact(lenet: Graph, digits: np.ndarray, spec: str, tmp_path) -> None:
    g = _fixed(lenet, spec, [{"input": digits[i : i + 1]} for i in range(0, 32, 2)])
    _check_bit_exact(g, [{"input": digits[i : i + 1]} for i in range(1, 200, 20)], tmp_path)


@pytest.mark.parametrize("spec", ["fixed-point:bits=8,dynamic=true", "fixed-point:bits=16"])
def test_resnet_c_is_bit_exact(resnet: Graph, spec: str, tmp_path) -> None:
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(6)]
    g = _fixed(resnet, spec, feeds[:4])
    assert {"fx_add", "fx_avg_pool", "fx_max_pool", "fx_dense"} <= {n.op for n in g.nodes}
    _check_bit_exact(g, feeds[3:], tmp_path)


def test_generated_c_shape(lenet: Graph, digits: np.ndarray, tmp_path) -> None:
    g = _fixed(lenet, "fixed-point:bits=8,dynamic=true", [{"input": digits[:1]}])
    model = build_fpga(g, workdir=tmp_path)
    src = model.src.source
    top = src[src.index("void model_top(") : src.index("#ifndef __SYNTHESIS__")]
    assert "float" not in top and "double" not in top  # the HLS top is integer-only
    assert "#pragma HLS DATAFLOW" in top
    layers = [n for n in g.nodes if n.op not in ("fx_quantize", "fx_dequantize", "flatten")]
    assert len(re.findall(r"^static void L_", src, re.M)) == len(layers) == 11  # one per layer
    for lf in model.plan.layers:
        if lf.kind == "mvau":
            assert f"#pragma HLS PIPELINE II={lf.reuse_factor}" in src
            assert f"limit={lf.pe * lf.simd}" in src
    assert "static const int8_t W_Gemm_7_w_fx[48000]" in src
    assert "void model_top(const int8_t" in model.src.header


def test_folding_respects_budget_and_target(lenet: Graph, digits: np.ndarray) -> None:
    g = _fixed(lenet, "fixed-point:bits=8,dynamic=true", [{"input": digits[:1]}])
    for dsp in (10, 50, 220, 2000):
        plan = plan_folding(g, FpgaDevice(dsp=dsp))
        t = plan.totals()
        assert t["dsp"] <= dsp
        for lf in plan.layers:
            assert lf.mh % lf.pe == 0 and lf.mw % lf.simd == 0
            assert lf.cycles == lf.pixels * (lf.mh // lf.pe) * (lf.mw // lf.simd)
        assert t["ii_cycles"] == max(lf.cycles for lf in plan.layers)
    fps = [plan_folding(g, FpgaDevice(dsp=d)).totals()["fps"] for d in (10, 50, 220)]
    assert fps[0] < fps[1] < fps[2]  # more DSPs, more throughput
    slow = plan_folding(g, FpgaDevice(dsp=220), target_fps=10_000).totals()
    assert slow["meets_target"] and slow["fps"] >= 10_000 and slow["dsp"] < 220
    # the fully folded design needs one multiplier per MAC layer
    assert plan_folding(g, FpgaDevice(dsp=5)).totals()["dsp"] == 5


def test_bram_blocks() -> None:
    assert bram36_blocks(512, 72) == 1
    assert bram36_blocks(1024, 36) == 1
    assert bram36_blocks(2000, 192) == 11  # 2048 x 18 aspect: ceil(192 / 18) blocks
    assert bram36_blocks(0, 8) == 0


def test_export_library(lenet: Graph, digits: np.ndarray, tmp_path) -> None:
    g = _fixed(lenet, "fixed-point:bits=8,dynamic=true", [{"input": digits[:1]}])
    model = build_fpga(g, workdir=tmp_path / "build")
    d = model.export_library(tmp_path / "design")
    assert {p.name for p in d.iterdir()} == {
        "model.c",
        "model.h",
        "libmodel.so",
        "estimate.json",
        "estimate.md",
    }
    so = model.export_library(tmp_path / "out" / "model.so")
    assert so.exists() and (tmp_path / "out" / "model_fpga" / "model.c").exists()
    bench = model.benchmark({"input": digits[:1]}, number=2, repeat=2)
    host_ms, fpga_us = bench["median_ms"], bench["fpga_latency_us"]  # reported, not judged
    assert host_ms > 0 and fpga_us > 0


def test_float_graph_is_rejected(lenet: Graph) -> None:
    with pytest.raises(TargetError, match="fixed-point"):
        build_fpga(lenet)


def test_target_registered_with_builder() -> None:
    spec = get_target("fpga")
    assert spec is FPGA and spec.builder is build_fpga


def test_optimize_with_fpga_target(digits: np.ndarray) -> None:
    """optimize(target="fpga") dispatches to the FPGA target's own builder (generated C)."""
    res = mcopt.optimize(
        zoo.lenet5_path(),
        target="fpga",
        passes=["cleanup", "fixed-point:dynamic=true"],
        calib=digits[:16],
    )
    assert res.output_error["compiled_vs_reference_max_rel"] == 0.0
    measured = res.latency_ms  # a measurement was made (its value is not asserted)
    assert measured is not None and measured > 0
    assert res.compiled.estimate["totals"]["dsp"] <= 220
    np.testing.assert_array_equal(
        res.run(digits[:1])[0], interpreter.run(res.graph, [digits[:1]])[0]
    )


def test_optimize_fpga_save(digits: np.ndarray, tmp_path: Path) -> None:
    """save() of an integer-only graph: no model.onnx (ONNX cannot express it exactly, said in the
    report), but the printed IR, the compiled C library and the reports are written."""
    res = mcopt.optimize(
        zoo.lenet5_path(),
        target="fpga",
        passes=["cleanup", "fixed-point:dynamic=true"],
        calib=digits[:8],
        measure=False,
    )
    written = res.save(tmp_path / "out")
    assert "onnx" not in written and written["library"].exists()
    assert "model.onnx not written" in written["report_md"].read_text()
    assert "fx_conv2d" in written["ir"].read_text()
