"""Binary weights (BWN) and XNOR-Net (Rastegari et al., ECCV 2016).

- ``binarize-weights``: every selected conv2d / dense becomes ``binary_conv2d`` / ``binary_dense``
  with ``W ~= alpha * sign(W)`` (alpha = mean|W| per output channel), the sign bits packed 32 to a
  uint32 word: weights 32x smaller, the input stays float (additions and subtractions only).
- ``xnor``: the same weights, and the *input* of each such layer binarized as ``beta * sign(x)``
  (beta: the K map of mean |x| over channels, box-filtered, per output position; or one per
  tensor), so the layer is an XNOR-popcount.

As in the paper, the first and last weight layers stay in float (``skip_first_last=True``): they
hold few weights and most of the accuracy. Grouped / depthwise convolutions are left alone. The
pass reports, per layer, the relative weight error ``||W - alpha B|| / ||W||``. Without retraining
(the paper retrains) accuracy drops, much more for ``xnor`` than for ``binarize-weights``. Lossy.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import TensorType
from mcopt.ops.binary import PackedBinary, binarize_weight
from mcopt.pass_manager import Pass, PassContext, register_pass


def binarizable(node: Node) -> str | None:
    """Why ``node`` cannot be binarized (None when it can)."""
    if node.op not in ("conv2d", "dense"):
        return f"op {node.op} is not conv2d/dense"
    if len(node.inputs) < 2 or node.inputs[1] is None or not node.inputs[1].is_const:
        return "weight is not a constant"
    w = node.inputs[1]
    if np.dtype(w.dtype).kind != "f":
        return f"weight dtype {w.dtype} is not float"
    if w.type.encoding is not None and w.type.encoding.kind != "sparse":
        return f"weight is already encoded ({w.type.encoding.describe()})"
    if node.op == "conv2d" and node.attrs["groups"] != 1:
        return f"grouped conv (groups={node.attrs['groups']})"
    x = node.inputs[0]
    if x is None or np.dtype(x.dtype).kind != "f":
        return "input is not float"
    return None


def weight_layers_in_order(graph: Graph) -> list[Node]:
    """conv2d / dense nodes with a constant weight, in graph order."""
    return [
        n
        for n in graph.nodes
        if n.op in ("conv2d", "dense")
        and len(n.inputs) > 1
        and n.inputs[1] is not None
        and n.inputs[1].is_const
    ]


def binarize_node(graph: Graph, node: Node, binary_input: bool, beta: str) -> tuple[Node, float]:
    """Replace ``node`` by its binary form; returns the new node and ``||W - aB|| / ||W||``."""
    x, w = node.inputs[0], node.inputs[1]
    assert x is not None and w is not None and w.const is not None
    b = node.inputs[2] if len(node.inputs) > 2 else None
    words, alpha = binarize_weight(w.const)
    flat = w.const.reshape(w.shape[0], -1).astype(np.float64)
    approx = np.where(flat >= 0, 1.0, -1.0) * alpha.astype(np.float64)[:, None]
    err = float(np.linalg.norm(flat - approx) / max(np.linalg.norm(flat), 1e-30))
    enc = PackedBinary(num_scales=w.shape[0], logical_shape=tuple(w.shape))
    wv = Value(graph.unique_name(f"{w.name}_bits"), TensorType(words.shape, "int32", enc), words)
    av = graph.const(alpha, name=f"{w.name}_alpha")
    common = {"binary_input": int(binary_input), "beta": beta}
    if node.op == "conv2d":
        at = node.attrs
        attrs = {
            "channels": int(w.shape[1]),
            "kernel": tuple(int(d) for d in w.shape[2:]),
            "strides": at["strides"],
            "pads": at["pads"],
            "dilations": at["dilations"],
            **common,
        }
        op = "binary_conv2d"
    else:
        attrs = {"in_features": int(w.shape[1]), **common}
        op = "binary_dense"
    new = graph.add_node(op, [x, wv, av, b], attrs, name=f"{node.name}_bin", before=node)
    graph.replace_all_uses_with(node.output, new.output)
    graph.remove_node(node)
    return new, err


class _BinarizeBase(Pass):
    """Shared options of ``binarize-weights`` and ``xnor``."""

    ops: tuple[str, ...] = ("conv2d", "dense")
    skip: tuple[str, ...] = ()
    skip_first_last: bool = True
    min_params: int = 0
    beta: Literal["position", "tensor", "none"] = "position"
    #: XNOR only: sign is the activation (XNOR-Net's BN -> sign -> conv -> pool block): a relu
    #: right before a binarized input (through pooling / flatten) would make every sign +1, so it goes
    sign_activation: bool = True

    #: binarize the layer inputs too (XNOR) or only the weights (BWN)
    binary_input: ClassVar[bool] = False
    needs_retraining = True

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        layers = weight_layers_in_order(graph)
        edge = {layers[0].name, layers[-1].name} if self.skip_first_last and layers else set()
        changed = False
        errs: list[str] = []
        total = binarized = bypassed = 0
        for n in layers:
            w = n.inputs[1]
            assert w is not None
            total += w.type.size
            if n.op not in self.ops or n.name in self.skip or n.name in edge:
                continue
            if w.type.size < self.min_params:
                continue
            reason = binarizable(n)
            if reason is not None:
                ctx.info(f"{self.name}: {n.name} left in float: {reason}")
                continue
            if self.binary_input and self.sign_activation:
                bypassed += _bypass_relu(graph, n)
            new, err = binarize_node(graph, n, self.binary_input, self.beta)
            binarized += w.type.size
            errs.append(f"{n.name} {err:.3f}")
            changed = True
        if changed:
            ctx.info(
                f"{self.name}: {len(errs)} layer(s) binarized ({binarized} of {total} weights); "
                f"relative weight error ||W - aB||/||W||: {', '.join(errs)}"
                + (f"; {bypassed} relu(s) before binary inputs removed" if bypassed else "")
            )
            ctx.detail("binarized_layers", len(errs))
            ctx.detail(
                "accuracy_note", "without retraining accuracy drops sharply: run finetune after"
            )
        return changed


_THROUGH = ("max_pool", "flatten", "reshape", "identity", "dropout")


def _bypass_relu(graph: Graph, node: Node) -> int:
    """Remove the relu feeding `node`'s input (directly or through ops that commute with it:
    max pooling, flatten, reshape) when nothing else reads it; returns 1 if removed."""
    v = node.inputs[0]
    while v is not None and v.producer is not None and len(v.uses) == 1:
        p = v.producer
        if p.op == "relu":
            if any(o is v for o in graph.outputs):
                return 0
            graph.replace_all_uses_with(v, p.inputs[0])  # type: ignore[arg-type]
            graph.remove_node(p)
            return 1
        if p.op not in _THROUGH:
            return 0
        v = p.inputs[0]
    return 0


@register_pass
class BinarizeWeights(_BinarizeBase):
    """Binary-Weight-Network (XNOR-Net paper, sec. 3.1): ``W ~= alpha sign(W)``, alpha = mean|W| per
    output channel, sign bits packed in uint32 words (32x smaller weights); inputs stay float.

    Options: ``ops``, ``skip`` (node names), ``skip_first_last`` (default True, as the paper),
    ``min_params`` (leave smaller layers in float). Lossy."""

    name = "binarize-weights"
    lossless = False
    binary_input = False


@register_pass
class Xnor(_BinarizeBase):
    """XNOR-Net (sec. 3.2): binary weights (as ``binarize-weights``) and binary inputs
    ``x ~= beta sign(x)``; each layer becomes XNOR + popcount on packed bits, scaled by alpha * beta.

    ``beta``: 'position' (the K map: mean over channels of |x| box-filtered with the kernel window,
    per output position), 'tensor' (one mean|x|), 'none'. Other options as ``binarize-weights``.
    Lossy (much more than BWN without retraining)."""

    name = "xnor"
    lossless = False
    binary_input = True


__all__ = ["BinarizeWeights", "Xnor", "binarizable", "binarize_node"]
