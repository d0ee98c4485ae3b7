"""ONNX op -> mcopt op handlers, one small function per ONNX operator (opsets 9-21).

Each handler reads its `NodeCtx` (inputs as mcopt values, attributes, opset), emits mcopt nodes
and sets the ONNX outputs. Inputs that mcopt needs as attributes (Reshape's shape, Clip's bounds,
Pad's pads, Squeeze/Unsqueeze/ReduceMean axes, Slice/Split parameters) must be constants after
folding; otherwise the handler raises a one-line UnsupportedOpError naming the node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from mcopt.ir.core import Value
from mcopt.onnx_io.importer import NodeCtx, onnx_dtype_name

Handler = Callable[[NodeCtx], None]
HANDLERS: dict[str, Handler] = {}


def handles(*op_types: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for op in op_types:
            HANDLERS[op] = fn
        return fn

    return deco


def supported_ops() -> str:
    return ", ".join(sorted(set(HANDLERS) | {"Constant", "Shape", "Size"})) + (
        " (and any op whose inputs are all constant, which is folded)"
    )


def _ints(a: np.ndarray | Sequence[int] | None) -> list[int]:
    return [] if a is None else [int(v) for v in np.asarray(a).reshape(-1)]


def _axis(c: NodeCtx, axis: int, rank: int, what: str = "axis") -> int:
    """`axis` in [-rank, rank) made non-negative; out of range is an error naming the node (never
    wrapped around)."""
    a = int(axis)
    if not -rank <= a < max(rank, 1):
        raise c.fail(f"{what} {a} is out of range [{-rank}, {rank - 1}] for a rank-{rank} tensor")
    return a + rank if a < 0 else a


def _axes(c: NodeCtx, axes: Sequence[int], rank: int, what: str = "axes") -> tuple[int, ...]:
    out = sorted(_axis(c, a, rank, what) for a in axes) if rank else [int(a) for a in axes]
    if len(set(out)) != len(out):
        raise c.fail(f"{what} {list(axes)} name an axis twice")
    return tuple(out)


# --- convolution and pooling ----------------------------------------------------------------------
def _pads(
    c: NodeCtx, size: Sequence[int], k: Sequence[int], s: Sequence[int], d: Sequence[int]
) -> list[int]:
    """Explicit ONNX pads (begins..., ends...) incl. auto_pad SAME_UPPER / SAME_LOWER / VALID."""
    n = len(size)
    auto = c.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = _ints(c.attr("pads")) or [0] * (2 * n)
        if len(pads) != 2 * n:
            raise c.fail(f"pads {pads} must have {2 * n} values")
        return pads
    if auto == "VALID":
        return [0] * (2 * n)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise c.fail(f"auto_pad={auto!r} is not supported (NOTSET, SAME_UPPER, SAME_LOWER, VALID)")
    begins, ends = [], []
    for i in range(n):
        out = -(-size[i] // s[i])
        total = max((out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - size[i], 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def _window(
    c: NodeCtx, x: Value, kernel: Sequence[int]
) -> tuple[Value, dict[str, tuple[int, ...]], bool]:
    """Strides/pads/dilations for a 2-D window op; a 1-D op (N, C, L) is lifted to (N, C, 1, L)."""
    n = x.type.rank - 2
    if n not in (1, 2):
        raise c.fail(
            f"{n}-D {c.op_type} (input {x.type}) is not supported; mcopt supports 1-D and 2-D (NCHW)"
        )
    s = _ints(c.attr("strides")) or [1] * n
    d = _ints(c.attr("dilations")) or [1] * n
    p = _pads(c, x.shape[2:], kernel, s, d)
    lifted = n == 1
    if lifted:
        x = c.emit("unsqueeze", [x], {"axes": (2,)})
        kernel, s, d, p = [1, *kernel], [1, *s], [1, *d], [0, p[0], 0, p[1]]
    return (
        x,
        {"kernel": tuple(kernel), "strides": tuple(s), "pads": tuple(p), "dilations": tuple(d)},
        lifted,
    )


def _unlift(c: NodeCtx, y: Value, lifted: bool) -> Value:
    return c.emit("squeeze", [y], {"axes": (2,)}) if lifted else y


@handles("Conv")
def conv(c: NodeCtx) -> None:
    x, w, b = c.x(0), c.x(1), c.inp(2)
    kernel = list(w.shape[2:])
    ks = _ints(c.attr("kernel_shape"))
    if ks and ks != kernel:
        raise c.fail(f"kernel_shape {ks} does not match the weight {w.type}")
    x, win, lifted = _window(c, x, kernel)
    if lifted:
        w = (
            c.new_const(w.const[:, :, None, :], "w2d")
            if w.const is not None
            else c.emit("unsqueeze", [w], {"axes": (2,)})
        )
    attrs = {"strides": win["strides"], "pads": win["pads"], "dilations": win["dilations"]}
    attrs["groups"] = int(c.attr("group", 1))
    y = c.emit("conv2d", [x, w, b], attrs)
    c.set_out(0, _unlift(c, y, lifted))


@handles("MaxPool", "AveragePool")
def pool(c: NodeCtx) -> None:
    if c.op_type == "MaxPool" and c.output_used(1):
        raise c.fail("the Indices output of MaxPool is not supported; only the pooled values are")
    x = c.x(0)
    x, win, lifted = _window(c, x, _ints(c.attr("kernel_shape")))
    attrs: dict[str, object] = {**win, "ceil_mode": int(c.attr("ceil_mode", 0))}
    if c.op_type == "MaxPool":
        y = c.emit("max_pool", [x], attrs)
    else:
        if any(v != 1 for v in attrs.pop("dilations")):  # type: ignore[union-attr]
            raise c.fail("AveragePool with dilations is not supported by mcopt's avg_pool")
        attrs["count_include_pad"] = int(c.attr("count_include_pad", 0))
        y = c.emit("avg_pool", [x], attrs)
    c.set_out(0, _unlift(c, y, lifted))


@handles("GlobalAveragePool", "GlobalMaxPool")
def global_pool(c: NodeCtx) -> None:
    x = c.x(0)
    op = "global_avg_pool" if c.op_type == "GlobalAveragePool" else "global_max_pool"
    if x.type.rank == 4:
        c.set_out(0, c.emit(op, [x]))
    elif x.type.rank == 3:
        y = c.emit(op, [c.emit("unsqueeze", [x], {"axes": (2,)})])
        c.set_out(0, c.emit("squeeze", [y], {"axes": (2,)}))
    else:
        raise c.fail(f"input {x.type} must be 3-D or 4-D")


# --- dense / matmul / normalization ---------------------------------------------------------------
@handles("Gemm")
def gemm(c: NodeCtx) -> None:
    a, b, cc = c.x(0), c.x(1), c.inp(2)
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    if int(c.attr("transA", 0)):
        a = (
            c.new_const(a.const.T, "aT")
            if a.const is not None
            else c.emit("transpose", [a], {"perm": (1, 0)})
        )
    trans_b = int(c.attr("transB", 0))
    extra: Value | None = None  # added after the product
    if b.const is not None:
        w = b.const if trans_b else b.const.T
        dt = w.dtype
        w = (w * np.asarray(alpha, dt)).astype(dt) if alpha != 1.0 else w
        bias: Value | None = None
        if cc is not None and beta != 0.0 and cc.const is not None:
            cv = (
                cc.const
                if beta == 1.0
                else (cc.const * np.asarray(beta, cc.const.dtype)).astype(cc.const.dtype)
            )
            n = w.shape[0]
            if cv.size == 1 or cv.shape in ((n,), (1, n)):
                bias = c.new_const(np.broadcast_to(cv.reshape(-1), (n,)).astype(dt), "bias")
            else:
                extra = c.new_const(cv, "C")
        elif cc is not None and beta != 0.0:
            extra = (
                cc
                if beta == 1.0
                else c.emit("mul", [cc, c.new_const(np.asarray(beta, cc.dtype), "beta")])
            )
        y = c.emit("dense", [a, c.new_const(np.ascontiguousarray(w), "w"), bias])
    else:
        if trans_b:
            b = c.emit("transpose", [b], {"perm": (1, 0)})
        y = c.emit("matmul", [a, b])
        if alpha != 1.0:
            y = c.emit("mul", [y, c.new_const(np.asarray(alpha, y.dtype), "alpha")])
        if cc is not None and beta != 0.0:
            if cc.const is not None:
                extra = c.new_const(
                    (cc.const * np.asarray(beta, cc.const.dtype)).astype(cc.const.dtype), "C"
                )
            else:
                extra = (
                    cc
                    if beta == 1.0
                    else c.emit("mul", [cc, c.new_const(np.asarray(beta, cc.dtype), "beta")])
                )
    if extra is not None:
        y = c.emit("add", [y, extra])
    c.set_out(0, y)


@handles("MatMul")
def matmul(c: NodeCtx) -> None:
    a, b = c.x(0), c.x(1)
    if b.const is not None and b.type.rank == 2:
        c.set_out(0, c.emit("dense", [a, c.new_const(np.ascontiguousarray(b.const.T), "w")]))
    else:
        c.set_out(0, c.emit("matmul", [a, b]))


@handles("BatchNormalization")
def batch_norm(c: NodeCtx) -> None:
    if int(c.attr("training_mode", 0)) or any(c.output_used(i) for i in range(1, 5)):
        raise c.fail("training-mode BatchNormalization (running mean/var outputs) is not supported")
    ins = [c.x(i) for i in range(5)]
    c.set_out(0, c.emit("batch_norm", ins, {"epsilon": float(c.attr("epsilon", 1e-5))}))


@handles("LRN")
def lrn(c: NodeCtx) -> None:
    attrs = {
        "size": int(c.attr("size")),
        "alpha": float(c.attr("alpha", 1e-4)),
        "beta": float(c.attr("beta", 0.75)),
        "bias": float(c.attr("bias", 1.0)),
    }
    c.set_out(0, c.emit("lrn", [c.x(0)], attrs))


@handles("Softmax", "LogSoftmax")
def softmax(c: NodeCtx) -> None:
    x = c.x(0)
    r = x.type.rank
    op = "softmax" if c.op_type == "Softmax" else "log_softmax"
    if c.opset >= 13:
        c.set_out(0, c.emit(op, [x], {"axis": int(c.attr("axis", -1))}))
        return
    axis = _axis(c, c.attr("axis", 1), r)
    if axis == r - 1:  # coerce-to-2-D on the last axis is the same as softmax on it
        c.set_out(0, c.emit(op, [x], {"axis": -1}))
        return
    flat = c.emit("flatten", [x], {"axis": axis})
    y = c.emit(op, [flat], {"axis": -1})
    c.set_out(0, c.emit("reshape", [y], {"shape": x.shape}))


# --- activations ----------------------------------------------------------------------------------
_UNARY = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "HardSwish": "hard_swish",
    "Identity": "identity",
    "Exp": "exp",
    "Sqrt": "sqrt",
    "Neg": "neg",
    "Abs": "abs",
    "Erf": "erf",
    "Log": "log",
    "Reciprocal": "reciprocal",
    "Floor": "floor",
    "Sign": "sign",
    "Ceil": "ceil",
    "Softplus": "softplus",
    "Softsign": "softsign",
}


@handles(*_UNARY)
def unary(c: NodeCtx) -> None:
    c.set_out(0, c.emit(_UNARY[c.op_type], [c.x(0)]))


@handles("LeakyRelu")
def leaky_relu(c: NodeCtx) -> None:
    c.set_out(0, c.emit("leaky_relu", [c.x(0)], {"alpha": float(c.attr("alpha", 0.01))}))


@handles("Elu")
def elu(c: NodeCtx) -> None:
    c.set_out(0, c.emit("elu", [c.x(0)], {"alpha": float(c.attr("alpha", 1.0))}))


@handles("Selu")
def selu(c: NodeCtx) -> None:
    attrs = {
        "alpha": float(c.attr("alpha", 1.67326319217681884765625)),
        "gamma": float(c.attr("gamma", 1.05070102214813232421875)),
    }
    c.set_out(0, c.emit("selu", [c.x(0)], attrs))


@handles("Gelu")
def gelu(c: NodeCtx) -> None:
    """Opset 20's ``Gelu``: the erf form as ``gelu``; ``approximate="tanh"`` spelled out
    (``x / 2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``)."""
    x = c.x(0)
    approx = c.attr("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else str(approx)
    if approx == "none":
        c.set_out(0, c.emit("gelu", [x]))
        return
    if approx != "tanh":
        raise c.fail(f"approximate={approx!r} is not 'none' or 'tanh'")

    def k(v: float) -> Value:
        return c.new_const(np.array(v, x.dtype), "gelu_k")

    cube = c.emit("mul", [c.emit("mul", [x, x]), x])
    inner = c.emit("add", [x, c.emit("mul", [cube, k(0.044715)])])
    t = c.emit("tanh", [c.emit("mul", [inner, k(float(np.sqrt(2.0 / np.pi)))])])
    c.set_out(0, c.emit("mul", [c.emit("mul", [x, k(0.5)]), c.emit("add", [t, k(1.0)])]))


@handles("HardSigmoid")
def hard_sigmoid(c: NodeCtx) -> None:
    attrs = {"alpha": float(c.attr("alpha", 0.2)), "beta": float(c.attr("beta", 0.5))}
    c.set_out(0, c.emit("hard_sigmoid", [c.x(0)], attrs))


@handles("PRelu")
def prelu(c: NodeCtx) -> None:
    x, slope = c.x(0), c.x(1)
    r, n = x.type.rank, slope.type.size
    if c.source_opset < 7 and slope.type.rank == 1 and n > 1 and r >= 3 and x.shape[1] == n:
        # opset < 7: one slope per channel (dim 1); opset 7+ broadcasts numpy-style from the last
        # dim, and onnx.version_converter leaves the slope as it is, so give it the shape (C, 1, ...)
        shape = (n,) + (1,) * (r - 2)
        slope = (
            c.new_const(slope.const.reshape(shape), "slope")
            if slope.const is not None
            else c.emit("reshape", [slope], {"shape": shape})
        )
    c.set_out(0, c.emit("prelu", [x, slope]))


@handles("Clip")
def clip(c: NodeCtx) -> None:
    if c.opset < 11:
        lo, hi = float(c.attr("min", -math.inf)), float(c.attr("max", math.inf))
        c.set_out(0, c.emit("clip", [c.x(0)], {"min": lo, "max": hi}))
        return
    # opset 11+: a bound is an input. A constant one is the clip op's attribute; a computed one (a
    # log-mel's top-dB floor `Clip(x, ReduceMax(x) - 80)`) is an elementwise maximum / minimum.
    bounds: dict[str, float] = {"min": -math.inf, "max": math.inf}
    computed: dict[str, Value] = {}
    for i, key in ((1, "min"), (2, "max")):
        if c.inp(i) is None:
            continue
        v = c.x(i)
        if v.const is not None:
            bounds[key] = float(np.asarray(v.const).reshape(()))
        elif v.type.size != 1:
            raise c.fail(f"{key} (input {i}) has shape {v.shape}; ONNX requires a scalar")
        elif v.dtype != c.x(0).dtype:
            raise c.fail(f"{key} (input {i}) is {v.type}, the input {c.x(0).type}")
        else:
            computed[key] = v if v.type.rank == 0 else c.emit("reshape", [v], {"shape": ()})
    # min(max(x, lo), hi), in that order (a min above the max gives the max everywhere)
    y = c.x(0)
    if "min" in computed:
        y = c.emit("maximum", [y, computed["min"]])
    if not computed or bounds != {"min": -math.inf, "max": math.inf}:
        y = c.emit("clip", [y], bounds)
    if "max" in computed:
        y = c.emit("minimum", [y, computed["max"]])
    c.set_out(0, y)


@handles("LayerNormalization")
def layer_norm(c: NodeCtx) -> None:
    x = c.x(0)
    attrs = {"axis": int(c.attr("axis", -1)), "epsilon": float(c.attr("epsilon", 1e-5))}
    c.set_out(0, c.emit("layer_norm", [x, c.inp(1), c.inp(2)], attrs))
    if c.output_used(1) or c.output_used(2):  # the statistics, as ops of their own
        rank = x.type.rank
        red = {"axes": tuple(range(attrs["axis"] % rank, rank)), "keepdims": 1}
        mean = c.emit("reduce_mean", [x], red)
        d = c.emit("sub", [x, mean])
        var = c.emit("reduce_mean", [c.emit("mul", [d, d])], red)
        eps = c.new_const(np.array(attrs["epsilon"], x.dtype), "epsilon")
        c.set_out(1, mean)
        c.set_out(2, c.emit("reciprocal", [c.emit("sqrt", [c.emit("add", [var, eps])])]))


@handles("InstanceNormalization")
def instance_norm(c: NodeCtx) -> None:
    """``(x - mean) / sqrt(var + eps) * scale[c] + bias[c]``, the statistics per sample and
    channel over the spatial dims (fast style transfer's normalization), as mcopt ops."""
    x = c.x(0)
    rank = x.type.rank
    if rank < 3:
        raise c.fail(f"input must be (N, C, ...) with spatial dims, got {list(x.shape)}")
    red = {"axes": tuple(range(2, rank)), "keepdims": 1}
    d = c.emit("sub", [x, c.emit("reduce_mean", [x], red)])
    var = c.emit("reduce_mean", [c.emit("mul", [d, d])], red)
    eps = c.new_const(np.array(float(c.attr("epsilon", 1e-5)), x.dtype), "epsilon")
    y = c.emit("div", [d, c.emit("sqrt", [c.emit("add", [var, eps])])])
    per_channel = (-1,) + (1,) * (rank - 2)
    for i, op in ((1, "mul"), (2, "add")):
        p = c.x(i)
        p = (
            c.new_const(np.asarray(p.const).reshape(per_channel), "param")
            if p.const is not None
            else c.emit("reshape", [p], {"shape": (int(p.shape[0]), *per_channel[1:])})
        )
        y = c.emit(op, [y, p])
    c.set_out(0, y)


@handles("Tile")
def tile(c: NodeCtx) -> None:
    """``Tile`` with constant repeats: ``reshape`` to ``(1, d0, 1, d1, ...)``, ``expand`` to
    ``(r0, d0, r1, d1, ...)``, ``reshape`` to ``(r0 d0, r1 d1, ...)``."""
    x = c.x(0)
    reps = [int(v) for v in np.asarray(c.need_const(1, "repeats")).reshape(-1)]
    if len(reps) != x.type.rank or any(v < 0 for v in reps):
        raise c.fail(f"repeats {reps} must be {x.type.rank} non-negative numbers")
    if all(v == 1 for v in reps):
        c.set_out(0, c.emit("identity", [x]))
        return
    inter = tuple(v for d in x.shape for v in (1, int(d)))
    wide = tuple(v for r, d in zip(reps, x.shape) for v in (r, int(d)))
    y = c.emit("reshape", [x], {"shape": inter})
    y = c.emit("expand", [y], {"shape": wide})
    c.set_out(
        0, c.emit("reshape", [y], {"shape": tuple(r * int(d) for r, d in zip(reps, x.shape))})
    )


@handles("Dropout")
def dropout(c: NodeCtx) -> None:
    if c.output_used(1):
        raise c.fail("the mask output of Dropout is used; mcopt imports inference graphs only")
    ratio = float(c.attr("ratio", 0.5))
    if c.opset >= 12:
        if c.inp(1) is not None:
            ratio = float(c.need_const(1, "ratio").reshape(()))
        if c.inp(2) is not None and bool(c.need_const(2, "training_mode").reshape(())):
            raise c.fail("Dropout with training_mode=true is not supported (inference only)")
    c.set_out(0, c.emit("dropout", [c.x(0)], {"ratio": ratio}))


# --- arithmetic -----------------------------------------------------------------------------------
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow"}


@handles(*_BINARY)
def binary(c: NodeCtx) -> None:
    a, b = c.x(0), c.x(1)
    if b.dtype != a.dtype:  # Pow's exponent may have its own type
        b = (
            c.new_const(b.const.astype(a.dtype), "b")
            if b.const is not None
            else c.emit("cast", [b], {"to": a.dtype})
        )
    c.set_out(0, c.emit(_BINARY[c.op_type], [a, b]))


@handles("Sum")
def sum_(c: NodeCtx) -> None:
    xs = [c.x(i) for i in range(len(c.inputs))]
    y = xs[0] if len(xs) > 1 else c.emit("identity", xs)
    for x in xs[1:]:
        y = c.emit("add", [y, x])
    c.set_out(0, y)


@handles("Max", "Min")
def max_min(c: NodeCtx) -> None:
    xs = [c.x(i) for i in range(len(c.inputs)) if c.inp(i) is not None]
    op = "maximum" if c.op_type == "Max" else "minimum"
    y = xs[0] if len(xs) > 1 else c.emit("identity", xs)
    for x in xs[1:]:
        y = c.emit(op, [y, x])
    c.set_out(0, y)


_COMPARE = {
    "Equal": "equal",
    "Less": "less",
    "Greater": "greater",
    "LessOrEqual": "less_equal",
    "GreaterOrEqual": "greater_equal",
}


@handles(*_COMPARE)
def compare(c: NodeCtx) -> None:
    a, b = c.x(0), c.x(1)
    if a.dtype != b.dtype:
        raise c.fail(f"input dtypes differ ({a.type} and {b.type}); ONNX requires one type")
    c.set_out(0, c.emit(_COMPARE[c.op_type], [a, b]))


_LOGIC = {"And": "logical_and", "Or": "logical_or", "Xor": "logical_xor", "Not": "logical_not"}


@handles(*_LOGIC)
def logic(c: NodeCtx) -> None:
    xs = [c.x(k) for k in range(1 if c.op_type == "Not" else 2)]
    if any(x.dtype != "bool" for x in xs):
        raise c.fail(f"inputs are {[str(x.type) for x in xs]}; ONNX {c.op_type} takes bool")
    c.set_out(0, c.emit(_LOGIC[c.op_type], xs))


@handles("TopK")
def topk(c: NodeCtx) -> None:
    """``TopK`` with a constant (or shape-folded) ``K``; ``sorted=0`` leaves the order free in
    ONNX, so the sorted result is one of the allowed ones."""
    x = c.x(0)
    ax = _axis(c, c.attr("axis", -1), x.type.rank, "TopK axis")
    k = c.const(1)
    if k is None:
        raise c.fail("K is computed at run time; mcopt imports TopK with a constant K")
    k = int(np.asarray(k).reshape(-1)[0])
    if not 1 <= k <= x.shape[ax]:
        raise c.fail(f"K={k} is out of range [1, {x.shape[ax]}] for axis {ax} of {x.type}")
    attrs = {"axis": ax, "k": k, "largest": int(c.attr("largest", 1))}
    outs = c.emit_multi("topk", [x], attrs, n_out=2)
    for i, v in enumerate(outs):
        c.set_out(i, v)


@handles("GatherElements")
def gather_elements(c: NodeCtx) -> None:
    x, i = c.x(0), c.x(1)
    ax = _axis(c, c.attr("axis", 0), x.type.rank, "GatherElements axis")
    c.set_out(0, c.emit("gather_elements", [x, i], {"axis": ax}))


@handles("Where")
def where(c: NodeCtx) -> None:
    cond, a, b = c.x(0), c.x(1), c.x(2)
    if cond.dtype != "bool":
        raise c.fail(f"the condition is {cond.type}; ONNX requires bool")
    if a.dtype != b.dtype:
        raise c.fail(f"input dtypes differ ({a.type} and {b.type}); ONNX requires one type")
    c.set_out(0, c.emit("where", [cond, a, b]))


# --- tensor manipulation --------------------------------------------------------------------------
@handles("Concat")
def concat(c: NodeCtx) -> None:
    xs = [v for v in c.inputs if v is not None]
    axis = _axis(c, c.attr("axis"), xs[0].type.rank)
    xs = [v for v in xs if v.type.size > 0] or xs[:1]  # ONNX allows empty pieces
    c.set_out(0, c.emit("concat", xs, {"axis": axis}) if len(xs) > 1 else c.emit("identity", xs))


@handles("Reshape")
def reshape(c: NodeCtx) -> None:
    x = c.x(0)
    shape = _ints(c.need_const(1, "the target shape"))
    allowzero = int(c.attr("allowzero", 0))
    out = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(shape)]
    if out.count(-1) > 1:
        raise c.fail(f"target shape {shape} has more than one -1")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or x.type.size % known:
            raise c.fail(f"cannot reshape {x.type} to {shape}")
        out[out.index(-1)] = x.type.size // known
    if math.prod(out) != x.type.size:
        raise c.fail(f"cannot reshape {x.type} to {shape} (resolved {out})")
    c.set_out(0, c.emit("reshape", [x], {"shape": tuple(out)}))


