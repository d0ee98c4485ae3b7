"""Validate an ONNX model before mcopt converts it: every problem a one-line error naming the tensor,
node or attribute, never an internal error later on.

:func:`import_model <mcopt.onnx_io.import_model>` calls, in this order:

1. :func:`check_model` (on the model as loaded, before any opset conversion):

   - versions: an ``ir_version`` or default-domain opset newer than the installed onnx knows;
   - names: two initializers / graph inputs / graph outputs / named nodes with one name, a tensor
     written by two nodes (or by a node and an input / initializer), a node input or graph output that
     nothing defines, a cycle (named by its nodes and tensors);
   - tensors (initializers and tensor attributes such as ``Constant``'s value): UNDEFINED or unknown
     ``data_type``, negative dims, dims whose product overflows int64 or claims more than an ONNX
     file can hold inline, ``raw_data`` shorter or longer than dims x dtype, typed fields
     (``float_data``, ...) with the wrong count, data left in an external file, segments;
   - graph inputs declared with a zero or negative dim (unless the caller's ``input_shapes``
     replace them);
   - nodes, in topological order: attribute types against the op's schema (a FLOAT where INTS
     belong, an INT attribute holding a float, an attribute the op does not define), a
     ``Constant`` without exactly one value, strides / dilations / kernel sizes / groups below 1,
     negative pads, Conv pads larger than both the input and the kernel, pooling pads not smaller
     than the kernel (onnxruntime's rule), axis attributes out of range for the input rank (ranks
     from ``onnx.shape_inference`` on a weightless copy), Transpose perms that are not a permutation;
   - weights (:func:`check_finite`): NaN / Inf in a float weight, a BatchNormalization running
     variance that is negative (or with epsilon not positive), a constant divisor holding 0. These
     raise :class:`~mcopt.errors.NonFiniteError` unless ``allow_nonfinite`` (then a
     :class:`~mcopt.errors.NonFiniteWarning` each).

2. :func:`run_checker` (after a conversion to the opset mcopt imports):
   ``onnx.checker.check_model(full_check=True)`` on a weightless copy (nodes sorted, declared output
   shapes dropped: onnxruntime merges those leniently, and onnx's own pooling inference is off by one
   in some ceil-mode cases), its message translated into one line naming the node; then graph
   outputs declared with an element type the producing node cannot give (INT8 on a float Gemm).
   Unknown ONNX operators are :class:`~mcopt.errors.UnsupportedOpError`, the rest
   :class:`~mcopt.errors.ModelLoadError`.

Messages start with the model's source (``model file '...'``) and end with what to do.
"""

from __future__ import annotations

import heapq
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from mcopt.errors import ModelLoadError, NonFiniteError, NonFiniteWarning, ShapeError

DEFAULT_DOMAINS = ("", "ai.onnx")
INT64_MAX = 2**63 - 1
#: the most bytes one tensor can hold inside an ONNX (protobuf) file
MAX_INLINE_BYTES = 2**31 - 1
#: skeleton copies keep initializers up to this size (shape arithmetic needs their values)
_SKELETON_KEEP_BYTES = 4096

_DAMAGED = "the file is damaged or was written by a broken exporter: export the model again"
_INVALID = "the model is not valid ONNX: fix it or export it again"

# --- element types ----------------------------------------------------------------------------------
_BITS: dict[int, int] = {
    TensorProto.FLOAT: 32,
    TensorProto.UINT8: 8,
    TensorProto.INT8: 8,
    TensorProto.UINT16: 16,
    TensorProto.INT16: 16,
    TensorProto.INT32: 32,
    TensorProto.INT64: 64,
    TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16,
    TensorProto.DOUBLE: 64,
    TensorProto.UINT32: 32,
    TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64,
    TensorProto.COMPLEX128: 128,
    TensorProto.BFLOAT16: 16,
}
for _name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0"):
    if hasattr(TensorProto, _name):
        _BITS[getattr(TensorProto, _name)] = 8
for _name in ("UINT4", "INT4", "FLOAT4E2M1"):
    if hasattr(TensorProto, _name):
        _BITS[getattr(TensorProto, _name)] = 4
for _name in ("UINT2", "INT2"):
    if hasattr(TensorProto, _name):
        _BITS[getattr(TensorProto, _name)] = 2

#: where a tensor that has no raw_data keeps its values (onnx.proto), one value per element, two
#: for complex types; sub-byte types (packed) are left out
_FIELDS: dict[str, frozenset[int]] = {
    "float_data": frozenset({TensorProto.FLOAT, TensorProto.COMPLEX64}),
    "int32_data": frozenset(t for t, b in _BITS.items() if b in (8, 16)) | {TensorProto.INT32},
    "int64_data": frozenset({TensorProto.INT64}),
    "double_data": frozenset({TensorProto.DOUBLE, TensorProto.COMPLEX128}),
    "uint64_data": frozenset({TensorProto.UINT32, TensorProto.UINT64}),
    "string_data": frozenset({TensorProto.STRING}),
}
_FLOAT_NP = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
}


def dtype_label(data_type: int) -> str:
    """ONNX name of an element type (``FLOAT``), or ``data_type N`` when onnx does not know it."""
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return f"data_type {data_type}"


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _typed_field(data_type: int) -> tuple[str, int] | None:
    """(field, values per element) where a tensor of this type keeps non-raw data."""
    per = 2 if data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1
    return next(((f, per) for f, types in _FIELDS.items() if data_type in types), None)


