"""The training form of every op: one table, ``TRAIN_FORMS[op](node, builder) -> forward``.

A form declares how the node's constant inputs are held (:class:`~mcopt.train.module.Builder`:
trainable parameter with a transform, or fixed buffer) and returns ``forward(*inputs)`` computing what
the op's numpy reference computes, differentiably (rounding and sign through straight-through
estimators, :mod:`mcopt.train.ste`). Ops with no training form sit in :data:`WAIVED` with the reason;
``tests/test_train.py`` checks that every registered op is in exactly one of the two.

Dim 0 is the batch: forms whose attributes address dim 0 (a reshape that changes it, a concat / split
/ slice / softmax / reduction over it, a transpose that moves it) refuse with a one-line reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mcopt.errors import UnsupportedOpError
from mcopt.ir.core import Node, Value
from mcopt.ir.types import FixedPoint, TensorType, UniformQuant
from mcopt.ops import fixed as fxo
from mcopt.ops._util import norm_axes, norm_axis
from mcopt.ops.binary import PackedBinary, pack_bits, unpack_weight
from mcopt.ops.pool import _geometry, _window_counts
from mcopt.ops.quant import output_bounds, qrange, requant_multiplier, weight_scales
from mcopt.ops.winograd import TRANSFORMS, winograd_weight_inverse
from mcopt.train.module import Builder, finalizer
from mcopt.train.ste import floor_ste, round_ste, sign_ste, trunc_ste

Form = Callable[[Node, Builder], Callable[..., Any]]
TRAIN_FORMS: dict[str, Form] = {}

#: ops without a training form, and why (train before the pass that introduces them)
_PLANNED = (
    "a target-planned op: the CPU build plans a copy of the graph after every pass, training "
    "included, so a planned graph is never trained (train the graph it was planned from)"
)
WAIVED: dict[str, str] = {
    op: _PLANNED for op in ("fused_conv2d", "fused_dense", "fused_qconv2d", "permute_channels")
} | {
    "lstm": "time-major (batch on dim 1) while training forms hold the batch on dim 0; the "
    "transpose that feeds a CRNN's LSTM is refused for the same reason",
    "qlstm": "an lstm (time-major, see lstm) with int8 weights: train the float lstm before "
    "quantize-int8",
    "gru": "time-major (batch on dim 1), as lstm",
}


def form(*ops: str) -> Callable[[Form], Form]:
    def deco(fn: Form) -> Form:
        for op in ops:
            TRAIN_FORMS[op] = fn
        return fn

    return deco


def form_for(op: str, node: Node) -> Form:
    f = TRAIN_FORMS.get(op)
    if f is None:
        why = WAIVED.get(op, "no training form is registered for this op")
        raise UnsupportedOpError(f"node {node.name!r} ({op}) cannot be trained: {why}")
    return f


# --- helpers ---------------------------------------------------------------------------------------
def _is_int(v: Value | None) -> bool:
    return v is not None and np.dtype(v.dtype).kind in "iub"


def _bshape(ndim: int, axis: int = 1) -> list[int]:
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def _pad4(x: torch.Tensor, pads: tuple[int, int, int, int], value: float = 0.0) -> torch.Tensor:
    pt, pl, pb, pr = pads
    if not (pt or pl or pb or pr):
        return x
    return F.pad(x, (pl, pr, pt, pb), value=value)


def _conv(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, a: dict[str, Any]
) -> torch.Tensor:
    pt, pl, pb, pr = a["pads"]
    if pt == pb and pl == pr:
        return F.conv2d(x, w, b, a["strides"], (pt, pl), a["dilations"], a.get("groups", 1))
    return F.conv2d(_pad4(x, a["pads"]), w, b, a["strides"], 0, a["dilations"], a.get("groups", 1))


def _batch_axis_guard(b: Builder, axes: tuple[int, ...] | None, what: str) -> None:
    if axes is not None and 0 in axes:
        raise b.refuse(f"{what} over dim 0, the batch (train with the batch dim left alone)")


def _const_f(b: Builder, x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, np.float64), dtype=b.dtype)


# --- elementwise -----------------------------------------------------------------------------------
_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "sqrt": torch.sqrt,
    "neg": torch.neg,
    "abs": torch.abs,
    "erf": torch.erf,
    "log": torch.log,
    "reciprocal": torch.reciprocal,
    "floor": torch.floor,
    "sign": torch.sign,
    "ceil": torch.ceil,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "identity": lambda x: x,
    "hard_swish": lambda x: x * torch.clamp(x / 6 + 0.5, 0, 1),
    "silu": F.silu,
    "gelu": F.gelu,
}


@form(*_UNARY)
def _unary(node: Node, b: Builder) -> Callable[..., Any]:
    return _UNARY[node.op]


@form("elu", "selu")
def _elu(node: Node, b: Builder) -> Callable[..., Any]:
    alpha = float(node.attrs["alpha"])
    if node.op == "elu":
        return lambda x: F.elu(x, alpha)
    gamma = float(node.attrs["gamma"])
    return lambda x: gamma * F.elu(x, alpha)


@form("hard_sigmoid")
def _hard_sigmoid(node: Node, b: Builder) -> Callable[..., Any]:
    al, be = float(node.attrs["alpha"]), float(node.attrs["beta"])
    return lambda x: torch.clamp(al * x + be, 0, 1)


@form("leaky_relu")
def _leaky(node: Node, b: Builder) -> Callable[..., Any]:
    al = float(node.attrs["alpha"])
    return lambda x: torch.where(x >= 0, x, x * al)


@form("prelu")
def _prelu(node: Node, b: Builder) -> Callable[..., Any]:
    b.param(1)
    return lambda x, slope: torch.where(x >= 0, x, x * slope)


@form("clip")
def _clip(node: Node, b: Builder) -> Callable[..., Any]:
    lo, hi = float(node.attrs["min"]), float(node.attrs["max"])
    if _is_int(node.inputs[0]):
        lo, hi = (
            math.ceil(lo) if math.isfinite(lo) else lo,
            math.floor(hi) if math.isfinite(hi) else hi,
        )
    lo_, hi_ = (lo if math.isfinite(lo) else None), (hi if math.isfinite(hi) else None)
    return lambda x: x if lo_ is None and hi_ is None else torch.clamp(x, lo_, hi_)


@form("dropout")
def _dropout(node: Node, b: Builder) -> Callable[..., Any]:
    p = float(node.attrs["ratio"])
    return lambda x: F.dropout(x, p, training=b.training) if p > 0 else x


@form("cast")
def _cast(node: Node, b: Builder) -> Callable[..., Any]:
    to = np.dtype(node.attrs["to"])
    src = node.inputs[0]
    if to.kind == "b":
        return lambda x: x != 0
    if to.kind in "iu" and src is not None and np.dtype(src.dtype).kind == "f":
        info = np.iinfo(to)
        return lambda x: torch.clamp(trunc_ste(x), float(info.min), float(info.max))
    return lambda x: x.to(b.dtype) if x.dtype == torch.bool else x


def _arith(node: Node, b: Builder) -> Callable[..., Any]:
    """Broadcasting arithmetic; constant operands stay fixed (e.g. input normalization)."""
    if node.op == "add":
        return torch.add
    if node.op == "sub":
        return torch.sub
    if node.op == "mul":
        return torch.mul
    if node.op == "pow":
        return torch.pow
    if _is_int(node.inputs[0]):
        return lambda x, y: trunc_ste(x / y)
    return torch.div


form("add", "sub", "mul", "div", "pow")(_arith)

_ELEMENTWISE2: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "equal": torch.eq,
    "less": torch.lt,
    "greater": torch.gt,
    "less_equal": torch.le,
    "greater_equal": torch.ge,
}


@form(*_ELEMENTWISE2)
def _elementwise2(node: Node, b: Builder) -> Callable[..., Any]:
    return _ELEMENTWISE2[node.op]


@form("where")
def _where(node: Node, b: Builder) -> Callable[..., Any]:
    return torch.where


_LOGIC: dict[str, Callable[..., torch.Tensor]] = {
    "logical_and": torch.logical_and,
    "logical_or": torch.logical_or,
    "logical_xor": torch.logical_xor,
    "logical_not": torch.logical_not,
}


@form(*_LOGIC)
def _logic(node: Node, b: Builder) -> Callable[..., Any]:
    return _LOGIC[node.op]


def _index(i: torch.Tensor, dim: int) -> torch.Tensor:
    """``mcopt.ops.tensor._index_of``: negative from the end, the rest clamped into [0, dim)."""
    i = i.long()
    return torch.where(i < 0, i + dim, i).clamp(0, dim - 1)


@form("take")
def _take(node: Node, b: Builder) -> Callable[..., Any]:
    axis = int(node.attrs["axis"])

    def take(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        ax = axis % x.dim()
        idx = _index(i, x.shape[ax])
        y = torch.index_select(x, ax, idx.reshape(-1))
        return y.reshape(*x.shape[:ax], *idx.shape, *x.shape[ax + 1 :])

    return take


@form("topk")
def _topk(node: Node, b: Builder) -> Callable[..., Any]:
    axis, k, largest = int(node.attrs["axis"]), int(node.attrs["k"]), bool(node.attrs["largest"])

    def topk(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ax = axis % x.dim()
        idx = torch.argsort(x, dim=ax, descending=largest, stable=True).narrow(ax, 0, k)
        return torch.gather(x, ax, idx), idx

    return topk


@form("gather_elements")
def _gather_elements(node: Node, b: Builder) -> Callable[..., Any]:
    axis = int(node.attrs["axis"])

    def gather(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        ax = axis % x.dim()
        src = x[tuple(slice(0, d) if k != ax else slice(None) for k, d in enumerate(i.shape))]
        return torch.gather(src, ax, _index(i, x.shape[ax]))

    return gather


# --- linear layers ---------------------------------------------------------------------------------
@form("conv2d")
def _conv2d(node: Node, b: Builder) -> Callable[..., Any]:
    b.param(1)
    b.param(2)
    a = node.attrs
    return lambda x, w, bias=None: _conv(x, w, bias, a)


@form("conv_transpose2d")
def _conv_transpose2d(node: Node, b: Builder) -> Callable[..., Any]:
    b.param(1)
    b.param(2)
    a = node.attrs
    out_hw = tuple(node.output.shape[2:])

    def fwd(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # the full (uncropped) transposed conv, then the ONNX crop (pads) / extension
        # (output_padding) to the output size, then the bias
        y = F.conv_transpose2d(x, w, None, a["strides"], 0, 0, a["groups"], a["dilations"])
        pt, pl = a["pads"][0], a["pads"][1]
        y = y[:, :, pt : pt + out_hw[0], pl : pl + out_hw[1]]
        dh, dw = out_hw[0] - y.shape[2], out_hw[1] - y.shape[3]
        if dh or dw:
            y = F.pad(y, (0, dw, 0, dh))
        return y if bias is None else y + bias.reshape(1, -1, 1, 1)

    return fwd


@form("upsample_nearest")
def _upsample_nearest(node: Node, b: Builder) -> Callable[..., Any]:
    sh, sw = (int(s) for s in node.attrs["scales"])
    return lambda x: x.repeat_interleave(sh, dim=2).repeat_interleave(sw, dim=3)


@form("depth_to_space")
def _depth_to_space(node: Node, b: Builder) -> Callable[..., Any]:
    bs, dcr = int(node.attrs["blocksize"]), node.attrs["mode"] == "DCR"

    def fwd(x: torch.Tensor) -> torch.Tensor:
        if not dcr:
            return F.pixel_shuffle(x, bs)  # CRD is PyTorch's pixel shuffle
        n, c, h, w = x.shape
        t = x.reshape(n, bs, bs, c // bs**2, h, w).permute(0, 3, 4, 1, 5, 2)
        return t.reshape(n, c // bs**2, h * bs, w * bs)

    return fwd


@form("dense")
def _dense(node: Node, b: Builder) -> Callable[..., Any]:
    b.param(1)
    b.param(2)
    return lambda x, w, bias=None: F.linear(x, w, bias)


@form("matmul")
def _matmul(node: Node, b: Builder) -> Callable[..., Any]:
    for i in (0, 1):
        v = node.inputs[i]
        if v is not None and v.is_const and np.dtype(v.dtype).kind == "f":
            b.param(i)
    return torch.matmul


@form("layer_norm")
def _layer_norm(node: Node, b: Builder) -> Callable[..., Any]:
    """Scale and bias train (any shape that broadcasts to the normalized one)."""
    x = node.inputs[0]
    assert x is not None
    dims = tuple(range(int(node.attrs["axis"]) % x.type.rank, x.type.rank))
    _batch_axis_guard(b, dims, node.op)
    b.param(1)
    b.param(2)
    eps = float(node.attrs["epsilon"])

    def fwd(t: torch.Tensor, scale: Any = None, bias: Any = None) -> torch.Tensor:
        d = t - t.mean(dim=dims, keepdim=True)
        y = d * torch.rsqrt((d * d).mean(dim=dims, keepdim=True) + eps)
        y = y * scale if scale is not None else y
        return y + bias if bias is not None else y

    return fwd


@form("batch_norm")
def _batch_norm(node: Node, b: Builder) -> Callable[..., Any]:
    """Scale and bias train. Running mean / variance are fixed buffers (eval mode), unless the
    module's ``bn_train`` is set: then a training step normalizes by the batch's statistics and
    updates the running ones (momentum 0.1, as ``torch.nn.BatchNorm2d``; Ioffe & Szegedy 2015),
    which are written back — for training from scratch, where statistics fitted to the initial
    weights go stale."""
    b.param(1)
    b.param(2)
    b.buffer(3, writeback=True)
    b.buffer(4, writeback=True)
    eps = float(node.attrs["epsilon"])
    module = b.module

    def fwd(x: torch.Tensor, scale: Any, bias: Any, mean: Any, var: Any) -> torch.Tensor:
        if module.bn_train and module.training and x.dim() >= 2:
            return F.batch_norm(x, mean, var, scale, bias, training=True, momentum=0.1, eps=eps)
        k = scale / torch.sqrt(var + eps)
        shp = _bshape(x.dim())
        return x * k.reshape(shp) + (bias - mean * k).reshape(shp)

    return fwd


@form("lrn")
def _lrn(node: Node, b: Builder) -> Callable[..., Any]:
    a = node.attrs
    size, alpha, beta, bias = int(a["size"]), float(a["alpha"]), float(a["beta"]), float(a["bias"])
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2

    def fwd(x: torch.Tensor) -> torch.Tensor:
        sq = x * x
        pad = [0, 0] * (x.dim() - 2) + [lo + 1, hi]
        cs = torch.cumsum(F.pad(sq, pad), dim=1)
        c = x.shape[1]
        sums = cs[:, size : size + c] - cs[:, :c]
        return x / (bias + (alpha / size) * sums) ** beta

    return fwd


@form("softmax", "log_softmax")
def _softmax(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    ax = norm_axis(node.attrs["axis"], x.type.rank)
    _batch_axis_guard(b, (ax,) if ax is not None else None, node.op)
    if node.op == "log_softmax":
        return lambda t: torch.log_softmax(t, dim=ax)
    return lambda t: torch.softmax(t, dim=ax)


# --- pooling ---------------------------------------------------------------------------------------
def _pool_taps(
    x: torch.Tensor, a: dict[str, Any], out_hw: tuple[int, int], fill: float
) -> list[torch.Tensor]:
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["strides"], a["pads"]
    dh, dw = a.get("dilations", (1, 1))
    ho, wo = out_hw
    need_h = (ho - 1) * sh + dh * (kh - 1) + 1
    need_w = (wo - 1) * sw + dw * (kw - 1) + 1
    eh = max(0, need_h - (x.shape[2] + pt + pb))
    ew = max(0, need_w - (x.shape[3] + pl + pr))
    xp = _pad4(x, (pt, pl, pb + eh, pr + ew), fill)
    return [
        xp[:, :, i * dh : i * dh + (ho - 1) * sh + 1 : sh, j * dw : j * dw + (wo - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]


@form("max_pool", "fx_max_pool")
def _max_pool(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    a = dict(node.attrs)
    out_hw = _geometry(x.shape, a)
    dt = np.dtype(x.dtype)
    fill = float(np.finfo(dt).min if dt.kind == "f" else np.iinfo(dt).min)

    def fwd(t: torch.Tensor) -> torch.Tensor:
        taps = _pool_taps(t, a, out_hw, fill)
        y = taps[0]
        for tap in taps[1:]:
            y = torch.maximum(y, tap)
        return y

    return fwd


def _window_sum(t: torch.Tensor, a: dict[str, Any], out_hw: tuple[int, int]) -> torch.Tensor:
    taps = _pool_taps(t, a, out_hw, 0.0)
    y = taps[0]
    for tap in taps[1:]:
        y = y + tap
    return y


@form("avg_pool")
def _avg_pool(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    a = dict(node.attrs)
    out_hw = _geometry(x.shape, a)
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["strides"], a["pads"]
    inc = a["count_include_pad"]
    ch = _window_counts(x.shape[2], out_hw[0], kh, sh, pt, pb, inc)
    cw = _window_counts(x.shape[3], out_hw[1], kw, sw, pl, pr, inc)
    div = _const_f(b, (ch[:, None] * cw[None, :]).astype(np.float64))
    return lambda t: _window_sum(t, a, out_hw) / div.to(t.dtype)


@form("global_avg_pool")
def _gap(node: Node, b: Builder) -> Callable[..., Any]:
    return lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@form("global_max_pool")
def _gmp(node: Node, b: Builder) -> Callable[..., Any]:
    return lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# --- data movement ---------------------------------------------------------------------------------
@form("reshape")
def _reshape(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    shape = tuple(node.attrs["shape"])
    if not shape or not x.shape or shape[0] != x.shape[0]:
        raise b.refuse(f"the reshape {list(x.shape)} -> {list(shape)} changes dim 0, the batch")
    rest = shape[1:]
    return lambda t: t.reshape((t.shape[0], *rest))


@form("embedding")
def _embedding(node: Node, b: Builder) -> Callable[..., Any]:
    b.param(1)

    def lookup(i: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        rows = table.shape[0]
        ok = (i >= 0) & (i < rows)
        return table[i.clamp(0, rows - 1).long()] * ok.unsqueeze(-1).to(table.dtype)

    return lookup


@form("expand")
def _expand(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    shape = tuple(node.attrs["shape"])
    if len(shape) != x.type.rank or shape[0] != x.shape[0]:
        raise b.refuse(f"the expand {list(x.shape)} -> {list(shape)} changes dim 0, the batch")
    rest = shape[1:]
    return lambda t: t.expand((t.shape[0], *rest))


@form("flatten")
def _flatten(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    ax = node.attrs["axis"]
    ax = ax + x.type.rank if ax < 0 else ax
    if ax == 0:
        raise b.refuse("flatten with axis 0 folds the batch into one row")
    return lambda t: t.reshape(math.prod(t.shape[:ax]), -1)


@form("transpose")
def _transpose(node: Node, b: Builder) -> Callable[..., Any]:
    perm = tuple(node.attrs["perm"])
    if perm[0] != 0:
        raise b.refuse(f"perm {list(perm)} moves dim 0, the batch")
    return lambda t: t.permute(perm)


@form("squeeze")
def _squeeze(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    axes = norm_axes(node.attrs["axes"], x.type.rank)
    _batch_axis_guard(b, axes, "squeeze")
    keep = tuple(i for i in range(x.type.rank) if i not in (axes or ()))
    return lambda t: t.reshape([t.shape[i] for i in keep])


@form("unsqueeze")
def _unsqueeze(node: Node, b: Builder) -> Callable[..., Any]:
    out = node.outputs[0]
    axes = norm_axes(node.attrs["axes"], out.type.rank)
    _batch_axis_guard(b, axes, "unsqueeze")
    rank = out.type.rank

    def fwd(t: torch.Tensor) -> torch.Tensor:
        it = iter(t.shape)
        return t.reshape([1 if i in (axes or ()) else next(it) for i in range(rank)])

    return fwd


@form("concat")
def _concat(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    ax = norm_axis(node.attrs["axis"], x.type.rank)
    _batch_axis_guard(b, (ax,) if ax is not None else None, "concat")
    return lambda *xs: torch.cat(xs, dim=ax)


@form("split")
def _split(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    ax = norm_axis(node.attrs["axis"], x.type.rank)
    _batch_axis_guard(b, (ax,) if ax is not None else None, "split")
    sizes = list(node.attrs["sizes"])
    return lambda t: tuple(torch.split(t, sizes, dim=ax))


@form("slice")
def _slice(node: Node, b: Builder) -> Callable[..., Any]:
    from mcopt.ops.tensor import _slices

    x = node.inputs[0]
    assert x is not None
    sl = _slices(x.shape, dict(node.attrs))
    if sl and sl[0] != slice(None):
        raise b.refuse("slicing dim 0, the batch")
    flips: list[int] = []
    index: list[slice] = []
    for d, s in enumerate(sl):
        if s.step is not None and s.step < 0:
            # torch has no negative steps: flip, then slice forward
            size = x.shape[d]
            idx = list(range(*s.indices(size)))
            flips.append(d)
            if idx:
                first = size - 1 - idx[0]
                index.append(slice(first, first + (len(idx) - 1) * -s.step + 1, -s.step))
            else:
                index.append(slice(0, 0))
        else:
            index.append(s)
    tup = tuple(index)
    return lambda t: (t.flip(flips) if flips else t)[tup]


@form("pad")
def _pad(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    r = x.type.rank
    pads = tuple(node.attrs["pads"])
    mode, value = node.attrs["mode"], float(node.attrs["value"])
    if pads[0] or pads[r]:
        raise b.refuse("padding dim 0, the batch")
    tpad: list[int] = []
    for i in reversed(range(r)):
        tpad += [max(pads[i], 0), max(pads[i + r], 0)]
    if mode != "constant" and (r != 4 or any(pads[i] or pads[i + r] for i in (0, 1))):
        raise b.refuse(f"mode {mode!r} is trained only on the two spatial dims of NCHW")
    tmode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    crop = tuple(
        slice(-min(pads[i], 0), None if min(pads[i + r], 0) == 0 else min(pads[i + r], 0))
        for i in range(r)
    )
    tp = tpad[:4] if mode != "constant" else tpad

    def fwd(t: torch.Tensor) -> torch.Tensor:
        y = (
            F.pad(t, tp, mode=tmode, value=value)
            if tmode == "constant"
            else F.pad(t, tp, mode=tmode)
        )
        return y[crop]

    return fwd


@form("reduce_mean", "reduce_max", "reduce_min", "reduce_sum")
def _reduce_mean(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    axes = tuple(norm_axes(node.attrs["axes"], x.type.rank) or ()) or tuple(range(x.type.rank))
    _batch_axis_guard(b, axes, node.op)
    keep = bool(node.attrs["keepdims"])
    if node.op == "reduce_mean":
        return lambda t: t.mean(dim=axes, keepdim=keep)
    if node.op == "reduce_sum":
        return lambda t: t.sum(dim=axes, keepdim=keep)
    fn = torch.amax if node.op == "reduce_max" else torch.amin
    return lambda t: fn(t, dim=axes, keepdim=keep)


@form("argmax", "argmin")
def _arg_extreme(node: Node, b: Builder) -> Callable[..., Any]:
    """The index (no gradient: a label output, not something to train through)."""
    a = node.attrs
    axis, keep, last = int(a["axis"]), bool(a["keepdims"]), int(a["select_last_index"])
    fn = torch.argmax if node.op == "argmax" else torch.argmin

    def fwd(t: torch.Tensor) -> torch.Tensor:
        if not last:
            return fn(t, dim=axis, keepdim=keep)
        n = t.shape[axis]
        return n - 1 - fn(torch.flip(t, dims=(axis,)), dim=axis, keepdim=keep)

    return fwd


# --- Winograd --------------------------------------------------------------------------------------
@form("winograd_conv2d")
def _winograd(node: Node, b: Builder) -> Callable[..., Any]:
    """Trains the 3x3 filter g (latent); the op reads U = G g G^T; the forward pass is the direct
    conv with g recovered from U (Winograd is lossless, so this is the same function)."""
    m = int(node.attrs["m"])
    _, g_mat, _ = TRANSFORMS[m]
    gp = np.linalg.pinv(g_mat)
    G, Gp = _const_f(b, g_mat), _const_f(b, gp)
    u = b.const(1)
    if u is not None:
        b.param(
            1,
            init=winograd_weight_inverse(np.asarray(u, np.float64), m),
            transform=lambda g: torch.einsum("xi,ocij,yj->xyco", G.to(g.dtype), g, G.to(g.dtype)),
        )
    b.param(2)
    a = {"strides": (1, 1), "pads": node.attrs["pads"], "dilations": (1, 1), "groups": 1}

    def fwd(x: torch.Tensor, uu: torch.Tensor, bias: Any = None) -> torch.Tensor:
        g = torch.einsum("ix,xyco,jy->ocij", Gp.to(uu.dtype), uu, Gp.to(uu.dtype))
        return _conv(x, g, bias, a)

    return fwd


# --- codebooks (trained quantization) --------------------------------------------------------------
@form("codebook_weight")
def _codebook(node: Node, b: Builder) -> Callable[..., Any]:
    """Deep Compression sec. 3.3: indices fixed; the centroids train, each with the summed gradient
    of the weights that share it (autograd of the gather). A zero centroid (the pinned zero of a
    pruned layer) stays zero, so pruned weights stay pruned."""
    b.buffer(0, dtype=torch.long)
    cb = b.const(1)
    if cb is not None:
        keep = torch.as_tensor(np.asarray(cb) != 0)
        b.param(1, transform=lambda c: c * keep.to(c.dtype))
    shape = tuple(node.attrs["shape"])

    def fwd(idx: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
        t, s, r = idx.shape
        idx = idx.long()
        vec = None
        for ti in range(t):
            d = books.shape[3]
            part = torch.gather(books[ti], 1, idx[ti][:, :, None].expand(s, r, d))
            vec = part if vec is None else vec + part
        assert vec is not None
        return vec.permute(1, 0, 2).reshape(shape)

    return fwd


# --- uniform quantization (QAT) --------------------------------------------------------------------
def _qparams(node: Node) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(scale, zero point, broadcast shape) of a quantize / dequantize node (per tensor or per
    axis), as the reference applies them."""
    a = node.attrs
    v = node.inputs[0]
    assert v is not None
    s = torch.as_tensor(np.asarray(a["scale"], np.float32))
    z = torch.as_tensor(np.asarray(a["zero_point"], np.float32))
    shape = [1] * v.type.rank
    if s.numel() > 1:
        shape[a["axis"] % v.type.rank] = s.numel()
    return s, z, shape


