"""A generic default CPU schedule for every fused PrimFunc (the untuned baseline).

``LegalizeOps`` + ``FuseTIR`` give naive, single-threaded loop nests. :func:`cpu_schedule_pass`
rewrites each PrimFunc with ``tvm.s_tir.Schedule``:

1. inline the injective blocks (padding, bias add, activations) into their consumers / producers;
2. for a reduction block ``S..S R..R`` (conv2d, matmul, pooling, mean): split the innermost spatial
   axis into ``(outer, lanes)``, move the reduction loops between them, fuse the outer spatial
   loops and run them ``parallel``, ``decompose_reduction`` and ``vectorize`` the lane loop;
   an injective epilogue that could not be inlined is computed under the parallel loop;
3. for an injective block: fuse the outer loops, run them ``parallel``, vectorize the innermost;
4. several reductions in one function (softmax) keep their naive loops (see
   :func:`schedule_primfunc`: DLight's CPU rule recomputes them per output element, racily).

Anything a rule cannot handle keeps its naive (correct) loops. Custom templates (NCHWc conv with
register tiling, per Liu et al. ATC'19) replace this in a later issue.
"""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import collect_vars_used_in_prim_expr
from tvm.s_tir.dlight.base.common_schedules import try_inline_contiguous_spatial

from mcopt.targets.cpu.kernels.threads import parallel

log = logging.getLogger(__name__)

#: a parallel loop should have at least this many iterations per core before we stop fusing
_MIN_JOBS_PER_CORE = 4


