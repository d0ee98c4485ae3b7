"""Pass infrastructure (registry, specs, manager, report, errors) and the lossless cleanup passes."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcopt
from mcopt import interpreter
from mcopt.errors import OptionError, PassError
from mcopt.ir import Graph, Value, ttype, verify
from mcopt.pass_manager import (
    Pass,
    PassContext,
    PassManager,
    get_pass,
    list_passes,
    list_pipelines,
    parse_spec,
    register_pass,
    resolve_passes,
    run_passes,
)
from mcopt.passes import DEFAULT_CLEANUP

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def feed_for(g: Graph, seed: int = 0) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    return [r.standard_normal(v.shape).astype(np.float32) for v in g.inputs]


def assert_lossless(g: Graph, change: Callable[[Graph], object], rtol: float = 1e-5) -> None:
    feed = feed_for(g)
    before = interpreter.run(g, feed)
    change(g)
    verify(g)
    after = interpreter.run(g, feed)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        assert b.shape == a.shape
        scale = max(float(np.max(np.abs(b))), 1e-12)
        assert float(np.max(np.abs(a - b))) / scale <= rtol


def run1(name: str, **opts: object) -> Callable[[Graph], bool]:
    p = get_pass(name, **opts)
    return lambda g: p(g)


def conv_bn(g: Graph, x: Value, c_out: int, *, bias: bool = True, name: str = "conv") -> Value:
    c_in = x.shape[1]
    ins = [x, g.const(rand(c_out, c_in, 3, 3), f"{name}_w")]
    if bias:
        ins.append(g.const(rand(c_out), f"{name}_b"))
    y = g.add_node("conv2d", ins, {"pads": (1, 1, 1, 1)}, name=name).output
    stats = [
        g.const(RNG.uniform(0.5, 2, c_out).astype(np.float32), f"{name}_gamma"),
        g.const(rand(c_out), f"{name}_beta"),
        g.const(rand(c_out), f"{name}_mean"),
        g.const(RNG.uniform(0.5, 2, c_out).astype(np.float32), f"{name}_var"),
    ]
    return g.add_node("batch_norm", [y, *stats], name=f"{name}_bn").output


# --- registry & specs -------------------------------------------------------------------------------------
def test_builtins_and_pipeline_registered() -> None:
    names = list_passes()
    for n in ("dce", "constant-fold", "fold-batch-norm", "remove-identity", "simplify-reshape"):
        assert n in names
    assert list_pipelines()["cleanup"] == DEFAULT_CLEANUP
    assert [p.name for p in resolve_passes("cleanup")] == DEFAULT_CLEANUP
    assert all(get_pass(n).lossless for n in DEFAULT_CLEANUP)


def test_registry_errors() -> None:
    with pytest.raises(
        OptionError, match=r"unknown pass 'no-such-pass'; known passes: .*constant-fold"
    ):
        get_pass("no-such-pass")
    with pytest.raises(
        OptionError,
        match=r"pass 'constant-fold' has no option 'ratio'; valid options: max_growth \(float\), max_bytes \(int\)",
    ):
        get_pass("constant-fold", ratio=0.3)
    with pytest.raises(OptionError, match=r"option 'max_bytes' expects int, got 'lots'"):
        resolve_passes(["constant-fold:max_bytes=lots"])
    with pytest.raises(OptionError, match=r"option 'standalone' expects bool"):
        get_pass("fold-batch-norm", standalone="maybe")
    with pytest.raises(OptionError, match="key=value"):
        resolve_passes(["constant-fold:max_bytes"])
    with pytest.raises(OptionError, match="takes no options"):
        resolve_passes(["cleanup:x=1"])
    with pytest.raises(OptionError, match="kebab-case"):

        @register_pass
        class Bad(Pass):
            name = "Bad_Name"


def test_spec_parsing_typed_options() -> None:
    assert parse_spec("prune-channels:ratio=0.3,skip=[conv1,conv2]") == (
        "prune-channels",
        {"ratio": "0.3", "skip": "[conv1,conv2]"},
    )
    p = resolve_passes(
        ["constant-fold:max_growth=2,max_bytes=100", "fold-batch-norm:standalone=true"]
    )
    assert p[0].max_growth == 2.0 and isinstance(p[0].max_growth, float) and p[0].max_bytes == 100
    assert p[1].standalone is True
    assert p[0].spec() == "constant-fold:max_growth=2.0,max_bytes=100"
    assert get_pass("constant-fold").spec() == "constant-fold"


def test_user_pass_options_without_dataclass_decorator() -> None:
    @register_pass
    class ScaleThings(Pass):
        """A test pass with typed options. Lossless."""

        name = "test-scale-things"
        lossless = True
        ratio: float = 0.5
        layers: tuple[str, ...] = ()
        mode: str | None = None

        def run(self, graph: Graph, ctx: PassContext) -> bool:
            return False

    p = get_pass("test-scale-things", ratio="0.25", layers="[a,b]", mode="none")
    assert (p.ratio, p.layers, p.mode) == (0.25, ("a", "b"), None)
    p2 = resolve_passes(["test-scale-things:ratio=1,layers=[conv1]"])[0]
    assert p2.ratio == 1.0 and p2.layers == ("conv1",)
    with pytest.raises(
        OptionError, match=r"option 'ratio' expects float.*valid options: ratio \(float\), layers"
    ):
        get_pass("test-scale-things", ratio=[1])
    with pytest.raises(OptionError, match="already registered"):

        @register_pass
        class Other(Pass):
            name = "test-scale-things"


def _fold_double_relu_cls(ns: object) -> type:
    @ns.register_pass  # type: ignore[attr-defined]
    class FoldDoubleRelu(ns.Pass):  # type: ignore[name-defined,misc]
        """relu(relu(x)) -> relu(x). Lossless."""

        name = "fold-double-relu"

        def run(self, graph, ctx) -> bool:  # type: ignore[no-untyped-def]
            from mcopt.rewrite import P, X, apply_rewrites

            return apply_rewrites(
                graph, [(P("relu", P("relu", X)), lambda m: m.node(1).output)]
            ).changed

    return FoldDoubleRelu


def _check_double_relu() -> None:
    g = Graph("rr")
    x = g.add_input("x", ttype((1, 4)))
    g.outputs = [g.add_node("relu", [g.add_node("relu", [x]).output]).output]
    g, rep = PassManager(["fold-double-relu", "dce"]).run(g, inputs=feed_for(g))
    assert [n.op for n in g.nodes] == ["relu"]
    assert rep["fold-double-relu"].changed and rep["fold-double-relu"].max_abs_err == 0.0


def test_user_pass_registration_as_in_design() -> None:
    """DESIGN.md's example, with the pass_manager module standing in for the top-level package."""
    import mcopt.pass_manager as ns

    _fold_double_relu_cls(ns)
    assert "fold-double-relu" in list_passes()
    _check_double_relu()