@form("quantize")
def _quantize(node: Node, b: Builder) -> Callable[..., Any]:
    s, z, shp = _qparams(node)
    lo, hi = qrange(node.attrs["dtype"])

    def fwd(t: torch.Tensor) -> torch.Tensor:
        q = round_ste(t / s.to(t.dtype).reshape(shp)) + z.to(t.dtype).reshape(shp)
        return torch.clamp(q, float(lo), float(hi))

    return fwd


@form("dequantize")
def _dequantize(node: Node, b: Builder) -> Callable[..., Any]:
    s, z, shp = _qparams(node)
    return lambda t: (t - z.to(t.dtype).reshape(shp)) * s.to(t.dtype).reshape(shp)


def _q_weight(b: Builder, node: Node, out_channels: int) -> None:
    """int8 weight codes as a latent float weight in real units: w = clamp(round(latent / s), lo, hi)
    (per output channel s = w_scale, from the weight's UniformQuant type), bias codes at scale
    x_scale * w_scale."""
    a = node.attrs
    w = node.inputs[1]
    assert w is not None
    ws = np.asarray(weight_scales(w.type), np.float64).reshape(-1)
    if ws.size == 1:
        ws = np.full(out_channels, ws[0])
    if w.is_const:
        enc = w.type.encoding
        bits = enc.bits if isinstance(enc, UniformQuant) else 8
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        wshape = [-1] + [1] * (len(w.shape) - 1)
        sw = torch.as_tensor(ws).reshape(wshape)
        init = np.asarray(w.const, np.float64) * ws.reshape(wshape)
        b.param(
            1,
            init=init,
            transform=lambda t: torch.clamp(round_ste(t / sw.to(t.dtype)), float(lo), float(hi)),
        )
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and bias.is_const:
        sb = float(a["x_scale"]) * ws
        sbt = torch.as_tensor(sb)
        info = np.iinfo(np.int32)
        b.param(
            2,
            init=np.asarray(bias.const, np.float64) * sb,
            transform=lambda t: torch.clamp(
                round_ste(t / sbt.to(t.dtype)), float(info.min), float(info.max)
            ),
        )


