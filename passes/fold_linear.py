"""Collapse linear layers that follow each other with nothing nonlinear between them.

A 1x1 conv (or a dense layer) whose input is another conv's (dense's) output, or a channel concat
of such outputs, computes one linear map of the earlier layers' inputs. With ``W2 (O, M)`` the
outer 1x1 conv and ``W1 (M, I, kh, kw)`` the inner conv::

    W[o, i, y, x] = sum_m W2[o, m] * W1[m, i, y, x],    b = W2 @ b1 + b2

(the inner conv's strides, pads and dilations). Through a concat, each folded part ``j`` of
``M_j`` channels at offset ``o_j`` is replaced by its conv's input ``x_j`` in the concat, with the
outer weight's columns ``W2[:, o_j:o_j+M_j] @ W1_j``; parts that are not 1x1 convs keep their
columns, and parts reading the same tensor merge (their columns add up). The collapse of
consecutive linear layers is ExpandNets' (Guo, Alvarez & Salzmann, NeurIPS 2020) compression step
applied to a deployed model: an inference graph exported with a 1x1 projection before a 1x1 mix,
no activation between (tiny_cnn's branches; linear bottlenecks).

A fold is taken only when it does not add work: per output pixel the folded conv's MACs
``O * I * kh * kw`` must not exceed the two layers' ``M * I * kh * kw + O * M`` (a bottleneck, whose
point is that the middle is narrow, stays as it is). Lossless up to float rounding (products in
float64, stored in the weight dtype); the intermediate tensor disappears, so a quantizer has one
rounding point less.
"""

from __future__ import annotations

import numpy as np

from mcopt.ir.core import Graph, Node, Value
from mcopt.pass_manager import Pass, PassContext, register_pass


def _plain_float(v: Value | None) -> bool:
    return v is None or (v.is_const and v.type.encoding is None and np.dtype(v.dtype).kind == "f")


def _linear(node: Node) -> bool:
    """A conv2d (no groups) or dense with plain float constant weights and bias."""
    if node.op not in ("conv2d", "dense") or len(node.outputs) != 1:
        return False
    ins = list(node.inputs) + [None] * (3 - len(node.inputs))
    if ins[0] is None or ins[1] is None or np.dtype(ins[0].dtype).kind != "f":
        return False
    if not (_plain_float(ins[1]) and _plain_float(ins[2])):
        return False
    return node.op == "dense" or int(node.attrs.get("groups", 1)) == 1


def _pointwise(node: Node) -> bool:
    """A 1x1 conv of stride 1 without padding or dilation (a per-pixel matrix product)."""
    if node.op != "conv2d" or not _linear(node):
        return False
    w = node.inputs[1]
    assert w is not None
    return (
        tuple(w.shape[2:]) == (1, 1)
        and tuple(node.attrs.get("strides", (1, 1))) == (1, 1)
        and not any(node.attrs.get("pads", (0, 0, 0, 0)))
        and tuple(node.attrs.get("dilations", (1, 1))) == (1, 1)
    )


def _only_use(v: Value, node: Node, graph: Graph) -> bool:
    return len(v.uses) == 1 and v.uses[0][0] is node and not any(o is v for o in graph.outputs)


