"""What a pipeline run reports: ``PassRecord`` (one pass), ``PassReport`` (the table: rows, markdown,
rich), the pass-details formatting, and :func:`output_errors`, the output-error measurement
every pass is checked with."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcopt.analysis.cost import GraphStats, human_bytes, human_count
from mcopt.errors import MCoptError


@dataclass
class PassRecord:
    """What one pass did."""

    name: str
    spec: str
    lossless: bool
    changed: bool
    seconds: float
    before: GraphStats
    after: GraphStats
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    #: held-out metric after the pass (accuracy with labels, agreement with the teacher without)
    metric: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PassReport:
    """Per-pass records of one pipeline run, plus the input graph's stats."""

    initial: GraphStats
    records: list[PassRecord] = field(default_factory=list)
    seconds: float = 0.0
    #: held-out metric of the input graph, its name and sample count (None without data)
    initial_metric: float | None = None
    metric_name: str | None = None
    metric_samples: int = 0

    @property
    def final(self) -> GraphStats:
        return self.records[-1].after if self.records else self.initial

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    @property
    def final_metric(self) -> float | None:
        """The held-out metric after the last pass (None without data)."""
        for r in reversed(self.records):
            if r.metric is not None:
                return r.metric
        return self.initial_metric

    def __getitem__(self, name: str) -> PassRecord:
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "initial": self.initial.to_dict(),
            "final": self.final.to_dict(),
            "seconds": self.seconds,
            "metric": None
            if self.metric_name is None
            else {
                "name": self.metric_name,
                "held_out_samples": self.metric_samples,
                "initial": self.initial_metric,
            },
            "passes": [r.to_dict() for r in self.records],
        }

    @property
    def headers(self) -> tuple[str, ...]:
        if self.metric_name is None:
            return self._HEADERS
        return (*self._HEADERS, f"held-out {self.metric_name}")

    _HEADERS = (
        "pass",
        "changed",
        "time",
        "nodes",
        "params",
        "weights",
        "MACs",
        "max abs err",
        "max rel err",
    )

    def rows(self) -> list[list[str]]:
        """The table's rows as strings: the input, then one per pass (see :attr:`headers`)."""

        def err(x: float | None) -> str:
            return "" if x is None else f"{x:.3g}"

        rows = [
            [
                "(input)",
                "",
                "",
                str(self.initial.nodes),
                human_count(self.initial.params),
                human_bytes(self.initial.weight_bytes),
                human_count(self.initial.macs),
                "",
                "",
            ]
        ]
        if self.metric_name is not None:
            rows[0].append(err(self.initial_metric))
        for r in self.records:
            rows.append(
                [
                    r.spec,
                    "yes" if r.changed else "no",
                    f"{r.seconds * 1e3:.1f} ms",
                    str(r.after.nodes),
                    human_count(r.after.params),
                    human_bytes(r.after.weight_bytes),
                    human_count(r.after.macs),
                    err(r.max_abs_err),
                    err(r.max_rel_err),
                ]
            )
            if self.metric_name is not None:
                rows[-1].append(err(r.metric))
        return rows

    def table(self) -> Any:
        from rich.table import Table

        t = Table(title=f"passes ({self.seconds:.2f} s)")
        for i, h in enumerate(self.headers):
            t.add_column(h, justify="left" if i < 2 else "right")
        for row in self.rows():
            t.add_row(*row)
        return t

    def __rich__(self) -> Any:
        return self.table()

    def to_markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.headers) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * (len(self.headers) - 2)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        if self.metric_name is not None:
            lines += [
                "",
                f"Held-out {self.metric_name}: measured on {self.metric_samples} samples of the "
                "training data's validation split, which no pass trained or fitted on.",
            ]
        details = [(r.spec, r.details) for r in self.records if r.details]
        if details:
            lines += ["", "Pass details:", ""]
            lines += [f"- `{spec}`: {_fmt_details(d)}" for spec, d in details]
        by = ", ".join(f"{k}: {human_bytes(v)}" for k, v in self.final.bytes_by_dtype.items())
        lines += ["", f"Weights by storage after the last pass: {by or 'none'}."]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _fmt_details(d: Mapping[str, Any]) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, dict):
            v = (
                "{"
                + ", ".join(
                    f"{a}: {b:.4g}" if isinstance(b, float) else f"{a}: {b}" for a, b in v.items()
                )
                + "}"
            )
        parts.append(f"{k} {v}")
    return "; ".join(parts)


def output_errors(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> tuple[float, float]:
    """(max abs error, max error relative to the reference output's largest finite magnitude).

    NaN / Inf aware: positions where both hold the same non-finite value (NaN and NaN, +Inf and
    +Inf) agree; a non-finite value on one side only is an infinite error (Python's ``max`` would
    silently drop a NaN)."""
    if len(ref) != len(got):
        raise MCoptError(f"the graph now has {len(got)} outputs, the original {len(ref)}")
    max_abs = max_rel = 0.0
    for r, g in zip(ref, got):
        r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
        if r64.shape != g64.shape:
            raise MCoptError(f"output shape changed: {list(r64.shape)} -> {list(g64.shape)}")
        if not r64.size:
            continue
        fr, fg = np.isfinite(r64), np.isfinite(g64)
        same_nonfinite = (~fr & ~fg) & ((np.isnan(r64) & np.isnan(g64)) | (r64 == g64))
        if np.any((fr != fg) | (~fr & ~fg & ~same_nonfinite)):
            return math.inf, math.inf
        both = fr & fg
        if not both.any():
            continue
        d = float(np.max(np.abs(r64[both] - g64[both])))
        scale = float(np.max(np.abs(r64[both])))
        max_abs = max(max_abs, d)
        max_rel = max(max_rel, d / scale if scale > 0 else d)
    return max_abs, max_rel
