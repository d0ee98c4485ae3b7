"""Layer sensitivity to pruning (Han et al. 2015, Fig. 6 — the lecture's "sensitivity of layers to
pruning"), and per-layer ratios picked from it to meet a global target.

For each layer (``kind='weights'``: every conv2d / dense weight, pruned by magnitude) or each channel
group (``kind='channels'``: one :class:`~mcopt.analysis.channels.ChannelGroup`, pruned by a channel
criterion) and each sparsity in a grid, that one layer is pruned alone and the graph is run on the
calibration feeds; the error is the relative L2 error of the first output against the unpruned graph,
``||y - y0||_F / ||y0||_F`` (and top-1 accuracy when labels are given). :meth:`SensitivityReport.pick_ratios`
then chooses per-layer ratios: with a tolerance ``t`` each layer gets the largest ratio whose error
curve (its running maximum, linearly interpolated) stays below ``t``; ``t`` is bisected until the
ratios remove the requested fraction of the scanned parameters. Also holds the small calibration
helpers shared by the data-driven pruning passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcopt.interpreter import run_values
from mcopt.ir.core import Graph, Value
from mcopt.ir.types import TensorType

Feed = Mapping[str, np.ndarray] | Sequence[np.ndarray]
DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# --- calibration helpers ------------------------------------------------------------------------------
def calib_or_random(
    graph: Graph,
    feeds: Sequence[Feed] | None,
    rng: np.random.Generator,
    n: int = 4,
    log: Callable[[str], None] | None = None,
) -> list[Feed]:
    """`feeds` if any, else `n` standard-normal feeds shaped like the graph inputs (with a note)."""
    if feeds:
        return list(feeds)
    if log is not None:
        log("no calibration data given: using random normal inputs")
    return [
        {v.name: rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs}
        for _ in range(n)
    ]


def capture_activations(
    graph: Graph, feeds: Sequence[Feed], values: Sequence[Value]
) -> dict[str, np.ndarray]:
    """Run every feed, keep `values`; returns {value name: arrays concatenated on axis 0}."""
    acc: dict[str, list[np.ndarray]] = {v.name: [] for v in values}
    for feed in feeds:
        _, kept = run_values(graph, feed, keep=list(values))
        for k, arr in kept.items():
            acc[k].append(np.asarray(arr))
    return {k: np.concatenate(v, axis=0) for k, v in acc.items() if v}


def run_outputs(graph: Graph, feeds: Sequence[Feed]) -> np.ndarray:
    """The first graph output over all feeds, concatenated on axis 0 (float64)."""
    outs = [np.asarray(run_values(graph, f)[0][0], dtype=np.float64) for f in feeds]
    return np.concatenate(outs, axis=0)


def relative_error(y: np.ndarray, y0: np.ndarray) -> float:
    den = float(np.linalg.norm(y0))
    return float(np.linalg.norm(y - y0)) / (den if den > 0 else 1.0)


def top1(y: np.ndarray, labels: np.ndarray) -> float:
    return float((y.reshape(y.shape[0], -1).argmax(axis=1) == np.asarray(labels)).mean())


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean keep-mask removing the ``round(sparsity * size)`` smallest-magnitude entries."""
    k = int(round(sparsity * w.size))
    keep = np.ones(w.size, dtype=bool)
    if k > 0:
        keep[np.argpartition(np.abs(w).reshape(-1), k - 1)[:k]] = False
    return keep.reshape(w.shape)


# --- report -----------------------------------------------------------------------------------------------
@dataclass
class SensitivityReport:
    """``errors[i, j]``: output error with layer ``layers[i]`` alone pruned at ``sparsities[j]``."""

    kind: str
    layers: list[str]
    params: list[int]
    sparsities: list[float]
    errors: np.ndarray
    accuracy: np.ndarray | None = None
    base_accuracy: float | None = None
    group_index: list[int] = field(default_factory=list)  # kind='channels': analysis group ids

    def table(self) -> str:
        """Markdown table: one row per layer, one column per sparsity (relative output error)."""
        head = "| layer | params | " + " | ".join(f"{s:.0%}" for s in self.sparsities) + " |"
        sep = "|---|---:|" + "---:|" * len(self.sparsities)
        rows = [head, sep]
        for i, name in enumerate(self.layers):
            cells = [f"{e:.4f}" for e in self.errors[i]]
            if self.accuracy is not None:
                cells = [f"{e:.4f} ({a:.1%})" for e, a in zip(self.errors[i], self.accuracy[i])]
            rows.append(f"| {name} | {self.params[i]} | " + " | ".join(cells) + " |")
        return "\n".join(rows)

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Write a PNG: error (or accuracy when labels were given) vs sparsity, one line per layer."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [0.0] + list(self.sparsities)
        for i, name in enumerate(self.layers):
            if self.accuracy is not None:
                ys = [self.base_accuracy or 0.0] + list(self.accuracy[i])
            else:
                ys = [0.0] + list(self.errors[i])
            ax.plot(xs, ys, marker="o", ms=3, label=name)
        ax.set_xlabel("fraction pruned" if self.kind == "channels" else "sparsity")
        ax.set_ylabel("top-1 accuracy" if self.accuracy is not None else "relative output error")
        ax.set_title(title or f"pruning sensitivity ({self.kind})")
        ax.grid(alpha=0.3)
        if len(self.layers) <= 20:
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layers": self.layers,
            "params": self.params,
            "sparsities": self.sparsities,
            "errors": self.errors.tolist(),
            "accuracy": None if self.accuracy is None else self.accuracy.tolist(),
            "base_accuracy": self.base_accuracy,
        }

    def _ratio_at(self, i: int, tol: float) -> float:
        xs = np.array([0.0] + list(self.sparsities))
        env = np.maximum.accumulate(np.array([0.0] + list(self.errors[i])))
        if env[-1] <= tol:
            return float(xs[-1])
        j = int(np.argmax(env > tol))  # first grid point above tol (j >= 1)
        lo, hi = env[j - 1], env[j]
        frac = 0.0 if hi <= lo else (tol - lo) / (hi - lo)
        return float(xs[j - 1] + frac * (xs[j] - xs[j - 1]))

    def ratios_at(self, tol: float) -> dict[str, float]:
        return {name: self._ratio_at(i, tol) for i, name in enumerate(self.layers)}

    def pick_ratios(self, target: float, iters: int = 60) -> dict[str, float]:
        """Per-layer ratios removing about `target` of the scanned params at the lowest common
        error tolerance (see module doc)."""
        total = float(sum(self.params)) or 1.0

        def removed(tol: float) -> float:
            r = self.ratios_at(tol)
            return sum(r[n] * p for n, p in zip(self.layers, self.params)) / total

        hi = float(self.errors.max()) if self.errors.size else 0.0
        if removed(hi) < target:
            return self.ratios_at(hi)
        lo = 0.0
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if removed(mid) >= target:
                hi = mid
            else:
                lo = mid
        return {k: round(v, 4) for k, v in self.ratios_at(hi).items()}


