"""``PassContext``: what a pass may use besides the graph (calibration feeds, seed, log, the typed
results earlier passes left (:class:`~mcopt.pass_manager.analyses.Analyses`), training data,
teacher, held-out inputs, the target's services), and the ``TargetServices`` protocol the compile
target implements."""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcopt.ir.core import Graph
from mcopt.pass_manager.analyses import Analyses, PassSummary
from mcopt.pass_manager.report import output_errors

Feed = Mapping[str, np.ndarray] | Sequence[np.ndarray]
_log = logging.getLogger("mcopt.passes")


class TargetServices(typing.Protocol):
    """What a pass may ask of the compile target (implemented in ``mcopt.targets``; the core
    defines only the protocol): ``measure_winograd(...) -> {"direct": ms, "f2": ms, "f4": ms}``
    times a 3x3 conv's kernels on the target (see :mod:`mcopt.passes.winograd`);
    ``int8_reduce_range() -> bool`` says whether the target's int8 kernels want 7-bit weights
    (see :mod:`mcopt.passes.quantize`); ``channel_multiple() -> int`` is the channel count its
    conv kernels' SIMD blocks hold without padding (see :mod:`mcopt.passes.prune_channels`)."""

    name: str

    def measure_winograd(self, *args: Any, **kwargs: Any) -> dict[str, float]: ...

    def int8_reduce_range(self) -> bool: ...

    def channel_multiple(self) -> int: ...


@dataclass
class PassContext:
    """What a pass may use besides the graph.

    - ``calib``: calibration feeds (each a dict name -> array, or a list of arrays in input order).
    - ``seed``: seed for any randomness; use :meth:`rng`.
    - ``log``: message sink (default: the ``mcopt.passes`` logger at INFO).
    - ``progress``: ``progress(index, total, pass_name, done)`` called around every pass.
    - ``analyses``: typed results passes hand to later passes, one per type
      (``ctx.analyses.put(record)``, ``ctx.analyses.get(ChannelPruningRecord)``; see
      :mod:`mcopt.pass_manager.analyses`).
    - ``data``: labelled (or unlabelled) training data with its held-out validation split
      (:class:`mcopt.train.TrainData`), for the training passes; None without.
    - ``teacher``: the model the pipeline started from (the original), the default teacher of
      distillation; set by :class:`PassManager` when None.
    - ``details``: what the running pass wants in its report row (:meth:`detail`); the manager
      resets it before each pass and keeps it in :attr:`PassRecord.details`.
    - ``summary``: the running pass's per-layer summary (:meth:`summarize`), None when it recorded
      none; the manager resets it before each pass (after a run: the last pass's).
    """

    calib: list[Feed] | None = None
    seed: int = 0
    log: Callable[[str], None] | None = None
    progress: Callable[[int, int, str, bool], None] | None = None
    analyses: Analyses = field(default_factory=Analyses)
    data: Any = None
    teacher: Graph | None = None
    details: dict[str, Any] = field(default_factory=dict)
    summary: PassSummary | None = None
    #: the compile target's services (None: not compiling), see :class:`TargetServices`
    target: TargetServices | None = None
    #: inputs no pass may fit (the output-error check's): passes that choose between methods by
    #: data (refit or not, GPTQ or round-to-nearest) compare them here, see :meth:`heldout_error`
    heldout: list[Feed] = field(default_factory=list)

    def heldout_error(self, graph: Graph) -> float | None:
        """Max relative output error of `graph` against the teacher on the held-out inputs
        (None without held-out inputs or a teacher)."""
        if not self.heldout or self.teacher is None:
            return None
        from mcopt import interpreter

        worst = 0.0
        for feed in self.heldout:
            _, rel = output_errors(
                interpreter.run(self.teacher, feed), interpreter.run(graph, feed)
            )  # type: ignore[arg-type]
            worst = max(worst, rel)
        return worst

    def detail(self, key: str, value: Any) -> None:
        """Record `key: value` in the running pass's report row (JSON-serializable values)."""
        self.details[key] = value

    def summarize(self, summary: PassSummary) -> None:
        """Record the running pass's per-layer summary: kept in :attr:`summary`, its report-worthy
        part (rank or method per layer, skipped layers: :meth:`PassSummary.report_details`) in the
        pass's report row."""
        self.summary = summary
        self.details.update(summary.report_details())

    def rng(self, salt: int = 0) -> np.random.Generator:
        """A fresh generator seeded from ``seed`` (and `salt`, so passes draw independent streams)."""
        return np.random.default_rng([self.seed, salt])

    def info(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)
        else:
            _log.info(msg)

    def feeds(self, limit: int | None = None) -> list[Feed]:
        feeds = list(self.calib or [])
        return feeds if limit is None else feeds[:limit]
