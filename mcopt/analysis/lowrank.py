"""Shared helpers for the low-rank / factorization passes: calibration capture, layer error, rank search.

Rank selection (used by every pass in ``passes/factorize.py`` and ``passes/architecture.py``):

- **with calibration data**: the smallest rank whose *layer output* relative error on calibration
  activations is within a budget,
  ``||(W - W_r)(X - mu)||_F / ||W X + b||_F <= max_rel_error``, where ``X`` are sampled im2col columns of
  the layer's input (captured by running the original graph on ``ctx.calib``) and ``mu`` their mean (the
  mean shift ``(W - W_r) mu`` is folded into the bias: bias correction);
- **without**: the smallest rank keeping a fraction ``energy`` of the weights' spectral energy,
  ``||W_r||^2 / ||W||^2 >= energy``, measured as ``1 - ||W - W_r||_F^2 / ||W||_F^2`` (for an SVD
  truncation this is exactly ``sum_{k<=r} s_k^2 / sum_k s_k^2``).

Both errors fall (nearly) monotonically with the rank, so the search is a bisection over ``[1, r_max]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcopt.ir.core import Graph, Node, Value
from mcopt.pass_manager.analyses import PassSummary


def energy_rank(s: np.ndarray, energy: float) -> int:
    """Smallest r with ``sum(s[:r]**2) >= energy * sum(s**2)`` (at least 1)."""
    e = np.cumsum(np.asarray(s, np.float64) ** 2)
    if e[-1] <= 0:
        return 1
    return int(min(len(e), np.searchsorted(e / e[-1], energy - 1e-12) + 1))


def bisect_rank(
    err: Callable[[int], float], lo: int, hi: int, budget: float
) -> tuple[int | None, dict[int, float]]:
    """Smallest r in [lo, hi] with ``err(r) <= budget`` assuming err falls with r; None when even
    ``err(hi)`` exceeds the budget. Also returns every evaluated {rank: error}."""
    seen: dict[int, float] = {}

    def f(r: int) -> float:
        if r not in seen:
            seen[r] = float(err(r))
        return seen[r]

    if hi < lo or f(hi) > budget:
        return None, seen
    while lo < hi:
        mid = (lo + hi) // 2
        if f(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return lo, seen


# --- calibration capture ------------------------------------------------------------------------------
def sample_conv_columns(
    x: np.ndarray,
    attrs: Mapping[str, Any],
    kernel: tuple[int, int],
    count: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """`count` random im2col columns of a conv input: (count, groups, C/groups * kh * kw) float64,
    each the receptive field of one random output position (ordered c, i, j like ``w.reshape(O, -1)``)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = attrs["strides"], attrs["pads"], attrs["dilations"]
    g = int(attrs["groups"])
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    total = n * ho * wo
    idx = (
        rng.choice(total, size=min(count, total), replace=False)
        if count < total
        else np.arange(total)
    )
    ni, rem = np.divmod(idx, ho * wo)
    oh, ow = np.divmod(rem, wo)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any((pt, pl, pb, pr)) else x
    xt = xp.transpose(0, 2, 3, 1)  # N, H, W, C
    ih = oh[:, None] * sh + np.arange(kh)[None, :] * dh
    iw = ow[:, None] * sw + np.arange(kw)[None, :] * dw
    patches = xt[ni[:, None, None], ih[:, :, None], iw[:, None, :]]  # (S, kh, kw, C)
    patches = patches.transpose(0, 3, 1, 2).astype(np.float64)  # (S, C, kh, kw)
    return patches.reshape(len(idx), g, (c // g) * kh * kw)


def dense_columns(x: np.ndarray) -> np.ndarray:
    """A dense layer's inputs as (samples, 1, in_features) float64."""
    return x.reshape(-1, 1, x.shape[-1]).astype(np.float64)


@dataclass
class Capture:
    """Inputs of selected layers on calibration feeds, and the original graph outputs."""

    columns: dict[str, np.ndarray]  # node name -> (S, groups, D) columns
    outputs: list[list[np.ndarray]]  # per feed, the graph outputs
    feeds: list[Any]
    values: dict[str, np.ndarray]  # extra captured values (concatenated over feeds along axis 0)


def capture(
    graph: Graph,
    nodes: Sequence[Node],
    feeds: Sequence[Any],
    *,
    max_columns: int = 4096,
    rng: np.random.Generator | None = None,
    extra: Sequence[Value] = (),
) -> Capture:
    """Run `graph` on `feeds` keeping the inputs of `nodes` (conv2d / dense) and `extra` values; sample
    at most `max_columns` input columns per layer (spread evenly over the feeds)."""
    from mcopt import interpreter

    rng = rng or np.random.default_rng(0)
    per_feed = max(1, max_columns // max(1, len(feeds)))
    cols: dict[str, list[np.ndarray]] = {n.name: [] for n in nodes}
    vals: dict[str, list[np.ndarray]] = {v.name: [] for v in extra}
    outs: list[list[np.ndarray]] = []
    keep = [n.inputs[0] for n in nodes if n.inputs[0] is not None] + list(extra)
    for feed in feeds:
        res, kept = interpreter.run_values(graph, feed, keep=keep)
        outs.append(res)
        for n in nodes:
            x = n.inputs[0]
            assert x is not None
            arr = kept[x.name]
            if n.op == "conv2d":
                w = n.inputs[1]
                assert w is not None
                cols[n.name].append(
                    sample_conv_columns(arr, n.attrs, (w.shape[2], w.shape[3]), per_feed, rng)
                )
            else:
                cols[n.name].append(dense_columns(arr))
        for v in extra:
            vals[v.name].append(np.asarray(kept[v.name]))
    return Capture(
        columns={k: np.concatenate(v, axis=0) for k, v in cols.items() if v},
        outputs=outs,
        feeds=list(feeds),
        values={k: np.concatenate(v, axis=0) for k, v in vals.items() if v},
    )


# --- errors ---------------------------------------------------------------------------------------------
def layer_error(
    w: np.ndarray, b: np.ndarray | None, w_hat: np.ndarray, cols: np.ndarray
) -> tuple[float, np.ndarray]:
    """Relative output error of replacing weight `w` by `w_hat` on input columns `cols` (S, g, D), after
    bias correction; returns (error, bias shift to add). `w`, `w_hat`: (O, ...) with O divisible by g."""
    s, g, d = cols.shape
    o = w.shape[0]
    wm = np.asarray(w, np.float64).reshape(g, o // g, d)
    dm = wm - np.asarray(w_hat, np.float64).reshape(g, o // g, d)
    mu = cols.mean(axis=0)  # (g, D)
    y = np.einsum("sgd,god->sgo", cols, wm).reshape(s, o)
    if b is not None:
        y = y + np.asarray(b, np.float64)[None, :]
    dy = np.einsum("sgd,god->sgo", cols - mu[None], dm).reshape(s, o)
    shift = np.einsum("gd,god->go", mu, dm).reshape(o)
    ref = float(np.linalg.norm(y))
    return (float(np.linalg.norm(dy)) / ref if ref > 0 else float(np.linalg.norm(dy))), shift


def weight_error(w: np.ndarray, w_hat: np.ndarray) -> float:
    """Relative weight-space error ``||w - w_hat||_F / ||w||_F``."""
    n = float(np.linalg.norm(np.asarray(w, np.float64)))
    d = float(np.linalg.norm(np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)))
    return d / n if n > 0 else d


def output_rel_error(
    ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]]
) -> float:
    """max |ref - got| / max |ref| over every output of every feed (the pass manager's measure)."""
    worst = 0.0
    for r_list, g_list in zip(ref, got):
        for r, g in zip(r_list, g_list):
            r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
            scale = float(np.max(np.abs(r64))) if r64.size else 0.0
            d = float(np.max(np.abs(r64 - g64))) if r64.size else 0.0
            worst = max(worst, d / scale if scale > 0 else d)
    return worst


def run_feeds(graph: Graph, feeds: Sequence[Any]) -> list[list[np.ndarray]]:
    from mcopt import interpreter

    return [interpreter.run(graph, f) for f in feeds]


# --- graph surgery and reporting shared by the passes ---------------------------------------------------
def substitute(graph: Graph, node: Node, new: Value) -> None:
    """Point every use of `node`'s single output at `new` (keeping a graph output's name), then remove
    `node` and the producers that became dead (e.g. a flatten feeding only the removed head)."""
    from mcopt.rewrite import remove_dead

    old = node.output
    if old.shape != new.shape or old.dtype != new.dtype:
        raise ValueError(
            f"replacement of {node.name!r} changes %{old.name}: {old.type} -> {new.type}"
        )
    is_out = any(o is old for o in graph.outputs)
    graph.replace_all_uses_with(old, new)
    if is_out and new.producer is not None:
        new.name, old.name = old.name, graph.unique_name(old.name + "_replaced")
    remove_dead(graph, [node])


@dataclass
class LayerRecord:
    """What one rewrite did to one layer (a row of the pass's :class:`PassSummary`)."""

    layer: str
    method: str
    rank: int | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    rel_error: float | None  # layer output error (calibration) or weight error (no calibration)
    error_kind: str  # "calib" (layer output on calibration data), "weights", "exact", "fit"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def node_params(nodes: Sequence[Node]) -> int:
    """Distinct constant elements consumed by `nodes`."""
    seen: dict[int, Value] = {}
    for n in nodes:
        for v in n.inputs:
            if v is not None and v.is_const:
                seen[id(v)] = v
    return sum(v.type.size for v in seen.values())


def nodes_macs(nodes: Sequence[Node]) -> int:
    from mcopt.analysis.cost import node_macs

    return sum(node_macs(n) for n in nodes)


def summarize(
    records: Sequence[LayerRecord],
    *,
    lossless: bool,
    output_rel_error: float | None = None,
    skipped: Mapping[str, str] | None = None,
    **extra: Any,
) -> PassSummary:
    """The summary a pass records with ``ctx.summarize``: per-layer rows, totals and the end-to-end
    output error on the calibration feeds it used (None without calibration data); `extra` holds
    pass-specific figures."""
    return PassSummary(
        lossless=lossless,
        layers=list(records),
        skipped=dict(skipped or {}),
        params_before=sum(r.params_before for r in records),
        params_after=sum(r.params_after for r in records),
        macs_before=sum(r.macs_before for r in records),
        macs_after=sum(r.macs_after for r in records),
        output_rel_error=output_rel_error,
        extra=dict(extra),
    )


def format_record(r: LayerRecord) -> str:
    from mcopt.analysis.cost import human_count

    err = "" if r.rel_error is None else f", {r.error_kind} rel err {r.rel_error:.3g}"
    rank = "" if r.rank is None else f" rank {r.rank}"
    return (
        f"{r.layer}: {r.method}{rank}: params {human_count(r.params_before)} -> "
        f"{human_count(r.params_after)}, MACs {human_count(r.macs_before)} -> "
        f"{human_count(r.macs_after)}{err}{' (' + r.note + ')' if r.note else ''}"
    )


__all__ = [
    "Capture",
    "LayerRecord",
    "format_record",
    "node_params",
    "nodes_macs",
    "substitute",
    "summarize",
    "bisect_rank",
    "capture",
    "dense_columns",
    "energy_rank",
    "layer_error",
    "output_rel_error",
    "run_feeds",
    "sample_conv_columns",
    "weight_error",
]