def _q_epilogue(
    b: Builder, node: Node, channels: int, axis: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    a = node.attrs
    w = node.inputs[1]
    assert w is not None
    ws = weight_scales(w.type)
    m = torch.as_tensor(requant_multiplier(a, ws, channels))  # float32, as the reference
    lo, hi = output_bounds(a)
    lo_ = None if math.isinf(lo) else lo
    hi_ = None if math.isinf(hi) else hi
    zp = float(a["out_zero_point"])
    to_float = a["out_dtype"] == "float32"

    def epi(acc: torch.Tensor) -> torch.Tensor:
        shp = [1] * acc.dim()
        shp[axis] = -1
        y = acc * m.to(acc.dtype).reshape(shp)
        if to_float:
            return y if lo_ is None and hi_ is None else torch.clamp(y, lo_, hi_)
        return torch.clamp(round_ste(y) + zp, lo_, hi_)

    return epi


@form("qconv2d")
def _qconv2d(node: Node, b: Builder) -> Callable[..., Any]:
    w = node.inputs[1]
    assert w is not None
    _q_weight(b, node, w.shape[0])
    a = dict(node.attrs)
    xzp = float(a["x_zero_point"])
    epi = _q_epilogue(b, node, w.shape[0], 1)

    def fwd(x: torch.Tensor, wq: torch.Tensor, bq: Any = None) -> torch.Tensor:
        acc = _conv(x - xzp, wq, bq, a)
        return epi(acc)

    return fwd


@form("qdense")
def _qdense(node: Node, b: Builder) -> Callable[..., Any]:
    w = node.inputs[1]
    assert w is not None
    _q_weight(b, node, w.shape[0])
    xzp = float(node.attrs["x_zero_point"])
    epi = _q_epilogue(b, node, w.shape[0], -1)
    return lambda x, wq, bq=None: epi(F.linear(x - xzp, wq, bq))


# --- binary weights / XNOR -------------------------------------------------------------------------
def _binary_weight(b: Builder, node: Node, shape: tuple[int, ...]) -> None:
    """The latent float weight (init alpha * B) through sign with the STE; written back packed."""
    wb, al = b.const(1), b.const(2)
    if wb is None:
        return
    signs = unpack_weight(np.asarray(wb), shape).astype(np.float64)
    alpha = np.ones(shape[0]) if al is None else np.asarray(al, np.float64)
    init = signs * alpha.reshape([-1] + [1] * (len(shape) - 1))
    wv = node.inputs[1]
    assert wv is not None

    def encode(arr: np.ndarray, v: Value) -> tuple[np.ndarray, TensorType]:
        words = pack_bits(arr.reshape(arr.shape[0], -1) >= 0)
        assert isinstance(v.type.encoding, PackedBinary)
        return words, v.type

    b.param(1, init=init, transform=sign_ste, encode=encode)
    b.param(2)


@form("binary_conv2d")
def _binary_conv2d(node: Node, b: Builder) -> Callable[..., Any]:
    a = dict(node.attrs)
    wb = node.inputs[1]
    assert wb is not None
    shape = (wb.shape[0], a["channels"], *a["kernel"])
    _binary_weight(b, node, shape)
    b.param(3)
    geo = {"strides": a["strides"], "pads": a["pads"], "dilations": a["dilations"], "groups": 1}
    kh, kw = a["kernel"]
    xnor, mode = bool(a["binary_input"]), a["beta"]

    def fwd(
        x: torch.Tensor, wsign: torch.Tensor, alpha: torch.Tensor, bias: Any = None
    ) -> torch.Tensor:
        if xnor:
            y = _conv(sign_ste(x), wsign, None, geo) * alpha.reshape(1, -1, 1, 1)
            if mode == "tensor":
                y = y * x.abs().mean()
            elif mode == "position":
                am = x.abs().mean(dim=1, keepdim=True)
                box = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype)
                y = y * _conv(am, box, None, geo)
        else:
            y = _conv(x, wsign, None, geo) * alpha.reshape(1, -1, 1, 1)
        return y if bias is None else y + bias.reshape(1, -1, 1, 1)

    return fwd


