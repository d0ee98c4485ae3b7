"""A model from another tool: scikit-learn's ``MLPClassifier`` exported by skl2onnx, int8 by mcopt.

scikit-learn trains a 64-128-64-10 MLP on its 8x8 digits (70 / 30 split); skl2onnx exports it
(``MatMul`` + ``Add`` per layer, a ``Cast`` in front, ``ArgMax`` and the ``ai.onnx.ml``
``ArrayFeatureExtractor`` for the label; mcopt does not import the latter: the graph is cut at the
``probabilities`` output, whose argmax is the label). mcopt: ``cleanup`` (the adds become the dense layers' biases) + ``quantize-int8``
calibrated on 64 training digits; the three layers then run as one dense-chain kernel. Test
accuracy of the argmax on the 540 test digits no pass saw; latency batch 1 beside onnxruntime fp32
on the same graph and onnxruntime's own int8 (``quantize_static``, QDQ, per-channel), alternating
bursts.

Needs ``pip install skl2onnx`` (not a dependency of mcopt: without it this says so and exits).

Run: ``python benchmarks/bench_sklearn.py``; writes bench-out/sklearn.md and .json.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    try:
        import onnx
        from skl2onnx import to_onnx
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
    except ImportError as e:
        print(f"bench_sklearn: needs scikit-learn and skl2onnx ({e}); pip install skl2onnx")
        return 1
    from bench_cpu import interleaved
    from bench_quant import ort_int8
    from common import markdown_table, ort_session, write_outputs

    import mcopt

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=400, random_state=0)
        clf.fit(xtr, ytr)
    tmp = Path(tempfile.mkdtemp())
    full = to_onnx(clf, xtr[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    onnx.save(full, tmp / "full.onnx")
    name = full.graph.input[0].name
    onnx.utils.extract_model(
        str(tmp / "full.onnx"), str(tmp / "mlp.onnx"), [name], ["probabilities"]
    )
    proto = onnx.load(tmp / "mlp.onnx")
    calib = [{name: xtr[i : i + 1]} for i in range(64)]
    res = mcopt.optimize(
        tmp / "mlp.onnx", target="cpu", passes=["cleanup", "quantize-int8"], calib=calib
    )
    s32 = ort_session(proto)
    try:
        s8 = ort_session(ort_int8(proto, calib, tmp))
    except Exception as e:  # noqa: BLE001 - onnxruntime's quantizer; reported in the table
        s8, why = None, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"

    def acc(fn: Any) -> float:
        return float(
            np.mean([int(np.argmax(fn(xte[i : i + 1]))) == yte[i] for i in range(len(xte))])
        )

    engines = {
        "onnxruntime fp32": lambda v: s32.run(None, {name: v})[0],
        "onnxruntime int8 (QDQ, per-channel)": lambda v: s8.run(None, {name: v})[0],
        "mcopt int8": lambda v: res.compiled.run(v)[0],
    }
    failed = {}
    if s8 is None:
        failed["onnxruntime int8 (QDQ, per-channel)"] = why
        del engines["onnxruntime int8 (QDQ, per-channel)"]
    v = xte[:1]
    times = interleaved(
        {k: (lambda f=f: f(v)) for k, f in engines.items()}, rounds=7, budget_s=0.3, max_runs=3000
    )
    base = times["onnxruntime fp32"]["median_ms"]
    rows = [
        {
            "engine": k,
            "acc": acc(f),
            "min_us": times[k]["min_ms"] * 1e3,
            "median_us": times[k]["median_ms"] * 1e3,
            "vs": base / times[k]["median_ms"],
        }
        for k, f in engines.items()
    ]
    rows.insert(0, {"engine": "scikit-learn (predict)", "acc": float(clf.score(xte, yte))})
    rows += [{"engine": f"{k}: failed ({v})"} for k, v in failed.items()]
    md = markdown_table(
        rows,
        [("engine", "engine", ""), ("acc", "test acc", ".3f"), ("min_us", "min µs", ".2f"),
         ("median_us", "median µs", ".2f"), ("vs", "vs ort fp32 (medians)", ".2f")],
    )  # fmt: skip
    kernels = dict(getattr(res.compiled, "choices", {}) or {})
    print(md)
    print(f"mcopt kernel choices: {kernels}")
    write_outputs(Path("bench-out"), "sklearn", rows, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
