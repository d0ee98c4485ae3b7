"""Channel dependency analysis for structured pruning, built from the graph's use-def chains.

Every channel that a conv2d / dense *produces* is an **element** (an integer id). Each activation value
of rank >= 2 gets ``pos[value]``: the element id behind every index of its axis 1. Walking the graph in
topological order fills these arrays:

- conv2d (groups=1), dense: output = a fresh *space* of elements, one per filter / neuron; the input's
  positions are *consumed* (the consumer's weight columns are sliced when they go).
- depthwise conv2d (groups == C_in == C_out): output positions = input positions (channel ``c`` in ->
  channel ``c`` out); its filters, bias and ``groups`` follow the pruning.
- batch_norm, elementwise activations, dropout, pooling, global pooling, pad / slice / reduce_mean /
  squeeze / unsqueeze / transpose that leave axis 1 alone: pass positions through (per-channel constants
  such as BN statistics, a prelu slope or a ``(C,1,1)`` multiplier are sliced along).
- add / sub / mul / div / pow of two activations: channel ``i`` of both operands is the same channel, so
  their elements are *united* (union-find), e.g. every conv writing into a ResNet residual stream.
- concat on axis 1: output positions = the inputs' positions concatenated (channel offsets come free);
  concat on another axis unites its inputs channel by channel; split on axis 1 is the inverse.
- flatten / reshape (N, C, H, W) -> (N, C*H*W): each channel expands to its H*W columns
  (``np.repeat``), so a dense layer after flatten loses the right columns.
- lrn passes positions through but mixes neighbouring channels (pruning there is lossy even for a
  dead channel: such units are flagged ``mixing``).
- Anything else (matmul, grouped convs, softmax over channels, reshapes that move channels, compressed
  weights other than sparse, ...) *fixes* the positions it touches: they are never removed. So are graph
  inputs and outputs.

A **unit** (union-find root) is a set of elements that must be removed together; a
:class:`ChannelGroup` is a connected set of spaces (e.g. a residual stage) and its units. Pruning is a
boolean ``keep`` mask over elements, applied by :meth:`ChannelAnalysis.apply` which slices every
weight / bias / BN parameter / per-channel constant, fixes ``groups`` and ``reshape`` attributes and
re-infers every value type. The analysis is stale after :meth:`apply`; build a new one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import Sparse, TensorType
from mcopt.ops import get_schema, ops_with  # noqa: E402  (registers every op first)

# What the channel analysis may assume about an op comes from the op's traits (mcopt.ops.TRAITS):
#: one-input ops acting on each channel on its own (channel positions pass through)
UNARY_OPS = ops_with("channelwise") - ops_with("pool")
#: broadcasting binary arithmetic
BINARY_OPS = frozenset(
    op for op in ops_with("elementwise") - ops_with("channelwise") if get_schema(op).min_inputs == 2
)
POOL_OPS = ops_with("pool")
#: per-channel ops with f(0) == 0 (a channel that is exactly zero stays exactly zero)
ZERO_PRESERVING = ops_with("channelwise", "zero_preserving")


@dataclass
class Space:
    """The channels produced by one conv2d / dense node (or a fixed source: graph input, other op)."""

    index: int
    start: int  # first element id
    size: int
    producer: Node | None  # the conv2d / dense node, None for fixed sources

    @property
    def elements(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.size)

    @property
    def name(self) -> str:
        return self.producer.name if self.producer is not None else f"fixed#{self.index}"


@dataclass
class ChannelGroup:
    """Coupled spaces and their units (each unit: element ids removed together)."""

    spaces: list[Space]
    units: list[np.ndarray]
    prunable: list[bool]  # per unit
    reason: str | None = None  # why (some) units are fixed
    mixing: bool = False  # an lrn touches these channels

    @property
    def name(self) -> str:
        return self.spaces[0].name

    @property
    def producers(self) -> list[Node]:
        return [s.producer for s in self.spaces if s.producer is not None]

    @property
    def num_prunable(self) -> int:
        return int(sum(self.prunable))


@dataclass
class _Slice:
    """One constant input to slice: node input `index` along `axis`, by the positions of `value`."""

    node: Node
    index: int
    axis: int
    value: Value  # whose positions give the mask


@dataclass
class ChannelAnalysis:
    graph: Graph
    pos: dict[int, np.ndarray] = field(default_factory=dict)
    spaces: list[Space] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    fixed: list[bool] = field(default_factory=list)
    mixing: list[bool] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # element -> why fixed (first reason)
    space_of: list[int] = field(default_factory=list)  # element -> space index
    consumers: list[Node] = field(default_factory=list)  # conv2d(groups=1)/dense reading positions
    depthwise: list[Node] = field(default_factory=list)
    slices: list[_Slice] = field(default_factory=list)
    reshapes: list[Node] = field(default_factory=list)
    splits: list[Node] = field(default_factory=list)

    # --- elements ---------------------------------------------------------------------------------
    def _new_space(self, size: int, producer: Node | None, reason: str | None = None) -> np.ndarray:
        start = len(self.parent)
        sp = Space(len(self.spaces), start, size, producer)
        self.spaces.append(sp)
        self.parent.extend(range(start, start + size))
        self.fixed.extend([producer is None] * size)
        self.mixing.extend([False] * size)
        self.space_of.extend([sp.index] * size)
        if producer is None:
            for e in range(start, start + size):
                self.reasons[e] = reason or "fixed source"
        return np.arange(start, start + size)

    def find(self, e: int) -> int:
        p = self.parent
        root = e
        while p[root] != root:
            root = p[root]
        while p[e] != root:
            p[e], e = root, p[e]
        return root

    def _union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def _fix(self, elems: np.ndarray, reason: str) -> None:
        for e in elems.tolist():
            if not self.fixed[e]:
                self.fixed[e] = True
                self.reasons.setdefault(e, reason)

    def roots(self) -> np.ndarray:
        return np.array([self.find(e) for e in range(len(self.parent))], dtype=np.int64)

    # --- queries ----------------------------------------------------------------------------------
    def positions(self, v: Value) -> np.ndarray | None:
        return self.pos.get(id(v))

    def groups(self) -> list[ChannelGroup]:
        """Structural groups (connected spaces), in graph order of their first space."""
        roots = self.roots()
        fixed = np.array(self.fixed, dtype=bool)
        mixing = np.array(self.mixing, dtype=bool)
        space_of = np.array(self.space_of, dtype=np.int64)
        n_sp = len(self.spaces)
        sp_parent = list(range(n_sp))

        def sfind(s: int) -> int:
            while sp_parent[s] != s:
                sp_parent[s] = sp_parent[sp_parent[s]]
                s = sp_parent[s]
            return s

        order = np.argsort(roots, kind="stable")
        bounds = np.flatnonzero(np.diff(roots[order])) + 1
        units = np.split(order, bounds) if len(order) else []
        for u in units:
            sps = np.unique(space_of[u])
            for s in sps[1:].tolist():
                a, b = sfind(int(sps[0])), sfind(s)
                if a != b:
                    sp_parent[max(a, b)] = min(a, b)
        by_comp: dict[int, list[np.ndarray]] = {}
        for u in units:
            by_comp.setdefault(sfind(int(space_of[u[0]])), []).append(u)
        out: list[ChannelGroup] = []
        for comp in sorted(by_comp):
            us = sorted(by_comp[comp], key=lambda u: int(u.min()))
            sps = sorted({int(s) for u in us for s in space_of[u]})
            prunable = [not bool(fixed[u].any()) for u in us]
            reason = None
            if not all(prunable):
                bad = next(u for u, p in zip(us, prunable) if not p)
                e = next(int(x) for x in bad if fixed[x])
                reason = self.reasons.get(e, "fixed")
            out.append(
                ChannelGroup(
                    spaces=[self.spaces[s] for s in sps],
                    units=us,
                    prunable=prunable,
                    reason=reason,
                    mixing=bool(any(mixing[u].any() for u in us)),
                )
            )
        return out

    # --- rewriting ----------------------------------------------------------------------------------
    def apply(self, keep: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Remove every element where ``keep`` is False from the graph (physically).

        Returns ``{node name: (kept input channel indices, kept output channel indices)}`` for the
        conv2d / dense nodes whose weights changed (used by least-squares recovery)."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self.parent),):
            raise ValueError(f"keep mask has shape {keep.shape}, expected ({len(self.parent)},)")
        fixed = np.array(self.fixed, dtype=bool)
        if (~keep & fixed).any():
            raise ValueError("keep mask removes fixed channels")
        roots = self.roots()
        if (keep != keep[roots]).any():
            raise ValueError("keep mask splits a unit (coupled channels must go together)")
        g = self.graph
        changed: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def mask(v: Value) -> np.ndarray:
            return keep[self.pos[id(v)]]

        def new_const(node: Node, index: int, arr: np.ndarray, hint: str) -> None:
            old = node.inputs[index]
            assert old is not None
            enc = old.type.encoding
            arr = np.ascontiguousarray(arr)
            if isinstance(enc, Sparse):
                enc = Sparse.of(arr, enc.index_bits)
            t = TensorType(arr.shape, old.dtype, enc)
            node.set_input(index, Value(g.unique_name(hint), t, const=arr))

        for node in self.consumers:
            x, w = node.inputs[0], node.inputs[1]
            assert x is not None and w is not None
            im, om = mask(x), mask(node.output)
            if im.all() and om.all():
                continue
            new_const(node, 1, w.const[om][:, im], f"{w.name}_pruned")
            b = node.inputs[2] if len(node.inputs) > 2 else None
            if b is not None and not om.all():
                new_const(node, 2, b.const[om], f"{b.name}_pruned")
            changed[node.name] = (np.flatnonzero(im), np.flatnonzero(om))
        for node in self.depthwise:
            x, w = node.inputs[0], node.inputs[1]
            assert x is not None and w is not None
            m = mask(x)
            if m.all():
                continue
            new_const(node, 1, w.const[m], f"{w.name}_pruned")
            b = node.inputs[2] if len(node.inputs) > 2 else None
            if b is not None:
                new_const(node, 2, b.const[m], f"{b.name}_pruned")
            node.attrs["groups"] = int(m.sum())
        for s in self.slices:
            m = mask(s.value)
            if m.all():
                continue
            c = s.node.inputs[s.index]
            assert c is not None
            new_const(s.node, s.index, np.compress(m, c.const, axis=s.axis), f"{c.name}_pruned")
        for node in self.reshapes:
            m = mask(node.output)
            shape = list(node.attrs["shape"])
            shape[1] = int(m.sum())
            node.attrs["shape"] = tuple(shape)
        for node in self.splits:
            node.attrs["sizes"] = tuple(int(mask(o).sum()) for o in node.outputs)
        reinfer_types(g)
        return changed


def reinfer_types(graph: Graph) -> None:
    """Recompute every node output's type from its inputs (after channel counts changed)."""
    from mcopt.ops import get_schema

    for node in graph.nodes:
        schema = get_schema(node.op)
        types = schema.infer_types(
            [None if v is None else v.type for v in node.inputs], node.attrs, node.name
        )
        for out, t in zip(node.outputs, types):
            if out.type.shape != t.shape or out.type.dtype != t.dtype:
                out.type = TensorType(t.shape, t.dtype, out.type.encoding)