@handles("Expand")
def expand(c: NodeCtx) -> None:
    x = c.x(0)
    shape = tuple(_ints(c.need_const(1, "the target shape")))
    try:
        out = tuple(int(d) for d in np.broadcast_shapes(x.shape, shape))
    except ValueError:
        raise c.fail(f"cannot broadcast {x.type} to {list(shape)}") from None
    c.set_out(
        0, c.emit("expand", [x], {"shape": out}) if out != x.shape else c.emit("identity", [x])
    )


@handles("Flatten")
def flatten(c: NodeCtx) -> None:
    x = c.x(0)
    axis = int(c.attr("axis", 1))
    r = x.type.rank
    if not -r <= axis <= r:
        raise c.fail(f"axis {axis} is out of range [{-r}, {r}] for input {x.type}")
    axis = axis + r if axis < 0 else axis
    c.set_out(0, c.emit("flatten", [x], {"axis": axis}))


@handles("Transpose")
def transpose(c: NodeCtx) -> None:
    x = c.x(0)
    perm = _ints(c.attr("perm")) or list(range(x.type.rank))[::-1]
    c.set_out(0, c.emit("transpose", [x], {"perm": tuple(perm)}))


def _axes_arg(c: NodeCtx, idx: int = 1) -> list[int] | None:
    """Axes from the attribute (old opsets) or from constant input `idx` (new opsets)."""
    if "axes" in c.attrs:
        return _ints(c.attr("axes"))
    if c.inp(idx) is not None:
        return _ints(c.need_const(idx, "axes"))
    return None


