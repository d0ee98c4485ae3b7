"""Channel pruning with and without target-aligned channel counts (``prune-channels:round_to=1`` vs
``round_to=auto``, :meth:`TargetServices.channel_multiple`) on the onnx wheel's light models: the
compiled builds' latency, fp32 and int8, against onnxruntime fp32 on the unpruned model.

Random weights, no fine-tuning: this measures speed only (what the channel counts cost the blocked
kernels), not accuracy. Latency: batch 1, ``PreparedRun`` / ``session.run``, alternating bursts with
a pause before each (``bench_cpu.interleaved``), minima.

Run: ``python benchmarks/bench_prune_align.py [--models inception_v1,densenet121] [--ratio 0.3]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    from bench_cpu import interleaved
    from common import ort_session

    import mcopt
    from mcopt.testing import zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="inception_v1,densenet121")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    print("| model | build | min ms | vs onnxruntime fp32 (unpruned) | conv widths (first 6) |")
    print("|---|---|---:|---:|---|")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        proto = zoo.light_model(name, seed=0)
        inp = proto.graph.input[0]
        shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        calib = np.random.default_rng(0).standard_normal([8, *shape[1:]]).astype(np.float32)
        x = calib[:1]
        engines, widths = {}, {}
        for q in ("fp32", "int8"):
            for rt in ("1", "auto"):
                passes = ["cleanup", f"prune-channels:ratio={args.ratio},round_to={rt}"]
                passes += ["quantize-int8"] if q == "int8" else []
                res = mcopt.optimize(
                    proto, target="cpu", passes=passes, calib=calib, measure=False, check=False
                )
                key = f"{q}, round_to={rt}"
                engines[key] = res.compiled.prepare(x)
                widths[key] = sorted(
                    {n.inputs[1].shape[0] for n in res.graph.nodes if n.op in ("conv2d", "qconv2d")}
                )[:6]
        sess = ort_session(proto)
        feed = {inp.name: x}
        engines["onnxruntime fp32"] = lambda s=sess, f=feed: s.run(None, f)
        t = interleaved(engines, rounds=args.rounds, budget_s=0.5, max_runs=500)
        ref = t["onnxruntime fp32"]["min_ms"]
        for k, v in t.items():
            w = ", ".join(str(c) for c in widths.get(k, []))
            print(f"| {name} | {k} | {v['min_ms']:.3f} | {ref / v['min_ms']:.2f}x | {w} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
