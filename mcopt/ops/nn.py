"""Neural-network ops: convolution, dense/matmul, batch norm, pooling, LRN, softmax (NCHW)."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mcopt.ir.types import TensorType
from mcopt.ops.schema import REQUIRED, Attrs, InTypes, OpSchema, register_op


# --- conv2d ---------------------------------------------------------------------------------------
def conv_out_dim(
    size: int, k: int, stride: int, pad_begin: int, pad_end: int, dilation: int
) -> int:
    return (size + pad_begin + pad_end - dilation * (k - 1) - 1) // stride + 1


def _conv2d_check(t: InTypes, a: Attrs) -> str | None:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    if x.rank != 4 or w.rank != 4:
        return f"expects 4-D NCHW input and OIHW weight, got {x} and {w}"
    g = a["groups"]
    if g < 1 or x.shape[1] % g or w.shape[0] % g:
        return f"groups={g} does not divide input channels {x.shape[1]} and filters {w.shape[0]}"
    if w.shape[1] * g != x.shape[1]:
        return f"weight {w} expects {w.shape[1] * g} input channels (groups={g}), input has {x.shape[1]}"
    if len(t) > 2 and t[2] is not None and t[2].shape != (w.shape[0],):
        return f"bias {t[2]} must have shape ({w.shape[0]},)"
    if len(a["strides"]) != 2 or len(a["pads"]) != 4 or len(a["dilations"]) != 2:
        return "strides/dilations need 2 values and pads 4 (top, left, bottom, right)"
    return None


def _conv2d_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = a["strides"], a["pads"], a["dilations"]
    ho = conv_out_dim(x.shape[2], w.shape[2], sh, pt, pb, dh)
    wo = conv_out_dim(x.shape[3], w.shape[3], sw, pl, pr, dw)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"output spatial size {ho}x{wo} is empty for input {x} and kernel {w}")
    return [TensorType((x.shape[0], w.shape[0], ho, wo), x.dtype)]


def conv2d_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
    groups: int,
) -> np.ndarray:
    """Direct convolution via sliding windows + einsum (float64 accumulation for a stable oracle)."""
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(xp, (eff_h, eff_w), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    # win: (N, C, Ho, Wo, kh, kw)
    og = o // groups
    acc_dtype = np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64
    outs = []
    for gi in range(groups):
        wg = w[gi * og : (gi + 1) * og].astype(acc_dtype)
        xg = win[:, gi * cg : (gi + 1) * cg]
        outs.append(np.einsum("nchwij,ocij->nohw", xg, wg, optimize=True, dtype=acc_dtype))
    y = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y.astype(x.dtype)


def _conv2d_macs(t: InTypes, out: list[TensorType], a: Attrs) -> int:
    w = t[1]
    assert w is not None
    return out[0].size * w.shape[1] * w.shape[2] * w.shape[3]


register_op(
    OpSchema(
        name="conv2d",
        inputs=("x", "w", "b?"),
        attrs={"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "groups": 1},
        check=_conv2d_check,
        infer=_conv2d_infer,
        reference=conv2d_ref,
        macs=_conv2d_macs,
        doc="y = conv(x, w) + b. x: NCHW, w: (O, C/groups, kh, kw); pads = (top, left, bottom, right).",
    )
)


# --- dense ----------------------------------------------------------------------------------------
def _dense_check(t: InTypes, a: Attrs) -> str | None:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        return f"x {x} last dim must equal w {w} dim 1 (w is (out_features, in_features))"
    if len(t) > 2 and t[2] is not None and t[2].shape != (w.shape[0],):
        return f"bias {t[2]} must have shape ({w.shape[0]},)"
    return None


def _dense_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    return [TensorType((*x.shape[:-1], w.shape[0]), x.dtype)]


def dense_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    acc = np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64
    y = x.astype(acc) @ w.astype(acc).T
    if b is not None:
        y = y + b
    return y.astype(x.dtype)


register_op(
    OpSchema(
        name="dense",
        inputs=("x", "w", "b?"),
        check=_dense_check,
        infer=_dense_infer,
        reference=dense_ref,
        macs=lambda t, out, a: out[0].size * t[1].shape[1],  # type: ignore[union-attr]
        doc="y = x @ w.T + b with w of shape (out_features, in_features) (ONNX Gemm, transB=1).",
    )
)


__all__ = ["REQUIRED", "conv2d_ref", "conv_out_dim", "dense_ref", "math"]
