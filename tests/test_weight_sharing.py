"""Weight sharing: codebook op, k-means / product / residual quantization, exact storage, lowering."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt.analysis.cost import graph_stats
from mcopt.interpreter import run
from mcopt.ir import Graph, ttype
from mcopt.ops.codebook import CodebookIndices, decode, dense_from_entries, sparse_entries
from mcopt.pass_manager import PassContext, get_pass


def mlp(seed: int = 0, shapes=((64, 96), (32, 64))) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("mlp")
    h = g.add_input("x", ttype((4, shapes[0][1])))
    for i, (o, k) in enumerate(shapes):
        n = g.add_node(
            "dense",
            [
                h,
                g.const(rng.standard_normal((o, k)).astype(np.float32) / np.sqrt(k), f"w{i}"),
                g.const(np.zeros(o, np.float32), f"b{i}"),
            ],
            name=f"fc{i}",
        )
        h = n.output
    g.outputs = [h]
    return g


@pytest.mark.parametrize("gap_bits", [1, 3, 8])
def test_sparse_entries_roundtrip(gap_bits: int) -> None:
    rng = np.random.default_rng(gap_bits)
    flat = np.where(rng.random(5000) < 0.05, rng.integers(1, 32, 5000), 0)
    gaps, idx = sparse_entries(flat, gap_bits)
    assert gaps.max() < 1 << gap_bits
    assert np.array_equal(dense_from_entries(gaps, idx, flat.size), flat)


def test_decode_layouts() -> None:
    cb = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)  # T=2, S=3, k=4, d=2
    idx = np.random.default_rng(0).integers(0, 4, (2, 3, 5))
    w = decode(idx, cb, (5, 6))
    r, s = 3, 1
    assert np.allclose(w[r, s * 2 : s * 2 + 2], cb[0, s, idx[0, s, r]] + cb[1, s, idx[1, s, r]])


def test_kmeans_share_storage_exact_and_accuracy() -> None:
    g = mlp()
    x = np.random.default_rng(1).standard_normal((4, 96)).astype(np.float32)
    ref = run(g, [x])[0]
    assert get_pass("kmeans-share", bits=4)(g, PassContext())
    decs = g.nodes_of("codebook_weight")
    assert len(decs) == 2
    idx = decs[0].inputs[0]
    assert isinstance(idx.type.encoding, CodebookIndices)
    assert idx.type.nbytes == 64 * 96 * 4 // 8  # 4-bit indices, exactly
    assert decs[0].inputs[1].type.nbytes == 16 * 4  # the codebook: 16 float32
    assert graph_stats(g).weight_bytes == (64 * 96 + 32 * 64) // 2 + 2 * 64 + 64 * 4 + 32 * 4
    got = run(g, [x])[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.25  # 4 bits, linear init


def test_kmeans_share_after_pruning_is_sparse() -> None:
    g = mlp()
    get_pass("prune-weights", sparsity=0.9, scope="global")(g, PassContext())
    w_before = [n.inputs[1].const.copy() for n in g.nodes_of("dense")]
    get_pass("kmeans-share", bits=5)(g, PassContext())
    for n, w in zip(g.nodes_of("dense"), w_before):
        dec = n.inputs[1].producer
        enc = dec.inputs[0].type.encoding
        assert enc.gap_bits > 0  # relative indexing
        wq = decode(dec.inputs[0].const, dec.inputs[1].const, w.shape)
        assert np.array_equal(wq == 0, w == 0)  # zeros stay zeros, the rest stay non-zero
        gaps, _ = sparse_entries(dec.inputs[0].const.reshape(-1), enc.gap_bits)
        assert dec.inputs[0].type.nbytes == -(-len(gaps) * (5 + enc.gap_bits) // 8)


def test_product_and_residual_quantization() -> None:
    g0 = mlp(shapes=((256, 64), (32, 256)))
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    ref = run(g0, [x])[0]
    g = g0.copy()
    assert get_pass("product-quantize", sub_dim=4, bits=6, min_params=0)(g, PassContext())
    dec = g.nodes_of("codebook_weight")[0]
    assert dec.inputs[0].shape == (1, 16, 256) and dec.inputs[1].shape == (1, 16, 64, 4)
    assert np.linalg.norm(run(g, [x])[0] - ref) / np.linalg.norm(ref) < 0.6
    errs = []
    for stages in (1, 2, 3):
        g = g0.copy()
        assert get_pass("residual-quantize", stages=stages, bits=6, sub_dim=2, min_params=0)(
            g, PassContext()
        )
        errs.append(np.linalg.norm(run(g, [x])[0] - ref))
    assert errs[0] > errs[1] > errs[2]  # each stage reduces the error


tvm = pytest.importorskip("tvm")


@pytest.mark.tvm
def test_codebook_compiles_decoded() -> None:
    from mcopt.targets.relax.builder import build

    g = mlp()
    get_pass("prune-weights", sparsity=0.5)(g, PassContext())
    get_pass("kmeans-share", bits=4)(g, PassContext())
    x = np.random.default_rng(3).standard_normal((4, 96)).astype(np.float32)
    np.testing.assert_allclose(build(g).run(x)[0], run(g, [x])[0], rtol=1e-5, atol=1e-5)
