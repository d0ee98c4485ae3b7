"""Integer-only fixed-point ops (``fx_*``): the vocabulary of the ``fixed-point`` pass and the ``fpga`` target.

Number format (Qm.n): a tensor of ``bits`` total bits (sign included) and ``frac_bits`` fractional bits
holds integers ``q`` with ``real = q * 2**-frac_bits`` and ``q`` in ``[-2**(bits-1), 2**(bits-1) - 1]``.
Storage is the smallest integer dtype that holds ``bits`` (int8 up to 8 bits, int16 up to 16).

Every op here is integer-only except the two boundary ops ``fx_quantize`` (float -> int) and
``fx_dequantize`` (int -> float). The numpy references are the **bit-exact specification** that the
generated C of the ``fpga`` target must reproduce:

- multiply-accumulate (``fx_conv2d``, ``fx_dense``) in an integer accumulator of ``acc_bits`` (32/64;
  the pass picks 32 only when a worst-case bound proves it cannot overflow), the bias already in the
  accumulator's format (``frac_x + frac_w`` fractional bits);
- requantization by an arithmetic shift with round-half-up and saturation::

      requant(acc, s, bits) = clamp((acc + 2**(s-1)) >> s, -2**(bits-1), 2**(bits-1) - 1)   (s > 0)
                            = clamp(acc * 2**-s, ...)                                        (s <= 0)

  where ``s = frac_acc - frac_out`` (``>>`` is the arithmetic shift: floor division by 2**s);
- ``fx_add`` aligns both operands to a common format by left shifts, adds, then requantizes;
- ``fx_avg_pool`` sums the window and multiplies by ``mult`` then requantizes with ``shift``:
  ``mult * 2**-shift ~= 2**(frac_out - frac_in) / (kh * kw)`` (multiply-shift division, as in
  integer-only inference, Jacob et al. CVPR 2018, with power-of-two scales);
- ``fx_quantize``: ``q = clamp(floor(x * 2**frac_bits + 0.5))`` computed in float64 (exact for
  float32 inputs, so C and numpy agree); ``fx_dequantize``: ``x = float32(q * 2**-frac_bits)``.

References compute in int64; the pass guarantees that int64 never overflows and that the accumulator
bound fits ``acc_bits``, so a C implementation with ``int32_t``/``int64_t`` accumulators is bit-exact.
Lossy (rounding and saturation); see :mod:`mcopt.passes.fixed_point` for how formats are chosen.
"""

from __future__ import annotations

import numpy as np

from mcopt.ir.types import TensorType
from mcopt.ops._util import bad_int, is_float
from mcopt.ops.nn import _conv2d_check, _conv2d_infer, conv2d_ref
from mcopt.ops.pool import MAX_POOL_ATTRS, _pool_check, _pool_infer, max_pool_ref
from mcopt.ops.schema import REQUIRED, Attrs, InTypes, OpSchema, broadcast_shapes, register_op

#: activation / weight widths the fixed-point ops accept
MIN_BITS, MAX_BITS = 2, 16


def storage_dtype(bits: int) -> str:
    """Smallest signed integer dtype holding a `bits`-bit two's-complement number."""
    if bits <= 8:
        return "int8"
    if bits <= 16:
        return "int16"
    if bits <= 32:
        return "int32"
    return "int64"


