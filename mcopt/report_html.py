"""The report people look at: one self-contained ``report.html`` (and a Markdown energy section).

:func:`write_html_report` renders an :class:`mcopt.api.OptimizeResult` as a single HTML file: images are
PNGs embedded as base64 ``data:`` URIs, styles are inline, there is no JavaScript and nothing is
fetched. Sections (each only when its data is there):

- summary: params, weight bytes, MACs, energy per inference and peak activation memory before / after,
  with the ratio ``before / after``; output error, latency, notes;
- passes: one row per pass (like :meth:`PassReport.to_markdown`, with the held-out metric column when
  the run had data, and each pass's details);
- per-layer charts before vs after for params, MACs and weight bytes (the lecture's AlexNet / VGG
  per-layer charts) and a per-layer table. Layers are matched by node name; a renamed layer
  (``Conv_0`` -> ``Conv_0_q``, ``Gemm_7`` -> ``Gemm_7_lr0`` + ``Gemm_7_lr1``) by the name it
  extends or, failing that, by the weight it was made from; unmatched layers show as removed / new;
- energy per layer, before / after, split into arithmetic, registers, SRAM and DRAM
  (:mod:`mcopt.analysis.energy`, Horowitz 45 nm);
- latency: the compiled module's (``result.latency_ms``) beside onnxruntime's on the original model
  (``ort_latency_ms=``, or found on the result);
- Pareto: accuracy drop vs size and vs latency of the pipelines an automatic search explored
  (``pareto=``, or ``result.pareto`` / ``result.report.pareto``), the front and the chosen one marked;
- sensitivity: error vs pruning ratio per layer (``sensitivity=``: a
  :class:`~mcopt.analysis.sensitivity.SensitivityReport` or its ``to_dict()``);
- files: the bytes on disk of what ``save()`` wrote (``result.artifacts``), and the timings.

matplotlib (Agg, through ``matplotlib.figure.Figure``: no pyplot state) is imported only when a
report is written; without it the page is written with the tables and a note instead of charts.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcopt.analysis.cost import CostReport, analyze, human_bytes, human_count
from mcopt.analysis.energy import EnergyReport, LayerEnergy, estimate_energy, format_energy
from mcopt.ir.core import Graph

if TYPE_CHECKING:
    from mcopt.api import OptimizeResult

_BEFORE_COLOR = "#4c72b0"
_AFTER_COLOR = "#dd8452"
_COMPONENT_COLORS = {
    "compute_pj": "#55a868",
    "rf_pj": "#8172b3",
    "sram_pj": "#64b5cd",
    "dram_pj": "#c44e52",
}
_COMPONENT_NAMES = {
    "compute_pj": "arithmetic",
    "rf_pj": "registers",
    "sram_pj": "SRAM (activations)",
    "dram_pj": "DRAM (weights)",
}


# --- matching layers before / after ------------------------------------------------------------------
@dataclass
class LayerPair:
    """One layer of the original matched with what it became (``after`` empty: removed; ``before``
    empty: a new layer). ``status``: same, renamed, split, removed, new."""

    name: str
    before: list[LayerEnergy] = field(default_factory=list)
    after: list[LayerEnergy] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.after:
            return "removed"
        if not self.before:
            return "new"
        if len(self.after) > 1:
            return "split"
        return "same" if self.after[0].name == self.name else "renamed"

    def value(self, side: str, key: str) -> float:
        """Sum of `key` (a :class:`LayerEnergy` field or ``total_pj``) over one side's rows."""
        rows = self.before if side == "before" else self.after
        return float(sum(getattr(r, key) for r in rows))

    @property
    def is_layer(self) -> bool:
        """Has weights or MACs on either side (what the per-layer charts show)."""
        return any(r.params or r.macs for r in (*self.before, *self.after))

    @property
    def label(self) -> str:
        if self.status in ("same", "removed", "new"):
            return self.name
        return f"{self.name} -> {', '.join(r.name for r in self.after)}"


def _main_weight(graph: Graph) -> dict[str, str]:
    """node name -> name of its largest constant input (through weight decoders such as
    ``codebook_weight``), for matching layers whose node was renamed."""
    out: dict[str, str] = {}
    for node in graph.nodes:
        best: tuple[int, str] | None = None
        for v in node.inputs:
            if v is None:
                continue
            cands = [v] if v.is_const else []
            if not v.is_const and v.producer is not None:
                cands = [c for c in v.producer.inputs if c is not None and c.is_const]
            for c in cands:
                if best is None or c.type.size > best[0]:
                    best = (c.type.size, c.name)
        if best is not None:
            out[node.name] = best[1]
    return out