# --- building -------------------------------------------------------------------------------------------
def _norm(axis: int, rank: int) -> int:
    return int(axis) % rank if -rank <= axis < rank else -1


def _weight_ok(v: Value | None) -> bool:
    return (
        v is not None
        and v.is_const
        and np.dtype(v.dtype).kind == "f"
        and (v.type.encoding is None or isinstance(v.type.encoding, Sparse))
    )


def analyze_channels(graph: Graph) -> ChannelAnalysis:
    """Build the channel dependency analysis of `graph` (see the module docstring)."""
    a = ChannelAnalysis(graph)
    for v in graph.inputs:
        if v.type.rank >= 2:
            a.pos[id(v)] = a._new_space(v.shape[1], None, f"graph input %{v.name}")
    for node in graph.nodes:
        _visit(a, node)
    for v in graph.outputs:
        p = a.pos.get(id(v))
        if p is not None:
            a._fix(p, f"reaches graph output %{v.name}")
    return a


def _fix_node(a: ChannelAnalysis, node: Node, why: str) -> None:
    reason = f"{node.op} {node.name!r}: {why}"
    for v in node.inputs:
        if v is not None and not v.is_const and id(v) in a.pos:
            a._fix(a.pos[id(v)], reason)
    for o in node.outputs:
        if o.type.rank >= 2:
            a.pos[id(o)] = a._new_space(o.shape[1], None, reason)


