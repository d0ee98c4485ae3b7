"""Upsampling ops of segmentation / detection / super-resolution decoders: nearest-neighbour
upsampling by whole factors (ONNX ``Resize`` / ``Upsample`` in the forms that repeat pixels), the
transposed convolution (ONNX ``ConvTranspose``) and the pixel shuffle (ONNX ``DepthToSpace``), NCHW. PP-OCR's text detector (DBNet) uses both in its FPN and head.
"""

from __future__ import annotations

import numpy as np

from mcopt.ir.types import TensorType
from mcopt.ops._util import acc_dtype, bad_ints, need_float
from mcopt.ops.schema import REQUIRED, Attrs, InTypes, OpSchema, register_op


# --- upsample_nearest -----------------------------------------------------------------------------
def _upsample_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    if x.rank != 4:
        return f"expects a 4-D NCHW input, got {x}"
    return bad_ints(a, "scales", 2, 1)


def upsample_nearest_ref(x: np.ndarray, *, scales: tuple[int, int]) -> np.ndarray:
    """``y[n, c, i, j] = x[n, c, i // sh, j // sw]``."""
    return np.repeat(np.repeat(x, scales[0], axis=2), scales[1], axis=3)


register_op(
    OpSchema(
        name="upsample_nearest",
        inputs=("x",),
        attrs={"scales": REQUIRED},
        check=_upsample_check,
        infer=lambda t, a: [
            TensorType(
                (*t[0].shape[:2], t[0].shape[2] * a["scales"][0], t[0].shape[3] * a["scales"][1]),  # type: ignore[union-attr]
                t[0].dtype,  # type: ignore[union-attr]
            )
        ],
        reference=upsample_nearest_ref,
        traits=frozenset({"channelwise", "zero_preserving", "finite_preserving"}),
        doc="nearest-neighbour upsampling by whole factors: y[n, c, i, j] = x[n, c, i // sh, j // sw] "
        "(ONNX Resize mode=nearest with asymmetric/floor or half-pixel coordinates).",
    )
)


# --- conv_transpose2d -----------------------------------------------------------------------------
def conv_transpose_out_dim(
    size: int, k: int, stride: int, pad_begin: int, pad_end: int, dilation: int, out_pad: int
) -> int:
    return (size - 1) * stride - pad_begin - pad_end + dilation * (k - 1) + 1 + out_pad


def _convt_check(t: InTypes, a: Attrs) -> str | None:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    if x.rank != 4 or w.rank != 4:
        return f"expects 4-D NCHW input and (C, O/groups, kh, kw) weight, got {x} and {w}"
    for key, n, lo in (
        ("strides", 2, 1), ("pads", 4, 0), ("dilations", 2, 1), ("output_padding", 2, 0),
    ):  # fmt: skip
        reason = bad_ints(a, key, n, lo)
        if reason:
            return reason + " (pads are (top, left, bottom, right))"
    g = a["groups"]
    if not isinstance(g, int) or g < 1 or x.shape[1] % g:
        return f"groups={g} does not divide the input channels {x.shape[1]}"
    if w.shape[0] != x.shape[1]:
        return f"weight {w} expects {w.shape[0]} input channels, the input has {x.shape[1]}"
    if x.dtype != w.dtype:
        return f"input {x} and weight {w} dtypes differ"
    if len(t) > 2 and t[2] is not None and t[2].shape != (w.shape[1] * g,):
        return f"bias {t[2]} must have shape ({w.shape[1] * g},)"
    return need_float(x)


def _convt_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = a["strides"], a["pads"], a["dilations"]
    oph, opw = a["output_padding"]
    ho = conv_transpose_out_dim(x.shape[2], w.shape[2], sh, pt, pb, dh, oph)
    wo = conv_transpose_out_dim(x.shape[3], w.shape[3], sw, pl, pr, dw, opw)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"output spatial size {ho}x{wo} is empty for input {x} and kernel {w}")
    return [TensorType((x.shape[0], w.shape[1] * a["groups"], ho, wo), x.dtype)]


