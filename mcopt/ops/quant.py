"""Uniform (affine) quantization ops: quantize, dequantize, qconv2d, qdense.

Method: uniform affine quantization, ``real = scale * (q - zero_point)`` (Jacob et al., "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018; the
ONNX QuantizeLinear / DequantizeLinear / QLinearConv semantics).

- ``quantize``: ``q = saturate(rint(x / scale) + zero_point)`` (round half to even, as ONNX);
  ``dequantize``: ``x = (q - zero_point) * scale``. Per-tensor (one scale) or per-axis (``axis``).
- ``qconv2d`` / ``qdense``: ``x_q`` (uint8 or int8, one ``x_scale``/``x_zero_point``) times a
  symmetric int8 weight ``w_q`` (scales ``w_scale``: one per output channel or one for the tensor,
  zero point 0), accumulated in int32: ``acc[o] = sum (x_q - x_zp) * w_q[o] + bias_q[o]`` with
  ``bias_q`` int32 at scale ``x_scale * w_scale[o]``. The weight scales live only on the weight
  operand's type, its :class:`~mcopt.ir.types.UniformQuant` encoding (:func:`weight_scales`; the
  verifier checks it is there), so the references take ``in_types=``. The epilogue is either

  * ``out_dtype="float32"`` (dequantize): ``y = float32(acc) * float32(x_scale * w_scale[o])``,
    then the activation clamp (``act_min``/``act_max`` in real units); or
  * ``out_dtype="uint8"|"int8"`` (requantize, QLinearConv): ``y = saturate(rint(float32(acc) *
    M[o]) + out_zero_point)`` with ``M[o] = float32(x_scale * w_scale[o] / out_scale)``, the
    activation folded into the saturation bounds.

The integer paths of the references (accumulation, requantization) are exact: int64 accumulation,
float32 multiplier from :func:`requant_multiplier` (the TVM kernels use the same constants), so a
compiled kernel must match bit for bit. Lossless w.r.t. the quantized model; the quantization itself
(passes/quantize.py) is lossy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mcopt.ir.types import TensorType, UniformQuant
from mcopt.ops._util import bad_ints, norm_axis
from mcopt.ops.nn import _conv2d_infer, conv2d_ref
from mcopt.ops.schema import Attrs, InTypes, OpSchema, register_op

QDTYPES = ("uint8", "int8")
OUT_DTYPES = ("float32", "uint8", "int8")


def qrange(dtype: str, bits: int = 8) -> tuple[int, int]:
    """Integer range of a quantized dtype with ``bits`` used bits (e.g. int8 at 4 bits: [-8, 7])."""
    if np.dtype(dtype).kind == "u":
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _axis_shape(ndim: int, axis: int | None, n: int) -> tuple[int, ...]:
    if n == 1 or axis is None:
        return (1,) * ndim
    shape = [1] * ndim
    shape[axis % ndim] = n
    return tuple(shape)


def quantize_array(
    x: np.ndarray,
    scale: Sequence[float] | np.ndarray,
    zero_point: Sequence[int] | np.ndarray,
    dtype: str = "uint8",
    axis: int | None = None,
    qmin: int | None = None,
    qmax: int | None = None,
) -> np.ndarray:
    """``saturate(rint(x / scale) + zero_point)`` in float32 (ONNX QuantizeLinear semantics)."""
    s = np.asarray(scale, np.float32).reshape(-1)
    z = np.asarray(zero_point, np.float32).reshape(-1)
    shp = _axis_shape(x.ndim, axis, s.size)
    lo, hi = qrange(dtype)
    lo = lo if qmin is None else qmin
    hi = hi if qmax is None else qmax
    q = np.rint(x.astype(np.float32) / s.reshape(shp)) + z.reshape(shp)
    return np.clip(q, lo, hi).astype(dtype)


def dequantize_array(
    q: np.ndarray,
    scale: Sequence[float] | np.ndarray,
    zero_point: Sequence[int] | np.ndarray,
    axis: int | None = None,
) -> np.ndarray:
    """``(q - zero_point) * scale`` in float32 (ONNX DequantizeLinear semantics)."""
    s = np.asarray(scale, np.float32).reshape(-1)
    z = np.asarray(zero_point, np.int32).reshape(-1)
    shp = _axis_shape(q.ndim, axis, s.size)
    return ((q.astype(np.int32) - z.reshape(shp)).astype(np.float32) * s.reshape(shp)).astype(
        np.float32
    )


def weight_scales(w: TensorType | None) -> tuple[float, ...]:
    """The scales of a ``qconv2d`` / ``qdense`` weight operand of type `w`: its ``UniformQuant``
    encoding's (one per output channel, or one for the whole tensor), the only place they are kept."""
    enc = None if w is None else w.encoding
    if not isinstance(enc, UniformQuant):
        raise ValueError(f"the int8 weight {w} carries no UniformQuant encoding (its scales)")
    return enc.scale


