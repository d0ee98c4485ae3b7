"""Planned lowering: mcopt IR -> Relax with mcopt's CPU kernels, fused epilogues, blocked layouts.

:func:`lower_planned` follows a :class:`~mcopt.targets.plan.Plan` (fusion groups and home
layouts, decided TVM-free in :mod:`mcopt.targets.plan`):

- a fused ``conv``/``depthwise`` group becomes one ``emit_conv2d`` / ``emit_depthwise_conv2d`` call
  (scheduled NCHW[x]c PrimFunc, weights folded and packed in numpy, epilogue
  ``act(acc + bias (+ residual))``); a ``grouped`` conv one ``emit_grouped_conv2d`` (the windowed
  reduction kernel of :mod:`~mcopt.targets.kernels.grouped`), or, where the conv over the
  block-diagonal weight is estimated faster (``groups <= MAX_DENSE_GROUPS``), an ``emit_conv2d``
  over that weight (a channel shuffle the plan absorbed into the group runs in the grouped
  kernel's epilogue, permutes the block-diagonal weight's rows, or is a ``take`` on the plain
  path); a ``dense`` group one ``emit_dense``; any conv whose
  kernel cannot be built (with a logged warning) the plain Relax conv with the same folded weights
  and epilogue ops;
- per-channel ops on a blocked tensor (elementwise with per-channel constants, pooling with
  ``layout="NCHW{bn}c"``, channel concat, channel shuffle) run on the blocked tensor;
- every other op uses its ordinary lowering from :data:`~mcopt.targets.lower.LOWERINGS` on NCHW
  inputs. Layout transforms are emitted on demand at the boundaries and cached per (value,
  layout), so a value is converted at most once per layout; a blocked ``(N, C/bn, 1, 1, bn)``
  tensor (after global pooling) is already in NCHW order and only reshaped.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tvm
from tvm import relax

from mcopt.errors import OptionError, TargetError
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import Sparse
from mcopt.targets import kernels as K
from mcopt.targets.lower import (
    LOWERINGS,
    LowerContext,
    _emit_outputs,
    _first_line,
    _rx_name,
    missing_lowerings,
)
from mcopt.targets.plan import (
    BLOCKED_BINARY,
    BLOCKED_POOLS,
    BLOCKED_UNARY,
    MAX_DENSE_GROUPS,
    PASSTHROUGH,
    FusedOp,
    Layout,
    Plan,
    _channel_const,
    block_diagonal,
    block_for,
    plan_graph,
)

R = relax.op
log = logging.getLogger(__name__)

#: a grouped conv whose kernel would execute more than this many times its MACs (tiny groups in
#: 8/16-lane blocks) is not run by the grouped kernel (see ``_lower_fused_grouped``)
MAX_GROUPED_WASTE = 8.0


class _Values:
    """The Relax expressions of IR values, per layout (``None`` = the IR's own layout)."""

    def __init__(self, ctx: LowerContext, lanes: int) -> None:
        self.ctx = ctx
        self.lanes = lanes
        self.plain: dict[int, relax.Expr] = {}
        self.blocked: dict[int, dict[Layout, relax.Expr]] = {}
        self.home: dict[int, Layout] = {}
        #: what the lowering chose where it had a choice, e.g. {"3x3 conv: winograd F(4x4)": 6}
        self.choices: dict[str, int] = {}

    def chose(self, what: str) -> None:
        self.choices[what] = self.choices.get(what, 0) + 1

    def set_plain(self, v: Value, e: relax.Expr) -> None:
        self.plain[id(v)] = e

    def set_blocked(self, v: Value, e: relax.Expr, lay: Layout) -> None:
        self.blocked.setdefault(id(v), {})[lay] = e
        self.home[id(v)] = lay

    def home_layout(self, v: Value) -> Layout | None:
        return self.home.get(id(v))

    def plain_of(self, v: Value | None) -> relax.Expr | None:
        if v is None:
            return None
        if v.const is not None:
            e = self.plain.get(id(v))
            if e is None:
                e = self.plain[id(v)] = self.ctx.const(v.const)
            return e
        e = self.plain.get(id(v))
        if e is not None:
            return e
        lay = self.home[id(v)]
        src = self.blocked[id(v)][lay]
        n, _, h, w = v.shape
        bb = self.ctx.bb
        if h == 1 and w == 1 and not lay.is_padded:  # same memory order: a free reshape
            e = bb.emit(R.reshape(src, tuple(v.shape)), name_hint=_rx_name(v.name) + "_nchw")
        else:
            e = K.emit_from_blocked(bb, src, lay.channels)
        self.plain[id(v)] = e
        return e

    def blocked_of(self, v: Value, want: Layout | None = None) -> tuple[relax.Expr, Layout]:
        """``v`` blocked: in its home layout when ``want`` is None, else in ``want``."""
        have = self.blocked.get(id(v), {})
        home = self.home.get(id(v))
        if want is None:
            if home is not None:
                return have[home], home
            want = block_for(v.shape[1], self.lanes)
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


def _lower_fused_conv(vals: _Values, f: FusedOp, target: Any) -> None:
    node = f.node
    at = node.attrs
    x_v = node.inputs[0]
    assert x_v is not None
    x, lx = vals.blocked_of(x_v)
    geom = {
        "strides": tuple(at["strides"]),
        "padding": tuple(at["pads"]),
        "dilation": tuple(at["dilations"]),
        "activation": f.activation,
        "clip": f.clip,
        "target": target,
    }
    oc = f.weight.shape[0]
    if f.kind == "grouped":
        _lower_fused_grouped(vals, f, x, lx, geom)
        return
    if f.kind == "depthwise":
        lout = lx
        w = _pad_to(f.weight, (lx.padded, 1, *f.weight.shape[2:]))
    else:
        lout = block_for(oc, vals.lanes)
        w = _pad_to(f.weight, (lout.padded, lx.padded, *f.weight.shape[2:]))
    bias = None if f.bias is None else _pad_to(f.bias, (lout.padded,))
    res = None
    if f.residual is not None:
        res, _ = vals.blocked_of(f.residual, lout)
    m = _winograd_tile(f, w, x, lx, lout, res is not None, target, vals.lanes)
    if m == 0:
        vals.chose("3x3 conv: direct (measured faster than Winograd)")
    if m:
        vals.chose(f"3x3 conv: Winograd F({m}x{m},3x3)")
        geom.pop("strides"), geom.pop("dilation"), geom.pop("target")
        y = K.emit_winograd_conv2d(vals.ctx.bb, x, w, bias, m, residual=res, **geom)
    else:
        emit = K.emit_depthwise_conv2d if f.kind == "depthwise" else K.emit_conv2d
        y = emit(vals.ctx.bb, x, w, bias, residual=res, **geom)
    got = LowerContext.shape_of(y)
    if got != lout.blocked_shape(tuple(f.output.shape)):
        raise TargetError(
            f"node {node.name!r}: kernel output {list(got)} does not match the planned "
            f"layout {lout} of {list(f.output.shape)}"
        )
    vals.set_blocked(f.output, y, lout)


def _winograd_tile(
    f: FusedOp,
    w: np.ndarray,
    x: relax.Expr,
    lx: Layout,
    lout: Layout,
    residual: bool,
    target: Any,
    lanes: int,
) -> int | None:
    """The Winograd tile (2 / 4) for a fused 3x3 stride-1 conv where it measured faster than
    the direct template on this target (:func:`~mcopt.targets.kernels.winograd_nchwc.choose_tile`),
    0 where it was measured slower, None where it does not apply (or is switched off). Needs both
    layouts blocked by ``lanes`` (the kernel's vectors run over channels)."""
    from mcopt.targets.kernels import winograd_nchwc as wn
    from mcopt.targets.kernels.epilogue import Epilogue

    if f.kind != "conv" or lx.bn != lanes or lout.bn != lanes:
        return None
    at = f.node.attrs
    n, _, h, wd, _ = LowerContext.shape_of(x)
    data_shape = (n, lx.padded, h, wd)
    if not wn.is_candidate(data_shape, w.shape, at["strides"], at["dilations"], lanes):
        return None
    ep = Epilogue(f.bias is not None, residual, f.activation, *f.clip)
    try:
        m = wn.choose_tile(data_shape, w.shape[0], tuple(at["pads"]), ep, target, lanes)
    except OptionError:
        raise
    except Exception as e:  # a failed measurement keeps the direct conv
        log.warning("node %r: Winograd not measured (%s); direct conv", f.node.name, _first_line(e))
        return None
    return 0 if m is None and wn.mode() == "auto" and wn.measurable_here(target) else m


def _lower_fused_grouped(
    vals: _Values, f: FusedOp, x: relax.Expr, lx: Layout, geom: dict[str, Any]
) -> None:
    """A ``grouped`` group: the grouped kernel when it executes at most ``MAX_GROUPED_WASTE``
    times the MACs and (``groups <= MAX_DENSE_GROUPS``) is estimated faster than the blocked conv
    over the block-diagonal weight, else that conv (``groups <= MAX_DENSE_GROUPS``); otherwise
    raises (the caller takes the plain path)."""
    from mcopt.targets.kernels.relax_ops import emit_grouped_conv2d

    node = f.node
    groups = int(node.attrs["groups"])
    oc = f.weight.shape[0]
    lout = block_for(oc, vals.lanes)
    res = None
    if f.residual is not None:
        res, _ = vals.blocked_of(f.residual, lout)
    bias = None if f.bias is None else f.bias.astype(np.float32)
    w = f.weight.astype(np.float32)
    try:
        y = emit_grouped_conv2d(
            vals.ctx.bb,
            x,
            w,
            bias,
            groups=groups,
            oc_bn=lout.bn,
            residual=res,
            max_waste=MAX_GROUPED_WASTE,
            max_relative_cost=1.0 if groups <= MAX_DENSE_GROUPS else None,
            out_perm=None if f.out_perm is None else [int(p) for p in f.out_perm],
            **geom,
        )
    except ValueError as e:
        if groups > MAX_DENSE_GROUPS:
            raise
        log.info("node %r: grouped kernel not used (%s); block-diagonal conv", node.name, e)
        dense, b = block_diagonal(w, groups), bias
        if f.out_perm is not None:  # the fused channel shuffle permutes the dense rows
            dense, b = dense[f.out_perm], None if b is None else b[f.out_perm]
        dense = _pad_to(dense, (lout.padded, lx.padded, *w.shape[2:]))
        b = None if b is None else _pad_to(b, (lout.padded,))
        y = K.emit_conv2d(vals.ctx.bb, x, dense, b, residual=res, **geom)
    got = LowerContext.shape_of(y)
    if got != lout.blocked_shape(tuple(f.output.shape)):
        raise TargetError(
            f"node {node.name!r}: kernel output {list(got)} does not match the planned "
            f"layout {lout} of {list(f.output.shape)}"
        )
    vals.set_blocked(f.output, y, lout)


def _lower_fused_plain(vals: _Values, f: FusedOp, target: Any) -> None:
    """``dense`` through its kernel; ``grouped`` conv as plain Relax ops (same folded epilogue)."""
    ctx = vals.ctx
    x = vals.plain_of(f.node.inputs[0])
    res = vals.plain_of(f.residual)
    if f.kind == "dense":
        bias = None if f.bias is None else f.bias.astype(np.float32)
        w_in = f.node.inputs[1]
        if res is None and w_in is not None and isinstance(w_in.type.encoding, Sparse):
            # a pruned weight (CSR in the IR) runs on the sparse kernel where that is faster
            from mcopt.targets.lower_sparse import emit_planned_sparse_dense

            y = emit_planned_sparse_dense(ctx, x, f.weight, bias, f.activation, f.clip)
            if y is not None:
                vals.set_plain(f.output, ctx.emit(y))
                vals.chose("dense layer: sparse kernel (pruned weight)")
                return
        y = K.emit_dense(
            ctx.bb,
            x,
            f.weight.astype(np.float32),
            bias,
            activation=f.activation,
            clip=f.clip,
            residual=res,
            target=target,
        )
        vals.set_plain(f.output, y)
        return
    at = f.node.attrs
    groups = int(at["groups"]) if f.weight.shape[1] != x.ty.shape[1] else 1  # block-diagonal
    y = ctx.emit(
        R.nn.conv2d(
            x,
            ctx.const(f.weight.astype(np.float32)),
            strides=tuple(at["strides"]),
            padding=tuple(at["pads"]),
            dilation=tuple(at["dilations"]),
            groups=groups,
        )
    )
    if f.bias is not None:
        y = ctx.emit(R.add(y, ctx.const(f.bias.astype(np.float32).reshape(1, -1, 1, 1))))
    if res is not None:
        y = ctx.emit(R.add(y, res))
    if f.activation is not None:
        lo, hi = (0.0, None) if f.activation == "relu" else f.clip
        y = ctx.emit(R.nn.relu(y) if hi is None else R.clip(y, lo, hi))
    if f.out_perm is not None:  # a channel shuffle absorbed by a grouped group
        y = ctx.emit(R.take(y, ctx.const(f.out_perm.astype(np.int64)), axis=1))
    vals.set_plain(f.output, y)


def _packed_channel_const(ctx: LowerContext, v: Value, lay: Layout) -> relax.Expr:
    vec = _channel_const(v, lay.channels, 4)
    assert vec is not None
    full = np.zeros(lay.padded, dtype=np.float32)
    full[: lay.channels] = vec
    return ctx.const(full.reshape(1, lay.padded // lay.bn, 1, 1, lay.bn))


def _blocked_pool_kernel(bb: Any, node: Node, x: relax.Expr, lay: Layout) -> relax.Expr | None:
    """max_pool / avg_pool on a blocked tensor with mcopt's pool kernel (no padded copy); None
    where the kernel does not apply (the Relax pool op is used instead)."""
    from mcopt.targets.kernels.pool import pool2d_nchwc
    from mcopt.targets.kernels.relax_ops import _call

    at = node.attrs
    if node.op not in ("max_pool", "avg_pool") or x.ty.dtype != "float32":
        return None
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
    )
    return _call(bb, func, f"{node.op}_nchwc", [x], out_shape, "float32")


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
    if op in BLOCKED_UNARY:
        x, _ = vals.blocked_of(ins[0], lay)
        y = LOWERINGS[op](ctx, node, [x])
    elif op in BLOCKED_BINARY:
        fn = {"add": R.add, "sub": R.subtract, "mul": R.multiply}[op]
        a_v, b_v = node.inputs[0], node.inputs[1]
        assert a_v is not None and b_v is not None
        a = _packed_channel_const(ctx, a_v, lay) if a_v.const is not None else None
        b = _packed_channel_const(ctx, b_v, lay) if b_v.const is not None else None
        a = a if a is not None else vals.blocked_of(a_v, lay)[0]
        b = b if b is not None else vals.blocked_of(b_v, lay)[0]
        y = fn(a, b)
    elif op in BLOCKED_POOLS:
        x, _ = vals.blocked_of(ins[0], lay)
        at = node.attrs
        if op == "global_avg_pool":
            y = R.mean(x, axis=[2, 3], keepdims=True)
        elif op == "global_max_pool":
            y = R.max(x, axis=[2, 3], keepdims=True)
        elif (y := _blocked_pool_kernel(bb, node, x, lay)) is not None:
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
    elif op == "concat":
        parts = [vals.blocked_of(v)[0] for v in ins]
        y = R.concat(parts, axis=1)
    else:  # pragma: no cover - the plan only marks the ops above
        raise TargetError(f"node {node.name!r} ({op}): no blocked lowering")
    e = bb.emit(y, name_hint=_rx_name(out.name))
    if LowerContext.shape_of(e) != lay.blocked_shape(tuple(out.shape)):
        raise TargetError(
            f"node {node.name!r} ({op}): blocked result {list(LowerContext.shape_of(e))} does "
            f"not match {lay} of {list(out.shape)}"
        )
    vals.set_blocked(out, e, lay)


def lower_planned(
    graph: Graph, target: Any, func_name: str = "main", plan: Plan | None = None
) -> tvm.IRModule:
    """Lower ``graph`` with the kernels for llvm ``target`` (a ``tvm.target.Target``)."""
    missing_lowerings(graph)
    info = K.cpu_info(target)
    plan = plan or plan_graph(graph, info.lanes)
    bb = relax.BlockBuilder()
    ctx = LowerContext(bb, graph, target)
    params = [
        relax.Var(_rx_name(v.name), relax.TensorType(tuple(v.shape), v.dtype)) for v in graph.inputs
    ]
    vals = _Values(ctx, info.lanes)
    for v, p in zip(graph.inputs, params):
        vals.set_plain(v, p)
    with bb.function(func_name, params):
        with bb.dataflow():
            for node in graph.nodes:
                if id(node) in plan.absorbed:
                    continue
                try:
                    _lower_node(vals, plan, node, target)
                except TargetError:
                    raise
                except Exception as e:
                    raise TargetError(
                        f"cannot lower node {node.name!r} ({node.op}): {_first_line(e)}"
                    ) from None
            results = [vals.plain_of(v) for v in graph.outputs]
            out = results[0] if len(results) == 1 else relax.Tuple(results)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    mod = bb.get()
    if vals.choices:
        mod = mod.with_attr("mcopt.choices", {k: int(v) for k, v in sorted(vals.choices.items())})
    return mod


def _lower_node(vals: _Values, plan: Plan, node: Node, target: Any) -> None:
    f = plan.fused.get(id(node))
    if f is not None:
        if f.kind in ("conv", "depthwise", "grouped"):
            try:
                _lower_fused_conv(vals, f, target)
                return
            except Exception as e:  # a shape the kernels do not cover: plain Relax, same result
                log.warning("node %r: conv kernel not used (%s); plain path", node.name, e)
        _lower_fused_plain(vals, f, target)
        return
    shuffle = plan.shuffles.get(id(node))
    if shuffle is not None:
        src, perm, _ = shuffle
        x, lay = vals.blocked_of(src)
        y = K.emit_permute_channels(vals.ctx.bb, x, [int(p) for p in perm])
        vals.set_blocked(node.output, y, lay)
        return
    lay = plan.layout_of(node.output) if len(node.outputs) == 1 else None
    if lay is not None:
        _lower_blocked_node(vals, node, lay)
        return
    args = [vals.plain_of(v) for v in node.inputs]
    outs = _emit_outputs(vals.ctx, node, LOWERINGS[node.op](vals.ctx, node, args))
    for v, e in zip(node.outputs, outs):
        vals.set_plain(v, e)


__all__ = ["lower_planned"]
