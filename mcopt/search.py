"""``passes="auto"``: find the fastest (or smallest) model within an accuracy budget.

Method (beyond NNCF's accuracy-controlled quantization or Intel Neural Compressor's tolerable loss,
which each tune one method): candidates from every family that applies to the model, each at
rising strength —

- ``quantize-int8`` (then ``finetune``: quantization-aware training; with unlabelled data,
  distillation from the original),
- channel pruning ``prune-channels:ratio=r,schedule=sensitivity`` (per-layer ratios from the channel
  sensitivity scan, :mod:`mcopt.analysis.sensitivity`; for the latency objective kept counts rounded
  to the target's SIMD channel block, ``round_to``) + ``finetune``,
- for ``objective="size"``: weight pruning ``prune-weights:sparsity=s,scope=sensitivity`` +
  ``finetune``, then k-means weight sharing (Deep Compression),
- combinations of the strongest pruning that stayed in budget with int8;

a family stops rising at its first candidate past the budget (accuracy falls monotonically with
strength). Each candidate is scored on the held-out split of `data` (accuracy with labels, top-1
agreement with the original without; 20 % held out below 5,000 samples; or the user's
``eval_fn(graph) -> float``, higher is better) and is within budget when its drop plus one standard
error of the paired difference (``sqrt(discordant samples) / n``) is — small validation splits do
not certify a model that changed many predictions —,
and on the objective: compiled latency measured on this host (``target`` runs here; the
candidates within budget are timed again at the end in alternating rounds, fastest round kept, so
a shared host's load changes during the search do not pick the winner), a cost model
(MACs, int8 at half cost) where it does not, or the weights' real encoded bytes. The result is the
best candidate within ``max_accuracy_drop``, compiled, with every candidate and the Pareto front
(accuracy drop vs objective) in ``result.pareto``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcopt.errors import OptionError
from mcopt.ir.core import Graph


@dataclass
class Candidate:
    pipeline: list[str]
    family: str
    metric: float | None = None
    drop: float | None = None
    #: drop + one standard error of the paired difference (what feasibility is judged on)
    drop_bound: float | None = None
    size_bytes: int = 0
    macs: int = 0
    latency_ms: float | None = None
    latency_kind: str = ""
    feasible: bool = False
    chosen: bool = False
    pareto: bool = False
    seconds: float = 0.0
    error: str = ""
    graph: Graph | None = field(default=None, repr=False)
    #: the candidate's OptimizeResult (not compiled): the certified model itself
    result: Any = field(default=None, repr=False)
    #: its compiled model while the search runs (for the final alternating timing)
    compiled: Any = field(default=None, repr=False)

    def objective(self, kind: str) -> float:
        if kind == "size":
            return float(self.size_bytes)
        return float(self.latency_ms if self.latency_ms is not None else self.macs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": ",".join(self.pipeline),
            "family": self.family,
            "metric": self.metric,
            "accuracy_drop": self.drop,
            "accuracy_drop_bound": self.drop_bound,
            "size_bytes": self.size_bytes,
            "macs": self.macs,
            "latency_ms": self.latency_ms,
            "latency_kind": self.latency_kind,
            "feasible": self.feasible,
            "pareto": self.pareto,
            "chosen": self.chosen,
            "seconds": round(self.seconds, 2),
            "error": self.error,
        }


def _int8_spec(target: str | None) -> str:
    """``quantize-int8`` as the target wants it: candidates are optimized without a target (it
    compiles them once, for the latency), so its ``reduce_range`` choice is spelled out."""
    if target is None:
        return "quantize-int8"
    from mcopt.targets.services import services_for

    return f"quantize-int8:reduce_range={str(services_for(target).int8_reduce_range()).lower()}"


def _round_to(target: str | None) -> int:
    """The channel multiple pruning keeps for `target` (spelled out in the candidates' pipelines,
    which are optimized without a target): its SIMD channel block, 1 without a target."""
    if target is None:
        return 1
    from mcopt.targets.services import services_for

    return services_for(target).channel_multiple()


def _families(
    graph: Graph,
    objective: str,
    train: bool,
    epochs: int,
    int8: str = "quantize-int8",
    round_to: int = 1,
) -> list[tuple[str, list[list[str]]]]:
    ft = [f"finetune:epochs={epochs}"] if train else []
    qat = [f"finetune:epochs={max(1, epochs // 2)},lr=0.0002"] if train else []
    has_conv = any(n.op == "conv2d" for n in graph.nodes)
    fams: list[tuple[str, list[list[str]]]] = [("int8", [["cleanup", int8, *qat]])]
    ratios = (0.25, 0.4, 0.55, 0.7) if has_conv else (0.3, 0.5, 0.7)
    fams.append(
        (
            "prune-channels",
            [
                [
                    "cleanup",
                    f"prune-channels:ratio={r},schedule=sensitivity,round_to={round_to}",
                    *ft,
                ]
                for r in ratios
            ],
        )
    )
    if objective == "size":
        fams.append(
            (
                "prune-weights",
                [
                    ["cleanup", f"prune-weights:sparsity={s},scope=sensitivity", *ft]
                    for s in (0.5, 0.75, 0.9, 0.95)
                ],
            )
        )
    return fams


def _latency(graph: Graph, target: str | None, feed: Any) -> tuple[float | None, str, Any]:
    """(ms, 'measured', compiled) on this host, (None, 'cost model', None) where the target does
    not run here."""
    if target is None:
        return None, "cost model", None
    from mcopt.targets import build, get_target

    spec = get_target(target)
    if not spec.host_runnable or spec.builder is not None:
        return None, "cost model", None
    compiled = build(graph, target=target)
    return float(compiled.benchmark(feed, number=50, repeat=7)["median_ms"]), "measured", compiled


def _remeasure(cands: list[Candidate], feed: Any, rounds: int = 5) -> None:
    """Time the feasible compiled candidates again, alternating, and keep each one's fastest
    round: each candidate was first timed right after its own search step, when a shared host's
    load may have differed by more than the candidates do; alternating rounds see the same load
    (the minimum is the estimate least disturbed by it)."""
    best = {id(c): math.inf for c in cands}
    for r in range(rounds):
        order = cands if r % 2 == 0 else cands[::-1]
        for c in order:
            t = c.compiled.benchmark(feed, number=20, repeat=3)["min_ms"]
            best[id(c)] = min(best[id(c)], float(t))
    for c in cands:
        c.latency_ms = best[id(c)]
        c.latency_kind = "measured (alternating)"


def _cost_macs(graph: Graph) -> int:
    """MACs with integer / binary layers at half / a sixteenth of the float cost."""
    from mcopt.analysis.cost import analyze

    total = 0.0
    for row in analyze(graph).rows:
        w = (
            0.5
            if row.op.startswith(("q", "fx_"))
            else 1 / 16
            if row.op.startswith("binary")
            else 1.0
        )
        total += row.macs * w
    return int(total)


def _audit_metric(graph: Graph, audit: Any, ref_pred: Any) -> float:
    """Accuracy on the audit split's labels, else top-1 agreement with the original."""
    from mcopt.train.heldout import predictions

    pred = predictions(graph, audit[0])
    ref = audit[1] if audit[1] is not None else ref_pred
    return float(np.mean(pred == ref))


