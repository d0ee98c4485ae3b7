"""fp32 conv2d with a few output channels (1-4): the input-channel block (or a one-channel signal's
taps) on the lanes, one horizontal sum per output.

The direct template (:mod:`.conv2d`) puts output channels on the SIMD lanes; with one output
channel (a segmentation / saliency / pitch head, basic-pitch's last convs, Silero's last layer) its
vectors have one lane and it runs scalar: 32 -> 1 channels at 172 x 88, 7 x 3 took 1.8 ms. Here
the lanes hold the ``ic_bn`` input channels of one blocked pixel, as they lie in memory::

    part[n, y, x, o, l] = sum_{icc, kh, kw} data[n, icc, y*sh + kh*dh, x*sw + kw*dw, l]
                                            * kernel[o, icc, kh, kw, l]
    out[n, 0, y, x, o]  = act(sum_l part[n, y, x, o, l] + bias[o] (+ residual))

Register tile: ``reg_n`` output pixels x ``oc`` channels of ``ic_bn``-lane accumulators; per step
of the reduction one vector load of the weights per channel (shared by the pixels), one of the
input per pixel, ``reg_n * oc`` FMAs. Loop nest: ``parallel(n, y)`` / ``x_outer`` / ``icc, kh,
kw`` / ``x_inner, o`` (unrolled) / ``l`` (vectorized); then the lane sums and the fused epilogue
(:class:`~.epilogue.Epilogue`) under ``x_outer``. The output is the planner's home layout of
``oc <= lanes`` channels, one block ``(N, 1, OH, OW, OC)``.

A one-channel input through a kernel at least a vector wide (an FIR filter: basic-pitch's 256-tap
CQT convs, 2.53 -> 0.19 ms over 44,098 samples) puts ``lanes`` consecutive taps on the lanes
instead (:func:`conv2d_taps`: each input vector an unaligned load of the row), with the same lane
sums and epilogue; both run ``parallel(n, y, x_outer)`` (a signal is one row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcopt.targets.cpu.kernels.conv2d import (
    _has_block,
    _pads,
    _pair,
    conv_out_size,
    pad_nchw_blocked,
    pad_nchwc,
    schedule_pad,
)
from mcopt.targets.cpu.kernels.epilogue import Epilogue
from mcopt.targets.cpu.kernels.threads import parallel, vector_init, vectorize_divisor

#: the most output channels this kernel takes (above, the direct template's lanes fill up)
NARROW_MAX_OC = 4
#: accumulators of one register tile (of the 32 vector registers: the rest hold loads)
NARROW_ACCUMULATORS = 16


def narrow_conv_applies(
    oc: int, ic: int, kh: int, kw: int, ic_bn: int, lanes: int, dtype: str
) -> bool:
    """Whether a conv of ``oc`` output channels on ``ic_bn``-blocked input runs here: also enough
    vector steps per output (``IC / ic_bn * KH * KW >= max(8, 4 OC)``) to pay for its horizontal
    sum (MTCNN's 32 -> 2 / 32 -> 4 1x1 heads, two steps each: 2.4x / 8x slower than the direct
    template's 2- / 4-lane vectors)."""
    steps = ic // max(ic_bn, 1) * kh * kw
    return (
        dtype == "float32"
        and oc <= NARROW_MAX_OC
        and oc < lanes
        and ic_bn >= 8
        and steps >= max(8, 4 * oc)
    )


def narrow_reg_n(oc: int, ow: int) -> int:
    return max(1, min(ow, NARROW_ACCUMULATORS // oc))


def conv2d_narrow_te(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    ic_bn: int,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    epilogue: Epilogue | None = None,
    dtype: str = "float32",
) -> list[Any]:
    """TE tensors ``[data, kernel, (bias), (residual), out]`` (see the module docstring):
    ``data (N, IC/ic_bn, H, W, ic_bn)``, ``kernel (OC, IC/ic_bn, KH, KW, ic_bn)``, ``bias (1,
    OC)``, ``out (N, 1, OH, OW, OC)``."""
    from tvm import te

    epilogue = epilogue or Epilogue()
    n, ic, h, w = (int(d) for d in data_shape)
    oc, ic2, kh_, kw_ = (int(d) for d in weight_shape)
    if ic2 != ic or ic % ic_bn:
        raise ValueError(f"weight {tuple(weight_shape)} does not match data {tuple(data_shape)}")
    (sh, sw), (dh, dw), pads = _pair(strides), _pair(dilation), _pads(padding)
    oh = conv_out_size(h, kh_, sh, pads[0], pads[2], dh)
    ow = conv_out_size(w, kw_, sw, pads[1], pads[3], dw)
    reg_n = narrow_reg_n(oc, ow)
    owp = -(-ow // reg_n) * reg_n
    extra = max(0, (owp - 1) * sw + (kw_ - 1) * dw + 1 - (w + pads[1] + pads[3]))
    data = te.placeholder((n, ic // ic_bn, h, w, ic_bn), dtype, name="data")
    dpad = pad_nchwc(data, (pads[0], pads[1], pads[2], pads[3] + extra))
    kernel = te.placeholder((oc, ic // ic_bn, kh_, kw_, ic_bn), dtype, "kernel")
    icc = te.reduce_axis((0, ic // ic_bn), "icc")
    rkh = te.reduce_axis((0, kh_), "kh")
    rkw = te.reduce_axis((0, kw_), "kw")
    part = te.compute(
        (n, oh, owp, oc, ic_bn),
        lambda b, y, x, o, lane: te.sum(
            dpad[b, icc, y * sh + rkh * dh, x * sw + rkw * dw, lane]
            * kernel[o, icc, rkh, rkw, lane],
            axis=[icc, rkh, rkw],
        ),
        name="conv",
    )
    return _lane_sums(part, [data, kernel], ow, epilogue, dtype)


def _lane_sums(part: Any, tensors: list[Any], ow: int, epilogue: Epilogue, dtype: str) -> list[Any]:
    """``out[n, 0, y, x, o] = epilogue(sum_l part[n, y, x, o, l])`` for ``x < ow``; appends the
    epilogue's placeholders and the output to ``tensors`` (``[data, kernel]``)."""
    from tvm import te

    n, oh, owp, oc, lanes = (int(d) for d in part.shape)
    rl = te.reduce_axis((0, lanes), "l")
    lane_sum = te.compute(
        (n, oh, owp, oc), lambda b, y, x, o: te.sum(part[b, y, x, o, rl], axis=rl), name="lanes"
    )
    epilogue.blocked_output(
        lambda b, c, y, x, k: lane_sum[b, y, x, k], (n, 1, oh, ow, oc), dtype, tensors
    )
    return tensors


def conv2d_narrow(*args: Any, **kwargs: Any) -> Any:
    """The scheduled ``tvm.tirx.PrimFunc`` of :func:`conv2d_narrow_te` (the same arguments)."""
    return _schedule(conv2d_narrow_te(*args, **kwargs), "conv2d_narrow")


def _schedule(tensors: list[Any], name: str) -> Any:
    """``parallel(n, y, x_outer)`` / reduction / ``x_inner, o`` (unrolled) / lanes (vectorized),
    then the lane sums and the epilogue under ``x_outer`` (``tensors[1]``: the kernel, ``OC``
    first)."""
    from tvm import s_tir, te

    oc = int(tensors[1].shape[0])
    func = te.create_prim_func(tensors).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    conv = sch.get_sblock("conv")
    b, y, x, o, lane, *red = sch.get_loops(conv)
    ow = int(sch.get(sch.get_loops(sch.get_sblock("out"))[3]).extent)
    x_o, x_i = sch.split(x, [None, narrow_reg_n(oc, ow)])
    sch.reorder(b, y, x_o, *red, x_i, o, lane)
    outer = sch.fuse(b, y, x_o)
    parallel(sch, outer)
    sch.unroll(x_i)
    sch.unroll(o)
    sch.vectorize(lane)
    vector_init(sch, conv, red[0], unroll=2)
    sch.reverse_compute_at(sch.get_sblock("lanes"), outer)
    sch.reverse_compute_at(sch.get_sblock("out"), outer)
    if _has_block(sch, "data_pad"):
        pad_loops = sch.get_loops(sch.get_sblock("data_pad"))
        if int(sch.get(pad_loops[-1]).extent) == 1:  # one channel: the row is the vector
            parallel(sch, sch.fuse(*pad_loops[:3]))
            vectorize_divisor(sch, pad_loops[-2])
        else:
            schedule_pad(sch)
    return sch.mod["main"]


def taps_conv_applies(oc: int, ic: int, kw: int, dw: int, lanes: int, dtype: str) -> bool:
    """Whether a one-input-channel conv with a wide kernel runs as :func:`conv2d_taps`."""
    return dtype == "float32" and ic == 1 and oc <= NARROW_MAX_OC and kw >= lanes and dw == 1


def conv2d_taps_te(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    lanes: int,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    epilogue: Epilogue | None = None,
    dtype: str = "float32",
    plain_input: bool = True,
) -> list[Any]:
    """A one-channel signal through a wide kernel (an FIR filter: basic-pitch's 256-tap CQT
    convs): ``lanes`` consecutive taps on the lanes, each vector an unaligned load of the row::

        part[n, y, x, o, l] = sum_{kh, j} data[n, 0, y*sh + kh*dh, x*sw + j*L + l]
                                         * kernel[o, kh, j, l]       (taps zero-padded to j*L)

    then the lane sums and the epilogue as :func:`conv2d_narrow_te`. ``data (N, 1, H, W)``
    (``plain_input``) or ``(N, 1, H, W, 1)``; ``kernel (OC, KH, ceil(KW/L), L)``."""
    from tvm import te

    epilogue = epilogue or Epilogue()
    n, ic, h, w = (int(d) for d in data_shape)
    oc, _, kh_, kw_ = (int(d) for d in weight_shape)
    (sh, sw), (dh, _dw), pads = _pair(strides), _pair(dilation), _pads(padding)
    oh = conv_out_size(h, kh_, sh, pads[0], pads[2], dh)
    ow = conv_out_size(w, kw_, sw, pads[1], pads[3], 1)
    groups = -(-kw_ // lanes)
    owp = -(-ow // narrow_reg_n(oc, ow)) * narrow_reg_n(oc, ow)
    extra = max(0, (owp - 1) * sw + groups * lanes - (w + pads[1] + pads[3]))
    full = (pads[0], pads[1], pads[2], pads[3] + extra)
    if plain_input:
        data = te.placeholder((n, 1, h, w), dtype, name="data")
        dpad = pad_nchw_blocked(data, full)
    else:
        data = te.placeholder((n, 1, h, w, 1), dtype, name="data")
        dpad = pad_nchwc(data, full)
    kernel = te.placeholder((oc, kh_, groups, lanes), dtype, "kernel")
    rkh = te.reduce_axis((0, kh_), "kh")
    rj = te.reduce_axis((0, groups), "j")
    part = te.compute(
        (n, oh, owp, oc, lanes),
        lambda b, y, x, o, lane: te.sum(
            dpad[b, 0, y * sh + rkh * dh, x * sw + rj * lanes + lane, 0] * kernel[o, rkh, rj, lane],
            axis=[rkh, rj],
        ),
        name="conv",
    )
    return _lane_sums(part, [data, kernel], ow, epilogue, dtype)


def conv2d_taps(*args: Any, **kwargs: Any) -> Any:
    """The scheduled ``tvm.tirx.PrimFunc`` of :func:`conv2d_taps_te` (the same arguments)."""
    return _schedule(conv2d_taps_te(*args, **kwargs), "conv2d_taps")


def pack_taps_weight(weight: Any, lanes: int) -> Any:
    """``(OC, 1, KH, KW)`` -> ``(OC, KH, ceil(KW/L), L)``, the taps zero-padded."""
    import numpy as np

    oc, _, kh, kw = weight.shape
    groups = -(-kw // lanes)
    out = np.zeros((oc, kh, groups * lanes), weight.dtype)
    out[:, :, :kw] = weight[:, 0]
    return out.reshape(oc, kh, groups, lanes)


__all__ = [
    "NARROW_MAX_OC",
    "conv2d_narrow",
    "conv2d_narrow_te",
    "conv2d_taps",
    "conv2d_taps_te",
    "narrow_conv_applies",
    "pack_taps_weight",
    "taps_conv_applies",
]