@form("binary_dense")
def _binary_dense(node: Node, b: Builder) -> Callable[..., Any]:
    a = node.attrs
    wb = node.inputs[1]
    assert wb is not None
    _binary_weight(b, node, (wb.shape[0], a["in_features"]))
    b.param(3)
    xnor, mode = bool(a["binary_input"]), a["beta"]

    def fwd(
        x: torch.Tensor, wsign: torch.Tensor, alpha: torch.Tensor, bias: Any = None
    ) -> torch.Tensor:
        if xnor:
            y = F.linear(sign_ste(x), wsign) * alpha
            if mode == "tensor":
                y = y * x.abs().mean()
            elif mode == "position":
                y = y * x.abs().mean(dim=-1, keepdim=True)
        else:
            y = F.linear(x, wsign) * alpha
        return y if bias is None else y + bias

    return fwd


# --- fixed point -----------------------------------------------------------------------------------
def _shift_round(acc: torch.Tensor, shift: int) -> torch.Tensor:
    if shift > 0:
        return floor_ste((acc + float(1 << (shift - 1))) / float(1 << shift))
    if shift < 0:
        return acc * float(1 << (-shift))
    return acc


def _requant(acc: torch.Tensor, shift: int, bits: int) -> torch.Tensor:
    lo, hi = fxo.qrange(bits)
    return torch.clamp(_shift_round(acc, shift), float(lo), float(hi))


