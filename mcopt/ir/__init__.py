"""The mcopt IR: typed values, nodes, graphs, printer and verifier."""

from mcopt.ir.core import Graph, Node, Value, consumers
from mcopt.ir.printer import format_node, print_graph
from mcopt.ir.types import (
    Binary,
    BlockedLayout,
    Codebook,
    Encoding,
    FixedPoint,
    Sparse,
    TensorType,
    UniformQuant,
    dtype_name,
    ttype,
)
from mcopt.ir.verify import verify, verify_problems

__all__ = [
    "Binary",
    "BlockedLayout",
    "Codebook",
    "Encoding",
    "FixedPoint",
    "Graph",
    "Node",
    "Sparse",
    "TensorType",
    "UniformQuant",
    "Value",
    "consumers",
    "dtype_name",
    "format_node",
    "print_graph",
    "ttype",
    "verify",
    "verify_problems",
]
