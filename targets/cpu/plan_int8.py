"""Planning int8 graphs end to end: which nodes each int8 conv absorbs (TVM-free).

A graph from ``quantize-int8`` is a chain of ``qconv2d`` nodes whose 8-bit outputs feed the next
layer directly, except where a float value is needed in between: the residual add of a ResNet or
MobileNet-V2 block (``qconv2d -> f32``, ``add(y, dequantize(h_q))``, ``relu``, ``quantize``).
:func:`find_int8_groups` finds, from each ``qconv2d`` with constant weights, the single-use chain

    qconv2d(float out) [-> add(other)] [-> relu | clip] [-> hard_swish | silu | gelu] [-> quantize]

where ``other`` is ``dequantize(q)`` of a per-tensor 8-bit tensor (read as 8 bits, dequantized in
the kernel) or any float tensor of the same shape, and the last ``quantize`` stands for every
consumer of the chain's float output when all of them are ``quantize`` nodes with the same
per-tensor parameters. The planner replaces the group by one ``fused_qconv2d``
(:mod:`mcopt.ops.planned`) whose output stays a blocked 8-bit tensor, so a ResNet block runs as
its convs and nothing else: no float tensor, no separate add, activation or quantize pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mcopt.ir.core import Graph, Node, Value


@dataclass
class QGroup:
    """A ``qconv2d`` and what it absorbs (see the module docstring). ``kind``: ``conv``
    (groups = 1), ``depthwise`` or ``grouped``; ``residual``: the value the kernel reads (the 8-bit ``q`` of a
    ``dequantize(q)``, or a float tensor) with its scale / zero point; ``post``: the clamp after
    the add; ``quantize``: the absorbed quantize nodes (the first one's parameters)."""

    kind: str
    node: Node
    absorbed: list[Node] = field(default_factory=list)
    residual: Value | None = None
    r_scale: float = 1.0
    r_zp: int = 0
    post: tuple[float, float] = (-math.inf, math.inf)
    post_act: str = "none"
    post_alpha: float = 0.0
    quantize: list[Node] = field(default_factory=list)

    @property
    def chain(self) -> list[Node]:
        """The nodes the fused node replaces, the one whose output it takes over last."""
        return [self.node, *self.absorbed, *self.quantize[:1]]


def _single_use(v: Value, outs: set[int]) -> Node | None:
    if id(v) in outs or len(v.uses) != 1:
        return None
    return v.uses[0][0]


def _kind(node: Node) -> str | None:
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or w.const is None or len(x.shape) != 4:
        return None
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is not None and b.const is None:
        return None
    g = int(node.attrs["groups"])
    if g == 1:
        return "conv"
    if g == x.shape[1] == w.shape[0] and w.shape[1] == 1:
        return "depthwise"
    return "grouped"


def _clamp(node: Node) -> tuple[float, float] | None:
    if node.op == "relu":
        return 0.0, math.inf
    if node.op == "clip":
        return float(node.attrs.get("min", -math.inf)), float(node.attrs.get("max", math.inf))
    return None


def clip_floor(node: Node) -> float | None:
    """``lo`` of a ``clip(x, min=lo)`` with no upper bound, or None."""
    if node.op != "clip" or not math.isinf(float(node.attrs.get("max", math.inf))):
        return None
    lo = float(node.attrs.get("min", -math.inf))
    return lo if math.isfinite(lo) else None


def _quantize_users(v: Value, outs: set[int]) -> list[Node] | None:
    """The consumer of ``v`` when it is its only one and a per-tensor ``quantize``."""
    users = v.users()
    if id(v) in outs or not users or any(u.op != "quantize" for u in users):
        return None
    if len(users) != 1 or len(users[0].attrs["scale"]) != 1:
        return None  # duplicates were merged (merge_duplicate_quantize) before planning
    return users


def find_int8_groups(nodes: list[Node], graph_outputs: list[Value]) -> list[QGroup]:
    outs = {id(v) for v in graph_outputs}
    groups: list[QGroup] = []
    claimed: set[int] = set()  # nodes already inside a group
    for node in nodes:
        if node.op != "qconv2d":
            continue
        kind = _kind(node)
        if kind is None:
            continue
        grp = QGroup(kind, node)
        groups.append(grp)
        if node.attrs["out_dtype"] != "float32":
            continue
        cur = node.output
        user = _single_use(cur, outs)
        if user is not None and id(user) in claimed:
            user = None
        if user is not None and user.op == "add" and len(user.inputs) == 2:
            other = user.inputs[1] if user.inputs[0] is cur else user.inputs[0]
            if (
                other is not None
                and other is not cur
                and other.const is None
                and tuple(other.shape) == tuple(cur.shape)
            ):
                d = other.producer
                if (
                    d is not None
                    and d.op == "dequantize"
                    and len(d.attrs["scale"]) == 1
                    and d.inputs[0] is not None
                ):
                    grp.residual = d.inputs[0]
                    grp.r_scale = float(d.attrs["scale"][0])
                    grp.r_zp = int(d.attrs["zero_point"][0])
                elif other.dtype == "float32":
                    grp.residual = other
                if grp.residual is not None:
                    grp.absorbed.append(user)
                    cur = user.output
                    user = _single_use(cur, outs)
        if user is not None and (bounds := _clamp(user)) is not None:
            grp.post = bounds
            grp.absorbed.append(user)
            cur = user.output
            user = _single_use(cur, outs)
        if (
            user is not None
            and user.op in ("hard_swish", "silu", "gelu")
            and id(user) not in claimed
        ):
            grp.post_act = str(user.op)
            grp.absorbed.append(user)
            cur = user.output
        elif (
            user is not None
            and user.op == "leaky_relu"
            and float(user.attrs["alpha"]) > 0
            and grp.post == (-math.inf, math.inf)
            and id(user) not in claimed
        ):
            grp.post_act, grp.post_alpha = "leaky_relu", float(user.attrs["alpha"])
            grp.absorbed.append(user)
            cur = user.output
            nxt = _single_use(cur, outs)
            if nxt is not None and id(nxt) not in claimed and (f := clip_floor(nxt)) is not None:
                # max(leaky(y), f) = leaky(max(y, f')) (leaky increases): the floor goes first
                grp.post = (f if f >= 0 else f / grp.post_alpha, math.inf)
                grp.absorbed.append(nxt)
                cur = nxt.output
        q = _quantize_users(cur, outs)
        if q is not None:
            grp.quantize = q
        claimed.update(id(n) for n in grp.chain)
    return groups


def merge_duplicate_quantize(graph: Graph) -> int:
    """Several ``quantize`` nodes of one value with the same parameters become one (lossless);
    returns how many were removed."""
    removed = 0
    for v in list(graph.values()):
        seen: dict[tuple, Node] = {}
        for u in list(v.users()):
            if u.op != "quantize" or u.graph is not graph:
                continue
            key = (u.attrs["scale"], u.attrs["zero_point"], u.attrs["dtype"], u.attrs["axis"])
            first = seen.setdefault(key, u)
            if first is not u:
                graph.replace_all_uses_with(u.output, first.output)
                graph.remove_node(u)
                removed += 1
    if removed:
        graph.toposort()
    return removed


#: ops a per-tensor quantize commutes with exactly: max (a quantize is monotone; the pool pads
#: with the dtype's minimum either way), concatenation, reshapes and transposes (ShuffleNet's shuffle)
COMMUTES_WITH_QUANTIZE = ("max_pool", "concat", "flatten", "reshape", "transpose")


def sink_quantize(graph: Graph) -> int:
    """``quantize(P(y1, ..., yk))`` -> ``P(quantize(y1), ..., quantize(yk))`` for ``P`` a
    ``max_pool`` or ``concat`` whose inputs are read only by ``P``: exact, and the layers that
    produce the ``yi`` then requantize in their kernels, the pool or concat runs on 8-bit data
    (ResNet's stem, SqueezeNet's fire modules, Inception's branches). Repeated until nothing
    moves; returns how many ops moved."""
    moved = 0
    outs = {id(v) for v in graph.outputs}
    changed = True
    while changed:
        changed = False
        for q in graph.iter_nodes():
            if q.graph is not graph or q.op != "quantize" or len(q.attrs["scale"]) != 1:
                continue
            v = q.inputs[0]
            p = None if v is None else v.producer
            if p is None or p.op not in COMMUTES_WITH_QUANTIZE or _single_use(v, outs) is not q:
                continue
            ins = [y for y in p.inputs if y is not None]
            if p.op in ("flatten", "reshape", "transpose"):
                ins = ins[:1]  # the data (a reshape's shape input is a constant)
            if any(y.const is not None or y.dtype != "float32" for y in ins):
                continue
            if any(_single_use(y, outs) is not p for y in ins):
                continue
            qs = [
                graph.add_node("quantize", [y], dict(q.attrs), name=f"{y.name}_quant", after=p)
                for y in ins
            ]
            new_ins = [n.output for n in qs] + list(p.inputs[len(qs) :])
            new_p = graph.add_node(p.op, new_ins, dict(p.attrs), name=p.name, after=qs[-1])
            graph.replace_all_uses_with(q.output, new_p.output)
            graph.remove_node(q)
            graph.remove_node(p)
            moved += 1
            changed = True
    if moved:
        graph.toposort()
    return moved


__all__ = ["QGroup", "find_int8_groups", "merge_duplicate_quantize", "sink_quantize"]
