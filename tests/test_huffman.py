"""Huffman coding and the .mcz file: exact round trips and real sizes."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt.errors import ModelLoadError
from mcopt.huffman import (
    code_lengths,
    huffman_decode,
    huffman_encode,
    load_compressed,
    save_compressed,
)
from mcopt.interpreter import run
from mcopt.pass_manager import PassContext, get_pass


@pytest.mark.parametrize("dist", ["geometric", "uniform", "single", "skewed"])
def test_huffman_roundtrip(dist: str) -> None:
    rng = np.random.default_rng(0)
    sym = {
        "geometric": rng.geometric(0.3, 20000) - 1,
        "uniform": rng.integers(0, 256, 5000),
        "single": np.full(100, 7),
        "skewed": np.concatenate([np.zeros(100000, int), np.arange(300)]),
    }[dist]
    lengths = code_lengths(np.bincount(sym))
    data, nbits = huffman_encode(sym, lengths)
    assert np.array_equal(huffman_decode(data, nbits, lengths, sym.size), sym)
    p = np.bincount(sym) / sym.size
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum() * sym.size
    assert entropy <= nbits <= entropy + sym.size + 8  # within 1 bit/symbol of the entropy
    assert len(data) == -(-nbits // 8)


def test_kraft_and_length_limit() -> None:
    counts = np.array([2**i for i in range(40)])  # would need 39-bit codes
    lengths = code_lengths(counts, max_len=16)
    assert lengths.max() <= 16 and (2.0 ** -lengths.astype(float)).sum() <= 1.0


def test_mcz_roundtrip_lenet300(tmp_path) -> None:
    from mcopt.onnx_io import import_model
    from mcopt.testing import zoo

    x, _ = zoo.mnist_test_set()
    g = import_model(str(zoo.lenet300_path()), {"input": [8, 1, 28, 28]})
    sizes = []
    for stage in ("fp32", "prune", "share"):
        if stage == "prune":
            get_pass("prune-weights", sparsity=0.9, scope="global")(g, PassContext())
        if stage == "share":
            get_pass("kmeans-share", bits=5)(g, PassContext())
        path = tmp_path / f"{stage}.mcz"
        st = save_compressed(g, path)
        assert st["file"] == path.stat().st_size
        g2 = load_compressed(path)
        assert str(g2) == str(g)
        for a, b in zip(g.constants(), g2.constants()):
            assert a.type == b.type and a.const.dtype == b.const.dtype
            assert np.array_equal(a.const, b.const)
        assert np.array_equal(run(g2, [x[:8]])[0], run(g, [x[:8]])[0])
        sizes.append(st["file"])
    assert sizes[0] > 1_000_000 and sizes[0] / sizes[2] > 30  # Deep Compression: ~40x


def test_bad_file(tmp_path) -> None:
    p = tmp_path / "x.mcz"
    p.write_bytes(b"nope")
    with pytest.raises(ModelLoadError, match="not an .mcz"):
        load_compressed(p)
