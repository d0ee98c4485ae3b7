"""Lossless cleanup passes: dead-code elimination, constant folding, batch-norm folding, identity and
reshape/transpose simplification. Every pass here leaves the outputs equal up to float rounding.

The ``cleanup`` pipeline runs :data:`DEFAULT_CLEANUP`.
"""

from __future__ import annotations

import numpy as np

from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import TensorType
from mcopt.ops import get_schema, has_op, ops_with
from mcopt.pass_manager import Pass, PassContext, RewritePass, register_pass, register_pipeline
from mcopt.rewrite import B, Match, P, RewriteRule, V, W, X, apply_rewrites

#: the standard lossless cleanup, in order (the ``cleanup`` pipeline)
DEFAULT_CLEANUP = [
    "remove-identity", "constant-fold", "cse", "canonical-activations", "canonical-layer-norm",
    "global-pool",
    "fold-batch-norm", "fold-bias-add", "fold-linear", "one-hot-to-embedding", "simplify-reshape",
    "dce",
]  # fmt: skip

VIEW_OPS = tuple(sorted(ops_with("view") - ops_with("channelwise")))  # reshape-like ops


def _forward_reason(graph: Graph, out: Value, src: Value) -> str | None:
    """Why the uses of `out` cannot simply be pointed at `src` (None when they can)."""
    if not any(o is out for o in graph.outputs):
        return None
    if src.is_const:
        return f"%{out.name} is a graph output and would become the constant %{src.name}"
    if src.producer is None:
        return f"%{out.name} is a graph output and would become the graph input %{src.name}"
    if any(o is src for o in graph.outputs):
        return f"%{out.name} and %{src.name} are both graph outputs"
    return None


# --- dce --------------------------------------------------------------------------------------------------
@register_pass
class DeadCodeElimination(Pass):
    """Dead-code elimination: remove nodes whose outputs reach no graph output.

    Method: backward reachability from the graph outputs; unreached nodes are removed consumers
    first. Lossless (exact)."""

    name = "dce"
    lossless = True

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        live: set[int] = set()
        stack = [v.producer for v in graph.outputs if v.producer is not None]
        while stack:
            n = stack.pop()
            if id(n) in live:
                continue
            live.add(id(n))
            stack.extend(v.producer for v in n.inputs if v is not None and v.producer is not None)
        dead = [n for n in graph.nodes if id(n) not in live]
        for n in reversed(dead):  # consumers first, so every removed node's outputs are unused
            graph.remove_node(n)
        if dead:
            ctx.info(f"dce: removed {len(dead)} node(s)")
        return bool(dead)


# --- constant folding -------------------------------------------------------------------------------------
@register_pass
class ConstantFold(Pass):
    """Constant folding: evaluate nodes whose inputs are all constants ahead of time.

    A node whose inputs are all constants is run with its reference implementation (the
    interpreter's numpy oracle) and replaced by a constant holding the result.

    Skipped when the result would be more than `max_growth` times the inputs' bytes *and* larger than
    `max_bytes` (e.g. a broadcast that materializes a huge tensor), when an input has a compressed
    encoding (folding dequantize(q) would undo the compression), and when the node's output is a graph
    output. Lossless (the same numpy code computes the same numbers, once, ahead of time)."""

    name = "constant-fold"
    lossless = True
    max_growth: float = 4.0
    max_bytes: int = 1 << 20

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        outs = {id(v) for v in graph.outputs}
        folded = 0
        for node in graph.iter_nodes():
            ins = [v for v in node.inputs if v is not None]
            if not ins or not all(v.is_const for v in ins):
                continue
            if any(v.type.encoding is not None for v in ins):
                continue
            if any(id(o) in outs for o in node.outputs):
                continue
            out_bytes = sum(o.type.nbytes for o in node.outputs)
            in_bytes = sum({id(v): v.type.nbytes for v in ins}.values())
            if out_bytes > self.max_growth * in_bytes and out_bytes > self.max_bytes:
                continue
            schema = get_schema(node.op)
            args = [None if v is None else v.const for v in node.inputs]
            in_types = [None if v is None else v.type for v in node.inputs]
            results = schema.run_reference(args, node.attrs, in_types)
            arrays = [
                np.ascontiguousarray(np.asarray(r).astype(o.dtype))
                for r, o in zip(results, node.outputs)
            ]
            if len(arrays) != len(node.outputs) or any(
                a.shape != o.shape for a, o in zip(arrays, node.outputs)
            ):
                continue
            for o, a in zip(node.outputs, arrays):
                graph.replace_all_uses_with(o, Value(o.name, TensorType(o.shape, o.dtype), const=a))
            graph.remove_node(node)
            folded += 1
        if folded:
            ctx.info(f"constant-fold: folded {folded} node(s)")
        return folded > 0


