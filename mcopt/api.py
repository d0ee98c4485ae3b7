"""`mcopt.optimize()`: import, compress (a pass pipeline), check, compile, and report — one call."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcopt import interpreter
from mcopt.analysis.cost import CostReport, analyze
from mcopt.errors import BudgetError, OptionError, TargetError, UnsupportedOpError
from mcopt.inputs import Feed, load_calibration, random_feeds
from mcopt.ir.core import Graph
from mcopt.ir.verify import verify
from mcopt.pass_manager import PassContext, PassManager, PassReport, output_errors
from mcopt.report_html import energy_markdown, energy_summary, write_html_report

#: the default pipeline: lossless cleanup (later issues add compression passes to named pipelines)
DEFAULT_PASSES: tuple[str, ...] = ("cleanup",)

ModelLike = str | os.PathLike | bytes | Graph | Any  # Any: onnx.ModelProto (onnx imported lazily)


def load(
    model: ModelLike,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    allow_nonfinite: bool = False,
    input_values: Mapping[str, Any] | None = None,
) -> Any:
    """Anything a user may hand us -> a verified IR graph (a Graph is copied, never mutated).

    A directory written by :meth:`OptimizeResult.save` (``mcopt optimize -o DIR``) reopens as a
    :class:`SavedModel` instead: the graph in its real encodings (from model.mcz), the compiled
    library when it runs here, the input specs and the report."""
    if isinstance(model, str | os.PathLike) and Path(model).is_dir():
        return load_saved(model)
    if isinstance(model, Graph):
        g = model.copy()
    else:
        from mcopt.onnx_io import import_model

        g = import_model(
            model,
            input_shapes=dict(input_shapes) if input_shapes else None,
            allow_nonfinite=allow_nonfinite,
            input_values=input_values,
        )
    verify(g)
    return g


@dataclass
class OptimizeResult:
    """What `optimize()` returns: the optimized graph, its compiled module and the report."""

    graph: Graph
    original: Graph
    target: str | None
    report: PassReport
    cost_before: CostReport
    cost_after: CostReport
    compiled: Any = None  # mcopt.targets.CompiledModel when compiled
    check_inputs: list[Feed] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    output_error: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: file name -> bytes on disk of what save() wrote
    artifacts: dict[str, int] = field(default_factory=dict)
    #: onnxruntime on the original model / mcopt through run(): wall ms per call, side by side
    ort_latency_ms: float | None = None
    call_latency_ms: float | None = None
    #: passes="auto": every candidate evaluated (mcopt.search.Candidate.to_dict rows)
    pareto: list[dict[str, Any]] = field(default_factory=list)

    @property
    def planned_graph(self) -> Graph | None:
        """The planned graph the default CPU build lowered: ``fused_conv2d`` / ``fused_dense``
        with their kernels, values kept blocked (``@NCHW16c``); None when not compiled so."""
        return getattr(self.compiled, "planned", None)

    def run(self, *inputs: Any, **named: Any) -> list[np.ndarray]:
        """Run the optimized model: the compiled module when there is one, else the interpreter.

        Inputs positional (in graph-input order) or by name."""
        feed: Any = (
            named
            if named
            else (
                inputs[0] if len(inputs) == 1 and isinstance(inputs[0], Mapping) else list(inputs)
            )
        )
        if self.compiled is not None:
            return self.compiled.run(*feed) if isinstance(feed, list) else self.compiled.run(feed)
        return interpreter.run(self.graph, feed)

    def _io_description(self) -> str | None:
        """model.io.txt for the C API (:mod:`mcopt.targets.capi`): for a Relax VM library on a CPU
        (llvm) target with static shapes; None otherwise (a note says why when shapes are not
        static)."""
        from mcopt.targets import get_target
        from mcopt.targets.capi import io_description

        if self.target is None or get_target(self.target).kind != "llvm":
            return None
        try:
            return io_description(
                [(v.name, v.shape, v.dtype) for v in self.graph.inputs],
                [(v.name, v.shape, v.dtype) for v in self.graph.outputs],
            )
        except TargetError as e:
            note = f"model.io.txt (the C API's I/O description) not written: {e}"
            if note not in self.notes:
                self.notes.append(note)
            return None

    # --- reporting -------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        b, a = self.cost_before.totals(), self.cost_after.totals()
        return {
            "model": self.original.name,
            "target": self.target,
            "inputs": {v.name: list(v.shape) for v in self.graph.inputs},
            "before": b,
            "after": a,
            "params_ratio": _ratio(b.get("params"), a.get("params")),
            "bytes_ratio": _ratio(b.get("weight_bytes"), a.get("weight_bytes")),
            "macs_ratio": _ratio(b.get("macs"), a.get("macs")),
            "output_error": self.output_error,
            "latency_ms": self.latency_ms,
            "call_latency_ms": self.call_latency_ms,
            "ort_latency_ms": self.ort_latency_ms,
            "timings_s": self.timings,
            "passes": self.report.to_dict(),
            "notes": self.notes,
            "energy": energy_summary(self),
            "artifacts": dict(self.artifacts),
            "pareto": list(self.pareto),
            "input_specs": [[v.name, list(v.shape), v.dtype] for v in self.graph.inputs],
            **(
                {"input_values": self.original.metadata["input_values"]}
                if self.original.metadata.get("input_values")
                else {}
            ),
        }

    def to_markdown(self) -> str:
        s = self.summary()
        b, a = s["before"], s["after"]
        lines = [
            f"# mcopt report: {s['model']}",
            "",
            f"- target: `{s['target'] or 'none (not compiled)'}`",
            f"- inputs: {', '.join(f'`{k}` {v}' for k, v in s['inputs'].items())}",
            "",
            "| | before | after | ratio |",
            "|---|---:|---:|---:|",
            f"| params | {_h(b['params'])} | {_h(a['params'])} | {s['params_ratio']:.2f}x |",
            f"| weight bytes | {_hb(b['weight_bytes'])} | {_hb(a['weight_bytes'])} | {s['bytes_ratio']:.2f}x |",
            f"| MACs | {_h(b['macs'])} | {_h(a['macs'])} | {s['macs_ratio']:.2f}x |",
            f"| peak activation memory | {_hb(b['peak_activation_bytes'])} | {_hb(a['peak_activation_bytes'])} | |",
            "",
        ]
        if self.output_error:
            lines.append(
                f"Output error vs the original model on {self.output_error.get('samples', 0):.0f} input(s) "
                f"({self.output_error.get('source', '')}): max abs {self.output_error['max_abs']:.3g}, "
                f"max rel {self.output_error['max_rel']:.3g}."
            )
            if "compiled_vs_reference_max_rel" in self.output_error:
                lines.append(
                    f"Compiled module vs the reference interpreter: max rel "
                    f"{self.output_error['compiled_vs_reference_max_rel']:.3g}."
                )
            lines.append("")
        if self.latency_ms is not None:
            lines.append(
                f"Compiled latency (batch {self._batch()}, median): {self.latency_ms:.3f} ms."
            )
            if self.ort_latency_ms is not None and self.call_latency_ms is not None:
                lines.append(
                    f"Called from Python, alternating bursts: mcopt {self.call_latency_ms:.3f} ms vs "
                    f"onnxruntime {self.ort_latency_ms:.3f} ms on the original model "
                    f"({self.ort_latency_ms / self.call_latency_ms:.2f}x)."
                )
            lines.append("")
        if self.artifacts:
            lines += ["## Files", "", "| file | bytes on disk | what |", "|---|---:|---|"]
            what = {
                "model.onnx": "ONNX, dense weights (onnxruntime / other tools run it)",
                "model.mcz": "weights in their real encoding, Huffman-coded (mcopt.load)",
                "model.so": f"compiled library for {self.target}",
                "model.io.txt": "inputs and outputs (names, dtypes, shapes) for the C API "
                "(`mcopt capi`)",
                "model.ir.txt": "the printed IR",
                "model.planned.ir.txt": "the planned graph the build lowered (fused ops, layouts, "
                "kernels)",
            }
            for name, size in self.artifacts.items():
                lines.append(f"| {name} | {size:,} | {what.get(name, '')} |")
            lines.append("")
        if self.pareto:
            lines += [
                "## Auto search",
                "",
                "| pipeline | held-out drop | weight bytes | latency ms | within budget | Pareto | chosen |",
                "|---|---:|---:|---:|---|---|---|",
            ]
            for c in self.pareto:
                drop = "" if c["accuracy_drop"] is None else f"{c['accuracy_drop']:.4f}"
                lat = "" if c["latency_ms"] is None else f"{c['latency_ms']:.3f}"
                lines.append(
                    f"| `{c['pipeline']}` | {drop} | {c['size_bytes']:,} | {lat} | "
                    f"{'yes' if c['feasible'] else 'no'} | {'yes' if c['pareto'] else ''} | "
                    f"{'**yes**' if c['chosen'] else ''} |"
                )
            lines.append("")
        for note in self.notes:
            lines.extend([f"Note: {note}", ""])
        lines.extend([energy_markdown(self), ""])
        lines.append("## Passes")
        lines.append("")
        lines.append(self.report.to_markdown())
        lines.append("")
        lines.append("## Timings")
        lines.append("")
        for k, v in self.timings.items():
            lines.append(f"- {k}: {v:.2f} s")
        return "\n".join(lines) + "\n"

    def _batch(self) -> int:
        return (
            self.graph.inputs[0].shape[0] if self.graph.inputs and self.graph.inputs[0].shape else 1
        )

    def save(self, outdir: str | os.PathLike) -> dict[str, Path]:
        """Write to `outdir`: model.onnx (dense weights, what onnxruntime runs; original input /
        output names, symbolic batch where the input had one), model.mcz (the graph with every
        weight in its real encoding — CSR, codebook indices, packed bits, int8 / fixed-point codes —
        Huffman-coded; :func:`load` reopens it exactly), model.ir.txt (the printed IR), model.so
        (the compiled library), model.io.txt (its inputs' and outputs' names, dtypes and shapes, for
        the C API of :mod:`mcopt.targets.capi`; CPU targets), report.json and report.md (which list
        each file's bytes on disk).

        Each file is written atomically (temp file + rename), so a crash never leaves half a file."""
        from mcopt.huffman import save_compressed
        from mcopt.onnx_io import export_model

        out = Path(outdir)
        if out.exists() and not out.is_dir():
            raise OptionError(f"output path {str(out)!r} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        try:
            proto = export_model(self.graph)
        except (
            UnsupportedOpError
        ) as e:  # e.g. integer-only fixed-point ops ONNX cannot express exactly
            note = f"model.onnx not written: {e}"
            if note not in self.notes:
                self.notes.append(note)
        else:
            data = proto.SerializeToString()
            written["onnx"] = _atomic_write(out / "model.onnx", lambda p: Path(p).write_bytes(data))
        written["mcz"] = _atomic_write(
            out / "model.mcz", lambda p: save_compressed(self.graph, p), suffix=".mcz"
        )
        written["ir"] = _atomic_write(
            out / "model.ir.txt", lambda p: Path(p).write_text(str(self.graph) + "\n")
        )
        planned = self.planned_graph
        if planned is not None:
            written["planned_ir"] = _atomic_write(
                out / "model.planned.ir.txt", lambda p: Path(p).write_text(str(planned) + "\n")
            )
        if self.compiled is not None:
            written["library"] = _atomic_write(
                out / "model.so", self.compiled.export_library, suffix=".so"
            )
            io = self._io_description()
            if io is not None:
                written["io"] = _atomic_write(
                    out / "model.io.txt", lambda p: Path(p).write_text(io)
                )
        self.artifacts = {p.name: p.stat().st_size for p in written.values()}
        summary = self.summary()
        written["report_json"] = _atomic_write(
            out / "report.json",
            lambda p: Path(p).write_text(json.dumps(summary, indent=2, default=_json_default)),
        )
        written["report_md"] = _atomic_write(
            out / "report.md", lambda p: Path(p).write_text(self.to_markdown())
        )
        written["report_html"] = write_html_report(self, out / "report.html")
        return written


@dataclass
class SavedModel:
    """A saved optimize() result, reopened by :func:`load`: ``graph`` (exactly the saved IR),
    ``compiled`` (the library, when its target runs on this host; else None), ``input_specs``
    ``[(name, shape, dtype)]``, ``report`` (report.json as a dict) and ``path``."""

    path: Path
    graph: Graph
    report: dict[str, Any]
    input_specs: list[tuple[str, tuple[int, ...], str]]
    compiled: Any = None

    @property
    def target(self) -> str | None:
        return self.report.get("target")

    def run(self, *inputs: Any, **named: Any) -> list[np.ndarray]:
        """Run on inputs (positional or by name) with the compiled library, else the interpreter.
        Inputs with a larger batch than the model's are run sample by sample and concatenated."""
        from mcopt.inputs import bind_arrays

        arrays = bind_arrays(self.input_specs, inputs, named, any_batch=True)
        b = self.graph.inputs[0].shape[0] if self.graph.inputs[0].shape else 1
        n = arrays[0].shape[0] if arrays and arrays[0].ndim else b
        if n != b and n % b == 0:
            parts = [self.run(*[a[i : i + b] for a in arrays]) for i in range(0, n, b)]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        if self.compiled is not None:
            return self.compiled.run(*arrays)
        return interpreter.run(self.graph, arrays)


def load_saved(outdir: str | os.PathLike) -> SavedModel:
    """Reopen a directory written by :meth:`OptimizeResult.save` (see :class:`SavedModel`)."""
    from mcopt.huffman import load_compressed

    d = Path(outdir)
    mcz, rep = d / "model.mcz", d / "report.json"
    if not mcz.exists() or not rep.exists():
        raise OptionError(
            f"{str(d)!r} is not an mcopt output directory (needs model.mcz and report.json, "
            "written by `mcopt optimize -o DIR` / result.save(DIR))"
        )
    try:
        report = json.loads(rep.read_text())
    except ValueError as e:
        raise OptionError(f"{str(rep)!r} is not valid JSON: {e}") from None
    graph = load_compressed(mcz)
    specs = [(v.name, tuple(v.shape), v.dtype) for v in graph.inputs]
    compiled = None
    so = d / "model.so"
    target = report.get("target")
    if so.exists() and target is not None:
        from mcopt.targets import get_target

        spec = get_target(target)
        if spec.host_runnable and spec.builder is None:
            from mcopt.targets.relax.builder import load_library

            compiled = load_library(so, specs, target=target)
    return SavedModel(d, graph, report, specs, compiled)


def optimize(
    model: ModelLike,
    target: str | None = "cpu",
    passes: Sequence[Any] | None = None,
    calib: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    check: bool = True,
    measure: bool = True,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
    db: str | os.PathLike | None = None,
    repair_db: bool = False,
    data: Any = None,
    val_data: Any = None,
    on_pass: Callable[[int, int, str, bool], None] | None = None,
    max_accuracy_drop: float | None = None,
    max_output_error: float | None = None,
    objective: str = "latency",
    eval_fn: Callable[[Graph], float] | None = None,
    search_epochs: int = 5,
    allow_nonfinite: bool = False,
    input_values: Mapping[str, Any] | None = None,
) -> OptimizeResult:
    """Import `model` (path, ONNX bytes/ModelProto or IR Graph), run `passes` (names, "name:opt=v"
    specs or Pass instances; default: lossless cleanup), check the output error against the original
    on `calib` (or seeded random inputs), and compile for `target` (None: do not compile).

    A dynamic batch dim defaults to 1; `input_shapes={name: shape}` overrides; `input_values={name:
    value}` fixes an input a deployment never changes (it becomes a constant and is no longer an
    input: Silero VAD's sample rate ``sr``). `db`: a tuning
    database written by :func:`tune` for the same model, passes and target (no re-tuning); it is
    validated line by line first (a bad line is a one-line error; `repair_db=True` drops such
    lines, keeping the originals as ``*.bak``).

    `data`: training data for the training passes (``finetune``, ``distill``, ``prune-retrain``,
    ...): ``(x, y)`` arrays, ``x`` alone (then distillation from the original), an ``.npz`` with ``x``
    and ``y``, or an iterable of ``(x, y)`` batches (see :mod:`mcopt.train.data`). A validation split
    is held out (or `val_data` used): the report gives the held-out accuracy (or agreement with the
    original) after every lossy pass, and the output error is measured on held-out inputs.

    Budgets: `max_accuracy_drop` (held-out accuracy, or agreement with the original without labels,
    may fall by at most this much: 0.01 = 1 point; needs `data`) and `max_output_error` (max
    relative output error on held-out / check inputs). A pipeline that breaks one raises
    :class:`~mcopt.errors.BudgetError` naming the first pass past the budget.

    `passes="auto"` searches pipelines (int8, channel pruning with per-layer ratios from the
    sensitivity scan, weight pruning + k-means for `objective="size"`, combinations; each fine-tuned
    for `search_epochs` when `data` has labels) and returns the fastest (`objective="latency"`,
    measured on this host or a MACs cost model) or smallest model within `max_accuracy_drop`
    (default 0.01) on held-out data or by `eval_fn(graph) -> score` (higher is better); every
    candidate and the Pareto front are in ``result.pareto`` (see :mod:`mcopt.search`).

    `on_pass(index, total, name, done)` is called around every pass (e.g. a progress bar).

    `allow_nonfinite`: import weights holding NaN / Inf or a negative batch-norm variance with a
    warning instead of a NonFiniteError naming the tensor."""
    say = progress or (lambda msg: None)
    if isinstance(passes, str) and passes == "auto":
        from mcopt.search import auto_search

        if (allow_nonfinite or input_values) and not isinstance(model, Graph):
            model = load(model, input_shapes, allow_nonfinite=allow_nonfinite,
                         input_values=input_values)  # fmt: skip  # the search loads a Graph
        budget = 0.01 if max_accuracy_drop is None else max_accuracy_drop
        t0 = time.perf_counter()
        best, cands = auto_search(
            model,
            target=target,
            data=data,
            calib=calib,
            input_shapes=input_shapes,
            max_accuracy_drop=budget,
            objective=objective,
            eval_fn=eval_fn,
            seed=seed,
            epochs=search_epochs,
            log=say,
        )
        result = best.result  # the model the audit figures were measured on, not a re-run
        result.pareto = [c.to_dict() for c in cands]
        result.timings["search"] = time.perf_counter() - t0
        result.notes.append(
            f"auto ({objective}, max_accuracy_drop={budget}): chose {','.join(best.pipeline)} of "
            f"{len(cands)} candidates ({sum(c.feasible for c in cands)} within budget on a held-out "
            f"audit split no candidate trained or stopped on, {sum(c.pareto for c in cands)} on "
            "the Pareto front)"
        )
        if target is not None:
            compile_into(
                result, target, db=db, repair_db=repair_db, check=check, measure=measure, say=say
            )
        return result
    if isinstance(passes, str):
        passes = [passes]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    say("importing model")
    original = load(model, input_shapes, allow_nonfinite=allow_nonfinite, input_values=input_values)
    timings["import"] = time.perf_counter() - t0
    graph = original.copy()
    feeds = load_calibration(calib, original)
    source = "calibration data"
    if not feeds:
        feeds = random_feeds(original, n=1, seed=seed)
        source = "seeded random input"
        check_feeds = feeds
    elif len(feeds) >= 2:
        # the error is measured on calibration inputs no pass fitted: the last quarter (1 to 8)
        n_held = min(8, max(1, len(feeds) // 4))
        feeds, check_feeds = feeds[:-n_held], feeds[-n_held:]
        source = f"held-out calibration inputs ({n_held} of {len(feeds) + n_held}, not given to the passes)"
    else:
        check_feeds = feeds
        source = "the only calibration input (the passes also fitted it: give more for a held-out figure)"
    train_data = None
    if data is not None:
        from mcopt.train.data import as_train_data, feeds_of

        train_data = as_train_data(data, original, val=val_data, seed=seed)
        say(train_data.describe())
        held = feeds_of(train_data.val_x, original, limit=4)
        if held:
            check_feeds, source = held, "held-out validation inputs"
        if calib is None:
            # calibrating passes see training inputs, never the validation split
            train_feeds = feeds_of(train_data.x or [], original, limit=64)
            if train_feeds:
                feeds, source = train_feeds, source if held else "training inputs"
    ctx = PassContext(
        calib=feeds,
        seed=seed,
        data=train_data,
        teacher=original,
        progress=on_pass,
        heldout=check_feeds if source != "seeded random input" else [],
    )
    if target is not None:
        # passes that pick per layer by measured speed (winograd:only_if_faster) measure on the target
        from mcopt.targets.services import services_for

        ctx.target = services_for(target)
    cost_before = analyze(original)
    pipeline = list(DEFAULT_PASSES if passes is None else passes)
    if max_accuracy_drop is not None and train_data is None:
        raise OptionError(
            "max_accuracy_drop needs data to measure accuracy on: optimize(..., data=(x, y)) "
            "or --data; use max_output_error without data"
        )
    t0 = time.perf_counter()
    say(f"running {len(pipeline)} pass(es)")
    manager = PassManager(pipeline)
    untrained = [
        p.spec()
        for i, p in enumerate(manager.passes)
        if p.needs_retraining and not any(q.trains for q in manager.passes[i + 1 :])
    ]
    if untrained:
        msg = (
            f"{', '.join(untrained)} without a training pass after it: expect a large accuracy drop "
            "(measured on LeNet-5: binary weights -5 points, XNOR near chance); add finetune after "
            "it with data=, or use the bwn-train / xnor-train pipelines"
        )
        warnings.warn(msg, stacklevel=2)
        notes_early = [msg]
    else:
        notes_early = []
    graph, report = manager.run(graph, ctx=ctx, inputs=check_feeds[0] if check else None)
    timings["passes"] = time.perf_counter() - t0
    lossy = [r.spec for r in report.records if r.changed and not r.lossless]
    if lossy and source == "seeded random input":
        msg = (
            f"lossy pass(es) {', '.join(lossy)} ran without calibration or training data: their "
            "ranges / fits come from random inputs and the output error is measured on one; give "
            "calib= or data= (--calib / --data) for figures that mean something"
        )
        warnings.warn(msg, stacklevel=2)
    check_budgets(report, max_accuracy_drop, max_output_error)
    cost_after = analyze(graph)
    notes = list(notes_early)
    if original.metadata.get("dequantized_dynamic"):
        notes.append(
            f"onnxruntime's dynamic quantization ({original.metadata['dequantized_dynamic']} "
            "nodes) was imported as the float model it approximates: 8-bit weights dequantized, "
            "activations float (quantize-int8 quantizes statically)"
        )
    for key, verb in (("upgraded_from_opset", "upgraded"), ("downgraded_from_opset", "downgraded")):
        if original.metadata.get(key) is not None:
            notes.append(
                f"the model's ONNX opset {original.metadata[key]} was {verb} to "
                f"{original.metadata.get('opset')} with onnx.version_converter before import"
            )
    result = OptimizeResult(
        graph,
        original,
        target,
        report,
        cost_before,
        cost_after,
        check_inputs=check_feeds,
        timings=timings,
        notes=notes,
    )
    if check:
        t0 = time.perf_counter()
        result.output_error = output_error(original, graph, check_feeds)
        result.output_error["source"] = source  # type: ignore[assignment]
        timings["check"] = time.perf_counter() - t0
    if target is not None:
        compile_into(
            result, target, db=db, repair_db=repair_db, check=check, measure=measure, say=say
        )
    return result


def compile_into(
    result: OptimizeResult,
    target: str,
    *,
    db: Any = None,
    repair_db: bool = False,
    check: bool = True,
    measure: bool = True,
    say: Callable[[str], None] = lambda msg: None,
) -> OptimizeResult:
    """Compile ``result.graph`` for `target` into `result`: the compiled module, its check against
    the reference interpreter, latency (and onnxruntime's on the original, side by side)."""
    from mcopt.targets import build  # TVM is imported only when compiling

    graph, original, timings = result.graph, result.original, result.timings
    check_feeds = result.check_inputs
    result.target = target
    say(f"compiling for {target}")
    t0 = time.perf_counter()
    result.compiled = (
        build(graph, target=target, db=db, repair_db=repair_db)
        if db is not None
        else build(graph, target=target)
    )
    choices = getattr(result.compiled, "choices", None) or {}
    if choices:
        result.notes.append(
            "kernels chosen per layer by measurement on this machine (cached; "
            "MCOPT_WINOGRAD=off keeps direct convs): "
            + ", ".join(f"{what} x{n}" for what, n in choices.items())
        )
    tuning = getattr(result.compiled, "tuning_report", None)
    if tuning is not None:
        result.notes.append(f"tuning database {str(db)!r}: {tuning.message()}")
    timings["compile"] = time.perf_counter() - t0
    compiled = result.compiled
    can_run = getattr(compiled, "can_run", True)
    if check and can_run:
        say("checking the compiled module")
        compiled_out = compiled.run(check_feeds[0])
        ref_out = interpreter.run(graph, check_feeds[0])
        err = output_errors(ref_out, compiled_out)
        if not math.isfinite(err[1]):
            raise TargetError(
                f"the compiled {target} module disagrees with the reference interpreter on "
                "non-finite values (NaN / Inf on one side only): nothing written; report this "
                "model (mcopt --debug) — the compiled code is wrong"
            )
        result.output_error["compiled_vs_reference_max_rel"] = err[1]
    elif check:
        result.notes.append(
            f"the {target} module was not run here (no emulator/device): see `mcopt.targets.tune.rpc.run_remote`"
        )
    if measure and not getattr(compiled, "host_runnable", True):
        result.notes.append(
            f"no latency measured: {target} code runs under emulation or on the device, where "
            "emulated timings mean nothing; time it on the device with `mcopt.targets.tune.rpc.run_remote`"
        )
    elif measure:
        say("measuring latency")
        t0 = time.perf_counter()
        result.latency_ms = result.compiled.benchmark(check_feeds[0])["median_ms"]
        try:
            result.ort_latency_ms, result.call_latency_ms = compare_with_onnxruntime(
                original, result.compiled, check_feeds[0]
            )
        except Exception as e:  # onnxruntime cannot run the original: say so, keep going
            result.notes.append(f"onnxruntime latency not measured: {str(e).splitlines()[0]}")
        timings["measure"] = time.perf_counter() - t0
    return result


def compare_with_onnxruntime(
    original: Graph, compiled: Any, feed: Feed, rounds: int = 3, burst_s: float = 0.1
) -> tuple[float, float]:
    """(onnxruntime ms on the original model, mcopt ms through ``compiled.run``): what a user
    calls from Python on each side, in alternating bursts after a pause (both thread pools spin
    after a call), median over all runs. Same thread count for both (mcopt's pool size)."""
    import onnxruntime as ort

    from mcopt.onnx_io import export_model

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("TVM_NUM_THREADS", "0") or 0)
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        export_model(original, dynamic_batch=False).SerializeToString(),
        so,
        providers=["CPUExecutionProvider"],
    )
    names = [v.name for v in original.inputs]
    arrays = [feed[n] for n in names] if isinstance(feed, Mapping) else list(feed)
    ort_feed = dict(zip(names, arrays))
    engines = {"ort": lambda: sess.run(None, ort_feed), "mcopt": lambda: compiled.run(*arrays)}
    times: dict[str, list[float]] = {k: [] for k in engines}
    for r in range(rounds):
        for k in engines if r % 2 == 0 else reversed(list(engines)):
            time.sleep(0.05)
            engines[k]()
            end = time.perf_counter() + burst_s
            first = True
            while first or time.perf_counter() < end:  # >= 1 timed run per burst
                first = False
                t0 = time.perf_counter()
                engines[k]()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times["ort"])), float(np.median(times["mcopt"]))


