"""int8 depthwise conv2d in the blocked NCHW[bn]c layout, the :class:`.QEpilogue` tail fused in.

Computation (``x (N, C/bn, H, W, bn)``, ``C`` padded to a multiple of ``bn``)::

    acc[n, cb, y, x, k] = sum_{kh, kw} int32(x_pad[n, cb, y*sh + kh*dh, x*sw + kw*dw, k])
                                       * int32(kernel[cb, kh, kw, k]) + bias[cb, k]
    out[n, cb, y, x, k] = epilogue.apply_te(acc, mult[cb, k], residual[n, cb, y, x, k])

``x_pad`` is ``x`` padded with ``x_zero_point``; ``bias`` is :func:`.int8_conv.conv_bias_eff`
(``bias_q - x_zp * sum(w[c])``), so padding with the zero point needs no correction. Every output
lane has its own weights (no broadcast, no reduction over channels), and the requantizing tail
(``cvtdq2ps``, ``mulps``, ``rndscaleps``, ``maxps``, ``minps``, ``cvttps2dq``, ``pmovdb``) costs
about as many vector instructions per output as the taps: the kernels below differ in how few
instructions the taps take.

**VNNI kernel** (``isa`` ``"vnni16"`` / ``"vnni8"``, ``bn`` = 16 / 8, no dilation): ``vpdpbusd``
adds four u8 x s8 products into each int32 lane, here up to four taps ``kw = 4g ..`` of one kernel
row of the lane's own channel. One unaligned load takes four input columns ``[t][k]`` (``4 * bn``
contiguous bytes of the blocked layout) and one byte permutation (``vpermb`` / ``vpermt2b``) turns
them into ``[k][t]``; the weights get the same permutation once per task. A 3x3 kernel is then
three loads, three permutations and three ``vpdpbusd`` per output vector instead of nine widening
multiply-adds. A three-tap group loads a junk column (weight zero) on its left, so that an
interior window never reads past the end of the row (a border column where that column would lie
outside the row puts it on the right). Hand-written TIR (:mod:`tvm.script.ir_builder`), every
decision static:

- tasks ``parallel(n, cb, row piece)``: the weight windows are set up once per task; the output
  rows are split into pieces only when ``n * cb`` is below ``4 * cores``.
- interior rows: a loop over :data:`ROW_STEP` rows at a time, the windows the rows share (stride
  1, 3x3: 6 of 12) loaded and permuted once; border rows (a kernel row above or below the image)
  are emitted one by one, their missing kernel rows not read but their ``x_zp * w`` added to the
  accumulator's start value.
- interior columns: a loop of ``reg_n`` unrolled columns with plain loads; border columns (a tap
  left or right of the image) are emitted one by one with masked loads (``vmovdqu8 {k}``, the
  padding lanes take ``x_zp``), which never touch memory outside the row.
- int8 inputs are flipped to u8 (``xor 0x80``), the accumulator starts at
  ``bias - 128 * sum(w)``.
- the epilogue runs on each column's accumulators straight from the registers: no int32
  intermediate in memory.

**Generic kernel** (any other ``isa``; dilation): a TE compute + schedule as the fp32 template
(:mod:`.depthwise`): ``parallel(n, cb, oh)`` / ``ow_outer`` / ``kh, kw`` (unrolled) / ``ow_inner``
(register tile, unrolled) / ``k`` (vectorized), the epilogue ``reverse_compute_at`` the tile.
LLVM turns ``int32(u8) * int32(s8)`` into ``vpmovzxbd`` + ``vpdpwssd`` (AVX-512 VNNI) or
``vpmaddwd`` + ``vpaddd``. Border: an out-of-range tap is an ``if_then_else`` (a conditional
load, else the zero point), no padded copy: a padded copy of the input was 11-54 % slower on
MobileNet-V2's depthwise layers (one znver5 thread). (A ``Select`` over a clamped address, as
:mod:`.depthwise` writes it, times the same, but TVM simplifies the clamp away under the select's
condition, so the load it keeps reads outside the buffer at the borders.)

Timings (one znver5 thread, u8 requantized output, vs the fp32 kernel with bias + relu6, best of
alternating runs; MobileNet-V2's 3x3 layers): 96 ch 112x112 s2 2.5x faster, 144 @ 56 1.3-1.6x,
192 @ 28 1.3-1.4x, 384 @ 14 1.2x, 960 @ 7 1.0x; the generic kernel 1.4x on the first, 0.7-0.85x
on the others. Two threads: 2.1x, 1.5x, 1.0-1.2x, 1.05-1.2x, 1.04x.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcopt.targets.cpu.kernels.conv2d import _pads, _pair, conv_out_size
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue
from mcopt.targets.cpu.kernels.threads import min_parallel_work, parallel

#: most output columns in the generic kernel's register tile (int32 accumulators)
MAX_REG_N = 16
#: output columns per iteration of the VNNI kernel's interior loop (no reuse between columns:
#: only the loop overhead depends on it; 4 and 8 timed the same)
VNNI_REG_N = 4
#: interior output rows per step of the VNNI kernel: the windows the rows share are loaded and
#: permuted once (stride 1, 3x3: 6 windows per column for 4 outputs instead of 12); 4 instead of
#: 1 was 10-25 % faster on MobileNet-V2's stride-1 layers (most at 7x7), 3 in between
ROW_STEP = 4
#: lanes of the VNNI kernels
VNNI_LANES = {"vnni16": 16, "vnni8": 8}


def choose_int8_depthwise_reg_n(ow: int, limit: int = MAX_REG_N) -> int:
    """The generic kernel's register tile over output columns: the largest divisor of ``ow`` up
    to ``limit``; when that is below 4 (a prime width) a tile of 8 (or ``limit``), the last one
    partial."""
    divs = [d for d in range(1, min(ow, limit) + 1) if ow % d == 0]
    reg_n = max(divs)
    if reg_n < 4 and ow > limit:
        reg_n = min(8, limit)
    return reg_n


def pack_int8_depthwise_weight(w: np.ndarray, bn: int, padded_c: int) -> np.ndarray:
    """``(C, 1, KH, KW) int8 -> (padded_c/bn, KH, KW, bn)``, channels ``C..padded_c`` zero."""
    c, one, kh, kw = w.shape
    if one != 1 or padded_c < c or padded_c % bn:
        raise ValueError(f"depthwise weight {w.shape} does not pack into {padded_c} / {bn}")
    wp = np.zeros((padded_c, kh, kw), np.int8)
    wp[:c] = w[:, 0]
    return np.ascontiguousarray(wp.reshape(padded_c // bn, bn, kh, kw).transpose(0, 2, 3, 1))


def int8_depthwise_nchwc(
    data_shape: Sequence[int],
    kernel_hw: tuple[int, int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    *,
    in_dtype: str = "uint8",
    x_zero_point: int = 0,
    epilogue: QEpilogue,
    cores: int = 1,
    isa: str | None = None,
    reg_n: int | None = None,
) -> Any:
    """The scheduled PrimFunc ``(x (N, Cb, H, W, bn) in_dtype, kernel (Cb, KH, KW, bn) i8,
    bias (Cb, bn) i32, mult (Cb, bn) f32, [residual (N, Cb, OH, OW, bn) epilogue.residual],
    out (N, Cb, OH, OW, bn) epilogue.out_dtype)`` (module docstring). ``data_shape`` is the
    blocked input shape, ``pads`` ``(top, left, bottom, right)`` (padding value
    ``x_zero_point``), ``kernel`` from :func:`pack_int8_depthwise_weight`, ``bias`` the
    zero-point-corrected :func:`.int8_conv.conv_bias_eff`. ``cores`` > 1: the outer loop runs on
    the thread pool (when the kernel does at least :func:`.threads.min_parallel_work` MACs).
    ``isa``: :func:`.int8_intrin.choose_isa` of the target; ``"vnni16"`` (``bn`` 16) or
    ``"vnni8"`` (``bn`` 8) select the VNNI kernel when there is no dilation, anything else the
    generic one. ``reg_n``: output columns per unrolled step (default: :data:`VNNI_REG_N` /
    :func:`choose_int8_depthwise_reg_n`)."""
    n, cb, h, w, bn = (int(d) for d in data_shape)
    kh_, kw_ = (int(d) for d in kernel_hw)
    sh, sw = _pair(tuple(strides))
    dh, dw = _pair(tuple(dilations))
    pads4 = _pads(tuple(pads))
    oh = conv_out_size(h, kh_, sh, pads4[0], pads4[2], dh)
    ow = conv_out_size(w, kw_, sw, pads4[1], pads4[3], dw)
    if oh < 1 or ow < 1:
        raise ValueError(f"empty output {oh}x{ow} for input {h}x{w}")
    if in_dtype not in ("uint8", "int8"):
        raise ValueError(f"in_dtype {in_dtype!r}: uint8 or int8")
    geo = _Geometry(n, cb, h, w, bn, kh_, kw_, sh, sw, dh, dw, pads4, oh, ow)
    if VNNI_LANES.get(isa or "") == bn and dw == 1:
        return _vnni_kernel(geo, in_dtype, int(x_zero_point), epilogue, cores, reg_n or VNNI_REG_N)
    return _generic_kernel(geo, in_dtype, int(x_zero_point), epilogue, cores, reg_n)


@dataclass(frozen=True)
class _Geometry:
    """The static shapes of one conv (see :func:`int8_depthwise_nchwc`)."""

    n: int
    cb: int
    h: int
    w: int
    bn: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pads: tuple[int, int, int, int]
    oh: int
    ow: int

    @property
    def macs(self) -> int:
        return self.n * self.cb * self.oh * self.ow * self.bn * self.kh * self.kw


def _generic_kernel(
    g: _Geometry, in_dtype: str, x_zp: int, epilogue: QEpilogue, cores: int, reg_n: int | None
) -> Any:
    """The TE compute + schedule (module docstring, "Generic kernel")."""
    from tvm import s_tir, te, tirx

    pt, pl, _, _ = g.pads
    h, w, sh, sw, dh, dw = g.h, g.w, g.sh, g.sw, g.dh, g.dw
    reg_n = int(reg_n or choose_int8_depthwise_reg_n(g.ow))
    owp = -(-g.ow // reg_n) * reg_n
    zp = tirx.const(x_zp, in_dtype)
    x = te.placeholder((g.n, g.cb, h, w, g.bn), in_dtype, name="x")
    kernel = te.placeholder((g.cb, g.kh, g.kw, g.bn), "int8", name="kernel")
    bias = te.placeholder((g.cb, g.bn), "int32", name="bias")
    mult = te.placeholder((g.cb, g.bn), "float32", name="mult")
    out_shape = (g.n, g.cb, g.oh, g.ow, g.bn)
    res = None
    if epilogue.residual is not None:
        res = te.placeholder(out_shape, epilogue.residual, name="residual")
    rkh = te.reduce_axis((0, g.kh), "kh")
    rkw = te.reduce_axis((0, g.kw), "kw")

    def tap(b: Any, c: Any, y: Any, xx: Any, k: Any) -> Any:
        iy = y * sh + rkh * dh - pt
        ix = xx * sw + rkw * dw - pl
        ok = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        return tirx.if_then_else(ok, x[b, c, iy, ix, k], zp)

    conv = te.compute(
        (g.n, g.cb, g.oh, owp, g.bn),
        lambda b, c, y, xx, k: te.sum(
            tap(b, c, y, xx, k).astype("int32") * kernel[c, rkh, rkw, k].astype("int32"),
            axis=[rkh, rkw],
        ),
        name="conv",
    )
    out = te.compute(
        out_shape,
        lambda b, c, y, xx, k: epilogue.apply_te(
            conv[b, c, y, xx, k] + bias[c, k],
            mult[c, k],
            res[b, c, y, xx, k] if res is not None else None,
        ),
        name="out",
    )
    args = [x, kernel, bias, mult] + ([res] if res is not None else []) + [out]
    sch = s_tir.Schedule(te.create_prim_func(args))
    blk = sch.get_sblock("conv")
    b, c, y, xx, k, r_kh, r_kw = sch.get_loops(blk)
    x_o, x_i = sch.split(xx, [None, reg_n])
    sch.reorder(b, c, y, x_o, r_kh, r_kw, x_i, k)
    outer = sch.fuse(b, c, y)
    if cores > 1:
        parallel(sch, outer)
    sch.unroll(r_kh)
    sch.unroll(r_kw)
    sch.unroll(x_i)
    sch.vectorize(k)
    init = sch.decompose_reduction(blk, r_kh)
    iloops = sch.get_loops(init)
    sch.vectorize(iloops[-1])
    sch.unroll(iloops[-2])
    oblk = sch.get_sblock("out")
    sch.reverse_compute_at(oblk, x_o)
    oloops = sch.get_loops(oblk)
    sch.vectorize(oloops[-1])
    sch.unroll(oloops[-2])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _interval(ok: list[bool]) -> tuple[int, int]:
    """``[a, b)`` from the first to the last True in ``ok`` (``(len, len)`` if none); the
    callers' conditions hold on one run."""
    idx = [i for i, v in enumerate(ok) if v]
    if not idx:
        return len(ok), len(ok)
    return idx[0], idx[-1] + 1


