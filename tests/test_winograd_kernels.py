"""The compiled Winograd kernel (F(2x2,3x3), F(4x4,3x3)) against direct convolution and the
reference interpreter, with C_in != C_out and C_in == C_out (non-symmetric weights: a swapped
(C_in, C_out) layout of U would go unnoticed with symmetric ones)."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt import interpreter  # noqa: E402
from mcopt.ir import Graph, TensorType, verify  # noqa: E402
from mcopt.ops.nn import conv2d_ref  # noqa: E402
from mcopt.ops.winograd import winograd_weight  # noqa: E402
from mcopt.pass_manager import PassContext, get_pass  # noqa: E402
from mcopt.targets.kernels.epilogue import Epilogue  # noqa: E402
from mcopt.targets.kernels.winograd import (  # noqa: E402
    pack_winograd_weight,
    plan_winograd,
    winograd_conv2d,
)

pytestmark = pytest.mark.tvm
RNG = np.random.default_rng(0)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def _kernel(x: np.ndarray, w: np.ndarray, b: np.ndarray, m: int, pads, act=None) -> np.ndarray:
    from mcopt.targets.kernels import host_target

    o = w.shape[0]
    f, plan = winograd_conv2d(x.shape, o, m, pads, Epilogue(bias=True, activation=act))
    lib = tvm.compile(tvm.IRModule({"main": f}), target=host_target())
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((x.shape[0], o, plan.oh, plan.ow), np.float32), dev)
    u = pack_winograd_weight(winograd_weight(w, m), plan.ro)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in (x, u, b)], out)
    return out.numpy()


@pytest.mark.parametrize(
    "m,shape,o,pads",
    [
        (2, (2, 6, 8, 8), 12, (1, 1, 1, 1)),  # C_in != C_out, batch 2, exact tiles
        (2, (1, 8, 7, 9), 8, (1, 1, 1, 1)),  # C_in == C_out, ragged edge tiles
        (4, (1, 8, 9, 11), 8, (0, 1, 2, 0)),  # C_in == C_out, asymmetric pads
        (4, (1, 4, 8, 8), 12, (1, 1, 1, 1)),  # C_in != C_out
    ],
)
def test_kernel_matches_direct_conv(m: int, shape, o: int, pads) -> None:
    x = RNG.standard_normal(shape).astype(np.float32)
    w = RNG.standard_normal((o, shape[1], 3, 3)).astype(np.float32)
    if o == shape[1]:
        assert not np.allclose(w, w.transpose(1, 0, 2, 3))  # non-symmetric in (C_in, C_out)
    b = RNG.standard_normal(o).astype(np.float32)
    ref = conv2d_ref(x, w, b, strides=(1, 1), pads=pads, dilations=(1, 1), groups=1)
    got = _kernel(x, w, b, m, pads, act="relu")
    assert rel(got, np.maximum(ref, 0)) < (1e-5 if m == 2 else 1e-4)


def test_swapped_weight_layout_is_caught() -> None:
    """The (alpha, alpha, C_out, C_in) layout TOPI writes gives a wrong result when C_in == C_out."""
    x = RNG.standard_normal((1, 8, 6, 6)).astype(np.float32)
    w = RNG.standard_normal((8, 8, 3, 3)).astype(np.float32)
    b = np.zeros(8, np.float32)
    ref = conv2d_ref(x, w, b, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1)
    wrong = _kernel(x, w.transpose(1, 0, 2, 3).copy(), b, 2, (1, 1, 1, 1))
    assert rel(wrong, ref) > 0.1


def test_plan_blocks() -> None:
    p = plan_winograd((1, 64, 56, 56), 64, 4, (1, 1, 1, 1), lanes=8, cores=2)
    assert (p.th, p.tw, p.p) == (14, 14, 196) and p.pp % p.chunk == 0 and p.pp % p.pblock == 0
    assert 64 % p.ro == 0 and p.ro * p.pv <= 12


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
    got = build(g, "cpu").run(xin)[0]
    assert rel(got, interpreter.run(g, [xin])[0]) < 1e-5
    assert rel(got, ref) < 1e-5


def test_only_if_faster_reads_the_measured_table(tmp_path) -> None:
    import json

    from mcopt.targets.kernels import host_target
    from mcopt.targets.kernels.winograd import layer_key, target_key

    g = Graph("two")
    x = g.add_input("x", TensorType((1, 8, 10, 10), "float32"))
    w1 = g.const(RNG.standard_normal((8, 8, 3, 3)).astype(np.float32), "w1")
    h = g.add_node("conv2d", [x, w1], {"pads": (1, 1, 1, 1)}, name="c1").output
    w2 = g.const(RNG.standard_normal((12, 8, 3, 3)).astype(np.float32), "w2")
    g.outputs.append(g.add_node("conv2d", [h, w2], {"pads": (1, 1, 1, 1)}, name="c2").output)
    tk = target_key(host_target())
    table = {  # c1: direct faster; c2: Winograd faster (no measurement needed: both cached)
        layer_key(tk, (1, 8, 10, 10), 8, (1, 1, 1, 1)): {"direct": 1.0, "f2": 2.0},
        layer_key(tk, (1, 8, 10, 10), 12, (1, 1, 1, 1)): {"direct": 2.0, "f2": 1.0},
    }
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    from mcopt.targets.services import services_for

    no_target = PassContext()
    get_pass("winograd", tile=2, only_if_faster=True, table=str(path)).run(g.copy(), no_target)
    assert "needs a target" in no_target.shared["winograd"]["skipped"]["c1"]
    ctx = PassContext(target=services_for("cpu"))
    assert get_pass("winograd", tile=2, only_if_faster=True, table=str(path)).run(g, ctx)
    assert [r["layer"] for r in ctx.shared["winograd"]["layers"]] == ["c2"]
    assert "direct conv faster" in ctx.shared["winograd"]["skipped"]["c1"]
    assert json.loads(path.read_text()) == table  # nothing had to be measured
