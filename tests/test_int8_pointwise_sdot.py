"""The AArch64 ``sdot`` form of the int8 1x1 conv (:mod:`mcopt.targets.cpu.kernels.
int8_pointwise_sdot`): bit for bit against :meth:`QEpilogue.apply_numpy` on qemu's Neoverse-N1
model (all cases in one emulated process; skipped where ``scripts/setup_aarch64.sh`` has not been
run), its tile choice, and the planned lowering picking it for ARM 1x1 convs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt.ops.quant import qconv2d_acc  # noqa: E402
from mcopt.targets.cpu.kernels.int8_conv import conv_bias_eff, pack_int8_conv_weight  # noqa: E402
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue  # noqa: E402
from mcopt.targets.cpu.kernels.int8_pointwise_sdot import (  # noqa: E402
    MAX_ACCUMULATORS,
    choose_sdot_tile,
    int8_pointwise_sdot,
    pixel_groups,
    sdot_pointwise_applies,
)
from mcopt.testing.int8 import epilogue_reference  # noqa: E402

pytestmark = pytest.mark.tvm

INF = math.inf
ARM_SDOT = {
    "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"],
    "mcpu": "neoverse-n1",
}  # fmt: skip
EPS = {
    "req": QEpilogue(base_dtype="uint8", base_bounds=(0.0, 255.0), base_zp=3),
    "req-narrow": QEpilogue(base_dtype="uint8", base_bounds=(5.0, 200.7), base_zp=5),
    "req-i8": QEpilogue(base_dtype="int8", base_bounds=(-100.5, 90.2), base_zp=-7),
    "res": QEpilogue(
        residual="uint8",
        r_scale=0.3,
        r_zp=5,
        post_bounds=(0.0, INF),
        q_dtype="uint8",
        q_scale=40.0,
        q_zp=10,
    ),  # fmt: skip
    "f32": QEpilogue(base_bounds=(-50.0, INF), residual="float32", post_bounds=(0.0, 6.0)),
}
#: id -> (ic, oc, hw, epilogue, input dtype, tile or None, big multipliers: int32 saturation)
CASES = {
    "u8-expand": (16, 48, 8, "req", "uint8", None, False),
    "u8-residual-7x7": (40, 24, 7, "res", "uint8", None, False),
    "i8-float-residual": (32, 16, 5, "f32", "int8", None, False),
    "narrow-bounds-overlap": (8, 24, 6, "req-narrow", "uint8", (6, 2), True),
    "i8-narrow-7": (12, 8, 7, "req-i8", "int8", (7, 1), True),
    "plane-of-4": (24, 12, 2, "req", "uint8", None, False),
    "tile-14": (20, 36, 14, "req", "uint8", (14, 1), False),
    "residual-overlap": (8, 8, 3, "res", "uint8", (9, 1), False),
    "threads": (64, 32, 16, "req", "uint8", None, False),
    "ragged-13x13": (32, 24, 13, "req", "uint8", (8, 3), False),
    "ragged-residual": (8, 8, 5, "res", "uint8", (6, 2), False),
}


def _blocked_flat(a: np.ndarray, padded: int) -> np.ndarray:
    n, c, h, w = a.shape
    z = np.zeros((n, padded, h, w), a.dtype)
    z[:, :c] = a
    z = z.reshape(n, padded // 4, 4, h, w).transpose(0, 1, 3, 4, 2)
    return np.ascontiguousarray(z).reshape(n, padded // 4, h * w, 4)


def _make_case(ic, oc, hw, ep_name, in_dtype, tile, big_mult):
    ep = EPS[ep_name]
    rng = np.random.default_rng(ic * 7 + oc * 3 + hw)
    lo, hi = (0, 255) if in_dtype == "uint8" else (-128, 127)
    zp = 3 if in_dtype == "uint8" else -2
    x = rng.integers(lo, hi + 1, (1, ic, hw, hw)).astype(in_dtype)
    w = rng.integers(-128, 128, (oc, ic, 1, 1)).astype(np.int8)
    b = rng.integers(-2000, 2000, oc).astype(np.int32)
    attrs = {"x_zero_point": zp, "strides": (1, 1), "pads": (0,) * 4, "dilations": (1, 1),
             "groups": 1}  # fmt: skip
    acc = qconv2d_acc(x, w, b, attrs)
    mult = (rng.random(oc) * (3e4 if big_mult else 0.05) + 5e-4).astype(np.float32)
    ref, res = epilogue_reference(ep, acc, mult, rng)
    icp, ocp = -(-ic // 4) * 4, -(-oc // 4) * 4
    wp = np.zeros((ocp, icp, 1, 1), np.int8)
    wp[:oc, :ic] = w
    bp = np.zeros(ocp, np.int32)
    bp[:oc] = b
    # a u8 input is flipped to s8 in the kernel: bias_eff with x_zp - 128 (as lower_int8)
    be = conv_bias_eff(wp, bp, zp - (128 if in_dtype == "uint8" else 0), ocp).reshape(-1, 4)
    mp = np.zeros(ocp, np.float32)
    mp[:oc] = mult
    args = [_blocked_flat(x, icp), pack_int8_conv_weight(wp, 4), be, mp.reshape(-1, 4)]
    if res is not None:
        args.append(_blocked_flat(res, ocp))
    args.append(np.zeros((1, ocp // 4, hw * hw, 4), ep.out_dtype))
    cores = 4 if ic == 64 else 1
    func = int8_pointwise_sdot(
        1, icp // 4, hw * hw, ocp // 4, in_dtype=in_dtype, epilogue=ep, cores=cores, tile=tile
    )
    return func, args, ref


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from mcopt.targets.arm import emulate

    reason = emulate.unavailable_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("pw_sdot")
    target = tvm.target.Target(ARM_SDOT)
    kernels, refs = [], {}
    for name, case in CASES.items():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MCOPT_MIN_PARALLEL_WORK", "0")
            func, args, ref = _make_case(*case)
        kernels.append((name, func, args))
        refs[name] = (ref, case[1], case[2])
    outs = emulate.run_kernels_emulated(kernels, target, tmp)
    out = {}
    for name, (ref, oc, hw) in refs.items():
        o = outs[name]
        got = o.reshape(1, -1, hw, hw, 4).transpose(0, 1, 4, 2, 3).reshape(1, -1, hw, hw)[:, :oc]
        out[name] = (got, ref)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_pointwise_sdot_under_emulation(results, case):
    got, ref = results[case]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_tile_choice():
    assert pixel_groups(8) == [0, 4]
    assert pixel_groups(7) == [0, 3]
    assert pixel_groups(4) == [0]
    for plane, icb, occ in [(49, 240, 40), (196, 16, 24), (3136, 6, 36), (12544, 4, 24), (4, 3, 1)]:
        rn, rc = choose_sdot_tile(plane, icb, occ, True)
        assert rn <= plane and occ % rc == 0 and 4 <= rn <= 16
        assert 4 * len(pixel_groups(rn)) * rc <= MAX_ACCUMULATORS
    with pytest.raises(ValueError):
        choose_sdot_tile(3, 4, 4, True)


def test_applies_only_to_sdot_1x1():
    ok = dict(ib=4, kernel_hw=(1, 1), strides=(1, 1), pads=(0, 0, 0, 0), plane=49, grouped=False)
    assert sdot_pointwise_applies("sdot", **ok)
    assert not sdot_pointwise_applies("vnni16", **ok)
    assert not sdot_pointwise_applies("sdot", **{**ok, "ib": 16})
    assert not sdot_pointwise_applies("sdot", **{**ok, "kernel_hw": (3, 3)})
    assert not sdot_pointwise_applies("sdot", **{**ok, "strides": (2, 2)})
    assert not sdot_pointwise_applies("sdot", **{**ok, "pads": (1, 1, 1, 1)})
    assert not sdot_pointwise_applies("sdot", **{**ok, "plane": 1})
    assert not sdot_pointwise_applies("sdot", **{**ok, "grouped": True})


def test_asm_uses_lane_indexed_sdot_and_no_copy():
    """Per input block: 16-byte loads, one ``eor`` per 4 u8 pixels, lane-indexed ``sdot``; no
    broadcast loads (the TE form's ``ld1r``) and no padded copy of the input."""
    func = int8_pointwise_sdot(1, 8, 784, 48, in_dtype="uint8", epilogue=EPS["req"], cores=1)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(ARM_SDOT))
    mod = lib.mod if hasattr(lib, "mod") else lib
    asm = mod.inspect_source("asm")
    assert "sdot\tv" in asm and ".4b[3]" in asm
    assert "ld1r" not in asm
    assert "fcvtns" in asm and "sqxtun" in asm


