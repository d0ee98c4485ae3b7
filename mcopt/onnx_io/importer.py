"""ONNX -> mcopt IR.

`import_model` loads a model (see :mod:`mcopt.onnx_io.loader`), validates it
(:mod:`mcopt.onnx_io.validate`: every problem a one-line error naming the tensor / node /
attribute; non-finite weights refused unless ``allow_nonfinite``), fixes every input shape (a dynamic
first dim becomes `default_batch`; any other unknown dim must come from `input_shapes`), then walks the
ONNX nodes in topological order. Each node is either

- folded to a constant (all inputs constant, or `Shape`/`Size` of a static value; see
  :mod:`mcopt.onnx_io.folding`), or
- converted by the handler for its op type (:mod:`mcopt.onnx_io.import_ops`) into mcopt ops.

An op without a handler is a one-line :class:`~mcopt.errors.UnsupportedOpError` naming the node.
Nodes that no graph output depends on are skipped. ONNX tensor names become value names (a suffix is
added only on a clash); node names come from ONNX node names, or ``OpType_<index>`` when empty.

``graph.metadata`` records: ``source`` (file or "<bytes>"/"<ModelProto>"), ``opset`` (default-domain
opset), ``producer`` ("name version"), ``ir_version``, ``dynamic_dims`` ({input: {dim: "param"}},
the input dims that were dynamic in the ONNX file; "?" when unnamed) and ``input_shapes_fixed``.

A model whose default-domain opset is below ``MIN_OPSET`` (e.g. the opset-6 models of old PyTorch
exporters) is first upgraded in memory with ``onnx.version_converter.convert_version`` to
``UPGRADE_OPSET``, one above ``MAX_OPSET`` downgraded to ``MAX_OPSET`` (the user's file and
ModelProto are never modified); ``graph.metadata`` then also records ``upgraded_from_opset`` or
``downgraded_from_opset`` (the file's opset), and ``opset`` is the converted one. Semantics the
converter does not carry over (opset < 7 PRelu's channel-wise slope) are applied by the handlers,
which see the file's opset as ``NodeCtx.source_opset``. A conversion that fails is a one-line
:class:`~mcopt.errors.ModelLoadError` naming the model.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcopt.errors import MCoptError, ModelLoadError, ShapeError, UnsupportedOpError
from mcopt.ir.core import Graph, Value
from mcopt.ir.types import DTYPES, TensorType
from mcopt.onnx_io import folding, validate
from mcopt.onnx_io.dynamic_quant import dequantize_dynamic
from mcopt.onnx_io.loader import ModelSource, load_onnx

MIN_OPSET, MAX_OPSET = 9, 21
UPGRADE_OPSET = MIN_OPSET  # older models are converted to this opset before import
DEFAULT_DOMAINS = ("", "ai.onnx")


def onnx_dtype_name(elem_type: int, where: str) -> str:
    """numpy dtype name for an ONNX element type, or an error naming `where`."""
    try:
        name = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "undefined"
    if name not in DTYPES:
        raise UnsupportedOpError(
            f"{where} has element type {name}, which mcopt does not support "
            f"(supported: {', '.join(sorted(DTYPES))})"
        )
    return name


class NodeCtx:
    """What an op handler sees: the ONNX node, its inputs as mcopt values, and emit helpers."""

    def __init__(self, imp: _Importer, node: onnx.NodeProto, name: str) -> None:
        self.imp = imp
        self.node = node
        self.name = name
        self.op_type = node.op_type
        self.opset = imp.opset
        self.source_opset = imp.source_opset
        self.graph = imp.graph
        self.attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.inputs: list[Value | None] = [imp.lookup(n, self) if n else None for n in node.input]
        self._emitted: set[int] = set()

    # --- inputs and attributes ----------------------------------------------------------------
    def attr(self, key: str, default: Any = None) -> Any:
        v = self.attrs.get(key, default)
        return v.decode() if isinstance(v, bytes) else v

    def inp(self, i: int) -> Value | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def x(self, i: int = 0) -> Value:
        v = self.inp(i)
        if v is None:
            raise self.fail(f"input {i} is required")
        return v

    def const(self, i: int) -> np.ndarray | None:
        v = self.inp(i)
        return None if v is None else v.const

    def need_const(self, i: int, what: str) -> np.ndarray:
        v = self.inp(i)
        if v is None or v.const is None:
            raise self.fail(
                f"{what} (input {i}{'' if v is None else ' ' + repr(v.name)}) must be a constant "
                "(or computable from static shapes); mcopt needs it at import time"
            )
        return v.const

    def output_used(self, i: int) -> bool:
        return i < len(self.node.output) and self.node.output[i] in self.imp.used_names

    def fail(self, msg: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"node '{self.name}' ({self.op_type}): {msg}")

    # --- building -----------------------------------------------------------------------------
    def new_const(self, array: Any, hint: str = "const", dtype: object | None = None) -> Value:
        arr = np.asarray(array, dtype=dtype)
        return self.graph.const(arr, name=self.imp.fresh(f"{self.name}_{hint}"), dtype=arr.dtype)

    def emit(
        self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None
    ) -> Value:
        """Add a single-output mcopt node; returns its output."""
        return self.emit_multi(op, inputs, attrs, n_out=1)[0]

    def emit_multi(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        n_out: int = 1,
    ) -> list[Value]:
        """Add an mcopt node named ``name/op`` with provisionally named outputs; :meth:`finalize`
        names the values set as ONNX outputs after them and gives the ONNX node's name to the node
        producing output 0."""
        inputs = [self._match_dtype(v, inputs) for v in inputs]
        node_name = f"{self.name}/{op}"  # the node producing output 0 is renamed in finalize
        out_names = [self.imp.fresh(f"{self.name}_{op}") for _ in range(n_out)]
        try:
            node = self.graph.add_node(op, inputs, attrs or {}, name=node_name, out_names=out_names)
        except ShapeError as e:
            m = re.match(r"node '\?' \((\w+)\): (.*)", str(e))
            msg = f"as mcopt {m.group(1)}: {m.group(2)}" if m else str(e)
            raise ShapeError(f"node '{self.name}' ({self.op_type}): {msg}") from None
        self._emitted.update(id(v) for v in node.outputs)
        return list(node.outputs)

    def finalize(self) -> None:
        """Give the values this node produced the names of the ONNX outputs they stand for."""
        for i, o in enumerate(self.node.output):
            v = self.imp.env.get(o) if o else None
            if v is None or id(v) not in self._emitted:
                continue
            if i == 0 and v.producer is not None:
                v.producer.name = self.graph.unique_node_name(self.name)
            if v.name != o:
                v.name = self.graph.unique_name(o)
            self._emitted.discard(id(v))

    def set_out(self, i: int, value: Value) -> None:
        if i < len(self.node.output) and self.node.output[i]:
            self.imp.env[self.node.output[i]] = value

    def _match_dtype(self, v: Value | None, inputs: Sequence[Value | None]) -> Value | None:
        """A float constant next to float activations of another dtype is cast to theirs."""
        if v is None or v.const is None or np.dtype(v.dtype).kind != "f":
            return v
        ref = next(
            (
                u
                for u in inputs
                if u is not None and u.const is None and np.dtype(u.dtype).kind == "f"
            ),
            None,
        )
        if ref is None or ref.dtype == v.dtype:
            return v
        return self.graph.const(
            v.const.astype(ref.dtype), name=self.imp.fresh(v.name), dtype=ref.dtype
        )


class _Importer:
    def __init__(
        self,
        model: onnx.ModelProto,
        source: str,
        input_shapes: Mapping[str, Sequence[int]] | None,
        default_batch: int,
        source_opset: int | None = None,
    ) -> None:
        self.model = model
        self.source = source
        self.opsets = {
            ("" if o.domain in DEFAULT_DOMAINS else o.domain): int(o.version)
            for o in model.opset_import
        }
        self.opset = self.opsets.get("", 0)
        # the opset of the file before any conversion (legacy semantics; see the module docstring)
        self.source_opset = self.opset if source_opset is None else int(source_opset)
        if self.opset == 0:
            raise UnsupportedOpError(
                f"{source} imports no default-domain ONNX opset (opset_import has only "
                f"{sorted(self.opsets) or 'nothing'}); mcopt imports ONNX opsets {MIN_OPSET} to "
                f"{MAX_OPSET}"
            )
        if not MIN_OPSET <= self.opset <= MAX_OPSET:  # import_model converts such models first
            raise UnsupportedOpError(
                f"{source} uses ONNX opset {self.opset}; mcopt imports opsets {MIN_OPSET} to "
                f"{MAX_OPSET}: convert it with onnx.version_converter.convert_version(model, "
                f"{MAX_OPSET})"
            )
        self.input_shapes = dict(input_shapes or {})
        self.default_batch = int(default_batch)
        self._symbols: dict[str, int] = {}  # named dims fixed by another input (add_inputs)
        g = model.graph
        self.graph = Graph(g.name or "graph")
        self.initializers = {t.name: t for t in g.initializer}
        self.env: dict[str, Value] = {}
        self.all_names: set[str] = {v.name for v in g.input} | set(self.initializers)
        for n in g.node:
            self.all_names.update(o for o in n.output if o)
        self.output_names: set[str] = {o.name for o in g.output}
        self.used_names: set[str] = set(self.output_names)
        for n in g.node:
            self.used_names.update(validate.node_reads(n))

    def fresh(self, hint: str) -> str:
        """A name hint for an intermediate that does not collide with any ONNX tensor name."""
        cand, k = hint, 0
        while cand in self.all_names:
            k += 1
            cand = f"{hint}_{k}"
        return cand

    def lookup(self, name: str, ctx: NodeCtx | None = None) -> Value:
        v = self.env.get(name)
        if v is not None:
            return v
        init = self.initializers.get(name)
        if init is not None:
            arr = numpy_helper.to_array(init)
            onnx_dtype_name(init.data_type, f"initializer '{name}'")
            cname = self.fresh(f"{name}_const") if name in self.output_names else name
            v = self.graph.const(arr, name=cname, dtype=arr.dtype)
            self.env[name] = v
            return v
        who = f"node '{ctx.name}' ({ctx.op_type})" if ctx else "a graph output"
        raise UnsupportedOpError(
            f"{self.source}: {who} uses tensor '{name}', which no node, input or initializer defines"
        )

    # --- inputs -------------------------------------------------------------------------------
    def add_inputs(self) -> None:
        g = self.model.graph
        real = [v for v in g.input if v.name not in self.initializers]
        unknown = sorted(set(self.input_shapes) - {v.name for v in real})
        if unknown:
            raise ShapeError(
                f"input_shapes names unknown input(s) {unknown}; the model's inputs are "
                f"{[v.name for v in real]}"
            )
        dynamic: dict[str, dict[int, str]] = {}
        self._symbols = self._symbol_sizes(real)
        for vi in real:
            where = f"input '{vi.name}'"
            if not vi.type.HasField("tensor_type"):
                raise UnsupportedOpError(
                    f"{self.source}: {where} is not a tensor; mcopt takes tensors"
                )
            tt = vi.type.tensor_type
            dtype = onnx_dtype_name(tt.elem_type, where)
            declared: list[int | str] | None = None
            if tt.HasField("shape"):
                declared = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in tt.shape.dim
                ]
                dyn = {i: d for i, d in enumerate(declared) if isinstance(d, str)}
                if dyn:
                    dynamic[vi.name] = dyn
            shape = self._input_shape(vi.name, declared)
            self.env[vi.name] = self.graph.add_input(vi.name, TensorType(tuple(shape), dtype))
        self.graph.metadata["dynamic_dims"] = dynamic

    def _symbol_sizes(self, inputs: Sequence[onnx.ValueInfoProto]) -> dict[str, int]:
        """Sizes of named dims fixed elsewhere: by ``input_shapes``, or as the batch (dim 0, the
        default batch). A named dim shares its size across inputs (Silero's ``state`` is
        ``[2, batch, 128]`` beside an ``input`` of ``[batch, 576]``)."""
        sizes: dict[str, int] = {}
        for vi in inputs:
            tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if tt is None or not tt.HasField("shape"):
                continue
            user = self.input_shapes.get(vi.name)
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") or not d.dim_param:
                    continue
                if user is not None and i < len(user):
                    sizes.setdefault(d.dim_param, int(user[i]))
                elif user is None and i == 0:
                    sizes.setdefault(d.dim_param, self.default_batch)
        return sizes

    def _input_shape(self, name: str, declared: list[int | str] | None) -> list[int]:
        user = self.input_shapes.get(name)
        if user is not None:
            user = [int(d) for d in user]
            if declared is not None and len(user) != len(declared):
                raise ShapeError(
                    f"input_shapes['{name}'] = {user} has rank {len(user)}, but input '{name}' has "
                    f"rank {len(declared)} ({_fmt_dims(declared)})"
                )
            if any(d < 0 for d in user):
                raise ShapeError(f"input_shapes['{name}'] = {user} has a negative dim")
            return user
        if declared is None:
            raise ShapeError(
                f"input '{name}' has no shape in the model; pass input_shapes={{'{name}': [...]}} "
                f"(CLI: --input-shape {name}=1,3,224,224)"
            )
        shape: list[int] = []
        for i, d in enumerate(declared):
            if isinstance(d, int):
                shape.append(d)
            elif i == 0:
                shape.append(self.default_batch)
            elif d in self._symbols:  # the size another input fixes for the same name
                shape.append(self._symbols[d])
            else:
                example = [
                    1 if j == 0 and not isinstance(e, int) else e for j, e in enumerate(declared)
                ]
                raise ShapeError(
                    f"input '{name}' dim {i} is dynamic ('{d}') in {_fmt_dims(declared)}; pass "
                    f"input_shapes={{'{name}': {_fmt_dims(example)}}} with concrete sizes "
                    f"(CLI: --input-shape {name}={','.join(map(str, example))})"
                )
        return shape

    # --- nodes --------------------------------------------------------------------------------
    def live_nodes(self) -> list[onnx.NodeProto]:
        """Nodes some graph output depends on, in a topological order (stable)."""
        nodes = list(self.model.graph.node)
        try:
            order = validate.import_order(self.model.graph)
        except ModelLoadError as e:
            raise ModelLoadError(f"{self.source}: {e}") from None
        return [nodes[i] for i in order]

    def convert_node(self, node: onnx.NodeProto, name: str) -> None:
        from mcopt.onnx_io.import_ops import HANDLERS, supported_ops

        op = node.op_type
        if node.domain not in DEFAULT_DOMAINS:
            raise UnsupportedOpError(
                f"node '{name}' ({node.domain}::{op}): operator domain '{node.domain}' is not "
                f"supported by mcopt (only the default ONNX domain); supported ops: {supported_ops()}"
            )
        ctx = NodeCtx(self, node, name)
        if op == "If":
            self._inline_if(ctx)
            return
        if op == "Constant":
            arr = folding.constant_node_value(node)
            if arr is not None:
                self._set_const(ctx, [arr])
                return
        if op in ("Shape", "Size") and ctx.inputs and ctx.inputs[0] is not None:
            shape = ctx.inputs[0].shape
            arr = (
                folding.shape_of(shape, node)
                if op == "Shape"
                else np.array(int(np.prod(shape)), np.int64)
            )
            self._set_const(ctx, [arr])
            return
        if op == "Identity" and ctx.inputs[0] is not None and ctx.inputs[0].is_const:
            ctx.set_out(0, ctx.inputs[0])
            return
        handler = HANDLERS.get(op)
        fold_error = None
        if op not in folding.UNFOLDABLE and all(v is None or v.is_const for v in ctx.inputs):
            try:
                arrays = folding.evaluate(
                    node, [None if v is None else v.const for v in ctx.inputs], self.opsets
                )
            except folding.FoldError as e:
                fold_error = str(e)
            else:
                self._set_const(ctx, arrays)
                return
        if handler is None:
            extra = f" (constant folding failed too: {fold_error})" if fold_error else ""
            raise UnsupportedOpError(
                f"node '{name}' ({op}): operator {op} is not supported by mcopt{extra}; "
                f"supported: {supported_ops()}"
            )
        try:
            handler(ctx)
            ctx.finalize()
        except MCoptError as e:
            msg = str(e)
            if not msg.startswith(f"node '{name}'"):
                msg = f"node '{name}' ({op}): {msg}"
            raise type(e)(msg) from None
        except Exception as e:  # a malformed node must still be a one-line error
            raise UnsupportedOpError(
                f"node '{name}' ({op}): cannot import: {type(e).__name__}: {e}"
            ) from e
        for i, o in enumerate(node.output):
            if o and o in self.used_names and o not in self.env:
                raise ctx.fail(f"output {i} ('{o}') is used but mcopt does not produce it")

    def _inline_if(self, ctx: NodeCtx) -> None:
        """An ``If`` whose condition static shapes or constants fix (an exporter's check of a
        tensor's rank or batch: Silero VAD's) is the branch it takes, imported in its place.

        One whose condition is computed at run time (openWakeWord's verifier, run when the first
        score passes 0.5) is if-converted: both branches are imported (ONNX ops have no side
        effects) and each output is ``where(cond, then, else)``; the branches' outputs must have
        one static shape and type. Both branches run on every call."""
        cond = ctx.inp(0)
        if cond is None:
            raise ctx.fail("it has no condition input")
        size = cond.const.size if cond.const is not None else cond.type.size
        if size != 1:
            raise ctx.fail(f"its condition '{ctx.node.input[0]}' has {size} elements")
        if cond.const is not None:
            take = "then_branch" if bool(np.asarray(cond.const).reshape(-1)[0]) else "else_branch"
            for i, v in enumerate(self._import_branch(ctx, take)):
                ctx.set_out(i, v)
            return
        if cond.dtype != "bool":
            raise ctx.fail(f"its condition '{ctx.node.input[0]}' is {cond.type}; ONNX needs bool")
        then = self._import_branch(ctx, "then_branch")
        other = self._import_branch(ctx, "else_branch")
        c = cond if cond.type.rank == 0 else ctx.emit("reshape", [cond], {"shape": ()})
        for i, (t, e) in enumerate(zip(then, other)):
            if (t.shape, t.dtype) != (e.shape, e.dtype):
                raise ctx.fail(
                    f"its condition '{ctx.node.input[0]}' is computed at run time and output {i} "
                    f"is {t.type} in then_branch but {e.type} in else_branch; mcopt imports such "
                    "an If as both branches and a select, which needs one shape (export the model "
                    "for one branch)"
                )
            ctx.set_out(i, ctx.emit("where", [c, t, e]))
        ctx.finalize()

    def _import_branch(self, ctx: NodeCtx, take: str) -> list[Value]:
        """Import the nodes of the If's subgraph ``take`` inline; returns its outputs."""
        branch = ctx.attrs[take]
        for t in branch.initializer:
            self.initializers[t.name] = t
            self.all_names.add(t.name)
        for n in branch.node:
            self.all_names.update(o for o in n.output if o)
            self.used_names.update(validate.node_reads(n))
        self.used_names.update(o.name for o in branch.output)
        for k, n in enumerate(branch.node):
            self.convert_node(n, n.name or f"{ctx.name}/{take}/{n.op_type}_{k}")
        if len(branch.output) != len(ctx.node.output):
            raise ctx.fail(
                f"its {take} has {len(branch.output)} outputs, the If {len(ctx.node.output)}"
            )
        return [self.lookup(o.name, ctx) for o in branch.output]

    def _set_const(self, ctx: NodeCtx, arrays: Sequence[np.ndarray]) -> None:
        for i, (o, arr) in enumerate(zip(ctx.node.output, arrays)):
            if o:
                arr = np.asarray(arr)
                if arr.dtype.name not in DTYPES:
                    raise ctx.fail(f"constant '{o}' has dtype {arr.dtype}, which mcopt cannot hold")
                # a folded graph output gets an identity node named after it (see run)
                name = self.fresh(f"{o}_const") if o in self.output_names else o
                ctx.set_out(i, self.graph.const(arr, name=name, dtype=arr.dtype))

    def run(self) -> Graph:
        g = self.model.graph
        meta = self.graph.metadata
        meta["source"] = self.source
        meta["opset"] = self.opset
        meta["producer"] = f"{self.model.producer_name} {self.model.producer_version}".strip()
        meta["ir_version"] = int(self.model.ir_version)
        self.add_inputs()
        meta["input_shapes_fixed"] = {v.name: list(v.shape) for v in self.graph.inputs}
        for idx, node in enumerate(self.live_nodes()):
            name = node.name or f"{node.op_type}_{idx}"
            self.convert_node(node, name)
        for o in g.output:
            v = self.lookup(o.name)
            if v.is_const or v.name != o.name or any(v is u for u in self.graph.outputs):
                # a folded or aliased output keeps its ONNX name through an identity node
                v = self.graph.add_node(
                    "identity", [v], name=f"{o.name}_identity", out_names=[o.name]
                ).output
            self._check_output_type(o, v)
            self.graph.outputs.append(v)
        return self.graph

    def _check_output_type(self, o: onnx.ValueInfoProto, v: Value) -> None:
        """A graph output declared with an element type other than what mcopt computes is an error
        (onnxruntime refuses such a model)."""
        if not o.type.HasField("tensor_type") or not o.type.tensor_type.elem_type:
            return
        declared = o.type.tensor_type.elem_type
        try:
            name = np.dtype(helper.tensor_dtype_to_np_dtype(declared)).name
        except (KeyError, TypeError, ValueError):
            name = None
        if name != v.dtype:
            by = f"node '{v.producer.name}'" if v.producer is not None else "its definition"
            raise ModelLoadError(
                f"{self.source}: graph output '{o.name}' is declared "
                f"{validate.dtype_label(declared)}, but {by} produces {v.dtype}; fix the "
                "output's type in the model (onnxruntime refuses it too)"
            )