@pytest.mark.skipif(
    not hasattr(mcopt, "register_pass"), reason="mcopt.register_pass not exported yet"
)
def test_user_pass_registration_exact_design_usage() -> None:
    _fold_double_relu_cls(mcopt)
    _check_double_relu()


# --- pass manager -----------------------------------------------------------------------------------------
def small_net() -> Graph:
    g = Graph("net")
    x = g.add_input("x", ttype((1, 3, 6, 6)))
    y = conv_bn(g, x, 4)
    y = g.add_node("relu", [y], name="relu").output
    y = g.add_node("dropout", [y], name="drop").output
    dead = g.add_node("relu", [y], name="unused")
    _ = dead
    y = g.add_node("global_avg_pool", [y], name="gap").output
    y = g.add_node("flatten", [y], name="flat").output
    g.outputs = [g.add_node("identity", [y], name="out").output]
    return g


@register_pass
class BreakGraph(Pass):
    """Deliberately leaves a dangling use (for the tests)."""

    name = "test-break-graph"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        node = graph.nodes[-1]
        graph.nodes.remove(node)  # bypasses the API: the verifier must catch it
        node.graph = None
        return True


@register_pass
class Explode(Pass):
    name = "test-explode"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        raise RuntimeError("boom")


def test_manager_records_report() -> None:
    g = small_net()
    feed = feed_for(g)
    ref = interpreter.run(g, feed)
    logs: list[str] = []
    events: list[tuple[int, int, str, bool]] = []
    ctx = PassContext(log=logs.append, progress=lambda *a: events.append(a))
    out, rep = PassManager(["cleanup"]).run(g, ctx=ctx, inputs=feed)
    assert out is g  # in place by default
    assert [r.name for r in rep.records] == DEFAULT_CLEANUP
    assert rep["fold-batch-norm"].changed and rep["remove-identity"].changed and rep["dce"].changed
    assert not rep["constant-fold"].changed
    assert rep.initial.params == 4 * 3 * 9 + 4 + 16 and rep.final.params == 4 * 3 * 9 + 4
    assert rep["fold-batch-norm"].after.weight_bytes == 4 * rep.final.params
    assert rep.final.bytes_by_dtype == {"float32": 4 * rep.final.params}
    assert rep.initial.macs > rep.final.macs  # the BN's per-element work is gone
    for r in rep.records:
        assert r.seconds >= 0 and r.max_abs_err is not None and r.max_rel_err is not None
        assert r.max_rel_err <= 1e-5
    assert [n.op for n in g.nodes] == ["conv2d", "relu", "global_avg_pool", "flatten"]
    np.testing.assert_allclose(interpreter.run(g, feed)[0], ref[0], rtol=1e-5, atol=1e-6)
    n = len(DEFAULT_CLEANUP)
    assert len(events) == 2 * n and events[-1] == (n - 1, n, "dce", True)
    assert any("dce" in m for m in logs)
    d = json.loads(json.dumps(rep.to_dict()))
    assert (
        d["passes"][DEFAULT_CLEANUP.index("fold-batch-norm")]["name"] == "fold-batch-norm"
        and d["initial"]["params"] == rep.initial.params
    )
    md = rep.to_markdown()
    assert "| fold-batch-norm | yes |" in md and md.startswith("| pass | changed |")
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(rep.table())
    assert "simplify-reshape" in console.export_text()


