"""Winograd on the blocked layout (targets/cpu/kernels/winograd_nchwc.py): the kernel against a
float64 reference with every epilogue, the per-layer choice, and planned builds using it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from mcopt import interpreter  # noqa: E402
from mcopt.api import load  # noqa: E402
from mcopt.targets import build  # noqa: E402
from mcopt.targets.cpu.kernels import winograd_nchwc as wn  # noqa: E402
from mcopt.targets.cpu.kernels.epilogue import Epilogue  # noqa: E402
from mcopt.targets.cpu.kernels.layout import pack_nchwc, unpack_nchwc  # noqa: E402
from mcopt.targets.cpu.kernels.target_info import cpu_info, host_target  # noqa: E402
from mcopt.targets.registry import get_target  # noqa: E402
from mcopt.targets.relax.builder import lower_for  # noqa: E402
from mcopt.testing import zoo  # noqa: E402

TARGET = host_target()


def _conv3x3(x: np.ndarray, g: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    pt, pl, pb, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh, ow = xp.shape[2] - 2, xp.shape[3] - 2
    out = np.zeros((x.shape[0], g.shape[0], oh, ow))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i : i + oh, j : j + ow], g[:, :, i, j])
    return out


CASES = [
    # n, c, h, w, o, pads, epilogue
    (1, 16, 10, 9, 24, (1, 1, 1, 1), Epilogue(True, True, "relu")),  # crop in both directions
    (1, 16, 7, 7, 16, (1, 1, 1, 1), Epilogue(True, False, None)),  # ResNet's 7x7 stage shape
    (2, 8, 12, 12, 8, (0, 1, 2, 0), Epilogue(False, False, "relu6")),  # batch 2, odd pads
    (1, 32, 8, 8, 32, (1, 1, 1, 1), Epilogue(True, True, "clip", -0.5, 0.5)),
    (1, 16, 10, 9, 16, (1, 1, 1, 1), Epilogue(True, True, "silu")),  # YOLOX; cropped tiles
    (1, 16, 9, 10, 16, (1, 1, 1, 1), Epilogue(True, False, "gelu")),  # PP-OCRv6
    (1, 16, 9, 10, 16, (1, 1, 1, 1), Epilogue(True, True, "leaky_relu", 0.2, -0.4)),  # floor
    (1, 16, 8, 8, 16, (1, 1, 1, 1), Epilogue(True, False, "leaky_relu", 1.5, -np.inf)),  # Select
    (1, 16, 9, 10, 16, (1, 1, 1, 1), Epilogue(True, True, "prelu")),  # MTCNN
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_kernel_matches_reference(m: int, case: tuple) -> None:
    n, c, h, w, o, pads, ep = case
    rng = np.random.default_rng(m)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    g = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    conv = _conv3x3(x, g, pads)
    res = rng.standard_normal(conv.shape).astype(np.float32)
    slope = rng.uniform(-0.5, 0.5, o).astype(np.float32)
    ref = ep.apply_numpy(conv, b.reshape(1, -1, 1, 1), res, slope.reshape(1, -1, 1, 1))
    func, plan = wn.winograd_conv2d_nchwc((n, c, h, w), o, m, pads, ep)
    arrays = [pack_nchwc(x, 8), wn.pack_weight(g, m, plan.rv, 8)]
    if ep.bias:
        arrays.append(b.reshape(o // 8, 8))
    if ep.residual:
        arrays.append(pack_nchwc(res, 8))
    if ep.activation == "prelu":
        arrays.append(slope.reshape(o // 8, 8))
    arrays.append(np.zeros((n, o // 8, plan.oh, plan.ow, 8), np.float32))
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    lib["main"](*args)
    got = unpack_nchwc(args[-1].numpy())
    err = np.abs(got - ref).max() / np.abs(conv).max()  # relative to the accumulator's scale
    assert err < (2e-6 if m == 2 else 2e-5), err


def test_candidates() -> None:
    big = (1, 64, 56, 56)
    assert wn.is_candidate(big, (64, 64, 3, 3), (1, 1), (1, 1), 8)
    assert not wn.is_candidate(big, (64, 64, 3, 3), (2, 2), (1, 1), 8)  # strided
    assert not wn.is_candidate(big, (64, 64, 1, 1), (1, 1), (1, 1), 8)  # 1x1
    assert not wn.is_candidate((1, 3, 224, 224), (64, 3, 3, 3), (1, 1), (1, 1), 8)  # RGB stem
    assert not wn.is_candidate((1, 16, 8, 8), (16, 16, 3, 3), (1, 1), (1, 1), 8)  # tiny
    assert wn.is_candidate((1, 16, 55, 55), (64, 16, 3, 3), (1, 1), (1, 1), 16)  # one block in
    assert wn.is_candidate((1, 48, 13, 13), (192, 48, 3, 3), (1, 1), (1, 1), 16)  # 14 M MACs


def test_choose_tile_modes_and_table(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    shape, ep, pads = (1, 64, 56, 56), Epilogue(True, False, "relu"), (1, 1, 1, 1)
    table = tmp_path / "table.json"
    monkeypatch.setenv("MCOPT_WINOGRAD_TABLE", str(table))
    key = wn._key(TARGET, shape, 64, pads, ep)
    for mode, want in (("off", None), ("2", 2), ("4", 4)):
        monkeypatch.setenv("MCOPT_WINOGRAD", mode)
        assert wn.choose_tile(shape, 64, pads, ep, TARGET) == want
    monkeypatch.setenv("MCOPT_WINOGRAD", "3")
    from mcopt.errors import OptionError

    with pytest.raises(OptionError, match="MCOPT_WINOGRAD='3': use auto, off, 2 or 4"):
        wn.choose_tile(shape, 64, pads, ep, TARGET)
    monkeypatch.setenv("MCOPT_WINOGRAD", "auto")
    for row, want in (
        ({"direct": 1.0, "f2": 0.8, "f4": 0.6}, 4),
        ({"direct": 1.0, "f2": 0.7, "f4": 0.9}, 2),
        ({"direct": 1.0, "f2": 1.2, "f4": 0.98}, None),  # < MIN_GAIN: not worth the rounding
    ):
        table.write_text(json.dumps({key: row}))
        assert wn.choose_tile(shape, 64, pads, ep, TARGET) == want


def test_measure_fills_a_corrupt_table(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """auto mode measures a missing layer once (a corrupt cache file is replaced, not fatal)."""
    table = tmp_path / "table.json"
    table.write_text("{not json")
    monkeypatch.setenv("MCOPT_WINOGRAD_TABLE", str(table))
    monkeypatch.setenv("MCOPT_WINOGRAD", "auto")
    shape, ep, pads = (1, 16, 8, 8), Epilogue(True, False, None), (1, 1, 1, 1)
    m = wn.choose_tile(shape, 16, pads, ep, TARGET)
    assert m in (None, 2, 4)
    row = json.loads(table.read_text())[wn._key(TARGET, shape, 16, pads, ep)]
    assert set(row) == {"direct", "f2", "f4"}  # one entry per kernel (no timing is compared)
    assert all(isinstance(v, float) and np.isfinite(v) for v in row.values())


@pytest.mark.parametrize("mode", ["2", "4"])
def test_planned_build_with_winograd_matches(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """A CI-sized ResNet-18 built with every eligible 3x3 conv as Winograd (bias, residual and
    relu fused) matches the interpreter."""
    monkeypatch.setenv("MCOPT_WINOGRAD", mode)
    monkeypatch.setattr(wn, "MIN_WINOGRAD_MACS", 0)
    g = load(zoo.resnet18_like(resolution=32, width=16, num_classes=10))
    kernels = {gv.name_hint for gv in lower_for(g, get_target("cpu")).functions}
    x = np.random.default_rng(0).standard_normal(g.inputs[0].shape).astype(np.float32)
    ref = interpreter.run(g, {g.inputs[0].name: x})[0]
    got = build(g, "cpu").run(x)[0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert any(k.startswith(f"winograd{mode}_nchwc") for k in kernels), kernels


def test_build_and_optimize_report_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled model says which 3x3 convs became Winograd; optimize() puts it in its notes."""
    import mcopt

    monkeypatch.setenv("MCOPT_WINOGRAD", "4")
    monkeypatch.setattr(wn, "MIN_WINOGRAD_MACS", 0)
    proto = zoo.resnet18_like(resolution=32, width=16, num_classes=10)
    res = mcopt.optimize(proto, target="cpu", measure=False)
    lanes = cpu_info(TARGET).lanes  # 8 on AVX2, 16 on AVX-512: candidates need whole blocks
    want = sum(
        1
        for n in res.graph.nodes_of("conv2d")
        if n.inputs[1].shape[2:] == (3, 3)
        and n.attrs["strides"] == (1, 1)
        and n.inputs[1].shape[1] % lanes == 0
        and n.inputs[1].shape[0] % lanes == 0
    )
    assert want >= 13  # 15 3x3 convs, 2 strided (one block of input channels is enough)
    assert res.compiled.choices == {"3x3 conv: Winograd F(4x4,3x3)": want}
    assert any(f"Winograd F(4x4,3x3) x{want}" in n for n in res.notes)
    monkeypatch.setenv("MCOPT_WINOGRAD", "off")
    assert build(load(proto), "cpu").choices == {}


def test_cross_targets_are_not_measured(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """auto mode on an aarch64 target built here keeps the direct conv (nothing to time it on)
    and measures nothing; a forced tile still applies."""
    monkeypatch.setenv("MCOPT_WINOGRAD_TABLE", str(tmp_path / "t.json"))
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert not wn.measurable_here(arm) and wn.measurable_here(TARGET)
    shape, ep, pads = (1, 64, 56, 56), Epilogue(True, False, "relu"), (1, 1, 1, 1)
    monkeypatch.setenv("MCOPT_WINOGRAD", "auto")
    assert wn.choose_tile(shape, 64, pads, ep, arm) is None
    assert not (tmp_path / "t.json").exists()
    monkeypatch.setenv("MCOPT_WINOGRAD", "4")
    assert wn.choose_tile(shape, 64, pads, ep, arm) == 4