def _wb(node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(weight as float64 with the output channels first, bias as float64)."""
    w = node.inputs[1].const.astype(np.float64)  # type: ignore[union-attr]
    b_v = node.inputs[2] if len(node.inputs) > 2 else None
    b = np.zeros(w.shape[0]) if b_v is None else b_v.const.astype(np.float64)
    return w, b


def _pow2(n: int) -> int:
    """The largest power of two dividing ``n`` (up to 64)."""
    return min(n & -n, 64) if n else 64


def _compose(w2: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """``W2 (O, M) . W1 (M, ...)`` over M."""
    return np.tensordot(w2, w1, axes=([1], [0]))


class _Folder:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.applied: list[str] = []
        self.dropped: list[Node] = []  # nodes a fold left unused

    def chain(self, outer: Node) -> bool:
        """outer(inner(x)) -> one layer, for a pointwise conv or a dense after its own kind."""
        src = outer.inputs[0]
        inner = None if src is None else src.producer
        if inner is None or inner.op != outer.op or not _linear(inner):
            return False
        if outer.op == "conv2d" and not _pointwise(outer):
            return False
        assert src is not None
        if not _only_use(src, outer, self.graph):
            return False
        w1, b1 = _wb(inner)
        w2, b2 = _wb(outer)
        w2 = w2.reshape(w2.shape[0], -1)  # (O, M)
        o, m = w2.shape
        taps = int(np.prod(w1.shape[1:]))  # I * kh * kw
        if o * taps > m * taps + o * m:
            return False
        dtype = outer.inputs[1].dtype  # type: ignore[union-attr]
        w = self.graph.const(_compose(w2, w1).astype(dtype), name=f"{outer.name}_w_fold")
        b = self.graph.const((w2 @ b1 + b2).astype(dtype), name=f"{outer.name}_b_fold")
        outer.replace_inputs([inner.inputs[0], w, b])
        self.dropped.append(inner)
        if outer.op == "conv2d":
            for key in ("strides", "pads", "dilations"):
                outer.attrs[key] = inner.attrs[key]
        self.applied.append(f"{inner.name}+{outer.name}")
        return True

    def through_concat(self, outer: Node) -> bool:
        """outer(concat(parts)) with some parts pointwise convs -> outer'(concat(their inputs))."""
        if not _pointwise(outer):
            return False
        src = outer.inputs[0]
        cat = None if src is None else src.producer
        if cat is None or cat.op != "concat" or len(cat.outputs) != 1:
            return False
        assert src is not None
        if int(cat.attrs["axis"]) % 4 != 1 or src.type.rank != 4:
            return False
        if not _only_use(src, outer, self.graph) or any(v is None for v in cat.inputs):
            return False
        w2, b = _wb(outer)
        w2 = w2.reshape(w2.shape[0], -1)
        o = w2.shape[0]
        cols: dict[int, tuple[Value, np.ndarray]] = {}  # id(new part) -> (part, its columns)
        folded, off = [], 0
        for u in cat.inputs:
            assert u is not None
            m = int(u.shape[1])
            part_w = w2[:, off : off + m]
            off += m
            p = u.producer
            fold = (
                p is not None
                and _pointwise(p)
                and _only_use(u, cat, self.graph)
                and sum(v is u for v in cat.inputs) == 1
            )
            if fold:
                assert p is not None
                w1, b1 = _wb(p)
                w1 = w1.reshape(m, -1)  # (M_j, I_j)
                if o * w1.shape[1] <= m * w1.shape[1] + o * m:
                    b = b + part_w @ b1
                    part_w, u = part_w @ w1, p.inputs[0]
                    folded.append(p.name)
            assert u is not None
            if id(u) in cols:  # two parts on one tensor: their columns add up
                cols[id(u)] = (u, cols[id(u)][1] + part_w)
            else:
                cols[id(u)] = (u, part_w)
        if not folded:
            return False
        # the new concat's order is free (its one reader is rewritten): parts whose widths are
        # multiples of larger powers of two first, so blocked layouts (8 / 16 channels) line up
        parts = sorted(cols.values(), key=lambda p: -_pow2(int(p[0].shape[1])))
        dtype = outer.inputs[1].dtype  # type: ignore[union-attr]
        w = np.concatenate([c for _, c in parts], axis=1)
        wv = self.graph.const(w.reshape(o, -1, 1, 1).astype(dtype), name=f"{outer.name}_w_fold")
        bv = self.graph.const(b.astype(dtype), name=f"{outer.name}_b_fold")
        x = parts[0][0]
        if len(parts) > 1:
            x = self.graph.add_node(
                "concat", [v for v, _ in parts], {"axis": 1}, name=cat.name, before=outer
            ).output
        outer.replace_inputs([x, wv, bv])
        self.dropped.append(cat)
        self.applied.append(f"{'+'.join(folded)}+{outer.name} (through {cat.name})")
        return True


@register_pass
class FoldLinear(Pass):
    """Collapse a 1x1 conv (a dense layer) into the linear layer(s) before it — directly or
    through a channel concat — when nothing nonlinear lies between and the folded layer does not
    do more MACs (see the module docstring for the formula). Lossless up to float rounding."""

    name = "fold-linear"
    lossless = True

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        from mcopt.rewrite import remove_dead

        folder = _Folder(graph)
        changed = True
        while changed:
            changed = False
            for node in list(graph.nodes):
                if node.graph is not graph or not _linear(node):
                    continue
                if folder.chain(node) or folder.through_concat(node):
                    changed = True
            remove_dead(graph, folder.dropped)
            folder.dropped = []
        if folder.applied:
            ctx.info(f"fold-linear: {', '.join(folder.applied)}")
        return bool(folder.applied)
