"""Lowering: mcopt IR Graph -> ``tvm.IRModule`` with a Relax ``main`` built by ``relax.BlockBuilder``.

Graph inputs become the parameters of ``main`` (static shapes), constants become ``relax.const``
(embedded in the module, so ``FoldConstant`` can pre-compute weight transforms), every node is
lowered by the function registered for its op in :data:`LOWERINGS`. Later issues add compressed
ops (qconv2d, binary_conv2d, winograd_conv2d, ...) with :func:`register_lowering`.

A lowering function gets the context, the node and its inputs as Relax expressions (``None`` for an
absent optional input) and returns one Relax expression per node output (a single expression, a
list, or a Relax tuple for multi-output ops).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
from tvm import relax

from mcopt.errors import TargetError
from mcopt.ir.core import Graph, Node, Value
from mcopt.ops.nn import bn_affine

R = relax.op
LowerResult = Any  # relax.Expr | Sequence[relax.Expr]
LowerFn = Callable[["LowerContext", Node, list[Any]], LowerResult]

#: op name -> lowering function
LOWERINGS: dict[str, LowerFn] = {}


def register_lowering(op: str, fn: LowerFn | None = None, *, replace: bool = False) -> Any:
    """Register ``fn`` as the lowering of ``op`` (usable as a decorator: ``@register_lowering("x")``)."""

    def deco(f: LowerFn) -> LowerFn:
        if op in LOWERINGS and not replace:
            raise ValueError(f"op {op!r} already has a lowering")
        LOWERINGS[op] = f
        return f

    return deco(fn) if fn is not None else deco


def _rx_name(name: str) -> str:
    """A Relax-friendly name hint (letters, digits, underscores)."""
    s = re.sub(r"[^0-9A-Za-z_]", "_", name) or "v"
    return s if not s[0].isdigit() else "v" + s


class LowerContext:
    """What a lowering function may use: the block builder, helpers for constants, and the
    ``target`` the module is lowered for (a ``tvm.target.Target``, or None: the current one /
    the host). Lowerings that pick instructions (the int8 dot products) must build for it: a
    cross build lowered for the host would hand LLVM the host's intrinsics."""

    def __init__(self, bb: relax.BlockBuilder, graph: Graph, target: Any = None) -> None:
        self.bb = bb
        self.graph = graph
        self.target = target

    def const(self, array: Any, dtype: str | None = None) -> relax.Constant:
        arr = np.asarray(array, dtype=dtype)
        # np.ascontiguousarray turns a 0-d array into shape (1,): copy instead
        return relax.const(arr if arr.flags.c_contiguous else arr.copy(order="C"), str(arr.dtype))

    def scalar(self, value: float, dtype: str) -> relax.Constant:
        return relax.const(np.array(value, dtype=dtype), dtype)

    def emit(self, expr: relax.Expr, name: str = "") -> relax.Var:
        return self.bb.emit(expr, name_hint=_rx_name(name) if name else "")

    @staticmethod
    def shape_of(expr: relax.Expr) -> tuple[int, ...]:
        return tuple(int(d) for d in expr.ty.shape)

    @staticmethod
    def dtype_of(expr: relax.Expr) -> str:
        return str(expr.ty.dtype)


def _channel_vector(ctx: LowerContext, v: Value | None, arg: Any, rank: int) -> Any:
    """A per-channel vector (C,) reshaped to broadcast over NCHW-like axis 1 of a rank-`rank` tensor."""
    if v is not None and v.const is not None:
        return ctx.const(v.const.reshape((1, -1) + (1,) * (rank - 2)))
    n = int(np.prod(v.shape)) if v is not None else -1
    return R.reshape(arg, (1, n) + (1,) * (rank - 2))


def _const_of(v: Value | None) -> np.ndarray | None:
    return None if v is None else v.const


