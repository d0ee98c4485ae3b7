"""Whole-model CPU benchmark: onnxruntime fp32 vs mcopt (plain lowering) vs mcopt (planned kernels).

Per model (batch 1, seeded random weights except the trained LeNet-5), side by side in one
process: onnxruntime fp32 (``THREADS`` intra-op threads, all graph optimizations), mcopt's old
plain-Relax lowering (``build(..., pipeline="mcopt-plain")``) and the default planned build
(fusion + blocked-layout kernels, ``pipeline="mcopt"``). The engines are timed in alternating
bursts (round-robin, ``--rounds`` rounds) so that load from other jobs on a shared machine hits
them alike; the table gives the median and the minimum per engine and the ratio
``onnxruntime / mcopt`` (> 1: mcopt is faster) for both. Outputs are checked against
onnxruntime (relative max error).

Per conv layer of the planned build (``--layers``): the minimum time of each kernel call from
:meth:`CompiledModel.profile`, its GFLOP/s (``2 * MACs / t``, MACs of the logical conv; grouped
convs, run as one block-diagonal dense conv, count the dense MACs the kernel executes) and the fraction of the
machine's sgemm peak (numpy/OpenBLAS 2048^2 matmul on ``THREADS`` threads).

    python benchmarks/bench_cpu.py                                  # all models
    python benchmarks/bench_cpu.py --models resnet50,mobilenet_v2 --rounds 7 --layers
    python benchmarks/bench_cpu.py --skip-plain                     # the plain path is slow
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import THREADS, markdown_table, max_rel_err, ort_session, write_outputs  # noqa: E402

os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))
import numpy as np  # noqa: E402

MODELS = [
    "resnet50",
    "resnet18_like",
    "mobilenet_v2",
    "squeezenet",
    "vgg19",
    "lenet5",
    "shufflenet",
    "inception_v1",
]


def load_model(name: str) -> Any:
    import onnx

    from mcopt.testing import zoo

    if name == "lenet5":
        return onnx.load(zoo.lenet5_path())
    if name == "resnet18_like":
        return zoo.resnet18_like()
    if name == "mobilenet_v2":
        return zoo.mobilenet_v2()
    return zoo.light_model(name, seed=0)


def sgemm_peak() -> float:
    """GFLOP/s of numpy's (OpenBLAS) 2048 x 2048 fp32 matmul, best of 10."""
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    a @ a
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def _burst(fn: Callable[[], Any], budget_s: float, max_runs: int) -> list[float]:
    """Times (ms) of consecutive calls of ``fn`` until ``budget_s`` or ``max_runs`` (at least 1)."""
    out: list[float] = []
    start = time.perf_counter()
    while not out or (len(out) < max_runs and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


#: idle seconds before each burst: a thread pool that just ran (onnxruntime's spins after each
#: run, TVM's briefly too) would otherwise compete for the two cores with the next engine's burst
PAUSE_S = 0.1


def interleaved(
    engines: dict[str, Callable[[], Any]], rounds: int, budget_s: float, max_runs: int
) -> dict[str, dict[str, float]]:
    """Round-robin bursts of every engine (a pause before each); per engine the median and min
    over all runs."""
    for fn in engines.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in engines}
    for r in range(rounds):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for k in order:
            time.sleep(PAUSE_S)
            engines[k]()  # one untimed run after the pause (caches, pool wake-up)
            times[k] += _burst(engines[k], budget_s, max_runs)
    return {
        k: {"median_ms": statistics.median(v), "min_ms": min(v), "runs": len(v)}
        for k, v in times.items()
    }


def _vm_runner(model: Any, x: np.ndarray) -> Callable[[], Any]:
    """What a user calls: ``model.run`` on a numpy input, numpy out (as onnxruntime's
    ``session.run`` is timed: the Python-side costs of both are in the numbers)."""
    return lambda: model.run(x)


def conv_layers(model: Any, x: np.ndarray, peak: float) -> list[dict[str, Any]]:
    """Per conv kernel call of a planned build: shape, kernel, time, GFLOP/s, % of ``peak``.

    For a Winograd call the GFLOP/s are *effective*: ``2 * MACs`` of the direct 3x3 conv it
    replaces over its time (above the peak means fewer multiplies than the direct conv)."""
    rows = []
    for rec in model.profile([x], repeat=5):
        name = rec["name"]
        if not name.startswith(("conv2d_nchwc", "dwconv2d_nchwc", "winograd")):
            continue
        data, kernel, out = rec["shapes"][0], rec["shapes"][1], rec["shapes"][-1]
        n, occ, oh, ow, ob = out
        if name.startswith("winograd"):
            ic = data[1] * data[4]
            macs = n * occ * ob * oh * ow * ic * 9
            desc = f"3x3 {ic}->{occ * ob}@{data[2]}->{oh}"
            kind = f"Winograd F({name[8]}x{name[8]},3x3)"
        elif name.startswith("dw"):
            kh, kw = kernel[1], kernel[2]
            macs = n * occ * ob * oh * ow * kh * kw
            desc = f"dw {kh}x{kw} {occ * ob}@{data[2]}->{oh}"
            kind = "depthwise"
        else:
            _, icc, kh, kw, ib, _ = kernel
            macs = n * occ * ob * oh * ow * icc * ib * kh * kw
            desc = f"{kh}x{kw} {icc * ib}->{occ * ob}@{data[2]}->{oh}"
            kind = "direct"
        gflops = 2 * macs / (rec["ms"] * 1e-3) / 1e9
        rows.append(
            {"layer": desc, "kernel": kind, "ms": rec["ms"], "gflops": gflops,
             "pct_peak": 100 * gflops / peak}
        )  # fmt: skip
    return rows


