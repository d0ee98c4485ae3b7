"""ARM end to end: compile ResNet-50 and MobileNet-V2 for aarch64, run them in the emulated aarch64
TVM runtime (qemu-user) and compare with the host reference interpreter.

    bash scripts/setup_aarch64.sh          # once (cached)
    python benchmarks/bench_arm.py [--models resnet50 mobilenet_v2] [--target arm:cortex-a76]
                                   [--rpc] [--out results.json]

Per model: compile time, library size, max relative error vs the numpy reference, and latency
under emulation. Emulated latency is labelled as such: qemu-user translates every aarch64
instruction, so it says nothing about a real Cortex-A core (use ``run_remote`` on a board).
With ``--rpc`` each model also goes through the emulated runtime started as an RPC server.
For a figure that does mean something without a device, ``bench_arm_icount.py`` counts the
instructions each inference executes (exactly, under qemu with a plugin), beside onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _models(names: list[str]) -> dict[str, object]:
    from mcopt.testing import zoo

    builders = {
        "resnet50": lambda: zoo.light_model("resnet50", seed=0),
        "mobilenet_v2": lambda: zoo.mobilenet_v2(),
        "tiny_cnn": lambda: zoo.tiny_cnn(),
        "resnet18_like": lambda: zoo.resnet18_like(),
    }
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(builders)}")
    return {n: builders[n]() for n in names}


def _rel_err(outs: list[np.ndarray], ref: list[np.ndarray]) -> float:
    return max(
        float(np.abs(o.astype(np.float64) - r).max()) / max(float(np.abs(r).max()), 1e-6)
        for o, r in zip(outs, ref)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--target", default="arm:cortex-a76")
    ap.add_argument("--rpc", action="store_true", help="also run through the emulated RPC server")
    ap.add_argument("--number", type=int, default=1, help="timed runs per repeat (emulated)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)

    from mcopt import interpreter
    from mcopt.api import load
    from mcopt.targets.arm.builder import build_arm
    from mcopt.targets.arm.emulate import run_emulated, unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"emulated aarch64 runtime unavailable: {reason}", file=sys.stderr)
        return 2
    rows = []
    for name, model in _models(args.models).items():
        g = load(model)
        x = np.random.default_rng(0).standard_normal(g.inputs[0].shape).astype(np.float32)
        t0 = time.perf_counter()
        ref = interpreter.run(g, [x])
        ref_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled = build_arm(g, args.target)
        with tempfile.TemporaryDirectory() as tmp:
            lib = compiled.export_library(Path(tmp) / f"{name}.so")
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            outs, timing = run_emulated(lib, [x], number=args.number, repeat=1)
            emu_wall_s = time.perf_counter() - t0
            row = {
                "model": name,
                "target": args.target,
                "compile_s": round(compile_s, 2),
                "library_bytes": lib.stat().st_size,
                "max_rel_err_vs_host_reference": _rel_err(outs, ref),
                "reference_interpreter_s": round(ref_s, 2),
                "emulated_latency_ms": round(timing["median_ms"], 1) if timing else None,
                "emulated_process_wall_s": round(emu_wall_s, 1),
                "timings_are": "qemu-user emulation (meaningless for real hardware)",
            }
            if args.rpc:
                from mcopt.targets.arm.emulate import start_emulated_rpc_server
                from mcopt.targets.tune.rpc import run_remote

                with start_emulated_rpc_server(max_lifetime_s=1800) as server:
                    routs, rt = run_remote(
                        compiled, server.host, server.port, inputs=[x], number=1, repeat=1
                    )
                row["rpc_max_rel_err"] = _rel_err(routs, ref)
                row["rpc_emulated_latency_ms"] = round(rt["median_ms"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print("| model | target | compile s | library | max rel err vs host | emulated ms* |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['target']} | {r['compile_s']} | {r['library_bytes'] / 1e6:.1f} MB "
            f"| {r['max_rel_err_vs_host_reference']:.2e} | {r['emulated_latency_ms']} |"
        )
    print(
        "\n*under qemu-user emulation on this x86 machine: not an ARM device's latency "
        "(benchmarks/bench_arm_icount.py counts executed instructions instead)."
    )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    bad = [r["model"] for r in rows if r["max_rel_err_vs_host_reference"] > 1e-3]
    if bad:
        print(f"MISMATCH vs the host reference: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
