"""Graph-level planning for the CPU kernels: operator fusion and activation layouts (TVM-free).

Two decisions are taken on the mcopt IR before anything is lowered (:func:`plan_graph`):

1. **Fusion** (:class:`FusedOp`). A ``conv2d`` (or ``dense``) with constant weights absorbs the
   single-use chain that follows it: ``batch_norm`` / ``mul`` / ``add`` by per-channel constants
   are folded into the weights and bias in numpy (``w' = w * k``, ``b' = b * k + c`` with
   ``k = gamma / sqrt(var + eps)``, ``c = beta - mean * k`` -- Ioffe & Szegedy 2015, inference
   form; lossless up to float rounding), then one ``add`` of a same-shape tensor becomes the
   kernel's residual input, then ``relu`` / ``clip`` its activation. The kernel's epilogue
   computes ``act(conv(x, w') + b' (+ residual))`` while the accumulators are still in registers
   (the conv + bias + BN + residual + activation fusion of Liu et al., USENIX ATC 2019).

2. **Layouts** (:class:`Layout`). Every 4-d activation gets a *home* layout: plain ``NCHW`` or
   blocked ``NCHW[bn]c`` (``x_b[n, c // bn, h, w, c % bn] = x[n, c, h, w]``), the layout of the
   kernel templates. Convolutions pull their input into the blocked layout (one transform at the
   first conv); ops that work per channel (elementwise, pooling, channel concat, channel shuffle)
   keep whatever layout their input has; everything else (reshape, softmax, LRN, plain fallback
   ops) works on NCHW, and the lowering converts at exactly those boundaries (once per value and
   layout). The block of a tensor with ``C`` channels is :func:`block_for`: ``lanes`` when it
   divides ``C``, ``C`` itself for ``C <= lanes``, otherwise ``lanes`` with the channels
   zero-padded to a multiple of ``lanes`` (pruned models have arbitrary channel counts). The
   padding channels hold finite values that no consumer reads: conv weights are zero-padded along
   their input channels, and the conversion back to NCHW drops them; ops that could turn them
   into inf/NaN (``div``, ``pow``, ``exp``, ...) are not run blocked.

Grouped convolutions (AlexNet ``groups=2``, ShuffleNet ``groups=4``, ResNeXt ``groups=32``) are
``grouped`` groups with their compact ``(OC, IC/groups, KH, KW)`` weight: the lowering runs them with
the blocked grouped kernel (:mod:`mcopt.targets.cpu.kernels.grouped`: the conv template whose reduction
is restricted to a window of the group's input blocks; activations keep their home layout, group
boundaries need not fall on block boundaries). Where that kernel would waste too much (tiny groups),
a conv over the :func:`block_diagonal` weight (zero blocks between groups, ``groups`` times the MACs)
when ``groups <= MAX_DENSE_GROUPS``, else the plain Relax conv. A channel shuffle (Zhang et al.,
ShuffleNet, CVPR 2018) right after a grouped group without residual is absorbed into it
(``out_perm``): the grouped kernel's epilogue reads each output channel from its source
accumulator, so the shuffle costs no pass over memory (lossless: a permutation). A shuffle followed
by a depthwise and a grouped conv (every ShuffleNet unit) sinks into the grouped conv's input
instead (``in_perm``, :func:`_sink_shuffles`): the depthwise conv reads the unshuffled tensor with
its weights permuted alike, the grouped kernel's reduction reads its input channels through the
permutation (an int32 table) -- not even the permuted epilogue's gather (one znver5 thread, 272
channels at 14x14: 48 us as the plain kernel, 49 input-permuted, 58 output-permuted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import BlockedLayout
from mcopt.ops import get_schema, has_trait, ops_with
from mcopt.ops.nn import bn_affine
from mcopt.targets.cpu.plan_int8 import QGroup, clip_floor, find_int8_groups

#: grouped convs the grouped kernel does not take run as one blocked conv with block-diagonal
#: weights when they have at most this many groups (else as a plain Relax conv)
MAX_DENSE_GROUPS = 4

#: elementwise ops that map finite inputs to finite outputs: safe on zero-padded channel blocks
#: (from the op traits, mcopt.ops.TRAITS; "finite_preserving" = safe on zero-padded blocks)
BLOCKED_UNARY = frozenset(
    op
    for op in ops_with("channelwise", "finite_preserving", "elementwise") - ops_with("view")
    if get_schema(op).max_inputs == 1
)
BLOCKED_BINARY = frozenset(
    op
    for op in ops_with("elementwise", "finite_preserving") - ops_with("channelwise")
    if get_schema(op).min_inputs == 2
)
PASSTHROUGH = ops_with("view", "channelwise")
BLOCKED_POOLS = ops_with("pool")

#: fuse a channel shuffle that follows a grouped conv into that kernel's epilogue (False keeps it
#: a separate blocked permutation, e.g. to measure what the fusion saves)
FUSE_GROUPED_SHUFFLE = True

#: sink a channel shuffle followed by a depthwise and a grouped conv into the grouped conv's input
#: (:func:`_sink_shuffles`); False keeps the epilogue fusion / separate permutation
SINK_SHUFFLE = True


#: the home layout of a blocked activation (the IR type's layout, :class:`mcopt.ir.BlockedLayout`)
Layout = BlockedLayout


#: an odd number of channel blocks (SqueezeNet's 1000 classes: 125 blocks of 8) leaves the conv
#: template a one-block-wide register tile (``reg_c = 1``: ~0.9 FMAs per load instead of 1.7 for
#: 3 x 4); from this many blocks on, the channels are padded to a multiple of 4 blocks when that
#: adds at most 1/16 of them (SqueezeNet's conv10: 1000 -> 1024 channels, 2.40 -> 1.92 ms)
PAD_ODD_BLOCKS_FROM = 16


def block_for(channels: int, lanes: int) -> Layout:
    """The home block of a tensor with ``channels`` channels (see the module docstring)."""
    if channels <= lanes and channels % lanes:
        return Layout(channels, channels, channels)
    padded = -(-channels // lanes) * lanes
    blocks = padded // lanes
    if blocks % 2 and blocks >= PAD_ODD_BLOCKS_FROM:
        four = -(-blocks // 4) * 4 * lanes
        if (four - channels) * 16 <= channels:
            padded = four
    return Layout(lanes, channels, padded)


@dataclass
class FusedOp:
    """A conv2d / dense with the chain it absorbed (see the module docstring).

    ``kind``: ``conv`` (groups = 1), ``depthwise`` (one input channel per group, multiplier 1),
    ``grouped`` (any other ``groups > 1``; ``weight`` stays ``(OC, IC/groups, KH, KW)``),
    ``dense``. ``weight``/``bias`` are the folded numpy arrays (OIHW / (N, K); ``bias`` None when
    there is none), ``residual`` the added tensor, ``activation`` None/"relu"/"relu6"/"clip"/
    "hard_swish"/"hard_sigmoid"/"silu"/"gelu"/"leaky_relu" with its two parameters in ``clip`` (the
    bounds of ``clip``, ``(alpha, beta)`` of ``hard_sigmoid``, ``(slope, floor)`` of
    ``leaky_relu``; ``"prelu"``'s per-channel slopes in ``slope``). ``out_perm`` (``grouped``
    only): a channel shuffle absorbed after the activation, ``out[:, c] = act(...)[:,
    out_perm[c]]``. ``in_perm`` (``grouped`` only): a channel shuffle sunk into the conv's input,
    ``conv(x[:, in_perm], w)``; ``source`` (``depthwise`` only): the unshuffled tensor the
    depthwise conv reads instead of its input (its weights permuted to match), ``removed`` the
    shuffle nodes that then go away.
    """

    kind: str
    node: Node
    weight: np.ndarray
    bias: np.ndarray | None
    absorbed: list[Node] = field(default_factory=list)
    residual: Value | None = None
    activation: str | None = None
    clip: tuple[float, float] = (0.0, 6.0)
    out_perm: np.ndarray | None = None
    in_perm: np.ndarray | None = None
    source: Value | None = None
    removed: list[Node] = field(default_factory=list)
    slope: np.ndarray | None = None  # activation "prelu": one slope per output channel

    @property
    def input(self) -> Value | None:
        """The activation the kernel reads (``source`` when a channel shuffle before it was
        sunk, else the conv's own input)."""
        return self.source if self.source is not None else self.node.inputs[0]

    @property
    def last(self) -> Node:
        return self.absorbed[-1] if self.absorbed else self.node

    @property
    def output(self) -> Value:
        return self.last.output

    def describe(self) -> str:
        parts = [self.node.op if self.kind != "depthwise" else "depthwise"]
        parts += [n.op for n in self.absorbed]
        return "+".join(parts)


def _single_use(v: Value, graph_outputs: set[int]) -> Node | None:
    """The only consumer of ``v`` (None if it has several uses or is a graph output)."""
    if id(v) in graph_outputs or len(v.uses) != 1:
        return None
    return v.uses[0][0]


def _channel_const(v: Value | None, channels: int, rank: int) -> np.ndarray | None:
    """``v``'s constant as a per-channel vector (C,) when it broadcasts along axis 1 of a rank-
    ``rank`` tensor (shapes (), (1,), (C,1,1), (1,C,1,1), ...); None otherwise."""
    if v is None or v.const is None:
        return None
    a = np.asarray(v.const)
    if a.size == 1:
        return np.full(channels, float(a.reshape(())), dtype=np.float64)
    if rank == 2:  # dense output (M, N): a (N,) or (1, N) vector
        if a.shape in {(channels,), (1, channels)}:
            return a.reshape(-1).astype(np.float64)
        return None
    shp = a.shape
    if len(shp) > rank:
        return None
    full = (1,) * (rank - len(shp)) + tuple(shp)
    if full[1] == channels and all(d == 1 for i, d in enumerate(full) if i != 1):
        return a.reshape(-1).astype(np.float64)
    return None


def _activation(node: Node) -> tuple[str, tuple[float, float]] | None:
    """The activation a kernel epilogue can run for ``node`` and its two parameters (clip bounds;
    ``(alpha, beta)`` for ``hard_sigmoid``), or None."""
    if node.op == "relu":
        return "relu", (0.0, 6.0)
    if node.op in ("hard_swish", "silu", "gelu"):
        return str(node.op), (0.0, 6.0)
    if node.op == "hard_sigmoid":
        return "hard_sigmoid", (float(node.attrs["alpha"]), float(node.attrs["beta"]))
    if node.op == "leaky_relu":  # (slope, floor): a clip after it raises the floor
        return "leaky_relu", (float(node.attrs["alpha"]), -math.inf)
    if node.op == "clip":
        lo = float(node.attrs.get("min", -math.inf))
        hi = float(node.attrs.get("max", math.inf))
        if lo == 0.0 and hi == 6.0:
            return "relu6", (0.0, 6.0)
        if lo == 0.0 and math.isinf(hi):
            return "relu", (0.0, 6.0)
        if math.isfinite(lo) and math.isfinite(hi):
            return "clip", (lo, hi)
    return None


def _channel_gate(x: Value, g: Value, out: Value, lx: Layout | None, lg: Layout | None) -> bool:
    """``x (N, C, H, W)`` times / plus a per-channel tensor ``g (N, C, 1, 1)`` (an SE gate), both
    in the same blocked layout: the op broadcasts over the blocked tensors as it is."""
    n, c = out.shape[0], out.shape[1]
    return (
        lx is not None
        and lx == lg
        and tuple(x.shape) == tuple(out.shape)
        and tuple(g.shape) in ((n, c, 1, 1), (1, c, 1, 1))
    )


def _zero_channel_tail(node: Node, x0: Layout) -> bool:
    """``node`` slices channels ``[0, E)`` (``E`` within the last block) of an unpadded blocked
    ``depth_to_space`` (DCR) output whose conv writes zeros (zero weight rows, zero bias) to every
    dropped channel — what :func:`~mcopt.targets.cpu.planning._pointwise_transposed` builds."""
    a = node.attrs
    x = node.inputs[0]
    if x is None or x0.is_padded or tuple(a["axes"]) not in ((1,), (-3,)):
        return False
    if tuple(a["starts"]) != (0,) or tuple(a["steps"]) != (1,):
        return False
    end = node.output.shape[1]
    if not 0 < end < x0.channels or x0.channels - end >= x0.bn:
        return False
    d2s = x.producer
    if d2s is None or d2s.op != "depth_to_space" or d2s.attrs["mode"] != "DCR":
        return False
    conv = d2s.inputs[0].producer if d2s.inputs[0] is not None else None
    if conv is not None and has_trait(conv.op, "zero_preserving") and conv.inputs[0] is not None:
        if not has_trait(conv.op, "elementwise") or len(conv.inputs) != 1:
            return False
        conv = conv.inputs[0].producer  # an activation that maps 0 to 0 in between
    if conv is None or conv.op != "conv2d" or len(d2s.inputs[0].uses) != 1:  # type: ignore[union-attr]
        return False
    w = conv.inputs[1]
    b = conv.inputs[2] if len(conv.inputs) > 2 else None
    if w is None or w.const is None or (b is not None and b.const is None):
        return False
    bs, full = int(d2s.attrs["blocksize"]), x0.channels
    rows = np.asarray(w.const).reshape(bs * bs, full, -1)[:, end:]
    bias = None if b is None else np.asarray(b.const).reshape(bs * bs, full)[:, end:]
    return not rows.any() and (bias is None or not bias.any())


def _conv_kind(node: Node) -> str | None:
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or w.const is None or len(x.shape) != 4:
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const is None:
        return None
    if x.dtype != "float32" or w.dtype != "float32":
        return None
    groups = int(node.attrs.get("groups", 1))
    c_in, c_out = x.shape[1], w.shape[0]
    if groups == 1:
        return "conv"
    if groups == c_in == c_out and w.shape[1] == 1:
        return "depthwise"
    return "grouped"


def block_diagonal(weight: np.ndarray, groups: int) -> np.ndarray:
    """The dense ``(OC, IC, KH, KW)`` weight of a grouped ``(OC, IC/groups, KH, KW)`` one: group
    ``g``'s filters in the diagonal block ``[g*OC/groups : (g+1)*OC/groups, g*IC/groups : ...]``,
    zeros elsewhere (the same conv, ``groups`` times the MACs)."""
    oc, icg = weight.shape[:2]
    full = np.zeros((oc, icg * groups, *weight.shape[2:]), dtype=weight.dtype)
    ocg = oc // groups
    for g in range(groups):
        full[g * ocg : (g + 1) * ocg, g * icg : (g + 1) * icg] = weight[g * ocg : (g + 1) * ocg]
    return full


def _start_fusion(node: Node) -> FusedOp | None:
    if node.op == "conv2d":
        kind = _conv_kind(node)
        if kind is None:
            return None
    elif node.op == "dense":
        x, w = node.inputs[0], node.inputs[1]
        if x is None or w is None or w.const is None or len(x.shape) != 2 or x.dtype != "float32":
            return None
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const is None:
            return None
        kind = "dense"
    else:
        return None
    w = np.asarray(node.inputs[1].const, dtype=np.float64)  # type: ignore[union-attr]
    b_in = node.inputs[2] if len(node.inputs) > 2 else None
    b = None if b_in is None else np.asarray(b_in.const, dtype=np.float64)
    return FusedOp(kind, node, w, b)


def _fuse_chain(f: FusedOp, graph_outputs: set[int], claimed: set[int]) -> None:
    """Absorb the single-use chain after ``f.node`` (affine constants, residual, activation)."""
    rank = 2 if f.kind == "dense" else 4
    channels = f.weight.shape[0]
    cur = f.node.output
    while True:
        user = _single_use(cur, graph_outputs)
        if user is None or id(user) in claimed:
            return
        if f.activation is not None:
            floor = clip_floor(user)
            if f.activation != "leaky_relu" or floor is None:
                return
            f.clip = (f.clip[0], max(f.clip[1], floor))  # max(leaky(v), lo)
            f.absorbed.append(user)
            cur = user.output
            continue
        idx = next(i for i, v in enumerate(user.inputs) if v is cur)
        if user.op == "batch_norm" and idx == 0 and f.residual is None:
            stats = [v.const if v is not None else None for v in user.inputs[1:5]]
            if any(s is None for s in stats):
                return
            k, c = bn_affine(*(np.reshape(s, -1) for s in stats), user.attrs["epsilon"])  # type: ignore[arg-type]
            f.weight = f.weight * k.reshape((-1,) + (1,) * (f.weight.ndim - 1))
            f.bias = (f.bias if f.bias is not None else 0.0) * k + c
        elif user.op in ("mul", "add", "sub") and f.residual is None:
            other = user.inputs[1 - idx] if len(user.inputs) == 2 else None
            vec = _channel_const(other, channels, rank)
            if vec is not None and tuple(user.output.shape) == tuple(cur.shape):
                if user.op == "mul":
                    f.weight = f.weight * vec.reshape((-1,) + (1,) * (f.weight.ndim - 1))
                    f.bias = None if f.bias is None else f.bias * vec
                elif user.op == "add":
                    f.bias = (f.bias if f.bias is not None else 0.0) + vec
                elif idx == 0:  # cur - c
                    f.bias = (f.bias if f.bias is not None else 0.0) - vec
                else:
                    return
            elif (
                user.op == "add"
                and other is not None
                and other.const is None
                and tuple(other.shape) == tuple(cur.shape)
                and other.dtype == cur.dtype
            ):
                f.residual = other
            else:
                return
        elif user.op == "prelu" and idx == 0 and (f.node.op == "conv2d" or f.kind == "dense"):
            vec = _channel_const(user.inputs[1], channels, rank)
            if vec is None or tuple(user.output.shape) != tuple(cur.shape):
                return
            f.activation, f.slope = "prelu", vec
        else:
            act = _activation(user)
            if act is None:
                return
            f.activation, f.clip = act
        f.absorbed.append(user)
        cur = user.output


@dataclass
class Plan:
    """The planning result: fused groups (keyed by their last node), absorbed nodes, layouts."""

    lanes: int
    fused: dict[int, FusedOp] = field(default_factory=dict)  # id(last node) -> group
    absorbed: set[int] = field(default_factory=set)  # ids of nodes emitted inside a group
    layouts: dict[int, Layout | None] = field(default_factory=dict)  # id(value) -> home layout
    shuffles: dict[int, tuple[Value, np.ndarray, list[Node]]] = field(default_factory=dict)
    qgroups: dict[int, QGroup] = field(default_factory=dict)  # id(last node) -> int8 group
    int8_lanes: int = 0  # the int8 kernels' output block (0: int8 layers are not blocked)

    def layout_of(self, v: Value) -> Layout | None:
        return self.layouts.get(id(v))

    def blocked_values(self) -> int:
        return sum(1 for lay in self.layouts.values() if lay is not None)

    def summary(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for f in self.fused.values():
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        return {**kinds, "absorbed": len(self.absorbed), "blocked_values": self.blocked_values()}


def _channel_permutation(
    start: Value, graph_outputs: set[int]
) -> tuple[np.ndarray, list[Node]] | None:
    """A single-use chain of reshape/transpose nodes from 4-d ``start`` back to its own shape that
    only permutes channels (ShuffleNet's channel shuffle): ``(perm, nodes)`` with
    ``out[:, c] = in[:, perm[c]]``."""
    shape = tuple(start.shape)
    if len(shape) != 4:
        return None
    n, c, h, w = shape
    idx = np.arange(n * c * h * w, dtype=np.int64).reshape(shape)
    nodes: list[Node] = []
    cur, arr = start, idx
    while True:
        user = _single_use(cur, graph_outputs)
        if user is None or user.op not in ("reshape", "transpose", "flatten") or len(nodes) > 4:
            return None
        if user.inputs[0] is not cur:
            return None
        if user.op == "transpose":
            arr = arr.transpose([int(p) for p in user.attrs["perm"]])
        else:
            arr = arr.reshape(user.output.shape)
        nodes.append(user)
        cur = user.output
        if tuple(cur.shape) == shape and len(nodes) > 1:
            break
    src = arr.reshape(n, c, h * w)
    chan = src[0, :, 0] // (h * w)
    expect = (chan.reshape(1, c, 1) * (h * w)) + np.arange(h * w).reshape(1, 1, -1)
    expect = expect + (np.arange(n) * c * h * w).reshape(n, 1, 1)
    if not np.array_equal(src, expect):
        return None
    return chan.astype(np.int64), nodes


def plan_graph(graph: Graph, lanes: int = 8, int8_lanes: int = 0, int8_narrow: int = 0) -> Plan:
    """Fusion groups and home layouts for ``graph`` (see the module docstring). ``int8_lanes``:
    the output block of the int8 conv kernel (0: int8 convs are not planned blocked);
    ``int8_narrow``: the block of int8 convs with at most that many output channels (0: none),
    where the kernel has a narrower form (VNNI-512's 256-bit one: 8)."""
    plan = Plan(lanes, int8_lanes=int8_lanes)
    outs = {id(v) for v in graph.outputs}
    claimed: set[int] = set()  # nodes already inside a group
    if int8_lanes:
        for grp in find_int8_groups(graph.nodes, graph.outputs):
            chain = grp.chain
            plan.qgroups[id(chain[-1])] = grp
            plan.absorbed.update(id(n) for n in chain[:-1])
            claimed.update(id(n) for n in chain)
    # 1. fusion
    for node in graph.nodes:
        if id(node) in plan.absorbed or id(node) in claimed:
            continue
        f = _start_fusion(node)
        if f is None:
            continue
        _fuse_chain(f, outs, claimed)
        claimed.update(id(n) for n in f.absorbed)
        plan.fused[id(f.last)] = f
        plan.absorbed.update(id(n) for n in f.absorbed)
        plan.absorbed.discard(id(f.last))
        if f.absorbed:
            plan.absorbed.add(id(f.node))
    # 2. layouts, in topological order
    lay = plan.layouts
    for node in graph.nodes:
        if id(node) in plan.absorbed:
            continue
        grp = plan.qgroups.get(id(node))
        if grp is not None:
            oc = grp.node.inputs[1].shape[0]  # type: ignore[union-attr]
            src = lay.get(id(grp.node.inputs[0]))  # type: ignore[arg-type]
            if grp.kind == "depthwise" and src is not None and src.bn in (int8_lanes, int8_narrow):
                lay[id(node.output)] = src
            else:
                bn = int8_narrow if oc <= int8_narrow else int8_lanes
                lay[id(node.output)] = Layout(bn, oc, -(-oc // bn) * bn)
            continue
        f = plan.fused.get(id(node))
        if f is not None:
            if f.kind in ("conv", "grouped"):
                lay[id(f.output)] = block_for(f.weight.shape[0], lanes)
            elif f.kind == "depthwise":
                src = lay.get(id(f.node.inputs[0]))  # type: ignore[arg-type]
                lay[id(f.output)] = src or block_for(f.weight.shape[0], lanes)
            continue
        ins = [v for v in node.inputs if v is not None]
        if not ins or len(node.outputs) != 1:
            continue
        out = node.output
        x0 = lay.get(id(ins[0]))
        if node.op in ("quantize", "dequantize") and len(node.attrs["scale"]) == 1:
            if x0 is not None and len(ins) == 1:  # per-tensor: elementwise on any layout
                lay[id(out)] = x0
        elif (
            node.op in PASSTHROUGH
            or node.op in BLOCKED_UNARY
            or node.op in BLOCKED_POOLS
            or node.op == "upsample_nearest"  # repeats pixels: any channel block as it is
        ):
            if x0 is not None and len(ins) == 1:
                lay[id(out)] = x0
        elif node.op in BLOCKED_BINARY and len(ins) == 2 and len(out.shape) == 4:
            a, b = ins
            la, lb = lay.get(id(a)), lay.get(id(b))
            c = out.shape[1]
            if a.const is None and b.const is None:
                if tuple(a.shape) == tuple(b.shape) == tuple(out.shape) and (la or lb):
                    lay[id(out)] = la or lb
                elif _channel_gate(a, b, out, la, lb) or _channel_gate(b, a, out, lb, la):
                    # squeeze-and-excitation: x * gate(N, C, 1, 1), both blocked alike
                    lay[id(out)] = la if tuple(a.shape) == tuple(out.shape) else lb
            else:
                t, k, lt = (a, b, la) if b.const is not None else (b, a, lb)
                if lt is not None and tuple(t.shape) == tuple(out.shape):
                    if _channel_const(k, c, 4) is not None:
                        lay[id(out)] = lt
        elif node.op == "depth_to_space" and x0 is not None and not x0.is_padded:
            # DCR: output channel block ob of pixel (i*bs + a, j*bs + b) is input block
            # (a*bs + b) * O/bn + ob of pixel (i, j) -- whole blocks move (planning's transposed
            # convs, ESPCN-style pixel shuffles)
            o = out.shape[1]
            if node.attrs["mode"] == "DCR" and o % x0.bn == 0:
                lay[id(out)] = Layout(x0.bn, o, o)
        elif node.op == "slice" and x0 is not None and _zero_channel_tail(node, x0):
            # the channel prefix of a tensor whose dropped channels are zeros: the same buffer,
            # read as a padded layout
            lay[id(out)] = Layout(x0.bn, out.shape[1], x0.padded)
        elif node.op == "prelu" and x0 is not None and len(out.shape) == 4:
            # per-channel slopes (MTCNN, ArcFace's iresnet): elementwise on the blocked tensor
            if _channel_const(ins[1], out.shape[1], 4) is not None:
                lay[id(out)] = x0
        elif node.op == "batch_norm" and x0 is not None and len(out.shape) == 4:
            # a batch norm no conv absorbed (DenseNet's BN after a concat): a per-channel affine
            # on the blocked tensor (its padding channels stay finite: scale 0, shift 0)
            if all(v is not None and v.const is not None for v in node.inputs[1:5]):
                lay[id(out)] = x0
        elif node.op == "concat" and int(node.attrs.get("axis", 1)) in (1, -3):
            ls = [lay.get(id(v)) for v in ins]
            if all(x is not None for x in ls):
                c = out.shape[1]
                _reblock_tail(plan, ins, ls, outs)  # type: ignore[arg-type]
                bns = {x.bn for x in ls}  # type: ignore[union-attr]
                if len(bns) == 1 and not any(x.is_padded for x in ls[:-1]):  # type: ignore[union-attr]
                    # the blocks line up, any padding at the end: a plain concat
                    tail = ls[-1]
                    lay[id(out)] = Layout(bns.pop(), c, c - tail.channels + tail.padded)  # type: ignore[union-attr]
                else:  # padded inputs or other blocks: gathered by logical channel
                    lay[id(out)] = block_for(c, lanes)
        elif node.op in ("reshape", "transpose") and x0 is not None:
            # a channel shuffle, also on a padded layout (the padding channels map to themselves)
            perm = _channel_permutation(ins[0], outs)
            if perm is not None:
                p, nodes = perm
                plan.shuffles[id(nodes[-1])] = (ins[0], p, nodes)
                plan.absorbed.update(id(n) for n in nodes[:-1])
                lay[id(nodes[-1].output)] = x0
    # 3. a channel shuffle between a depthwise conv and the grouped conv after it sinks into the
    # grouped conv's input (ShuffleNet's units); the others run in a grouped producer's epilogue
    if SINK_SHUFFLE:
        _sink_shuffles(plan, outs)
    for key, (src, perm, nodes) in list(plan.shuffles.items()):
        if not FUSE_GROUPED_SHUFFLE:
            break
        f = plan.fused.get(id(src.producer)) if src.producer is not None else None
        if f is None or f.kind != "grouped" or f.residual is not None or f.output is not src:
            continue
        if (lay.get(id(src)) or Layout(1, 1, 1)).is_padded:
            continue  # the grouped epilogue permutes logical channels only
        del plan.shuffles[key], plan.fused[id(f.last)]
        plan.absorbed.update((id(f.node), id(f.last)))
        f.absorbed.extend(nodes)
        f.out_perm = perm
        plan.fused[id(f.last)] = f
        plan.absorbed.discard(id(f.last))
    return plan


def _reblock_tail(plan: Plan, ins: list[Value], ls: list[Layout], outs: set[int]) -> None:
    """A channel concat whose last input has a narrower block than the others (tiny_cnn's 8-channel
    1x1 branch beside 16-channel ones): that input's conv writes the others' block instead, its
    channels zero-padded, so that the blocks line up and the concat can be written in place
    (:func:`~mcopt.targets.cpu.lower_planned._inplace_concats`) instead of gathered channel by
    channel. Only a conv (not depthwise: it keeps its input's block) read by the concat alone;
    ``ls`` is updated."""
    if len(ls) < 2:
        return
    bns = {x.bn for x in ls[:-1]}
    bn, tail, v = max(bns), ls[-1], ins[-1]
    if len(bns) != 1 or tail.bn >= bn or any(x.is_padded for x in ls[:-1]) or tail.is_padded:
        return
    p = v.producer
    if p is None or id(v) in outs or len(v.uses) != 1 or tail.channels > bn:
        return
    grp, f = plan.qgroups.get(id(p)), plan.fused.get(id(p))
    conv = (grp is not None and grp.kind != "depthwise") or (f is not None and f.kind == "conv")
    if conv and id(p) not in plan.absorbed:
        ls[-1] = plan.layouts[id(v)] = Layout(bn, tail.channels, bn)


def _sink_shuffles(plan: Plan, graph_outputs: set[int]) -> None:
    """``shuffle -> depthwise -> grouped``: the depthwise conv reads the unshuffled tensor with its
    weights permuted alike (it works per channel) and the grouped conv reads its input channels
    through the permutation (``in_perm``): ``grouped(dw(x[:, p]))  = grouped(dw'(x)[:, p])`` with
    ``dw'`` the depthwise conv of weights ``w[argsort(p)]``. Lossless (a permutation); the
    shuffle costs neither a pass over memory nor the gather of a permuted epilogue."""
    by_node = {id(f.node): f for f in plan.fused.values()}
    for key, (src, perm, nodes) in list(plan.shuffles.items()):
        shuffled = nodes[-1].output
        user = _single_use(shuffled, graph_outputs)
        dw = by_node.get(id(user)) if user is not None else None
        if dw is None or dw.kind != "depthwise" or dw.residual is not None:
            continue
        if dw.node.inputs[0] is not shuffled or dw.source is not None:
            continue
        nxt = _single_use(dw.output, graph_outputs)
        gc = by_node.get(id(nxt)) if nxt is not None else None
        if gc is None or gc.kind != "grouped" or gc.in_perm is not None:
            continue
        if gc.node.inputs[0] is not dw.output or gc.residual is dw.output:
            continue
        inv = np.argsort(perm)
        dw.weight = dw.weight[inv]
        dw.bias = None if dw.bias is None else dw.bias[inv]
        dw.source, dw.removed = src, list(nodes)
        gc.in_perm = np.asarray(perm, dtype=np.int64)
        plan.absorbed.update(id(n) for n in nodes)
        del plan.shuffles[key]


__all__ = [
    "BLOCKED_BINARY",
    "BLOCKED_POOLS",
    "BLOCKED_UNARY",
    "MAX_DENSE_GROUPS",
    "FusedOp",
    "Layout",
    "Plan",
    "block_diagonal",
    "block_for",
    "plan_graph",
]