def bench_model(name: str, args: argparse.Namespace, peak: float) -> tuple[dict[str, Any], Any]:
    from mcopt.onnx_io import import_model
    from mcopt.targets import build

    proto = load_model(name)
    graph = import_model(proto)
    x = np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)
    sess = ort_session(proto)
    in_name = sess.get_inputs()[0].name
    ref = sess.run(None, {in_name: x})
    row: dict[str, Any] = {"model": name}
    engines: dict[str, Callable[[], Any]] = {"ort": lambda: sess.run(None, {in_name: x})}
    t0 = time.perf_counter()
    planned = build(graph, "cpu")
    row["build_s"] = time.perf_counter() - t0
    row["err"] = max_rel_err(ref, planned.run(x))
    engines["mcopt"] = _vm_runner(planned, x)
    if not args.skip_plain:
        plain = build(graph, "cpu", pipeline="mcopt-plain")
        row["err_plain"] = max_rel_err(ref, plain.run(x))
        engines["plain"] = _vm_runner(plain, x)
    stats = interleaved(engines, args.rounds, args.budget, args.max_runs)
    for k, s in stats.items():
        row[f"{k}_med"] = s["median_ms"]
        row[f"{k}_min"] = s["min_ms"]
    row["ratio_med"] = row["ort_med"] / row["mcopt_med"]
    row["ratio_min"] = row["ort_min"] / row["mcopt_min"]
    return row, planned if args.layers else None


COLUMNS = [
    ("model", "model", ""),
    ("ort_med", "onnxruntime median ms", ".2f"),
    ("ort_min", "ort min ms", ".2f"),
    ("plain_med", "mcopt-plain median ms", ".1f"),
    ("mcopt_med", "mcopt median ms", ".2f"),
    ("mcopt_min", "mcopt min ms", ".2f"),
    ("ratio_med", "ort/mcopt (median)", ".2f"),
    ("ratio_min", "ort/mcopt (min)", ".2f"),
    ("err", "max rel err vs ort", ".1e"),
    ("build_s", "build s", ".1f"),
]
LAYER_COLUMNS = [
    ("layer", "conv layer", ""),
    ("kernel", "kernel", ""),
    ("ms", "min ms", ".3f"),
    ("gflops", "GFLOP/s (Winograd: effective)", ".1f"),
    ("pct_peak", "% sgemm peak", ".0f"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=5, help="round-robin rounds per model")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per burst")
    ap.add_argument("--max-runs", type=int, default=20, help="runs per burst at most")
    ap.add_argument("--skip-plain", action="store_true", help="do not build the plain path")
    ap.add_argument("--layers", action="store_true", help="per conv layer GFLOP/s")
    ap.add_argument("--out", default="bench-out", help="output folder")
    args = ap.parse_args(argv)
    peak = sgemm_peak()
    rows, layer_tables = [], []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        row, planned = bench_model(name, args, peak)
        rows.append(row)
        print(markdown_table([row], COLUMNS), flush=True)
        if planned is not None:
            x = np.random.default_rng(0).standard_normal(planned.input_specs[0][1])
            layers = conv_layers(planned, x.astype(np.float32), peak)
            tab = markdown_table(layers, LAYER_COLUMNS)
            layer_tables.append(f"\n### {name}: conv layers (planned build)\n\n{tab}")
            print(tab, flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    note = (
        f"\n{THREADS} threads (onnxruntime intra-op threads, TVM_NUM_THREADS); numpy sgemm "
        f"2048^2 peak {peak:.1f} GFLOP/s; load average at the end {load:.1f}. Engines "
        f"alternate in bursts ({args.rounds} rounds); ratios > 1 mean mcopt is faster.\n"
    )
    table = markdown_table(rows, COLUMNS) + note + "".join(layer_tables)
    print("\n" + table)
    write_outputs(Path(args.out), "bench_cpu", rows, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
