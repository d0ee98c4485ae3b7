"""Blocked int8 depthwise conv (targets/cpu/kernels/int8_depthwise_nchwc.py): the compiled kernels
(VNNI and generic) against a numpy reference of ``sum((x - x_zp) * w) + bias_q`` followed by
``QEpilogue.apply_numpy``. The AArch64 ``sdot`` kernel is built for a Neoverse-N1 and run on qemu's
model of that core (all cases in one emulated process; skipped where ``scripts/setup_aarch64.sh``
has not been run); its instructions are checked in the assembly without qemu.

Exactness: every path is bit-exact except a float residual add followed by a requantize, where
LLVM contracts ``y + r * r_scale`` into one FMA: that output may be one code off at a rounding tie
(asserted: at most 1, and rarely)."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mcopt.targets.cpu.kernels.int8_conv import conv_bias_eff  # noqa: E402
from mcopt.targets.cpu.kernels.int8_depthwise_nchwc import (  # noqa: E402
    int8_depthwise_nchwc,
    pack_int8_depthwise_weight,
)
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue  # noqa: E402
from mcopt.targets.cpu.kernels.int8_intrin import _has  # noqa: E402
from mcopt.targets.cpu.kernels.target_info import host_target  # noqa: E402

HOST = host_target(2)
HAS_VNNI = _has(HOST, "avx512vnni") and _has(HOST, "avx512f")
HAS_VNNI8 = _has(HOST, "avxvnni") or (_has(HOST, "avx512vnni") and _has(HOST, "avx512vl"))
# isa, bn: the VNNI kernel (where the host runs it) and the generic one
KERNELS = [
    pytest.param("vnni16", 16, marks=pytest.mark.skipif(not HAS_VNNI, reason="no AVX-512 VNNI")),
    pytest.param(None, 16, id="generic16"),
]

EP_U8 = QEpilogue(base_dtype="uint8", base_bounds=(0.0, 255.0), base_zp=3)
EP_RES_U8 = QEpilogue(
    residual="uint8", r_scale=0.05, r_zp=4, post_bounds=(0.0, np.inf),
    q_dtype="uint8", q_scale=0.04, q_zp=2,
)  # fmt: skip
EP_F32 = QEpilogue(base_bounds=(0.0, 6.0))
EP_I8 = QEpilogue(base_dtype="int8", base_bounds=(-128.0, 127.0), base_zp=-3)


def _reference(x, w, b, zp, strides, pads, dil, ep, mult, res):
    """NCHW reference: ``ep(sum((x_pad - zp) * w) + b)`` with ``x_pad`` padded by ``zp``."""
    n, c, h, wd = x.shape
    _, _, kh, kw = w.shape
    pt, pl, pb, pr = pads
    xp = np.full((n, c, h + pt + pb, wd + pl + pr), zp, np.int64)
    xp[:, :, pt : pt + h, pl : pl + wd] = x
    xp -= zp
    oh = (h + pt + pb - (kh - 1) * dil - 1) // strides + 1
    ow = (wd + pl + pr - (kw - 1) * dil - 1) // strides + 1
    acc = np.zeros((n, c, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dil, j * dil
            win = xp[:, :, y0 : y0 + strides * (oh - 1) + 1 : strides,
                     x0 : x0 + strides * (ow - 1) + 1 : strides]  # fmt: skip
            acc += win * w[None, :, 0, i, j, None, None].astype(np.int64)
    acc += b[None, :, None, None]
    assert np.abs(acc).max() < 2**31
    return ep.apply_numpy(acc.astype(np.int32), mult[None, :, None, None], res)


def _block(a, bn, fill):
    """``(N, C, H, W) -> (N, Cp/bn, H, W, bn)``, channels padded to ``Cp`` with ``fill``."""
    n, c, h, w = a.shape
    cp = -(-c // bn) * bn
    full = np.full((n, cp, h, w), fill, a.dtype)
    full[:, :c] = a
    return np.ascontiguousarray(full.reshape(n, cp // bn, bn, h, w).transpose(0, 1, 3, 4, 2))


def _unblock(a, c):
    n, cb, h, w, bn = a.shape
    return a.transpose(0, 1, 4, 2, 3).reshape(n, cb * bn, h, w)[:, :c]


def _run_case(isa, bn, c, hw, k, stride, pads, ep, in_dtype="uint8", dil=1, n=1, seed=0, cores=2):
    """(kernel output, reference) in NCHW for one random case."""
    func, args, ref = _make_case(isa, bn, c, hw, k, stride, pads, ep, in_dtype, dil, n, seed, cores)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=HOST)
    dev = tvm.cpu()
    targs = [tvm.runtime.tensor(a, dev) for a in args]
    lib(*targs)
    return _unblock(targs[-1].numpy(), c), ref


def _make_case(
    isa, bn, c, hw, k, stride, pads, ep, in_dtype="uint8", dil=1, n=1, seed=0, cores=2,
    big_mult=False,
):  # fmt: skip
    """(PrimFunc, its arguments with a zero output last, NCHW reference) for one random case;
    ``big_mult``: channels 0 and 1 get multipliers +-3e5 (products past the int32 range)."""
    rng = np.random.default_rng(seed)
    lo, hi = (0, 256) if in_dtype == "uint8" else (-128, 128)
    zp = 7 if in_dtype == "uint8" else -5
    x = rng.integers(lo, hi, (n, c, hw, hw)).astype(in_dtype)
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    b = rng.integers(-20000, 20000, c).astype(np.int32)
    mult = rng.uniform(2e-4, 2e-3, c).astype(np.float32)
    if big_mult:
        mult[:2] = (3e5, -3e5)
    cp = -(-c // bn) * bn
    res = None
    if ep.residual is not None:
        oh = (hw + pads[0] + pads[2] - (k - 1) * dil - 1) // stride + 1
        ow = (hw + pads[1] + pads[3] - (k - 1) * dil - 1) // stride + 1
        res = rng.integers(0, 256, (n, c, oh, ow)).astype(ep.residual)
    ref = _reference(x, w, b, zp, stride, pads, dil, ep, mult, res)

    func = int8_depthwise_nchwc(
        (n, cp // bn, hw, hw, bn), (k, k), (stride, stride), pads, (dil, dil),
        in_dtype=in_dtype, x_zero_point=zp, epilogue=ep, cores=cores, isa=isa,
    )  # fmt: skip
    mp = np.zeros(cp, np.float32)
    mp[:c] = mult
    args = [
        _block(x, bn, zp),
        pack_int8_depthwise_weight(w, bn, cp),
        conv_bias_eff(w, b, zp, cp).reshape(-1, bn),
        mp.reshape(-1, bn),
    ]
    if res is not None:
        args.append(_block(res, bn, 0))
    args.append(np.zeros((n, cp // bn, *ref.shape[2:], bn), ep.out_dtype))
    return func, args, ref


def _assert_exact(got, ref):
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("isa,bn", KERNELS)
def test_u8_in_u8_out_with_u8_residual(isa, bn):
    """u8 -> requantized u8 with a u8 residual added in float: at most one code off (FMA)."""
    got, ref = _run_case(isa, bn, 32, 15, 3, 1, (1, 1, 1, 1), EP_RES_U8)
    diff = np.abs(got.astype(np.int32) - ref.astype(np.int32))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01


@pytest.mark.parametrize("isa,bn", KERNELS)
def test_u8_in_requantized_u8_out(isa, bn):
    _assert_exact(*_run_case(isa, bn, 32, 14, 3, 1, (1, 1, 1, 1), EP_U8, n=2))


@pytest.mark.parametrize("isa,bn", KERNELS)
def test_u8_in_f32_out(isa, bn):
    _assert_exact(*_run_case(isa, bn, 16, 12, 3, 1, (1, 1, 1, 1), EP_F32))


@pytest.mark.parametrize("isa,bn", KERNELS)
@pytest.mark.parametrize("ep", [EP_I8, EP_U8], ids=["i8out", "u8out"])
def test_int8_in(isa, bn, ep):
    _assert_exact(*_run_case(isa, bn, 32, 11, 3, 1, (1, 1, 1, 1), ep, in_dtype="int8"))


@pytest.mark.parametrize("isa,bn", KERNELS)
@pytest.mark.parametrize("pads", [(0, 1, 2, 1), (1, 0, 0, 2)])
def test_stride2_asymmetric_pads(isa, bn, pads):
    _assert_exact(*_run_case(isa, bn, 16, 17, 3, 2, pads, EP_U8))


@pytest.mark.parametrize("isa,bn", KERNELS)
@pytest.mark.parametrize("stride", [1, 2])
def test_5x5(isa, bn, stride):
    _assert_exact(*_run_case(isa, bn, 16, 13, 5, stride, (2, 2, 2, 2), EP_U8))


@pytest.mark.parametrize("isa,bn", KERNELS)
def test_channels_padded(isa, bn):
    """20 channels in blocks of 16: the padding channels (zero weights, bias and multiplier) do
    not disturb the real ones."""
    _assert_exact(*_run_case(isa, bn, 20, 10, 3, 1, (1, 1, 1, 1), EP_U8))


@pytest.mark.parametrize("isa,bn", KERNELS)
@pytest.mark.parametrize(
    "hw,k,pads",
    [(3, 3, (1, 1, 1, 1)), (5, 7, (3, 3, 3, 3)), (9, 4, (1, 2, 2, 1)), (30, 3, (1, 1, 1, 1))],
    ids=["tiny", "7x7", "4x4", "wide"],
)
def test_geometries(isa, bn, hw, k, pads):
    """Windows that are mostly padding, 7x7 (a four-tap and a three-tap group), 4x4 (even
    kernel, asymmetric pads), and a width with interior loop iterations and leftovers."""
    _assert_exact(*_run_case(isa, bn, 16, hw, k, 1, pads, EP_U8, in_dtype="int8"))


@pytest.mark.skipif(not HAS_VNNI8, reason="no 256-bit VNNI")
@pytest.mark.parametrize("isa", ["vnni8", None])
def test_blocks_of_8(isa):
    """``bn`` 8 (the AVX2 block): 256-bit ``vpdpbusd`` and the generic kernel."""
    _assert_exact(*_run_case(isa, 8, 24, 12, 3, 2, (1, 1, 1, 1), EP_U8, seed=5))


def test_dilation_uses_generic_kernel():
    """Dilated taps are not contiguous: the VNNI request falls back to the generic kernel."""
    _assert_exact(*_run_case("vnni16", 16, 16, 12, 3, 1, (2, 2, 2, 2), EP_U8, dil=2))


def test_single_thread_and_batches():
    _assert_exact(*_run_case("vnni16" if HAS_VNNI else None, 16, 32, 9, 3, 1, (1, 1, 1, 1),
                             EP_U8, n=3, cores=1))  # fmt: skip


@pytest.mark.parametrize("hw", [13, 40])
def test_row_pieces(monkeypatch, hw):
    """One channel block on the thread pool: the interior rows split into pieces (the last one
    shorter), the border rows with the first and last piece."""
    monkeypatch.setenv("MCOPT_MIN_PARALLEL_WORK", "0")
    isa = "vnni16" if HAS_VNNI else None
    _assert_exact(*_run_case(isa, 16, 16, hw, 3, 1, (1, 1, 1, 1), EP_U8, cores=2))


def test_pack_weight():
    w = np.arange(3 * 2 * 2, dtype=np.int8).reshape(3, 1, 2, 2)
    p = pack_int8_depthwise_weight(w, 2, 4)
    assert p.shape == (2, 2, 2, 2)
    assert p[0, 1, 0, 1] == w[1, 0, 1, 0]
    assert p[1, 0, 1, 0] == w[2, 0, 0, 1]
    assert not p[1, :, :, 1].any()  # the padding channel
    with pytest.raises(ValueError):
        pack_int8_depthwise_weight(w, 2, 3)


def _asm(isa, ep=EP_U8):
    func = int8_depthwise_nchwc(
        (1, 2, 16, 16, 16), (3, 3), (1, 1), (1, 1, 1, 1), epilogue=ep, x_zero_point=3, isa=isa
    )
    return tvm.compile(tvm.IRModule({"main": func}), target=HOST).mod.inspect_source("s")


@pytest.mark.skipif(not HAS_VNNI, reason="no AVX-512 VNNI")
def test_vnni_instructions():
    """Three taps per ``vpdpbusd`` after a byte permutation, and a vectorized tail (the requantize
    rounds with ``vrndscaleps``, never lane by lane)."""
    asm = _asm("vnni16")
    assert "vpdpbusd" in asm
    assert "vpermb" in asm or "vpermt2b" in asm
    assert "vrndscaleps" in asm
    assert "vroundss" not in asm and "vrndscaless" not in asm


def test_generic_tail_vectorized():
    asm = _asm(None)
    assert "vrndscaleps" in asm or "vroundps" in asm
    assert "vroundss" not in asm and "vrndscaless" not in asm


# ---- the AArch64 sdot kernel -------------------------------------------------------------------

ARM_SDOT = {
    "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"],
    "mcpu": "neoverse-n1",
}  # fmt: skip
#: bounds inside the dtype (smax / smin) and a zero point (with big_mult: int32 saturation)
EP_U8_NARROW = QEpilogue(base_dtype="uint8", base_bounds=(3.0, 200.7), base_zp=5)
EP_I8_NARROW = QEpilogue(base_dtype="int8", base_bounds=(-100.5, 90.2), base_zp=-7)
#: id -> _make_case arguments after (isa, bn); the residual case may be one code off (FMA)
SDOT_CASES = {
    "u8-residual": dict(c=32, hw=15, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_RES_U8),
    "u8-u8-batch2": dict(c=32, hw=14, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_U8, n=2),
    "u8-f32": dict(c=16, hw=12, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_F32),
    "i8-i8": dict(c=32, hw=11, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_I8, in_dtype="int8"),
    "i8-u8": dict(c=32, hw=11, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_U8, in_dtype="int8"),
    "s2-pads-a": dict(c=16, hw=17, k=3, stride=2, pads=(0, 1, 2, 1), ep=EP_U8),
    "s2-pads-b": dict(c=16, hw=17, k=3, stride=2, pads=(1, 0, 0, 2), ep=EP_U8),
    "5x5-s1": dict(c=16, hw=13, k=5, stride=1, pads=(2, 2, 2, 2), ep=EP_U8),
    "5x5-s2": dict(c=16, hw=13, k=5, stride=2, pads=(2, 2, 2, 2), ep=EP_U8),
    "channels-padded": dict(c=18, hw=10, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_U8),
    "tiny": dict(c=16, hw=3, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_U8, in_dtype="int8"),
    "narrower-than-a-load": dict(c=8, hw=2, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_U8),
    "7x7": dict(c=16, hw=5, k=7, stride=1, pads=(3, 3, 3, 3), ep=EP_U8, in_dtype="int8"),
    "4x4": dict(c=16, hw=9, k=4, stride=1, pads=(1, 2, 2, 1), ep=EP_U8, in_dtype="int8"),
    "6x6-s3": dict(c=16, hw=20, k=6, stride=3, pads=(0, 2, 1, 0), ep=EP_U8),
    "1x1": dict(c=16, hw=9, k=1, stride=1, pads=(0, 0, 0, 0), ep=EP_U8),
    "wide": dict(c=16, hw=30, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_U8, in_dtype="int8"),
    "wide-s2": dict(c=8, hw=37, k=3, stride=2, pads=(1, 1, 1, 1), ep=EP_U8),
    "narrow-bounds-u8": dict(
        c=16, hw=12, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_U8_NARROW, big_mult=True
    ),
    "narrow-bounds-i8": dict(
        c=16, hw=12, k=3, stride=2, pads=(1, 1, 1, 1), ep=EP_I8_NARROW, big_mult=True
    ),
    "single-thread": dict(c=12, hw=9, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_U8, n=3, cores=1),
    "dilation-generic": dict(c=8, hw=12, k=3, stride=1, pads=(2, 2, 2, 2), ep=EP_U8, dil=2),
}
#: built with MCOPT_MIN_PARALLEL_WORK=0: the interior rows split into pieces
SDOT_POOL_CASES = {
    "row-pieces-13": dict(c=4, hw=13, k=3, stride=1, pads=(1, 1, 1, 1), ep=EP_U8),
    "row-pieces-40": dict(c=4, hw=40, k=3, stride=2, pads=(1, 1, 1, 1), ep=EP_U8),
}


@pytest.fixture(scope="module")
def sdot_results(tmp_path_factory):
    """case id -> (output, reference) of every sdot case, run in one emulated aarch64 process on
    qemu's Neoverse-N1 model."""
    from mcopt.targets.arm import emulate

    reason = emulate.unavailable_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("sdot")
    target = tvm.target.Target(ARM_SDOT)
    kernels, refs = [], {}
    cases = [(k, v, False) for k, v in SDOT_CASES.items()]
    cases += [(k, v, True) for k, v in SDOT_POOL_CASES.items()]
    for name, kw, pool in cases:
        with pytest.MonkeyPatch.context() as mp:
            if pool:
                mp.setenv("MCOPT_MIN_PARALLEL_WORK", "0")
            func, args, ref = _make_case("sdot", 4, **kw)
        kernels.append((name, func, args))
        refs[name] = (ref, kw["c"])
    outs = emulate.run_kernels_emulated(kernels, target, tmp)
    return {name: (_unblock(outs[name], c), ref) for name, (ref, c) in refs.items()}


