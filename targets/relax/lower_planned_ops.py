"""Plain NCHW lowerings of the planned ops (:mod:`mcopt.ops.planned`): a planned graph also lowers
through :func:`mcopt.targets.relax.lower.lower` (``pipeline="mcopt-plain"`` / ``"relax"``), op by op with
Relax's own conv/matmul and the epilogue as separate ops. The default build lowers them with the
fused kernels instead (:mod:`mcopt.targets.cpu.lower_planned`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
from tvm import relax

from mcopt.ir.core import Node
from mcopt.targets.relax.lower import LOWERINGS, LowerContext, LowerResult, register_lowering

R = relax.op


def emit_activation(ctx: LowerContext, node: Node, y: Any) -> Any:
    """The fused node's activation on ``y`` as Relax ops (the ops' own lowerings: hard_swish,
    hard_sigmoid read the node's ``alpha``/``beta``)."""
    act = node.attrs["activation"]
    if act in ("hard_swish", "hard_sigmoid", "silu", "gelu"):
        return LOWERINGS[act](ctx, node, [ctx.emit(y)])
    if act == "relu":
        return R.nn.relu(ctx.emit(y))
    if act == "prelu":  # one slope per channel (axis 1 of a conv, the last of a dense)
        y = ctx.emit(y)
        rank = len(node.output.shape)
        shape = (1, -1) + (1,) * (rank - 2) if rank == 4 else (-1,)
        slope = ctx.const(np.asarray(node.attrs["slope"], np.float32).reshape(shape))
        return R.where(R.greater(y, ctx.const(np.float32(0))), y, R.multiply(y, slope))
    if act == "leaky_relu":  # slope alpha, then the floor clip_min (-inf: none)
        y = LOWERINGS["leaky_relu"](ctx, node, [ctx.emit(y)])
        lo = float(node.attrs["clip_min"])
        return R.maximum(ctx.emit(y), ctx.const(np.float32(lo))) if np.isfinite(lo) else y
    if act in ("relu6", "clip"):
        lo, hi = (0.0, 6.0) if act == "relu6" else (node.attrs["clip_min"], node.attrs["clip_max"])
        return R.clip(ctx.emit(y), float(lo), float(hi))
    return y


def _epilogue(ctx: LowerContext, node: Node, y: Any, a: list[Any]) -> Any:
    if len(a) > 3 and a[3] is not None:
        y = R.add(ctx.emit(y), a[3])
    return emit_activation(ctx, node, y)


@register_lowering("fused_conv2d")
def _fused_conv2d(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    if node.attrs.get("in_perm"):
        x = R.take(a[0], ctx.const(np.asarray(node.attrs["in_perm"], np.int64)), axis=1)
        a = [ctx.emit(x), *a[1:]]
    y = _epilogue(ctx, node, LOWERINGS["conv2d"](ctx, node, a[:3]), a)
    perm = node.attrs["out_perm"]
    if perm:
        y = R.take(ctx.emit(y), ctx.const(np.asarray(perm, np.int64)), axis=1)
    return y


@register_lowering("fused_dense")
def _fused_dense(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return _epilogue(ctx, node, LOWERINGS["dense"](ctx, node, a[:3]), a)


@register_lowering("permute_channels")
def _permute_channels(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.take(a[0], ctx.const(np.asarray(node.attrs["perm"], np.int64)), axis=1)


_QBASE = ("strides", "pads", "dilations", "groups", "x_scale", "x_zero_point", "out_dtype",
          "out_scale", "out_zero_point", "act_min", "act_max")  # fmt: skip


@register_lowering("fused_qconv2d")
def _fused_qconv2d(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """The ``qconv2d`` lowering, then (float base) ``+ dequantize(residual)``, the post clamp and
    the ``quantize``, as Relax ops (the reference's sequence)."""
    at = node.attrs
    base = SimpleNamespace(
        op="qconv2d",
        name=node.name,
        inputs=list(node.inputs[:3]),
        attrs={k: at[k] for k in _QBASE},
        output=SimpleNamespace(shape=tuple(node.output.shape)),
    )
    y = LOWERINGS["qconv2d"](ctx, base, a[:1])  # type: ignore[arg-type]
    if at["out_dtype"] != "float32":
        return y
    y = ctx.emit(y)
    if len(a) > 3 and a[3] is not None:
        r = a[3]
        if node.inputs[3].dtype != "float32":  # type: ignore[union-attr]
            d = ctx.emit(
                R.subtract(R.astype(r, "int32"), ctx.const(np.int32(at["residual_zero_point"])))
            )
            r = ctx.emit(
                R.multiply(R.astype(d, "float32"), ctx.const(np.float32(at["residual_scale"])))
            )
        y = ctx.emit(R.add(y, r))
    if at["post_min"] > -np.inf:
        y = ctx.emit(R.maximum(y, ctx.const(np.float32(at["post_min"]))))
    if at["post_max"] < np.inf:
        y = ctx.emit(R.minimum(y, ctx.const(np.float32(at["post_max"]))))
    if at["post_act"] in ("hard_swish", "silu", "gelu"):
        y = ctx.emit(LOWERINGS[str(at["post_act"])](ctx, node, [y]))
    if at["post_act"] == "leaky_relu":
        neg = R.multiply(y, ctx.const(np.float32(at["post_alpha"])))
        y = ctx.emit(R.where(R.greater(y, ctx.const(np.float32(0))), y, neg))
    if at["q_dtype"] == "none":
        return y
    qn = SimpleNamespace(
        attrs={
            "scale": (at["q_scale"],),
            "zero_point": (at["q_zero_point"],),
            "axis": 1,
            "dtype": at["q_dtype"],
        }  # fmt: skip
    )
    return LOWERINGS["quantize"](ctx, qn, [y])  # type: ignore[arg-type]


__all__: list[str] = []
