"""onnxruntime's dynamic quantization (``quantize_dynamic``) imported as the float model it
approximates.

``quantize_dynamic`` stores weights as 8-bit codes and quantizes activations at run time::

    y, y_scale, y_zp = DynamicQuantizeLinear(x)
    acc = ConvInteger(y, Wq, y_zp, w_zp)            (or MatMulInteger)
    out = Cast(acc, float) * (y_scale * w_scale) [+ bias]
    com.microsoft::DynamicQuantizeLSTM(X, Wq, Rq, ..., W_scale, W_zp, R_scale, R_zp)

mcopt has no run-time quantization; :func:`dequantize_dynamic` rewrites such a graph, before
validation, into standard ONNX that computes the float model with the stored weights:
``DynamicQuantizeLinear`` passes ``x`` through with scale 1 and zero point 0, ``ConvInteger`` /
``MatMulInteger`` become ``Conv`` / ``MatMul`` with ``Wq - w_zp`` (so the following ``Cast`` and
``* w_scale`` give ``conv(x, (Wq - w_zp) * w_scale)``), and ``DynamicQuantizeLSTM`` an ``LSTM``
with its dequantized, transposed weights. The weights are the file's 8-bit values exactly;
activations are no longer rounded to 8 bits, so outputs differ from onnxruntime's run of the
quantized file by that rounding (``quantize-int8`` then quantizes the model statically, with
calibrated activation ranges). The caller's model is not modified.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcopt.errors import UnsupportedOpError

DYNAMIC_OPS = ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM")


def _const(graph: onnx.GraphProto, name: str, who: str) -> np.ndarray:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    raise UnsupportedOpError(f"{who}: input '{name}' must be a constant (a stored weight)")


def _zp(graph: onnx.GraphProto, node: onnx.NodeProto, i: int, who: str) -> np.ndarray:
    if len(node.input) <= i or not node.input[i]:
        return np.zeros(1, np.int64)
    return _const(graph, node.input[i], who).astype(np.int64)


def dequantize_dynamic(model: onnx.ModelProto, source: str) -> tuple[onnx.ModelProto, int]:
    """``model`` with its dynamic-quantization nodes rewritten (see the module docstring) and how
    many were; ``model`` itself when it has none."""
    g = model.graph
    if not any(n.op_type in DYNAMIC_OPS for n in g.node):
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    dql = {n.output[0] for n in g.node if n.op_type == "DynamicQuantizeLinear"}
    new_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    changed: set[str] = set()
    added: set[str] = set()
    acc: set[str] = set()  # the integer accumulators, now float
    count = 0
    for k, n in enumerate(g.node):
        who = f"{source}: node '{n.name or f'{n.op_type}_{k}'}' ({n.op_type})"
        if n.op_type == "DynamicQuantizeLinear":
            x = n.input[0]
            new_nodes.append(helper.make_node("Identity", [x], [n.output[0]], name=n.name))
            for o, v in zip(n.output[1:], (np.float32(1.0), np.uint8(0))):
                if o:
                    inits.append(numpy_helper.from_array(np.asarray(v), o))
            changed.update(o for o in n.output if o)
            count += 1
        elif n.op_type in ("ConvInteger", "MatMulInteger"):
            a, b = n.input[0], n.input[1]
            if a not in dql:
                raise UnsupportedOpError(
                    f"{who}: its input '{a}' is not from DynamicQuantizeLinear; mcopt imports "
                    "integer convs / matmuls only as onnxruntime's dynamic quantization writes them"
                )
            wq = _const(g, b, who).astype(np.int64)
            zp = _zp(g, n, 3, who)
            if n.op_type == "ConvInteger":  # per-tensor or per-output-channel zero point
                zp = zp.reshape((-1,) + (1,) * (wq.ndim - 1)) if zp.size > 1 else zp.reshape(())
            else:  # MatMulInteger: per-column (the last axis of B) or per-tensor
                zp = zp.reshape(-1) if zp.size > 1 else zp.reshape(())
            wname = f"{b}_dequantized"
            if wname not in added:  # one weight may feed several nodes
                added.add(wname)
                inits.append(numpy_helper.from_array((wq - zp).astype(np.float32), wname))
            op = "Conv" if n.op_type == "ConvInteger" else "MatMul"
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            new_nodes.append(helper.make_node(op, [a, wname], list(n.output), name=n.name, **attrs))
            changed.update(n.output)
            acc.update(n.output)
            count += 1
        elif n.op_type == "DynamicQuantizeLSTM" and n.domain == "com.microsoft":
            new_nodes.append(_lstm(g, n, inits, who))
            changed.update(o for o in n.output if o)
            count += 1
        else:
            new_nodes.append(n)
    new_nodes = _float_bias_adds(new_nodes, acc, changed)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    # declared types of the rewritten values (int32 accumulators, uint8 codes) no longer hold
    keep = [v for v in g.value_info if v.name not in changed]
    del g.value_info[:]
    g.value_info.extend(keep)
    if not any(n.domain == "com.microsoft" for n in g.node):
        keep_ops = [o for o in out.opset_import if o.domain != "com.microsoft"]
        del out.opset_import[:]
        out.opset_import.extend(keep_ops)
    return out, count


def _float_bias_adds(
    nodes: list[onnx.NodeProto], acc: set[str], changed: set[str]
) -> list[onnx.NodeProto]:
    """The int32 bias ``quantize_dynamic`` adds to an accumulator (``round(b / (x_scale *
    w_scale))``, computed at run time) is added to the float accumulator through a ``Cast``."""
    out: list[onnx.NodeProto] = []
    for n in nodes:
        if n.op_type in ("Add", "Sub") and any(i in acc for i in n.input):
            ins = []
            for i in n.input:
                if i in acc:
                    ins.append(i)
                    continue
                cast = f"{i}_as_float_{len(out)}"
                out.append(helper.make_node("Cast", [i], [cast], to=onnx.TensorProto.FLOAT))
                ins.append(cast)
            del n.input[:]
            n.input.extend(ins)
            acc.update(n.output)
            changed.update(n.output)
        out.append(n)
    return out


def _lstm(
    g: onnx.GraphProto, n: onnx.NodeProto, inits: list[onnx.TensorProto], who: str
) -> onnx.NodeProto:
    """``DynamicQuantizeLSTM`` -> ``LSTM``: ``W [dirs, in, 4H]`` / ``R [dirs, H, 4H]`` codes
    dequantized with their per-direction (or per-direction-and-gate-row) scales and zero points,
    transposed to ONNX's ``[dirs, 4H, in]`` / ``[dirs, 4H, H]``."""
    ins = list(n.input) + [""] * (12 - len(n.input))
    names = []
    for w_i, s_i, z_i in ((1, 8, 9), (2, 10, 11)):
        q = _const(g, ins[w_i], who).astype(np.float64)
        dirs = q.shape[0]
        scale = _const(g, ins[s_i], who).astype(np.float64).reshape(dirs, -1)
        zp = _const(g, ins[z_i], who).astype(np.float64).reshape(dirs, -1)
        w = (q - zp[:, None, :]) * scale[:, None, :]  # broadcast over the gate rows (last axis)
        name = f"{ins[w_i]}_dequantized"
        inits.append(numpy_helper.from_array(w.transpose(0, 2, 1).astype(np.float32), name))
        names.append(name)
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    inputs = [ins[0], names[0], names[1], *ins[3:8]]
    while inputs and not inputs[-1]:
        inputs.pop()
    return helper.make_node("LSTM", inputs, list(n.output), name=n.name, **attrs)


__all__ = ["DYNAMIC_OPS", "dequantize_dynamic"]