def tune(
    model: ModelLike,
    target: str = "cpu",
    trials: int = 64,
    db: str | os.PathLike = "tuning",
    *,
    passes: Sequence[Any] | None = None,
    calib: Any = None,
    data: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    rpc: str | None = None,
    key: str | None = None,
    progress: Any = None,
    seed: int = 0,
    repair: bool = False,
) -> Any:
    """Autotune the kernels of `model` for `target` with MetaSchedule (`trials` in all) and store the
    records in the database directory `db` (one per device; resumable; `rpc="host:port"` + `key`
    measure on a remote device; an ARM target without `rpc` is measured by executed instructions
    under qemu, set up by scripts/setup_icount.sh). Run the same `passes` (with the same `calib` /
    `data`) you will give `optimize(..., db=db)`, so the tuned kernels are the ones that get built.
    Returns the tuning report."""
    from mcopt.targets.tune.tuner import tune as tune_graph  # TVM is imported only here

    graph = load(model, input_shapes)
    feeds = load_calibration(calib, graph) or random_feeds(graph, n=1, seed=seed)
    train_data = None
    if data is not None:  # for the training passes, as optimize() gives them
        from mcopt.train.data import as_train_data

        train_data = as_train_data(data, graph, seed=seed)
    pipeline = list(DEFAULT_PASSES if passes is None else passes)
    ctx = PassContext(calib=feeds, seed=seed, data=train_data, teacher=graph.copy())
    graph, _ = PassManager(pipeline).run(graph, ctx=ctx)
    return tune_graph(
        graph, target, trials, db, rpc=rpc, key=key, progress=progress, seed=seed, repair=repair
    )