# --- batch-norm folding -----------------------------------------------------------------------------------
_BN_STATS = (
    V("scale", const=True),
    V("bias", const=True),
    V("mean", const=True),
    V("var", const=True),
)


#: the linear ops whose output channels a per-channel constant can be folded into
LINEAR = ("conv2d", "dense", "conv_transpose2d")


def _out_axis(lin: Node) -> int:
    """The weight axis of ``lin``'s output channels (a transposed conv's weight is (C, O, kh, kw))."""
    return 1 if lin.op == "conv_transpose2d" else 0


def _out_channels(lin: Node) -> int:
    w = lin.inputs[1]
    assert w is not None
    return int(w.shape[_out_axis(lin)])


def _linear_reason(lin: Node) -> str | None:
    if lin.op == "conv_transpose2d" and int(lin.attrs.get("groups", 1)) != 1:
        return f"{lin.name!r} is a grouped transposed conv"
    return None


def _scale_weight(lin: Node, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``w`` (float64) with output channel ``o`` multiplied by ``s[o]``."""
    shape = [1] * w.ndim
    shape[_out_axis(lin)] = -1
    return w * s.reshape(shape)


def _bn_affine(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """BN as y = s * x + t per channel: s = gamma / sqrt(var + eps), t = beta - mean * s (float64)."""
    from mcopt.ops.nn import bn_affine

    bn: Node = m["bn"]
    consts = (m[k].const for k in ("scale", "bias", "mean", "var"))
    return bn_affine(*consts, bn.attrs["epsilon"])  # type: ignore[arg-type]


def _bn_reason(m: Match) -> str | None:
    for key in ("scale", "bias", "mean", "var"):
        t = m[key].type
        if t.encoding is not None:
            return (
                f"BN parameter %{m[key].name} has a compressed encoding ({t.encoding.describe()})"
            )
        if np.dtype(t.dtype).kind != "f":
            return f"BN parameter %{m[key].name} is {t.dtype}, not a float"
    return None


class FoldBNIntoLinear(RewriteRule):
    """batch_norm(conv2d(x, w, b)) -> conv2d(x, w', b') (also dense and conv_transpose2d)."""

    name = "bn-into-linear"
    pattern = P("batch_norm", P(LINEAR, X, W, B, name="lin"), *_BN_STATS, name="bn")

    def check(self, m: Match) -> str | None:
        lin: Node = m["lin"]
        w: Value = m["w"]
        if reason := _linear_reason(lin):
            return reason
        if w.type.encoding is not None or (m["b"] is not None and m["b"].type.encoding is not None):
            return f"weight of {lin.name!r} has a compressed encoding: fold before compressing"
        if np.dtype(w.dtype).kind != "f":
            return f"weight of {lin.name!r} is {w.dtype}, not a float"
        if lin.op == "dense" and lin.output.type.rank != 2:
            return f"dense {lin.name!r} output is {lin.output.type.rank}-D; BN axis 1 is not its features"
        return _bn_reason(m)

    def rewrite(self, m: Match, graph: Graph) -> Value:
        lin: Node = m["lin"]
        w: Value = m["w"]
        s, t = _bn_affine(m)
        w64 = w.const.astype(np.float64)
        w2 = _scale_weight(lin, w64, s)  # per output channel
        b64 = np.zeros(_out_channels(lin)) if m["b"] is None else m["b"].const.astype(np.float64)
        b2 = b64 * s + t  # = (b - mean) * s + beta
        wv = graph.const(w2.astype(w.dtype), name=f"{w.name}_bn")
        bv = graph.const(b2.astype(w.dtype), name=f"{lin.name}_b_bn")
        lin.replace_inputs([m["x"], wv, bv])
        return lin.output


class BNToAffine(RewriteRule):
    """A batch_norm that cannot be folded -> mul + add with per-channel constants."""

    name = "bn-to-affine"
    pattern = P("batch_norm", X, *_BN_STATS, name="bn")

    def check(self, m: Match) -> str | None:
        if not (has_op("mul") and has_op("add")):
            return "ops mul/add are not registered"
        if m["x"].type.rank < 2:
            return "input has no channel axis"
        return _bn_reason(m)

    def rewrite(self, m: Match, graph: Graph) -> Value:
        bn: Node = m["bn"]
        x: Value = m["x"]
        s, t = _bn_affine(m)
        bshape = (-1,) + (1,) * (x.type.rank - 2)
        sv = graph.const(s.reshape(bshape).astype(x.dtype), name=f"{bn.name}_scale")
        tv = graph.const(t.reshape(bshape).astype(x.dtype), name=f"{bn.name}_shift")
        mul = m.add("mul", [x, sv], name=f"{bn.name}_mul")
        return m.add("add", [mul.output, tv], name=f"{bn.name}_add").output


@register_pass
class FoldBatchNorm(RewritePass):
    """Fold inference batch norm into the preceding conv2d/dense.

    The standard deployment fold of batch normalization (Ioffe & Szegedy 2015). With
    s = gamma / sqrt(var + eps), per output channel c:
    w'[c] = w[c] * s[c],  b'[c] = (b[c] - mean[c]) * s[c] + beta[c]  (b = 0 when absent).

    Applies only when the conv/dense output feeds nothing but the BN (else the unnormalized output
    is still needed), the weights are plain float constants, and for dense the output is 2-D.
    A standalone BN (no foldable producer) is left as is by default: it is one cheap per-channel op
    that backends lower as well as mul+add, and it keeps exported ONNX readable. With
    ``standalone=True`` it becomes mul(x, s) + t with constant s, t (useful before quantization).
    Lossless up to float rounding (computed in float64, stored in the weight dtype)."""

    name = "fold-batch-norm"
    lossless = True
    standalone: bool = False

    def rules(self) -> list[RewriteRule]:
        rules: list[RewriteRule] = [FoldBNIntoLinear()]
        if self.standalone:
            rules.append(BNToAffine())
        return rules


# --- a constant add after a conv / dense -> its bias ------------------------------------------------------
def _channel_vector(c: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``c`` as one value per channel (``axis`` of ``out_shape``) when adding it to an output of
    that shape is adding that vector along the axis (it broadcasts without growing the output and
    is constant along every other axis); else None."""
    try:
        if np.broadcast_shapes(c.shape, out_shape) != tuple(out_shape):
            return None
    except ValueError:
        return None
    per = np.moveaxis(np.broadcast_to(c, out_shape), axis, 0).reshape(out_shape[axis], -1)
    if not (per == per[:, :1]).all():
        return None
    return per[:, 0]


class AddIntoBias(RewriteRule):
    """add(conv2d | dense(x, w, b), c) -> conv2d | dense(x, w, b + c) for a float constant ``c``
    that is one value per output channel (a MatMul + Add from TensorFlow or scikit-learn, a Conv
    without bias followed by an Add)."""

    name = "add-into-bias"
    pattern = P("add", P(LINEAR, X, W, B, name="lin"), V("c", const=True), name="add")

    def check(self, m: Match) -> str | None:
        lin: Node = m["lin"]
        c: Value = m["c"]
        if reason := _linear_reason(lin):
            return reason
        for v in (m["w"], m["b"], c):
            if v is not None and (v.type.encoding is not None or np.dtype(v.dtype).kind != "f"):
                return f"%{v.name} is not a plain float constant"
        if _bias_of(m) is None:
            return f"%{c.name} {c.shape} is not one value per output channel of {lin.name!r}"
        return None

    def rewrite(self, m: Match, graph: Graph) -> Value:
        lin: Node = m["lin"]
        vec = _bias_of(m)
        assert vec is not None
        w: Value = m["w"]
        b64 = np.zeros(_out_channels(lin)) if m["b"] is None else m["b"].const.astype(np.float64)
        bv = graph.const((b64 + vec).astype(w.dtype), name=f"{lin.name}_b_add")
        lin.replace_inputs([m["x"], w, bv])
        return lin.output


class AddIntoBiasSwapped(AddIntoBias):
    """add(c, conv2d | dense(...)): :class:`AddIntoBias` with the constant first."""

    pattern = P("add", V("c", const=True), P(LINEAR, X, W, B, name="lin"), name="add")


class MulIntoLinear(AddIntoBias):
    """mul(conv2d | dense | conv_transpose2d(x, w, b), c) -> the same layer with ``w * c`` and
    ``b * c`` per output channel, for a float constant ``c`` that is one value per output channel
    (or a scalar: Paddle's ``scale`` ops after a conv)."""

    name = "mul-into-linear"
    pattern = P("mul", P(LINEAR, X, W, B, name="lin"), V("c", const=True), name="add")

    def rewrite(self, m: Match, graph: Graph) -> Value:
        lin: Node = m["lin"]
        vec = _bias_of(m)
        assert vec is not None
        w: Value = m["w"]
        wv = graph.const(
            _scale_weight(lin, w.const.astype(np.float64), vec).astype(w.dtype),
            name=f"{w.name}_scaled",
        )
        ins = [m["x"], wv]
        if m["b"] is not None:
            ins.append(
                graph.const((m["b"].const * vec).astype(w.dtype), name=f"{lin.name}_b_scaled")
            )
        lin.replace_inputs(ins)
        return lin.output


class MulIntoLinearSwapped(MulIntoLinear):
    """mul(c, conv2d | dense(...)): :class:`MulIntoLinear` with the constant first."""

    pattern = P("mul", V("c", const=True), P(LINEAR, X, W, B, name="lin"), name="add")


def _bias_of(m: Match) -> np.ndarray | None:
    lin: Node = m["lin"]
    out = lin.output
    axis = 1 if lin.op in ("conv2d", "conv_transpose2d") else out.type.rank - 1
    vec = _channel_vector(np.asarray(m["c"].const, np.float64), tuple(out.shape), axis)
    if vec is None or vec.shape[0] != _out_channels(lin):
        return None
    return vec


@register_pass
class FoldBiasAdd(RewritePass):
    """Fold an add (a mul) of a per-channel constant into the preceding conv2d / dense /
    conv_transpose2d's bias (weights and bias).

    ``y = (x @ w.T + b) + c`` -> ``x @ w.T + (b + c)`` and ``y = (x @ w.T + b) * c`` ->
    ``x @ (w * c).T + b * c`` when ``c`` broadcasts to one value per
    output channel and the conv / dense output feeds nothing but the add (exported MatMul + Add
    pairs, bias-less convs followed by an Add, Paddle's scale ops). A batch norm that follows a
    folded add is folded in the same fixed point (conv -> Add -> BN: the ``fold-batch-norm`` pass
    before it saw the Add). The fused bias then reaches the int8 kernels' epilogue instead of a
    float add after a dequantized output. Lossless up to float rounding (the sum b + c in
    float64, stored in the weight dtype)."""

    name = "fold-bias-add"
    lossless = True

    def rules(self) -> list[RewriteRule]:
        rules: list[RewriteRule] = [
            AddIntoBias(),
            AddIntoBiasSwapped(),
            MulIntoLinear(),
            MulIntoLinearSwapped(),
        ]
        rules.append(FoldBNIntoLinear())  # a BN after a folded add (conv -> Add -> BN exports)
        return rules


# --- identity / dropout -----------------------------------------------------------------------------------
class RemoveIdentity(RewriteRule):
    """identity(x) -> x, dropout(x) -> x (inference)."""

    name = "remove-identity"
    pattern = P(("identity", "dropout"), X, name="n")

    def check(self, m: Match) -> str | None:
        n: Node = m["n"]
        if len(n.outputs) != 1:
            if any(o.uses for o in n.outputs[1:]):
                return f"{n.op} {n.name!r}: its mask output is used"
            return f"{n.op} {n.name!r} has {len(n.outputs)} outputs"
        return _forward_reason(m.graph, n.output, m["x"])

    def rewrite(self, m: Match, graph: Graph) -> Value:
        return m["x"]


class NoopCast(RemoveIdentity):
    """cast(x, to=x's dtype) -> x (scikit-learn's exports start with one)."""

    name = "noop-cast"
    pattern = P("cast", X, name="n")

    def check(self, m: Match) -> str | None:
        if str(m["n"].attrs.get("to")) != m["x"].dtype:
            return f"casts {m['x'].dtype} to {m['n'].attrs.get('to')}"
        return super().check(m)


@register_pass
class RemoveIdentityPass(Pass):
    """Remove identity, inference-mode dropout and same-dtype cast nodes.

    Uses of y = identity(x) / dropout(x) / cast(x, to=x.dtype) are pointed at x; a graph output
    keeps its name. Kept only where that would turn a graph output into a graph input or a
    constant. Lossless (exact)."""

    name = "remove-identity"
    lossless = True

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return apply_rewrites(graph, [RemoveIdentity(), NoopCast()]).changed


# --- reshape / transpose simplification -------------------------------------------------------------------
class NoopView(RewriteRule):
    """reshape/flatten/squeeze/unsqueeze whose output shape equals its input's -> its input."""

    name = "noop-view"
    pattern = P(VIEW_OPS, X, name="n")

    def check(self, m: Match) -> str | None:
        if m["n"].output.shape != m["x"].shape:
            return "changes the shape"
        return _forward_reason(m.graph, m["n"].output, m["x"])

    def rewrite(self, m: Match, graph: Graph) -> Value:
        return m["x"]


class ViewOfView(RewriteRule):
    """view(view(x)) -> one reshape of x (a reshape keeps its node; other views become a reshape).
    A lone flatten (e.g. after global pooling) is left a flatten."""

    name = "view-of-view"
    pattern = P(VIEW_OPS, P(VIEW_OPS, X, shared=True), name="n")

    def rewrite(self, m: Match, graph: Graph) -> Value:
        n: Node = m["n"]
        if n.op == "reshape":
            n.set_input(0, m["x"])
            return n.output
        return m.add("reshape", [m["x"]], {"shape": n.output.shape}, name=n.name).output


class TransposeOfTranspose(RewriteRule):
    """transpose(transpose(x, p1), p2) -> transpose(x, p) with p[i] = p1[p2[i]]; removed if p = id."""

    name = "transpose-of-transpose"
    pattern = P("transpose", P("transpose", X, name="t1", shared=True), name="t2")

    def check(self, m: Match) -> str | None:
        if self._perm(m) == tuple(range(len(self._perm(m)))):
            return _forward_reason(m.graph, m["t2"].output, m["x"])
        return None

    @staticmethod
    def _perm(m: Match) -> tuple[int, ...]:
        p1, p2 = m["t1"].attrs["perm"], m["t2"].attrs["perm"]
        return tuple(int(p1[i]) for i in p2)

    def rewrite(self, m: Match, graph: Graph) -> Value:
        perm = self._perm(m)
        if perm == tuple(range(len(perm))):
            return m["x"]
        return m.add("transpose", [m["x"]], {"perm": perm}, name=m["t2"].name).output


class IdentityTranspose(RewriteRule):
    """transpose(x, perm=identity) -> x."""

    name = "identity-transpose"
    pattern = P("transpose", X, name="t")

    def check(self, m: Match) -> str | None:
        perm = tuple(m["t"].attrs["perm"])
        if perm != tuple(range(len(perm))):
            return "not the identity permutation"
        return _forward_reason(m.graph, m["t"].output, m["x"])

    def rewrite(self, m: Match, graph: Graph) -> Value:
        return m["x"]


@register_pass
class SimplifyReshape(Pass):
    """Simplify data movement: merge view chains, drop no-op views and transposes.

    A chain of reshape/flatten/squeeze/unsqueeze collapses into one reshape of the chain's source; a
    view to the same shape is removed; transpose(transpose(x, p1), p2) becomes one transpose with
    perm p[i] = p1[p2[i]] (removed when that is the identity), and an identity-perm transpose is
    removed. A lone flatten (e.g. after global pooling) stays a flatten. Lossless (exact: only data
    movement is rewritten)."""

    name = "simplify-reshape"
    lossless = True

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        rules = [NoopView(), ViewOfView(), IdentityTranspose(), TransposeOfTranspose()]
        return apply_rewrites(graph, rules).changed


register_pipeline("cleanup", DEFAULT_CLEANUP, replace=True)

__all__ = [
    "DEFAULT_CLEANUP",
    "BNToAffine",
    "ConstantFold",
    "AddIntoBias",
    "DeadCodeElimination",
    "FoldBNIntoLinear",
    "FoldBiasAdd",
    "FoldBatchNorm",
    "RemoveIdentityPass",
    "SimplifyReshape",
]