def qrange(bits: int) -> tuple[int, int]:
    """(lowest, highest) integer of a signed `bits`-bit number."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def is_int(t: TensorType | None) -> bool:
    return t is not None and np.issubdtype(np.dtype(t.dtype), np.signedinteger)


def shift_round(acc: np.ndarray, shift: int) -> np.ndarray:
    """Divide int64 `acc` by 2**shift rounding half up (shift > 0), or multiply by 2**-shift."""
    acc = np.asarray(acc, np.int64)
    if shift > 0:
        return (acc + np.int64(1 << (shift - 1))) >> np.int64(shift)
    if shift < 0:
        return acc * np.int64(1 << (-shift))
    return acc


def requantize(acc: np.ndarray, shift: int, bits: int) -> np.ndarray:
    """``clamp(shift_round(acc, shift))`` to a signed `bits`-bit number, in its storage dtype."""
    lo, hi = qrange(bits)
    return np.clip(shift_round(acc, shift), lo, hi).astype(storage_dtype(bits))


# --- checks ---------------------------------------------------------------------------------------
def _bits_reason(a: Attrs, key: str = "bits") -> str | None:
    reason = bad_int(a, key)
    if reason:
        return reason
    if not MIN_BITS <= a[key] <= MAX_BITS:
        return f"attribute {key!r} must be in [{MIN_BITS}, {MAX_BITS}], got {a[key]}"
    return None


def _ints_reason(t: InTypes, names: tuple[str, ...]) -> str | None:
    for nm, ty in zip(names, t):
        if ty is not None and not is_int(ty):
            return f"{nm.strip('?*')} must be a signed integer tensor, got {ty}"
    return None


def _mac_check(t: InTypes, a: Attrs, conv: bool) -> str | None:
    reason = _ints_reason(t, ("x", "w", "b"))
    if reason:
        return reason
    for key in ("shift", "bits", "acc_bits"):
        reason = bad_int(a, key)
        if reason:
            return reason
    if reason := _bits_reason(a):
        return reason
    if a["acc_bits"] not in (32, 64):
        return f"attribute 'acc_bits' must be 32 or 64, got {a['acc_bits']}"
    x, w = t[0], t[1]
    assert x is not None and w is not None
    if conv:
        # reuse conv2d's geometry checks with the dtype rule relaxed (x and w may differ in width)
        reason = _conv2d_check([x, TensorType(w.shape, x.dtype), *t[2:]], a)
    else:
        reason = None
        if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
            reason = f"x {x} last dim must equal w {w} dim 1 (w is (out_features, in_features))"
        elif len(t) > 2 and t[2] is not None and t[2].shape != (w.shape[0],):
            reason = f"bias {t[2]} must have shape ({w.shape[0]},)"
    return reason


# --- boundary ops ---------------------------------------------------------------------------------
def fx_quantize_ref(x: np.ndarray, *, bits: int, frac_bits: int) -> np.ndarray:
    lo, hi = qrange(bits)
    q = np.floor(np.asarray(x, np.float64) * np.float64(2.0**frac_bits) + 0.5)
    return np.clip(q, lo, hi).astype(storage_dtype(bits))


def fx_dequantize_ref(q: np.ndarray, *, frac_bits: int) -> np.ndarray:
    return (np.asarray(q, np.float64) * np.float64(2.0**-frac_bits)).astype(np.float32)


register_op(
    OpSchema(
        name="fx_quantize",
        inputs=("x",),
        attrs={"bits": REQUIRED, "frac_bits": REQUIRED},
        check=lambda t, a: (
            _bits_reason(a)
            or bad_int(a, "frac_bits")
            or (None if is_float(t[0]) else f"expects a float input, got {t[0]}")  # type: ignore[arg-type]
        ),
        infer=lambda t, a: [TensorType(t[0].shape, storage_dtype(a["bits"]))],  # type: ignore[union-attr]
        reference=fx_quantize_ref,
        doc="q = clamp(floor(x * 2^frac_bits + 0.5)) to signed `bits` (float -> fixed point Qm.n).",
    )
)

register_op(
    OpSchema(
        name="fx_dequantize",
        inputs=("q",),
        attrs={"frac_bits": REQUIRED},
        check=lambda t, a: bad_int(a, "frac_bits") or _ints_reason(t, ("q",)),
        infer=lambda t, a: [TensorType(t[0].shape, "float32")],  # type: ignore[union-attr]
        reference=fx_dequantize_ref,
        doc="x = q * 2^-frac_bits as float32 (fixed point -> float).",
    )
)


# --- multiply-accumulate ops ----------------------------------------------------------------------
def fx_conv2d_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
    groups: int,
    shift: int,
    bits: int,
    acc_bits: int,
) -> np.ndarray:
    """Integer conv: int64 im2col MACs + bias, then ``requantize(acc, shift, bits)``."""
    acc = conv2d_ref(
        x.astype(np.int64),
        w.astype(np.int64),
        None if b is None else b.astype(np.int64),
        strides=strides,
        pads=pads,
        dilations=dilations,
        groups=groups,
    )
    return requantize(acc, shift, bits)


def fx_dense_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    shift: int,
    bits: int,
    acc_bits: int,
) -> np.ndarray:
    acc = x.astype(np.int64) @ w.astype(np.int64).T
    if b is not None:
        acc = acc + b.astype(np.int64)
    return requantize(acc, shift, bits)


def _conv_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    (out,) = _conv2d_infer(t, a)
    return [TensorType(out.shape, storage_dtype(a["bits"]))]


_MAC_ATTRS = {"shift": REQUIRED, "bits": REQUIRED, "acc_bits": 32}

register_op(
    OpSchema(
        name="fx_conv2d",
        inputs=("x", "w", "b?"),
        attrs={
            "strides": (1, 1),
            "pads": (0, 0, 0, 0),
            "dilations": (1, 1),
            "groups": 1,
            **_MAC_ATTRS,
        },
        check=lambda t, a: _mac_check(t, a, conv=True),
        infer=_conv_infer,
        reference=fx_conv2d_ref,
        macs=lambda t, out, a: out[0].size * t[1].shape[1] * t[1].shape[2] * t[1].shape[3],  # type: ignore[union-attr]
        doc=(
            "integer conv: acc = sum x*w + b (acc_bits accumulator, b in acc format), "
            "y = clamp((acc + 2^(shift-1)) >> shift) to signed `bits`."
        ),
    )
)

register_op(
    OpSchema(
        name="fx_dense",
        inputs=("x", "w", "b?"),
        attrs=dict(_MAC_ATTRS),
        check=lambda t, a: _mac_check(t, a, conv=False),
        infer=lambda t, a: [
            TensorType((*t[0].shape[:-1], t[1].shape[0]), storage_dtype(a["bits"]))  # type: ignore[union-attr]
        ],
        reference=fx_dense_ref,
        macs=lambda t, out, a: out[0].size * t[1].shape[1],  # type: ignore[union-attr]
        doc="integer dense: acc = x @ w.T + b, y = clamp((acc + 2^(shift-1)) >> shift) to `bits`.",
    )
)


# --- element-wise ---------------------------------------------------------------------------------
def fx_clip_ref(x: np.ndarray, *, lo: int, hi: int) -> np.ndarray:
    return np.clip(x, lo, hi).astype(x.dtype)


def _int_same(t: InTypes, a: Attrs) -> list[TensorType]:
    x = t[0]
    assert x is not None
    return [TensorType(x.shape, x.dtype)]


register_op(
    OpSchema(
        name="fx_relu",
        inputs=("x",),
        check=lambda t, a: _ints_reason(t, ("x",)),
        infer=_int_same,
        reference=lambda x: np.maximum(x, 0).astype(x.dtype),
        elementwise=True,
        doc="y = max(q, 0) (ReLU on fixed point: the format is unchanged).",
    )
)

register_op(
    OpSchema(
        name="fx_clip",
        inputs=("x",),
        attrs={"lo": REQUIRED, "hi": REQUIRED},
        check=lambda t, a: bad_int(a, "lo") or bad_int(a, "hi") or _ints_reason(t, ("x",)),
        infer=_int_same,
        reference=fx_clip_ref,
        elementwise=True,
        doc="y = clamp(q, lo, hi) (ReLU6 is lo=0, hi=6 * 2^frac_bits).",
    )
)


def fx_add_ref(
    a: np.ndarray, b: np.ndarray, *, lshift_a: int, lshift_b: int, shift: int, bits: int
) -> np.ndarray:
    s = (a.astype(np.int64) << np.int64(lshift_a)) + (b.astype(np.int64) << np.int64(lshift_b))
    return requantize(s, shift, bits)


def _add_check(t: InTypes, a: Attrs) -> str | None:
    reason = _ints_reason(t, ("a", "b"))
    for key in ("lshift_a", "lshift_b", "shift"):
        reason = reason or bad_int(a, key)
    reason = reason or _bits_reason(a)
    if reason is None and (a["lshift_a"] < 0 or a["lshift_b"] < 0):
        reason = f"lshift_a/lshift_b must be >= 0, got {a['lshift_a']}, {a['lshift_b']}"
    if reason is None and t[0].shape != t[1].shape:  # type: ignore[union-attr]
        reason = f"operands must have the same shape, got {t[0]} and {t[1]}"
    return reason


register_op(
    OpSchema(
        name="fx_add",
        inputs=("a", "b"),
        attrs={"lshift_a": 0, "lshift_b": 0, "shift": 0, "bits": REQUIRED},
        check=_add_check,
        infer=lambda t, a: [
            TensorType(broadcast_shapes(t[0].shape, t[1].shape), storage_dtype(a["bits"]))  # type: ignore[union-attr]
        ],
        reference=fx_add_ref,
        elementwise=True,
        doc="y = requant((a << lshift_a) + (b << lshift_b), shift, bits): add aligned to one format.",
    )
)


# --- pooling --------------------------------------------------------------------------------------
def fx_max_pool_ref(x: np.ndarray, **a: object) -> np.ndarray:
    return max_pool_ref(x, **a)


def fx_avg_pool_ref(
    x: np.ndarray,
    *,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    mult: int,
    shift: int,
    bits: int,
) -> np.ndarray:
    """Window sum (zero padding counted) times `mult`, then ``requantize(., shift, bits)``."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = kernel, strides, pads
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (xp.shape[2] - kh) // sh + 1
    wo = (xp.shape[3] - kw) // sw + 1
    s = np.zeros((x.shape[0], x.shape[1], ho, wo), np.int64)
    for i in range(kh):
        for j in range(kw):
            s += xp[:, :, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw]
    return requantize(s * np.int64(mult), shift, bits)


