"""The pixels-on-lanes int8 conv for few output channels on AVX-512 VNNI + VBMI, hand-written TIR.

The ``window`` form of :func:`.int8_conv_nchwc.int8_conv2d_nchwc` puts output channels on the
lanes: one ``vpdpbusd`` per output pixel, kernel row and group of 4 kernel columns, each with a
broadcast of the pixel's 4 input bytes. A conv with few output channels (LeNet-5's first conv:
6, 3 once pruned; 8 lanes) leaves most lanes on padding. Here the 16 lanes of a ``zmm`` are 16
consecutive output pixels of one row and one channel::

    acc[c][p] = bias_eff[c] + sum_{ci, r, g} sum_{k<4} xq[ci, y*sh + r, (x0 + p)*sw + 4g + k]
                                                         * w[c, ci, r, 4g + k]
    out[n, 0, y, x0 + p, c] = QEpilogue(acc[c][p], mult[c])          (p < 16, c < L)

- ``xq`` is a padded 8-bit copy of the plain NCHW input (the float image quantized on the way,
  ``round(x / scale) + zp`` clamped, as the ``quantize`` op does, or a u8 input copied), padded
  with the input's zero point; each row holds at least 64 bytes past any block's start;
- per (input channel, kernel row, column group): one 64-byte load of the row at ``x0*sw + 4g``,
  one byte permutation (``vpermb``) into the 16 pixels' 4-byte windows (pixel ``p``, tap ``k``:
  byte ``p*sw + k``), then one ``vpdpbusd`` per output channel with the 4 weights broadcast;
- the epilogue runs on the 16 pixels of each channel, then one shuffle interleaves the ``L``
  channels' results into the ``NCHW[L]c`` block (16 pixels x ``L`` channels, contiguous). Blocks
  are 16 pixels; a row whose width is not a multiple of 16 ends with a block that overlaps the one
  before (the same values written twice), so no store leaves the row.

Dot products: ``ceil(OW/16) * OH * OC * C * KH * ceil(KW/4)`` (LeNet-5's 5x5 conv, 3 channels:
1,680 of 16 lanes) against ``OW * OH * C * KH * ceil(KW/4)`` of ``L`` lanes for the window form
(7,840): fewer whenever ``OC`` is below the lanes. Channels ``OC..L-1`` of the block (padding)
get the epilogue of their bias alone, as the window form's zero weights give.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mcopt.ops.quant import qrange
from mcopt.targets.cpu.kernels.conv2d import _pads, _pair, conv_out_size
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue

#: output pixels per block (the 16 int32 lanes of a zmm)
PIXELS = 16
#: most output channels the form takes (accumulators in registers; above this the window
#: form's channel lanes are not mostly padding any more)
MAX_CHANNELS = 8


def _window_groups(kw: int) -> int:
    return -(-kw // 4)


def stem_applies(
    target: Any,
    oc: int,
    lanes: int,
    kernel_hw: tuple[int, int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out_w: int,
    groups: int,
    epilogue: QEpilogue,
) -> bool:
    """Whether a ``window``-form conv on a plain input runs here instead: an AVX-512 VNNI + VBMI
    target, ``oc <= MAX_CHANNELS`` (and no more than the block's ``lanes``), not grouped, column
    stride at most 3 (16 windows inside one 64-byte load), no dilation, output rows of at least
    16 pixels, no residual in the epilogue."""
    import tvm

    from mcopt.targets.cpu.kernels.int8_intrin import _has

    sh, sw = _pair(tuple(strides))
    if not (
        groups == 1
        and 0 < oc <= min(MAX_CHANNELS, lanes)
        and 1 <= sw <= 3
        and _pair(tuple(dilations)) == (1, 1)
        and out_w >= PIXELS
        and epilogue.residual is None
    ):
        return False
    if not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(target)
    return all(_has(target, f) for f in ("avx512f", "avx512bw", "avx512vnni", "avx512vbmi"))


def pack_stem_weight(w: np.ndarray) -> np.ndarray:
    """``(OC, C, KH, KW) int8 -> (OC, C, KH, G) int32``: each word the 4 weights of one group of
    4 kernel columns (zero-padded to ``4 G``), as ``vpdpbusd`` reads a broadcast dword."""
    oc, c, kh, kw = w.shape
    g = _window_groups(kw)
    wp = np.zeros((oc, c, kh, 4 * g), np.int8)
    wp[..., :kw] = w
    return np.ascontiguousarray(wp).view(np.int32).reshape(oc, c, kh, g)


def int8_stem_vnni(
    in_shape: Sequence[int],
    oc: int,
    lanes: int,
    kernel_hw: tuple[int, int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    *,
    in_dtype: str = "uint8",
    x_zero_point: int = 0,
    epilogue: QEpilogue,
    in_quant: tuple[float, int] | None = None,
) -> Any:
    """The PrimFunc ``(x (N, C, H, W), kernel (OC, C, KH, G) i32, bias (L,) i32, mult (L,) f32,
    out (N, 1, OH, OW, L))`` (module docstring): ``x`` float32 when ``in_quant = (scale, zp)``
    (quantized to u8 in the copy), else u8; ``kernel`` from :func:`pack_stem_weight`; ``bias``
    :func:`.int8_conv.conv_bias_eff` with ``x_zero_point``; ``lanes`` the output block."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T
    from tvm.target.codegen import llvm_version_major

    if in_quant is None and in_dtype != "uint8":
        raise ValueError(f"the stem form reads a u8 input or quantizes a float one, not {in_dtype}")
    if epilogue.residual is not None:
        raise ValueError("the stem form has no residual input")
    n, c_in, h, w = (int(d) for d in in_shape)
    kh, kw = kernel_hw
    sh, sw = _pair(tuple(strides))
    pt, pl, pb, pr = _pads(tuple(pads))
    oh = conv_out_size(h, kh, sh, pt, pb, 1)
    ow = conv_out_size(w, kw, sw, pl, pr, 1)
    if ow < PIXELS or not 0 < oc <= lanes:
        raise ValueError(f"stem form: {oc} channels in blocks of {lanes}, rows of {ow} pixels")
    g_n = _window_groups(kw)
    starts = [min(PIXELS * i, ow - PIXELS) for i in range(-(-ow // PIXELS))]
    hp = h + pt + pb
    # each block's loads read 64 bytes from column x0*sw + 4g
    wq = max(w + pl + pr, (ow - PIXELS) * sw + 4 * (g_n - 1) + 64)
    wq = -(-wq // 64) * 64
    plane = hp * wq
    out_dtype = epilogue.out_dtype
    pad_val = int(x_zero_point)
    lo, hi = qrange("uint8")
    idx = [tirx.IntImm("int32", p * sw + k) for p in range(PIXELS) for k in range(4)]
    order = [tirx.IntImm("int32", c * PIXELS + p) for p in range(PIXELS) for c in range(lanes)]
    op_dtype = "int8x64" if llvm_version_major() >= 20 else "int32x16"
    vnni = "llvm.x86.avx512.vpdpbusd.512"

    def fconst(v: float) -> Any:
        return tirx.const(float(v), "float32")

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            x = T.arg("x", T.buffer((n, c_in, h, w), "float32" if in_quant else "uint8"))
            kern = T.arg("kernel", T.buffer((oc, c_in, kh, g_n), "int32"))
            bias = T.arg("bias", T.buffer((lanes,), "int32"))
            mult = T.arg("mult", T.buffer((lanes,), "float32"))
            out = T.arg("out", T.buffer((n, 1, oh, ow, lanes), out_dtype))
            T.func_attr({"tirx.noalias": True})
            xq = T.alloc_buffer((c_in * plane,), "uint8")
            acc = T.alloc_local((oc * PIXELS,), "int32")
            with T.serial(0, n) as b_:
                # the padded 8-bit copy: the zero point everywhere, then the rows
                with T.serial(0, c_in * plane // 64) as i:
                    T.buffer_store(
                        xq,
                        tirx.Broadcast(tirx.const(pad_val, "uint8"), 64),
                        [tirx.Ramp(i * 64, 1, 64)],
                    )
                with T.serial(0, c_in) as ci:
                    with T.serial(0, h) as y:
                        with T.vectorized(0, w) as xx:
                            v = x[b_, ci, y, xx]
                            if in_quant is not None:  # the quantize op's expression
                                q = tirx.round(v / fconst(in_quant[0])) + fconst(in_quant[1])
                                q = tirx.max(tirx.min(q, fconst(hi)), fconst(lo))
                                v = q.astype("int32").astype("uint8")
                            T.buffer_store(xq, v, [ci * plane + (y + pt) * wq + pl + xx])
                with T.serial(0, oh) as y:
                    for x0 in starts:
                        for c in range(oc):
                            T.buffer_store(
                                acc, tirx.Broadcast(bias[c], PIXELS),
                                [tirx.Ramp(c * PIXELS, 1, PIXELS)],
                            )  # fmt: skip
                        with T.serial(0, c_in) as ci:
                            for r in range(kh):
                                for g in range(g_n):
                                    row = ci * plane + (y * sh + r) * wq + x0 * sw + 4 * g
                                    a = T.bind(tirx.Shuffle([xq.vload([row], "uint8x64")], idx))
                                    a_op = T.reinterpret(op_dtype, a)
                                    for c in range(oc):
                                        wv = tirx.Broadcast(kern[c, ci, r, g], PIXELS)
                                        cur = acc.vload([c * PIXELS], "int32x16")
                                        new = T.call_llvm_pure_intrin(
                                            "int32x16", T.llvm_lookup_intrinsic_id(vnni),
                                            cur, a_op, T.reinterpret(op_dtype, wv),
                                        )  # fmt: skip
                                        T.buffer_store(acc, new, [tirx.Ramp(c * PIXELS, 1, PIXELS)])
                        vals = []
                        for c in range(lanes):
                            av = (
                                acc.vload([c * PIXELS], "int32x16")
                                if c < oc
                                else tirx.Broadcast(bias[c], PIXELS)
                            )
                            vals.append(epilogue.apply_te(av, tirx.Broadcast(mult[c], PIXELS)))
                        T.buffer_store(
                            out, tirx.Shuffle(vals, order),
                            [b_, 0, y, x0, tirx.Ramp(0, 1, PIXELS * lanes)],
                        )  # fmt: skip
    return ib.get().with_attr("tirx.is_scheduled", True)


__all__ = ["MAX_CHANNELS", "int8_stem_vnni", "pack_stem_weight", "stem_applies"]
