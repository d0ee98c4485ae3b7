"""ONNX import of QDQ quantization: ``QuantizeLinear`` -> ``quantize``, ``DequantizeLinear`` ->
``dequantize`` (scales and zero points must be constants). A ``DequantizeLinear`` of a constant (a
QDQ weight) is folded to the float weight at import; ``quantize-int8`` then re-derives the int8
codes (per-channel symmetric scales reproduce the same grid) and reuses the activation parameters of
the imported ``dequantize`` nodes. The export side is :mod:`mcopt.onnx_io.export_quant`."""

from __future__ import annotations

import numpy as np

from mcopt.onnx_io.import_ops import handles
from mcopt.onnx_io.importer import NodeCtx


def _import_qparams(c: NodeCtx) -> tuple[tuple, tuple, int]:
    scale = np.asarray(c.need_const(1, "scale"), np.float64).reshape(-1)
    zp_arr = c.const(2)
    zp = np.zeros(scale.size, np.int64) if zp_arr is None else np.asarray(zp_arr).reshape(-1)
    if int(c.attr("block_size", 0) or 0):
        raise c.fail("blocked quantization (block_size) is not supported")
    axis = int(c.attr("axis", 1))
    return tuple(float(v) for v in scale), tuple(int(v) for v in zp), axis


@handles("QuantizeLinear")
def import_quantize(c: NodeCtx) -> None:
    scale, zp, axis = _import_qparams(c)
    zp_arr = c.const(2)
    dtype = "uint8" if zp_arr is None else np.asarray(zp_arr).dtype.name
    if dtype not in ("uint8", "int8"):
        raise c.fail(f"QuantizeLinear to {dtype} is not supported (uint8, int8)")
    attrs = {"scale": scale, "zero_point": zp, "axis": axis, "dtype": dtype}
    c.set_out(0, c.emit("quantize", [c.x(0)], attrs))


@handles("DequantizeLinear")
def import_dequantize(c: NodeCtx) -> None:
    scale, zp, axis = _import_qparams(c)
    q = c.const(0)
    if q is not None:  # a QDQ weight/bias (onnx.reference folds DequantizeLinear only at opset 19+)
        from mcopt.ops.quant import dequantize_array

        arr = dequantize_array(q, scale, zp, axis if len(scale) > 1 else None)
        c.set_out(0, c.new_const(arr, "dq"))
        return
    attrs = {"scale": scale, "zero_point": zp, "axis": axis}
    c.set_out(0, c.emit("dequantize", [c.x(0)], attrs))


__all__ = ["import_dequantize", "import_quantize"]
