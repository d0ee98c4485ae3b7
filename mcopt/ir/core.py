"""The dataflow IR: Value / Node / Graph with use-def chains kept correct by every mutation.

Modelled on onnx-ir: a `Value` knows its `producer` node and its `uses` (node, input index);
a `Node` owns its output values; a `Graph` holds nodes in topological order. Every mutation goes
through the methods here (`Node.set_input`, `Graph.add_node`, `Graph.remove_node`,
`Graph.replace_all_uses_with`) so the chains never go stale. Constants (weights) are Values with
`const` set and no producer.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from mcopt.errors import VerifyError
from mcopt.ir.types import Encoding, TensorType, dtype_name


class Value:
    """An SSA value: a graph input, a node output, or a constant (`const` is a numpy array)."""

    __slots__ = ("name", "type", "producer", "uses", "const", "__weakref__")

    def __init__(self, name: str, type: TensorType, const: np.ndarray | None = None) -> None:
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.uses: list[tuple[Node, int]] = []
        self.const = const

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def users(self) -> list[Node]:
        """Distinct consumer nodes, in first-use order."""
        seen: dict[int, Node] = {}
        for node, _ in self.uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def __repr__(self) -> str:
        kind = "const " if self.is_const else ""
        return f"Value({kind}%{self.name}: {self.type})"


class Node:
    """One operation. `op` is a name from mcopt's op vocabulary (see `mcopt.ops`)."""

    __slots__ = ("op", "name", "attrs", "_inputs", "outputs", "graph", "__weakref__")

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None],
        outputs: Sequence[Value],
        attrs: dict[str, Any] | None = None,
        name: str = "",
    ) -> None:
        self.op = op
        self.name = name
        self.attrs: dict[str, Any] = dict(attrs or {})
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = list(outputs)
        self.graph: Graph | None = None
        for out in self.outputs:
            if out.producer is not None:
                raise ValueError(f"value %{out.name} already has a producer")
            out.producer = self
        for v in inputs:
            self._append_input(v)

    # --- inputs -------------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value | None, ...]:
        """Read-only view; mutate with `set_input` / `replace_inputs`."""
        return tuple(self._inputs)

    def _append_input(self, v: Value | None) -> None:
        idx = len(self._inputs)
        self._inputs.append(v)
        if v is not None:
            v.uses.append((self, idx))

    def set_input(self, index: int, value: Value | None) -> None:
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            old.uses.remove((self, index))
        self._inputs[index] = value
        if value is not None:
            value.uses.append((self, index))

    def replace_inputs(self, values: Sequence[Value | None]) -> None:
        self.clear_inputs()
        for v in values:
            self._append_input(v)

    def clear_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v.uses.remove((self, i))
        self._inputs = []

    # --- convenience -------------------------------------------------------------------------
    @property
    def output(self) -> Value:
        """The single output (most ops have one)."""
        if len(self.outputs) != 1:
            raise ValueError(f"node {self.name!r} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    def input_type(self, i: int) -> TensorType | None:
        v = self._inputs[i] if i < len(self._inputs) else None
        return None if v is None else v.type

    def __repr__(self) -> str:
        ins = ", ".join("None" if v is None else f"%{v.name}" for v in self._inputs)
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"Node({outs} = {self.op}({ins}) name={self.name!r})"


class Graph:
    """Nodes in topological order, graph inputs and outputs, and a name table for unique names."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        #: free-form metadata carried through passes and export (e.g. producer, opset, doc)
        self.metadata: dict[str, Any] = {}
        self._names: set[str] = set()  # value names
        self._node_names: set[str] = set()
        self._counter = itertools.count()

    # --- naming --------------------------------------------------------------------------------
    def unique_name(self, hint: str) -> str:
        """A value name not yet used in this graph, based on `hint` (and reserve it)."""
        return self._unique(hint or "v", self._names)

    def unique_node_name(self, hint: str) -> str:
        """A node name not yet used in this graph (node and value names are separate namespaces)."""
        return self._unique(hint or "node", self._node_names)

    def _unique(self, hint: str, table: set[str]) -> str:
        if hint not in table:
            table.add(hint)
            return hint
        while True:
            cand = f"{hint}_{next(self._counter)}"
            if cand not in table:
                table.add(cand)
                return cand

    def reserve_name(self, name: str) -> None:
        self._names.add(name)

    def rename(self, value: Value, name: str) -> None:
        """Give `value` the name `name`; a different value of this graph holding it now is renamed
        to a fresh name first (graph inputs / outputs keep the names users call them by)."""
        if value.name == name:
            return
        for other in self.values():
            if other is not value and other.name == name:
                other.name = self._unique(f"{name}_inner", self._names)
                break
        value.name = name
        self._names.add(name)

    def restore_io_names(self, inputs: list[str], outputs: list[str]) -> None:
        """Rename graph inputs / outputs back to `inputs` / `outputs` (positional) where a pass
        changed them (e.g. quantization renaming the logits)."""
        for v, n in zip(self.inputs, inputs):
            self.rename(v, n)
        for v, n in zip(self.outputs, outputs):
            if v.producer is not None or v.is_const:
                self.rename(v, n)

    # --- construction ------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self.unique_name(name), type)
        self.inputs.append(v)
        return v

    def const(
        self,
        array: Any,
        name: str = "const",
        dtype: object | None = None,
        encoding: Encoding | None = None,
    ) -> Value:
        """A new constant value holding `array` (as a C-contiguous numpy array; a 0-d array stays
        0-d, which ``np.ascontiguousarray`` would turn into shape (1,)), stored with `encoding`
        (e.g. ``Sparse.of(array)``), which must describe the array."""
        arr = np.asarray(array, dtype=dtype, order="C")
        if arr.dtype == np.float64 and dtype is None:
            arr = arr.astype(np.float32)
        t = TensorType(arr.shape, dtype_name(arr.dtype), encoding)
        if encoding is not None and (why := encoding.problem(arr)) is not None:
            raise VerifyError(f"constant {name!r}: its {encoding.describe()} {why}")
        return Value(self.unique_name(name), t, const=arr)

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        out_names: Sequence[str] | None = None,
        out_types: Sequence[TensorType] | None = None,
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node, infer its output types from the op schema (unless `out_types` is given)
        and insert it (at the end, or before/after a given node). Attributes get their defaults."""
        from mcopt.ops import get_schema  # local: ops import the IR

        schema = get_schema(op)
        full_attrs = schema.normalize_attrs(attrs or {}, node_name=name or op)
        if out_types is None:
            out_types = schema.infer_types(
                [None if v is None else v.type for v in inputs], full_attrs, node_name=name or op
            )
        node_name = self.unique_node_name(name or op)
        if out_names is None:
            out_names = (
                [node_name]
                if len(out_types) == 1
                else [f"{node_name}_{i}" for i in range(len(out_types))]
            )
        outputs = [Value(self.unique_name(n), t) for n, t in zip(out_names, out_types)]
        node = Node(op, inputs, outputs, full_attrs, node_name)
        self.insert_node(node, before=before, after=after)
        return node

    def insert_node(
        self, node: Node, *, before: Node | None = None, after: Node | None = None
    ) -> Node:
        """Insert an already-built node (its names must be reserved/unique)."""
        if node.graph is not None:
            raise ValueError(f"node {node.name!r} already belongs to a graph")
        node.graph = self
        self._node_names.add(node.name)
        for out in node.outputs:
            self._names.add(out.name)
        if before is not None:
            self.nodes.insert(self._index(before), node)
        elif after is not None:
            self.nodes.insert(self._index(after) + 1, node)
        else:
            self.nodes.append(node)
        return node

    def _index(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise ValueError(f"node {node.name!r} is not in graph {self.name!r}")

    # --- mutation ------------------------------------------------------------------------------
    def remove_node(self, node: Node, *, force: bool = False) -> None:
        """Remove a node. Its outputs must be unused (and not graph outputs) unless `force`."""
        if not force:
            for out in node.outputs:
                if out.uses or any(out is o for o in self.outputs):
                    raise ValueError(
                        f"cannot remove node {node.name!r} ({node.op}): output %{out.name} is still used"
                    )
        node.clear_inputs()
        self.nodes.pop(self._index(node))
        node.graph = None

    def replace_nodes(self, old: Sequence[Node], new: Node) -> Node:
        """Put the detached node ``new`` in place of the chain ``old`` (at the position of its last
        node): ``new`` takes over the outputs of ``old[-1]`` -- the same values, so their consumers,
        names and graph-output slots stay -- and the ``old`` nodes are removed (their other outputs
        must be unused). ``new`` keeps its name when ``old`` held it (a fused node named after the
        conv it replaces)."""
        last = old[-1]
        outs, last.outputs = list(last.outputs), []
        for o in outs:
            o.producer = new
        new.outputs = outs
        idx = self._index(last)
        nxt = self.nodes[idx + 1] if idx + 1 < len(self.nodes) else None
        for n in old:
            self.remove_node(n, force=True)
            self._node_names.discard(n.name)
        new.name = self.unique_node_name(new.name)
        return self.insert_node(new, before=nxt)

    def replace_all_uses_with(
        self, old: Value, new: Value, *, except_in: Iterable[Node] = ()
    ) -> None:
        """Point every use of `old` (node inputs and graph outputs) at `new`, except uses by the
        nodes in `except_in` (e.g. the new node that itself consumes `old`)."""
        if old is new:
            return
        skip = {id(n) for n in except_in}
        for node, idx in list(old.uses):
            if id(node) not in skip:
                node.set_input(idx, new)
        for i, o in enumerate(self.outputs):
            if o is old:
                self.outputs[i] = new

    def iter_nodes(self) -> Iterator[Node]:
        """Mutation-safe iteration: a snapshot, skipping nodes removed meanwhile."""
        for node in list(self.nodes):
            if node.graph is self:
                yield node

    def toposort(self) -> None:
        """Re-establish topological order (stable: keeps the current order where it is valid)."""
        order: list[Node] = []
        placed: set[int] = set()
        pending = {id(n): n for n in self.nodes}
        deps = {
            id(n): {id(v.producer) for v in n.inputs if v is not None and v.producer is not None}
            for n in self.nodes
        }
        remaining = list(self.nodes)
        while remaining:
            progress = False
            rest: list[Node] = []
            for n in remaining:
                if all(d in placed or d not in pending for d in deps[id(n)]):
                    order.append(n)
                    placed.add(id(n))
                    progress = True
                else:
                    rest.append(n)
            if not progress:
                raise ValueError(f"graph {self.name!r} has a cycle through node {rest[0].name!r}")
            remaining = rest
        self.nodes = order

    # --- queries -------------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        """Every value: inputs, constants (once each), node outputs."""
        seen: set[int] = set()
        for v in self.inputs:
            seen.add(id(v))
            yield v
        for n in self.nodes:
            for v in n.inputs:
                if v is not None and v.is_const and id(v) not in seen:
                    seen.add(id(v))
                    yield v
            for v in n.outputs:
                if id(v) not in seen:
                    seen.add(id(v))
                    yield v

    def constants(self) -> list[Value]:
        return [v for v in self.values() if v.is_const]

    def find_node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def nodes_of(self, *ops: str) -> list[Node]:
        return [n for n in self.nodes if n.op in ops]

    def __len__(self) -> int:
        return len(self.nodes)

    def __str__(self) -> str:
        from mcopt.ir.printer import print_graph

        return print_graph(self)

    def replace_contents(self, other: Graph) -> None:
        """Make this graph hold `other`'s nodes, inputs, outputs and names (in place: the object
        callers hold stays valid). `other` must not be used afterwards."""
        self.nodes = other.nodes
        for n in self.nodes:
            n.graph = self
        self.inputs, self.outputs = other.inputs, other.outputs
        self._names, self._node_names = set(other._names), set(other._node_names)
        self.metadata = dict(other.metadata)

    def copy(self) -> Graph:
        """A deep copy of the structure; constant arrays are shared (treat them as immutable)."""
        g = Graph(self.name)
        g.metadata = dict(self.metadata)
        g._names = set(self._names)
        g._node_names = set(self._node_names)
        vmap: dict[int, Value] = {}

        def mapv(v: Value | None) -> Value | None:
            if v is None:
                return None
            nv = vmap.get(id(v))
            if nv is None:
                nv = Value(v.name, v.type, v.const)
                vmap[id(v)] = nv
            return nv

        g.inputs = [mapv(v) for v in self.inputs]  # type: ignore[misc]
        for n in self.nodes:
            outs = [mapv(v) for v in n.outputs]
            nn = Node(n.op, [mapv(v) for v in n.inputs], outs, dict(n.attrs), n.name)  # type: ignore[arg-type]
            nn.graph = g
            g.nodes.append(nn)
        g.outputs = [mapv(v) for v in self.outputs]  # type: ignore[misc]
        return g

    def to_networkx(self) -> Any:
        """A networkx.MultiDiGraph: one vertex per node (key: node name, attrs op/node) and per graph
        input/output ("input:NAME"/"output:NAME"); edges carry the value and input index."""
        import networkx as nx

        G = nx.MultiDiGraph(name=self.name)
        for v in self.inputs:
            G.add_node(f"input:{v.name}", kind="input", value=v)
        for n in self.nodes:
            G.add_node(n.name, kind="node", op=n.op, node=n)
        for n in self.nodes:
            for idx, v in enumerate(n.inputs):
                if v is None or v.is_const:
                    continue
                src = v.producer.name if v.producer else f"input:{v.name}"
                G.add_edge(src, n.name, value=v, index=idx)
        for v in self.outputs:
            G.add_node(f"output:{v.name}", kind="output", value=v)
            src = v.producer.name if v.producer else f"input:{v.name}"
            G.add_edge(src, f"output:{v.name}", value=v, index=0)
        return G


def consumers(values: Iterable[Value]) -> list[Node]:
    """Distinct nodes that consume any of `values`."""
    seen: dict[int, Node] = {}
    for v in values:
        for n, _ in v.uses:
            seen.setdefault(id(n), n)
    return list(seen.values())
