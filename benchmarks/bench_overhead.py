"""Per-call overhead: a compiled model's Python call path beside onnxruntime's, on models so small
that the call path is most of the time.

Models: ``relu`` (one Relu on a (1, 10) input: nothing but the call path) and LeNet-300-100
(``lenet300``, an MLP 784-300-100-10); ``--models`` adds any of benchmarks/common.py's model set.
Engines, all numpy in and numpy out, the same feeds:

- ``onnxruntime``: ``InferenceSession.run(None, feeds)``;
- ``run()``: ``CompiledModel.run(feeds)`` (every result its own array);
- ``prepared(feeds)``: ``CompiledModel.prepare()``'s call — its own buffers, allocation-free VM entry,
  results in fixed output arrays overwritten by the next call;
- ``prepared()``: the same on inputs already in its buffers (no copy-in: the floor of the Python
  side);
- ``VM main``: the bare ``vm["main"](*tensors)`` on bound device tensors, no numpy on either side
  (what the kernels + the VM cost);
- ``C mcopt_run``: the C API (``targets/capi``) from a C program, ``mcopt_example model.so --repeat
  N``: host buffers in and out, no Python at all (its burst runs in its own process; each call is
  timed on its own there too, and its minimum kept). Skipped, with a note, without a C compiler.

Alternating bursts in one process (a pause and an untimed call before each, see
``../shared/DESIGN.md``, "Measuring speed on this machine"), each a :func:`common.time_fn` of
``--runs`` calls; a figure is the minimum per-call time over all bursts (the call path's cost
without the host's noise), the ratio ``onnxruntime / engine`` of those minima (above 1: faster
than onnxruntime).

    python benchmarks/bench_overhead.py
    python benchmarks/bench_overhead.py --models relu,lenet300,lenet5 --rounds 9
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    THREADS,
    markdown_table,
    model_set,
    ort_session,
    random_inputs,
    time_fn,
    write_outputs,
)

ENGINES = ["onnxruntime", "run", "prepared", "prepared_bound", "vm_main", "c_api"]


class CBurst:
    """The C API engine: a burst is one ``mcopt_example --repeat N`` process (load, then N calls
    each timed in C); :meth:`burst_us` returns its per-call minimum in microseconds."""

    def __init__(self, result: Any, workdir: Path) -> None:
        import subprocess

        from mcopt.targets.capi import compile_command, write_sources

        self.so = workdir / "model.so"
        result.compiled.export_library(str(self.so))
        (workdir / "model.io.txt").write_text(result._io_description())  # noqa: SLF001
        srcs = write_sources(workdir)
        self.exe = workdir / "mcopt_example"
        c_files = [p for p in srcs if p.suffix == ".c"]
        subprocess.run(compile_command(c_files, self.exe), check=True, capture_output=True)

    def burst_us(self, runs: int) -> float:
        import re
        import subprocess

        proc = subprocess.run(
            [str(self.exe), str(self.so), "--repeat", str(runs)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        m = re.search(r"min ([0-9.]+) us", proc.stderr)
        if m is None:
            raise RuntimeError(f"mcopt_example printed no timing: {proc.stderr[-300:]}")
        return float(m.group(1))


def relu_model() -> Any:
    """One Relu on a (1, 10) float input: a model whose run is all call path."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def engines_for(proto: Any, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """name -> zero-argument call, and facts about the build (allocation-free, output error)."""
    import mcopt

    result = mcopt.optimize(proto, target="cpu", measure=False, check=False)
    compiled = result.compiled
    sess = ort_session(proto)
    feeds = random_inputs(proto)
    arrays = [feeds[n] for n, _, _ in compiled.input_specs]
    prepared = compiled.prepare(feeds)
    tensors = compiled._bind(arrays, {})  # noqa: SLF001 - the bound device tensors, for the floor
    main = compiled._vm["main"]  # noqa: SLF001
    ref = sess.run(None, feeds)
    got = compiled.run(feeds)
    scale = max(float(np.abs(r).max()) for r in ref) or 1.0
    facts = {
        "allocation_free": prepared.allocation_free,
        "max_abs_err": max(float(np.abs(r - g).max()) for r, g in zip(ref, got)) / scale,
        "same_as_run": all(np.array_equal(a, b) for a, b in zip(prepared(feeds), got)),
    }
    engines = {
        "onnxruntime": lambda: sess.run(None, feeds),
        "run": lambda: compiled.run(feeds),
        "prepared": lambda: prepared(feeds),
        "prepared_bound": lambda: prepared(),
        "vm_main": lambda: main(*tensors),
    }
    try:
        engines["c_api"] = CBurst(result, workdir)
    except Exception as e:  # no C compiler here: the Python engines still run
        print(f"C API engine skipped: {str(e).splitlines()[0][:200]}", file=sys.stderr)
    return engines, facts


def measure(engines: dict[str, Any], rounds: int, runs: int, pause_s: float) -> dict[str, Any]:
    """Alternating bursts (order reversed every other round); per engine the minimum and the
    median of the per-burst minima, in microseconds."""
    mins: dict[str, list[float]] = {k: [] for k in engines}
    for r in range(rounds):
        for k in list(engines) if r % 2 == 0 else list(reversed(engines)):
            time.sleep(pause_s)
            if isinstance(engines[k], CBurst):
                mins[k].append(engines[k].burst_us(runs))
                continue
            stats = time_fn(engines[k], min_runs=runs, max_runs=runs, budget_s=60.0)
            mins[k].append(stats["min_ms"] * 1e3)
    out: dict[str, Any] = {}
    for k, v in mins.items():
        out[f"{k}_us"] = min(v)
        out[f"{k}_med_us"] = float(np.median(v))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="relu,lenet300")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=2000, help="calls per burst")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds before each burst")
    args = ap.parse_args()
    names = args.models.split(",")
    protos = {"relu": relu_model()} if "relu" in names else {}
    protos.update(model_set([n for n in names if n != "relu"]) if set(names) - {"relu"} else {})
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="mcopt-overhead-") as tmp:
            engines, facts = engines_for(protos[name], Path(tmp))
            row: dict[str, Any] = {"model": name, **facts}
            row.update(measure(engines, args.rounds, args.runs, args.pause))
        for k in ENGINES[1:]:
            if f"{k}_us" in row:
                row[f"{k}_ratio"] = row["onnxruntime_us"] / row[f"{k}_us"]
        rows.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    cols = [
        ("model", "model", ""),
        ("onnxruntime_us", "onnxruntime µs", ".2f"),
        ("run_us", "mcopt run() µs", ".2f"),
        ("prepared_us", "mcopt prepared(feeds) µs", ".2f"),
        ("prepared_bound_us", "mcopt prepared() µs", ".2f"),
        ("vm_main_us", "VM main µs", ".2f"),
        ("c_api_us", "C mcopt_run µs", ".2f"),
        ("run_ratio", "ort / run()", ".2f"),
        ("prepared_ratio", "ort / prepared(feeds)", ".2f"),
        ("prepared_bound_ratio", "ort / prepared()", ".2f"),
        ("c_api_ratio", "ort / C", ".2f"),
        ("allocation_free", "allocation-free", ""),
    ]
    md = markdown_table(rows, cols)
    md += (
        f"\nMinimum per-call time over {args.rounds} alternating bursts of {args.runs} calls, "
        f"{THREADS} thread(s) for both engines; ratios above 1: faster than onnxruntime.\n"
    )
    print(md)
    write_outputs(Path("bench-out"), "overhead", rows, md)


if __name__ == "__main__":
    main()
