"""Chains of small int8 dense layers lowered as one kernel (:mod:`.kernels.int8_mlp_vnni`).

Mechanical, like the lowering's other fusions (in-place concats, inline quantizes): a chain is a
run of ``qdense`` nodes of batch 1, each reading the one before's requantized u8 output, which
nothing else reads. When the kernel applies (:func:`.kernels.int8_mlp_vnni.mlp_applies`) the
head's lowering emits the whole chain and the other nodes are skipped (``vals.deferred``). The
head may read the blocked output of a conv through a deferred ``flatten`` (LeNet-5), with its
weight's columns in the blocked order (:func:`blocked_flatten_weight`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.ir.core import Graph, Node
from mcopt.ops.quant import output_bounds, requant_multiplier, weight_scales
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue


def blocked_flatten_weight(w: np.ndarray, shape: tuple[int, ...], lay: Any) -> np.ndarray:
    """The ``(N, C*H*W)`` weight of a dense over ``flatten(x)`` for ``x`` (``shape`` ``(1, C, H,
    W)``) stored blocked in ``lay``: column ``c*H*W + h*W + w`` moved to ``((c // bn)*H*W + h*W +
    w)*bn + c % bn``, zero columns for padding channels."""
    _, c, h, wd = shape
    n = w.shape[0]
    cb = lay.padded // lay.bn
    wb = np.zeros((n, cb, lay.bn, h, wd), w.dtype)
    wb.reshape(n, lay.padded, h, wd)[:, :c] = w.reshape(n, c, h, wd)
    return np.ascontiguousarray(wb.transpose(0, 1, 3, 4, 2)).reshape(n, -1)


def _layer(node: Node) -> Any:
    from mcopt.targets.cpu.kernels.int8_mlp_vnni import MLPLayer

    at = node.attrs
    w = node.inputs[1]
    assert w is not None and w.const is not None
    n, k = w.const.shape
    ep = QEpilogue(
        base_dtype=str(at["out_dtype"]),
        base_bounds=output_bounds(at),
        base_zp=int(at["out_zero_point"]) if at["out_dtype"] != "float32" else 0,
    )
    return MLPLayer(int(k), int(n), ep)


def _dense_ok(node: Node) -> bool:
    if node.op != "qdense" or len(node.inputs) < 2:
        return False
    w = node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    x = node.inputs[0]
    return (
        x is not None
        and x.dtype == "uint8"
        and w is not None
        and w.const is not None
        and w.const.ndim == 2
        and (b is None or b.const is not None)
        and tuple(node.output.shape) == (1, w.const.shape[0])
    )


def dense_chains(graph: Graph, target: Any) -> dict[int, list[Node]]:
    """``{id(head node): [head, ..., last]}`` for the chains the kernel takes."""
    from mcopt.targets.cpu.kernels.int8_mlp_vnni import mlp_applies

    outs = {id(v) for v in graph.outputs}
    taken: set[int] = set()
    found: dict[int, list[Node]] = {}
    for node in graph.nodes:
        if id(node) in taken or not _dense_ok(node):
            continue
        chain = [node]
        while True:
            y = chain[-1].output
            if y.dtype != "uint8" or id(y) in outs or len(y.uses) != 1:
                break
            nxt, i = y.uses[0]
            if i != 0 or not _dense_ok(nxt):
                break
            chain.append(nxt)
        # the longest prefix of small layers from the head on
        while len(chain) >= 2 and not mlp_applies(target, [_layer(n) for n in chain]):
            chain.pop()
        if len(chain) >= 2:
            found[id(node)] = chain
            taken.update(id(n) for n in chain)
    return found


def lower_dense_chain(vals: Any, chain: list[Node], flat: Node | None) -> None:
    """Emit ``chain`` as one kernel; ``flat``: the deferred ``flatten`` of a blocked tensor the
    head reads (None: the head's input as it is)."""
    from mcopt.targets.cpu.kernels import int8_conv
    from mcopt.targets.cpu.kernels.int8_dense import pack_int8_dense_weight
    from mcopt.targets.cpu.kernels.int8_mlp_vnni import LANES, int8_mlp_vnni
    from mcopt.targets.cpu.kernels.relax_ops import call_kernel
    from mcopt.targets.relax.lower_quant import _weights

    ctx = vals.ctx
    head = chain[0]
    in_quant = None
    if flat is not None:
        x_v = flat.inputs[0]
        assert x_v is not None
        x, lay = vals.blocked_of(x_v)
        x_shape = lay.blocked_shape(tuple(x_v.shape))
    else:
        x_v = head.inputs[0]
        assert x_v is not None
        q = vals.deferred.get(id(x_v))
        if q is not None and q.op == "quantize" and id(x_v) not in vals.plain:
            # the input's quantize runs in the kernel (lower_planned._fused_quantizes)
            x_v = q.inputs[0]
            assert x_v is not None
            in_quant = (float(q.attrs["scale"][0]), int(q.attrs["zero_point"][0]))
        x = vals.plain_of(x_v)
        x_shape = tuple(x_v.shape)
    layers = [_layer(n) for n in chain]
    args: list[Any] = [x]
    for i, (node, lay_) in enumerate(zip(chain, layers)):
        w, b = _weights(node)
        if i == 0 and flat is not None:
            w = blocked_flatten_weight(w, tuple(x_v.shape), lay)
            lay_ = type(lay_)(w.shape[1], lay_.n, lay_.epilogue)
            layers[0] = lay_
        mult = np.zeros(lay_.n_pad, np.float32)
        w_v = node.inputs[1]
        assert w_v is not None
        mult[: lay_.n] = requant_multiplier(node.attrs, weight_scales(w_v.type), lay_.n)
        be = int8_conv.conv_bias_eff(w, b, int(node.attrs["x_zero_point"]), lay_.n_pad)
        args += [ctx.const(pack_int8_dense_weight(w, LANES)), ctx.const(be), ctx.const(mult)]
    func = int8_mlp_vnni(x_shape, layers, in_quant)
    last = chain[-1]
    y = call_kernel(
        ctx.bb, func, "qdense_chain", args, (1, layers[-1].n), layers[-1].epilogue.out_dtype
    )
    vals.set_plain(last.output, y)
    for node in chain[1:]:
        vals.deferred[id(node.output)] = node
    vals.chose(f"int8 dense: {len(chain)} layers in one kernel")


__all__ = ["blocked_flatten_weight", "dense_chains", "lower_dense_chain"]
