"""ONNX export of the compressed ops (binary / XNOR convs and dense layers, codebook weights,
Winograd convs): each becomes standard ONNX that onnxruntime runs with the same result (EXPORTERS
entries, registered in :mod:`.export_ops`). All ONNX code lives in :mod:`mcopt.onnx_io`; the op
schemas in :mod:`mcopt.ops` know nothing about ONNX."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.ops.binary import unpack_weight
from mcopt.ops.codebook import decode
from mcopt.ops.winograd import winograd_weight_inverse


def _finit(e: Any, array: np.ndarray, hint: str) -> str:
    return e.init(array, hint, dtype=np.float32)


def _export_sign(e: Any, x_name: str, hint: str) -> str:
    """sign with sign(0) = +1 as ONNX: Where(x >= 0, 1, -1)."""
    ge = e.fresh(f"{hint}_ge0")
    e.add("GreaterOrEqual", [x_name, _finit(e, np.zeros((), np.float32), f"{hint}_zero")], [ge], ge)
    out = e.fresh(f"{hint}_sign")
    one = _finit(e, np.ones((), np.float32), f"{hint}_one")
    mone = _finit(e, -np.ones((), np.float32), f"{hint}_mone")
    e.add("Where", [ge, one, mone], [out], out)
    return out


def _alpha4(e: Any, al: Any) -> str:
    return _finit(e, np.asarray(al.const, np.float32).reshape(1, -1, 1, 1), f"{al.name}_4d")


def _vec4(e: Any, b: Any) -> str:
    if b.const is not None:
        return _finit(e, np.asarray(b.const, np.float32).reshape(1, -1, 1, 1), f"{b.name}_4d")
    r = e.fresh(f"{b.name}_4d")
    shp = e.init(np.array([1, -1, 1, 1], np.int64), f"{b.name}_shape")
    e.add("Reshape", [e.name_of(b), shp], [r], r)
    return r


def _export_beta_conv(e: Any, n: Any, x_name: str, y: str) -> str:
    a = n.attrs
    ab = e.fresh(f"{n.name}_abs")
    e.add("Abs", [x_name], [ab], ab)
    if a["beta"] == "tensor":
        m = e.fresh(f"{n.name}_beta")
        e.add("ReduceMean", [ab], [m], m, keepdims=1)
    else:
        am = e.fresh(f"{n.name}_absmean")
        if e.opset >= 18:
            axes = e.init(np.array([1], np.int64), f"{n.name}_axes")
            e.add("ReduceMean", [ab, axes], [am], am, keepdims=1)
        else:
            e.add("ReduceMean", [ab], [am], am, axes=[1], keepdims=1)
        m = e.fresh(f"{n.name}_beta")
        kw: dict[str, Any] = {
            "kernel_shape": list(a["kernel"]),
            "strides": list(a["strides"]),
            "pads": list(a["pads"]),
            "count_include_pad": 1,
        }
        if e.opset >= 19:
            kw["dilations"] = list(a["dilations"])
        elif a["dilations"] != (1, 1):
            raise ValueError(f"node {n.name!r}: a dilated beta map needs ONNX opset >= 19")
        e.add("AveragePool", [am], [m], m, **kw)
    out = e.fresh(f"{n.name}_scaled")
    e.add("Mul", [y, m], [out], out)
    return out


# from mcopt/ops/binary.py
def export_binary_dense(e: Any, n: Any) -> None:
    """ONNX export: MatMul with the transposed +-1 weight, times alpha (times beta), plus bias."""
    x, wb, al = n.inputs[0], n.inputs[1], n.inputs[2]
    b = n.inputs[3] if len(n.inputs) > 3 else None
    a = n.attrs
    assert wb is not None and wb.const is not None and al is not None and al.const is not None
    w = unpack_weight(wb.const, (wb.shape[0], a["in_features"])).astype(np.float32)
    xin = e.name_of(x)
    if a["binary_input"]:
        xin = _export_sign(e, xin, n.name)
    mm = e.fresh(f"{n.name}_mm")
    e.add("MatMul", [xin, _finit(e, np.ascontiguousarray(w.T), f"{wb.name}_pm1T")], [mm], mm)
    y = e.fresh(f"{n.name}_alpha")
    e.add("Mul", [mm, _finit(e, np.asarray(al.const, np.float32), f"{al.name}_v")], [y], y)
    if a["binary_input"] and a["beta"] != "none":
        ab = e.fresh(f"{n.name}_abs")
        e.add("Abs", [e.name_of(x)], [ab], ab)
        m = e.fresh(f"{n.name}_beta")
        if a["beta"] == "tensor":
            e.add("ReduceMean", [ab], [m], m, keepdims=1)
        elif e.opset >= 18:
            axes = e.init(np.array([-1], np.int64), f"{n.name}_axes")
            e.add("ReduceMean", [ab, axes], [m], m, keepdims=1)
        else:
            e.add("ReduceMean", [ab], [m], m, axes=[-1], keepdims=1)
        s = e.fresh(f"{n.name}_scaled")
        e.add("Mul", [y, m], [s], s)
        y = s
    out = [o.name for o in n.outputs]
    if b is not None:
        e.add("Add", [y, e.name_of(b)], out, f"{n.name}_bias")
    else:
        e.add("Identity", [y], out, f"{n.name}_out")


# from mcopt/ops/binary.py
def export_binary_conv2d(e: Any, n: Any) -> None:
    """ONNX export (an ``EXPORTERS`` entry): Conv with the +-1 weight, times alpha (and beta for
    XNOR: sign via Where, the K map via ReduceMean(|x|) + AveragePool), plus bias."""
    x, wb, al = n.inputs[0], n.inputs[1], n.inputs[2]
    b = n.inputs[3] if len(n.inputs) > 3 else None
    a = n.attrs
    assert wb is not None and wb.const is not None and al is not None
    shape = (wb.shape[0], a["channels"], *a["kernel"])
    w = unpack_weight(wb.const, shape).astype(np.float32)
    geo = {
        "strides": list(a["strides"]),
        "pads": list(a["pads"]),
        "dilations": list(a["dilations"]),
    }
    xin = e.name_of(x)
    if a["binary_input"]:
        xin = _export_sign(e, xin, n.name)
    conv = e.fresh(f"{n.name}_conv")
    e.add(
        "Conv",
        [xin, _finit(e, w, f"{wb.name}_pm1")],
        [conv],
        conv,
        kernel_shape=list(a["kernel"]),
        group=1,
        **geo,
    )
    y = e.fresh(f"{n.name}_alpha")
    e.add("Mul", [conv, _alpha4(e, al)], [y], y)
    if a["binary_input"] and a["beta"] != "none":
        y = _export_beta_conv(e, n, e.name_of(x), y)
    out = [o.name for o in n.outputs]
    if b is not None:
        e.add("Add", [y, _vec4(e, b)], out, f"{n.name}_bias")
    else:
        e.add("Identity", [y], out, f"{n.name}_out")


# from mcopt/ops/codebook.py
def export_codebook_weight(e: Any, n: Any) -> None:
    """ONNX export (an ``EXPORTERS`` entry): the decoded weight as an initializer (ONNX has no
    codebook type; Gather on the codebook would be equivalent but no smaller)."""
    idx, cb = n.inputs[0], n.inputs[1]
    assert idx is not None and cb is not None and idx.const is not None and cb.const is not None
    w = decode(idx.const, cb.const, tuple(n.attrs["shape"]))
    name = e.init(w, f"{n.name}_decoded", dtype=w.dtype)
    e.add("Identity", [name], [o.name for o in n.outputs], n.name)


# from mcopt/ops/winograd.py
def export_winograd_conv2d(e: Any, n: Any) -> None:
    """ONNX export (an `EXPORTERS` entry): a standard Conv whose 3x3 weight is recovered from U."""
    x, u = n.inputs[0], n.inputs[1]
    b = n.inputs[2] if len(n.inputs) > 2 else None
    assert u is not None and u.const is not None, "winograd_conv2d export needs a constant weight"
    w = winograd_weight_inverse(u.const, int(n.attrs["m"]))
    ins = [e.name_of(x), e.init(w, f"{u.name}_3x3", dtype=w.dtype)]
    if b is not None:
        ins.append(e.name_of(b))
    e.add(
        "Conv",
        ins,
        [o.name for o in n.outputs],
        n.name,
        kernel_shape=[3, 3],
        strides=[1, 1],
        pads=list(n.attrs["pads"]),
        dilations=[1, 1],
        group=1,
    )


__all__ = [
    "export_binary_conv2d",
    "export_binary_dense",
    "export_codebook_weight",
    "export_winograd_conv2d",
]
