"""An mcopt graph as a ``torch.nn.Module`` and back: :func:`to_torch` / :func:`from_torch`.

The module runs the graph node by node with each op's *training form* (:mod:`mcopt.train.forms`:
one entry per op, the same semantics as the op's numpy reference). Its parameters are the graph's
weights, held in a form that trains in the weight's own encoding:

- plain float weights and biases: a parameter;
- pruned weights (``Sparse`` encoding): a parameter times a fixed 0/1 mask, so pruned weights get no
  gradient and stay exactly zero (Han et al. 2015);
- codebook weights (``codebook_weight``): the centroids are the parameter, the indices a fixed buffer;
  autograd of the gather sums the gradients of every weight that shares a centroid — Deep Compression's
  trained quantization (Han et al. 2016, sec. 3.3); a zero centroid of a pruned layer stays zero;
- int8 / fixed-point weights: a float *latent* weight in real units, fake-quantized in the forward pass
  with the straight-through estimator (Jacob et al. 2018), written back as integer codes;
- binary weights (BWN / XNOR): a float latent weight, ``sign`` with the straight-through estimator
  (gradient cancelled where |w| > 1), the per-channel alpha a parameter (Rastegari et al. 2016);
- batch norm: trained in eval mode (running statistics fixed buffers; scale and bias trained).

Tensors whose IR dtype is an integer (quantized activations, fixed-point values) are float tensors
holding integer values. The module is batch-agnostic: dim 0 of every graph input is the batch; ops
that move or reduce over dim 0 are refused with a message naming the node.

``from_torch(module, graph)`` writes the trained parameters back into the graph — codes, masks,
packed bits and encodings kept — and verifies it: afterwards the reference interpreter computes what
the module computes (tests check it on every op family).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mcopt.errors import UnsupportedOpError
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import Sparse, TensorType
from mcopt.ir.verify import verify

Transform = Callable[[torch.Tensor], torch.Tensor]
Encode = Callable[[np.ndarray, Value], tuple[np.ndarray, TensorType]]


@dataclass
class ConstSlot:
    """How one constant of the graph lives in the module."""

    value: str  # the IR value's name
    key: str  # its parameter / buffer name in the module
    trainable: bool
    #: latent parameter -> the IR-valued tensor the op reads (mask, fake-quant, sign); None = as is
    transform: Transform | None = None
    #: IR-valued array -> (const array, type) written back (default: cast to the value's dtype)
    encode: Encode | None = None
    #: a fixed buffer that training updates in place (batch norm's running statistics in
    #: ``bn_train`` mode): written back like a parameter
    writeback: bool = False


class Builder:
    """What a training form uses to declare how its node's constant inputs are held."""

    def __init__(self, module: GraphModule, node: Node) -> None:
        self.module = module
        self.node = node

    @property
    def dtype(self) -> torch.dtype:
        return self.module.dtype

    @property
    def training(self) -> bool:
        return self.module.training

    def const(self, i: int) -> np.ndarray | None:
        v = self.node.inputs[i] if i < len(self.node.inputs) else None
        return None if v is None else v.const

    def param(
        self,
        i: int,
        *,
        init: np.ndarray | None = None,
        transform: Transform | None = None,
        encode: Encode | None = None,
    ) -> None:
        """Input `i`, when constant, becomes a trainable parameter (initialised from `init`, default
        the constant) read through `transform` and written back through `encode`."""
        v = self._const_value(i)
        if v is None:
            return
        enc = v.type.encoding
        if isinstance(enc, Sparse) and transform is None:
            mask = torch.as_tensor(np.asarray(v.const) != 0)
            mkey = self.module._add_buffer(f"{v.name}_mask", mask.to(self.dtype))

            def transform(t: torch.Tensor, _k: str = mkey) -> torch.Tensor:
                return t * self.module._buffers[_k]  # type: ignore[operator]

            encode = encode or _encode_sparse
        arr = np.asarray(v.const if init is None else init, np.float64)
        self.module._claim(v, arr, trainable=True, transform=transform, encode=encode)

    def buffer(
        self,
        i: int,
        array: np.ndarray | None = None,
        dtype: torch.dtype | None = None,
        *,
        writeback: bool = False,
    ) -> None:
        """Input `i`, when constant, is a fixed buffer (e.g. codebook indices as int64);
        ``writeback``: one the forward updates in place, written back to the graph."""
        v = self._const_value(i)
        if v is None:
            return
        arr = np.asarray(v.const if array is None else array)
        self.module._claim(v, arr, trainable=False, dtype=dtype)
        if writeback:
            self.module.slots[self.module._slot_of_value[id(v)]].writeback = True

    def _const_value(self, i: int) -> Value | None:
        v = self.node.inputs[i] if i < len(self.node.inputs) else None
        return v if v is not None and v.is_const else None

    def refuse(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"node {self.node.name!r} ({self.node.op}) cannot be trained: {why}"
        )


