"""Tuning benchmark: untuned vs MetaSchedule-tuned latency per model and trial budget, tuned mcopt
vs onnxruntime fp32, tuning time, and reuse of the database in a fresh process.

Per model (default resnet18_like, mobilenet_v2, lenet5; batch 1, all cores):

- ``ort fp32``: onnxruntime ``session.run`` (median of repeated calls);
- ``untuned``: ``mcopt.targets.build`` (fusion + default schedules / templates, no tuning);
- for each budget N in ``--trials`` (ascending; the database of the model is reused, so the run
  for 256 adds 192 trials to the 64 already measured): ``tune(graph, trials=N, db=...)`` time and
  the latency of the model built with the database (:func:`build_with_database`);
- ``fresh process``: a new Python process builds the model from the database alone (no trials)
  and times it: it must give the tuned latency.

Latencies are medians of ``time_evaluator`` runs; the machine is shared, so take several runs.

    python benchmarks/bench_tune.py --models lenet5 --trials 64
    python benchmarks/bench_tune.py --models resnet18_like,mobilenet_v2,lenet5 --trials 64,256,1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, model_set, ort_session, random_inputs, time_fn  # noqa: E402

DEFAULT_MODELS = "resnet18_like,mobilenet_v2,lenet5"


def _model(name: str) -> Any:
    from mcopt import zoo

    if name == "resnet18_like":
        return zoo.resnet18_like()
    return model_set([name])[name]


def _latency(model: Any, feeds: dict[str, Any]) -> float:
    return model.benchmark(feeds, number=10, repeat=5)["median_ms"]


def reuse_only(name: str, db: str) -> None:
    """Fresh-process check: build from the database alone, time, print one JSON line."""
    from mcopt.api import load
    from mcopt.targets.tune import build_with_database

    proto = _model(name)
    graph = load(proto)
    feeds = random_inputs(proto)
    t0 = time.perf_counter()
    model, report = build_with_database(graph, db)
    build_s = time.perf_counter() - t0
    print(
        "REUSE "
        + json.dumps(
            {
                "ms": _latency(model, feeds),
                "build_s": build_s,
                "applied": len(report.applied),
                "missing": len(report.missing),
            }
        )
    )


def bench_model(name: str, budgets: list[int], db_root: Path, seed: int) -> list[dict[str, Any]]:
    from mcopt.api import load
    from mcopt.targets import build
    from mcopt.targets.tune import build_with_database, tune

    proto = _model(name)
    graph = load(proto)
    feeds = random_inputs(proto)
    sess = ort_session(proto)
    ort_ms = time_fn(lambda: sess.run(None, feeds), budget_s=3.0)["median_ms"]
    untuned = _latency(build(graph), feeds)
    print(f"{name}: ort {ort_ms:.3f} ms, untuned {untuned:.3f} ms", flush=True)
    db = db_root / name
    rows = []
    tune_s = 0.0
    for n in sorted(budgets):
        report = tune(graph, "cpu", trials=n, db=db, seed=seed, progress=None)
        tune_s += report.seconds
        model, applied = build_with_database(graph, db)
        ms = _latency(model, feeds)
        row = {
            "model": name,
            "trials": n,
            "tasks": len(report.tasks),
            "ort_ms": ort_ms,
            "untuned_ms": untuned,
            "tuned_ms": ms,
            "speedup": untuned / ms,
            "vs_ort": ort_ms / ms,
            "tune_s": tune_s,
            "tuned_tasks": len(applied.applied),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = subprocess.run(
        [sys.executable, __file__, "--reuse-only", name, "--db-root", str(db_root)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    reuse = json.loads(out.stdout.split("REUSE ", 1)[1])
    rows[-1]["fresh_ms"] = reuse["ms"]
    rows[-1]["fresh_build_s"] = reuse["build_s"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--trials", default="64,256,1000", help="comma-separated budgets")
    ap.add_argument("--db-root", default="benchmarks/out/tune_db")
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse-only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    db_root = Path(args.db_root)
    if args.reuse_only:
        reuse_only(args.reuse_only, str(db_root / args.reuse_only))
        return
    budgets = [int(t) for t in args.trials.split(",") if t]
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        rows += bench_model(name, budgets, db_root, args.seed)
    table = markdown_table(
        rows,
        [
            ("model", "model", ""),
            ("trials", "trials", "d"),
            ("tasks", "tasks", "d"),
            ("ort_ms", "ort fp32 ms", ".3f"),
            ("untuned_ms", "untuned ms", ".3f"),
            ("tuned_ms", "tuned ms", ".3f"),
            ("speedup", "tuned/untuned", ".2f"),
            ("vs_ort", "ort/tuned", ".2f"),
            ("tune_s", "tuning s (cum.)", ".0f"),
            ("fresh_ms", "fresh process ms", ".3f"),
        ],
    )
    print(table)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "bench_tune.json").write_text(json.dumps(rows, indent=2))
    (outdir / "bench_tune.md").write_text(table)


if __name__ == "__main__":
    main()
