"""Winograd F(2x2,3x3) / F(4x4,3x3) vs the direct conv template on the 3x3 layers of ResNet-50 and VGG.

For every layer (batch 1, C_in = C_out, stride 1, pad 1): mcopt's direct blocked-NCHWc template
(:func:`mcopt.targets.cpu.kernels.conv2d_nchwc`, kernel only: activations already blocked), mcopt's
blocked Winograd kernel (:mod:`mcopt.targets.cpu.kernels.winograd_nchwc`: mcopt's one Winograd kernel,
what the CPU build picks per layer and what a ``winograd_conv2d`` from the ``winograd`` pass runs
on; same layouts, transforms included), all with a fused bias, compiled once each and timed in
alternating rounds (the machine is shared): min and median ms, the speedup of each over direct
(theory: 2.25x / 4x fewer multiplies) and the output error against float64 direct convolution.
The rows are also written into the per-machine JSON table that both the CPU build and the
``winograd`` pass (``only_if_faster=True``) read (``--table``, default the build's table).

    python benchmarks/bench_winograd.py [--layers resnet|vgg|all] [--budget 6] [--table PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_outputs  # noqa: E402

RESNET = [("resnet50", 64, 56), ("resnet50", 128, 28), ("resnet50", 256, 14), ("resnet50", 512, 7)]
VGG = [("vgg", 64, 224), ("vgg", 128, 112), ("vgg", 256, 56), ("vgg", 512, 28), ("vgg", 512, 14)]


def _compile_layer(c: int, hw: int, target: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """name -> (lib, args) for direct / f2 / f4, and the max relative errors of each."""
    import tvm

    from mcopt.targets.cpu.kernels import Epilogue, choose_conv_params, conv2d_nchwc, layout
    from mcopt.targets.cpu.kernels.sparse import run_conv_numpy

    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    xs, ws = (1, c, hw, hw), (c, c, 3, 3)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(9 * c)).astype(np.float32)
    b = np.zeros(c, np.float32)
    ref = run_conv_numpy(x, w, (1, 1, 1, 1), b) if hw * hw * c * c <= 128 * 128 * 56 * 56 else None

    def t(a: np.ndarray) -> Any:
        return tvm.runtime.tensor(np.ascontiguousarray(a), dev)

    p = choose_conv_params(xs, ws, 1, 1, 1, target)
    f = conv2d_nchwc(xs, ws, 1, 1, 1, target, p, Epilogue(bias=True))
    lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
    out = t(np.zeros((1, c // p.oc_bn, hw, hw, p.oc_bn), np.float32))
    args = [
        t(layout.pack_nchwc(x, p.ic_bn)),
        t(layout.pack_conv_weight(w, p.ic_bn, p.oc_kbn)),
        t(layout.pack_bias(b, p.oc_bn)),
        out,
    ]
    libs = {"direct": (lib, args)}
    errs: dict[str, float] = {}
    if ref is not None:
        lib["main"](*args)
        got = layout.unpack_nchwc(out.numpy())
        errs["direct"] = float(np.abs(got - ref).max() / np.abs(ref).max())
    from mcopt.targets.cpu.kernels import winograd_nchwc as wn

    for m in (2, 4):  # the blocked kernel the CPU build uses
        bn = p.ic_bn
        f, bplan = wn.winograd_conv2d_nchwc(xs, c, m, (1, 1, 1, 1), Epilogue(bias=True), bn)
        lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
        out = t(np.zeros((1, c // bn, hw, hw, bn), np.float32))
        args = [
            t(layout.pack_nchwc(x, bn)),
            t(wn.pack_weight(w, m, bplan.rv, bn)),
            t(b.reshape(c // bn, bn)),
            out,
        ]
        libs[f"f{m}"] = (lib, args)
        if ref is not None:
            lib["main"](*args)
            got = layout.unpack_nchwc(out.numpy())
            errs[f"f{m}"] = float(np.abs(got - ref).max() / np.abs(ref).max())
    return libs, errs


def _time_round(lib: Any, args: list[Any]) -> float:
    import tvm

    ev = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=1, min_repeat_ms=20)
    return float(ev(*args).results[0]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", choices=["resnet", "vgg", "all"], default="all")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds of timing per layer")
    ap.add_argument("--table", default=None, help="measurement table (default: the build's)")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    from mcopt.targets.cpu.kernels.target_info import host_target
    from mcopt.targets.cpu.kernels.winograd_nchwc import measurement_key, table_path

    target = host_target()
    layers = {"resnet": RESNET, "vgg": VGG, "all": RESNET + VGG}[args.layers]
    rows: list[dict[str, Any]] = []
    tpath = Path(args.table) if args.table else table_path()
    table = json.loads(tpath.read_text()) if tpath.exists() else {}
    for model, c, hw in layers:
        t0 = time.perf_counter()
        libs, errs = _compile_layer(c, hw, target)
        compile_s = time.perf_counter() - t0
        times: dict[str, list[float]] = {k: [] for k in libs}
        start = time.perf_counter()
        while len(times["direct"]) < 3 or (
            time.perf_counter() - start < args.budget and len(times["direct"]) < 30
        ):
            for k, (lib, a) in libs.items():  # alternate the contenders every round
                times[k].append(_time_round(lib, a))
        row: dict[str, Any] = {"model": model, "layer": f"{c}->{c} @{hw}x{hw}"}
        for k, ts in times.items():
            row[f"{k}_min"], row[f"{k}_med"] = min(ts), float(np.median(ts))
            row[f"{k}_err"] = errs.get(k)
        for k in ("f2", "f4"):
            row[f"{k}_speedup"] = row["direct_min"] / row[f"{k}_min"]
        best = min(("direct", "f2", "f4"), key=lambda k: row[f"{k}_min"])
        row["pick"] = best
        row["compile_s"] = compile_s
        rows.append(row)
        key = measurement_key((1, c, hw, hw), c, (1, 1, 1, 1), target)[0]
        table[key] = {k: row[f"{k}_min"] for k in ("direct", "f2", "f4")}
        print(
            f"{model:9s} {row['layer']:16s} direct {row['direct_min']:8.3f} "
            f"F2 {row['f2_min']:8.3f} ({row['f2_speedup']:.2f}x) "
            f"F4 {row['f4_min']:8.3f} ({row['f4_speedup']:.2f}x) -> {best}",
            flush=True,
        )
    tpath.parent.mkdir(parents=True, exist_ok=True)
    tpath.write_text(json.dumps(table, indent=1, sort_keys=True))
    cols = [
        ("model", "model", ""),
        ("layer", "3x3 layer", ""),
        ("direct_min", "direct ms (min)", ".3f"),
        ("direct_med", "direct ms (med)", ".3f"),
        ("f2_min", "F(2,3) ms", ".3f"),
        ("f2_speedup", "F(2,3) speedup", ".2f"),
        ("f4_min", "F(4,3) ms", ".3f"),
        ("f4_speedup", "F(4,3) speedup", ".2f"),
        ("f4_err", "F(4,3) rel err", ".1e"),
        ("pick", "fastest", ""),
    ]
    md = markdown_table(rows, cols)
    print(md)
    write_outputs(Path(args.out), "winograd", rows, md)


if __name__ == "__main__":
    main()
