"""Ops of a target-planned graph: what a CPU planner decided, written in the IR.

The CPU planning pass (:func:`mcopt.targets.cpu.planning.plan_cpu`) rewrites a graph into these ops
before lowering, so fusion and kernel choices are visible to the printer, checked by the verifier
and run by the interpreter like every other op (the lowering only reads them):

- ``fused_conv2d(x, w, b?, residual?)``: ``y = act(conv2d(x, w) + b (+ residual))``, then the
  channel permutation ``out_perm`` when set (``y[:, c] = act(...)[:, out_perm[c]]``: a ShuffleNet
  channel shuffle absorbed into the epilogue). ``w``/``b`` are the folded weights (a batch norm or
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
``hard_swish`` (``y * clip(y + 3, 0, 6) / 6``), ``hard_sigmoid`` (``clip(alpha * y + beta, 0, 1)``).
"""

from __future__ import annotations

import numpy as np

from mcopt.ir.types import TensorType
from mcopt.ops.nn import (
    _conv2d_check,
    _conv2d_infer,
    _conv2d_macs,
    _dense_check,
    _dense_infer,
    conv2d_ref,
    dense_ref,
)
from mcopt.ops.schema import REQUIRED, Attrs, InTypes, OpSchema, register_op

ACTIVATIONS = ("none", "relu", "relu6", "clip", "hard_swish", "hard_sigmoid")
CONV_KERNELS = ("direct", "depthwise", "winograd", "grouped", "block_diagonal", "plain")
DENSE_KERNELS = ("dense", "sparse")


def apply_activation(
    y: np.ndarray, activation: str, lo: float, hi: float, alpha: float = 0.2, beta: float = 0.5
) -> np.ndarray:
    if activation == "hard_swish":
        return (y * np.clip(y + 3.0, 0.0, 6.0) / 6.0).astype(y.dtype, copy=False)
    if activation == "hard_sigmoid":
        return np.clip(alpha * y + beta, 0.0, 1.0).astype(y.dtype, copy=False)
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
) -> np.ndarray:
    y = conv2d_ref(x, w, b, strides=strides, pads=pads, dilations=dilations, groups=groups)
    if residual is not None:
        y = y + residual
    y = apply_activation(y, activation, clip_min, clip_max, alpha, beta)
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
            "kernel": "direct",
            "tile": 0,
        },
        check=_fused_conv_check,
        infer=lambda t, a: _conv2d_infer(t, a),
        reference=fused_conv2d_ref,
        macs=_conv2d_macs,
        doc="y = act(conv(x, w) + b (+ residual))[:, out_perm]: a planned conv with its epilogue "
        "and the kernel that runs it.",
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
) -> np.ndarray:
    y = dense_ref(x, w, b)
    if residual is not None:
        y = y + residual
    return apply_activation(y, activation, clip_min, clip_max, alpha, beta)


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


__all__ = ["ACTIVATIONS", "CONV_KERNELS", "DENSE_KERNELS", "apply_activation"]
