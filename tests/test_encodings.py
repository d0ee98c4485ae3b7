"""Encodings carry their payload: a CSR ``Sparse`` encoding holds the sparsity structure (row
pointers + column indices), the verifier checks it against the constant, and the sparse kernels and
the .mcz format read it instead of re-deriving it."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt.errors import VerifyError
from mcopt.ir import Graph, Sparse, TensorType, verify

RNG = np.random.default_rng(0)


def _pruned(shape: tuple[int, ...], density: float = 0.2) -> np.ndarray:
    w = RNG.standard_normal(shape).astype(np.float32)
    return w * (RNG.random(shape) < density)


def test_sparse_of_holds_the_csr_structure() -> None:
    import scipy.sparse as sp

    w = _pruned((30, 4, 3, 3))
    enc = Sparse.of(w)
    m = sp.csr_matrix(w.reshape(30, -1))
    assert enc.nnz == m.nnz == np.count_nonzero(w) and enc.rows == 30 and enc.index_bits == 8
    assert np.array_equal(enc.indptr, m.indptr) and np.array_equal(enc.indices, m.indices)
    assert np.array_equal(enc.values(w), m.data)
    assert enc.problem(w) is None


def _graph_with(w: np.ndarray, enc: Sparse) -> Graph:
    g = Graph("g")
    x = g.add_input("x", TensorType((2, w.shape[1])))
    wv = g.const(w, "w")
    wv.type = TensorType(w.shape, "float32", enc)
    g.outputs.append(g.add_node("dense", [x, wv]).output)
    return g


def test_the_verifier_rejects_a_stale_structure() -> None:
    w = _pruned((16, 32))
    enc = Sparse.of(w)
    verify(_graph_with(w, enc))
    changed = w.copy()
    changed[np.nonzero(w)[0][0], np.nonzero(w)[1][0]] = 0.0  # a stored weight became zero
    with pytest.raises(VerifyError, match=r"constant %w: its csr<nnz=\d+> does not match"):
        verify(_graph_with(changed, enc))
    with pytest.raises(VerifyError, match="carries no CSR structure"):
        verify(_graph_with(w, Sparse(enc.nnz, enc.rows)))


def test_graph_const_takes_an_encoding_and_checks_it() -> None:
    g = Graph("g")
    w = _pruned((8, 8))
    v = g.const(w, "w", encoding=Sparse.of(w))
    assert isinstance(v.type.encoding, Sparse) and v.type.nbytes < w.nbytes
    with pytest.raises(VerifyError, match="constant 'w2'"):
        g.const(w + 1.0, "w2", encoding=Sparse.of(w))


def test_mcz_round_trip_rebuilds_the_structure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mcopt.huffman import load_compressed, save_compressed

    w = _pruned((16, 32))
    g = _graph_with(w, Sparse.of(w))
    save_compressed(g, tmp_path / "m.mcz")
    back = load_compressed(tmp_path / "m.mcz")
    verify(back)
    enc = back.nodes[0].inputs[1].type.encoding  # type: ignore[union-attr]
    assert isinstance(enc, Sparse) and np.array_equal(enc.indices, Sparse.of(w).indices)


def test_the_sparse_kernel_reads_the_structure_from_the_encoding() -> None:
    pytest.importorskip("tvm")
    from mcopt.targets.cpu.kernels.sparse import bsr_of, to_bsr

    w = _pruned((24, 40))
    a, b = bsr_of(w, (1, 1), Sparse.of(w)), to_bsr(w, (1, 1))
    for f in ("data", "indices", "indptr"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
