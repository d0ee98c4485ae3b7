"""Plain NCHW lowerings of the planned ops (:mod:`mcopt.ops.planned`): a planned graph also lowers
through :func:`mcopt.targets.relax.lower.lower` (``pipeline="mcopt-plain"`` / ``"relax"``), op by op with
Relax's own conv/matmul and the epilogue as separate ops. The default build lowers them with the
fused kernels instead (:mod:`mcopt.targets.cpu.lower_planned`)."""

from __future__ import annotations

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
    if act in ("hard_swish", "hard_sigmoid"):
        return LOWERINGS[act](ctx, node, [ctx.emit(y)])
    if act == "relu":
        return R.nn.relu(ctx.emit(y))
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


__all__: list[str] = []
