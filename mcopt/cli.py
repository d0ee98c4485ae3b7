"""The `mcopt` command line: optimize, stats, report, passes.

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
  mcopt passes
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcopt",
        description="mcopt: a model-compression compiler (ONNX in; smaller, faster models and compiled libraries out).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    o = sub.add_parser(
        "optimize", help="compress and compile a model; write model.onnx, model.so and a report"
    )
    o.add_argument("model", help="input ONNX model (never modified)")
    o.add_argument("-o", "--output", required=True, help="output directory (created if missing)")
    o.add_argument(
        "--target",
        default="cpu",
        help="compile target (default: cpu = this host); 'none' to skip compiling",
    )
    o.add_argument(
        "--passes",
        default=None,
        help="comma-separated pass pipeline, e.g. 'cleanup' or 'dce,fold-batch-norm' (default: cleanup); see `mcopt passes`",
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
    o.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    _add_shape_arg(o)
    o.add_argument(
        "--db", default=None, help="tuning database written by `mcopt tune` (no re-tuning)"
    )
    o.add_argument(
        "--no-check", action="store_true", help="skip the output-error check against the original"
    )
    o.add_argument("--no-measure", action="store_true", help="skip measuring the compiled latency")
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
    t.add_argument(
        "--rpc", default=None, metavar="HOST:PORT", help="measure on a device via a TVM RPC tracker"
    )
    t.add_argument("--key", default=None, help="device key at the RPC tracker")
    t.add_argument("--seed", type=int, default=0)
    _add_shape_arg(t)

    s = sub.add_parser("stats", help="per-layer table of params, bytes, MACs and activation memory")
    s.add_argument("model", help="ONNX model")
    _add_shape_arg(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")

    r = sub.add_parser("report", help="print the report of an `mcopt optimize` output directory")
    r.add_argument("outdir", help="directory written by `mcopt optimize`")

    sub.add_parser("passes", help="list the registered passes and their options")
    return p


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
    passes = _pipeline(args.passes)
    target = None if args.target.lower() in ("none", "") else args.target
    with status_console.status("starting", spinner="dots") as status:
        result = optimize(
            str(model),
            target=target,
            passes=passes,
            calib=args.calib,
            data=args.data,
            val_data=args.val_data,
            seed=args.seed,
            input_shapes=_shapes(args.input_shape),
            check=not args.no_check,
            db=args.db,
            measure=not args.no_measure,
            progress=lambda msg: status.update(msg + " ..."),
        )
        status.update("writing outputs ...")
        written = result.save(out)
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
        input_shapes=_shapes(args.input_shape),
        rpc=args.rpc,
        key=args.key,
        progress=True,
        seed=args.seed,
    )
    from rich.markdown import Markdown

    _console().print(Markdown(report.to_markdown()))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from mcopt.analysis.cost import analyze
    from mcopt.api import load

    graph = load(args.model, _shapes(args.input_shape))
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


def cmd_passes(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from mcopt.pass_manager import describe_passes

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
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