def _max_pool_check(t: InTypes, a: Attrs) -> str | None:
    return _ints_reason(t, ("x",)) or _pool_check(t, a)


def _avg_pool_check(t: InTypes, a: Attrs) -> str | None:
    reason = _ints_reason(t, ("x",))
    for key in ("mult", "shift"):
        reason = reason or bad_int(a, key)
    reason = reason or _bits_reason(a)
    if reason is None and a["mult"] < 0:
        reason = f"attribute 'mult' must be >= 0, got {a['mult']}"
    return reason or _pool_check(t, {**a, "ceil_mode": 0})


register_op(
    OpSchema(
        name="fx_max_pool",
        inputs=("x",),
        attrs=dict(MAX_POOL_ATTRS),
        check=_max_pool_check,
        infer=_pool_infer,
        reference=fx_max_pool_ref,
        doc="integer max pooling (padding = the dtype's lowest value); the format is unchanged.",
    )
)

register_op(
    OpSchema(
        name="fx_avg_pool",
        inputs=("x",),
        attrs={
            "kernel": REQUIRED,
            "strides": (1, 1),
            "pads": (0, 0, 0, 0),
            "mult": REQUIRED,
            "shift": REQUIRED,
            "bits": REQUIRED,
        },
        check=_avg_pool_check,
        infer=lambda t, a: [
            TensorType(_pool_infer(t, {**a, "ceil_mode": 0})[0].shape, storage_dtype(a["bits"]))
        ],
        reference=fx_avg_pool_ref,
        doc=(
            "integer average pooling: y = requant(window_sum * mult, shift, bits) with "
            "mult * 2^-shift ~= 2^(frac_out - frac_in) / (kh * kw) (zero padding counted)."
        ),
    )
)


