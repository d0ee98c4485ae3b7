"""The pixels-on-lanes int8 conv for few output channels on AVX-512 VNNI + VBMI, hand-written TIR.

The ``window`` form of :func:`.int8_conv_nchwc.int8_conv2d_nchwc` puts output channels on the
lanes: one ``vpdpbusd`` per output pixel, kernel row and group of 4 kernel columns, each with a
broadcast of the pixel's 4 input bytes. A conv with few output channels (LeNet-5's convs: 6 and
16, 3 and 8 once pruned; 8 lanes) leaves most lanes on padding. Here the 16 lanes of a ``zmm``
are 16 output pixels of one channel::

    acc[c][p] = bias_eff[c] + sum_{ci, r, g} sum_{k<4} xq[ci, y_p*sh + r, x_p*sw + 4g + k]
                                                         * w[c, ci, r, 4g + k]
    out[n, 0, y_p, x_p, c] = QEpilogue(acc[c][p], mult[c])          (p < 16, c < L)

- ``xq`` is a padded 8-bit copy of the input, one plane per channel (rows of ``W + pl + pr``),
  padded with the input's zero point: the float image quantized on the way (``round(x / scale) +
  zp`` clamped, as the ``quantize`` op does), a u8 image copied, or a blocked ``NCHW[ib]c`` u8
  tensor unblocked (one 64-byte load of ``64 / ib`` pixels, one shuffle per channel);
- a block is 16 consecutive pixels of the flattened output plane; every block's windows must lie
  within 64 bytes of its first one (one load; LeNet-5's 28- and 10-pixel rows), or 128 (two); the
  permutation of each block is a row of a table argument. The last block overlaps the one before
  (the same values written twice), so no store leaves the plane. Planes of at most
  ``MAX_BLOCKS`` blocks: on wider ones (a 224x224 stride-2 RGB stem, 16 pixels of one row a
  block) the form lost to the window form at 8 channels (28.5 vs 18.2 us, serial; it runs on
  one core) and won only with fewer;
- per (input channel, kernel row, column group): one or two 64-byte loads at the block's first
  window, one byte permutation (``vpermb`` / ``vpermi2b``) into the 16 pixels' 4-byte windows,
  then one ``vpdpbusd`` per output channel with its 4 weights broadcast;
- with a fused max pool (kernel = stride), a block is 16 pooled pixels: the same permutation
  from each pooled window's offset (``subs``), the windows' accumulators side by side, their max
  through the epilogue (monotone: no hard-swish; multipliers >= 0);
- the epilogue runs on the 16 pixels of each channel, then one shuffle interleaves the ``L``
  channels into the ``NCHW[L]c`` block (16 pixels x ``L`` channels, contiguous).

Dot products: ``ceil(OH*OW/16) * OC * C * KH * ceil(KW/4)`` of 16 lanes against ``OH * OW * C
* KH * ceil(KW/4)`` of ``L`` lanes for the window form: LeNet-5's first conv pruned to 3
channels 1,470 against 7,840. Channels ``OC..L-1`` of the block (padding) get the epilogue of
their bias alone, as the window form's zero weights give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcopt.targets.cpu.kernels.conv2d import _pads, _pair, conv_out_size
from mcopt.targets.cpu.kernels.int8_conv import quantize_u8_te
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue

#: output pixels per block (the 16 int32 lanes of a zmm)
PIXELS = 16
#: most output channels the form takes (accumulators in registers; above this the window
#: form's channel lanes are not mostly padding any more: 16 channels ran 2.4 us against 1.6)
MAX_CHANNELS = 8
#: most blocks (2,048 output pixels; the permutation table: 64 bytes a block)
MAX_BLOCKS = 128
#: most accumulators of a block (zmm registers; the rest hold the windows and the weights):
#: the pooled windows of a block accumulate side by side up to this (LeNet-5's 3-channel first
#: conv + pool: 0.72 -> 0.56 us; all 4 windows of an 8-channel conv spilled: 0.63 -> 0.67 us).
#: Splitting one channel's taps over two partial sums instead did not help (0.69 -> 0.76 us)
ACCUMULATORS = 16
#: bytes past the copy's last plane that a block's (two) loads may read (zero weights only)
SLACK = 192


def _window_groups(kw: int) -> int:
    return -(-kw // 4)


@dataclass(frozen=True)
class StemGeometry:
    """Where a conv's pixel blocks read. ``oh, ow``: the output plane (pooled when pooling);
    ``hp, wq``: the padded copy's plane; ``starts``: first (flattened) pixel of each block;
    ``offsets[i]``: the copy offset (in a plane) of block ``i``'s first window; ``perm[i]``: its
    permutation bytes into ``loads`` consecutive 64-byte loads; ``subs``: the offsets of the conv
    pixels one output pixel pools (``(0,)`` without a pool)."""

    oh: int
    ow: int
    hp: int
    wq: int
    starts: tuple[int, ...]
    offsets: np.ndarray
    perm: np.ndarray
    loads: int
    subs: tuple[int, ...]

    @property
    def plane(self) -> int:
        return self.hp * self.wq


def _blocks(
    plane: int, ow: int, step_y: int, step_x: int, span: int
) -> tuple[list[int], list[int], list[np.ndarray]] | None:
    starts = [min(PIXELS * i, plane - PIXELS) for i in range(-(-plane // PIXELS))]
    offsets, perm = [], []
    for q0 in starts:
        y, x = np.divmod(np.arange(q0, q0 + PIXELS), ow)
        pos = y * step_y + x * step_x
        rel = pos - pos[0]
        if rel.max() + 3 >= span:
            return None
        offsets.append(int(pos[0]))
        perm.append((rel[:, None] + np.arange(4)[None, :]).reshape(-1))
    return starts, offsets, perm


def stem_geometry(
    in_hw: tuple[int, int], kernel_hw: tuple[int, int], strides: Sequence[int],
    pads: Sequence[int], pool: tuple[int, int] = (1, 1),
) -> StemGeometry | None:  # fmt: skip
    """The blocks of a conv (followed by a ``pool``-sized max pool of the same stride, floor
    mode, when ``pool`` is not ``(1, 1)``) on one or two loads (module docstring); None when
    they do not fit or the output plane has fewer than 16 or more than ``16 * MAX_BLOCKS``
    pixels."""
    h, w = in_hw
    kh, kw = kernel_hw
    sh, sw = _pair(tuple(strides))
    pt, pl, pb, pr = _pads(tuple(pads))
    ph, pw = pool
    oh = conv_out_size(h, kh, sh, pt, pb, 1) // ph
    ow = conv_out_size(w, kw, sw, pl, pr, 1) // pw
    hp, wq = h + pt + pb, w + pl + pr
    plane = oh * ow
    if not PIXELS <= plane <= PIXELS * MAX_BLOCKS:
        return None
    subs = tuple(dy * sh * wq + dx * sw for dy in range(ph) for dx in range(pw))
    for loads in (1, 2):
        found = _blocks(plane, ow, ph * sh * wq, pw * sw, 64 * loads)
        if found is not None:
            starts, offsets, perm = found
            return StemGeometry(
                oh, ow, hp, wq, tuple(starts), np.asarray(offsets, np.int32),
                np.asarray(perm, np.uint8), loads, subs,
            )  # fmt: skip
    return None


def stem_applies(
    target: Any,
    oc: int,
    lanes: int,
    in_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    groups: int,
    epilogue: QEpilogue,
    in_block: int | None = None,
    pool: tuple[int, int] = (1, 1),
) -> bool:
    """Whether a ``window``-form conv runs here instead: an AVX-512 VNNI + VBMI target, ``oc <=
    MAX_CHANNELS`` (and no more than the block's ``lanes``), not grouped, no dilation, no residual
    in the epilogue, blocks that fit (:func:`stem_geometry`); a blocked input (``in_block``: its
    channel block) in blocks of 8 or 16 with rows of at least ``64 / in_block`` pixels. With a
    ``pool`` (the max pool that follows, fused), an epilogue that never decreases with the
    accumulator (no hard-swish), so that the max of the accumulators gives the max output."""
    import tvm

    from mcopt.targets.cpu.kernels.int8_intrin import _has

    if not (
        groups == 1
        and 0 < oc <= min(MAX_CHANNELS, lanes)
        and _pair(tuple(dilations)) == (1, 1)
        and epilogue.residual is None
    ):
        return False
    if in_block is not None and (in_block not in (8, 16) or in_hw[1] < 64 // in_block):
        return False
    if pool != (1, 1) and not monotone(epilogue):
        return False
    if stem_geometry(in_hw, kernel_hw, strides, pads, pool) is None:
        return False
    if not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(target)
    return all(_has(target, f) for f in ("avx512f", "avx512bw", "avx512vnni", "avx512vbmi"))


def monotone(epilogue: QEpilogue) -> bool:
    """Whether ``epilogue`` never decreases as its accumulator grows (for multipliers >= 0):
    clamps, rounding, requantizing and a leaky ReLU of slope >= 0 do not; hard-swish does (below
    -3)."""
    act = epilogue.post_act
    ok = act == "none" or (act == "leaky_relu" and epilogue.post_alpha >= 0)
    return ok and epilogue.residual is None


def pack_stem_weight(w: np.ndarray) -> np.ndarray:
    """``(OC, C, KH, KW) int8 -> (OC, C, KH, G) int32``: each word the 4 weights of one group of
    4 kernel columns (zero-padded to ``4 G``), as ``vpdpbusd`` reads a broadcast dword."""
    oc, c, kh, kw = w.shape
    g = _window_groups(kw)
    wp = np.zeros((oc, c, kh, 4 * g), np.int8)
    wp[..., :kw] = w
    return np.ascontiguousarray(wp).view(np.int32).reshape(oc, c, kh, g)


def stem_tables(geom: StemGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's table arguments: ``(offsets (B,) int32, perm (B, 64) uint8)`` (indices below
    ``64 * loads``)."""
    return geom.offsets, geom.perm


def int8_stem_vnni(
    in_shape: Sequence[int],
    oc: int,
    lanes: int,
    kernel_hw: tuple[int, int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    *,
    in_channels: int | None = None,
    in_dtype: str = "uint8",
    x_zero_point: int = 0,
    epilogue: QEpilogue,
    in_quant: tuple[float, int] | None = None,
    pool: tuple[int, int] = (1, 1),
) -> tuple[Any, StemGeometry]:
    """The PrimFunc ``(x, kernel (OC, C, KH, G) i32, bias (L,) i32, mult (L,) f32, [offsets
    (B,) i32, perm (B, 64) u8,] out (N, 1, OH, OW, L))`` (module docstring) and its geometry
    (the tables are :func:`stem_tables` of it). ``x``: a plain ``(N, C, H,
    W)`` input, float32 when ``in_quant = (scale, zp)`` (quantized to u8 in the copy), else u8;
    or a blocked ``(N, ICb, H, W, ib)`` u8 one whose first ``in_channels`` channels are read.
    ``kernel`` from :func:`pack_stem_weight`; ``bias`` :func:`.int8_conv.conv_bias_eff` with
    ``x_zero_point``; ``lanes`` the output block. ``pool``: a max pool of that size and stride
    (floor mode, no padding) fused: ``out`` is the pooled plane, the max of each window's
    accumulators going through the epilogue (which must be :func:`monotone`)."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from mcopt.targets.cpu.kernels.int8_intrin import vpdpbusd

    blocked = len(in_shape) == 5
    if in_quant is None and in_dtype != "uint8":
        raise ValueError(f"the stem form reads a u8 input or quantizes a float one, not {in_dtype}")
    if epilogue.residual is not None:
        raise ValueError("the stem form has no residual input")
    if blocked:
        n, icb, h, w, ib = (int(d) for d in in_shape)
        c_in = int(in_channels if in_channels is not None else icb * ib)
        if in_quant is not None or ib not in (8, 16) or w < 64 // ib or c_in > icb * ib:
            raise ValueError(f"stem form: blocked input {tuple(in_shape)}, {c_in} channels")
    else:
        n, c_in, h, w = (int(d) for d in in_shape)
    kh, kw = kernel_hw
    sh, sw = _pair(tuple(strides))
    pt, pl, pb, pr = _pads(tuple(pads))
    if pool != (1, 1) and not monotone(epilogue):
        raise ValueError("a fused max pool needs an epilogue that never decreases")
    geom = stem_geometry((h, w), kernel_hw, strides, pads, pool)
    if geom is None or not 0 < oc <= lanes:
        raise ValueError(f"stem form: {oc} channels in blocks of {lanes}, input {h}x{w}")
    oh, ow, wq, plane = geom.oh, geom.ow, geom.wq, geom.plane
    g_n = _window_groups(kw)
    nblk = len(geom.starts)
    out_dtype = epilogue.out_dtype
    order = [tirx.IntImm("int32", c * PIXELS + p) for p in range(PIXELS) for c in range(lanes)]
    padded = any((pt, pl, pb, pr))

    def intrin(dtype: str, name: str, *args: Any) -> Any:
        return T.call_llvm_pure_intrin(dtype, T.llvm_lookup_intrinsic_id(name), *args)

    with IRBuilder() as ib_:
        with T.prim_func():
            T.func_name("main")
            if blocked:
                x = T.arg("x", T.buffer((n, icb, h, w, ib), "uint8"))
            else:
                x = T.arg("x", T.buffer((n, c_in, h, w), "float32" if in_quant else "uint8"))
            kern = T.arg("kernel", T.buffer((oc, c_in, kh, g_n), "int32"))
            bias = T.arg("bias", T.buffer((lanes,), "int32"))
            mult = T.arg("mult", T.buffer((lanes,), "float32"))
            offs = T.arg("offsets", T.buffer((nblk,), "int32"))
            perm = T.arg("perm", T.buffer((nblk, 64), "uint8"))
            out = T.arg("out", T.buffer((n, 1, oh, ow, lanes), out_dtype))
            T.func_attr({"tirx.noalias": True})
            xq = T.alloc_buffer((c_in * plane + SLACK,), "uint8")
            per = max(1, min(len(geom.subs), ACCUMULATORS // oc))
            acc = T.alloc_local((per * oc * PIXELS,), "int32")
            accm = T.alloc_local((oc * PIXELS,), "int32")  # the max over the pooled windows

            def copy_in(b_: Any) -> None:
                """The padded 8-bit planes of image ``b_``."""
                if padded:  # the zero point everywhere, then the rows
                    with T.serial(0, c_in * plane // 64) as i:
                        T.buffer_store(
                            xq, tirx.Broadcast(tirx.const(x_zero_point, "uint8"), 64),
                            [tirx.Ramp(i * 64, 1, 64)],
                        )  # fmt: skip
                    for i in range(c_in * plane // 64 * 64, c_in * plane):
                        T.buffer_store(xq, tirx.const(x_zero_point, "uint8"), [i])
                if blocked:  # 64 / ib pixels a load, one shuffle per channel
                    gp = 64 // ib
                    for cb in range(-(-c_in // ib)):
                        with T.serial(0, h) as y:
                            for x0 in sorted({min(gp * i, w - gp) for i in range(-(-w // gp))}):
                                v = T.bind(x.vload([b_, cb, y, x0, 0], "uint8x64"))
                                for k in range(min(ib, c_in - cb * ib)):
                                    sel = [tirx.IntImm("int32", p * ib + k) for p in range(gp)]
                                    dst = (cb * ib + k) * plane + (y + pt) * wq + pl + x0
                                    T.buffer_store(
                                        xq, tirx.Shuffle([v], sel), [tirx.Ramp(dst, 1, gp)]
                                    )
                    return
                with T.serial(0, c_in) as ci:
                    with T.serial(0, h) as y:
                        with T.vectorized(0, w) as xx:
                            v = x[b_, ci, y, xx]
                            if in_quant is not None:  # the quantize op's expression
                                v = quantize_u8_te(v, *in_quant)
                            T.buffer_store(xq, v, [ci * plane + (y + pt) * wq + pl + xx])

            def load(at: Any) -> list[Any]:
                return [xq.vload([at + 64 * j], "uint8x64") for j in range(geom.loads)]

            def lanes16(c: int) -> Any:
                return tirx.Ramp(c * PIXELS, 1, PIXELS)

            def slot(si: int, c: int) -> int:
                return (si * oc + c) * PIXELS

            def block(base: Any, permute: Any, store_at: list[Any]) -> None:
                """One block: ``base`` its first window's offset in a plane, ``permute(vs)`` the
                16 windows of ``geom.loads`` 64-byte loads, the result stored at ``store_at``.
                The pooled windows (``subs``) accumulate side by side, ``per`` at a time:
                independent ``vpdpbusd`` chains, each weight broadcast once."""
                chunks = [geom.subs[i : i + per] for i in range(0, len(geom.subs), per)]
                finals: list[Any] = []
                for k_, chunk in enumerate(chunks):
                    for si in range(len(chunk)):
                        for c in range(oc):
                            T.buffer_store(
                                acc, tirx.Broadcast(bias[c], PIXELS),
                                [tirx.Ramp(slot(si, c), 1, PIXELS)],
                            )  # fmt: skip
                    with T.serial(0, c_in) as ci:
                        for r in range(kh):
                            for g in range(g_n):
                                a_ops = []
                                for sub in chunk:
                                    at = ci * plane + base + sub + r * wq + 4 * g
                                    a_ops.append(T.bind(permute(load(at))))
                                for c in range(oc):
                                    wv = T.bind(tirx.Broadcast(kern[c, ci, r, g], PIXELS))
                                    for si, a_op in enumerate(a_ops):
                                        cur = acc.vload([slot(si, c)], "int32x16")
                                        new = vpdpbusd(cur, a_op, wv, PIXELS)
                                        T.buffer_store(
                                            acc, new, [tirx.Ramp(slot(si, c), 1, PIXELS)]
                                        )
                    for c in range(oc):
                        v = acc.vload([slot(0, c)], "int32x16")
                        for si in range(1, len(chunk)):
                            v = tirx.Max(v, acc.vload([slot(si, c)], "int32x16"))
                        if len(chunks) == 1:
                            finals.append(v)
                            continue
                        if k_:
                            v = tirx.Max(v, accm.vload([c * PIXELS], "int32x16"))
                        T.buffer_store(accm, v, [tirx.Ramp(c * PIXELS, 1, PIXELS)])
                if len(chunks) > 1:
                    finals = [accm.vload([c * PIXELS], "int32x16") for c in range(oc)]
                vals = []
                for c in range(lanes):
                    av = finals[c] if c < oc else tirx.Broadcast(bias[c], PIXELS)
                    vals.append(epilogue.apply_te(av, tirx.Broadcast(mult[c], PIXELS)))
                T.buffer_store(out, tirx.Shuffle(vals, order), store_at)

            with T.serial(0, n) as b_:
                copy_in(b_)
                with T.serial(0, nblk) as i:
                    q0 = T.bind(tirx.min(i * PIXELS, oh * ow - PIXELS))
                    pv = T.bind(perm.vload([i, 0], "uint8x64"))

                    def permute(vs: list[Any], pv: Any = pv) -> Any:
                        if len(vs) == 1:
                            return intrin("uint8x64", "llvm.x86.avx512.permvar.qi.512", vs[0], pv)
                        return intrin(
                            "uint8x64", "llvm.x86.avx512.vpermi2var.qi.512", vs[0], pv, vs[1]
                        )

                    block(offs[i], permute, [b_, 0, 0, 0, tirx.Ramp(q0 * lanes, 1, PIXELS * lanes)])
    return ib_.get().with_attr("tirx.is_scheduled", True), geom


__all__ = [
    "MAX_CHANNELS",
    "StemGeometry",
    "int8_stem_vnni",
    "pack_stem_weight",
    "stem_applies",
    "stem_geometry",
    "stem_tables",
]