def test_manager_copy_and_no_inputs() -> None:
    g = small_net()
    text = str(g)
    out, rep = run_passes(g, ["dce"], copy=True)
    assert out is not g and str(g) == text
    assert rep.records[0].max_abs_err is None and rep.records[0].changed
    assert "unused" not in str(out)


def test_manager_names_failing_pass_and_predecessors() -> None:
    g = small_net()
    with pytest.raises(
        PassError,
        match=r"^pass 'test-break-graph' failed after \[dce, constant-fold\]: graph 'net' is invalid: value %flat lists a stale use",
    ):
        PassManager(["dce", "constant-fold", "test-break-graph", "dce"]).run(g)
    with pytest.raises(
        PassError, match=r"^pass 'test-explode' failed after \[\]: RuntimeError: boom$"
    ):
        PassManager(["test-explode"]).run(small_net())


# --- cleanup passes ---------------------------------------------------------------------------------------
def test_dce() -> None:
    g = small_net()
    assert_lossless(g, run1("dce"))
    assert "unused" not in [n.name for n in g.nodes]
    assert not get_pass("dce")(g)


def test_constant_fold_and_size_guard() -> None:
    g = Graph("cf")
    x = g.add_input("x", ttype((1, 4)))
    c = g.add_node(
        "add",
        [g.const(np.ones((1, 4), np.float32), "a"), g.const(np.ones((1, 4), np.float32), "b")],
        name="c",
    )
    t = g.add_node("transpose", [g.const(rand(4, 4), "w")], {"perm": (1, 0)}, name="wt")
    y = g.add_node("add", [x, c.output], name="y").output
    y = g.add_node("dense", [y, t.output], name="fc").output
    big = g.add_node(
        "add",
        [
            g.const(np.ones((1024, 1), np.float32), "col"),
            g.const(np.ones((1, 1024), np.float32), "row"),
        ],
        name="big",
    )
    g.outputs = [
        y,
        g.add_node(
            "add", [x, g.add_node("relu", [g.const(rand(1, 4), "k")], name="rk").output], name="z"
        ).output,
    ]
    g.add_node("relu", [big.output], name="big_user")
    assert_lossless(g, run1("constant-fold"))
    ops = [n.name for n in g.nodes]
    assert "c" not in ops and "wt" not in ops and "rk" not in ops
    assert "big" in ops  # 4 MiB from 8 KiB: not materialized
    assert g.find_node("fc").inputs[1].is_const and g.find_node("fc").inputs[1].name == "wt"
    assert get_pass("constant-fold", max_bytes=1 << 30)(g)
    assert "big" not in [n.name for n in g.nodes]


def test_constant_fold_skips_encoded_constants() -> None:
    from mcopt.ir import TensorType, UniformQuant

    g = Graph("enc")
    x = g.add_input("x", ttype((4,)))
    enc = UniformQuant(bits=8, signed=True, scale=(1.0,), zero_point=(0,))
    q = Value(g.unique_name("q"), TensorType((4,), "float32", enc), const=np.ones(4, np.float32))
    r = g.add_node("relu", [q], name="r").output
    g.outputs = [g.add_node("add", [x, r]).output]
    assert not get_pass("constant-fold")(g)


