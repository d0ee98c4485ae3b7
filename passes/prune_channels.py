"""Structured (coarse) pruning: remove whole filters / neurons / channels physically, and dead neurons.

Both passes build :func:`mcopt.analysis.channels.analyze_channels` first: channels that a residual add,
an elementwise op or a depthwise conv couples are removed together, concat offsets and flatten -> dense
column blocks are followed, and channels that reach a graph output or an op that is not channel-aware
are never removed. The result is a smaller dense graph: conv filters, biases, BN parameters, per-channel
constants and the consumers' input channels / dense columns are sliced, so params *and* MACs drop.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from mcopt.analysis.channels import (
    ZERO_PRESERVING,
    ChannelAnalysis,
    ChannelGroup,
    analyze_channels,
    const_channel_axis,
    consumer_inputs,
    select_keep,
    unit_scores,
)
from mcopt.analysis.sensitivity import calib_or_random, capture_activations
from mcopt.ir.core import Graph
from mcopt.pass_manager import ChannelPruningRecord, Pass, PassContext, register_pass

Criterion = Literal["l1", "l2", "group-lasso", "activation"]


def _ratio_table(spec: tuple[str, ...] | dict[str, float]) -> dict[str, float]:
    if isinstance(spec, dict):
        return {str(k): float(v) for k, v in spec.items()}
    out: dict[str, float] = {}
    for item in spec:
        name, eq, val = str(item).rpartition("=")
        if not eq:
            raise ValueError(f"layer ratio {item!r} must look like NODE=RATIO")
        out[name] = float(val)
    return out


def group_ratios(
    groups: list[ChannelGroup],
    ratio: float,
    layer_ratios: dict[str, float],
    skip: tuple[str, ...],
) -> dict[int, float]:
    """The ratio of every group: 0 if a producer is skipped, the first per-layer ratio naming one of
    its producers (conv2d / dense node names), else `ratio`."""
    out: dict[int, float] = {}
    for i, g in enumerate(groups):
        names = [n.name for n in g.producers]
        if any(n in skip for n in names):
            out[i] = 0.0
            continue
        r = next((layer_ratios[n] for n in names if n in layer_ratios), ratio)
        out[i] = r
    return out


def prune_graph_channels(
    graph: Graph,
    ratio: float | dict[int, float],
    *,
    criterion: str = "l1",
    acts: dict[str, np.ndarray] | None = None,
    layer_ratios: dict[str, float] | None = None,
    skip: tuple[str, ...] = (),
    min_channels: int = 1,
    round_to: int = 1,
) -> tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Prune `graph` in place. Returns (channels removed, {node: (kept in idx, kept out idx)})."""
    a = analyze_channels(graph)
    groups = a.groups()
    if isinstance(ratio, dict):
        ratios = ratio
    else:
        ratios = group_ratios(groups, ratio, layer_ratios or {}, skip)
    scores = unit_scores(a, criterion, acts)
    keep = select_keep(a, groups, scores, ratios, min_channels=min_channels, round_to=round_to)
    removed = int((~keep).sum())
    if removed == 0:
        return 0, {}
    return removed, a.apply(keep)


