"""Tuning progress: the event sent after every measured batch, the measure callback that counts
trials and failures and sends it, and its displays (a rich progress bar, or log lines).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

log = logging.getLogger(__name__)


@dataclass
class ProgressEvent:
    """Sent to the ``progress`` callback after every measured batch. ``best_ms``: the best cost
    so far per task, in ``unit``: milliseconds, or executed instructions ("instructions") when
    the candidates are measured by instruction count (an ARM target without a device)."""

    task: str
    task_index: int
    num_tasks: int
    trials_done: int
    trials_total: int
    best_ms: dict[str, float]
    unit: str = "ms"


def format_cost(value: float | None, unit: str = "ms") -> str:
    """``0.1234 ms`` / ``1,234,567 instructions`` / ``-``."""
    if value is None:
        return "-"
    return f"{value:.4f} ms" if unit == "ms" else f"{value:,.0f} {unit}"


@derived_object
class _ProgressCallback(ms.measure_callback.PyMeasureCallback):
    """Counts measured trials and the best cost per task; forwards a ProgressEvent."""

    def __init__(
        self,
        names: list[str],
        total: int,
        fn: Callable[[ProgressEvent], None],
        scale: float = 1e3,
        unit: str = "ms",
    ):
        self.scale, self.unit = scale, unit
        self.names = names
        self.total = total
        self.fn = fn
        self.done = 0
        self.ok = 0
        self.first_error: str | None = None
        self.best: dict[str, float] = {}

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        name = self.names[task_id]
        for br, rr in zip(builder_results, runner_results, strict=False):
            self.done += 1
            err = br.error_msg or rr.error_msg
            if err and self.first_error is None:
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                self.first_error = lines[-1] if lines else str(err)
            if err is None and rr.run_secs:
                self.ok += 1
                cost = self.scale * sum(float(s) for s in rr.run_secs) / len(rr.run_secs)
                self.best[name] = min(self.best.get(name, math.inf), cost)
        self.fn(
            ProgressEvent(
                name, task_id, len(self.names), self.done, self.total, dict(self.best), self.unit
            )
        )


class RichProgress:
    """A rich progress bar: trials done / budget and the best latency of the last task."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._p = Progress(
            TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), transient=False,
        )  # fmt: skip
        self._id: Any = None

    def __call__(self, ev: ProgressEvent) -> None:
        if self._id is None:
            self._p.start()
            self._id = self._p.add_task("", total=ev.trials_total)
        best = format_cost(ev.best_ms.get(ev.task), ev.unit)
        desc = f"{ev.task} ({ev.task_index + 1}/{ev.num_tasks}) best {best}"
        self._p.update(self._id, completed=min(ev.trials_done, ev.trials_total), description=desc)

    def close(self) -> None:
        if self._id is not None:
            self._p.stop()


def _log_progress(ev: ProgressEvent) -> None:
    log.info(
        "tuning %d/%d trials; %s best %s",
        ev.trials_done, ev.trials_total, ev.task, format_cost(ev.best_ms.get(ev.task), ev.unit),
    )  # fmt: skip


__all__ = ["ProgressEvent", "RichProgress"]