def test_fold_batch_norm_conv_and_dense() -> None:
    g = Graph("bn")
    x = g.add_input("x", ttype((2, 3, 5, 5)))
    y = conv_bn(g, x, 4, name="c1")
    y = conv_bn(g, g.add_node("relu", [y]).output, 5, bias=False, name="c2")
    y = g.add_node("global_avg_pool", [y]).output
    y = g.add_node("flatten", [y]).output
    y = g.add_node(
        "dense", [y, g.const(rand(6, 5), "fw"), g.const(rand(6), "fb")], name="fc"
    ).output
    stats = [
        g.const(RNG.uniform(0.5, 2, 6).astype(np.float32)),
        g.const(rand(6)),
        g.const(rand(6)),
        g.const(RNG.uniform(0.5, 2, 6).astype(np.float32)),
    ]
    g.outputs = [g.add_node("batch_norm", [y, *stats], {"epsilon": 1e-3}, name="fc_bn").output]
    assert_lossless(g, run1("fold-batch-norm"))
    assert not g.nodes_of("batch_norm")
    assert len(g.find_node("c2").inputs) == 3 and g.find_node("c2").inputs[2] is not None
    assert g.outputs[0].name == "fc_bn"  # the graph output keeps its name


def test_fold_batch_norm_keeps_shared_conv_and_standalone() -> None:
    g = Graph("bn2")
    x = g.add_input("x", ttype((1, 2, 4, 4)))
    y = conv_bn(g, x, 3)
    conv_out = g.find_node("conv").output
    side = g.add_node("relu", [conv_out], name="side").output
    g.outputs = [y, side]
    assert_lossless(g, run1("fold-batch-norm"))
    assert len(g.nodes_of("batch_norm")) == 1  # the conv output has another use
    assert_lossless(g, run1("fold-batch-norm", standalone=True))
    assert not g.nodes_of("batch_norm") and g.nodes_of("mul") and g.nodes_of("add")


def test_fold_bias_add_into_dense_and_conv() -> None:
    """MatMul + Add (scikit-learn / TensorFlow exports) and a bias-less conv + Add: the constant
    joins the bias (either operand order); an add that is not per channel, or of an output
    with another use, stays."""
    g = Graph("biasadd")
    x = g.add_input("x", ttype((2, 3, 5, 5)))
    c = g.add_node("conv2d", [x, g.const(rand(4, 3, 3, 3), "cw")], {"pads": (1,) * 4}, name="c")
    y = g.add_node("add", [c.output, g.const(rand(1, 4, 1, 1), "cb")], name="c_add").output
    y = g.add_node("flatten", [g.add_node("global_avg_pool", [y]).output]).output
    d = g.add_node("dense", [y, g.const(rand(6, 4), "dw"), g.const(rand(6), "db")], name="d")
    y = g.add_node("add", [g.const(rand(1, 6), "d_c"), d.output], name="d_add").output  # swapped
    e = g.add_node("dense", [y, g.const(rand(5, 6), "ew")], name="e")
    y = g.add_node("add", [e.output, g.const(rand(2, 5), "rows")], name="e_add").output
    f = g.add_node("dense", [y, g.const(rand(3, 5), "fw")], name="f")
    side = g.add_node("relu", [f.output], name="side").output
    g.outputs = [g.add_node("add", [f.output, g.const(rand(3), "fb")], name="f_add").output, side]
    assert_lossless(g, run1("fold-bias-add"))
    assert [n.name for n in g.nodes_of("add")] == ["e_add", "f_add"]  # per-row / shared output
    assert len(g.find_node("c").inputs) == 3 and len(g.find_node("d").inputs) == 3


