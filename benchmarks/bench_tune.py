"""Tuning benchmark: onnxruntime fp32, TVM untuned, mcopt untuned and mcopt tuned for N trials,
side by side; tuning time; per kernel GFLOP/s against the sgemm peak; the database reused in a
fresh process.

Two phases, so that the (long) tuning can run while the machine is busy and the timings are
taken when it is quiet:

- ``tune``: per model and budget N in ``--trials`` (ascending), ``mcopt.tune(graph, trials=N,
  db=DB)`` extends the model's database to N measurements in total (the run for 256 adds 192 to
  the 64 already made) and a snapshot of the database is kept as ``DB_ROOT/MODEL/N``, with the
  cumulative tuning seconds in ``bench_meta.json``.
- ``measure``: per model, in alternating bursts (the engines share the machine's load alike):
  onnxruntime fp32, mcopt untuned (``mcopt.targets.build``: planned kernels with the analytic
  templates) and mcopt built from each snapshot (``build_with_database``: a record is used only
  where it beat the untuned kernel while tuning); TVM 0.27 untuned (``from_onnx`` +
  ``tvm.compile``) separately (it is 10-100x slower). Then a fresh Python process builds the
  model from the largest snapshot alone (no trials) and times it; and per tuning task the
  untuned and tuned kernel time (as measured by MetaSchedule's runner), GFLOP/s and % of the
  machine's sgemm peak (numpy/OpenBLAS 2048^2 on all cores).

    python benchmarks/bench_tune.py tune --models lenet5,resnet18_like --trials 64,200
    python benchmarks/bench_tune.py measure --models lenet5,resnet18_like --trials 64,200
    python benchmarks/bench_tune.py all --models lenet5 --trials 64     # both phases
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import _vm_runner, interleaved, sgemm_peak  # noqa: E402
from common import (  # noqa: E402
    THREADS,
    markdown_table,
    max_rel_err,
    model_set,
    ort_session,
    time_fn,
    write_outputs,
)

DEFAULT_MODELS = "lenet5,resnet18_like,mobilenet_v2"


def _model(name: str) -> Any:
    from mcopt.testing import zoo

    if name == "resnet18_like":
        return zoo.resnet18_like()
    return model_set([name])[name]


def _feeds(graph: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}


def _snapshots(db_root: Path, name: str, budgets: list[int]) -> list[tuple[int, Path]]:
    return [(n, db_root / name / str(n)) for n in budgets if (db_root / name / str(n)).is_dir()]


# --- phase 1: tuning --------------------------------------------------------------------------
def tune_model(name: str, budgets: list[int], db_root: Path, seed: int) -> None:
    from mcopt.api import load
    from mcopt.targets.tune.tuner import tune

    graph = load(_model(name))
    work = db_root / name / "work"
    spent = 0.0
    meta_path = work / "bench_meta.json"
    if meta_path.exists():
        spent = json.loads(meta_path.read_text()).get("tune_s", 0.0)
    for n in sorted(budgets):
        snap = db_root / name / str(n)
        if snap.is_dir():
            print(f"{name}: snapshot for {n} trials exists, skipped", flush=True)
            continue
        report = tune(graph, "cpu", trials=n, db=work, seed=seed, progress=None)
        spent += report.seconds
        meta_path.write_text(json.dumps({"tune_s": spent, "trials": n}))
        tmp = snap.with_name(snap.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(work, tmp)
        os.replace(tmp, snap)
        print(f"{name}: {n} trials, {spent:.0f} s of tuning in all", flush=True)
        print(report.to_markdown(), flush=True)


# --- phase 2: measuring -----------------------------------------------------------------------
def reuse_only(name: str, db: str) -> None:
    """Fresh-process check: build from the database alone, time, print one JSON line."""
    from mcopt.api import load
    from mcopt.targets.tune.apply import build_with_database

    graph = load(_model(name))
    x = _feeds(graph)
    t0 = time.perf_counter()
    model, report = build_with_database(graph, db)
    build_s = time.perf_counter() - t0
    ms = model.benchmark(x, number=10, repeat=7)["median_ms"]
    print("REUSE " + json.dumps({"ms": ms, "build_s": build_s, "applied": len(report.applied)}))


def measure_model(
    name: str, budgets: list[int], db_root: Path, args: argparse.Namespace, peak: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from mcopt.api import load
    from mcopt.targets import build
    from mcopt.targets.tune.apply import build_with_database, task_summary

    proto = _model(name)
    graph = load(proto)
    feeds = _feeds(graph)
    x = next(iter(feeds.values()))
    sess = ort_session(proto)
    ref = sess.run(None, feeds)
    engines = {"ort": lambda: sess.run(None, feeds)}
    untuned = build(graph, "cpu")
    engines["untuned"] = _vm_runner(untuned, x)
    errs = {"untuned": max_rel_err(ref, untuned.run(x))}
    snaps = _snapshots(db_root, name, budgets)
    built = {}
    for n, snap in snaps:
        model, applied = build_with_database(graph, snap)
        engines[f"tuned{n}"] = _vm_runner(model, x)
        errs[f"tuned{n}"] = max_rel_err(ref, model.run(x))
        built[n] = (model, applied)
    stats = interleaved(engines, args.rounds, args.budget, args.max_runs)
    tvm_ms = None
    if not args.skip_tvm:
        from mcopt.targets.relax.baseline import build_tvm_baseline

        base = build_tvm_baseline(proto, {k: v.shape for k, v in feeds.items()})
        tvm_ms = time_fn(lambda: base.run(feeds), budget_s=args.budget * 3, min_runs=3)["median_ms"]
    ort = stats["ort"]["median_ms"]
    common = {
        "model": name,
        "ort_ms": ort,
        "tvm_ms": tvm_ms,
        "tvm_vs_ort": ort / tvm_ms if tvm_ms else None,
    }
    rows = [
        {**common, "config": "untuned", "tune_s": 0.0, "ms": stats["untuned"]["median_ms"],
         "min_ms": stats["untuned"]["min_ms"], "err": errs["untuned"], "kernels_tuned": 0}
    ]  # fmt: skip
    for n, snap in snaps:
        meta = json.loads((snap / "bench_meta.json").read_text())
        s = stats[f"tuned{n}"]
        rows.append(
            {**common, "config": f"{n} trials", "tune_s": meta["tune_s"], "ms": s["median_ms"],
             "min_ms": s["min_ms"], "err": errs[f"tuned{n}"],
             "kernels_tuned": len(built[n][1].applied)}
        )  # fmt: skip
    for r in rows:
        r["vs_ort"] = ort / r["ms"]
        r["vs_untuned"] = rows[0]["ms"] / r["ms"]
    kernels: list[dict[str, Any]] = []
    if snaps:
        n, snap = snaps[-1]
        out = subprocess.run(
            [sys.executable, __file__, "reuse", "--models", name, "--db-root", str(db_root),
             "--trials", str(n)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        reuse = json.loads(out.stdout.split("REUSE ", 1)[1])
        rows[-1]["fresh_ms"] = reuse["ms"]
        for k in task_summary(graph, snap):
            k["model"] = name
            for key in ("untuned", "best"):
                g = k[f"{key}_gflops"]
                k[f"{key}_pct"] = None if g is None else 100 * g / peak
            kernels.append(k)
    return rows, kernels


COLUMNS = [
    ("model", "model", ""),
    ("config", "mcopt build", ""),
    ("ort_ms", "onnxruntime fp32 ms", ".2f"),
    ("tvm_ms", "TVM untuned ms", ".1f"),
    ("ms", "mcopt ms", ".2f"),
    ("vs_ort", "ort/mcopt", ".2f"),
    ("vs_untuned", "speedup vs untuned", ".2f"),
    ("kernels_tuned", "kernels from DB", "d"),
    ("tune_s", "tuning s (cum.)", ".0f"),
    ("fresh_ms", "fresh process ms", ".2f"),
    ("err", "max rel err vs ort", ".1e"),
]
KERNEL_COLUMNS = [
    ("model", "model", ""),
    ("task", "task", ""),
    ("template", "template", ""),
    ("calls", "calls", "d"),
    ("mflop", "MFLOP", ".1f"),
    ("records", "records", "d"),
    ("untuned_ms", "untuned ms", ".4f"),
    ("best_ms", "tuned ms", ".4f"),
    ("untuned_gflops", "untuned GFLOP/s", ".1f"),
    ("best_gflops", "tuned GFLOP/s", ".1f"),
    ("best_pct", "tuned % peak", ".0f"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("phase", choices=["tune", "measure", "all", "reuse"])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--trials", default="64,200", help="comma-separated trial budgets")
    ap.add_argument("--db-root", default="benchmarks/out/tune_db")
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds when measuring")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per burst")
    ap.add_argument("--max-runs", type=int, default=20, help="runs per burst at most")
    ap.add_argument("--skip-tvm", action="store_true", help="do not build TVM's own path")
    args = ap.parse_args(argv)
    db_root = Path(args.db_root)
    budgets = sorted(int(t) for t in args.trials.split(",") if t)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.phase == "reuse":
        reuse_only(models[0], str(db_root / models[0] / str(budgets[-1])))
        return 0
    if args.phase in ("tune", "all"):
        for name in models:
            tune_model(name, budgets, db_root, args.seed)
    if args.phase in ("measure", "all"):
        peak = sgemm_peak()
        rows, kernels = [], []
        for name in models:
            r, k = measure_model(name, budgets, db_root, args, peak)
            rows += r
            kernels += k
            print(markdown_table(r, COLUMNS), flush=True)
        load = os.getloadavg()[0]
        note = (
            f"\nBatch 1, {THREADS} threads for every engine; medians of alternating bursts "
            f"({args.rounds} rounds). numpy sgemm 2048^2 peak {peak:.1f} GFLOP/s; load average "
            f"at the end {load:.1f}.\n"
        )
        table = markdown_table(rows, COLUMNS) + note
        table += "\n### Kernels (largest budget; times from MetaSchedule's runner)\n\n"
        table += markdown_table(kernels, KERNEL_COLUMNS)
        print("\n" + table)
        write_outputs(Path(args.out), "bench_tune", rows + kernels, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
