"""Pruning that is really faster: measured latency of channel pruning and of sparse kernels.

Three tables (machine shared: contenders timed in alternating rounds, min and median ms):

1. ``--models``: ResNet-50 (``zoo.light_model("resnet50")``, seeded random weights) and MobileNet-V2
   (``zoo.mobilenet_v2()``) compiled by mcopt (``mcopt.targets.build(graph, "cpu")``) unpruned and
   after ``prune-channels`` at 30% and 50%, next to the MACs and params reduction; onnxruntime on the
   same graphs exported to ONNX.
2. ``--crossover``: the sparse kernels (CSR, and 8x1 BSR on block-pruned weights) vs mcopt's dense
   templates at 50-98% sparsity: dense 4096x4096 and 1024x1024 at batch 1 and a 3x3 conv 256->256
   @14x14 — the crossover sparsity on this CPU (what :data:`mcopt.targets.cpu.kernels.sparse.CROSSOVER`
   encodes).
3. ``--resnet-layers``: the same at 80/90/95% on ResNet-50's FC (2048->1000) and convs.
4. ``--default-build``: whole models through the default ``cpu`` build (``mcopt.optimize``):
   AlexNet (``zoo.light_model("bvlc_alexnet")``, 58.6 M of its 61 M weights in 3 FC layers) and the
   trained LeNet-300-100, unpruned vs fully-connected weights pruned 95 % (``prune-weights`` on
   dense layers, CSR): the pruned dense layers run on the sparse kernel in the same build
   (``compiled.choices``), onnxruntime on the original beside them.

    python benchmarks/bench_prune.py [--models] [--crossover] [--resnet-layers] [--default-build] [--budget 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, ort_session, write_outputs  # noqa: E402


def _alternate(timers: dict[str, Any], budget_s: float, min_rounds: int = 3) -> dict[str, tuple]:
    """Run the timers round-robin; name -> (min ms, median ms)."""
    res: dict[str, list[float]] = {k: [] for k in timers}
    start = time.perf_counter()
    first = next(iter(res))
    while len(res[first]) < min_rounds or (
        time.perf_counter() - start < budget_s and len(res[first]) < 50
    ):
        for k, fn in timers.items():
            res[k].append(fn())
    return {k: (min(v), float(np.median(v))) for k, v in res.items()}


def _kernel_timer(lib: Any, args: list[Any]) -> Any:
    import tvm

    ev = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=1, min_repeat_ms=10)
    return lambda: float(ev(*args).results[0]) * 1e3


# --- 1. channel pruning on whole models ----------------------------------------------------------
def bench_models(budget: float) -> list[dict[str, Any]]:
    from mcopt.analysis.cost import graph_stats
    from mcopt.onnx_io import export_model, import_model
    from mcopt.pass_manager import PassContext, get_pass
    from mcopt.targets import build
    from mcopt.testing import zoo

    rows = []
    for name, proto in [
        ("resnet50", zoo.light_model("resnet50", seed=0)),
        ("mobilenet_v2", zoo.mobilenet_v2()),
    ]:
        base = import_model(proto)
        x = np.random.default_rng(0).standard_normal(base.inputs[0].shape).astype(np.float32)
        variants = {}
        for ratio in (0.0, 0.3, 0.5):
            g = base.copy()
            if ratio:
                get_pass("prune-channels", ratio=ratio).run(g, PassContext())
            t0 = time.perf_counter()
            cm = build(g, "cpu")
            build_s = time.perf_counter() - t0
            sess = ort_session(export_model(g))
            feed = {sess.get_inputs()[0].name: x}
            tv = cm.benchmark([x], number=1, repeat=1)  # warm-up
            del tv
            variants[ratio] = (g, cm, sess, feed, build_s)
        timers = {}
        for ratio, (_g, cm, sess, feed, _) in variants.items():
            timers[f"mcopt{ratio}"] = lambda cm=cm, x=x: cm.benchmark([x], number=1, repeat=1)[
                "min_ms"
            ]

            def ort_once(sess=sess, feed=feed) -> float:
                t = time.perf_counter()
                sess.run(None, feed)
                return (time.perf_counter() - t) * 1e3

            timers[f"ort{ratio}"] = ort_once
        res = _alternate(timers, budget)
        s0 = graph_stats(variants[0.0][0])
        for ratio, (g, *_rest) in variants.items():
            s = graph_stats(g)
            rows.append(
                {
                    "model": name,
                    "pruned": f"{int(ratio * 100)}%",
                    "params_M": s.params / 1e6,
                    "macs_G": s.macs / 1e9,
                    "macs_x": s0.macs / s.macs,
                    "mcopt_min": res[f"mcopt{ratio}"][0],
                    "mcopt_med": res[f"mcopt{ratio}"][1],
                    "mcopt_x": res["mcopt0.0"][0] / res[f"mcopt{ratio}"][0],
                    "ort_min": res[f"ort{ratio}"][0],
                    "ort_med": res[f"ort{ratio}"][1],
                    "ort_x": res["ort0.0"][0] / res[f"ort{ratio}"][0],
                    "build_s": _rest[-1],
                }
            )
            print(rows[-1], flush=True)
    return rows


# --- 2./3. sparse vs dense kernels ------------------------------------------------------------------
def _prune(w: np.ndarray, s: float, block_rows: int = 1) -> np.ndarray:
    """Magnitude pruning to sparsity ``s``; ``block_rows > 1``: whole (block_rows x 1) blocks by L1."""
    if block_rows == 1:
        t = np.quantile(np.abs(w), s)
        return np.where(np.abs(w) > t, w, 0).astype(np.float32)
    o = w.shape[0]
    wb = w.reshape(o // block_rows, block_rows, -1)
    nrm = np.abs(wb).sum(1)
    keep = nrm > np.quantile(nrm, s)
    return (wb * keep[:, None, :]).reshape(w.shape).astype(np.float32)


def _dense_libs(m: int, n: int, k: int, w: np.ndarray, x: np.ndarray, target: Any):
    import tvm

    from mcopt.targets.cpu.kernels import Epilogue, choose_dense_params, dense_packed, layout

    dev = tvm.cpu()
    bn, reg_m = choose_dense_params(m, n, k, target)
    f = dense_packed(m, n, k, target, Epilogue(bias=True), bn=bn, reg_m=reg_m)
    lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
    npad = -(-n // bn) * bn
    wp = np.zeros((npad, k), np.float32)
    wp[:n] = w
    args = [
        tvm.runtime.tensor(a, dev)
        for a in (x, layout.pack_dense_weight(wp, bn), np.zeros(n, np.float32))
    ]
    args.append(tvm.runtime.tensor(np.zeros((m, n), np.float32), dev))
    return lib, args


def _sparse_dense_lib(m: int, n: int, k: int, w: np.ndarray, x: np.ndarray, block, target: Any):
    import tvm

    from mcopt.targets.cpu.kernels import Epilogue
    from mcopt.targets.cpu.kernels.sparse import sparse_dense, to_bsr

    dev = tvm.cpu()
    bsr = to_bsr(w, block)
    f = sparse_dense(m, n, k, bsr.nnzb, block, Epilogue(bias=True))
    lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
    arrs = (x, bsr.data, bsr.indices, bsr.indptr, np.zeros(n, np.float32))
    args = [tvm.runtime.tensor(a, dev) for a in arrs]
    args.append(tvm.runtime.tensor(np.zeros((m, n), np.float32), dev))
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    lib["main"](*args)
    err = float(np.abs(args[-1].numpy() - ref).max() / max(np.abs(ref).max(), 1e-30))
    return lib, args, err


def _conv_libs(c: int, o: int, hw: int, k: int, w: np.ndarray, x: np.ndarray, target: Any):
    import tvm

    from mcopt.targets.cpu.kernels import Epilogue, choose_conv_params, conv2d_nchwc, layout

    dev = tvm.cpu()
    pad = k // 2
    xs, ws = (1, c, hw, hw), (o, c, k, k)
    p = choose_conv_params(xs, ws, 1, pad, 1, target)
    f = conv2d_nchwc(xs, ws, 1, pad, 1, target, p, Epilogue(bias=True))
    lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
    arrs = (
        layout.pack_nchwc(x, p.ic_bn),
        layout.pack_conv_weight(w, p.ic_bn, p.oc_kbn),
        layout.pack_bias(np.zeros(o, np.float32), p.oc_bn),
        np.zeros((1, o // p.oc_bn, hw, hw, p.oc_bn), np.float32),
    )
    return lib, [tvm.runtime.tensor(a, dev) for a in arrs]


def _sparse_conv_lib(w: np.ndarray, x: np.ndarray, r: int, target: Any):
    import tvm

    from mcopt.targets.cpu.kernels import Epilogue
    from mcopt.targets.cpu.kernels.sparse import (
        conv_csr_arrays,
        run_conv_numpy,
        sparse_conv2d,
        sparse_conv_plan,
    )

    dev = tvm.cpu()
    o, c, k, _ = w.shape
    pads = (k // 2,) * 4
    plan = sparse_conv_plan(x.shape, (k, k), pads, r, 8)
    data, chan, off, indptr = conv_csr_arrays(w, plan.wp, (r, 1))
    f, plan = sparse_conv2d(x.shape, w.shape, pads, data.shape[0], r, Epilogue(bias=True))
    lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
    arrs = (x, data, chan, off, indptr, np.zeros(o, np.float32))
    args = [tvm.runtime.tensor(a, dev) for a in arrs]
    args.append(tvm.runtime.tensor(np.zeros((1, o, plan.oh, plan.ow), np.float32), dev))
    lib["main"](*args)
    ref = run_conv_numpy(x, w, pads)
    err = float(np.abs(args[-1].numpy() - ref).max() / max(np.abs(ref).max(), 1e-30))
    return lib, args, err


def bench_sparse(layers: list[tuple], sparsities: list[float], budget: float) -> list[dict]:
    """``layers``: ("dense", name, n, k) or ("conv", name, c, o, hw, k)."""
    from mcopt.targets.cpu.kernels.target_info import host_target

    target = host_target()
    rng = np.random.default_rng(0)
    rows = []
    for spec in layers:
        kind, name = spec[0], spec[1]
        if kind == "dense":
            n, k = spec[2], spec[3]
            w = rng.standard_normal((n, k)).astype(np.float32)
            x = rng.standard_normal((1, k)).astype(np.float32)
            dense = _dense_libs(1, n, k, w, x, target)
        else:
            c, o, hw, k = spec[2:]
            w = rng.standard_normal((o, c, k, k)).astype(np.float32)
            x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
            dense = _conv_libs(c, o, hw, k, w, x, target)
        for s in sparsities:
            contenders = {"dense": _kernel_timer(*dense)}
            errs = {}
            for label, br in (("csr", 1), ("bsr8x1", 8)):
                wp = _prune(w, s, br)
                if kind == "dense":
                    lib, args, err = _sparse_dense_lib(1, n, k, wp, x, (br, 1), target)
                else:
                    lib, args, err = _sparse_conv_lib(wp, x, 1 if br == 1 else 4, target)
                contenders[label] = _kernel_timer(lib, args)
                errs[label] = err
            res = _alternate(contenders, budget)
            row = {"layer": name, "sparsity": s}
            for lab, (mn, md) in res.items():
                row[f"{lab}_min"], row[f"{lab}_med"] = mn, md
            row["csr_x"] = row["dense_min"] / row["csr_min"]
            row["bsr_x"] = row["dense_min"] / row["bsr8x1_min"]
            row["err"] = max(errs.values())
            rows.append(row)
            print(row, flush=True)
    return rows


SPARSE_COLS = [
    ("layer", "layer", ""),
    ("sparsity", "sparsity", ".2f"),
    ("dense_min", "dense ms (min)", ".3f"),
    ("dense_med", "dense ms (med)", ".3f"),
    ("csr_min", "CSR ms (min)", ".3f"),
    ("csr_med", "CSR ms (med)", ".3f"),
    ("csr_x", "CSR speedup", ".2f"),
    ("bsr8x1_min", "block ms (min)", ".3f"),
    ("bsr_x", "block speedup", ".2f"),
    ("err", "max rel err", ".1e"),
]


def _ms(fn: Any) -> Any:
    """A timer for :func:`_alternate`: a short pause (both thread pools spin after a call), one
    untimed call, then the ms of one call."""

    def timer() -> float:
        time.sleep(0.05)
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return timer


def bench_default_build(budget: float) -> list[dict[str, Any]]:
    """Unpruned vs 95 %-pruned FC weights through the default cpu build, alternating timing."""
    import onnx

    import mcopt
    from mcopt.testing import zoo

    rows = []
    for name, proto in (
        ("bvlc_alexnet", zoo.light_model("bvlc_alexnet", seed=0)),
        ("lenet300", onnx.load(zoo.lenet300_path())),
    ):
        g = mcopt.load(proto)
        x = np.random.default_rng(0).standard_normal(g.inputs[0].shape).astype(np.float32)
        builds = {}
        for label, passes in (
            ("unpruned", ["cleanup"]),
            ("fc 95% pruned", ["cleanup", "prune-weights:sparsity=0.95,ops=[dense],encode=always"]),
        ):
            res = mcopt.optimize(proto, target="cpu", passes=passes, calib=[x], measure=False)
            builds[label] = res
        sess = ort_session(proto)
        iname = sess.get_inputs()[0].name
        calls = {k: (lambda r=r, x=x: r.compiled.run(x)) for k, r in builds.items()}
        calls["onnxruntime"] = lambda s=sess, n=iname, x=x: s.run(None, {n: x})
        t = _alternate({k: _ms(f) for k, f in calls.items()}, budget)
        base = t["unpruned"][1]
        for k in ("unpruned", "fc 95% pruned"):
            rows.append(
                {
                    "model": name,
                    "build": k,
                    "weights_MB": builds[k].cost_after.totals()["weight_bytes"] / 2**20,
                    "choices": ", ".join(f"{c} x{n}" for c, n in builds[k].compiled.choices.items())
                    or "-",
                    "mcopt_min": t[k][0],
                    "mcopt_med": t[k][1],
                    "speedup": base / t[k][1],
                    "ort_med": t["onnxruntime"][1],
                    "vs_ort": t["onnxruntime"][1] / t[k][1],
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", action="store_true")
    ap.add_argument("--crossover", action="store_true")
    ap.add_argument("--resnet-layers", action="store_true")
    ap.add_argument("--default-build", action="store_true")
    ap.add_argument("--budget", type=float, default=4.0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    everything = not (args.models or args.crossover or args.resnet_layers or args.default_build)
    out = Path(args.out)
    if args.crossover or everything:
        layers = [
            ("dense", "dense 4096x4096", 4096, 4096),
            ("dense", "dense 1024x1024", 1024, 1024),
            ("conv", "conv3x3 256->256 @14", 256, 256, 14, 3),
        ]
        rows = bench_sparse(layers, [0.5, 0.7, 0.8, 0.9, 0.95, 0.98], args.budget)
        md = markdown_table(rows, SPARSE_COLS)
        print(md)
        write_outputs(out, "sparse_crossover", rows, md)
    if args.resnet_layers or everything:
        layers = [
            ("dense", "resnet50 fc 2048->1000", 1000, 2048),
            ("conv", "resnet50 3x3 64->64 @56", 64, 64, 56, 3),
            ("conv", "resnet50 3x3 256->256 @14", 256, 256, 14, 3),
            ("conv", "resnet50 1x1 512->2048 @7", 512, 2048, 7, 1),
        ]
        rows = bench_sparse(layers, [0.8, 0.9, 0.95], args.budget)
        md = markdown_table(rows, SPARSE_COLS)
        print(md)
        write_outputs(out, "sparse_resnet50", rows, md)
    if args.default_build or everything:
        rows = bench_default_build(args.budget)
        cols = [
            ("model", "model", ""),
            ("build", "build", ""),
            ("weights_MB", "weights MiB", ".1f"),
            ("choices", "kernels chosen", ""),
            ("mcopt_min", "mcopt ms (min)", ".3f"),
            ("mcopt_med", "mcopt ms (med)", ".3f"),
            ("speedup", "vs unpruned", ".2f"),
            ("ort_med", "onnxruntime ms (orig)", ".3f"),
            ("vs_ort", "vs onnxruntime", ".2f"),
        ]
        md = markdown_table(rows, cols)
        print(md)
        write_outputs(out, "prune_default_build", rows, md)
    if args.models or everything:
        rows = bench_models(args.budget * 3)
        cols = [
            ("model", "model", ""),
            ("pruned", "channels pruned", ""),
            ("params_M", "params (M)", ".2f"),
            ("macs_G", "MACs (G)", ".2f"),
            ("macs_x", "MACs reduction", ".2f"),
            ("mcopt_min", "mcopt ms (min)", ".1f"),
            ("mcopt_med", "mcopt ms (med)", ".1f"),
            ("mcopt_x", "mcopt speedup", ".2f"),
            ("ort_min", "ORT ms (min)", ".1f"),
            ("ort_med", "ORT ms (med)", ".1f"),
            ("ort_x", "ORT speedup", ".2f"),
        ]
        md = markdown_table(rows, cols)
        print(md)
        write_outputs(out, "prune_latency", rows, md)


if __name__ == "__main__":
    main()
