"""Constant folding at import: shape arithmetic and weight preprocessing become constants.

Approach: while importing node by node, a node whose inputs are all constants is evaluated with
``onnx.reference.ReferenceEvaluator`` on a one-node model. `Shape`/`Size` of a non-constant value are
answered from mcopt's static types first, so the usual exporter patterns
(``Reshape(x, Concat(Gather(Shape(x), 0), [-1]))``, ``ConstantOfShape(Shape(x))``, ``Range``...) fold
down to plain constants before any mcopt op is built.

Why the ONNX reference evaluator rather than onnx-graphsurgeon's ``fold_constants``: it is the
specification's own implementation of every default-domain op at every opset (so folding is exactly
ONNX semantics, including old-opset variants), it needs no onnxruntime session per node, and it works
inside the importer's single pass, where mcopt already knows every static shape (graphsurgeon would
need a separate shape-inference + folding round on the ONNX graph before import, which breaks on
dynamic dims that only the user's ``input_shapes`` resolve).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcopt.ir.types import DTYPES

#: ops whose results are not a function of their inputs: never folded
NONDETERMINISTIC = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
#: ops with subgraphs or side effects that a one-node model cannot evaluate
UNFOLDABLE = NONDETERMINISTIC | {"If", "Loop", "Scan", "SequenceMap"}


class FoldError(Exception):
    """The reference evaluator could not evaluate a node (the caller maps the op instead)."""


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor of an ONNX `Constant` node for the common attribute forms (None: use the evaluator)."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def shape_of(shape: Sequence[int], node: onnx.NodeProto) -> np.ndarray:
    """ONNX `Shape` (with opset-15 `start`/`end`) of a tensor of static `shape`."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rank = len(shape)
    start, end = int(attrs.get("start", 0)), int(attrs.get("end", rank))
    return np.array(list(shape)[slice(*slice(start, end).indices(rank))], dtype=np.int64)


def evaluate(
    node: onnx.NodeProto, inputs: Sequence[np.ndarray | None], opsets: dict[str, int]
) -> list[np.ndarray]:
    """Evaluate one node on constant inputs with the ONNX reference implementation."""
    try:
        return _evaluate(node, inputs, opsets)
    except FoldError:
        raise
    except Exception as e:  # building the one-node model failed (odd dtype, bad attribute)
        raise FoldError(f"{type(e).__name__}: {e}") from None


def _evaluate(
    node: onnx.NodeProto, inputs: Sequence[np.ndarray | None], opsets: dict[str, int]
) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    feeds = {n: a for n, a in zip(names, inputs) if a is not None}
    outs = [f"out{i}" if o else "" for i, o in enumerate(node.output)]
    one = helper.make_node(
        node.op_type, names, outs, domain=node.domain or None, name=node.name or None
    )
    one.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [one],
        "fold",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in feeds.items()
        ],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs if o],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()]
    )
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:  # the evaluator raises many kinds; the caller reports the node
        raise FoldError(f"{type(e).__name__}: {e}") from None
    arrays = [np.asarray(r) for r in results]
    for a in arrays:
        if a.dtype.name not in DTYPES:
            raise FoldError(f"folded to a {a.dtype} tensor, which mcopt cannot hold")
    it = iter(arrays)
    return [next(it) if o else np.zeros(0, np.float32) for o in outs]
