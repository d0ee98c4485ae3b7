"""Common-subexpression elimination.

Two nodes with the same op, the same input values (the same objects, in order) and equal
attributes compute the same outputs (mcopt's ops are pure): the later one's uses move to the
earlier one and it is removed. Exporters repeat work across branches — openWakeWord's wake-word
models flatten their input once for the score and again inside the verifier ``If`` — and an ``If``
imported as both branches keeps both copies. A node whose output is a graph output stays (two
outputs would become one value). Lossless (exact).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.ir.core import Graph, Node
from mcopt.pass_manager import Pass, PassContext, register_pass


def _frozen(v: Any) -> Any:
    """A hashable stand-in for an attribute value (tuples / lists / arrays / dicts)."""
    if isinstance(v, np.ndarray):
        return ("ndarray", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    if isinstance(v, float) and np.isnan(v):
        return ("nan",)
    return v


def node_key(node: Node) -> tuple[Any, ...] | None:
    """What identifies ``node``'s computation (None when it cannot be keyed)."""
    try:
        attrs = _frozen(node.attrs)
        key = (node.op, tuple(id(v) if v is not None else None for v in node.inputs), attrs)
        hash(key)
    except TypeError:
        return None
    return key


@register_pass
class CommonSubexpressionElimination(Pass):
    """Merge nodes that compute the same thing (same op, same inputs, equal attributes): the
    later one's uses go to the earlier one. Lossless (exact)."""

    name = "cse"
    lossless = True

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        outputs = {id(v) for v in graph.outputs}
        seen: dict[tuple[Any, ...], Node] = {}
        merged = 0
        for node in graph.iter_nodes():
            key = node_key(node)
            if key is None:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            if any(id(o) in outputs for o in node.outputs):
                continue
            for old, new in zip(node.outputs, first.outputs):
                graph.replace_all_uses_with(old, new)
            graph.remove_node(node)
            merged += 1
        if merged:
            ctx.info(f"cse: {merged} duplicate node(s) merged")
        return merged > 0


__all__ = ["CommonSubexpressionElimination", "node_key"]
