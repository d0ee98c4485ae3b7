"""mcopt IR -> standard ONNX that onnxruntime runs.

Shapes: the IR is static (import fixes a dynamic batch to 1, see
``graph.metadata["input_shapes_fixed"]``). Where dim 0 was symbolic in the imported model
(``graph.metadata["dynamic_dims"]``) and no node ties the graph to its static batch
(:func:`mcopt.analysis.batch.batch_blocker`), the export is a drop-in replacement: dim 0 of every
input and output is the original symbol again, reshape targets copy dim 0 from their input (``0``),
and intermediate shapes are left to ONNX shape inference. Otherwise every shape is exported static.
``metadata_props`` carries the source producer/opset and the dynamic dims as JSON.

Constants become initializers (arrays shared between values are written once). Compressed
constants (quantized, fixed point, binary, codebook, sparse encodings) are written as their dense
float values: ONNX has no type for most of them, and QDQ (QuantizeLinear/DequantizeLinear) export of
uniform-quantized weights belongs with the quantization passes that create them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcopt.errors import OptionError, UnsupportedOpError
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import FixedPoint, UniformQuant

MIN_EXPORT_OPSET, MAX_EXPORT_OPSET = 13, 21


def dense_value(v: Value) -> np.ndarray:
    """The dense array a constant stands for (integer codes of a quantized weight are dequantized)."""
    arr = v.const
    assert arr is not None
    enc = v.type.encoding
    if isinstance(enc, UniformQuant) and arr.dtype.kind in "iu":
        shape = [1] * arr.ndim
        if enc.axis is not None:
            shape[enc.axis] = -1
        scale = np.asarray(enc.scale, np.float32).reshape(shape)
        zp = np.asarray(enc.zero_point, np.float32).reshape(shape)
        return ((arr.astype(np.float32) - zp) * scale).astype(np.float32)
    if isinstance(enc, FixedPoint) and arr.dtype.kind in "iu":
        return (arr.astype(np.float32) * np.float32(2.0**-enc.frac_bits)).astype(np.float32)
    return arr


class _Exporter:
    def __init__(self, graph: Graph, opset: int, batch_symbol: str | None = None) -> None:
        self.graph = graph
        self.opset = opset
        #: the symbolic batch dim written on inputs / outputs (None: static shapes)
        self.batch_symbol = batch_symbol
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: set[str] = {v.name for v in graph.values()}
        self._const_names: dict[int, str] = {}  # id(Value) -> initializer name
        self._by_array: dict[int, str] = {}  # id(ndarray) -> initializer name (dedup)

    def fresh(self, hint: str) -> str:
        cand, k = hint, 0
        while cand in self.names:
            k += 1
            cand = f"{hint}_{k}"
        self.names.add(cand)
        return cand

    def name_of(self, v: Value | None) -> str:
        if v is None:
            return ""
        if v.const is None:
            return v.name
        key = id(v)
        if key not in self._const_names:
            arr = v.const
            if id(arr) in self._by_array:
                self._const_names[key] = self._by_array[id(arr)]
            else:
                self.inits.append(
                    numpy_helper.from_array(np.asarray(dense_value(v), order="C"), v.name)
                )
                self._const_names[key] = self._by_array[id(arr)] = v.name
        return self._const_names[key]

    def init(self, array: Any, hint: str, dtype: object = np.int64) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def add(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> None:
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    def run(self) -> onnx.ModelProto:
        g = self.graph
        for v in g.outputs:  # a constant output: initializer `<name>_value` -> Identity -> `<name>`
            if v.const is not None and id(v) not in self._const_names:
                iname = self.fresh(f"{v.name}_value")
                self.inits.append(
                    numpy_helper.from_array(np.asarray(dense_value(v), order="C"), iname)
                )
                self._const_names[id(v)] = iname
        for node in g.nodes:
            fn = EXPORTERS.get(node.op)
            if fn is None and node.op.startswith("fx_"):
                raise UnsupportedOpError(
                    f"node '{node.name}' ({node.op}): a fixed-point graph has no ONNX form (integer "
                    "shifts and saturation): model.mcz keeps it exactly, target='fpga' writes C"
                )
            if fn is None:
                raise UnsupportedOpError(
                    f"node '{node.name}' ({node.op}): export of mcopt op {node.op} to ONNX is not "
                    f"supported; exportable ops: {', '.join(sorted(EXPORTERS))}"
                )
            fn(self, node)
        outputs = []
        for v in g.outputs:
            name = self.name_of(v)
            if v.const is not None:
                self.add("Identity", [name], [v.name], f"{v.name}_identity")
                name = v.name
            outputs.append(helper.make_tensor_value_info(name, _elem(v.dtype), self._dims(v)))
        out_ids = {id(v) for v in g.outputs}
        value_info = (
            []
            if self.batch_symbol
            else [
                helper.make_tensor_value_info(o.name, _elem(o.dtype), o.shape)
                for n in g.nodes
                for o in n.outputs
                if id(o) not in out_ids
            ]
        )
        inputs = [
            helper.make_tensor_value_info(v.name, _elem(v.dtype), self._dims(v)) for v in g.inputs
        ]
        og = helper.make_graph(
            self.nodes, g.name or "graph", inputs, outputs, self.inits, value_info=value_info
        )
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(
            og,
            opset_imports=opsets,
            producer_name="mcopt",
            producer_version=_version(),
            ir_version=helper.find_min_ir_version_for(opsets),
        )
        meta = {k: g.metadata.get(k) for k in ("producer", "opset", "dynamic_dims", "source")}
        for key, val in meta.items():
            if val not in (None, "", {}):
                entry = model.metadata_props.add()
                entry.key, entry.value = f"mcopt.source_{key}", json.dumps(val, default=str)
        return model

    def _dims(self, v: Value) -> list[int | str]:
        dims: list[int | str] = list(v.shape)
        if self.batch_symbol and dims:
            dims[0] = self.batch_symbol
        return dims


def batch_symbol(graph: Graph) -> str | None:
    """The symbol to export dim 0 as: the imported model's name for it when every input's dim 0
    was dynamic and nothing in the graph depends on the static batch; else None (static)."""
    from mcopt.analysis.batch import batch_blocker

    dyn = graph.metadata.get("dynamic_dims") or {}
    syms = []
    for v in graph.inputs:
        d = dyn.get(v.name) or {}
        sym = d.get(0, d.get("0"))
        if sym is None:
            return None
        syms.append(str(sym))
    if not syms or batch_blocker(graph) is not None:
        return None
    sym = syms[0]
    return "batch" if sym in ("?", "") else sym


def _version() -> str:
    import mcopt

    return str(getattr(mcopt, "__version__", "0"))


def _elem(dtype: str) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def export_model(
    graph: Graph, opset: int = 17, dynamic_batch: bool | None = None
) -> onnx.ModelProto:
    """Write `graph` as an ONNX model of the default domain at `opset` (13-21).

    `dynamic_batch`: None (default) keeps dim 0 symbolic where the imported model had it symbolic
    and the graph allows any batch (:func:`batch_symbol`); False forces static shapes; True
    requires a symbolic batch (OptionError naming the node that prevents it).

    The model passes ``onnx.checker.check_model(model, full_check=True)``; graph input and output
    names are the IR value names. Raises UnsupportedOpError for an mcopt op with no ONNX form.
    """
    if not MIN_EXPORT_OPSET <= int(opset) <= MAX_EXPORT_OPSET:
        raise OptionError(
            f"export opset {opset} is not supported; choose {MIN_EXPORT_OPSET} to {MAX_EXPORT_OPSET}"
        )
    from mcopt.onnx_io import export_ops  # noqa: F401  (fills EXPORTERS)

    sym = None
    if dynamic_batch is not False:
        sym = batch_symbol(graph)
        if dynamic_batch and sym is None:
            from mcopt.analysis.batch import batch_blocker

            raise OptionError(
                "cannot export a dynamic batch: "
                + (batch_blocker(graph) or "the imported model's batch dim was static")
            )
    return _Exporter(graph, int(opset), sym).run()


ExportFn = Callable[[_Exporter, Node], None]
EXPORTERS: dict[str, ExportFn] = {}