@register_pass
class PruneChannels(Pass):
    """Channel / filter / neuron pruning with physical removal across the whole dependency group.

    Method: for each group of coupled channels (see :mod:`mcopt.analysis.channels`) remove the
    ``floor(ratio * units)`` units with the lowest score, then slice every affected weight. Scores
    (``criterion``):

    - ``l1``: ``||W_c||_1`` of the unit's filters (Li et al. 2017, "Pruning Filters for Efficient
      ConvNets");
    - ``l2``: ``||W_c||_2``;
    - ``group-lasso``: ``sqrt(||W_in[c]||^2 + ||W_out[:, c]||^2)``, the L2 norm of a neuron's
      incoming and outgoing weights — the lecture's group-lasso neuron criterion (Wen et al. 2016,
      Alvarez & Salzmann 2016);
    - ``activation``: ``sqrt(sum_consumers E[x_c^2] ||W_out[:, c]||^2)`` on calibration data (the
      expected contribution of the channel to the next layer; He et al. 2017 / ThiNet flavour).

    Options: ``ratio`` (fraction of units removed per group), ``layer_ratios`` (``NODE=RATIO`` items
    naming a conv / dense producer), ``skip`` (producers never pruned), ``min_channels`` (per layer),
    ``round_to`` (keep the multiple of this many units nearest to what the ratio asks; ``"auto"``,
    the default: the compile target's SIMD channel block, ``TargetServices.channel_multiple()``
    — 16 on AVX-512, 4 on NEON —, 1 without a target: 32 channels pruned to 20 still run as two
    16-lane blocks, pruned to 16 as one), ``schedule='sensitivity'``
    (per-layer ratios picked from a channel sensitivity scan to remove ``ratio`` of the prunable
    params overall), ``recover`` (least-squares refit of each pruned layer's consumers on calibration
    data, see :mod:`mcopt.passes.recovery`). Lossy.
    """

    name = "prune-channels"
    lossless = False
    ratio: float = 0.3
    criterion: Criterion = "l1"
    layer_ratios: tuple[str, ...] | dict[str, float] = ()
    skip: tuple[str, ...] = ()
    min_channels: int = 1
    round_to: int | Literal["auto"] = "auto"
    schedule: Literal["uniform", "sensitivity"] = "uniform"
    recover: bool = False
    calib_batches: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.min_channels < 1 or (self.round_to != "auto" and self.round_to < 1):
            raise ValueError("min_channels and round_to must be >= 1 (round_to: or 'auto')")
        _ratio_table(self.layer_ratios)

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if self.round_to == "auto":
            ask = getattr(ctx.target, "channel_multiple", None)
            multiple = int(ask()) if ask is not None else 1
            ctx.detail("round_to", f"{multiple} (auto: target {getattr(ctx.target, 'name', None)})")
            return dataclasses.replace(self, round_to=multiple).run(graph, ctx)
        needs_data = self.criterion == "activation" or self.recover or self.schedule != "uniform"
        feeds = (
            calib_or_random(graph, ctx.feeds(self.calib_batches), ctx.rng(6), log=ctx.info)
            if needs_data
            else []
        )
        reference = graph.copy()  # shares the constant arrays: cheap
        layer_ratios = _ratio_table(self.layer_ratios)
        if self.schedule == "sensitivity":
            from mcopt.analysis.sensitivity import layer_sensitivity

            rep = layer_sensitivity(
                graph,
                feeds,
                kind="channels",
                criterion=self.criterion,
                sparsities=(0.2, 0.4, 0.6, 0.8),
            )
            layer_ratios = {**rep.pick_ratios(self.ratio), **layer_ratios}
            ctx.analyses.put(rep)
        acts = None
        if self.criterion == "activation":
            a = analyze_channels(graph)
            acts = capture_activations(graph, feeds, consumer_inputs(a))
        removed, changed = prune_graph_channels(
            graph,
            self.ratio,
            criterion=self.criterion,
            acts=acts,
            layer_ratios=layer_ratios,
            skip=tuple(self.skip),
            min_channels=self.min_channels,
            round_to=self.round_to,
        )
        if not removed:
            return False
        ctx.info(f"prune-channels: removed {removed} channel(s) in {len(changed)} layer(s)")
        rec = ctx.analyses.get(ChannelPruningRecord) or ctx.analyses.put(
            ChannelPruningRecord(reference=reference)
        )
        nodes = rec.nodes
        for name, (ik, ok) in changed.items():  # compose with an earlier prune-channels
            if name in nodes:
                ik, ok = nodes[name][0][ik], nodes[name][1][ok]
            nodes[name] = (ik, ok)
        if self.recover:
            from mcopt.passes.recovery import refit_consumers

            n = refit_consumers(graph, rec.reference, nodes, feeds, seed=ctx.seed)
            ctx.info(f"prune-channels: refitted {n} layer(s) by least squares")
        return True