def _extends(new: str, old: str) -> bool:
    return new == old or new.startswith(old + "_") or new.startswith(old + ".")


def match_layers(
    before: EnergyReport,
    after: EnergyReport,
    before_graph: Graph | None = None,
    after_graph: Graph | None = None,
) -> list[LayerPair]:
    """Pair the rows of two energy reports (original, optimized) by node name: equal names; then a
    new name that extends an old one (``Conv_0_q``, ``Gemm_7_lr0``; the longest such old name);
    then (with the graphs) a main weight whose name extends the old main weight's
    (``conv2.weight_bits`` from ``conv2.weight``). Pairs in the original's order, new layers last."""
    pairs = [LayerPair(r.name, before=[r]) for r in before.rows]
    by_name = {p.name: p for p in pairs}
    new_rows: list[LayerEnergy] = []
    unmatched: list[LayerEnergy] = []
    for r in after.rows:
        if r.name in by_name:
            by_name[r.name].after.append(r)
        else:
            unmatched.append(r)
    rest: list[LayerEnergy] = []
    for r in unmatched:
        olds = [n for n in by_name if _extends(r.name, n)]
        if olds:
            by_name[max(olds, key=len)].after.append(r)
        else:
            rest.append(r)
    if rest and before_graph is not None and after_graph is not None:
        wb, wa = _main_weight(before_graph), _main_weight(after_graph)
        by_weight = {w: n for n, w in wb.items() if not by_name[n].after} if wb else {}
        for r in rest:
            w = wa.get(r.name)
            olds = [wn for wn in by_weight if w is not None and _extends(w, wn)]
            if olds:
                by_name[by_weight[max(olds, key=len)]].after.append(r)
            else:
                new_rows.append(r)
    else:
        new_rows = rest
    return pairs + [LayerPair(r.name, after=[r]) for r in new_rows]


# --- reading the result gracefully -------------------------------------------------------------------
def _attr(obj: Any, name: str, default: Any = None) -> Any:
    try:
        return getattr(obj, name, default)
    except Exception:
        return default


def _costs(result: Any) -> tuple[CostReport | None, CostReport | None]:
    before, after = _attr(result, "cost_before"), _attr(result, "cost_after")
    original, graph = _attr(result, "original"), _attr(result, "graph")
    if before is None and isinstance(original, Graph):
        before = analyze(original)
    if after is None and isinstance(graph, Graph):
        after = analyze(graph)
    return before, after


def _energies(result: Any) -> tuple[EnergyReport | None, EnergyReport | None]:
    original, graph = _attr(result, "original"), _attr(result, "graph")
    eb = estimate_energy(original) if isinstance(original, Graph) else None
    ea = estimate_energy(graph) if isinstance(graph, Graph) else None
    return eb, ea


def _find_ort_latency(result: Any) -> float | None:
    """An onnxruntime latency (ms) the result carries: an attribute, or a timings / summary key
    naming onnxruntime (``ort_latency_ms``, ``onnxruntime_ms``, ...)."""
    for name in ("ort_latency_ms", "onnxruntime_latency_ms"):
        v = _attr(result, name)
        if isinstance(v, int | float):
            return float(v)
    timings = _attr(result, "timings") or {}
    if isinstance(timings, Mapping):
        for k, v in timings.items():
            key = str(k).lower()
            if ("onnxruntime" in key or key.startswith("ort")) and isinstance(v, int | float):
                return float(v) if "ms" in key else float(v) * 1e3
    return None


def _as_points(pareto: Any) -> list[dict[str, Any]]:
    if pareto is None:
        return []
    if isinstance(pareto, Mapping):
        pareto = pareto.get("points") or pareto.get("front") or []
    out = []
    for p in pareto:
        if not isinstance(p, Mapping):
            p = p.to_dict() if hasattr(p, "to_dict") else dict(vars(p))
        out.append(dict(p))
    return out


def _find_pareto(result: Any) -> list[dict[str, Any]]:
    for holder in (result, _attr(result, "report")):
        pts = _as_points(_attr(holder, "pareto"))
        if pts:
            return pts
    return []


_DROP_KEYS = ("accuracy_drop", "drop", "metric_drop", "output_error", "max_rel_err")


