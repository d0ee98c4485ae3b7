"""ARM instructions per inference: mcopt's aarch64 build vs onnxruntime's aarch64 wheel, counted
exactly under qemu-user (no aarch64 machine here can be timed; executed instructions can be counted).

    bash scripts/setup_icount.sh          # once (cached; runs scripts/setup_aarch64.sh first)
    python benchmarks/bench_arm_icount.py [--models tiny_cnn lenet5 mobilenet_v2]
        [--precisions fp32 int8] [--n 3] [--repeats 2] [--target arm:neoverse-n1] [--out bench/arm_icount]

Per model and precision: mcopt's library for ``--target`` (fp32: ``cleanup``; int8: ``cleanup,
quantize-int8`` on 8 seeded random calibration inputs) and onnxruntime (fp32: the original model;
int8: ``quantize_static``, QDQ, per-channel, QUInt8 activations / QInt8 weights, same calibration
inputs; as in bench_quant.py), each run in the emulated aarch64 Python under ``qemu-aarch64 -cpu
<the target's core> -plugin libicount.so`` with one thread: one uncounted warm-up inference, then
executed instructions over ``--n`` inferences (the call from Python included), per inference. The
whole count runs ``--repeats`` times in fresh processes; the spread is (max - min) / mean.

An instruction count is not a latency: it ignores caches, memory stalls, issue width and the cost
of each instruction (a NEON ``fmla`` on 4 floats counts as one, as does an ``sdot`` doing 16
int8 MACs). It does say how much work each runtime makes the core do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from common import markdown_table, max_rel_err, ort_session, write_outputs  # noqa: E402

MODELS = ("tiny_cnn", "lenet5", "mobilenet_v2")


def _pp_lcnet() -> onnx.ModelProto:
    from mcopt.testing.lcnet import pp_lcnet

    return pp_lcnet()


def load(name: str) -> onnx.ModelProto:
    from mcopt.testing import zoo

    builders = {
        "tiny_cnn": lambda: zoo.tiny_cnn(seed=0),
        "lenet5": lambda: onnx.load(zoo.lenet5_path()),
        "mobilenet_v2": lambda: zoo.mobilenet_v2(),
        "resnet18_like": lambda: zoo.resnet18_like(),
        "lenet300": lambda: onnx.load(zoo.lenet300_path()),
        "pp_lcnet": _pp_lcnet,
        **{m: (lambda m=m: zoo.light_model(m, seed=0)) for m in zoo.LIGHT_MODELS},
    }
    if name not in builders:
        raise SystemExit(f"unknown model {name!r}; choose from {sorted(builders)}")
    return builders[name]()


def _input(proto: onnx.ModelProto) -> tuple[str, list[int]]:
    inits = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    return inp.name, [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]


def prepare(name: str, precisions: list[str], target: str, tmp: Path) -> list[dict[str, Any]]:
    """Build mcopt's libraries and onnxruntime's models of one model; one dict per precision with
    the jobs to count, the reference output and what was built."""
    from bench_quant import ort_int8

    from mcopt.analysis.cost import graph_stats
    from mcopt.errors import MCoptError
    from mcopt.onnx_io import import_model
    from mcopt.pass_manager import PassContext, PassManager
    from mcopt.targets.arm.builder import build_arm
    from mcopt.targets.arm.icount import IcountJob
    from mcopt.targets.services import services_for

    proto = load(name)
    in_name, shape = _input(proto)
    rng = np.random.default_rng(0)
    calib = [{in_name: rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref = ort_session(proto, threads=1).run(None, {in_name: x})
    preps = []
    for prec in precisions:
        tag = f"{name}-{prec}"
        prep: dict[str, Any] = {"model": name, "precision": prec, "ref": ref, "jobs": {}}
        g = import_model(proto)
        passes = ["cleanup"] if prec == "fp32" else ["cleanup", "quantize-int8"]
        try:
            t0 = time.perf_counter()
            # as optimize(target=...) quantizes: reduce_range="auto" asks the target
            ctx = PassContext(calib=calib, seed=0, target=services_for(target))
            g, _ = PassManager(passes).run(g, ctx=ctx)
            prep["macs"] = int(graph_stats(g).macs)
            lib = build_arm(g, target).export_library(tmp / f"{tag}.so")
            prep["mcopt_build_s"] = round(time.perf_counter() - t0, 1)
            prep["mcopt_library_bytes"] = lib.stat().st_size
            prep["jobs"]["mcopt"] = IcountJob(tag, "tvm", lib, [x])
        except (MCoptError, RuntimeError) as e:
            prep["mcopt_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        try:
            if prec == "fp32":
                ort_proto = proto
            else:
                qdir = tmp / f"q-{name}"
                qdir.mkdir(exist_ok=True)
                ort_proto = ort_int8(proto, calib, qdir)
            path = tmp / f"{tag}.onnx"
            onnx.save(ort_proto, str(path))
            prep["ort_model_bytes"] = path.stat().st_size
            prep["jobs"]["onnxruntime"] = IcountJob(tag, "onnx", path, [x])
        except Exception as e:  # quantize_static's failures are not one type
            prep["ort_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        preps.append(prep)
    return preps


def count_all(
    jobs: dict[str, list[Any]], cpu: str, inline: bool
) -> dict[str, dict[str, dict[str, Any]]]:
    """runtime -> job name -> result (or {"error": ...}); one guest process per runtime, both at
    once (counts do not depend on timing); a failed process is retried one job at a time."""
    from mcopt.errors import TargetError
    from mcopt.targets.arm.icount import count_instructions

    def run(runtime: str) -> dict[str, dict[str, Any]]:
        js = jobs[runtime]
        if not js:
            return {}
        try:
            return {r["name"]: r for r in count_instructions(js, cpu=cpu, inline=inline)}
        except TargetError:
            out = {}
            for j in js:
                try:
                    out[j.name] = count_instructions([j], cpu=cpu, inline=inline)[0]
                except TargetError as e:
                    out[j.name] = {"error": str(e)[:300]}
            return out

    with ThreadPoolExecutor(max_workers=2) as pool:
        futs = {rt: pool.submit(run, rt) for rt in jobs}
        return {rt: f.result() for rt, f in futs.items()}


def _spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.mean(xs) if len(xs) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    ap.add_argument("--target", default="arm:neoverse-n1")
    ap.add_argument("--n", type=int, default=3, help="counted inferences per window")
    ap.add_argument("--repeats", type=int, default=2, help="fresh guest processes per count")
    ap.add_argument(
        "--atomic", action="store_true", help="atomic per-block callbacks instead of inline adds"
    )
    ap.add_argument("--out", type=Path, default=Path("bench/arm_icount"))
    args = ap.parse_args(argv)

    import mcopt.targets.arm.builder  # noqa: F401  (registers the arm targets)
    from mcopt.targets.arm.emulate import qemu_cpu_for_target
    from mcopt.targets.arm.icount import default_cpu, unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"instruction counting unavailable: {reason}", file=sys.stderr)
        return 2
    cpu = qemu_cpu_for_target(args.target, available=[default_cpu()])
    if cpu != default_cpu():
        print(
            f"{args.target} needs qemu -cpu {cpu}, but the fake /proc/cpuinfo describes "
            f"{default_cpu()}: MCOPT_ICOUNT_CPU={cpu} bash scripts/setup_icount.sh",
            file=sys.stderr,
        )
        return 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-arm-icount-") as d:
        tmp = Path(d)
        preps = []
        for name in args.models:
            t0 = time.perf_counter()
            preps += prepare(name, args.precisions, args.target, tmp)
            print(
                f"[{name}] built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True
            )
        jobs: dict[str, list[Any]] = {"mcopt": [], "onnxruntime": []}
        for p in preps:
            for rt, job in p["jobs"].items():
                job.n = args.n
                jobs[rt].append(job)
        runs = []
        for k in range(args.repeats):
            t0 = time.perf_counter()
            runs.append(count_all(jobs, cpu, inline=not args.atomic))
            print(
                f"[count {k + 1}/{args.repeats}] {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        for p in preps:
            row: dict[str, Any] = {
                k: v for k, v in p.items() if k not in ("ref", "jobs") and not k.startswith("_")
            }
            row.update(target=args.target, cpu=cpu, n=args.n, repeats=args.repeats)
            for rt, key in (("mcopt", "mcopt"), ("onnxruntime", "ort")):
                job = p["jobs"].get(rt)
                if job is None:
                    continue
                res = [run[rt].get(job.name, {"error": "not run"}) for run in runs]
                errs = [r["error"] for r in res if "error" in r]
                if errs:
                    row[f"{key}_error"] = errs[0]
                    continue
                counts = [float(r["per_inference"]) for r in res]
                row[f"{key}_per_inference"] = statistics.mean(counts)
                row[f"{key}_runs"] = counts
                row[f"{key}_spread"] = _spread(counts)
                row[f"{key}_max_rel_err"] = max_rel_err(p["ref"], res[0]["outputs"])
                if row.get("macs"):
                    row[f"{key}_per_mac"] = row[f"{key}_per_inference"] / row["macs"]
            if "mcopt_per_inference" in row and "ort_per_inference" in row:
                row["ratio"] = row["mcopt_per_inference"] / row["ort_per_inference"]
            row["spread"] = max(row.get("mcopt_spread", 0.0), row.get("ort_spread", 0.0))
            rows.append(row)
            print(row, file=sys.stderr, flush=True)

    cols = [
        ("model", "model", ""),
        ("precision", "precision", ""),
        ("macs", "MACs", ",d"),
        ("mcopt_per_inference", "mcopt instr/inference", ",.0f"),
        ("ort_per_inference", "onnxruntime instr/inference", ",.0f"),
        ("ratio", "mcopt / onnxruntime", ".2f"),
        ("mcopt_per_mac", "mcopt instr/MAC", ".2f"),
        ("ort_per_mac", "ort instr/MAC", ".2f"),
        ("spread", "spread (2 runs)", ".3%"),
        ("mcopt_max_rel_err", "mcopt err vs fp32", ".1e"),
        ("ort_max_rel_err", "ort err vs fp32", ".1e"),
    ]
    if args.repeats != 2:
        cols[8] = ("spread", f"spread ({args.repeats} runs)", ".3%")
    table = markdown_table(rows, cols)
    notes = [
        f"\nExecuted aarch64 instructions per inference (batch 1, one thread), counted under "
        f"qemu-user -cpu {cpu} with scripts/icount_plugin.c; mcopt target {args.target}; "
        f"mean of {args.repeats} processes x {args.n} inferences each.",
    ]
    for r in rows:
        for key in ("mcopt_error", "ort_error"):
            if key in r:
                notes.append(f"- {r['model']} {r['precision']} {key[:-6]}: {r[key]}")
    md = table + "\n".join(notes) + "\n"
    print(md)
    write_outputs(args.out, "arm_icount", rows, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
