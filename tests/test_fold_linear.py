"""``fold-linear``: consecutive linear layers (a 1x1 conv after a conv, through a channel concat,
dense after dense) collapse into one when that adds no MACs — checked against the interpreter on
the original graph and against onnxruntime on the exported folded graph."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcopt import interpreter
from mcopt.analysis.cost import graph_stats
from mcopt.ir import Graph, Value, ttype, verify
from mcopt.pass_manager import get_pass
from mcopt.passes import DEFAULT_CLEANUP


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _conv(g: Graph, x: Value, w: np.ndarray, name: str, bias: bool = True, **attrs: object):
    ins = [x, g.const(w, f"{name}_w")]
    if bias:
        ins.append(g.const(np.arange(w.shape[0], dtype=np.float32) * 0.1, f"{name}_b"))
    return g.add_node("conv2d", ins, attrs, name=name).output


def _fold_and_check(g: Graph, seed: int = 0) -> tuple[bool, int, int]:
    """Run the pass; the folded graph must equal the original (interpreter) and onnxruntime on
    the export. (changed, MACs before, MACs after)."""
    rng = np.random.default_rng(seed)
    feed = [_rand(rng, *v.shape) for v in g.inputs]
    before = interpreter.run(g, feed)
    macs0 = graph_stats(g).macs
    changed = get_pass("fold-linear")(g)
    verify(g)
    after = interpreter.run(g, feed)
    for b, a in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    ort = pytest.importorskip("onnxruntime")
    from mcopt.onnx_io import export_model

    sess = ort.InferenceSession(
        export_model(g).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    got = sess.run(None, {v.name: x for v, x in zip(g.inputs, feed)})
    for b, a in zip(before, got):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    return changed, macs0, graph_stats(g).macs


def test_fold_linear_is_in_the_default_cleanup() -> None:
    assert "fold-linear" in DEFAULT_CLEANUP


def test_conv_then_pointwise_conv_fold_with_the_inner_geometry() -> None:
    """3x3 (stride 2, padded) -> 1x1 to fewer channels: one 3x3 conv of the inner's geometry."""
    rng = np.random.default_rng(1)
    g = Graph("chain")
    x = g.add_input("x", ttype((1, 8, 9, 9)))
    y = _conv(g, x, _rand(rng, 16, 8, 3, 3), "inner", strides=(2, 2), pads=(1, 1, 1, 1))
    y = _conv(g, y, _rand(rng, 4, 16, 1, 1), "outer")
    g.outputs = [g.add_node("relu", [y], name="out").output]
    changed, m0, m1 = _fold_and_check(g)
    convs = g.nodes_of("conv2d")
    assert changed and [c.name for c in convs] == ["outer"] and m1 < m0
    assert tuple(convs[0].inputs[1].shape) == (4, 8, 3, 3)
    assert convs[0].attrs["strides"] == (2, 2) and convs[0].attrs["pads"] == (1, 1, 1, 1)


def test_a_bottleneck_a_nonlinearity_or_a_shared_output_stays() -> None:
    rng = np.random.default_rng(2)
    g = Graph("keep")
    x = g.add_input("x", ttype((1, 32, 5, 5)))
    y = _conv(g, x, _rand(rng, 4, 32, 1, 1), "squeeze")  # 32 -> 4 -> 32: folding adds MACs
    y = _conv(g, y, _rand(rng, 32, 4, 1, 1), "expand")
    y = g.add_node("relu", [y], name="act0").output
    a = _conv(g, y, _rand(rng, 8, 32, 1, 1), "a")
    r = g.add_node("relu", [a], name="act").output  # a nonlinearity between
    b = _conv(g, r, _rand(rng, 4, 8, 1, 1), "b")
    c = _conv(g, b, _rand(rng, 2, 4, 1, 1), "c")  # b's output is also a graph output
    g.outputs = [c, b]
    changed, m0, m1 = _fold_and_check(g)
    assert not changed and m0 == m1 and len(g.nodes_of("conv2d")) == 5


def test_fold_through_a_concat_merges_parts_and_orders_blocks() -> None:
    """concat(1x1(x) [8], relu(y) [16], 1x1(x) [8]) -> 1x1: both 1x1 parts fold onto x (their
    columns add up, x appears once) and the 16-channel part comes first; a part whose fold would
    add MACs keeps its conv."""
    rng = np.random.default_rng(3)
    g = Graph("cat")
    x = g.add_input("x", ttype((1, 4, 6, 6)))
    y = g.add_input("y", ttype((1, 16, 6, 6)))
    z = g.add_input("z", ttype((1, 64, 6, 6)))
    p1 = _conv(g, x, _rand(rng, 8, 4, 1, 1), "p1")
    p2 = g.add_node("relu", [y], name="r").output
    p3 = _conv(g, x, _rand(rng, 8, 4, 1, 1), "p3", bias=False)
    p4 = _conv(g, z, _rand(rng, 2, 64, 1, 1), "p4")  # 64 -> 2 -> 12: folding adds MACs
    cat = g.add_node("concat", [p1, p2, p3, p4], {"axis": 1}, name="cat").output
    g.outputs = [_conv(g, cat, _rand(rng, 12, 34, 1, 1), "mix")]
    changed, m0, m1 = _fold_and_check(g)
    assert changed and m1 < m0
    assert sorted(c.name for c in g.nodes_of("conv2d")) == ["mix", "p4"]
    (cat2,) = g.nodes_of("concat")
    assert [v.name for v in cat2.inputs] == ["r", "x", "p4"]
    assert tuple(g.find_node("mix").inputs[1].shape) == (12, 22, 1, 1)


def test_dense_chain_folds() -> None:
    rng = np.random.default_rng(4)
    g = Graph("mlp")
    x = g.add_input("x", ttype((3, 20)))
    h = g.add_node("dense", [x, g.const(_rand(rng, 30, 20), "w1"), g.const(_rand(rng, 30), "b1")])
    y = g.add_node("dense", [h.output, g.const(_rand(rng, 5, 30), "w2")], name="d2").output
    g.outputs = [y]
    changed, m0, m1 = _fold_and_check(g)
    assert changed and m1 < m0 and [n.name for n in g.nodes_of("dense")] == ["d2"]


@settings(max_examples=25, deadline=None)
@given(
    c_in=st.integers(1, 12),
    mids=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    c_out=st.integers(1, 12),
    k=st.sampled_from([1, 3]),
)
def test_random_branches_stay_exact_and_never_add_macs(c_in, mids, c_out, k) -> None:
    """Random widths: a k x k conv per branch, a 1x1 after each, a concat, a 1x1 mix — whatever
    folds, the outputs match and the MACs do not grow."""
    rng = np.random.default_rng(c_in * 97 + c_out * 13 + sum(mids) + k)
    g = Graph("rand")
    x = g.add_input("x", ttype((1, c_in, 5, 5)))
    parts = []
    for i, m in enumerate(mids):
        pad = (k // 2,) * 4
        y = _conv(g, x, _rand(rng, m, c_in, k, k), f"k{i}", pads=pad)
        parts.append(_conv(g, y, _rand(rng, m + 1, m, 1, 1), f"p{i}"))
    cat = g.add_node("concat", parts, {"axis": 1}).output if len(parts) > 1 else parts[0]
    width = sum(m + 1 for m in mids)
    g.outputs = [_conv(g, cat, _rand(rng, c_out, width, 1, 1), "mix")]
    _, m0, m1 = _fold_and_check(g)
    assert m1 <= m0
