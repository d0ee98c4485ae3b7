"""QDQ (QuantizeLinear / DequantizeLinear) ONNX export of the quantization ops (their import is
:mod:`mcopt.onnx_io.import_quant`).

Export (the "QDQ format" onnxruntime fuses into QLinearConv / MatMulInteger kernels):

- ``quantize`` / ``dequantize`` -> ``QuantizeLinear`` / ``DequantizeLinear`` (per-axis when the op
  has several scales);
- ``qconv2d`` -> ``DequantizeLinear(x_q)``, ``DequantizeLinear(w_q int8, w_scale, axis=0)`` (the
  scales of ``w_q``'s ``UniformQuant`` type),
  ``DequantizeLinear(bias_q int32, x_scale * w_scale, axis=0)`` -> ``Conv`` -> ``Relu`` / ``Clip``
  (the fused activation) -> ``QuantizeLinear(out_scale, out_zero_point)`` when the output is
  requantized; ``qdense`` the same with ``Gemm`` (``transB=1``). The weights stay int8 in the
  file (1 byte each) and the bias int32.
"""

from __future__ import annotations

import math

import numpy as np

from mcopt.ir.core import Node
from mcopt.onnx_io.export_ops import _io, exports
from mcopt.onnx_io.exporter import _Exporter
from mcopt.ops.quant import weight_scales


def _qparams(e: _Exporter, n: Node, scale: tuple, zp: tuple, dtype: str, hint: str) -> list[str]:
    s = np.asarray(scale, np.float32)
    z = np.asarray(zp, dtype)
    if s.size == 1:
        s, z = s.reshape(()), z.reshape(())
    return [e.init(s, f"{hint}_scale", np.float32), e.init(z, f"{hint}_zero_point", dtype)]


@exports("quantize")
def quantize(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    a = n.attrs
    qp = _qparams(e, n, a["scale"], a["zero_point"], a["dtype"], n.name)
    axis = int(a["axis"]) if len(a["scale"]) > 1 else None
    e.add("QuantizeLinear", [ins[0], *qp], outs, n.name, axis=axis)


@exports("dequantize")
def dequantize(e: _Exporter, n: Node) -> None:
    ins, outs = _io(e, n)
    a = n.attrs
    q = n.inputs[0]
    assert q is not None
    qp = _qparams(e, n, a["scale"], a["zero_point"], q.dtype, n.name)
    axis = int(a["axis"]) if len(a["scale"]) > 1 else None
    e.add("DequantizeLinear", [ins[0], *qp], outs, n.name, axis=axis)


def _dq_const(e: _Exporter, n: Node, arr: np.ndarray, scale: np.ndarray, hint: str) -> str:
    """An integer initializer and the DequantizeLinear (per-axis 0 when several scales)."""
    q = e.init(arr, f"{hint}_q", arr.dtype)
    zp = np.zeros(scale.size, arr.dtype) if scale.size > 1 else np.zeros((), arr.dtype)
    s = scale.astype(np.float32) if scale.size > 1 else scale.astype(np.float32).reshape(())
    out = e.fresh(f"{hint}_dq")
    e.add(
        "DequantizeLinear",
        [q, e.init(s, f"{hint}_scale", np.float32), e.init(zp, f"{hint}_zp", arr.dtype)],
        [out],
        out,
        axis=0 if scale.size > 1 else None,
    )
    return out


def _qlayer(e: _Exporter, n: Node) -> None:
    a = n.attrs
    x, w = n.inputs[0], n.inputs[1]
    b = n.inputs[2] if len(n.inputs) > 2 else None
    assert x is not None and w is not None and w.const is not None
    ins, outs = [e.name_of(x)], [o.name for o in n.outputs]  # weights: integer initializers only
    oc = w.shape[0]
    ws = np.asarray(weight_scales(w.type), np.float64)  # the scales live on the weight's type
    ws = np.full(oc, ws[0]) if ws.size == 1 else ws
    xf = e.fresh(f"{n.name}_x_dq")
    xqp = _qparams(e, n, (a["x_scale"],), (a["x_zero_point"],), x.dtype, f"{n.name}_x")
    e.add("DequantizeLinear", [ins[0], *xqp], [xf], xf)
    wf = _dq_const(e, n, np.ascontiguousarray(w.const.astype(np.int8)), ws, f"{n.name}_w")
    args = [xf, wf]
    if b is not None and b.const is not None:
        bs = np.asarray(float(a["x_scale"]) * ws, np.float32)
        args.append(_dq_const(e, n, b.const.astype(np.int32), bs, f"{n.name}_b"))
    lo, hi = float(a["act_min"]), float(a["act_max"])
    has_act = math.isfinite(lo) or math.isfinite(hi)
    requant = a["out_dtype"] != "float32"
    y = e.fresh(f"{n.name}_y") if (has_act or requant) else outs[0]
    if n.op == "qconv2d":
        e.add("Conv", args, [y], n.name, kernel_shape=list(w.shape[2:]),
              strides=list(a["strides"]), pads=list(a["pads"]),
              dilations=list(a["dilations"]), group=int(a["groups"]))  # fmt: skip
    else:
        e.add("Gemm", args, [y], n.name, transB=1)
    if has_act:
        z = e.fresh(f"{n.name}_act") if requant else outs[0]
        if lo == 0.0 and not math.isfinite(hi):
            e.add("Relu", [y], [z], e.fresh(f"{n.name}_relu"))
        else:
            bounds = [
                e.init(np.array(v, np.float32), f"{n.name}_{k}", np.float32) if math.isfinite(v) else ""
                for k, v in (("min", lo), ("max", hi))
            ]  # fmt: skip
            while bounds and bounds[-1] == "":
                bounds.pop()
            e.add("Clip", [y, *bounds], [z], e.fresh(f"{n.name}_clip"))
        y = z
    if requant:
        oqp = _qparams(
            e, n, (a["out_scale"],), (a["out_zero_point"],), a["out_dtype"], f"{n.name}_out"
        )
        e.add("QuantizeLinear", [y, *oqp], outs, e.fresh(f"{n.name}_quant"))


@exports("qconv2d")
def qconv2d(e: _Exporter, n: Node) -> None:
    _qlayer(e, n)


@exports("qdense")
def qdense(e: _Exporter, n: Node) -> None:
    x = n.inputs[0]
    assert x is not None
    if x.type.rank != 2:
        from mcopt.errors import UnsupportedOpError

        raise UnsupportedOpError(
            f"node '{n.name}' (qdense): QDQ export supports 2-D inputs, got {x.type}"
        )
    _qlayer(e, n)


__all__ = ["dequantize", "qconv2d", "qdense", "quantize"]
