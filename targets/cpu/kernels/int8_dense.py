"""int8 x int8 -> int32 dense (``y = epilogue(x_q @ w_q.T + bias_eff)``), tensorized with the CPU's
dot-product instruction (see :mod:`.int8_intrin`), requantize / dequantize epilogue fused.

::

    x_pad[m, kb, k]    = offset(x_q[m, 4*kb + k])          (x_zp' beyond K)
    acc[m, nb, ob]     = sum_{kb, k} x_pad[m, kb, k] * kernel[nb, kb, ob, k]
    out[m, j]          = epilogue(acc[m, j // lanes, j % lanes] + bias_eff[j], mult[j])

``kernel`` is ``w (N, K)`` packed as ``[Np/lanes, Kp/4, lanes, 4]``. Schedule: ``parallel(nb_outer)``
/ ``m`` / ``kb`` / ``nb_inner`` (``reg_c`` output blocks, unrolled: independent accumulators that
hide the dot-product latency) / tensorized ``lanes x 4``. For batch 1 (GEMV) the weights are read
once, sequentially: one byte per multiply-accumulate instead of fp32's four, so the memory-bound
kernel can be up to 4x faster than fp32.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mcopt.targets.cpu.kernels.int8_conv import a_dtype_of, epilogue_te, zero_shift
from mcopt.targets.cpu.kernels.threads import parallel


def pack_int8_dense_weight(w: np.ndarray, lanes: int) -> np.ndarray:
    """``(N, K) int8 -> (Np/lanes, Kp/4, lanes, 4)`` (zero-padded)."""
    n, k = w.shape
    np_, kp = -(-n // lanes) * lanes, -(-k // 4) * 4
    wp = np.zeros((np_, kp), np.int8)
    wp[:n, :k] = w
    return np.ascontiguousarray(wp.reshape(np_ // lanes, lanes, kp // 4, 4).transpose(0, 2, 1, 3))


def dense_reg_c(n_blocks: int, cores: int) -> int:
    """Output blocks per task: up to 4 while every core still gets >= 2 tasks."""
    for rc in (4, 2):
        if n_blocks % rc == 0 and n_blocks // rc >= 2 * cores:
            return rc
    return 1


def int8_dense(
    m: int,
    n: int,
    k: int,
    *,
    isa: str | None,
    lanes: int,
    in_dtype: str = "uint8",
    x_zero_point: int = 0,
    out_dtype: str = "float32",
    out_zero_point: int = 0,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    cores: int = 1,
) -> Any:
    """Scheduled PrimFunc ``(x (M, K), kernel (packed), bias_eff (Np,) i32, mult (Np,) f32,
    out (M, N))``."""
    from tvm import s_tir, te, tirx

    from mcopt.targets.cpu.kernels.int8_intrin import intrin_name, macs_per_op

    np_, kp = -(-n // lanes) * lanes, -(-k // 4) * 4
    a_dtype = a_dtype_of(isa, in_dtype)
    shift = zero_shift(isa, in_dtype)
    x = te.placeholder((m, k), in_dtype, name="x")
    kernel = te.placeholder((np_ // lanes, kp // 4, lanes, 4), "int8", name="kernel")
    bias = te.placeholder((np_,), "int32", name="bias")
    mult = te.placeholder((np_,), "float32", name="mult")

    def pad_fn(i, kb, kk):
        c = kb * 4 + kk
        val = x[i, tirx.min(c, k - 1)]
        if shift:
            val = (val.astype("int32") + shift).astype(a_dtype)
        return tirx.if_then_else(c < k, val, tirx.const(x_zero_point + shift, a_dtype))

    xpad = te.compute((m, kp // 4, 4), pad_fn, name="x_pad")
    rkb = te.reduce_axis((0, kp // 4), "kb")
    rk = te.reduce_axis((0, 4), "k")
    acc = te.compute(
        (m, np_ // lanes, lanes),
        lambda i, nb, ob: te.sum(
            xpad[i, rkb, rk].astype("int32") * kernel[nb, rkb, ob, rk].astype("int32"),
            axis=[rkb, rk],
        ),
        name="acc",
    )
    out = te.compute(
        (m, n),
        lambda i, j: epilogue_te(
            acc[i, j // lanes, j % lanes] + bias[j], mult[j], out_dtype, bounds, out_zero_point
        ),
        name="out",
    )
    sch = s_tir.Schedule(te.create_prim_func([x, kernel, bias, mult, out]))
    blk = sch.get_sblock("acc")
    i, nb, ob, r_kb, r_k = sch.get_loops(blk)
    rc = dense_reg_c(np_ // lanes, cores)
    nb_o, nb_i = sch.split(nb, [None, rc])
    if isa is not None:
        sch.reorder(nb_o, i, r_kb, nb_i, ob, r_k)
    else:
        sch.reorder(nb_o, i, r_kb, nb_i, r_k, ob)
        sch.unroll(r_k)
        sch.vectorize(ob)
    parallel(sch, nb_o, macs_per_op(isa))
    sch.unroll(nb_i)
    init = sch.decompose_reduction(blk, r_kb)
    sch.vectorize(sch.get_loops(init)[-1])
    if isa is not None:
        sch.tensorize(ob, intrin_name(isa))
    oloops = sch.get_loops(sch.get_sblock("out"))
    if n >= 8 and n % 8 == 0:
        _, jv = sch.split(oloops[-1], [None, 8])
        sch.vectorize(jv)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


__all__ = ["dense_reg_c", "int8_dense", "pack_int8_dense_weight"]