@pytest.mark.parametrize("case", [*SDOT_CASES, *SDOT_POOL_CASES])
def test_sdot_kernel_under_emulation(sdot_results, case):
    """The sdot kernel on qemu's Neoverse-N1 gives the reference's codes (the residual case at most
    one code off at a rounding tie, as on x86)."""
    got, ref = sdot_results[case]
    if case == "u8-residual":
        diff = np.abs(got.astype(np.int32) - ref.astype(np.int32))
        assert diff.max() <= 1
        assert (diff > 0).mean() < 0.01
    else:
        _assert_exact(got, ref)


def _arm_asm(ep=EP_U8, in_dtype="uint8", stride=1, dil=1):
    func = int8_depthwise_nchwc(
        (1, 2, 16, 16, 4), (3, 3), (stride, stride), (1, 1, 1, 1), (dil, dil),
        in_dtype=in_dtype, epilogue=ep, x_zero_point=3, isa="sdot",
    )  # fmt: skip
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(ARM_SDOT))
    return lib.mod.inspect_source("s")


@pytest.mark.parametrize("stride", [1, 2])
def test_sdot_instructions(stride):
    """``sdot`` on ``tbl`` / two-register ``tbl`` windows (no widening multiply-adds), and the
    integer requantize: ``fcvtns`` and saturating narrows, no float rounding or clamping."""
    import re

    asm = _arm_asm(stride=stride)
    assert "sdot\tv" in asm
    assert re.search(r"tbl\tv\d+\.16b, \{ v\d+\.16b, v\d+\.16b \}", asm)
    assert "smlal" not in asm and "mla\t" not in asm
    assert "fcvtns" in asm and "sqxtun" in asm and "uqxtn" in asm
    assert "frinti" not in asm and "fmaxnm" not in asm