@handles("Squeeze")
def squeeze(c: NodeCtx) -> None:
    x = c.x(0)
    axes = _axes_arg(c)
    ax = (
        _axes(c, axes, x.type.rank)
        if axes is not None
        else tuple(i for i, d in enumerate(x.shape) if d == 1)
    )
    c.set_out(0, c.emit("squeeze", [x], {"axes": ax}) if ax else c.emit("identity", [x]))


@handles("Unsqueeze")
def unsqueeze(c: NodeCtx) -> None:
    x = c.x(0)
    axes = _axes_arg(c)
    if not axes:
        raise c.fail("Unsqueeze needs axes")
    c.set_out(0, c.emit("unsqueeze", [x], {"axes": _axes(c, axes, x.type.rank + len(axes))}))


@handles("Pad")
def pad(c: NodeCtx) -> None:
    x = c.x(0)
    r = x.type.rank
    mode = c.attr("mode", "constant") or "constant"
    if mode not in ("constant", "reflect", "edge"):
        raise c.fail(f"mode {mode!r} is not supported (constant, reflect, edge)")
    if c.opset < 11:
        pads, value = _ints(c.attr("pads")), float(c.attr("value", 0.0))
    else:
        pads = _ints(c.need_const(1, "pads"))
        value = (
            float(c.need_const(2, "constant_value").reshape(-1)[0]) if c.inp(2) is not None else 0.0
        )
        if c.inp(3) is not None:
            axes = [_axis(c, a, r, "Pad axis") for a in _ints(c.need_const(3, "axes"))]
            full = [0] * (2 * r)
            for j, a in enumerate(axes):
                full[a], full[a + r] = pads[j], pads[j + len(axes)]
            pads = full
    if len(pads) != 2 * r:
        raise c.fail(f"pads {pads} must have {2 * r} values for input {x.type}")
    c.set_out(0, c.emit("pad", [x], {"pads": tuple(pads), "mode": mode, "value": value}))


