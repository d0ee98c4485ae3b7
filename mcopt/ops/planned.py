"""Ops of a target-planned graph: what a CPU planner decided, written in the IR.

The CPU planning pass (:func:`mcopt.targets.cpu.planning.plan_cpu`) rewrites a graph into these ops
before lowering, so fusion and kernel choices are visible to the printer, checked by the verifier
and run by the interpreter like every other op (the lowering only reads them):

- ``fused_conv2d(x, w, b?, residual?)``: ``y = act(conv2d(x, w) + b (+ residual))``, then the
  channel permutation ``out_perm`` when set (``y[:, c] = act(...)[:, out_perm[c]]``: a ShuffleNet
  channel shuffle absorbed into the epilogue); ``in_perm`` permutes the input channels first
  (``conv2d(x[:, in_perm], w)``: a channel shuffle the kernel reads through a table).
  ``w``/``b`` are the folded weights (a batch norm or
  per-channel ``mul``/``add`` that followed the conv is already inside them: ``w' = w * k``,
  ``b' = b * k + c`` with ``k = gamma / sqrt(var + eps)``, ``c = beta - mean * k``; Ioffe & Szegedy
  2015). ``kernel`` names the kernel that runs it (``direct``, ``depthwise``, ``winograd`` with
  ``tile`` m, ``grouped``, ``block_diagonal``, ``plain``); the conv + bias + BN + residual +
  activation fusion is that of Liu et al., USENIX ATC 2019.
- ``fused_dense(x, w, b?, residual?)``: ``y = act(x @ w.T + b (+ residual))``, ``kernel`` ``dense``
  or ``sparse`` (block-CSR kernel for a pruned weight).
- ``permute_channels(x)``: ``y[:, c] = x[:, perm[c]]`` (a channel shuffle found as a
  reshape/transpose/reshape chain).

Activations: ``none``, ``relu``, ``relu6`` (``clip(0, 6)``), ``clip`` (``clip_min``..``clip_max``),
``hard_swish`` (``y * clip(y + 3, 0, 6) / 6``), ``hard_sigmoid`` (``clip(alpha * y + beta, 0, 1)``),
``silu`` (``y * sigmoid(y)``).
"""

from __future__ import annotations

import math

import numpy as np

from mcopt.ir.types import TensorType
from mcopt.ops.elementwise import sigmoid
from mcopt.ops.nn import (
    _conv2d_check,
    _conv2d_infer,
    _conv2d_macs,
    _dense_check,
    _dense_infer,
    conv2d_ref,
    dense_ref,
)
from mcopt.ops.quant import QDTYPES, _qconv2d_check, dequantize_array, qconv2d_ref, quantize_array
from mcopt.ops.schema import REQUIRED, Attrs, InTypes, OpSchema, get_schema, register_op

ACTIVATIONS = (
    "none", "relu", "relu6", "clip", "hard_swish", "hard_sigmoid", "silu", "gelu", "leaky_relu",
    "prelu",
)  # fmt: skip
CONV_KERNELS = ("direct", "depthwise", "winograd", "grouped", "block_diagonal", "plain")
DENSE_KERNELS = ("dense", "sparse")


def apply_activation(
    y: np.ndarray,
    activation: str,
    lo: float,
    hi: float,
    alpha: float = 0.2,
    beta: float = 0.5,
    slope: np.ndarray | None = None,
) -> np.ndarray:
    if activation == "hard_swish":
        return (y * np.clip(y + 3.0, 0.0, 6.0) / 6.0).astype(y.dtype, copy=False)
    if activation == "silu":
        return (y * sigmoid(y)).astype(y.dtype, copy=False)
    if activation == "gelu":
        from scipy.special import erf

        return (0.5 * y * (1.0 + erf(y.astype(np.float64) / np.sqrt(2.0)))).astype(y.dtype)
    if activation == "hard_sigmoid":
        return np.clip(alpha * y + beta, 0.0, 1.0).astype(y.dtype, copy=False)
    if activation == "prelu":  # slope: one per channel, shaped to broadcast against y
        return np.where(y > 0, y, slope * y).astype(y.dtype, copy=False)
    if activation == "leaky_relu":  # slope alpha, then the floor lo (-inf: none)
        return np.maximum(np.where(y > 0, y, alpha * y), lo).astype(y.dtype, copy=False)
    if activation == "relu":
        return np.maximum(y, 0, dtype=y.dtype)
    if activation == "relu6":
        return np.clip(y, 0, 6).astype(y.dtype, copy=False)
    if activation == "clip":
        return np.clip(y, lo, hi).astype(y.dtype, copy=False)
    return y


def _epilogue_check(t: InTypes, a: Attrs, out: TensorType, kernels: tuple[str, ...]) -> str | None:
    if a["activation"] not in ACTIVATIONS:
        return f"activation={a['activation']!r}; valid: {', '.join(ACTIVATIONS)}"
    if a["kernel"] not in kernels:
        return f"kernel={a['kernel']!r}; valid: {', '.join(kernels)}"
    channels = out.shape[1] if len(out.shape) == 4 else out.shape[-1]
    if a["activation"] == "prelu" and len(a["slope"]) != channels:
        return f"activation=prelu needs one slope per output channel ({channels}), got {len(a['slope'])}"
    if a["activation"] != "prelu" and a["slope"]:
        return "slope is set but the activation is not prelu"
    res = t[3] if len(t) > 3 else None
    if res is not None and (res.shape, res.dtype) != (out.shape, out.dtype):
        return f"residual {res} must match the output {out}"
    return None


