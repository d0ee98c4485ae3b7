"""Reference outputs for the int8 kernel tests (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def epilogue_reference(
    ep: Any, acc: np.ndarray, mult: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """(what an int8 conv kernel with epilogue `ep` must write, the residual it reads): `ep`
    (a :class:`~mcopt.targets.cpu.kernels.int8_epilogue.QEpilogue`) applied to the int32
    accumulators ``acc (1, OC, OH, OW)`` with per-channel multipliers `mult`, and a residual of
    the epilogue's kind drawn from `rng` (float32 ~ 3 N(0, 1), or int codes in [0, 256)); None
    without one."""
    res = None
    if ep.residual == "float32":
        res = rng.standard_normal(acc.shape).astype(np.float32) * 3
    elif ep.residual:
        res = rng.integers(0, 256, acc.shape).astype(ep.residual)
    return ep.apply_numpy(acc, mult.reshape(1, -1, 1, 1), res), res


def image_conv_case(
    rng: np.random.Generator, ic: int, oc: int, hw: int, k: int, stride: int, pad: int,
    scale: float, zp: int, w_bound: int = 128,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """A float image ``(1, ic, hw, hw)`` (a row of rounding ties in its first pixels), its u8
    quantization as the ``quantize`` op does (``round(x / scale) + zp``, clamped), int8 weights
    in ``[-w_bound, w_bound)`` ``(oc, ic, k, k)``, an int32 bias, and the int32 accumulators of
    the square-kernel conv (``mcopt.ops.quant.qconv2d_acc``): ``(x, xq, w, b, acc)``."""
    from mcopt.ops.quant import qconv2d_acc

    x = (rng.standard_normal((1, ic, hw, hw)) * 1.5).astype(np.float32)
    x[0, 0, 0, :4] = np.array([0.5, 1.5, -0.5, 2.5], np.float32) * scale  # ties: half to even
    xq = np.clip(np.round(x / np.float32(scale)) + np.float32(zp), 0, 255).astype(np.uint8)
    w = rng.integers(-w_bound, w_bound, (oc, ic, k, k)).astype(np.int8)
    b = rng.integers(-2000, 2000, oc).astype(np.int32)
    attrs = {"x_zero_point": zp, "strides": (stride,) * 2, "pads": (pad,) * 4,
             "dilations": (1, 1), "groups": 1}  # fmt: skip
    return x, xq, w, b, qconv2d_acc(xq, w, b, attrs)