_REDUCE_OPS = {
    "ReduceMean": "reduce_mean", "ReduceMax": "reduce_max", "ReduceMin": "reduce_min",
    "ReduceSum": "reduce_sum",
}  # fmt: skip


@handles(*_REDUCE_OPS)
def reduce_mean(c: NodeCtx) -> None:
    x = c.x(0)
    axes = _axes_arg(c)
    if not axes:
        if int(c.attr("noop_with_empty_axes", 0)):
            c.set_out(0, c.emit("identity", [x]))
            return
        axes = list(range(x.type.rank))
    attrs = {"axes": _axes(c, axes, x.type.rank), "keepdims": int(c.attr("keepdims", 1))}
    c.set_out(0, c.emit(_REDUCE_OPS[c.op_type], [x], attrs))


@handles("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum")
def reduce_composed(c: NodeCtx) -> None:
    """The other reductions spelled out of mcopt ops: ``ReduceL1 = sum |x|``, ``ReduceL2 =
    sqrt(sum x^2)`` (ArcFace-style embedding normalization), ``ReduceSumSquare = sum x^2``,
    ``ReduceLogSum = log(sum x)``, ``ReduceLogSumExp = log(sum exp(x - max)) + max`` (stable)."""
    x = c.x(0)
    axes = _axes_arg(c)
    if not axes:
        if int(c.attr("noop_with_empty_axes", 0)):  # ONNX: the op on each element alone
            if c.op_type == "ReduceSumSquare":
                c.set_out(0, c.emit("mul", [x, x]))
                return
            one = {"ReduceL1": "abs", "ReduceL2": "abs", "ReduceLogSum": "log"}
            c.set_out(0, c.emit(one.get(c.op_type, "identity"), [x]))
            return
        axes = list(range(x.type.rank))
    keep = int(c.attr("keepdims", 1))
    red = {"axes": _axes(c, axes, x.type.rank), "keepdims": keep}
    if c.op_type == "ReduceLogSumExp":
        if np.dtype(x.dtype).kind != "f":
            raise c.fail(f"input {x.type}: mcopt imports ReduceLogSumExp of float tensors")
        m = c.emit("reduce_max", [x], {**red, "keepdims": 1})
        s = c.emit("reduce_sum", [c.emit("exp", [c.emit("sub", [x, m])])], red)
        m = m if keep else c.emit("reshape", [m], {"shape": s.shape})
        c.set_out(0, c.emit("add", [c.emit("log", [s]), m]))
        return
    if c.op_type == "ReduceL1":
        y = c.emit("reduce_sum", [c.emit("abs", [x])], red)
    elif c.op_type == "ReduceLogSum":
        y = c.emit("log", [c.emit("reduce_sum", [x], red)])
    else:
        y = c.emit("reduce_sum", [c.emit("mul", [x, x])], red)
        if c.op_type == "ReduceL2":
            y = c.emit("sqrt", [y])
    c.set_out(0, y)


