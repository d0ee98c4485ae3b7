"""Deterministic text form of a graph (torch.fx-like), used in snapshot tests and error messages.

graph lenet(%x: f32[1,1,28,28]) {
  const %w1: f32[6,1,5,5]
  %conv1 = conv2d(%x, %w1, %b1) {groups=1, pads=(0,0,0,0), ...} : f32[1,6,24,24]
  return %out
}
"""

from __future__ import annotations

from typing import Any

from mcopt.ir.core import Graph, Node, Value


def _fmt_attr(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, tuple):
        return "(" + ",".join(_fmt_attr(x) for x in v) + ")"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def format_node(node: Node) -> str:
    outs = ", ".join(f"%{v.name}" for v in node.outputs)
    ins = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
    attrs = ""
    if node.attrs:
        attrs = (
            " {" + ", ".join(f"{k}={_fmt_attr(node.attrs[k])}" for k in sorted(node.attrs)) + "}"
        )
    types = ", ".join(str(v.type) for v in node.outputs)
    name = "" if node.name == node.outputs[0].name else f"  # {node.name}"
    return f"{outs} = {node.op}({ins}){attrs} : {types}{name}"


def format_value(v: Value) -> str:
    return f"%{v.name}: {v.type}"


def print_graph(graph: Graph, *, show_constants: bool = True) -> str:
    lines = [f"graph {graph.name}(" + ", ".join(format_value(v) for v in graph.inputs) + ") {"]
    if show_constants:
        for c in graph.constants():
            lines.append(f"  const {format_value(c)}")
    for n in graph.nodes:
        lines.append("  " + format_node(n))
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