def _fx_const(b: Builder, i: int) -> None:
    """A fixed-point constant (FixedPoint encoding: bits, frac_bits) as a latent float in real
    units: q = clamp(round(latent * 2^frac), range of `bits`)."""
    v = b.node.inputs[i] if i < len(b.node.inputs) else None
    if v is None or not v.is_const:
        return
    enc = v.type.encoding
    frac = enc.frac_bits if isinstance(enc, FixedPoint) else 0
    bits = enc.bits if isinstance(enc, FixedPoint) else np.dtype(v.dtype).itemsize * 8
    lo, hi = fxo.qrange(min(bits, 63))
    info = np.iinfo(np.dtype(v.dtype))
    lo, hi = max(lo, info.min), min(hi, info.max)
    scale = 2.0**frac
    b.param(
        i,
        init=np.asarray(v.const, np.float64) / scale,
        transform=lambda t: torch.clamp(round_ste(t * scale), float(lo), float(hi)),
    )


@form("fx_quantize")
def _fx_quantize(node: Node, b: Builder) -> Callable[..., Any]:
    bits, frac = int(node.attrs["bits"]), int(node.attrs["frac_bits"])
    lo, hi = fxo.qrange(bits)
    return lambda x: torch.clamp(floor_ste(x * 2.0**frac + 0.5), float(lo), float(hi))


