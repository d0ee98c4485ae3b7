"""The tuning tasks and their order: the module whose unscheduled PrimFuncs are the tasks
(:func:`tuning_module`, :func:`extract_tasks`), the records of a task in a database, and
:class:`CommittingScheduler`, which picks the next task and commits every measured batch first.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from mcopt.ir.core import Graph
from mcopt.targets.registry import TargetSpec, get_target

#: schedule passes of the build pipeline that tuning must not run (tasks are unscheduled)
SCHEDULE_PASSES = ("McoptCPUSchedule", "McoptTemplateSchedule")


def tuning_module(graph: Graph | tvm.IRModule, target: str | TargetSpec = "cpu") -> tvm.IRModule:
    """The module whose unscheduled PrimFuncs are the tasks: ``graph`` lowered and fused by
    :func:`mcopt.targets.relax.builder.mcopt_pipeline` with its schedule passes disabled."""
    from mcopt.targets.relax import builder

    spec = get_target(target)
    if isinstance(graph, tvm.IRModule):
        mod = graph
    elif hasattr(builder, "lower_for"):  # the same lowering as builder.build (kernel templates)
        mod = builder.lower_for(graph, spec)
    else:
        from mcopt.targets.relax.lower import lower

        mod = lower(graph)
    mcopt_pipeline = builder.mcopt_pipeline
    with spec.tvm_target(), tvm.transform.PassContext(disabled_pass=list(SCHEDULE_PASSES)):
        return mcopt_pipeline(spec)(mod)


def _is_scheduled(func: Any) -> bool:
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs


def extract_tasks(mod: tvm.IRModule, target: str | TargetSpec = "cpu") -> list[ms.ExtractedTask]:
    """The distinct unscheduled PrimFuncs of a fused module (weights = call counts)."""
    spec = get_target(target)
    tasks = ms.relax_integration.extract_tasks(mod, spec.tvm_target())
    return [t for t in tasks if not _is_scheduled(t.dispatched[0]["main"])]


def _task_records(
    db: ms.database.Database, wl_mod: tvm.IRModule, scale: float = 1e3
) -> tuple[int, float | None]:
    """Records of a task and its best mean cost times ``scale`` (``run_secs`` -> ms by default;
    :func:`~.dbdir.cost_scale` of the database's measurer)."""
    if not db.has_workload(wl_mod):
        return 0, None
    recs = db.get_top_k(db.commit_workload(wl_mod), 1 << 20)
    best = None
    if recs:
        best = min(float(sum(float(s) for s in r.run_secs) / len(r.run_secs)) for r in recs)
    return len(recs), None if best is None else best * scale


def _workload_key(db: ms.database.Database, wl_mod: tvm.IRModule) -> str:
    return str(db.commit_workload(wl_mod).as_json()[0])


@derived_object
class CommittingScheduler(ms.task_scheduler.PyTaskScheduler):
    """Round-robin over the unfinished tasks that first joins every batch still being measured,
    so each measured record is in the database (appended to its JSON file) before the next
    batch is searched.

    MetaSchedule's own schedulers join a task's results only when they pick that task again
    (the gradient scheduler not before its whole warm-up round): an interrupted run would lose
    up to a whole round of measurements. Joining first also keeps the search from competing
    for the cores with the timing runs. Budgets are spread evenly (``trials_per_iter`` per
    turn); MetaSchedule's gradient scheduler is used with ``scheduler="gradient"``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cursor = -1

    def next_task_id(self) -> int:
        tasks = self._outer().tasks_  # type: ignore[attr-defined]
        for i, rec in enumerate(tasks):
            if rec.runner_futures is not None:
                self.join_running_task(i)
        for _ in range(len(tasks)):
            self.cursor = (self.cursor + 1) % len(tasks)
            if not tasks[self.cursor].is_terminated:
                return self.cursor
        return -1


__all__ = ["SCHEDULE_PASSES", "CommittingScheduler", "extract_tasks", "tuning_module"]