def _fused_conv_check(t: InTypes, a: Attrs) -> str | None:
    base = {k: a[k] for k in ("strides", "pads", "dilations", "groups")}
    reason = _conv2d_check(t[:3], base)
    if reason is not None:
        return reason
    try:
        out = _conv2d_infer(t, a)[0]
    except ValueError as e:
        return str(e)
    reason = _epilogue_check(t, a, out, CONV_KERNELS)
    if reason is not None:
        return reason
    perm = a["out_perm"]
    if perm and sorted(perm) != list(range(out.shape[1])):
        return f"out_perm must be a permutation of the {out.shape[1]} output channels"
    perm = a["in_perm"]
    if perm and sorted(perm) != list(range(t[0].shape[1])):
        return f"in_perm must be a permutation of the {t[0].shape[1]} input channels"
    if a["kernel"] == "winograd" and a["tile"] not in (2, 4):
        return f"kernel=winograd needs tile 2 or 4, got {a['tile']}"
    return None


def fused_conv2d_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    *,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
    groups: int,
    activation: str,
    clip_min: float,
    clip_max: float,
    alpha: float,
    beta: float,
    out_perm: tuple[int, ...],
    kernel: str,
    tile: int,
    in_perm: tuple[int, ...] = (),
    slope: tuple[float, ...] = (),
) -> np.ndarray:
    if in_perm:
        x = x[:, list(in_perm)]
    y = conv2d_ref(x, w, b, strides=strides, pads=pads, dilations=dilations, groups=groups)
    if residual is not None:
        y = y + residual
    s = np.asarray(slope, y.dtype).reshape(-1, 1, 1) if slope else None
    y = apply_activation(y, activation, clip_min, clip_max, alpha, beta, s)
    return y[:, list(out_perm)] if out_perm else y


register_op(
    OpSchema(
        name="fused_conv2d",
        inputs=("x", "w", "b?", "residual?"),
        attrs={
            "strides": (1, 1),
            "pads": (0, 0, 0, 0),
            "dilations": (1, 1),
            "groups": 1,
            "activation": "none",
            "clip_min": 0.0,
            "clip_max": 6.0,
            "alpha": 0.2,
            "beta": 0.5,
            "out_perm": (),
            "in_perm": (),
            "kernel": "direct",
            "tile": 0,
            "slope": (),
        },
        check=_fused_conv_check,
        infer=lambda t, a: _conv2d_infer(t, a),
        reference=fused_conv2d_ref,
        macs=_conv2d_macs,
        doc="y = act(conv(x[:, in_perm], w) + b (+ residual))[:, out_perm]: a planned conv with "
        "its epilogue and the kernel that runs it.",
    )
)


def _fused_dense_check(t: InTypes, a: Attrs) -> str | None:
    reason = _dense_check(t[:3], {})
    if reason is not None:
        return reason
    return _epilogue_check(t, a, _dense_infer(t, a)[0], DENSE_KERNELS)


def fused_dense_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    *,
    activation: str,
    clip_min: float,
    clip_max: float,
    alpha: float,
    beta: float,
    kernel: str,
    slope: tuple[float, ...] = (),
) -> np.ndarray:
    y = dense_ref(x, w, b)
    if residual is not None:
        y = y + residual
    s = np.asarray(slope, y.dtype) if slope else None
    return apply_activation(y, activation, clip_min, clip_max, alpha, beta, s)


def _dense_macs(t: InTypes, out: list[TensorType], a: Attrs) -> int:
    w = t[1]
    assert w is not None
    return out[0].size * w.shape[1]


register_op(
    OpSchema(
        name="fused_dense",
        inputs=("x", "w", "b?", "residual?"),
        attrs={
            "activation": "none",
            "clip_min": 0.0,
            "clip_max": 6.0,
            "alpha": 0.2,
            "beta": 0.5,
            "kernel": "dense",
            "slope": (),
        },
        check=_fused_dense_check,
        infer=lambda t, a: _dense_infer(t, a),
        reference=fused_dense_ref,
        macs=_dense_macs,
        doc="y = act(x @ w.T + b (+ residual)): a planned dense layer and the kernel that runs it.",
    )
)


def _permute_check(t: InTypes, a: Attrs) -> str | None:
    x = t[0]
    assert x is not None
    perm = a["perm"]
    if x.rank < 2 or sorted(perm) != list(range(x.shape[1])):
        return (
            f"perm must be a permutation of the {x.shape[1] if x.rank > 1 else 0} channels of {x}"
        )
    return None


