"""Binary-weight and XNOR ops: ``binary_conv2d`` and ``binary_dense`` (Rastegari, Ordonez, Redmon &
Farhadi, "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks", ECCV 2016).

Weights. ``W ~= alpha * B`` with ``B = sign(W)`` (sign(0) = +1) and ``alpha = mean|W|`` per output
channel, the closed-form minimizer of ``||W - alpha B||^2``. ``B`` is stored bit-packed: for output
channel ``o`` the bits of ``B[o]`` flattened in (C, kh, kw) order (dense: the input features), bit
``t`` of the flat row in word ``t // 32`` at bit ``t % 32`` (LSB first), ``1`` = +1, ``0`` = -1, pad
bits 0. The packed input is a ``int32 (O, ceil(K / 32))`` constant of 32-bit words (the bit patterns of uint32 words; the IR has no
uint32 dtype): 32x smaller than float32 (the
:class:`PackedBinary` encoding counts exactly those words); ``alpha`` is a float32 ``(O,)`` constant.

Inputs. ``binary_input=0`` (Binary-Weight-Network): ``y = (x * B) alpha + b``, a float
convolution with +-1 weights. ``binary_input=1`` (XNOR-Net): the input is binarized too,
``x ~= beta * sign(x)``, and ``y = (sign(x) * B) alpha beta + b``, where ``sign(x) * B`` is an
integer computed with XNOR and popcount: ``dot = K - 2 popcount(bits(x) XOR bits(W))``. ``beta``:

- ``"position"`` (the paper's K map): for a conv ``K = (mean_c |x|) * k`` with ``k`` the
  ``kh x kw`` box filter (1 / (kh kw)), same stride / padding / dilation as the conv (zero padding);
  for dense the mean of ``|x|`` over the features of each row;
- ``"tensor"``: one ``mean|x|`` for the whole input;
- ``"none"``: ``beta = 1``.

Zero padding of a binary input contributes 0 (as a float conv of ``sign(x)`` with zero padding).
The integer path is exact: the references compute ``dot`` as an integer convolution / matmul and
produce ``float32(dot) * alpha * beta + b``. Lossy (the binarization), exact given the binary form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mcopt.ir.types import Binary, TensorType
from mcopt.ops._util import bad_int, bad_ints, need_float
from mcopt.ops.nn import conv2d_ref, conv_out_dim
from mcopt.ops.schema import Attrs, InTypes, OpSchema, register_op

BETA_MODES = ("none", "tensor", "position")


@dataclass(frozen=True)
class PackedBinary(Binary):
    """Storage of a bit-packed binary weight held as 32-bit words: exactly the words
    (``32 * words`` bits, row padding included). ``logical_shape`` is the float weight's shape; the
    per-channel scales are their own float32 constant (``num_scales`` records how many)."""

    logical_shape: tuple[int, ...] = ()
    kind: str = field(default="binary", init=False)

    def storage_bits(self, shape: tuple[int, ...], dtype: str) -> int:
        return math.prod(shape) * np.dtype(dtype).itemsize * 8

    def describe(self) -> str:
        return f"binary<{'x'.join(map(str, self.logical_shape))},packed u32>"


# --- bit packing ------------------------------------------------------------------------------------
def words_for(k: int) -> int:
    """32-bit words holding ``k`` bits."""
    return -(-int(k) // 32)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean ``(..., K)`` array LSB-first into 32-bit words ``(..., ceil(K/32))`` (pad bits
    0), held as int32 (the bit pattern of a uint32 word; the IR has no uint32 dtype)."""
    bits = np.asarray(bits, dtype=bool)
    k = bits.shape[-1]
    pad = words_for(k) * 32 - k
    if pad:
        bits = np.concatenate([bits, np.zeros((*bits.shape[:-1], pad), bool)], axis=-1)
    by = np.packbits(bits, axis=-1, bitorder="little")
    return np.ascontiguousarray(by).view("<i4").astype(np.int32, copy=False)