def conv_transpose2d_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
    groups: int,
    output_padding: tuple[int, int],
) -> np.ndarray:
    """The adjoint of conv2d: each input pixel scatters ``x[n, c, i, j] * w[c, o, a, b]`` to
    ``(i * sh + a * dh - pt, j * sw + b * dw - pl)``; one matmul per kernel tap and group."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    ho = conv_transpose_out_dim(h, kh, sh, pt, pb, dh, output_padding[0])
    wo = conv_transpose_out_dim(wd, kw, sw, pl, pr, dw, output_padding[1])
    acc = acc_dtype(x.dtype)
    cg = c // groups
    full_h = max(ho + pt, (h - 1) * sh + dh * (kh - 1) + 1)
    full_w = max(wo + pl, (wd - 1) * sw + dw * (kw - 1) + 1)
    y = np.zeros((n, groups * og, full_h, full_w), acc)
    xg = x.astype(acc).reshape(n, groups, cg, h * wd)
    wg = w.astype(acc).reshape(groups, cg, og, kh, kw)
    for a_ in range(kh):
        for b_ in range(kw):
            # (groups, og, cg) @ (n, groups, cg, h*w) -> (n, groups, og, h*w)
            tap = np.matmul(wg[:, :, :, a_, b_].transpose(0, 2, 1), xg)
            tap = tap.reshape(n, groups * og, h, wd)
            y[:, :, a_ * dh : a_ * dh + (h - 1) * sh + 1 : sh,
              b_ * dw : b_ * dw + (wd - 1) * sw + 1 : sw] += tap  # fmt: skip
    y = y[:, :, pt : pt + ho, pl : pl + wo]
    if b is not None:
        y = y + b.astype(acc).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y).astype(x.dtype, copy=False)


def _convt_macs(t: InTypes, out: list[TensorType], a: Attrs) -> int:
    x, w = t[0], t[1]
    assert x is not None and w is not None
    return x.size * w.shape[1] * w.shape[2] * w.shape[3]


register_op(
    OpSchema(
        name="conv_transpose2d",
        inputs=("x", "w", "b?"),
        attrs={
            "strides": (1, 1),
            "pads": (0, 0, 0, 0),
            "dilations": (1, 1),
            "groups": 1,
            "output_padding": (0, 0),
        },  # fmt: skip
        check=_convt_check,
        infer=_convt_infer,
        reference=conv_transpose2d_ref,
        macs=_convt_macs,
        doc="transposed convolution (ONNX ConvTranspose). x: NCHW, w: (C, O/groups, kh, kw); "
        "pads = (top, left, bottom, right) cropped from the full output.",
    )
)


# --- depth_to_space -------------------------------------------------------------------------------
def _d2s_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    bs = a["blocksize"]
    if x.rank != 4:
        return f"expects a 4-D NCHW input, got {x}"
    if not isinstance(bs, int) or bs < 1 or x.shape[1] % (bs * bs):
        return f"blocksize {bs!r} squared does not divide the {x.shape[1]} channels"
    if a["mode"] not in ("DCR", "CRD"):
        return f"mode must be 'DCR' or 'CRD', got {a['mode']!r}"
    return None


def depth_to_space_ref(x: np.ndarray, *, blocksize: int, mode: str) -> np.ndarray:
    """ONNX DepthToSpace: channel ``(a, b, o)`` (DCR) or ``(o, a, b)`` (CRD) of pixel ``(i, j)``
    goes to channel ``o`` of pixel ``(i * bs + a, j * bs + b)``."""
    n, c, h, w = x.shape
    bs = blocksize
    if mode == "DCR":
        t = x.reshape(n, bs, bs, c // bs**2, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // bs**2, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(t.reshape(n, c // bs**2, h * bs, w * bs))


register_op(
    OpSchema(
        name="depth_to_space",
        inputs=("x",),
        attrs={"blocksize": REQUIRED, "mode": "DCR"},
        check=_d2s_check,
        infer=lambda t, a: [
            TensorType(
                (
                    t[0].shape[0],
                    t[0].shape[1] // a["blocksize"] ** 2,  # type: ignore[union-attr]
                    t[0].shape[2] * a["blocksize"],
                    t[0].shape[3] * a["blocksize"],
                ),  # type: ignore[union-attr]
                t[0].dtype,  # type: ignore[union-attr]
            )
        ],  # fmt: skip
        reference=depth_to_space_ref,
        traits=frozenset({"zero_preserving", "finite_preserving"}),
        doc="pixel shuffle (ONNX DepthToSpace): channel (a, b, o) [DCR] or (o, a, b) [CRD] of pixel "
        "(i, j) -> channel o of pixel (i*bs + a, j*bs + b).",
    )
)
