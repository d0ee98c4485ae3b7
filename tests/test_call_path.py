"""The compiled model's call path: outputs are views of the runtime's tensors (no copy), never of an
input buffer the next call refills; the fast re-binding path still checks what it must."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

pytest.importorskip("tvm")

import mcopt  # noqa: E402
from mcopt.errors import ShapeError  # noqa: E402
from mcopt.testing import zoo  # noqa: E402


def _single(op: str):  # type: ignore[no-untyped-def]
    g = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("op", ["Identity", "Relu"])
def test_an_output_survives_the_next_call(op: str) -> None:
    c = mcopt.optimize(_single(op), target="cpu", measure=False).compiled
    a = c.run(np.ones((1, 16), np.float32))[0]
    c.run(np.full((1, 16), 2.0, np.float32))
    assert np.all(a == 1.0)  # not overwritten by the second call's input or output


def test_the_fast_path_still_checks_inputs() -> None:
    X, _ = zoo.mnist_test_set()
    c = mcopt.optimize(zoo.lenet5_path(), target="cpu", measure=False).compiled
    first = c.run(X[:1])[0].copy()
    assert np.array_equal(c.run(X[:1])[0], first)  # the re-bound call gives the same answer
    with pytest.raises(ShapeError, match="expected shape"):
        c.run(X[:2])
    assert np.allclose(c.run(X[:1].astype(np.float64))[0], first)  # same-kind dtype cast
