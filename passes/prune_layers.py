"""Layer pruning: remove whole residual blocks (and optionally near-identity layers), ranked by their
measured effect on the output over calibration data.

A *residual block* is an ``add(x, f(x))`` whose branch ``f`` is a subgraph that reads only ``x`` (and
constants) and whose values are used nowhere else; removing it means ``add(x, f(x)) -> x`` (the branch
then dies). Ranking (Veit et al. 2016, "Residual Networks Behave Like Ensembles of Relatively Shallow
Networks": dropping single blocks of a ResNet hurts little): for each candidate the graph with only that
block removed is run on the calibration feeds and scored by the relative output error
``||y - y0||_F / ||y0||_F``; blocks are then removed greedily from the least harmful, re-measuring the
cumulative error, up to ``num_blocks`` blocks and while the error stays below ``max_error``.

``identity_tol > 0`` also replaces any single layer whose output equals its input up to
``||f(x) - x|| / ||x|| <= identity_tol`` on calibration data (same shape) by its input. Lossy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mcopt.analysis.sensitivity import (
    Feed,
    calib_or_random,
    capture_activations,
    relative_error,
    run_outputs,
)
from mcopt.ir.core import Graph, Node, Value
from mcopt.pass_manager import LayerPruningRecord, Pass, PassContext, register_pass


@dataclass
class ResidualBlock:
    add: Node  # the add joining skip and branch
    skip: Value  # x
    branch: Value  # f(x)
    nodes: list[Node]  # the branch's nodes

    @property
    def name(self) -> str:
        return self.add.name


def _branch_nodes(graph: Graph, skip: Value, branch: Value, add: Node) -> list[Node] | None:
    """Nodes computing `branch` from `skip` alone, with no use outside (None when not a block)."""
    if branch.producer is None or branch is skip:
        return None
    members: dict[int, Node] = {}
    stack = [branch.producer]
    while stack:
        n = stack.pop()
        if id(n) in members:
            continue
        members[id(n)] = n
        for v in n.inputs:
            if v is None or v.is_const or v is skip:
                continue
            if v.producer is None:
                return None  # reads a graph input other than the skip
            stack.append(v.producer)
    if len(members) > 200:
        return None
    outs = {id(o) for o in graph.outputs}
    for n in members.values():
        for o in n.outputs:
            if id(o) in outs:
                return None
            for user, _ in o.uses:
                if id(user) not in members and not (user is add and o is branch):
                    return None
    if not any(v is skip for n in members.values() for v in n.inputs):
        return None  # does not read x at all: not f(x)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(members.values(), key=lambda n: order[id(n)])


def find_residual_blocks(graph: Graph) -> list[ResidualBlock]:
    """Every add(x, f(x)) with a removable branch f (either operand order)."""
    out = []
    for node in graph.nodes:
        if node.op != "add" or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if a is None or b is None or a.is_const or b.is_const or a.shape != b.shape:
            continue
        if a.shape != node.output.shape:
            continue
        for skip, branch in ((a, b), (b, a)):
            nodes = _branch_nodes(graph, skip, branch, node)
            if nodes:
                out.append(ResidualBlock(node, skip, branch, nodes))
                break
    return out


def remove_block(graph: Graph, add_name: str) -> bool:
    """Bypass the residual block joined by node `add_name` (its branch becomes dead; run dce)."""
    for blk in find_residual_blocks(graph):
        if blk.add.name == add_name:
            return _bypass(graph, blk.add, blk.skip)
    return False


def _bypass(graph: Graph, node: Node, src: Value) -> bool:
    out = node.output
    if any(o is out for o in graph.outputs) and (
        src.producer is None or any(o is src for o in graph.outputs)
    ):
        return False
    graph.replace_all_uses_with(out, src)
    _dce(graph)
    return True


def _dce(graph: Graph) -> None:
    live: set[int] = set()
    stack = [v.producer for v in graph.outputs if v.producer is not None]
    while stack:
        n = stack.pop()
        if id(n) in live:
            continue
        live.add(id(n))
        stack.extend(v.producer for v in n.inputs if v is not None and v.producer is not None)
    for n in reversed([n for n in graph.nodes if id(n) not in live]):
        graph.remove_node(n)


def block_effects(graph: Graph, feeds: Sequence[Feed]) -> dict[str, float]:
    """Relative output error of removing each residual block alone (by add node name)."""
    y0 = run_outputs(graph, feeds)
    effects: dict[str, float] = {}
    for blk in find_residual_blocks(graph):
        g2 = graph.copy()
        if remove_block(g2, blk.name):
            effects[blk.name] = relative_error(run_outputs(g2, feeds), y0)
    return effects


@register_pass
class PruneLayers(Pass):
    """Remove whole residual blocks ranked by their measured output effect on calibration data.

    Method: candidates ``add(x, f(x))`` found from use-def chains; each scored by the relative output
    error of removing it alone; greedy removal from the least harmful while the cumulative error is
    ``<= max_error`` and at most ``num_blocks`` go (Veit et al. 2016; the lecture's layer pruning).
    ``identity_tol > 0`` also drops near-identity layers. Without calibration data, random normal
    inputs are used. Lossy.
    """

    name = "prune-layers"
    lossless = False
    num_blocks: int = 1
    max_error: float = float("inf")
    identity_tol: float = 0.0
    calib_batches: int = 8

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        feeds = calib_or_random(graph, ctx.feeds(self.calib_batches), ctx.rng(9), log=ctx.info)
        changed = False
        if self.identity_tol > 0:
            changed |= self._drop_identities(graph, feeds, ctx)
        if self.num_blocks <= 0:
            return changed
        y0 = run_outputs(graph, feeds)
        effects = block_effects(graph, feeds)
        removed: list[str] = []
        for name, _ in sorted(effects.items(), key=lambda kv: kv[1]):
            if len(removed) >= self.num_blocks:
                break
            g2 = graph.copy()
            if not remove_block(g2, name):
                continue
            err = relative_error(run_outputs(g2, feeds), y0)
            if err > self.max_error:
                continue
            remove_block(graph, name)
            removed.append(name)
            ctx.info(f"prune-layers: removed residual block {name!r} (output error {err:.4f})")
        ctx.analyses.put(LayerPruningRecord(effects=effects, removed=removed))
        return changed or bool(removed)

    def _drop_identities(self, graph: Graph, feeds: Sequence[Feed], ctx: PassContext) -> bool:
        cands = [
            n
            for n in graph.nodes
            if len(n.outputs) == 1
            and n.inputs
            and n.inputs[0] is not None
            and not n.inputs[0].is_const
            and n.inputs[0].shape == n.output.shape
            and n.inputs[0].dtype == n.output.dtype
        ]
        if not cands:
            return False
        vals = [n.inputs[0] for n in cands] + [n.output for n in cands]
        acts = capture_activations(graph, feeds, vals)  # type: ignore[arg-type]
        dropped = 0
        for n in cands:
            x, y = acts[n.inputs[0].name], acts[n.output.name]  # type: ignore[union-attr]
            if relative_error(y.astype(np.float64), x.astype(np.float64)) <= self.identity_tol:
                if n.graph is graph and _bypass(graph, n, n.inputs[0]):  # type: ignore[arg-type]
                    dropped += 1
        if dropped:
            ctx.info(f"prune-layers: replaced {dropped} near-identity layer(s) by their input")
        return dropped > 0
