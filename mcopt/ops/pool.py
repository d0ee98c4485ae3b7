"""Pooling ops: max_pool, avg_pool (ONNX MaxPool / AveragePool semantics incl. ceil_mode and
count_include_pad), global_avg_pool, global_max_pool. NCHW, 2-D windows.

ceil_mode follows ONNX Runtime (and PyTorch): out = ceil((H + pads - dilated_k) / s) + 1, minus one
when the last window would start at or beyond the end of input + left padding. A window that hangs
over the right edge ignores the overhang; with count_include_pad the divisor counts explicit
padding but not the overhang.
"""

from __future__ import annotations

import numpy as np

from mcopt.ir.types import TensorType
from mcopt.ops._util import bad_int, bad_ints, need_float
from mcopt.ops.schema import REQUIRED, Attrs, InTypes, OpSchema, register_op


def pool_out_dim(
    size: int, k: int, stride: int, pad_begin: int, pad_end: int, dilation: int, ceil_mode: int
) -> int:
    """Output length of one pooled axis (ONNX Runtime's rule)."""
    span = size + pad_begin + pad_end - dilation * (k - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def _geometry(shape: tuple[int, ...], a: Attrs) -> tuple[int, int]:
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["strides"], a["pads"]
    dh, dw = a.get("dilations", (1, 1))
    ho = pool_out_dim(shape[2], kh, sh, pt, pb, dh, a["ceil_mode"])
    wo = pool_out_dim(shape[3], kw, sw, pl, pr, dw, a["ceil_mode"])
    return ho, wo


def _pool_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    if x.rank != 4:
        return f"expects a 4-D NCHW input, got {x}"
    keys = [("kernel", 2, 1), ("strides", 2, 1), ("pads", 4, 0)]
    if "dilations" in a:
        keys.append(("dilations", 2, 1))
    for key, n, lo in keys:
        reason = bad_ints(a, key, n, lo)
        if reason:
            return reason
    for key in ("ceil_mode", "count_include_pad"):
        if key in a and (reason := bad_int(a, key, (0, 1))):
            return reason
    ho, wo = _geometry(x.shape, a)
    if ho <= 0 or wo <= 0:
        return f"output spatial size {ho}x{wo} is empty for input {x} and kernel {a['kernel']}"
    return None


def _pool_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x = t[0]
    assert x is not None
    return [TensorType((x.shape[0], x.shape[1], *_geometry(x.shape, a)), x.dtype)]


def _padded(x: np.ndarray, a: Attrs, out_hw: tuple[int, int], fill: float | int) -> np.ndarray:
    """x padded with explicit pads plus whatever right overhang ceil_mode windows need."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["strides"], a["pads"]
    dh, dw = a.get("dilations", (1, 1))
    need_h = (out_hw[0] - 1) * sh + dh * (kh - 1) + 1
    need_w = (out_hw[1] - 1) * sw + dw * (kw - 1) + 1
    eh = max(0, need_h - (x.shape[2] + pt + pb))
    ew = max(0, need_w - (x.shape[3] + pl + pr))
    if not (pt or pb or pl or pr or eh or ew):
        return x
    return np.pad(x, ((0, 0), (0, 0), (pt, pb + eh), (pl, pr + ew)), constant_values=fill)


def _taps(xp: np.ndarray, a: Attrs, out_hw: tuple[int, int]):  # type: ignore[no-untyped-def]
    """Yield the strided (N, C, Ho, Wo) view for each kernel tap."""
    (kh, kw), (sh, sw) = a["kernel"], a["strides"]
    dh, dw = a.get("dilations", (1, 1))
    ho, wo = out_hw
    for i in range(kh):
        for j in range(kw):
            yield xp[
                :,
                :,
                i * dh : i * dh + (ho - 1) * sh + 1 : sh,
                j * dw : j * dw + (wo - 1) * sw + 1 : sw,
            ]


def max_pool_ref(x: np.ndarray, **a: object) -> np.ndarray:
    out_hw = _geometry(x.shape, a)
    # like ONNX Runtime, a window that sees only padding yields the dtype's lowest value
    info = np.finfo(x.dtype) if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype)
    fill = info.min
    xp = _padded(x, a, out_hw, fill)
    y: np.ndarray | None = None
    for tap in _taps(xp, a, out_hw):
        y = tap.copy() if y is None else np.maximum(y, tap, out=y)
    assert y is not None
    return y


def _window_counts(
    size: int, out: int, k: int, s: int, pad_begin: int, pad_end: int, include_pad: int
) -> np.ndarray:
    start = np.arange(out) * s  # in padded coordinates
    if include_pad:
        cnt = np.minimum(start + k, size + pad_begin + pad_end) - start
    else:
        cnt = np.minimum(start + k, size + pad_begin) - np.maximum(start, pad_begin)
    return np.maximum(cnt, 1)


def avg_pool_ref(x: np.ndarray, **a: object) -> np.ndarray:
    out_hw = _geometry(x.shape, a)
    acc = np.float64 if x.dtype == np.float64 else np.float32
    xp = _padded(x.astype(acc, copy=False), a, out_hw, 0)
    y: np.ndarray | None = None
    for tap in _taps(xp, a, out_hw):
        y = tap.copy() if y is None else np.add(y, tap, out=y)
    assert y is not None
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["strides"], a["pads"]  # type: ignore[misc]
    inc = a["count_include_pad"]
    ch = _window_counts(x.shape[2], out_hw[0], kh, sh, pt, pb, inc)  # type: ignore[arg-type]
    cw = _window_counts(x.shape[3], out_hw[1], kw, sw, pl, pr, inc)  # type: ignore[arg-type]
    y /= (ch[:, None] * cw[None, :]).astype(acc)
    return y.astype(x.dtype, copy=False)


#: max_pool's attributes (shared with the fixed-point fx_max_pool)
MAX_POOL_ATTRS: dict[str, object] = {
    "kernel": REQUIRED,
    "strides": (1, 1),
    "pads": (0, 0, 0, 0),
    "dilations": (1, 1),
    "ceil_mode": 0,
}


register_op(
    OpSchema(
        name="max_pool",
        inputs=("x",),
        attrs=dict(MAX_POOL_ATTRS),
        check=_pool_check,
        infer=_pool_infer,
        reference=max_pool_ref,
        doc="2-D max pooling (ONNX MaxPool); pads = (top, left, bottom, right).",
        # not zero_preserving in general: a window over padding only yields the dtype's lowest
        traits=frozenset({"pool", "channelwise", "finite_preserving"}),
    )
)

register_op(
    OpSchema(
        name="avg_pool",
        inputs=("x",),
        attrs={
            "kernel": REQUIRED,
            "strides": (1, 1),
            "pads": (0, 0, 0, 0),
            "ceil_mode": 0,
            "count_include_pad": 0,
        },
        check=lambda t, a: _pool_check(t, a) or need_float(t[0]),
        infer=_pool_infer,
        reference=avg_pool_ref,
        doc="2-D average pooling (ONNX AveragePool); pads = (top, left, bottom, right).",
        traits=frozenset({"pool", "channelwise", "zero_preserving", "finite_preserving"}),
    )
)


# --- global pools ---------------------------------------------------------------------------------
def _global_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    return None if x.rank >= 3 else f"expects input of rank >= 3 (N, C, spatial...), got {x}"


def _global_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x = t[0]
    assert x is not None
    return [TensorType((*x.shape[:2], *(1 for _ in x.shape[2:])), x.dtype)]


def global_avg_pool_ref(x: np.ndarray) -> np.ndarray:
    axes = tuple(range(2, x.ndim))
    acc = np.float64 if x.dtype == np.float64 else np.float32
    return np.mean(x, axis=axes, keepdims=True, dtype=acc).astype(x.dtype, copy=False)


def global_max_pool_ref(x: np.ndarray) -> np.ndarray:
    return np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)


register_op(
    OpSchema(
        name="global_avg_pool",
        inputs=("x",),
        check=lambda t, a: _global_check(t, a) or need_float(t[0]),
        infer=_global_infer,
        reference=global_avg_pool_ref,
        doc="mean over all spatial axes -> (N, C, 1, 1) (ONNX GlobalAveragePool).",
        traits=frozenset({"pool", "channelwise", "zero_preserving", "finite_preserving"}),
    )
)

register_op(
    OpSchema(
        name="global_max_pool",
        inputs=("x",),
        check=_global_check,
        infer=_global_infer,
        reference=global_max_pool_ref,
        doc="max over all spatial axes -> (N, C, 1, 1) (ONNX GlobalMaxPool).",
        traits=frozenset({"pool", "channelwise", "zero_preserving", "finite_preserving"}),
    )
)

__all__ = [
    "avg_pool_ref",
    "global_avg_pool_ref",
    "global_max_pool_ref",
    "max_pool_ref",
    "pool_out_dim",
]
