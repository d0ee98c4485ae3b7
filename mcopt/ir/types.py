"""Typed values: a tensor type is shape + dtype, plus an optional *encoding* that says how a constant
is physically stored (quantized, fixed point, binary, codebook, sparse). Sizes are computed from the
encoding, so a compressed weight is counted at its real storage size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: dtypes the IR knows, by numpy name -> short name used by the printer.
DTYPES: dict[str, str] = {
    "float32": "f32",
    "float16": "f16",
    "float64": "f64",
    "int8": "i8",
    "uint8": "u8",
    "int16": "i16",
    "int32": "i32",
    "int64": "i64",
    "bool": "bool",
}


def dtype_name(dtype: object) -> str:
    """Normalize a dtype-like to its numpy name, checking that the IR supports it."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(
            f"dtype {name!r} is not supported by the mcopt IR (supported: {sorted(DTYPES)})"
        )
    return name


class Encoding:
    """How a constant tensor is stored. Subclasses (added by the compression passes) override
    :meth:`storage_bits` with their real size."""

    kind: str = "dense"

    def storage_bits(self, shape: tuple[int, ...], dtype: str) -> int:
        return math.prod(shape) * np.dtype(dtype).itemsize * 8

    def describe(self) -> str:
        return self.kind

    def problem(self, array: np.ndarray) -> str | None:
        """Why this encoding does not describe the constant ``array`` (None when it does); the
        verifier calls it for every encoded constant."""
        return None


@dataclass(frozen=True)
class UniformQuant(Encoding):
    """Uniform affine quantization: real = scale * (q - zero_point); per-tensor or per-axis."""

    bits: int
    signed: bool
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    kind: str = field(default="quant", init=False)

    def storage_bits(self, shape: tuple[int, ...], dtype: str) -> int:
        return math.prod(shape) * self.bits + 32 * (len(self.scale) + len(self.zero_point))

    def describe(self) -> str:
        sign = "s" if self.signed else "u"
        where = "tensor" if self.axis is None else f"axis={self.axis}"
        return f"quant<{sign}{self.bits},{where}>"


@dataclass(frozen=True)
class FixedPoint(Encoding):
    """Fixed point Qm.n: real = q * 2**-frac_bits with `bits` total bits (sign included)."""

    bits: int
    frac_bits: int
    kind: str = field(default="fixed", init=False)

    def storage_bits(self, shape: tuple[int, ...], dtype: str) -> int:
        return math.prod(shape) * self.bits

    def describe(self) -> str:
        return f"fixed<{self.bits},{self.frac_bits}>"


@dataclass(frozen=True)
class Binary(Encoding):
    """Binary weights: W ~= alpha * sign(W), one alpha per output channel (XNOR-Net)."""

    num_scales: int
    kind: str = field(default="binary", init=False)

    def storage_bits(self, shape: tuple[int, ...], dtype: str) -> int:
        return math.prod(shape) + 32 * self.num_scales


@dataclass(frozen=True)
class Codebook(Encoding):
    """Shared weights: log2(k)-bit indices into a float codebook of k centroids (per codebook)."""

    k: int
    num_codebooks: int = 1
    kind: str = field(default="codebook", init=False)

    def storage_bits(self, shape: tuple[int, ...], dtype: str) -> int:
        index_bits = max(1, math.ceil(math.log2(self.k)))
        return math.prod(shape) * index_bits + 32 * self.k * self.num_codebooks

    def describe(self) -> str:
        return f"codebook<k={self.k}>"


def csr_index_bits(cols: int) -> int:
    """Smallest of 8 / 16 / 32 bits that holds a column index below `cols`."""
    for bits in (8, 16):
        if cols <= 1 << bits:
            return bits
    return 32


