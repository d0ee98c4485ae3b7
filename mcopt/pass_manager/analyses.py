"""Typed results passes hand to later passes and to the report (no untyped shared dict).

- :class:`Analyses`: the registry on :attr:`PassContext.analyses <mcopt.pass_manager.PassContext>`,
  at most one value per type, stored with ``ctx.analyses.put(record)`` and looked up by type with
  ``ctx.analyses.get(ChannelPruningRecord)`` (None when no pass produced one).
- The kinds stored there by the built-in passes: :class:`ChannelPruningRecord` (``prune-channels``,
  read by ``refit-lstsq``), :class:`LayerPruningRecord` (``prune-layers``),
  :class:`FixedPointFormats` (``fixed-point``), :class:`Int8FloatLayers` (``quantize-int8`` with
  ``float_layers``) and :class:`mcopt.analysis.sensitivity.SensitivityReport` (``prune-channels`` /
  ``prune-weights`` with the sensitivity schedule / scope).
- :class:`PassSummary`: what a per-layer rewrite pass did (``winograd``, ``factorize-*``,
  ``fc-to-gap``, ``lowrank-dense``), recorded with :meth:`PassContext.summarize
  <mcopt.pass_manager.PassContext.summarize>`: kept in ``ctx.summary`` for the running pass, its
  report-worthy part (rank or method per layer, skipped layers) in the pass's report row.

Imports nothing from the rest of the package (the first module of the chain in ``__init__``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mcopt.ir.core import Graph

if TYPE_CHECKING:
    from mcopt.analysis.lowrank import LayerRecord

T = TypeVar("T")


class Analyses:
    """Typed results passes hand to later passes: at most one value per type (a later
    :meth:`put` of the same type replaces it), looked up by exactly that type."""

    def __init__(self) -> None:
        self._by_type: dict[type, Any] = {}

    def put(self, value: T) -> T:
        """Store `value` under its type (replacing an earlier one); returns it."""
        self._by_type[type(value)] = value
        return value

    def get(self, kind: type[T]) -> T | None:
        """The stored value of type `kind` (None without one)."""
        return self._by_type.get(kind)

    def pop(self, kind: type[T]) -> T | None:
        """Remove and return the stored value of type `kind` (None without one)."""
        return self._by_type.pop(kind, None)

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_type

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._by_type.values()))

    def __len__(self) -> int:
        return len(self._by_type)

    def __repr__(self) -> str:
        return f"Analyses({', '.join(t.__name__ for t in self._by_type)})"


# --- what the built-in passes hand on -------------------------------------------------------------------
@dataclass
class ChannelPruningRecord:
    """What ``prune-channels`` removed, for ``refit-lstsq``: the graph before the first
    ``prune-channels`` of the pipeline (`reference`, sharing its constant arrays) and, per pruned
    conv2d / dense, the (kept input channel indices, kept output channel indices) relative to it
    (composed over successive ``prune-channels`` runs)."""

    reference: Graph
    nodes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class LayerPruningRecord:
    """What ``prune-layers`` measured and did: each residual block's output effect when removed alone
    (relative output error, by block name) and the blocks it removed, in order."""

    effects: dict[str, float]
    removed: list[str]


@dataclass
class FixedPointFormats:
    """What ``fixed-point`` chose: `mode` ("shared" or "dynamic"), activation / weight `bits`, the
    formats of every integer layer (name -> {"op", "out_frac", "weight_frac", ...}) and the relative
    L2 output error against the float graph on the calibration data."""

    mode: str
    bits: int
    weight_bits: int
    layers: dict[str, dict[str, Any]]
    rel_error: float


@dataclass
class Int8FloatLayers:
    """The layers ``quantize-int8`` (``float_layers=N``) kept in float as the most sensitive."""

    layers: list[str]


# --- per-layer rewrite summaries (into the report) -----------------------------------------------------
@dataclass
class PassSummary:
    """What a per-layer rewrite pass did (built by :func:`mcopt.analysis.lowrank.summarize`): one
    :class:`~mcopt.analysis.lowrank.LayerRecord` per rewritten layer, the layers left alone and why
    (`skipped`), params / MACs totals over the rewritten layers, the end-to-end output error on the
    calibration feeds it used (None without) and pass-specific figures in `extra` (``fc-to-gap``:
    ``fit_rel_error``, ``top1_agreement``, ``samples``, ``data``)."""

    lossless: bool
    layers: list[LayerRecord] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    output_rel_error: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params_saved(self) -> int:
        return self.params_before - self.params_after

    @property
    def macs_saved(self) -> int:
        return self.macs_before - self.macs_after

    def report_details(self) -> dict[str, Any]:
        """The report-worthy part: the rank (or method) chosen per layer and why layers were
        skipped (each only when non-empty)."""
        out: dict[str, Any] = {}
        layers = {str(r.layer): (r.rank if r.rank is not None else r.method) for r in self.layers}
        if layers:
            out["layers"] = layers
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serializable): layers as dicts, `extra` merged in."""
        return {
            "lossless": self.lossless,
            "layers": [r.to_dict() for r in self.layers],
            "params_saved": self.params_saved,
            "macs_saved": self.macs_saved,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "output_rel_error": self.output_rel_error,
            "skipped": dict(self.skipped),
            **self.extra,
        }


__all__ = [
    "Analyses",
    "ChannelPruningRecord",
    "FixedPointFormats",
    "Int8FloatLayers",
    "LayerPruningRecord",
    "PassSummary",
]
