"""When a kernel runs on the thread pool: small kernels stay on the calling thread.

Every ``parallel`` loop becomes a ``TVMBackendParallelLaunch`` at run time: the workers are woken,
each runs its share and the caller waits at a barrier. That costs a few microseconds per kernel —
nothing for a ResNet layer, but LeNet-5's layers are 2-20 us of work each, and there a launch per
kernel made the whole model slower than onnxruntime (whose MLAS kernels also stay on one thread
below a work threshold). So every template and the generic schedule mark loops parallel through
:func:`parallel`, which does nothing when the whole function does less than
:data:`MIN_PARALLEL_WORK` block iterations (scalar or vector-lane statements: MACs for a conv or
dense, output elements for a copy or pool). The work is the sum over the function's blocks of
the product of their loop extents — invariant under split / fuse / reorder, so it can be asked at
any point of a schedule.

The threshold was set by timing LeNet-5 and the layers of the zoo models on the 2-core dev
machine with several values (``benchmarks/bench_cpu.py --threads-threshold``); see the README.
``MCOPT_MIN_PARALLEL_WORK`` overrides it at build time (0 = always parallel).
"""

from __future__ import annotations

import os
from typing import Any

from tvm import s_tir, tirx

#: block iterations below which a function runs on one thread
MIN_PARALLEL_WORK = 200_000


def min_parallel_work() -> int:
    """The threshold in effect (``MCOPT_MIN_PARALLEL_WORK`` overrides :data:`MIN_PARALLEL_WORK`)."""
    env = os.environ.get("MCOPT_MIN_PARALLEL_WORK")
    if env is None or not env.strip():
        return MIN_PARALLEL_WORK
    try:
        value = int(float(env))
    except ValueError:
        value = -1
    if value < 0:
        from mcopt.errors import OptionError

        raise OptionError(
            f"MCOPT_MIN_PARALLEL_WORK={env!r}: give a number of block iterations >= 0 "
            f"(default {MIN_PARALLEL_WORK}; 0 = every kernel on the thread pool)"
        )
    return value


def stmt_work(stmt: Any, trips: int = 1) -> int:
    """Sum over the blocks under ``stmt`` of their executions (product of enclosing loop extents;
    a loop of non-constant extent counts once)."""
    if stmt is None:
        return 0
    if isinstance(stmt, tirx.For):
        ext = stmt.extent
        n = int(ext) if isinstance(ext, tirx.IntImm) else 1
        return stmt_work(stmt.body, trips * max(n, 1))
    if isinstance(stmt, tirx.SeqStmt):
        return sum(stmt_work(s, trips) for s in stmt.seq)
    if isinstance(stmt, s_tir.SBlockRealize):
        return stmt_work(stmt.block, trips)
    if isinstance(stmt, s_tir.SBlock):
        # the body of a leaf block runs `trips` times; a reduction's init (once per output
        # element) is not counted, so the work is the same before and after decompose_reduction
        inner = stmt_work(stmt.body, trips)
        return inner if inner else trips
    if isinstance(stmt, tirx.IfThenElse):
        return max(stmt_work(stmt.then_case, trips), stmt_work(stmt.else_case, trips))
    if isinstance(stmt, tirx.BufferStore | tirx.Evaluate):
        return trips
    body = getattr(stmt, "body", None)
    return stmt_work(body, trips) if body is not None else 0


def func_work(func: Any) -> int:
    """Block iterations of a PrimFunc (see :func:`stmt_work`)."""
    return stmt_work(func.body)


def schedule_work(sch: s_tir.Schedule) -> int:
    """Block iterations of the function ``sch`` is working on."""
    name = sch.func_working_on
    gv = name if name is not None else "main"
    try:
        func = sch.mod[gv]
    except Exception:  # a module with a single, differently named function
        funcs = [f for f in sch.mod.functions.values() if isinstance(f, tirx.PrimFunc)]
        if len(funcs) != 1:
            return 1 << 62
        func = funcs[0]
    return func_work(func)


def parallel(sch: s_tir.Schedule, loop: Any, per_op: int = 1) -> bool:
    """``sch.parallel(loop)`` unless the function is below the threshold; True if marked.

    ``per_op``: block iterations one vector-lane operation does in the compiled code (the work
    compared with the threshold is the block iterations divided by it): 4 for the int8 kernels
    whose reduction is tensorized to a 4-byte dot-product instruction (VNNI ``vpdpbusd``, ``sdot``:
    4 MACs per lane), whose description counts every MAC; without it LeNet-5's int8 convs (0.5 M
    MACs, ~3 us on one core) went to the thread pool and took 9 us there."""
    if schedule_work(sch) < min_parallel_work() * per_op:
        return False
    sch.parallel(loop)
    return True


def vectorize_divisor(sch: Any, loop: Any, max_lanes: int = 64) -> None:
    """Vectorize ``loop``, or (longer than ``max_lanes``) the inner part of it split by its
    largest divisor of at most ``max_lanes``: a whole row of a signal as one vector (44,100
    lanes) is more than LLVM takes (32K)."""
    extent = int(sch.get(loop).extent)
    if extent > max_lanes:
        lanes = max(d for d in range(1, max_lanes + 1) if extent % d == 0)
        loop = sch.split(loop, [None, lanes])[1]
    sch.vectorize(loop)


def vector_init(sch: Any, block: Any, loop: Any, unroll: int = 0) -> Any:
    """Split the zeroing of ``block``'s accumulators out before ``loop`` (its first reduction
    loop), vectorize it along its innermost loop and unroll the ``unroll`` loops around that (the
    register tile's). Returns the init block."""
    init = sch.decompose_reduction(block, loop)
    loops = sch.get_loops(init)
    sch.vectorize(loops[-1])
    for lp in loops[-1 - unroll : -1]:
        sch.unroll(lp)
    return init


__all__ = [
    "MIN_PARALLEL_WORK",
    "func_work",
    "min_parallel_work",
    "parallel",
    "schedule_work",
    "stmt_work",
    "vector_init",
    "vectorize_divisor",
]