def _drop_key(points: Sequence[Mapping[str, Any]]) -> str | None:
    for k in _DROP_KEYS:
        if any(isinstance(p.get(k), int | float) for p in points):
            return k
    return None


def _sensitivity_series(sens: Any) -> tuple[str, str, list[tuple[str, list[float], list[float]]]]:
    """(x label, y label, [(layer, ratios, values)]) from a SensitivityReport or its to_dict()."""
    get = sens.get if isinstance(sens, Mapping) else (lambda k, d=None: _attr(sens, k, d))
    layers = list(get("layers", []) or [])
    ratios = [float(s) for s in (get("sparsities", []) or [])]
    acc = get("accuracy", None)
    vals = acc if acc is not None else get("errors", [])
    vals = vals.tolist() if hasattr(vals, "tolist") else vals
    base = float(get("base_accuracy", 0.0) or 0.0) if acc is not None else 0.0
    kind = get("kind", "weights")
    xlabel = "fraction of channels pruned" if kind == "channels" else "sparsity (fraction pruned)"
    ylabel = "top-1 accuracy" if acc is not None else "relative output error"
    series = [
        (str(name), [0.0, *ratios], [base, *[float(x) for x in row]])
        for name, row in zip(layers, vals or [])
    ]
    return xlabel, ylabel, series


# --- charts --------------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float, h: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _ratio_text(b: float, a: float) -> str:
    if b and not a:
        return "removed"
    if a and not b:
        return "new"
    if not a and not b:
        return ""
    r = b / a
    return f"{r:.1f}x" if r >= 1 else f"{1 / r:.1f}x more"


def _layer_chart(pairs: Sequence[LayerPair], key: str, title: str, ylabel: str) -> str:
    import numpy as np

    names = [p.name for p in pairs]
    b = np.array([p.value("before", key) for p in pairs])
    a = np.array([p.value("after", key) for p in pairs])
    fig, ax = _figure(max(7.5, 0.7 * len(pairs) + 2.5), 3.8)
    x = np.arange(len(pairs))
    ax.bar(x - 0.2, b, 0.4, label="before", color=_BEFORE_COLOR)
    ax.bar(x + 0.2, a, 0.4, label="after", color=_AFTER_COLOR)
    pos = np.concatenate([b[b > 0], a[a > 0]])
    log = pos.size > 0 and pos.max() / pos.min() > 200
    if log:
        ax.set_yscale("log")
    top = max(float(b.max(initial=0)), float(a.max(initial=0)), 1.0)
    for i in range(len(pairs)):
        txt = _ratio_text(float(b[i]), float(a[i]))
        if txt:
            y = max(b[i], a[i], 1.0)
            ax.text(
                x[i],
                y * (1.3 if log else 1.0) + (0 if log else 0.02 * top),
                txt,
                ha="center",
                va="bottom",
                fontsize=7,
            )
    if log:
        ax.set_ylim(top=top * 6)
    else:
        ax.set_ylim(top=top * 1.15)
    ax.set_xticks(x)
    turn = len(pairs) > 6
    ax.set_xticklabels(
        names, rotation=35 if turn else 0, ha="right" if turn else "center", fontsize=8
    )
    ax.set_ylabel(ylabel + (" (log)" if log else ""))
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _energy_chart(pairs: Sequence[LayerPair], others: Sequence[LayerPair]) -> str:
    import numpy as np

    groups = [(p.name, [p]) for p in pairs]
    if others:
        groups.append(("other", list(others)))
    fig, (ax, axt) = _figure(max(8.0, 0.8 * len(groups) + 5.0), 4.2, ncols=2)
    x = np.arange(len(groups))
    for side, off in (("before", -0.2), ("after", 0.2)):
        bottom = np.zeros(len(groups))
        for comp, color in _COMPONENT_COLORS.items():
            vals = np.array([sum(p.value(side, comp) for p in ps) for _, ps in groups]) * 1e-6
            ax.bar(
                x + off,
                vals,
                0.38,
                bottom=bottom,
                color=color,
                label=_COMPONENT_NAMES[comp] if side == "before" else None,
                edgecolor="white" if side == "before" else "black",
                linewidth=0.4,
            )
            bottom += vals
    ax.set_xticks(x)
    turn = len(groups) > 6
    ax.set_xticklabels(
        [n for n, _ in groups],
        rotation=35 if turn else 0,
        ha="right" if turn else "center",
        fontsize=8,
    )
    ax.set_ylabel("energy per inference (uJ)")
    ax.set_title("per layer: left bar before, right bar (outlined) after")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    allp = [*pairs, *others]
    for i, side in enumerate(("before", "after")):
        bottom = 0.0
        for comp, color in _COMPONENT_COLORS.items():
            v = sum(p.value(side, comp) for p in allp) * 1e-6
            axt.bar(i, v, 0.6, bottom=bottom, color=color)
            bottom += v
        axt.text(i, bottom, f"{bottom:.3g} uJ", ha="center", va="bottom", fontsize=8)
    axt.set_xticks([0, 1])
    axt.set_xticklabels(["before", "after"])
    axt.set_title("whole model")
    axt.set_ylabel("uJ")
    axt.grid(axis="y", alpha=0.3)
    return _png(fig)


