"""Four imports the onnx wheel's pytorch models needed (and NLP / style-transfer exports use):
``Gather`` of computed indices from a constant 2-D table (a token embedding, negative indices
counted from the end) as an ``embedding`` lookup, ``Tile`` with constant repeats,
``InstanceNormalization`` and ``Sign`` — each against onnxruntime through every route."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.onnx_io import import_model
from mcopt.testing.routes import assert_routes_match, outputs_by_route

pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(51)


def _model(nodes, inputs, inits=()) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes, "m", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(inits),
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_gather_of_token_ids_is_an_embedding_lookup() -> None:
    table = numpy_helper.from_array(RNG.standard_normal((11, 6)).astype(np.float32), "table")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
        helper.make_node("Relu", ["e"], ["y"]),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])], [table])
    assert "embedding" in {n.op for n in import_model(m).nodes}
    ids = np.array([[0, 3, 10, -1, -11], [5, 5, 2, 7, 1]], np.int64)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"ids": ids}, passes=["cleanup"]), rtol=0, atol=0)


def test_gather_of_computed_indices_from_a_computed_tensor_is_a_take() -> None:
    """Not an embedding (the table is computed): a general ``take``, every route = onnxruntime."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0),
        helper.make_node("Gather", ["r", "i"], ["y"], axis=1),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])])
    assert "take" in [n.op for n in import_model(m).nodes]
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=0, atol=0)


def test_tile_with_constant_repeats() -> None:
    reps = numpy_helper.from_array(np.array([2, 1, 3], np.int64), "reps")
    nodes = [helper.make_node("Tile", ["x", "reps"], ["t"]), helper.make_node("Neg", ["t"], ["y"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])], [reps])
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=0, atol=0)


def test_instance_normalization() -> None:
    c = lambda n, a: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    inits = [c("s", RNG.uniform(0.5, 2, 8)), c("b", RNG.standard_normal(8))]
    nodes = [
        helper.make_node("InstanceNormalization", ["x", "s", "b"], ["n"], epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 5, 7])], inits)
    x = (RNG.standard_normal((2, 8, 5, 7)) * 3 + 1).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-5)


def test_sign() -> None:
    nodes = [helper.make_node("Sign", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])])
    x = np.array([[-2.0, -0.0, 0.0, 0.5, 3.0], [1.0, -1.0, 2.0, -3.0, 0.25]], np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=0, atol=0)