def _vnni_kernel(
    g: _Geometry, in_dtype: str, x_zp: int, epilogue: QEpilogue, cores: int, reg_n: int
) -> Any:
    """The hand-written VNNI kernel (module docstring, "VNNI kernel")."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T
    from tvm.target.codegen import llvm_version_major

    bn, h, w, sh, sw, dh = g.bn, g.h, g.w, g.sh, g.sw, g.dh
    pt, pl, _, _ = g.pads
    wl = 4 * bn  # bytes of a window: 4 columns x bn channels
    i32v = f"int32x{bn}"
    vpdpbusd = f"llvm.x86.avx512.vpdpbusd.{32 * bn}"
    # LLVM >= 20 declares the byte operands as <N x i8>, older LLVM as <N/4 x i32>
    op_dtype = f"int8x{wl}" if llvm_version_major() >= 20 else i32v
    flip = in_dtype == "int8"  # to u8: xor 0x80 (and 128 * sum(w) off the accumulator)
    ngroups = -(-g.kw // 4)
    # group q: taps kw = 4q .. 4q+kg-1 at window positions jo .. jo+kg-1; `ncols` columns loaded
    kgs = [min(4, g.kw - 4 * q) for q in range(ngroups)]
    jos = [1 if kg == 3 else 0 for kg in kgs]

    def ncols(q: int) -> int:
        """Columns a plain load of group ``q`` takes: a three-tap group loads a junk column too
        (left of the taps for ``jo`` 1, right for 0)."""
        return 4 if kgs[q] == 3 else kgs[q]

    def const_vec(v: int, dtype: str, lanes: int) -> Any:
        return tirx.Broadcast(tirx.const(v, dtype), lanes)

    def lanes_between(lo: int, hi: int) -> Any:
        """boolx{wl}: lanes lo <= i < hi."""
        m = T.get_active_lane_mask(f"boolx{wl}", 0, hi)
        if lo > 0:
            m = tirx.And(m, tirx.Not(T.get_active_lane_mask(f"boolx{wl}", 0, lo)))
        return m

    def widen(v: Any, dtype: str) -> Any:
        """A vector of fewer than ``wl`` lanes, zero-extended to ``wl``."""
        have = int(str(v.ty.dtype).split("x")[1])
        if have == wl:
            return v
        idx = [tirx.IntImm("int32", i if i < have else have) for i in range(wl)]
        return tirx.Shuffle([v, const_vec(0, dtype, wl)], idx)

    def shift_right(v: Any, dtype: str) -> Any:
        """Window columns moved one position to the right (column 0 zero)."""
        idx = [tirx.IntImm("int32", i - bn if i >= bn else wl) for i in range(wl)]
        return tirx.Shuffle([v, const_vec(0, dtype, bn)], idx)

    # [t][k] -> [k][t]: lane q = 4k + t of the result is lane t * bn + k of the window
    perm = [tirx.IntImm("int32", (q % 4) * bn + q // 4) for q in range(wl)]

    def to_kt(v: Any) -> Any:
        return tirx.Shuffle([v], perm)

    def dot(acc: Any, a_u8: Any, b_i8: Any) -> Any:
        return T.call_llvm_pure_intrin(
            i32v, T.llvm_lookup_intrinsic_id(vpdpbusd), acc,
            T.reinterpret(op_dtype, a_u8), T.reinterpret(op_dtype, b_i8),
        )  # fmt: skip

    def as_u8(v: Any) -> Any:
        if not flip:
            return v
        return tirx.bitwise_xor(T.reinterpret(f"uint8x{wl}", v), const_vec(128, "uint8", wl))

    def fits(xo: int, q: int, jo: int) -> bool:
        """Group ``q``'s window for output column ``xo``, junk column(s) ``jo``, in the row."""
        s0 = xo * sw - pl + 4 * q - jo
        return 0 <= s0 and s0 + ncols(q) <= w

    def plan(xo: int) -> list[int | None]:
        """Per group: the junk offset of a plain load (the default one first; a three-tap group
        may also put its junk column on the right), None: a masked load."""
        return [
            next((jo for jo in dict.fromkeys((jos[q], 0)) if fits(xo, q, jo)), None)
            for q in range(ngroups)
        ]

    # static column classes: interior columns load every group with the default junk offset
    xa, xb = _interval([plan(xo) == jos for xo in range(g.ow)])
    nchunk = (xb - xa) // reg_n
    loop_cols = (xa, xa + nchunk * reg_n)
    static_cols = [xo for xo in range(g.ow) if not loop_cols[0] <= xo < loop_cols[1]]
    phases = {(q, jos[q]) for q in range(ngroups)}
    phases |= {(q, jo) for xo in static_cols for q, jo in enumerate(plan(xo)) if jo is not None}
    # static row classes: interior rows read every kernel row
    ya, yb = _interval(
        [0 <= y * sh - pt and y * sh - pt + (g.kh - 1) * dh < h for y in range(g.oh)]
    )
    top_rows, bottom_rows = list(range(ya)), list(range(yb, g.oh))
    if ya == yb:  # no interior row
        top_rows, bottom_rows = list(range(g.oh)), []
    # tasks: (n, cb, piece of the interior rows)
    use_pool = cores > 1 and g.macs >= min_parallel_work()
    pieces = 1
    if use_pool and yb > ya:
        pieces = max(1, min(yb - ya, -(-4 * cores // (g.n * g.cb))))
    piece_rows = -(-(yb - ya) // pieces) if yb > ya else 0
    if piece_rows:  # no empty piece
        pieces = -(-(yb - ya) // piece_rows)

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            x = T.arg("x", T.buffer((g.n, g.cb, h, w, bn), in_dtype))
            kern = T.arg("kernel", T.buffer((g.cb, g.kh, g.kw, bn), "int8"))
            bias = T.arg("bias", T.buffer((g.cb, bn), "int32"))
            mult = T.arg("mult", T.buffer((g.cb, bn), "float32"))
            out_shape = (g.n, g.cb, g.oh, g.ow, bn)
            res = None
            if epilogue.residual is not None:
                res = T.arg("residual", T.buffer(out_shape, epilogue.residual))
            out = T.arg("out", T.buffer(out_shape, epilogue.out_dtype))
            T.func_attr({"tirx.noalias": True})
            loop = T.parallel if use_pool else T.serial
            with loop(0, g.n * g.cb * pieces) as task:
                b_ = T.bind(task // (g.cb * pieces))
                c_ = T.bind(task // pieces % g.cb)
                piece = T.bind(task % pieces)
                acc_buf = T.alloc_local((ROW_STEP, bn), "int32")
                # weight windows [k][t] per (kh, group, junk offset), zero where no tap
                wv = {}
                for kh in range(g.kh):
                    for q, jo in sorted(phases):
                        m = lanes_between(0, kgs[q] * bn)
                        ld = T.masked_load(
                            f"int8x{wl}", kern, c_, kh, 4 * q, tirx.Ramp(0, 1, wl), m
                        )
                        ld = tirx.Select(m, ld, const_vec(0, "int8", wl))
                        if jo:  # taps one position to the right
                            ld = shift_right(ld, "int8")
                        wv[kh, q, jo] = T.bind(to_kt(ld))
                start = bias.vload([c_, 0], i32v)
                if flip:
                    wsum = const_vec(0, "int32", bn)
                    for kh in range(g.kh):
                        for q in range(ngroups):
                            wsum = dot(wsum, const_vec(1, "uint8", wl), wv[kh, q, jos[q]])
                    start = start - wsum * tirx.const(128, "int32")
                start = T.bind(start)
                zp_window = as_u8(const_vec(x_zp, in_dtype, wl))

                def window(iy: Any, xo: Any, q: int, jo: int | None) -> Any:
                    """The ``[k][t]`` input window of group ``q`` for output column ``xo``: a
                    plain load with junk offset ``jo`` or (None) a masked one."""
                    if jo is not None:
                        s0 = xo * sw - pl + 4 * q - jo  # first loaded column
                        v = x.vload([b_, c_, iy, s0, 0], f"{in_dtype}x{ncols(q) * bn}")
                        return to_kt(as_u8(widen(v, in_dtype)))
                    s0 = xo * sw - pl + 4 * q - jos[q]
                    taps = range(jos[q], jos[q] + kgs[q])
                    ok = [p in taps and 0 <= s0 + p < w for p in range(4)]
                    lo, hi = _interval(ok)
                    if lo == hi:
                        return to_kt(zp_window)
                    m = lanes_between(lo * bn, hi * bn)
                    v = T.masked_load(f"{in_dtype}x{wl}", x, b_, c_, iy, s0, tirx.Ramp(0, 1, wl), m)
                    v = tirx.Select(m, v, const_vec(x_zp, in_dtype, wl))
                    return to_kt(as_u8(v))

                def column(ys: list[Any], xo: Any, rows: list[int], row_start: Any,
                           static: bool) -> None:  # fmt: skip
                    """Output column ``xo`` of the consecutive rows ``ys``; a window that two
                    of them read (the kernel row ``kh`` of row ``r`` is input row ``y0*sh - pt
                    + r*sh + kh*dh``) is loaded and permuted once."""
                    jo_of = plan(xo) if static else jos
                    windows: dict[tuple[int, int], Any] = {}
                    for r in range(len(ys)):
                        acc = row_start
                        for kh in rows:
                            d = r * sh + kh * dh
                            for q in range(ngroups):
                                jo = jo_of[q]
                                if (d, q) not in windows:
                                    iy = ys[0] * sh - pt + d
                                    windows[d, q] = window(iy, xo, q, jo)
                                    if len(ys) > 1:
                                        windows[d, q] = T.bind(windows[d, q])
                                wt = wv[kh, q, jos[q] if jo is None else jo]
                                acc = dot(acc, windows[d, q], wt)
                        T.buffer_store(acc_buf, acc, [r, tirx.Ramp(0, 1, bn)])
                    for r, y in enumerate(ys):
                        with T.vectorized(0, bn) as k:
                            res_k = res[b_, c_, y, xo, k] if res is not None else None
                            val = epilogue.apply_te(acc_buf[r, k], mult[c_, k], res_k)
                            T.buffer_store(out, val, [b_, c_, y, xo, k])

                def row(ys: list[Any], static_y: int | None) -> None:
                    """Output rows ``ys``: one static border row (``static_y``, its number) or
                    ``ROW_STEP`` interior rows."""
                    rows = list(range(g.kh))
                    row_start = start
                    if static_y is not None:  # kernel rows outside the image: x_zp * w
                        rows = [kh for kh in rows if 0 <= static_y * sh + kh * dh - pt < h]
                        for kh in range(g.kh):
                            if kh not in rows:
                                for q in range(ngroups):
                                    row_start = dot(row_start, to_kt(zp_window), wv[kh, q, jos[q]])
                        row_start = T.bind(row_start)
                    for xo in static_cols:
                        if xo < loop_cols[0]:
                            column(ys, xo, rows, row_start, True)
                    if nchunk:
                        with T.serial(0, nchunk) as ch:
                            for j in range(reg_n):
                                column(ys, loop_cols[0] + ch * reg_n + j, rows, row_start, False)
                    for xo in static_cols:
                        if xo >= loop_cols[1]:
                            column(ys, xo, rows, row_start, True)

                def static_rows(ys: list[int], first: bool) -> None:
                    if not ys:
                        return
                    cond = piece == (0 if first else pieces - 1)
                    with T.If(cond):
                        with T.Then():
                            for y in ys:
                                row([tirx.const(y, "int32")], y)

                static_rows(top_rows, True)
                if yb > ya:
                    y0 = T.bind(ya + piece * piece_rows)
                    nrows = T.bind(tirx.min(piece_rows, yb - y0))
                    if ROW_STEP > 1:
                        with T.serial(0, nrows // ROW_STEP) as i:
                            y = y0 + i * ROW_STEP
                            row([y + r for r in range(ROW_STEP)], None)
                        with T.serial(nrows - nrows % ROW_STEP, nrows) as i:
                            row([y0 + i], None)
                    else:
                        with T.serial(0, nrows) as i:
                            row([y0 + i], None)
                static_rows(bottom_rows, False)
    return ib.get().with_attr("tirx.is_scheduled", True)


__all__ = [
    "MAX_REG_N",
    "VNNI_LANES",
    "VNNI_REG_N",
    "choose_int8_depthwise_reg_n",
    "int8_depthwise_nchwc",
    "pack_int8_depthwise_weight",
]