register_op(
    OpSchema(
        name="permute_channels",
        inputs=("x",),
        attrs={"perm": REQUIRED},
        check=_permute_check,
        infer=lambda t, a: [TensorType(t[0].shape, t[0].dtype)],  # type: ignore[union-attr]
        reference=lambda x, *, perm: np.ascontiguousarray(x[:, list(perm)]),
        doc="y[:, c] = x[:, perm[c]]: a channel shuffle.",
    )
)


# --- fused_qconv2d ---------------------------------------------------------------------------------
QCONV_KERNELS = ("int8", "int8_window", "int8_depthwise", "plain")
_QBASE = ("strides", "pads", "dilations", "groups", "x_scale", "x_zero_point", "out_dtype",
          "out_scale", "out_zero_point", "act_min", "act_max")  # fmt: skip


def _fused_qconv_check(t: InTypes, a: Attrs) -> str | None:
    reason = _qconv2d_check(t[:3], {k: a[k] for k in _QBASE})
    if reason is not None:
        return reason
    if a["kernel"] not in QCONV_KERNELS:
        return f"kernel={a['kernel']!r}; valid: {', '.join(QCONV_KERNELS)}"
    if a["post_act"] not in ("none", "hard_swish", "silu", "gelu", "leaky_relu"):
        return f"post_act must be none, hard_swish, silu, gelu or leaky_relu, got {a['post_act']!r}"
    if a["q_dtype"] not in ("none", *QDTYPES):
        return f"q_dtype must be none, uint8 or int8, got {a['q_dtype']!r}"
    res = t[3] if len(t) > 3 else None
    tail = res is not None or a["q_dtype"] != "none" or a["post_min"] > -math.inf
    tail = tail or a["post_act"] != "none"
    if a["out_dtype"] != "float32" and (tail or a["post_max"] < math.inf):
        return "a requantizing qconv2d (out_dtype int) cannot absorb a residual, act or quantize"
    if res is not None:
        out_shape = tuple(_conv2d_infer(t, a)[0].shape)
        if tuple(res.shape) != out_shape or res.dtype not in ("float32", *QDTYPES):
            return f"residual {res} must be float32 or int8/uint8 of shape {list(out_shape)}"
    if a["q_dtype"] != "none" and not a["q_scale"] > 0:
        return f"q_scale must be positive, got {a['q_scale']}"
    return None


def _fused_qconv_dtype(a: Attrs) -> str:
    return a["out_dtype"] if a["out_dtype"] != "float32" or a["q_dtype"] == "none" else a["q_dtype"]


def fused_qconv2d_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    *,
    in_types: InTypes,
    **a: object,
) -> np.ndarray:
    """``qconv2d`` then (float base) ``+ dequantize(residual)``, the post clamp, ``quantize``."""
    y = qconv2d_ref(x, w, b, in_types=in_types, **{k: a[k] for k in _QBASE})
    if a["out_dtype"] != "float32":
        return y
    if residual is not None:
        if residual.dtype == np.float32:
            r = residual
        else:
            r = dequantize_array(residual, [a["residual_scale"]], [a["residual_zero_point"]])
        y = (y + r).astype(np.float32)
    y = np.clip(y, a["post_min"], a["post_max"]).astype(np.float32)
    if a["post_act"] == "hard_swish":  # the hard_swish op's own formula
        y = (y * np.clip(y / 6 + 0.5, 0, 1)).astype(np.float32)
    if a["post_act"] == "silu":
        y = (y * sigmoid(y)).astype(np.float32)
    if a["post_act"] == "gelu":
        y = apply_activation(y, "gelu", 0.0, 0.0)
    if a["post_act"] == "leaky_relu":
        y = np.where(y > 0, y, np.float32(a["post_alpha"]) * y).astype(np.float32)
    if a["q_dtype"] == "none":
        return y
    return quantize_array(y, [a["q_scale"]], [a["q_zero_point"]], str(a["q_dtype"]))


register_op(
    OpSchema(
        name="fused_qconv2d",
        inputs=("x", "w", "b?", "residual?"),
        attrs={
            **get_schema("qconv2d").attrs,  # the base qconv2d's attributes, then its tail's
            "residual_scale": 1.0,
            "residual_zero_point": 0,
            "post_min": -math.inf,
            "post_max": math.inf,
            "post_act": "none",
            "post_alpha": 0.0,
            "q_dtype": "none",
            "q_scale": 1.0,
            "q_zero_point": 0,
            "kernel": "int8",
        },
        check=_fused_qconv_check,
        infer=lambda t, a: [TensorType(_conv2d_infer(t, a)[0].shape, _fused_qconv_dtype(a))],
        reference=fused_qconv2d_ref,
        reference_types=True,
        macs=get_schema("qconv2d").macs,
        doc="a planned int8 conv: qconv2d, then (float base) + dequantize(residual), clamp to "
        "[post_min, post_max], post_act (hard_swish, silu, gelu, leaky_relu with post_alpha) and quantize(q_scale, q_zero_point) -- the "
        "graph's int8 block as one kernel.",
    )
)


__all__ = ["ACTIVATIONS", "CONV_KERNELS", "DENSE_KERNELS", "QCONV_KERNELS", "apply_activation"]
