"""Analyses over the IR: cost (params, bytes, MACs, activation memory), energy per inference."""

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
from mcopt.analysis.energy import EnergyReport, EnergyTable, LayerEnergy, estimate_energy

__all__ = [
    "CostReport",
    "EnergyReport",
    "EnergyTable",
    "GraphStats",
    "LayerEnergy",
    "NodeCost",
    "analyze",
    "estimate_energy",
    "graph_stats",
    "human_bytes",
    "human_count",
    "peak_activation",
]
