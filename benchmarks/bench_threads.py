"""Which kernels should run on the thread pool: whole-model latency for several values of the
"small kernel" threshold (:data:`mcopt.targets.cpu.kernels.threads.MIN_PARALLEL_WORK`), side by side
with onnxruntime.

A kernel whose function does fewer block iterations than the threshold keeps its loops serial
(no thread-pool launch). Per model, one build per threshold, then alternating bursts of every
build and onnxruntime (same process, same inputs, numpy in and out for both: what a user calls).

    python benchmarks/bench_threads.py
    python benchmarks/bench_threads.py --models lenet5,mobilenet_v2 --thresholds 0,100000,400000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import interleaved  # noqa: E402
from common import (  # noqa: E402
    THREADS,
    markdown_table,
    max_rel_err,
    model_set,
    ort_session,
    write_outputs,
)

DEFAULT_MODELS = "lenet5,lenet300,mobilenet_v2,squeezenet,resnet18_like"
DEFAULT_THRESHOLDS = "0,50000,100000,200000,400000,1000000"


def _model(name: str) -> Any:
    if name == "resnet18_like":
        from mcopt.testing import zoo

        return zoo.resnet18_like()
    return model_set([name])[name]


def bench_model(name: str, thresholds: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    from mcopt.api import load
    from mcopt.pass_manager import PassContext, PassManager
    from mcopt.targets import build

    proto = _model(name)
    graph, _ = PassManager(["cleanup"]).run(load(proto), PassContext())
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    sess = ort_session(proto)
    ref = sess.run(None, feeds)
    engines = {"ort": lambda: sess.run(None, feeds)}
    errs = {}
    old = os.environ.get("MCOPT_MIN_PARALLEL_WORK")
    try:
        for t in thresholds:
            os.environ["MCOPT_MIN_PARALLEL_WORK"] = str(t)
            cm = build(graph, "cpu")
            errs[t] = max_rel_err(ref, cm.run(feeds))
            engines[f"t{t}"] = lambda cm=cm: cm.run(feeds)
    finally:
        if old is None:
            os.environ.pop("MCOPT_MIN_PARALLEL_WORK", None)
        else:
            os.environ["MCOPT_MIN_PARALLEL_WORK"] = old
    stats = interleaved(engines, args.rounds, args.budget, args.max_runs)
    ort = stats["ort"]["median_ms"]
    rows = [{"model": name, "threshold": "onnxruntime", "ms": ort, "min_ms": stats["ort"]["min_ms"],
             "vs_ort": 1.0}]  # fmt: skip
    for t in thresholds:
        s = stats[f"t{t}"]
        rows.append(
            {"model": name, "threshold": f"{t:,}", "ms": s["median_ms"], "min_ms": s["min_ms"],
             "vs_ort": ort / s["median_ms"], "err": errs[t]}
        )  # fmt: skip
    return rows


COLUMNS = [
    ("model", "model", ""),
    ("threshold", "serial below (block iterations)", ""),
    ("ms", "median ms", ".3f"),
    ("min_ms", "min ms", ".3f"),
    ("vs_ort", "ort/mcopt (median)", ".2f"),
    ("err", "max rel err vs ort", ".1e"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--thresholds", default=DEFAULT_THRESHOLDS)
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per burst")
    ap.add_argument("--max-runs", type=int, default=2000, help="runs per burst at most")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args(argv)
    thresholds = [int(float(t)) for t in args.thresholds.split(",") if t.strip()]
    rows: list[dict[str, Any]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = bench_model(name, thresholds, args)
        print(markdown_table(r, COLUMNS), flush=True)
        rows += r
    note = (
        f"\nBatch 1, {THREADS} threads; medians of {args.rounds} alternating bursts per engine; "
        f"load average at the end {os.getloadavg()[0]:.1f}.\n"
    )
    table = markdown_table(rows, COLUMNS) + note
    print("\n" + table)
    write_outputs(Path(args.out), "threads", rows, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