def test_fold_bias_add_also_folds_per_channel_scales() -> None:
    """(conv * s) + t (Paddle's scale ops), mul before or after the add, a dense's column scale and
    a transposed conv's: weights and bias scaled; a scale of a shared output stays."""
    g = Graph("scale")
    x = g.add_input("x", ttype((1, 3, 5, 5)))
    c = g.add_node("conv2d", [x, g.const(rand(4, 3, 3, 3), "cw"), g.const(rand(4), "cb")])
    y = g.add_node("mul", [g.const(np.float32([1.5]), "s"), c.output], name="c_mul").output
    y = g.add_node("add", [y, g.const(rand(1, 4, 1, 1), "t")], name="c_add").output
    y = g.add_node("add", [y, g.const(rand(1, 1, 1, 1), "t2")], name="c_add2").output
    y = g.add_node("mul", [y, g.const(rand(1, 4, 1, 1), "s2")], name="c_mul2").output
    t = g.add_node(
        "conv_transpose2d", [y, g.const(rand(4, 2, 2, 2), "tw")], {"strides": (2, 2)}, name="t"
    )
    y = g.add_node("mul", [t.output, g.const(rand(1, 2, 1, 1), "ts")], name="t_mul").output
    y = g.add_node("flatten", [g.add_node("global_avg_pool", [y]).output]).output
    d = g.add_node("dense", [y, g.const(rand(6, 2), "dw")], name="d")
    y = g.add_node("mul", [d.output, g.const(rand(1, 6), "ds")], name="d_mul").output
    side = g.add_node("relu", [d.output], name="side").output  # d is shared: its mul stays
    g.outputs = [y, side]
    assert_lossless(g, run1("fold-bias-add"))
    assert [n.name for n in g.nodes_of("mul")] == ["d_mul"] and not g.nodes_of("add")


def test_fold_bias_add_then_the_batch_norm_after_it() -> None:
    """conv -> Add (bias) -> BN (Paddle2ONNX's transposed convs): once the add is folded the BN
    folds too, in the same pass."""
    g = Graph("add_bn")
    x = g.add_input("x", ttype((1, 3, 5, 5)))
    c = g.add_node("conv_transpose2d", [x, g.const(rand(3, 4, 2, 2), "tw")], {"strides": (2, 2)})
    y = g.add_node("add", [c.output, g.const(rand(1, 4, 1, 1), "b")]).output
    stats = [g.const(RNG.uniform(0.5, 2, 4).astype(np.float32), n) for n in ("s", "v")]
    y = g.add_node(
        "batch_norm", [y, stats[0], g.const(rand(4), "t"), g.const(rand(4), "m"), stats[1]]
    )
    g.outputs = [y.output]
    assert_lossless(g, run1("fold-bias-add"))
    assert [n.op for n in g.nodes] == ["conv_transpose2d"]


def test_remove_identity_drops_same_dtype_casts() -> None:
    g = Graph("cast")
    x = g.add_input("x", ttype((2, 3)))
    y = g.add_node("cast", [x], {"to": "float32"}, name="same").output
    y = g.add_node("relu", [y]).output
    g.outputs = [g.add_node("cast", [y], {"to": "float16"}, name="half").output]
    assert_lossless(g, run1("remove-identity"))
    assert [n.name for n in g.nodes_of("cast")] == ["half"]


