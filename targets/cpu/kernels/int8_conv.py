"""int8 x int8 -> int32 conv2d with the requantize / dequantize epilogue fused, tensorized with the
CPU's dot-product instruction (VNNI ``vpdpbusd``, AVX2 ``vpmaddubsw``, AArch64 ``sdot``).

Computation (logical NCHW in, NCHW out; ``OCp``/``ICp`` = channels rounded up to the blocks)::

    data_pad[n, icb, y, x, k] = offset(x_q[n, 4*icb + k, y - pt, x - pl])   (x_zp where padded)
    conv[n, ocb, oh, ow, ob] = sum_{icb, kh, kw, k} data_pad[n, icb, oh*sh + kh*dh, ow*sw + kw*dw, k]
                                                   * kernel[ocb, icb, kh, kw, ob, k]
    out[n, c, oh, ow] = epilogue(conv[n, c // lanes, oh, ow, c % lanes] + bias_eff[c], mult[c])

- ``offset`` maps the activations to the dtype the instruction wants (u8 for x86: int8 inputs
  get +128; s8 for ``sdot``: uint8 inputs get -128); the zero point moves with it, and
  ``bias_eff[c] = bias_q[c] - x_zp' * sum(w[c])`` (computed in numpy at compile time) so that
  padding with ``x_zp'`` (the real zero) needs no correction inside the loop.
- weights pre-packed in numpy: ``kernel[OCp/lanes, ICp/4, KH, KW, lanes, 4]`` (the layout of the
  tensorized ``lanes x 4`` micro-kernel, see :mod:`.int8_intrin`).
- schedule (as the fp32 template, :mod:`.conv2d`): ``parallel(n, oc_outer, oh)`` / ``ow_outer`` /
  ``icb, kh, kw`` / ``oc_inner`` x ``ow_inner`` (register tile, unrolled) / tensorized
  ``lanes x 4`` dot product. The epilogue (``float32(acc) * mult``, ``rint`` + zero point and
  saturation for u8/i8 output, or a clamp for float output) is a parallel, vectorized pass that
  also converts back to NCHW.
- groups > 1 (depthwise): no dot-product form (one input channel per output); a direct int32
  loop nest vectorized over the output width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcopt.targets.cpu.kernels.conv2d import _pads, _pair, conv_out_size
from mcopt.targets.cpu.kernels.threads import parallel


@dataclass(frozen=True)
class Int8ConvParams:
    """ISA of the micro-kernel (None: plain vectorized), lanes, and register tile."""

    isa: str | None
    lanes: int
    reg_n: int
    reg_c: int


def choose_int8_conv_params(
    oc: int, ow: int, oh: int, n: int, isa: str | None, cores: int = 1
) -> Int8ConvParams:
    """Register tile for the int8 template: ``reg_n * reg_c`` int32 accumulators, at most 8 on
    16-register ISAs (AVX2: the broadcast, the ``vpmaddubsw`` temporary and the weight vector need
    registers too) and 20 on 32-register ones; ``reg_c`` divides the output-channel blocks."""
    from mcopt.targets.cpu.kernels.int8_intrin import ISAS
    from mcopt.targets.cpu.kernels.params import choose_register_tile

    lanes = ISAS[isa][0] if isa else 8
    occ = -(-oc // lanes)
    vregs = 32 if isa in ("vnni16", "avx512", "sdot") else 12
    max_rc = 4
    while max_rc > 1 and n * (occ // min(max_rc, occ)) * oh < 4 * cores:
        max_rc //= 2
    reg_n, reg_c = choose_register_tile(ow, occ, vregs, max_rc)
    return Int8ConvParams(isa, lanes, reg_n, reg_c)


def a_dtype_of(isa: str | None, in_dtype: str) -> str:
    """Activation dtype inside the kernel: s8 for ``sdot``, u8 for x86 (and the generic path)."""
    if isa == "sdot":
        return "int8"
    return "uint8" if isa else in_dtype


def zero_shift(isa: str | None, in_dtype: str) -> int:
    """What ``offset`` adds to the activations (and their zero point)."""
    a = a_dtype_of(isa, in_dtype)
    if a == in_dtype:
        return 0
    return 128 if a == "uint8" else -128


def quantize_u8_te(v: Any, scale: float, zero_point: int) -> Any:
    """The ``quantize`` op's u8 code of the float32 expression ``v`` (scalar or vector):
    ``clamp(round(v / scale) + zero_point, 0, 255)``, converted through int32 (a direct
    float -> u8 conversion does not vectorize on x86)."""
    from tvm import tirx

    def f(c: float) -> Any:
        return tirx.const(float(c), "float32")

    q = tirx.round(v / f(scale)) + f(zero_point)
    return tirx.max(tirx.min(q, f(255)), f(0)).astype("int32").astype("uint8")


def pack_int8_conv_weight(w: np.ndarray, lanes: int) -> np.ndarray:
    """``(OC, IC, KH, KW) int8 -> (OCp/lanes, ICp/4, KH, KW, lanes, 4)`` (zero-padded)."""
    oc, ic, kh, kw = w.shape
    ocp, icp = -(-oc // lanes) * lanes, -(-ic // 4) * 4
    wp = np.zeros((ocp, icp, kh, kw), np.int8)
    wp[:oc, :ic] = w
    w6 = wp.reshape(ocp // lanes, lanes, icp // 4, 4, kh, kw)
    return np.ascontiguousarray(w6.transpose(0, 2, 4, 5, 1, 3))


def epilogue_te(acc: Any, mult: Any, out_dtype: str, bounds: tuple[float, float], zp: int) -> Any:
    """``float32(acc) * mult`` then clamp (float out) or ``rint`` + zero point + saturate."""
    import tvm
    from tvm import tirx

    y = acc.astype("float32") * mult
    lo, hi = bounds
    if out_dtype != "float32":
        y = tirx.round(y) + tirx.const(float(zp), "float32")  # round: vectorizable nearbyint
    if math.isfinite(lo):
        y = tvm.te.max(y, tirx.const(lo, "float32"))
    if math.isfinite(hi):
        y = tvm.te.min(y, tirx.const(hi, "float32"))
    return y.astype(out_dtype)


def int8_conv2d(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    *,
    in_dtype: str = "uint8",
    x_zero_point: int = 0,
    out_dtype: str = "float32",
    out_zero_point: int = 0,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    params: Int8ConvParams,
    cores: int = 1,
) -> Any:
    """The scheduled PrimFunc ``(x (N,IC,H,W), kernel (packed), bias_eff (OCp,) i32,
    mult (OCp,) f32, out (N,OC,OH,OW))`` for groups == 1."""
    from tvm import s_tir, te, tirx

    from mcopt.targets.cpu.kernels.int8_intrin import intrin_name

    n, ic, h, w = (int(d) for d in data_shape)
    oc, _, kh, kw = (int(d) for d in weight_shape)
    sh, sw = _pair(tuple(strides))
    dh, dw = _pair(tuple(dilations))
    pt, pl, pb, pr = _pads(tuple(pads))
    oh = conv_out_size(h, kh, sh, pt, pb, dh)
    ow = conv_out_size(w, kw, sw, pl, pr, dw)
    lanes, reg_n = params.lanes, params.reg_n
    ocp, icp = -(-oc // lanes) * lanes, -(-ic // 4) * 4
    owp = -(-ow // reg_n) * reg_n
    wp_ = max(w + pl + pr, (owp - 1) * sw + (kw - 1) * dw + 1)
    hp_ = h + pt + pb
    a_dtype = a_dtype_of(params.isa, in_dtype)
    shift = zero_shift(params.isa, in_dtype)
    pad_val = x_zero_point + shift

    x = te.placeholder((n, ic, h, w), in_dtype, name="x")
    kernel = te.placeholder((ocp // lanes, icp // 4, kh, kw, lanes, 4), "int8", name="kernel")
    bias = te.placeholder((ocp,), "int32", name="bias")
    mult = te.placeholder((ocp,), "float32", name="mult")

    def pad_fn(b, cb, y, xx, k):
        c = cb * 4 + k
        inside = tirx.all(y >= pt, y < h + pt, xx >= pl, xx < w + pl, c < ic)
        val = x[b, tirx.min(c, ic - 1), y - pt, xx - pl]
        if shift:
            val = (val.astype("int32") + shift).astype(a_dtype)
        return tirx.if_then_else(inside, val, tirx.const(pad_val, a_dtype))

    dpad = te.compute((n, icp // 4, hp_, wp_, 4), pad_fn, name="data_pad")
    icb = te.reduce_axis((0, icp // 4), "icb")
    rkh = te.reduce_axis((0, kh), "kh")
    rkw = te.reduce_axis((0, kw), "kw")
    rk = te.reduce_axis((0, 4), "k")
    conv = te.compute(
        (n, ocp // lanes, oh, owp, lanes),
        lambda b, c, y, xx, ob: te.sum(
            dpad[b, icb, y * sh + rkh * dh, xx * sw + rkw * dw, rk].astype("int32")
            * kernel[c, icb, rkh, rkw, ob, rk].astype("int32"),
            axis=[icb, rkh, rkw, rk],
        ),
        name="conv",
    )
    out = te.compute(
        (n, oc, oh, ow),
        lambda b, c, y, xx: epilogue_te(
            conv[b, c // lanes, y, xx, c % lanes] + bias[c], mult[c], out_dtype, bounds,
            out_zero_point,
        ),
        name="out",
    )  # fmt: skip
    sch = s_tir.Schedule(te.create_prim_func([x, kernel, bias, mult, out]))
    # data_pad: parallel over (n, icb, y), vectorized over the 4 bytes
    pad_loops = sch.get_loops(sch.get_sblock("data_pad"))
    parallel(sch, sch.fuse(*pad_loops[:3]))
    sch.unroll(pad_loops[-1])
    blk = sch.get_sblock("conv")
    b, c, y, xx, ob, r_icb, r_kh, r_kw, r_k = sch.get_loops(blk)
    c_o, c_i = sch.split(c, [None, params.reg_c])
    x_o, x_i = sch.split(xx, [None, reg_n])
    if params.isa is not None:
        sch.reorder(b, c_o, y, x_o, r_icb, r_kh, r_kw, c_i, x_i, ob, r_k)
    else:  # exact generic code: LLVM widens to int32 (no saturating int16 step)
        sch.reorder(b, c_o, y, x_o, r_icb, r_kh, r_kw, c_i, x_i, r_k, ob)
    parallel(sch, sch.fuse(b, c_o, y))
    if params.isa is None:
        sch.unroll(r_k)
        sch.vectorize(ob)
    sch.unroll(c_i)
    sch.unroll(x_i)
    init = sch.decompose_reduction(blk, r_icb)
    sch.vectorize(sch.get_loops(init)[-1])
    if params.isa is not None:
        sch.tensorize(ob, intrin_name(params.isa))
    # epilogue: parallel over (n, c, y), vectorized over the width
    oloops = sch.get_loops(sch.get_sblock("out"))
    parallel(sch, sch.fuse(*oloops[:3]))
    if ow >= 8:
        _, xv = sch.split(oloops[-1], [None, 8])
        sch.vectorize(xv)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def int8_depthwise_conv2d(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    *,
    in_dtype: str = "uint8",
    x_zero_point: int = 0,
    out_dtype: str = "float32",
    out_zero_point: int = 0,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Any:
    """Depthwise (``groups == C``, multiplier 1) int8 conv: PrimFunc ``(x (N,C,H,W),
    kernel (C,KH,KW) i8, bias_eff (C,) i32, mult (C,) f32, out)``; int16 products accumulated in
    int32, vectorized over the output width (16 lanes)."""
    from tvm import s_tir, te, tirx

    n, c, h, w = (int(d) for d in data_shape)
    _, _, kh, kw = (int(d) for d in weight_shape)
    sh, sw = _pair(tuple(strides))
    dh, dw = _pair(tuple(dilations))
    pt, pl, pb, pr = _pads(tuple(pads))
    oh = conv_out_size(h, kh, sh, pt, pb, dh)
    ow = conv_out_size(w, kw, sw, pl, pr, dw)
    x = te.placeholder((n, c, h, w), in_dtype, name="x")
    kernel = te.placeholder((c, kh, kw), "int8", name="kernel")
    bias = te.placeholder((c,), "int32", name="bias")
    mult = te.placeholder((c,), "float32", name="mult")

    def pad_fn(b, ch, y, xx):
        inside = tirx.all(y >= pt, y < h + pt, xx >= pl, xx < w + pl)
        return tirx.if_then_else(
            inside, x[b, ch, y - pt, xx - pl].astype("int16"),
            tirx.const(x_zero_point, "int16"),
        )  # fmt: skip

    dpad = te.compute((n, c, h + pt + pb, w + pl + pr), pad_fn, name="data_pad")
    rkh = te.reduce_axis((0, kh), "kh")
    rkw = te.reduce_axis((0, kw), "kw")
    conv = te.compute(
        (n, c, oh, ow),
        lambda b, ch, y, xx: te.sum(
            (dpad[b, ch, y * sh + rkh * dh, xx * sw + rkw * dw]
             * kernel[ch, rkh, rkw].astype("int16")).astype("int32"),
            axis=[rkh, rkw],
        ),
        name="conv",
    )  # fmt: skip
    out = te.compute(
        (n, c, oh, ow),
        lambda b, ch, y, xx: epilogue_te(
            conv[b, ch, y, xx] + bias[ch], mult[ch], out_dtype, bounds, out_zero_point
        ),
        name="out",
    )
    sch = s_tir.Schedule(te.create_prim_func([x, kernel, bias, mult, out]))
    pl_ = sch.get_loops(sch.get_sblock("data_pad"))
    parallel(sch, sch.fuse(*pl_[:2]))
    blk = sch.get_sblock("conv")
    b, ch, y, xx, r_kh, r_kw = sch.get_loops(blk)
    vec = next((v for v in (16, 8, 4) if ow % v == 0), 0)
    parallel(sch, sch.fuse(b, ch))
    if vec:
        x_o, x_i = sch.split(xx, [None, vec])
        sch.reorder(y, x_o, r_kh, r_kw, x_i)
        sch.unroll(r_kw)
        sch.vectorize(x_i)
        init = sch.decompose_reduction(blk, r_kh)
        sch.vectorize(sch.get_loops(init)[-1])
    out_blk = sch.get_sblock("out")
    sch.reverse_compute_at(out_blk, sch.get_loops(blk)[0])
    if vec:
        _, xv = sch.split(sch.get_loops(out_blk)[-1], [None, vec])
        sch.vectorize(xv)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def conv_bias_eff(
    w: np.ndarray, bias: np.ndarray | None, x_zp_kernel: int, ocp: int, groups: int = 1
) -> np.ndarray:
    """``bias_q - x_zp' * sum(w[c])`` padded to ``ocp`` (int32; checked for overflow)."""
    oc = w.shape[0]
    wsum = w.reshape(oc, -1).astype(np.int64).sum(axis=1)
    b = np.zeros(ocp, np.int64)
    b[:oc] = (0 if bias is None else bias.astype(np.int64)) - int(x_zp_kernel) * wsum
    if np.abs(b).max(initial=0) > 2**31 - 1:
        raise OverflowError("the int32 bias correction overflows")
    return b.astype(np.int32)


__all__ = [
    "Int8ConvParams",
    "a_dtype_of",
    "choose_int8_conv_params",
    "conv_bias_eff",
    "int8_conv2d",
    "int8_depthwise_conv2d",
    "pack_int8_conv_weight",
    "zero_shift",
]
