"""``codebook_weight``: a weight stored as indices into shared codebooks (weight sharing).

One op covers the three forms of the lecture's non-uniform quantization:

- *k-means weight sharing* (Han, Mao & Dally, "Deep Compression", ICLR 2016): every weight is one
  of ``k`` shared values, stored as a ``log2 k``-bit index + the float codebook;
- *product quantization* (Gong et al., "Compressing Deep Convolutional Networks using Vector
  Quantization", 2014): each row is split into ``S`` sub-vectors of length ``d``, sub-space ``s``
  has its own codebook of ``k`` d-vectors;
- *residual quantization* (ibid.): ``T`` stages, stage ``t`` quantizes the residual of the stages
  before it; the weight is the sum of the chosen codewords.

Layout: the weight (of attribute ``shape``) viewed as a matrix ``(R, S * d)``; ``indices`` is
integer ``(T, S, R)``, ``codebooks`` float ``(T, S, k, d)``, and
``W[r, s d : (s + 1) d] = sum_t codebooks[t, s, indices[t, s, r]]``. Scalar k-means is
``T = S = d = 1, R = numel``.

Storage (exact): the indices carry a :class:`CodebookIndices` encoding, ``ceil(log2 k)`` bits each
(dense), or Deep Compression's sparse form when the weight was pruned first: the zero weight is the
pinned centroid 0, and only the other entries are stored, each as (relative position, index) with
``gap_bits``-bit position differences and filler entries where a gap does not fit; the codebooks
are a plain float32 constant (counted at 32 bits per number). Lossless given the codes (decoding is
exact); the quantization is the pass's loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcopt.ir.types import Codebook, TensorType
from mcopt.ops._util import bad_ints
from mcopt.ops.schema import Attrs, InTypes, OpSchema, register_op


@dataclass(frozen=True)
class CodebookIndices(Codebook):
    """Storage of codebook indices: ``bits`` per index (dense) or, with ``gap_bits > 0``,
    ``entries * (bits + gap_bits)`` (Deep Compression's relative indexing of the non-zero weights,
    ``entries`` = non-zeros + filler entries). The float codebooks are their own constant, so unlike
    :class:`~mcopt.ir.types.Codebook` this counts the indices only."""

    bits: int = 8
    gap_bits: int = 0
    entries: int = 0
    kind: str = field(default="codebook", init=False)

    def storage_bits(self, shape: tuple[int, ...], dtype: str) -> int:
        if self.gap_bits:
            return self.entries * (self.bits + self.gap_bits)
        return math.prod(shape) * self.bits

    def describe(self) -> str:
        if self.gap_bits:
            return f"codebook<k={self.k},{self.bits}b idx,sparse {self.gap_bits}b gaps>"
        return f"codebook<k={self.k},{self.bits}b idx>"


def index_bits(k: int) -> int:
    """Bits of one index into a codebook of ``k`` entries."""
    return max(1, math.ceil(math.log2(max(k, 2))))


def index_dtype(k: int) -> np.dtype:
    """Smallest unsigned dtype for indices below ``k`` (the IR has uint8, else int16/int32)."""
    if k <= 256:
        return np.dtype(np.uint8)
    return np.dtype(np.int16) if k <= 32768 else np.dtype(np.int32)


# --- Deep Compression relative indexing ------------------------------------------------------------
def sparse_entries(
    flat_idx: np.ndarray, gap_bits: int, zero: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(gaps, indices) streams of the entries != ``zero`` of ``flat_idx`` (Han et al. sec. 3):
    entry ``i`` sits ``gaps[i] + 1`` positions after the previous one (the first after position
    -1); a gap larger than ``2**gap_bits`` is bridged by filler entries ``(2**gap_bits - 1, zero)``."""
    pos = np.flatnonzero(flat_idx != zero)
    diffs = np.diff(pos, prepend=-1)  # >= 1
    span = 1 << gap_bits
    fill = (diffs - 1) // span  # fillers before each entry
    total = len(pos) + int(fill.sum())
    gaps = np.full(total, span - 1, dtype=np.int64)
    idx = np.full(total, zero, dtype=np.int64)
    where = np.arange(len(pos)) + np.cumsum(fill)  # slot of each real entry
    gaps[where] = diffs - 1 - fill * span
    idx[where] = flat_idx[pos]
    return gaps, idx


