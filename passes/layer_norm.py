"""Layer normalization written out of elementwise ops, back to one ``layer_norm``.

PyTorch below opset 17 (and hand-written modules) export ``nn.LayerNorm`` as nine ops::

    m = ReduceMean(x, axes); d = x - m; v = ReduceMean(d ** 2 | d * d, axes)
    y = d / Sqrt(v + eps) [* gamma] [+ beta]

(openWakeWord's wake-word heads, every ViT / BERT export before opset 17). As nine kernels they
are nine passes over the tensor and nine calls; ``layer_norm`` (mean and variance over the dims
from ``axis`` on; Ba et al., "Layer normalization", 2016) is one op the build fuses, trains and
exports as ``LayerNormalization``. A constant ``gamma`` / ``beta`` that broadcasts to the
normalized shape becomes its scale / bias. Both reductions must be over the same trailing dims
with ``keepdims``; ``eps`` a non-negative scalar; the square ``d ** 2`` or ``d * d``. Lossless up
to float rounding (the same arithmetic; ``rsqrt`` instead of a divide by ``sqrt`` in the build).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mcopt.ir.core import Graph, Node, Value
from mcopt.pass_manager import RewritePass, register_pass
from mcopt.rewrite import Match, P, RewriteRule, V, X


def _scalar(v: Value) -> bool:
    c = v.const
    return c is not None and c.size == 1 and np.dtype(c.dtype).kind == "f"


def _both(op: str, a: P | V, b: P | V, name: str) -> Iterator[P]:
    yield P(op, a, b, name=name)
    yield P(op, b, a, name=name)


def _trailing_axes(node: Node) -> int | None:
    """The first axis of a keepdims reduction over the trailing dims (None otherwise)."""
    x = node.inputs[0]
    if x is None or not int(node.attrs.get("keepdims", 1)):
        return None
    rank = x.type.rank
    axes = sorted(int(a) % rank for a in node.attrs.get("axes") or range(rank))
    if not axes or axes != list(range(axes[0], rank)):
        return None
    return axes[0]


class _LayerNorm(RewriteRule):
    """``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)`` -> ``layer_norm(x)``."""

    def __init__(self, pattern: P) -> None:
        self.pattern = pattern
        self.name = "layer-norm (spelled out)"

    def check(self, m: Match) -> str | None:
        if m["d"] is not m["sub"].output:
            return "the squared value is not x - mean(x)"
        if "two" in m.captures and float(np.asarray(m["two"].const).reshape(())) != 2.0:
            return f"%{m['two'].name} is not 2"
        if np.dtype(m["x"].dtype).kind != "f":
            return f"%{m['x'].name} is not a float tensor"
        a1, a2 = _trailing_axes(m["mean"]), _trailing_axes(m["var"])
        if a1 is None or a1 != a2:
            return "the two reductions are not over the same trailing dims with keepdims"
        if float(np.asarray(m["eps"].const).reshape(())) < 0:
            return "epsilon is negative"
        return None

    def rewrite(self, m: Match, graph: Graph) -> Value:
        attrs = {"axis": _trailing_axes(m["mean"]), "epsilon": float(m["eps"].const.reshape(()))}
        return m.add("layer_norm", [m["x"]], attrs, name=f"{m.root.name}_layer_norm").output


def _layer_norm_patterns() -> Iterator[P]:
    mean = P("reduce_mean", X, name="mean", shared=True)
    sub = P("sub", X, mean, name="sub", shared=True)
    d = V("d")
    squares = [
        P("pow", d, V("two", const=True, where=_scalar), name="sq"),
        P("mul", d, d, name="sq"),
    ]
    for sq in squares:
        var = P("reduce_mean", sq, name="var")
        for add in _both("add", var, V("eps", const=True, where=_scalar), "add"):
            yield P("div", sub, P("sqrt", add, name="sqrt"), name="div")


class _Affine(RewriteRule):
    """``layer_norm(x) * gamma`` / ``layer_norm(x[, gamma]) + beta`` with constants that broadcast
    to the normalized shape -> the layer_norm's scale / bias."""

    def __init__(self, pattern: P, which: str) -> None:
        self.pattern = pattern
        self.which = which
        self.name = f"layer-norm {which}"

    def check(self, m: Match) -> str | None:
        ln: Node = m["ln"]
        x, c = ln.inputs[0], m["c"]
        assert x is not None
        ins = list(ln.inputs) + [None] * (3 - len(ln.inputs))
        if self.which == "scale" and (ins[1] is not None or ins[2] is not None):
            return "the layer_norm already has a scale or a bias"
        if self.which == "bias" and ins[2] is not None:
            return "the layer_norm already has a bias"
        if c.dtype != x.dtype or m.root.output.shape != x.shape:
            return f"%{c.name} changes the output's type or shape"
        rank, axis = x.type.rank, int(ln.attrs["axis"]) % x.type.rank
        shp = (1,) * (rank - len(c.shape)) + tuple(c.shape)
        if any(d != 1 for d in shp[:axis]):
            return f"%{c.name} varies along the dims before the normalized ones"
        return None

    def rewrite(self, m: Match, graph: Graph) -> Value:
        ln: Node = m["ln"]
        x = ln.inputs[0]
        assert x is not None
        axis = int(ln.attrs["axis"]) % x.type.rank
        c = np.asarray(m["c"].const)
        arr = c.reshape(c.shape[max(0, c.ndim - (x.type.rank - axis)) :])
        p = graph.const(np.ascontiguousarray(arr), name=f"{ln.name}_{self.which}")
        ins = list(ln.inputs) + [None] * (3 - len(ln.inputs))
        if self.which == "scale":
            ins[1] = p
        else:
            ins[2] = p
        return m.add("layer_norm", ins, dict(ln.attrs), name=ln.name).output


def layer_norm_rules() -> list[RewriteRule]:
    rules: list[RewriteRule] = [_LayerNorm(p) for p in _layer_norm_patterns()]
    ln = P("layer_norm", X, V("s", optional=True), V("b", optional=True), name="ln")
    c = V("c", const=True)
    rules += [_Affine(p, "scale") for p in _both("mul", ln, c, "mul")]
    rules += [_Affine(p, "bias") for p in _both("add", ln, c, "add")]
    return rules


@register_pass
class CanonicalLayerNorm(RewritePass):
    """Rewrite layer normalization written out of ``reduce_mean`` / ``sub`` / ``pow`` / ``sqrt``
    / ``div`` (and a constant ``* gamma + beta``) as one ``layer_norm`` op. Lossless up to float
    rounding."""

    name = "canonical-layer-norm"
    lossless = True

    def rules(self) -> list[RewriteRule]:
        return layer_norm_rules()


__all__ = ["CanonicalLayerNorm", "layer_norm_rules"]