def _extent(sch: s_tir.Schedule, loop: Any) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _vector_factor(extent: int, lanes: int) -> int:
    """The vector length for an axis of ``extent``: the whole axis when short, else the largest
    divisor of ``extent`` in [lanes/2, 2*lanes] (1 = do not vectorize)."""
    if extent <= 1:
        return 1
    if extent <= 2 * lanes:
        return extent
    for f in (2 * lanes, lanes, *range(2 * lanes - 1, max(lanes // 2, 2) - 1, -1)):
        if extent % f == 0:
            return f
    return 1


def _parallel_outer(sch: s_tir.Schedule, loops: list[Any], num_cores: int) -> Any | None:
    """Fuse ``loops`` (outermost first) and mark the result parallel; None when there are none."""
    if not loops:
        return None
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ext = _extent(sch, fused)
    if ext is None or ext > 1:
        parallel(sch, fused)
    return fused


def _schedule_injective(sch: s_tir.Schedule, block: Any, lanes: int, num_cores: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    ext = _extent(sch, inner)
    vec = _vector_factor(ext, lanes) if ext is not None else 1
    outer_loops = loops[:-1]
    if vec > 1 and vec < (ext or 0):
        o, inner = sch.split(inner, factors=[None, vec])
        outer_loops = [*outer_loops, o]
    elif vec <= 1:
        outer_loops, inner = loops, None
    _parallel_outer(sch, outer_loops, num_cores)
    if inner is not None and vec > 1:
        sch.vectorize(inner)


#: output rows (e.g. conv output channels) computed together so each vector load is reused
REG_TILE = 4


def _reuse_axis(sch: s_tir.Schedule, info: SBlockInfo, n_s: int) -> int | None:
    """The innermost spatial axis (besides the vectorized last one) that the vector-loaded operands
    do not depend on (conv: output channels; matmul: rows) with an extent divisible by REG_TILE."""
    stmt = sch.get(info.block_rv)
    ivars = [iv.var for iv in stmt.iter_vars]
    vec_var = ivars[n_s - 1]
    used: list[Any] = []
    for region in stmt.reads:
        vs: list[Any] = []
        for rg in region.region:
            vs.extend(collect_vars_used_in_prim_expr(rg.min))
        if any(v.same_as(vec_var) for v in vs):
            used.extend(vs)
    for i in range(n_s - 2, -1, -1):
        ext = info.iters[i].dom
        if not isinstance(ext, int | tirx.IntImm) or int(ext) < 2 * REG_TILE:
            continue
        if int(ext) % REG_TILE == 0 and not any(v.same_as(ivars[i]) for v in used):
            return i
    return None


def _schedule_reduction(
    sch: s_tir.Schedule, info: SBlockInfo, epilogues: list[SBlockInfo], lanes: int, num_cores: int
) -> None:
    kinds = info.dom_kind()
    n_s = len(kinds) - len(kinds.lstrip("S"))
    if n_s == 0 or set(kinds[n_s:]) != {"R"}:
        raise ValueError(f"unsupported iteration kinds {kinds}")
    block = info.block_rv
    loops = sch.get_loops(block)
    spatial, reduce = loops[:n_s], loops[n_s:]
    last = spatial[-1]
    ext = _extent(sch, last)
    vec = _vector_factor(ext, lanes) if ext is not None else 1
    reuse = _reuse_axis(sch, info, n_s) if vec > 1 else None
    tile: list[Any] = []
    if reuse is not None:  # register tile: REG_TILE accumulators share each vector load
        r_o, r_i = sch.split(spatial[reuse], factors=[None, REG_TILE])
        spatial = [*spatial[:reuse], r_o, *spatial[reuse + 1 :]]
        tile = [r_i]
    if vec > 1 and vec < ext:  # type: ignore[operator]
        last_o, last_i = sch.split(last, factors=[None, vec])
        outer = [*spatial[:-1], last_o]
    elif vec > 1:
        outer, last_i = list(spatial[:-1]), last
    else:
        outer, last_i = list(spatial), None
    if last_i is not None:
        sch.reorder(*outer, *reduce, *tile, last_i)
        for t in tile:
            sch.unroll(t)
    par = _parallel_outer(sch, outer, num_cores)
    for epi in epilogues:
        if par is not None:
            sch.reverse_compute_at(epi.block_rv, par, preserve_unit_loops=True)
            eloops = sch.get_loops(epi.block_rv)[1:]
            if eloops:
                fused = sch.fuse(*eloops) if len(eloops) > 1 else eloops[0]
                e_ext = _extent(sch, fused)
                if e_ext is not None and e_ext % lanes == 0:
                    _, vi = sch.split(fused, factors=[None, lanes])
                    sch.vectorize(vi)
        else:
            _schedule_injective(sch, epi.block_rv, lanes, num_cores)
    if last_i is not None:
        sch.vectorize(last_i)  # before decomposing: the update block alone is not "complete"
        sch.decompose_reduction(block, reduce[0])


def schedule_primfunc(
    func: tirx.PrimFunc, target: tvm.target.Target, lanes: int, num_cores: int
) -> tirx.PrimFunc | None:
    """A scheduled copy of ``func``, or None when no rule applies (the caller keeps ``func``)."""
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    n_red = sum(1 for b in infos if not b.is_injective())
    if n_red > 1:
        # Several reductions (softmax, layer norm): DLight's CPU ``Reduction`` rule computes them
        # all under the parallel loop of the output, i.e. once per output element (1000x the
        # work for a (1, 1000) softmax: 14 ms) and with every thread writing the same scratch
        # buffer (a data race). The naive loops are correct and, for CNN heads, microseconds.
        return None
    # Padding feeding a reduction stays a separate (parallel, vectorized) pass: inlined, its
    # if_then_else makes the conv's inner loop a scalar gather.
    keep = [b for b in infos if n_red == 1 and b.is_data_pad(sch)]
    order = {id(b): i for i, b in enumerate(infos)}
    rest = try_inline_contiguous_spatial(sch, [b for b in infos if b not in keep])
    if rest is None:
        return None
    infos = sorted([*keep, *rest], key=lambda b: order[id(b)])
    reds = [b for b in infos if not b.is_injective()]
    if len(reds) == 1:
        red = reds[0]
        idx = next(i for i, b in enumerate(infos) if b is red)
        before, after = infos[:idx], infos[idx + 1 :]
        for b in before:
            _schedule_injective(sch, b.block_rv, lanes, num_cores)
        _schedule_reduction(sch, red, after, lanes, num_cores)
    else:
        for b in infos:
            _schedule_injective(sch, b.block_rv, lanes, num_cores)
    return sch.mod["main"]


def cpu_schedule_pass(lanes: int, num_cores: int) -> tvm.transform.Pass:
    """A module pass applying :func:`schedule_primfunc` to every not-yet-scheduled PrimFunc."""

    @tvm.transform.module_pass(opt_level=0, name="McoptCPUSchedule")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=False)
        updates: dict[Any, tirx.PrimFunc] = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                continue
            try:
                new = schedule_primfunc(func, target, lanes, num_cores)
            except Exception as e:  # keep the naive loops: correct, only slower
                log.debug("mcopt cpu schedule: %s kept unscheduled: %s", gv.name_hint, e)
                new = None
            if new is not None:
                updates[gv] = new.with_attr("tirx.is_scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


__all__ = ["cpu_schedule_pass", "schedule_primfunc"]