def _latency_chart(rows: Sequence[tuple[str, float]]) -> str:
    fig, ax = _figure(7.0, 0.45 * len(rows) + 1.0)
    labels = [r[0] for r in rows]
    vals = [r[1] for r in rows]
    colors = [_BEFORE_COLOR, _AFTER_COLOR, "#55a868", "#8172b3"][: len(rows)]
    ax.barh(range(len(rows)), vals, 0.55, color=colors)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.3g} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency (ms, median)")
    ax.set_xlim(right=max(vals) * 1.25 if vals else 1.0)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when both coordinates are minimized, by ascending x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _pareto_axes(points: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(key, label) of the x axes to plot against: size, and latency (or cost-model MACs when no
    candidate has a measured latency)."""

    def has(k: str) -> bool:
        return any(isinstance(p.get(k), int | float) for p in points)

    out = [("size_bytes", "model size (bytes)")] if has("size_bytes") else []
    if has("latency_ms"):
        out.append(("latency_ms", "latency (ms)"))
    elif has("macs"):
        out.append(("macs", "MACs (cost model; no latency measured)"))
    return out


def _pareto_chart(points: Sequence[Mapping[str, Any]], ykey: str) -> str | None:
    axes_spec = _pareto_axes(points)
    if not axes_spec:
        return None
    fig, axes = _figure(5.5 * len(axes_spec), 4.0, ncols=len(axes_spec))
    axes = list(axes) if len(axes_spec) > 1 else [axes]
    ylabel = ykey.replace("_", " ")
    for ax, (xkey, xlabel) in zip(axes, axes_spec):
        pts = [
            p
            for p in points
            if isinstance(p.get(xkey), int | float)
            and isinstance(p.get(ykey), int | float)
            and not p.get("error")
        ]
        xy = [(float(p[xkey]), float(p[ykey])) for p in pts]
        ok = [q for p, q in zip(pts, xy) if p.get("feasible", True)]
        out = [q for p, q in zip(pts, xy) if not p.get("feasible", True)]
        ax.scatter(
            [q[0] for q in ok],
            [q[1] for q in ok],
            s=22,
            color=_BEFORE_COLOR,
            alpha=0.75,
            label="explored",
        )
        if out:
            ax.scatter(
                [q[0] for q in out],
                [q[1] for q in out],
                s=22,
                color="#999999",
                marker="x",
                label="over budget",
            )
        front = pareto_front(xy)
        if front:
            ax.step(
                [xy[i][0] for i in front],
                [xy[i][1] for i in front],
                where="post",
                color=_AFTER_COLOR,
                label="Pareto front",
            )
        chosen = [q for p, q in zip(pts, xy) if p.get("chosen")]
        if chosen:
            ax.scatter(
                [q[0] for q in chosen],
                [q[1] for q in chosen],
                s=140,
                marker="*",
                color="#c44e52",
                zorder=5,
                label="chosen",
            )
        for i in front[:12]:
            label = str(pts[i].get("pipeline", ""))
            if label:
                ax.annotate(
                    label[:28], xy[i], fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
        xs = [q[0] for q in xy if q[0] > 0]
        if xs and max(xs) / min(xs) > 50:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} vs {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def _sensitivity_chart(sens: Any) -> str | None:
    xlabel, ylabel, series = _sensitivity_series(sens)
    if not series:
        return None
    fig, ax = _figure(7.0, 4.2)
    for name, xs, ys in series:
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("layer sensitivity: each layer pruned alone")
    ax.grid(alpha=0.3)
    if len(series) <= 20:
        ax.legend(fontsize=7, ncol=2)
    return _png(fig)


# --- HTML helpers --------------------------------------------------------------------------------------
_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; background: #fff; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 3px solid #4c72b0; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #eef2f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: bold; background: #f6f6f6; }
tr.removed td { color: #999; text-decoration: line-through; }
tr.new td { color: #2a7a2a; }
img { max-width: 100%; height: auto; display: block; margin: .6em 0; }
.note { color: #555; font-size: 0.9em; }
.good { color: #2a7a2a; font-weight: bold; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    numeric_from: int = 1,
    row_classes: Sequence[str] | None = None,
) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        cells = "".join(
            f'<td class="num">{_e(c)}</td>' if j >= numeric_from else f"<td>{_e(c)}</td>"
            for j, c in enumerate(row)
        )
        out.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(b64: str | None, alt: str) -> str:
    if not b64:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _ratio(b: float | None, a: float | None) -> str:
    if not b or not a:
        return ""
    return f"{b / a:.2f}x"


def _fmt_detail(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_fmt_detail(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple) and len(v) > 8:
        return f"[{len(v)} items]"
    return str(v)


def _pass_table(report: Any) -> str:
    """The pass table of a PassReport (its own columns and rows, :meth:`PassReport.rows`, plus
    each pass's details)."""
    records = list(_attr(report, "records", []) or [])
    metric_name = _attr(report, "metric_name")
    headers = [*report.headers, "details"]
    base = report.rows()
    rows = [[*base[0], ""]] + [
        [*row, "; ".join(f"{k} {_fmt_detail(v)}" for k, v in (r.details or {}).items())]
        for row, r in zip(base[1:], records)
    ]
    text = _table(headers, rows, numeric_from=2)
    if metric_name is not None:
        text += (
            f'<p class="note">Held-out {_e(metric_name)}: measured on '
            f"{_e(_attr(report, 'metric_samples', 0))} samples of the validation split, which no "
            "pass trained or fitted on.</p>"
        )
    seconds = _attr(report, "seconds")
    if isinstance(seconds, int | float):
        took = f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"
        text += f'<p class="note">{len(records)} pass(es) in {took}.</p>'
    return text


# --- the Markdown energy section -------------------------------------------------------------------------
def energy_summary(result: OptimizeResult) -> dict[str, Any]:
    """Energy totals before / after (pJ, per inference) and their ratio, for ``report.json``."""
    eb, ea = _energies(result)
    out: dict[str, Any] = {"model": "Horowitz 45 nm, weights from DRAM (mcopt.analysis.energy)"}
    if eb is not None:
        out["before"] = eb.totals()
    if ea is not None:
        out["after"] = ea.totals()
    if eb is not None and ea is not None and ea.total_pj > 0:
        out["ratio"] = eb.total_pj / ea.total_pj
    return out


def energy_markdown(result: OptimizeResult, min_share: float = 0.005) -> str:
    """A Markdown section "Energy per inference (estimate)": totals before / after, then one row per
    layer that takes at least `min_share` of either total (the rest summed into "other")."""
    eb, ea = _energies(result)
    if eb is None or ea is None:
        return ""
    pairs = match_layers(eb, ea, _attr(result, "original"), _attr(result, "graph"))
    tb, ta = eb.total_pj or 1.0, ea.total_pj or 1.0
    lines = [
        "## Energy per inference (estimate)",
        "",
        f"Before: {eb.summary()}.",
        f"After: {ea.summary()}.",
        f"**{eb.total_pj / ta:.2f}x less energy per inference** (Horowitz 45 nm: 32-bit DRAM read "
        "640 pJ, SRAM 5 pJ, float mult 3.7 pJ; weights read from DRAM at their encoded size).",
        "",
        "| layer | before | after | ratio | DRAM share after |",
        "|---|---:|---:|---:|---:|",
    ]
    other_b = other_a = 0.0
    for p in pairs:
        b, a = p.value("before", "total_pj"), p.value("after", "total_pj")
        if b / tb < min_share and a / ta < min_share:
            other_b, other_a = other_b + b, other_a + a
            continue
        if not p.after:
            lines.append(f"| {p.label} | {format_energy(b)} | removed | | |")
            continue
        share = f"{p.value('after', 'dram_pj') / a:.0%}" if a else ""
        lines.append(
            f"| {p.label} | {format_energy(b) if p.before else 'new'} | {format_energy(a)} | "
            f"{_ratio_text(b, a) if p.before else ''} | {share} |"
        )
    if other_b or other_a:
        lines.append(
            f"| (other nodes) | {format_energy(other_b)} | {format_energy(other_a)} | "
            f"{_ratio_text(other_b, other_a)} | |"
        )
    lines.append(
        f"| **total** | **{format_energy(eb.total_pj)}** | **{format_energy(ea.total_pj)}** | "
        f"**{_ratio_text(eb.total_pj, ea.total_pj)}** | {ea.dram_pj / ta:.0%} |"
    )
    return "\n".join(lines)


# --- the page ------------------------------------------------------------------------------------------
def render_html(
    result: OptimizeResult,
    *,
    ort_latency_ms: float | None = None,
    pareto: Sequence[Mapping[str, Any]] | None = None,
    sensitivity: Any = None,
    title: str | None = None,
) -> str:
    """The report page as one HTML string (see :func:`write_html_report`)."""
    try:
        import matplotlib  # noqa: F401

        charts = True
    except ImportError:
        charts = False

    cb, ca = _costs(result)
    eb, ea = _energies(result)
    original, graph = _attr(result, "original"), _attr(result, "graph")
    model = _attr(original, "name") or _attr(graph, "name") or "model"
    target = _attr(result, "target")
    parts: list[str] = []
    add = parts.append
    add(f"<h1>{_e(title or f'mcopt report: {model}')}</h1>")
    inputs = [f"{v.name} {list(v.shape)} {v.dtype}" for v in (_attr(graph, "inputs", []) or [])]
    add(
        f"<p>target: <code>{_e(target or 'none (not compiled)')}</code>"
        + (f" &middot; inputs: {_e(', '.join(inputs))}" if inputs else "")
        + "</p>"
    )
    if not charts:
        add(
            '<p class="note">matplotlib is not installed: charts are left out '
            "(<code>pip install matplotlib</code>).</p>"
        )

    # summary
    add("<h2>Summary</h2>")
    rows: list[list[str]] = []
    if cb is not None and ca is not None:
        rows += [
            [
                "params",
                human_count(cb.params),
                human_count(ca.params),
                _ratio(cb.params, ca.params),
            ],
            [
                "weight bytes",
                human_bytes(cb.weight_bytes),
                human_bytes(ca.weight_bytes),
                _ratio(cb.weight_bytes, ca.weight_bytes),
            ],
            ["MACs", human_count(cb.macs), human_count(ca.macs), _ratio(cb.macs, ca.macs)],
        ]
    if eb is not None and ea is not None:
        sb = sum(r.stored_params for r in eb.rows)
        sa = sum(r.stored_params for r in ea.rows)
        rows.insert(
            1,
            [
                "stored params (non-zeros of sparse weights)",
                human_count(sb),
                human_count(sa),
                _ratio(sb, sa),
            ],
        )
    if eb is not None and ea is not None:
        mb = sum(r.effective_macs for r in eb.rows)
        ma = sum(r.effective_macs for r in ea.rows)
        rows += [
            [
                "MACs done (sparse weights skip zeros)",
                human_count(mb),
                human_count(ma),
                _ratio(mb, ma),
            ],
            [
                "energy per inference (estimate)",
                format_energy(eb.total_pj),
                format_energy(ea.total_pj),
                _ratio(eb.total_pj, ea.total_pj),
            ],
            [
                "of which DRAM weight reads",
                format_energy(eb.dram_pj),
                format_energy(ea.dram_pj),
                _ratio(eb.dram_pj, ea.dram_pj),
            ],
        ]
    if cb is not None and ca is not None:
        rows.append(
            [
                "peak activation memory",
                human_bytes(cb.peak_activation_bytes),
                human_bytes(ca.peak_activation_bytes),
                _ratio(cb.peak_activation_bytes, ca.peak_activation_bytes),
            ]
        )
    if rows:
        add(_table(["", "before", "after", "ratio (before / after)"], rows))
    err = _attr(result, "output_error") or {}
    if isinstance(err, Mapping) and "max_abs" in err:
        add(
            f"<p>Output error vs the original on {float(err.get('samples', 0)):.0f} input(s) "
            f"({_e(err.get('source', ''))}): max abs {err['max_abs']:.3g}, max rel "
            f"{err['max_rel']:.3g}."
            + (
                f" Compiled module vs the reference interpreter: max rel "
                f"{err['compiled_vs_reference_max_rel']:.3g}."
                if "compiled_vs_reference_max_rel" in err
                else ""
            )
            + "</p>"
        )
    notes = list(_attr(result, "notes", []) or [])
    if notes:
        add("<ul>" + "".join(f'<li class="note">{_e(n)}</li>' for n in notes) + "</ul>")

    # latency
    latency = _attr(result, "latency_ms")
    ort = ort_latency_ms if ort_latency_ms is not None else _find_ort_latency(result)
    lat_rows: list[tuple[str, float]] = []
    if isinstance(ort, int | float):
        lat_rows.append(("original, onnxruntime (fp32)", float(ort)))
    if isinstance(latency, int | float):
        lat_rows.append((f"optimized, compiled ({target or 'target'})", float(latency)))
    if lat_rows:
        add("<h2>Latency</h2>")
        text = _e(", ".join(f"{n}: {v:.3f} ms" for n, v in lat_rows))
        if len(lat_rows) == 2 and lat_rows[1][1] > 0:
            speed = lat_rows[0][1] / lat_rows[1][1]
            text += f" &mdash; <span class='good'>{speed:.2f}x</span> the speed of onnxruntime"
        add(f"<p>{text}</p>")
        if charts:
            add(_img(_latency_chart(lat_rows), "latency chart"))

    # passes
    report = _attr(result, "report")
    if report is not None:
        add("<h2>Passes</h2>")
        add(_pass_table(report))

    # per layer
    if eb is not None and ea is not None:
        pairs = match_layers(eb, ea, original, graph)
        layers = [p for p in pairs if p.is_layer]
        others = [p for p in pairs if not p.is_layer]
        add("<h2>Per layer</h2>")
        add(
            '<p class="note">Layers (nodes with weights or MACs) of the original, matched to the '
            "optimized graph by node name (a renamed or split layer by the name it extends or the "
            "weight it came from). Numbers above the bars: before / after.</p>"
        )
        if charts and layers:
            add(
                _img(
                    _layer_chart(
                        layers,
                        "stored_params",
                        "parameters per layer (stored: the non-zeros of a sparse weight)",
                        "params",
                    ),
                    "params",
                )
            )
            add(_img(_layer_chart(layers, "macs", "MACs per layer", "MACs"), "MACs per layer"))
            add(
                _img(
                    _layer_chart(
                        layers, "weight_bytes", "weight bytes per layer (encoded)", "bytes"
                    ),
                    "weight bytes per layer",
                )
            )
        trows, classes = [], []
        for p in layers:
            trows.append(
                [
                    p.label,
                    p.status,
                    human_count(p.value("before", "stored_params")),
                    human_count(p.value("after", "stored_params")),
                    human_bytes(p.value("before", "weight_bytes")),
                    human_bytes(p.value("after", "weight_bytes")),
                    human_count(p.value("before", "macs")),
                    human_count(p.value("after", "macs")),
                    format_energy(p.value("before", "total_pj")),
                    format_energy(p.value("after", "total_pj")),
                    _ratio_text(p.value("before", "total_pj"), p.value("after", "total_pj")),
                ]
            )
            classes.append(p.status if p.status in ("removed", "new") else "")
        add(
            _table(
                [
                    "layer",
                    "status",
                    "stored params before",
                    "after",
                    "weights before",
                    "after",
                    "MACs before",
                    "after",
                    "energy before",
                    "after",
                    "energy ratio",
                ],
                trows,
                numeric_from=2,
                row_classes=classes,
            )
        )

        # energy
        add("<h2>Energy per inference (estimate)</h2>")
        add(f"<p>Before: {_e(eb.summary())}.<br>After: {_e(ea.summary())}.</p>")
        if ea.total_pj > 0:
            add(
                f"<p><span class='good'>{eb.total_pj / ea.total_pj:.2f}x less energy</span> per "
                "inference.</p>"
            )
        if charts:
            add(_img(_energy_chart(layers, others), "energy per layer"))
        comps = list(_COMPONENT_COLORS)
        add(
            _table(
                ["", *(_COMPONENT_NAMES[c] for c in comps), "total"],
                [
                    [
                        side,
                        *(format_energy(getattr(rep, c)) for c in comps),
                        format_energy(rep.total_pj),
                    ]
                    for side, rep in (("before", eb), ("after", ea))
                ],
            )
        )
        t = eb.table
        add(
            '<p class="note">Model (mcopt.analysis.energy): Horowitz, ISSCC 2014, 45 nm, per 32-bit '
            f"operation: int add {t.int_add} pJ, float add {t.float_add} pJ, register file "
            f"{t.register_file} pJ, int mult {t.int_mult} pJ, float mult {t.float_mult} pJ, SRAM "
            f"{t.sram} pJ, DRAM {t.dram} pJ. Adds and memory scale linearly with the bits, "
            "multiplies quadratically (8-bit int add 0.025 pJ, mult 0.19 pJ). Each MAC at the "
            "layer's type (fp32, int8, fixed point, XNOR + popcount), sparse weights skip their "
            "zeros, weights read once per inference from DRAM at their encoded size, activations "
            "read and written once in SRAM. An estimate of relative cost, not a measurement.</p>"
        )

    # pareto
    points = _as_points(pareto) or _find_pareto(result)
    if points:
        add("<h2>Accuracy budget search: Pareto front</h2>")
        ykey = _drop_key(points)
        if charts and ykey is not None:
            add(_img(_pareto_chart(points, ykey), "accuracy vs size and latency"))
        keys = [
            k
            for k in (
                "pipeline",
                "family",
                ykey,
                "size_bytes",
                "latency_ms",
                "latency_kind",
                "feasible",
                "pareto",
                "chosen",
                "error",
            )
            if k and any(p.get(k) not in (None, "") for p in points)
        ]

        def cell(k: str, v: Any) -> str:
            if v is None:
                return ""
            if k == "size_bytes" and isinstance(v, int | float):
                return human_bytes(v)
            if k == "chosen":
                return "chosen" if v else ""
            if isinstance(v, bool):
                return "yes" if v else "no"
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        add(
            _table(
                [k.replace("_", " ") for k in keys],
                [[cell(k, p.get(k)) for k in keys] for p in points],
                row_classes=["new" if p.get("chosen") else "" for p in points],
            )
        )

    # sensitivity
    if sensitivity is None:
        sensitivity = _attr(result, "sensitivity")
    if sensitivity is not None:
        xlabel, ylabel, series = _sensitivity_series(sensitivity)
        if series:
            add("<h2>Layer sensitivity</h2>")
            if charts:
                add(_img(_sensitivity_chart(sensitivity), "sensitivity curves"))
            ratios = series[0][1][1:]
            add(
                _table(
                    ["layer", *(f"{r:.0%}" for r in ratios)],
                    [[n, *(f"{y:.4f}" for y in ys[1:])] for n, _, ys in series],
                )
            )
            add(f'<p class="note">{_e(ylabel)} with one layer pruned alone at each ratio.</p>')

    # files written by save()
    artifacts = _attr(result, "artifacts") or {}
    if isinstance(artifacts, Mapping) and artifacts:
        add("<h2>Files</h2>")
        add(
            _table(
                ["file", "bytes on disk"],
                [
                    [k, f"{human_bytes(v)} ({v:,} B)"]
                    for k, v in artifacts.items()
                    if isinstance(v, int | float)
                ],
            )
        )

    # timings
    timings = _attr(result, "timings") or {}
    if isinstance(timings, Mapping) and timings:
        add("<h2>Timings</h2>")
        add(
            _table(
                ["stage", "seconds"],
                [[k, f"{v:.2f}"] for k, v in timings.items() if isinstance(v, int | float)],
            )
        )
    body = "\n".join(p for p in parts if p)
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{_e(title or f'mcopt report: {model}')}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def write_html_report(
    result: OptimizeResult,
    path: str | os.PathLike,
    *,
    ort_latency_ms: float | None = None,
    pareto: Sequence[Mapping[str, Any]] | None = None,
    sensitivity: Any = None,
    title: str | None = None,
) -> Path:
    """Write `result` as one self-contained HTML page to `path` (atomically: temp file + rename).

    `ort_latency_ms`: the original model's latency under onnxruntime, shown beside the compiled one.
    `pareto`: the points an automatic search explored (dicts with ``pipeline``, ``accuracy_drop``,
    ``size_bytes``, ``latency_ms``, ``chosen``); default: ``result.pareto`` /
    ``result.report.pareto`` when present. `sensitivity`: a
    :class:`~mcopt.analysis.sensitivity.SensitivityReport` (or its dict) to plot. Returns the path."""
    text = render_html(
        result, ort_latency_ms=ort_latency_ms, pareto=pareto, sensitivity=sensitivity, title=title
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


__all__ = [
    "LayerPair",
    "energy_markdown",
    "energy_summary",
    "match_layers",
    "pareto_front",
    "render_html",
    "write_html_report",
]
