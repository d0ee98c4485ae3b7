"""The reference interpreter: runs any graph with each op's numpy reference. It is the oracle every
pass is checked against, and the executor where TVM is not wanted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mcopt.errors import MCoptError
from mcopt.ir.core import Graph, Value


def bind_inputs(
    graph: Graph, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]
) -> dict[int, np.ndarray]:
    """Map user inputs (positional or by name) onto the graph inputs, checking shape and dtype
    (:func:`mcopt.inputs.bind_arrays`)."""
    from mcopt.inputs import bind_arrays

    specs = [(v.name, v.shape, v.dtype) for v in graph.inputs]
    args = (inputs,) if isinstance(inputs, Mapping) else tuple(inputs)
    arrays = bind_arrays(specs, args, who=f"graph {graph.name!r}")
    return {id(v): a for v, a in zip(graph.inputs, arrays)}


def run(
    graph: Graph,
    inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    *,
    keep: Sequence[Value] = (),
) -> list[np.ndarray]:
    """Run `graph` on `inputs`; return the graph outputs (and free intermediates as soon as possible).

    `keep` lists extra values to retain; use :func:`run_values` to get them back.
    """
    return run_values(graph, inputs, keep=keep)[0]


def run_values(
    graph: Graph,
    inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    *,
    keep: Sequence[Value] = (),
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Like :func:`run`, also returning `{value name: array}` for the values in `keep`."""
    from mcopt.ops import get_schema

    env = bind_inputs(graph, inputs)
    pinned = {id(v) for v in graph.outputs} | {id(v) for v in keep}
    remaining = {}
    for n in graph.nodes:
        for v in n.inputs:
            if v is not None and not v.is_const:
                remaining[id(v)] = remaining.get(id(v), 0) + 1
    for node in graph.nodes:
        schema = get_schema(node.op)
        args = []
        for v in node.inputs:
            if v is None:
                args.append(None)
            elif v.is_const:
                args.append(v.const)
            else:
                args.append(env[id(v)])
        try:
            in_types = [None if v is None else v.type for v in node.inputs]
            outs = schema.run_reference(args, node.attrs, in_types)
        except MCoptError:
            raise
        except Exception as e:  # a reference failing is a bug or a bad graph: name the node
            raise MCoptError(
                f"reference interpreter failed at node {node.name!r} ({node.op}): {type(e).__name__}: {e}"
            ) from e
        for v, a in zip(node.outputs, outs):
            env[id(v)] = np.asarray(a)
        for v in node.inputs:
            if v is not None and not v.is_const:
                remaining[id(v)] -= 1
                if remaining[id(v)] == 0 and id(v) not in pinned:
                    env.pop(id(v), None)
    results = []
    for v in graph.outputs:
        results.append(v.const if v.is_const else env[id(v)])
    kept = {v.name: (v.const if v.is_const else env[id(v)]) for v in keep}
    return results, kept
