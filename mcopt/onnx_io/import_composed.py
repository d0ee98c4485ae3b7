"""ONNX ops imported as a few mcopt ops each (no op of their own): ``CastLike``, ``Mean``,
``SpaceToDepth``, ``Celu``, ``ThresholdedRelu``, ``LpNormalization``,
``MeanVarianceNormalization`` and ``GroupNormalization``, each the formula of its ONNX definition
(the function body ONNX itself gives where it has one)."""

from __future__ import annotations

import numpy as np

from mcopt.onnx_io.import_ops import _axes, _axis, handles
from mcopt.onnx_io.importer import NodeCtx


def _scalar(c: NodeCtx, value: float, like: str, hint: str):  # type: ignore[no-untyped-def]
    return c.new_const(np.array(value, like), hint)


@handles("CastLike")
def cast_like(c: NodeCtx) -> None:
    """``Cast`` to the second input's element type (PyTorch's dynamo exporter writes many)."""
    c.set_out(0, c.emit("cast", [c.x(0)], {"to": c.x(1).dtype}))


@handles("Mean")
def mean(c: NodeCtx) -> None:
    """The elementwise mean of the inputs (broadcasting): their sum times ``1 / n``."""
    xs = [c.x(i) for i in range(len(c.node.input)) if c.node.input[i]]
    y = xs[0] if len(xs) > 1 else c.emit("identity", xs)
    for x in xs[1:]:
        y = c.emit("add", [y, x])
    if len(xs) > 1:
        y = c.emit("mul", [y, _scalar(c, 1.0 / len(xs), xs[0].dtype, "inv_n")])
    c.set_out(0, y)


@handles("SpaceToDepth")
def space_to_depth(c: NodeCtx) -> None:
    """``(N, C, H, W) -> (N, C b^2, H/b, W/b)``: reshape to ``(N, C, H/b, b, W/b, b)``, transpose
    ``(0, 3, 5, 1, 2, 4)``, reshape (ONNX's definition; YOLOv2's reorg, space-to-depth stems)."""
    x = c.x(0)
    b = int(c.attr("blocksize"))
    if x.type.rank != 4:
        raise c.fail(f"input must be (N, C, H, W), got {list(x.shape)}")
    n, ch, h, w = (int(d) for d in x.shape)
    if b < 1 or h % b or w % b:
        raise c.fail(f"blocksize {b} does not divide the input's H x W = {h} x {w}")
    t = c.emit("reshape", [x], {"shape": (n, ch, h // b, b, w // b, b)})
    t = c.emit("transpose", [t], {"perm": (0, 3, 5, 1, 2, 4)})
    c.set_out(0, c.emit("reshape", [t], {"shape": (n, ch * b * b, h // b, w // b)}))


@handles("Celu")
def celu(c: NodeCtx) -> None:
    """``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``."""
    x = c.x(0)
    alpha = float(c.attr("alpha", 1.0))
    zero, one = _scalar(c, 0.0, x.dtype, "zero"), _scalar(c, 1.0, x.dtype, "one")
    a, inv = _scalar(c, alpha, x.dtype, "alpha"), _scalar(c, 1.0 / alpha, x.dtype, "inv_alpha")
    e = c.emit("mul", [a, c.emit("sub", [c.emit("exp", [c.emit("mul", [x, inv])]), one])])
    neg = c.emit("minimum", [e, zero])
    c.set_out(0, c.emit("add", [c.emit("relu", [x]), neg]))


@handles("ThresholdedRelu")
def thresholded_relu(c: NodeCtx) -> None:
    """``x where x > alpha else 0``."""
    x = c.x(0)
    alpha = _scalar(c, float(c.attr("alpha", 1.0)), x.dtype, "alpha")
    zero = _scalar(c, 0.0, x.dtype, "zero")
    c.set_out(0, c.emit("where", [c.emit("greater", [x, alpha]), x, zero]))


@handles("LpNormalization")
def lp_normalization(c: NodeCtx) -> None:
    """``x / ||x||_p`` along ``axis`` (p = 1 or 2); 0 where the norm is 0 (ONNX's expected
    outputs: an all-zero slice stays zero)."""
    x = c.x(0)
    ax = _axis(c, int(c.attr("axis", -1)), x.type.rank, "LpNormalization axis")
    p = int(c.attr("p", 2))
    if p not in (1, 2):
        raise c.fail(f"p={p}: ONNX LpNormalization takes p = 1 or 2")
    red = {"axes": (ax,), "keepdims": 1}
    if p == 1:
        norm = c.emit("reduce_sum", [c.emit("abs", [x])], red)
    else:
        norm = c.emit("sqrt", [c.emit("reduce_sum", [c.emit("mul", [x, x])], red)])
    zero, one = _scalar(c, 0.0, x.dtype, "zero"), _scalar(c, 1.0, x.dtype, "one")
    norm = c.emit("where", [c.emit("equal", [norm, zero]), one, norm])
    c.set_out(0, c.emit("div", [x, norm]))


@handles("MeanVarianceNormalization")
def mean_variance_normalization(c: NodeCtx) -> None:
    """``(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)`` over ``axes`` (ONNX's function body)."""
    x = c.x(0)
    axes = c.attr("axes", [0, 2, 3])
    red = {"axes": _axes(c, [int(a) for a in axes], x.type.rank), "keepdims": 1}
    m = c.emit("reduce_mean", [x], red)
    var = c.emit(
        "sub", [c.emit("reduce_mean", [c.emit("mul", [x, x])], red), c.emit("mul", [m, m])]
    )
    std = c.emit("add", [c.emit("sqrt", [var]), _scalar(c, 1e-9, x.dtype, "eps")])
    c.set_out(0, c.emit("div", [c.emit("sub", [x, m]), std]))


@handles("GroupNormalization")
def group_normalization(c: NodeCtx) -> None:
    """Per sample and group of ``C / G`` channels: ``(x - mean) / sqrt(var + eps)``, then
    ``* scale + bias`` per channel (opset 21; onnx's checker refuses opset 18's deprecated
    per-group form)."""
    x = c.x(0)
    if x.type.rank < 3:
        raise c.fail(f"input must be (N, C, ...) with spatial dims, got {list(x.shape)}")
    g = int(c.attr("num_groups"))
    n, ch = int(x.shape[0]), int(x.shape[1])
    if g < 1 or ch % g:
        raise c.fail(f"num_groups={g} does not divide the {ch} channels")
    spatial = tuple(int(d) for d in x.shape[2:])
    t = c.emit("reshape", [x], {"shape": (n, g, ch // g * int(np.prod(spatial)))})
    red = {"axes": (2,), "keepdims": 1}
    d = c.emit("sub", [t, c.emit("reduce_mean", [t], red)])
    var = c.emit("reduce_mean", [c.emit("mul", [d, d])], red)
    eps = _scalar(c, float(c.attr("epsilon", 1e-5)), x.dtype, "epsilon")
    y = c.emit("div", [d, c.emit("sqrt", [c.emit("add", [var, eps])])])
    y = c.emit("reshape", [y], {"shape": tuple(int(v) for v in x.shape)})
    per_channel = (-1,) + (1,) * len(spatial)
    for i, op in ((1, "mul"), (2, "add")):
        p = np.asarray(c.need_const(i, "scale" if i == 1 else "bias")).reshape(-1)
        if p.size != ch:
            raise c.fail(f"input {i} has {p.size} values; expected one per channel ({ch})")
        y = c.emit(op, [y, c.new_const(p.astype(x.dtype).reshape(per_channel), "param")])
    c.set_out(0, y)


__all__: list[str] = []