def check_budgets(
    report: PassReport, max_accuracy_drop: float | None, max_output_error: float | None
) -> None:
    """Raise BudgetError when the final held-out metric fell more than `max_accuracy_drop` below
    the input's (naming the first pass past the budget), or a pass's output error exceeded
    `max_output_error`."""
    final = report.final_metric
    if (
        max_accuracy_drop is not None
        and report.initial_metric is not None
        and final is not None
        and report.initial_metric - final > max_accuracy_drop + 1e-12
    ):  # a pass may lose accuracy that a later one (finetune) wins back: the final figure counts
        for r in report.records:
            if (
                r.metric is not None
                and report.initial_metric - r.metric > max_accuracy_drop + 1e-12
            ):
                raise BudgetError(
                    f"pass {r.spec!r} took the held-out {report.metric_name} from "
                    f"{report.initial_metric:.4f} to {r.metric:.4f} (final {final:.4f}), more than "
                    f"max_accuracy_drop={max_accuracy_drop}; nothing written — retrain after it "
                    "(finetune), make it gentler, or raise the budget"
                )
    errs = [r.max_rel_err for r in report.records if r.max_rel_err is not None]
    if max_output_error is not None and errs and not errs[-1] <= max_output_error:
        for r in report.records:
            err = r.max_rel_err
            if err is not None and not err <= max_output_error:
                raise BudgetError(
                    f"pass {r.spec!r} moved the outputs by {err:.3g} (max relative error), more "
                    f"than max_output_error={max_output_error}; nothing written"
                )


def output_error(reference: Graph, candidate: Graph, feeds: Sequence[Feed]) -> dict[str, float]:
    """Max abs / relative (to the reference output's max magnitude) error over `feeds`."""
    max_abs = max_rel = 0.0
    for feed in feeds:
        a, r = output_errors(interpreter.run(reference, feed), interpreter.run(candidate, feed))
        max_abs, max_rel = max(max_abs, a), max(max_rel, r)
    return {"max_abs": max_abs, "max_rel": max_rel, "samples": float(len(feeds))}


def _atomic_write(path: Path, writer: Callable[[str], Any], suffix: str = "") -> Path:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        writer(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _ratio(before: float | None, after: float | None) -> float:
    if not before or not after:
        return 1.0
    return float(before) / float(after)


def _h(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def _hb(n: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)
