"""Fixed point / dynamic fixed point: the fx_* op references and the `fixed-point` pass."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcopt.testing.zoo as zoo
from mcopt import interpreter
from mcopt.analysis.cost import analyze
from mcopt.api import load
from mcopt.errors import PassError, VerifyError
from mcopt.ir.core import Graph
from mcopt.ir.types import FixedPoint, ttype
from mcopt.ops.fixed import (
    avg_pool_multiplier,
    fx_add_ref,
    fx_avg_pool_ref,
    fx_conv2d_ref,
    fx_quantize_ref,
    requantize,
)
from mcopt.ops.nn import conv2d_ref
from mcopt.pass_manager import FixedPointFormats, PassContext, PassManager
from mcopt.passes.fixed_point import assert_integer_only, choose_frac_bits


# --- op references --------------------------------------------------------------------------------
def test_requantize_rounds_half_up_and_saturates() -> None:
    acc = np.array([5, 6, 7, -5, -6, -7, 10_000, -10_000], np.int64)
    # shift 2: x / 4 rounded half up: 1.25->1, 1.5->2, 1.75->2, -1.25->-1, -1.5->-1, -1.75->-2
    np.testing.assert_array_equal(
        requantize(acc, 2, 8), np.array([1, 2, 2, -1, -1, -2, 127, -128], np.int8)
    )
    assert requantize(acc, 2, 8).dtype == np.int8
    np.testing.assert_array_equal(requantize(np.array([3, -3]), -2, 16), [12, -12])


@settings(max_examples=60, deadline=None)
@given(st.integers(-(2**40), 2**40), st.integers(1, 30), st.sampled_from([4, 8, 12, 16]))
def test_requantize_matches_exact_rational_rounding(acc: int, shift: int, bits: int) -> None:
    import math
    from fractions import Fraction

    exact = math.floor(Fraction(acc, 2**shift) + Fraction(1, 2))
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert int(requantize(np.array([acc]), shift, bits)[0]) == min(max(exact, lo), hi)


def test_fx_quantize_half_up_in_float64() -> None:
    x = np.array([0.5, -0.5, 1.49, 0.49999997, 300.0, -300.0], np.float32)
    q = fx_quantize_ref(x, bits=8, frac_bits=0)
    np.testing.assert_array_equal(q, [1, 0, 1, 0, 127, -128])
    # float32 arithmetic would round 0.49999997 + 0.5 up to 1.0; float64 does not


def test_fx_conv2d_equals_integer_conv_then_shift() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 3, 7, 7)).astype(np.int8)
    w = rng.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    b = rng.integers(-1000, 1000, 4).astype(np.int32)
    geo = {"strides": (2, 1), "pads": (1, 0, 1, 2), "dilations": (1, 1), "groups": 1}
    y = fx_conv2d_ref(x, w, b, shift=7, bits=8, acc_bits=32, **geo)
    acc = conv2d_ref(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **geo)
    ref = np.clip(np.floor(acc / 128 + 0.5), -128, 127)  # exact in float64 (|acc| < 2**53)
    np.testing.assert_array_equal(y, ref)


def test_fx_add_aligns_formats() -> None:
    a = np.array([3, -3], np.int8)  # Q.2: 0.75, -0.75
    b = np.array([1, 1], np.int8)  # Q.4: 0.0625
    y = fx_add_ref(a, b, lshift_a=2, lshift_b=0, shift=1, bits=8)  # common Q.4 -> out Q.3
    np.testing.assert_array_equal(y, [7, -5])  # 0.8125*8 = 6.5 -> 7; -0.6875*8 = -5.5 -> -5


def test_avg_pool_multiplier_and_ref() -> None:
    for count, fi, fo in ((4, 3, 3), (64, 5, 6), (49, 4, 2), (9, 0, 7)):
        mult, shift = avg_pool_multiplier(count, fi, fo)
        assert 0 < mult < 2**15
        assert abs(mult * 2.0**-shift / (2.0 ** (fo - fi) / count) - 1) < 2e-4
    x = np.arange(16, dtype=np.int8).reshape(1, 1, 4, 4)
    mult, shift = avg_pool_multiplier(16, 0, 0)
    y = fx_avg_pool_ref(
        x, kernel=(4, 4), strides=(1, 1), pads=(0, 0, 0, 0), mult=mult, shift=shift, bits=8
    )
    assert y.shape == (1, 1, 1, 1) and int(y[0, 0, 0, 0]) == 8  # mean 7.5 rounds half up


def test_choose_frac_bits() -> None:
    assert choose_frac_bits(3.0, 8) == 5  # 3 * 32 = 96 <= 127
    assert choose_frac_bits(0.1, 8) == 10  # 0.1 * 1024 = 102.4
    assert choose_frac_bits(100.0, 8) == 0
    assert choose_frac_bits(1000.0, 8) == -3  # negative n: coarser than integers


# --- the pass -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lenet() -> Graph:
    g = load(zoo.lenet5_path())
    g, _ = PassManager(["cleanup"]).run(g, ctx=PassContext())
    return g


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return zoo.mnist_test_set()


def _fixed(g: Graph, spec: str, calib: list) -> tuple[Graph, FixedPointFormats]:
    ctx = PassContext(calib=calib)
    out, _ = PassManager([spec]).run(g.copy(), ctx=ctx)
    formats = ctx.analyses.get(FixedPointFormats)
    assert formats is not None
    return out, formats


def _calib(mnist: tuple[np.ndarray, np.ndarray], n: int = 32) -> list:
    x = mnist[0]
    return [{"input": x[i : i + 1]} for i in range(0, 2 * n, 2)]  # even half


@pytest.mark.parametrize("spec", ["fixed-point:bits=8,dynamic=true", "fixed-point:bits=16"])
def test_pass_yields_integer_only_graph(lenet: Graph, mnist: tuple, spec: str) -> None:
    g, info = _fixed(lenet, spec, _calib(mnist, 8))
    assert_integer_only(g)
    ops = {n.op for n in g.nodes}
    assert ops <= {
        "fx_quantize",
        "fx_dequantize",
        "fx_conv2d",
        "fx_dense",
        "fx_relu",
        "fx_max_pool",
        "flatten",
    }
    assert [n.op for n in g.nodes].count("fx_quantize") == 1
    assert g.nodes[-1].op == "fx_dequantize" and g.outputs[0].name == "logits"
    for n in g.nodes[1:-1]:
        for v in (*n.inputs, *n.outputs):
            assert v is not None and np.dtype(v.dtype).kind == "i", (n.name, v)
    bits = 8 if "bits=8" in spec else 16
    for n in g.nodes_of("fx_conv2d", "fx_dense"):
        w = n.inputs[1]
        assert isinstance(w.type.encoding, FixedPoint) and w.type.encoding.bits == bits
        assert w.dtype == ("int8" if bits == 8 else "int16")
        # int32 unless the worst-case |acc| bound needs more (chosen per layer from the weights)
        wsum = int(np.abs(w.const.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1).max())
        assert n.attrs["acc_bits"] == (32 if wsum * 2 ** (bits - 1) < 2**30 else 64)
    assert info.rel_error < (0.1 if bits == 8 else 0.01)


def test_weights_shrink_physically(lenet: Graph, mnist: tuple) -> None:
    g8, _ = _fixed(lenet, "fixed-point:bits=8,dynamic=true", _calib(mnist, 4))
    before = analyze(lenet).totals()["weight_bytes"]
    after = analyze(g8).totals()["weight_bytes"]
    assert 3.5 < before / after <= 4.0  # int8 weights, int32 biases


@pytest.mark.parametrize("bits", [8, 16])
def test_dynamic_beats_shared_format(lenet: Graph, mnist: tuple, bits: int) -> None:
    calib = _calib(mnist, 16)
    _, shared = _fixed(lenet, f"fixed-point:bits={bits}", calib)
    _, dynamic = _fixed(lenet, f"fixed-point:bits={bits},dynamic=true", calib)
    assert dynamic.rel_error < shared.rel_error / 5
    fracs = {v["out_frac"] for v in dynamic.layers.values()}
    assert len(fracs) > 1  # per-layer formats


def test_dynamic_8bit_keeps_lenet_accuracy(lenet: Graph, mnist: tuple) -> None:
    x, y = mnist
    g, _ = _fixed(lenet, "fixed-point:bits=8,dynamic=true", _calib(mnist, 32))
    idx = range(1, 400, 2)  # odd half: not used for calibration
    acc_f = np.mean([interpreter.run(lenet, [x[i : i + 1]])[0].argmax() == y[i] for i in idx])
    acc_q = np.mean([interpreter.run(g, [x[i : i + 1]])[0].argmax() == y[i] for i in idx])
    assert acc_q >= acc_f - 0.02


def test_shared_frac_bits_option(lenet: Graph, mnist: tuple) -> None:
    _, info = _fixed(lenet, "fixed-point:bits=16,frac_bits=9", _calib(mnist, 2))
    assert {v["out_frac"] for v in info.layers.values()} == {9}
    assert {v["weight_frac"] for v in info.layers.values() if "weight_frac" in v} == {9}


def test_residual_network_with_global_pool() -> None:
    g = load(zoo.resnet18_like(width=8, resolution=32))
    g, _ = PassManager(["cleanup"]).run(g, ctx=PassContext())
    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    q, info = _fixed(g, "fixed-point:bits=16,dynamic=true", calib)
    assert_integer_only(q)
    assert {"fx_add", "fx_avg_pool"} <= {n.op for n in q.nodes}
    assert info.rel_error < 0.01


def test_assert_integer_only_rejects_float_op() -> None:
    g = Graph("g")
    x = g.add_input("x", ttype((1, 4)))
    qn = g.add_node("fx_quantize", [x], {"bits": 8, "frac_bits": 4})
    dq = g.add_node("fx_dequantize", [qn.output], {"frac_bits": 4})
    r = g.add_node("relu", [dq.output])
    g.outputs = [r.output]
    with pytest.raises(VerifyError, match="fx_dequantize"):
        assert_integer_only(g)


def test_unfolded_batch_norm_is_a_clear_error(mnist: tuple) -> None:
    g = load(zoo.resnet18_like(width=8, resolution=32))  # no cleanup: batch_norm remains
    with pytest.raises(PassError, match="cleanup"):
        _fixed(g, "fixed-point:bits=8,dynamic=true", [])
