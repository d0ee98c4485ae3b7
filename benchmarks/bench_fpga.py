"""FPGA-style fixed point: per model and format, the folding / DSP / BRAM / cycle estimate, bit-exactness
of the gcc-compiled C against the numpy integer reference, output error and accuracy.

    python benchmarks/bench_fpga.py [--models lenet5,resnet18_small,lenet300,mobilenet_v2_small]
                                    [--dsp 220] [--clock 200] [--fps FPS] [--out bench-out]

LeNet-5 / LeNet-300-100 (trained): calibrated on the even half of ``mnist_test_set()``, accuracy and
bit-exactness on the odd half (all 500 digits). Random-weight CNNs: calibrated on 8 seeded normal
inputs, top-1 agreement with the float model and bit-exactness on 16 others. ``C ms`` is the host CPU
running the generated C (a functional model; ``latency us`` is the estimate at the FPGA clock).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import markdown_table, write_outputs

import mcopt.testing.zoo as zoo
from mcopt import interpreter
from mcopt.api import load
from mcopt.ir.core import Graph
from mcopt.pass_manager import PassContext, PassManager
from mcopt.targets.fpga.builder import build_fpga
from mcopt.targets.fpga.folding import FpgaDevice

MODELS = {
    "lenet5": lambda: zoo.lenet5_path(),
    "lenet300": lambda: zoo.lenet300_path(),
    "resnet18_small": lambda: zoo.resnet18_like(width=8, resolution=32),
    "mobilenet_v2_small": lambda: zoo.mobilenet_v2(width_mult=0.35, resolution=96),
}
FORMATS = [
    ("shared Q 16", "fixed-point:bits=16"),
    ("dynamic 16", "fixed-point:bits=16,dynamic=true"),
    ("shared Q 8", "fixed-point:bits=8"),
    ("dynamic 8", "fixed-point:bits=8,dynamic=true"),
]
COLUMNS = [
    ("model", "model", ""),
    ("format", "format", ""),
    ("layers", "layers", "d"),
    ("dsp", "DSP", "d"),
    ("bram36", "BRAM36", "d"),
    ("weight_kib", "weights KiB", ".1f"),
    ("buffer_kib", "buffers KiB", ".1f"),
    ("ii_cycles", "II cycles", "d"),
    ("latency_cycles", "latency cycles", "d"),
    ("latency_us", "latency us", ".1f"),
    ("fps", "inf/s", ".0f"),
    ("fits", "fits", ""),
    ("bit_exact", "bit-exact", ""),
    ("rel_error", "rel. L2 err", ".3g"),
    ("accuracy", "accuracy", ".4f"),
    ("float_accuracy", "float acc.", ".4f"),
    ("c_ms", "C ms", ".3f"),
    ("build_s", "build s", ".1f"),
]


def _feeds(name: str, g: Graph) -> tuple[list[dict], list[dict], np.ndarray | None]:
    if name.startswith("lenet"):
        x, y = zoo.mnist_test_set()
        calib = [{g.inputs[0].name: x[i : i + 1]} for i in range(0, len(x), 2)]
        test = [{g.inputs[0].name: x[i : i + 1]} for i in range(1, len(x), 2)]
        return calib, test, y[1::2]
    rng = np.random.default_rng(0)
    feeds = [
        {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in g.inputs}
        for _ in range(24)
    ]
    return feeds[:8], feeds[8:], None


def bench(name: str, device: FpgaDevice, fps: float | None) -> list[dict[str, Any]]:
    g, _ = PassManager(["cleanup"]).run(load(MODELS[name]()), ctx=PassContext())
    calib, test, labels = _feeds(name, g)
    float_out = [interpreter.run(g, f)[0] for f in test]
    float_top = np.array([o.argmax() for o in float_out])
    rows = []
    for label, spec in FORMATS:
        ctx = PassContext(calib=calib)
        q, _ = PassManager([spec]).run(g.copy(), ctx=ctx)
        t0 = time.perf_counter()
        model = build_fpga(q, device=device, target_fps=fps)
        build_s = time.perf_counter() - t0
        outs = [model.run(f)[0] for f in test]
        exact = all(np.array_equal(o, interpreter.run(q, f)[0]) for o, f in zip(outs, test))
        top = np.array([o.argmax() for o in outs])
        err = max(
            float(np.linalg.norm(o.astype(np.float64) - r)) / (float(np.linalg.norm(r)) or 1.0)
            for o, r in zip(outs, float_out)
        )
        t = model.plan.totals()
        row = {
            "model": name,
            "format": label,
            "layers": len(model.plan.layers),
            **{
                k: t[k]
                for k in (
                    "dsp",
                    "bram36",
                    "ii_cycles",
                    "latency_cycles",
                    "latency_us",
                    "fps",
                    "fits",
                )
            },
            "weight_kib": t["weight_bits"] / 8192,
            "buffer_kib": t["buffer_bits"] / 8192,
            "bit_exact": f"{exact} ({len(test)})",
            "rel_error": err,
            "c_ms": model.benchmark(test[0])["median_ms"],
            "build_s": build_s,
            "folding": model.plan.to_dict()["layers"],
        }
        if labels is not None:
            row["accuracy"] = float(np.mean(top == labels))
            row["float_accuracy"] = float(np.mean(float_top == labels))
        else:
            row["accuracy"] = float(np.mean(top == float_top))  # top-1 agreement
        rows.append(row)
        print(markdown_table([row], COLUMNS), file=sys.stderr, flush=True)
        if label == "dynamic 8":
            print(model.plan.to_markdown(), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="lenet5,lenet300,resnet18_small")
    ap.add_argument("--dsp", type=int, default=220, help="DSP budget (default: xc7z020's 220)")
    ap.add_argument("--bram", type=int, default=140, help="BRAM36 blocks (default: 140)")
    ap.add_argument("--clock", type=float, default=200.0, help="clock in MHz")
    ap.add_argument("--fps", type=float, default=None, help="target inferences/s (default: max)")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    device = FpgaDevice(dsp=args.dsp, bram36=args.bram, clock_mhz=args.clock)
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {sorted(MODELS)}")
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        rows.extend(bench(name, device, args.fps))
    header = (
        f"FPGA estimate on {device.name}-class budget ({device.dsp} DSP, {device.bram36} BRAM36) at "
        f"{device.clock_mhz:.0f} MHz; accuracy = MNIST test accuracy (LeNets, odd half, calibrated on "
        "the even half) or top-1 agreement with float (random-weight CNNs).\n\n"
    )
    table = markdown_table(rows, COLUMNS)
    print(header + table)
    write_outputs(Path(args.out), "fpga", rows, header + table)


if __name__ == "__main__":
    main()
