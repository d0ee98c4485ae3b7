"""``Resize`` / ``Upsample`` (nearest, whole factors) and ``ConvTranspose``: imported, interpreted,
exported, compiled for the CPU (the generic transposed conv and the 1x1-conv + pixel-shuffle form
of a kernel-equals-stride one) and trained — every route against onnxruntime on the original ONNX;
the Resize forms that do not repeat pixels get a one-line error naming the node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt import interpreter
from mcopt.errors import UnsupportedOpError
from mcopt.onnx_io import import_model
from mcopt.testing.routes import assert_routes_match, outputs_by_route

ort = pytest.importorskip("onnxruntime")


def _model(node: onnx.NodeProto, x_shape: list[int], inits: list[onnx.TensorProto], opset: int):
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _all_routes(model: onnx.ModelProto, x: np.ndarray, compile_: bool = True) -> None:
    if compile_:
        pytest.importorskip("tvm")
    routes = outputs_by_route(model, {"x": x}, cpu=compile_)
    assert_routes_match(routes, rtol=1e-5, atol=1e-5, cpu_tol=(1e-4, 1e-4))


def _resize(opset: int, scales: list[float] | None = None, sizes: list[int] | None = None, **attrs):
    ins, inits = ["x"], []
    if opset in (11, 12):  # roi is a required input there
        inits.append(numpy_helper.from_array(np.zeros(0, np.float32), "roi"))
        ins.append("roi")
    elif opset >= 13:
        ins.append("")
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        ins.append("scales")
    if sizes is not None:
        if len(ins) == 2:
            ins.append("")
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        ins.append("sizes")
    return helper.make_node("Resize", ins, ["y"], **attrs), inits


@pytest.mark.parametrize(
    "opset, kw",
    [
        (12, dict(scales=[1, 1, 2, 2], mode="nearest", coordinate_transformation_mode="asymmetric",
                  nearest_mode="floor")),  # Paddle2ONNX (PP-OCR's FPN)
        (13, dict(scales=[1, 1, 2, 3], mode="nearest")),  # defaults: half_pixel, prefer floor
        (13, dict(sizes=[1, 4, 12, 10], mode="nearest",
                  coordinate_transformation_mode="pytorch_half_pixel")),
        (10, dict(scales=[1, 1, 4, 4], mode="nearest")),
    ],
)  # fmt: skip
def test_resize_nearest_by_whole_factors(opset: int, kw: dict) -> None:
    node, inits = _resize(opset, kw.pop("scales", None), kw.pop("sizes", None), **kw)
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 5)).astype(np.float32)
    m = _model(node, [1, 4, 6, 5], inits, opset)
    _all_routes(m, x)
    assert [n.op for n in import_model(m).nodes] == ["upsample_nearest"]


def test_upsample_opset9() -> None:
    s = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")
    node = helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    _all_routes(_model(node, [1, 3, 4, 4], [s], 9), x)


@pytest.mark.parametrize(
    "kw, why",
    [
        (dict(scales=[1, 1, 2, 2], mode="linear"), "mode='linear'"),
        (dict(scales=[1, 1, 1.5, 1.5], mode="nearest"), "whole spatial factors"),
        (dict(scales=[1, 1, 2, 2], mode="nearest",
              coordinate_transformation_mode="tf_half_pixel_for_nn"), "does not repeat pixels"),
        (dict(scales=[1, 1, 3, 3], mode="nearest", coordinate_transformation_mode="asymmetric",
              nearest_mode="round_prefer_floor"), "does not repeat pixels"),
    ],
)  # fmt: skip
def test_resize_forms_that_do_not_repeat_pixels_are_refused(kw: dict, why: str) -> None:
    node, inits = _resize(13, kw.pop("scales"), **kw)
    with pytest.raises(UnsupportedOpError, match=f"node .*Resize.*{why}"):
        import_model(_model(node, [1, 2, 4, 4], inits, 13))


CONVT = [
    dict(c=8, o=4, k=2, strides=[2, 2]),  # DBNet's head: kernel = stride
    dict(c=6, o=4, k=3, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    dict(c=4, o=6, k=3, strides=[1, 2], pads=[0, 1, 2, 0], dilations=[2, 1]),
    dict(c=4, o=4, k=2, strides=[2, 2], group=2),
]


@pytest.mark.parametrize("kw", CONVT, ids=lambda kw: f"k{kw['k']}s{kw['strides']}")
def test_conv_transpose(kw: dict) -> None:
    kw = dict(kw)
    c, o, k = kw.pop("c"), kw.pop("o"), kw.pop("k")
    g = kw.get("group", 1)
    rng = np.random.default_rng(c * 10 + o + k)
    w = numpy_helper.from_array(rng.standard_normal((c, o // g, k, k)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b")
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[k, k], **kw)
    x = rng.standard_normal((1, c, 5, 6)).astype(np.float32)
    _all_routes(_model(node, [1, c, 5, 6], [w, b], 13), x)


def test_conv_transpose_output_shape_and_same_upper() -> None:
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    for attrs in (dict(output_shape=[9, 9]), dict(auto_pad="SAME_UPPER")):
        node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], **attrs)
        _all_routes(_model(node, [1, 3, 4, 4], [w], 13), x, compile_=False)


def test_kernel_equals_stride_runs_as_a_pointwise_conv() -> None:
    """The CPU plan of a 2x2 / stride-2 transposed conv is a 1x1 conv and a pixel shuffle (its
    batch norm and bias folded in by cleanup) — no generic transposed conv in the build."""
    pytest.importorskip("tvm")
    import mcopt
    from mcopt.targets.cpu.planning import plan_cpu

    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 8, 2, 2)).astype(np.float32), "w"),
        *(numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), n)
          for n in ("s", "v")),
        *(numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), n)
          for n in ("t", "mu")),
    ]  # fmt: skip
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["c"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "s", "t", "mu", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.standard_normal((1, 16, 7, 7)).astype(np.float32)
    res = mcopt.optimize(m, target="cpu", passes=["cleanup"])
    assert [n.op for n in res.graph.nodes] == ["conv_transpose2d"]  # the BN folded
    planned = plan_cpu(res.graph)
    assert "conv_transpose2d" not in [n.op for n in planned.nodes]
    np.testing.assert_allclose(res.compiled.run(x)[0], _ort(m, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kw", CONVT[:2], ids=["k2s2", "k3s2-pads"])
def test_training_forms_match_the_reference(kw: dict) -> None:
    torch = pytest.importorskip("torch")
    from mcopt.train.module import to_torch

    kw = dict(kw)
    c, o, k = kw.pop("c"), kw.pop("o"), kw.pop("k")
    rng = np.random.default_rng(11)
    w = numpy_helper.from_array(rng.standard_normal((c, o, k, k)).astype(np.float32), "w")
    s = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["t"], kernel_shape=[k, k], **kw),
        helper.make_node("Resize", ["t", "", "s"], ["y"], mode="nearest"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w, s],
    )  # fmt: skip
    g = import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    x = rng.standard_normal((1, c, 4, 4)).astype(np.float32)
    module = to_torch(g)
    got = module(torch.from_numpy(x))
    got = got[0] if isinstance(got, (list, tuple)) else got
    np.testing.assert_allclose(
        got.detach().numpy(), interpreter.run(g, [x])[0], rtol=1e-4, atol=1e-4
    )


def test_fpn_upsample_stays_blocked() -> None:
    """conv (low res) -> Resize x2 -> add to a conv at the high resolution (an FPN merge): the
    upsample runs on the blocked tensor (no layout conversion around it) and matches onnxruntime."""
    pytest.importorskip("tvm")
    import mcopt
    from mcopt.targets.cpu.planning import plan_cpu

    rng = np.random.default_rng(9)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((16, 16, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["hi"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Conv", ["hi", "w2"], ["lo"], kernel_shape=[1, 1], strides=[2, 2]),
        helper.make_node("Resize", ["lo", "", "s"], ["up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Add", ["hi", "up"], ["y"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "fpn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.standard_normal((1, 8, 10, 12)).astype(np.float32)
    res = mcopt.optimize(m, target="cpu", passes=["cleanup"])
    planned = plan_cpu(res.graph)
    (up,) = [n for n in planned.nodes if n.op == "upsample_nearest"]
    assert up.inputs[0].type.layout is not None and up.output.type.layout is not None
    np.testing.assert_allclose(res.compiled.run(x)[0], _ort(m, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode: str) -> None:
    node = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode=mode)
    x = np.random.default_rng(4).standard_normal((1, 32, 5, 6)).astype(np.float32)
    m = _model(node, [1, 32, 5, 6], [], 13)
    _all_routes(m, x)
    g = import_model(m)
    assert [n.op for n in g.nodes] == ["depth_to_space"]
    torch = pytest.importorskip("torch")
    from mcopt.train.module import to_torch

    got = to_torch(g)(torch.from_numpy(x))
    got = got[0] if isinstance(got, (list, tuple)) else got
    np.testing.assert_array_equal(got.detach().numpy(), _ort(m, x))


def test_transposed_conv_head_stays_blocked() -> None:
    """ConvTranspose 2x2/2 to 24 channels -> Relu -> ConvTranspose (DBNet's head): planned as a
    1x1 conv with the relu in its epilogue to 32 (padded) channels, a blocked DCR pixel shuffle and
    a free channel slice read as a padded layout — no layout conversion before the second conv."""
    pytest.importorskip("tvm")
    import mcopt
    from mcopt.targets.cpu.planning import plan_cpu

    rng = np.random.default_rng(12)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 24, 2, 2)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((24, 1, 2, 2)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w1", "b1"], ["t"], kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Relu", ["t"], ["r"]),
        helper.make_node("ConvTranspose", ["r", "w2"], ["u"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sigmoid", ["u"], ["y"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 6, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.standard_normal((1, 16, 6, 7)).astype(np.float32)
    res = mcopt.optimize(m, target="cpu", passes=["cleanup"])
    np.testing.assert_allclose(res.compiled.run(x)[0], _ort(m, x), rtol=1e-4, atol=1e-5)
    planned = plan_cpu(res.graph, lanes=16)
    ops = {n.op: n for n in planned.nodes}
    assert "relu" not in ops and ops["depth_to_space"].output.type.layout is not None
    sl = ops["slice"].output.type.layout
    assert sl is not None and (sl.channels, sl.padded) == (24, 32)
    np.testing.assert_allclose(interpreter.run(planned, [x])[0], _ort(m, x), rtol=1e-4, atol=1e-5)
