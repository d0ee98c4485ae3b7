"""``winograd_conv2d`` (F(2x2,3x3), F(4x4,3x3)) on mcopt's one Winograd kernel, the blocked one, in
both builds: the plain lowering (NCHW in and out around the blocked kernel) and the planned default
build (a ``fused_conv2d`` with ``kernel="winograd"``), against direct convolution and the reference
interpreter, with C_in != C_out and C_in == C_out (non-symmetric weights: a swapped (C_in, C_out)
layout of U would go unnoticed with symmetric ones)."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt import interpreter  # noqa: E402
from mcopt.ir import Graph, TensorType, verify  # noqa: E402
from mcopt.ops.nn import conv2d_ref  # noqa: E402
from mcopt.ops.winograd import winograd_weight  # noqa: E402
from mcopt.pass_manager import PassContext, get_pass  # noqa: E402

pytestmark = pytest.mark.tvm
RNG = np.random.default_rng(0)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def _winograd_graph(x_shape, u: np.ndarray, b: np.ndarray, m: int, pads) -> Graph:  # type: ignore[no-untyped-def]
    g = Graph("wino")
    x = g.add_input("x", TensorType(x_shape, "float32"))
    node = g.add_node(
        "winograd_conv2d", [x, g.const(u, "u"), g.const(b, "b")], {"m": m, "pads": pads}
    )
    g.outputs.append(g.add_node("relu", [node.output]).output)
    verify(g)
    return g


@pytest.mark.parametrize("pipeline", ["mcopt-plain", "mcopt"])
@pytest.mark.parametrize(
    "m,shape,o,pads",
    [
        (2, (2, 6, 8, 8), 12, (1, 1, 1, 1)),  # C_in != C_out, batch 2, exact tiles, padded blocks
        (2, (1, 8, 7, 9), 8, (1, 1, 1, 1)),  # C_in == C_out, ragged edge tiles
        (4, (1, 16, 9, 11), 16, (0, 1, 2, 0)),  # C_in == C_out, asymmetric pads
        (4, (1, 4, 8, 8), 12, (1, 1, 1, 1)),  # C_in != C_out
    ],
)
def test_kernel_matches_direct_conv(pipeline: str, m: int, shape, o: int, pads) -> None:
    from mcopt.targets import build

    x = RNG.standard_normal(shape).astype(np.float32)
    w = RNG.standard_normal((o, shape[1], 3, 3)).astype(np.float32)
    if o == shape[1]:
        assert not np.allclose(w, w.transpose(1, 0, 2, 3))  # non-symmetric in (C_in, C_out)
    b = RNG.standard_normal(o).astype(np.float32)
    ref = np.maximum(conv2d_ref(x, w, b, strides=(1, 1), pads=pads, dilations=(1, 1), groups=1), 0)
    g = _winograd_graph(shape, winograd_weight(w, m), b, m, pads)
    got = build(g, "cpu", pipeline=pipeline).run(x)[0]
    assert rel(got, ref) < (1e-5 if m == 2 else 1e-4)


def test_swapped_weight_layout_is_caught() -> None:
    """The (alpha, alpha, C_out, C_in) layout TOPI writes gives a wrong result when C_in == C_out."""
    from mcopt.targets import build

    x = RNG.standard_normal((1, 8, 6, 6)).astype(np.float32)
    w = RNG.standard_normal((8, 8, 3, 3)).astype(np.float32)
    b = np.zeros(8, np.float32)
    ref = np.maximum(
        conv2d_ref(x, w, b, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1), 0
    )
    u = winograd_weight(w, 2)
    good = _winograd_graph(x.shape, u, b, 2, (1, 1, 1, 1))
    wrong = _winograd_graph(
        x.shape, np.ascontiguousarray(u.transpose(0, 1, 3, 2)), b, 2, (1, 1, 1, 1)
    )
    assert rel(build(good, "cpu", pipeline="mcopt-plain").run(x)[0], ref) < 1e-5
    assert rel(build(wrong, "cpu", pipeline="mcopt-plain").run(x)[0], ref) > 0.1


def test_build_winograd_graph_matches_interpreter() -> None:
    from mcopt.targets import build

    g = Graph("wino")
    x = g.add_input("x", TensorType((1, 8, 10, 10), "float32"))
    w1 = g.const(RNG.standard_normal((8, 8, 3, 3)).astype(np.float32) / 8, "w1")
    h = g.add_node("conv2d", [x, w1, g.const(RNG.standard_normal(8).astype(np.float32))],
                   {"pads": (1, 1, 1, 1)}, name="c1").output  # fmt: skip
    h = g.add_node("relu", [h], name="r1").output
    w2 = g.const(RNG.standard_normal((12, 8, 3, 3)).astype(np.float32) / 8, "w2")
    g.outputs.append(g.add_node("conv2d", [h, w2], {"pads": (1, 1, 1, 1)}, name="c2").output)
    xin = RNG.standard_normal((1, 8, 10, 10)).astype(np.float32)
    ref = interpreter.run(g, [xin])[0]
    assert get_pass("winograd", tile=2).run(g, PassContext())
    verify(g)
    assert [n.op for n in g.nodes].count("winograd_conv2d") == 2
    compiled = build(g, "cpu")
    assert compiled.planned is not None
    assert [n.attrs["kernel"] for n in compiled.planned.nodes if n.op == "fused_conv2d"] == [
        "winograd",
        "winograd",
    ]
    got = compiled.run(xin)[0]
    assert rel(got, interpreter.run(g, [xin])[0]) < 1e-5
    assert rel(got, ref) < 1e-5


def test_only_if_faster_reads_the_build_s_measurement_table(tmp_path) -> None:
    import json

    from mcopt.targets.cpu.kernels import host_target
    from mcopt.targets.cpu.kernels.winograd_nchwc import measurement_key

    g = Graph("two")
    x = g.add_input("x", TensorType((1, 8, 10, 10), "float32"))
    w1 = g.const(RNG.standard_normal((8, 8, 3, 3)).astype(np.float32), "w1")
    h = g.add_node("conv2d", [x, w1], {"pads": (1, 1, 1, 1)}, name="c1").output
    w2 = g.const(RNG.standard_normal((24, 8, 3, 3)).astype(np.float32), "w2")
    g.outputs.append(g.add_node("conv2d", [h, w2], {"pads": (1, 1, 1, 1)}, name="c2").output)
    target = host_target()
    k1 = measurement_key((1, 8, 10, 10), 8, (1, 1, 1, 1), target)[0]
    k2 = measurement_key((1, 8, 10, 10), 24, (1, 1, 1, 1), target)[0]
    assert k1 != k2
    table = {  # c1: direct faster; c2: Winograd faster (no measurement needed: both cached)
        k1: {"direct": 1.0, "f2": 2.0},
        k2: {"direct": 2.0, "f2": 1.0},
    }
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    from mcopt.targets.services import services_for

    no_target = PassContext()
    get_pass("winograd", tile=2, only_if_faster=True, table=str(path)).run(g.copy(), no_target)
    assert "needs a target" in no_target.summary.skipped["c1"]
    ctx = PassContext(target=services_for("cpu"))
    assert get_pass("winograd", tile=2, only_if_faster=True, table=str(path)).run(g, ctx)
    assert [r.layer for r in ctx.summary.layers] == ["c2"]
    assert "direct conv faster" in ctx.summary.skipped["c1"]
    assert json.loads(path.read_text()) == table  # nothing had to be measured


@pytest.mark.parametrize("act", ["hard_swish", "hard_sigmoid", "silu", "gelu"])
def test_winograd_kernel_fuses_mobile_activations(act: str) -> None:
    """hard-swish / hard-sigmoid / SiLU run in the Winograd kernel's output transform."""
    from mcopt.targets import build

    g = Graph("wino_act")
    x = g.add_input("x", TensorType((1, 16, 12, 12), "float32"))
    w = g.const(RNG.standard_normal((16, 16, 3, 3)).astype(np.float32) / 12, "w")
    b = g.const(RNG.standard_normal(16).astype(np.float32), "b")
    h = g.add_node("conv2d", [x, w, b], {"pads": (1, 1, 1, 1)}, name="c").output
    attrs = {"alpha": 0.25, "beta": 0.4} if act == "hard_sigmoid" else {}
    g.outputs.append(g.add_node(act, [h], attrs, name="a").output)
    xin = RNG.standard_normal((1, 16, 12, 12)).astype(np.float32)
    ref = interpreter.run(g, [xin])[0]
    assert get_pass("winograd", tile=2).run(g, PassContext())
    compiled = build(g, "cpu")
    fused = [n for n in compiled.planned.nodes if n.op == "fused_conv2d"]
    assert [(n.attrs["kernel"], n.attrs["activation"]) for n in fused] == [("winograd", act)]
    assert rel(compiled.run(xin)[0], ref) < 1e-5