def const_channel_axis(c: Value, out_rank: int, channels: int) -> tuple[bool, int | None]:
    """Does constant `c` broadcast against an (N, C, ...) output? Returns (ok, axis of c to slice)."""
    k = c.type.rank
    if k > out_rank:
        return False, None
    ax = 1 - (out_rank - k)
    if ax < 0 or c.shape[ax] == 1:
        return True, None
    if c.shape[ax] == channels:
        return True, ax
    return False, None


def _visit(a: ChannelAnalysis, node: Node) -> None:
    op = node.op
    acts = [v for v in node.inputs if v is not None and not v.is_const]
    if any(id(v) not in a.pos for v in acts):
        _fix_node(a, node, "an input has no channel axis")
        return
    if op in ("conv2d", "dense"):
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if x is None or x.is_const or not _weight_ok(w) or (b is not None and not _weight_ok(b)):
            _fix_node(a, node, "weight is not a plain float constant")
            return
        assert w is not None
        if op == "dense" and x.type.rank != 2:
            _fix_node(a, node, "input is not 2-D")
            return
        groups = node.attrs.get("groups", 1)
        cin, cout = x.shape[1], node.output.shape[1]
        if groups == 1:
            a.consumers.append(node)
            a.pos[id(node.output)] = a._new_space(cout, node)
        elif groups == cin == cout:
            a.depthwise.append(node)
            a.pos[id(node.output)] = a.pos[id(x)]
        else:
            _fix_node(a, node, f"grouped convolution (groups={groups}) couples channels per group")
        return
    out = node.outputs[0] if node.outputs else None
    if out is None or out.type.rank < 2:
        _fix_node(a, node, "output has no channel axis")
        return
    rank = out.type.rank
    if op == "batch_norm":
        x = node.inputs[0]
        if not all(_weight_ok(v) for v in node.inputs[1:]):
            _fix_node(a, node, "BN parameters are not float constants")
            return
        assert x is not None
        for i in range(1, len(node.inputs)):
            a.slices.append(_Slice(node, i, 0, x))
        a.pos[id(out)] = a.pos[id(x)]
        return
    if op in UNARY_OPS or op in BINARY_OPS:
        channels = out.shape[1]
        live = []
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if v.is_const:
                ok, ax = const_channel_axis(v, rank, channels)
                if not ok:
                    _fix_node(a, node, f"constant %{v.name} does not broadcast per channel")
                    return
                if ax is not None:
                    a.slices.append(_Slice(node, i, ax, out))
            else:
                if v.type.rank != rank:
                    _fix_node(a, node, "operands of different rank")
                    return
                if v.shape[1] == channels:
                    live.append(v)
                elif v.shape[1] != 1:
                    _fix_node(a, node, "operand channel counts differ")
                    return
        if not live:
            _fix_node(a, node, "no operand carries the channels")
            return
        for v in live[1:]:
            a._union(a.pos[id(live[0])], a.pos[id(v)])
        a.pos[id(out)] = a.pos[id(live[0])]
        return
    x = node.inputs[0]
    assert x is not None
    px = a.pos[id(x)]
    if op in POOL_OPS:
        a.pos[id(out)] = px
        return
    if op == "lrn":
        for e in px.tolist():
            a.mixing[e] = True
        a.pos[id(out)] = px
        return
    if op == "softmax":
        if _norm(node.attrs["axis"], rank) == 1:
            _fix_node(a, node, "normalizes across channels")
        else:
            a.pos[id(out)] = px
        return
    if op == "concat":
        ax = _norm(node.attrs["axis"], rank)
        if any(v is None or v.is_const for v in node.inputs):
            _fix_node(a, node, "concatenates a constant")
        elif ax == 1:
            a.pos[id(out)] = np.concatenate([a.pos[id(v)] for v in node.inputs])  # type: ignore[union-attr]
        elif ax > 1 or ax == 0:
            for v in node.inputs[1:]:
                a._union(px, a.pos[id(v)])  # type: ignore[arg-type]
            a.pos[id(out)] = px
        else:
            _fix_node(a, node, "bad axis")
        return
    if op == "split":
        ax = _norm(node.attrs["axis"], x.type.rank)
        if ax == 1:
            off = 0
            for o in node.outputs:
                a.pos[id(o)] = px[off : off + o.shape[1]]
                off += o.shape[1]
            a.splits.append(node)
        elif ax > 1:
            for o in node.outputs:
                a.pos[id(o)] = px
        else:
            _fix_node(a, node, "splits the batch axis")
        return
    if op == "flatten" or op == "reshape":
        xs, os_ = x.shape, out.shape
        if x.type.rank < 2 or os_[0] != xs[0]:
            _fix_node(a, node, "moves the channel axis")
        elif rank == 2 and os_[1] == math.prod(xs[1:]):
            a.pos[id(out)] = np.repeat(px, math.prod(xs[2:]))
            if op == "reshape":
                a.reshapes.append(node)
        elif op == "reshape" and os_[1] == xs[1]:
            a.pos[id(out)] = px
            a.reshapes.append(node)
        else:
            _fix_node(a, node, "moves the channel axis")
        return
    if op in ("squeeze", "unsqueeze"):
        r = x.type.rank if op == "squeeze" else rank
        axes = {_norm(ax, r) for ax in node.attrs["axes"]}
        if axes & {0, 1, -1}:
            _fix_node(a, node, "moves the channel axis")
        else:
            a.pos[id(out)] = px
        return
    if op == "transpose":
        perm = tuple(node.attrs["perm"])
        if perm[:2] == (0, 1):
            a.pos[id(out)] = px
        else:
            _fix_node(a, node, "moves the channel axis")
        return
    if op == "pad":
        pads = node.attrs["pads"]
        if pads[1] == 0 and pads[rank + 1] == 0:
            a.pos[id(out)] = px
        else:
            _fix_node(a, node, "pads channels")
        return
    if op == "slice":
        axes = {_norm(ax, x.type.rank) for ax in node.attrs["axes"]}
        if axes & {0, 1, -1}:
            _fix_node(a, node, "slices channels")
        else:
            a.pos[id(out)] = px
        return
    if op in ("reduce_mean", "reduce_max", "reduce_min", "reduce_sum"):
        axes = {_norm(ax, x.type.rank) for ax in node.attrs["axes"]} or {-1}
        if axes & {0, 1, -1}:
            _fix_node(a, node, "reduces over channels")
        else:
            a.pos[id(out)] = px if out.type.rank >= 2 else a._new_space(0, None)
        return
    _fix_node(a, node, "op is not channel-aware")


