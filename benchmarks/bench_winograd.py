"""Winograd F(2x2,3x3) / F(4x4,3x3) vs the direct conv template on the 3x3 layers of ResNet-50 and VGG.

For every layer (batch 1, C_in = C_out, stride 1, pad 1): mcopt's direct blocked-NCHWc template
(:func:`mcopt.targets.kernels.conv2d_nchwc`, kernel only: activations already blocked), mcopt's
blocked Winograd kernel (:mod:`mcopt.targets.kernels.winograd_nchwc`, what the CPU build picks
per layer: same layouts, transforms included; columns "NCHWc F2/F4") and the NCHW Winograd kernel
of the ``winograd`` graph pass (:func:`mcopt.targets.kernels.winograd.winograd_conv2d`, NCHW in
and out; columns "NCHW F2/F4"), all with a fused bias, compiled once each and timed in
alternating rounds (the machine is shared): min and median ms, the speedup of each over direct
(theory: 2.25x / 4x fewer multiplies) and the output error against float64 direct convolution.
The NCHW rows are also written into the JSON table the ``winograd`` pass reads with
``only_if_faster=True`` (``--table``).

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

    from mcopt.ops.winograd import winograd_weight
    from mcopt.targets.kernels import Epilogue, choose_conv_params, conv2d_nchwc, layout
    from mcopt.targets.kernels.sparse import run_conv_numpy
    from mcopt.targets.kernels.winograd import pack_winograd_weight, winograd_conv2d

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
    from mcopt.targets.kernels import winograd_nchwc as wn

    for m in (2, 4):  # the blocked kernel the CPU build uses
        f, bplan = wn.winograd_conv2d_nchwc(xs, c, m, (1, 1, 1, 1), Epilogue(bias=True))
        lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
        out = t(np.zeros((1, c // 8, hw, hw, 8), np.float32))
        args = [
            t(layout.pack_nchwc(x, 8)),
            t(wn.pack_weight(w, m, bplan.rv, 8)),
            t(b.reshape(c // 8, 8)),
            out,
        ]
        libs[f"b{m}"] = (lib, args)
        if ref is not None:
            lib["main"](*args)
            got = layout.unpack_nchwc(out.numpy())
            errs[f"b{m}"] = float(np.abs(got - ref).max() / np.abs(ref).max())
    for m in (2, 4):
        f, plan = winograd_conv2d(xs, c, m, (1, 1, 1, 1), Epilogue(bias=True), target)
        lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
        out = t(np.zeros(xs, np.float32))
        args = [t(x), t(pack_winograd_weight(winograd_weight(w, m), plan.ro)), t(b), out]
        libs[f"f{m}"] = (lib, args)
        if ref is not None:
            lib["main"](*args)
            errs[f"f{m}"] = float(np.abs(out.numpy() - ref).max() / np.abs(ref).max())
    return libs, errs


def _time_round(lib: Any, args: list[Any]) -> float:
    import tvm

    ev = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=1, min_repeat_ms=20)
    return float(ev(*args).results[0]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", choices=["resnet", "vgg", "all"], default="all")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds of timing per layer")
    ap.add_argument("--table", default=str(Path.home() / ".cache/mcopt/winograd_table.json"))
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    from mcopt.targets.kernels.target_info import host_target
    from mcopt.targets.kernels.winograd import layer_key, target_key

    target = host_target()
    tname = target_key(target)
    layers = {"resnet": RESNET, "vgg": VGG, "all": RESNET + VGG}[args.layers]
    rows: list[dict[str, Any]] = []
    table_path = Path(args.table)
    table = json.loads(table_path.read_text()) if table_path.exists() else {}
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
        for k in ("f2", "f4", "b2", "b4"):
            row[f"{k}_speedup"] = row["direct_min"] / row[f"{k}_min"]
        best = min(("direct", "b2", "b4"), key=lambda k: row[f"{k}_min"])
        row["pick"] = best
        row["compile_s"] = compile_s
        rows.append(row)
        key = layer_key(tname, (1, c, hw, hw), c, (1, 1, 1, 1))
        table[key] = {k: row[f"{k}_min"] for k in ("direct", "f2", "f4")}
        print(
            f"{model:9s} {row['layer']:16s} direct {row['direct_min']:8.3f} "
            f"NCHWc F2 {row['b2_min']:8.3f} ({row['b2_speedup']:.2f}x) "
            f"F4 {row['b4_min']:8.3f} ({row['b4_speedup']:.2f}x) | "
            f"NCHW F2 {row['f2_min']:8.3f} ({row['f2_speedup']:.2f}x) "
            f"F4 {row['f4_min']:8.3f} ({row['f4_speedup']:.2f}x) -> {best}",
            flush=True,
        )
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(json.dumps(table, indent=1, sort_keys=True))
    cols = [
        ("model", "model", ""),
        ("layer", "3x3 layer", ""),
        ("direct_min", "direct ms (min)", ".3f"),
        ("direct_med", "direct ms (med)", ".3f"),
        ("b2_min", "NCHWc F(2,3) ms", ".3f"),
        ("b2_speedup", "NCHWc F(2,3) speedup", ".2f"),
        ("b4_min", "NCHWc F(4,3) ms", ".3f"),
        ("b4_speedup", "NCHWc F(4,3) speedup", ".2f"),
        ("b4_err", "NCHWc F(4,3) rel err", ".1e"),
        ("f2_min", "NCHW F(2,3) ms", ".3f"),
        ("f2_speedup", "NCHW F(2,3) speedup", ".2f"),
        ("f4_min", "NCHW F(4,3) ms", ".3f"),
        ("f4_speedup", "NCHW F(4,3) speedup", ".2f"),
        ("pick", "fastest (direct / NCHWc)", ""),
    ]
    md = markdown_table(rows, cols)
    print(md)
    write_outputs(Path(args.out), "winograd", rows, md)


if __name__ == "__main__":
    main()
