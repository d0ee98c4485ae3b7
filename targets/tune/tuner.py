"""Autotuning with MetaSchedule: tasks from the compiled graph, a persistent JSON database per
device, reuse at build time, merging, local or RPC (device farm) measurement.

Method: the graph is lowered and run through mcopt's fusion pipeline with the default schedule
passes disabled (:func:`tuning_module`); each distinct unscheduled fused PrimFunc is one task
(MetaSchedule's ``relax_integration.extract_tasks``, weight = its number of calls). Tasks are
tuned by MetaSchedule's evolutionary search (Shao et al., "Tensor Program Optimization with
Probabilistic Programs", NeurIPS 2022) guided by its XGBoost cost model (``random`` when
``xgboost`` is absent), measured by ``LocalRunner`` or, with ``rpc="host:port"`` and ``key``,
by ``RPCRunner`` through a TVM RPC tracker; for an ARM (aarch64) target without a device, by
the instructions each candidate executes under qemu-user with the counting plugin
(:class:`~mcopt.targets.tune.measure.IcountRunner`, ``scripts/setup_icount.sh``: a measured cost,
lower is better, recorded as such in the database). mcopt's kernel templates (functions marked
``mcopt.template``) are tuned in the template's own design space, seeded with the template's
analytic choice (:mod:`mcopt.targets.tune.space`). Tuning never changes numerics (lossless).

The database directory (one per device, reused and extended by a rerun) is described in
:mod:`mcopt.targets.tune.dbdir`.

:class:`~mcopt.targets.tune.scheduler.CommittingScheduler` joins every measured batch before
searching the next (MetaSchedule's own schedulers commit a task's results only when they revisit
it). A rerun with the same ``db`` counts the measured records of each task and runs only the
trials still missing from the budget; MetaSchedule starts its search from the measured records.
:func:`~mcopt.targets.tune.apply.apply_database` (``MetaScheduleApplyDatabase``) installs the
best record of every task into a module at build time and reports the tasks without records.

This module is the public entry of autotuning: :func:`tune` and its report, and the names of
the other files of the package (``from mcopt.targets.tune.tuner import apply_database`` ...).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm
from tvm.s_tir import meta_schedule as ms

from mcopt.errors import OptionError, TargetError
from mcopt.ir.core import Graph
from mcopt.targets.registry import TargetSpec, get_target
from mcopt.targets.relax.lower import _first_line
from mcopt.targets.toolchain import require_toolchain
from mcopt.targets.tune.apply import (
    ApplyReport,
    apply_database,
    build_with_database,
    database_pass,
    task_summary,
)
from mcopt.targets.tune.dbdir import (
    _open,
    _read_meta,
    _trust_database_files,
    check_database_dir,
    cost_info,
    cost_key,
    cost_scale,
    cost_unit,
    host_device,
    merge_databases,
    open_database,
)
from mcopt.targets.tune.measure import (
    _measure_baselines,
    _mtriple,
    _parse_rpc,
    _seed_template,
    check_tracker,
    icount_cost,
    make_builder,
    make_runner,
)
from mcopt.targets.tune.progress import (
    ProgressEvent,
    RichProgress,
    _log_progress,
    _ProgressCallback,
    format_cost,
)
from mcopt.targets.tune.scheduler import (
    CommittingScheduler,
    _task_records,
    _workload_key,
    extract_tasks,
    tuning_module,
)
from mcopt.targets.tune.space import install_tensor_intrin, space_for, template_of


@dataclass
class TaskResult:
    """One tuning task: its name, calls per inference, records before/after, best latency
    (``best_ms``) or, measured by instruction count, best executed instructions per call."""

    name: str
    weight: int
    template: str | None
    records_before: int
    records_after: int
    best_ms: float | None
    best_instructions: float | None = None


@dataclass
class TuneReport:
    """What :func:`tune` did. ``trials`` counts the measurements of this run; ``measurer``:
    "time" (run times) or "icount" (executed instructions under qemu)."""

    target: str
    device: str
    db: Path
    tasks: list[TaskResult]
    trials: int
    budget: int
    seconds: float
    cost_model: str
    repaired: str = ""
    measurer: str = "time"

    @property
    def skipped(self) -> bool:
        """True when the database already held the whole budget (nothing was measured)."""
        return self.trials == 0

    def to_markdown(self) -> str:
        lines = [
            f"tuning for {self.target} on {self.device}: {self.trials} trials in "
            f"{self.seconds:.1f} s (budget {self.budget}, cost model {self.cost_model}), "
            f"database {self.db}",
            *([self.repaired] if self.repaired else []),
            "",
            f"| task | calls | template | records | best {cost_unit(self.measurer)} |",
            "|---|---:|---|---:|---:|",
        ]
        for t in self.tasks:
            cost = t.best_ms if self.measurer == "time" else t.best_instructions
            best = format_cost(cost, cost_unit(self.measurer)).split(" ")[0]
            lines.append(
                f"| {t.name} | {t.weight} | {t.template or ''} | {t.records_after} | {best} |"
            )
        return "\n".join(lines)


def tune(
    graph: Graph | tvm.IRModule,
    target: str | TargetSpec = "cpu",
    trials: int = 64,
    db: str | os.PathLike[str] = "tuning",
    *,
    rpc: str | None = None,
    key: str | None = None,
    progress: Callable[[ProgressEvent], None] | bool | None = None,
    seed: int = 0,
    cost_model: str = "auto",
    strategy: Any = "evolutionary",
    trials_per_iter: int = 64,
    scheduler: str = "committing",
    repair: bool = False,
) -> TuneReport:
    """Tune the kernels of ``graph`` for ``target`` with ``trials`` measurements in total.

    ``db``: the database directory of this device (created; reused and extended by a rerun).
    ``rpc``/``key``: measure on remote devices registered under ``key`` at the tracker
    ``rpc = "host:port"``. Without ``rpc``, an ARM target (which this host cannot run) is
    measured by executed instructions per candidate call under qemu-user (``scripts/
    setup_icount.sh``; missing: a one-line TargetError); the database records which. ``progress``: a callback taking :class:`ProgressEvent`, True for a
    rich progress bar, False for none; None = a bar on a terminal, log lines otherwise.
    ``cost_model``: ``"xgb"``, ``"random"`` or ``"auto"`` (xgb when xgboost is installed).
    ``strategy``: ``"evolutionary"``, ``"replay-trace"`` or a MetaSchedule SearchStrategy.
    ``scheduler``: ``"committing"`` (:class:`CommittingScheduler`: every record is saved
    before the next batch) or MetaSchedule's ``"gradient"`` / ``"round-robin"``.
    ``repair``: drop the bad lines of an existing ``db`` (else they are a one-line
    :class:`TuningDatabaseError`); the report's ``repaired`` says how many were dropped.
    """
    if scheduler not in ("committing", "gradient", "round-robin"):
        raise OptionError(f"scheduler must be committing, gradient or round-robin: {scheduler!r}")
    if trials < 0:
        raise OptionError(f"trials must be >= 0, got {trials}")
    spec = get_target(target)
    require_toolchain(spec)  # the builders link every candidate kernel
    tgt = spec.tvm_target()
    install_tensor_intrin(str(tgt.kind.name), _mtriple(tgt))
    if cost_model == "auto":
        cost_model = "xgb" if importlib.util.find_spec("xgboost") else "random"
    if cost_model not in ("xgb", "random"):
        raise OptionError(f"cost_model must be 'xgb', 'random' or 'auto', got {cost_model!r}")
    cost = cost_info("time")
    if rpc is None and _counts_instructions(spec):  # checked before any work
        cost = icount_cost(spec)
    if rpc is not None:
        device = f"rpc {key}@{rpc}"
    elif cost["measurer"] == "icount":
        device = f"qemu-aarch64 -cpu {cost['qemu_cpu']} (executed instructions)"
    else:
        device = host_device()
    if rpc is not None:  # validate before any work
        _parse_rpc(rpc)
        if not key:
            raise OptionError("remote tuning (--rpc) needs the device key (--key)")
        check_tracker(rpc, key)
    cross = rpc is not None or cost["measurer"] == "icount"  # libraries cross-linked for aarch64
    scale = cost_scale(cost["measurer"])
    t0 = time.perf_counter()
    tasks = extract_tasks(tuning_module(graph, spec), spec)
    database, checked = _open(db, spec, create=True, device=device, repair=repair, cost=cost)
    names = [t.task_name for t in tasks]
    wls = [t.dispatched[0] for t in tasks]
    before = [_task_records(database, wl)[0] for wl in wls]
    remaining = max(0, trials - sum(before))
    done = 0
    meta = _read_meta(Path(db)) or {}
    base = meta.get(cost_key(meta, "baseline"), {})
    no_base = any(
        template_of(wl["main"]) is None and _workload_key(database, wl) not in base for wl in wls
    )
    if tasks and remaining == 0 and no_base:  # e.g. a database made before baselines existed
        builder = make_builder(tgt, remote=cross)
        try:
            runner = make_runner(rpc, key, cost=cost)
            _measure_baselines(database, Path(db), wls, spec, builder, runner)
        finally:
            builder.shutdown()
    if tasks and remaining > 0:
        builder = make_builder(tgt, remote=cross)
        runner = make_runner(rpc, key, cost=cost)
        for wl, n in zip(wls, before, strict=True):
            if n == 0 and template_of(wl["main"]) is not None:
                _seed_template(database, Path(db), wl, tgt, builder, runner)
        _measure_baselines(database, Path(db), wls, spec, builder, runner)
        if progress is None:
            progress = True if sys.stderr.isatty() else _log_progress
        bar = RichProgress() if progress is True else None
        fn = bar if bar is not None else (progress or (lambda ev: None))
        cb = _ProgressCallback(names, remaining, fn, scale, cost_unit(cost["measurer"]))  # type: ignore[arg-type]
        ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
        if ms_log.level == logging.NOTSET:  # its console handler copies this level
            ms_log.setLevel(logging.WARNING)
        # every task gets a batch in the first round: small budgets are spread over all tasks
        per_iter = max(1, min(trials_per_iter, -(-remaining // len(tasks))))
        contexts = [
            ms.TuneContext(
                mod=wl,
                target=tgt,
                space_generator=space_for(wl["main"]),
                search_strategy=strategy,
                task_name=name,
                rand_state=s,
                num_threads="physical",
                logger=lg,
            ).clone()
            for wl, name, s, lg in zip(
                wls,
                names,
                ms.utils.fork_seed(seed, n=len(tasks)),
                ms.logging.get_loggers_from_work_dir(str(Path(db)), names),
                strict=True,
            )
        ]
        try:
            ms.tune_tasks(
                tasks=contexts,
                task_weights=[float(t.weight) for t in tasks],
                work_dir=str(db),
                max_trials_global=remaining,
                num_trials_per_iter=per_iter,
                builder=builder,
                runner=runner,
                database=database,
                cost_model=cost_model,
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), cb],
                task_scheduler=CommittingScheduler() if scheduler == "committing" else scheduler,
            )
        except Exception as e:
            raise TargetError(f"tuning for {spec.name!r} failed: {_first_line(e)}") from None
        finally:
            if bar is not None:
                bar.close()
            builder.shutdown()
        done = cb.done
        if done and not cb.ok:
            raise TargetError(
                f"tuning for {spec.name!r} on {device}: all {done} measurements failed: "
                f"{cb.first_error}"
            )
    results = []
    for t, wl, n in zip(tasks, wls, before, strict=True):
        after, best = _task_records(database, wl, scale)
        timed = cost["measurer"] == "time"
        results.append(
            TaskResult(
                t.task_name,
                int(t.weight),
                template_of(wl["main"]),
                n,
                after,
                best if timed else None,
                None if timed else best,
            )
        )
    _trust_database_files(Path(db))  # what TVM appended in this run is known good
    return TuneReport(
        spec.name, device, Path(db), results, done, trials, time.perf_counter() - t0, cost_model,
        checked.message(), cost["measurer"],
    )  # fmt: skip


def _counts_instructions(spec: TargetSpec) -> bool:
    """Whether candidates for ``spec`` are measured by instruction count when no device is
    attached: an aarch64 target on a host of another architecture."""
    import platform

    from mcopt.targets.arm.builder import is_arm_target

    return is_arm_target(spec) and platform.machine().lower() not in ("aarch64", "arm64")


__all__ = [
    "ApplyReport",
    "CommittingScheduler",
    "ProgressEvent",
    "RichProgress",
    "TaskResult",
    "TuneReport",
    "apply_database",
    "build_with_database",
    "check_database_dir",
    "database_pass",
    "extract_tasks",
    "host_device",
    "make_builder",
    "make_runner",
    "merge_databases",
    "open_database",
    "task_summary",
    "tune",
    "tuning_module",
]
