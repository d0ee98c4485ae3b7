"""Winograd substitution: 3x3 stride-1 convolutions become ``winograd_conv2d`` F(2x2,3x3) / F(4x4,3x3).

Method (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016): every m x m
output tile is ``Y = A^T [U (.) (B^T d B)] A`` with the filter transform ``U = G g G^T`` done here, at
compile time, so the op's weight input is U (``(m+2, m+2, C_in, C_out)``, see :mod:`mcopt.ops.winograd`).
Multiplies per output pixel fall from 9 to ``(m+2)^2 / m^2`` per (input, output) channel pair: 2.25x
fewer for m=2, 4x fewer for m=4; the transformed weight is ``(m+2)^2 / 9`` times larger (1.78x, 4x).

Lossless: equal to the direct convolution up to float rounding (F(4x4,3x3) rounds ~10x more than
F(2x2,3x3) in float32). Whether it is *faster* depends on the target's kernels, so ``layers`` lets a
caller (the target's per-layer measurement) pick the convolutions to substitute.

ONNX export writes the node back as a standard ``Conv`` with the 3x3 weight recovered as
``G+ U G+^T`` (exact up to float rounding), so exported models stay standard and equivalent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.analysis.lowrank import (
    LayerRecord,
    format_record,
    node_params,
    nodes_macs,
    substitute,
    summarize,
)
from mcopt.ir.core import Graph, Node
from mcopt.ops.winograd import TRANSFORMS, winograd_weight
from mcopt.pass_manager import Pass, PassContext, register_pass


def winograd_reason(node: Node) -> str | None:
    """Why `node` cannot become a Winograd convolution (None when it can)."""
    if node.op != "conv2d":
        return f"op {node.op} is not conv2d"
    x, w = node.inputs[0], node.inputs[1]
    assert x is not None and w is not None
    if not w.is_const or w.type.encoding is not None:
        return "weight is not a plain constant"
    if w.shape[2:] != (3, 3):
        return f"kernel {w.shape[2]}x{w.shape[3]} is not 3x3"
    a = node.attrs
    if a["strides"] != (1, 1) or a["dilations"] != (1, 1) or a["groups"] != 1:
        return (
            f"needs stride 1, dilation 1, groups 1 (has strides={a['strides']}, "
            f"dilations={a['dilations']}, groups={a['groups']})"
        )
    if not np.issubdtype(np.dtype(x.dtype), np.floating):
        return f"input dtype {x.dtype} is not floating point"
    return None


@register_pass
class WinogradConv(Pass):
    """Winograd substitution F(m x m, 3 x 3) of 3x3 stride-1 convolutions (Lavin & Gray 2016).

    Replaces ``conv2d`` (3x3, stride 1, dilation 1, groups 1, constant weight) by ``winograd_conv2d``
    with the filter transform U = G g G^T precomputed. MACs (element-wise multiplies) fall 2.25x for
    ``tile=2`` and 4x for ``tile=4``; params grow 16/9 resp. 36/9 (U is larger than g). Lossless up
    to float rounding. Options: ``tile`` (m: 2 or 4), ``layers`` (conv node names; empty = all),
    ``min_channels`` (skip convs with fewer input channels, e.g. an RGB stem), ``only_if_faster``
    (substitute a layer only where the compiled Winograd kernel beat the direct conv template on this
    machine: measured once per layer shape with the blocked Winograd kernel and the direct template
    the CPU build runs, :func:`mcopt.targets.cpu.kernels.winograd_nchwc.cached_measurement`, cached in
    the JSON file ``table``, keyed by target + shape; needs TVM, imported only then), ``table``
    (default: the CPU build's own table, ``~/.cache/mcopt/winograd_nchwc.json`` or
    ``MCOPT_WINOGRAD_TABLE``: one measurement cache for the pass and the build)."""

    name = "winograd"
    lossless = True
    tile: int = 2
    layers: tuple[str, ...] = ()
    min_channels: int = 1
    only_if_faster: bool = False
    table: str = ""

    def _direct_faster(self, node: Node, ctx: Any) -> str | None:
        """Why the direct conv stays (measured on the target), or None when Winograd is faster.

        The measurement compiles kernels, which only targets/ may do: the caller that compiles
        (``mcopt.optimize(..., target=...)``) puts a measuring function into
        ``ctx.target.measure_winograd`` (signature of
        ``mcopt.targets.cpu.kernels.winograd_nchwc.cached_measurement``)."""
        target = ctx.target if ctx is not None else None
        measure = target.measure_winograd if target is not None else None
        if measure is None:
            return (
                "only_if_faster needs a target to measure on: use mcopt.optimize(..., target=...)"
            )
        path = self.table or None  # None: the build's table
        x, w = node.inputs[0], node.inputs[1]
        assert x is not None and w is not None
        row = measure(path, x.shape, w.shape[0], node.attrs["pads"], tiles=(self.tile,))
        wino, direct = row[f"f{self.tile}"], row["direct"]
        if wino < direct:
            return None
        return (
            f"direct conv faster on this target ({direct:.3f} ms vs F({self.tile}) {wino:.3f} ms)"
        )

    def __post_init__(self) -> None:
        if self.tile not in TRANSFORMS:
            raise ValueError(f"tile must be one of {sorted(TRANSFORMS)}, got {self.tile}")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        records: list[LayerRecord] = []
        skipped: dict[str, str] = {}
        for node in graph.iter_nodes():
            if node.op != "conv2d" or (self.layers and node.name not in self.layers):
                continue
            why = winograd_reason(node)
            x, w = node.inputs[0], node.inputs[1]
            assert x is not None and w is not None
            if why is None and x.shape[1] < self.min_channels:
                why = f"{x.shape[1]} input channels < min_channels={self.min_channels}"
            if why is None and self.only_if_faster:
                why = self._direct_faster(node, ctx)
            if why is not None:
                skipped[node.name] = why
                continue
            b = node.inputs[2] if len(node.inputs) > 2 else None
            u = graph.const(winograd_weight(w.const, self.tile), name=f"{w.name}_winograd")
            new = graph.add_node(
                "winograd_conv2d",
                [x, u, b],
                {"m": self.tile, "pads": node.attrs["pads"]},
                name=f"{node.name}_winograd",
                before=node,
            )
            rec = LayerRecord(
                layer=node.name,
                method=f"winograd F({self.tile}x{self.tile},3x3)",
                rank=None,
                params_before=node_params([node]),
                params_after=node_params([new]),
                macs_before=nodes_macs([node]),
                macs_after=nodes_macs([new]),
                rel_error=None,
                error_kind="exact",
            )
            substitute(graph, node, new.output)
            records.append(rec)
            ctx.info(f"winograd: {format_record(rec)}")
        ctx.summarize(summarize(records, lossless=True, skipped=skipped))
        if self.layers:
            missing = sorted(set(self.layers) - {r.layer for r in records} - set(skipped))
            for name in missing:
                ctx.info(f"winograd: layer {name!r} is not a conv2d in this graph")
        return bool(records)


__all__ = ["WinogradConv", "winograd_reason"]
