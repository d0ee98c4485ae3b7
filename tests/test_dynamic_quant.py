"""onnxruntime's dynamic quantization (``quantize_dynamic``: ``DynamicQuantizeLinear`` +
``ConvInteger`` / ``MatMulInteger`` with run-time int32 biases, ``com.microsoft``
``DynamicQuantizeLSTM``; ddddocr's ``common_old.onnx`` is one) imported as the float model it
approximates: the file's 8-bit weights exactly, activations float. Checked against onnxruntime on
the rewritten standard-ONNX model (every route) and against the float model quantized (within the
weights' rounding)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.onnx_io import import_model
from mcopt.onnx_io.dynamic_quant import DYNAMIC_OPS, dequantize_dynamic

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
RNG = np.random.default_rng(41)


def _float_model() -> onnx.ModelProto:
    c = lambda n, a: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    h = 16
    inits = [
        c("w", RNG.standard_normal((8, 1, 3, 3)) / 3), c("b", RNG.standard_normal(8) / 4),
        c("m", RNG.standard_normal((8 * 6, 24)) / 7),
        c("W", RNG.standard_normal((2, 4 * h, 24)) / 5), c("R", RNG.standard_normal((2, 4 * h, h)) / 5),
        c("B", RNG.standard_normal((2, 8 * h)) / 5),
        numpy_helper.from_array(np.array([6, 1, 48], np.int64), "shape"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[3, 0, 1, 2]),  # (W, N, C, H)
        helper.make_node("Reshape", ["t", "shape"], ["s"]),  # (seq 6, batch 1, 8 * 6)
        helper.make_node("MatMul", ["s", "m"], ["f"]),
        helper.make_node(
            "LSTM", ["f", "W", "R", "B"], ["y"], hidden_size=h, direction="bidirectional"
        ),  # fmt: skip
    ]
    graph = helper.make_graph(
        nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("dq")
    src, dst = d / "float.onnx", d / "dynamic.onnx"
    onnx.save(_float_model(), src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantization.quantize_dynamic(src, dst, weight_type=quantization.QuantType.QInt8)
    return src, dst


def test_dynamic_model_imports_as_float(dynamic: tuple[Path, Path]) -> None:
    src, dst = dynamic
    q = onnx.load(dst)
    ops = {n.op_type for n in q.graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM"} <= ops
    before = dst.read_bytes()
    with pytest.warns(UserWarning, match="dynamic quantization"):
        g = import_model(str(dst))
    assert dst.read_bytes() == before  # the user's file is untouched
    assert not {n.op for n in g.nodes} & {o.lower() for o in DYNAMIC_OPS}
    assert g.metadata["dequantized_dynamic"] >= 4
    x = RNG.standard_normal((1, 1, 6, 6)).astype(np.float32)
    pytest.importorskip("tvm")
    from mcopt.testing.routes import assert_routes_match, outputs_by_route

    rewritten, _ = dequantize_dynamic(q, "the model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        routes = outputs_by_route(rewritten, {"x": x}, passes=["cleanup"])
        assert_routes_match(routes, rtol=1e-4, atol=1e-5)
        import mcopt

        res = mcopt.optimize(str(dst), target="cpu", measure=False, check=False)
    got = res.compiled.run(x)[0]
    np.testing.assert_allclose(got, routes["onnxruntime"][0], rtol=1e-4, atol=1e-5)
    # the float model within the weights' 8-bit rounding
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()


def test_integer_conv_on_a_real_integer_input_is_refused() -> None:
    from mcopt.errors import UnsupportedOpError

    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w"], ["y"])], "ci",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)], initializer=[w],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UnsupportedOpError) as e:
        import_model(m)
    assert "not from DynamicQuantizeLinear" in str(e.value) and "\n" not in str(e.value)