@dataclass(frozen=True)
class Sparse(Encoding):
    """Compressed sparse rows of the weight viewed as a ``(rows, cols)`` matrix (rows = axis 0):
    nnz values + nnz column indices + row pointers.

    The encoding carries the sparsity structure itself (``indptr``, ``indices``: int32 arrays of
    the CSR format, built by :meth:`of`); the values are the constant's nonzeros in that order
    (:meth:`values`), so structure and values cannot disagree. The verifier checks that the
    structure is exactly the constant's nonzero pattern; the sparse kernels and the ``.mcz``
    writer read it from here instead of re-deriving it."""

    nnz: int
    rows: int
    index_bits: int = 32
    kind: str = field(default="sparse", init=False)
    indptr: np.ndarray | None = field(default=None, init=False, compare=False, repr=False)
    indices: np.ndarray | None = field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def of(cls, array: np.ndarray, index_bits: int | None = None) -> Sparse:
        """The CSR encoding (with its structure) of ``array``'s nonzeros."""
        import scipy.sparse as sp

        a = np.asarray(array)
        rows = a.shape[0] if a.ndim else 1
        m = sp.csr_matrix(a.reshape(rows, -1) if a.size else np.zeros((rows, 0), a.dtype))
        m.eliminate_zeros()
        m.sort_indices()
        cols = a.size // max(rows, 1)
        enc = cls(int(m.nnz), rows, index_bits or csr_index_bits(cols))
        object.__setattr__(enc, "indptr", m.indptr.astype(np.int32))
        object.__setattr__(enc, "indices", m.indices.astype(np.int32))
        return enc

    def values(self, array: np.ndarray) -> np.ndarray:
        """The ``nnz`` stored values of ``array`` in CSR order."""
        assert self.indptr is not None and self.indices is not None
        m = np.asarray(array).reshape(self.rows, -1)
        row = np.repeat(np.arange(self.rows), np.diff(self.indptr))
        return m[row, self.indices]

    def problem(self, array: np.ndarray) -> str | None:
        """Why this encoding does not describe ``array`` (None when it does)."""
        if self.indptr is None or self.indices is None:
            return "carries no CSR structure (build the type with Sparse.of(array))"
        a = np.asarray(array)
        if self.rows != (a.shape[0] if a.ndim else 1) or len(self.indptr) != self.rows + 1:
            return f"has {self.rows} rows / {len(self.indptr) - 1} row pointers for shape {a.shape}"
        if len(self.indices) != self.nnz or int(self.indptr[-1]) != self.nnz:
            return f"says nnz={self.nnz} but stores {len(self.indices)} column indices"
        d = np.diff(self.indices.astype(np.int64))
        same_row = np.repeat(np.arange(self.rows), np.diff(self.indptr))
        if np.any(np.diff(self.indptr) < 0) or np.any(d[same_row[1:] == same_row[:-1]] <= 0):
            return "has row pointers or column indices out of order"
        cols = a.size // max(self.rows, 1)
        if self.nnz and (int(self.indices.max()) >= cols or int(self.indices.min()) < 0):
            return f"has a column index outside 0..{cols - 1}"
        if int(np.count_nonzero(a)) != self.nnz or np.any(self.values(a) == 0):
            return (
                f"does not match the constant's nonzeros ({int(np.count_nonzero(a))} nonzeros, "
                f"nnz={self.nnz}): rebuild it with Sparse.of(array) after changing the values"
            )
        return None

    def storage_bits(self, shape: tuple[int, ...], dtype: str) -> int:
        value_bits = np.dtype(dtype).itemsize * 8
        return self.nnz * (value_bits + self.index_bits) + (self.rows + 1) * 32

    def describe(self) -> str:
        return f"csr<nnz={self.nnz}>"


@dataclass(frozen=True)
class BlockedLayout:
    """Blocked ``NCHW[bn]c`` memory layout of a 4-d activation with ``channels`` logical channels
    stored as ``padded`` (a multiple of ``bn``; the extra channels hold finite don't-care values):
    ``x_b[n, c // bn, h, w, c % bn] = x[n, c, h, w]``.

    Only a target-planned graph carries layouts (the CPU planner puts them on the types of the
    values it keeps blocked); shapes stay logical NCHW, so the interpreter and the verifier read a
    planned graph like any other: a layout changes where values live, not what they are."""

    bn: int
    channels: int
    padded: int

    @property
    def is_padded(self) -> bool:
        return self.padded != self.channels

    def blocked_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
        n, _, h, w = shape
        return (n, self.padded // self.bn, h, w, self.bn)

    def __str__(self) -> str:
        return f"NCHW{self.bn}c" + (f"(pad {self.padded})" if self.is_padded else "")


@dataclass(frozen=True)
class TensorType:
    """Static shape (all dims known) and dtype; `encoding` is set only on compressed constants,
    `layout` only on the blocked activations of a target-planned graph."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    encoding: Encoding | None = None
    layout: BlockedLayout | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dim in shape {self.shape}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes this tensor takes: its encoding's storage size, or dense size."""
        bits = (self.encoding or Encoding()).storage_bits(self.shape, self.dtype)
        return (bits + 7) // 8

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(tuple(shape), self.dtype, self.encoding)

    def __str__(self) -> str:
        s = f"{DTYPES[self.dtype]}[{','.join(map(str, self.shape))}]"
        if self.encoding is not None:
            s += f"<{self.encoding.describe()}>"
        if self.layout is not None:
            s += f"@{self.layout}"
        return s


def ttype(shape: tuple[int, ...] | list[int], dtype: object = "float32") -> TensorType:
    """Shorthand constructor."""
    return TensorType(tuple(shape), dtype_name(dtype))
