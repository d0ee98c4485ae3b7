"""The `mcopt` command line: optimize, tune, stats, report, passes, run, capi.

Exit codes: 0 ok; 1 a problem with the input or options (one line on stderr: `mcopt: error: ...`);
2 bad command-line usage (argparse); 3 an internal error (one line; `--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcopt.errors import MCoptError, OptionError

EPILOG = """examples:
  mcopt optimize model.onnx --target cpu -o out/
  mcopt optimize model.onnx --passes cleanup --calib data.npz --input-shape input=1,3,224,224 -o out/
  mcopt optimize lenet5.onnx --target none --passes "prune-retrain:sparsity=0.9,finetune" --data train.npz -o out/
  mcopt optimize lenet5.onnx --passes deep-compression --data train.npz -o out/
  mcopt tune model.onnx --target cpu --trials 256 --db tuning/this-host
  mcopt optimize model.onnx --target cpu --db tuning/this-host -o out/
  mcopt stats model.onnx
  mcopt report out/
  mcopt optimize lenet5.onnx --passes auto --data train.npz --max-accuracy-drop 0.01 -o out/
  mcopt run out/ --inputs x.npz --time
  mcopt capi out/ --compile
  mcopt passes
  mcopt passes finetune
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcopt",
        description="mcopt: a model-compression compiler (ONNX in; smaller, faster models and compiled libraries out).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--version", action="version", version=f"mcopt {_version()}")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show what passes log (-v: info, -vv: debug)",
    )
    p.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log level of mcopt's messages (default: warning; -v sets info)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    o = sub.add_parser(
        "optimize", help="compress and compile a model; write model.onnx, model.so and a report"
    )
    o.add_argument("model", help="input ONNX model (never modified)")
    o.add_argument("-o", "--output", required=True, help="output directory (created if missing)")
    o.add_argument(
        "--target",
        default=None,
        help="compile target (default: cpu = this host); 'none' to skip compiling",
    )
    o.add_argument(
        "--passes",
        default=None,
        help="comma-separated pass pipeline, options kept with their pass, e.g. "
        "'cleanup,prune-channels:ratio=0.3,skip=[Conv_0],finetune' (default: cleanup); 'auto' "
        "searches one within --max-accuracy-drop; see `mcopt passes`",
    )
    o.add_argument(
        "--pass",
        dest="pass_",
        action="append",
        default=[],
        metavar="SPEC",
        help="one pass spec (repeatable, appended after --passes), e.g. --pass prune-channels:ratio=0.3",
    )
    o.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a pipeline file (.yaml / .json with target, passes, calib, data, input_shapes, seed, "
        "budgets) or a saved report.json to replay; command-line options win",
    )
    o.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=None,
        help="fail (nothing written) if held-out accuracy falls more than this (0.01 = 1 point; needs --data)",
    )
    o.add_argument(
        "--max-output-error",
        type=float,
        default=None,
        help="fail (nothing written) if the max relative output error exceeds this",
    )
    o.add_argument(
        "--objective",
        default="latency",
        choices=["latency", "size"],
        help="what --passes auto minimizes (default: latency)",
    )
    o.add_argument(
        "--calib",
        default=None,
        help="calibration inputs (.npz with one array per input name, or .npy)",
    )
    o.add_argument(
        "--data",
        default=None,
        metavar="TRAIN.npz",
        help="training data for training passes (finetune, distill, prune-retrain, deep-compression): "
        ".npz with x (N, ...) and optionally y (N,) labels; 10%% is held out for the report's accuracy",
    )
    o.add_argument(
        "--val-data",
        default=None,
        metavar="VAL.npz",
        help="validation data (x, y) instead of holding out part of --data",
    )
    o.add_argument(
        "--seed", type=int, default=None, help="seed for every random choice (default 0)"
    )
    _add_shape_arg(o)
    o.add_argument(
        "--input-value",
        action="append",
        default=[],
        metavar="NAME=VALUE[,...]",
        help="fix an input a deployment never changes (repeatable): it becomes a constant and is no "
        "longer an input, e.g. sr=16000 (Silero VAD's sample rate)",
    )
    o.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="import a model whose weights hold NaN/Inf, a negative BatchNorm variance or a zero "
        "constant divisor (a warning names each tensor) instead of refusing it",
    )
    o.add_argument(
        "--db", default=None, help="tuning database written by `mcopt tune` (no re-tuning)"
    )
    o.add_argument(
        "--repair-db",
        action="store_true",
        help="drop the tuning database's bad lines (rewritten atomically, originals kept as *.bak) "
        "instead of failing",
    )
    o.add_argument(
        "--no-check", action="store_true", help="skip the output-error check against the original"
    )
    o.add_argument("--no-measure", action="store_true", help="skip measuring the compiled latency")
    o.add_argument(
        "--print-ir",
        action="store_true",
        help="print the optimized IR and, when compiled for a CPU, the planned graph the build "
        "lowered (fused ops, NCHW[x]c layouts, chosen kernels)",
    )
    o.add_argument("-q", "--quiet", action="store_true", help="print only errors")

    t = sub.add_parser(
        "tune", help="autotune the model's kernels (MetaSchedule) into a per-device database"
    )
    t.add_argument("model", help="input ONNX model (never modified)")
    t.add_argument("--target", default="cpu", help="target to tune for (default: cpu)")
    t.add_argument("--trials", type=int, default=64, help="measurement trials in all (default: 64)")
    t.add_argument(
        "--db", required=True, help="tuning database directory (one per device; resumable)"
    )
    t.add_argument("--passes", default=None, help="the same pass pipeline you will give `optimize`")
    t.add_argument("--calib", default=None, help="calibration inputs, as for `optimize`")
    t.add_argument("--data", default=None, help="training data, as for `optimize`")
    t.add_argument(
        "--repair",
        action="store_true",
        help="drop the database's bad lines (originals kept as *.bak) instead of failing",
    )
    t.add_argument(
        "--rpc",
        default=None,
        metavar="HOST:PORT",
        help="measure on a device via a TVM RPC tracker (without it, an arm target is measured by "
        "executed instructions under qemu: bash scripts/setup_icount.sh)",
    )
    t.add_argument("--key", default=None, help="device key at the RPC tracker")
    t.add_argument("--seed", type=int, default=0)
    _add_shape_arg(t)

    s = sub.add_parser("stats", help="per-layer table of params, bytes, MACs and activation memory")
    s.add_argument("model", help="ONNX model")
    _add_shape_arg(s)
    s.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="import a model whose weights hold NaN/Inf, a negative BatchNorm variance or a zero "
        "constant divisor (a warning names each tensor) instead of refusing it",
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")

    r = sub.add_parser("report", help="print the report of an `mcopt optimize` output directory")
    r.add_argument("outdir", help="directory written by `mcopt optimize`")

    ps = sub.add_parser("passes", help="list the registered passes, or describe one")
    ps.add_argument(
        "name", nargs="?", help="a pass or pipeline name: its options, defaults and description"
    )

    rn = sub.add_parser(
        "run", help="run a saved `mcopt optimize` output on inputs (like `tvmc run`)"
    )
    rn.add_argument("outdir", help="directory written by `mcopt optimize -o`")
    rn.add_argument(
        "--inputs",
        required=True,
        metavar="X.npz",
        help=".npz with one array per input name (or one array for a one-input model); a batch "
        "larger than the model's runs sample by sample",
    )
    rn.add_argument("--time", action="store_true", help="also time one run (median of repeats)")
    rn.add_argument(
        "-o", "--output", default=None, metavar="OUT.npz", help="write the outputs here"
    )
    c = sub.add_parser(
        "capi",
        help="write the C API (mcopt_runtime.h/.c + an example) into a directory and print the "
        "compile command",
    )
    c.add_argument(
        "outdir",
        help="where to write them (e.g. the `mcopt optimize -o` directory, beside model.so)",
    )
    c.add_argument(
        "--compile",
        action="store_true",
        help="also compile the example program (OUTDIR/mcopt_example)",
    )
    return p


