"""Recovery without retraining: least-squares refit of the layers after a pruned one.

When channel pruning removes input channels of a conv2d / dense, the layer's remaining weights are
refitted so that its output on calibration data matches the *unpruned* network's output of the same
layer: with ``X'`` the im2col patches of the pruned network's input to the layer (rows = output
positions, columns = kept input channels x kernel taps, plus a ones column) and ``Y`` the original
layer's output restricted to the kept output channels,

    W*, b* = argmin ||X' [W; b] - Y||^2 + lam ||W||^2,     lam = ridge * mean(diag(X'^T X')).

This is the reconstruction step of He, Zhang & Sun 2017 ("Channel Pruning for Accelerating Very Deep
Neural Networks") and Luo et al. 2017 (ThiNet), without the channel-selection LASSO. Layers are refitted in
topological order on the pruned network's own (already refitted) inputs, so each refit also absorbs the
error of the layers before it; fitting them all at once on the pruned inputs would compensate the same
upstream error twice and blow up. The ridge strength is chosen on a held-out fifth of the rows and a
refit is kept only when it beats the current weights there. Lossy (it changes
the outputs, towards the unpruned network's).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mcopt.analysis.sensitivity import Feed, calib_or_random, capture_activations
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import Sparse, TensorType
from mcopt.pass_manager import ChannelPruningRecord, Pass, PassContext, register_pass


def im2col(x: np.ndarray, node: Node) -> np.ndarray:
    """Rows = output positions (n, ho, wo), columns = (c, kh, kw) — matching an OIHW weight."""
    w = node.inputs[1]
    assert w is not None
    if node.op == "dense":
        return x.reshape(x.shape[0], -1)
    _, _, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = (
        node.attrs["strides"],
        node.attrs["pads"],
        node.attrs["dilations"],
    )
    ho, wo = node.output.shape[2], node.output.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any((pt, pl, pb, pr)) else x
    win = sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :ho, :wo]  # (N, C, Ho, Wo, kh, kw)
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(x.shape[0] * ho * wo, -1)


def _targets(y: np.ndarray, node: Node) -> np.ndarray:
    if node.op == "dense":
        return y.reshape(y.shape[0], -1)
    return y.transpose(0, 2, 3, 1).reshape(-1, y.shape[1])


def refit_node(
    node: Node,
    graph: Graph,
    x: np.ndarray,
    y: np.ndarray,
    *,
    ridge: float = 1e-3,
    max_samples: int = 8192,
    rng: np.random.Generator | None = None,
) -> bool:
    """Refit `node`'s weight and bias so that node(x) ~= y. Returns whether the refit was kept
    (only when it lowers the squared error on the fit data)."""
    w = node.inputs[1]
    assert w is not None
    b = node.inputs[2] if len(node.inputs) > 2 else None
    A = im2col(x.astype(np.float64), node)
    Y = _targets(y.astype(np.float64), node)
    if A.shape[0] > max_samples:
        idx = (rng or np.random.default_rng(0)).choice(A.shape[0], max_samples, replace=False)
        A, Y = A[idx], Y[idx]
    n = A.shape[0]
    if n < 4 or A.shape[1] == 0:
        return False
    perm = (rng or np.random.default_rng(0)).permutation(n)
    fit, val = perm[: max(2, int(0.8 * n))], perm[max(2, int(0.8 * n)) :]
    mx, my = A[fit].mean(0), Y[fit].mean(0)
    Ac, Yc = A[fit] - mx, Y[fit] - my  # centering fits the bias without penalizing it
    evals, Q = np.linalg.eigh(Ac.T @ Ac)
    QtAtY = Q.T @ (Ac.T @ Yc)
    scale = float(evals.mean()) if evals.size else 1.0
    w_old = w.const.reshape(w.shape[0], -1).astype(np.float64)
    b_old = np.zeros(w.shape[0]) if b is None else b.const.astype(np.float64)

    def val_err(wm: np.ndarray, bv: np.ndarray) -> float:
        return float(((A[val] @ wm.T + bv - Y[val]) ** 2).sum())

    best = (val_err(w_old, b_old), None, None)
    for lam in ridge * np.array([1.0, 10.0, 100.0, 1000.0]):
        W = Q @ (QtAtY / (np.maximum(evals, 0.0) + lam * scale)[:, None])  # (features, out)
        bias = my - mx @ W
        e = val_err(W.T, bias)
        if np.isfinite(e) and e < best[0]:
            best = (e, W, bias)
    if best[1] is None:
        return False
    sol = np.concatenate([best[1], best[2][None, :]], axis=0)
    w_new = sol[:-1].T.reshape(w.shape).astype(w.dtype)
    b_new = sol[-1].astype(w.dtype)
    enc = w.type.encoding
    if isinstance(enc, Sparse):  # keep the sparsity pattern's storage honest
        enc = Sparse.of(w_new, enc.index_bits)
    wv = Value(graph.unique_name(f"{w.name}_refit"), TensorType(w.shape, w.dtype, enc), w_new)
    bv = graph.const(b_new, name=f"{node.name}_b_refit")
    node.replace_inputs([node.inputs[0], wv, bv])
    return True


def refit_consumers(
    graph: Graph,
    reference: Graph,
    changed: dict[str, tuple[np.ndarray, np.ndarray]],
    feeds: Sequence[Feed],
    *,
    ridge: float = 1e-3,
    max_samples: int = 8192,
    sequential: bool = True,
    seed: int = 0,
) -> int:
    """Refit every conv2d / dense in `changed` (node name -> (kept input idx, kept output idx)) whose
    input channels were pruned, against `reference` (the unpruned graph). Returns how many changed."""
    rng = np.random.default_rng(seed)
    todo: list[tuple[Node, Node, np.ndarray]] = []
    for node in graph.nodes:
        if node.name not in changed or node.op not in ("conv2d", "dense"):
            continue
        if node.attrs.get("groups", 1) != 1:
            continue
        try:
            ref = reference.find_node(node.name)
        except KeyError:
            continue
        in_keep, out_keep = changed[node.name]
        x_ref = ref.inputs[0]
        assert x_ref is not None
        if len(in_keep) == x_ref.shape[1]:
            continue  # only its output channels went: nothing to compensate
        todo.append((node, ref, out_keep))
    if not todo:
        return 0
    ys = capture_activations(reference, feeds, [r.output for _, r, _ in todo])
    xs: dict[str, np.ndarray] = {}
    if not sequential:  # the unpruned network's inputs, restricted to the kept channels
        xs = capture_activations(reference, feeds, [r.inputs[0] for _, r, _ in todo])  # type: ignore[misc]
    done = 0
    for node, ref, out_keep in todo:
        x_val, x_ref = node.inputs[0], ref.inputs[0]
        assert x_val is not None and x_ref is not None
        if sequential:  # the pruned (and already refitted) network's own inputs
            x = capture_activations(graph, feeds, [x_val])[x_val.name]
        else:
            x = np.take(xs[x_ref.name], changed[node.name][0], axis=1)
        y = np.take(ys[ref.output.name], out_keep, axis=1)
        done += refit_node(node, graph, x, y, ridge=ridge, max_samples=max_samples, rng=rng)
    return done


@register_pass
class RefitAfterPrune(Pass):
    """Least-squares recovery after channel pruning (He et al. 2017 / ThiNet reconstruction).

    Refits every layer whose input channels an earlier ``prune-channels`` in the pipeline removed, on
    calibration data, so that its output matches the unpruned network's (formula in the module doc:
    ridge-regularized least squares on im2col patches). Needs the
    :class:`~mcopt.pass_manager.ChannelPruningRecord` ``prune-channels`` leaves in ``ctx.analyses``;
    does nothing without one. Options: ``ridge``, ``max_samples`` (rows kept per layer),
    ``sequential`` (re-run the graph after each refit so later layers see refitted inputs),
    ``calib_batches``. With ``sequential=False`` every layer is fitted on the unpruned network's
    inputs restricted to the kept channels (one graph run instead of one per layer, no compensation of
    upstream error). The refit is kept only where it lowers the output error on held-out inputs
    (``ctx.heldout``: inputs no pass fits; both figures in the report). Lossy.
    """

    name = "refit-lstsq"
    lossless = False
    ridge: float = 1e-3
    max_samples: int = 8192
    sequential: bool = True
    calib_batches: int = 8

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        rec = ctx.analyses.get(ChannelPruningRecord)
        if rec is None or not rec.nodes:
            ctx.info("refit-lstsq: no prune-channels record with a reference graph; nothing to do")
            return False
        feeds = calib_or_random(graph, ctx.feeds(self.calib_batches), ctx.rng(11), log=ctx.info)
        before = graph.copy()
        err_before = ctx.heldout_error(graph)
        n = refit_consumers(
            graph,
            rec.reference,
            rec.nodes,
            feeds,
            ridge=self.ridge,
            max_samples=self.max_samples,
            sequential=self.sequential,
            seed=ctx.seed,
        )
        err_after = ctx.heldout_error(graph)
        if err_before is not None and err_after is not None:
            ctx.detail("heldout_rel_error", {"without refit": err_before, "with refit": err_after})
            if err_after > err_before:  # the fit did not generalize: keep the pruned weights
                graph.replace_contents(before)
                ctx.info(
                    f"refit-lstsq: refit raised the held-out error {err_before:.3g} -> "
                    f"{err_after:.3g}; kept the weights without it"
                )
                ctx.detail("kept", "without refit")
                return False
        ctx.info(f"refit-lstsq: refitted {n} layer(s)")
        return n > 0
