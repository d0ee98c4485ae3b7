"""Lowerings of the uniform-quantization ops (mcopt/ops/quant.py) to TVM.

- ``quantize`` / ``dequantize``: elementwise TE kernels (``emit_te``) with ``nearbyint`` (round half
  to even, as the numpy reference and ONNX) so the integer codes match the reference exactly.
- ``qconv2d`` (groups == 1): :func:`mcopt.targets.cpu.kernels.int8_conv.int8_conv2d`, tensorized with
  the target's dot-product instruction (:func:`~mcopt.targets.cpu.kernels.int8_intrin.choose_isa`:
  VNNI ``vpdpbusd`` when the target has it, ``vpmaddubsw`` on AVX2/AVX-512BW when every weight is
  7-bit, ``sdot`` on AArch64 +dotprod); the requantize/dequantize epilogue is fused. Depthwise
  convs use :func:`~mcopt.targets.cpu.kernels.int8_conv.int8_depthwise_conv2d`; other grouped convs a
  plain Relax int32 conv with the same epilogue.
- ``qdense``: :func:`mcopt.targets.cpu.kernels.int8_dense.int8_dense` (inputs of rank > 2 flattened).

Weights are constants: packing, the zero-point correction ``bias_eff = bias_q - x_zp' * sum(w)``
and the float32 multipliers are computed in numpy at compile time. The target is the lowering
context's ``target`` if it has one, else the current ``tvm.target.Target``, else the host CPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tvm
from tvm import relax, te, tirx

from mcopt.errors import TargetError
from mcopt.ir.core import Node
from mcopt.ops.quant import output_bounds, qrange, requant_multiplier, weight_scales
from mcopt.targets.cpu.kernels import int8_conv, int8_dense
from mcopt.targets.cpu.kernels.int8_intrin import ISAS, choose_isa
from mcopt.targets.cpu.kernels.relax_ops import _call, view_params
from mcopt.targets.relax.lower import LowerContext, LowerResult, register_lowering


def lowering_target(ctx: LowerContext) -> tvm.target.Target:
    """The target the int8 kernels are built for (see the module docstring)."""
    t = getattr(ctx, "target", None)
    if t is None:
        t = tvm.target.Target.current(allow_none=True)
    if t is None:
        from mcopt.targets.cpu.kernels.target_info import host_target

        t = host_target()
    return t if isinstance(t, tvm.target.Target) else tvm.target.Target(t)


def _cores(target: tvm.target.Target) -> int:
    attrs = target.attrs if target.attrs is not None else {}
    return int(attrs.get("num-cores", 1) or 1)


def _axis_vec(scale: tuple, axis: int, rank: int, dtype: str) -> Any:
    """A per-axis (or scalar) constant shaped to broadcast against a rank-``rank`` tensor."""
    arr = np.asarray(scale, dtype)
    if arr.size == 1:
        return arr.reshape(())
    shape = [1] * rank
    shape[axis % rank] = arr.size
    return arr.reshape(shape)


@register_lowering("quantize")
def _quantize(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    at = node.attrs
    x = a[0]
    rank = len(ctx.shape_of(x))
    dtype = at["dtype"]
    lo, hi = qrange(dtype)
    s = ctx.const(_axis_vec(at["scale"], at["axis"], rank, "float32"))
    z = ctx.const(_axis_vec(at["zero_point"], at["axis"], rank, "float32"))

    def fn(x_t: te.Tensor, s_t: te.Tensor, z_t: te.Tensor) -> te.Tensor:
        def body(*idx: Any) -> Any:
            si = (
                s_t[()]
                if len(s_t.shape) == 0
                else s_t[tuple(i if d != 1 else 0 for i, d in zip(idx, s_t.shape))]
            )
            zi = (
                z_t[()]
                if len(z_t.shape) == 0
                else z_t[tuple(i if d != 1 else 0 for i, d in zip(idx, z_t.shape))]
            )
            q = tirx.round(x_t[idx] / si) + zi  # tirx.round is LLVM nearbyint, vectorizable
            q = tvm.te.max(tvm.te.min(q, tirx.const(hi, "float32")), tirx.const(lo, "float32"))
            return q.astype(dtype)

        return te.compute(x_t.shape, body, name="quantize")

    return ctx.bb.emit_te(fn, x, s, z, primfunc_name_hint="quantize")


@register_lowering("dequantize")
def _dequantize(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    at = node.attrs
    q = a[0]
    rank = len(ctx.shape_of(q))
    s = ctx.const(_axis_vec(at["scale"], at["axis"], rank, "float32"))
    z = ctx.const(_axis_vec(at["zero_point"], at["axis"], rank, "int32"))
    diff = relax.op.subtract(relax.op.astype(q, "int32"), z)
    return relax.op.multiply(relax.op.astype(ctx.emit(diff), "float32"), s)


def _epilogue_consts(node: Node, oc: int, ocp: int) -> tuple[np.ndarray, tuple[float, float]]:
    mult = np.zeros(ocp, np.float32)
    mult[:oc] = requant_multiplier(node.attrs, weight_scales(node.inputs[1].type), oc)
    return mult, output_bounds(node.attrs)


def _weights(node: Node) -> tuple[np.ndarray, np.ndarray | None]:
    w = node.inputs[1]
    if w is None or w.const is None:
        raise TargetError(f"node {node.name!r} ({node.op}): the int8 weight must be a constant")
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is not None and b.const is None:
        raise TargetError(f"node {node.name!r} ({node.op}): the int32 bias must be a constant")
    return w.const, (None if b is None else b.const)


def _is_7bit(w: np.ndarray) -> bool:
    return bool(w.size == 0 or (w.min() >= -64 and w.max() <= 63))


@register_lowering("qconv2d")
def _qconv2d(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    at = node.attrs
    w, b = _weights(node)
    x = a[0]
    xshape = ctx.shape_of(x)
    in_dtype = ctx.dtype_of(x)
    oc, cg = w.shape[0], w.shape[1]
    groups = int(at["groups"])
    out_dtype = at["out_dtype"]
    out_shape = tuple(node.output.shape)
    target = lowering_target(ctx)
    common = dict(
        in_dtype=in_dtype,
        x_zero_point=int(at["x_zero_point"]),
        out_dtype=out_dtype,
        out_zero_point=int(at["out_zero_point"]),
    )
    if groups == 1:
        isa = choose_isa(target, _is_7bit(w))
        p = int8_conv2d_params(oc, out_shape, isa, _cores(target))
        mult, bounds = _epilogue_consts(node, oc, -(-oc // p.lanes) * p.lanes)
        func = int8_conv.int8_conv2d(
            xshape, w.shape, at["strides"], at["pads"], at["dilations"],
            bounds=bounds, params=p, cores=_cores(target), **common,
        )  # fmt: skip
        kp = int8_conv.pack_int8_conv_weight(w, p.lanes)
        shift = int8_conv.zero_shift(isa, in_dtype)
        be = int8_conv.conv_bias_eff(w, b, int(at["x_zero_point"]) + shift, mult.size)
        args = [x, ctx.const(kp), ctx.const(be), ctx.const(mult)]
        return _call(ctx.bb, func, "qconv2d_int8", args, out_shape, out_dtype)
    if groups == xshape[1] == oc and cg == 1:
        mult, bounds = _epilogue_consts(node, oc, oc)
        func = int8_conv.int8_depthwise_conv2d(
            xshape, w.shape, at["strides"], at["pads"], at["dilations"], bounds=bounds, **common
        )
        be = int8_conv.conv_bias_eff(w, b, int(at["x_zero_point"]), oc)
        args = [x, ctx.const(np.ascontiguousarray(w[:, 0])), ctx.const(be), ctx.const(mult)]
        return _call(ctx.bb, func, "qdwconv2d_int8", args, out_shape, out_dtype)
    return _grouped_fallback(ctx, node, x, w, b, out_shape)


def int8_conv2d_params(
    oc: int, out_shape: tuple[int, ...], isa: str | None, cores: int
) -> int8_conv.Int8ConvParams:
    n, _, oh, ow = out_shape
    return int8_conv.choose_int8_conv_params(oc, ow, oh, n, isa, cores)


def _epilogue_relax(ctx: LowerContext, node: Node, acc: Any, axis: int) -> Any:
    """The epilogue with Relax ops on an int32 accumulator (fallback path)."""
    shape = ctx.shape_of(acc)
    oc = shape[axis]
    mult, (lo, hi) = _epilogue_consts(node, oc, oc)
    bshape = [1] * len(shape)
    bshape[axis] = oc
    y = ctx.emit(
        relax.op.multiply(relax.op.astype(acc, "float32"), ctx.const(mult.reshape(bshape)))
    )
    out_dtype = node.attrs["out_dtype"]
    if out_dtype != "float32":

        def rnd(t: te.Tensor) -> te.Tensor:
            return te.compute(t.shape, lambda *i: tirx.round(t[i]), name="rint")

        y = ctx.bb.emit_te(rnd, y, primfunc_name_hint="rint")
        y = ctx.emit(relax.op.add(y, ctx.scalar(float(node.attrs["out_zero_point"]), "float32")))
    if math.isfinite(lo) or math.isfinite(hi):
        y = ctx.emit(
            relax.op.clip(
                y, lo if math.isfinite(lo) else -3.0e38, hi if math.isfinite(hi) else 3.0e38
            )
        )
    return relax.op.astype(y, out_dtype) if out_dtype != "float32" else y


def _grouped_fallback(
    ctx: LowerContext, node: Node, x: Any, w: np.ndarray, b: np.ndarray | None, out_shape: Any
) -> Any:
    at = node.attrs
    xi = ctx.emit(
        relax.op.subtract(relax.op.astype(x, "int32"), ctx.scalar(int(at["x_zero_point"]), "int32"))
    )
    acc = ctx.emit(
        relax.op.nn.conv2d(
            xi, ctx.const(w.astype(np.int32)), strides=tuple(at["strides"]), padding=tuple(at["pads"]),
            dilation=tuple(at["dilations"]), groups=int(at["groups"]), out_dtype="int32",
        )
    )  # fmt: skip
    if b is not None:
        acc = ctx.emit(relax.op.add(acc, ctx.const(b.astype(np.int32).reshape(1, -1, 1, 1))))
    return _epilogue_relax(ctx, node, acc, axis=1)


@register_lowering("qdense")
def _qdense(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    w, b = _weights(node)
    x = a[0]
    xshape = ctx.shape_of(x)
    n, k = w.shape
    m = int(np.prod(xshape[:-1])) if len(xshape) > 1 else 1
    x2 = ctx.emit(relax.op.reshape(x, (m, k))) if len(xshape) != 2 else x
    return emit_qdense(ctx, node, x2, w, b)


def emit_qdense(
    ctx: LowerContext,
    node: Node,
    x2: Any,
    w: np.ndarray,
    b: np.ndarray | None,
    x_view: tuple[int, ...] | None = None,
) -> Any:
    """The int8 dense kernel of ``node`` on ``x2`` ``(M, K)`` with the int8 weight ``w (N, K)``
    and int32 bias ``b``; ``x_view``: ``x2`` is a tensor of that shape with the same elements
    (the kernel reads its ``(M, K)`` as a view of it: :func:`.relax_ops.view_params`)."""
    at = node.attrs
    in_dtype = ctx.dtype_of(x2)
    n, k = w.shape
    m = int(np.prod(x_view)) // k if x_view is not None else ctx.shape_of(x2)[0]
    target = lowering_target(ctx)
    isa = choose_isa(target, _is_7bit(w))
    lanes = ISAS[isa][0] if isa else 8
    np_ = -(-n // lanes) * lanes
    mult, bounds = _epilogue_consts(node, n, np_)
    out_dtype = at["out_dtype"]
    func = int8_dense.int8_dense(
        m, n, k, isa=isa, lanes=lanes, in_dtype=in_dtype, x_zero_point=int(at["x_zero_point"]),
        out_dtype=out_dtype, out_zero_point=int(at["out_zero_point"]), bounds=bounds,
        cores=_cores(target),
    )  # fmt: skip
    if x_view is not None:
        func = view_params(func, {"x": (x_view, 0)})
    shift = int8_conv.zero_shift(isa, in_dtype)
    be = int8_conv.conv_bias_eff(w, b, int(at["x_zero_point"]) + shift, np_)
    args = [
        x2,
        ctx.const(int8_dense.pack_int8_dense_weight(w, lanes)),
        ctx.const(be),
        ctx.const(mult),
    ]
    y = _call(ctx.bb, func, "qdense_int8", args, (m, n), out_dtype)
    out_shape = tuple(node.output.shape)
    return relax.op.reshape(y, out_shape) if out_shape != (m, n) else y


__all__ = ["emit_qdense", "int8_conv2d_params", "lowering_target"]
