"""Lowering of pruned weights: ``dense`` / ``conv2d`` whose weight constant carries the IR's
:class:`~mcopt.ir.types.Sparse` (CSR) encoding run on mcopt's sparse kernels
(:mod:`mcopt.targets.cpu.kernels.sparse`) when that is faster, else on the ordinary dense lowering.

Method: fine-grained pruning (Han et al. 2015) leaves zeros in the weight; a dense kernel still
multiplies them. Here the weight is converted at compile time to CSR (or ``lanes x 1`` BSR when the
zeros come in such blocks, :func:`~mcopt.targets.cpu.kernels.sparse.choose_block`) and only the stored
nonzeros are computed: SpMV/SpMM for ``dense``, Park et al.'s direct sparse convolution for a
stride-1 ``conv2d``. Which kernel runs is decided per layer by the measured crossover density
(:func:`~mcopt.targets.cpu.kernels.sparse.sparse_wins`); :data:`POLICY` forces it ("always" / "never")
for tests and benchmarks. Lossless with respect to the pruned graph (same sums, different order:
float rounding only).

This module wraps the lowerings already registered for ``dense`` and ``conv2d`` (it is imported
after :mod:`mcopt.targets.relax.lower` registers them) and delegates everything that is not a sparse
weight to them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.ir.core import Node
from mcopt.ir.types import Sparse
from mcopt.targets.cpu.kernels.epilogue import Epilogue
from mcopt.targets.relax.lower import LOWERINGS, LowerContext, LowerResult, register_lowering

#: "auto" (measured crossover), "always" (every Sparse weight the kernels support), "never"
POLICY: dict[str, str] = {"mode": "auto"}

_BASE = {op: LOWERINGS[op] for op in ("dense", "conv2d")}


def _call(ctx: LowerContext, func: Any, name: str, args: list[Any], shape: tuple[int, ...]) -> Any:
    from mcopt.targets.cpu.kernels.relax_ops import call_kernel

    return call_kernel(ctx.bb, func, name, args, shape, "float32")


def _lanes() -> int:
    from mcopt.targets.cpu.kernels.params import _info

    return _info(None).lanes


def _sparse_weight(node: Node) -> np.ndarray | None:
    """The float32 weight array when it is a CSR-encoded constant, else None."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if w is None or w.const is None or not isinstance(w.type.encoding, Sparse):
        return None
    if w.dtype != "float32" or node.inputs[0] is None or node.inputs[0].dtype != "float32":
        return None
    return np.asarray(w.const, np.float32)


def _wanted(kind: str, w2d: np.ndarray, block: tuple[int, int]) -> bool:
    from mcopt.targets.cpu.kernels.sparse import sparse_wins

    mode = POLICY.get("mode", "auto")
    if mode == "never":
        return False
    return mode == "always" or sparse_wins(kind, w2d, block)


def _bias_arg(ctx: LowerContext, node: Node, a: list[Any], n: int) -> Any:
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is None:
        return ctx.const(np.zeros(n, np.float32))
    if b.const is not None:
        return ctx.const(np.asarray(b.const, np.float32))
    return a[2]


def emit_sparse_dense(
    ctx: LowerContext,
    x: Any,
    weight: np.ndarray,
    bias: np.ndarray | None,
    activation: str | None,
    clip: tuple[float, float],
    encoding: Any = None,
) -> Any:
    """``act(x @ W.T + b)`` on the block-CSR kernel (the planned build's ``fused_dense`` with
    ``kernel="sparse"``: the planner chose it where the sparse kernel wins,
    :func:`~mcopt.targets.cpu.kernels.sparse.sparse_wins`)."""
    from mcopt.targets.cpu.kernels.sparse import bsr_of, choose_block, sparse_dense

    w = np.asarray(weight, np.float32)
    lanes = _lanes()
    block = choose_block(w, lanes)
    rows, k = LowerContext.shape_of(x)
    n_out = w.shape[0]
    bsr = bsr_of(w, block, encoding)
    ep = Epilogue(bias=True, activation=activation, clip_min=clip[0], clip_max=clip[1])
    func = sparse_dense(rows, n_out, k, bsr.nnzb, block, ep, lanes)
    b = np.zeros(n_out, np.float32) if bias is None else np.asarray(bias, np.float32)
    args = [x, ctx.const(bsr.data), ctx.const(bsr.indices), ctx.const(bsr.indptr), ctx.const(b)]
    return _call(ctx, func, "sparse_dense", args, (rows, n_out))


