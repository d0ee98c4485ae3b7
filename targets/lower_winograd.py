"""Lowering of ``winograd_conv2d`` (Lavin & Gray 2016, F(2x2,3x3) / F(4x4,3x3)) to mcopt's Winograd
kernel (:mod:`mcopt.targets.kernels.winograd`): input transform, alpha^2 register-tiled GEMMs,
output transform with the bias fused — one scheduled PrimFunc per layer, NCHW in and out.

The op's weight input is U = G g G^T laid out ``(alpha, alpha, C_in, C_out)`` (transformed at
compile time by the ``winograd`` pass); the kernel packs it to ``(alpha^2, C_out / ro, C_in, ro)``
reading the axes by name, so ``C_in == C_out`` cannot be confused (TOPI's weight transform writes
``(alpha, alpha, C_out, C_in)``, the silent bug DESIGN.md warns about; TOPI is not used here).
Lossless up to float rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.errors import TargetError
from mcopt.ir.core import Node
from mcopt.targets.kernels.epilogue import Epilogue
from mcopt.targets.lower import LowerContext, LowerResult, register_lowering


def _call(ctx: LowerContext, func: Any, name: str, args: list[Any], shape: tuple[int, ...]) -> Any:
    from mcopt.targets.kernels.relax_ops import call_kernel

    return call_kernel(ctx.bb, func, name, args, shape, "float32")


def _bias_arg(ctx: LowerContext, node: Node, a: list[Any], n: int) -> Any:
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is None:
        return ctx.const(np.zeros(n, np.float32))
    if b.const is not None:
        return ctx.const(np.asarray(b.const, np.float32))
    return a[2]


@register_lowering("winograd_conv2d")
def _winograd_conv2d(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    from mcopt.targets.kernels.winograd import pack_winograd_weight, winograd_conv2d

    u = node.inputs[1]
    if u is None or u.const is None:
        raise TargetError(
            f"node {node.name!r} (winograd_conv2d): the transformed weight U must be a constant"
        )
    if u.dtype != "float32":
        raise TargetError(
            f"node {node.name!r} (winograd_conv2d): only float32 is lowered, U is {u.dtype}"
        )
    m = int(node.attrs["m"])
    pads = tuple(int(p) for p in node.attrs["pads"])
    xshape = LowerContext.shape_of(a[0])
    o = int(u.shape[3])
    func, plan = winograd_conv2d(xshape, o, m, pads, Epilogue(bias=True))
    args = [
        a[0],
        ctx.const(pack_winograd_weight(np.asarray(u.const, np.float32), plan.ro)),
        _bias_arg(ctx, node, a, o),
    ]
    return _call(ctx, func, "winograd_conv2d", args, (xshape[0], o, plan.oh, plan.ow))


__all__: list[str] = []