def check_tensor(t: TensorProto, where: str, source: str) -> None:
    """Check one tensor's element type, dims and data size; raise a one-line ModelLoadError.

    `where` names it (``initializer 'w'``); external data must have been loaded (see
    :func:`check_external_data`)."""

    def fail(msg: str, fix: str = _DAMAGED) -> ModelLoadError:
        return ModelLoadError(f"{source}: {where} {msg}; {fix}")

    dt = int(t.data_type)
    if dt == TensorProto.UNDEFINED:
        raise fail("has no element type (data_type UNDEFINED)")
    if dt not in TensorProto.DataType.values():
        raise fail(f"has an unknown element type (data_type {dt}, not an ONNX type)")
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise fail(f"has a negative dim in {dims}")
    n = math.prod(dims)
    if n > INT64_MAX:
        raise fail(f"has dims {dims} whose product ({n:.3g} elements) overflows int64")
    if t.HasField("segment"):
        raise fail("is stored in segments, which mcopt does not read", "save it as one tensor")
    if t.data_location == TensorProto.EXTERNAL:
        raise fail(
            "keeps its data in an external file that was not loaded",
            "pass the path of the .onnx file (with its weight files beside it), not its bytes",
        )
    bits = _BITS.get(dt)
    label = f"{dtype_label(dt)} {dims}"
    if t.HasField("raw_data"):
        if dt == TensorProto.STRING:
            raise fail("is a STRING tensor with raw_data (strings go in string_data)")
        if bits is None:
            return
        need, have = (n * bits + 7) // 8, len(t.raw_data)
        if need > MAX_INLINE_BYTES and have != need:
            raise fail(
                f"claims {_fmt_bytes(need)} ({label}) but holds {_fmt_bytes(have)} of raw_data; "
                "an ONNX file holds at most 2 GB inline"
            )
        if have != need:
            how = "truncated" if have < need else "too long"
            raise fail(f"({label}) needs {need} bytes of raw_data but holds {have} ({how})")
        return
    typed = _typed_field(dt)
    if typed is None:
        return  # sub-byte types packed in int32_data: the importer refuses them by type
    field, per = typed
    have = len(getattr(t, field))
    if have != n * per:
        elsewhere = [f for f in _FIELDS if f != field and len(getattr(t, f))]
        extra = (
            f" (its values are in {elsewhere[0]}, which {label} does not use)" if elsewhere else ""
        )
        what = "no data" if have == 0 else f"{have} values in {field}"
        raise fail(f"({label}) needs {n * per} values in {field} but holds {what}{extra}")


# --- external data ------------------------------------------------------------------------------------
def check_external_data(
    model: onnx.ModelProto, base_dir: str | os.PathLike[str], where: str
) -> None:
    """Before onnx reads external weights: every file present, inside `base_dir`, long enough for
    offset + length, and length = dims x dtype. `where` names the model file."""
    base = Path(base_dir).resolve()
    for t in onnx.external_data_helper._get_all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        name = f"tensor '{t.name}'"
        loc = info.get("location", "")
        fix = "keep the weight files next to the model (as the exporter wrote them)"
        if not loc:
            raise ModelLoadError(
                f"cannot load {where}: {name} is external but names no file; {fix}"
            )
        path = (base / loc).resolve()
        if os.path.isabs(loc) or base not in (path, *path.parents):
            raise ModelLoadError(
                f"cannot load {where}: {name} points outside the model's folder ('{loc}'); {fix}"
            )
        if not path.is_file():
            raise ModelLoadError(
                f"cannot load {where}: the external weights of {name} ('{loc}') are missing; {fix}"
            )
        try:
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise ModelLoadError(
                f"cannot load {where}: {name} has a non-numeric external offset/length; {_DAMAGED}"
            ) from None
        size = path.stat().st_size
        avail = size - offset
        dims = [int(d) for d in t.dims]
        bits = _BITS.get(int(t.data_type))
        need = (math.prod(dims) * bits + 7) // 8 if bits and all(d >= 0 for d in dims) else None
        if offset < 0 or (length is not None and length < 0):
            raise ModelLoadError(
                f"cannot load {where}: {name} has a negative external offset/length; {_DAMAGED}"
            )
        want = length if length is not None else need
        if want is not None and want > avail:
            raise ModelLoadError(
                f"cannot load {where}: the external weights of {name} need {want} bytes at offset "
                f"{offset} of '{loc}', which has {size} bytes (file truncated?); {fix}"
            )
        if length is not None and need is not None and length != need:
            raise ModelLoadError(
                f"cannot load {where}: {name} ({dtype_label(int(t.data_type))} {dims}) needs "
                f"{need} bytes but its external data is {length} bytes long; {_DAMAGED}"
            )


# --- graph structure ----------------------------------------------------------------------------------
class NodeNames:
    """How messages name each node: ``node 'conv1' (Conv)``; an unnamed node gets the name the
    importer gives it (``Conv_3``, its place in import order), or ``#i`` (its place in the file)."""

    def __init__(self, graph: onnx.GraphProto, order: Sequence[int] | None = None) -> None:
        self.nodes = list(graph.node)
        self.auto: dict[int, str] = {}
        for k, i in enumerate(order or ()):
            if not self.nodes[i].name:
                self.auto[i] = f"{self.nodes[i].op_type}_{k}"

    def label(self, i: int) -> str:
        n = self.nodes[i]
        return n.name or self.auto.get(i) or f"#{i}"

    def __call__(self, i: int) -> str:
        n = self.nodes[i]
        op = f"{n.domain}::{n.op_type}" if n.domain not in DEFAULT_DOMAINS else n.op_type
        label = n.name or self.auto.get(i)
        return f"node '{label}' ({op})" if label else f"node #{i} ({op}, unnamed)"


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names of the enclosing scope that ``node``'s subgraphs (an ``If``'s branches, a ``Loop``'s
    body) read: their nodes' inputs that no node, input or initializer of the subgraph defines."""
    out: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            local = {v.name for v in g.input} | {t.name for t in g.initializer}
            local |= {o for n in g.node for o in n.output if o}
            for n in g.node:
                out |= {x for x in n.input if x and x not in local}
                out |= {x for x in subgraph_reads(n) if x not in local}
            out |= {v.name for v in g.output if v.name not in local}
    return out


