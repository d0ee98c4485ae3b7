"""Dense ``y = act(x @ W.T + b)`` with the weight pre-packed as ``[Np/bn, K, bn]``.

``y[m, j] = act(b[j] + sum_k x[m, k] * Wp[j // bn, k, j % bn])``, ``x (M, K)``, ``y (M, N)``;
``Wp`` is :func:`.layout.pack_dense_weight` of ``W (N, K)`` zero-padded to ``Np`` rows (a multiple
of ``bn``); ``bn`` is a multiple of the SIMD lanes.

Schedule (a GEMM micro-kernel in the style of Goto & van de Geijn, ACM TOMS 2008, with the packed
``B`` panel of width ``bn``): ``parallel(j_outer)`` / ``m_outer`` / ``k`` / ``m_inner`` (``reg_m``
rows, unrolled) / ``bn / lanes`` vectors (unrolled) / lanes (vectorized): ``reg_m * bn / lanes``
accumulators, one broadcast of ``x`` per row and ``bn / lanes`` weight loads per ``k``. For batch
1 (GEMV) the weights are read exactly once, sequentially (``bn`` floats per ``k``), and the
``bn / lanes`` independent accumulators hide the FMA latency, so the kernel runs at memory
bandwidth: ``4 * N * K`` bytes / bandwidth.
"""

from __future__ import annotations

from typing import Any

from mcopt.targets.cpu.kernels.epilogue import Epilogue
from mcopt.targets.cpu.kernels.threads import parallel


def choose_dense_params(m: int, n: int, k: int, target: Any = None) -> tuple[int, int]:
    """``(bn, reg_m)``: ``bn`` = the multiple of the lanes dividing ``N`` closest to ``4 *
    lanes`` (at most ``8 * lanes``; ``N`` rounded up to ``4 * lanes`` if none divides);
    ``reg_m`` = the largest divisor of ``M`` with ``reg_m * bn / lanes <= vregs - 4``."""
    from mcopt.targets.cpu.kernels.params import _info

    info = _info(target)
    lanes = info.lanes
    cands = [v * lanes for v in range(1, 9) if n % (v * lanes) == 0]
    bn = min(cands, key=lambda b: (abs(b - 4 * lanes), -b)) if cands else 4 * lanes
    vecs = bn // lanes
    budget = max(1, (info.vregs - 4) // vecs)
    reg_m = max(d for d in range(1, min(m, budget) + 1) if m % d == 0)
    return bn, reg_m


def dense_packed_te(
    m: int, n: int, k: int, bn: int, epilogue: Epilogue, dtype: str = "float32"
) -> list[Any]:
    """TE tensors ``[x, w_packed, (bias), (residual), (slope), y]``."""
    from tvm import te

    np_ = -(-n // bn) * bn
    x = te.placeholder((m, k), dtype, name="x")
    w = te.placeholder((np_ // bn, k, bn), dtype, name="weight")
    rk = te.reduce_axis((0, k), "k")
    acc = te.compute(
        (m, np_), lambda i, j: te.sum(x[i, rk] * w[j // bn, rk, j % bn], axis=rk), name="conv"
    )
    tensors = [x, w]
    bias = res = slope = None
    if epilogue.bias:
        bias = te.placeholder((n,), dtype, name="bias")
        tensors.append(bias)
    if epilogue.residual:
        res = te.placeholder((m, n), dtype, name="residual")
        tensors.append(res)
    if epilogue.activation == "prelu":
        slope = te.placeholder((n,), dtype, name="slope")
        tensors.append(slope)
    y = te.compute(
        (m, n),
        lambda i, j: epilogue.apply_te(
            acc[i, j],
            bias[j] if bias is not None else None,
            res[i, j] if res is not None else None,
            dtype,
            slope[j] if slope is not None else None,
        ),
        name="out",
    )
    tensors.append(y)
    return tensors


def dense_packed(
    m: int,
    n: int,
    k: int,
    target: Any = None,
    epilogue: Epilogue | None = None,
    bn: int | None = None,
    reg_m: int | None = None,
    dtype: str = "float32",
) -> Any:
    """A scheduled PrimFunc ``(x (M, K), w_packed (Np/bn, K, bn), [bias (N,)], [residual (M, N)],
    y (M, N))``; ``bn``/``reg_m`` default to :func:`choose_dense_params`."""
    from tvm import s_tir, te

    from mcopt.targets.cpu.kernels.params import _info

    epilogue = epilogue or Epilogue()
    cbn, creg = choose_dense_params(m, n, k, target)
    bn, reg_m = bn or cbn, reg_m or creg
    lanes = _info(target).lanes
    vec = lanes if bn % lanes == 0 else bn
    sch = s_tir.Schedule(te.create_prim_func(dense_packed_te(m, n, k, bn, epilogue, dtype)))
    blk = sch.get_sblock("conv")
    i, j, kk = sch.get_loops(blk)
    jo, jv, jl = sch.split(j, [None, bn // vec, vec])
    io, ii = sch.split(i, [None, reg_m])
    sch.reorder(jo, io, kk, ii, jv, jl)
    parallel(sch, jo)
    sch.unroll(ii)
    sch.unroll(jv)
    sch.vectorize(jl)
    init = sch.decompose_reduction(blk, kk)
    sch.vectorize(sch.get_loops(init)[-1])
    out = sch.get_sblock("out")
    sch.reverse_compute_at(out, io)
    oloops = sch.get_loops(out)
    if n % bn == 0 and bn % vec == 0:
        _, lv = sch.split(oloops[-1], [None, vec])
        sch.vectorize(lv)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
