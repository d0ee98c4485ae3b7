"""Neural-network ops: convolution, dense/matmul, batch norm, LRN, softmax (NCHW).

Pooling lives in :mod:`mcopt.ops.pool`. The references are written for speed as well as exactness:
the interpreter runs whole ImageNet CNNs with them, so convolution is im2col + one BLAS matmul per
group (float32), and depthwise convolution is a shift-and-accumulate over the kernel taps.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mcopt.ir.types import TensorType
from mcopt.ops._util import acc_dtype, bad_ints, is_float, need_float, norm_axis
from mcopt.ops.schema import REQUIRED, Attrs, InTypes, OpSchema, broadcast_shapes, register_op


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
    for key, n, lo in (("strides", 2, 1), ("pads", 4, 0), ("dilations", 2, 1)):
        reason = bad_ints(a, key, n, lo)
        if reason:
            return reason + " (pads are (top, left, bottom, right))"
    g = a["groups"]
    if not isinstance(g, int) or g < 1 or x.shape[1] % g or w.shape[0] % g:
        return f"groups={g} does not divide input channels {x.shape[1]} and filters {w.shape[0]}"
    if w.shape[1] * g != x.shape[1]:
        return f"weight {w} expects {w.shape[1] * g} input channels (groups={g}), input has {x.shape[1]}"
    if x.dtype != w.dtype:
        return f"input {x} and weight {w} dtypes differ"
    if len(t) > 2 and t[2] is not None and t[2].shape != (w.shape[0],):
        return f"bias {t[2]} must have shape ({w.shape[0]},)"
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
    """2-D convolution: im2col + batched BLAS matmul over groups (float32 for float inputs,
    int64 for integer ones); a shift-and-accumulate path for depthwise convolutions."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    ho = conv_out_dim(h, kh, sh, pt, pb, dh)
    wo = conv_out_dim(wd, kw, sw, pl, pr, dw)
    acc = acc_dtype(x.dtype)
    xa = x.astype(acc, copy=False)
    wa = w.astype(acc, copy=False)
    og = o // groups
    if kh == kw == 1 and pt == pl == pb == pr == 0:
        xs = xa[:, :, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw]
        cols = xs.reshape(n, groups, cg, ho * wo)
        y = np.matmul(wa.reshape(groups, og, cg), cols)  # (n, groups, og, ho*wo)
    elif cg == 1 and groups > 1:
        y = _depthwise(xa, wa, (ho, wo), strides, pads, dilations)
    else:
        xp = np.pad(xa, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(pads) else xa
        eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        win = sliding_window_view(xp, (eff_h, eff_w), axis=(2, 3))
        win = win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :ho, :wo]  # (N, C, Ho, Wo, kh, kw)
        win = win.reshape(n, groups, cg, ho, wo, kh, kw).transpose(0, 1, 2, 5, 6, 3, 4)
        cols = win.reshape(n, groups, cg * kh * kw, ho * wo)  # the one im2col copy
        y = np.matmul(wa.reshape(groups, og, cg * kh * kw), cols)
    y = y.reshape(n, o, ho, wo)
    if b is not None:
        y += b.astype(acc, copy=False).reshape(1, -1, 1, 1)
    return y.astype(x.dtype, copy=False)