def test_planned_arm_build_runs_1x1_convs_on_it():
    """An int8 graph of 1x1 convs (a MobileNet-V2 block: expand + relu, project + residual) built
    for ``arm:neoverse-n1`` lowers its convs to this form and, under emulation, gives the
    interpreter's outputs of the quantized graph (the host's integer arithmetic)."""
    import warnings

    import mcopt.targets.arm.builder  # noqa: F401  (registers the arm targets)
    from mcopt.interpreter import run
    from mcopt.ir import Graph, ttype
    from mcopt.pass_manager import PassContext, PassManager
    from mcopt.targets.arm.builder import build_arm
    from mcopt.targets.cpu.kernels import int8_pointwise_sdot as mod

    rng = np.random.default_rng(0)
    g = Graph("pw")
    x = g.add_input("x", ttype((1, 8, 6, 6)))
    w1 = g.const((rng.standard_normal((24, 8, 1, 1)) * 0.3).astype(np.float32))
    w2 = g.const((rng.standard_normal((8, 24, 1, 1)) * 0.3).astype(np.float32))
    h = g.add_node("relu", [g.add_node("conv2d", [x, w1], {}).output], {}).output
    y = g.add_node("conv2d", [h, w2], {}).output
    g.outputs = [g.add_node("add", [y, x], {}).output]
    feeds = [{"x": rng.standard_normal((1, 8, 6, 6)).astype(np.float32)} for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g, _ = PassManager(["cleanup", "quantize-int8"]).run(g, ctx=PassContext(calib=feeds))
    calls: list[int] = []
    real = mod.int8_pointwise_sdot

    def spy(*a, **kw):
        calls.append(a[2])
        return real(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mod, "int8_pointwise_sdot", spy)
        import mcopt.targets.cpu.kernels.int8_conv_nchwc as conv_mod

        mp.setattr(conv_mod, "int8_pointwise_sdot", spy)
        model = build_arm(g, "arm:neoverse-n1")
    assert calls == [36]  # the projection (the expand conv reads the NCHW image: padded copy)
    if not model.can_run:
        pytest.skip("the emulated aarch64 runtime is not set up")
    xin = np.random.default_rng(1).standard_normal((1, 8, 6, 6)).astype(np.float32)
    (ref,) = run(g, {"x": xin})
    (out,) = model.run(xin)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


#: id -> (ic, oc, hw, k, pad, epilogue, input dtype, tile or None)
ROW_CASES = {
    "3x3-u8": (16, 24, 9, 3, 1, "req", "uint8", None),
    "3x3-ragged-residual": (8, 8, 13, 3, 1, "res", "uint8", (8, 2)),
    "3x3-i8-float": (12, 16, 6, 3, 1, "f32", "int8", None),
    "5x5-narrow": (4, 8, 8, 5, 2, "req-narrow", "uint8", (4, 1)),
    "1x1-padded": (8, 8, 5, 1, 1, "req", "uint8", None),
}


def _blocked(a: np.ndarray, padded: int) -> np.ndarray:
    n, c, h, w = a.shape
    return _blocked_flat(a, padded).reshape(n, padded // 4, h, w, 4)


def _make_row_case(ic, oc, hw, k, pad, ep_name, in_dtype, tile):
    from mcopt.targets.cpu.kernels.int8_conv import zero_shift
    from mcopt.targets.cpu.kernels.int8_pointwise_sdot import int8_conv_sdot_rows

    ep = EPS[ep_name]
    rng = np.random.default_rng(ic * 5 + oc + hw * 3 + k)
    lo, hi = (0, 255) if in_dtype == "uint8" else (-128, 127)
    zp = 7 if in_dtype == "uint8" else -3
    x = rng.integers(lo, hi + 1, (1, ic, hw, hw)).astype(in_dtype)
    w = rng.integers(-128, 128, (oc, ic, k, k)).astype(np.int8)
    b = rng.integers(-2000, 2000, oc).astype(np.int32)
    attrs = {"x_zero_point": zp, "strides": (1, 1), "pads": (pad,) * 4, "dilations": (1, 1),
             "groups": 1}  # fmt: skip
    acc = qconv2d_acc(x, w, b, attrs)
    oh = acc.shape[2]
    mult = (rng.random(oc) * 0.01 + 5e-4).astype(np.float32)
    ref, res = epilogue_reference(ep, acc, mult, rng)
    icp, ocp = -(-ic // 4) * 4, -(-oc // 4) * 4
    wp = np.zeros((ocp, icp, k, k), np.int8)
    wp[:oc, :ic] = w
    bp = np.zeros(ocp, np.int32)
    bp[:oc] = b
    shift = zero_shift("sdot", in_dtype)
    be = conv_bias_eff(wp, bp, zp + shift, ocp).reshape(-1, 4)
    mp = np.zeros(ocp, np.float32)
    mp[:oc] = mult
    args = [_blocked(x, icp), pack_int8_conv_weight(wp, 4), be, mp.reshape(-1, 4)]
    if res is not None:
        args.append(_blocked(res, ocp))
    args.append(np.zeros((1, ocp // 4, oh, oh, 4), ep.out_dtype))
    func = int8_conv_sdot_rows(
        1, icp // 4, (hw, hw), ocp // 4, (k, k), (pad,) * 4, in_dtype=in_dtype,
        pad_value=zp + shift, shift=shift, epilogue=ep, tile=tile,
    )  # fmt: skip
    return func, args, ref, oc


@pytest.fixture(scope="module")
def row_results(tmp_path_factory):
    from mcopt.targets.arm import emulate

    reason = emulate.unavailable_reason()
    if reason:
        pytest.skip(reason)
    kernels, refs = [], {}
    for name, case in ROW_CASES.items():
        func, args, ref, oc = _make_row_case(*case)
        kernels.append((name, func, args))
        refs[name] = (ref, oc)
    outs = emulate.run_kernels_emulated(
        kernels, tvm.target.Target(ARM_SDOT), tmp_path_factory.mktemp("rows_sdot")
    )
    out = {}
    for name, (ref, oc) in refs.items():
        o = outs[name]
        n, cb, h, w, _ = o.shape
        out[name] = (o.transpose(0, 1, 4, 2, 3).reshape(n, cb * 4, h, w)[:, :oc], ref)
    return out


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_sdot_rows_under_emulation(row_results, case):
    got, ref = row_results[case]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)
