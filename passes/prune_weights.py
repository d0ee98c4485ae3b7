"""Fine-grained weight pruning (Han, Pool, Tran & Dally 2015, "Learning both Weights and Connections
for Efficient Neural Networks"; the lecture's "drop the weights below some threshold").

Weights of conv2d / dense layers whose magnitude is below a threshold become exactly zero. The
threshold comes from (first match):

- ``threshold``: an absolute value, ``|w| < threshold`` goes;
- ``std_factor``: Han's rule, ``|w| < std_factor * std(W)`` per layer;
- ``sparsity``: the magnitude quantile giving that fraction of zeros — per layer (``scope='layer'``),
  over all selected weights at once (``scope='global'``, one threshold for the network), or per layer
  from a sensitivity scan meeting ``sparsity`` overall (``scope='sensitivity'``, needs calibration).

The pruned weight is stored with the IR's CSR :class:`~mcopt.ir.types.Sparse` encoding (values +
column indices + row pointers, rows = output channels) so the cost analysis counts its real bytes; with
``encode='auto'`` only where CSR is smaller than dense. The op stays a dense conv2d / dense holding the
zeros (exported to ONNX as a dense initializer that onnxruntime runs; sparse kernels are the targets'
business). Lossy (exact only for weights that were already zero).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from mcopt.analysis.sensitivity import calib_or_random, layer_sensitivity, magnitude_mask
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import Sparse, TensorType
from mcopt.pass_manager import Pass, PassContext, register_pass


def sparse_type(arr: np.ndarray, dtype: str) -> TensorType:
    """The CSR-encoded type of `arr` viewed as a (rows = axis 0, cols = rest) matrix."""
    return TensorType(arr.shape, dtype, Sparse.of(arr))


def weight_layers(graph: Graph, ops: tuple[str, ...], skip: tuple[str, ...]) -> list[Node]:
    """conv2d / dense nodes with a plain (unencoded or sparse) float constant weight."""
    out = []
    for n in graph.nodes:
        if n.op not in ops or n.name in skip or len(n.inputs) < 2:
            continue
        w = n.inputs[1]
        if w is None or not w.is_const or np.dtype(w.dtype).kind != "f":
            continue
        if w.type.encoding is not None and not isinstance(w.type.encoding, Sparse):
            continue
        out.append(n)
    return out


def set_pruned_weight(graph: Graph, node: Node, arr: np.ndarray, encode: str = "auto") -> None:
    """Give `node` a new weight constant `arr`, CSR-encoded per `encode` ('auto'|'always'|'never')."""
    w = node.inputs[1]
    assert w is not None
    t = sparse_type(arr, w.dtype)
    dense = TensorType(arr.shape, w.dtype)
    if encode == "never" or (encode == "auto" and t.nbytes >= dense.nbytes):
        t = dense
    if w.is_const and len(w.uses) == 1 and not any(o is w for o in graph.outputs):
        w.const, w.type = arr, t  # re-pruning a weight only this node reads: same value, same name
        return
    base = w.name if w.name.endswith("_sparse") else f"{w.name}_sparse"
    node.set_input(1, Value(graph.unique_name(base), t, const=arr))


def _refit_type(t: TensorType, arr: np.ndarray) -> TensorType:
    """``t`` for the refitted ``arr``: a CSR encoding is rebuilt (a refit weight can come out
    exactly zero, e.g. on an input that is always zero, and storage must count what is stored)."""
    if isinstance(t.encoding, Sparse):
        return TensorType(t.shape, t.dtype, Sparse.of(arr, t.encoding.index_bits))
    return t


def refit_masked(
    graph: Graph,
    reference: Graph,
    names: list[str],
    feeds: list,
    *,
    ridge: float = 1e-3,
    max_samples: int = 8192,
    seed: int = 0,
) -> int:
    """Least-squares refit of the surviving weights of each pruned layer (zeros stay zero).

    Per output row j with surviving inputs S_j: ``[w_S; b] = argmin ||[X'_S 1][w; b] - y_j||^2 +
    lam ||w||^2`` (lam picked on held-out rows) where X' is the pruned network's input to the layer (im2col rows for a conv, layers
    refitted in order) and y_j the unpruned layer's output. Needs many more calibration rows than
    surviving weights per row (LeNet-300 at 90%: 100 images hurt, 200-300 images help) — recovery without retraining, the
    fine-grained analogue of :mod:`mcopt.passes.recovery`. Kept only where it lowers the error."""
    from mcopt.analysis.sensitivity import capture_activations
    from mcopt.passes.recovery import _targets, im2col

    rng = np.random.default_rng(seed)
    done = 0
    for name in names:
        node, ref = graph.find_node(name), reference.find_node(name)
        if node.attrs.get("groups", 1) != 1:
            continue
        x_val, w = node.inputs[0], node.inputs[1]
        assert x_val is not None and w is not None
        A = im2col(capture_activations(graph, feeds, [x_val])[x_val.name].astype(np.float64), node)
        Y = _targets(capture_activations(reference, feeds, [ref.output])[ref.output.name], node)
        if A.shape[0] > max_samples:
            idx = rng.choice(A.shape[0], max_samples, replace=False)
            A, Y = A[idx], Y[idx]
        perm = rng.permutation(A.shape[0])
        cut = max(2, int(0.8 * len(perm)))
        fit, val = perm[:cut], perm[cut:]
        A1 = np.concatenate([A, np.ones((A.shape[0], 1))], axis=1)
        G, R = A1[fit].T @ A1[fit], A1[fit].T @ Y[fit].astype(np.float64)
        scale = float(np.mean(np.diag(G)[:-1]))
        W = w.const.reshape(w.shape[0], -1).astype(np.float64)
        b_in = node.inputs[2] if len(node.inputs) > 2 else None
        b = np.zeros(w.shape[0]) if b_in is None else b_in.const.astype(np.float64)

        Av, Yv = A[val], Y[val]

        def val_err(wm: np.ndarray, bv: np.ndarray, Av=Av, Yv=Yv) -> float:
            return float(((Av @ wm.T + bv - Yv) ** 2).sum())

        best = (val_err(W, b), W, b)
        for lam in ridge * np.array([1.0, 10.0, 100.0, 1e3, 1e4]) * scale:
            W2, b2 = W.copy(), b.copy()
            for j in range(W.shape[0]):
                keep = np.append(np.flatnonzero(W[j]), A.shape[1])
                Gs = G[np.ix_(keep, keep)].copy()
                Gs[np.arange(len(keep) - 1), np.arange(len(keep) - 1)] += lam
                try:
                    sol = np.linalg.solve(Gs, R[keep, j])
                except np.linalg.LinAlgError:
                    continue
                W2[j] = 0.0
                W2[j, keep[:-1]] = sol[:-1]
                b2[j] = sol[-1]
            e = val_err(W2, b2)
            if np.isfinite(e) and e < best[0]:
                best = (e, W2, b2)
        if best[1] is W:
            continue
        W2, b2 = best[1], best[2]
        arr = W2.reshape(w.shape).astype(w.dtype)
        node.replace_inputs(
            [
                x_val,
                Value(graph.unique_name(f"{w.name}_refit"), _refit_type(w.type, arr), arr),
                graph.const(b2.astype(w.dtype), name=f"{name}_b_refit"),
            ]
        )
        done += 1
    return done


@register_pass
class PruneWeights(Pass):
    """Magnitude / threshold weight pruning to a target sparsity, stored as CSR (Han et al. 2015).

    Method: zero every weight with ``|w| < t``; ``t`` from ``threshold`` (absolute), ``std_factor``
    (``t = std_factor * std(W)`` per layer, Han's quality parameter) or the ``sparsity`` quantile of
    ``|w|`` (``scope``: 'layer', 'global' or 'sensitivity'). Options: ``ops`` (which ops), ``skip``
    (node names), ``layer_sparsity`` (``NODE=S`` items overriding per layer), ``min_params``
    (leave layers smaller than this dense), ``encode`` ('auto' | 'always' | 'never' CSR marking),
    ``refit`` (least-squares refit of the surviving weights on calibration data, layer by layer:
    :func:`refit_masked`; kept only where it lowers the error on held-out inputs, ``ctx.heldout``).
    Lossy.
    """

    name = "prune-weights"
    lossless = False
    sparsity: float = 0.5
    threshold: float | None = None
    std_factor: float | None = None
    scope: Literal["layer", "global", "sensitivity"] = "layer"
    ops: tuple[str, ...] = ("conv2d", "dense")
    skip: tuple[str, ...] = ()
    layer_sparsity: tuple[str, ...] | dict[str, float] = ()
    min_params: int = 0
    encode: Literal["auto", "always", "never"] = "auto"
    refit: bool = False
    calib_batches: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")

    def _layer_table(self) -> dict[str, float]:
        from mcopt.passes.prune_channels import _ratio_table

        return _ratio_table(self.layer_sparsity)

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        layers = [
            n
            for n in weight_layers(graph, tuple(self.ops), tuple(self.skip))
            if n.inputs[1].type.size >= self.min_params  # type: ignore[union-attr]
        ]
        if not layers:
            return False
        table = self._layer_table()
        masks: dict[str, np.ndarray] = {}
        if self.threshold is not None:
            for n in layers:
                w = n.inputs[1].const  # type: ignore[union-attr]
                masks[n.name] = np.abs(w) >= self.threshold
        elif self.std_factor is not None:
            for n in layers:
                w = n.inputs[1].const  # type: ignore[union-attr]
                masks[n.name] = np.abs(w) >= self.std_factor * float(np.std(w))
        elif self.scope == "global":
            allw = np.concatenate([np.abs(n.inputs[1].const).reshape(-1) for n in layers])  # type: ignore[union-attr]
            k = int(round(self.sparsity * allw.size))
            t = float(np.partition(allw, k - 1)[k - 1]) if k > 0 else -1.0
            for n in layers:
                w = n.inputs[1].const  # type: ignore[union-attr]
                masks[n.name] = np.abs(w) > t
        else:
            per = {n.name: self.sparsity for n in layers}
            if self.scope == "sensitivity":
                feeds = calib_or_random(
                    graph, ctx.feeds(self.calib_batches), ctx.rng(7), log=ctx.info
                )
                rep = layer_sensitivity(
                    graph,
                    feeds,
                    kind="weights",
                    layers=list(per),
                    sparsities=(0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
                )
                per.update(rep.pick_ratios(self.sparsity))
                ctx.analyses.put(rep)
            for n in layers:
                w = n.inputs[1].const  # type: ignore[union-attr]
                masks[n.name] = magnitude_mask(w, per[n.name])
        for n in layers:  # explicit per-layer sparsities win
            if n.name in table:
                masks[n.name] = magnitude_mask(n.inputs[1].const, table[n.name])  # type: ignore[union-attr]
        reference = graph.copy() if self.refit else None
        zeroed = total = 0
        changed = False
        for n in layers:
            w = n.inputs[1]
            assert w is not None
            arr = np.where(masks[n.name], w.const, np.zeros((), w.const.dtype)).astype(w.dtype)
            total += w.type.size
            zeroed += w.type.size - int(np.count_nonzero(arr))
            newly = int(np.count_nonzero(w.const)) - int(np.count_nonzero(arr))
            if newly == 0 and (self.encode == "never" or w.type.encoding is not None):
                continue
            set_pruned_weight(graph, n, arr, self.encode)
            changed = True
        if self.refit and reference is not None and changed:
            feeds = calib_or_random(graph, ctx.feeds(self.calib_batches), ctx.rng(8), log=ctx.info)
            plain = graph.copy()
            err_plain = ctx.heldout_error(graph)
            n = refit_masked(graph, reference, [n.name for n in layers], feeds, seed=ctx.seed)
            err_refit = ctx.heldout_error(graph)
            if err_plain is not None and err_refit is not None:
                ctx.detail("heldout_rel_error", {"plain": err_plain, "refit": err_refit})
                if err_refit > err_plain:  # overfitted the calibration data: keep plain pruning
                    graph.replace_contents(plain)
                    n = 0
                    ctx.detail("kept", "plain pruning (the refit raised the held-out error)")
            ctx.info(f"prune-weights: refitted {n} layer(s) by least squares")
        ctx.info(
            f"prune-weights: {len(layers)} layer(s), sparsity {zeroed / max(total, 1):.1%} "
            f"({zeroed} of {total} weights zero)"
        )
        return changed
