"""The IR verifier: every pass must leave the graph valid (xDSL's rule).

Checks: known ops and attributes, arity, use-def chains consistent in both directions, topological
order, unique names, constants match their types, output types equal what inference says.
"""

from __future__ import annotations

import numpy as np

from mcopt.errors import MCoptError, VerifyError
from mcopt.ir.core import Graph, Value


def verify_problems(graph: Graph) -> list[str]:
    """All problems found, each one line naming the node/value (empty when the graph is valid)."""
    from mcopt.ops import get_schema

    problems: list[str] = []
    defined: set[int] = set()
    names: dict[str, str] = {}

    def define(v: Value, where: str) -> None:
        if v.name in names:
            problems.append(f"value name %{v.name} is defined twice ({names[v.name]} and {where})")
        names[v.name] = where
        defined.add(id(v))

    for v in graph.inputs:
        if v.producer is not None or v.is_const:
            problems.append(f"graph input %{v.name} must have no producer and no constant")
        define(v, "graph input")
    node_names: set[str] = set()
    for node in graph.nodes:
        where = f"node {node.name!r} ({node.op})"
        if node.graph is not graph:
            problems.append(f"{where} does not point back to its graph")
        if node.name in node_names:
            problems.append(f"node name {node.name!r} is used twice")
        node_names.add(node.name)
        try:
            schema = get_schema(node.op)
        except MCoptError as e:
            problems.append(f"{where}: {e}")
            continue
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if (node, i) not in v.uses:
                problems.append(f"{where}: input {i} %{v.name} does not list this use")
            if v.is_const:
                if id(v) not in defined:
                    define(v, "constant")
                if tuple(v.const.shape) != v.shape or v.const.dtype != np.dtype(v.dtype):
                    problems.append(
                        f"constant %{v.name}: array {v.const.dtype}{list(v.const.shape)} does not match type {v.type}"
                    )
                elif v.type.encoding is not None:
                    why = v.type.encoding.problem(v.const)
                    if why is not None:
                        problems.append(
                            f"constant %{v.name}: its {v.type.encoding.describe()} {why}"
                        )
            elif id(v) not in defined:
                problems.append(
                    f"{where}: input %{v.name} is used before it is defined (or not in the graph)"
                )
        try:
            normalized = schema.normalize_attrs(node.attrs, node.name)
            if normalized != node.attrs:
                problems.append(
                    f"{where}: attributes are not normalized (missing defaults or lists)"
                )
            expected = schema.infer_types(
                [None if v is None else v.type for v in node.inputs], normalized, node.name
            )
        except MCoptError as e:
            problems.append(str(e))
            expected = None
        if expected is not None:
            if len(expected) != len(node.outputs):
                problems.append(
                    f"{where}: has {len(node.outputs)} outputs, schema infers {len(expected)}"
                )
            else:
                for out, t in zip(node.outputs, expected):
                    if (out.shape, out.dtype) != (t.shape, t.dtype):
                        problems.append(
                            f"{where}: output %{out.name} has type {out.type}, inference says {t}"
                        )
        for out in node.outputs:
            if out.producer is not node:
                problems.append(f"{where}: output %{out.name} does not point back to it")
            define(out, where)
            for user, idx in out.uses:
                if user.graph is not graph or user.inputs[idx] is not out:
                    problems.append(
                        f"value %{out.name} lists a stale use by {user.name!r} input {idx}"
                    )
    for v in graph.outputs:
        if id(v) not in defined:
            problems.append(f"graph output %{v.name} is not defined by any node, input or constant")
    return problems


def verify(graph: Graph) -> None:
    """Raise VerifyError with the first problem (and how many more) when the graph is invalid."""
    problems = verify_problems(graph)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise VerifyError(f"graph {graph.name!r} is invalid: {problems[0]}{more}")
