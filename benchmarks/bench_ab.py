"""A/B of two mcopt versions on the same models, timed in one process beside onnxruntime.

Timing two versions of a compiler in two processes compares two machines (this host drifts by
5-10 % over minutes). Instead each version only *compiles*: ``export`` runs in a checkout of that
version and writes one library per model; ``compare`` loads every library (the TVM runtime reads
both versions' libraries) and onnxruntime on the original model into one process and times them in
alternating rounds (an untimed call and a 0.3 s pause before each burst), reporting the median of
the per-round ratios and the largest output difference between the versions.

    python benchmarks/bench_ab.py models DIR                     # the ONNX files both versions read
    python benchmarks/bench_ab.py export DIR/models DIR/after    # in this checkout
    PYTHONPATH=/path/to/old/pkg python benchmarks/bench_ab.py export DIR/models DIR/before
    python benchmarks/bench_ab.py compare DIR/models DIR/before DIR/after

``export --passes "cleanup|quantize-int8"`` compiles another pipeline (the int8 A/B of the closing
notes), with lossy passes calibrated on random inputs (timing only).

``export`` only needs ``mcopt.optimize`` and ``CompiledModel.export_library``, so it runs against
older versions too (``PYTHONPATH`` pointing at a package tree of that version: ``mcopt/`` with
``passes/`` and ``targets/`` inside).
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

MODELS = ["lenet5", "lenet300", "tiny_cnn", "pp_lcnet", "mobilenet_v2", "squeezenet",
          "shufflenet", "resnet50", "inception_v1"]  # fmt: skip


def cmd_models(out: Path, names: list[str]) -> None:
    import onnx

    from mcopt.testing import zoo
    from mcopt.testing.lcnet import pp_lcnet

    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name in ("lenet5", "lenet300"):
            proto = onnx.load(zoo.lenet5_path() if name == "lenet5" else zoo.lenet300_path())
        elif name == "tiny_cnn":
            proto = zoo.tiny_cnn(seed=0)
        elif name == "pp_lcnet":
            proto = pp_lcnet(scale=0.5, resolution=224)
        elif name == "mnist_cnn3":
            from bench_auto import cnn3

            proto = cnn3()
        elif name == "mobilenet_v2":
            proto = zoo.mobilenet_v2()
        else:
            proto = zoo.light_model(name, seed=0)
        onnx.save(proto, str(out / f"{name}.onnx"))
        print(f"wrote {out / name}.onnx", flush=True)


def cmd_export(models: Path, out: Path, passes: str | None = None) -> None:
    import warnings

    import mcopt

    out.mkdir(parents=True, exist_ok=True)
    pipeline = None if passes is None else passes.split("|")
    for path in sorted(models.glob("*.onnx")):
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # lossy passes without data: fine for timing
            warnings.simplefilter("ignore")
            res = mcopt.optimize(
                str(path), target="cpu", passes=pipeline, measure=False, check=False
            )
        res.compiled.export_library(out / f"{path.stem}.so")
        meta = {
            "inputs": [[v.name, list(v.shape), v.dtype] for v in res.graph.inputs],
            "outputs": [v.name for v in res.graph.outputs],
            "choices": dict(getattr(res.compiled, "choices", {}) or {}),
            "compile_s": time.perf_counter() - t0,
        }
        (out / f"{path.stem}.json").write_text(json.dumps(meta))
        print(f"{path.stem}: {meta['compile_s']:.1f} s {meta['choices']}", flush=True)


def _burst(fn: Any, n: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def cmd_compare(models: Path, dirs: list[Path], rounds: int, burst_s: float) -> None:
    from common import markdown_table, ort_session, write_outputs

    from mcopt.targets import load_library

    rows = []
    for path in sorted(models.glob("*.onnx")):
        import onnx

        name = path.stem
        proto = onnx.load(str(path))
        sess = ort_session(proto)
        engines: dict[str, Any] = {}
        feeds: dict[str, np.ndarray] = {}
        outs: dict[str, np.ndarray] = {}
        for d in dirs:
            meta = json.loads((d / f"{name}.json").read_text())
            specs = [(n, tuple(s), t) for n, s, t in meta["inputs"]]
            m = load_library(d / f"{name}.so", specs)
            rng = np.random.default_rng(0)
            feeds = {n: rng.standard_normal(s).astype(t) for n, s, t in specs}
            outs[d.name] = m.run(feeds)[0]
            engines[d.name] = lambda m=m, f=feeds: m.run(f)
        ref = sess.run(None, feeds)[0]
        engines = {"onnxruntime": lambda s=sess, f=feeds: s.run(None, f), **engines}
        per = _burst(engines["onnxruntime"], 3)
        n = max(3, int(burst_s * 1e3 / max(per, 1e-3)))
        times: dict[str, list[float]] = {k: [] for k in engines}
        for _ in range(rounds):
            for k, fn in engines.items():
                time.sleep(0.3)
                times[k].append(_burst(fn, n))
        row: dict[str, Any] = {"model": name, "ort_ms": float(np.median(times["onnxruntime"]))}
        scale = float(np.abs(ref).max()) or 1.0
        for d in dirs:
            k = d.name
            row[f"{k}_ms"] = float(np.median(times[k]))
            ratios = [o / t for o, t in zip(times["onnxruntime"], times[k])]
            row[f"{k}_vs_ort"] = float(np.median(ratios))
            row[f"{k}_err"] = float(np.abs(outs[k] - ref).max() / scale)
        a, b = dirs[0].name, dirs[-1].name
        row["b_over_a"] = float(np.median([x / y for x, y in zip(times[a], times[b])]))
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    cols = [("model", "model", ""), ("ort_ms", "onnxruntime ms", ".3f")]
    for d in dirs:
        k = d.name
        cols += [(f"{k}_ms", f"{k} ms", ".3f"), (f"{k}_vs_ort", f"{k} vs ort", ".2f"),
                 (f"{k}_err", f"{k} max rel err", ".1e")]  # fmt: skip
    cols.append(("b_over_a", f"{dirs[-1].name} speedup over {dirs[0].name}", ".2f"))
    md = markdown_table(rows, cols)
    print(md)
    write_outputs(Path("bench-out"), "ab", rows, md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="write the model set as ONNX files")
    m.add_argument("out", type=Path)
    m.add_argument("--models", default=",".join(MODELS))
    e = sub.add_parser("export", help="compile every model with this mcopt version")
    e.add_argument("models", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument(
        "--passes", default=None,
        help='a pipeline, passes separated by "|" (default: the lossless default); lossy '
        "passes calibrate on random inputs here (speed only: the error column is theirs)",
    )  # fmt: skip
    c = sub.add_parser("compare", help="time the versions' libraries beside onnxruntime")
    c.add_argument("models", type=Path)
    c.add_argument("dirs", type=Path, nargs="+")
    c.add_argument("--rounds", type=int, default=7)
    c.add_argument("--burst", type=float, default=0.3, help="seconds per burst")
    args = ap.parse_args()
    if args.cmd == "models":
        cmd_models(args.out, args.models.split(","))
    elif args.cmd == "export":
        cmd_export(args.models, args.out, args.passes)
    else:
        cmd_compare(args.models, args.dirs, args.rounds, args.burst)


if __name__ == "__main__":
    main()