def test_sdot_instructions_int8():
    asm = _arm_asm(EP_I8, in_dtype="int8")
    assert "sdot\tv" in asm and "sqxtn" in asm
    assert "eor\tv" not in asm  # s8 inputs need no flip


def test_sdot_float_tail_and_dilation():
    """A float output keeps the QEpilogue tail; a horizontal dilation the generic kernel."""
    assert "sdot\tv" in _arm_asm(EP_F32)
    asm = _arm_asm(dil=2)
    assert "sdot\tv" not in asm and "smlal" in asm


def test_int_requantize_condition():
    from mcopt.targets.cpu.kernels.int8_depthwise_nchwc import _int_requantize

    assert _int_requantize(EP_U8) == (0, 255, 3)
    assert _int_requantize(EP_I8) == (-128, 127, -3)
    assert _int_requantize(EP_U8_NARROW) == (3, 200, 5)
    assert _int_requantize(EP_I8_NARROW) == (-100, 90, -7)
    assert _int_requantize(EP_F32) is None and _int_requantize(EP_RES_U8) is None
    assert _int_requantize(QEpilogue(base_dtype="uint8")) is None  # unbounded: wraps
    assert _int_requantize(QEpilogue(base_dtype="int8", base_bounds=(-300.0, 10.0))) is None
