"""`mcopt.optimize()`: import, compress (a pass pipeline), check, compile, and report — one call."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcopt import interpreter
from mcopt.analysis.cost import CostReport, analyze
from mcopt.errors import OptionError, UnsupportedOpError
from mcopt.inputs import Feed, load_calibration, random_feeds
from mcopt.ir.core import Graph
from mcopt.ir.verify import verify
from mcopt.pass_manager import PassContext, PassManager, PassReport, output_errors

#: the default pipeline: lossless cleanup (later issues add compression passes to named pipelines)
DEFAULT_PASSES: tuple[str, ...] = ("cleanup",)

ModelLike = str | os.PathLike | bytes | Graph | Any  # Any: onnx.ModelProto (onnx imported lazily)


def load(model: ModelLike, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Anything a user may hand us -> a verified IR graph (a Graph is copied, never mutated)."""
    if isinstance(model, Graph):
        g = model.copy()
    else:
        from mcopt.onnx_io import import_model

        g = import_model(model, input_shapes=dict(input_shapes) if input_shapes else None)
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
            "timings_s": self.timings,
            "passes": self.report.to_dict(),
            "notes": self.notes,
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
            lines.append("")
        for note in self.notes:
            lines.extend([f"Note: {note}", ""])
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
        """Write model.onnx, the printed IR (model.ir.txt), the compiled library (model.so),
        report.json and report.md to `outdir`.

        Each file is written atomically (temp file + rename), so a crash never leaves half a file."""
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
        written["ir"] = _atomic_write(
            out / "model.ir.txt", lambda p: Path(p).write_text(str(self.graph) + "\n")
        )
        if self.compiled is not None:
            written["library"] = _atomic_write(
                out / "model.so", self.compiled.export_library, suffix=".so"
            )
        summary = self.summary()
        written["report_json"] = _atomic_write(
            out / "report.json",
            lambda p: Path(p).write_text(json.dumps(summary, indent=2, default=_json_default)),
        )
        written["report_md"] = _atomic_write(
            out / "report.md", lambda p: Path(p).write_text(self.to_markdown())
        )
        return written


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
    data: Any = None,
    val_data: Any = None,
) -> OptimizeResult:
    """Import `model` (path, ONNX bytes/ModelProto or IR Graph), run `passes` (names, "name:opt=v"
    specs or Pass instances; default: lossless cleanup), check the output error against the original
    on `calib` (or seeded random inputs), and compile for `target` (None: do not compile).

    A dynamic batch dim defaults to 1; `input_shapes={name: shape}` overrides. `db`: a tuning
    database written by :func:`tune` for the same model, passes and target (no re-tuning).

    `data`: training data for the training passes (``finetune``, ``distill``, ``prune-retrain``,
    ...): ``(x, y)`` arrays, ``x`` alone (then distillation from the original), an ``.npz`` with ``x``
    and ``y``, or an iterable of ``(x, y)`` batches (see :mod:`mcopt.train.data`). A validation split
    is held out (or `val_data` used): the report gives the held-out accuracy (or agreement with the
    original) after every lossy pass, and the output error is measured on held-out inputs."""
    say = progress or (lambda msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    say("importing model")
    original = load(model, input_shapes)
    timings["import"] = time.perf_counter() - t0
    graph = original.copy()
    feeds = load_calibration(calib, original)
    source = "calibration data"
    if not feeds:
        feeds = random_feeds(original, n=1, seed=seed)
        source = "seeded random input"
    check_feeds = feeds[: min(len(feeds), 4)]
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
    ctx = PassContext(calib=feeds, seed=seed, data=train_data, teacher=original)
    if target is not None:
        # passes that pick per layer by measured speed (winograd:only_if_faster) measure on the target
        ctx.shared["measure_winograd"] = _measure_winograd
    cost_before = analyze(original)
    pipeline = list(DEFAULT_PASSES if passes is None else passes)
    t0 = time.perf_counter()
    say(f"running {len(pipeline)} pass(es)")
    manager = PassManager(pipeline)
    graph, report = manager.run(graph, ctx=ctx, inputs=check_feeds[0] if check else None)
    timings["passes"] = time.perf_counter() - t0
    cost_after = analyze(graph)
    result = OptimizeResult(
        graph,
        original,
        target,
        report,
        cost_before,
        cost_after,
        check_inputs=check_feeds,
        timings=timings,
    )
    if check:
        t0 = time.perf_counter()
        result.output_error = output_error(original, graph, check_feeds)
        result.output_error["source"] = source  # type: ignore[assignment]
        timings["check"] = time.perf_counter() - t0
    if target is not None:
        from mcopt.targets import build  # TVM is imported only when compiling

        say(f"compiling for {target}")
        t0 = time.perf_counter()
        result.compiled = (
            build(graph, target=target, db=db) if db is not None else build(graph, target=target)
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
            result.output_error["compiled_vs_reference_max_rel"] = err[1]
        elif check:
            result.notes.append(
                f"the {target} module was not run here (no emulator/device): see `mcopt.targets.remote.run_remote`"
            )
        if measure and not getattr(compiled, "host_runnable", True):
            result.notes.append(
                f"no latency measured: {target} code runs under emulation or on the device, where "
                "emulated timings mean nothing; time it on the device with `mcopt.targets.remote.run_remote`"
            )
        elif measure:
            say("measuring latency")
            t0 = time.perf_counter()
            result.latency_ms = result.compiled.benchmark(check_feeds[0])["median_ms"]
            timings["measure"] = time.perf_counter() - t0
    return result


def tune(
    model: ModelLike,
    target: str = "cpu",
    trials: int = 64,
    db: str | os.PathLike = "tuning",
    *,
    passes: Sequence[Any] | None = None,
    calib: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    rpc: str | None = None,
    key: str | None = None,
    progress: Any = None,
    seed: int = 0,
) -> Any:
    """Autotune the kernels of `model` for `target` with MetaSchedule (`trials` in all) and store the
    records in the database directory `db` (one per device; resumable; `rpc="host:port"` + `key`
    measure on a remote device). Run the same `passes` you will give `optimize(..., db=db)`, so the
    tuned kernels are the ones that get built. Returns the tuning report."""
    from mcopt.targets.tune import tune as tune_graph  # TVM is imported only here

    graph = load(model, input_shapes)
    feeds = load_calibration(calib, graph) or random_feeds(graph, n=1, seed=seed)
    pipeline = list(DEFAULT_PASSES if passes is None else passes)
    graph, _ = PassManager(pipeline).run(graph, ctx=PassContext(calib=feeds, seed=seed))
    return tune_graph(graph, target, trials, db, rpc=rpc, key=key, progress=progress, seed=seed)


def _measure_winograd(*args: Any, **kwargs: Any) -> dict[str, float]:
    from mcopt.targets.kernels.winograd import cached_measurement  # TVM: only when compiling

    return cached_measurement(*args, **kwargs)


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
