"""A tuning database at build time: installing the best record of every task into a module
(:func:`apply_database`, ``MetaScheduleApplyDatabase``; a record slower than mcopt's default
schedule is not used), a build with it (:func:`build_with_database`), the same as a pipeline pass
(:func:`database_pass`), and what the database holds per task of a graph (:func:`task_summary`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi
from tvm import relax, tirx

from mcopt.errors import TargetError
from mcopt.ir.core import Graph
from mcopt.targets.registry import TargetSpec, get_target
from mcopt.targets.relax.lower import _first_line
from mcopt.targets.tune.dbdir import (
    _open,
    _read_meta,
    cost_key,
    cost_scale,
    cost_unit,
    db_measurer,
    open_database,
)
from mcopt.targets.tune.scheduler import (
    _is_scheduled,
    _task_records,
    _workload_key,
    extract_tasks,
    tuning_module,
)
from mcopt.targets.tune.space import schedule_templates, template_of

log = logging.getLogger(__name__)


@dataclass
class ApplyReport:
    """What :func:`apply_database` installed: tuned functions and those without records."""

    applied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    default_faster: list[str] = field(default_factory=list)
    repaired: str = ""

    def message(self) -> str:
        msg = f"tuning database: {len(self.applied)} kernel(s) tuned"
        if self.default_faster:
            msg += f", {len(self.default_faster)} kept the faster default schedule"
        if self.missing:
            msg += (
                f", no records for {len(self.missing)} (default schedules): "
                f"{', '.join(self.missing)}"
            )
        return f"{msg}; {self.repaired}" if self.repaired else msg


def apply_database(
    mod: tvm.IRModule,
    db: str | os.PathLike[str],
    target: str | TargetSpec = "cpu",
    *,
    repair: bool = False,
) -> tuple[tvm.IRModule, ApplyReport]:
    """Install the best record of every task of a fused, unscheduled module (the build
    pipeline after fusion, before its default schedules) and report the tasks without records.

    Template functions without records get the untuned template schedule; other unscheduled
    functions are left for the default schedule pass. A database for another target is a
    one-line TargetError, a bad line a TuningDatabaseError (``repair``: dropped, said in the
    report's message).
    """
    spec = get_target(target)
    tgt = spec.tvm_target()
    database, checked = _open(db, spec, repair=repair)
    funcs = {
        gv.name_hint: f
        for gv, f in mod.functions_items()
        if isinstance(f, tirx.PrimFunc) and not _is_scheduled(f)
    }
    with tgt, database:
        out = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    # a record slower than the default schedule measured while tuning is not used (both costs
    # are of the database's measurer: run times or instruction counts)
    meta = _read_meta(Path(db)) or {}
    base, scale = meta.get(cost_key(meta, "baseline"), {}), cost_scale(db_measurer(meta))
    slower = []
    if base:
        for task in extract_tasks(mod, spec):
            wl = task.dispatched[0]
            key = _workload_key(database, wl)
            best = _task_records(database, wl, scale)[1]
            if key in base and best is not None and best >= base[key]:
                slower.append(wl["main"].without_attr("global_symbol"))
    report = ApplyReport(repaired=checked.message())
    for name, f in funcs.items():
        plain = f.without_attr("global_symbol")
        if _is_scheduled(out[name]) and any(tvm_ffi.structural_equal(plain, w) for w in slower):
            out[name] = f  # back to the default schedule
            report.default_faster.append(name)
        elif _is_scheduled(out[name]):
            report.applied.append(name)
        else:
            report.missing.append(name)
    return schedule_templates(out), report


def task_summary(
    graph: Graph, db: str | os.PathLike[str], target: str | TargetSpec = "cpu"
) -> list[dict[str, Any]]:
    """Per tuning task of ``graph``: name, template, calls, FLOPs (``estimate_tir_flops``), the
    untuned kernel's cost (the template's analytic schedule or mcopt's default schedule, as
    measured while tuning), the database's best cost and, for run times, the GFLOP/s of both.
    Costs are in the database's unit, ``"unit"``: ``untuned_ms`` / ``best_ms`` for run times,
    ``untuned_instructions`` / ``best_instructions`` for instruction counts (the other keys None).
    """
    from tvm.s_tir.analysis import estimate_tir_flops

    spec = get_target(target)
    database = open_database(db, spec)
    meta = _read_meta(Path(db)) or {}
    measurer = db_measurer(meta)
    unit = cost_unit(measurer)
    untuned = {
        **meta.get(cost_key(meta, "baseline"), {}),
        **meta.get(cost_key(meta, "template"), {}),
    }
    rows = []
    for t in extract_tasks(tuning_module(graph, spec), spec):
        wl = t.dispatched[0]
        flops = float(estimate_tir_flops(wl))
        n, best = _task_records(database, wl, cost_scale(measurer))
        has = database.has_workload(wl)  # (never add a workload to the database here)
        base = untuned.get(_workload_key(database, wl)) if has else None
        timed = unit == "ms"
        row = {
            "task": t.task_name,
            "template": template_of(wl["main"]) or "",
            "calls": int(t.weight),
            "mflop": flops / 1e6,
            "records": n,
            "unit": unit,
            "untuned_ms": base if timed else None,
            "best_ms": best if timed else None,
            "untuned_gflops": flops / base / 1e6 if base and timed else None,
            "best_gflops": flops / best / 1e6 if best and timed else None,
        }
        if not timed:
            row.update({f"untuned_{unit}": base, f"best_{unit}": best})
        rows.append(row)
    return rows


def compile_with_database(
    graph: Graph,
    db: str | os.PathLike[str],
    target: str | TargetSpec = "cpu",
    *,
    repair: bool = False,
) -> tuple[Any, dict[str, int], ApplyReport]:
    """Fuse ``graph`` for ``target``, :func:`apply_database`, the default schedule for the rest,
    ``tvm.compile``: ``(executable, lowering choices, ApplyReport)``. For a cross target (aarch64)
    its LLVM IR is checked as :func:`~mcopt.targets.relax.builder.compile_module` does."""
    from mcopt.targets.cpu.schedule import cpu_schedule_pass
    from mcopt.targets.relax.builder import _is_cross, lowering_choices, relax_build_pipeline

    spec = get_target(target)
    fused = tuning_module(graph, spec)
    choices = lowering_choices(fused)
    mod, report = apply_database(fused, db, spec, repair=repair)
    tgt = spec.tvm_target()
    try:
        with tgt:
            mod = cpu_schedule_pass(spec.vector_lanes(32), spec.num_cores)(mod)
        ex = tvm.compile(mod, target=tgt, relax_pipeline=relax_build_pipeline(tgt))
    except Exception as e:
        raise TargetError(f"TVM build for target {spec.name!r} failed: {_first_line(e)}") from None
    if _is_cross(tgt):
        from mcopt.targets.arm.codegen_guard import check_llvm_ir

        check_llvm_ir(ex, tgt, spec.name)
    return ex, choices, report


def build_with_database(
    graph: Graph,
    db: str | os.PathLike[str],
    target: str | TargetSpec = "cpu",
    *,
    repair: bool = False,
) -> tuple[Any, ApplyReport]:
    """Compile ``graph`` with the records of ``db``: fuse, :func:`apply_database`, the default
    schedule for the rest, ``tvm.compile``. Returns ``(CompiledModel, ApplyReport)``.

    (What ``builder.build(graph, target, db=DIR)`` does; aarch64 targets:
    ``build_arm(graph, target, db=DIR)``.) ``repair``: drop the database's bad lines first (else
    they are a TuningDatabaseError).
    """
    from mcopt.targets.relax.builder import CompiledModel

    spec = get_target(target)
    ex, choices, report = compile_with_database(graph, db, spec, repair=repair)
    specs = [(v.name, tuple(v.shape), v.dtype) for v in graph.inputs]
    model = CompiledModel(ex, spec.name, specs, [v.name for v in graph.outputs], "mcopt+db")
    model.choices = choices
    return model, report


def database_pass(db: str | os.PathLike[str], target: str | TargetSpec = "cpu") -> Any:
    """:func:`apply_database` as a module pass for the build pipeline (logs missing tasks)."""

    @tvm.transform.module_pass(opt_level=0, name="McoptApplyTuningDatabase")
    def _pass(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        out, report = apply_database(mod, db, target)
        (log.warning if report.missing else log.info)("%s", report.message())
        return out

    return _pass


__all__ = [
    "ApplyReport",
    "apply_database",
    "build_with_database",
    "compile_with_database",
    "database_pass",
    "task_summary",
]
