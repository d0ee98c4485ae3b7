"""Sparse-weight fp32 CPU kernels for pruned ``dense`` and ``conv2d`` layers (TE + ``s_tir`` schedules).

TVM 0.27's wheel has no ``topi.nn.sparse``, so these are mcopt's own. The pruned weight is a
compile-time constant, converted in numpy (scipy) to a block-sparse row format and passed to the
kernel as three constant arrays; the kernels compute only the stored (nonzero) blocks.

Formats (:func:`to_bsr`): the weight as a matrix ``W (rows, cols)`` (dense: ``(N, K)``; conv:
``(O, C*KH*KW)``) is cut into ``R x C`` blocks and the nonzero blocks kept in BSR:
``data (nnzb, C, R)`` (each block stored column-major, so the ``R`` rows of a block column are one
vector), ``indices (nnzb,)`` block-column numbers, ``indptr (rows/R + 1,)``. ``R = C = 1`` is CSR,
the format of the IR's :class:`~mcopt.ir.types.Sparse` encoding. Blocks pay only where the zeros come
in blocks (block pruning); on unstructured (Han et al. 2015) sparsity an ``R x C`` block is all
zero with probability ``s^(R*C)`` and the stored zeros eat the gain, so CSR is the default there
(:func:`block_fill` measures it).

- :func:`sparse_dense`: ``y[i, n] = act(b[n] + sum_{blocks j of row block n // R} sum_c
  data[j, c, n % R] * x[i, indices[j] * C + c])`` — SpMV/SpMM over the stored blocks; for ``R >= 4``
  the ``R`` rows of a block are a vector FMA with one broadcast of ``x``; for CSR a scalar reduction
  per row (the reduction length varies per row: a TE reduce axis of data-dependent extent).
  Parallel over row blocks.
- :func:`sparse_conv2d`: direct sparse convolution (Park et al., "Faster CNNs with Direct Sparse
  Convolutions and Guided Pruning", ICLR 2017), stride 1: the zero-padded input plane is flattened
  to ``xf[n, c, y * Wp + x]`` and the output computed over ``q = oh * Wp + ow`` (``Wp`` = padded
  width; the ``Wp - OW`` columns per row past the edge are computed and dropped), so every nonzero
  weight ``w[o, c, kh, kw]`` is one AXPY ``acc[n, o, q] += w * xf[n, c, q + kh * Wp + kw]`` over
  contiguous vectors — no im2col buffer. ``chan[j]``, ``off[j] = kh * Wp + kw`` are precomputed
  per nonzero. Loop nest: ``parallel(n, o_block)`` / ``q_outer`` / ``j`` (nonzeros of the row) /
  ``r`` (unrolled) / ``q`` vectors (unrolled, ``<= 12`` accumulators) / lanes (vectorized).

Cost model (:func:`sparse_wins`): the measured crossover table of ``benchmarks/bench_prune.py``;
lowerings use it to choose dense or sparse per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcopt.targets.cpu.kernels.epilogue import Epilogue


# --- formats ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BSR:
    """Block-sparse rows of a ``(rows, cols)`` matrix (padded up to multiples of the block)."""

    data: np.ndarray  # (nnzb, C, R): block j, column c, row r
    indices: np.ndarray  # (nnzb,) int32 block-column index
    indptr: np.ndarray  # (rows_p / R + 1,) int32
    block: tuple[int, int]  # (R, C)
    shape: tuple[int, int]  # logical (rows, cols)

    @property
    def nnzb(self) -> int:
        return int(self.indices.shape[0])

    @property
    def stored(self) -> int:
        """Numbers stored (nonzeros + the zeros inside stored blocks)."""
        return int(self.data.size)


def to_bsr(w2d: np.ndarray, block: tuple[int, int] = (1, 1)) -> BSR:
    """``w2d (rows, cols)`` -> :class:`BSR` with ``block = (R, C)`` (``(1, 1)`` = CSR), via scipy."""
    import scipy.sparse as sp

    r, c = (int(b) for b in block)
    rows, cols = w2d.shape
    rp, cp = -(-rows // r) * r, -(-cols // c) * c
    w = np.zeros((rp, cp), w2d.dtype)
    w[:rows, :cols] = w2d
    m = sp.bsr_matrix(w, blocksize=(r, c))
    m.eliminate_zeros()
    m.sort_indices()
    data = np.ascontiguousarray(m.data.transpose(0, 2, 1)).astype(w2d.dtype)
    if data.shape[0] == 0:  # an all-zero weight: keep one zero block so buffers are non-empty
        data = np.zeros((1, c, r), w2d.dtype)
        indices = np.zeros(1, np.int32)
        indptr = np.zeros(rp // r + 1, np.int32)
        indptr[1:] = 1
        data[:] = 0
    else:
        indices = m.indices.astype(np.int32)
        indptr = m.indptr.astype(np.int32)
    return BSR(data, indices, indptr, (r, c), (rows, cols))


def bsr_of(w2d: np.ndarray, block: tuple[int, int], encoding: Any = None) -> BSR:
    """:func:`to_bsr`, reading the CSR structure from the weight's IR encoding (a
    :class:`~mcopt.ir.types.Sparse` with its ``indptr``/``indices``) when the blocks are
    ``(1, 1)`` instead of deriving it again."""
    enc = encoding
    if block != (1, 1) or enc is None or getattr(enc, "indptr", None) is None or not enc.nnz:
        return to_bsr(w2d, block)
    data = np.ascontiguousarray(enc.values(w2d).reshape(-1, 1, 1)).astype(w2d.dtype)
    return BSR(data, enc.indices, enc.indptr, (1, 1), tuple(w2d.shape))  # type: ignore[arg-type]


def block_fill(w2d: np.ndarray, block: tuple[int, int]) -> float:
    """Fraction of the numbers in the stored ``block``s that are nonzero (1.0 = no stored zeros)."""
    nnz = int(np.count_nonzero(w2d))
    return nnz / max(to_bsr(w2d, block).stored, 1)


def choose_block(w2d: np.ndarray, lanes: int = 8, min_fill: float = 0.75) -> tuple[int, int]:
    """``(lanes, 1)`` blocks when at least ``min_fill`` of their numbers are nonzero (block-pruned
    weights), else CSR ``(1, 1)``."""
    if w2d.shape[0] % lanes == 0 and block_fill(w2d, (lanes, 1)) >= min_fill:
        return (lanes, 1)
    return (1, 1)


# --- dense ---------------------------------------------------------------------------------------
_BIG = 3.0e38  # "no bound" for the clamp of the epilogue


def _bounds(epilogue: Epilogue) -> tuple[float, float]:
    if not epilogue.is_clamp:
        raise ValueError(f"the sparse kernels fuse clamps only, not {epilogue.activation}")
    lo, hi = epilogue.bounds()
    return (-_BIG if lo is None else float(lo)), (_BIG if hi is None else float(hi))


def _csr_dense(M: int, N: int, K: int, NNZ: int, LN: int, LO: Any, HI: Any) -> Any:
    """CSR ``y = clamp(x @ W.T + b)``: per row, ``LN`` partial sums over the row's nonzeros
    (a vector FMA of ``LN`` values with ``LN`` gathered ``x`` entries: independent accumulators
    instead of one serial chain), a scalar tail, then a horizontal sum."""
    from tvm.script import tirx as T

    @T.prim_func
    def func(
        x: T.Buffer((M, K), "float32"),
        data: T.Buffer((NNZ, 1, 1), "float32"),
        indices: T.Buffer((NNZ,), "int32"),
        indptr: T.Buffer((N + 1,), "int32"),
        bias: T.Buffer((N,), "float32"),
        out: T.Buffer((M, N), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        accs = T.alloc_buffer((N, M, LN), "float32")
        for b in T.parallel(N):
            acc = T.decl_buffer((M, LN), "float32", data=accs.data, elem_offset=b * M * LN)
            for i in range(M):
                for ln in T.vectorized(LN):
                    acc[i, ln] = T.float32(0.0)
            for jj in range((indptr[b + 1] - indptr[b]) // LN):
                for i in range(M):
                    for ln in T.vectorized(LN):
                        acc[i, ln] = (
                            acc[i, ln]
                            + data[indptr[b] + jj * LN + ln, 0, 0]
                            * x[i, indices[indptr[b] + jj * LN + ln]]
                        )
            for j in range((indptr[b + 1] - indptr[b]) % LN):
                for i in range(M):
                    acc[i, 0] = (
                        acc[i, 0]
                        + data[indptr[b + 1] - 1 - j, 0, 0] * x[i, indices[indptr[b + 1] - 1 - j]]
                    )
            for i in range(M):
                for ln in range(1, LN):
                    acc[i, 0] = acc[i, 0] + acc[i, ln]
                out[i, b] = T.min(T.max(acc[i, 0] + bias[b], LO), HI)

    return func.with_attr("tirx.is_scheduled", True)


def sparse_dense(
    m: int,
    n: int,
    k: int,
    nnzb: int,
    block: tuple[int, int] = (1, 1),
    epilogue: Epilogue | None = None,
    lanes: int = 8,
    dtype: str = "float32",
) -> Any:
    """A scheduled PrimFunc ``(x (M, K), data (nnzb, C, R), indices, indptr, bias (N,),
    y (M, N))`` for a :class:`BSR` weight of ``nnzb`` blocks: ``y = clamp(x @ W.T + bias)``.

    Written directly as loop-level TIR (TVMScript): TE cannot put a loop *inside* a reduction of
    data-dependent extent, which the vectorized block rows need. Loop nest: ``parallel(row block)``
    / ``j`` (stored blocks of the row) / ``i`` (batch rows) / ``c`` (unrolled) / ``r``
    (vectorized); ``M * R`` accumulators per task. ``epilogue.residual`` is not supported.
    """
    from tvm.script import tirx as T

    epilogue = epilogue or Epilogue(bias=True)
    if epilogue.residual:
        raise ValueError("sparse_dense: a fused residual is not supported")
    R, C = (int(b) for b in block)
    M, N, K, NNZ = int(m), int(n), int(k), max(int(nnzb), 1)
    NB = -(-N // R)
    lo, hi = _bounds(epilogue)
    LO, HI = T.float32(lo), T.float32(hi)

    if R == 1 and C == 1:
        return _csr_dense(M, N, K, NNZ, int(lanes), LO, HI)

    @T.prim_func
    def func(
        x: T.Buffer((M, K), "float32"),
        data: T.Buffer((NNZ, C, R), "float32"),
        indices: T.Buffer((NNZ,), "int32"),
        indptr: T.Buffer((NB + 1,), "int32"),
        bias: T.Buffer((N,), "float32"),
        out: T.Buffer((M, N), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for b in T.parallel(NB):
            acc = T.alloc_buffer((M, R), "float32", scope="local")
            for i in range(M):
                for r in T.vectorized(R):
                    acc[i, r] = T.float32(0.0)
            for j in range(indptr[b + 1] - indptr[b]):
                for i in range(M):
                    for c in T.unroll(C):
                        for r in T.vectorized(R):
                            acc[i, r] = (
                                acc[i, r]
                                + data[indptr[b] + j, c, r] * x[i, indices[indptr[b] + j] * C + c]
                            )
            for i in range(M):
                for r in range(R):
                    if b * R + r < N:
                        out[i, b * R + r] = T.min(T.max(acc[i, r] + bias[b * R + r], LO), HI)

    return func.with_attr("tirx.is_scheduled", True)


def run_dense_numpy(x: np.ndarray, w: BSR, bias: np.ndarray | None = None) -> np.ndarray:
    """numpy BSR reference: ``x @ W.T (+ bias)`` from the BSR arrays (for tests)."""
    r, c = w.block
    rows, cols = w.shape
    wd = np.zeros((len(w.indptr) - 1, r, -(-cols // c) * c), np.float64)
    for b in range(len(w.indptr) - 1):
        for j in range(w.indptr[b], w.indptr[b + 1]):
            wd[b, :, w.indices[j] * c : (w.indices[j] + 1) * c] += w.data[j].T
    y = x.astype(np.float64) @ wd.reshape(-1, wd.shape[2])[:rows, :cols].T
    return y if bias is None else y + bias


# --- conv2d --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparseConvPlan:
    """Geometry of the direct sparse conv: padded width ``wp``, output positions ``qp`` (padded to
    the vector chunk ``qc``), flattened input length ``length``."""

    wp: int
    hp: int
    oh: int
    ow: int
    qc: int
    qp: int
    length: int


def sparse_conv_plan(
    data_shape: Sequence[int], kernel: tuple[int, int], pads: Sequence[int], r: int, lanes: int
) -> SparseConvPlan:
    """The flattened-plane geometry and the vector chunk (``<= 12`` accumulators of ``lanes``)."""
    _, _, h, w = (int(d) for d in data_shape)
    kh, kw = kernel
    pt, pl, pb, pr = (int(p) for p in pads)
    hp, wp = h + pt + pb, w + pl + pr
    oh, ow = hp - kh + 1, wp - kw + 1
    q = oh * wp
    nv_all = -(-q // lanes)
    cap = max(1, 12 // max(r, 1))
    # the chunk of vectors (<= cap accumulators) that wastes the fewest padded positions
    nvec = min(range(1, min(cap, nv_all) + 1), key=lambda v: (-(-nv_all // v) * v, -v))
    qc = nvec * lanes
    qp = -(-q // qc) * qc
    length = qp + (kh - 1) * wp + kw - 1
    return SparseConvPlan(wp, hp, oh, ow, qc, qp, max(length, hp * wp))


def conv_csr_arrays(
    weight: np.ndarray, wp: int, block: tuple[int, int] = (1, 1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(data (nnzb, R), chan, off, indptr)`` of an OIHW weight with ``R x 1`` output-channel
    blocks: ``chan[j]`` = input channel and ``off[j] = kh * wp + kw`` of nonzero block ``j``."""
    o, c, kh, kw = weight.shape
    bsr = to_bsr(weight.reshape(o, c * kh * kw), block)
    col = bsr.indices.astype(np.int64)
    chan = (col // (kh * kw)).astype(np.int32)
    rem = col % (kh * kw)
    off = ((rem // kw) * wp + rem % kw).astype(np.int32)
    data = np.ascontiguousarray(bsr.data[:, 0, :])
    return data, chan, off, bsr.indptr


def sparse_conv2d(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    pads: Sequence[int],
    nnzb: int,
    r: int = 1,
    epilogue: Epilogue | None = None,
    lanes: int = 8,
    dtype: str = "float32",
) -> tuple[Any, SparseConvPlan]:
    """A scheduled PrimFunc ``(x (N, C, H, W), data (nnzb, R), chan, off, indptr, bias (O,),
    y (N, O, OH, OW))`` of the stride-1 direct sparse conv (NCHW in and out), and its plan.

    Stages: the padded, flattened input ``xf`` (parallel over ``n, c``); per task ``(n, o_block)``
    the ``q`` chunks of ``qc`` positions accumulated in registers over the block row's stored
    nonzeros and written to a row buffer; then the valid ``OH x OW`` positions cropped out with the
    bias and clamp of ``epilogue`` (``residual`` is not supported)."""
    from tvm.script import tirx as T

    epilogue = epilogue or Epilogue(bias=True)
    if epilogue.residual:
        raise ValueError("sparse_conv2d: a fused residual is not supported")
    Nb, Cin, H, W = (int(d) for d in data_shape)
    O, _, KH, KW = (int(d) for d in weight_shape)  # noqa: E741
    PT, PL = int(pads[0]), int(pads[1])
    R = int(r)
    plan = sparse_conv_plan(data_shape, (KH, KW), pads, R, lanes)
    WP, HP, OH, OW, QC, QP, L = (
        plan.wp,
        plan.hp,
        plan.oh,
        plan.ow,
        plan.qc,
        plan.qp,
        plan.length,
    )
    NNZ, OB, LN = max(int(nnzb), 1), -(-O // R), int(lanes)
    NV, NQ = QC // LN, QP // QC
    lo, hi = _bounds(epilogue)
    LO, HI = T.float32(lo), T.float32(hi)

    @T.prim_func
    def func(
        x: T.Buffer((Nb, Cin, H, W), "float32"),
        data: T.Buffer((NNZ, R), "float32"),
        chan: T.Buffer((NNZ,), "int32"),
        off: T.Buffer((NNZ,), "int32"),
        indptr: T.Buffer((OB + 1,), "int32"),
        bias: T.Buffer((O,), "float32"),
        out: T.Buffer((Nb, O, OH, OW), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        xf = T.alloc_buffer((Nb, Cin, L), "float32")
        for nc in T.parallel(Nb * Cin):
            for i in range(L):
                yy = i // WP - PT
                xx = i % WP - PL
                xf[nc // Cin, nc % Cin, i] = T.if_then_else(
                    i < HP * WP and 0 <= yy and yy < H and 0 <= xx and xx < W,
                    x[nc // Cin, nc % Cin, yy, xx],
                    T.float32(0.0),
                )
        rows = T.alloc_buffer((Nb * OB, R, QP), "float32")
        accs = T.alloc_buffer((Nb * OB, R, QC), "float32")
        for t in T.parallel(Nb * OB):
            nn = t // OB
            g = t % OB
            row = T.decl_buffer((R, QP), "float32", data=rows.data, elem_offset=t * R * QP)
            acc = T.decl_buffer((R, QC), "float32", data=accs.data, elem_offset=t * R * QC)
            for qo in range(NQ):
                for rr in T.unroll(R):
                    for v in T.unroll(NV):
                        for ln in T.vectorized(LN):
                            acc[rr, v * LN + ln] = T.float32(0.0)
                for j in range(indptr[g + 1] - indptr[g]):
                    for rr in T.unroll(R):
                        for v in T.unroll(NV):
                            for ln in T.vectorized(LN):
                                acc[rr, v * LN + ln] = (
                                    acc[rr, v * LN + ln]
                                    + data[indptr[g] + j, rr]
                                    * xf[
                                        nn,
                                        chan[indptr[g] + j],
                                        qo * QC + off[indptr[g] + j] + v * LN + ln,
                                    ]
                                )
                for rr in T.unroll(R):
                    for v in T.unroll(NV):
                        for ln in T.vectorized(LN):
                            row[rr, qo * QC + v * LN + ln] = acc[rr, v * LN + ln]
            for rr in range(R):
                for yy in range(OH):
                    for xx in range(OW):
                        if g * R + rr < O:
                            out[nn, g * R + rr, yy, xx] = T.min(
                                T.max(row[rr, yy * WP + xx] + bias[g * R + rr], LO), HI
                            )

    return func.with_attr("tirx.is_scheduled", True), plan


def run_conv_numpy(
    x: np.ndarray, weight: np.ndarray, pads: Sequence[int], bias: np.ndarray | None = None
) -> np.ndarray:
    """numpy stride-1 conv (float64) for tests: ``sum_{c,kh,kw} w * shifted(x)``."""
    from numpy.lib.stride_tricks import sliding_window_view

    pt, pl, pb, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = sliding_window_view(xp, weight.shape[2:], axis=(2, 3))  # N C OH OW KH KW
    y = np.einsum("ncyxij,ocij->noyx", win, weight.astype(np.float64))
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


# --- dense vs sparse choice ------------------------------------------------------------------------
#: densities (nonzeros / size) at or below which the sparse kernel beat the dense template in
#: ``benchmarks/bench_prune.py --crossover --resnet-layers`` (znver3, AVX2, 2 shared cores, batch 1):
#: a GEMV whose weight misses the last-level cache (4096x4096, 64 MB) is DRAM-bound and CSR wins
#: from ~65-70% sparsity; cache-resident GEMVs (1024x1024, ResNet-50's 2048x1000 FC) from ~85%;
#: the direct sparse conv (3x3 64@56, 256@14, 1x1 512->2048@7) from ~75-80% with CSR, and
#: block-pruned weights (8x1 BSR / 4x1 conv blocks) from ~50-60%.
CROSSOVER = {"dense_dram": 0.33, "dense_cached": 0.15, "conv": 0.2, "block": 0.4}
LLC_BYTES = 16 * 1024 * 1024


def sparse_wins(
    kind: str, weight: np.ndarray, block: tuple[int, int] = (1, 1), llc_bytes: int = LLC_BYTES
) -> bool:
    """Whether the sparse kernel should replace the dense one for ``weight`` (``kind``: "dense"
    or "conv"), from the measured crossover densities in :data:`CROSSOVER`."""
    density = np.count_nonzero(weight) / max(weight.size, 1)
    if block[0] > 1:
        key = "block"
    elif kind == "dense":
        key = "dense_dram" if weight.size * 4 > llc_bytes else "dense_cached"
    else:
        key = "conv"
    return bool(density <= CROSSOVER[key])


__all__ = [
    "bsr_of",
    "CROSSOVER",
    "sparse_wins",
    "BSR",
    "SparseConvPlan",
    "block_fill",
    "choose_block",
    "conv_csr_arrays",
    "run_conv_numpy",
    "run_dense_numpy",
    "sparse_conv2d",
    "sparse_conv_plan",
    "sparse_dense",
    "to_bsr",
]
