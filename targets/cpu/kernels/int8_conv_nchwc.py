"""Blocked int8 conv2d: u8/s8 ``NCHW[ib]c`` in, ``NCHW[L]c`` out, the whole tail fused.

The int8 counterpart of the fp32 template (:mod:`.conv2d`), for int8 graphs planned end to end
(activations stay blocked 8-bit tensors from one layer to the next; no NCHW round trip, no int32
intermediate in memory)::

    conv[n, ocb, y, x, ob] = sum_{icb, kh, kw, icq, k} xq[n, icb, y*sh + kh*dh, x*sw + kw*dw, 4*icq + k]
                                                     * kernel[ocb, icb*ib/4 + icq, kh, kw, ob, k]
    out[n, ocb, y, x, ob]  = QEpilogue(conv + bias_eff[ocb, ob], mult[ocb, ob], residual[...])

- ``xq`` is the input itself when the conv has no padding and the input needs no offset, else a
  padded copy (value ``x_zp'``, the real zero) in the same blocked layout; inputs whose block is
  not a multiple of 4 (the 3-channel image) are repacked in blocks of 4.
- weights packed ``[OCp/L, ICp/4, KH, KW, L, 4]`` (:func:`~.int8_conv.pack_int8_conv_weight`);
  ``bias_eff = bias_q - x_zp' * sum(w)`` (:func:`~.int8_conv.conv_bias_eff`) so padding with the
  zero point needs no correction.
- schedule: ``parallel(n, oc_outer, oh)`` / ``ow_outer`` / reduction / ``oc_inner x ow_inner``
  (register tile, unrolled) / the ``L x 4`` dot product tensorized (VNNI ``vpdpbusd``, AVX2
  ``vpmaddubsw``, AArch64 ``sdot``: :mod:`.int8_intrin`); the epilogue runs on the register tile
  (``reverse_compute_at``). A 1x1 stride-1 conv runs over the flattened plane ``H*W`` (the
  lowering calls it on the blocked tensors, its buffers views of them:
  :func:`.relax_ops.view_params`), so its tile need not divide the width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcopt.ops.quant import qrange
from mcopt.targets.cpu.kernels.conv2d import _pads, _pair, conv_out_size
from mcopt.targets.cpu.kernels.int8_conv import a_dtype_of, zero_shift
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue
from mcopt.targets.cpu.kernels.int8_pointwise_sdot import (
    int8_conv_sdot_rows,
    int8_pointwise_sdot,
    sdot_pointwise_applies,
    sdot_rows_applies,
)
from mcopt.targets.cpu.kernels.threads import parallel, vector_init, vectorize_divisor


@dataclass(frozen=True)
class Int8NCHWcParams:
    """ISA of the dot-product micro-kernel (None: plain vectorized code), output lanes ``L``,
    register tile ``reg_n`` columns x ``reg_c`` channel blocks."""

    isa: str | None
    lanes: int
    reg_n: int
    reg_c: int


def choose_params(
    plane: int, occ: int, isa: str | None, lanes: int, rows: int, cores: int = 1
) -> Int8NCHWcParams:
    """Register tile: ``reg_n * reg_c`` int32 accumulators, at most 24 with 32 vector registers
    (AVX-512, SVE/NEON) and 10 with 16 (AVX2); ``reg_n`` divides ``plane`` (the output width, or
    the flattened plane of a 1x1 conv) so no tile needs a predicate; ``reg_c`` divides the output
    blocks and leaves every core at least two tasks."""
    vregs = 32 if isa in ("vnni16", "avx512", "sdot") else 16
    budget = 24 if vregs == 32 else 10
    best = (-1.0, 1, 1)
    for rc in (4, 3, 2, 1):
        if occ % rc or (rc > 1 and (occ // rc) * rows < 2 * cores):
            continue
        for rn in range(1, min(plane, 16) + 1):
            if plane % rn or rn * rc > budget:
                continue
            # accumulators reused per loaded vector: rn*rc FMAs per (rn + rc) loads
            score = rn * rc / (rn + rc) + 0.01 * rn
            if score > best[0]:
                best = (score, rn, rc)
    return Int8NCHWcParams(isa, lanes, best[1], best[2])


def int8_conv2d_nchwc(
    in_shape: Sequence[int],
    weight_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    *,
    in_dtype: str = "uint8",
    x_zero_point: int = 0,
    epilogue: QEpilogue,
    params: Int8NCHWcParams,
    window: bool = False,
    group_window: tuple[int, int, int] | None = None,
    cores: int = 1,
    in_quant: tuple[float, int] | None = None,
    pool: tuple[int, int] = (1, 1),
    pool_acc: bool = False,
) -> tuple[Any, bool]:
    """The scheduled PrimFunc and whether it runs on the flattened plane.

    ``window``: the dot product's 4 bytes are 4 consecutive kernel columns of one channel instead
    of 4 channels (the dot product reads them from a plain padded copy ``(N, C, H', W')`` of the
    input, 4 bytes at column ``x + 4 * group``; a copy holding, per pixel, the 4 pixels to its
    right took LeNet-5's first conv from 1.8 to 2.5 us): for inputs with few
    channels (LeNet's 1 and 6), whose channel blocks would leave most of each dot product on
    padding. The weight is then the logical ``(OCp, C, KH, KW)`` packed by
    :func:`pack_int8_window_weight`; needs ``dilations[1] == 1``.

    ``group_window = (W, OCg, ICg)``: a grouped conv (``OCg`` / ``ICg`` channels per group, e.g.
    ShuffleNet's 1x1 convs): output block ``c`` reduces over the ``W`` input blocks from
    ``min(c*L // OCg * ICg // ib, ICb - W)`` on, which hold its groups' input channels
    (:func:`grouped_window_weight` builds the matching ``(OCp, W*ib, KH, KW)`` weight, zero
    outside each channel's group); ``W*ib`` is ``ICg`` when the groups fill whole blocks.

    ``in_shape``: the blocked input ``(N, ICb, H, W, ib)``, or a plain ``(N, C, H, W)`` one
    (the image; only through the padded copy, which then also does the blocking); ``weight_shape``: ``(OCp, ICp, KH,
    KW)`` with ``OCp`` a multiple of ``L`` and ``ICp = ICb * ib``. Arguments: ``x``, ``kernel``
    ``(OCp/L, ICp4/4, KH, KW, L, 4)`` int8, ``bias (OCp/L, L)`` int32, ``mult (OCp/L, L)`` f32,
    ``residual`` (output shape, dtype ``epilogue.residual``) when there is one, ``out``. When
    flat, ``x`` is ``(N, ICb, H*W, ib)`` and the residual / output ``(N, OCb, H*W, L)``.

    The AArch64 ``sdot`` 1x1 convs (:func:`.int8_pointwise_sdot.sdot_pointwise_applies`, u8 or
    s8 input) are the hand-written :func:`.int8_pointwise_sdot.int8_pointwise_sdot` (own
    register tile; ``cores`` > 1: on the thread pool), always flat; the other stride-1 ``sdot``
    convs on blocks of 4 (3x3 and the like) the row form
    :func:`.int8_pointwise_sdot.int8_conv_sdot_rows` (never flat).

    ``in_quant = (scale, zero_point)``: the plain input is float32 and the padded copy quantizes
    it to ``in_dtype`` as the ``quantize`` op does (``round(x / scale) + zero_point``, clamped):
    the image's quantize runs inside the first conv instead of as a pass of its own.

    ``pool = (PH, PW)``: the max pool of that kernel and stride (floor mode, no padding) that reads
    the output, fused: the kernel computes the conv rows / columns the pool reads, ``PH`` rows of
    the register tiles at a time (a small buffer per thread), and writes the pooled ``(N, OCb,
    OH // PH, OW // PW, L)``, never the conv's output (the max runs on the epilogue's results, so
    any epilogue; not with a residual, the flattened plane or the ``sdot`` forms). ``pool_acc``
    (the caller checked that the epilogue is monotone, :func:`.int8_stem_vnni.monotone`, and
    every multiplier >= 0): the max runs on the accumulators and the epilogue on the pooled ones
    only — ``epi(max(acc))`` is ``max(epi(acc))`` for a non-decreasing ``epi`` — a quarter of the
    epilogues under a 2x2 pool."""
    from tvm import s_tir, te, tirx

    pooled = tuple(pool) != (1, 1)
    if pooled and (epilogue.residual is not None or params.isa == "sdot"):
        raise ValueError("a fused pool: not with a residual or the sdot forms")
    plain = len(in_shape) == 4  # an NCHW input (the image): read by the padded copy directly
    if in_quant is not None and not plain:
        raise ValueError("in_quant: only for a plain (NCHW) input")
    if plain:
        n, icb_n, h, w = (int(d) for d in in_shape)
        ib = 1
    else:
        n, icb_n, h, w, ib = (int(d) for d in in_shape)
    ocp, icp, kh, kw = (int(d) for d in weight_shape)
    if window and (icp > icb_n * ib or _pair(tuple(dilations))[1] != 1):
        raise ValueError(f"window form: {icp} channels of {icb_n} x {ib}, dilations {dilations}")
    if group_window is not None and (window or icp != group_window[0] * ib or ib % 4):
        raise ValueError(f"group window {group_window}: weight of {icp} channels, blocks of {ib}")
    if not window and group_window is None and icp != icb_n * ib:
        raise ValueError(f"weight has {icp} input channels, the input {icb_n} x {ib}")
    sh, sw = _pair(tuple(strides))
    dh, dw = _pair(tuple(dilations))
    pt, pl, pb, pr = _pads(tuple(pads))
    if (
        not plain
        and not window
        and sdot_pointwise_applies(
            params.isa, ib, (kh, kw), (sh, sw), (pt, pl, pb, pr), h * w, group_window is not None
        )
    ):
        if ocp % params.lanes or icp != icb_n * ib:
            raise ValueError(f"weight {weight_shape} for input {in_shape}")
        func = int8_pointwise_sdot(
            n, icb_n, h * w, ocp // params.lanes, in_dtype=in_dtype, epilogue=epilogue,
            cores=cores,
        )  # fmt: skip
        return func, True
    oh = conv_out_size(h, kh, sh, pt, pb, dh)
    ow = conv_out_size(w, kw, sw, pl, pr, dw)
    if pooled:  # only the rows and columns the pool reads
        oh, ow = oh // pool[0] * pool[0], ow // pool[1] * pool[1]
        if not oh or not ow:
            raise ValueError(f"pool {pool} of an output smaller than it")
    if (
        not plain
        and not window
        and in_quant is None
        and params.lanes == 4
        and icp == icb_n * ib
        and ((kh, kw) != (1, 1) or any((pt, pl, pb, pr)))
        and sdot_rows_applies(params.isa, ib, (sh, sw), (dh, dw), ow, group_window is not None)
    ):
        shift = zero_shift(params.isa, in_dtype)
        func = int8_conv_sdot_rows(
            n, icb_n, (h, w), ocp // 4, (kh, kw), (pt, pl, pb, pr), in_dtype=in_dtype,
            pad_value=x_zero_point + shift, shift=shift, epilogue=epilogue, cores=cores,
        )  # fmt: skip
        return func, False
    lanes = params.lanes
    if ocp % (lanes * params.reg_c):
        raise ValueError(f"{ocp} output channels do not divide into {params.reg_c} x {lanes}")
    occ = ocp // lanes
    ic_all = icb_n * ib if group_window is not None else icp  # the input's channels

    def gbase(c: Any) -> Any:
        """The first input block output block ``c`` reduces over."""
        if group_window is None:
            return 0
        wb, ocg, icg = group_window
        return tirx.min(c * lanes // ocg * icg // ib, icb_n - wb)

    shift = zero_shift(params.isa, in_dtype)
    a_dtype = a_dtype_of(params.isa, in_dtype)
    pad_val = x_zero_point + shift
    flat = (
        kh == kw == sh == sw == 1 and not any((pt, pl, pb, pr)) and ib % 4 == 0 and not shift
    ) and not (window or pooled)
    direct = (
        flat
        or not window
        and (not any((pt, pl, pb, pr)) and ib % 4 == 0 and not shift and ow % params.reg_n == 0)
    )

    kshape = (occ, icp, kh, window_groups(kw)) if window else (occ, -(-icp // 4), kh, kw)
    kernel_t = te.placeholder((*kshape, lanes, 4), "int8", name="kernel")
    bias = te.placeholder((occ, lanes), "int32", name="bias")
    mult = te.placeholder((occ, lanes), "float32", name="mult")
    if flat:
        x = te.placeholder((n, icb_n, h * w, ib), in_dtype, name="x")
        q4 = ib // 4
        ricb = te.reduce_axis((0, icp // ib), "icb")
        ricq = te.reduce_axis((0, q4), "icq")
        rk = te.reduce_axis((0, 4), "k")
        conv = te.compute(
            (n, occ, h * w, lanes),
            lambda b, c, q, ob: te.sum(
                x[b, gbase(c) + ricb, q, ricq * 4 + rk].astype("int32")
                * kernel_t[c, ricb * q4 + ricq, 0, 0, ob, rk].astype("int32"),
                axis=[ricb, ricq, rk],
            ),
            name="conv",
        )
        out_shape: tuple[int, ...] = (n, occ, h * w, lanes)
    else:
        x_dtype = "float32" if in_quant is not None else in_dtype
        x = te.placeholder(tuple(int(d) for d in in_shape), x_dtype, name="x")

        def xread(b: Any, c: Any, y: Any, xx: Any) -> Any:
            if in_quant is not None:  # the quantize op's expression (lower_quant._quantize)
                lo, hi = qrange(in_dtype)
                q = tirx.round(x[b, c, y, xx] / tirx.const(in_quant[0], "float32"))
                q = q + tirx.const(float(in_quant[1]), "float32")
                q = te.max(te.min(q, tirx.const(hi, "float32")), tirx.const(lo, "float32"))
                return q.astype(in_dtype)
            return x[b, c, y, xx] if plain else x[b, c // ib, y, xx, c % ib]

        kw_loop, kw_step = kw, dw
        if window:  # the plain padded image: window (x, t) is its column x + t
            kw_loop, kw_step = window_groups(kw), 4
            owp = -(-ow // params.reg_n) * params.reg_n
            wp_ = (owp - 1) * sw + 4 * kw_loop
            hp_ = h + pt + pb

            def win_fn(b, c, y, xx):
                iy, ix = y - pt, xx - pl
                inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
                val = xread(b, c, tirx.min(tirx.max(iy, 0), h - 1),
                            tirx.min(tirx.max(ix, 0), w - 1))  # fmt: skip
                if shift:
                    val = (val.astype("int32") + shift).astype(a_dtype)
                return tirx.if_then_else(inside, val, tirx.const(pad_val, a_dtype))

            src = te.compute((n, icp, hp_, wp_), win_fn, name="data_pad")
            q4 = 1
        elif direct:
            src, pb_, q4 = x, ib, ib // 4
        else:
            pb_ = ib if ib % 4 == 0 else 4
            owp = -(-ow // params.reg_n) * params.reg_n
            wp_ = max(w + pl + pr, (owp - 1) * sw + (kw - 1) * dw + 1)
            hp_ = h + pt + pb
            cpad = -(-ic_all // pb_) * pb_

            def pad_fn(b, cb, y, xx, k):
                c = cb * pb_ + k
                inside = tirx.all(y >= pt, y < h + pt, xx >= pl, xx < w + pl, c < ic_all)
                cc = tirx.min(c, ic_all - 1)
                val = xread(b, cc, tirx.min(tirx.max(y - pt, 0), h - 1),
                            tirx.min(tirx.max(xx - pl, 0), w - 1))  # fmt: skip
                if shift:
                    val = (val.astype("int32") + shift).astype(a_dtype)
                return tirx.if_then_else(inside, val, tirx.const(pad_val, a_dtype))

            src = te.compute((n, cpad // pb_, hp_, wp_, pb_), pad_fn, name="data_pad")
            q4 = pb_ // 4
        red_blocks = group_window[0] if group_window is not None else int(src.shape[1])
        ricb = te.reduce_axis((0, red_blocks), "icb")
        rkh = te.reduce_axis((0, kh), "kh")
        rkw = te.reduce_axis((0, kw_loop), "kw")
        ricq = te.reduce_axis((0, q4), "icq")
        rk = te.reduce_axis((0, 4), "k")
        owp = ow if direct else -(-ow // params.reg_n) * params.reg_n

        def src_at(b: Any, c: Any, y: Any, xx: Any) -> Any:
            if window:
                return src[b, ricb, y * sh + rkh * dh, xx * sw + rkw * 4 + rk]
            col = xx * sw + rkw * kw_step
            return src[b, gbase(c) + ricb, y * sh + rkh * dh, col, ricq * 4 + rk]

        conv = te.compute(
            (n, occ, oh, owp, lanes),
            lambda b, c, y, xx, ob: te.sum(
                src_at(b, c, y, xx).astype("int32")
                * kernel_t[c, ricb * q4 + ricq, rkh, rkw, ob, rk].astype("int32"),
                axis=[ricb, rkh, rkw, ricq, rk],
            ),
            name="conv",
        )
        out_shape = (n, occ, oh, ow, lanes)
    tensors = [x, kernel_t, bias, mult]
    res = None
    if epilogue.residual is not None:
        res = te.placeholder(out_shape, epilogue.residual, name="residual")
        tensors.append(res)

    def out_fn(*idx: Any) -> Any:
        c, ob = idx[1], idx[-1]
        acc = conv[idx] + bias[c, ob]
        return epilogue.apply_te(acc, mult[c, ob], None if res is None else res[idx])

    pool_acc = pool_acc and pooled
    if pooled:
        import functools

        ph, pw = pool

        def taps(t: Any, b: Any, c: Any, y: Any, xx: Any, ob: Any) -> Any:
            vs = [t[b, c, y * ph + i, xx * pw + j, ob] for i in range(ph) for j in range(pw)]
            return functools.reduce(tirx.max, vs)

    if pool_acc:  # the epilogue on the pooled accumulators only

        def pool_fn(b: Any, c: Any, y: Any, xx: Any, ob: Any) -> Any:
            acc = taps(conv, b, c, y, xx, ob) + bias[c, ob]
            return epilogue.apply_te(acc, mult[c, ob], None)

        tensors.append(te.compute((n, occ, oh // ph, ow // pw, lanes), pool_fn, name="pool"))
    elif pooled:
        out = te.compute(out_shape, out_fn, name="out")
        tensors.append(
            te.compute(
                (n, occ, oh // ph, ow // pw, lanes),
                lambda *i: taps(out, *i),
                name="pool",
            )
        )
    else:
        tensors.append(te.compute(out_shape, out_fn, name="out"))
    sch = s_tir.Schedule(te.create_prim_func(tensors))
    _schedule(sch, params, flat, not direct and not flat, pool[0] if pooled else 0, pool_acc)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True), flat


def _schedule(
    sch: Any, p: Int8NCHWcParams, flat: bool, has_pad: bool, pool_h: int = 0, pool_acc: bool = False
) -> None:
    from mcopt.targets.cpu.kernels.int8_intrin import intrin_name, macs_per_op

    per_op = macs_per_op(p.isa)
    if has_pad:
        loops = sch.get_loops(sch.get_sblock("data_pad"))
        parallel(sch, sch.fuse(*loops[:3]), per_op)
        # the window form's last loop is a whole row (basic-pitch's 44,100-sample signal)
        vectorize_divisor(sch, loops[-1])
    blk = sch.get_sblock("conv")
    loops = sch.get_loops(blk)
    if flat:
        b, c, q, ob, *red = loops
        c_o, c_i = sch.split(c, [None, p.reg_c])
        tiles = int(sch.get(q).extent) // p.reg_n
        chunk = max(d for d in range(1, tiles + 1) if tiles % d == 0 and d * p.reg_n <= 256)
        x_oo, x_o, x_i = sch.split(q, [None, chunk, p.reg_n])
        outer = [b, c_o, x_oo, x_o]
        par = [b, c_o, x_oo]
    else:
        b, c, y, xx, ob, *red = loops
        c_o, c_i = sch.split(c, [None, p.reg_c])
        x_o, x_i = sch.split(xx, [None, p.reg_n])
        if pool_h:  # the pool's rows of tiles, then the pooled row
            y_o, y_i = sch.split(y, [None, pool_h])
            outer = [b, c_o, y_o, y_i, x_o]
            par = [b, c_o, y_o]
        else:
            outer = [b, c_o, y, x_o]
            par = [b, c_o, y]
    r_k = red[-1]
    if p.isa is not None:
        sch.reorder(*outer, *red[:-1], c_i, x_i, ob, r_k)
    else:  # exact generic code: LLVM widens to int32
        sch.reorder(*outer, *red[:-1], c_i, x_i, r_k, ob)
    fused = sch.fuse(*par)
    parallel(sch, fused, per_op)
    if not pool_acc:
        out = sch.get_sblock("out")
        sch.reverse_compute_at(out, x_o)
        sch.vectorize(sch.get_loops(out)[-1])
    if pool_h:
        pool = sch.get_sblock("pool")
        sch.reverse_compute_at(pool, fused)
        sch.vectorize(sch.get_loops(pool)[-1])
    if p.isa is None:
        sch.unroll(r_k)
        sch.vectorize(ob)
    sch.unroll(c_i)
    sch.unroll(x_i)
    vector_init(sch, blk, red[0], unroll=2)
    if p.isa is not None:
        sch.tensorize(ob, intrin_name(p.isa))


def grouped_window_weight(
    w: np.ndarray, groups: int, in_blocks: int, ib: int, lanes: int
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The dense weight of a grouped conv for :func:`int8_conv2d_nchwc`'s ``group_window``: ``w``
    ``(OC, ICg, KH, KW)`` -> ``(OCp, W*ib, KH, KW)`` where row ``o`` holds its group's filter at
    the group's channels relative to its block's window start (zeros elsewhere), and ``(W, OCg,
    ICg)``."""
    oc, icg, kh, kw = w.shape
    ocg = oc // groups
    ocp = -(-oc // lanes) * lanes
    occ = ocp // lanes
    need = 1
    for c in range(occ):
        g0, g1 = c * lanes // ocg, min(((c + 1) * lanes - 1) // ocg, groups - 1)
        need = max(need, -(-((g1 + 1) * icg) // ib) - g0 * icg // ib)
    wb = min(need, in_blocks)
    dense = np.zeros((ocp, wb * ib, kh, kw), w.dtype)
    for o in range(oc):
        c, g = o // lanes, o // ocg
        base = min(c * lanes // ocg * icg // ib, in_blocks - wb) * ib
        lo = g * icg - base
        dense[o, lo : lo + icg] = w[o]
    return dense, (wb, ocg, icg)


def window_groups(kw: int) -> int:
    """Groups of 4 kernel columns of the ``window`` form (``ceil(KW / 4)``)."""
    return -(-kw // 4)


def pack_int8_window_weight(w: np.ndarray, lanes: int) -> np.ndarray:
    """``(OC, C, KH, KW) int8 -> (OCp/L, C, KH, G, L, 4)`` with ``G = ceil(KW/4)``: the weights of
    the ``window`` form, 4 consecutive kernel columns per dot product (zero-padded)."""
    oc, c, kh, kw = w.shape
    g = window_groups(kw)
    ocp = -(-oc // lanes) * lanes
    wp = np.zeros((ocp, c, kh, 4 * g), np.int8)
    wp[:oc, :, :, :kw] = w
    w6 = wp.reshape(ocp // lanes, lanes, c, kh, g, 4)
    return np.ascontiguousarray(w6.transpose(0, 2, 3, 4, 1, 5))


__all__ = [
    "Int8NCHWcParams",
    "choose_params",
    "int8_conv2d_nchwc",
    "grouped_window_weight",
    "pack_int8_window_weight",
    "window_groups",
]
