"""Plain lowering of ``winograd_conv2d`` (Lavin & Gray 2016, F(2x2,3x3) / F(4x4,3x3)) on mcopt's one
Winograd kernel, the blocked one (:mod:`mcopt.targets.cpu.kernels.winograd_nchwc`): the NCHW input is
blocked by the target's lanes (channels zero-padded), the kernel runs the input transform, the
alpha^2 register-tiled GEMMs and the output transform with the bias fused, and the result is
converted back to NCHW. (The default CPU build never comes here: its planner turns the node into a
``fused_conv2d`` with ``kernel="winograd"`` and keeps the activations blocked across layers.)

The op's weight input is U = G g G^T ``(alpha, alpha, C_in, C_out)``; the kernel packs its own U
from the 3x3 weight, recovered here as ``G+ U G+^T`` (exact up to float rounding,
:func:`mcopt.ops.winograd.winograd_weight_inverse`). The axes are read by name, so
``C_in == C_out`` cannot be confused (TOPI's weight transform writes ``(alpha, alpha, C_out,
C_in)``, the silent bug DESIGN.md warns about; TOPI is not used here).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.errors import TargetError
from mcopt.ir.core import Node
from mcopt.ops.winograd import winograd_weight_inverse
from mcopt.targets.relax.lower import LowerContext, LowerResult, register_lowering


def _padded(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out


@register_lowering("winograd_conv2d")
def _winograd_conv2d(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    from mcopt.targets.cpu import kernels as K

    u, b = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None
    if u is None or u.const is None:
        raise TargetError(
            f"node {node.name!r} (winograd_conv2d): the transformed weight U must be a constant"
        )
    if u.dtype != "float32" or (b is not None and b.const is None):
        raise TargetError(
            f"node {node.name!r} (winograd_conv2d): only float32 with a constant bias is lowered"
        )
    m = int(node.attrs["m"])
    bn = K.cpu_info(ctx.target).lanes
    w = winograd_weight_inverse(np.asarray(u.const, np.float32), m)
    o, c = w.shape[:2]
    cp, op = -(-c // bn) * bn, -(-o // bn) * bn
    bias = None if b is None else _padded(np.asarray(b.const, np.float32), (op,))
    xb = K.emit_to_blocked(ctx.bb, a[0], bn, cp)
    y = K.emit_winograd_conv2d(
        ctx.bb, xb, _padded(w, (op, cp, 3, 3)), bias, m, padding=tuple(node.attrs["pads"])
    )
    return K.emit_from_blocked(ctx.bb, y, o)


__all__: list[str] = []
