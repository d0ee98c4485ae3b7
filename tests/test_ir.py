"""The IR core: use-def chains under mutation, verifier, printer snapshot, copy, networkx view, types."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt.errors import ShapeError, VerifyError
from mcopt.interpreter import run
from mcopt.ir import (
    Binary,
    Codebook,
    Graph,
    Node,
    Sparse,
    TensorType,
    UniformQuant,
    Value,
    print_graph,
    ttype,
    verify,
)
from mcopt.ir.verify import verify_problems


def small_graph() -> Graph:
    g = Graph("small")
    x = g.add_input("x", ttype([1, 3, 8, 8]))
    rng = np.random.default_rng(0)
    w = g.const(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = g.const(np.zeros(4, np.float32), "b")
    c = g.add_node("conv2d", [x, w, b], {"pads": [1, 1, 1, 1]}, name="conv")
    r = g.add_node("relu", [c.output], name="relu")
    a = g.add_node("add", [r.output, c.output], name="add")
    g.outputs = [a.output]
    return g


def test_use_def_chains_follow_mutation() -> None:
    g = small_graph()
    verify(g)
    conv, relu, add = g.nodes
    assert conv.output.users() == [relu, add]
    assert (add, 1) in conv.output.uses
    # reroute add's second input to the graph input x
    x = g.inputs[0]
    add.set_input(1, relu.output)
    assert (add, 1) not in conv.output.uses and (add, 1) in relu.output.uses
    # replace_all_uses_with moves node uses and graph outputs
    new = g.add_node("relu", [add.output], name="relu2")
    g.replace_all_uses_with(add.output, new.output, except_in=[new])
    assert g.outputs == [new.output]
    assert add.output.uses == [(new, 0)]
    # removing a used node is refused, removing an unused one cleans its uses
    with pytest.raises(ValueError, match="still used"):
        g.remove_node(conv)
    assert x.uses == [(conv, 0)]
    verify(g)


def test_remove_node_clears_uses() -> None:
    g = small_graph()
    conv, relu, add = g.nodes
    g.replace_all_uses_with(add.output, relu.output)
    g.remove_node(add)
    assert all(u is not add for u, _ in relu.output.uses)
    assert all(u is not add for u, _ in conv.output.uses)
    verify(g)


def test_verifier_catches_broken_graphs() -> None:
    g = small_graph()
    conv, relu, add = g.nodes
    # 1. out of topological order
    g.nodes = [relu, conv, add]
    assert any("before it is defined" in p for p in verify_problems(g))
    g.toposort()
    verify(g)
    # 2. stale use-def chain
    relu.output.uses.append((conv, 0))
    with pytest.raises(VerifyError, match="stale use|does not list"):
        verify(g)
    relu.output.uses.pop()
    # 3. wrong output type
    relu.output.type = ttype([1, 4, 7, 7])
    with pytest.raises(VerifyError, match="inference says"):
        verify(g)
    relu.output.type = ttype([1, 4, 8, 8])
    # 4. unknown op
    bogus = Node("frobnicate", [relu.output], [Value("f", ttype([1]))], {}, "bogus")
    g.insert_node(bogus)
    with pytest.raises(VerifyError, match="unknown op 'frobnicate'"):
        verify(g)
    g.remove_node(bogus, force=True)
    # 5. graph output not defined anywhere
    g.outputs = [Value("ghost", ttype([1]))]
    with pytest.raises(VerifyError, match="ghost"):
        verify(g)


def test_bad_node_is_a_shape_error_naming_the_node() -> None:
    g = Graph("bad")
    x = g.add_input("x", ttype([1, 3, 8, 8]))
    w = g.const(np.zeros((4, 5, 3, 3), np.float32), "w")
    with pytest.raises(ShapeError, match="'myconv'.*conv2d"):
        g.add_node("conv2d", [x, w], name="myconv")
    with pytest.raises(VerifyError, match="unknown attribute"):
        g.add_node("relu", [x], {"alpha": 1.0})


def test_printer_snapshot() -> None:
    expected = """graph small(%x: f32[1,3,8,8]) {
  const %w: f32[4,3,3,3]
  const %b: f32[4]
  %conv = conv2d(%x, %w, %b) {dilations=(1,1), groups=1, pads=(1,1,1,1), strides=(1,1)} : f32[1,4,8,8]
  %relu = relu(%conv) : f32[1,4,8,8]
  %add = add(%relu, %conv) : f32[1,4,8,8]
  return %add
}"""
    assert print_graph(small_graph()) == expected
    assert str(small_graph()) == expected  # deterministic across builds


def test_copy_is_independent_and_equal() -> None:
    g = small_graph()
    h = g.copy()
    assert str(h) == str(g)
    verify(h)
    h.remove_node(h.nodes[-1], force=True)
    assert len(g.nodes) == 3
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(g, [x])[0], run(small_graph(), [x])[0])


def test_to_networkx() -> None:
    G = small_graph().to_networkx()
    assert set(G.successors("conv")) == {"relu", "add"}
    assert G.nodes["relu"]["op"] == "relu"
    assert ("input:x", "conv") in G.edges()
    assert ("add", "output:add") in G.edges()


def test_interpreter_checks_inputs() -> None:
    g = small_graph()
    with pytest.raises(ShapeError, match="expected shape"):
        run(g, [np.zeros((1, 3, 4, 4), np.float32)])
    with pytest.raises(ShapeError, match="takes 1 input"):
        run(g, [])
    with pytest.raises(ShapeError, match="unknown input"):
        run(g, {"y": np.zeros((1, 3, 8, 8), np.float32)})


def test_encoded_sizes() -> None:
    shape = (64, 32, 3, 3)
    n = 64 * 32 * 9
    assert TensorType(shape).nbytes == n * 4
    q = TensorType(shape, "float32", UniformQuant(8, True, (0.1,) * 64, (0,) * 64, axis=0))
    assert q.nbytes == n + 64 * 8
    assert TensorType(shape, encoding=Binary(64)).nbytes == (n + 64 * 32) // 8
    assert TensorType(shape, encoding=Codebook(16)).nbytes == (n * 4 + 16 * 32) // 8
    s = TensorType((100, 200), encoding=Sparse(nnz=1000, rows=100))
    assert s.nbytes == (1000 * 64 + 101 * 32) // 8
    assert "quant<s8,axis=0>" in str(q)


def test_replace_nodes_keeps_the_output_values_and_their_consumers() -> None:
    from mcopt.ir import Graph, Node, TensorType, verify

    g = Graph("chain")
    x = g.add_input("x", TensorType((1, 4)))
    a = g.add_node("relu", [x], name="a")
    b = g.add_node("neg", [a.output], name="b")
    c = g.add_node("exp", [b.output], name="c")
    g.outputs.append(c.output)
    kept = b.output
    new = Node("sigmoid", [x], [], {}, "a")
    g.replace_nodes([a, b], new)
    verify(g)
    assert [n.name for n in g.nodes] == ["a", "c"] and new.output is kept
    assert c.inputs[0] is kept and kept.producer is new
