"""Architecture rewrites and Winograd (issue 7) on VGG-19, AlexNet and the trained LeNet-5: one table.

For each rewrite (``fc-to-gap``, ``lowrank-dense``, ``factorize-spatial``, ``factorize-5x5``,
``factorize-flattened``, ``factorize-depthwise``, ``factorize-tucker``, ``winograd`` F(2x2,3x3) and
F(4x4,3x3), and ``winograd`` F(4x4,3x3) with ``only_if_faster``) applied to a copy of the model after
the lossless ``cleanup`` pipeline (the "unrewritten" baseline is that cleaned graph):

* params and MACs (``mcopt.analysis.cost.graph_stats``; Winograd's MACs are its element-wise
  multiplies, its params the transformed weights);
* latency of the graph compiled with mcopt's CPU target (``mcopt.targets.build(graph, "cpu")``,
  ``CompiledModel.benchmark``), the speedup over the unrewritten graph compiled the same way and over
  onnxruntime running the ORIGINAL model, and onnxruntime on the rewritten graph exported to ONNX
  (Winograd exports back to a standard Conv, so that column is the original's);
* the error against the original: on held-out seeded N(0,1) inputs for the random-weight VGG-19 /
  AlexNet copies (``mcopt.testing.zoo.light_model``) the max abs and max rel (to the largest output magnitude)
  error of the softmax output, the max rel error of the logits (the softmax input) and top-1
  agreement; for LeNet-5 (``mcopt.testing.zoo.lenet5_path``) top-1 accuracy on the odd-index half of the real
  MNIST test digits (``mcopt.testing.zoo.mnist_test_set``, sorted by digit, so split by index parity) and
  top-1 agreement with the original. Errors come from the reference interpreter (the oracle); the
  compiled module and the onnxruntime export are each checked against it (JSON: ``tvm_vs_ir``,
  ``ort_vs_ir``).

Ranks: the random-weight copies have flat singular spectra, so an error budget on calibration data
selects no rank that saves anything; VGG-19 / AlexNet therefore use FIXED compression, the passes'
``param_ratio`` option (each layer gets the largest rank whose factorized form keeps at most that
fraction of its params; default 0.25). LeNet-5 (trained) uses the data-driven rank selection: the
smallest rank whose layer-output error on the calibration digits is within ``max_rel_error``
(``--lenet-budget``, default 0.1). Calibration: ``--calib`` seeded N(0,1) inputs (VGG/AlexNet), the
even-index MNIST digits (LeNet-5; ``fc-to-gap`` fits on all 500).

Timing (the 2-core machine is shared with other jobs): every rewrite is timed in alternating rounds
with the unrewritten compiled model, onnxruntime on the original and onnxruntime on the rewrite; each
round is one sample (mean over enough runs to take ~0.2 s; one run for VGG/AlexNet);
the tables give the minimum over the rounds, speedups are ratios of the minima taken in the same
rounds. Both engines are timed as a user calls them: ``CompiledModel.run`` and onnxruntime's
``session.run`` in a Python loop, numpy in and out.

    python benchmarks/bench_rewrites.py                              # all three models (~25 min)
    python benchmarks/bench_rewrites.py --models lenet5 bvlc_alexnet --rounds 5
    python benchmarks/bench_rewrites.py --models vgg19 --quick       # 2 rounds, 2 eval inputs
    python benchmarks/bench_rewrites.py --rewrites winograd-f2,winograd-f4 --models vgg19
    python benchmarks/bench_rewrites.py --no-compile                 # sizes and errors only

Writes ``<out>/rewrites.md`` and ``<out>/rewrites.json`` (``--out``, default benchmarks/results).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, ort_session, random_inputs, write_outputs  # noqa: E402

MODELS = ("vgg19", "bvlc_alexnet", "lenet5")
#: rewrite label -> pass name (options are added per model by :func:`rewrite_specs`)
REWRITES: dict[str, str] = {
    "fc-to-gap": "fc-to-gap",
    "lowrank-dense": "lowrank-dense",
    "factorize-spatial": "factorize-spatial",
    "factorize-5x5": "factorize-5x5",
    "factorize-flattened": "factorize-flattened",
    "factorize-depthwise": "factorize-depthwise",
    "factorize-tucker": "factorize-tucker",
    "winograd-f2": "winograd",
    "winograd-f4": "winograd",
    "winograd-auto": "winograd",
}


def rewrite_specs(
    model: str, param_ratio: float = 0.25, lenet_budget: float = 0.1
) -> dict[str, str]:
    """label -> pass spec string for `model`: fixed ``param_ratio`` compression for the random-weight
    copies; for the trained LeNet-5 both the calibration error budget ``max_rel_error=lenet_budget``
    (label as is) and the fixed ratio (label + ``@ratio``)."""
    fixed = f":param_ratio={param_ratio}"
    specs = {}
    for label, name in REWRITES.items():
        if label == "fc-to-gap":
            specs[label] = name
        elif label.startswith("winograd"):
            tile = 4 if label == "winograd-auto" else int(label[-1])
            specs[label] = f"winograd:tile={tile}" + (
                ",only_if_faster=true" if label == "winograd-auto" else ""
            )
        elif model == "lenet5":
            samples = 500 if name == "lowrank-dense" else 64
            specs[label] = f"{name}:max_rel_error={lenet_budget},calib_samples={samples}"
            specs[f"{label}@ratio"] = f"{name}{fixed},calib_samples={samples}"
        else:
            specs[label] = name + fixed
    return specs


# --- the model under test ------------------------------------------------------------------------
@dataclass
class Case:
    """A model, its cleaned baseline graph, calibration and evaluation data."""

    name: str
    proto: Any  # the original onnx.ModelProto (onnxruntime baseline)
    base: Any  # mcopt Graph after the lossless cleanup (batch 1)
    calib: list[dict[str, np.ndarray]]
    evals: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None  # LeNet-5: the eval digits' labels
    ref: dict[str, Any] = field(default_factory=dict)  # the baseline's eval outputs


def load_case(name: str, n_calib: int = 8, n_eval: int = 4, n_digits: int | None = None) -> Case:
    """Import `name` at batch 1 and run ``cleanup``; LeNet-5 gets the MNIST split (even digits
    calibrate, odd digits evaluate; `n_digits` limits the eval digits), the others seeded N(0,1)."""
    import onnx

    from mcopt.onnx_io import import_model
    from mcopt.pass_manager import PassContext, PassManager
    from mcopt.testing import zoo

    if name == "lenet5":
        proto = onnx.load(str(zoo.lenet5_path()))
    else:
        proto = zoo.light_model(name, seed=0)
    graph = import_model(proto)
    graph, _ = PassManager(["cleanup"]).run(graph, PassContext(log=lambda m: None))
    inp = graph.inputs[0].name
    labels = None
    if name == "lenet5":
        x, y = zoo.mnist_test_set()
        calib = [{inp: x[i : i + 1]} for i in range(0, len(x), 2)]
        odd = np.arange(1, len(x), 2)[:n_digits]
        evals = [{inp: x[i : i + 1]} for i in odd]
        labels = y[odd]
    else:
        calib = [random_inputs(proto, seed=100 + i) for i in range(n_calib)]
        evals = [random_inputs(proto, seed=1000 + i) for i in range(n_eval)]
    case = Case(name, proto, graph, calib, evals, labels)
    case.ref = evaluate(graph, case)
    return case


def _logits_value(graph: Any) -> Any:
    """The pre-softmax logits (the softmax's input), or the output itself when there is no softmax."""
    out = graph.outputs[0]
    if out.producer is not None and out.producer.op == "softmax":
        return out.producer.inputs[0]
    return out


def evaluate(graph: Any, case: Case) -> dict[str, Any]:
    """Outputs and logits of `graph` on the case's eval inputs (reference interpreter)."""
    from mcopt.interpreter import run_values

    lv = _logits_value(graph)
    outs, logits = [], []
    for feed in case.evals:
        o, vals = run_values(graph, feed, keep=[lv])
        outs.append(o[0])
        logits.append(vals[lv.name])
    return {"out": np.concatenate(outs), "logits": np.concatenate(logits)}


def errors(case: Case, got: dict[str, Any]) -> dict[str, float]:
    """Output/logit errors vs the baseline, top-1 agreement and (LeNet-5) accuracy."""
    from mcopt.pass_manager import output_errors

    ref = case.ref
    oa, orel = output_errors([ref["out"]], [got["out"]])
    _, lrel = output_errors([ref["logits"]], [got["logits"]])
    res = {
        "out_max_abs": oa,
        "out_max_rel": orel,
        "logits_max_rel": lrel,
        "top1_agree": float(np.mean(ref["out"].argmax(1) == got["out"].argmax(1))),
        "n_eval": float(len(case.evals)),
    }
    if case.labels is not None:
        res["accuracy"] = float(np.mean(got["out"].argmax(1) == case.labels))
    return res


# --- timing --------------------------------------------------------------------------------------
def _calibrated(fn_n: Callable[[int], float], target_ms: float) -> Callable[[], float]:
    """A timer returning ms per run, averaging over enough runs for ~`target_ms` per sample."""
    est = fn_n(1)
    number = int(max(1, min(1000, target_ms / max(est, 1e-3))))
    return lambda: fn_n(number)


def _loop_timer(call: Callable[[], Any], target_ms: float) -> Callable[[], float]:
    """ms per call of ``call`` (a Python loop, numpy in and out), over ~``target_ms`` per sample."""
    call()  # warm-up

    def run(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - t) * 1e3 / n

    return _calibrated(run, target_ms)


def mcopt_timer(cm: Any, feed: dict[str, np.ndarray], target_ms: float) -> Callable[[], float]:
    """``CompiledModel.run`` as a user calls it (timed like onnxruntime's ``session.run``)."""
    x = list(feed.values())
    return _loop_timer(lambda: cm.run(*x), target_ms)


def ort_timer(sess: Any, feed: dict[str, np.ndarray], target_ms: float) -> Callable[[], float]:
    names = [i.name for i in sess.get_inputs()]
    f = {k: v for k, v in zip(names, feed.values())}
    return _loop_timer(lambda: sess.run(None, f), target_ms)


#: pause between two engines' samples: onnxruntime's and TVM's pools spin-wait after a run, and
#: a LeNet-sized sample taken while the other pool still spins measured 10-25x too slow
PAUSE_S = 0.05


def alternate(timers: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Round-robin samples of every timer (the machine is shared: contenders see the same load)."""
    res: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(rounds):
        for k, fn in timers.items():
            time.sleep(PAUSE_S)  # let the previous engine's spinning worker threads go to sleep
            res[k].append(fn())
    return res


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:240] if msg else ''}"


# --- the benchmark -------------------------------------------------------------------------------
def bench_model(
    name: str,
    rewrites: list[str] | None = None,
    *,
    compile: bool = True,
    param_ratio: float = 0.25,
    lenet_budget: float = 0.1,
    n_calib: int = 8,
    n_eval: int = 4,
    n_digits: int | None = None,
    rounds: int = 5,
    target_ms: float = 200.0,
    log: Callable[[str], None] = print,
    case: Case | None = None,
) -> list[dict[str, Any]]:
    """One row per rewrite (plus the ``original`` row) for model `name`; see the module docstring.

    ``compile=False`` skips building, timing and onnxruntime (sizes and errors only)."""
    from mcopt.analysis.cost import graph_stats
    from mcopt.errors import MCoptError
    from mcopt.onnx_io import export_model
    from mcopt.pass_manager import PassContext, PassManager

    t0 = time.perf_counter()
    case = case or load_case(name, n_calib, n_eval, n_digits)
    log(
        f"[{name}] loaded, baseline evaluated on {len(case.evals)} input(s) in {time.perf_counter() - t0:.1f} s"
    )
    specs = rewrite_specs(name, param_ratio, lenet_budget)
    labels = list(specs) if rewrites is None else [r for r in specs if r.split("@")[0] in rewrites]
    unknown = [r for r in rewrites or [] if r not in REWRITES]
    if unknown:
        raise ValueError(f"unknown rewrite(s) {unknown}; choose from {list(REWRITES)}")
    s0 = graph_stats(case.base)
    feed0 = case.evals[0]
    base_row: dict[str, Any] = {
        "model": name,
        "rewrite": "original",
        "spec": "cleanup",
        "params": s0.params,
        "macs": s0.macs,
        "params_x": 1.0,
        "macs_x": 1.0,
        **errors(case, case.ref),
    }
    base_cm = ort_orig = None
    base_samples: list[float] = []
    ort_samples: list[float] = []
    if compile:
        from mcopt.targets import build

        t = time.perf_counter()
        base_cm = build(case.base, "cpu")
        base_row["compile_s"] = time.perf_counter() - t
        base_row["tvm_vs_ir"] = _check(base_cm.run(feed0), case.base, feed0)
        sess = ort_session(case.proto)
        base_row["ort_vs_ir"] = _check(_ort_run(sess, feed0), case.base, feed0)
        ort_orig = ort_timer(sess, feed0, target_ms)
        base_t = mcopt_timer(base_cm, feed0, target_ms)
        log(f"[{name}] baseline compiled in {base_row['compile_s']:.1f} s")
    rows = [base_row]
    for label in labels:
        spec = specs[label]
        row: dict[str, Any] = {"model": name, "rewrite": label, "spec": spec}
        rows.append(row)
        g = case.base.copy()
        target = None
        if compile:
            from mcopt.targets.services import services_for

            target = services_for("cpu")
        ctx = PassContext(calib=case.calib, seed=0, log=lambda m: None, target=target)
        t = time.perf_counter()
        try:
            g, report = PassManager([spec]).run(g, ctx)
        except MCoptError as e:
            row["note"] = f"pass failed: {_one_line(e)}"
            log(f"[{name}] {label}: {row['note']}")
            continue
        row["pass_s"] = time.perf_counter() - t
        summary = ctx.summary  # the (one) pass's per-layer summary, None when it recorded none
        row["layers"] = [r.to_dict() for r in summary.layers] if summary else []
        row["skipped"] = dict(summary.skipped) if summary else {}
        ranks = sorted({r["rank"] for r in row["layers"] if r.get("rank") is not None})
        row["ranks"] = ranks
        if not report.changed:
            row["note"] = f"no change: {_why(row['skipped'])}"
            log(f"[{name}] {label}: {row['note']}")
            continue
        s = graph_stats(g)
        row.update(params=s.params, macs=s.macs, params_x=s0.params / s.params)
        row["macs_x"] = s0.macs / s.macs
        row["rewritten_layers"] = len(row["layers"])
        row.update(errors(case, evaluate(g, case)))
        log(
            f"[{name}] {label}: {len(row['layers'])} layer(s), params {s0.params / 1e6:.2f}M -> "
            f"{s.params / 1e6:.2f}M, MACs {s0.macs / 1e9:.3f}G -> {s.macs / 1e9:.3f}G, "
            f"logits rel err {row['logits_max_rel']:.3g}, pass {row['pass_s']:.1f} s"
        )
        if not compile:
            continue
        timers = {"base": base_t, "ort_orig": ort_orig}
        try:
            t = time.perf_counter()
            cm = build(g, "cpu")
            row["compile_s"] = time.perf_counter() - t
            row["tvm_vs_ir"] = _check(cm.run(feed0), g, feed0)
            timers["mcopt"] = mcopt_timer(cm, feed0, target_ms)
        except Exception as e:  # a lowering/compile failure is a result, not a crash
            row["note"] = f"compile failed: {_one_line(e)}"
            log(f"[{name}] {label}: {row['note']}")
        try:
            sess_new = ort_session(export_model(g))
            row["ort_vs_ir"] = _check(_ort_run(sess_new, feed0), g, feed0)
            if not label.startswith("winograd"):  # exported back to a plain Conv: the original
                timers["ort_new"] = ort_timer(sess_new, feed0, target_ms)
        except Exception as e:
            row["ort_note"] = f"onnxruntime: {_one_line(e)}"
            log(f"[{name}] {label}: {row['ort_note']}")
        res = alternate(timers, rounds)
        base_samples += res["base"]
        ort_samples += res["ort_orig"]
        if "mcopt" in res:
            row["mcopt_ms"] = min(res["mcopt"])
            row["mcopt_med_ms"] = float(np.median(res["mcopt"]))
            row["x_vs_base"] = min(res["base"]) / row["mcopt_ms"]
            row["x_vs_ort"] = min(res["ort_orig"]) / row["mcopt_ms"]
        if "ort_new" in res:
            row["ort_new_ms"] = min(res["ort_new"])
        log(
            f"[{name}] {label}: mcopt {row.get('mcopt_ms', float('nan')):.3f} ms "
            f"(base {min(res['base']):.3f}, ORT {min(res['ort_orig']):.3f}), "
            f"compile {row.get('compile_s', float('nan')):.1f} s"
        )
        del timers
    if compile:
        if not base_samples:  # nothing rewritten: time the baseline alone
            res = alternate({"base": base_t, "ort_orig": ort_orig}, rounds)
            base_samples, ort_samples = res["base"], res["ort_orig"]
        base_row.update(
            mcopt_ms=min(base_samples),
            mcopt_med_ms=float(np.median(base_samples)),
            x_vs_base=1.0,
            x_vs_ort=min(ort_samples) / min(base_samples),
            ort_orig_ms=min(ort_samples),
            ort_new_ms=min(ort_samples),
        )
    return rows


def _why(skipped: dict[str, str], most: int = 3) -> str:
    """The pass's skip reasons, grouped: 'reason (layers a, b)'."""
    if not skipped:
        return "no applicable layer"
    by: dict[str, list[str]] = {}
    for layer, why in skipped.items():
        by.setdefault(why, []).append(layer)
    parts = [
        f"{why} ({', '.join(ls[:4])}{', ...' if len(ls) > 4 else ''})"
        for why, ls in list(by.items())[:most]
    ]
    return "; ".join(parts) + (f"; {len(by) - most} more reason(s)" if len(by) > most else "")


def _ort_run(sess: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: v for k, v in zip(names, feed.values())})


def _check(got: list[np.ndarray], graph: Any, feed: dict[str, np.ndarray]) -> float:
    """Max rel error of a compiled/exported module's outputs vs the reference interpreter."""
    from mcopt.interpreter import run
    from mcopt.pass_manager import output_errors

    return output_errors(run(graph, feed), got)[1]


# --- output --------------------------------------------------------------------------------------
def _fmt_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d = dict(r)
        d["spec"] = f"`{r['spec']}`"
        if "params" not in r:
            d["params_s"] = (
                "no change" if str(r.get("note", "")).startswith("no change") else "failed"
            )
        else:
            d["params_s"] = f"{r['params'] / 1e6:.3f} M ({r['params_x']:.2f}x)"
            d["macs_s"] = f"{r['macs'] / 1e6:.2f} M ({r['macs_x']:.2f}x)"
        if r.get("ranks"):
            rk = r["ranks"]
            d["ranks_s"] = str(rk[0]) if len(rk) == 1 else f"{rk[0]}-{rk[-1]}"
        if "accuracy" in r:
            d["acc_s"] = f"{r['accuracy']:.3f}"
        out.append(d)
    return out


def tables(rows: list[dict[str, Any]], header: str) -> str:
    """One markdown table per model, notes (no change / failures) below each."""
    parts = [header]
    for model in dict.fromkeys(r["model"] for r in rows):
        mrows = _fmt_rows([r for r in rows if r["model"] == model])
        lenet = model == "lenet5"
        cols = [
            ("spec", "rewrite (pass spec)", ""),
            ("ranks_s", "ranks", ""),
            ("params_s", "params", ""),
            ("macs_s", "MACs", ""),
            ("mcopt_ms", "mcopt ms (min)", ".3f"),
            ("x_vs_base", "speedup vs unrewritten", ".2f"),
            ("x_vs_ort", "speedup vs ORT original", ".2f"),
            ("ort_new_ms", "ORT rewritten ms", ".3f"),
        ]
        if lenet:
            cols += [("acc_s", "top-1 acc (odd digits)", ""), ("top1_agree", "top-1 agree", ".3f")]
        cols += [
            ("out_max_abs", "out max abs", ".2e"),
            ("out_max_rel", "out max rel", ".2e"),
        ]
        if not lenet:
            cols += [
                ("logits_max_rel", "logits max rel", ".2e"),
                ("top1_agree", "top-1 agree", ".2f"),
            ]
        base = next((r for r in mrows if r["rewrite"] == "original"), {})
        ort = base.get("ort_orig_ms")
        parts.append(
            f"\n### {model}"
            + (f" (onnxruntime on the original: {ort:.3f} ms)" if ort else "")
            + "\n\n"
            + markdown_table(mrows, cols)
        )
        notes = [f"- `{r['rewrite']}`: {r['note']}" for r in mrows if r.get("note")]
        notes += [f"- `{r['rewrite']}`: {r['ort_note']}" for r in mrows if r.get("ort_note")]
        checks = [max((r.get(k) or 0.0) for r in mrows) for k in ("tvm_vs_ir", "ort_vs_ir")]
        notes.append(
            f"- compiled (TVM) vs reference interpreter, max rel over rows: {checks[0]:.1e}; "
            f"onnxruntime on the exported rewrite vs interpreter: {checks[1]:.1e}"
        )
        parts.append("\n" + "\n".join(notes) + "\n")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--rewrites", default="", help="comma-separated labels (default: all)")
    ap.add_argument("--param-ratio", type=float, default=0.25, help="VGG/AlexNet fixed compression")
    ap.add_argument("--lenet-budget", type=float, default=0.1, help="LeNet-5 max_rel_error")
    ap.add_argument("--calib", type=int, default=8, help="random calibration inputs (VGG/AlexNet)")
    ap.add_argument("--eval", type=int, default=4, help="held-out random inputs (VGG/AlexNet)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per rewrite")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 2 eval inputs, 4 calib inputs")
    ap.add_argument("--no-compile", action="store_true", help="sizes and errors only")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    from rich.console import Console

    console = Console()
    if args.quick:
        args.rounds, args.eval, args.calib = (
            min(args.rounds, 2),
            min(args.eval, 2),
            min(args.calib, 4),
        )
    rewrites = [r.strip() for r in args.rewrites.split(",") if r.strip()] or None
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    from common import THREADS

    header = (
        "## Architecture rewrites and Winograd: size, latency, error\n\n"
        f"mcopt CPU target, batch 1, {THREADS} threads; latency = min over {args.rounds} "
        "alternating rounds (engines alternate so that any load from other jobs hits them alike); speedups are ratios of "
        "minima from the same rounds. VGG-19/AlexNet: seeded random weights, fixed "
        f"param_ratio={args.param_ratio}, {args.calib} random calibration and {args.eval} held-out "
        "random inputs; LeNet-5: trained, calibrated on the even-index MNIST digits "
        f"(max_rel_error={args.lenet_budget}, or the fixed ratio for `@ratio`), accuracy on the "
        "500 odd-index digits.\n"
    )
    for model in args.models:
        t = time.perf_counter()
        rows += bench_model(
            model,
            rewrites,
            compile=not args.no_compile,
            param_ratio=args.param_ratio,
            lenet_budget=args.lenet_budget,
            n_calib=args.calib,
            n_eval=args.eval,
            rounds=args.rounds,
            log=lambda m: console.log(m, markup=False),
        )
        console.log(f"{model}: done in {time.perf_counter() - t:.0f} s", markup=False)
        md = tables(rows, header)
        write_outputs(Path(args.out), "rewrites", rows, md)  # after every model: partial results
    print(md, flush=True)
    console.log(f"all done in {time.perf_counter() - t_all:.0f} s; wrote {args.out}/rewrites.md")


if __name__ == "__main__":
    main()
