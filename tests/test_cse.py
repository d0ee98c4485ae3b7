"""Common-subexpression elimination (``cse``, in ``cleanup``): merged only where op, inputs and
attributes agree; outputs unchanged (exact)."""

from __future__ import annotations

import numpy as np

from mcopt import interpreter
from mcopt.ir.core import Graph
from mcopt.ir.types import TensorType
from mcopt.pass_manager import PassContext, get_pass
from mcopt.passes import DEFAULT_CLEANUP


def _graph() -> Graph:
    g = Graph("cse")
    x = g.add_input("x", TensorType((1, 4, 6), "float32"))
    f1 = g.add_node("flatten", [x], {"axis": 1}, name="f1").output
    f2 = g.add_node("flatten", [x], {"axis": 1}, name="f2").output  # = f1
    f3 = g.add_node("flatten", [x], {"axis": 2}, name="f3").output  # another axis: kept
    r1 = g.add_node("relu", [f1], name="r1").output
    r2 = g.add_node("relu", [f2], name="r2").output  # = r1 once f2 is f1
    s1 = g.add_node("split", [x], {"axis": 2, "sizes": (2, 4)}, name="s1").outputs
    s2 = g.add_node("split", [x], {"axis": 2, "sizes": (2, 4)}, name="s2").outputs
    a = g.add_node("add", [r1, r2], name="a").output
    b = g.add_node("sub", [s1[1], s2[1]], name="b").output
    out2 = g.add_node("relu", [f1], name="out2").output  # = r1 but a graph output: kept
    g.outputs = [a, g.add_node("reduce_sum", [f3], {"axes": (1,), "keepdims": 0}).output, b, out2]
    return g


def test_cse_merges_equal_nodes_only() -> None:
    g = _graph()
    x = np.random.default_rng(0).standard_normal((1, 4, 6)).astype(np.float32)
    ref = interpreter.run(g, [x])
    assert get_pass("cse").run(g, PassContext())
    names = [n.name for n in g.nodes]
    assert "f2" not in names and "r2" not in names and "s2" not in names
    assert {"f1", "f3", "r1", "s1", "out2"} <= set(names)
    a = g.find_node("a")
    assert a.inputs[0] is a.inputs[1]
    for got, want in zip(interpreter.run(g, [x]), ref):
        np.testing.assert_array_equal(got, want)
    assert not get_pass("cse").run(g, PassContext())  # a fixed point


def test_cse_is_in_cleanup() -> None:
    assert DEFAULT_CLEANUP.index("cse") < DEFAULT_CLEANUP.index("canonical-activations")