def weight_type(shape: Sequence[int], scale: Sequence[float], bits: int = 8) -> TensorType:
    """The type of a ``qconv2d`` / ``qdense`` weight: int8 codes of `bits` bits, symmetric, with
    one scale per output channel (axis 0) or, given one scale, one for the tensor."""
    sc = tuple(float(v) for v in scale)
    enc = UniformQuant(bits, True, sc, (0,) * len(sc), axis=0 if len(sc) > 1 else None)
    return TensorType(tuple(int(d) for d in shape), "int8", enc)


def _weight_problem(w: TensorType, out_channels: int) -> str | None:
    """Why the weight type `w` does not carry valid scales (None when it does)."""
    enc = w.encoding
    if not isinstance(enc, UniformQuant):
        got = "none" if enc is None else enc.describe()
        return (
            f"weight {w} must carry a UniformQuant encoding holding its scales (1 or "
            f"{out_channels}), got encoding {got}"
        )
    ws = enc.scale
    if len(ws) not in (1, out_channels):
        return (
            f"weight encoding {enc.describe()} must hold 1 or {out_channels} scales (per tensor or "
            f"per output channel), got {len(ws)}"
        )
    if len(ws) > 1 and enc.axis != 0:
        return f"weight encoding {enc.describe()}: per-channel scales must be on axis 0"
    if not all(isinstance(v, float | int) and v > 0 and math.isfinite(v) for v in ws):
        return f"weight encoding {enc.describe()}: scales must be positive and finite"
    if not enc.signed or not 1 < enc.bits <= 8 or any(z != 0 for z in enc.zero_point):
        return (
            f"weight encoding {enc.describe()} must be symmetric (zero point 0), signed, <= 8 bits"
        )
    return None


def requant_multiplier(
    attrs: Attrs, w_scale: Sequence[float] | np.ndarray, channels: int
) -> np.ndarray:
    """Per-channel float32 epilogue multipliers: ``x_scale * w_scale[o]`` (float output) or
    ``x_scale * w_scale[o] / out_scale`` (requantized output), computed in float64 then rounded
    once to float32 (the references and the compiled kernels share these constants). `w_scale`:
    the weight's scales (:func:`weight_scales`), one per channel or one for all."""
    ws = np.asarray(w_scale, np.float64).reshape(-1)
    if ws.size == 1:
        ws = np.full(channels, ws[0])
    m = float(attrs["x_scale"]) * ws
    if attrs["out_dtype"] != "float32":
        m = m / float(attrs["out_scale"])
    return m.astype(np.float32)


def output_bounds(attrs: Attrs) -> tuple[float, float]:
    """Clamp bounds of the epilogue: real units for float output, integer codes for requantized
    output (the activation ``act_min``/``act_max`` folded into the dtype's saturation range)."""
    lo, hi = float(attrs["act_min"]), float(attrs["act_max"])
    if attrs["out_dtype"] == "float32":
        return lo, hi
    qlo, qhi = qrange(attrs["out_dtype"])
    zp, s = int(attrs["out_zero_point"]), float(attrs["out_scale"])
    if math.isfinite(lo):
        qlo = max(qlo, min(qhi, zp + round(lo / s)))
    if math.isfinite(hi):
        qhi = min(qhi, max(qlo, zp + round(hi / s)))
    return float(qlo), float(qhi)


def epilogue_ref(
    acc: np.ndarray, attrs: Attrs, w_scale: Sequence[float] | np.ndarray, axis: int
) -> np.ndarray:
    """The int32 accumulator -> output epilogue (float dequantize or integer requantize)."""
    c = acc.shape[axis]
    m = requant_multiplier(attrs, w_scale, c).reshape(_axis_shape(acc.ndim, axis, c))
    lo, hi = output_bounds(attrs)
    y = acc.astype(np.int32).astype(np.float32) * m
    if attrs["out_dtype"] == "float32":
        return np.clip(y, lo, hi).astype(np.float32)
    y = np.rint(y) + np.float32(attrs["out_zero_point"])
    return np.clip(y, lo, hi).astype(attrs["out_dtype"])


