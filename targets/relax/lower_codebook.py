"""Lowering of ``codebook_weight`` (shared weights): decoded at compile time into a float constant.

Two ways to run a codebook-compressed layer were compared (benchmarks/bench_compress.py, "codebook
kernels"): (a) decode at load time, ``W = codebook[indices]`` computed once in numpy and embedded as
a float32 constant, so the consuming conv2d / dense runs the ordinary float kernel; (b) a
lookup-table kernel (:func:`lut_dense_func`) that reads the uint8 indices and gathers
``codebook[idx]`` inside the inner loop. (b) reads 4x fewer weight bytes, but a gather per
multiply-add defeats SIMD on this CPU (AVX2 ``vpgatherdd`` is slow) and it is several times slower
than the float kernel even for batch-1 GEMV, where bandwidth matters most; so (a) is the lowering.
The compression is a storage format (file / download size, :mod:`mcopt.huffman`); at run time the
weights are float. Lossless (decoding is exact).
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, te

from mcopt.ir.core import Node
from mcopt.ops.codebook import decode
from mcopt.targets.cpu.kernels.threads import parallel
from mcopt.targets.relax.lower import LowerContext, LowerResult, register_lowering


@register_lowering("codebook_weight")
def _codebook_weight(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    idx, cb = node.inputs[0], node.inputs[1]
    if idx is None or cb is None or idx.const is None or cb.const is None:
        raise ValueError("codebook_weight needs constant indices and codebooks")
    return ctx.const(decode(idx.const, cb.const, tuple(node.attrs["shape"])))


def lut_dense_func(m: int, n: int, k: int, ncode: int, lanes: int = 8) -> Any:
    """The lookup-table alternative: PrimFunc ``(x (M, K) f32, idx (N, K) uint8, codebook (ncode,)
    f32) -> y (M, N)`` with ``y[i, j] = sum_k x[i, k] * codebook[idx[j, k]]``; rows ``j`` in
    parallel, ``k`` vectorized (a gather per lane)."""
    x = te.placeholder((m, k), "float32", name="x")
    idx = te.placeholder((n, k), "uint8", name="idx")
    cb = te.placeholder((ncode,), "float32", name="codebook")
    rk = te.reduce_axis((0, k), "k")
    y = te.compute(
        (m, n), lambda i, j: te.sum(x[i, rk] * cb[idx[j, rk].astype("int32")], axis=rk), name="y"
    )
    sch = s_tir.Schedule(te.create_prim_func([x, idx, cb, y]))
    blk = sch.get_sblock("y")
    li, lj, lk = sch.get_loops(blk)
    sch.reorder(lj, li, lk)
    parallel(sch, lj)
    if k % lanes == 0:
        rf_o, rf_i = sch.split(lk, [None, lanes])
        rf = sch.rfactor(rf_i, 0)
        sch.vectorize(sch.get_loops(rf)[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


__all__ = ["lut_dense_func"]
