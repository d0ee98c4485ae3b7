"""Core benchmark: per model, onnxruntime fp32 vs TVM without mcopt vs mcopt (cleanup + CPU build).

Batch 1, same process, same thread count for all three, median of many runs; ratios are
onnxruntime latency / other latency (> 1 means faster than onnxruntime).

    python benchmarks/bench_core.py                      # every model of the set
    python benchmarks/bench_core.py --models lenet5,resnet50 --budget 3
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    THREADS,
    markdown_table,
    max_rel_err,
    model_set,
    ort_session,
    random_inputs,
    time_fn,
    write_outputs,
)

COLUMNS = [
    ("model", "model", ""),
    ("params_m", "params (M)", ".2f"),
    ("mmacs", "MMACs", ".1f"),
    ("onnx_mb", "ONNX MB", ".2f"),
    ("mcopt_mb", "mcopt ONNX MB", ".2f"),
    ("ort_ms", "onnxruntime ms", ".2f"),
    ("tvm_ms", "TVM (no mcopt) ms", ".1f"),
    ("mcopt_ms", "mcopt ms", ".1f"),
    ("tvm_vs_ort", "TVM speed vs ORT", ".3f"),
    ("mcopt_vs_ort", "mcopt speed vs ORT", ".3f"),
    ("mcopt_vs_tvm", "mcopt speed vs TVM", ".2f"),
    ("ref_err", "interp. max rel err vs ORT", ".1e"),
    ("mcopt_err", "mcopt max rel err vs ORT", ".1e"),
    ("tvm_compile_s", "TVM compile s", ".1f"),
    ("mcopt_compile_s", "mcopt compile s", ".1f"),
]


def bench_model(name: str, proto, budget: float, skip_tvm: bool) -> dict:  # type: ignore[no-untyped-def]
    import mcopt
    from mcopt import interpreter
    from mcopt.analysis.cost import analyze
    from mcopt.onnx_io import export_model, import_model

    row: dict = {"model": name, "onnx_mb": len(proto.SerializeToString()) / 2**20}
    feeds = random_inputs(proto)
    sess = ort_session(proto)
    ref = sess.run(None, feeds)
    row["ort_ms"] = time_fn(lambda: sess.run(None, feeds), budget_s=budget, min_runs=10)[
        "median_ms"
    ]

    graph = import_model(proto)
    totals = analyze(graph).totals()
    row["params_m"], row["mmacs"] = totals["params"] / 1e6, totals["macs"] / 1e6
    row["ref_err"] = max_rel_err(ref, interpreter.run(graph, feeds))

    if not skip_tvm:
        from mcopt.targets.relax.baseline import build_tvm_baseline

        t0 = time.perf_counter()
        base = build_tvm_baseline(proto, {k: v.shape for k, v in feeds.items()})
        row["tvm_compile_s"] = time.perf_counter() - t0
        row["tvm_ms"] = time_fn(lambda: base.run(feeds), budget_s=budget, min_runs=3, max_runs=30)[
            "median_ms"
        ]
        del base
        gc.collect()

    t0 = time.perf_counter()
    res = mcopt.optimize(proto, target="cpu", measure=False)
    row["mcopt_compile_s"] = time.perf_counter() - t0
    row["mcopt_mb"] = len(export_model(res.graph).SerializeToString()) / 2**20
    out = res.run(feeds)
    row["mcopt_err"] = max_rel_err(ref, out)
    row["mcopt_ms"] = time_fn(lambda: res.run(feeds), budget_s=budget, min_runs=3, max_runs=30)[
        "median_ms"
    ]
    for key, base_key in (("tvm_vs_ort", "tvm_ms"), ("mcopt_vs_ort", "mcopt_ms")):
        if row.get(base_key):
            row[key] = row["ort_ms"] / row[base_key]
    if row.get("tvm_ms") and row.get("mcopt_ms"):
        row["mcopt_vs_tvm"] = row["tvm_ms"] / row["mcopt_ms"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default=None, help="comma-separated subset (default: all)")
    ap.add_argument(
        "--budget", type=float, default=5.0, help="seconds of timed runs per engine and model"
    )
    ap.add_argument(
        "--skip-tvm-baseline", action="store_true", help="skip TVM's own importer (slow untuned)"
    )
    ap.add_argument("--out", default="bench-out", help="directory for core.json / core.md")
    args = ap.parse_args()
    np.random.seed(0)
    models = model_set(args.models.split(",") if args.models else None)
    rows = []
    for name, proto in models.items():
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        try:
            rows.append(bench_model(name, proto, args.budget, args.skip_tvm_baseline))
        except Exception as e:  # keep going: one failing model must not hide the others
            traceback.print_exc()
            rows.append({"model": f"{name} (FAILED: {type(e).__name__}: {str(e)[:80]})"})
        print(markdown_table(rows[-1:], COLUMNS), file=sys.stderr, flush=True)
    table = markdown_table(rows, COLUMNS)
    header = f"Batch 1, {THREADS} threads for every engine, median wall time; speed ratio = onnxruntime ms / engine ms.\n\n"
    print(header + table)
    write_outputs(Path(args.out), "core", rows, header + table)


if __name__ == "__main__":
    main()
