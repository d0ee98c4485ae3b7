"""mcopt.targets.cpu.kernels: the scheduled fp32 CPU kernels against numpy (rel. error <= 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from mcopt.targets.cpu.kernels import layout  # noqa: E402
from mcopt.targets.cpu.kernels.conv2d import conv2d_nchwc  # noqa: E402
from mcopt.targets.cpu.kernels.dense import choose_dense_params, dense_packed  # noqa: E402
from mcopt.targets.cpu.kernels.depthwise import depthwise_conv2d_nchwc  # noqa: E402
from mcopt.targets.cpu.kernels.epilogue import Epilogue  # noqa: E402
from mcopt.targets.cpu.kernels.params import (  # noqa: E402
    ConvParams,
    channel_block,
    choose_conv_params,
    choose_register_tile,
    max_accumulators,
    tile_score,
)
from mcopt.targets.cpu.kernels.target_info import CPUInfo, cpu_info, host_target  # noqa: E402

TARGET = host_target()
RTOL = 1e-5


def _conv_ref(x, w, b, stride, pad, dilation=1, groups=1):
    """float64 NCHW conv2d: pads (top, left, bottom, right)."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    pt, pl, pb, pr = pad
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    oh = (h - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, oc, oh, ow))
    ocg = oc // groups
    for g in range(groups):
        xs = x[:, g * icg : (g + 1) * icg]
        ws = w[g * ocg : (g + 1) * ocg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[
                    :,
                    :,
                    i * dilation : i * dilation + stride * (oh - 1) + 1 : stride,
                    j * dilation : j * dilation + stride * (ow - 1) + 1 : stride,
                ]
                out[:, g * ocg : (g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def _run(func, arrays, out_shape):
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, "float32"), dev)
    lib["main"](*args, out)
    return out.numpy()


def _rel_err(got, ref):
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


# --- parameter choice (no compilation) -----------------------------------------------------------
def test_cpu_info_from_targets():
    assert cpu_info(TARGET).lanes in (4, 8, 16)
    neon = cpu_info({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert (neon.lanes, neon.vregs) == (4, 32)
    avx512 = cpu_info({"kind": "llvm", "mcpu": "skylake-avx512"})
    assert (avx512.lanes, avx512.vregs) == (16, 32)
    avx2 = cpu_info({"kind": "llvm", "mcpu": "haswell", "num-cores": 4})
    assert (avx2.lanes, avx2.vregs, avx2.cores) == (8, 16, 4)


def _legal_tiles(ow: int, occ: int, vregs: int, max_reg_c: int = 4):  # type: ignore[no-untyped-def]
    for rc in range(1, max_reg_c + 1):
        if occ % rc:
            continue
        for rn in range(1, min(ow, vregs) + 1):
            if rn * rc <= max_accumulators(vregs) and not (rc > 1 and rn > vregs // 3):
                yield rn, rc


def _check_tile(ow: int, occ: int, vregs: int, copy_free: bool = True) -> tuple[int, int]:
    """Properties of the register tile: the accumulators fit the register file with room for the
    weight / input loads, reg_c divides the channel blocks, and no legal tile scores higher."""
    rn, rc = choose_register_tile(ow, occ, vregs, copy_free=copy_free)
    assert (rn, rc) in set(_legal_tiles(ow, occ, vregs))
    best = max(tile_score(ow, n, c, copy_free) for n, c in _legal_tiles(ow, occ, vregs))
    assert tile_score(ow, rn, rc, copy_free) >= best - 1e-9
    return rn, rc


def test_register_tile_rule():
    for ow, occ, vregs in ((56, 8, 16), (14, 32, 16), (56, 1, 16), (56, 16, 32), (7, 64, 32)):
        rn, rc = _check_tile(ow, occ, vregs)
        if occ >= 4:  # enough channel blocks: more than one per tile (loads are reused)
            assert rc > 1
    # AVX2 keeps 12 of its 16 registers for accumulators (3 x 4); AVX-512 24 of 32, not 28 (7 x 4
    # spilled: 2.5x slower on ResNet-50's 1x1 convs)
    assert max_accumulators(16) == 12 and max_accumulators(32) == 24
    assert choose_register_tile(56, 8, 16) == (3, 4)
    assert choose_register_tile(56, 8, 32) != (7, 4)
    # a short reduction (MobileNet-V2's 16->96 1x1) caps the tile at 2/3 of the budget
    rn, rc = choose_register_tile(112, 6, 32, reduction=16)
    assert rn * rc <= 16 and rc > 1
    assert choose_register_tile(112, 6, 32, reduction=1024) != (rn, rc)
    assert channel_block(3, 8) == 3 and channel_block(144, 8) == 8 and channel_block(12, 8) == 6


def test_choose_conv_params_cache_blocking():
    """Blocks divide the channels and fit a vector; a weight tile bigger than half the L2 is cut
    into L1-sized input-channel chunks, a small one is not; a 3-channel stem keeps its 3 channels
    in one block and unrolls the kernel width."""
    avx2 = CPUInfo(lanes=8, vregs=16, cores=2)
    cases = [
        ((1, 64, 56, 56), (64, 64, 3, 3), 1, 1),
        ((1, 512, 7, 7), (512, 512, 3, 3), 1, 1),
        ((1, 3, 224, 224), (64, 3, 7, 7), 2, 3),
    ]
    for data, weight, stride, pad in cases:
        p = choose_conv_params(data, weight, stride, pad, 1, avx2)
        assert data[1] % p.ic_bn == 0 and weight[0] % p.oc_bn == 0
        assert p.ic_bn <= avx2.lanes and p.oc_bn <= avx2.lanes
        # the weights a register tile reads: reg_c blocks of oc_bn filters over all input channels
        tile_bytes = p.reg_c * p.oc_bn * weight[1] * weight[2] * weight[3] * 4
        if tile_bytes > avx2.l2_bytes // 2 and data[1] // p.ic_bn > 1:
            per_block = p.reg_c * p.oc_bn * p.ic_bn * weight[2] * weight[3] * 4
            assert p.ic_chunk >= 1 and p.ic_chunk * per_block <= max(avx2.l1_bytes, per_block)
        else:
            assert p.ic_chunk == 0
        assert p.unroll_kw == (weight[3] > 1 and p.ic_bn < avx2.lanes)
    stem = choose_conv_params((1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, avx2)
    assert stem.ic_bn == 3
    units, _ = choose_dense_params(1, 1000, 2048, avx2)
    assert 1000 % units == 0 and units % avx2.lanes == 0


def test_strided_wide_convs_take_a_small_tile_on_avx512():
    """A stride-2 3x3 conv with output rows of 64+ pixels takes at most STRIDED_ACCUMULATORS
    accumulators on 16-lane targets (the large stride-1 tiles lost 20-25 % there); the same conv
    at stride 1, a small strided plane and AVX2 keep the tile they had."""
    from mcopt.targets.cpu.kernels.params import STRIDED_ACCUMULATORS

    avx512 = CPUInfo(lanes=16, vregs=32, cores=2)
    avx2 = CPUInfo(lanes=8, vregs=16, cores=2)
    wide = choose_conv_params((1, 128, 160, 160), (128, 128, 3, 3), 2, 1, 1, avx512)
    assert wide.reg_n * wide.reg_c <= STRIDED_ACCUMULATORS
    same = choose_conv_params((1, 128, 80, 80), (128, 128, 3, 3), 1, 1, 1, avx512)
    assert same.reg_n * same.reg_c > STRIDED_ACCUMULATORS
    small = choose_conv_params((1, 512, 14, 14), (512, 512, 3, 3), 2, 1, 1, avx512)
    assert small.reg_n * small.reg_c > STRIDED_ACCUMULATORS
    narrow = choose_conv_params((1, 128, 160, 160), (128, 128, 3, 3), 2, 1, 1, avx2)
    assert narrow == choose_conv_params((1, 128, 80, 80), (128, 128, 3, 3), 1, 1, 1, avx2)


def test_choose_conv_params_avoids_a_rounding_copy_for_narrow_1x1():
    """A 1x1 conv has no padded copy of its own: a tile that rounds the width up would add one.
    Narrow ones (few MACs per input element) take a dividing tile; wide ones and padded convs may
    still round (their tile is then the best under the copy-free scoring)."""
    avx2 = CPUInfo(lanes=8, vregs=16, cores=2)
    narrow = choose_conv_params((1, 32, 112, 112), (16, 32, 1, 1), 1, 0, 1, avx2)
    assert 112 % narrow.reg_n == 0
    proj = choose_conv_params((1, 960, 7, 7), (160, 960, 1, 1), 1, 0, 1, avx2)
    assert 7 % proj.reg_n == 0 or (proj.flat and 49 % proj.reg_n == 0)
    wide = choose_conv_params((1, 512, 7, 7), (2048, 512, 1, 1), 1, 0, 1, avx2)
    assert wide.reg_n * wide.reg_c <= avx2.vregs - 4
    padded = choose_conv_params((1, 32, 112, 112), (16, 32, 3, 3), 1, 1, 1, avx2)
    if not padded.flat:  # the pad copy is made anyway: the tile is the best copy-free one
        assert (padded.reg_n, padded.reg_c) == _check_tile(112, 16 // padded.oc_bn, 16)


def test_packing_roundtrip():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 3, 5)).astype("float32")
    xb = layout.pack_nchwc(x, 8)
    assert xb.shape == (2, 2, 3, 5, 8) and xb[1, 1, 2, 4, 3] == x[1, 11, 2, 4]
    np.testing.assert_array_equal(layout.unpack_nchwc(xb), x)
    w = rng.standard_normal((32, 16, 3, 3)).astype("float32")
    wp = layout.pack_conv_weight(w, 8, 16)
    assert wp.shape == (2, 2, 3, 3, 8, 16) and wp[1, 0, 2, 1, 5, 7] == w[23, 5, 2, 1]
    wd = rng.standard_normal((24, 40)).astype("float32")
    assert layout.pack_dense_weight(wd, 8)[2, 7, 3] == wd[19, 7]


# --- kernels ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ic,oc,hw,k,stride,pad,dil,params,act,residual",
    [
        # 3x3, bias + residual + relu, default (analytic) parameters
        (16, 32, 10, 3, 1, (1, 1, 1, 1), 1, None, "relu", True),
        # RGB stem-like: ic_bn = 3, kw unrolled, stride 2, asymmetric padding, clip
        (3, 16, 11, 5, 2, (2, 1, 2, 2), 1, None, "clip", False),
        # 3x3 stride 2 + SiLU (YOLOX's downsampling convs)
        (16, 32, 10, 3, 2, (1, 1, 1, 1), 1, None, "silu", True),
        # 1x1 + GELU (PP-OCRv5/v6's pointwise convs)
        (16, 32, 8, 1, 1, (0, 0, 0, 0), 1, None, "gelu", False),
        # 3x3 + leaky ReLU with a floor (openWakeWord: slope -0.5 here, floor 0.5 -> clip_*)
        (16, 32, 8, 3, 1, (1, 1, 1, 1), 1, None, "leaky_relu", True),
        # 1x1 as GEMM, stride 2, no epilogue activation; forced ic split + rows inside it
        (32, 16, 9, 1, 2, (0, 0, 0, 0), 1, ConvParams(8, 8, 3, 2, False, 2, True), None, False),
        # flattened plane (7x7 = 49 -> 51 positions), ic split, residual
        (
            16,
            32,
            7,
            3,
            1,
            (1, 1, 1, 1),
            1,
            ConvParams(8, 8, 3, 4, False, 1, True, 0, True),
            "relu",
            True,
        ),
        # dilation 2, width not a multiple of the tile (rounded up inside), ic split
        (16, 16, 9, 3, 1, (2, 2, 2, 2), 2, ConvParams(8, 8, 4, 1, True, 1, False), "relu6", False),
    ],
)
def test_conv2d_nchwc(ic, oc, hw, k, stride, pad, dil, params, act, residual):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, ic, hw, hw)).astype("float32")
    w = (rng.standard_normal((oc, ic, k, k)) / np.sqrt(ic * k * k)).astype("float32")
    b = rng.standard_normal(oc).astype("float32")
    ep = Epilogue(bias=True, residual=residual, activation=act, clip_min=-0.5, clip_max=0.5)
    p = params or choose_conv_params(x.shape, w.shape, stride, pad, dil, TARGET)
    ref = _conv_ref(x, w, b, stride, pad, dil)
    res = rng.standard_normal(ref.shape).astype("float32") if residual else None
    ref = ep.apply_numpy(ref, 0.0, res)  # bias already in ref
    func = conv2d_nchwc(x.shape, w.shape, stride, pad, dil, TARGET, p, ep)
    args = [
        layout.pack_nchwc(x, p.ic_bn),
        layout.pack_conv_weight(w, p.ic_bn, p.oc_kbn),
        layout.pack_bias(b, p.oc_bn),
    ]
    if residual:
        args.append(layout.pack_nchwc(res, p.oc_bn))
    out_shape = (1, oc // p.oc_bn, ref.shape[2], ref.shape[3], p.oc_bn)
    got = layout.unpack_nchwc(_run(func, args, out_shape))
    assert _rel_err(got, ref) <= RTOL


@pytest.mark.parametrize("pad_copy", [True, False])
@pytest.mark.parametrize(
    "stride,pads,dil,residual",
    [(2, (1, 1, 1, 1), 1, False), (1, (1, 1, 1, 1), 1, True), (1, (0, 2, 1, 0), 2, False)],
)
def test_depthwise_conv2d_nchwc(pad_copy, stride, pads, dil, residual):
    """Both border paths (padded copy; clamped address + select) against the numpy reference,
    incl. asymmetric pads, dilation and a residual epilogue."""
    rng = np.random.default_rng(2)
    c, hw = 24, 13
    x = rng.standard_normal((1, c, hw, hw)).astype("float32")
    w = rng.standard_normal((c, 1, 3, 3)).astype("float32")
    b = rng.standard_normal(c).astype("float32")
    ep = Epilogue(activation="relu6", residual=residual)
    conv = _conv_ref(x, w, None, stride, pads, dilation=dil, groups=c)
    res = rng.standard_normal(conv.shape).astype("float32") if residual else None
    ref = ep.apply_numpy(conv, b.reshape(1, -1, 1, 1), res)
    func = depthwise_conv2d_nchwc(
        x.shape, (3, 3), stride, pads, dil, TARGET, ep, bn=8, pad_copy=pad_copy
    )
    args = [layout.pack_nchwc(x, 8), layout.pack_depthwise_weight(w, 8), layout.pack_bias(b, 8)]
    if residual:
        args.append(layout.pack_nchwc(res, 8))
    oh, ow = conv.shape[2:]
    got = layout.unpack_nchwc(_run(func, args, (1, c // 8, oh, ow, 8)))
    assert _rel_err(got, ref) <= RTOL


@pytest.mark.parametrize(
    "m,n,k,act",
    [
        (1, 10, 40, None),
        (3, 48, 24, "relu"),
        (2, 20, 16, "silu"),
        (4, 32, 16, "gelu"),
        (2, 24, 16, "leaky_relu"),
    ],
)
def test_dense_packed(m, n, k, act):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((m, k)).astype("float32")
    w = rng.standard_normal((n, k)).astype("float32")
    b = rng.standard_normal(n).astype("float32")
    ep = Epilogue(
        activation=act, **({"clip_min": 0.1, "clip_max": -0.3} if act == "leaky_relu" else {})
    )
    ref = ep.apply_numpy(x.astype(np.float64) @ w.T.astype(np.float64), b)
    bn, reg_m = choose_dense_params(m, n, k, TARGET)
    npad = -(-n // bn) * bn
    wp = layout.pack_dense_weight(np.concatenate([w, np.zeros((npad - n, k), "float32")]), bn)
    got = _run(dense_packed(m, n, k, TARGET, ep), [x, wp, b], (m, n))
    assert _rel_err(got, ref) <= RTOL


def test_layout_primfuncs():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 16, 5, 7)).astype("float32")
    xb = _run(layout.nchw_to_nchwc(x.shape, 8), [x], (1, 2, 5, 7, 8))
    np.testing.assert_array_equal(xb, layout.pack_nchwc(x, 8))
    back = _run(layout.nchwc_to_nchw(x.shape, 8), [xb], x.shape)
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("w", [2100, 2101])
def test_layout_long_rows_vectorize_in_pieces(w):
    """YOLOv8's (1, 4, 2100) box tensor as NCHW (1, 1, 4, 2100) from 8-channel blocks: the row is
    vectorized in pieces (one 2100-lane vector kept LLVM busy for minutes), odd widths included."""
    x = np.random.default_rng(5).standard_normal((1, 1, 4, w)).astype("float32")
    xb = np.concatenate([x, np.full((1, 7, 4, w), 9.0, np.float32)], 1)
    func = layout.nchwc_to_nchw(x.shape, 8, padded=8)
    assert "T.vectorized(2100)" not in func.script() and "T.vectorized(2101)" not in func.script()
    np.testing.assert_array_equal(_run(func, [layout.pack_nchwc(xb, 8)], x.shape), x)


@pytest.mark.parametrize(
    "c, bn, h, w, groups, dtype",
    [
        (144, 16, 7, 9, 3, "uint8"),  # ShuffleNet's shuffle, 63 pixels: 15 vectors of 4 + 3
        (112, 16, 4, 4, 2, "int8"),
        (48, 16, 3, 5, 3, "float32"),  # one pixel per 64-byte vector
        (64, 8, 5, 5, 2, "uint8"),
    ],
)
def test_shuffle_channels_nchwc(c, bn, h, w, groups, dtype):
    """The channel shuffle with the permutation built into vector shuffles moves every channel
    where the gather does; a permutation mixing too many blocks per output block has no such form."""
    perm = np.arange(c).reshape(groups, -1).T.reshape(-1)
    perm[:2] = perm[1::-1]  # not only a plain shuffle
    x = np.random.default_rng(c).integers(-100, 100, (1, c // bn, h, w, bn)).astype(dtype)
    func = layout.shuffle_channels_nchwc((1, c, h, w), bn, perm, dtype)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
    y = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), y)
    ref = layout.pack_nchwc(layout.unpack_nchwc(x)[:, perm], bn)
    np.testing.assert_array_equal(y.numpy(), ref)
    spread = np.arange(256).reshape(16, 16).T.reshape(-1)  # each block reads all 16 blocks
    assert layout.shuffle_channels_nchwc((1, 256, 2, 2), 16, spread) is None


@pytest.mark.parametrize(
    "chans, blocks, bn, h, w, dtype",
    [
        ((8, 24), (8, 16), 16, 16, 16, "uint8"),  # tiny_cnn's int8 branches
        ((8, 24), (8, 16), 16, 5, 7, "int8"),  # 35 pixels: 8 vectors of 4 + 3
        ((3, 5, 20), (4, 8, 16), 16, 3, 3, "float32"),  # one pixel per vector, zero lanes
        ((12, 12), (16, 16), 8, 4, 5, "uint8"),  # output blocks smaller than the inputs'
        ((4, 1, 1), (4, 1, 1), 6, 13, 13, "float32"),  # YOLOX's head: box, objectness, class
    ],
)
def test_concat_shuffle_nchwc(chans, blocks, bn, h, w, dtype):
    """The concat as vector shuffles equals the logical concat (the inputs' padding channels hold
    garbage, the output's are 0) and the gather form; too many sources per block: no such form."""
    rng = np.random.default_rng(sum(chans))
    parts, xs = [], []
    for c, b in zip(chans, blocks):
        x = rng.integers(1, 100, (1, c, h, w)).astype(dtype)
        garbage = np.full((1, -(-c // b) * b - c, h, w), 77, dtype)
        parts.append(x)
        xs.append(layout.pack_nchwc(np.concatenate([x, garbage], 1), b))
    total = sum(chans)
    padded = -(-total // bn) * bn
    ref = layout.pack_nchwc(
        np.concatenate([*parts, np.zeros((1, padded - total, h, w), dtype)], 1), bn
    )
    shapes = [x.shape for x in xs]
    for func in (
        layout.concat_shuffle_nchwc(shapes, chans, bn, padded, dtype),
        layout.concat_nchwc(shapes, chans, bn, padded, dtype),
    ):
        lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
        y = tvm.runtime.tensor(np.ones(ref.shape, dtype))
        lib["main"](*[tvm.runtime.tensor(x) for x in xs], y)
        np.testing.assert_array_equal(y.numpy(), ref)
    many = [(1, 1, 2, 2, 1)] * 16  # a 16-lane block from 16 one-channel inputs
    assert layout.concat_shuffle_nchwc(many, [1] * 16, 16, 16) is None


@pytest.mark.parametrize("rows, n", [(40, 6625), (3, 17), (1, 10), (8, 16), (2, 1)])
def test_softmax_rows(rows, n):
    """The vector softmax (fast_exp polynomial) equals numpy's float64 softmax within float32
    rounding, tails and single elements included; rows stay normalized; large logits do not
    overflow."""
    from mcopt.targets.cpu.kernels.softmax import softmax_rows

    x = (np.random.default_rng(n).standard_normal((rows, n)) * 8).astype(np.float32)
    x[0, 0] = 80.0
    lib = tvm.compile(tvm.IRModule({"main": softmax_rows(rows, n)}), target=TARGET)
    y = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), y)
    e = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    ref = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(y.numpy(), ref, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(y.numpy().sum(1), 1.0, rtol=1e-5)


def test_relax_integration():
    """The emit_* helpers build a module that tvm.compile's default pipeline keeps as scheduled."""
    from tvm import relax

    from mcopt.targets.cpu.kernels.relax_ops import (
        OPAQUE,
        emit_conv2d,
        emit_dense,
        emit_depthwise_conv2d,
        emit_from_blocked,
        emit_to_blocked,
    )

    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((16, 8, 3, 3)) / 8).astype("float32")
    b1 = rng.standard_normal(16).astype("float32")
    wd = rng.standard_normal((16, 1, 3, 3)).astype("float32")
    w2 = (rng.standard_normal((16, 16, 1, 1)) / 4).astype("float32")
    wf = rng.standard_normal((10, 16 * 6 * 6)).astype("float32")
    bf = rng.standard_normal(10).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xb = emit_to_blocked(bb, x, 8)
            y = emit_conv2d(
                bb, xb, w1, b1, padding=1, activation="relu", target=TARGET, tunable=False
            )
            y = emit_depthwise_conv2d(bb, y, wd, None, padding=1, target=TARGET)
            y = emit_conv2d(
                bb, y, w2, None, residual=y, activation="relu", target=TARGET, tunable=False
            )
            z = bb.emit(relax.op.reshape(emit_from_blocked(bb, y), (1, 16 * 6 * 6)))
            gv = bb.emit_output(emit_dense(bb, z, wf, bf, target=TARGET))
        bb.emit_func_output(gv)
    mod = bb.get()
    kernels = [f for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 6
    assert all(
        int(f.attrs["op_pattern"]) == OPAQUE and f.attrs["tirx.is_scheduled"] for f in kernels
    )
    ex = tvm.compile(mod, target=TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xi = rng.standard_normal((1, 8, 6, 6)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(xi)).numpy()

    h = np.maximum(_conv_ref(xi, w1, b1, 1, (1, 1, 1, 1)), 0)
    h = _conv_ref(h, wd, None, 1, (1, 1, 1, 1), groups=16)
    h = np.maximum(_conv_ref(h, w2, None, 1, (0, 0, 0, 0)) + h, 0)
    ref = h.reshape(1, -1) @ wf.T.astype(np.float64) + bf
    assert _rel_err(got, ref) <= RTOL


def test_conv_is_emitted_as_a_tunable_template():
    """By default emit_conv2d emits the unscheduled conv2d_nchwc template (a tuning task);
    the template schedule pass gives it the analytic schedule, with the same numbers."""
    from tvm import relax

    from mcopt.targets.cpu.kernels.relax_ops import emit_conv2d, emit_from_blocked, emit_to_blocked
    from mcopt.targets.tune.space import template_of, template_schedule_pass

    rng = np.random.default_rng(6)
    w = (rng.standard_normal((16, 8, 3, 3)) / 8).astype("float32")
    mods = {}
    for tunable in (True, False):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((1, 8, 7, 7), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                y = emit_conv2d(
                    bb, emit_to_blocked(bb, x, 8), w, None, padding=1, target=TARGET,
                    tunable=tunable,
                )  # fmt: skip
                gv = bb.emit_output(emit_from_blocked(bb, y))
            bb.emit_func_output(gv)
        mods[tunable] = bb.get()
    conv = [f for _, f in mods[True].functions.items() if template_of(f) == "conv2d_nchwc"]
    assert len(conv) == 1 and "tirx.is_scheduled" not in conv[0].attrs
    with tvm.target.Target(TARGET):
        scheduled = template_schedule_pass()(mods[True])
    conv = [f for _, f in scheduled.functions.items() if template_of(f) == "conv2d_nchwc"]
    assert conv[0].attrs["tirx.is_scheduled"]
    xi = rng.standard_normal((1, 8, 7, 7)).astype("float32")
    outs = []
    for mod in (scheduled, mods[False]):
        vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(xi)).numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