def _encode_sparse(arr: np.ndarray, v: Value) -> tuple[np.ndarray, TensorType]:
    old = v.type.encoding
    assert isinstance(old, Sparse)
    out = np.ascontiguousarray(arr.astype(v.dtype))
    enc = Sparse.of(out, old.index_bits)
    return out, TensorType(v.shape, v.dtype, enc)


def _default_encode(arr: np.ndarray, v: Value) -> tuple[np.ndarray, TensorType]:
    dt = np.dtype(v.dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        arr = np.clip(np.rint(arr), info.min, info.max)
    return np.ascontiguousarray(arr.astype(dt)), v.type


def _key(name: str) -> str:
    return "c_" + re.sub(r"[^0-9A-Za-z_]", "_", name)


class GraphModule(nn.Module):
    """A graph as a module: ``forward(*inputs)`` returns the graph output (a tuple when it has
    several); ``forward(*inputs, capture=[names])`` also returns ``{name: tensor}`` of inner values
    (for hint losses). Build with :func:`to_torch`."""

    def __init__(self, graph: Graph, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from mcopt.train.forms import form_for

        self.graph = graph
        self.dtype = dtype
        #: batch norm in training mode uses the batch's statistics and updates the running ones
        #: (training from scratch); False: running statistics fixed (fine-tuning, the default)
        self.bn_train = False
        self.slots: dict[str, ConstSlot] = {}
        self._slot_of_value: dict[int, str] = {}
        self._slot_index: dict[int, int] = {}
        self._names: list[str] = []
        self._consts: list[tuple[int, str]] = []  # (env index, module key)
        self._steps: list[tuple[Node, Callable[..., Any], list[int], list[int]]] = []
        self.input_names = [v.name for v in graph.inputs]
        for v in graph.inputs:
            self._index(v)
        for node in graph.nodes:
            builder = Builder(self, node)
            fwd = form_for(node.op, node)(node, builder)
            ins = [-1 if v is None else self._index(v) for v in node.inputs]
            outs = [self._index(v) for v in node.outputs]
            self._steps.append((node, fwd, ins, outs))
        for node in graph.nodes:  # constants no form claimed: fixed buffers
            for v in node.inputs:
                if v is not None and v.is_const and id(v) not in self._slot_of_value:
                    self._claim(v, np.asarray(v.const), trainable=False)
        self.output_index = [self._index(v) for v in graph.outputs]
        # values dead after each step (their last reader): dropped from the forward's environment,
        # so a no-grad forward holds only the live activations (MobileNet-V2 at 224x224 in batches
        # of 256 held every activation at once: ~20 GB)
        last: dict[int, int] = {}
        for s_i, (_node, _fwd, ins, _outs) in enumerate(self._steps):
            for i in ins:
                if i >= 0:
                    last[i] = s_i
        keep = set(self.output_index) | {idx for idx, _k in self._consts}
        self._dead: list[list[int]] = [[] for _ in self._steps]
        for i, s_i in last.items():
            if i not in keep:
                self._dead[s_i].append(i)

    # --- construction -------------------------------------------------------------------------
    def _index(self, v: Value) -> int:
        idx = self._slot_index.get(id(v))
        if idx is None:
            idx = len(self._names)
            self._slot_index[id(v)] = idx
            self._names.append(v.name)
        return idx

    def _unique_key(self, name: str) -> str:
        key, n = _key(name), 1
        while key in self._parameters or key in self._buffers:
            key, n = f"{_key(name)}_{n}", n + 1
        return key

    def _add_buffer(self, name: str, t: torch.Tensor) -> str:
        key = self._unique_key(name)
        self.register_buffer(key, t)
        return key

    def _claim(
        self,
        v: Value,
        arr: np.ndarray,
        *,
        trainable: bool,
        transform: Transform | None = None,
        encode: Encode | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if id(v) in self._slot_of_value:
            return  # a constant read by several nodes: the first claim decides
        key = self._unique_key(v.name)
        if trainable:
            self.register_parameter(key, nn.Parameter(torch.as_tensor(arr, dtype=self.dtype)))
        else:
            if dtype is None:
                dtype = torch.bool if arr.dtype == np.bool_ else self.dtype
            self.register_buffer(key, torch.tensor(np.array(arr, copy=True)).to(dtype))
        self.slots[key] = ConstSlot(v.name, key, trainable, transform, encode)
        self._slot_of_value[id(v)] = key
        self._consts.append((self._index(v), key))

    # --- running ---------------------------------------------------------------------------------
    def const_tensor(self, key: str) -> torch.Tensor:
        """The IR-valued tensor of a constant (its latent parameter through its transform)."""
        slot = self.slots[key]
        t = self._parameters[key] if slot.trainable else self._buffers[key]
        assert t is not None
        return slot.transform(t) if slot.transform is not None else t

    def forward(self, *inputs: Any, capture: Sequence[str] | None = None) -> Any:
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"the graph takes {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}"
            )
        env: list[Any] = [None] * len(self._names)
        for i, x in enumerate(inputs):
            t = torch.as_tensor(x)
            env[i] = t.to(self.dtype) if t.dtype != torch.bool else t
        for idx, key in self._consts:
            env[idx] = self.const_tensor(key)
        free = capture is None
        for step, (node, fwd, ins, outs) in enumerate(self._steps):
            args = [None if i < 0 else env[i] for i in ins]
            if free:
                for i in self._dead[step]:
                    env[i] = None
            try:
                res = fwd(*args)
            except (RuntimeError, ValueError) as e:
                raise RuntimeError(f"node {node.name!r} ({node.op}): {e}") from e
            if len(outs) == 1:
                env[outs[0]] = res
            else:
                for o, r in zip(outs, res):
                    env[o] = r
        out = [env[i] for i in self.output_index]
        result = out[0] if len(out) == 1 else tuple(out)
        if capture is None:
            return result
        where = {n: i for i, n in enumerate(self._names)}
        missing = [n for n in capture if n not in where]
        if missing:
            raise KeyError(f"no value(s) {missing} in graph {self.graph.name!r}")
        return result, {n: env[where[n]] for n in capture}

    def regularized_weights(
        self, ops: tuple[str, ...] = ("conv2d", "dense")
    ) -> list[tuple[Node, torch.Tensor]]:
        """(node, IR-valued weight) of every layer of `ops` with a trainable weight (for l1 /
        group-lasso penalties)."""
        out = []
        for node, _, _ins, _ in self._steps:
            if node.op in ops and len(node.inputs) > 1:
                v = node.inputs[1]
                key = self._slot_of_value.get(id(v)) if v is not None else None
                if key is not None and self.slots[key].trainable:
                    out.append((node, self.const_tensor(key)))
        return out

    def replace_forward(self, node: Node, fn: Callable[..., Any]) -> None:
        """Run `fn` instead of `node`'s training form (e.g. a tsReLU gate in place of a relu)."""
        for i, (n, _, ins, outs) in enumerate(self._steps):
            if n is node:
                self._steps[i] = (n, fn, ins, outs)
                return
        raise KeyError(f"node {node.name!r} is not in this module")

    def param_of(self, value: Value) -> nn.Parameter | None:
        key = self._slot_of_value.get(id(value))
        if key is None or not self.slots[key].trainable:
            return None
        return self._parameters[key]  # type: ignore[return-value]


def to_torch(graph: Graph, dtype: torch.dtype = torch.float32) -> GraphModule:
    """The graph as a trainable ``torch.nn.Module`` (see the module docstring). The graph is not
    copied: :func:`from_torch` writes into it by default."""
    return GraphModule(graph, dtype)


def from_torch(module: nn.Module, graph: Graph | None = None) -> Graph:
    """Write the module's trained parameters back into `graph` (default: the graph the module was
    built from; a copy of it works too — values are matched by name), keeping every encoding, then
    verify the graph. Accepts a ``DistributedDataParallel`` wrapper."""
    inner = getattr(module, "module", module)
    if not isinstance(inner, GraphModule):
        raise TypeError(
            f"from_torch expects a module made by to_torch, got {type(module).__name__}"
        )
    g = graph if graph is not None else inner.graph
    by_name = {v.name: v for v in g.values() if v.is_const}
    with torch.no_grad():
        for key, slot in inner.slots.items():
            if not (slot.trainable or slot.writeback):
                continue
            v = by_name.get(slot.value)
            if v is None:
                raise KeyError(f"graph {g.name!r} has no constant {slot.value!r} to write back")
            eff = inner.const_tensor(key).detach().cpu().double().numpy()
            arr, t = (slot.encode or _default_encode)(eff, v)
            v.const = arr
            v.type = t
    for node in g.nodes:
        fin = _FINALIZERS.get(node.op)
        if fin is not None:
            fin(node)
    verify(g)
    return g


#: op -> called on each node after a write-back (e.g. re-derive an accumulator width)
_FINALIZERS: dict[str, Callable[[Node], None]] = {}


def finalizer(op: str) -> Callable[[Callable[[Node], None]], Callable[[Node], None]]:
    def deco(fn: Callable[[Node], None]) -> Callable[[Node], None]:
        _FINALIZERS[op] = fn
        return fn

    return deco


__all__ = ["Builder", "ConstSlot", "GraphModule", "finalizer", "from_torch", "to_torch"]
