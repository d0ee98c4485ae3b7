"""Learning the architecture with tsReLU gates (Srinivas & Babu, "Learning Neural Network Architectures
using Backpropagation", BMVC 2016; the seed's "Neuron and Layer Pruning")::

    tsReLU(x) = w * x        for x >= 0
              = w * d * x    otherwise

with one gate ``w`` per neuron / channel and one ``d`` per layer, trained with the task loss plus
``lambda1 * sum w (1 - w) + lambda2 * sum d (1 - d)`` (both push the gates to 0 or 1) and, as in the
paper, a model-complexity term ``lambda3 * sum w`` (fewer neurons); gates are clamped to [0, 1]. After
training ``w' = [w >= 0.5]`` and ``d' = [d >= 0.5]``:

- a closed gate (w' = 0) removes its neuron: the producer's row and bias are zeroed and
  ``remove-dead-neurons`` deletes them physically;
- an open gate's ``w`` is folded into the producer's row and bias (``w * relu(x) = relu(w * x)`` for
  ``w >= 0``: exact);
- a layer whose ``d`` opened (d' = 1) has a linear activation: the relu goes, and a dense layer
  followed by another merges into one (``W2 W1``, ``W2 b1 + b2``) where that has fewer weights.

Gates sit on every relu fed by a conv2d / dense with constant weights whose output feeds only
weight layers through channel-preserving ops (pooling, flatten) — the channels whose removal
``remove-dead-neurons`` can carry through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mcopt.ir.core import Graph, Node
from mcopt.train.module import GraphModule


@dataclass
class Gate:
    relu: str  # the relu node's name
    producer: str  # the conv2d / dense whose outputs it gates
    channels: int
    w_key: str
    d_key: str


def gate_sites(graph: Graph, skip: tuple[str, ...] = ()) -> list[tuple[Node, Node]]:
    """(relu, producer) pairs that get tsReLU gates."""
    out = []
    for n in graph.nodes:
        if n.op != "relu" or n.name in skip:
            continue
        x = n.inputs[0]
        p = x.producer if x is not None else None
        if p is None or p.op not in ("conv2d", "dense") or p.name in skip:
            continue
        if len(p.inputs) < 2 or p.inputs[1] is None or not p.inputs[1].is_const:
            continue
        if p.op == "conv2d" and p.attrs["groups"] != 1:
            continue
        if any(o is n.output for o in graph.outputs) or len(x.uses) != 1:
            continue
        out.append((n, p))
    return out


def install_gates(module: GraphModule, skip: tuple[str, ...] = ()) -> list[Gate]:
    """Replace the forward of every gated relu in `module` by tsReLU with fresh gates (w = 1,
    d = 0: exactly the relu at the start)."""
    gates = []
    for relu, prod in gate_sites(module.graph, skip):
        c = prod.output.shape[1]
        wk = module._unique_key(f"{relu.name}_tsrelu_w")
        module.register_parameter(wk, torch.nn.Parameter(torch.ones(c, dtype=module.dtype)))
        dk = module._unique_key(f"{relu.name}_tsrelu_d")
        module.register_parameter(dk, torch.nn.Parameter(torch.zeros((), dtype=module.dtype)))

        def fwd(x: torch.Tensor, _w: str = wk, _d: str = dk) -> torch.Tensor:
            w = module._parameters[_w]
            d = module._parameters[_d]
            assert w is not None and d is not None
            shape = [1, -1] + [1] * (x.dim() - 2)
            return w.reshape(shape) * torch.where(x >= 0, x, d * x)

        module.replace_forward(relu, fwd)
        gates.append(Gate(relu.name, prod.name, c, wk, dk))
    return gates


def gate_penalty(
    module: GraphModule, gates: list[Gate], lambda1: float, lambda2: float, lambda3: float
) -> torch.Tensor:
    """lambda1 * sum w(1-w) + lambda2 * sum d(1-d) + lambda3 * sum w (the seed's sums)."""
    ws = torch.cat([module._parameters[g.w_key] for g in gates])  # type: ignore[misc]
    ds = torch.stack([module._parameters[g.d_key] for g in gates])  # type: ignore[misc]
    return lambda1 * (ws * (1 - ws)).sum() + lambda2 * (ds * (1 - ds)).sum() + lambda3 * ws.sum()


def clamp_gates(module: GraphModule, gates: list[Gate]) -> None:
    for g in gates:
        module._parameters[g.w_key].clamp_(0.0, 1.0)  # type: ignore[union-attr]
        module._parameters[g.d_key].clamp_(0.0, 1.0)  # type: ignore[union-attr]


def apply_gates(
    graph: Graph, module: GraphModule, gates: list[Gate]
) -> dict[str, dict[str, float]]:
    """Write w' / d' into `graph` (see the module docstring); returns per-layer
    ``{relu: {"kept": n, "of": c, "d": d}}``. Run remove-dead-neurons and merge_linear after."""
    out: dict[str, dict[str, float]] = {}
    for g in gates:
        w = module._parameters[g.w_key].detach().double().numpy()  # type: ignore[union-attr]
        d = float(module._parameters[g.d_key].detach())  # type: ignore[union-attr]
        prod = graph.find_node(g.producer)
        relu = graph.find_node(g.relu)
        keep = w >= 0.5
        scale = np.where(keep, w, 0.0)
        wv = prod.inputs[1]
        assert wv is not None and wv.const is not None
        shp = [-1] + [1] * (wv.const.ndim - 1)
        wv.const = (wv.const * scale.reshape(shp)).astype(wv.dtype)
        b = prod.inputs[2] if len(prod.inputs) > 2 else None
        if b is not None and b.const is not None:  # (no bias: a zero row already outputs 0)
            b.const = (b.const * scale).astype(b.dtype)
        linear = d >= 0.5
        if linear:
            graph.replace_all_uses_with(relu.output, relu.inputs[0])  # type: ignore[arg-type]
            graph.remove_node(relu)
        out[g.relu] = {
            "kept": int(keep.sum()),
            "of": g.channels,
            "d": round(d, 3),
            "linear": linear,
        }
    return out


def merge_linear(graph: Graph) -> int:
    """dense(dense(x, W1, b1), W2, b2) -> dense(x, W2 W1, W2 b1 + b2) where the inner output has no
    other use and the product has fewer weights; returns how many merged."""
    merged = 0
    for n in list(graph.iter_nodes()):
        if n.op != "dense" or n.graph is not graph:
            continue
        x = n.inputs[0]
        p = x.producer if x is not None else None
        if p is None or p.op != "dense" or len(x.uses) != 1 or any(o is x for o in graph.outputs):  # type: ignore[union-attr]
            continue
        w1, w2 = p.inputs[1], n.inputs[1]
        if w1 is None or w2 is None or w1.const is None or w2.const is None:
            continue
        if w1.type.encoding is not None or w2.type.encoding is not None:
            continue
        if w2.shape[0] * w1.shape[1] >= w1.const.size + w2.const.size:
            continue
        b1 = p.inputs[2].const if len(p.inputs) > 2 and p.inputs[2] is not None else None
        b2 = n.inputs[2].const if len(n.inputs) > 2 and n.inputs[2] is not None else None
        w = w2.const.astype(np.float64) @ w1.const.astype(np.float64)
        b = np.zeros(w.shape[0])
        if b1 is not None:
            b += w2.const.astype(np.float64) @ b1.astype(np.float64)
        if b2 is not None:
            b += b2
        dt = np.dtype(w2.dtype)
        new = graph.add_node(
            "dense",
            [
                p.inputs[0],
                graph.const(w.astype(dt), f"{n.name}_w"),
                graph.const(b.astype(dt), f"{n.name}_b"),
            ],
            name=f"{p.name}_{n.name}",
            before=n,
        )
        name = n.output.name
        graph.replace_all_uses_with(n.output, new.output)
        graph.remove_node(n)
        graph.remove_node(p)
        new.output.name = name  # graph outputs keep their names
        merged += 1
    return merged


__all__ = [
    "Gate",
    "apply_gates",
    "clamp_gates",
    "gate_penalty",
    "gate_sites",
    "install_gates",
    "merge_linear",
]
