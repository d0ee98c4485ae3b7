"""Weight sharing: k-means (Deep Compression), product quantization and residual quantization.

Each pass replaces the constant weight of selected conv2d / dense layers by a ``codebook_weight``
node (see :mod:`mcopt.ops.codebook`): integer indices (stored at ``log2 k`` bits each, or sparse
after pruning) + float codebooks; the layer itself is unchanged and reads the decoded weight.

- ``kmeans-share`` (Han, Mao & Dally, "Deep Compression", ICLR 2016, sec. 3): per layer, k-means
  with ``k = 2**bits`` over the weights, *linear* initialization (centroids evenly spaced between
  min and max: the paper's best, it keeps the rare large weights), 8 bits for conv and 5 for fc as
  in the paper. A pruned weight keeps its zeros: 0 is the pinned centroid 0, the surviving weights
  share the other ``k - 1``, and the indices are stored sparse (relative positions, the paper's
  last step before Huffman coding). ``finetune``: the paper retrains the centroids; without
  training, a least-squares update of the centroids (and bias) on calibration activations.
- ``product-quantize`` (Gong et al. 2014): rows split into sub-vectors of length ``sub_dim``, one
  k-means codebook per sub-space.
- ``residual-quantize`` (ibid.): ``stages`` rounds of k-means on the residuals of the previous
  rounds, over sub-vectors of length ``sub_dim``; the weight is the sum of the codewords.

k-means is scipy's ``kmeans2`` (fit on at most ``fit_samples`` points, then every weight assigned to
its nearest centroid with ``scipy.cluster.vq.vq``, or by bisection in 1-D). All lossy.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from scipy.cluster.vq import kmeans2, vq

from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import Sparse, TensorType
from mcopt.ops.codebook import (
    CodebookIndices,
    best_gap_bits,
    index_bits,
    index_dtype,
)
from mcopt.pass_manager import Pass, PassContext, register_pass

INITS = ("linear", "density", "random")


# --- k-means ------------------------------------------------------------------------------------------
def kmeans_1d(
    values: np.ndarray,
    k: int,
    init: str = "linear",
    seed: int = 0,
    fit_samples: int = 200_000,
    iters: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means (scipy ``kmeans2`` from the given init): sorted centroids (<= k) and labels.

    ``init``: 'linear' (evenly spaced in [min, max], Deep Compression's choice), 'density'
    (quantiles of the weight CDF) or 'random' (k sampled weights)."""
    data = np.asarray(values, np.float64).reshape(-1)
    rng = np.random.default_rng(seed)
    sample = data if data.size <= fit_samples else rng.choice(data, fit_samples, replace=False)
    uniq = np.unique(sample)
    if uniq.size <= k:
        cents = uniq
    else:
        if init == "linear":
            start = np.linspace(sample.min(), sample.max(), k)
        elif init == "density":
            start = np.quantile(sample, (np.arange(k) + 0.5) / k)
        elif init == "random":
            start = rng.choice(uniq, k, replace=False)
        else:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty cluster keeps its centroid
            cents, _ = kmeans2(sample[:, None], start[:, None], iter=iters, minit="matrix")
        cents = np.unique(cents[:, 0])
    labels = _nearest_1d(data, cents)
    # one Lloyd update over all weights (the fit may have used a sample)
    sums = np.bincount(labels, weights=data, minlength=cents.size)
    counts = np.bincount(labels, minlength=cents.size)
    cents = np.where(counts > 0, sums / np.maximum(counts, 1), cents)
    order = np.argsort(cents, kind="stable")
    cents = cents[order]
    return cents, _nearest_1d(data, cents)


def _nearest_1d(data: np.ndarray, cents: np.ndarray) -> np.ndarray:
    if cents.size == 1:
        return np.zeros(data.shape, np.int64)
    mids = (cents[1:] + cents[:-1]) / 2
    return np.searchsorted(mids, data).astype(np.int64)


