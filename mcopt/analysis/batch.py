"""Is dim 0 a free batch dim? The graph is built with a static batch (import fixes a dynamic one to
1), but most CNNs never look at it: then the exported ONNX can keep the batch symbolic and the
training backend can run any batch. :func:`batch_blocker` says which node ties the graph to its
static batch, if any."""

from __future__ import annotations

from mcopt.ir.core import Graph, Node
from mcopt.ops._util import norm_axes, norm_axis

#: ops whose `axis` / `axes` attribute must not name dim 0
_AXIS_OPS = {
    "concat": "axis", "split": "axis", "softmax": "axis", "log_softmax": "axis",
    "argmax": "axis", "argmin": "axis",
}  # fmt: skip
_REDUCE = ("reduce_mean", "reduce_max", "reduce_min", "reduce_sum")
_AXES_OPS = {"squeeze": "axes", "unsqueeze": "axes", **{op: "axes" for op in _REDUCE}}


def node_blocks_batch(node: Node) -> str | None:
    """Why `node` depends on the batch size (None when it works for any batch)."""
    x = node.inputs[0] if node.inputs else None
    rank = x.type.rank if x is not None else 0
    a = node.attrs
    if node.op == "reshape" and x is not None:
        shape = tuple(a["shape"])
        if not shape or not x.shape or shape[0] != x.shape[0]:
            return f"reshape {list(x.shape)} -> {list(shape)} changes dim 0"
    elif node.op == "expand" and x is not None:
        shape = tuple(a["shape"])
        if len(shape) != rank or shape[0] != x.shape[0]:
            return f"expand {list(x.shape)} -> {list(shape)} changes dim 0"
    elif node.op == "flatten":
        ax = a["axis"] + rank if a["axis"] < 0 else a["axis"]
        if ax == 0:
            return "flatten with axis 0 folds the batch"
    elif node.op == "transpose" and a["perm"][0] != 0:
        return f"transpose {list(a['perm'])} moves dim 0"
    elif node.op in _AXIS_OPS and norm_axis(a[_AXIS_OPS[node.op]], rank) == 0:
        return f"{node.op} over dim 0"
    elif node.op in _AXES_OPS:
        out_rank = node.outputs[0].type.rank if node.op == "unsqueeze" else rank
        axes = norm_axes(a[_AXES_OPS[node.op]], out_rank)
        if node.op in _REDUCE and not a["axes"]:
            return f"{node.op} over all dims"
        if axes is not None and 0 in axes:
            return f"{node.op} of dim 0"
    elif node.op == "slice":
        from mcopt.ops.tensor import _slices

        if x is not None and _slices(x.shape, dict(a))[0] != slice(None):
            return "slice of dim 0"
    elif node.op == "pad" and (a["pads"][0] or a["pads"][rank]):
        return "pad of dim 0"
    return None


def batch_blocker(graph: Graph) -> str | None:
    """'node NAME (op): why' for the first node that ties the graph to its static batch, else None.
    Inputs must share one batch size and every output must carry it at dim 0."""
    if not graph.inputs or any(not v.shape for v in graph.inputs):
        return "an input has no batch dim"
    b = graph.inputs[0].shape[0]
    if any(v.shape[0] != b for v in graph.inputs):
        return "inputs have different batch sizes"
    for n in graph.nodes:
        why = node_blocks_batch(n)
        if why:
            return f"node {n.name!r} ({n.op}): {why}"
    for v in graph.outputs:
        if not v.shape or v.shape[0] != b or v.is_const:
            return f"output {v.name!r} {list(v.shape)} does not carry the batch at dim 0"
    return None


__all__ = ["batch_blocker", "node_blocks_batch"]