def dense_from_entries(gaps: np.ndarray, idx: np.ndarray, size: int, zero: int = 0) -> np.ndarray:
    """Inverse of :func:`sparse_entries`: the flat index array of length ``size``."""
    out = np.full(size, zero, dtype=np.int64)
    pos = np.cumsum(np.asarray(gaps, np.int64) + 1) - 1
    out[pos] = idx
    return out


def best_gap_bits(
    flat_idx: np.ndarray, bits: int, zero: int = 0, max_bits: int = 16
) -> tuple[int, int]:
    """(gap_bits, entries) minimizing ``entries * (bits + gap_bits)``."""
    pos = np.flatnonzero(flat_idx != zero)
    diffs = np.diff(pos, prepend=-1)
    best = (0, 0, math.inf)
    for g in range(1, max_bits + 1):
        entries = len(pos) + int(((diffs - 1) >> g).sum())
        cost = entries * (bits + g)
        if cost < best[2]:
            best = (g, entries, cost)
    return best[0], best[1]


# --- the op ------------------------------------------------------------------------------------------
def decode(indices: np.ndarray, codebooks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``W[r, s d:(s+1) d] = sum_t codebooks[t, s, indices[t, s, r]]`` reshaped to ``shape``."""
    t, s, r = indices.shape
    d = codebooks.shape[3]
    idx = indices.astype(np.int64)
    vec = np.zeros((s, r, d), dtype=codebooks.dtype)
    for ti in range(t):
        vec += np.take_along_axis(codebooks[ti], idx[ti][:, :, None], axis=1)  # (S, R, d)
    return np.ascontiguousarray(vec.transpose(1, 0, 2).reshape(shape))


def codebook_weight_ref(
    indices: np.ndarray, codebooks: np.ndarray, *, shape: tuple[int, ...]
) -> np.ndarray:
    return decode(indices, codebooks, tuple(shape))


def _check(t: InTypes, a: Attrs) -> str | None:
    idx, cb = t[0], t[1]
    assert idx is not None and cb is not None
    reason = bad_ints(a, "shape", None, 1)
    if reason:
        return reason
    if np.dtype(idx.dtype).kind not in "iu" or idx.rank != 3:
        return f"indices must be integer (stages, subspaces, rows), got {idx}"
    if np.dtype(cb.dtype).kind != "f" or cb.rank != 4:
        return f"codebooks must be float (stages, subspaces, k, d), got {cb}"
    if cb.shape[:2] != idx.shape[:2]:
        return f"codebooks {cb} and indices {idx} disagree on stages/subspaces"
    numel = math.prod(a["shape"])
    if idx.shape[2] * idx.shape[1] * cb.shape[3] != numel:
        return f"rows x subspaces x d = {idx.shape[2]}x{idx.shape[1]}x{cb.shape[3]} != {numel} weights of shape {a['shape']}"
    return None


register_op(
    OpSchema(
        name="codebook_weight",
        inputs=("indices", "codebooks"),
        attrs={"shape": (1,)},
        check=_check,
        infer=lambda t, a: [TensorType(tuple(a["shape"]), t[1].dtype)],  # type: ignore[union-attr]
        reference=codebook_weight_ref,
        doc=(
            "Shared-weight decode: W.reshape(R, S*d)[r, s*d:(s+1)*d] = sum_t codebooks[t, s, indices[t, s, r]] "
            "(k-means: T=S=d=1; product quantization: S sub-spaces; residual: T stages)."
        ),
    )
)


def const_weight(v: Any) -> np.ndarray | None:
    """The weight array behind ``v``: its constant, or the decoded ``codebook_weight`` of constant
    indices and codebooks (for lowerings / analyses that need a weight as numpy)."""
    if v is None:
        return None
    if v.const is not None:
        return v.const
    p = v.producer
    if p is not None and p.op == "codebook_weight":
        idx, cb = p.inputs[0], p.inputs[1]
        if idx is not None and cb is not None and idx.const is not None and cb.const is not None:
            return decode(idx.const, cb.const, tuple(p.attrs["shape"]))
    return None


__all__ = [
    "CodebookIndices",
    "best_gap_bits",
    "codebook_weight_ref",
    "const_weight",
    "decode",
    "dense_from_entries",
    "index_bits",
    "index_dtype",
    "sparse_entries",
]