def _fmt_dims(dims: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain ("" / "ai.onnx") opset version, 0 when it imports none."""
    return max(
        (int(o.version) for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default=0
    )


def convert_opset(model: onnx.ModelProto, source: str, target: int) -> onnx.ModelProto:
    """A copy of `model` converted to default-domain opset `target` with onnx's version converter.

    `model` itself is not modified. Raises a one-line ModelLoadError naming `source`, both opsets
    and the converter's reason when the conversion fails (an op without an adapter, an op the
    opset does not define, an invalid model, ...).
    """
    from onnx import version_converter

    old = default_opset(model)
    way = "upgrading" if target > old else "downgrading"
    for i, n in enumerate(model.graph.node):  # the converter's own message for this is garbled
        if n.domain in DEFAULT_DOMAINS and not onnx.defs.has(n.op_type):
            raise ModelLoadError(
                f"cannot load {source}: it uses ONNX opset {old}, and node "
                f"'{n.name or f'{n.op_type}_{i}'}' has op type '{n.op_type}', which is not an ONNX "
                f"operator, so onnx.version_converter cannot convert it to opset {target}; export "
                f"the model again with an opset from {MIN_OPSET} to {MAX_OPSET}"
            )
    if target < old:
        model = _expand_newer_ops(model)
    model = _initializers_as_inputs(model)
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as e:  # the converter raises RuntimeError / ValidationError / IndexError / ...
        raise ModelLoadError(
            f"cannot load {source}: it uses ONNX opset {old}, and {way} it to opset {target} with "
            f"onnx.version_converter failed ({_converter_reason(e)}); export the model again with "
            f"an opset from {MIN_OPSET} to {MAX_OPSET}"
        ) from None
    return converted


def _initializers_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a copy where needed) with every initializer also a graph input when its IR
    version is below 4, where ONNX required that and the version converter relies on it
    (onnxruntime's own ``datasets/mul_1.onnx``, IR 3 / opset 7, lists its weight only as an
    initializer: "Input W is undefined!"). The importer reads such inputs as constants."""
    listed = {i.name for i in model.graph.input}
    missing = [t for t in model.graph.initializer if t.name not in listed]
    if model.ir_version >= 4 or not missing:
        return model
    model = copy.deepcopy(model)
    for t in missing:
        model.graph.input.append(
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        )
    return model