def _version() -> str:
    import mcopt

    return mcopt.__version__


def _add_shape_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="static shape for an input with unknown dims (repeatable), e.g. input=1,3,224,224",
    )


def _shapes(specs: Sequence[str]) -> dict[str, list[int]] | None:
    from mcopt.inputs import parse_input_shape

    return dict(parse_input_shape(s) for s in specs) or None


def _values(specs: Sequence[str]) -> dict[str, Any] | None:
    from mcopt.inputs import parse_input_value

    return dict(parse_input_value(s) for s in specs) or None


def _pipeline(text: str | None) -> list[str] | None:
    from mcopt.pass_manager import split_pipeline

    return None if text is None else split_pipeline(text)


def _console(quiet: bool = False, stderr: bool = False) -> Any:
    """A rich console; when not attached to a terminal, wide enough that tables don't wrap."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 140
    return Console(stderr=stderr, quiet=quiet, width=width)


def cmd_optimize(args: argparse.Namespace) -> int:
    from mcopt.api import optimize
    from mcopt.config import load_config

    console = _console(args.quiet)
    status_console = _console(args.quiet, stderr=True)
    model = Path(args.model)
    if not model.exists():
        raise OptionError(f"model file {args.model!r} does not exist")
    out = Path(args.output)
    if out.resolve() == model.resolve() or (out.exists() and not out.is_dir()):
        raise OptionError(
            f"-o {args.output!r} must be a directory (it is where model.onnx/model.so/report go)"
        )
    cfg = load_config(args.config) if args.config else {}
    passes: Any = _pipeline(args.passes) if args.passes is not None else cfg.get("passes")
    if args.pass_:
        passes = [*(passes or []), *args.pass_] if passes != ["auto"] else passes
    if passes == ["auto"]:
        passes = "auto"
    target_s = args.target if args.target is not None else cfg.get("target", "cpu")
    target = None if target_s is None or str(target_s).lower() in ("none", "") else target_s
    shapes = _shapes(args.input_shape) or cfg.get("input_shapes")

    def pick(name: str, default: Any = None) -> Any:
        v = getattr(args, name)
        return v if v is not None else cfg.get(name, default)

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=status_console,
        transient=True,
        disable=args.quiet,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def on_pass(i: int, total: int, name: str, done: bool) -> None:
            bar.update(task, total=total, completed=i + int(done), description=f"pass {name}")

        result = optimize(
            str(model),
            target=target,
            passes=passes,
            calib=pick("calib"),
            data=pick("data"),
            val_data=pick("val_data"),
            seed=args.seed if args.seed is not None else cfg.get("seed", 0),
            input_shapes=shapes,
            input_values=_values(args.input_value) or cfg.get("input_values"),
            check=not args.no_check,
            db=pick("db"),
            repair_db=args.repair_db,
            measure=not args.no_measure,
            progress=lambda msg: bar.update(task, description=msg),
            on_pass=on_pass,
            max_accuracy_drop=pick("max_accuracy_drop"),
            max_output_error=pick("max_output_error"),
            objective=args.objective or cfg.get("objective", "latency"),
            allow_nonfinite=args.allow_nonfinite,
        )
        bar.update(task, description="writing outputs")
        written = result.save(out)
    if args.print_ir:
        print(f"# optimized IR\n{result.graph}")
        if result.planned_graph is not None:
            print(
                f"\n# planned graph (what the {result.target} build lowered)\n{result.planned_graph}"
            )
    if not args.quiet:
        from rich.markdown import Markdown

        console.print(Markdown(result.to_markdown()))
        for kind, path in written.items():
            status_console.print(f"wrote {kind}: {path}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from mcopt.api import tune

    if args.trials < 1:
        raise OptionError(f"--trials must be >= 1, got {args.trials}")
    passes = _pipeline(args.passes)
    report = tune(
        args.model,
        target=args.target,
        trials=args.trials,
        db=args.db,
        passes=passes,
        calib=args.calib,
        data=args.data,
        input_shapes=_shapes(args.input_shape),
        rpc=args.rpc,
        key=args.key,
        progress=True,
        seed=args.seed,
        repair=args.repair,
    )
    from rich.markdown import Markdown

    _console().print(Markdown(report.to_markdown()))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from mcopt.analysis.cost import analyze
    from mcopt.api import load

    graph = load(args.model, _shapes(args.input_shape), allow_nonfinite=args.allow_nonfinite)
    report = analyze(graph)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _console().print(report.table())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    outdir = Path(args.outdir)
    md = outdir / "report.md"
    if not md.exists():
        raise OptionError(
            f"{str(outdir)!r} has no report.md: is it a directory written by `mcopt optimize -o`?"
        )
    from rich.markdown import Markdown

    _console().print(Markdown(md.read_text()))
    return 0


def cmd_capi(args: argparse.Namespace) -> int:
    import subprocess

    from mcopt.targets.capi import (
        EXAMPLE,
        IO_FILE,
        command_line,
        compile_command,
        write_sources,
    )
    from mcopt.targets.toolchain import HOST_CC, find_compiler

    out = Path(args.outdir)
    if out.exists() and not out.is_dir():
        raise OptionError(f"{str(out)!r} exists and is not a directory")
    paths = write_sources(out)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    exe = out / "mcopt_example"
    cc = find_compiler(HOST_CC) or "cc"
    cmd = compile_command([out / EXAMPLE, out / "mcopt_runtime.c"], exe, compiler=cc)
    print(f"compile (your program in place of {EXAMPLE}):\n  {command_line(cmd)}")
    if args.compile:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
            first = next((ln for ln in lines if "error" in ln), lines[0])
            raise OptionError(f"compiling the C API failed: {first}")
        print(f"built {exe}")
    model = out / "model.so"
    if (out / IO_FILE).exists() and model.exists():
        print(f"run:\n  {command_line([str(exe), str(model)])}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from mcopt.api import load_saved

    saved = load_saved(args.outdir)
    from mcopt.inputs import read_arrays

    arrays = read_arrays(args.inputs, "--inputs")
    if not isinstance(arrays, dict):
        arrays = {"x": arrays}
    names = [n for n, _, _ in saved.input_specs]
    if len(names) == 1 and names[0] not in arrays and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    outs = saved.run(**arrays)
    out_names = [str(n) for n in saved.report.get("output_names", [])] or [
        v.name for v in saved.graph.outputs
    ]
    console = _console()
    engine = "compiled library" if saved.compiled is not None else "reference interpreter"
    console.print(f"ran {saved.path} ({saved.target or 'not compiled'}) with the {engine}")
    for name, y in zip(out_names, outs):
        line = f"  {name}: shape {list(y.shape)} {y.dtype}"
        if y.ndim == 2:
            line += f", top-1 {y.argmax(axis=1)[:10].tolist()}{' ...' if len(y) > 10 else ''}"
        console.print(line)
    if args.output:
        from mcopt.api import _atomic_write

        def write(p: str) -> None:
            with open(p, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, **dict(zip(out_names, outs)))

        _atomic_write(Path(args.output), write)
        console.print(f"wrote {args.output}")
    if args.time:
        first = {n: a[: saved.input_specs[i][1][0]] for i, (n, a) in enumerate(arrays.items())}
        if saved.compiled is not None:
            ms = saved.compiled.benchmark(first, number=20, repeat=5)["median_ms"]
        else:
            t0 = time.perf_counter()
            for _ in range(5):
                saved.run(**first)
            ms = (time.perf_counter() - t0) / 5 * 1e3
        console.print(
            f"latency (batch {saved.input_specs[0][1][0]}, median): {ms:.3f} ms ({engine})"
        )
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from mcopt.pass_manager import describe_passes

    if args.name:
        from mcopt.pass_manager import describe_pass

        _console().print(escape(describe_pass(args.name)))
        return 0

    table = Table(title="mcopt passes")
    for col in ("name", "lossless", "options", "what it does"):
        table.add_column(col)
    for row in describe_passes():
        table.add_row(*[escape(str(c)) for c in row])
    _console().print(table)
    return 0


COMMANDS = {
    "optimize": cmd_optimize,
    "tune": cmd_tune,
    "stats": cmd_stats,
    "report": cmd_report,
    "passes": cmd_passes,
    "run": cmd_run,
    "capi": cmd_capi,
}


def _setup_logging(args: argparse.Namespace) -> None:
    import logging
    import warnings

    # warnings as one line each ("mcopt: warning: ..."), not file:line + source
    warnings.formatwarning = lambda msg, cat, *a, **k: f"mcopt: warning: {msg}\n"  # type: ignore[assignment]

    level = args.log_level or (
        "debug" if args.verbose > 1 else "info" if args.verbose else "warning"
    )
    logger = logging.getLogger("mcopt")
    logger.setLevel(level.upper())
    if not logger.handlers:
        from rich.logging import RichHandler

        logger.addHandler(RichHandler(console=_console(stderr=True), show_path=False))
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args)
    try:
        return COMMANDS[args.command](args)
    except MCoptError as e:
        if args.debug:
            raise
        print(f"mcopt: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mcopt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an internal error: still one line, with a way to see more
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"mcopt: internal error: {type(e).__name__}: {msg} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
