"""CPU planning as an IR rewrite: fusion, layouts and kernel choices written into the graph.

:func:`plan_cpu` returns a *planned graph*, a copy of the input in which everything the CPU build
decides is visible in the IR (``mcopt optimize --print-ir``, ``result.planned_graph``), checked by
the verifier and run by the interpreter:

1. **Fusion** (found by :func:`mcopt.targets.cpu.plan.plan_graph`): every ``conv2d`` / ``dense`` with
   the batch norm, per-channel affine ops, residual ``add``, activation (and, after a grouped conv,
   channel shuffle) it absorbs becomes one ``fused_conv2d`` / ``fused_dense`` node
   (:mod:`mcopt.ops.planned`) with the folded weights as new constants. A ``winograd_conv2d`` from
   the ``winograd`` pass becomes a ``fused_conv2d`` with ``kernel="winograd"`` over its 3x3 weight
   (``G+ U G+^T``), so there is one Winograd kernel (the blocked one) for both routes.
2. **Layouts**: the type of every value kept blocked gets its :class:`~mcopt.ir.BlockedLayout`
   (printed ``f32[1,64,56,56]@NCHW16c``); the lowering converts exactly at the boundaries between a
   blocked and a plain value.
3. **Kernel choice**, one attribute per node, with one measurement cache: ``winograd`` (tile 2 or
   4) where the blocked Winograd kernel measured faster than the direct template on this machine
   (:func:`mcopt.targets.cpu.kernels.winograd_nchwc.choose_tile`, cached per machine), ``grouped`` /
   ``block_diagonal`` / ``plain`` for grouped convs by the grouped kernel's cost model, ``sparse``
   for a pruned (CSR) dense weight where the sparse kernel wins
   (:func:`mcopt.targets.cpu.kernels.sparse.sparse_wins`).
4. **int8 end to end** (:mod:`mcopt.targets.cpu.plan_int8`): every ``qconv2d`` with the residual
   add, clamp / hard-swish and quantize after it becomes one ``fused_qconv2d`` whose 8-bit output
   stays blocked (``u8[...]@NCHW16c``); a quantize is first moved below max pools, concats,
   reshapes and transposes (exact), so pools, concats and shuffles run on 8-bit data. Kernel:
   ``int8`` (channel blocks), ``int8_window`` (4 kernel columns per dot product, few input
   channels), ``int8_depthwise``, ``plain``.

The lowering (:func:`mcopt.targets.cpu.lower_planned.lower_planned`) then reads the planned graph and decides
nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from mcopt.errors import OptionError
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import BlockedLayout, Sparse, TensorType, UniformQuant
from mcopt.ops import get_schema
from mcopt.ops.winograd import winograd_weight_inverse
from mcopt.targets.cpu.plan import MAX_DENSE_GROUPS, FusedOp, Plan, block_for, plan_graph
from mcopt.targets.cpu.plan_int8 import QGroup, merge_duplicate_quantize, sink_quantize

_QCONV_ATTRS = ("strides", "pads", "dilations", "groups", "x_scale", "x_zero_point", "out_dtype",
                "out_scale", "out_zero_point", "act_min", "act_max")  # fmt: skip

log = logging.getLogger(__name__)

#: a grouped conv whose kernel would execute more than this many times its MACs (tiny groups in
#: 8/16-lane blocks) is not run by the grouped kernel
MAX_GROUPED_WASTE = 8.0

#: grouped int8 convs with more groups (tiny groups: the window of input blocks per output block
#: would be mostly zeros) run as plain ops
MAX_INT8_GROUPS = 8

#: graph.metadata key of the planned graph's choice counts ({"3x3 conv: Winograd F(4x4,3x3)": 6})
CHOICES = "mcopt.plan.choices"
#: graph.metadata key marking a planned graph (its value: the SIMD lanes it was planned for)
PLANNED = "mcopt.plan.lanes"


def is_planned(graph: Graph) -> bool:
    return PLANNED in graph.metadata


def _unwinograd(graph: Graph) -> dict[str, int]:
    """``winograd_conv2d`` -> ``conv2d`` over the recovered 3x3 weight; returns {node: tile}."""
    forced: dict[str, int] = {}
    for node in graph.iter_nodes():
        if node.op != "winograd_conv2d":
            continue
        u = node.inputs[1]
        if u is None or u.const is None or u.dtype != "float32":
            continue
        m = int(node.attrs["m"])
        w = graph.const(winograd_weight_inverse(np.asarray(u.const), m), name=f"{u.name}_3x3")
        b = node.inputs[2] if len(node.inputs) > 2 else None
        conv = Node(
            "conv2d",
            [node.inputs[0], w, b],
            [],
            {"strides": (1, 1), "pads": node.attrs["pads"], "dilations": (1, 1), "groups": 1},
            node.name,
        )
        graph.replace_nodes([node], conv)
        forced[node.name] = m
    return forced


def _flatten_dense(graph: Graph) -> None:
    """A ``dense`` over an N-D input ``(..., K)`` (a transformer's ``(N, T, C)`` tokens) is the
    same dense over the 2-D ``(prod(...), K)``: ``reshape -> dense -> reshape``, so it runs on the
    packed dense kernel (fusion, bias, activation) instead of TVM's generic batched matmul
    (PP-OCRv4's recognizer: its 40 x 120 -> 6625 classifier and token MLPs, 1.6 ms). Exact."""
    for node in list(graph.iter_nodes()):
        if node.op != "dense" or len(node.outputs) != 1:
            continue
        x, w = node.inputs[0], node.inputs[1]
        if x is None or w is None or w.const is None or len(x.shape) < 3:
            continue
        lead = tuple(x.shape[:-1])
        rows = int(np.prod(lead))
        x2 = graph.add_node("reshape", [x], {"shape": (rows, x.shape[-1])}, before=node).output
        d = graph.add_node(
            "dense", [x2, *node.inputs[1:]], name=f"{node.name}_2d", before=node
        ).output
        out = Node("reshape", [d], [], {"shape": (*lead, w.shape[0])}, node.name)
        graph.replace_nodes([node], out)


def _zero_preserving_user(graph: Graph, v: Value) -> Node | None:
    """The one reader of ``v`` when it is an elementwise unary op that maps 0 to 0 (relu,
    hard-swish, ...): it commutes with a pixel shuffle and keeps zero channels zero."""
    from mcopt.ops import has_trait

    if len(v.uses) != 1 or any(o is v for o in graph.outputs):
        return None
    user = v.uses[0][0]
    ok = (
        len(user.outputs) == 1
        and len([i for i in user.inputs if i is not None]) == 1
        and has_trait(user.op, "elementwise")
        and has_trait(user.op, "zero_preserving")
    )
    return user if ok else None


def _pointwise_transposed(graph: Graph, lanes: int) -> None:
    """A ``conv_transpose2d`` whose kernel equals its stride (no padding, dilation, output padding
    or groups; DBNet's 2x2 / stride-2 upsampling head) writes each input pixel's own ``kh x kw``
    output patch: it is a 1x1 ``conv2d`` to ``kh*kw*O`` channels followed by a pixel shuffle — the
    1x1 conv on the blocked kernels instead of TVM's generic transposed conv (PP-OCR's detector:
    its two heads 3.9 and 1.0 ms). For a square kernel the conv's rows are ordered ``(a, b, o)``
    and the shuffle is a ``depth_to_space`` (DCR), which moves whole channel blocks when ``O`` is a
    multiple of the SIMD block: ``O`` is padded to one with zero rows (then a ``slice`` keeps the
    ``O`` channels; the planner reads it as the padded layout, no copy) unless ``O`` fits in less
    than one block. Otherwise ``reshape -> transpose -> reshape``. Exact up to float summation
    order."""
    for node in list(graph.iter_nodes()):
        if node.op != "conv_transpose2d":
            continue
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        a = node.attrs
        if x is None or w is None or w.const is None or w.dtype != "float32":
            continue
        if b is not None and b.const is None:
            continue
        c, o, kh, kw = w.shape
        if (
            tuple(a["strides"]) != (kh, kw)
            or any(a["pads"])
            or tuple(a["dilations"]) != (1, 1)
            or any(a["output_padding"])
            or int(a["groups"]) != 1
        ):
            continue
        n, _, h, wd = x.shape
        wc = np.asarray(w.const, np.float32)
        bc = None if b is None else np.asarray(b.const, np.float32)
        if kh == kw and o >= lanes:  # (a, b, o) rows, O padded to whole blocks
            op = -(-o // lanes) * lanes
            wp = np.zeros((kh, kw, op, c), np.float32)
            wp[:, :, :o] = wc.transpose(2, 3, 1, 0)
            bp = None
            if bc is not None:
                bp = np.zeros((kh, kw, op), np.float32)
                bp[:, :, :o] = bc
        else:  # (o, a, b) rows
            op = o
            wp = wc.transpose(1, 2, 3, 0)
            bp = None if bc is None else np.repeat(bc, kh * kw)
        ins = [x, graph.const(np.ascontiguousarray(wp.reshape(-1, c, 1, 1)), name=f"{w.name}_pw")]
        if bp is not None:
            ins.append(graph.const(np.ascontiguousarray(bp.reshape(-1)), name=f"{b.name}_pw"))  # type: ignore[union-attr]
        y = graph.add_node("conv2d", ins, name=f"{node.name}_pointwise", before=node).output
        chain = [node]
        if kh == kw and o >= lanes:
            act = _zero_preserving_user(graph, node.output)
            if act is not None:  # it commutes with the shuffle: before it, the conv's epilogue
                y = graph.add_node(act.op, [y], dict(act.attrs), before=node).output
                chain.append(act)
            y = graph.add_node(
                "depth_to_space", [y], {"blocksize": kh, "mode": "DCR"}, before=node
            ).output
            if op == o:
                out = Node("identity", [y], [], {}, chain[-1].name)
            else:
                attrs = {"starts": (0,), "ends": (o,), "axes": (1,), "steps": (1,)}
                out = Node("slice", [y], [], attrs, chain[-1].name)
        else:
            y = graph.add_node("reshape", [y], {"shape": (n, o, kh, kw, h, wd)}, before=node).output
            y = graph.add_node("transpose", [y], {"perm": (0, 1, 4, 2, 5, 3)}, before=node).output
            out = Node("reshape", [y], [], {"shape": (n, o, h * kh, wd * kw)}, node.name)
        graph.replace_nodes(chain, out)


def _rows_as_width(graph: Graph) -> None:
    """A conv over a one-pixel-wide image with a one-wide kernel (TensorFlow / JAX export a 1-D
    conv as ``(N, C, L, 1)`` with a ``k x 1`` kernel: Magika's file-type model) runs with its rows
    as the width: ``reshape(x, (N, C, 1, L)) -> conv(k on the width) -> reshape(N, O, L', 1)``.
    The blocked kernels tile and vectorize the output row, which is one pixel wide the other way
    round (Magika's 256->512 conv: 5.9 ms, 3.2 ms swapped). Only views are added; the weight is
    the same numbers reshaped ``(O, I, k, 1) -> (O, I, 1, k)``. Exact."""
    for node in list(graph.iter_nodes()):
        if node.op not in ("conv2d", "qconv2d"):
            continue
        x, w = node.inputs[0], node.inputs[1]
        if x is None or w is None or w.const is None or x.type.rank != 4:
            continue
        enc = w.type.encoding
        if enc is not None and not (isinstance(enc, UniformQuant) and enc.axis in (None, 0)):
            continue
        n, c, h, wd = x.shape
        o, i, kh, kw = w.shape
        a = node.attrs
        pt, pl, pb, pr = a["pads"]
        if wd != 1 or kw != 1 or h == 1 or pl or pr:
            continue
        w2 = graph.const(
            np.asarray(w.const).reshape(o, i, 1, kh), name=f"{w.name}_rows", encoding=enc
        )
        xr = graph.add_node("reshape", [x], {"shape": (n, c, 1, h)}, before=node).output
        attrs = dict(a)
        attrs["pads"] = (0, pt, 0, pb)
        attrs["strides"] = (1, a["strides"][0])
        attrs["dilations"] = (1, a["dilations"][0])
        y = graph.add_node(
            node.op, [xr, w2, *node.inputs[2:]], attrs, name=f"{node.name}_rows", before=node
        ).output
        chain = [node]
        while (nxt := _spatially_uniform_user(graph, chain[-1].output)) is not None:
            ins = [y if v is chain[-1].output else v for v in nxt.inputs]
            y = graph.add_node(
                nxt.op, ins, dict(nxt.attrs), name=f"{nxt.name}_rows", before=node
            ).output
            chain.append(nxt)  # bias, activation: before the reshape, so the conv's epilogue
        out_shape = chain[-1].output.shape
        graph.replace_nodes(chain, Node("reshape", [y], [], {"shape": out_shape}, chain[-1].name))


def _spatially_uniform_user(graph: Graph, v: Value) -> Node | None:
    """The one reader of the 4-D ``v`` when it is elementwise and its other inputs are constants
    that do not vary over the two spatial dims (a bias, a per-channel scale, an activation's
    parameters): then it reads the same numbers with H and W swapped."""
    if len(v.uses) != 1 or any(o is v for o in graph.outputs):
        return None
    user = v.uses[0][0]
    if (
        not get_schema(user.op).elementwise
        or len(user.outputs) != 1
        or user.output.shape != v.shape
    ):
        return None
    for u in user.inputs:
        if u is None or u is v:
            continue
        if u.const is None or u.type.rank > 4:
            return None
        full = (1,) * (4 - u.type.rank) + tuple(u.shape)
        if full[2] != 1 or full[3] != 1:
            return None
    return user


def _same(a: np.ndarray, v: Value | None) -> bool:
    return (
        v is not None
        and v.const is not None
        and v.dtype == "float32"
        and np.array_equal(a, v.const)
    )


def _weight_const(graph: Graph, f: FusedOp, w: np.ndarray) -> Value:
    src = f.node.inputs[1]
    assert src is not None
    if _same(w, src):  # nothing folded into it: the weight as it was (and its encoding)
        return src
    arr = np.ascontiguousarray(w, dtype=np.float32)
    v = graph.const(arr, name=f"{src.name}_folded" if f.absorbed else src.name)
    if isinstance(src.type.encoding, Sparse):  # folding scales rows: the zero pattern stays
        v.type = TensorType(v.shape, v.dtype, Sparse.of(arr, src.type.encoding.index_bits))
    return v


class _Planner:
    def __init__(self, graph: Graph, plan: Plan, target: Any, forced: dict[str, int]) -> None:
        self.graph, self.plan, self.target, self.forced = graph, plan, target, forced
        self.lanes = plan.lanes
        self.choices: dict[str, int] = {}

    def chose(self, what: str) -> None:
        self.choices[what] = self.choices.get(what, 0) + 1

    def layout_in(self, v: Value | None) -> BlockedLayout:
        assert v is not None
        return self.plan.layout_of(v) or block_for(v.shape[1], self.lanes)

    # --- kernel choice -----------------------------------------------------------------------
    def conv_kernel(self, f: FusedOp) -> tuple[str, int]:
        if f.kind == "depthwise":
            return "depthwise", 0
        if f.kind == "grouped":
            return self.grouped_kernel(f), 0
        m = self.winograd_tile(f)
        if m:
            self.chose(f"3x3 conv: Winograd F({m}x{m},3x3)")
            return "winograd", m
        if m == 0:
            self.chose("3x3 conv: direct (measured faster than Winograd)")
        return "direct", 0

    def winograd_tile(self, f: FusedOp) -> int | None:
        """2 / 4 where Winograd is forced (``winograd`` pass) or measured faster, 0 where measured
        slower, None where it does not apply. Both layouts must be blocked by ``lanes``."""
        from mcopt.targets.cpu.kernels import winograd_nchwc as wn
        from mcopt.targets.cpu.kernels.epilogue import Epilogue

        lx, lout = self.layout_in(f.node.inputs[0]), block_for(f.weight.shape[0], self.lanes)
        at = f.node.attrs
        if f.node.name in self.forced:  # the winograd pass chose it: blocked by lanes in and out
            if lout.bn != self.lanes:
                oc = f.weight.shape[0]
                self.plan.layouts[id(f.output)] = BlockedLayout(
                    self.lanes, oc, -(-oc // self.lanes) * self.lanes
                )
            return self.forced[f.node.name]
        if lx.bn != self.lanes or lout.bn != self.lanes:
            return None
        x = f.node.inputs[0]
        assert x is not None
        n, _, h, wd = x.shape
        data_shape = (n, lx.padded, h, wd)
        w_shape = (lout.padded, lx.padded, *f.weight.shape[2:])
        if not wn.is_candidate(data_shape, w_shape, at["strides"], at["dilations"], self.lanes):
            return None
        ep = Epilogue(f.bias is not None, f.residual is not None, f.activation, *f.clip)
        try:
            m = wn.choose_tile(
                data_shape, lout.padded, tuple(at["pads"]), ep, self.target, self.lanes
            )
        except OptionError:
            raise
        except Exception as e:  # a failed measurement keeps the direct conv
            log.warning("node %r: Winograd not measured (%s); direct conv", f.node.name, e)
            return None
        measured = wn.mode() == "auto" and wn.measurable_here(self.target)
        return 0 if m is None and measured else m

    def grouped_kernel(self, f: FusedOp) -> str:
        """``grouped`` when the grouped kernel runs at most MAX_GROUPED_WASTE times the MACs and
        (groups <= MAX_DENSE_GROUPS) is estimated faster than the block-diagonal conv."""
        from mcopt.targets.cpu.kernels.grouped import grouped_fit

        groups = int(f.node.attrs["groups"])
        lx = self.layout_in(f.node.inputs[0])
        lout = block_for(f.weight.shape[0], self.lanes)
        x = f.node.inputs[0]
        assert x is not None
        why = grouped_fit(
            (x.shape[0], groups * f.weight.shape[1], *x.shape[2:]),
            f.weight.shape,
            groups,
            (lx.bn, lx.padded // lx.bn, lout.bn, lout.padded // lout.bn),
            f.node.attrs,
            self.target,
            MAX_GROUPED_WASTE,
            1.0 if groups <= MAX_DENSE_GROUPS else None,
            f.out_perm is not None,
            f.in_perm is not None,
        )
        if why is None:
            return "grouped"
        log.info("node %r: grouped kernel not used (%s)", f.node.name, why)
        return "block_diagonal" if groups <= MAX_DENSE_GROUPS else "plain"

    def dense_kernel(self, f: FusedOp) -> str:
        from mcopt.targets.cpu.kernels.sparse import choose_block
        from mcopt.targets.relax.lower_sparse import _wanted

        w_in = f.node.inputs[1]
        clamp = f.activation in (None, "relu", "relu6", "clip")  # what the sparse kernel fuses
        if (
            clamp
            and f.residual is None
            and w_in is not None
            and isinstance(w_in.type.encoding, Sparse)
        ):
            w = np.asarray(f.weight, np.float32)
            if _wanted("dense", w, choose_block(w, self.lanes)):
                self.chose("dense layer: sparse kernel (pruned weight)")
                return "sparse"
        return "dense"

    # --- rewriting ---------------------------------------------------------------------------
    def fuse(self, f: FusedOp) -> None:
        g = self.graph
        w = _weight_const(g, f, f.weight)
        b_in = f.node.inputs[2] if len(f.node.inputs) > 2 else None
        if f.bias is None:
            b = None
        elif _same(f.bias, b_in):
            b = b_in
        else:
            b = g.const(np.asarray(f.bias, np.float32), name=f"{f.node.name}_bias")
        act = f.activation or "none"
        lo, hi = f.clip if act == "clip" else (0.0, 6.0)
        common = {"activation": act, "clip_min": float(lo), "clip_max": float(hi)}
        if act == "hard_sigmoid":
            common.update(alpha=float(f.clip[0]), beta=float(f.clip[1]))
        if act == "leaky_relu":  # slope in alpha, the floor in clip_min
            common.update(alpha=float(f.clip[0]), clip_min=float(f.clip[1]), clip_max=math.inf)
        if act == "prelu":  # one slope per output channel
            assert f.slope is not None
            common.update(slope=tuple(float(v) for v in f.slope))
        if f.kind == "dense":
            op, attrs = "fused_dense", {**common, "kernel": self.dense_kernel(f)}
        else:
            kernel, tile = self.conv_kernel(f)
            at = f.node.attrs
            attrs = {
                **{k: at[k] for k in ("strides", "pads", "dilations", "groups")},
                **common,
                "out_perm": () if f.out_perm is None else tuple(int(p) for p in f.out_perm),
                "in_perm": () if f.in_perm is None else tuple(int(p) for p in f.in_perm),
                "kernel": kernel,
                "tile": tile,
            }
            op = "fused_conv2d"
        from mcopt.ops import get_schema

        attrs = get_schema(op).normalize_attrs(attrs, f.node.name)
        new = Node(op, [f.input, w, b, f.residual], [], attrs, f.node.name)
        g.replace_nodes([f.node, *f.absorbed], new)
        for n in reversed(f.removed):  # a channel shuffle sunk into the next grouped conv
            g.remove_node(n)

    def int8_kernel(self, grp: QGroup) -> str:
        """``int8_depthwise`` for depthwise convs; ``int8_window`` (4 kernel columns per dot
        product instead of 4 channels) where it needs clearly fewer dot products than the
        channel-blocked form, i.e. inputs with few channels (LeNet's 1 and 6: the channel blocks
        would leave most of each dot product on padding), or no more of them on the NCHW image
        (its padded copy then runs along rows and takes the image's quantize, instead of
        interleaving 4 channels per pixel: the 3x3 stems of PP-LCNet / MobileNet-V2 / ShuffleNet
        ~25% faster, ResNet-50's 7x7 one 198 -> 156 us); else the blocked ``int8`` conv."""
        from mcopt.targets.cpu.kernels.int8_conv_nchwc import window_groups

        if grp.kind == "depthwise":
            return "int8_depthwise"
        x, w = grp.node.inputs[0], grp.node.inputs[1]
        assert x is not None and w is not None
        ic, (kh, kw) = w.shape[1], w.shape[2:]
        plain = self.plan.layout_of(x) is None  # the image: read NCHW by the kernel's copy
        lx = self.plan.layout_of(x) or block_for(ic, self.plan.int8_lanes)
        if grp.kind == "grouped":  # a window of input blocks per output block
            g = int(grp.node.attrs["groups"])
            return "int8" if lx.bn % 4 == 0 and g <= MAX_INT8_GROUPS else "plain"
        icp = lx.padded if lx.bn % 4 == 0 else -(-lx.channels // 4) * 4
        blocked_dots = icp // 4 * kh * kw
        window_dots = ic * kh * window_groups(kw)
        if kw > 1 and grp.node.attrs["dilations"][1] == 1:
            if window_dots * 5 < blocked_dots * 4 or (plain and window_dots <= blocked_dots):
                return "int8_window"
        return "int8"

    def fuse_int8(self, grp: QGroup) -> None:
        """A ``qconv2d`` group -> one ``fused_qconv2d`` (see :mod:`.plan_int8`)."""
        from mcopt.ops import get_schema

        node, at = grp.node, grp.node.attrs
        attrs: dict[str, Any] = {k: at[k] for k in _QCONV_ATTRS}
        attrs.update(post_min=grp.post[0], post_max=grp.post[1], post_act=grp.post_act)
        attrs.update(post_alpha=grp.post_alpha)
        if grp.residual is not None and grp.residual.dtype != "float32":
            attrs.update(residual_scale=grp.r_scale, residual_zero_point=grp.r_zp)
        if grp.quantize:
            qa = grp.quantize[0].attrs
            attrs.update(
                q_dtype=qa["dtype"],
                q_scale=float(qa["scale"][0]),
                q_zero_point=int(qa["zero_point"][0]),
            )
        attrs["kernel"] = self.int8_kernel(grp)
        what = {"int8": "blocked int8 kernel", "int8_window": "int8 kernel, 4 columns per dot",
                "int8_depthwise": "blocked int8 kernel",
                "plain": "plain int8 ops"}[attrs["kernel"]]  # fmt: skip
        self.chose(f"int8 {grp.kind}: {what}" + (" + residual" if grp.residual else ""))
        attrs = get_schema("fused_qconv2d").normalize_attrs(attrs, node.name)
        b = node.inputs[2] if len(node.inputs) > 2 else None
        new = Node(
            "fused_qconv2d", [node.inputs[0], node.inputs[1], b, grp.residual], [], attrs, node.name
        )
        deq = [n.inputs[i].producer for n in grp.absorbed if n.op == "add"
               for i in (0, 1) if n.inputs[i] is not None and n.inputs[i].producer is not node]  # fmt: skip
        self.graph.replace_nodes(grp.chain, new)
        for d in deq:  # a dequantize whose only reader was the absorbed add
            if (
                d is not None
                and d.op == "dequantize"
                and d.graph is self.graph
                and not d.output.uses
            ):
                if not any(o is d.output for o in self.graph.outputs):
                    self.graph.remove_node(d)

    def shuffle(self, src: Value, perm: np.ndarray, nodes: list[Node]) -> None:
        new = Node(
            "permute_channels", [src], [], {"perm": tuple(int(p) for p in perm)}, nodes[-1].name
        )
        self.graph.replace_nodes(nodes, new)


def plan_cpu(graph: Graph, target: Any = None, lanes: int | None = None) -> Graph:
    """The planned copy of ``graph`` for the llvm CPU ``target`` (a ``tvm.target.Target``; None:
    this host). ``lanes`` overrides the fp32 SIMD width (tests)."""
    from mcopt.targets.cpu.kernels import cpu_info

    if is_planned(graph):
        return graph
    lanes = lanes or cpu_info(target).lanes
    g = graph.copy()
    forced = _unwinograd(g)
    _pointwise_transposed(g, lanes)
    _rows_as_width(g)
    _flatten_dense(g)
    int8_lanes = int8_narrow = 0
    if any(n.op == "qconv2d" for n in g.nodes):
        int8_lanes, int8_narrow = _int8_lanes(target)
        merge_duplicate_quantize(g)
        sink_quantize(g)
    plan = plan_graph(g, lanes, int8_lanes, int8_narrow)
    planner = _Planner(g, plan, target, forced)
    values = {id(v): v for v in g.values()}
    for f in list(plan.fused.values()):
        planner.fuse(f)
    for grp in list(plan.qgroups.values()):
        planner.fuse_int8(grp)
    layouts = {vid: lay for vid, lay in plan.layouts.items() if lay is not None}
    for src, perm, nodes in list(plan.shuffles.values()):
        planner.shuffle(src, perm, nodes)
    for vid, lay in layouts.items():
        v = values.get(vid)
        if v is not None and len(v.shape) == 4:
            v.type = TensorType(v.shape, v.dtype, v.type.encoding, lay)
    g.metadata[PLANNED] = lanes
    g.metadata[CHOICES] = dict(sorted(planner.choices.items()))
    return g


def _int8_lanes(target: Any) -> tuple[int, int]:
    """The output block of the int8 conv kernel on ``target``: its dot-product instruction's
    lanes (VNNI-512 16, AVX2 8, ``sdot`` 4), 8 for the generic vectorized code; and the narrower
    block of convs with few output channels (8 where the 512-bit form has a 256-bit one,
    :func:`~mcopt.targets.cpu.kernels.int8_intrin.narrow_isa`; else 0)."""
    from mcopt.targets.cpu.kernels.int8_intrin import ISAS, choose_isa, narrow_isa
    from mcopt.targets.cpu.kernels.target_info import host_target

    target = target if target is not None else host_target()
    isa = choose_isa(target, True)
    lanes = ISAS[isa][0] if isa else 8
    narrow = lanes // 2 if lanes > 8 and narrow_isa(isa, lanes // 2, target) else 0
    return lanes, narrow


def planned_choices(graph: Graph) -> dict[str, int]:
    return dict(graph.metadata.get(CHOICES, {}))


__all__ = ["CHOICES", "MAX_GROUPED_WASTE", "PLANNED", "is_planned", "plan_cpu", "planned_choices"]