# --- quantize / dequantize -------------------------------------------------------------------------
def _qparams_check(t: InTypes, a: Attrs, rank: int) -> str | None:
    s, z = a["scale"], a["zero_point"]
    if not isinstance(s, tuple) or not s or not all(isinstance(v, float | int) for v in s):
        return f"scale must be a non-empty tuple of numbers, got {s!r}"
    if any(not v > 0 or not math.isfinite(v) for v in s):
        return f"scale values must be positive and finite, got {s!r}"
    if bad_ints(a, "zero_point"):
        return bad_ints(a, "zero_point")
    if len(z) != len(s):
        return f"zero_point has {len(z)} values, scale {len(s)}"
    if len(s) > 1:
        ax = norm_axis(a["axis"], rank)
        if ax is None:
            return f"axis {a['axis']} is out of range for rank {rank}"
        if t[0] is not None and t[0].shape[ax] != len(s):
            return f"{len(s)} scales for axis {ax} of size {t[0].shape[ax]}"
    return None


def _quantize_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    if np.dtype(x.dtype).kind != "f":
        return f"expects a float input, got {x}"
    if a["dtype"] not in QDTYPES:
        return f"dtype must be one of {QDTYPES}, got {a['dtype']!r}"
    lo, hi = qrange(a["dtype"])
    if any(not lo <= z <= hi for z in a["zero_point"]):
        return f"zero_point {a['zero_point']} outside the {a['dtype']} range"
    return _qparams_check(t, a, x.rank)


def _quantize_ref(
    x: np.ndarray, *, scale: tuple, zero_point: tuple, axis: int, dtype: str
) -> np.ndarray:
    return quantize_array(x, scale, zero_point, dtype, axis if len(scale) > 1 else None)


register_op(
    OpSchema(
        name="quantize",
        inputs=("x",),
        attrs={"scale": (1.0,), "zero_point": (0,), "axis": 1, "dtype": "uint8"},
        check=_quantize_check,
        infer=lambda t, a: [TensorType(t[0].shape, a["dtype"])],  # type: ignore[union-attr]
        reference=_quantize_ref,
        elementwise=True,
        doc="q = saturate(rint(x / scale) + zero_point) (ONNX QuantizeLinear); per-axis when "
        "len(scale) > 1.",
    )
)


def _dequantize_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    if np.dtype(x.dtype).kind not in "iu":
        return f"expects an integer input, got {x}"
    return _qparams_check(t, a, x.rank)


def _dequantize_ref(q: np.ndarray, *, scale: tuple, zero_point: tuple, axis: int) -> np.ndarray:
    return dequantize_array(q, scale, zero_point, axis if len(scale) > 1 else None)


register_op(
    OpSchema(
        name="dequantize",
        inputs=("q",),
        attrs={"scale": (1.0,), "zero_point": (0,), "axis": 1},
        check=_dequantize_check,
        infer=lambda t, a: [TensorType(t[0].shape, "float32")],  # type: ignore[union-attr]
        reference=_dequantize_ref,
        elementwise=True,
        doc="x = (q - zero_point) * scale (ONNX DequantizeLinear); per-axis when len(scale) > 1.",
    )
)


# --- qconv2d / qdense ------------------------------------------------------------------------------
_Q_ATTRS = {
    "x_scale": 1.0,
    "x_zero_point": 0,
    "out_dtype": "float32",
    "out_scale": 1.0,
    "out_zero_point": 0,
    "act_min": -math.inf,
    "act_max": math.inf,
}


def _q_common_check(t: InTypes, a: Attrs, out_channels: int) -> str | None:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    if x.dtype not in QDTYPES:
        return f"input must be uint8 or int8, got {x}"
    if w.dtype != "int8":
        return f"weight must be int8 (symmetric), got {w}"
    if len(t) > 2 and t[2] is not None and (t[2].dtype != "int32" or t[2].shape != (out_channels,)):
        return f"bias {t[2]} must be int32 of shape ({out_channels},)"
    reason = _weight_problem(w, out_channels)
    if reason:
        return reason
    if not float(a["x_scale"]) > 0:
        return f"x_scale must be positive, got {a['x_scale']}"
    lo, hi = qrange(x.dtype)
    if not lo <= int(a["x_zero_point"]) <= hi:
        return f"x_zero_point {a['x_zero_point']} outside the {x.dtype} range"
    if a["out_dtype"] not in OUT_DTYPES:
        return f"out_dtype must be one of {OUT_DTYPES}, got {a['out_dtype']!r}"
    if a["out_dtype"] != "float32" and not float(a["out_scale"]) > 0:
        return f"out_scale must be positive, got {a['out_scale']}"
    return None