# --- nn ---------------------------------------------------------------------------------------------
@register_lowering("conv2d")
@register_lowering("conv_transpose2d")
def _conv2d(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    at = node.attrs
    common = {
        "strides": tuple(at["strides"]),
        "padding": tuple(at["pads"]),  # (top, left, bottom, right) in both mcopt and TVM
        "dilation": tuple(at["dilations"]),
        "groups": int(at["groups"]),
    }
    if node.op == "conv_transpose2d":
        y = R.nn.conv2d_transpose(a[0], a[1], output_padding=tuple(at["output_padding"]), **common)
    else:
        y = R.nn.conv2d(a[0], a[1], **common)
    if len(a) > 2 and a[2] is not None:
        y = R.add(ctx.emit(y), _channel_vector(ctx, node.inputs[2], a[2], 4))
    return y


@register_lowering("upsample_nearest")
def _upsample_nearest(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    sh, sw = (int(s) for s in node.attrs["scales"])
    y = ctx.emit(R.repeat(a[0], sh, axis=2)) if sh > 1 else a[0]
    return R.repeat(y, sw, axis=3) if sw > 1 else y


@register_lowering("depth_to_space")
def _depth_to_space(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    n, c, h, w = (int(d) for d in ctx.shape_of(a[0]))
    bs = int(node.attrs["blocksize"])
    o = c // (bs * bs)
    if node.attrs["mode"] == "DCR":
        t = ctx.emit(R.reshape(a[0], (n, bs, bs, o, h, w)))
        t = ctx.emit(R.permute_dims(t, (0, 3, 4, 1, 5, 2)))
    else:
        t = ctx.emit(R.reshape(a[0], (n, o, bs, bs, h, w)))
        t = ctx.emit(R.permute_dims(t, (0, 1, 4, 2, 5, 3)))
    return R.reshape(t, (n, o, h * bs, w * bs))


@register_lowering("dense")
def _dense(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    w = _const_of(node.inputs[1])
    wt = ctx.const(np.ascontiguousarray(w.T)) if w is not None else R.permute_dims(a[1], (1, 0))
    y = R.matmul(a[0], wt)
    if len(a) > 2 and a[2] is not None:
        y = R.add(ctx.emit(y), a[2])
    return y


@register_lowering("matmul")
def _matmul(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.matmul(a[0], a[1])


@register_lowering("batch_norm")
def _batch_norm(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """Inference BN as y = x * k + c with k = scale / sqrt(var + eps), c = bias - mean * k
    (pre-computed in numpy when the statistics are constants, which they are after import)."""
    x = a[0]
    rank = len(node.inputs[0].shape)  # type: ignore[union-attr]
    eps = float(node.attrs["epsilon"])
    consts = [_const_of(v) for v in node.inputs[1:5]]
    dtype = ctx.dtype_of(x)
    if all(c is not None for c in consts):
        k, c = bn_affine(*consts, eps)  # type: ignore[arg-type]
        shp = (1, -1) + (1,) * (rank - 2)
        return R.add(
            ctx.emit(R.multiply(x, ctx.const(k.reshape(shp).astype(dtype)))),
            ctx.const(c.reshape(shp).astype(dtype)),
        )
    scale, bias, mean, var = (
        _channel_vector(ctx, v, e, rank) for v, e in zip(node.inputs[1:5], a[1:5])
    )
    k = ctx.emit(R.divide(scale, R.sqrt(R.add(var, ctx.scalar(eps, dtype)))))
    return R.add(R.multiply(R.subtract(x, mean), k), bias)


def _pool_common(node: Node) -> dict[str, Any]:
    at = node.attrs
    return {
        "pool_size": tuple(at["kernel"]),
        "strides": tuple(at["strides"]),
        "padding": tuple(at["pads"]),
        "ceil_mode": bool(at.get("ceil_mode", 0)),
    }


@register_lowering("max_pool")
def _max_pool(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.nn.max_pool2d(
        a[0], dilation=tuple(node.attrs.get("dilations", (1, 1))), **_pool_common(node)
    )


@register_lowering("avg_pool")
def _avg_pool(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.nn.avg_pool2d(
        a[0], count_include_pad=bool(node.attrs.get("count_include_pad", 0)), **_pool_common(node)
    )


#: a float sum / mean over more elements than this, along two or more axes, runs in two stages
#: (the last reduced axis, then the others): one running float32 sum over H*W = 25,600 pixels
#: (PP-OCRv6's squeeze-and-excitation pooling at 160x160) drifted 1.6e-4 relative from
#: onnxruntime's, and its detector's probability map by 3e-3; two stages of <= 160 terms do not
STAGED_REDUCTION_FROM = 1024


def staged_sum(
    emit: Callable[[Any], Any], x: Any, axes: list[int], keepdims: bool, mean: bool = False
) -> Any:
    """``sum`` (``mean``) of ``x`` over ``axes`` (sorted, non-negative): in two stages where
    more than :data:`STAGED_REDUCTION_FROM` elements of a float tensor fold into one (see
    there), else one ``R.sum`` / ``R.mean``."""
    shape = [int(d) for d in x.ty.shape]
    n = int(np.prod([shape[i] for i in axes])) if axes else 1
    one = R.mean if mean else R.sum
    if len(axes) < 2 or n <= STAGED_REDUCTION_FROM or "float" not in str(x.ty.dtype):
        return one(x, axis=axes, keepdims=keepdims)
    rows = emit(R.sum(x, axis=[axes[-1]], keepdims=True))
    y = R.sum(rows, axis=axes[:-1], keepdims=True)
    if mean:
        y = R.multiply(emit(y), relax.const(1.0 / n, str(x.ty.dtype)))
    return y if keepdims else R.squeeze(emit(y), axis=axes)


@register_lowering("global_avg_pool")
def _global_avg_pool(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    rank = len(ctx.shape_of(a[0]))
    return staged_sum(ctx.emit, a[0], list(range(2, rank)), True, mean=True)


@register_lowering("global_max_pool")
def _global_max_pool(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    rank = len(ctx.shape_of(a[0]))
    return R.max(a[0], axis=list(range(2, rank)), keepdims=True)


@register_lowering("lrn")
def _lrn(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """ONNX LRN: y = x / (bias + alpha/size * sum_{window over C} x^2) ** beta, with the channel
    window sum computed as a zero-padded (size x 1) average pool over a (N, 1, C, rest) view."""
    x = a[0]
    shape = ctx.shape_of(x)
    dtype = ctx.dtype_of(x)
    size = int(node.attrs["size"])
    alpha, beta, bias = (float(node.attrs[k]) for k in ("alpha", "beta", "bias"))
    lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
    rest = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    sq = ctx.emit(R.reshape(R.multiply(x, x), (shape[0], 1, shape[1], rest)))
    avg = ctx.emit(
        R.nn.avg_pool2d(
            sq, pool_size=(size, 1), strides=(1, 1), padding=(lo, 0, hi, 0), count_include_pad=True
        )
    )
    avg = ctx.emit(R.reshape(avg, shape))
    den = R.power(
        R.add(ctx.scalar(bias, dtype), R.multiply(avg, ctx.scalar(alpha, dtype))),
        ctx.scalar(beta, dtype),
    )
    return R.divide(x, ctx.emit(den))


@register_lowering("softmax")
def _softmax(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """``exp(x - max) / sum`` as Relax ops (a max, an exp + sum, a divide: each a fused, scheduled
    loop nest) instead of ``R.nn.softmax``, whose legalized form the CPU build left unscheduled
    (1x40x6625: 686 us vs onnxruntime's 39 us)."""
    axis = int(node.attrs.get("axis", -1))
    m = ctx.emit(R.max(a[0], axis=[axis], keepdims=True))
    e = ctx.emit(R.exp(R.subtract(a[0], m)))
    s = ctx.emit(R.sum(e, axis=[axis], keepdims=True))
    return R.divide(e, s)


@register_lowering("layer_norm")
def _layer_norm(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """``(x - mean) * rsqrt(var + eps) * scale + bias`` as Relax ops (reductions and elementwise
    ops the build fuses and schedules, as for softmax)."""
    x = a[0]
    rank = len(node.inputs[0].shape)  # type: ignore[union-attr]
    axes = list(range(int(node.attrs["axis"]) % rank, rank))
    dtype = str(node.inputs[0].dtype)  # type: ignore[union-attr]
    d = ctx.emit(R.subtract(x, R.mean(x, axis=axes, keepdims=True)))
    var = ctx.emit(R.mean(R.multiply(d, d), axis=axes, keepdims=True))
    y = R.multiply(d, R.rsqrt(R.add(var, ctx.scalar(float(node.attrs["epsilon"]), dtype))))
    if len(a) > 1 and a[1] is not None:
        y = R.multiply(ctx.emit(y), a[1])
    if len(a) > 2 and a[2] is not None:
        y = R.add(ctx.emit(y), a[2])
    return y


@register_lowering("log_softmax")
def _log_softmax(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """``d - ln(sum(exp(d)))`` with ``d = x - max``: no overflow, no log of an underflowed 0."""
    axis = int(node.attrs.get("axis", -1))
    d = ctx.emit(R.subtract(a[0], R.max(a[0], axis=[axis], keepdims=True)))
    s = ctx.emit(R.sum(R.exp(d), axis=[axis], keepdims=True))
    return R.subtract(d, R.log(s))


# --- elementwise ------------------------------------------------------------------------------------
_UNARY: dict[str, Callable[[Any], Any]] = {
    "relu": R.nn.relu,
    "tanh": R.tanh,
    "exp": R.exp,
    "sqrt": R.sqrt,
    "neg": R.negative,
    "abs": R.abs,
    "erf": R.erf,
    "log": R.log,
    "reciprocal": lambda x: R.divide(relax.const(1.0, str(x.ty.dtype)), x),
    "floor": R.floor,
    "sign": R.sign,
    "ceil": R.ceil,
    # max(x, 0) + ln(1 + exp(-|x|)): no overflow for large x
    "softplus": lambda x: R.add(R.maximum(x, relax.const(0.0, str(x.ty.dtype))),
                                R.log(R.add(relax.const(1.0, str(x.ty.dtype)),
                                            R.exp(R.negative(R.abs(x)))))),
    "softsign": lambda x: R.divide(x, R.add(relax.const(1.0, str(x.ty.dtype)), R.abs(x))),
}  # fmt: skip
for _op, _fn in _UNARY.items():
    register_lowering(_op, lambda ctx, node, a, _f=_fn: _f(a[0]))

BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": R.add,
    "sub": R.subtract,
    "mul": R.multiply,
    "div": R.divide,
    "pow": R.power,
    "maximum": R.maximum,
    "minimum": R.minimum,
    "equal": R.equal,
    "less": R.less,
    "greater": R.greater,
    "less_equal": R.less_equal,
    "greater_equal": R.greater_equal,
    "logical_and": R.logical_and,
    "logical_or": R.logical_or,
    "logical_xor": R.logical_xor,
}
for _op, _fn in BINARY.items():
    register_lowering(_op, lambda ctx, node, a, _f=_fn: _f(a[0], a[1]))


register_lowering("logical_not", lambda ctx, node, a: R.logical_not(a[0]))


def _clamped_index(ctx: LowerContext, i: Any, dim: int) -> Any:
    """The ops' index convention (``mcopt.ops.tensor._index_of``): negative counts from the end,
    the rest clamped into ``[0, dim)``; int64."""
    i = ctx.emit(R.astype(i, "int64"))
    zero = relax.const(0, "int64")
    i = ctx.emit(R.where(R.less(i, zero), R.add(i, relax.const(dim, "int64")), i))
    return R.minimum(R.maximum(i, zero), relax.const(dim - 1, "int64"))


@register_lowering("take")
def _take(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    shape = ctx.shape_of(a[0])
    axis = int(node.attrs["axis"]) % len(shape)
    return R.take(a[0], ctx.emit(_clamped_index(ctx, a[1], shape[axis])), axis=axis, mode="clip")


@register_lowering("gather_elements")
def _gather_elements(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    shape, ishape = ctx.shape_of(a[0]), ctx.shape_of(a[1])
    axis = int(node.attrs["axis"]) % len(shape)
    x = a[0]
    if any(d != xd for k, (d, xd) in enumerate(zip(ishape, shape)) if k != axis):  # a corner
        begin = [0] * len(shape)
        end = [d if k != axis else shape[k] for k, d in enumerate(ishape)]
        x = ctx.emit(R.strided_slice(x, list(range(len(shape))), begin, end))
    idx = ctx.emit(_clamped_index(ctx, a[1], shape[axis]))
    return R.gather_elements(x, idx, axis=axis)


@register_lowering("topk")
def _topk(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """Relax's ``topk`` (values and int64 indices, sorted)."""
    axis = int(node.attrs["axis"]) % len(ctx.shape_of(a[0]))
    both = ctx.emit(
        R.topk(a[0], int(node.attrs["k"]), axis=axis, ret_type="both",
               largest=bool(node.attrs["largest"]), dtype="int64")
    )  # fmt: skip
    return [ctx.emit(relax.TupleGetItem(both, 0)), ctx.emit(relax.TupleGetItem(both, 1))]


@register_lowering("where")
def _where(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.where(a[0], a[1], a[2])


@register_lowering("embedding")
def _embedding(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """A row of the table per index; zeros for an index outside ``[0, rows)``."""
    from tvm import te
    from tvm import tirx as tir

    def compute(idx: Any, table: Any) -> Any:
        rows = int(table.shape[0])

        def row(*ix: Any) -> Any:
            i = idx(*ix[:-1])
            ok = tir.all(i >= tir.const(0, idx.dtype), i < tir.const(rows, idx.dtype))
            r = tir.Cast(
                "int32",
                tir.max(tir.min(i, tir.const(rows - 1, idx.dtype)), tir.const(0, idx.dtype)),
            )
            return tir.if_then_else(ok, table[r, ix[-1]], tir.const(0, table.dtype))

        return te.compute((*idx.shape, table.shape[1]), row, name="embedding")

    return ctx.bb.call_te(compute, a[0], a[1], primfunc_name_hint="embedding")


@register_lowering("expand")
def _expand(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.broadcast_to(a[0], relax.ShapeExpr(list(node.attrs["shape"])))


def _passthrough(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return a[0]


register_lowering("identity", _passthrough)
register_lowering("dropout", _passthrough)


@register_lowering("clip")
def _clip(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    x, dtype = a[0], ctx.dtype_of(a[0])
    lo, hi = float(node.attrs.get("min", -math.inf)), float(node.attrs.get("max", math.inf))
    if math.isfinite(lo) and math.isfinite(hi):
        return R.clip(
            x,
            lo,
            hi,
        )
    if math.isfinite(lo):
        x = R.maximum(x, ctx.scalar(lo, dtype))
    if math.isfinite(hi):
        x = R.minimum(x, ctx.scalar(hi, dtype))
    return x


@register_lowering("leaky_relu")
def _leaky_relu(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.nn.leakyrelu(a[0], alpha=float(node.attrs.get("alpha", 0.01)))


@register_lowering("prelu")
def _prelu(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """max(x, 0) + slope * min(x, 0): the slope broadcasts against x (numpy rules, as in ONNX)."""
    x, dtype = a[0], ctx.dtype_of(a[0])
    zero = ctx.scalar(0.0, dtype)
    return R.add(R.maximum(x, zero), R.multiply(a[1], R.minimum(x, zero)))


@register_lowering("elu")
@register_lowering("selu")
def _elu(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    x = a[0]
    dt = ctx.dtype_of(x)
    c = lambda v: relax.const(float(v), dt)  # noqa: E731
    neg = R.multiply(c(node.attrs["alpha"]), R.subtract(R.exp(R.minimum(x, c(0))), c(1)))
    y = R.where(R.greater(x, c(0)), x, neg)
    return R.multiply(c(node.attrs["gamma"]), y) if node.op == "selu" else y


def _fast_elementwise(ctx: LowerContext, x: Any, fn: Callable[[Any], Any], name: str) -> Any:
    """``fn`` (a :mod:`~mcopt.targets.fast_math` expression) on every element of float32 ``x``, as
    a TE compute (vectorizable: no per-lane ``expf``)."""
    from tvm import te

    def compute(t: Any) -> Any:
        return te.compute(t.shape, lambda *i: fn(t(*i)), name=name)

    return ctx.bb.call_te(compute, x, primfunc_name_hint=name)


@register_lowering("sigmoid")
def _sigmoid(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    from mcopt.targets.fast_math import fast_sigmoid

    if ctx.dtype_of(a[0]) != "float32":
        return R.sigmoid(a[0])
    return _fast_elementwise(ctx, a[0], fast_sigmoid, "sigmoid")


@register_lowering("gelu")
def _gelu(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """``x / 2 * (1 + erf(x / sqrt 2))`` with the rational ``erf``."""
    from mcopt.targets.fast_math import fast_gelu

    if ctx.dtype_of(a[0]) != "float32":
        x, dt = a[0], ctx.dtype_of(a[0])
        half = R.multiply(x, ctx.scalar(0.5, dt))
        return R.multiply(
            half,
            R.add(ctx.scalar(1.0, dt), R.erf(R.multiply(x, ctx.scalar(0.7071067811865476, dt)))),
        )
    return _fast_elementwise(ctx, a[0], fast_gelu, "gelu")


@register_lowering("silu")
def _silu(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """``x * sigmoid(x)``."""
    from mcopt.targets.fast_math import fast_silu

    if ctx.dtype_of(a[0]) != "float32":
        return R.multiply(a[0], ctx.emit(R.sigmoid(a[0])))
    return _fast_elementwise(ctx, a[0], fast_silu, "silu")


#: ``dense(x, weight (N, K), bias | None, residual | None) -> x @ weight.T + bias + residual``
DenseFn = Callable[[Any, np.ndarray, "np.ndarray | None", Any], Any]


@register_lowering("lstm")
def _lstm(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return lower_lstm(ctx, node, a)


def lower_lstm(ctx: LowerContext, node: Node, a: list[Any], dense: DenseFn | None = None) -> Any:
    """Unrolled over time: the input projection of every step as one matmul per direction, then per
    step ``h @ R.T``, the gates (fast sigmoid, tanh) and the state update (ops/recurrent.py).
    ``dense``: a kernel for the products with constant weights (the CPU build's packed dense,
    the step's input projection as its residual); else Relax matmuls."""
    from mcopt.targets.fast_math import fast_sigmoid

    consts = [v.const if v is not None else None for v in list(node.inputs[1:4]) + [None] * 3]
    if dense is not None and (consts[0] is None or consts[1] is None):
        dense = None
    if dense is not None and node.inputs[3] is not None and consts[2] is None:
        dense = None

    a = list(a) + [None] * (6 - len(a))
    x, w, r, b, h0, c0 = a
    seq, batch, feat = ctx.shape_of(x)
    hid = int(node.attrs["hidden_size"])
    dirs = 2 if node.attrs["direction"] == "bidirectional" else 1

    def take(t: Any, d: int, shape: tuple[int, ...]) -> Any:
        return ctx.emit(R.reshape(R.strided_slice(t, axes=[0], begin=[d], end=[d + 1]), shape))

    zeros = ctx.const(np.zeros((batch, hid), np.float32))
    flat = ctx.emit(R.reshape(x, (seq * batch, feat)))
    ys, hs, cs = [], [], []
    for d in range(dirs):
        if dense is not None:
            bsum = None if consts[2] is None else consts[2][d, : 4 * hid] + consts[2][d, 4 * hid :]
            proj = dense(flat, consts[0][d], bsum, None)
        else:
            proj = R.matmul(flat, R.permute_dims(take(w, d, (4 * hid, feat))))
        if b is not None and dense is None:
            bd = take(b, d, (8 * hid,))
            bias = R.add(R.strided_slice(bd, axes=[0], begin=[0], end=[4 * hid]),
                         R.strided_slice(bd, axes=[0], begin=[4 * hid], end=[8 * hid]))  # fmt: skip
            proj = R.add(ctx.emit(proj), ctx.emit(bias))
        proj = ctx.emit(R.reshape(ctx.emit(proj), (seq, batch, 4 * hid)))
        r_t = None if dense is not None else ctx.emit(R.permute_dims(take(r, d, (4 * hid, hid))))
        h = take(h0, d, (batch, hid)) if h0 is not None else zeros
        c = take(c0, d, (batch, hid)) if c0 is not None else zeros
        steps = (
            range(seq - 1, -1, -1) if node.attrs["direction"] == "reverse" or d == 1 else range(seq)
        )
        out: dict[int, Any] = {}
        for t in steps:
            xt = R.reshape(
                R.strided_slice(proj, axes=[0], begin=[t], end=[t + 1]), (batch, 4 * hid)
            )
            if dense is not None:
                g = ctx.emit(dense(h, consts[1][d], None, ctx.emit(xt)))
            else:
                g = ctx.emit(R.add(ctx.emit(xt), ctx.emit(R.matmul(h, r_t))))
            parts = ctx.emit(R.split(g, 4, axis=1))
            gi, go, gf, gc = (ctx.emit(relax.TupleGetItem(parts, k)) for k in range(4))
            sig = [
                ctx.emit(_fast_elementwise(ctx, v, fast_sigmoid, "sigmoid")) for v in (gi, go, gf)
            ]
            c = ctx.emit(R.add(R.multiply(sig[2], c), R.multiply(sig[0], R.tanh(gc))))
            h = ctx.emit(R.multiply(sig[1], R.tanh(c)))
            out[t] = ctx.emit(R.reshape(h, (1, 1, batch, hid)))
        ys.append(ctx.emit(R.concat([out[t] for t in range(seq)], axis=0)))
        hs.append(ctx.emit(R.reshape(h, (1, batch, hid))))
        cs.append(ctx.emit(R.reshape(c, (1, batch, hid))))
    y = ys[0] if dirs == 1 else ctx.emit(R.concat(ys, axis=1))
    y_h = hs[0] if dirs == 1 else ctx.emit(R.concat(hs, axis=0))
    y_c = cs[0] if dirs == 1 else ctx.emit(R.concat(cs, axis=0))
    return [y, y_h, y_c]


@register_lowering("gru")
def _gru(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """Unrolled over time like :func:`lower_lstm`: the input projection of every step as one
    matmul per direction, then per step ``h @ R.T`` and the gates (ops/recurrent.py's gru_ref)."""
    from mcopt.targets.fast_math import fast_sigmoid

    a = list(a) + [None] * (5 - len(a))
    x, w, r, b, h0 = a
    seq, batch, feat = ctx.shape_of(x)
    hid = int(node.attrs["hidden_size"])
    dirs = 2 if node.attrs["direction"] == "bidirectional" else 1
    lbr = int(node.attrs["linear_before_reset"])

    def take(t: Any, d: int, shape: tuple[int, ...]) -> Any:
        return ctx.emit(R.reshape(R.strided_slice(t, axes=[0], begin=[d], end=[d + 1]), shape))

    def cut(t: Any, k: int) -> Any:  # gate k of (B, 3H)
        return ctx.emit(R.strided_slice(t, axes=[1], begin=[k * hid], end=[(k + 1) * hid]))

    def sig(v: Any) -> Any:
        return ctx.emit(_fast_elementwise(ctx, ctx.emit(v), fast_sigmoid, "sigmoid"))

    zeros = ctx.const(np.zeros((batch, hid), np.float32))
    flat = ctx.emit(R.reshape(x, (seq * batch, feat)))
    ys, hs = [], []
    for d in range(dirs):
        proj = ctx.emit(R.matmul(flat, R.permute_dims(take(w, d, (3 * hid, feat)))))
        rb = None
        if b is not None:
            bd = take(b, d, (6 * hid,))
            proj = ctx.emit(R.add(proj, R.strided_slice(bd, axes=[0], begin=[0], end=[3 * hid])))
            rb = ctx.emit(R.strided_slice(bd, axes=[0], begin=[3 * hid], end=[6 * hid]))
        proj = ctx.emit(R.reshape(proj, (seq, batch, 3 * hid)))
        r_t = ctx.emit(R.permute_dims(take(r, d, (3 * hid, hid))))
        r_h = ctx.emit(R.strided_slice(r_t, axes=[1], begin=[2 * hid], end=[3 * hid]))
        # linear_before_reset=0 multiplies (r * h) by R_h separately: h @ R.T needs z and r only
        gates = 3 if lbr else 2
        r_g = r_t if lbr else ctx.emit(R.strided_slice(r_t, axes=[1], begin=[0], end=[2 * hid]))
        rb_g = rb
        if rb is not None and not lbr:
            rb_g = ctx.emit(R.strided_slice(rb, axes=[0], begin=[0], end=[gates * hid]))
        h = take(h0, d, (batch, hid)) if h0 is not None else zeros
        steps = (
            range(seq - 1, -1, -1) if node.attrs["direction"] == "reverse" or d == 1 else range(seq)
        )
        out: dict[int, Any] = {}
        for t in steps:
            gx = ctx.emit(R.reshape(R.strided_slice(proj, axes=[0], begin=[t], end=[t + 1]),
                                    (batch, 3 * hid)))  # fmt: skip
            gh = ctx.emit(R.matmul(h, r_g))
            if rb_g is not None:
                gh = ctx.emit(R.add(gh, rb_g))
            z = sig(R.add(cut(gx, 0), cut(gh, 0)))
            rr = sig(R.add(cut(gx, 1), cut(gh, 1)))
            if lbr:
                cand = R.tanh(R.add(cut(gx, 2), R.multiply(rr, cut(gh, 2))))
            else:
                rh = ctx.emit(R.matmul(ctx.emit(R.multiply(rr, h)), r_h))
                if rb is not None:
                    rh = R.add(rh, R.strided_slice(rb, axes=[0], begin=[2 * hid], end=[3 * hid]))
                cand = R.tanh(R.add(cut(gx, 2), rh))
            cand = ctx.emit(cand)
            one = ctx.const(np.ones((1, 1), np.float32))
            h = ctx.emit(R.add(R.multiply(R.subtract(one, z), cand), R.multiply(z, h)))
            out[t] = ctx.emit(R.reshape(h, (1, 1, batch, hid)))
        ys.append(ctx.emit(R.concat([out[t] for t in range(seq)], axis=0)))
        hs.append(ctx.emit(R.reshape(h, (1, batch, hid))))
    y = ys[0] if dirs == 1 else ctx.emit(R.concat(ys, axis=1))
    y_h = hs[0] if dirs == 1 else ctx.emit(R.concat(hs, axis=0))
    return [y, y_h]


@register_lowering("qlstm")
def _qlstm(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """The float LSTM of the dequantized weights ``w * w_scale[..., None]`` (the CPU build's
    kernel reads the int8 codes instead: targets/cpu/lower_lstm.py)."""
    wf, rf = (
        R.multiply(R.astype(a[i], "float32"), R.expand_dims(a[i + 2], axis=-1)) for i in (1, 2)
    )
    rest = list(a[5:]) + [None] * (8 - len(a))
    return lower_lstm(ctx, node, [a[0], ctx.emit(wf), ctx.emit(rf), *rest[:3]])


@register_lowering("hard_sigmoid")
def _hard_sigmoid(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    x, dtype = a[0], ctx.dtype_of(a[0])
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    lin = R.add(R.multiply(x, ctx.scalar(alpha, dtype)), ctx.scalar(beta, dtype))
    return R.clip(
        lin,
        0.0,
        1.0,
    )


@register_lowering("hard_swish")
def _hard_swish(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """x * relu6(x + 3) / 6."""
    x, dtype = a[0], ctx.dtype_of(a[0])
    r6 = R.clip(
        R.add(x, ctx.scalar(3.0, dtype)),
        0.0,
        6.0,
    )
    return R.multiply(x, R.multiply(r6, ctx.scalar(1.0 / 6.0, dtype)))


# --- tensor -----------------------------------------------------------------------------------------
def _reshape_to_output(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.reshape(a[0], tuple(node.output.shape))


for _op in ("reshape", "flatten", "squeeze", "unsqueeze"):
    register_lowering(_op, _reshape_to_output)


@register_lowering("transpose")
def _transpose(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.permute_dims(a[0], [int(p) for p in node.attrs["perm"]])


@register_lowering("concat")
def _concat(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.concat([e for e in a if e is not None], axis=int(node.attrs["axis"]))


@register_lowering("split")
def _split(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    sizes = [int(s) for s in node.attrs["sizes"]]
    axis = int(node.attrs.get("axis", 0))
    if len(sizes) == 1:
        return [a[0]]
    indices = [int(i) for i in np.cumsum(sizes)[:-1]]
    return R.split(a[0], indices, axis=axis)


def _onnx_slice_indices(dim: int, start: int, end: int, step: int) -> range:
    """The indices ONNX Slice selects on an axis of size ``dim`` (negative indices, clamping)."""
    from mcopt.ops.tensor import slice_bounds

    return range(*slice_bounds(dim, start, end, step), step)


@register_lowering("slice")
def _slice(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """ONNX Slice: positive steps become one strided_slice; a negative step a ``take`` with the
    explicit index list."""
    x = a[0]
    shape = ctx.shape_of(x)
    at = node.attrs
    axes_, begin, end, strides = [], [], [], []
    for st, en, ax, sp in zip(at["starts"], at["ends"], at["axes"], at["steps"]):
        ax = int(ax) % len(shape)
        idx = _onnx_slice_indices(shape[ax], int(st), int(en), int(sp))
        if sp > 0 or len(idx) <= 1:
            b = idx.start if len(idx) else 0
            axes_.append(ax)
            begin.append(b)
            end.append(idx[-1] + 1 if len(idx) else 0)
            strides.append(abs(idx.step) if len(idx) else 1)
        else:
            x = ctx.emit(R.take(x, ctx.const(np.asarray(idx, dtype=np.int64)), axis=ax))
    if axes_:
        x = R.strided_slice(
            x, axes=axes_, begin=begin, end=end, strides=strides, assume_inbound=True
        )
    return x


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@register_lowering("pad")
def _pad(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    pads = [int(p) for p in node.attrs["pads"]]
    rank = len(pads) // 2
    width: list[int] = []
    for i in range(rank):
        width += [pads[i], pads[rank + i]]
    mode = str(node.attrs.get("mode", "constant"))
    if mode not in _PAD_MODES:
        raise TargetError(f"node {node.name!r} (pad): mode {mode!r} has no lowering")
    return R.nn.pad(
        a[0], width, pad_mode=_PAD_MODES[mode], pad_value=float(node.attrs.get("value", 0.0))
    )


_REDUCE: dict[str, Callable[..., Any]] = {
    "reduce_mean": R.mean, "reduce_max": R.max, "reduce_min": R.min, "reduce_sum": R.sum,
}  # fmt: skip


def _reduce(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    rank = len(ctx.shape_of(a[0]))
    axes = sorted(int(ax) % rank for ax in node.attrs["axes"]) or list(range(rank))
    keep = bool(node.attrs.get("keepdims", 1))
    if node.op in ("reduce_mean", "reduce_sum"):
        return staged_sum(ctx.emit, a[0], axes, keep, mean=node.op == "reduce_mean")
    return _REDUCE[node.op](a[0], axis=axes, keepdims=keep)


for _op in _REDUCE:
    register_lowering(_op, _reduce)


def _arg_extreme(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """Relax's argmax / argmin return the first extreme; ``select_last_index`` searches the
    reversed axis and maps the index back."""
    rank = len(ctx.shape_of(a[0]))
    axis = int(node.attrs["axis"]) % rank
    keep = bool(node.attrs["keepdims"])
    fn = R.argmax if node.op == "argmax" else R.argmin
    if not int(node.attrs["select_last_index"]):
        return R.astype(fn(a[0], axis=axis, keepdims=keep), "int64")
    n = int(ctx.shape_of(a[0])[axis])
    rev = ctx.emit(R.flip(a[0], axis=axis))
    idx = ctx.emit(R.astype(fn(rev, axis=axis, keepdims=keep), "int64"))
    return R.subtract(relax.const(n - 1, "int64"), idx)


register_lowering("argmax", _arg_extreme)
register_lowering("argmin", _arg_extreme)


@register_lowering("cast")
def _cast(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    return R.astype(a[0], str(np.dtype(node.attrs["to"]).name))


# --- driver -----------------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "  ")):
            return line[:300]
    return type(e).__name__


def _emit_outputs(ctx: LowerContext, node: Node, result: LowerResult) -> list[relax.Expr]:
    outs: list[relax.Expr]
    if isinstance(result, list | tuple):
        outs = [
            ctx.emit(e, v.name) if not isinstance(e, relax.Var) else e
            for e, v in zip(result, node.outputs)
        ]
    else:
        var = (
            ctx.emit(result, node.outputs[0].name) if not isinstance(result, relax.Var) else result
        )
        if isinstance(var.ty, relax.TupleType):
            outs = [
                ctx.emit(relax.TupleGetItem(var, i), v.name) for i, v in enumerate(node.outputs)
            ]
        else:
            outs = [var]
    if len(outs) != len(node.outputs):
        raise TargetError(
            f"node {node.name!r} ({node.op}): lowering gave {len(outs)} output(s), the op has {len(node.outputs)}"
        )
    for e, v in zip(outs, node.outputs):
        got_shape, got_dtype = LowerContext.shape_of(e), LowerContext.dtype_of(e)
        if got_shape != tuple(v.shape) or got_dtype != v.dtype:
            raise TargetError(
                f"node {node.name!r} ({node.op}): lowered to {got_dtype}{list(got_shape)}, "
                f"the IR says %{v.name} is {v.dtype}{list(v.shape)}"
            )
    return outs


def missing_lowerings(graph: Graph) -> None:
    """Raise a one-line TargetError naming the first node whose op has no lowering."""
    missing = sorted({n.op for n in graph.nodes if n.op not in LOWERINGS})
    if missing:
        node = next(n for n in graph.nodes if n.op in missing)
        if node.op.startswith("fx_"):
            raise TargetError(
                f"node {node.name!r} ({node.op}): a fixed-point graph is an integer-only FPGA "
                "design: build it with target='fpga' (HLS C + resource estimate); for cpu / arm / "
                "cuda quantize with quantize-int8 instead of fixed-point"
            )
        raise TargetError(
            f"node {node.name!r} uses op {node.op!r}, which has no TVM lowering "
            f"(ops without one: {', '.join(missing)})"
        )


def graph_params(graph: Graph) -> list[relax.Var]:
    """The Relax parameters of ``graph``'s inputs (names sanitized, static shapes)."""
    return [
        relax.Var(_rx_name(v.name), relax.TensorType(tuple(v.shape), v.dtype)) for v in graph.inputs
    ]


def emit_function(
    ctx: LowerContext,
    func_name: str,
    params: list[relax.Var],
    lower_node: Callable[[Node], None],
    result_of: Callable[[Value], relax.Expr],
) -> tvm.IRModule:
    """The one emitter of both lowerings: a Relax function ``func_name(params)`` whose dataflow
    block lowers ``ctx.graph``'s nodes in order with ``lower_node`` (a failure is a one-line
    TargetError naming the node) and returns ``result_of`` each graph output (a tuple for
    several)."""
    bb = ctx.bb
    with bb.function(func_name, params):
        with bb.dataflow():
            for node in ctx.graph.nodes:
                try:
                    lower_node(node)
                except TargetError:
                    raise
                except Exception as e:
                    raise TargetError(
                        f"cannot lower node {node.name!r} ({node.op}): {_first_line(e)}"
                    ) from None
            results = [result_of(v) for v in ctx.graph.outputs]
            out = results[0] if len(results) == 1 else relax.Tuple(results)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


def lower(graph: Graph, func_name: str = "main", target: Any = None) -> tvm.IRModule:
    """Lower ``graph`` to an IRModule whose ``func_name`` Relax function takes the graph inputs
    (every op with its plain NCHW lowering; :func:`mcopt.targets.cpu.lower_planned.lower_planned` is the
    fused, blocked-layout path that :func:`mcopt.targets.build` uses by default). ``target``:
    what the target-specific kernels are built for (default: the current target, else the
    host)."""
    missing_lowerings(graph)
    ctx = LowerContext(relax.BlockBuilder(), graph, target)
    params = graph_params(graph)
    env: dict[int, relax.Expr] = {id(v): p for v, p in zip(graph.inputs, params)}

    def arg(v: Value | None) -> relax.Expr | None:
        if v is None:
            return None
        if v.const is not None:
            e = env.get(id(v))
            if e is None:
                e = env[id(v)] = ctx.const(v.const)
            return e
        return env[id(v)]

    def lower_node(node: Node) -> None:
        outs = _emit_outputs(
            ctx, node, LOWERINGS[node.op](ctx, node, [arg(v) for v in node.inputs])
        )
        for v, e in zip(node.outputs, outs):
            env[id(v)] = e

    return emit_function(ctx, func_name, params, lower_node, arg)  # type: ignore[arg-type]


__all__ = [
    "BINARY",
    "LOWERINGS",
    "LowerContext",
    "emit_function",
    "graph_params",
    "lower",
    "missing_lowerings",
    "register_lowering",
]


def _load_lowering_families() -> None:
    """Lowerings of compressed-op families live in ``targets/relax/lower_*.py`` (quantized,
    sparse, winograd, planned ops, ...); importing them registers their entries in LOWERINGS."""
    import importlib
    import pkgutil

    import mcopt.targets.relax as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("lower_"):
            importlib.import_module(f"mcopt.targets.relax.{info.name}")


_load_lowering_families()