def _depthwise(
    x: np.ndarray,
    w: np.ndarray,
    out_hw: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
) -> np.ndarray:
    """One input channel per group: y[n, c, m] = sum over taps of shifted x[n, c] * w[c, m, i, j]."""
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    mult = o // c
    (ho, wo), (sh, sw), (pt, pl, pb, pr), (dh, dw) = out_hw, strides, pads, dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(pads) else x
    wr = w.reshape(c, mult, kh, kw)
    y = np.zeros((n, c, mult, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            tap = xp[
                :,
                :,
                i * dh : i * dh + (ho - 1) * sh + 1 : sh,
                j * dw : j * dw + (wo - 1) * sw + 1 : sw,
            ]
            if mult == 1:
                y[:, :, 0] += tap * wr[:, 0, i, j].reshape(1, c, 1, 1)
            else:
                y += tap[:, :, None] * wr[:, :, i, j].reshape(1, c, mult, 1, 1)
    return y


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


# --- dense / matmul -------------------------------------------------------------------------------
def _dense_check(t: InTypes, a: Attrs) -> str | None:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        return f"x {x} last dim must equal w {w} dim 1 (w is (out_features, in_features))"
    if x.dtype != w.dtype:
        return f"input {x} and weight {w} dtypes differ"
    if len(t) > 2 and t[2] is not None and t[2].shape != (w.shape[0],):
        return f"bias {t[2]} must have shape ({w.shape[0]},)"
    return None


def _dense_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    return [TensorType((*x.shape[:-1], w.shape[0]), x.dtype)]


def dense_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    acc = acc_dtype(x.dtype)
    y = np.matmul(x.astype(acc, copy=False), w.astype(acc, copy=False).T)
    if b is not None:
        y += b.astype(acc, copy=False)
    return y.astype(x.dtype, copy=False)


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


def _matmul_shape(sa: tuple[int, ...], sb: tuple[int, ...]) -> tuple[int, ...]:
    """numpy matmul output shape; ValueError when the operands do not fit."""
    if not sa or not sb:
        raise ValueError("matmul operands must have rank >= 1")
    a2 = (1, *sa) if len(sa) == 1 else sa
    b2 = (*sb, 1) if len(sb) == 1 else sb
    if a2[-1] != b2[-2]:
        raise ValueError(f"inner dims differ: {sa} @ {sb}")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = (*batch, a2[-2], b2[-1])
    if len(sa) == 1:
        out = out[:-2] + out[-1:]
    if len(sb) == 1:
        out = out[:-1]
    return out


def _matmul_check(t: InTypes, a: Attrs) -> str | None:
    x, y = t[0], t[1]
    assert x is not None and y is not None
    if x.dtype != y.dtype:
        return f"input dtypes differ: {x} and {y}"
    try:
        _matmul_shape(x.shape, y.shape)
    except ValueError as e:
        return str(e)
    return None


def _matmul_macs(t: InTypes, out: list[TensorType], a: Attrs) -> int:
    x = t[0]
    assert x is not None
    return out[0].size * x.shape[-1]


# --- embedding ------------------------------------------------------------------------------------
def _embedding_check(t: InTypes, a: Attrs) -> str | None:
    i, table = t[0], t[1]
    assert i is not None and table is not None
    if np.dtype(i.dtype).kind not in "iu":
        return f"indices {i} must be integers"
    if table.rank != 2 or not is_float(table):
        return f"table {table} must be a 2-D float tensor (rows, features)"
    return None


def embedding_ref(indices: np.ndarray, table: np.ndarray) -> np.ndarray:
    ok = (indices >= 0) & (indices < table.shape[0])
    rows = table[np.where(ok, indices, 0).astype(np.int64)]
    return np.where(ok[..., None], rows, 0).astype(table.dtype, copy=False)


register_op(
    OpSchema(
        name="embedding",
        inputs=("indices", "table"),
        check=_embedding_check,
        infer=lambda t, a: [TensorType((*t[0].shape, t[1].shape[1]), t[1].dtype)],  # type: ignore[union-attr]
        reference=embedding_ref,
        doc="y[..., :] = table[i] for 0 <= i < rows, zeros for other i: one_hot(i, rows) @ table "
        "as a row lookup (Magika's byte embedding, exported as Equal + Cast + MatMul).",
    )
)


register_op(
    OpSchema(
        name="matmul",
        inputs=("a", "b"),
        check=_matmul_check,
        infer=lambda t, a: [TensorType(_matmul_shape(t[0].shape, t[1].shape), t[0].dtype)],  # type: ignore[union-attr]
        reference=lambda a, b: np.matmul(a, b).astype(a.dtype, copy=False),
        macs=_matmul_macs,
        doc="y = a @ b with numpy (batched, broadcasting) matmul semantics (ONNX MatMul).",
    )
)


# --- batch_norm -----------------------------------------------------------------------------------
def _bn_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    if x.rank < 2:
        return f"expects input of rank >= 2 (N, C, ...), got {x}"
    for name, p in zip(("scale", "bias", "mean", "var"), t[1:]):
        assert p is not None
        if p.shape != (x.shape[1],):
            return f"{name} {p} must have shape ({x.shape[1]},) (channels of input {x})"
    if not isinstance(a["epsilon"], float | int) or a["epsilon"] < 0:
        return f"epsilon must be a non-negative number, got {a['epsilon']!r}"
    return need_float(x)


def bn_affine(
    scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch norm as a per-channel affine map ``y = k * x + c`` (Ioffe & Szegedy 2015):
    ``k = scale / sqrt(var + epsilon)``, ``c = bias - mean * k``, in float64. The one place the
    formula lives: the reference, the BN folds of ``cleanup`` and of the CPU planner, and the
    lowering all call it."""
    k = np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + float(epsilon))
    return k, np.asarray(bias, np.float64) - np.asarray(mean, np.float64) * k


def batch_norm_ref(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    *,
    epsilon: float,
) -> np.ndarray:
    k, shift = bn_affine(scale, bias, mean, var, epsilon)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    y = x * k.astype(x.dtype).reshape(bshape)
    y += shift.astype(x.dtype).reshape(bshape)
    return y


register_op(
    OpSchema(
        name="batch_norm",
        inputs=("x", "scale", "bias", "mean", "var"),
        attrs={"epsilon": 1e-5},
        check=_bn_check,
        infer=lambda t, a: [TensorType(t[0].shape, t[0].dtype)],  # type: ignore[union-attr]
        reference=batch_norm_ref,
        macs=lambda t, out, a: out[0].size,
        doc="inference batch norm over axis 1: (x - mean) / sqrt(var + epsilon) * scale + bias.",
    )
)


# --- lrn ------------------------------------------------------------------------------------------
def _lrn_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    if x.rank < 3:
        return f"expects input of rank >= 3 (N, C, spatial...), got {x}"
    if not isinstance(a["size"], int) or a["size"] < 1:
        return f"size must be a positive int, got {a['size']!r}"
    return need_float(x)


def lrn_ref(x: np.ndarray, *, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX LRN: sum of squares over channels [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = np.square(x, dtype=np.float64)
    pad = [(0, 0)] * x.ndim
    pad[1] = (lo + 1, hi)  # one extra leading zero so that window sums are differences of cumsums
    cs = np.cumsum(np.pad(sq, pad), axis=1)
    c = x.shape[1]
    sums = cs[:, size : size + c] - cs[:, :c]
    y = x / (bias + (alpha / size) * sums) ** beta
    return y.astype(x.dtype, copy=False)


register_op(
    OpSchema(
        name="lrn",
        inputs=("x",),
        attrs={"size": REQUIRED, "alpha": 1e-4, "beta": 0.75, "bias": 1.0},
        check=_lrn_check,
        infer=lambda t, a: [TensorType(t[0].shape, t[0].dtype)],  # type: ignore[union-attr]
        reference=lrn_ref,
        doc="local response normalization across channels (ONNX LRN).",
    )
)


# --- softmax --------------------------------------------------------------------------------------
def _softmax_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    if x.rank < 1 or norm_axis(a["axis"], x.rank) is None:
        return f"axis {a['axis']!r} is out of range for input {x}"
    return None if is_float(x) else f"expects a floating-point input, got {x}"


def softmax_ref(x: np.ndarray, *, axis: int) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    e /= np.sum(e, axis=axis, keepdims=True)
    return e.astype(x.dtype, copy=False)


register_op(
    OpSchema(
        name="softmax",
        inputs=("x",),
        attrs={"axis": -1},
        check=_softmax_check,
        infer=lambda t, a: [TensorType(t[0].shape, t[0].dtype)],  # type: ignore[union-attr]
        reference=softmax_ref,
        doc="softmax along one axis, numerically stable (ONNX Softmax, opset-13 semantics).",
    )
)


# --- layer_norm -----------------------------------------------------------------------------------
def _layer_norm_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    ax = norm_axis(a["axis"], x.rank) if x.rank else None
    if ax is None:
        return f"axis {a['axis']!r} is out of range for input {x}"
    if not is_float(x):
        return f"expects a floating-point input, got {x}"
    if float(a["epsilon"]) < 0:
        return f"epsilon must be >= 0, got {a['epsilon']}"
    normalized = tuple(x.shape[ax:])
    for name, p in zip(("scale", "bias"), t[1:3]):
        if p is None:
            continue
        if p.dtype != x.dtype:
            return f"{name} {p} must have the input's dtype {x.dtype}"
        try:
            if broadcast_shapes(normalized, p.shape) != normalized:
                raise ValueError
        except ValueError:
            return f"{name} {p} must broadcast to the normalized shape {normalized}"
    return None


def layer_norm_ref(
    x: np.ndarray,
    scale: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    *,
    axis: int,
    epsilon: float,
) -> np.ndarray:
    axes = tuple(range(norm_axis(axis, x.ndim) or 0, x.ndim))
    xd = x.astype(np.float64)
    d = xd - xd.mean(axis=axes, keepdims=True)
    y = d / np.sqrt((d * d).mean(axis=axes, keepdims=True) + float(epsilon))
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


register_op(
    OpSchema(
        name="layer_norm",
        inputs=("x", "scale?", "bias?"),
        attrs={"axis": -1, "epsilon": 1e-5},
        check=_layer_norm_check,
        infer=lambda t, a: [TensorType(t[0].shape, t[0].dtype)],  # type: ignore[union-attr]
        reference=layer_norm_ref,
        doc="y = (x - mean) / sqrt(var + epsilon) * scale + bias, mean and (biased) variance over "
        "the dims from `axis` on (ONNX LayerNormalization; Ba et al., 'Layer normalization', 2016)",
    )
)


def log_softmax_ref(x: np.ndarray, *, axis: int) -> np.ndarray:
    d = x - np.max(x, axis=axis, keepdims=True)
    return (d - np.log(np.sum(np.exp(d), axis=axis, keepdims=True))).astype(x.dtype, copy=False)


register_op(
    OpSchema(
        name="log_softmax",
        inputs=("x",),
        attrs={"axis": -1},
        check=_softmax_check,
        infer=lambda t, a: [TensorType(t[0].shape, t[0].dtype)],  # type: ignore[union-attr]
        reference=log_softmax_ref,
        doc="log of the softmax along one axis: x - max - ln(sum(exp(x - max))) (ONNX LogSoftmax, "
        "opset-13 semantics; the end of many PyTorch classifiers).",
    )
)


__all__ = [
    "batch_norm_ref",
    "log_softmax_ref",
    "bn_affine",
    "conv2d_ref",
    "conv_out_dim",
    "dense_ref",
    "lrn_ref",
    "softmax_ref",
]
