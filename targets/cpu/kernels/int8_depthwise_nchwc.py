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

**SDOT kernel** (``isa`` ``"sdot"``, AArch64 +dotprod, ``bn`` 4, no horizontal dilation): ``sdot``
adds four s8 x s8 products into each of its four int32 lanes, here up to four taps ``kw = 4g ..``
of one kernel row of the lane's own channel; the weights are arranged ``[channel][tap]`` once per
task (zero where no tap). A 16-byte load is four input columns ``[t][k]``; one ``tbl`` (one or two
source registers, ``llvm.aarch64.neon.tbl1`` / ``tbl2``) gathers a window's ``[k][t]`` bytes. The
same static structure as the VNNI kernel (tasks, interior rows in steps sharing their windows,
border rows with their missing kernel rows' ``x_zp * w`` in the start value), and:

- interior columns (every tap in the row): a loop of :data:`SDOT_REG_N` columns, per group and
  input row the windows of its columns from shared loads (3x3 stride 1: 2 loads for 4 columns,
  stride 2: 3), none past the row (the last one ends at the last tap); the columns after the
  loop in one such step. Rows per step: :data:`SDOT_ROW_STEP`.
- border columns, one by one: one load placed inside the row; lanes outside the image take the
  zero point through ``tbx`` (no masked loads on NEON). A row narrower than 4 columns is loaded
  whole.
- u8 inputs are flipped to s8 (``eor 0x80`` on each load), the accumulator starts at
  ``bias + 128 * sum(w)``.
- an 8-bit requantizing tail whose bounds lie in the dtype (:func:`_int_requantize`; every int8
  depthwise of MobileNet-V2) runs in integers: ``scvtf``, ``fmul``, ``fcvtns`` (round half to
  even, as ``rint``), a saturating add of the zero point, ``smax`` / ``smin`` for bounds inside
  the dtype, then saturating narrows (``sqxtun`` + ``uqxtn`` / ``sqxtn`` x2), 4 columns per
  16-byte store: the codes of :meth:`.QEpilogue.apply_numpy`. Other tails (residual, float
  output) run :meth:`.QEpilogue.apply_te` per column.

Executed instructions (qemu-user + icount plugin, ``-cpu neoverse-n1``, one call, u8 in / out) on
MobileNet-V2's 3x3 layers: 0.35-0.39 per MAC at stride 1, 0.45-0.49 at stride 2; the generic
kernel 0.73-1.11 (9.3 M instead of 23.3 M over the model's 17 layers, one call each); the int8
MobileNet-V2 build for ``arm:neoverse-n1`` 81.7 M -> 70.2 M per inference (onnxruntime: 64.2 M),
its outputs unchanged.

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
from mcopt.targets.cpu.kernels.int8_pointwise_sdot import int_requantize as _int_requantize
from mcopt.targets.cpu.kernels.int8_pointwise_sdot import sdot_requantize
from mcopt.targets.cpu.kernels.threads import min_parallel_work, parallel, vector_init

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
#: lanes of the sdot kernel (the int32 lanes of one ``sdot``: the channel block)
SDOT_LANES = 4
#: output columns per iteration of the sdot kernel's interior loop (one 16-byte store per row;
#: 2, 3, 5 and 8 executed more instructions on MobileNet-V2's layers)
SDOT_REG_N = 4
#: interior output rows per step of the sdot kernel, by vertical stride: (from 12 interior rows
#: per task, fewer). A step's rows share their input rows' windows (3x3, stride 1: 8 windows for
#: 6 rows instead of 18; stride 2: 5 for 2 instead of 6). Executed instructions on MobileNet-V2's
#: layers: 6 rows 1-7 % below 4 at stride 1 (but at 7x7, where 6 would leave 5 single rows), 2
#: rows 3-8 % below 4 at stride 2 (16 accumulators spill)
SDOT_ROW_STEP = {1: (6, 4), 2: (2, 2)}
#: columns the sdot kernel's interior loop loads left of a step's first tap, by horizontal stride
#: (LLVM's addressing: 3x3, stride 2, loads at -1, 3, 5 executed 3-5 % fewer instructions than
#: at 0, 4, 5 on MobileNet-V2's layers, 5 % more at 112x112; stride 1: 0, 2 were 0-11 % below
#: -1, 2)
SDOT_LOOP_LEAD = {2: 1}


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
    ``"vnni8"`` (``bn`` 8) select the VNNI kernel when there is no dilation, ``"sdot"`` (``bn``
    4) the SDOT kernel when there is no horizontal dilation, anything else the generic one.
    ``reg_n``: output columns per unrolled step (default: :data:`VNNI_REG_N` /
    :data:`SDOT_REG_N` / :func:`choose_int8_depthwise_reg_n`)."""
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
    if isa == "sdot" and bn == SDOT_LANES and dw == 1:
        return _sdot_kernel(geo, in_dtype, int(x_zero_point), epilogue, cores, reg_n or SDOT_REG_N)
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
    vector_init(sch, blk, r_kh, unroll=1)
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


def _row_plan(
    g: _Geometry, h: int, sh: int, pt: int, dh: int, cores: int
) -> tuple[int, int, list[int], list[int], bool, int, int]:
    """Row classes and thread-pool pieces shared by the hand-written kernels: interior output rows
    ``[ya, yb)`` read every kernel row, ``top_rows`` / ``bottom_rows`` are the border rows; the
    tasks are (n, channel block, piece of ``piece_rows`` interior rows) — ``(ya, yb, top_rows,
    bottom_rows, use_pool, pieces, piece_rows)``."""
    ya, yb = _interval(
        [0 <= y * sh - pt and y * sh - pt + (g.kh - 1) * dh < h for y in range(g.oh)]
    )
    top_rows, bottom_rows = list(range(ya)), list(range(yb, g.oh))
    if ya == yb:  # no interior row
        top_rows, bottom_rows = list(range(g.oh)), []
    use_pool = cores > 1 and g.macs >= min_parallel_work()
    pieces = 1
    if use_pool and yb > ya:
        pieces = max(1, min(yb - ya, -(-4 * cores // (g.n * g.cb))))
    piece_rows = -(-(yb - ya) // pieces) if yb > ya else 0
    if piece_rows:  # no empty piece
        pieces = -(-(yb - ya) // piece_rows)
    return ya, yb, top_rows, bottom_rows, use_pool, pieces, piece_rows


def _vnni_kernel(
    g: _Geometry, in_dtype: str, x_zp: int, epilogue: QEpilogue, cores: int, reg_n: int
) -> Any:
    """The hand-written VNNI kernel (module docstring, "VNNI kernel")."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from mcopt.targets.cpu.kernels.int8_intrin import vpdpbusd

    bn, h, w, sh, sw, dh = g.bn, g.h, g.w, g.sh, g.sw, g.dh
    pt, pl, _, _ = g.pads
    wl = 4 * bn  # bytes of a window: 4 columns x bn channels
    i32v = f"int32x{bn}"
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
        return vpdpbusd(acc, a_u8, b_i8, bn)

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
    ya, yb, top_rows, bottom_rows, use_pool, pieces, piece_rows = _row_plan(g, h, sh, pt, dh, cores)

    with IRBuilder() as ib:
        with T.prim_func():
            x, kern, bias, mult, res, out = _declare_args(g, h, w, bn, in_dtype, epilogue)
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
                    rows, row_start = _row_taps(
                        static_y, start, g.kh, (sh, dh, pt, h), ngroups,
                        lambda acc, kh, q: dot(acc, to_kt(zp_window), wv[kh, q, jos[q]]),
                    )  # fmt: skip
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

                _drive_rows(row, piece, pieces, top_rows, bottom_rows, ya, yb, piece_rows, ROW_STEP)
    return ib.get().with_attr("tirx.is_scheduled", True)


def _declare_args(
    g: Any, h: int, w: int, bn: int, in_dtype: str, epilogue: QEpilogue
) -> tuple[Any, Any, Any, Any, Any, Any]:
    """The hand-written forms' PrimFunc signature (inside ``T.prim_func()``): ``x``, ``kernel``,
    ``bias``, ``mult``, ``residual`` (None without one), ``out``, as in the module docstring."""
    from tvm.script.ir_builder import tirx as T

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
    return x, kern, bias, mult, res, out


def _row_taps(
    static_y: int | None,
    start: Any,
    kh_n: int,
    geom: tuple[int, int, int, int],
    ngroups: int,
    add_zp: Any,
) -> tuple[list[int], Any]:
    """The kernel rows an output row reads and its accumulators' start value. An interior row
    (``static_y`` None) reads all ``kh_n`` rows from ``start``; a border row (its number
    ``static_y``) skips the kernel rows outside the image, whose taps would read the zero point:
    their ``x_zp * w`` is added to the start once (``add_zp(acc, kh, q)`` for every tap group
    ``q``). ``geom`` = (stride, dilation, top pad, height). Shared by the VNNI and ``sdot`` forms."""
    from tvm.script.ir_builder import tirx as T

    rows = list(range(kh_n))
    if static_y is None:
        return rows, start
    sh, dh, pt, h = geom
    rows = [kh for kh in rows if 0 <= static_y * sh + kh * dh - pt < h]
    acc = start
    for kh in range(kh_n):
        if kh not in rows:
            for q in range(ngroups):
                acc = add_zp(acc, kh, q)
    return rows, T.bind(acc)


def _drive_rows(
    row: Any,
    piece: Any,
    pieces: int,
    top_rows: list[int],
    bottom_rows: list[int],
    ya: int,
    yb: int,
    piece_rows: int,
    row_step: int,
) -> None:
    """Run ``row(ys, static_y)`` over one thread piece's output rows: the static border rows on
    the first / last piece, then the interior rows ``[ya, yb)`` of this piece ``row_step`` at a
    time (the remainder one by one). Shared by the VNNI and ``sdot`` forms."""
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    def static_rows(ys: list[int], first: bool) -> None:
        if not ys:
            return
        with T.If(piece == (0 if first else pieces - 1)):
            with T.Then():
                for y in ys:
                    row([tirx.const(y, "int32")], y)

    static_rows(top_rows, True)
    if yb > ya:
        y0 = T.bind(ya + piece * piece_rows)
        nrows = T.bind(tirx.min(piece_rows, yb - y0))
        if row_step > 1:
            with T.serial(0, nrows // row_step) as i:
                y = y0 + i * row_step
                row([y + r for r in range(row_step)], None)
            with T.serial(nrows - nrows % row_step, nrows) as i:
                row([y0 + i], None)
        else:
            with T.serial(0, nrows) as i:
                row([y0 + i], None)
    static_rows(bottom_rows, False)


def _sdot_kernel(
    g: _Geometry, in_dtype: str, x_zp: int, epilogue: QEpilogue, cores: int, reg_n: int
) -> Any:
    """The hand-written AArch64 ``sdot`` kernel (module docstring, "SDOT kernel")."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    bn, h, w, sh, sw, dh = g.bn, g.h, g.w, g.sh, g.sw, g.dh
    pt, pl, _, _ = g.pads
    wl = 4 * bn  # bytes of a window: 4 columns x 4 channels
    flip = in_dtype == "uint8"  # to s8: xor 0x80 (and 128 * sum(w) onto the accumulator)
    ngroups = -(-g.kw // 4)
    # group q: taps kw = 4q .. 4q+kg-1; a border column's load starts jo = 4 - kg columns left of
    # them where the row allows
    kgs = [min(4, g.kw - 4 * q) for q in range(ngroups)]
    jos = [4 - kg for kg in kgs]
    wide = w >= 4  # a 16-byte load fits in a row
    zp_s8 = x_zp - 128 if flip else x_zp
    i8v, i32v = f"int8x{wl}", f"int32x{bn}"

    def const_vec(v: int, dtype: str, lanes: int) -> Any:
        return tirx.Broadcast(tirx.const(v, dtype), lanes)

    def byte_table(idx: list[int]) -> Any:
        """A constant int8x16 of byte indices below 64 or 255 (a lane ``tbl`` zeroes and ``tbx``
        leaves alone)."""
        lanes = tirx.Ramp(tirx.const(0, "int8"), tirx.const(1, "int8"), 64)
        sel = [tirx.IntImm("int32", v if v < 64 else 64) for v in idx]
        return tirx.Shuffle([lanes, const_vec(-1, "int8", 64)], sel)

    def intrin(dtype: str, name: str, *args: Any) -> Any:
        return T.call_llvm_pure_intrin(dtype, T.llvm_lookup_intrinsic_id(name), *args)

    def dot(acc: Any, a: Any, b: Any) -> Any:
        return intrin(i32v, "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, a, b)

    def as_s8(v: Any) -> Any:
        if not flip:
            return v
        return T.reinterpret(i8v, tirx.bitwise_xor(v, const_vec(128, "uint8", wl)))

    def perm(q: int, s0: int, lc: int) -> tuple[list[int], bool]:
        """``tbl`` indices for group ``q`` (first tap at column ``s0``) from 16 bytes loaded at
        column ``lc``: lane ``4k + t`` takes column ``s0 + t``, channel ``k``; True when a tap
        lies outside the row (those lanes take the zero point)."""
        idx, fill = [], False
        for p in range(wl):
            k, t = divmod(p, 4)
            if t < kgs[q] and 0 <= s0 + t < w:
                idx.append((s0 + t - lc) * bn + k)
            else:
                idx.append(255)
                fill |= t < kgs[q]
        return idx, fill

    def chunk_plan(ncols: int, lead: int) -> list[tuple[list[int], list[Any]]]:
        """Per group: ``(starts, windows)`` of ``ncols`` interior columns: 16-byte loads at
        ``starts`` (columns from the first column's first tap: the first one ``lead`` columns
        left of it, or more where the taps span fewer than 4 columns, then every 4 columns, the
        last one ending at the last tap) and per window the loads its ``tbl`` / ``tbl2`` reads
        and its byte indices."""
        plan = []
        for q in range(ngroups):
            span = (ncols - 1) * sw + kgs[q]
            first = -max(lead, 4 - span)
            starts = list(range(first, span - 4, 4)) + [span - 4]
            wins = []
            for j in range(ncols):
                a = j * sw
                li = max(i for i, st in enumerate(starts) if st <= a)
                two = a + kgs[q] > starts[li] + 4
                idx = []
                for p in range(wl):
                    k, t = divmod(p, 4)
                    c = a + t
                    if t >= kgs[q]:
                        idx.append(255)
                    elif c < starts[li] + 4:
                        idx.append((c - starts[li]) * bn + k)
                    else:
                        idx.append(wl + (c - starts[li + 1]) * bn + k)
                wins.append(((li, li + 1) if two else (li,), idx))
            plan.append((starts, wins))
        return plan

    def chunk_fits(xo0: int, ncols: int, lead: int) -> bool:
        """Every load of the columns ``xo0 ..`` lies in the row."""
        for q, (starts, _) in enumerate(chunk_plan(ncols, lead)):
            a = xo0 * sw - pl + 4 * q
            if not (wide and a + starts[0] >= 0 and a + starts[-1] + 4 <= w):
                return False
        return True

    # interior columns (every tap in the row): a loop of reg_n-column chunks, then chunks of the
    # rest; the other columns one by one
    taps_in = [
        all(
            0 <= xo * sw - pl + 4 * q and xo * sw - pl + 4 * q + kgs[q] <= w for q in range(ngroups)
        )
        for xo in range(g.ow)
    ]
    xa, xb = _interval([wide and v for v in taps_in])
    lead = SDOT_LOOP_LEAD.get(sw, 0)
    fit = [xo for xo in range(xa, xb - reg_n + 1) if chunk_fits(xo, reg_n, lead)]
    x0 = fit[0] if fit else xa
    nchunk = 0
    while x0 + (nchunk + 1) * reg_n <= xb and chunk_fits(x0 + nchunk * reg_n, reg_n, lead):
        nchunk += 1
    loop_cols = (x0, x0 + nchunk * reg_n)
    more: list[tuple[int, int]] = []  # (first column, columns) after the loop
    pos = loop_cols[1]
    while pos < xb and chunk_fits(pos, min(reg_n, xb - pos), 0):
        more.append((pos, min(reg_n, xb - pos)))
        pos += more[-1][1]
    chunk_cols = (loop_cols[0], pos)
    plans = {(reg_n, lead): chunk_plan(reg_n, lead)}
    plans |= {(nc, 0): chunk_plan(nc, 0) for _, nc in more}
    static_cols = [xo for xo in range(g.ow) if not chunk_cols[0] <= xo < chunk_cols[1]]
    ya, yb, top_rows, bottom_rows, use_pool, pieces, piece_rows = _row_plan(g, h, sh, pt, dh, cores)

    fast = _int_requantize(epilogue)
    row_step = SDOT_ROW_STEP.get(sh, (1, 1))[0 if piece_rows >= 12 else 1]

    def requantize(accs: list[Any]) -> Any:
        """``accs`` (1, 2 or 4 int32x4) -> the 8-bit codes, in integers (``fast``):
        :func:`.int8_pointwise_sdot.sdot_requantize`."""
        assert fast is not None
        return sdot_requantize(accs, mult_v, fast, epilogue.out_dtype)

    with IRBuilder() as ib:
        with T.prim_func():
            x, kern, bias, mult, res, out = _declare_args(g, h, w, bn, in_dtype, epilogue)
            loop = T.parallel if use_pool else T.serial
            with loop(0, g.n * g.cb * pieces) as task:
                b_ = T.bind(task // (g.cb * pieces))
                c_ = T.bind(task // pieces % g.cb)
                piece = T.bind(task % pieces)
                acc_buf = T.alloc_local((1, bn), "int32")
                # weights [k][t] per (kh, group), zero where no tap
                wv = {}
                for kh in range(g.kh):
                    for q in range(ngroups):
                        kg = kgs[q]
                        v = kern.vload([c_, kh, 4 * q, 0], f"int8x{kg * bn}")
                        sel = [
                            tirx.IntImm("int32", t * bn + k if t < kg else kg * bn)
                            for k in range(bn)
                            for t in range(4)
                        ]
                        wv[kh, q] = T.bind(tirx.Shuffle([v, const_vec(0, "int8", wl)], sel))
                start = bias.vload([c_, 0], i32v)
                if flip:
                    wsum = const_vec(0, "int32", bn)
                    for kh in range(g.kh):
                        for q in range(ngroups):
                            wsum = dot(wsum, const_vec(1, "int8", wl), wv[kh, q])
                    start = start + wsum * tirx.const(128, "int32")
                start = T.bind(start)
                mult_v = T.bind(mult.vload([c_, 0], f"float32x{bn}"))
                zp_vec = const_vec(zp_s8, "int8", wl)
                tables = {
                    (key, q, j): T.bind(byte_table(idx))
                    for key, plan in plans.items()
                    for q, (_, wins) in enumerate(plan)
                    for j, (_, idx) in enumerate(wins)
                }

                def chunk_windows(iy: Any, xo0: Any, q: int, key: tuple[int, int]) -> list[Any]:
                    """The ``[k][t]`` s8 windows of group ``q`` for the interior columns
                    ``xo0 ..`` (``key``: columns, lead), from shared loads
                    (:func:`chunk_plan`)."""
                    starts, wins = plans[key][q]
                    a = xo0 * sw - pl + 4 * q
                    regs = [
                        T.bind(as_s8(x.vload([b_, c_, iy, a + st, 0], f"{in_dtype}x{wl}")))
                        for st in starts
                    ]
                    out_ = []
                    for j, (used, _) in enumerate(wins):
                        tab = [regs[i] for i in used]
                        name = f"llvm.aarch64.neon.tbl{len(tab)}.v16i8"
                        out_.append(T.bind(intrin(i8v, name, *tab, tables[key, q, j])))
                    return out_

                def window(iy: Any, xo: int, q: int) -> Any:
                    """The ``[k][t]`` s8 input window of group ``q`` for the border output
                    column ``xo``."""
                    s0 = xo * sw - pl + 4 * q
                    lc = min(max(s0 - jos[q], 0), w - 4) if wide else 0
                    idx, fill = perm(q, s0, lc)
                    if all(i == 255 for i in idx):
                        return zp_vec
                    if wide:
                        v = x.vload([b_, c_, iy, lc, 0], f"{in_dtype}x{wl}")
                    else:  # the whole row, zero-extended to 16 bytes
                        v = x.vload([b_, c_, iy, 0, 0], f"{in_dtype}x{w * bn}")
                        sel = [tirx.IntImm("int32", min(i, w * bn)) for i in range(wl)]
                        v = tirx.Shuffle([v, const_vec(0, in_dtype, wl)], sel)
                    v = as_s8(v)
                    if fill:
                        return intrin(
                            i8v, "llvm.aarch64.neon.tbx1.v16i8", zp_vec, v, byte_table(idx)
                        )
                    return intrin(i8v, "llvm.aarch64.neon.tbl1.v16i8", v, byte_table(idx))

                def column(ys: list[Any], xo: int, rows: list[int], row_start: Any) -> list[Any]:
                    """The accumulators of the border output column ``xo`` in the consecutive
                    rows ``ys``; a window two of them read is loaded and permuted once."""
                    windows: dict[tuple[int, int], Any] = {}
                    accs = []
                    for r in range(len(ys)):
                        acc = row_start
                        for kh in rows:
                            d = r * sh + kh * dh
                            for q in range(ngroups):
                                if (d, q) not in windows:
                                    windows[d, q] = window(ys[0] * sh - pt + d, xo, q)
                                    if len(ys) > 1:
                                        windows[d, q] = T.bind(windows[d, q])
                                acc = dot(acc, windows[d, q], wv[kh, q])
                        accs.append(T.bind(acc))
                    return accs

                def chunk(
                    ys: list[Any], xo0: Any, key: tuple[int, int], rows: list[int], row_start: Any
                ) -> list[list[Any]]:
                    """The accumulators ``[column][row]`` of the interior output columns
                    ``xo0 ..`` (``key``: columns, lead) in the consecutive rows ``ys``."""
                    windows: dict[tuple[int, int], list[Any]] = {}
                    accs: list[list[Any]] = [[] for _ in range(key[0])]
                    for r in range(len(ys)):
                        for j in range(key[0]):
                            acc = row_start
                            for kh in rows:
                                d = r * sh + kh * dh
                                for q in range(ngroups):
                                    if (d, q) not in windows:
                                        iy = ys[0] * sh - pt + d
                                        windows[d, q] = chunk_windows(iy, xo0, q, key)
                                    acc = dot(acc, windows[d, q][j], wv[kh, q])
                            accs[j].append(T.bind(acc))
                    return accs

                def store(y: Any, xo: Any, accs: list[Any]) -> None:
                    """The epilogue of consecutive output columns ``xo ..`` of row ``y``."""
                    if fast is None:
                        for j, acc in enumerate(accs):
                            T.buffer_store(acc_buf, acc, [0, tirx.Ramp(0, 1, bn)])
                            with T.vectorized(0, bn) as k:
                                res_k = res[b_, c_, y, xo + j, k] if res is not None else None
                                val = epilogue.apply_te(acc_buf[0, k], mult[c_, k], res_k)
                                T.buffer_store(out, val, [b_, c_, y, xo + j, k])
                        return
                    j = 0
                    while j < len(accs):
                        m = 4 if len(accs) - j >= 4 else 2 if len(accs) - j >= 2 else 1
                        val = requantize(accs[j : j + m])
                        T.buffer_store(out, val, [b_, c_, y, xo + j, tirx.Ramp(0, 1, m * bn)])
                        j += m

                def row(ys: list[Any], static_y: int | None) -> None:
                    rows, row_start = _row_taps(
                        static_y, start, g.kh, (sh, dh, pt, h), ngroups,
                        lambda acc, kh, q: dot(acc, zp_vec, wv[kh, q]),
                    )  # fmt: skip
                    for xo in static_cols:
                        if xo < chunk_cols[0]:
                            accs = column(ys, xo, rows, row_start)
                            for r, y in enumerate(ys):
                                store(y, xo, [accs[r]])
                    if nchunk:
                        with T.serial(0, nchunk) as ch:
                            xo0 = loop_cols[0] + ch * reg_n
                            cols = chunk(ys, xo0, (reg_n, lead), rows, row_start)
                            for r, y in enumerate(ys):
                                store(y, xo0, [cols[j][r] for j in range(reg_n)])
                    for xo0, nc in more:
                        cols = chunk(ys, xo0, (nc, 0), rows, row_start)
                        for r, y in enumerate(ys):
                            store(y, xo0, [cols[j][r] for j in range(nc)])
                    for xo in static_cols:
                        if xo >= chunk_cols[1]:
                            accs = column(ys, xo, rows, row_start)
                            for r, y in enumerate(ys):
                                store(y, xo, [accs[r]])

                _drive_rows(row, piece, pieces, top_rows, bottom_rows, ya, yb, piece_rows, row_step)
    return ib.get().with_attr("tirx.is_scheduled", True)


__all__ = [
    "MAX_REG_N",
    "SDOT_LANES",
    "SDOT_LOOP_LEAD",
    "SDOT_REG_N",
    "SDOT_ROW_STEP",
    "VNNI_LANES",
    "VNNI_REG_N",
    "choose_int8_depthwise_reg_n",
    "int8_depthwise_nchwc",
    "pack_int8_depthwise_weight",
]
