"""Analyses over the IR: cost (params, bytes, MACs, activation memory)."""

from mcopt.analysis.cost import (
    CostReport,
    GraphStats,
    NodeCost,
    analyze,
    graph_stats,
    human_bytes,
    human_count,
    peak_activation,
)

__all__ = [
    "CostReport",
    "GraphStats",
    "NodeCost",
    "analyze",
    "graph_stats",
    "human_bytes",
    "human_count",
    "peak_activation",
]