def _expand_newer_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the ops newer than MAX_OPSET that have no older version spelled out of
    older ops (a copy where any is found), so the version converter can downgrade it:
    ``Swish(x, alpha)`` (opset 24) -> ``x * Sigmoid(alpha * x)`` (``canonical-activations`` makes
    it ``silu`` again)."""
    if not any(n.op_type == "Swish" and n.domain in DEFAULT_DOMAINS for n in model.graph.node):
        return model
    model = copy.deepcopy(model)
    nodes: list[onnx.NodeProto] = []
    for i, n in enumerate(model.graph.node):
        if n.op_type != "Swish" or n.domain not in DEFAULT_DOMAINS:
            nodes.append(n)
            continue
        name = n.name or f"Swish_{i}"
        alpha = next((a.f for a in n.attribute if a.name == "alpha"), 1.0)
        x, arg = n.input[0], n.input[0]
        if alpha != 1.0:
            k, arg = f"{name}__alpha", f"{name}__scaled"
            nodes.append(onnx.helper.make_node("Constant", [], [k], value_float=alpha))
            nodes.append(onnx.helper.make_node("Mul", [x, k], [arg], name=f"{name}_scale"))
        nodes.append(onnx.helper.make_node("Sigmoid", [arg], [f"{name}__sig"], name=f"{name}_sig"))
        nodes.append(onnx.helper.make_node("Mul", [x, f"{name}__sig"], list(n.output), name=name))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _converter_reason(e: BaseException) -> str:
    """The converter's message on one line, without its C++ file/assertion prefix."""
    msg = " ".join(str(e).split())
    msg = re.sub(r"^.*?Assertion `.*?` failed:\s*", "", msg)
    msg = re.sub(r"^/\S+:\d+: \w+: ", "", msg)
    if len(msg) > 240:
        msg = msg[:237] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def freeze_inputs(
    proto: onnx.ModelProto, values: Mapping[str, Any], source: str
) -> onnx.ModelProto:
    """A copy of ``proto`` whose inputs named in ``values`` are initializers holding those values
    (cast to the input's element type, checked against its static dims): what a model computes
    from a setting a deployment fixes (Silero VAD's sample rate ``sr``, which an ``If`` tests)
    becomes constant, so shapes, branches and arithmetic on it fold at import."""
    real = [v for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}]
    by_name = {v.name: v for v in real}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ShapeError(
            f"{source}: input_values names unknown input(s) {unknown}; the model's inputs are "
            f"{sorted(by_name)}"
        )
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for name, val in values.items():
        vi = by_name[name]
        tt = vi.type.tensor_type
        dtype = onnx_dtype_name(tt.elem_type, f"input '{name}'")
        try:
            arr = np.asarray(val).astype(dtype)
        except (TypeError, ValueError) as e:
            raise ShapeError(f"{source}: input_values['{name}'] is not {dtype}: {e}") from None
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if tt.HasField("shape") and (
            len(dims) != arr.ndim or any(d is not None and d != s for d, s in zip(dims, arr.shape))
        ):
            raise ShapeError(
                f"{source}: input_values['{name}'] has shape {list(arr.shape)}, but input "
                f"'{name}' is {_fmt_dims([d if d is not None else '?' for d in dims])}"
            )
        for k, v in enumerate(out.graph.input):
            if v.name == name:
                del out.graph.input[k]
                break
        out.graph.initializer.append(numpy_helper.from_array(arr, name))
    return out


