"""``winograd_conv2d``: a 3x3, stride-1 convolution computed with Winograd's minimal filtering
algorithm F(m x m, 3 x 3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).

For every m x m output tile with its alpha x alpha input tile d (alpha = m + 2)::

    Y = A^T [ U (.) (B^T d B) ] A        with U = G g G^T (the transformed 3x3 filter g)

summed over input channels inside the brackets (one batched GEMM per (xi, nu) of the alpha x alpha
grid). The weight input **is U**, transformed once at compile time (``winograd_weight``), laid out
``(alpha, alpha, C_in, C_out)`` (what TOPI's ``*_winograd_without_weight_transform`` kernels read).

MACs count the element-wise multiplies of the GEMM stage, ``N * tiles * alpha^2 * C_in * C_out``: per
output pixel ``alpha^2 / m^2`` multiplies instead of 9, i.e. 2.25x fewer for F(2x2,3x3) and 4x fewer
for F(4x4,3x3) (when the output size is a multiple of m; edge tiles are padded). The transforms are
additions and constant scalings, not counted. U holds ``alpha^2 / 9`` times more numbers than g
(1.78x for m=2, 4x for m=4): Winograd trades weight memory for multiplies.

Lossless up to float rounding; F(4x4,3x3) rounds more than F(2x2,3x3) (larger transform entries).
ONNX export writes a standard Conv: the 3x3 weight is recovered exactly as ``g = G+ U G+^T`` (G has
full column rank, so its left inverse G+ satisfies ``G+ G = I``), so no second copy of the weight is
stored in the IR.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mcopt.ir.types import TensorType
from mcopt.ops._util import bad_ints, need_float
from mcopt.ops.schema import Attrs, InTypes, OpSchema, register_op

# Lavin & Gray, section 4: F(2,3) and F(4,3) transforms (correlation, as CNN "convolution").
_BT2 = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G2 = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_AT2 = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
_BT4 = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float64,
)
_G4 = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    np.float64,
)
_AT4 = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    np.float64,
)

#: m -> (B^T, G, A^T) for F(m x m, 3 x 3)
TRANSFORMS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    2: (_BT2, _G2, _AT2),
    4: (_BT4, _G4, _AT4),
}


def winograd_weight(w: np.ndarray, m: int) -> np.ndarray:
    """U = G g G^T for every filter: (O, C, 3, 3) -> (alpha, alpha, C, O), computed in float64."""
    _, g, _ = TRANSFORMS[m]
    u = np.einsum("xi,ocij,yj->xyco", g, np.asarray(w, np.float64), g)
    return np.ascontiguousarray(u.astype(w.dtype))


def winograd_weight_inverse(u: np.ndarray, m: int) -> np.ndarray:
    """The 3x3 weight back from U: g = G+ U G+^T -> (O, C, 3, 3) (exact up to float rounding)."""
    _, g, _ = TRANSFORMS[m]
    gp = np.linalg.pinv(g)  # (3, alpha), gp @ g == I
    w = np.einsum("ix,xyco,jy->ocij", gp, np.asarray(u, np.float64), gp)
    return np.ascontiguousarray(w.astype(u.dtype))


def _out_hw(x: TensorType, pads: tuple[int, ...]) -> tuple[int, int]:
    pt, pl, pb, pr = pads
    return x.shape[2] + pt + pb - 2, x.shape[3] + pl + pr - 2


def _check(t: InTypes, a: Attrs) -> str | None:
    x, u = t[0], t[1]
    assert x is not None and u is not None
    if a["m"] not in TRANSFORMS:
        return (
            f"attribute 'm' must be one of {sorted(TRANSFORMS)} (F(m x m, 3 x 3)), got {a['m']!r}"
        )
    reason = bad_ints(a, "pads", 4, 0)
    if reason:
        return reason + " (pads are (top, left, bottom, right))"
    alpha = a["m"] + 2
    if x.rank != 4 or u.rank != 4 or u.shape[:2] != (alpha, alpha):
        return (
            f"expects NCHW input and a transformed weight ({alpha}, {alpha}, C, O), got {x} and {u}"
        )
    if u.shape[2] != x.shape[1]:
        return f"weight {u} expects {u.shape[2]} input channels, input has {x.shape[1]}"
    if x.dtype != u.dtype:
        return f"input {x} and weight {u} dtypes differ"
    if len(t) > 2 and t[2] is not None and t[2].shape != (u.shape[3],):
        return f"bias {t[2]} must have shape ({u.shape[3]},)"
    ho, wo = _out_hw(x, a["pads"])
    if ho <= 0 or wo <= 0:
        return f"output spatial size {ho}x{wo} is empty for input {x}"
    return need_float(x)


def _infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x, u = t[0], t[1]
    assert x is not None and u is not None
    ho, wo = _out_hw(x, a["pads"])
    return [TensorType((x.shape[0], u.shape[3], ho, wo), x.dtype)]


def _tiles(ho: int, wo: int, m: int) -> tuple[int, int]:
    return -(-ho // m), -(-wo // m)


def _macs(t: InTypes, out: list[TensorType], a: Attrs) -> int:
    u = t[1]
    assert u is not None
    n, o, ho, wo = out[0].shape
    th, tw = _tiles(ho, wo, a["m"])
    return n * th * tw * u.shape[0] * u.shape[1] * u.shape[2] * o


def winograd_conv2d_ref(
    x: np.ndarray, u: np.ndarray, b: np.ndarray | None = None, *, m: int, pads: tuple[int, ...]
) -> np.ndarray:
    """numpy Winograd F(m x m, 3 x 3): input transform, alpha^2 batched GEMMs, output transform (float32
    for float32 inputs, like a real kernel)."""
    bt, _, at = TRANSFORMS[m]
    acc = np.float64 if x.dtype == np.float64 else np.float32
    bt, at = bt.astype(acc), at.astype(acc)
    n, c, h, w = x.shape
    alpha, o = m + 2, u.shape[3]
    pt, pl, pb, pr = pads
    ho, wo = h + pt + pb - 2, w + pl + pr - 2
    th, tw = _tiles(ho, wo, m)
    xp = np.pad(
        x.astype(acc, copy=False),
        ((0, 0), (0, 0), (pt, pb + th * m - ho), (pl, pr + tw * m - wo)),
    )
    tiles = sliding_window_view(xp, (alpha, alpha), axis=(2, 3))[:, :, ::m, ::m]  # N,C,th,tw,a,a
    tiles = tiles.transpose(4, 5, 1, 0, 2, 3).reshape(alpha, alpha, c, n * th * tw)
    v = np.tensordot(bt, tiles, axes=([1], [0]))  # (a, a, C, P): B^T d
    v = np.tensordot(bt, v, axes=([1], [1])).transpose(1, 0, 2, 3)  # (B^T d B)[xi, nu]
    mm = np.matmul(u.astype(acc, copy=False).transpose(0, 1, 3, 2), v)  # (a, a, O, P)
    y = np.tensordot(at, mm, axes=([1], [0]))  # (m, a, O, P)
    y = np.tensordot(at, y, axes=([1], [1]))  # (m_j, m_i, O, P): (A^T M A)[i, j] at [j, i]
    y = y.reshape(m, m, o, n, th, tw).transpose(3, 2, 4, 1, 5, 0).reshape(n, o, th * m, tw * m)
    y = y[:, :, :ho, :wo]
    if b is not None:
        y = y + b.astype(acc, copy=False).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y.astype(x.dtype, copy=False))


register_op(
    OpSchema(
        name="winograd_conv2d",
        inputs=("x", "u", "b?"),
        attrs={"m": 2, "pads": (0, 0, 0, 0)},
        check=_check,
        infer=_infer,
        reference=winograd_conv2d_ref,
        macs=_macs,
        doc=(
            "3x3 stride-1 conv by Winograd F(m x m, 3 x 3) (Lavin & Gray 2016); u = G g G^T laid out "
            "(m+2, m+2, C_in, C_out); pads = (top, left, bottom, right)."
        ),
    )
)


__all__ = [
    "TRANSFORMS",
    "winograd_conv2d_ref",
    "winograd_weight",
    "winograd_weight_inverse",
]
