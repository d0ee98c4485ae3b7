"""Spatial reductions back to global pools.

Paddle2ONNX writes the squeeze-and-excitation pooling of PP-HGNet / PP-OCRv5-v6 as
``ReduceMean(x, axes=[2, 3], keepdims=1)``, PyTorch ``x.mean((2, 3))`` as the same without
``keepdims`` and ``x.amax((2, 3))`` as ``ReduceMax``. As reductions they ran on the plain NCHW
tensor (a layout conversion of the whole feature map before each: PP-OCRv6's detector spent 1.5
of its 20 ms there); as ``global_avg_pool`` / ``global_max_pool`` the CPU planner runs them on
the blocked layout like any global pool:

- ``reduce_mean(x, axes={2, 3}, keepdims=1)`` -> ``global_avg_pool(x)``;
- ``reduce_max(x, axes={2, 3}, keepdims=1)`` -> ``global_max_pool(x)``;
- without ``keepdims``: the pool followed by a ``reshape`` to ``(N, C)``.

Only 4-D float tensors (N, C, H, W) and exactly the two spatial axes (negative ones counted from
the end). Lossless up to float rounding (the same mean, summed in another order).
"""

from __future__ import annotations

import numpy as np

from mcopt.ir.core import Graph, Value
from mcopt.pass_manager import RewritePass, register_pass
from mcopt.rewrite import Match, P, RewriteRule, X

POOLS = {"reduce_mean": "global_avg_pool", "reduce_max": "global_max_pool"}


class _SpatialReduce(RewriteRule):
    """``reduce_mean`` / ``reduce_max`` over H and W of an NCHW tensor -> the global pool."""

    name = "global-pool (spatial reduction)"
    pattern = P(tuple(POOLS), X, name="r")

    def check(self, m: Match) -> str | None:
        r, x = m["r"], m["x"]
        if x.type.rank != 4:
            return f"%{x.name} is not 4-D"
        if np.dtype(x.dtype).kind != "f":
            return f"%{x.name} is not a float tensor"
        axes = r.attrs.get("axes")
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            return f"{r.name!r} does not reduce over exactly H and W"
        return None

    def rewrite(self, m: Match, graph: Graph) -> Value:
        r = m["r"]
        y = m.add(POOLS[r.op], [m["x"]], name=f"{r.name}_pool").output
        if int(r.attrs.get("keepdims", 1)):
            return y
        return m.add("reshape", [y], {"shape": r.output.shape}, name=f"{r.name}_flat").output


@register_pass
class GlobalPool(RewritePass):
    """Rewrite ``reduce_mean`` / ``reduce_max`` over the two spatial axes of an NCHW tensor as
    ``global_avg_pool`` / ``global_max_pool`` (+ a reshape without ``keepdims``), which the CPU
    planner runs on the blocked layout. Lossless up to float rounding."""

    name = "global-pool"
    lossless = True

    def rules(self) -> list[RewriteRule]:
        return [_SpatialReduce()]


__all__ = ["GlobalPool"]
