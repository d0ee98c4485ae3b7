"""Depthwise conv2d in the blocked NCHW[bn]c layout, vectorized over the channel block.

``out[n, c, oh, ow, b] = act(bias[c, b] (+ res) + sum_{kh, kw}
data[n, c, oh*sh + kh*dh - pt, ow*sw + kw*dw - pl, b] * kernel[c, kh, kw, b])``
with data ``(N, C/bn, H, W, bn)``, kernel ``(C/bn, KH, KW, bn)``, out ``(N, C/bn, OH, OW, bn)``.

Schedule (the depthwise case of Liu et al., USENIX ATC 2019; also Zhang et al., "High Performance
Depthwise and Pointwise Convolutions on Mobile Devices", AAAI 2020): every output lane has its own
weights, so there is no broadcast; a register tile of ``reg_n`` output columns keeps ``reg_n``
vector accumulators, each ``(kh, kw)`` step loads one weight vector and ``reg_n`` input vectors
(``kh, kw`` and the tile fully unrolled). The op does ``KH*KW`` FMAs per output and is bound by
memory and load bandwidth, not by FMAs. Loops: ``parallel(n, c_outer, oh)`` / ``ow_outer`` /
``kh, kw`` / ``ow_inner`` (unrolled) / ``b`` (vectorized), epilogue under ``ow_outer``.

Border: no padded copy of the input (``pad_copy=False``, the default): an out-of-range tap is a
guarded load (``if_then_else``) replaced by 0, as in :mod:`.pool` (a ``Select`` would load
unconditionally, and TVM drops the address clamp under the select's condition: out-of-bounds
reads at the borders). The op does so little
work per input byte that the copy dominated: MobileNet-V2's 96-channel 112x112 stride-2 layer took
0.317 ms with the copy and 0.132 ms without; every MobileNet-V2 depthwise layer got 1.4-2.7x faster
(stride 2 gains most: it reads four input pixels per output). ``pad_copy=True`` keeps the copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcopt.targets.cpu.kernels.conv2d import (
    _has_block,
    _pads,
    _pair,
    conv_out_size,
    pad_nchwc,
    schedule_pad,
)
from mcopt.targets.cpu.kernels.epilogue import Epilogue
from mcopt.targets.cpu.kernels.params import channel_block
from mcopt.targets.cpu.kernels.threads import parallel, vector_init


def choose_depthwise_params(
    data_shape: Sequence[int],
    kernel_size: Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    target: Any = None,
) -> tuple[int, int]:
    """``(bn, reg_n)``: ``bn`` = lanes (or the largest divisor of C not above it); ``reg_n`` =
    the divisor of OW (at most :func:`~.params.max_accumulators`) with the largest tile, rounding the
    width up only when no divisor above 3 exists."""
    from mcopt.targets.cpu.kernels.params import _info, max_accumulators

    info = _info(target)
    _, c, _, w = (int(d) for d in data_shape)
    kw = int(kernel_size[1])
    pads = _pads(padding)
    ow = conv_out_size(w, kw, _pair(strides)[1], pads[1], pads[3], _pair(dilation)[1])
    limit = max_accumulators(info.vregs)  # 28 on AVX-512 ran 1.5-3x slower than 14
    divs = [d for d in range(1, min(ow, limit) + 1) if ow % d == 0]
    reg_n = max(divs)
    if reg_n < 4 and ow > limit:
        reg_n = min(8, limit)
    return channel_block(c, info.lanes), reg_n


def depthwise_conv2d_nchwc_te(
    data_shape: Sequence[int],
    kernel_size: Sequence[int],
    strides: int | Sequence[int],
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
    bn: int,
    reg_n: int,
    epilogue: Epilogue,
    dtype: str = "float32",
    pad_copy: bool = False,
) -> list[Any]:
    """TE tensors ``[data, kernel, (bias), (residual), out]`` (see the module docstring)."""
    from tvm import te, tirx

    n, c, h, w = (int(d) for d in data_shape)
    kh_, kw_ = (int(d) for d in kernel_size)
    sh, sw = _pair(strides)
    dh, dw = _pair(dilation)
    pads = _pads(padding)
    if c % bn:
        raise ValueError(f"{c} channels do not divide into blocks of {bn}")
    oh = conv_out_size(h, kh_, sh, pads[0], pads[2], dh)
    ow = conv_out_size(w, kw_, sw, pads[1], pads[3], dw)
    owp = -(-ow // reg_n) * reg_n
    extra = max(0, (owp - 1) * sw + (kw_ - 1) * dw + 1 - (w + pads[1] + pads[3]))
    pads = (pads[0], pads[1], pads[2], pads[3] + extra)
    data = te.placeholder((n, c // bn, h, w, bn), dtype, name="data")
    kernel = te.placeholder((c // bn, kh_, kw_, bn), dtype, name="kernel")
    rkh = te.reduce_axis((0, kh_), "kh")
    rkw = te.reduce_axis((0, kw_), "kw")
    if pad_copy:
        dpad = pad_nchwc(data, pads)

        def tap(b_: Any, c_: Any, y: Any, x: Any, k: Any) -> Any:
            return dpad[b_, c_, y * sh + rkh * dh, x * sw + rkw * dw, k]

    else:  # guarded load, 0 out of range: no padded copy

        def tap(b_: Any, c_: Any, y: Any, x: Any, k: Any) -> Any:
            iy = y * sh + rkh * dh - pads[0]
            ix = x * sw + rkw * dw - pads[1]
            ok = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
            cy = te.max(te.min(iy, h - 1), 0)
            cx = te.max(te.min(ix, w - 1), 0)
            return tirx.if_then_else(ok, data[b_, c_, cy, cx, k], tirx.const(0.0, dtype))

    conv = te.compute(
        (n, c // bn, oh, owp, bn),
        lambda b_, c_, y, x, k: te.sum(
            tap(b_, c_, y, x, k) * kernel[c_, rkh, rkw, k], axis=[rkh, rkw]
        ),
        name="conv",
    )
    out_shape = (n, c // bn, oh, ow, bn)
    tensors = [data, kernel]
    epilogue.blocked_output(conv, out_shape, dtype, tensors)
    return tensors


def depthwise_conv2d_nchwc(
    data_shape: Sequence[int],
    kernel_size: Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    target: Any = None,
    epilogue: Epilogue | None = None,
    bn: int | None = None,
    reg_n: int | None = None,
    dtype: str = "float32",
    pad_copy: bool = False,
) -> Any:
    """A scheduled PrimFunc ``(data, kernel, [bias], [residual], out)`` of the blocked depthwise
    conv (``data_shape`` logical NCHW, ``kernel_size`` (KH, KW); weights packed with
    :func:`.layout.pack_depthwise_weight`)."""
    from tvm import s_tir, te

    epilogue = epilogue or Epilogue()
    cbn, creg = choose_depthwise_params(data_shape, kernel_size, strides, padding, dilation, target)
    bn, reg_n = bn or cbn, reg_n or creg
    tensors = depthwise_conv2d_nchwc_te(
        data_shape, kernel_size, strides, padding, dilation, bn, reg_n, epilogue, dtype, pad_copy
    )
    sch = s_tir.Schedule(te.create_prim_func(tensors))
    conv = sch.get_sblock("conv")
    n, c, oh, ow, b, kh, kw = sch.get_loops(conv)
    ow_o, ow_i = sch.split(ow, [None, reg_n])
    sch.reorder(n, c, oh, ow_o, kh, kw, ow_i, b)
    parallel(sch, sch.fuse(n, c, oh))
    sch.unroll(kh)
    sch.unroll(kw)
    sch.unroll(ow_i)
    sch.vectorize(b)
    vector_init(sch, conv, kh, unroll=1)
    out = sch.get_sblock("out")
    sch.reverse_compute_at(out, ow_o)
    sch.vectorize(sch.get_loops(out)[-1])
    if _has_block(sch, "data_pad"):
        schedule_pad(sch)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
