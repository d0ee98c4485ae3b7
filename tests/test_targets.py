"""Targets: lowering mcopt IR to TVM Relax, building for the host CPU, running, exporting."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt import interpreter  # noqa: E402
from mcopt.errors import OptionError, ShapeError, TargetError  # noqa: E402
from mcopt.ir import Graph, Value, ttype  # noqa: E402

pytestmark = pytest.mark.tvm

RNG = np.random.default_rng(0)


def _rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _check(g: Graph, inputs: list[np.ndarray], rtol: float = 1e-4, pipeline: str = "mcopt") -> None:
    """Compiled outputs equal the reference interpreter's (relative to each output's scale)."""
    from mcopt.targets import build

    ref = interpreter.run(g, inputs)
    got = build(g, pipeline=pipeline).run(*inputs)
    assert len(got) == len(ref)
    for v, r, o in zip(g.outputs, ref, got):
        assert o.shape == r.shape, v.name
        assert o.dtype == r.dtype, v.name
        scale = max(float(np.abs(r).max()), 1e-6)
        err = float(np.abs(o.astype(np.float64) - r).max()) / scale
        assert err <= rtol, f"output %{v.name}: relative error {err:.2e}"


def _graph(build_fn: Callable[[Graph, Value], list[Value]], shape: tuple[int, ...]) -> Graph:
    g = Graph("t")
    x = g.add_input("x", ttype(shape))
    g.outputs = build_fn(g, x)
    return g


def _op(g: Graph, op: str, *inputs: Value | None, **attrs: object) -> Value:
    return g.add_node(op, list(inputs), attrs).output


# --- registry -------------------------------------------------------------------------------------
def test_registry_cpu_target() -> None:
    from mcopt.targets import get_target, target_names

    spec = get_target("cpu")
    assert spec.name == "cpu" and spec.kind == "llvm"
    t = spec.tvm_target()
    assert t.kind.name == "llvm"
    assert str(t.attrs["mcpu"]) == tvm.target.codegen.llvm_get_system_cpu()
    assert get_target("X86") is spec
    assert "cpu" in target_names()


def test_unknown_target_is_one_line_option_error() -> None:
    from mcopt.targets import get_target

    with pytest.raises(OptionError, match="unknown target 'tpu'.*valid targets: .*cpu") as ei:
        get_target("tpu")
    assert "\n" not in str(ei.value)


def test_importing_mcopt_targets_does_not_import_tvm() -> None:
    code = "import sys, mcopt, mcopt.targets; mcopt.targets.get_target('cpu'); print('tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- op lowerings, grouped to keep compiles few --------------------------------------------------
def test_conv_family_and_pooling() -> None:
    def body(g: Graph, x: Value) -> list[Value]:
        w = g.const(_rand(8, 4, 3, 3, scale=0.3))
        b = g.const(_rand(8))
        c = _op(g, "conv2d", x, w, b, pads=(1, 0, 2, 1), strides=(2, 1))
        wd = g.const(_rand(4, 1, 3, 3, scale=0.3))
        dw = _op(g, "conv2d", x, wd, None, pads=(2, 2, 2, 2), dilations=(2, 2), groups=4)
        wg = g.const(_rand(6, 2, 1, 1))
        gc = _op(g, "conv2d", dw, wg, groups=2)
        bn = _op(
            g,
            "batch_norm",
            gc,
            g.const(_rand(6)),
            g.const(_rand(6)),
            g.const(_rand(6)),
            g.const(np.abs(_rand(6)) + 0.5),
            epsilon=1e-3,
        )
        mp = _op(g, "max_pool", bn, kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=1)
        ap = _op(g, "avg_pool", bn, kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
        ap2 = _op(
            g, "avg_pool", bn, kernel=(2, 2), strides=(2, 2), pads=(1, 1, 0, 0), count_include_pad=1
        )
        ga = _op(g, "global_avg_pool", c)
        gm = _op(g, "global_max_pool", c)
        lrn = _op(g, "lrn", c, size=5, alpha=1e-2, beta=0.75, bias=2.0)
        return [c, mp, ap, ap2, ga, gm, lrn]

    _check(_graph(body, (2, 4, 11, 11)), [_rand(2, 4, 11, 11)])


def test_elementwise_and_activations() -> None:
    def body(g: Graph, x: Value) -> list[Value]:
        outs = [_op(g, op, x) for op in ("relu", "sigmoid", "tanh", "exp", "neg", "hard_swish")]
        outs.append(_op(g, "sqrt", _op(g, "exp", x)))
        outs.append(_op(g, "clip", x, min=0.0, max=6.0))
        outs.append(_op(g, "clip", x, min=-0.5))
        outs.append(_op(g, "leaky_relu", x, alpha=0.1))
        outs.append(_op(g, "hard_sigmoid", x, alpha=0.3, beta=0.4))
        outs.append(_op(g, "prelu", x, g.const(_rand(3, 1, 1))))
        outs.append(_op(g, "identity", _op(g, "dropout", x, ratio=0.3)))
        c = g.const(_rand(1, 3, 1, 5))
        outs += [_op(g, op, x, c) for op in ("add", "sub", "mul")]
        outs.append(_op(g, "div", x, g.const(np.abs(_rand(5)) + 1.0)))
        outs.append(_op(g, "pow", _op(g, "exp", x), g.const(np.float32(0.5))))
        outs.append(_op(g, "softmax", x, axis=1))
        outs.append(_op(g, "softmax", x, axis=-1))
        return outs

    _check(_graph(body, (2, 3, 4, 5)), [_rand(2, 3, 4, 5)])


def test_tensor_ops() -> None:
    def body(g: Graph, x: Value) -> list[Value]:
        r = _op(g, "reshape", x, shape=(2, 12, 5))
        f = _op(g, "flatten", x, axis=2)
        t = _op(g, "transpose", x, perm=(0, 2, 3, 1))
        u = _op(g, "unsqueeze", x, axes=(0, 3))
        s = _op(g, "squeeze", u, axes=(0,))
        cat = _op(g, "concat", x, _op(g, "relu", x), axis=1)
        parts = g.add_node("split", [cat], {"axis": 1, "sizes": (2, 4)}).outputs
        sl = _op(g, "slice", x, starts=(1, 0), ends=(4, 5), axes=(2, 3), steps=(2, 2))
        rev = _op(g, "slice", x, starts=(-1, 4), ends=(-9, 0), axes=(2, 3), steps=(-1, -2))
        p = _op(g, "pad", x, pads=(0, 0, 1, 2, 0, 1, 0, 3), value=0.5)
        pr = _op(g, "pad", x, pads=(0, 0, 1, 2, 0, 0, 1, 1), mode="reflect")
        pe = _op(g, "pad", x, pads=(0, 0, 1, 2, 0, 0, 1, 1), mode="edge")
        m = _op(g, "reduce_mean", x, axes=(1, -1), keepdims=0)
        m2 = _op(g, "reduce_mean", x, axes=(2,))
        i = _op(g, "cast", _op(g, "cast", x, to="int32"), to="float32")
        return [r, f, t, s, *parts, sl, rev, p, pr, pe, m, m2, i]

    _check(_graph(body, (2, 3, 4, 5)), [_rand(2, 3, 4, 5, scale=3.0)])


def test_dense_matmul_multi_input_and_const_output() -> None:
    g = Graph("mm")
    a = g.add_input("a", ttype((3, 8)))
    b = g.add_input("b", ttype((2, 8, 5)))
    d = _op(g, "dense", a, g.const(_rand(6, 8)), g.const(_rand(6)))
    d2 = _op(g, "dense", a, g.const(_rand(4, 8)))
    mm = _op(g, "matmul", a, b)
    g.outputs = [d, d2, mm]
    _check(g, [_rand(3, 8), _rand(2, 8, 5)])


def test_tiny_cnn_hand_built() -> None:
    """conv+bn+relu+pool, a residual add, concat of a 1x1 and a depthwise branch, dense head."""

    def body(g: Graph, x: Value) -> list[Value]:
        def cbr(v: Value, cin: int, cout: int, k: int, groups: int = 1) -> Value:
            w = g.const(_rand(cout, cin // groups, k, k, scale=(2.0 / (cin * k * k)) ** 0.5))
            c = _op(g, "conv2d", v, w, pads=(k // 2,) * 4, groups=groups)
            stats = [_rand(cout), _rand(cout), _rand(cout, scale=0.1), np.abs(_rand(cout)) + 0.5]
            return _op(g, "relu", _op(g, "batch_norm", c, *[g.const(s) for s in stats]))

        h = cbr(x, 3, 16, 3)
        h = _op(g, "max_pool", h, kernel=(2, 2), strides=(2, 2))
        h = _op(g, "relu", _op(g, "add", h, cbr(cbr(h, 16, 16, 3), 16, 16, 3)))
        left = cbr(h, 16, 8, 1)
        right = cbr(cbr(h, 16, 16, 3, groups=16), 16, 8, 1)
        h = _op(g, "concat", left, right, axis=1)
        h = _op(g, "flatten", _op(g, "global_avg_pool", h))
        return [_op(g, "dense", h, g.const(_rand(10, 16)), g.const(_rand(10)))]

    g = _graph(body, (1, 3, 16, 16))
    x = _rand(1, 3, 16, 16)
    _check(g, [x])
    _check(g, [x], pipeline="mcopt-plain")
    _check(g, [x], pipeline="default")


# --- CompiledModel API ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model() -> tuple[Graph, object]:
    from mcopt.targets import build

    def body(g: Graph, x: Value) -> list[Value]:
        c = _op(g, "conv2d", x, g.const(_rand(4, 2, 3, 3)), g.const(_rand(4)), pads=(1, 1, 1, 1))
        return [_op(g, "relu", c)]

    g = _graph(body, (1, 2, 6, 6))
    return g, build(g, "cpu")


def test_run_inputs_by_name_and_checks(small_model: tuple[Graph, object]) -> None:
    g, m = small_model
    x = _rand(1, 2, 6, 6)
    ref = interpreter.run(g, [x])[0]
    assert m.target == "cpu"  # type: ignore[attr-defined]
    np.testing.assert_allclose(m.run({"x": x})[0], ref, rtol=1e-4, atol=1e-5)  # type: ignore[attr-defined]
    np.testing.assert_allclose(m.run(x=x)[0], ref, rtol=1e-4, atol=1e-5)  # type: ignore[attr-defined]
    with pytest.raises(ShapeError, match=r"input 'x': expected shape \[1, 2, 6, 6\]"):
        m.run(_rand(1, 2, 6, 7))  # type: ignore[attr-defined]
    with pytest.raises(ShapeError, match="expected dtype float32"):
        m.run(np.zeros((1, 2, 6, 6), np.int32))  # type: ignore[attr-defined]
    with pytest.raises(ShapeError, match="missing"):
        m.run({"y": x})  # type: ignore[attr-defined]
    stats = m.benchmark([x], number=2, repeat=2)  # type: ignore[attr-defined]
    assert stats["median_ms"] > 0 and {"mean_ms", "std_ms"} <= set(stats)


def test_export_library_loads(small_model: tuple[Graph, object], tmp_path: Path) -> None:
    from mcopt.targets import load_library

    g, m = small_model
    path = m.export_library(tmp_path / "sub" / "model.so")  # type: ignore[attr-defined]
    assert path.exists() and path.stat().st_size > 0
    assert [p.name for p in path.parent.iterdir()] == ["model.so"]  # no temp file left behind
    x = _rand(1, 2, 6, 6)
    loaded = load_library(path, [("x", (1, 2, 6, 6), "float32")])
    np.testing.assert_allclose(loaded.run(x)[0], m.run(x)[0], rtol=1e-6)  # type: ignore[attr-defined]


def test_op_without_lowering_is_target_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcopt.ops import OpSchema, same_as_input, schema
    from mcopt.targets import build

    # registered for this test only (the op-coverage tests in the same process must not see it)
    monkeypatch.setitem(
        schema._REGISTRY,
        "test_unlowered_op",
        OpSchema(name="test_unlowered_op", inputs=("x",), infer=same_as_input,
                 reference=lambda x: x),
    )  # fmt: skip
    g = Graph("t")
    x = g.add_input("x", ttype((1, 4)))
    y = g.add_node("test_unlowered_op", [x], name="mystery").output
    g.outputs = [_op(g, "relu", y)]
    with pytest.raises(TargetError, match="node 'mystery' uses op 'test_unlowered_op'") as ei:
        build(g)
    assert "\n" not in str(ei.value)


def test_lowering_failure_names_node() -> None:
    from mcopt.targets import build
    from mcopt.targets.relax.lower import LOWERINGS, register_lowering

    def bad(ctx: object, node: object, args: list[object]) -> object:
        raise RuntimeError("boom\nsecond line")

    old = LOWERINGS["neg"]
    register_lowering("neg", bad, replace=True)
    try:
        g = _graph(lambda g, x: [_op(g, "neg", x)], (2, 2))
        with pytest.raises(TargetError, match=r"cannot lower node 'neg' \(neg\): boom$"):
            build(g)
    finally:
        register_lowering("neg", old, replace=True)


# --- models through import ------------------------------------------------------------------------
def _onnx_check(model: object, shape: tuple[int, ...]) -> None:
    import onnxruntime as ort

    from mcopt.onnx_io import import_model
    from mcopt.targets import build

    g = import_model(model)
    x = _rand(*shape)
    got = build(g).run(x)[0]
    ref = interpreter.run(g, [x])[0]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    ort_out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    scale = float(np.abs(ref).max())
    assert np.abs(got - ref).max() <= 1e-4 * scale
    assert np.abs(got - ort_out).max() <= 1e-4 * scale


def test_zoo_tiny_cnn_import_build_matches() -> None:
    zoo = pytest.importorskip("mcopt.testing.zoo")
    _onnx_check(zoo.tiny_cnn(), (1, 3, 32, 32))


def test_zoo_mobilenet_v2_small_import_build_matches() -> None:
    zoo = pytest.importorskip("mcopt.testing.zoo")
    _onnx_check(zoo.mobilenet_v2(width_mult=0.35, resolution=32), (1, 3, 32, 32))


def test_tvm_baseline_matches_onnxruntime() -> None:
    import onnxruntime as ort

    zoo = pytest.importorskip("mcopt.testing.zoo")
    from mcopt.targets import build_tvm_baseline

    model = zoo.tiny_cnn()
    m = build_tvm_baseline(model, {"input": (1, 3, 32, 32)})
    x = _rand(1, 3, 32, 32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(m.run(x)[0], ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