# --- dead neurons ------------------------------------------------------------------------------------
def _zero_positions(a: ChannelAnalysis, graph: Graph) -> dict[int, np.ndarray]:
    """Per value with channel positions: which channels are provably identically zero (any input).

    Conservative forward propagation: a conv / dense row with zero weights and zero bias yields zero;
    ops with f(0) == 0 keep zeros; BN keeps them where mean == bias == 0 (and zeroes where
    scale == bias == 0); add keeps channels zero in every operand; mul zeroes if any operand is zero."""
    z: dict[int, np.ndarray] = {}

    def get(v: object) -> np.ndarray | None:
        return z.get(id(v))

    linear = {id(n) for n in a.consumers + a.depthwise}
    depthwise = {id(n) for n in a.depthwise}
    for v in graph.inputs:
        if id(v) in a.pos:
            z[id(v)] = np.zeros(len(a.pos[id(v)]), dtype=bool)
    for node in graph.nodes:
        outs = [o for o in node.outputs if id(o) in a.pos]
        for o in outs:
            z[id(o)] = np.zeros(len(a.pos[id(o)]), dtype=bool)
        if not outs:
            continue
        out = outs[0]
        ins = node.inputs
        x = ins[0] if ins else None
        zx = get(x) if x is not None and not x.is_const else None
        op = node.op
        if id(node) in linear:
            w = ins[1].const  # type: ignore[union-attr]
            b = ins[2].const if len(ins) > 2 and ins[2] is not None else None
            rows = ~w.reshape(w.shape[0], -1).any(axis=1)
            if id(node) in depthwise and zx is not None:
                rows = rows | zx
            if b is not None:
                rows = rows & (b == 0)
            z[id(out)] = rows
        elif zx is None:
            continue
        elif op in ZERO_PRESERVING:
            if len(zx) == len(z[id(out)]):
                z[id(out)] = zx
        elif op == "clip":
            if node.attrs["min"] <= 0 <= node.attrs["max"]:
                z[id(out)] = zx
        elif op in ("max_pool", "global_max_pool"):
            k = node.attrs.get("kernel", (2, 2))
            pads = node.attrs.get("pads", (0, 0, 0, 0))
            if all(p < kk for p, kk in zip(pads, tuple(k) * 2)):
                z[id(out)] = zx
        elif op == "batch_norm":
            s, bias, mean = (ins[i].const for i in (1, 2, 3))  # type: ignore[union-attr]
            z[id(out)] = (zx & (mean == 0) & (bias == 0)) | ((s == 0) & (bias == 0))
        elif op in ("add", "sub", "mul"):
            C = len(z[id(out)])
            parts = []
            for v in ins:
                if v is None:
                    continue
                if v.is_const:
                    ok, ax = const_channel_axis(v, out.type.rank, C)
                    if not ok:
                        parts.append(np.zeros(C, bool))
                    elif ax is None:
                        parts.append(np.full(C, not v.const.any()))
                    else:
                        parts.append(~np.moveaxis(v.const, ax, 0).reshape(C, -1).any(axis=1))
                else:
                    zv = get(v)
                    parts.append(zv if zv is not None and len(zv) == C else np.zeros(C, bool))
            if parts:
                z[id(out)] = (
                    np.logical_or.reduce(parts) if op == "mul" else np.logical_and.reduce(parts)
                )
        elif op == "concat" and node.attrs["axis"] in (1, 1 - out.type.rank):
            zs = [get(v) for v in ins]
            if all(q is not None for q in zs):
                z[id(out)] = np.concatenate(zs)  # type: ignore[arg-type]
        elif op == "split" and node in a.splits:
            off = 0
            for o in node.outputs:
                n = len(a.pos[id(o)])
                z[id(o)] = zx[off : off + n]
                off += n
        elif op in ("flatten", "reshape", "squeeze", "unsqueeze", "transpose", "pad", "slice"):
            n_out = len(z[id(out)])
            if n_out == len(zx):
                z[id(out)] = zx
            elif n_out % len(zx) == 0:
                z[id(out)] = np.repeat(zx, n_out // len(zx))
    return z


def dead_units_keep(
    a: ChannelAnalysis,
    graph: Graph,
    calib_zero: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Keep mask removing every dead unit: a prunable unit (not touched by an lrn) such that at every
    conv2d / dense that reads it, each of its positions is either identically zero (by weights, or on
    all calibration data when `calib_zero` is given) or multiplied by an all-zero weight column."""
    n = len(a.parent)
    roots = a.roots()
    fixed = np.array(a.fixed, dtype=bool)
    mixing = np.array(a.mixing, dtype=bool)
    bad = np.zeros(n, dtype=bool)  # element has a live use somewhere
    zeros = _zero_positions(a, graph)
    for node in a.consumers:
        x, w = node.inputs[0], node.inputs[1]
        assert x is not None and w is not None
        p = a.pos[id(x)]
        ok = zeros.get(id(x), np.zeros(len(p), bool)).copy()
        if calib_zero is not None and x.name in calib_zero:
            ok |= calib_zero[x.name]
        wc = w.const
        col_zero = ~np.moveaxis(wc, 1, 0).reshape(wc.shape[1], -1).any(axis=1)
        ok |= col_zero
        bad[p[~ok]] = True
    # every element with any use must be dead; elements never read by a consumer are dead too
    unit_bad = np.zeros(n, dtype=bool)
    np.logical_or.at(unit_bad, roots, bad | fixed | mixing)
    dead = ~unit_bad[roots]
    return ~dead


@register_pass
class RemoveDeadNeurons(Pass):
    """Dead-neuron removal: physically remove channels / neurons that cannot affect the output.

    A unit of coupled channels is dead when, at every conv2d / dense that reads it, each of its
    positions is identically zero (all-zero incoming weights and bias, propagated through ops with
    f(0) = 0 such as relu, pooling, flatten, concat) or meets an all-zero outgoing weight column.
    With ``use_calib=True`` a channel that is exactly zero on every calibration input (e.g. a relu
    that never fires) also counts as zero — exact on inputs like the calibration set only.
    Method: the lecture's "discard neurons with no connection" after thresholding (Han et al. 2015).
    Lossless (outputs equal up to float rounding: removing zero terms from sums) — except with
    ``use_calib=True``, which is lossy: a channel silent on the calibration inputs may fire on others.
    """

    name = "remove-dead-neurons"
    lossless = True
    use_calib: bool = False
    calib_batches: int = 16

    def __post_init__(self) -> None:
        # channels zero on the calibration inputs need not be zero on others: data-dependent, lossy
        if self.use_calib:
            self.lossless = False  # type: ignore[misc]

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        total = 0
        for _ in range(8):  # removing one layer's neurons can kill the next layer's inputs
            a = analyze_channels(graph)
            calib_zero = None
            if self.use_calib and ctx.calib:
                vals = consumer_inputs(a)
                acts = capture_activations(graph, ctx.feeds(self.calib_batches), vals)
                calib_zero = {
                    k: ~np.any(arr != 0, axis=tuple(i for i in range(arr.ndim) if i != 1))
                    for k, arr in acts.items()
                }
            keep = dead_units_keep(a, graph, calib_zero)
            removed = int((~keep).sum())
            if not removed:
                break
            a.apply(keep)
            total += removed
        if total:
            ctx.info(f"remove-dead-neurons: removed {total} dead channel(s)")
        return total > 0
