"""The rewrite facility: pattern tables, rule classes with check reasons, single-use, fixed point."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt import interpreter
from mcopt.ir import Graph, Value, ttype, verify
from mcopt.rewrite import B, Match, P, RewriteRule, V, W, X, apply_rewrites, match, remove_dead

DOUBLE_RELU = [(P("relu", P("relu", X)), lambda m: m.node(1).output)]


def relu_chain(n: int) -> tuple[Graph, Value]:
    g = Graph("chain")
    v = x = g.add_input("x", ttype((2, 3)))
    for i in range(n):
        v = g.add_node("relu", [v], name=f"r{i}").output
    g.outputs = [v]
    return g, x


def test_table_rewrite_to_fixed_point_keeps_output_name() -> None:
    g, _ = relu_chain(4)
    feed = [np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)]
    ref = interpreter.run(g, feed)
    res = apply_rewrites(g, DOUBLE_RELU)
    verify(g)
    assert res.changed and [n.op for n in g.nodes] == ["relu"]
    assert sum(res.applied.values()) == 3
    assert g.outputs[0].name == "r3"  # graph output names survive rewrites
    np.testing.assert_array_equal(interpreter.run(g, feed)[0], ref[0])


def test_single_use_constraint_and_explain() -> None:
    g = Graph("shared")
    x = g.add_input("x", ttype((4,)))
    r1 = g.add_node("relu", [x], name="r1").output
    r2 = g.add_node("relu", [r1], name="r2").output
    other = g.add_node("add", [r1, r1], name="other").output
    g.outputs = [r2, other]
    res = apply_rewrites(g, DOUBLE_RELU, explain=True)
    assert not res.changed
    reasons = [why for node, _, why in res.rejected if node == "r2"]
    assert reasons and "use(s) outside the match" in reasons[0] and "'other'" in reasons[0]
    # r1 is also a candidate root (a relu): its input is a graph input, not a relu
    assert any(node == "r1" and "graph input" in why for node, _, why in res.rejected)

    # shared=True lifts the constraint (relu(relu(x)) = relu(x) duplicates no work)
    table = [(P("relu", P("relu", X, shared=True)), lambda m: m.node(1).output)]
    res = apply_rewrites(g, table)
    verify(g)
    assert res.changed and [n.name for n in g.nodes] == ["r1", "other"]
    assert g.outputs[0] is r1


def test_graph_output_intermediate_is_not_consumed() -> None:
    g = Graph("outs")
    x = g.add_input("x", ttype((4,)))
    r1 = g.add_node("relu", [x], name="r1").output
    r2 = g.add_node("relu", [r1], name="r2").output
    g.outputs = [r1, r2]
    m, why = match(DOUBLE_RELU[0][0], g.find_node("r2"))
    assert m is None and why is not None and "graph output" in why


class FoldScaleIntoDense(RewriteRule):
    """mul(dense(x, w), c) -> dense(x, w * c) for a constant scalar c."""

    name = "scale-into-dense"
    pattern = P("mul", P("dense", X, W, B, name="d"), V("c", const=True), name="mul")

    def check(self, m: Match) -> str | None:
        if m["c"].type.size != 1:
            return f"scale %{m['c'].name} is not a scalar"
        if m["b"] is not None:
            return "dense has a bias"
        return None

    def rewrite(self, m: Match, graph: Graph) -> Value:
        w = graph.const(m["w"].const * m["c"].const.reshape(()), name="w_scaled")
        return m.add("dense", [m["x"], w]).output


def test_rule_class_check_reasons() -> None:
    g = Graph("rules")
    x = g.add_input("x", ttype((2, 4)))
    w = g.const(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    d1 = g.add_node("dense", [x, w], name="d1").output
    m1 = g.add_node("mul", [d1, g.const(np.full((1,), 2.0, np.float32), "two")], name="m1").output
    d2 = g.add_node("dense", [m1, g.const(np.ones((3, 3), np.float32), "w2")], name="d2").output
    m2 = g.add_node("mul", [d2, g.const(np.ones((1, 3), np.float32), "vec")], name="m2").output
    d3 = g.add_node(
        "dense",
        [m2, g.const(np.ones((3, 3), np.float32), "w3"), g.const(np.zeros(3, np.float32), "b3")],
        name="d3",
    ).output
    m3 = g.add_node("mul", [d3, g.const(np.full((1,), 3.0, np.float32), "three")], name="m3").output
    g.outputs = [m3]
    feed = [np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)]
    ref = interpreter.run(g, feed)[0]
    res = apply_rewrites(g, [FoldScaleIntoDense()], explain=True)
    verify(g)
    assert res.applied == {"scale-into-dense": 1}
    assert [n.op for n in g.nodes] == ["dense", "dense", "mul", "dense", "mul"]
    why = {node: reason for node, _, reason in res.rejected}
    assert why["m2"] == "scale %vec is not a scalar"
    assert why["m3"] == "dense has a bias"
    np.testing.assert_allclose(interpreter.run(g, feed)[0], ref, rtol=1e-6)


def test_capture_consistency_and_optional_inputs() -> None:
    g = Graph("caps")
    a = g.add_input("a", ttype((3,)))
    b = g.add_input("b", ttype((3,)))
    same = g.add_node("add", [a, a], name="same")
    diff = g.add_node("add", [a, b], name="diff")
    g.outputs = [same.output, diff.output]
    pat = P("add", X, X)
    assert match(pat, same)[0] is not None
    m, why = match(pat, diff)
    assert m is None and why is not None and "two different" in why

    x = g.add_input("x", ttype((1, 2)))
    w = g.const(np.ones((2, 2), np.float32), "w")
    nobias = g.add_node("dense", [x, w], name="nobias")
    withbias = g.add_node("dense", [x, w, g.const(np.ones(2, np.float32), "b")], name="withbias")
    m1, _ = match(P("dense", X, W, B), nobias)
    m2, _ = match(P("dense", X, W, B), withbias)
    assert m1 is not None and m1["b"] is None and m1.x is x
    assert m2 is not None and m2["b"] is not None
    m3, why3 = match(P("dense", X, W), withbias)
    assert m3 is None and why3 is not None and "input 2 set" in why3
    m4, why4 = match(P("dense", W, W), nobias)
    assert m4 is None and why4 is not None and "not a constant" in why4


def test_attrs_and_where_filters() -> None:
    g = Graph("attrs")
    x = g.add_input("x", ttype((1, 4)))
    t = g.add_node("transpose", [x], {"perm": (1, 0)}, name="t")
    g.outputs = [t.output]
    assert match(P("transpose", X, attrs={"perm": (1, 0)}), t)[0] is not None
    m, why = match(P("transpose", X, attrs={"perm": (0, 1)}), t)
    assert m is None and why is not None and "perm" in why
    m, why = match(P("transpose", X, where=lambda n: False), t)
    assert m is None and why is not None and "condition" in why
    assert match(P(("relu", "transpose"), V("x", const=False)), t)[0] is not None


def test_remove_dead_cascades_only_from_roots() -> None:
    g = Graph("dead")
    x = g.add_input("x", ttype((4,)))
    a = g.add_node("relu", [x], name="a")
    b = g.add_node("relu", [a.output], name="b")
    c = g.add_node("relu", [x], name="c")  # also dead, but not reachable from the roots
    g.outputs = [x]
    assert remove_dead(g, [b]) == 2
    assert [n.name for n in g.nodes] == ["c"]
    assert remove_dead(g) == 1 and len(g) == 0
    _ = c


def test_pass_results_are_typed_and_reach_the_report() -> None:
    """run() returns a bool or a PassResult (its details in the report row); None is an error
    naming the pass; a pass's per-layer summary (ranks, skip reasons) reaches the report."""
    import mcopt
    from mcopt.errors import PassError
    from mcopt.pass_manager import Pass, PassResult, run_passes
    from mcopt.testing import zoo

    class Noisy(Pass):
        name = "noisy-test-pass"

        def run(self, graph, ctx):  # type: ignore[no-untyped-def]
            ctx.detail("seen", len(graph.nodes))
            return PassResult(False, {"why": "nothing to do"})

    class Sloppy(Pass):
        name = "sloppy-test-pass"

        def run(self, graph, ctx):  # type: ignore[no-untyped-def]
            return None

    g = mcopt.load(zoo.lenet5_path())
    _, rep = run_passes(g, [Noisy()])
    assert rep["noisy-test-pass"].details == {"seen": len(g.nodes), "why": "nothing to do"}
    assert not rep["noisy-test-pass"].changed
    with pytest.raises(PassError, match="sloppy-test-pass.*returned None"):
        run_passes(g, [Sloppy()])
    X, _ = zoo.mnist_test_set()
    calib = [{"input": X[i : i + 1]} for i in range(8)]
    from mcopt.pass_manager import PassContext

    _, rep = run_passes(
        mcopt.load(zoo.lenet5_path()), ["lowrank-dense:param_ratio=0.5"], PassContext(calib=calib)
    )
    d = rep["lowrank-dense"].details
    assert set(d["layers"]) == {"Gemm_7", "Gemm_9"} and all(
        isinstance(r, int) for r in d["layers"].values()
    )
    assert "Gemm_11" in d["skipped"]  # the classifier, with its reason
    assert "Gemm_7" in rep.to_markdown()
