"""Cost analysis: parameters, weight bytes (encoding-aware), MACs/FLOPs and activation memory.

`analyze(graph)` walks the graph once in topological order and returns a :class:`CostReport` with one
row per node and the totals. Conventions:

- *params* of a node = element count of its constant inputs (weights, biases, BN statistics, ...).
  In the totals a constant shared by several nodes is counted once.
- *weight bytes* = ``TensorType.nbytes`` of the constants, i.e. their real storage size given their
  encoding (an 8-bit quantized float32 weight counts 1 byte per element plus its scales).
- *MACs* come from each op schema's ``count_macs``; FLOPs = 2 x MACs.
- *activation bytes* of a node = bytes of its outputs.
- *peak activation memory*: liveness over the node order. A value is live from the step that produces it
  (graph inputs: from the start) to the step of its last use (graph outputs: to the end); the peak is the
  largest total size of the values live at one step. Constants are weights, not activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import TensorType


# --- human formatting ----------------------------------------------------------------------------
def human_count(n: float, unit: str = "") -> str:
    """61_100_000 -> '61.1 M', 15_470_000_000 with unit 'MACs' -> '15.5 GMACs'."""
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.1f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip() if unit else f"{n:g}"


def human_bytes(n: float) -> str:
    """Binary units: 1536 -> '1.5 KiB'."""
    for div, prefix in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.1f} {prefix}"
    return f"{int(n)} B"


def storage_key(t: TensorType) -> str:
    """How a constant is stored, for bytes-by-dtype tables: its dtype, or its encoding ('quant<s8,tensor>')."""
    return t.dtype if t.encoding is None else t.encoding.describe()


# --- quick totals (used by the pass manager after every pass) --------------------------------------
@dataclass
class GraphStats:
    """Graph-level totals: node count, params, weight bytes (total and by storage), MACs."""

    nodes: int
    params: int
    weight_bytes: int
    bytes_by_dtype: dict[str, int]
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def node_macs(node: Node) -> int:
    from mcopt.ops import get_schema

    schema = get_schema(node.op)
    in_types = [None if v is None else v.type for v in node.inputs]
    return schema.count_macs(in_types, [v.type for v in node.outputs], node.attrs)


def _unique_constants(graph: Graph) -> list[Value]:
    seen: set[int] = set()
    out: list[Value] = []
    for n in graph.nodes:
        for v in n.inputs:
            if v is not None and v.is_const and id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    for v in graph.outputs:  # a constant returned directly
        if v.is_const and id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def graph_stats(graph: Graph) -> GraphStats:
    """Totals only (cheap): shared constants counted once."""
    consts = _unique_constants(graph)
    by: dict[str, int] = {}
    for c in consts:
        key = storage_key(c.type)
        by[key] = by.get(key, 0) + c.type.nbytes
    return GraphStats(
        nodes=len(graph.nodes),
        params=sum(c.type.size for c in consts),
        weight_bytes=sum(by.values()),
        bytes_by_dtype=dict(sorted(by.items())),
        macs=sum(node_macs(n) for n in graph.nodes),
    )


# --- full report --------------------------------------------------------------------------------
@dataclass
class NodeCost:
    name: str
    op: str
    out_shapes: list[tuple[int, ...]]
    params: int
    weight_bytes: int
    macs: int
    activation_bytes: int


@dataclass
class CostReport:
    """Per-node rows and totals; render with :meth:`table`, :meth:`to_markdown` or :meth:`to_dict`."""

    graph_name: str
    rows: list[NodeCost]
    params: int
    weight_bytes: int
    bytes_by_dtype: dict[str, int]
    macs: int
    activation_bytes: int
    input_bytes: int
    peak_activation_bytes: int
    peak_at: str  # node executing when the peak is reached ('' for an empty graph)
    notes: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def summary(self) -> str:
        return (
            f"{human_count(self.params)} params, {human_bytes(self.weight_bytes)} weights, "
            f"{human_count(self.macs, 'MACs')}, peak activations {human_bytes(self.peak_activation_bytes)}"
        )

    def totals(self) -> dict[str, Any]:
        """The graph-level numbers only (no per-node rows)."""
        return {
            "params": self.params,
            "weight_bytes": self.weight_bytes,
            "bytes_by_dtype": dict(self.bytes_by_dtype),
            "macs": self.macs,
            "flops": self.flops,
            "activation_bytes": self.activation_bytes,
            "input_bytes": self.input_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "peak_at": self.peak_at,
            "nodes": len(self.rows),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flops"] = self.flops
        for r in d["rows"]:
            r["out_shapes"] = [list(s) for s in r["out_shapes"]]
        return d

    def _cells(self, r: NodeCost) -> list[str]:
        shapes = " ".join("x".join(map(str, s)) or "scalar" for s in r.out_shapes)
        return [
            r.name,
            r.op,
            shapes,
            human_count(r.params) if r.params else "",
            human_bytes(r.weight_bytes) if r.weight_bytes else "",
            human_count(r.macs) if r.macs else "",
            human_bytes(r.activation_bytes),
        ]

    _HEADERS = ("node", "op", "output", "params", "weights", "MACs", "activations")

    def _total_cells(self) -> list[str]:
        return [
            "total",
            "",
            f"peak {human_bytes(self.peak_activation_bytes)}",
            human_count(self.params),
            human_bytes(self.weight_bytes),
            human_count(self.macs),
            human_bytes(self.activation_bytes),
        ]

    def table(self, max_rows: int | None = None) -> Any:
        """A rich Table (rows truncated to `max_rows` if given)."""
        from rich.table import Table

        t = Table(title=f"cost of {self.graph_name}: {self.summary()}")
        for i, h in enumerate(self._HEADERS):
            t.add_column(h, justify="left" if i < 3 else "right")
        rows = self.rows if max_rows is None else self.rows[:max_rows]
        for r in rows:
            t.add_row(*self._cells(r))
        if max_rows is not None and len(self.rows) > max_rows:
            t.add_row(f"... {len(self.rows) - max_rows} more", *[""] * 6)
        t.add_row(*self._total_cells(), style="bold")
        return t

    def to_markdown(self) -> str:
        lines = [
            "| " + " | ".join(self._HEADERS) + " |",
            "|" + "|".join(["---"] * 3 + ["---:"] * 4) + "|",
        ]
        for r in [*self.rows]:
            lines.append("| " + " | ".join(self._cells(r)) + " |")
        lines.append("| " + " | ".join(f"**{c}**" if c else "" for c in self._total_cells()) + " |")
        by = ", ".join(f"{k}: {human_bytes(v)}" for k, v in self.bytes_by_dtype.items())
        lines.append("")
        lines.append(
            f"{human_count(self.params)} params, {human_count(self.macs, 'MACs')} "
            f"({human_count(self.flops, 'FLOPs')}), weights {by or 'none'}, "
            f"peak activations {human_bytes(self.peak_activation_bytes)} at {self.peak_at or '-'}"
        )
        return "\n".join(lines)

    def __rich__(self) -> Any:
        return self.table()


def peak_activation(graph: Graph) -> tuple[int, str]:
    """(peak bytes, node at which it is reached) by liveness over the current node order."""
    n = len(graph.nodes)
    start: dict[int, int] = {}
    end: dict[int, int] = {}
    size: dict[int, int] = {}
    for v in graph.inputs:
        start[id(v)] = 0
        end[id(v)] = 0
        size[id(v)] = v.type.nbytes
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and not v.is_const and id(v) in start:
                end[id(v)] = max(end[id(v)], i)
        for v in node.outputs:
            start[id(v)] = i
            end[id(v)] = i
            size[id(v)] = v.type.nbytes
    for v in graph.outputs:
        if id(v) in end:
            end[id(v)] = max(n - 1, 0)
    if n == 0:
        return sum(size.values()), ""
    delta = [0] * (n + 1)
    for k, s in size.items():
        delta[start[k]] += s
        delta[end[k] + 1] -= s
    peak, at, cur = 0, 0, 0
    for i in range(n):
        cur += delta[i]
        if cur > peak:
            peak, at = cur, i
    return peak, graph.nodes[at].name


def analyze(graph: Graph) -> CostReport:
    """Per-node and total cost of `graph` (see the module docstring for the conventions)."""
    rows: list[NodeCost] = []
    notes: list[str] = []
    for node in graph.nodes:
        consts = [v for v in node.inputs if v is not None and v.is_const]
        try:
            macs = node_macs(node)
        except Exception as e:  # an op without a schema: report, do not crash an analysis
            notes.append(f"node {node.name!r} ({node.op}): MACs unknown ({e})")
            macs = 0
        rows.append(
            NodeCost(
                name=node.name,
                op=node.op,
                out_shapes=[v.shape for v in node.outputs],
                params=sum(c.type.size for c in consts),
                weight_bytes=sum(c.type.nbytes for c in consts),
                macs=macs,
                activation_bytes=sum(v.type.nbytes for v in node.outputs),
            )
        )
    consts = _unique_constants(graph)
    by: dict[str, int] = {}
    for c in consts:
        key = storage_key(c.type)
        by[key] = by.get(key, 0) + c.type.nbytes
    peak, at = peak_activation(graph)
    return CostReport(
        graph_name=graph.name,
        rows=rows,
        params=sum(c.type.size for c in consts),
        weight_bytes=sum(by.values()),
        bytes_by_dtype=dict(sorted(by.items())),
        macs=sum(r.macs for r in rows),
        activation_bytes=sum(r.activation_bytes for r in rows),
        input_bytes=sum(v.type.nbytes for v in graph.inputs),
        peak_activation_bytes=peak,
        peak_at=at,
        notes=notes,
    )


def count_params(values: Sequence[Value]) -> int:
    """Element count of the distinct constants among `values`."""
    seen: dict[int, Value] = {id(v): v for v in values if v is not None and v.is_const}
    return sum(v.type.size for v in seen.values())