def _paired_se(graph: Graph, audit: Any, ref_pred: Any) -> float:
    """One standard error of the audit accuracy difference between `graph` and the original, from
    the samples where they disagree (McNemar): sqrt(discordant) / n. A candidate that changes many
    predictions must show a clearer margin on a small audit split."""
    from mcopt.train.heldout import predictions

    pred = predictions(graph, audit[0])
    labels = audit[1]
    ref = labels if labels is not None else ref_pred
    n = len(pred)
    if labels is None:
        discordant = int(np.sum(pred != ref_pred))
    else:
        a, b = ref_pred == ref, pred == ref
        discordant = int(np.sum(a != b))
    return float(np.sqrt(discordant) / max(n, 1))


def pareto_front(cands: list[Candidate], objective: str) -> None:
    """Mark the candidates no other one beats on both accuracy drop and objective."""
    ok = [c for c in cands if c.drop is not None and not c.error]
    for c in ok:
        c.pareto = not any(
            o is not c
            and o.drop <= c.drop  # type: ignore[operator]
            and o.objective(objective) <= c.objective(objective)
            and (o.drop < c.drop or o.objective(objective) < c.objective(objective))  # type: ignore[operator]
            for o in ok
        )


def auto_search(
    model: Any,
    *,
    target: str | None,
    data: Any,
    calib: Any,
    input_shapes: Any,
    max_accuracy_drop: float,
    objective: str,
    eval_fn: Callable[[Graph], float] | None,
    seed: int,
    epochs: int,
    log: Callable[[str], None],
) -> tuple[Candidate, list[Candidate]]:
    """Evaluate the candidates (see the module docstring); returns (the chosen one, all of them).
    The chosen candidate's ``result`` is the very model its figures were measured on."""
    from mcopt.api import load, optimize

    if objective not in ("latency", "size"):
        raise OptionError(f"objective must be 'latency' or 'size', got {objective!r}")
    if data is None and eval_fn is None:
        raise OptionError(
            'passes="auto" needs data=(x, y) (or x alone: agreement with the original) or an '
            "eval_fn(graph) -> score to keep the model within max_accuracy_drop"
        )
    original = load(model, input_shapes)
    train = False
    ref_pred = None
    if data is not None:
        from mcopt.train.data import TrainData, as_train_data
        from mcopt.train.heldout import predictions

        full = data if isinstance(data, TrainData) else as_train_data(data, original, seed=seed)
        if full.x is not None:
            # an audit split that no candidate sees, not even for early stopping (which would
            # otherwise select on the figures that certify it): 20 % below 5,000 samples, else 10 %
            names = full.input_names
            both: dict[str, Any] = {
                n: np.concatenate([a, b]) for n, a, b in zip(names, full.x, full.val_x)
            }
            if full.y is not None and full.val_y is not None:
                both["y"] = np.concatenate([full.y, full.val_y])
            n = len(both[names[0]])
            split = as_train_data(both, original, seed=seed + 1, val_split=0.2 if n < 5000 else 0.1)
            audit = (split.val_x, split.val_y)
            rest: dict[str, Any] = dict(zip(names, split.x or []))
            if split.y is not None:
                rest["y"] = split.y
            data = as_train_data(rest, original, seed=seed, augment=full.augment)
        else:  # a stream: its own held-out split is the audit
            audit, data = (full.val_x, full.val_y), full
        ref_pred = predictions(original, audit[0]) if len(audit[0]) and len(audit[0][0]) else None
        import importlib.util

        if importlib.util.find_spec("torch") is not None:
            # with labels the candidates fine-tune on them (ce+kd); without, they are distilled
            # from the original (kd on its soft outputs: Hinton et al. 2015) — the agreement
            # they are scored on is with the same teacher
            train = True
        else:
            log("auto: PyTorch is not installed: candidates are not fine-tuned")
    feed = [v.shape for v in original.inputs]
    x0 = [np.zeros(s, np.dtype(v.dtype)) for s, v in zip(feed, original.inputs)]

    def evaluate(pipeline: list[str], family: str) -> Candidate:
        c = Candidate(pipeline, family)
        t0 = time.perf_counter()
        try:
            res = optimize(
                original, target=None, passes=pipeline, calib=calib, data=data, seed=seed
            )
        except Exception as e:  # a candidate that does not apply is skipped, not fatal
            c.error = str(e).splitlines()[0][:200]
            c.seconds = time.perf_counter() - t0
            log(f"auto: {','.join(pipeline)}: skipped ({c.error})")
            return c
        g = res.graph
        c.graph, c.result = g, res
        if eval_fn is not None:
            c.metric, base = float(eval_fn(g)), float(eval_fn(original))
        elif ref_pred is not None:
            c.metric, base = (
                _audit_metric(g, audit, ref_pred),
                _audit_metric(original, audit, ref_pred),
            )
        else:
            c.metric, base = res.report.final_metric, res.report.initial_metric
        c.drop = (base - c.metric) if base is not None and c.metric is not None else None
        c.drop_bound = c.drop
        if eval_fn is None and ref_pred is not None and c.drop is not None:
            c.drop_bound = c.drop + _paired_se(g, audit, ref_pred)
        c.size_bytes = int(res.cost_after.totals()["weight_bytes"])
        c.macs = _cost_macs(g)
        if objective == "latency":
            try:
                c.latency_ms, c.latency_kind, c.compiled = _latency(g, target, x0)
            except Exception as e:
                c.error = f"does not compile for {target}: {str(e).splitlines()[0][:160]}"
        c.feasible = (
            not c.error and c.drop_bound is not None and c.drop_bound <= max_accuracy_drop + 1e-12
        )
        c.seconds = time.perf_counter() - t0
        log(
            f"auto: {','.join(pipeline)}: drop {c.drop if c.drop is not None else float('nan'):.4f}"
            f" (bound {c.drop_bound if c.drop_bound is not None else float('nan'):.4f}), "
            f"{c.size_bytes:,} weight bytes, "
            + (f"{c.latency_ms:.3f} ms" if c.latency_ms is not None else f"{c.macs:,} cost-MACs")
            + ("" if c.feasible else " (over budget)" if not c.error else f" ({c.error})")
        )
        return c

    cands = [evaluate(["cleanup"], "baseline")]
    best_prune: Candidate | None = None
    int8_spec = _int8_spec(target)
    round_to = _round_to(target) if objective == "latency" else 1
    for family, ladder in _families(original, objective, train, epochs, int8_spec, round_to):
        for pipe in ladder:
            c = evaluate(pipe, family)
            cands.append(c)
            if not c.feasible:
                break
            if family == "prune-channels":
                best_prune = c
    int8 = next((c for c in cands if c.family == "int8"), None)
    if best_prune is not None and int8 is not None and int8.feasible:
        combo = [*best_prune.pipeline, int8_spec]
        if train:
            combo.append(f"finetune:epochs={max(1, epochs // 2)},lr=0.0002")
        cands.append(evaluate(combo, "prune-channels+int8"))
    timed = [c for c in cands if c.feasible and c.compiled is not None]
    if objective == "latency" and len(timed) > 1:
        log(f"auto: timing the {len(timed)} candidates within budget again, alternating")
        _remeasure(timed, x0)
    for c in cands:
        c.compiled = None  # the chosen one is compiled again by optimize (it keeps no library)
    pareto_front(cands, objective)
    feasible = [c for c in cands if c.feasible]
    if not feasible:
        raise OptionError(
            f"auto: no candidate stays within max_accuracy_drop={max_accuracy_drop} (not even the "
            "lossless baseline: check eval_fn / data)"
        )
    # timings within 5 % of the fastest are a tie (noise on a shared host): then the smaller wins
    top = min(c.objective(objective) for c in feasible)
    tied = [c for c in feasible if c.objective(objective) <= top * 1.05]
    best = min(tied, key=lambda c: (c.size_bytes, c.drop, c.objective(objective)))
    best.chosen = True
    return best, cands


__all__ = ["Candidate", "auto_search", "pareto_front"]