@handles("Mish")
def mish(c: NodeCtx) -> None:
    """``Mish(x) = x * tanh(softplus(x))`` (opset 18; YOLOv4-style backbones), spelled out."""
    x = c.x(0)
    c.set_out(0, c.emit("mul", [x, c.emit("tanh", [c.emit("softplus", [x])])]))


@handles("ArgMax", "ArgMin")
def arg_extreme(c: NodeCtx) -> None:
    x = c.x(0)
    attrs = {
        "axis": _axis(c, int(c.attr("axis", 0)), x.type.rank),
        "keepdims": int(c.attr("keepdims", 1)),
        "select_last_index": int(c.attr("select_last_index", 0)),
    }
    c.set_out(0, c.emit(c.op_type.lower(), [x], attrs))


@handles("Split")
def split(c: NodeCtx) -> None:
    x = c.x(0)
    axis = _axis(c, c.attr("axis", 0), x.type.rank)
    n, dim = len(c.node.output), x.shape[axis]
    sizes = _ints(c.attr("split")) if "split" in c.attrs else None
    if sizes is None and c.inp(1) is not None:
        sizes = _ints(c.need_const(1, "split"))
    if not sizes:
        if dim % n and c.attr("num_outputs") is None:
            raise c.fail(f"cannot split dim {dim} into {n} equal parts")
        part = -(-dim // n)
        sizes = [part] * (n - 1) + [dim - part * (n - 1)]
    if sum(sizes) != dim or len(sizes) != n:
        raise c.fail(f"split sizes {sizes} do not fit dim {dim} into {n} outputs")
    outs = c.emit_multi("split", [x], {"axis": axis, "sizes": tuple(sizes)}, n_out=n)
    for i, v in enumerate(outs):
        c.set_out(i, v)


@handles("Slice")
def slice_(c: NodeCtx) -> None:
    x = c.x(0)
    r = x.type.rank
    if c.opset < 10:
        starts, ends = _ints(c.attr("starts")), _ints(c.attr("ends"))
        axes = _ints(c.attr("axes")) or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(c.need_const(1, "starts")), _ints(c.need_const(2, "ends"))
        axes = _ints(c.need_const(3, "axes")) if c.inp(3) is not None else list(range(len(starts)))
        steps = _ints(c.need_const(4, "steps")) if c.inp(4) is not None else [1] * len(starts)
    rs, re_, ra, rp = [], [], [], []
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        if sp == 0:
            raise c.fail("Slice step 0 is invalid")
        ax = _axis(c, ax, r, "Slice axis")
        b, e, s = slice(st, en, sp).indices(x.shape[ax])  # ONNX clamping == Python's
        if (
            e < 0
        ):  # "before index 0" for a negative step; mcopt's slice (like ONNX) reads -1 as last
            e = -x.shape[ax] - 1
        rs.append(b)
        re_.append(e)
        ra.append(ax)
        rp.append(s)
    attrs = {"starts": tuple(rs), "ends": tuple(re_), "axes": tuple(ra), "steps": tuple(rp)}
    c.set_out(0, c.emit("slice", [x], attrs))


@handles("Gather")
def gather(c: NodeCtx) -> None:
    """``Gather`` of constant indices from a computed tensor (all-constant ones are folded): a
    scalar index is a one-wide slice + squeeze (Silero VAD's ``state[0]``, ``state[1]``), evenly
    spaced indices a strided slice. Computed indices into the rows of a constant 2-D table (a
    token embedding) are an ``embedding`` lookup; any other index set a ``take``."""
    x = c.x(0)
    r = x.type.rank
    ax = _axis(c, c.attr("axis", 0), r, "Gather axis")
    if c.const(1) is None:
        table = x.const
        if table is None or ax != 0 or r != 2 or np.dtype(x.dtype).kind != "f":
            # any other computed index set (swift-f0's argmax into its mask / frequency table)
            c.set_out(0, c.emit("take", [x, c.x(1)], {"axis": ax}))
            return
        i = c.x(1)  # ONNX counts a negative index from the end
        zero = c.new_const(np.zeros((), i.dtype), "zero")
        rows = c.new_const(np.asarray(table.shape[0], i.dtype), "rows")
        i = c.emit("where", [c.emit("less", [i, zero]), c.emit("add", [i, rows]), i])
        c.set_out(0, c.emit("embedding", [i, x]))
        return
    idx = np.asarray(c.const(1)).astype(np.int64)
    dim = int(x.shape[ax])
    if np.any((idx < -dim) | (idx >= dim)):
        raise c.fail(f"indices {idx.tolist()} out of range for axis {ax} of size {dim}")
    flat = np.where(idx < 0, idx + dim, idx).reshape(-1)
    step = int(flat[1] - flat[0]) if flat.size > 1 else 1
    if idx.ndim > 1 or flat.size == 0 or step == 0 or np.any(np.diff(flat) != step):
        c.set_out(0, c.emit("take", [x, c.x(1)], {"axis": ax}))  # not a slice: a gather
        return
    start, end = int(flat[0]), int(flat[-1]) + step
    if end < 0:  # a negative step down to index 0: "before index 0"
        end = -dim - 1
    attrs = {"starts": (start,), "ends": (end,), "axes": (ax,), "steps": (step,)}
    y = c.emit("slice", [x], attrs)
    c.set_out(0, c.emit("squeeze", [y], {"axes": (ax,)}) if idx.ndim == 0 else y)


@handles("Cast")
def cast(c: NodeCtx) -> None:
    to = onnx_dtype_name(int(c.attr("to")), f"node '{c.name}' (Cast) target")
    c.set_out(0, c.emit("cast", [c.x(0)], {"to": to}))


__all__ = ["HANDLERS", "supported_ops"]

# the other import tables register their handlers on import
from mcopt.onnx_io import (  # noqa: E402,F401
    import_composed,
    import_quant,
    import_recurrent,
    import_resample,
)