# --- the scan ---------------------------------------------------------------------------------------------
def _set_weight(graph: Graph, node_name: str, arr: np.ndarray) -> None:
    node = graph.find_node(node_name)
    w = node.inputs[1]
    assert w is not None
    node.set_input(1, Value(graph.unique_name(f"{w.name}_s"), TensorType(arr.shape, w.dtype), arr))


def layer_sensitivity(
    graph: Graph,
    feeds: Sequence[Feed],
    *,
    kind: str = "weights",
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    criterion: str = "l1",
    labels: np.ndarray | None = None,
    layers: Sequence[str] | None = None,
) -> SensitivityReport:
    """Prune one layer (or channel group) at a time at each sparsity and measure the output error.

    `kind`: ``'weights'`` (magnitude pruning of each conv2d / dense weight) or ``'channels'`` (each
    prunable channel group, ranked by `criterion`, named by its first producer). `layers` restricts
    the scan to these node names. `graph` is not modified."""
    from mcopt.analysis.channels import analyze_channels, select_keep, unit_scores

    if not feeds:
        raise ValueError("layer_sensitivity needs calibration feeds")
    y0 = run_outputs(graph, feeds)
    base_acc = top1(y0, labels) if labels is not None else None
    names: list[str] = []
    params: list[int] = []
    gidx: list[int] = []
    if kind == "weights":
        for n in graph.nodes:
            w = n.inputs[1] if n.op in ("conv2d", "dense") and len(n.inputs) > 1 else None
            if w is not None and w.is_const and np.dtype(w.dtype).kind == "f":
                if layers is None or n.name in layers:
                    names.append(n.name)
                    params.append(w.type.size)
    elif kind == "channels":
        for i, g in enumerate(analyze_channels(graph).groups()):
            if g.num_prunable == 0 or (
                layers is not None and not any(p.name in layers for p in g.producers)
            ):
                continue
            names.append(g.name)
            params.append(sum(p.inputs[1].type.size for p in g.producers))  # type: ignore[union-attr]
            gidx.append(i)
    else:
        raise ValueError(f"kind must be 'weights' or 'channels', got {kind!r}")
    errs = np.zeros((len(names), len(sparsities)))
    accs = np.zeros_like(errs) if labels is not None else None
    for i, name in enumerate(names):
        for j, s in enumerate(sparsities):
            g2 = graph.copy()
            if kind == "weights":
                w = graph.find_node(name).inputs[1].const  # type: ignore[union-attr]
                _set_weight(g2, name, np.where(magnitude_mask(w, s), w, 0).astype(w.dtype))
            else:
                a2 = analyze_channels(g2)
                groups = a2.groups()
                crit = "group-lasso" if criterion == "activation" else criterion
                keep = select_keep(a2, groups, unit_scores(a2, crit), {gidx[i]: s})
                if (~keep).any():
                    a2.apply(keep)
            y = run_outputs(g2, feeds)
            errs[i, j] = relative_error(y, y0)
            if accs is not None and labels is not None:
                accs[i, j] = top1(y, labels)
    return SensitivityReport(
        kind=kind,
        layers=names,
        params=params,
        sparsities=[float(s) for s in sparsities],
        errors=errs,
        accuracy=accs,
        base_accuracy=base_acc,
        group_index=gidx,
    )


def global_fraction(ratios: Mapping[str, float], params: Mapping[str, int]) -> float:
    """Fraction of params removed by per-layer `ratios`."""
    tot = sum(params.values())
    return sum(ratios.get(k, 0.0) * p for k, p in params.items()) / tot if tot else math.nan
