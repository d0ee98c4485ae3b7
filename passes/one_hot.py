"""A one-hot matrix product as a row lookup.

TensorFlow and JAX write an embedding layer as ``one_hot(i, K) @ W``; exported to ONNX it is
``MatMul(Cast(Equal(i[..., None], arange(K))), W)`` (Magika's byte embedding: 2048 positions x 257
byte values x 64 features, 34 M multiply-adds of which 2048 x 64 are not by zero). With the one-hot
row of ``i`` being ``e_i``, ``e_i @ W = W[i]`` for ``0 <= i < K`` and the zero row otherwise, so

    dense(cast(equal(i, iota_K)), w, b) -> embedding(reshape(i), w.T) + b

where ``iota_K`` is a constant holding ``0, 1, ..., K-1`` along its last axis (either operand
order of the ``equal``) and ``i`` has a trailing axis of 1. Exact: each output is the one product
``1 * w`` plus the bias, as before (``0 * w`` terms vanish unless ``w`` holds Inf / NaN).
"""

from __future__ import annotations

import numpy as np

from mcopt.ir.core import Graph, Node, Value
from mcopt.pass_manager import RewritePass, register_pass
from mcopt.rewrite import B, Match, P, RewriteRule, V, W


def _iota_len(v: Value) -> int | None:
    """K when the constant ``v`` is ``arange(K)`` along its last axis (every other axis 1)."""
    c = v.const
    if c is None or c.ndim == 0 or any(d != 1 for d in c.shape[:-1]):
        return None
    k = c.shape[-1]
    return k if np.array_equal(c.reshape(-1), np.arange(k)) else None


class OneHotDense(RewriteRule):
    """``dense(cast(equal(i, arange(K))), w, b)`` -> ``embedding(i, w.T) (+ b)``."""

    name = "one-hot-dense"

    def __init__(self, swapped: bool) -> None:
        i, iota = V("i", const=False), V("iota", const=True)
        eq = P("equal", iota, i, name="eq") if swapped else P("equal", i, iota, name="eq")
        self.pattern = P("dense", P("cast", eq, name="cast"), W, B, name="dense")

    def check(self, m: Match) -> str | None:
        i: Value = m["i"]
        w: Value = m["w"]
        k = _iota_len(m["iota"])
        if k is None:
            return f"%{m['iota'].name} is not 0, 1, ..., K-1 along its last axis"
        if np.dtype(i.dtype).kind not in "iu":
            return f"%{i.name} is {i.dtype}, not integer indices"
        if not i.shape or i.shape[-1] != 1:
            return f"%{i.name} {list(i.shape)} has no trailing axis of 1 to compare along"
        if m["eq"].output.shape != (*i.shape[:-1], k):
            return f"the comparison broadcasts to {list(m['eq'].output.shape)}, not {[*i.shape[:-1], k]}"
        if w.type.encoding is not None or w.shape[1] != k or np.dtype(w.dtype).kind != "f":
            return (
                f"%{w.name} {list(w.shape)} is not a plain float weight over the {k} one-hot rows"
            )
        if m["cast"].attrs["to"] != w.dtype:
            return f"the one-hot rows are cast to {m['cast'].attrs['to']}, the weight is {w.dtype}"
        return None

    def rewrite(self, m: Match, graph: Graph) -> Value:
        dense: Node = m["dense"]
        i: Value = m["i"]
        w: Value = m["w"]
        table = graph.const(np.ascontiguousarray(w.const.T), name=f"{w.name}_table")
        idx = m.add("reshape", [i], {"shape": tuple(i.shape[:-1])}, name=f"{dense.name}_index")
        y = m.add("embedding", [idx.output, table], name=f"{dense.name}_embedding").output
        if m["b"] is not None:
            y = m.add("add", [y, m["b"]], name=f"{dense.name}_bias").output
        return y


@register_pass
class OneHotToEmbedding(RewritePass):
    """Rewrite a one-hot matrix product (``Equal`` against ``arange(K)``, ``Cast``, ``MatMul``: how
    TensorFlow / JAX export an embedding) as a row lookup, the ``embedding`` op. Lossless (exact);
    the module docstring has the formula."""

    name = "one-hot-to-embedding"
    lossless = True

    def rules(self) -> list[RewriteRule]:
        return [OneHotDense(False), OneHotDense(True)]


__all__ = ["OneHotDense", "OneHotToEmbedding"]