def unpack_bits(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: 32-bit words ``(..., W)`` -> boolean ``(..., k)``."""
    w = np.ascontiguousarray(np.asarray(words))
    if w.dtype.itemsize != 4:
        raise ValueError(f"packed words must be 32-bit, got {w.dtype}")
    by = w.view(np.uint8)
    return np.unpackbits(by, axis=-1, bitorder="little")[..., :k].astype(bool)


def binarize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``W -> (packed sign bits int32 words (O, ceil(K/32)), alpha float32 (O,))`` with
    ``alpha_o = mean|W_o|`` (XNOR-Net eq. 4: the least-squares optimal scale for B = sign(W))."""
    w = np.asarray(w)
    flat = w.reshape(w.shape[0], -1)
    alpha = np.abs(flat.astype(np.float64)).mean(axis=1).astype(np.float32)
    return pack_bits(flat >= 0), alpha


def unpack_weight(words: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The +-1 weight (int8) of logical ``shape`` from its packed bits."""
    k = math.prod(shape[1:])
    bits = unpack_bits(words, k)
    return np.where(bits, np.int8(1), np.int8(-1)).reshape(shape)


def sign_pm1(x: np.ndarray) -> np.ndarray:
    """sign with sign(0) = +1, as int8 +-1."""
    return np.where(np.asarray(x) >= 0, np.int8(1), np.int8(-1))


# --- references -------------------------------------------------------------------------------------
def xnor_conv2d_int(
    x: np.ndarray,
    wsign: np.ndarray,
    *,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
) -> np.ndarray:
    """The integer ``sign(x) * B`` of a binary-input conv (zero padding contributes 0): int32."""
    y = conv2d_ref(
        sign_pm1(x).astype(np.int32),
        wsign.astype(np.int32),
        strides=strides,
        pads=pads,
        dilations=dilations,
        groups=1,
    )
    return y.astype(np.int32)


def conv_beta(
    x: np.ndarray,
    mode: str,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
) -> np.ndarray:
    """beta of a binary-input conv: (N, 1, Ho, Wo) K map, a (1, 1, 1, 1) mean, or ones."""
    if mode == "none":
        return np.ones((1, 1, 1, 1), np.float32)
    absx = np.abs(x.astype(np.float32))
    if mode == "tensor":
        return np.asarray(absx.mean(dtype=np.float64), np.float32).reshape(1, 1, 1, 1)
    a = absx.mean(axis=1, keepdims=True, dtype=np.float32)  # A = sum_c |I_c| / c
    kh, kw = kernel
    box = np.full((1, 1, kh, kw), 1.0 / (kh * kw), np.float32)  # k = 1/(w h)
    return conv2d_ref(a, box, strides=strides, pads=pads, dilations=dilations, groups=1)


def binary_conv2d_ref(
    x: np.ndarray,
    wbits: np.ndarray,
    alpha: np.ndarray,
    b: np.ndarray | None = None,
    *,
    channels: int,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
    binary_input: int,
    beta: str,
) -> np.ndarray:
    """numpy binary conv: BWN (float conv with +-1 weights, times alpha) or XNOR (exact integer
    ``sign(x) * B`` times ``alpha * beta``), plus bias."""
    shape = (wbits.shape[0], channels, *kernel)
    wsign = unpack_weight(wbits, shape)
    geo = {"strides": strides, "pads": pads, "dilations": dilations}
    if binary_input:
        dot = xnor_conv2d_int(x, wsign, **geo).astype(np.float32)
        y = dot * alpha.astype(np.float32).reshape(1, -1, 1, 1)
        y = y * conv_beta(x, beta, kernel, strides, pads, dilations)
    else:
        y = conv2d_ref(x.astype(np.float32), wsign.astype(np.float32), groups=1, **geo)
        y = y * alpha.astype(np.float32).reshape(1, -1, 1, 1)
    if b is not None:
        y = y + b.astype(np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y.astype(x.dtype, copy=False))


def xnor_dense_int(x: np.ndarray, wsign: np.ndarray) -> np.ndarray:
    """The integer ``sign(x) @ B^T`` of a binary-input dense layer: int32."""
    return np.matmul(sign_pm1(x).astype(np.int32), wsign.astype(np.int32).T).astype(np.int32)


def dense_beta(x: np.ndarray, mode: str) -> np.ndarray:
    """beta of a binary-input dense layer: per row (..., 1), one scalar, or ones."""
    if mode == "none":
        return np.ones((1,) * x.ndim, np.float32)
    absx = np.abs(x.astype(np.float32))
    if mode == "tensor":
        return np.asarray(absx.mean(dtype=np.float64), np.float32).reshape((1,) * x.ndim)
    return absx.mean(axis=-1, keepdims=True, dtype=np.float32)


def binary_dense_ref(
    x: np.ndarray,
    wbits: np.ndarray,
    alpha: np.ndarray,
    b: np.ndarray | None = None,
    *,
    in_features: int,
    binary_input: int,
    beta: str,
) -> np.ndarray:
    """numpy binary dense: ``y = (x @ B^T) alpha + b`` or, with binary input,
    ``float32(sign(x) @ B^T) * alpha * beta + b``."""
    wsign = unpack_weight(wbits, (wbits.shape[0], in_features))
    if binary_input:
        y = xnor_dense_int(x, wsign).astype(np.float32) * alpha.astype(np.float32)
        y = y * dense_beta(x, beta)
    else:
        y = np.matmul(x.astype(np.float32), wsign.astype(np.float32).T) * alpha.astype(np.float32)
    if b is not None:
        y = y + b.astype(np.float32)
    return np.ascontiguousarray(y.astype(x.dtype, copy=False))


# --- schemas ----------------------------------------------------------------------------------------
def _common_check(t: InTypes, a: Attrs, k: int) -> str | None:
    x, wb, al = t[0], t[1], t[2]
    assert x is not None and wb is not None and al is not None
    if wb.dtype != "int32" or wb.rank != 2:
        return f"packed weight must be 32-bit words int32 (O, words), got {wb}"
    if wb.shape[1] != words_for(k):
        return f"packed weight {wb} needs {words_for(k)} words per row for {k} weights"
    if al.shape != (wb.shape[0],) or not np.issubdtype(np.dtype(al.dtype), np.floating):
        return f"alpha {al} must be float ({wb.shape[0]},)"
    if len(t) > 3 and t[3] is not None and t[3].shape != (wb.shape[0],):
        return f"bias {t[3]} must have shape ({wb.shape[0]},)"
    if a["binary_input"] not in (0, 1):
        return f"attribute 'binary_input' must be 0 or 1, got {a['binary_input']!r}"
    if a["beta"] not in BETA_MODES:
        return f"attribute 'beta' must be one of {BETA_MODES}, got {a['beta']!r}"
    return need_float(x)


def _conv_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    for key, n, lo in (("kernel", 2, 1), ("strides", 2, 1), ("pads", 4, 0), ("dilations", 2, 1)):
        reason = bad_ints(a, key, n, lo)
        if reason:
            return reason
    reason = bad_int(a, "channels")
    if reason:
        return reason
    if x.rank != 4 or x.shape[1] != a["channels"]:
        return f"expects NCHW input with {a['channels']} channels, got {x}"
    return _common_check(t, a, a["channels"] * a["kernel"][0] * a["kernel"][1])


def _conv_out(x: TensorType, a: Attrs) -> tuple[int, int]:
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = (
        a["kernel"],
        a["strides"],
        a["pads"],
        a["dilations"],
    )
    return (
        conv_out_dim(x.shape[2], kh, sh, pt, pb, dh),
        conv_out_dim(x.shape[3], kw, sw, pl, pr, dw),
    )


def _conv_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x, wb = t[0], t[1]
    assert x is not None and wb is not None
    ho, wo = _conv_out(x, a)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"output spatial size {ho}x{wo} is empty for input {x}")
    return [TensorType((x.shape[0], wb.shape[0], ho, wo), x.dtype)]


def _conv_macs(t: InTypes, out: list[TensorType], a: Attrs) -> int:
    return out[0].size * a["channels"] * a["kernel"][0] * a["kernel"][1]


register_op(
    OpSchema(
        name="binary_conv2d",
        inputs=("x", "wbits", "alpha", "b?"),
        attrs={
            "channels": 0,
            "kernel": (1, 1),
            "strides": (1, 1),
            "pads": (0, 0, 0, 0),
            "dilations": (1, 1),
            "binary_input": 0,
            "beta": "position",
        },
        check=_conv_check,
        infer=_conv_infer,
        reference=binary_conv2d_ref,
        macs=_conv_macs,
        doc=(
            "Binary-weight conv (XNOR-Net): W = alpha * sign(W) bit-packed 32-bit (O, ceil(C*kh*kw/32)); "
            "binary_input=1 binarizes x with beta ('position' K map | 'tensor' | 'none') and uses "
            "XNOR-popcount. groups = 1."
        ),
    )
)


def _dense_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    reason = bad_int(a, "in_features")
    if reason:
        return reason
    if x.rank < 1 or x.shape[-1] != a["in_features"]:
        return f"x {x} last dim must equal in_features={a['in_features']}"
    return _common_check(t, a, a["in_features"])


def _dense_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x, wb = t[0], t[1]
    assert x is not None and wb is not None
    return [TensorType((*x.shape[:-1], wb.shape[0]), x.dtype)]


register_op(
    OpSchema(
        name="binary_dense",
        inputs=("x", "wbits", "alpha", "b?"),
        attrs={"in_features": 0, "binary_input": 0, "beta": "position"},
        check=_dense_check,
        infer=_dense_infer,
        reference=binary_dense_ref,
        macs=lambda t, out, a: out[0].size * a["in_features"],
        doc=(
            "Binary-weight dense: y = (x @ sign(W)^T) alpha + b, W bit-packed 32-bit (O, ceil(I/32)); "
            "binary_input=1: float(sign(x) @ B^T) * alpha * beta + b by XNOR-popcount."
        ),
    )
)


__all__ = [
    "BETA_MODES",
    "PackedBinary",
    "binarize_weight",
    "binary_conv2d_ref",
    "binary_dense_ref",
    "conv_beta",
    "dense_beta",
    "pack_bits",
    "sign_pm1",
    "unpack_bits",
    "unpack_weight",
    "words_for",
    "xnor_conv2d_int",
    "xnor_dense_int",
]