def kmeans_vec(
    data: np.ndarray, k: int, seed: int = 0, fit_samples: int = 65_536, iters: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of row vectors (scipy ``kmeans2``, k-means++ init): centroids (k', d), labels."""
    data = np.asarray(data, np.float64)
    rng = np.random.default_rng(seed)
    sample = (
        data
        if len(data) <= fit_samples
        else data[rng.choice(len(data), fit_samples, replace=False)]
    )
    k = min(k, len(np.unique(sample, axis=0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cents, _ = kmeans2(sample, k, iter=iters, minit="++", seed=rng)
    labels, _ = vq(data, cents)
    return cents, labels.astype(np.int64)


# --- graph surgery -------------------------------------------------------------------------------------
def shareable_layers(
    graph: Graph, ops: tuple[str, ...], skip: tuple[str, ...], min_params: int
) -> list[Node]:
    """conv2d / dense nodes whose weight is a float constant (plain or CSR-pruned)."""
    out = []
    for n in graph.nodes:
        if n.op not in ops or n.name in skip or len(n.inputs) < 2:
            continue
        w = n.inputs[1]
        if w is None or not w.is_const or np.dtype(w.dtype).kind != "f":
            continue
        if w.type.encoding is not None and not isinstance(w.type.encoding, Sparse):
            continue
        if w.type.size < min_params:
            continue
        out.append(n)
    return out


def set_codebook_weight(
    graph: Graph, node: Node, indices: np.ndarray, codebooks: np.ndarray, enc: CodebookIndices
) -> Node:
    """Make ``node`` read its weight from a new ``codebook_weight(indices, codebooks)`` node."""
    w = node.inputs[1]
    assert w is not None
    k = codebooks.shape[2]
    idx = np.ascontiguousarray(indices.astype(index_dtype(k)))
    iv = Value(graph.unique_name(f"{w.name}_idx"), TensorType(idx.shape, idx.dtype.name, enc), idx)
    cv = graph.const(codebooks.astype(w.dtype), name=f"{w.name}_codebook")
    dec = graph.add_node(
        "codebook_weight", [iv, cv], {"shape": tuple(w.shape)}, name=f"{w.name}_shared", before=node
    )
    node.set_input(1, dec.output)
    return dec


def _rel_err(w: np.ndarray, q: np.ndarray) -> float:
    return float(np.linalg.norm(w - q) / max(float(np.linalg.norm(w)), 1e-30))


@register_pass
class KMeansShare(Pass):
    """k-means weight sharing per layer (Deep Compression, sec. 3): ``k = 2**bits`` shared values,
    indices at ``bits`` bits (sparse relative indexing for pruned weights) + a float32 codebook.

    Options: ``bits`` (fc / default, 5 as the paper), ``conv_bits`` (8 as the paper; None = bits),
    ``init`` ('linear' | 'density' | 'random'), ``sparse`` ('auto': relative indexing where a
    pruned weight gets smaller that way | 'never'), ``gap_bits`` (0 = the best per layer; the paper
    uses 8 conv / 5 fc), ``finetune`` (least-squares centroid + bias update on calibration data),
    ``ops``, ``skip``, ``min_params``. Lossy."""

    name = "kmeans-share"
    lossless = False
    bits: int = 5
    conv_bits: int | None = 8
    init: Literal["linear", "density", "random"] = "linear"
    sparse: Literal["auto", "never"] = "auto"
    gap_bits: int = 0
    finetune: bool = False
    ops: tuple[str, ...] = ("conv2d", "dense")
    skip: tuple[str, ...] = ()
    min_params: int = 0
    calib_batches: int = 8

    def __post_init__(self) -> None:
        for b in (self.bits, self.conv_bits or self.bits):
            if not 1 <= b <= 16:
                raise ValueError(f"kmeans-share: bits must be in [1, 16], got {b}")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        layers = shareable_layers(graph, tuple(self.ops), tuple(self.skip), self.min_params)
        reference = graph.copy() if self.finetune else None
        msgs = []
        for n in layers:
            w = n.inputs[1]
            assert w is not None and w.const is not None
            bits = self.conv_bits if (n.op == "conv2d" and self.conv_bits) else self.bits
            k = 1 << bits
            flat = w.const.reshape(-1).astype(np.float64)
            pruned = self.sparse != "never" and bool(np.any(flat == 0))
            if pruned:
                nz = flat != 0
                cents, lab = kmeans_1d(flat[nz], k - 1, self.init, ctx.seed)
                codebook = np.concatenate([[0.0], cents])
                labels = np.zeros(flat.size, np.int64)
                labels[nz] = lab + 1
            else:
                codebook, labels = kmeans_1d(flat, k, self.init, ctx.seed)
            # a layer with fewer distinct weights than 2**bits stores only the centroids it uses
            k = int(codebook.size)
            bits = index_bits(k)
            enc = self._encoding(labels, k, bits, pruned)
            cb = codebook.reshape(1, 1, k, 1)
            set_codebook_weight(graph, n, labels.reshape(1, 1, -1), cb, enc)
            q = codebook[labels]
            msgs.append(f"{n.name} k={k} err {_rel_err(flat, q):.3f}")
        if not layers:
            return False
        if self.finetune and reference is not None:
            from mcopt.analysis.sensitivity import calib_or_random

            feeds = calib_or_random(graph, ctx.feeds(self.calib_batches), ctx.rng(9), log=ctx.info)
            done = finetune_centroids(graph, reference, [n.name for n in layers], feeds)
            ctx.info(f"kmeans-share: least-squares centroid update in {done} layer(s)")
        ctx.info(f"kmeans-share: {len(layers)} layer(s): " + ", ".join(msgs))
        return True

    def _encoding(self, labels: np.ndarray, k: int, bits: int, pruned: bool) -> CodebookIndices:
        dense = CodebookIndices(k=k, bits=bits)
        if not pruned:
            return dense
        if self.gap_bits:
            from mcopt.ops.codebook import sparse_entries

            g = self.gap_bits
            entries = len(sparse_entries(labels, g)[0])
        else:
            g, entries = best_gap_bits(labels, bits)
        sp = CodebookIndices(k=k, bits=bits, gap_bits=g, entries=entries)
        shape = (1, 1, labels.size)
        return sp if sp.storage_bits(shape, "uint8") < dense.storage_bits(shape, "uint8") else dense


def finetune_centroids(
    graph: Graph,
    reference: Graph,
    names: list[str],
    feeds: list,
    max_equations: int = 60_000,
    seed: int = 0,
) -> int:
    """Least-squares update of each shared layer's centroids and bias (the zero centroid of a pruned
    layer stays 0), layer by layer in graph order, on the compressed network's own inputs.

    For output ``j`` at sample ``n``: ``y = sum_c c_c * z[n, j, c] + b_j`` with ``z[n, j, c] =
    sum_{i: idx[j, i] = c} x[n, i]`` (im2col rows for a conv): linear in the centroids, so
    ``min ||Z c + b - y_ref||^2`` over the codebook and the bias is an ordinary least-squares
    problem against the uncompressed layer's outputs. Kept only where it lowers the error."""
    from mcopt.analysis.sensitivity import capture_activations
    from mcopt.passes.recovery import _targets, im2col

    rng = np.random.default_rng(seed)
    done = 0
    for name in names:
        node, ref = graph.find_node(name), reference.find_node(name)
        if node.attrs.get("groups", 1) != 1:
            continue
        x_val, dec_val = node.inputs[0], node.inputs[1]
        dec = dec_val.producer if dec_val is not None else None
        if x_val is None or dec is None or dec.op != "codebook_weight":
            continue
        idx_v, cb_v = dec.inputs[0], dec.inputs[1]
        cb = cb_v.const.astype(np.float64)  # type: ignore[union-attr]
        if cb.shape[:2] != (1, 1) or cb.shape[3] != 1:
            continue
        k = cb.shape[2]
        idx = idx_v.const.reshape(dec_val.shape[0], -1).astype(np.int64)  # type: ignore[union-attr]
        A = im2col(capture_activations(graph, feeds, [x_val])[x_val.name].astype(np.float64), node)
        Y = _targets(capture_activations(reference, feeds, [ref.output])[ref.output.name], node)
        o = idx.shape[0]
        max_rows = max(64, max_equations // o)  # one equation per (row, output)
        if A.shape[0] > max_rows:
            sel = rng.choice(A.shape[0], max_rows, replace=False)
            A, Y = A[sel], Y[sel]
        onehot = np.zeros((o, idx.shape[1], k))
        np.put_along_axis(onehot, idx[:, :, None], 1.0, axis=2)
        Z = np.einsum("ni,oic->noc", A, onehot)  # (N, O, k)
        pinned = bool(cb[0, 0, 0, 0] == 0.0 and np.any(idx == 0))
        free = np.arange(1 if pinned else 0, k)
        # unknowns: free centroids + one bias per output
        n_rows = A.shape[0] * o
        M = np.zeros((n_rows, free.size + o))
        M[:, : free.size] = Z[:, :, free].reshape(n_rows, -1)
        M[np.arange(n_rows), free.size + np.tile(np.arange(o), A.shape[0])] = 1.0
        sol, *_ = np.linalg.lstsq(M, Y.reshape(-1), rcond=None)
        b_in = node.inputs[2] if len(node.inputs) > 2 else None
        b_old = np.zeros(o) if b_in is None else b_in.const.astype(np.float64)  # type: ignore[union-attr]
        old = np.concatenate([cb[0, 0, free, 0], b_old])
        if ((M @ sol - Y.reshape(-1)) ** 2).sum() >= ((M @ old - Y.reshape(-1)) ** 2).sum():
            continue
        new_cb = cb.copy()
        new_cb[0, 0, free, 0] = sol[: free.size]
        dec.set_input(1, graph.const(new_cb.astype(cb_v.dtype), name=f"{cb_v.name}_ls"))  # type: ignore[union-attr]
        bias = graph.const(sol[free.size :].astype(dec_val.dtype), name=f"{name}_b_ls")
        if len(node.inputs) > 2:
            node.set_input(2, bias)
        else:
            node.replace_inputs([x_val, dec_val, bias])
        done += 1
    return done


@register_pass
class ProductQuantize(Pass):
    """Product quantization (Gong et al. 2014): each weight row (conv: a filter flattened as C, kh,
    kw) is cut into sub-vectors of ``sub_dim`` numbers; sub-space ``s`` gets its own k-means
    codebook of ``k = min(2**bits, rows)`` d-vectors (default 4 bits: 16 codewords). Storage
    ``rows * S * bits + S * k * d * 32`` bits; layers where that is not smaller than float32, or whose
    row length is not a multiple of ``sub_dim``, are left alone, each with its reason in the report's
    pass details. Lossy."""

    name = "product-quantize"
    lossless = False
    sub_dim: int = 4
    bits: int = 4
    ops: tuple[str, ...] = ("conv2d", "dense")
    skip: tuple[str, ...] = ()
    min_params: int = 4096

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        changed = False
        msgs = []
        skipped: dict[str, str] = {}
        layers = shareable_layers(graph, tuple(self.ops), tuple(self.skip), self.min_params)
        if not layers:
            ctx.detail(
                "skipped", f"no conv2d / dense with a float weight of >= {self.min_params} params"
            )
        for n in layers:
            w = n.inputs[1]
            assert w is not None and w.const is not None
            mat = w.const.reshape(w.shape[0], -1).astype(np.float64)
            r, dim = mat.shape
            d = self.sub_dim
            k = min(1 << self.bits, r)
            s = dim // d
            bits = index_bits(k)
            if dim % d or r * s * bits + s * k * d * 32 >= mat.size * 32:
                why = (
                    f"row length {dim} is not a multiple of sub_dim {d}"
                    if dim % d
                    else f"{r} rows: codebooks of k={k} {d}-vectors per sub-space would not be "
                    "smaller than the float weight (lower bits or raise sub_dim)"
                )
                skipped[n.name] = why
                ctx.info(f"product-quantize: {n.name} left alone: {why}")
                continue
            cb = np.zeros((1, s, k, d))
            idx = np.zeros((1, s, r), np.int64)
            for si in range(s):
                cents, lab = kmeans_vec(mat[:, si * d : (si + 1) * d], k, seed=ctx.seed + si)
                cb[0, si, : len(cents)] = cents
                idx[0, si] = lab
            set_codebook_weight(graph, n, idx, cb, CodebookIndices(k=k, num_codebooks=s, bits=bits))
            q = (
                np.take_along_axis(cb[0], idx[0][:, :, None], axis=1)
                .transpose(1, 0, 2)
                .reshape(r, dim)
            )
            msgs.append(f"{n.name} S={s} k={k} err {_rel_err(mat, q):.3f}")
            changed = True
        if msgs:
            ctx.info("product-quantize: " + ", ".join(msgs))
        if skipped:
            ctx.detail("skipped", skipped)
        return changed


@register_pass
class ResidualQuantize(Pass):
    """Residual quantization (Gong et al. 2014): the weight cut into sub-vectors of ``sub_dim``
    numbers (along rows); stage 1 k-means on them, stage t on the residuals of stages < t; the
    weight is the sum of one codeword per stage. ``stages * bits / sub_dim`` bits per weight plus
    ``stages * k * sub_dim`` float32 codebook numbers. Lossy."""

    name = "residual-quantize"
    lossless = False
    stages: int = 2
    bits: int = 8
    sub_dim: int = 4
    ops: tuple[str, ...] = ("conv2d", "dense")
    skip: tuple[str, ...] = ()
    min_params: int = 4096

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        changed = False
        msgs = []
        layers = shareable_layers(graph, tuple(self.ops), tuple(self.skip), self.min_params)
        if not layers:
            ctx.detail(
                "skipped", f"no conv2d / dense with a float weight of >= {self.min_params} params"
            )
        for n in layers:
            w = n.inputs[1]
            assert w is not None and w.const is not None
            d = self.sub_dim
            row = w.type.size // w.shape[0]
            if row % d:
                ctx.info(
                    f"residual-quantize: {n.name} left alone (row {row} not a multiple of {d})"
                )
                continue
            vecs = w.const.reshape(-1, d).astype(np.float64)
            k = min(1 << self.bits, len(vecs))
            cb = np.zeros((self.stages, 1, k, d))
            idx = np.zeros((self.stages, 1, len(vecs)), np.int64)
            res = vecs.copy()
            errs = []
            for t in range(self.stages):
                cents, lab = kmeans_vec(res, k, seed=ctx.seed + t)
                cb[t, 0, : len(cents)] = cents
                idx[t, 0] = lab
                res = res - cents[lab]
                errs.append(f"{_rel_err(vecs, vecs - res):.3f}")
            set_codebook_weight(
                graph,
                n,
                idx,
                cb,
                CodebookIndices(k=k, num_codebooks=self.stages, bits=index_bits(k)),
            )
            msgs.append(f"{n.name} err by stage {'/'.join(errs)}")
            changed = True
        if msgs:
            ctx.info("residual-quantize: " + ", ".join(msgs))
        return changed


__all__ = [
    "KMeansShare",
    "ProductQuantize",
    "ResidualQuantize",
    "finetune_centroids",
    "kmeans_1d",
    "kmeans_vec",
    "set_codebook_weight",
]