def _qconv2d_check(t: InTypes, a: Attrs) -> str | None:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    if x.rank != 4 or w.rank != 4:
        return f"expects 4-D NCHW input and OIHW weight, got {x} and {w}"
    for key, n, lo in (("strides", 2, 1), ("pads", 4, 0), ("dilations", 2, 1)):
        reason = bad_ints(a, key, n, lo)
        if reason:
            return reason
    g = a["groups"]
    if not isinstance(g, int) or g < 1 or x.shape[1] % g or w.shape[0] % g:
        return f"groups={g} does not divide input channels {x.shape[1]} and filters {w.shape[0]}"
    if w.shape[1] * g != x.shape[1]:
        return f"weight {w} expects {w.shape[1] * g} input channels, input has {x.shape[1]}"
    return _q_common_check(t, a, w.shape[0])


def qconv2d_acc(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: Attrs) -> np.ndarray:
    """The exact int32 accumulator ``conv(x - x_zp, w) + b`` (padding is the real zero, x_zp)."""
    xs = x.astype(np.int64) - int(attrs["x_zero_point"])
    acc = conv2d_ref(
        xs,
        w.astype(np.int64),
        None if b is None else b.astype(np.int64),
        strides=attrs["strides"],
        pads=attrs["pads"],
        dilations=attrs["dilations"],
        groups=attrs["groups"],
    )
    return _check_int32(acc)


def _check_int32(acc: np.ndarray) -> np.ndarray:
    info = np.iinfo(np.int32)
    if acc.size and (acc.max() > info.max or acc.min() < info.min):
        raise OverflowError("the int32 accumulator overflows")
    return acc.astype(np.int32)


def qconv2d_ref(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, in_types: InTypes, **attrs
) -> np.ndarray:
    """`in_types`: the input types; the weight scales come from ``in_types[1]`` (its encoding)."""
    ws = weight_scales(in_types[1])
    return epilogue_ref(qconv2d_acc(x, w, b, attrs), attrs, ws, axis=1)


register_op(
    OpSchema(
        name="qconv2d",
        inputs=("x", "w", "b?"),
        attrs={
            "strides": (1, 1),
            "pads": (0, 0, 0, 0),
            "dilations": (1, 1),
            "groups": 1,
            **_Q_ATTRS,
        },
        check=_qconv2d_check,
        infer=lambda t, a: [TensorType(_conv2d_infer(t, a)[0].shape, a["out_dtype"])],
        reference=qconv2d_ref,
        reference_types=True,
        macs=lambda t, out, a: out[0].size * t[1].shape[1] * t[1].shape[2] * t[1].shape[3],  # type: ignore[union-attr]
        doc="int8 conv: int32 acc = conv(x_q - x_zp, w_q) + b_q; epilogue dequantizes to float32 "
        "or requantizes to u8/i8 (per-channel scales from w's UniformQuant type), activation clamp "
        "fused.",
    )
)


def _qdense_check(t: InTypes, a: Attrs) -> str | None:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        return f"x {x} last dim must equal w {w} dim 1 (w is (out_features, in_features))"
    return _q_common_check(t, a, w.shape[0])


def qdense_acc(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: Attrs) -> np.ndarray:
    """The exact int32 accumulator ``(x - x_zp) @ w.T + b``."""
    acc = np.matmul(x.astype(np.int64) - int(attrs["x_zero_point"]), w.astype(np.int64).T)
    if b is not None:
        acc += b.astype(np.int64)
    return _check_int32(acc)


def qdense_ref(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, in_types: InTypes, **attrs
) -> np.ndarray:
    """`in_types`: the input types; the weight scales come from ``in_types[1]`` (its encoding)."""
    ws = weight_scales(in_types[1])
    return epilogue_ref(qdense_acc(x, w, b, attrs), attrs, ws, axis=-1)


register_op(
    OpSchema(
        name="qdense",
        inputs=("x", "w", "b?"),
        attrs=dict(_Q_ATTRS),
        check=_qdense_check,
        infer=lambda t, a: [TensorType((*t[0].shape[:-1], t[1].shape[0]), a["out_dtype"])],  # type: ignore[union-attr]
        reference=qdense_ref,
        reference_types=True,
        macs=lambda t, out, a: out[0].size * t[1].shape[1],  # type: ignore[union-attr]
        doc="int8 dense: int32 acc = (x_q - x_zp) @ w_q.T + b_q; dequantize or requantize "
        "epilogue as qconv2d.",
    )
)

__all__ = [
    "dequantize_array",
    "epilogue_ref",
    "output_bounds",
    "qconv2d_acc",
    "qconv2d_ref",
    "qdense_acc",
    "qdense_ref",
    "qrange",
    "quantize_array",
    "requant_multiplier",
    "weight_scales",
    "weight_type",
]
