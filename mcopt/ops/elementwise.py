"""Elementwise ops: activations and broadcasting arithmetic."""

from __future__ import annotations

import numpy as np

from mcopt.ir.types import TensorType
from mcopt.ops.schema import Attrs, InTypes, OpSchema, broadcast_shapes, register_op, same_as_input


def _unary(name: str, fn, doc: str, attrs: dict | None = None) -> OpSchema:  # type: ignore[no-untyped-def]
    return register_op(
        OpSchema(
            name=name,
            inputs=("x",),
            attrs=attrs or {},
            infer=same_as_input,
            reference=fn,
            elementwise=True,
            doc=doc,
        )
    )


_unary("relu", lambda x: np.maximum(x, 0).astype(x.dtype), "y = max(x, 0)")


def _binary_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x, y = t[0], t[1]
    assert x is not None and y is not None
    return [TensorType(broadcast_shapes(x.shape, y.shape), x.dtype)]


def _binary_check(t: InTypes, a: Attrs) -> str | None:
    x, y = t[0], t[1]
    assert x is not None and y is not None
    if x.dtype != y.dtype:
        return f"input dtypes differ: {x} and {y}"
    try:
        broadcast_shapes(x.shape, y.shape)
    except ValueError as e:
        return str(e)
    return None


def _binary(name: str, fn, doc: str) -> OpSchema:  # type: ignore[no-untyped-def]
    return register_op(
        OpSchema(
            name=name,
            inputs=("a", "b"),
            check=_binary_check,
            infer=_binary_infer,
            reference=lambda a, b: fn(a, b).astype(np.result_type(a.dtype)),
            elementwise=True,
            doc=doc,
        )
    )


_binary("add", np.add, "y = a + b (numpy broadcasting)")