@form("fx_dequantize")
def _fx_dequantize(node: Node, b: Builder) -> Callable[..., Any]:
    frac = int(node.attrs["frac_bits"])
    return lambda q: q * 2.0**-frac


@form("fx_conv2d")
def _fx_conv2d(node: Node, b: Builder) -> Callable[..., Any]:
    _fx_const(b, 1)
    _fx_const(b, 2)
    a = dict(node.attrs)
    shift, bits = int(a["shift"]), int(a["bits"])
    return lambda x, w, bias=None: _requant(_conv(x, w, bias, a), shift, bits)


@form("fx_dense")
def _fx_dense(node: Node, b: Builder) -> Callable[..., Any]:
    _fx_const(b, 1)
    _fx_const(b, 2)
    shift, bits = int(node.attrs["shift"]), int(node.attrs["bits"])
    return lambda x, w, bias=None: _requant(F.linear(x, w, bias), shift, bits)


def _fx_acc_bits(node: Node) -> None:
    """After training changed the weights: re-derive the accumulator width from the fixed-point
    pass's worst-case bound (sum |w| * 2^(bits-1) + |b| + rounding), so int32 is used only where it
    provably cannot overflow."""
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or w.const is None:
        return
    b = node.inputs[2] if len(node.inputs) > 2 else None
    xbits = np.dtype(x.dtype).itemsize * 8
    k_abs = np.abs(w.const.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1)
    bound = int(np.max(k_abs)) * (1 << (xbits - 1))
    if b is not None and b.const is not None and b.const.size:
        bound += int(np.max(np.abs(b.const.astype(np.int64))))
    bound += 1 << max(int(node.attrs["shift"]) - 1, 0)
    node.attrs["acc_bits"] = 32 if bound < (1 << 31) else 64