def import_model(
    model: ModelSource,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    default_batch: int = 1,
    *,
    allow_nonfinite: bool = False,
    input_values: Mapping[str, Any] | None = None,
) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) into an mcopt Graph with static shapes.

    - `input_shapes`: {input name: shape} for inputs whose dims are dynamic (or to override them).
    - `default_batch`: the size given to a dynamic first dim when `input_shapes` does not name it.
    - `input_values`: {input name: value} for inputs a deployment fixes (a sample rate, a mode
      flag): they become constants (:func:`freeze_inputs`) and are no longer inputs.
    - `allow_nonfinite`: import a model whose weights hold NaN / Inf, a negative BatchNormalization
      variance or a constant zero divisor, with a :class:`~mcopt.errors.NonFiniteWarning` naming
      each tensor, instead of raising :class:`~mcopt.errors.NonFiniteError`.

    The model is validated first (:mod:`mcopt.onnx_io.validate`: tensor bytes vs dims x dtype,
    names, cycles, attribute types and ranges, output types, finite weights; then
    ``onnx.checker.check_model(full_check=True)``). A model in an opset below MIN_OPSET is upgraded
    to UPGRADE_OPSET first, one above MAX_OPSET downgraded to MAX_OPSET (see
    :func:`convert_opset`); the input is never modified.

    Raises ModelLoadError (unreadable file, invalid model, failed opset conversion; NonFiniteError
    for non-finite weights), UnsupportedOpError (op/domain mcopt does not import), ShapeError (an
    unknown dim without `input_shapes`, bad `input_shapes`, a negative or zero input dim); every
    message is one line naming the tensor / node / attribute.
    """
    if isinstance(model, str | os.PathLike):
        source = f"model file '{os.fspath(model)}'"
    elif isinstance(model, onnx.ModelProto):
        source = "the model"
    else:
        source = "the model bytes"
    proto = load_onnx(model)
    if input_values:
        proto = freeze_inputs(proto, input_values, source)
    if len(proto.functions):
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as e:
            raise UnsupportedOpError(f"{source}: cannot inline its local functions: {e}") from None
    proto, dynamic = dequantize_dynamic(proto, source)
    if dynamic:
        warnings.warn(
            f"{source}: onnxruntime's dynamic quantization ({dynamic} nodes) imported as the float "
            "model it approximates: the 8-bit weights dequantized, activations no longer rounded "
            "(quantize-int8 quantizes it statically)",
            stacklevel=3,
        )
    validate.check_model(proto, source, allow_nonfinite=allow_nonfinite, input_shapes=input_shapes)
    file_opset = default_opset(proto)
    if 0 < file_opset < MIN_OPSET:
        proto = convert_opset(proto, source, UPGRADE_OPSET)
    elif file_opset > MAX_OPSET:
        proto = convert_opset(proto, source, MAX_OPSET)
    validate.run_checker(proto, source, input_shapes)
    graph = _Importer(proto, source, input_shapes, default_batch, file_opset).run()
    if dynamic:
        graph.metadata["dequantized_dynamic"] = dynamic
    if input_values:  # what the build was fixed to (report.json keeps it, so a replay can)
        graph.metadata["input_values"] = {
            k: np.asarray(v).tolist() for k, v in input_values.items()
        }
    if 0 < file_opset < MIN_OPSET:
        graph.metadata["upgraded_from_opset"] = file_opset
    elif file_opset > MAX_OPSET:
        graph.metadata["downgraded_from_opset"] = file_opset
    graph.metadata["source"] = (
        os.fspath(model)
        if isinstance(model, str | os.PathLike)
        else ("<ModelProto>" if isinstance(model, onnx.ModelProto) else "<bytes>")
    )
    return graph
