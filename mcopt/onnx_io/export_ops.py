"""mcopt op -> ONNX node(s), one small function per mcopt op (export opsets 13-21)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from mcopt.ir.core import Node
from mcopt.onnx_io.export_compressed import (
    export_binary_conv2d,
    export_binary_dense,
    export_codebook_weight,
    export_winograd_conv2d,
)
from mcopt.onnx_io.exporter import EXPORTERS, ExportFn, _Exporter


def exports(*ops: str) -> Callable[[ExportFn], ExportFn]:
    def deco(fn: ExportFn) -> ExportFn:
        for op in ops:
            EXPORTERS[op] = fn
        return fn

    return deco


def _io(e: _Exporter, n: Node) -> tuple[list[str], list[str]]:
    ins = [e.name_of(v) for v in n.inputs]
    while ins and ins[-1] == "":
        ins.pop()
    return ins, [o.name for o in n.outputs]


def _simple(onnx_op: str, **fixed: object) -> ExportFn:
    def fn(e: _Exporter, n: Node) -> None:
        ins, outs = _io(e, n)
        e.add(onnx_op, ins, outs, n.name, **fixed)

    return fn


for _op, _onnx in {
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "identity": "Identity",
    "dropout": "Identity",  # inference: dropout is the identity
    "exp": "Exp",
    "sqrt": "Sqrt",
    "neg": "Neg",
    "abs": "Abs",
    "erf": "Erf",
    "log": "Log",
    "reciprocal": "Reciprocal",
    "floor": "Floor",
    "sign": "Sign",
    "ceil": "Ceil",
    "softplus": "Softplus",
    "softsign": "Softsign",
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "div": "Div",
    "pow": "Pow",
    "maximum": "Max",
    "minimum": "Min",
    "equal": "Equal",
    "less": "Less",
    "greater": "Greater",
    "less_equal": "LessOrEqual",
    "greater_equal": "GreaterOrEqual",
    "where": "Where",
    "logical_and": "And",
    "logical_or": "Or",
    "logical_xor": "Xor",
    "logical_not": "Not",
    "prelu": "PRelu",
    "matmul": "MatMul",
    "global_avg_pool": "GlobalAveragePool",
    "global_max_pool": "GlobalMaxPool",
}.items():
    EXPORTERS[_op] = _simple(_onnx)


@exports("hard_swish")
def hard_swish(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    if e.opset >= 14:
        e.add("HardSwish", ins, outs, n.name)
        return
    hs = e.fresh(f"{n.name}_hsig")
    e.add("HardSigmoid", ins, [hs], e.fresh(f"{n.name}_hsig"), alpha=1.0 / 6, beta=0.5)
    e.add("Mul", [ins[0], hs], outs, n.name)


@exports("silu")
def silu(e: _Exporter, n: Node) -> None:
    """``x * Sigmoid(x)`` (ONNX's ``Swish`` needs opset 24, which few runtimes read)."""
    ins, outs = _io(e, n)
    sig = e.fresh(f"{n.name}_sigmoid")
    e.add("Sigmoid", ins, [sig], e.fresh(f"{n.name}_sigmoid"))
    e.add("Mul", [ins[0], sig], outs, n.name)


@exports("gelu")
def gelu(e: _Exporter, n: Node) -> None:
    """``x * 0.5 * (1 + Erf(x / sqrt 2))`` (ONNX's ``Gelu`` needs opset 20)."""
    ins, outs = _io(e, n)
    t = [e.fresh(f"{n.name}_{k}") for k in ("div", "erf", "add", "half")]
    e.add("Div", [ins[0], e.init(np.array(np.sqrt(2.0), np.float32), f"{n.name}_sqrt2", np.float32)],
          [t[0]], t[0])  # fmt: skip
    e.add("Erf", [t[0]], [t[1]], t[1])
    e.add(
        "Add", [t[1], e.init(np.array(1.0, np.float32), f"{n.name}_one", np.float32)], [t[2]], t[2]
    )
    e.add("Mul", [ins[0], e.init(np.array(0.5, np.float32), f"{n.name}_half", np.float32)],
          [t[3]], t[3])  # fmt: skip
    e.add("Mul", [t[3], t[2]], outs, n.name)


@exports("lstm", "gru")
def recurrent(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    if len(ins) > 4:  # ONNX's input 4 is sequence_lens (mcopt's sequences are whole)
        ins = [*ins[:4], "", *ins[4:]]
    extra = {"linear_before_reset": int(n.attrs["linear_before_reset"])} if n.op == "gru" else {}
    e.add(n.op.upper(), ins, outs, n.name, hidden_size=int(n.attrs["hidden_size"]),
          direction=str(n.attrs["direction"]), **extra)  # fmt: skip


@exports("qlstm")
def qlstm(e: _Exporter, n: Node) -> None:
    """The int8 codes stored as they are, ``Cast`` to float and scaled per gate row (``Mul`` by
    the scales as ``(D, 4H, 1)``) before an ``LSTM`` (onnxruntime folds the two into its float
    weights at load; the file keeps one byte per weight)."""
    ins = [e.name_of(v) for v in n.inputs] + [""] * (8 - len(n.inputs))
    weights = []
    for q, s, tag in ((ins[1], ins[3], "w"), (ins[2], ins[4], "r")):
        f, y = e.fresh(f"{n.name}_{tag}_float"), e.fresh(f"{n.name}_{tag}")
        sc = e.fresh(f"{n.name}_{tag}_scale_col")
        e.add("Cast", [q], [f], e.fresh(f"{n.name}_{tag}_cast"), to=TensorProto.FLOAT)
        if e.opset >= 13:
            axes = e.init([2], f"{n.name}_{tag}_axes")
            e.add("Unsqueeze", [s, axes], [sc], e.fresh(f"{n.name}_{tag}_unsqueeze"))
        else:
            e.add("Unsqueeze", [s], [sc], e.fresh(f"{n.name}_{tag}_unsqueeze"), axes=[2])
        e.add("Mul", [f, sc], [y], e.fresh(f"{n.name}_{tag}_scale"))
        weights.append(y)
    lstm_ins = [ins[0], *weights, ins[5], "", ins[6], ins[7]]
    while lstm_ins and lstm_ins[-1] == "":
        lstm_ins.pop()
    e.add("LSTM", lstm_ins, [o.name for o in n.outputs], n.name,
          hidden_size=int(n.attrs["hidden_size"]), direction=str(n.attrs["direction"]))  # fmt: skip


@exports("conv2d")
def conv2d(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    w = n.inputs[1]
    assert w is not None
    e.add(
        "Conv",
        ins,
        outs,
        n.name,
        kernel_shape=list(w.shape[2:]),
        strides=list(n.attrs["strides"]),
        pads=list(n.attrs["pads"]),
        dilations=list(n.attrs["dilations"]),
        group=int(n.attrs["groups"]),
    )


@exports("dense")
def dense(e: _Exporter, n: Node) -> None:
    x, w, b = (list(n.inputs) + [None])[:3]
    assert x is not None and w is not None
    ins, outs = _io(e, n)
    if x.type.rank == 2:
        e.add("Gemm", ins, outs, n.name, transB=1)
        return
    if w.const is not None:
        wt = e.init(np.ascontiguousarray(w.const.T), f"{w.name}_T", dtype=w.const.dtype)
    else:
        wt = e.fresh(f"{w.name}_T")
        e.add("Transpose", [ins[1]], [wt], e.fresh(f"{n.name}_wT"), perm=[1, 0])
    if b is None:
        e.add("MatMul", [ins[0], wt], outs, n.name)
    else:
        mm = e.fresh(f"{n.name}_matmul")
        e.add("MatMul", [ins[0], wt], [mm], e.fresh(f"{n.name}_matmul"))
        e.add("Add", [mm, ins[2]], outs, n.name)


@exports("batch_norm")
def batch_norm(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    e.add("BatchNormalization", ins, outs, n.name, epsilon=float(n.attrs["epsilon"]))


@exports("max_pool", "avg_pool")
def pool(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    a = n.attrs
    x = n.inputs[0]
    assert x is not None
    pads, ceil = list(a["pads"]), int(a["ceil_mode"])
    include_pad = n.op == "avg_pool" and int(a["count_include_pad"])
    if ceil:
        # ceil_mode's "last window must start inside the input" rule is applied by onnxruntime
        # but not by ONNX shape inference: export an equivalent floor-mode pool instead
        in_hw = list(x.shape[2:])
        if include_pad:  # the declared pads are real zeros that count: pad explicitly first
            padded = e.fresh(f"{n.name}_padded")
            zero = e.init(np.array(0, x.dtype), f"{n.name}_zero", dtype=x.dtype)
            full = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]
            e.add("Pad", [ins[0], e.init(full, f"{n.name}_pads"), zero], [padded], padded)
            ins = [padded]
            in_hw = [in_hw[0] + pads[0] + pads[2], in_hw[1] + pads[1] + pads[3]]
            pads, include_pad = [0, 0, 0, 0], 0
        pads, ceil = _floor_mode_pads(in_hw, n.outputs[0].shape[2:], a, pads), 0
    common = {"kernel_shape": list(a["kernel"]), "strides": list(a["strides"]), "pads": pads}
    if n.op == "max_pool":
        e.add("MaxPool", ins, outs, n.name, dilations=list(a["dilations"]), **common)
    else:
        e.add("AveragePool", ins, outs, n.name, count_include_pad=int(include_pad), **common)


def _floor_mode_pads(
    in_hw: list[int], out_hw: tuple[int, ...], a: dict[str, Any], pads: list[int]
) -> list[int]:
    """End pads that make a floor-mode pool produce the ceil-mode output size.

    Exact for max pooling and for average pooling that excludes pads: the extra padding never
    contributes to a result.
    """
    dil = a.get("dilations", (1, 1))
    pads = list(pads)
    for i in range(2):
        size, k, s = in_hw[i], a["kernel"][i], a["strides"][i]
        eff = dil[i] * (k - 1) + 1
        if (size + pads[i] + pads[2 + i] - eff) // s + 1 != out_hw[i]:
            pads[2 + i] = (out_hw[i] - 1) * s + eff - size - pads[i]
    return pads


@exports("lrn")
def lrn(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    a = n.attrs
    e.add("LRN", ins, outs, n.name, size=int(a["size"]), alpha=float(a["alpha"]),
          beta=float(a["beta"]), bias=float(a["bias"]))  # fmt: skip


@exports("softmax", "log_softmax")
def softmax(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    op = "Softmax" if n.op == "softmax" else "LogSoftmax"
    e.add(op, ins, outs, n.name, axis=int(n.attrs["axis"]))


@exports("layer_norm")
def layer_norm(e: _Exporter, n: Node) -> None:
    """``LayerNormalization`` from opset 17 (a constant scale / bias broadcast to the normalized
    shape, a missing scale as ones); spelled out below it, or for a computed scale / bias of
    another shape."""
    ins, outs = _io(e, n)
    x = n.inputs[0]
    assert x is not None
    axis = int(n.attrs["axis"]) % x.type.rank
    eps = float(n.attrs["epsilon"])
    normalized = tuple(x.shape[axis:])
    dt = np.dtype(x.dtype)
    params = list(n.inputs[1:3]) + [None] * (3 - len(n.inputs))
    if e.opset >= 17 and all(
        p is None or p.const is not None or tuple(p.shape) == normalized for p in params
    ):
        args = [ins[0]]
        for i, p in enumerate(params):
            if p is None and i == 0:
                args.append(e.init(np.ones(normalized, dt), f"{n.name}_scale", dtype=dt))
            elif p is not None and p.const is not None and tuple(p.shape) != normalized:
                arr = np.broadcast_to(np.asarray(p.const, dt), normalized)
                args.append(e.init(arr, f"{n.name}_{('scale', 'bias')[i]}", dtype=dt))
            elif p is not None:
                args.append(e.name_of(p))
        e.add("LayerNormalization", args, outs, n.name, axis=axis, epsilon=eps)
        return
    axes = list(range(axis, x.type.rank))

    def mean(src: str, hint: str) -> str:
        out = e.fresh(f"{n.name}_{hint}")
        if e.opset >= 18:
            e.add("ReduceMean", [src, e.init(axes, f"{n.name}_axes")], [out], out, keepdims=1)
        else:
            e.add("ReduceMean", [src], [out], out, axes=axes, keepdims=1)
        return out

    def step(op: str, a: str, b: str, hint: str, out: str | None = None) -> str:
        out = out or e.fresh(f"{n.name}_{hint}")
        e.add(op, [a, b], [out], e.fresh(f"{n.name}_{hint}_node"))
        return out

    d = step("Sub", ins[0], mean(ins[0], "mean"), "centered")
    var = mean(step("Mul", d, d, "square"), "var")
    std = e.fresh(f"{n.name}_std")
    e.add("Sqrt", [step("Add", var, e.init(eps, f"{n.name}_eps", dtype=dt), "var_eps")], [std], std)
    tail = [(op, e.name_of(p)) for op, p in (("Mul", params[0]), ("Add", params[1])) if p]
    y = step("Div", d, std, "normed", out=None if tail else outs[0])
    for k, (op, pname) in enumerate(tail):
        y = step(op, y, pname, op.lower(), out=outs[0] if k == len(tail) - 1 else None)


@exports("clip")
def clip(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    x = n.inputs[0]
    assert x is not None
    dt = np.dtype(x.dtype)
    bounds = []
    for key, bound in (("min", float(n.attrs["min"])), ("max", float(n.attrs["max"]))):
        if np.isinf(bound):
            bounds.append("")  # an omitted bound is unbounded
            continue
        if dt.kind in "iu":
            bound = min(max(bound, np.iinfo(dt).min), np.iinfo(dt).max)
        bounds.append(e.init(np.array(bound, dt), f"{n.name}_{key}", dtype=dt))
    while bounds and bounds[-1] == "":
        bounds.pop()
    e.add("Clip", [ins[0], *bounds], outs, n.name)


@exports("elu", "selu")
def elu(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    if n.op == "elu":
        e.add("Elu", ins, outs, n.name, alpha=float(n.attrs["alpha"]))
    else:
        e.add("Selu", ins, outs, n.name, alpha=float(n.attrs["alpha"]),
              gamma=float(n.attrs["gamma"]))  # fmt: skip


@exports("leaky_relu")
def leaky_relu(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    e.add("LeakyRelu", ins, outs, n.name, alpha=float(n.attrs["alpha"]))


@exports("hard_sigmoid")
def hard_sigmoid(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    e.add(
        "HardSigmoid", ins, outs, n.name, alpha=float(n.attrs["alpha"]), beta=float(n.attrs["beta"])
    )


@exports("reshape")
def reshape(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    target = list(n.attrs["shape"])
    if e.batch_symbol and target:
        target[0] = 0  # copy the (symbolic) batch from the input; batch_blocker checked dim 0 stays
    shape = e.init(target, f"{n.name}_shape")
    e.add("Reshape", [ins[0], shape], outs, n.name)


@exports("embedding")
def embedding(e: _Exporter, n: Node) -> None:
    """``Gather`` of the table with a zero row appended, at ``Clip(int64(i), -1, rows)``: an index
    outside ``[0, rows)`` reads the zero row (Gather takes -1 as the last row)."""
    ins, outs = _io(e, n)
    table = n.inputs[1]
    assert table is not None and table.const is not None
    rows = table.shape[0]
    padded = np.concatenate([table.const, np.zeros((1, table.shape[1]), table.const.dtype)])
    t = e.init(padded, f"{n.name}_table", padded.dtype)
    i64 = e.fresh(f"{n.name}_i64")
    e.add("Cast", [ins[0]], [i64], e.fresh(f"{n.name}_cast"), to=TensorProto.INT64)
    lo, hi = (
        e.init(np.array(-1, np.int64), f"{n.name}_lo"),
        e.init(np.array(rows, np.int64), f"{n.name}_hi"),
    )
    clipped = e.fresh(f"{n.name}_clip")
    e.add("Clip", [i64, lo, hi], [clipped], e.fresh(f"{n.name}_clip"))
    e.add("Gather", [t, clipped], outs, n.name, axis=0)


@exports("expand")
def expand(e: _Exporter, n: Node) -> None:
    """``Expand`` to the output shape with 1 wherever the input already has the size (ONNX's
    broadcast keeps those dims, so a symbolic batch passes through)."""
    ins, outs = _io(e, n)
    x = n.inputs[0]
    assert x is not None
    full = list(n.attrs["shape"])
    lead = len(full) - x.type.rank
    target = [1 if i >= lead and x.shape[i - lead] == d else d for i, d in enumerate(full)]
    e.add("Expand", [ins[0], e.init(target, f"{n.name}_shape")], outs, n.name)


@exports("flatten")
def flatten(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    e.add("Flatten", ins, outs, n.name, axis=int(n.attrs["axis"]))


@exports("transpose")
def transpose(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    e.add("Transpose", ins, outs, n.name, perm=list(n.attrs["perm"]))


@exports("squeeze", "unsqueeze")
def squeeze(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    axes = e.init(list(n.attrs["axes"]), f"{n.name}_axes")
    e.add("Squeeze" if n.op == "squeeze" else "Unsqueeze", [ins[0], axes], outs, n.name)


@exports("concat")
def concat(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    e.add("Concat", ins, outs, n.name, axis=int(n.attrs["axis"]))


@exports("split")
def split(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    sizes = e.init(list(n.attrs["sizes"]), f"{n.name}_split")
    e.add("Split", [ins[0], sizes], outs, n.name, axis=int(n.attrs["axis"]))


@exports("slice")
def slice_(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    a = n.attrs
    args = [
        e.init(list(a["starts"]), f"{n.name}_starts"),
        e.init(list(a["ends"]), f"{n.name}_ends"),
        e.init(list(a["axes"]), f"{n.name}_axes"),
        e.init(list(a["steps"]), f"{n.name}_steps"),
    ]
    e.add("Slice", [ins[0], *args], outs, n.name)


@exports("pad")
def pad(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    x = n.inputs[0]
    assert x is not None
    pads = e.init(list(n.attrs["pads"]), f"{n.name}_pads")
    args = [ins[0], pads]
    mode = str(n.attrs["mode"])
    if mode == "constant":
        dt = np.dtype(x.dtype)
        args.append(e.init(np.array(n.attrs["value"], dt), f"{n.name}_value", dtype=dt))
    e.add("Pad", args, outs, n.name, mode=mode)


#: mcopt reduction -> (ONNX op, the first opset where its axes are an input)
_REDUCE_OPS = {
    "reduce_mean": ("ReduceMean", 18), "reduce_max": ("ReduceMax", 18),
    "reduce_min": ("ReduceMin", 18), "reduce_sum": ("ReduceSum", 13),
}  # fmt: skip


@exports(*_REDUCE_OPS)
def reduce_mean(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    op, axes_input_from = _REDUCE_OPS[n.op]
    axes, keep = list(n.attrs["axes"]), int(n.attrs["keepdims"])
    if e.opset >= axes_input_from:
        e.add(op, [ins[0], e.init(axes, f"{n.name}_axes")], outs, n.name, keepdims=keep)
    else:
        e.add(op, ins, outs, n.name, axes=axes, keepdims=keep)


@exports("take", "gather_elements")
def gather(e: _Exporter, n: Node) -> None:
    """``Gather`` / ``GatherElements``, the indices clamped to ``[-dim, dim)`` first (mcopt's
    semantics for out-of-range ones, which ONNX leaves undefined; from opset 12, where Clip takes
    integers)."""
    ins, outs = _io(e, n)
    x = n.inputs[0]
    assert x is not None
    axis = int(n.attrs["axis"]) % x.type.rank
    idx = ins[1]
    if e.opset >= 12:
        dim = int(x.shape[axis])
        i64 = e.fresh(f"{n.name}_i64")
        e.add("Cast", [idx], [i64], e.fresh(f"{n.name}_cast"), to=TensorProto.INT64)
        idx = e.fresh(f"{n.name}_idx")
        lo, hi = (
            e.init(np.array(-dim, np.int64), f"{n.name}_lo"),
            e.init(np.array(dim - 1, np.int64), f"{n.name}_hi"),
        )
        e.add("Clip", [i64, lo, hi], [idx], e.fresh(f"{n.name}_clip"))
    op = "Gather" if n.op == "take" else "GatherElements"
    e.add(op, [ins[0], idx], outs, n.name, axis=axis)


@exports("topk")
def topk(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    k = e.init(np.array([int(n.attrs["k"])], np.int64), f"{n.name}_k")
    e.add("TopK", [ins[0], k], outs, n.name, axis=int(n.attrs["axis"]),
          largest=int(n.attrs["largest"]), sorted=1)  # fmt: skip


@exports("argmax", "argmin")
def arg_extreme(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    a = n.attrs
    e.add("ArgMax" if n.op == "argmax" else "ArgMin", ins, outs, n.name, axis=int(a["axis"]),
          keepdims=int(a["keepdims"]), select_last_index=int(a["select_last_index"]))  # fmt: skip


@exports("cast")
def cast(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    e.add("Cast", ins, outs, n.name, to=helper.np_dtype_to_tensor_dtype(np.dtype(n.attrs["to"])))


__all__ = ["EXPORTERS"]


# winograd_conv2d exports as the standard Conv it replaced (weight recovered from U = G g G^T)
exports("winograd_conv2d")(export_winograd_conv2d)


# binary and shared-weight ops export as the equivalent float graph
@exports("upsample_nearest")
def upsample_nearest(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    sh, sw = n.attrs["scales"]
    scales = e.init(np.array([1, 1, sh, sw], np.float32), f"{n.name}_scales", dtype=np.float32)
    e.add("Resize", [ins[0], "", scales], outs, n.name, mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # fmt: skip


@exports("conv_transpose2d")
def conv_transpose2d(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    w = n.inputs[1]
    assert w is not None
    a = n.attrs
    e.add("ConvTranspose", ins, outs, n.name, kernel_shape=list(w.shape[2:]),
          strides=list(a["strides"]), pads=list(a["pads"]), dilations=list(a["dilations"]),
          group=int(a["groups"]), output_padding=list(a["output_padding"]))  # fmt: skip


@exports("depth_to_space")
def depth_to_space(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    e.add("DepthToSpace", ins, outs, n.name, blocksize=int(n.attrs["blocksize"]),
          mode=str(n.attrs["mode"]))  # fmt: skip


exports("binary_conv2d")(export_binary_conv2d)
exports("binary_dense")(export_binary_dense)
exports("codebook_weight")(export_codebook_weight)

from mcopt.onnx_io import export_quant  # noqa: E402,F401  (QDQ export of the quantization ops)
