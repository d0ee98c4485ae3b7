"""Planned lowering: a planned graph -> Relax with mcopt's CPU kernels, decision-free.

:func:`lower_planned` lowers the graph :func:`mcopt.targets.cpu.planning.plan_cpu` produced (it
plans an unplanned graph first). Every choice is already in the IR; this module is a table keyed
by (op, kernel attribute / layout):

- ``fused_conv2d``: ``kernel`` ``direct`` -> ``emit_conv2d``, ``depthwise`` ->
  ``emit_depthwise_conv2d``, ``winograd`` -> ``emit_winograd_conv2d`` (tile ``tile``),
  ``grouped`` -> ``emit_grouped_conv2d`` (its epilogue runs ``out_perm``, its reduction reads the
  input through ``in_perm``), ``block_diagonal`` ->
  ``emit_conv2d`` over :func:`~mcopt.targets.cpu.plan.block_diagonal` of the weight (rows permuted by
  ``out_perm``, columns by ``in_perm``), ``plain`` -> Relax ``conv2d`` + epilogue ops (``in_perm``
  a ``take`` before it). Weights and bias are padded to the
  output's layout and packed in numpy; a kernel that fails to build (a shape the templates do not
  cover, logged) falls back to the plain ops with the same result;
- ``fused_dense``: ``dense`` -> ``emit_dense``, ``sparse`` -> the block-CSR kernel;
- ``fused_qconv2d``: the blocked int8 kernels (:mod:`mcopt.targets.cpu.lower_int8`);
- an op whose output type carries a :class:`~mcopt.ir.BlockedLayout` (per-channel elementwise ops,
  pooling, channel concat, ``permute_channels``) runs on blocked tensors;
- every other op uses its ordinary lowering from :data:`~mcopt.targets.relax.lower.LOWERINGS` on NCHW.

Layout transforms are emitted at the boundaries between blocked and plain values, once per (value,
layout); a blocked ``(N, C/bn, 1, 1, bn)`` tensor (after global pooling) is already in NCHW order
and only reshaped.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tvm
from tvm import relax

from mcopt.errors import TargetError
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import BlockedLayout
from mcopt.ops.nn import bn_affine
from mcopt.targets.cpu import kernels as K
from mcopt.targets.cpu.lower_dense_chain import dense_chains, lower_dense_chain
from mcopt.targets.cpu.lower_int8 import lower_fused_qconv, lower_fused_qconv_plain
from mcopt.targets.cpu.plan import (
    BLOCKED_BINARY,
    BLOCKED_POOLS,
    BLOCKED_UNARY,
    PASSTHROUGH,
    _channel_const,
    block_diagonal,
    block_for,
)
from mcopt.targets.cpu.planning import plan_cpu, planned_choices
from mcopt.targets.relax.lower import (
    BINARY,
    LOWERINGS,
    LowerContext,
    _emit_outputs,
    _rx_name,
    emit_function,
    graph_params,
    missing_lowerings,
    staged_sum,
)
from mcopt.targets.relax.lower_planned_ops import emit_activation

R = relax.op
log = logging.getLogger(__name__)
Layout = BlockedLayout


class _Values:
    """The Relax expressions of IR values, per layout (``None`` = the IR's own layout)."""

    def __init__(self, ctx: LowerContext, lanes: int) -> None:
        self.ctx = ctx
        self.lanes = lanes
        self.plain: dict[int, relax.Expr] = {}
        self.blocked: dict[int, dict[Layout, relax.Expr]] = {}
        #: kernel fallbacks taken while lowering, e.g. {"conv: plain Relax ops": 1}
        self.choices: dict[str, int] = {}
        #: in-place channel concats (:func:`_inplace_concats`): member value -> (concat node,
        #: first block, total blocks); the concat's buffer so far; the members written into it
        self.into: dict[int, tuple[Node, int, int]] = {}
        self.dest: dict[int, relax.Expr] = {}
        self.written: set[int] = set()
        #: nodes a kernel reading their output runs inline, by output value: quantizes in int8
        #: convs (:func:`_fused_quantizes`), flattens of blocked tensors in int8 dense layers
        #: (:func:`_blocked_flattens`); lowered only when something else asks for that value
        self.deferred: dict[int, Node] = {}
        #: chains of small int8 dense layers run as one kernel, by head node
        #: (:func:`~mcopt.targets.cpu.lower_dense_chain.dense_chains`)
        self.chains: dict[int, list[Node]] = {}

    def chose(self, what: str) -> None:
        self.choices[what] = self.choices.get(what, 0) + 1

    def set_plain(self, v: Value, e: relax.Expr) -> None:
        self.plain[id(v)] = e

    def set_blocked(self, v: Value, e: relax.Expr, lay: Layout) -> None:
        self.blocked.setdefault(id(v), {})[lay] = e

    def plain_of(self, v: Value | None) -> relax.Expr | None:
        if v is None:
            return None
        e = self.plain.get(id(v))
        if e is not None:
            return e
        if v.const is not None:
            e = self.plain[id(v)] = self.ctx.const(v.const)
            return e
        d = self.deferred.get(id(v))
        if d is not None and id(v) not in self.blocked:
            # a kernel that was to run it inline fell back to plain ops (a deferred value that
            # a kernel did compute, e.g. a pool fused into its conv, is blocked: converted below)
            res = LOWERINGS[d.op](self.ctx, d, [self.plain_of(i) for i in d.inputs])
            e = self.plain[id(v)] = _emit_outputs(self.ctx, d, res)[0]
            return e
        lay, src = next(iter(self.blocked[id(v)].items()))
        n, _, h, w = v.shape
        bb = self.ctx.bb
        if h == 1 and w == 1 and not lay.is_padded:  # same memory order: a free reshape
            e = bb.emit(R.reshape(src, tuple(v.shape)), name_hint=_rx_name(v.name) + "_nchw")
        else:
            e = K.emit_from_blocked(bb, src, lay.channels)
        self.plain[id(v)] = e
        return e

    def blocked_of(self, v: Value, want: Layout | None = None) -> tuple[relax.Expr, Layout]:
        """``v`` blocked: in its planned layout (its type's) when ``want`` is None, else ``want``."""
        have = self.blocked.get(id(v), {})
        want = want or v.type.layout or block_for(v.shape[1], self.lanes)
        if want in have:
            return have[want], want
        x = self.plain_of(v)
        e = K.emit_to_blocked(self.ctx.bb, x, want.bn, want.padded)
        self.blocked.setdefault(id(v), {})[want] = e
        return e, want


def _pad_to(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out


def _epilogue(node: Node) -> dict[str, Any]:
    """The kernels' epilogue arguments: the activation and its two parameters (clip bounds, or
    ``(alpha, beta)`` for ``hard_sigmoid``, ``(slope, floor)`` for ``leaky_relu``; see :class:`~mcopt.targets.cpu.kernels.Epilogue`)."""
    at = node.attrs
    act = None if at["activation"] == "none" else str(at["activation"])
    if act == "hard_sigmoid":
        return {"activation": act, "clip": (float(at["alpha"]), float(at["beta"]))}
    if act == "leaky_relu":
        return {"activation": act, "clip": (float(at["alpha"]), float(at["clip_min"]))}
    if act == "prelu":  # the slopes as a kernel argument, padded to the output's channels
        return {"activation": act, "slope": np.asarray(at["slope"], np.float32)}
    return {"activation": act, "clip": (float(at["clip_min"]), float(at["clip_max"]))}


def _arrays(node: Node) -> tuple[np.ndarray, np.ndarray | None, Value | None]:
    """The constant weight and bias (float32) of a fused node and its residual input."""
    ins = list(node.inputs) + [None] * (4 - len(node.inputs))
    w_v, b_v, r_v = ins[1], ins[2], ins[3]
    assert w_v is not None and w_v.const is not None
    if b_v is not None and b_v.const is None:
        raise TargetError(f"node {node.name!r} ({node.op}): the bias must be a constant")
    bias = None if b_v is None else np.asarray(b_v.const, np.float32)
    return np.asarray(w_v.const, np.float32), bias, r_v


def _check_shape(node: Node, y: relax.Expr, lout: Layout) -> None:
    got = LowerContext.shape_of(y)
    if got != lout.blocked_shape(tuple(node.output.shape)):
        raise TargetError(
            f"node {node.name!r}: kernel output {list(got)} does not match the planned "
            f"layout {lout} of {list(node.output.shape)}"
        )


def _lower_fused_conv(vals: _Values, node: Node, target: Any) -> None:
    """A ``fused_conv2d`` with a blocked output on the kernel its ``kernel`` attribute names."""
    at = node.attrs
    kernel = at["kernel"]
    lout = node.output.type.layout
    assert lout is not None
    x_v = node.inputs[0]
    assert x_v is not None
    lin = x_v.type.layout or block_for(x_v.shape[1], vals.lanes)
    plain_in = (  # the RGB image: the direct kernel reads NCHW (one block), no to_nchwc pass
        kernel == "direct"
        and id(x_v) in vals.plain
        and not vals.blocked.get(id(x_v))
        and lin.bn == lin.channels == lin.padded
        and int(at["groups"]) == 1
    )
    if plain_in:
        x, lx = vals.plain_of(x_v), lin
    else:
        x, lx = vals.blocked_of(x_v)
    if kernel == "winograd" and lx.bn != lout.bn:  # the Winograd kernel reads the output's block
        c = x_v.shape[1]
        x, lx = vals.blocked_of(x_v, BlockedLayout(lout.bn, c, -(-c // lout.bn) * lout.bn))
    weight, bias, r_v = _arrays(node)
    res = None if r_v is None else vals.blocked_of(r_v, lout)[0]
    geom = {
        "strides": tuple(at["strides"]),
        "padding": tuple(at["pads"]),
        "dilation": tuple(at["dilations"]),
        "target": target,
        **_epilogue(node),
    }
    pbias = None if bias is None else _pad_to(bias, (lout.padded,))
    slope = geom.get("slope")
    if slope is not None and kernel not in ("grouped", "block_diagonal"):  # padded like the bias
        geom["slope"] = _pad_to(slope, (lx.padded if kernel == "depthwise" else lout.padded,))
    member = vals.into.get(id(node.output))
    into = _into(vals, node) if kernel in INPLACE_CONCAT_KERNELS else None
    in_perm = [int(p) for p in at["in_perm"]] or None
    if in_perm is not None and kernel not in ("grouped", "block_diagonal"):
        raise TargetError(f"kernel {kernel!r} does not read permuted input channels")
    if kernel == "grouped":
        from mcopt.targets.cpu.kernels.relax_ops import emit_grouped_conv2d

        perm = [int(p) for p in at["out_perm"]] or None
        y = emit_grouped_conv2d(
            vals.ctx.bb, x, weight, bias, groups=int(at["groups"]), oc_bn=lout.bn,
            residual=res, out_perm=perm, in_perm=in_perm, **geom,
        )  # fmt: skip
    elif kernel == "block_diagonal":
        dense, b = block_diagonal(weight, int(at["groups"])), bias
        if in_perm is not None:  # conv(x[:, p], w) = conv(x, w') with w'[:, p] = w
            cols = np.zeros_like(dense)
            cols[:, np.asarray(in_perm, np.int64)] = dense
            dense = cols
        if at["out_perm"]:  # the fused channel shuffle permutes the dense rows
            perm = np.asarray(at["out_perm"], np.int64)
            dense, b = dense[perm], None if b is None else b[perm]
            if slope is not None:
                geom["slope"] = slope[perm]
        if geom.get("slope") is not None:
            geom["slope"] = _pad_to(geom["slope"], (lout.padded,))
        dense = _pad_to(dense, (lout.padded, lx.padded, *weight.shape[2:]))
        b = None if b is None else _pad_to(b, (lout.padded,))
        y = K.emit_conv2d(vals.ctx.bb, x, dense, b, residual=res, **geom)
    elif kernel == "depthwise":
        w = _pad_to(weight, (lx.padded, 1, *weight.shape[2:]))
        y = K.emit_depthwise_conv2d(vals.ctx.bb, x, w, pbias, residual=res, into=into, **geom)
    else:
        w = _pad_to(weight, (lout.padded, lx.padded, *weight.shape[2:]))
        if kernel == "winograd":
            for k in ("strides", "dilation", "target"):
                geom.pop(k)
            y = K.emit_winograd_conv2d(
                vals.ctx.bb, x, w, pbias, int(at["tile"]), residual=res, into=into, **geom
            )
        else:
            y = K.emit_conv2d(
                vals.ctx.bb, x, w, pbias, residual=res, into=into, plain_input=plain_in, **geom
            )
    if into is not None:  # written into its concat's buffer: the concat costs no copy
        vals.dest[id(member[0])] = y  # type: ignore[index]
        vals.written.add(id(node.output))
        return
    _check_shape(node, y, lout)
    vals.set_blocked(node.output, y, lout)


def _lower_fused_dense(vals: _Values, node: Node, target: Any) -> None:
    ctx = vals.ctx
    x = vals.plain_of(node.inputs[0])
    weight, bias, r_v = _arrays(node)
    ep = _epilogue(node)
    if node.attrs["kernel"] == "sparse":
        from mcopt.targets.relax.lower_sparse import emit_sparse_dense

        enc = node.inputs[1].type.encoding  # type: ignore[union-attr]
        y = emit_sparse_dense(ctx, x, weight, bias, encoding=enc, **ep)
        vals.set_plain(node.output, ctx.emit(y))
        return
    y = K.emit_dense(ctx.bb, x, weight, bias, residual=vals.plain_of(r_v), target=target, **ep)
    vals.set_plain(node.output, y)


def _lower_fused_plain(vals: _Values, node: Node) -> None:
    """A ``fused_conv2d`` as plain Relax ops (same folded epilogue)."""
    ctx = vals.ctx
    at = node.attrs
    x = vals.plain_of(node.inputs[0])
    if at["in_perm"]:  # a channel shuffle sunk into the conv's input
        x = ctx.emit(R.take(x, ctx.const(np.asarray(at["in_perm"], np.int64)), axis=1))
    weight, bias, r_v = _arrays(node)
    y = ctx.emit(
        R.nn.conv2d(
            x,
            ctx.const(weight),
            strides=tuple(at["strides"]),
            padding=tuple(at["pads"]),
            dilation=tuple(at["dilations"]),
            groups=int(at["groups"]),
        )
    )
    if bias is not None:
        y = ctx.emit(R.add(y, ctx.const(bias.reshape(1, -1, 1, 1))))
    if r_v is not None:
        y = ctx.emit(R.add(y, vals.plain_of(r_v)))
    act = emit_activation(ctx, node, y)
    y = y if act is y else ctx.emit(act)
    if at["out_perm"]:  # a channel shuffle absorbed by a grouped group
        y = ctx.emit(R.take(y, ctx.const(np.asarray(at["out_perm"], np.int64)), axis=1))
    vals.set_plain(node.output, y)


def _packed_channel_const(ctx: LowerContext, v: Value | np.ndarray, lay: Layout) -> relax.Expr:
    vec = v if isinstance(v, np.ndarray) else _channel_const(v, lay.channels, 4)
    assert vec is not None
    full = np.zeros(lay.padded, dtype=np.float32)
    full[: lay.channels] = vec
    return ctx.const(full.reshape(1, lay.padded // lay.bn, 1, 1, lay.bn))


def _blocked_pool_kernel(
    bb: Any, node: Node, x: relax.Expr, lay: Layout, into: Any = None
) -> relax.Expr | None:
    """max_pool / avg_pool on a blocked tensor with mcopt's pool kernel (no padded copy); None
    where the kernel does not apply (the Relax pool op is used instead). ``into``: the kernel
    writes its blocks of a concat's buffer (:func:`~.kernels.relax_ops.call_kernel`)."""
    from mcopt.targets.cpu.kernels.pool import pool2d_nchwc
    from mcopt.targets.cpu.kernels.relax_ops import _call

    at = node.attrs
    dtype = str(x.ty.dtype)
    if node.op not in ("max_pool", "avg_pool") or (dtype != "float32" and node.op != "max_pool"):
        return None  # max pools of any dtype (8-bit ones in int8 graphs), float average pools
    in_shape = LowerContext.shape_of(x)
    out_shape = lay.blocked_shape(tuple(node.output.shape))
    func = pool2d_nchwc(
        in_shape,
        out_shape[2:4],
        "max" if node.op == "max_pool" else "avg",
        at["kernel"],
        at["strides"],
        at["pads"],
        at.get("dilations", (1, 1)),
        bool(at.get("count_include_pad", 0)),
        dtype,
    )
    return _call(bb, func, f"{node.op}_nchwc", [x], out_shape, dtype, into)


def _lower_blocked_node(vals: _Values, node: Node, lay: Layout) -> None:
    """A per-channel op on blocked tensors (the plan put its output in ``lay``)."""
    ctx, bb = vals.ctx, vals.ctx.bb
    op = node.op
    ins = [v for v in node.inputs if v is not None]
    out = node.output
    if op in PASSTHROUGH:
        x, _ = vals.blocked_of(ins[0], lay)
        vals.set_blocked(out, x, lay)
        return
    if op in BLOCKED_UNARY or op in ("quantize", "dequantize"):  # the latter per-tensor
        x, _ = vals.blocked_of(ins[0], lay)
        y = LOWERINGS[op](ctx, node, [x])
    elif op in BLOCKED_BINARY:
        fn = BINARY[op]
        a_v, b_v = node.inputs[0], node.inputs[1]
        assert a_v is not None and b_v is not None
        a = _packed_channel_const(ctx, a_v, lay) if a_v.const is not None else None
        b = _packed_channel_const(ctx, b_v, lay) if b_v.const is not None else None
        a = a if a is not None else vals.blocked_of(a_v, lay)[0]
        b = b if b is not None else vals.blocked_of(b_v, lay)[0]
        y = fn(a, b)
    elif op == "prelu":  # per-channel slopes, zero in the padding channels
        x, _ = vals.blocked_of(ins[0], lay)
        slope = _packed_channel_const(ctx, ins[1], lay)
        y = R.where(R.greater(x, ctx.const(np.float32(0))), x, R.multiply(x, slope))
    elif op in BLOCKED_POOLS:
        x, _ = vals.blocked_of(ins[0], lay)
        at = node.attrs
        if op == "global_avg_pool":
            y = staged_sum(ctx.emit, x, [2, 3], True, mean=True)
        elif op == "global_max_pool":
            y = R.max(x, axis=[2, 3], keepdims=True)
        elif (y := _blocked_pool_kernel(bb, node, x, lay, _into(vals, node))) is not None:
            if id(out) in vals.into:  # written into its concat's buffer
                vals.dest[id(vals.into[id(out)][0])] = y
                vals.written.add(id(out))
                return
            vals.set_blocked(out, y, lay)
            return
        else:
            common = {
                "pool_size": tuple(at["kernel"]),
                "strides": tuple(at["strides"]),
                "padding": tuple(at["pads"]),
                "ceil_mode": bool(at.get("ceil_mode", 0)),
                "layout": f"NCHW{lay.bn}c",
            }
            if op == "max_pool":
                y = R.nn.max_pool2d(x, dilation=tuple(at.get("dilations", (1, 1))), **common)
            else:
                y = R.nn.avg_pool2d(
                    x, count_include_pad=bool(at.get("count_include_pad", 0)), **common
                )
    elif op == "depth_to_space":  # DCR on (N, bs*bs*O/bn, H, W, bn): whole blocks move
        x, lx = vals.blocked_of(ins[0], ins[0].type.layout)
        n, cb, h, w, bn = (int(d) for d in LowerContext.shape_of(x))
        bs = int(node.attrs["blocksize"])
        t = bb.emit(R.reshape(x, (n, bs, bs, cb // (bs * bs), h, w, bn)))
        t = bb.emit(R.permute_dims(t, (0, 3, 4, 1, 5, 2, 6)))
        y = R.reshape(t, (n, cb // (bs * bs), h * bs, w * bs, bn))
    elif op == "slice":  # a channel prefix over zeros (plan._zero_channel_tail): no data moves
        x, _ = vals.blocked_of(ins[0], ins[0].type.layout)
        vals.set_blocked(out, x, lay)
        return
    elif op == "upsample_nearest":  # (N, C/bn, H, W, bn): repeat along H and W
        x, _ = vals.blocked_of(ins[0], lay)
        sh, sw = (int(s) for s in node.attrs["scales"])
        y = bb.emit(R.repeat(x, sh, axis=2)) if sh > 1 else x
        y = R.repeat(y, sw, axis=3) if sw > 1 else y
    elif op == "batch_norm":
        x, _ = vals.blocked_of(ins[0], lay)
        stats = [np.reshape(np.asarray(v.const), -1) for v in node.inputs[1:5]]  # type: ignore[union-attr]
        k, c = bn_affine(*stats, node.attrs["epsilon"])
        y = R.add(
            R.multiply(x, _packed_channel_const(ctx, k, lay)), _packed_channel_const(ctx, c, lay)
        )
    elif op == "permute_channels":
        x, _ = vals.blocked_of(ins[0], lay)
        perm = [int(p) for p in node.attrs["perm"]] + list(range(lay.channels, lay.padded))
        y = K.emit_permute_channels(bb, x, perm)  # padding channels map to themselves
        vals.set_blocked(out, y, lay)
        return
    elif op == "concat" and any(id(v) in vals.into for v in ins):
        from mcopt.targets.cpu.kernels.relax_ops import emit_copy_into

        dest = vals.dest.get(id(node))
        for v in ins:  # a member no kernel wrote in place (a fallback): copied into the buffer
            if id(v) not in vals.written:
                _, offset, total = vals.into[id(v)]
                dest = emit_copy_into(
                    bb, vals.blocked_of(v, v.type.layout)[0], (dest, total, offset)
                )
        vals.set_blocked(out, dest, lay)
        return
    elif op == "concat":
        got = [vals.blocked_of(v, v.type.layout) for v in ins]
        aligned = all(lx.bn == lay.bn and not lx.is_padded for _, lx in got[:-1])
        if (
            aligned
            and got[-1][1].bn == lay.bn
            and got[-1][1].padded - got[-1][1].channels == (lay.padded - lay.channels)
        ):  # the blocks line up, any padding the last input's
            y = R.concat([e for e, _ in got], axis=1)
        else:  # padded inputs or other blocks: a gather by logical channel, staying blocked
            chans = [lx.channels for _, lx in got]
            y = K.emit_concat_channels(bb, [e for e, _ in got], chans, lay.bn, lay.padded)
            vals.set_blocked(out, y, lay)
            return
    else:  # pragma: no cover - the plan only marks the ops above
        raise TargetError(f"node {node.name!r} ({op}): no blocked lowering")
    e = bb.emit(y, name_hint=_rx_name(out.name))
    if LowerContext.shape_of(e) != lay.blocked_shape(tuple(out.shape)):
        raise TargetError(
            f"node {node.name!r} ({op}): blocked result {list(LowerContext.shape_of(e))} does "
            f"not match {lay} of {list(out.shape)}"
        )
    vals.set_blocked(out, e, lay)


def _into(vals: _Values, node: Node) -> Any:
    """Where ``node``'s kernel writes when its output is a member of an in-place concat
    (:func:`_inplace_concats`): ``(dest, total, offset)``, else None."""
    member = vals.into.get(id(node.output))
    if member is None:
        return None
    cat, offset, total = member
    return (vals.dest.get(id(cat)), total, offset)


#: the kernels that can write their output into a channel concat's buffer (:func:`_inplace_concats`):
#: ``fused_conv2d``'s and ``fused_qconv2d``'s
INPLACE_CONCAT_KERNELS = ("direct", "winograd", "depthwise")
INPLACE_CONCAT_QKERNELS = ("int8", "int8_window", "int8_depthwise")
#: and the pools on mcopt's pool kernel (PP-HGNet's stem: ``concat(max_pool(x), conv(conv(x)))``)
INPLACE_CONCAT_POOLS = ("max_pool", "avg_pool")


def _inplace_concats(graph: Graph) -> dict[int, tuple[Node, int, int]]:
    """Channel concats whose inputs the kernels can write in place: a blocked concat of batch 1
    whose inputs are all ``fused_conv2d`` / ``fused_qconv2d`` outputs on a kernel of
    :data:`INPLACE_CONCAT_KERNELS` / :data:`INPLACE_CONCAT_QKERNELS` or pools
    (:data:`INPLACE_CONCAT_POOLS`), in the concat's block,
    read by the concat only, unpadded but for the last (whose padding is then the concat's).
    Each such conv writes its channel blocks of the concat's buffer (SqueezeNet's fire modules:
    the 1x1 and 3x3 expand convs); the concat itself then moves no data. Mechanical (always a
    copy less), so the lowering does it. ``{id(input value): (concat, first block, blocks)}``."""
    found: dict[int, tuple[Node, int, int]] = {}
    outs = {id(v) for v in graph.outputs}
    kernels = {"fused_conv2d": INPLACE_CONCAT_KERNELS, "fused_qconv2d": INPLACE_CONCAT_QKERNELS}
    for node in graph.nodes:
        lay = node.output.type.layout if len(node.outputs) == 1 else None
        if node.op != "concat" or lay is None or node.output.shape[0] != 1:
            continue
        ins = list(node.inputs)
        if any(v is None for v in ins) or len({id(v) for v in ins}) != len(ins):
            continue
        offsets, total = [], 0
        for i, v in enumerate(ins):
            lv, p = v.type.layout, v.producer  # type: ignore[union-attr]
            if (
                lv is None
                or lv.bn != lay.bn
                or (lv.is_padded and i < len(ins) - 1)
                or p is None
                or (
                    p.attrs.get("kernel") not in kernels.get(p.op, ())
                    and p.op not in INPLACE_CONCAT_POOLS
                )
                or len(v.uses) != 1  # type: ignore[union-attr]
                or id(v) in outs
            ):
                break
            offsets.append(total)
            total += lv.padded // lv.bn
        else:
            if total * lay.bn != lay.padded:
                continue
            for v, off in zip(ins, offsets):
                found[id(v)] = (node, off, total)
    return found


#: int8 conv kernels whose padded copy quantizes a float NCHW input (:func:`_fused_quantizes`):
#: the window form, whose copy runs along image rows; the blocked form's copy interleaves 4
#: channels per pixel, so there the quantize would run on 4-lane gathers (PP-LCNet's 224x224 stem:
#: 38 + 9 us with the quantize pass, 64 us inline)
INLINE_QUANTIZE_KERNELS = ("int8_window",)


def _fused_quantizes(graph: Graph, chain_heads: frozenset[int] = frozenset()) -> dict[int, Node]:
    """Per-tensor ``quantize`` nodes of a plain float tensor (the image) read only by blocked int8
    convs on a kernel of :data:`INLINE_QUANTIZE_KERNELS` that read it plain (no groups) with the
    same zero point: those convs quantize the float tensor in their padded copy
    (``int8_conv2d_nchwc(in_quant=...)``, the same expression), and the quantize pass and its
    8-bit copy of the image are not emitted (LeNet-5: a kernel call and a copy less). The same for
    a float input read only by the head of a dense chain (``chain_heads``: node ids,
    :func:`~mcopt.targets.cpu.lower_dense_chain.dense_chains`), whose kernel quantizes its
    input (an MLP's). Mechanical, like :func:`_inplace_concats`. ``{id(quantized value):
    quantize node}``."""
    found: dict[int, Node] = {}
    outs = {id(v) for v in graph.outputs}
    for node in graph.nodes:
        if node.op != "quantize" or len(node.attrs["scale"]) != 1:
            continue
        x, q = node.inputs[0], node.output
        if (
            x is None
            or x.const is not None
            or x.dtype != "float32"
            or x.type.layout is not None
            or q.type.layout is not None
            or q.dtype not in ("uint8", "int8")
            or id(q) in outs
            or not q.uses
        ):
            continue
        zp = int(node.attrs["zero_point"][0])
        if all(_quantizes_inline(u, i, zp, len(x.shape), q.dtype, chain_heads) for u, i in q.uses):
            found[id(q)] = node
    return found


def _quantizes_inline(
    u: Node, i: int, zp: int, rank: int, q_dtype: str, chain_heads: frozenset[int]
) -> bool:
    """Whether ``u``, reading a quantized float tensor (rank ``rank``, zero point ``zp``) as its
    input ``i``, quantizes it itself (:func:`_fused_quantizes`)."""
    if i != 0 or u.op not in ("qdense", "fused_qconv2d"):
        return False  # e.g. a dequantize or a qadd reading the image's quantize (PP-OCR's cls net)
    if int(u.attrs["x_zero_point"]) != zp:
        return False
    if u.op == "qdense":
        return id(u) in chain_heads and q_dtype == "uint8"
    return (
        u.op == "fused_qconv2d"
        and rank == 4
        and u.attrs["kernel"] in INLINE_QUANTIZE_KERNELS
        and int(u.attrs["groups"]) == 1
        and u.output.type.layout is not None
    )


def _blocked_flattens(graph: Graph) -> dict[int, Node]:
    """``flatten`` nodes (axis 1) of a blocked 4-D tensor of batch 1 read only (as the data) by
    ``qdense`` nodes with a constant weight: each dense reads the blocked tensor in its memory
    order with its weight's columns permuted to match (:func:`_lower_blocked_qdense`), so neither
    the flatten's unblocking copy nor a reshape is emitted (LeNet-5's first dense layer).
    ``{id(flattened value): flatten node}``."""
    found: dict[int, Node] = {}
    outs = {id(v) for v in graph.outputs}
    for node in graph.nodes:
        if node.op != "flatten" or int(node.attrs.get("axis", 1)) != 1:
            continue
        x, f = node.inputs[0], node.output
        if x is None or x.type.layout is None or len(x.shape) != 4 or x.shape[0] != 1:
            continue
        if id(f) in outs or not f.uses:
            continue
        if all(
            u.op == "qdense"
            and i == 0
            and u.inputs[1] is not None
            and u.inputs[1].const is not None
            for u, i in f.uses
        ):
            found[id(f)] = node
    return found


def _lower_blocked_qdense(vals: _Values, node: Node, flat: Node) -> None:
    """A ``qdense`` of ``flatten(x)`` with ``x`` blocked ``(1, C/bn, H, W, bn)``: the dense over
    ``x``'s elements in memory order, the weight's column ``c*H*W + h*W + w`` moved to ``((c //
    bn)*H*W + h*W + w)*bn + c % bn`` (zero columns for padding channels). Exact: the same products
    summed (in int32)."""
    from mcopt.targets.cpu.lower_dense_chain import blocked_flatten_weight
    from mcopt.targets.relax.lower_quant import _weights, emit_qdense

    x_v = flat.inputs[0]
    assert x_v is not None
    x, lay = vals.blocked_of(x_v)
    w, b = _weights(node)
    wb = blocked_flatten_weight(w, tuple(x_v.shape), lay)
    y = emit_qdense(vals.ctx, node, x, wb, b, x_view=lay.blocked_shape(tuple(x_v.shape)))
    vals.set_plain(node.output, vals.ctx.emit(y))


def lower_planned(graph: Graph, target: Any, func_name: str = "main") -> tvm.IRModule:
    """Lower ``graph`` (planned by :func:`~mcopt.targets.cpu.planning.plan_cpu` first unless it
    is) with the kernels for llvm ``target`` (a ``tvm.target.Target``)."""
    info = K.cpu_info(target)
    graph = plan_cpu(graph, target, info.lanes)
    missing_lowerings(graph)
    ctx = LowerContext(relax.BlockBuilder(), graph, target)
    params = graph_params(graph)
    vals = _Values(ctx, int(graph.metadata.get("mcopt.plan.lanes", info.lanes)))
    vals.into = _inplace_concats(graph)
    vals.chains = dense_chains(graph, target)
    heads = frozenset(vals.chains)
    vals.deferred = {**_fused_quantizes(graph, heads), **_blocked_flattens(graph)}
    for v, p in zip(graph.inputs, params):
        vals.set_plain(v, p)
    mod = emit_function(
        ctx, func_name, params, lambda node: _lower_node(vals, node, target), vals.plain_of
    )
    choices = planned_choices(graph)
    for what, n in vals.choices.items():
        choices[what] = choices.get(what, 0) + n
    if choices:
        mod = mod.with_attr("mcopt.choices", {k: int(v) for k, v in sorted(choices.items())})
    return mod


#: planned conv op -> (its kernel lowering, its plain lowering, its name in a warning, the choice
#: counted when the kernel does not build)
_CONV_KERNELS: dict[str, tuple[Any, Any, str, str]] = {
    "fused_conv2d": (_lower_fused_conv, _lower_fused_plain, "conv",
                     "conv: plain Relax ops (kernel not built)"),
    "fused_qconv2d": (lower_fused_qconv, lower_fused_qconv_plain, "int8",
                      "int8 conv: plain ops (kernel not built)"),
}  # fmt: skip


def _lower_softmax(vals: _Values, node: Node) -> bool:
    """A float32 softmax over the last axis as the vector kernel (:mod:`.kernels.softmax`), on a
    (rows, n) view of its input; False for the others (the generic lowering)."""
    from mcopt.targets.cpu.kernels.relax_ops import call_kernel
    from mcopt.targets.cpu.kernels.softmax import softmax_rows

    x_v = node.inputs[0]
    if x_v is None or x_v.dtype != "float32" or not x_v.shape:
        return False
    shape = tuple(int(d) for d in x_v.shape)
    if int(node.attrs.get("axis", -1)) % len(shape) != len(shape) - 1:
        return False
    rows, n = int(np.prod(shape[:-1])), shape[-1]
    bb = vals.ctx.bb
    x = bb.emit(R.reshape(vals.plain_of(x_v), (rows, n)))
    y = call_kernel(bb, softmax_rows(rows, n), "softmax_rows", [x], (rows, n), "float32")
    vals.set_plain(node.output, bb.emit(R.reshape(y, shape)))
    return True


def _lower_node(vals: _Values, node: Node, target: Any) -> None:
    if len(node.outputs) == 1 and id(node.output) in vals.deferred:
        return  # a quantize the int8 convs reading its output run inline
    conv = _CONV_KERNELS.get(node.op)
    if conv is not None:  # a planned conv: its kernel, or the plain ops where it does not build
        kernel_fn, plain_fn, what, fallback = conv
        if node.attrs["kernel"] != "plain" and node.output.type.layout is not None:
            try:
                kernel_fn(vals, node, target)
                return
            except Exception as e:  # a shape the kernels do not cover: plain ops, same result
                log.warning("node %r: %s kernel not used (%s); plain path", node.name, what, e)
                vals.chose(fallback)
        plain_fn(vals, node)
        return
    if node.op == "fused_dense":
        _lower_fused_dense(vals, node, target)
        return
    x_v = node.inputs[0] if node.inputs else None
    flat = None if x_v is None or id(x_v) in vals.plain else vals.deferred.get(id(x_v))
    is_flat = flat is not None and flat.op == "flatten"
    chain = vals.chains.get(id(node))
    if chain is not None:
        lower_dense_chain(vals, chain, flat if is_flat else None)
        return
    if node.op == "qdense" and is_flat:
        _lower_blocked_qdense(vals, node, flat)
        return
    lay = node.output.type.layout if len(node.outputs) == 1 else None
    if lay is not None:
        _lower_blocked_node(vals, node, lay)
        return
    if node.op == "softmax" and _lower_softmax(vals, node):
        return
    if node.op in ("lstm", "qlstm"):  # one dense for the input projection, one recurrence kernel
        from mcopt.targets.cpu.lower_lstm import emit_lstm

        args = [vals.plain_of(v) for v in node.inputs]
        outs = _emit_outputs(vals.ctx, node, emit_lstm(vals.ctx, node, args, vals.lanes, target))
        for v, e in zip(node.outputs, outs):
            vals.set_plain(v, e)
        return
    args = [vals.plain_of(v) for v in node.inputs]
    outs = _emit_outputs(vals.ctx, node, LOWERINGS[node.op](vals.ctx, node, args))
    for v, e in zip(node.outputs, outs):
        vals.set_plain(v, e)


__all__ = ["lower_planned"]