# --- scores -------------------------------------------------------------------------------------------
def element_norms(a: ChannelAnalysis) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per element: (sum |w| of incoming weights, sum w^2 incoming, sum w^2 outgoing).

    Incoming = the producer's filter / row (plus a depthwise conv's filter on the way); outgoing =
    the columns of every conv2d / dense that consumes the channel (after flatten: all its columns)."""
    n = len(a.parent)
    in_l1, in_sq, out_sq = np.zeros(n), np.zeros(n), np.zeros(n)
    for node in a.consumers + a.depthwise:
        w = node.inputs[1].const.astype(np.float64)  # type: ignore[union-attr]
        rows = w.reshape(w.shape[0], -1)
        p = a.pos[id(node.output)]
        np.add.at(in_l1, p, np.abs(rows).sum(1))
        np.add.at(in_sq, p, (rows**2).sum(1))
    for node in a.consumers:
        w = node.inputs[1].const.astype(np.float64)  # type: ignore[union-attr]
        cols = (w**2).sum(axis=tuple(i for i in range(w.ndim) if i != 1))
        np.add.at(out_sq, a.pos[id(node.inputs[0])], cols)  # type: ignore[arg-type]
    return in_l1, in_sq, out_sq


def element_activation_scores(
    a: ChannelAnalysis, acts: dict[str, np.ndarray], out_sq: np.ndarray | None = None
) -> np.ndarray:
    """Data-driven score per element: sum over consumers of E[x_c^2] * ||W[:, c]||^2 — the expected
    squared contribution of channel c to each consumer's output (He et al. 2017 / ThiNet flavour).
    `acts` maps consumer input value names to calibration activations (batch concatenated)."""
    n = len(a.parent)
    score = np.zeros(n)
    for node in a.consumers:
        x, w = node.inputs[0], node.inputs[1]
        assert x is not None and w is not None
        arr = acts.get(x.name)
        if arr is None:
            continue
        ex2 = (arr.astype(np.float64) ** 2).mean(axis=tuple(i for i in range(arr.ndim) if i != 1))
        wc = w.const.astype(np.float64)
        cols = (wc**2).sum(axis=tuple(i for i in range(wc.ndim) if i != 1))
        np.add.at(score, a.pos[id(x)], ex2 * cols)
    return score


def unit_scores(
    a: ChannelAnalysis,
    criterion: str,
    acts: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """A score per element's unit (indexed by element id; equal for every element of a unit).

    - ``l1``: sum |w| of the unit's filters (Li et al. 2017, "Pruning Filters for Efficient ConvNets").
    - ``l2``: sqrt(sum w^2) of the filters.
    - ``group-lasso``: sqrt(sum w^2) over incoming *and* outgoing weights — the group-lasso norm of a
      neuron (Wen et al. 2016; the lecture's neuron criterion).
    - ``activation``: sqrt(sum E[x^2] ||W_out[:, c]||^2) on calibration activations.
    """
    roots = a.roots()
    n = len(a.parent)
    in_l1, in_sq, out_sq = element_norms(a)
    if criterion == "l1":
        per = in_l1
    elif criterion == "l2":
        per = in_sq
    elif criterion == "group-lasso":
        per = in_sq + out_sq
    elif criterion == "activation":
        if acts is None:
            raise ValueError("criterion 'activation' needs calibration activations")
        per = element_activation_scores(a, acts)
    else:
        raise ValueError(f"unknown criterion {criterion!r}")
    tot = np.bincount(roots, weights=per, minlength=n)
    if criterion in ("l2", "group-lasso", "activation"):
        tot = np.sqrt(tot)
    return tot[roots]


def consumer_inputs(a: ChannelAnalysis) -> list[Value]:
    """The distinct activation values read by conv2d / dense consumers (for calibration capture)."""
    seen: dict[int, Value] = {}
    for node in a.consumers:
        x = node.inputs[0]
        assert x is not None
        seen.setdefault(id(x), x)
    return list(seen.values())


def select_keep(
    a: ChannelAnalysis,
    groups: Sequence[ChannelGroup],
    scores: np.ndarray,
    ratios: dict[int, float],
    *,
    min_channels: int = 1,
    round_to: int = 1,
) -> np.ndarray:
    """Keep mask: in group ``i`` remove ``floor(ratios[i] * units)`` lowest-scoring prunable units,
    never leaving a space with fewer than `min_channels` channels. With ``round_to > 1`` the kept
    count is the multiple of `round_to` nearest to that (ties: the larger; at least one multiple,
    at most all units — a group of at most `round_to` units keeps the plain count): a channel count
    the target's SIMD blocks hold without padding (16 channels on AVX-512: pruning 32 to 20
    channels leaves two blocks of work)."""
    keep = np.ones(len(a.parent), dtype=bool)
    space_of = np.array(a.space_of, dtype=np.int64)
    left = {s.index: s.size for s in a.spaces}
    for gi, g in enumerate(groups):
        r = ratios.get(gi, 0.0)
        cand = [u for u, p in zip(g.units, g.prunable) if p]
        if r <= 0 or not cand:
            continue
        total = len(g.units)
        n_remove = min(int(math.floor(r * total + 1e-9)), len(cand))
        if round_to > 1 and total > round_to:
            kept = total - n_remove
            kept = min(total, max(round_to, (2 * kept + round_to) // (2 * round_to) * round_to))
            n_remove = min(max(0, total - kept), len(cand))
        cand.sort(key=lambda u: float(scores[u[0]]))
        removed = 0
        for u in cand:
            if removed >= n_remove:
                break
            sps, counts = np.unique(space_of[u], return_counts=True)
            if any(left[int(s)] - int(c) < min_channels for s, c in zip(sps, counts)):
                continue
            for s, c in zip(sps, counts):
                left[int(s)] -= int(c)
            keep[u] = False
            removed += 1
    return keep