def test_fold_batch_norm_matches_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    try:
        from mcopt.onnx_io import export_model
    except ImportError:
        pytest.skip("mcopt.onnx_io not available")
    g = Graph("bnort")
    x = g.add_input("x", ttype((1, 3, 6, 6)))
    g.outputs = [g.add_node("relu", [conv_bn(g, x, 8)], name="out").output]
    feed = feed_for(g)
    sess = ort.InferenceSession(
        export_model(g).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    ref = sess.run(None, {"x": feed[0]})[0]
    get_pass("fold-batch-norm")(g)
    verify(g)
    assert not g.nodes_of("batch_norm")
    np.testing.assert_allclose(interpreter.run(g, feed)[0], ref, rtol=1e-4, atol=1e-5)
    sess2 = ort.InferenceSession(
        export_model(g).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(sess2.run(None, {"x": feed[0]})[0], ref, rtol=1e-4, atol=1e-5)


def test_remove_identity() -> None:
    g = Graph("ident")
    x = g.add_input("x", ttype((2, 3)))
    a = g.add_node("identity", [x], name="a").output
    b = g.add_node("relu", [a], name="b").output
    c = g.add_node("dropout", [b], {"ratio": 0.3}, name="c").output
    d = g.add_node("identity", [c], name="d").output
    g.outputs = [d, g.add_node("identity", [x], name="passthrough").output]
    assert_lossless(g, run1("remove-identity"))
    assert [n.name for n in g.nodes] == ["b", "passthrough"]  # output = input is kept as a node
    assert [v.name for v in g.outputs] == ["d", "passthrough"]


def test_simplify_reshape() -> None:
    g = Graph("views")
    x = g.add_input("x", ttype((2, 3, 4)))
    r1 = g.add_node("reshape", [x], {"shape": (6, 4)}, name="r1").output
    r2 = g.add_node("reshape", [r1], {"shape": (2, 12)}, name="r2").output
    same = g.add_node("flatten", [r2], name="same").output  # (2, 12) -> (2, 12)
    t1 = g.add_node("transpose", [x], {"perm": (2, 0, 1)}, name="t1").output
    t2 = g.add_node("transpose", [t1], {"perm": (1, 2, 0)}, name="t2").output  # identity overall
    t3 = g.add_node("transpose", [x], {"perm": (1, 0, 2)}, name="t3").output
    t4 = g.add_node("transpose", [t3], {"perm": (0, 2, 1)}, name="t4").output
    u = g.add_node("unsqueeze", [x], {"axes": (0,)}, name="u").output
    f = g.add_node("flatten", [u], {"axis": 2}, name="f").output
    y = g.add_node("relu", [t2], name="y").output
    g.outputs = [same, y, t4, f]
    assert_lossless(g, run1("simplify-reshape"))
    ops = {n.name: n for n in g.nodes}
    assert "r1" not in ops and "same" not in ops and ops["r2"].inputs[0] is x
    assert "t1" not in ops and "t2" not in ops and ops["y"].inputs[0] is x
    (t,) = [n for n in g.nodes if n.op == "transpose"]
    assert t.inputs[0] is x and t.attrs["perm"] == (1, 2, 0)
    (r,) = [n for n in g.nodes if n.inputs[0] is x and n.op == "reshape" and n.name != "r2"]
    assert r.output.name == "f"
    assert [v.name for v in g.outputs] == ["same", "y", "t4", "f"]


def test_lone_flatten_after_global_pool_is_kept() -> None:
    g = Graph("gap")
    x = g.add_input("x", ttype((1, 8, 4, 4)))
    y = g.add_node("global_avg_pool", [x]).output
    g.outputs = [g.add_node("flatten", [y], name="flat").output]
    assert not get_pass("simplify-reshape")(g)
    assert [n.op for n in g.nodes] == ["global_avg_pool", "flatten"]


# --- printer snapshots ------------------------------------------------------------------------------------
def snapshot_graph() -> Graph:
    g = Graph("snap")
    x = g.add_input("x", ttype((1, 2, 4, 4)))
    w = g.const(np.ones((2, 2, 1, 1), np.float32), "w")
    y = g.add_node("conv2d", [x, w], name="conv").output
    ones, zeros = g.const(np.ones(2, np.float32), "g"), g.const(np.zeros(2, np.float32), "z")
    y = g.add_node("batch_norm", [y, ones, zeros, zeros, ones], name="bn").output
    y = g.add_node("dropout", [y], name="drop").output
    y = g.add_node("reshape", [y], {"shape": (1, 32)}, name="r1").output
    y = g.add_node("reshape", [y], {"shape": (1, 2, 16)}, name="r2").output
    g.add_node("relu", [y], name="dead")
    g.outputs = [g.add_node("relu", [y], name="out").output]
    return g


def test_printer_snapshot_before_and_after_cleanup() -> None:
    g = snapshot_graph()
    assert (
        str(g)
        == """graph snap(%x: f32[1,2,4,4]) {
  const %w: f32[2,2,1,1]
  const %g: f32[2]
  const %z: f32[2]
  %conv = conv2d(%x, %w) {dilations=(1,1), groups=1, pads=(0,0,0,0), strides=(1,1)} : f32[1,2,4,4]
  %bn = batch_norm(%conv, %g, %z, %z, %g) {epsilon=1e-05} : f32[1,2,4,4]
  %drop = dropout(%bn) {ratio=0.5} : f32[1,2,4,4]
  %r1 = reshape(%drop) {shape=(1,32)} : f32[1,32]
  %r2 = reshape(%r1) {shape=(1,2,16)} : f32[1,2,16]
  %dead = relu(%r2) : f32[1,2,16]
  %out = relu(%r2) : f32[1,2,16]
  return %out
}"""
    )
    assert_lossless(g, lambda g: PassManager(["cleanup"]).run(g))
    assert (
        str(g)
        == """graph snap(%x: f32[1,2,4,4]) {
  const %w_bn: f32[2,2,1,1]
  const %conv_b_bn: f32[2]
  %conv = conv2d(%x, %w_bn, %conv_b_bn) {dilations=(1,1), groups=1, pads=(0,0,0,0), strides=(1,1)} : f32[1,2,4,4]
  %r2 = reshape(%conv) {shape=(1,2,16)} : f32[1,2,16]
  %out = relu(%r2) : f32[1,2,16]
  return %out
}"""
    )


# --- random graphs through the cleanup pipeline -----------------------------------------------------------
LAYERS = st.sampled_from(
    ["relu", "identity", "dropout", "add", "conv_bn", "conv_bn_shared", "reshape2", "transpose2",
     "dup"]
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(layers=st.lists(LAYERS, min_size=1, max_size=7), seed=st.integers(0, 2**16))
def test_cleanup_pipeline_is_lossless_on_random_graphs(layers: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)

    def c(*shape: int, lo: float | None = None) -> Value:
        a = rng.uniform(lo, 2.0, shape) if lo is not None else rng.standard_normal(shape)
        return g.const(a.astype(np.float32))

    g = Graph("rand")
    x = g.add_input("x", ttype((1, 3, 4, 4)))
    v, prev = x, x
    extra: list[Value] = []
    for kind in layers:
        cur = v
        if kind in ("relu", "identity", "dropout"):
            v = g.add_node(kind, [v]).output
        elif kind == "add":
            v = g.add_node("add", [v, prev]).output
        elif kind == "dup":  # the same computation twice (cse merges them)
            a, b = (g.add_node("relu", [v]).output for _ in range(2))
            v = g.add_node("add", [a, b]).output
        elif kind.startswith("conv_bn"):
            y = g.add_node("conv2d", [v, c(3, 3, 3, 3), c(3)], {"pads": (1, 1, 1, 1)}).output
            if kind == "conv_bn_shared":
                extra.append(g.add_node("relu", [y]).output)
            v = g.add_node("batch_norm", [y, c(3, lo=0.5), c(3), c(3), c(3, lo=0.5)]).output
        elif kind == "reshape2":
            v = g.add_node("reshape", [v], {"shape": (1, 48)}).output
            v = g.add_node("reshape", [v], {"shape": (1, 3, 4, 4)}).output
        else:
            v = g.add_node("transpose", [v], {"perm": (0, 2, 3, 1)}).output
            v = g.add_node("transpose", [v], {"perm": (0, 3, 1, 2)}).output
        prev = cur
    g.outputs = [v, *extra]
    feed = feed_for(g, seed)
    ref = interpreter.run(g, feed)
    g2, rep = PassManager(["cleanup"]).run(g, inputs=feed, copy=True)
    verify(g2)
    # an identity is kept only where it would otherwise turn a graph output into the graph input
    for n in g2.nodes_of("identity", "dropout"):
        assert n.inputs[0] in g2.inputs and n.output in g2.outputs
    assert all(r.max_rel_err is not None and r.max_rel_err <= 1e-5 for r in rep.records)
    for a, b in zip(interpreter.run(g2, feed), ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max())))
    assert len(g2) <= len(g)


@register_pass
class Perturb(Pass):
    """Claims to be lossless but is not (for the tests)."""

    name = "test-perturb"
    lossless = True

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        node = graph.nodes[0]
        w = node.inputs[1]
        assert w is not None and w.const is not None
        node.set_input(1, graph.const(w.const * 1.01, "w_perturbed"))
        return True


def test_error_measured_against_original_and_progress_display() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from mcopt.pass_manager import rich_progress_callback

    g = Graph("p")
    x = g.add_input("x", ttype((1, 4)))
    g.outputs = [g.add_node("dense", [x, g.const(rand(3, 4), "w")], name="fc").output]
    logs: list[str] = []
    with Progress(console=Console(file=io.StringIO())) as progress:
        ctx = PassContext(
            calib=[{"x": rand(1, 4)}], log=logs.append, progress=rich_progress_callback(progress)
        )
        _, rep = PassManager(["test-perturb", "test-perturb", "dce"], measure_error=True).run(
            g, ctx
        )
        assert progress.tasks[0].completed == 3
    errs = [r.max_rel_err for r in rep.records]
    assert errs[0] == pytest.approx(0.01, rel=1e-3) and errs[1] == pytest.approx(0.0201, rel=1e-3)
    assert errs[2] == errs[1]  # measured against the original graph, not the previous pass
    assert any("claims to be lossless" in m for m in logs)