def node_reads(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, then what its subgraphs read from the enclosing scope."""
    extra = sorted(subgraph_reads(node)) if node.op_type in ("If", "Loop", "Scan") else []
    return [x for x in node.input if x] + extra


def import_order(graph: onnx.GraphProto) -> list[int]:
    """Indices of the nodes some graph output depends on, in the (stable) topological order mcopt
    imports them in. Assumes :func:`check_model` passed (no cycle, unique producers)."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    live: set[int] = set()
    stack = [producer[o.name] for o in graph.output if o.name in producer]
    while stack:
        i = stack.pop()
        if i in live:
            continue
        live.add(i)
        stack.extend(producer[n] for n in node_reads(nodes[i]) if n in producer)
    order: list[int] = []
    placed: set[int] = set()
    pending = sorted(live)
    while pending:
        rest = []
        for i in pending:
            if all(n not in producer or producer[n] in placed for n in node_reads(nodes[i])):
                order.append(i)
                placed.add(i)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            raise ModelLoadError(f"the graph has a cycle through {NodeNames(graph)(rest[0])}")
        pending = rest
    return order


def _topo_order(graph: onnx.GraphProto, source: str) -> list[int]:
    """All nodes in a stable topological order; a cycle is an error naming its nodes and tensors."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [sorted({producer[x] for x in node_reads(n) if x in producer}) for n in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
    waiting = [len(ds) for ds in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) == len(nodes):
        return order
    names = NodeNames(graph)
    left = {i for i, w in enumerate(waiting) if w > 0}
    # walk back along unplaced dependencies until a node repeats: that stretch is a cycle
    path, seen = [min(left)], {min(left): 0}
    while True:
        nxt = next(d for d in deps[path[-1]] if d in left)
        if nxt in seen:
            cycle = path[seen[nxt] :][::-1]
            break
        seen[nxt] = len(path)
        path.append(nxt)
    steps = []
    for a, b in zip(cycle, [*cycle[1:], cycle[0]]):
        t = next(x for x in nodes[b].input if producer.get(x) == a)
        steps.append(f"{names(a)} -> '{t}' ->")
    raise ModelLoadError(
        f"{source}: the graph has a cycle: {' '.join(steps)} {names(cycle[0])}; ONNX graphs must be "
        "acyclic: fix the node inputs or export the model again"
    )


def _check_names(graph: onnx.GraphProto, source: str, names: NodeNames) -> None:
    def dup(kind: str, items: Iterable[str], why: str) -> None:
        seen: set[str] = set()
        for x in items:
            if x in seen:
                raise ModelLoadError(
                    f"{source}: two {kind}s are named '{x}'; {why}: rename or remove one"
                )
            seen.add(x)

    dup(
        "initializer",
        (t.name for t in graph.initializer),
        "which one a runtime reads is undefined (onnxruntime and mcopt would differ)",
    )
    dup("graph input", (v.name for v in graph.input), "ONNX input names must be unique")
    dup("graph output", (v.name for v in graph.output), "ONNX output names must be unique")
    # Constant nodes are not in the check: onnxruntime turns them into initializers first (Silero
    # VAD's export names 15 of them 'F0::anon' and loads)
    dup(
        "node",
        (n.name for n in graph.node if n.name and n.op_type != "Constant"),
        "onnxruntime refuses duplicate node names",
    )
    if len(graph.sparse_initializer):
        t = graph.sparse_initializer[0]
        raise ModelLoadError(
            f"{source}: sparse initializer '{t.values.name}' is not supported by mcopt; store it "
            "as a dense initializer"
        )
    inits = {t.name for t in graph.initializer}
    inputs = {v.name for v in graph.input}
    writer: dict[str, int] = {}
    for i, n in enumerate(graph.node):
        for o in n.output:
            if not o:
                continue
            if o in writer:
                raise ModelLoadError(
                    f"{source}: tensor '{o}' is written by two nodes, {names(writer[o])} and "
                    f"{names(i)}; every tensor needs one producer: rename one of the outputs"
                )
            if o in inputs or o in inits:
                kind = "a graph input" if o in inputs else "an initializer"
                raise ModelLoadError(
                    f"{source}: tensor '{o}' is both {kind} and the output of {names(i)}; every "
                    "tensor needs one producer: rename the output"
                )
            writer[o] = i
    defined = inits | inputs | set(writer)
    for i, n in enumerate(graph.node):
        for k, x in enumerate(n.input):
            if x and x not in defined:
                raise ModelLoadError(
                    f"{source}: {names(i)} input {k} reads tensor '{x}', which no node, graph "
                    "input or initializer defines; fix the input name or export the model again"
                )
    if not len(graph.output):
        raise ModelLoadError(f"{source}: the graph has no outputs; {_DAMAGED}")
    for v in graph.output:
        if v.name not in defined:
            what = "the graph has no nodes and " if not len(graph.node) else ""
            raise ModelLoadError(
                f"{source}: {what}graph output '{v.name}' is not produced by any node, graph input "
                "or initializer; fix the output name or export the model again"
            )


# --- attributes ------------------------------------------------------------------------------------
_ATTR_FIELD = {
    AttributeProto.FLOAT: "f",
    AttributeProto.INT: "i",
    AttributeProto.STRING: "s",
    AttributeProto.TENSOR: "t",
    AttributeProto.GRAPH: "g",
    AttributeProto.SPARSE_TENSOR: "sparse_tensor",
    AttributeProto.TYPE_PROTO: "tp",
    AttributeProto.FLOATS: "floats",
    AttributeProto.INTS: "ints",
    AttributeProto.STRINGS: "strings",
    AttributeProto.TENSORS: "tensors",
    AttributeProto.GRAPHS: "graphs",
    AttributeProto.SPARSE_TENSORS: "sparse_tensors",
    AttributeProto.TYPE_PROTOS: "type_protos",
}
_SCALAR_FIELDS = ("f", "i", "s", "t", "g", "sparse_tensor", "tp")


def _attr_kinds(a: AttributeProto) -> list[int]:
    """The attribute types whose fields hold data."""
    kinds = []
    for kind, field in _ATTR_FIELD.items():
        if field in _SCALAR_FIELDS:
            if a.HasField(field):
                kinds.append(kind)
        elif len(getattr(a, field)):
            kinds.append(kind)
    return kinds


def _attr_type_name(kind: int) -> str:
    try:
        return AttributeProto.AttributeType.Name(kind)
    except ValueError:
        return f"type {kind}"


def _show_attr(a: AttributeProto) -> str:
    try:
        v = helper.get_attribute_value(a)
    except Exception:  # a malformed attribute: show nothing rather than fail here
        return ""
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    if isinstance(v, list | tuple) and len(v) > 8:
        v = [*v[:8], "..."]
    if isinstance(v, int | float | str | list | tuple):
        text = repr(v) if isinstance(v, str) else str(list(v) if isinstance(v, tuple) else v)
        return f" {text[:60]}"
    return ""


def _check_attr_types(
    node: onnx.NodeProto, desc: str, schema: onnx.defs.OpSchema | None, source: str
) -> None:
    for a in node.attribute:
        where = f"{source}: {desc} attribute '{a.name}'"
        if a.ref_attr_name:
            continue  # a function's attribute reference (inlined before this runs)
        kinds = _attr_kinds(a)
        declared = int(a.type)
        if declared == AttributeProto.UNDEFINED:
            raise ModelLoadError(f"{where} has no type (AttributeProto.type UNDEFINED); {_DAMAGED}")
        field = _ATTR_FIELD.get(declared)
        if field is None:
            raise ModelLoadError(f"{where} has an unknown attribute type {declared}; {_DAMAGED}")
        other = [k for k in kinds if k != declared]
        if other and declared not in kinds:
            raise ModelLoadError(
                f"{where} says it is {_attr_type_name(declared)} but holds "
                f"{_attr_type_name(other[0])}{_show_attr_as(a, other[0])}; {_INVALID}"
            )
        if schema is None:
            continue
        spec = schema.attributes.get(a.name)
        if spec is None:
            known = ", ".join(sorted(schema.attributes)) or "none"
            raise ModelLoadError(
                f"{where}: {node.op_type} (opset {schema.since_version}) has no such attribute "
                f"(it takes: {known}); {_INVALID}"
            )
        want = int(spec.type.value)
        if want != declared:
            raise ModelLoadError(
                f"{where} is {_attr_type_name(declared)}{_show_attr(a)}, but {node.op_type} "
                f"takes {_attr_type_name(want)}; {_INVALID}"
            )


def _show_attr_as(a: AttributeProto, kind: int) -> str:
    b = AttributeProto()
    b.CopyFrom(a)
    b.type = kind
    return _show_attr(b)


# --- per-op attribute values -----------------------------------------------------------------------
#: ops with one axis attribute: extra = 1 when the axis may equal the rank (Flatten)
_AXIS_OPS: dict[str, int] = {
    "Concat": 0,
    "Softmax": 0,
    "LogSoftmax": 0,
    "Hardmax": 0,
    "Split": 0,
    "Gather": 0,
    "GatherElements": 0,
    "ArgMax": 0,
    "ArgMin": 0,
    "LpNormalization": 0,
    "Flatten": 1,
}
_AXES_OPS = frozenset(
    {
        "Squeeze",
        "Unsqueeze",
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
        "Slice",
    }
)
_WINDOW_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "LpPool"})


class _Shapes:
    """Element types and dims of the model's tensors from onnx shape inference (best effort)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.types: dict[str, tuple[int, list[int | None] | None]] = {}
        for t in model.graph.initializer:
            self.types[t.name] = (int(t.data_type), [int(d) for d in t.dims])
        for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
            if not vi.type.HasField("tensor_type"):
                continue
            tt = vi.type.tensor_type
            dims = (
                [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                if tt.HasField("shape")
                else None
            )
            if vi.name not in self.types or tt.elem_type:
                self.types[vi.name] = (int(tt.elem_type), dims)

    def rank(self, name: str) -> int | None:
        dims = self.types.get(name, (0, None))[1]
        return None if dims is None else len(dims)

    def dims(self, name: str) -> list[int | None] | None:
        return self.types.get(name, (0, None))[1]

    def elem(self, name: str) -> int:
        return self.types.get(name, (0, None))[0]


def _ints(a: AttributeProto | None) -> list[int] | None:
    if a is None:
        return None
    return [int(v) for v in a.ints] if a.type == AttributeProto.INTS else [int(a.i)]


def _check_values(
    node: onnx.NodeProto, desc: str, shapes: _Shapes | None, source: str, opset: int
) -> None:
    attrs = {a.name: a for a in node.attribute}
    op = node.op_type
    x = node.input[0] if len(node.input) else ""
    rank = shapes.rank(x) if shapes is not None and x else None

    def bad(attr: str, msg: str, fix: str = _INVALID) -> ModelLoadError:
        return ModelLoadError(f"{source}: {desc} attribute '{attr}' {msg}; {fix}")

    if op in _AXIS_OPS and "axis" in attrs and rank is not None:
        axis, extra = int(attrs["axis"].i), _AXIS_OPS[op]
        if op in ("Softmax", "LogSoftmax", "Hardmax") and opset < 13:
            extra = 0
        lo, hi = -rank, rank - 1 + extra
        if not lo <= axis <= hi:
            raise bad(
                "axis", f"is {axis}, out of range [{lo}, {hi}] for its rank-{rank} input '{x}'"
            )
    if op in _AXES_OPS and "axes" in attrs and rank is not None:
        axes = _ints(attrs["axes"]) or []
        r = rank + len(axes) if op == "Unsqueeze" else rank
        out = [a for a in axes if not -r <= a < r]
        if out:
            what = f"its rank-{rank} input '{x}'" + (
                f" (rank {r} after unsqueezing)" if op == "Unsqueeze" else ""
            )
            raise bad("axes", f"{axes} has {out[0]}, out of range [{-r}, {r - 1}] for {what}")
        if len({a % r for a in axes}) != len(axes):
            raise bad("axes", f"{axes} names an axis twice")
    if op == "Transpose" and "perm" in attrs:
        perm = _ints(attrs["perm"]) or []
        n = rank if rank is not None else len(perm)
        if sorted(perm) != list(range(n)):
            raise bad(
                "perm", f"{perm} is not a permutation of 0..{n - 1} (input '{x}' has rank {n})"
            )
    if op in _WINDOW_OPS:
        _check_window(node, attrs, shapes, bad)
    if op == "LRN" and "size" in attrs and int(attrs["size"].i) < 1:
        raise bad("size", f"is {int(attrs['size'].i)}; it must be >= 1")
    if op == "Split" and "split" in attrs and any(s < 0 for s in _ints(attrs["split"]) or []):
        raise bad("split", f"{_ints(attrs['split'])} has a negative size")


def _check_window(
    node: onnx.NodeProto,
    attrs: dict[str, AttributeProto],
    shapes: _Shapes | None,
    bad: Callable[..., ModelLoadError],
) -> None:
    op = node.op_type
    x = node.input[0] if len(node.input) else ""
    xdims = shapes.dims(x) if shapes is not None and x else None
    wdims = (
        shapes.dims(node.input[1])
        if op == "Conv" and shapes is not None and len(node.input) > 1
        else None
    )
    kernel = _ints(attrs.get("kernel_shape"))
    if kernel is not None and wdims is not None and len(wdims) >= 3:
        wk = wdims[2:]
        if len(wk) != len(kernel) or any(w is not None and w != k for w, k in zip(wk, kernel)):
            raise bad(
                "kernel_shape",
                f"is {kernel}, but the weight '{node.input[1]}' has kernel size "
                f"{['?' if w is None else w for w in wk]}",
            )
    if kernel is None and wdims is not None and len(wdims) >= 3:
        kernel = [d if d is not None else 0 for d in wdims[2:]]
    n = (
        len(kernel)
        if kernel is not None
        else (len(xdims) - 2 if xdims is not None and len(xdims) >= 3 else None)
    )
    for key in ("kernel_shape", "strides", "dilations"):
        vals = _ints(attrs.get(key))
        if vals is None:
            continue
        if any(v < 1 for v in vals):
            raise bad(key, f"is {vals}; every value must be >= 1")
        if n is not None and len(vals) != n:
            raise bad(key, f"is {vals}: {len(vals)} values for a {n}-D window (needs {n})")
    if "group" in attrs and int(attrs["group"].i) < 1:
        raise bad("group", f"is {int(attrs['group'].i)}; it must be >= 1")
    pads = _ints(attrs.get("pads"))
    if pads is None:
        return
    if any(p < 0 for p in pads):
        raise bad("pads", f"is {pads}; pads must be >= 0")
    if n is None:
        return
    if len(pads) != 2 * n:
        raise bad("pads", f"is {pads}: {len(pads)} values for a {n}-D window (needs {2 * n})")
    if kernel is None or len(kernel) != n:
        return
    dil = _ints(attrs.get("dilations")) or [1] * n
    for i in range(n):
        k = kernel[i]
        if k <= 0:
            continue
        big = max(pads[i], pads[i + n])
        if op != "Conv":
            if big >= k:  # onnxruntime: "Pad should be smaller than kernel"
                raise bad(
                    "pads",
                    f"is {pads}: pad {big} on spatial axis {i} is not smaller than the kernel ({k})",
                )
            continue
        extent = (k - 1) * (dil[i] if i < len(dil) else 1) + 1
        size = xdims[2 + i] if xdims is not None and len(xdims) == n + 2 else None
        bound = max(extent, size or 0)
        if big > bound:
            where = f"the input ({size}) and " if size else ""
            raise bad(
                "pads",
                f"is {pads}: pad {big} on spatial axis {i} is larger than both {where}the kernel "
                f"extent ({extent}), so most of the output would be padding; mcopt refuses such "
                "pads (a broken export?)",
                fix="fix the node's pads",
            )


# --- weights ---------------------------------------------------------------------------------------
def _float_values(t: TensorProto) -> np.ndarray | None:
    """A float tensor's values without copying raw_data (None for other types)."""
    dt = _FLOAT_NP.get(int(t.data_type))
    if dt is None:
        return None
    if t.HasField("raw_data"):
        return np.frombuffer(t.raw_data, dtype=np.dtype(dt).newbyteorder("<"))
    if t.data_type == TensorProto.FLOAT16:
        return np.asarray(t.int32_data, dtype=np.uint16).view(np.float16)
    return np.asarray(t.double_data if t.data_type == TensorProto.DOUBLE else t.float_data, dt)


def _values(t: TensorProto) -> np.ndarray | None:
    try:
        return onnx.numpy_helper.to_array(t)
    except Exception:  # already reported by check_tensor (or a type mcopt does not hold)
        return None


def _constants(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    """Every tensor a name can stand for without running anything: initializers and Constant
    nodes' ``value``."""
    out = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS and len(n.output):
            for a in n.attribute:
                if a.name == "value" and a.type == AttributeProto.TENSOR:
                    out[n.output[0]] = a.t
    inputs = {v.name for v in graph.input}
    return {k: v for k, v in out.items() if k not in inputs}  # an input may override its default


# ops where an infinite constant is an idiom, not a broken weight: the identity of Max / Min
# (jax2tf's softmax takes Max(-inf, ReduceMax(x))), an open Clip bound, a masked value picked by
# Where, or one side of a comparison
_INF_IDIOMS = frozenset(
    {"Max", "Min", "Clip", "Where", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Equal"}
)


def check_finite(
    model: onnx.ModelProto,
    source: str,
    *,
    allow_nonfinite: bool = False,
    names: NodeNames | None = None,
) -> list[str]:
    """NaN / Inf in float weights, negative BatchNormalization variances, constant divisors with
    zeros. Raises NonFiniteError (the first problem) unless `allow_nonfinite`; then warns once per
    tensor with a NonFiniteWarning. Returns the problems found."""
    graph = model.graph
    names = names or NodeNames(graph)
    consts = _constants(graph)
    used: dict[str, int] = {}
    users: dict[str, set[str]] = {}
    for i, n in enumerate(graph.node):
        for k, x in enumerate(n.input):
            used.setdefault(x, i)
            # a constant Pad's fill value (swift-f0's -inf before a max): like Max's identity
            users.setdefault(x, set()).add("Max" if n.op_type == "Pad" and k == 2 else n.op_type)
    outputs = {v.name for v in graph.output}
    problems: list[str] = []
    for name, t in consts.items():
        if name not in used:
            continue
        vals = _float_values(t)
        if vals is None or vals.size == 0:
            continue
        finite = np.isfinite(vals)
        if finite.all():
            continue
        n_nan = int(np.isnan(vals).sum())
        n_inf = int(vals.size - finite.sum() - n_nan)
        kind = " and ".join(
            s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} Inf" if n_inf else "") if s
        )
        if not n_nan and users.get(name, set()) <= _INF_IDIOMS:
            continue  # -inf as Max's identity, a Clip bound, a mask value chosen by Where, a pad value
        first = int(np.flatnonzero(~finite)[0])
        where = tuple(int(v) for v in np.unravel_index(first, tuple(t.dims))) if t.dims else ()
        problems.append(
            f"weight '{name}' ({dtype_label(int(t.data_type))} {list(t.dims)}) holds {kind} "
            f"value(s) (first at index {list(where)}), so every output it reaches is non-finite"
        )
    for i, n in enumerate(graph.node):
        if n.domain not in DEFAULT_DOMAINS:
            continue
        training = any(a.name == "training_mode" and a.i for a in n.attribute) or any(
            o in used or o in outputs for o in n.output[1:] if o
        )  # training-mode BN normalizes with batch statistics, not the running variance
        if (
            n.op_type == "BatchNormalization"
            and not training
            and len(n.input) > 4
            and n.input[4] in consts
        ):
            var = _values(consts[n.input[4]])
            eps = next((float(a.f) for a in n.attribute if a.name == "epsilon"), 1e-5)
            if var is None or var.dtype.kind != "f" or var.size == 0:
                continue
            with np.errstate(invalid="ignore"):
                neg = int(np.sum(var < 0))
                nonpos = int(np.sum(var.astype(np.float64) + eps <= 0))
            if neg:
                problems.append(
                    f"{names(i)}: running variance '{n.input[4]}' has {neg} negative value(s) "
                    f"(min {float(np.nanmin(var)):.4g}); a variance cannot be negative and "
                    "sqrt(var + epsilon) of it is NaN"
                )
            elif nonpos:
                problems.append(
                    f"{names(i)}: running variance '{n.input[4]}' + epsilon ({eps:g}) is <= 0 in "
                    f"{nonpos} channel(s), so the normalization divides by zero or takes the "
                    "square root of a negative number"
                )
        if n.op_type == "Div" and len(n.input) > 1 and n.input[1] in consts:
            den = _values(consts[n.input[1]])
            if den is not None and den.dtype.kind == "f" and den.size and np.any(den == 0):
                problems.append(
                    f"{names(i)}: divisor '{n.input[1]}' holds {int(np.sum(den == 0))} zero(s), "
                    "so the quotient is Inf or NaN"
                )
    for p in problems:
        if not allow_nonfinite:
            raise NonFiniteError(
                f"{source}: {p}; fix the model's weights, or pass allow_nonfinite=True "
                "(CLI: --allow-nonfinite) to import it anyway"
            )
        warnings.warn(
            f"{source}: {p} (imported anyway: allow_nonfinite=True)", NonFiniteWarning, stacklevel=3
        )
    return problems


# --- shape inference on a weightless copy --------------------------------------------------------------
def _skeleton(
    model: onnx.ModelProto,
    order: Sequence[int],
    output_types: bool,
    shapes: _Shapes | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> onnx.ModelProto:
    """The model without its large weights (they become typed graph inputs), nodes sorted and
    named ``n<i>`` (i: index in the file), value_info dropped; outputs untyped, or (`output_types`)
    with their declared element type and rank (from `shapes` when undeclared) but no dims."""
    g = model.graph
    s = onnx.ModelProto()
    s.ir_version = model.ir_version
    s.opset_import.extend(model.opset_import)
    s.graph.name = g.name or "graph"
    for i in order:
        n = s.graph.node.add()
        n.CopyFrom(g.node[i])
        n.name = f"n{i}"
    s.graph.input.extend(g.input)
    for v in s.graph.input:
        user = (input_shapes or {}).get(v.name)
        if user is not None and v.type.HasField("tensor_type"):
            tt = v.type.tensor_type
            if not tt.HasField("shape") or len(tt.shape.dim) == len(user):
                tt.ClearField("shape")
                tt.shape.SetInParent()
                for d in user:
                    tt.shape.dim.add().dim_value = int(d)
    inputs = {v.name for v in g.input}
    for t in g.initializer:
        bits = _BITS.get(int(t.data_type), 64)
        if math.prod(t.dims) * bits // 8 <= _SKELETON_KEEP_BYTES:
            s.graph.initializer.append(t)
        elif t.name not in inputs:
            s.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for v in g.output:
        out = s.graph.output.add()
        out.name = v.name
        if not output_types:
            continue
        if not v.type.HasField("tensor_type"):
            out.type.CopyFrom(v.type)
            continue
        tt = out.type.tensor_type
        tt.elem_type = v.type.tensor_type.elem_type
        rank = len(v.type.tensor_type.shape.dim) if v.type.tensor_type.HasField("shape") else None
        if rank is None and shapes is not None:
            rank = shapes.rank(v.name)  # the checker wants a shape: take the inferred rank
        if rank is None:  # unknowable here (onnxruntime does not need it): leave it unchecked
            del s.graph.output[-1]
            continue
        tt.shape.SetInParent()
        for _ in range(rank):
            tt.shape.dim.add()
    return s


def _infer(
    model: onnx.ModelProto,
    order: Sequence[int],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> _Shapes | None:
    try:
        skeleton = _skeleton(model, order, False, None, input_shapes)
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception:  # best effort: the checker reports what is wrong later
        return None
    return _Shapes(inferred)


_NODE_REF = re.compile(r"\bn(\d+)\b")


def _translate(e: BaseException, names: NodeNames) -> tuple[str, str]:
    """(what, reason) for a checker / inference error: `what` names the node when known."""
    text = str(e)
    m = re.search(r"\(op_type:([^,)]*)(?:, node name: n(\d+))?\): (.*)", text)
    node_i = None
    if m:
        reason = m.group(3)
        node_i = int(m.group(2)) if m.group(2) else None
    else:
        reason = text.split("==> Context:")[0]
        m2 = re.search(r"Name: n(\d+) OpType", text) or re.search(r"node name: n(\d+)", text)
        node_i = int(m2.group(1)) if m2 else None
    reason = re.sub(r"\[\w+\]\s*", "", reason)
    reason = re.sub(r"^Inference error\(s\):\s*", "", reason)
    reason = " ".join(reason.split("\n")[0].split()) or type(e).__name__

    def sub(mm: re.Match[str]) -> str:
        i = int(mm.group(1))
        return f"'{names.label(i)}'" if i < len(names.nodes) else mm.group(0)

    reason = _NODE_REF.sub(sub, reason)
    if len(reason) > 300:
        reason = reason[:297] + "..."
    what = names(node_i) if node_i is not None and node_i < len(names.nodes) else "the graph"
    return what, reason


def run_checker(
    model: onnx.ModelProto, source: str, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> None:
    """``onnx.checker.check_model(full_check=True)`` on a weightless, sorted copy of `model` (with
    the caller's `input_shapes`); its first complaint as a one-line ModelLoadError naming the node.

    Skipped while a graph input has no shape (the importer asks for `input_shapes` then)."""
    for v in model.graph.input:
        tt = v.type.tensor_type if v.type.HasField("tensor_type") else None
        if tt is not None and not tt.HasField("shape") and v.name not in (input_shapes or {}):
            return
    order = _topo_order(model.graph, source)
    names = NodeNames(model.graph, _safe_import_order(model.graph))
    shapes = _infer(model, order, input_shapes)
    skeleton = _skeleton(model, order, True, shapes, input_shapes)
    for out in skeleton.graph.output:  # declared output types are compared below, by name
        got = shapes.elem(out.name) if shapes is not None else 0
        if got and out.type.HasField("tensor_type"):
            out.type.tensor_type.elem_type = got
    try:
        onnx.checker.check_model(skeleton, full_check=True)
    except Exception as e:  # ValidationError, InferenceError, ValueError, ...
        what, reason = _translate(e, names)
        if reason.startswith("No Op registered for"):
            from mcopt.errors import UnsupportedOpError

            op = reason.split()[4] if len(reason.split()) > 4 else "?"
            raise UnsupportedOpError(
                f"{source}: {what}: operator {op} is not supported by mcopt: it is not an ONNX "
                f"operator in this opset ({reason})"
            ) from None
        if what.endswith(("(Loop)", "(Scan)")):
            from mcopt.errors import UnsupportedOpError

            op = what.rsplit("(", 1)[1].rstrip(")")
            raise UnsupportedOpError(
                f"{source}: {what}: operator {op} is not supported by mcopt (a loop run a number "
                f"of times decided at run time; export the model without it, e.g. the encoder "
                f"alone); onnx.checker also rejects its body: {reason}"
            ) from None
        raise ModelLoadError(
            f"{source}: {what}: {reason} (onnx.checker.check_model); {_INVALID}"
        ) from None
    if shapes is not None:
        _check_output_types(model.graph, shapes, names, source)


def _safe_import_order(graph: onnx.GraphProto) -> list[int]:
    try:
        return import_order(graph)
    except ModelLoadError:
        return []


# --- the entry point -------------------------------------------------------------------------------
def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version (0 when it imports none)."""
    return max(
        (int(o.version) for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default=0
    )


def check_model(
    model: onnx.ModelProto,
    source: str,
    *,
    allow_nonfinite: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> None:
    """Validate `model` before mcopt converts it (see the module docstring); raise a one-line
    :class:`~mcopt.errors.MCoptError` subclass naming the tensor / node / attribute.

    `input_shapes` (the caller's, as for import) replace the declared shapes of the inputs they
    name: a declared zero or negative dim is an error only where they do not."""
    if model.ir_version > onnx.IR_VERSION:
        raise ModelLoadError(
            f"{source}: ir_version {model.ir_version} is newer than the installed onnx package "
            f"knows (up to {onnx.IR_VERSION}); export the model with an older ir_version or "
            "upgrade onnx"
        )
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelLoadError(
            f"{source}: the model imports ONNX opset {opset}, newer than the installed onnx "
            f"package knows (up to {newest}); export it with an opset from 9 to 21"
        )
    g = model.graph
    plain = NodeNames(g)
    _check_names(g, source, plain)
    order = _topo_order(g, source)
    names = NodeNames(g, import_order(g))
    for t in g.initializer:
        check_tensor(t, f"initializer '{t.name}'", source)
    inits = {t.name for t in g.initializer}
    for vi in g.input:
        if vi.name in (input_shapes or {}) or vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim
        ]
        for k, d in enumerate(dims):
            if d is not None and d < 1:
                shown = "[" + ", ".join("?" if x is None else str(x) for x in dims) + "]"
                what = "holds no data" if d == 0 else "is impossible"
                raise ShapeError(
                    f"{source}: input '{vi.name}' is declared with dim {k} = {d} in {shown}, which "
                    f"{what}; fix the model's input shape or pass input_shapes={{'{vi.name}': "
                    "[...]} (CLI: --input-shape) with sizes >= 1"
                )
    shapes = _infer(model, order, input_shapes)
    versions = {o.domain or "": int(o.version) for o in model.opset_import}
    for i in order:
        node = g.node[i]
        desc = names(i)
        for a in node.attribute:
            if a.type == AttributeProto.TENSOR and a.HasField("t"):
                check_tensor(a.t, f"{desc} attribute '{a.name}'", source)
            for k, t in enumerate(a.tensors):
                check_tensor(t, f"{desc} attribute '{a.name}'[{k}]", source)
        domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
        schema = None
        if domain in versions and onnx.defs.has(node.op_type, domain):
            try:
                schema = onnx.defs.get_schema(node.op_type, versions[domain], domain)
            except onnx.defs.SchemaError:
                schema = None
        _check_attr_types(node, desc, schema, source)
        if node.op_type == "Constant" and not domain:
            values = [
                a.name
                for a in node.attribute
                if a.name.startswith("value") or a.name == "sparse_value"
            ]
            if len(values) != 1:
                raise ModelLoadError(
                    f"{source}: {desc} has {len(values)} value attributes ({values or 'none'}); a "
                    f"Constant needs exactly one; {_INVALID}"
                )
        if not domain:
            _check_values(node, desc, shapes, source, opset)
    check_finite(model, source, allow_nonfinite=allow_nonfinite, names=names)


def _check_output_types(
    graph: onnx.GraphProto, shapes: _Shapes, names: NodeNames, source: str
) -> None:
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    for v in graph.output:
        if not v.type.HasField("tensor_type"):
            continue
        declared = int(v.type.tensor_type.elem_type)
        got = shapes.elem(v.name)
        if declared and got and declared != got:
            by = names(producer[v.name]) if v.name in producer else "its definition"
            raise ModelLoadError(
                f"{source}: graph output '{v.name}' is declared {dtype_label(declared)}, but "
                f"{by} produces {dtype_label(got)}; fix the output's type in the model "
                "(onnxruntime refuses it too)"
            )


__all__ = [
    "NodeNames",
    "check_external_data",
    "check_finite",
    "check_model",
    "check_tensor",
    "import_order",
    "run_checker",
]