@register_lowering("dense", replace=True)
def _dense(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """``y = x @ W.T + b`` with a CSR/BSR ``W`` (x of rank >= 2 is flattened to rows)."""
    from mcopt.targets.cpu.kernels.sparse import bsr_of, choose_block, sparse_dense

    w = _sparse_weight(node)
    lanes = _lanes()
    if w is None:
        return _BASE["dense"](ctx, node, a)
    block = choose_block(w, lanes)
    if not _wanted("dense", w, block):
        return _BASE["dense"](ctx, node, a)
    from tvm import relax

    x = a[0]
    xshape = LowerContext.shape_of(x)
    n_out, k = w.shape
    rows = int(np.prod(xshape[:-1])) if len(xshape) > 1 else 1
    if len(xshape) != 2:
        x = ctx.emit(relax.op.reshape(x, (rows, k)))
    bsr = bsr_of(w, block, node.inputs[1].type.encoding)  # type: ignore[union-attr]
    func = sparse_dense(rows, n_out, k, bsr.nnzb, block, Epilogue(bias=True), lanes)
    args = [
        x,
        ctx.const(bsr.data),
        ctx.const(bsr.indices),
        ctx.const(bsr.indptr),
        _bias_arg(ctx, node, a, n_out),
    ]
    y = _call(ctx, func, "sparse_dense", args, (rows, n_out))
    if len(xshape) != 2:
        y = relax.op.reshape(ctx.emit(y), (*xshape[:-1], n_out))
    return y


@register_lowering("conv2d", replace=True)
def _conv2d(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    """A stride-1, dilation-1, ungrouped conv with a CSR weight -> direct sparse convolution."""
    from mcopt.targets.cpu.kernels.sparse import conv_csr_arrays, sparse_conv2d

    w = _sparse_weight(node)
    at = node.attrs
    if (
        w is None
        or tuple(at["strides"]) != (1, 1)
        or tuple(at["dilations"]) != (1, 1)
        or int(at["groups"]) != 1
    ):
        return _BASE["conv2d"](ctx, node, a)
    lanes = _lanes()
    o = w.shape[0]
    w2d = w.reshape(o, -1)
    from mcopt.targets.cpu.kernels.sparse import choose_block

    block = choose_block(w2d, lanes)
    if not _wanted("conv", w2d, block):
        return _BASE["conv2d"](ctx, node, a)
    xshape = LowerContext.shape_of(a[0])
    pads = tuple(int(p) for p in at["pads"])
    func, plan = sparse_conv2d(
        xshape, w.shape, pads, _nnzb(w, block), block[0], Epilogue(bias=True), lanes
    )
    data, chan, off, indptr = conv_csr_arrays(w, plan.wp, block)
    args = [
        a[0],
        ctx.const(data),
        ctx.const(chan),
        ctx.const(off),
        ctx.const(indptr),
        _bias_arg(ctx, node, a, o),
    ]
    return _call(ctx, func, "sparse_conv2d", args, (xshape[0], o, plan.oh, plan.ow))


def _nnzb(w: np.ndarray, block: tuple[int, int]) -> int:
    from mcopt.targets.cpu.kernels.sparse import to_bsr

    return to_bsr(w.reshape(w.shape[0], -1), block).nnzb


__all__ = ["POLICY"]