finalizer("fx_conv2d")(_fx_acc_bits)
finalizer("fx_dense")(_fx_acc_bits)


@form("fx_relu")
def _fx_relu(node: Node, b: Builder) -> Callable[..., Any]:
    return torch.relu


@form("fx_clip")
def _fx_clip(node: Node, b: Builder) -> Callable[..., Any]:
    lo, hi = float(node.attrs["lo"]), float(node.attrs["hi"])
    return lambda x: torch.clamp(x, lo, hi)


@form("fx_add")
def _fx_add(node: Node, b: Builder) -> Callable[..., Any]:
    a = node.attrs
    la, lb = float(1 << int(a["lshift_a"])), float(1 << int(a["lshift_b"]))
    shift, bits = int(a["shift"]), int(a["bits"])
    return lambda x, y: _requant(x * la + y * lb, shift, bits)


@form("fx_avg_pool")
def _fx_avg_pool(node: Node, b: Builder) -> Callable[..., Any]:
    x = node.inputs[0]
    assert x is not None
    a = {**node.attrs, "ceil_mode": 0}
    out_hw = _geometry(x.shape, a)
    mult, shift, bits = float(a["mult"]), int(a["shift"]), int(a["bits"])
    return lambda t: _requant(_window_sum(t, a, out_hw) * mult, shift, bits)


__all__ = ["TRAIN_FORMS", "WAIVED", "form", "form_for"]
