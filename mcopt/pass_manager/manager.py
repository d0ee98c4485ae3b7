"""``PassManager``: runs a pipeline, verifies the IR after every pass, measures output error against
the original graph (and the held-out metric with training data) and records a ``PassReport``;
:func:`run_passes` is its shorthand, :func:`rich_progress_callback` a progress bar for it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mcopt.analysis.cost import graph_stats
from mcopt.errors import MCoptError, PassError
from mcopt.ir.core import Graph
from mcopt.ir.verify import verify
from mcopt.pass_manager.base import PassResult
from mcopt.pass_manager.context import Feed, PassContext
from mcopt.pass_manager.report import PassRecord, PassReport, output_errors
from mcopt.pass_manager.specs import PassLike, resolve_passes


def _as_feeds(inputs: Any) -> list[Feed]:
    """One feed (dict or list of arrays) or a list of dict feeds -> a list of feeds."""
    if inputs is None:
        return []
    if isinstance(inputs, Mapping) or isinstance(inputs, np.ndarray):
        return [inputs if isinstance(inputs, Mapping) else [inputs]]
    items = list(inputs)
    if items and all(isinstance(x, Mapping) for x in items):
        return items
    return [items]


class PassManager:
    """Runs a pipeline of passes, verifying the IR after each and recording a :class:`PassReport`.

    Output error is measured after each pass against the ORIGINAL graph's outputs when reference
    `inputs` are given to :meth:`run` (else on the first `error_samples` calibration feeds of the
    context when ``measure_error`` is True); a pass that claims to be lossless but moves the outputs
    by more than `lossless_rtol` (relative) gets a warning in the context's log."""

    def __init__(
        self,
        passes: Sequence[PassLike] | PassLike,
        *,
        verify_each: bool = True,
        measure_error: bool = False,
        error_samples: int = 1,
        lossless_rtol: float = 1e-4,
    ) -> None:
        self.passes = resolve_passes(passes)
        self.verify_each = verify_each
        self.measure_error = measure_error
        self.error_samples = error_samples
        self.lossless_rtol = lossless_rtol

    def run(
        self,
        graph: Graph,
        ctx: PassContext | None = None,
        inputs: Any = None,
        *,
        copy: bool = False,
    ) -> tuple[Graph, PassReport]:
        """Run every pass on `graph` (in place, or on a copy when `copy`); return (graph, report).

        Raises PassError "pass 'x' failed after [a, b]: reason" when a pass raises, leaves an invalid
        graph, or leaves a graph the reference interpreter cannot run."""
        from mcopt import interpreter

        ctx = ctx or PassContext()
        if copy:
            graph = graph.copy()
        if ctx.teacher is None:
            ctx.teacher = graph.copy()
        feeds = _as_feeds(inputs)
        if not feeds and self.measure_error:
            feeds = ctx.feeds(self.error_samples)
        refs = [interpreter.run(graph, f) for f in feeds]  # type: ignore[arg-type]
        report = PassReport(initial=graph_stats(graph))
        metric = self._metric_fn(graph, ctx, report)
        io_names = ([v.name for v in graph.inputs], [v.name for v in graph.outputs])
        done: list[str] = []
        t_all = time.perf_counter()
        total = len(self.passes)
        for i, p in enumerate(self.passes):
            if ctx.progress is not None:
                ctx.progress(i, total, p.name, False)
            before = report.final
            ctx.details, ctx.summary = {}, None
            t0 = time.perf_counter()
            try:
                result = p.run(graph, ctx)
                seconds = time.perf_counter() - t0
                graph.restore_io_names(*io_names)  # outputs keep the names users call them by
                if self.verify_each:
                    verify(graph)
                errs = [output_errors(r, interpreter.run(graph, f)) for r, f in zip(refs, feeds)]  # type: ignore[arg-type]
                after = graph_stats(graph)
            except Exception as e:
                reason = str(e) if isinstance(e, MCoptError) else f"{type(e).__name__}: {e}"
                raise PassError(
                    f"pass {p.name!r} failed after [{', '.join(done)}]: {reason}"
                ) from e
            if result is None:
                raise PassError(
                    f"pass {p.name!r} returned None: its run() must return True / False (changed "
                    "or not) or a PassResult"
                )
            details = dict(ctx.details)
            if isinstance(result, PassResult):
                details.update(result.details)
                result = result.changed
            rec = PassRecord(
                name=p.name,
                spec=p.spec(),
                lossless=p.lossless,
                changed=bool(result),
                seconds=seconds,
                before=before,
                after=after,
                max_abs_err=max((a for a, _ in errs), default=None) if errs else None,
                max_rel_err=max((r for _, r in errs), default=None) if errs else None,
                details=details,
            )
            if metric is not None:
                last = report.records[-1].metric if report.records else report.initial_metric
                rec.metric = metric(graph) if rec.changed and not rec.lossless else last
            if rec.lossless and rec.max_rel_err is not None and not math.isfinite(rec.max_rel_err):
                raise PassError(
                    f"pass {p.name!r} claims to be lossless but made an output non-finite "
                    f"(NaN / Inf where the original is finite, or the reverse) after [{', '.join(done)}]"
                )
            if rec.lossless and (rec.max_rel_err or 0.0) > self.lossless_rtol:
                ctx.info(
                    f"warning: pass {p.name!r} claims to be lossless but changed the outputs by "
                    f"{rec.max_rel_err:.3g} (relative)"
                )
            report.records.append(rec)
            done.append(p.name)
            ctx.info(
                f"{p.spec()}: {'changed' if rec.changed else 'no change'} in {seconds * 1e3:.1f} ms"
            )
            if ctx.progress is not None:
                ctx.progress(i, total, p.name, True)
        report.seconds = time.perf_counter() - t_all
        return graph, report

    @staticmethod
    def _metric_fn(
        graph: Graph, ctx: PassContext, report: PassReport
    ) -> Callable[[Graph], float] | None:
        """With training data in the context: the held-out metric of the input graph (into
        `report`) and a function giving it for a later graph."""
        data = ctx.data
        if data is None or not getattr(data, "n_val", 0):
            return None
        from mcopt.train.heldout import held_out_metric, predictions

        teacher_pred = None
        if data.val_y is None:
            teacher_pred = predictions(ctx.teacher or graph, data.val_x)

        def metric(g: Graph) -> float:
            return held_out_metric(g, data.val_x, data.val_y, teacher_pred)[1]

        name, value = held_out_metric(graph, data.val_x, data.val_y, teacher_pred)
        report.metric_name, report.initial_metric, report.metric_samples = name, value, data.n_val
        return metric


def run_passes(
    graph: Graph,
    passes: Sequence[PassLike] | PassLike,
    ctx: PassContext | None = None,
    inputs: Any = None,
    *,
    copy: bool = False,
) -> tuple[Graph, PassReport]:
    """Shorthand for ``PassManager(passes).run(graph, ctx, inputs, copy=copy)``."""
    return PassManager(passes).run(graph, ctx, inputs, copy=copy)


def rich_progress_callback(progress: Any) -> Callable[[int, int, str, bool], None]:
    """A ``PassContext.progress`` callback driving a ``rich.progress.Progress`` (one task per run)."""
    state: dict[str, Any] = {}

    def cb(index: int, total: int, name: str, done: bool) -> None:
        if "task" not in state:
            state["task"] = progress.add_task("passes", total=total)
        progress.update(state["task"], description=f"pass {name}", completed=index + int(done))

    return cb