def avg_pool_multiplier(
    count: int, frac_in: int, frac_out: int, mult_bits: int = 15
) -> tuple[int, int]:
    """(mult, shift) with ``mult * 2**-shift ~= 2**(frac_out - frac_in) / count`` and ``mult`` an
    unsigned `mult_bits`-bit integer (the largest ``shift`` that keeps it so: most precise)."""
    ratio = 2.0 ** (frac_out - frac_in) / count
    shift = mult_bits - 1 - int(np.floor(np.log2(ratio)))  # ratio * 2**shift in [2**(mb-1), 2**mb)
    mult = int(round(ratio * 2.0**shift))
    if mult >= 1 << mult_bits:  # rounding pushed it over: one bit less
        shift -= 1
        mult = int(round(ratio * 2.0**shift))
    return mult, shift


#: every fixed-point op (the boundary ops convert float <-> int; the rest are integer-only)
FX_OPS = (
    "fx_quantize",
    "fx_dequantize",
    "fx_conv2d",
    "fx_dense",
    "fx_relu",
    "fx_clip",
    "fx_add",
    "fx_max_pool",
    "fx_avg_pool",
)

__all__ = [
    "FX_OPS",
    "avg_pool_multiplier",
    "fx_add_ref",
    "fx_avg_pool_ref",
    "fx_conv2d_ref",
    "fx_dense_ref",
    "fx_dequantize_ref",
    "fx_quantize_ref",
    "qrange",
    "requantize",
    "shift_round",
    "storage_dtype",
]
