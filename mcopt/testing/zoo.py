"""A small model zoo for tests, examples and benchmarks (not part of the compiler's API).

The module imports only ``onnx`` and ``numpy`` (no TVM, no torch, no mcopt compiler module), so it is
cheap; drawing data-dependent weights imports ``onnxruntime`` (see below).

Three kinds of models:

* **Architecture copies shipped in the onnx wheel** (``onnx/backend/test/data/light/light_*.onnx``):
  AlexNet, VGG-19, SqueezeNet, ResNet-50, ShuffleNet, GoogLeNet (Inception-v1), Inception-v2,
  DenseNet-121 and ZFNet-512. In the wheel their large weights are ``ConstantOfShape`` nodes (every
  weight one constant value) and the model is IR version 3. :func:`light_model` turns one into a normal
  model with seeded random weights whose statistics keep activations unit-scale through the whole
  network (see :func:`randomize_weights`).
* **Generated CNNs** built with :mod:`onnx.helper` (opset 13): :func:`mobilenet_v2`,
  :func:`resnet18_like` and :func:`tiny_cnn`; the first two become CI-sized with a small
  ``width_mult`` / ``width`` and ``resolution=32``.
* **Trained LeNets on real MNIST digits** (``mcopt/data``, produced by ``benchmarks/train_lenet.py``):
  :func:`lenet5_path`, :func:`lenet300_path`, :func:`mnist_test_set`, :func:`lenet_metrics`.

How random weights are drawn
----------------------------
Each weight's role is read from how the graph *uses* it (the op and input index that consume it,
looking through Reshape/Unsqueeze/... that only re-view a constant), never from its name:

* Conv / Gemm / MatMul weights: He-normal, ``std = sqrt(2 / fan_in)`` with the fan-in taken from the
  shape the consumer sees (``C_in/group * kh * kw`` for a conv, the contraction size for Gemm/MatMul).
* Conv / Gemm biases: ``N(0, 0.02^2)``.
* BatchNormalization: ``scale ~ U(0.5, 1.5)``, ``bias ~ N(0, 0.1^2)``, and ``mean`` / ``var`` set to
  the measured per-channel mean / variance of the BN input (jittered: ``mean + 0.1 sd N(0,1)``,
  ``var * U(0.8, 1.25)``), so every BN really normalizes and its output is unit-scale.
* A constant multiplied in (``Mul``, e.g. the post-BN scale of DenseNet / Inception-v2):
  ``U(0.5, 1.5)``; a constant added (``Add`` / ``Sum``): ``N(0, 0.1^2)``.
* Networks without BN (AlexNet, VGG, ...): a conv with a bias whose output goes straight into an
  activation, and that is followed by more layers, gets LSUV-style data-dependent init: its He
  weights are multiplied by one gain per layer so the pre-activation has unit variance, and its bias
  centres every channel (Kraehenbuehl et al. 2016; Mishkin & Matas 2016). Without this the signal
  shrinks or becomes input-independent through 20+ conv/ReLU layers.
* The classifier (the one Conv/Gemm the logits come from through ReLU/pooling/reshapes only) is
  scaled so the logits have std :data:`LOGIT_STD` (3): softmax neither one-hot nor uniform.
* Anything else (Clip bounds, reshape shapes, ...) keeps its value.

Measured statistics come from one forward pass with onnxruntime (CPU, one thread) on a seeded
standard-normal input, done in graph order while the weights are drawn: the nodes up to the next
draw that needs an activation (a BN's input, a fitted conv's output) run as one onnxruntime model, so
each BN sees the already-normalized output of the BNs before it. Measured values are rounded to 4
significant digits so BLAS differences between machines do not change the weights. Cost: about one
inference of the model plus drawing the weights (~1 s for ResNet-50 at 224x224 on one core; VGG-19,
mostly its 120 M fully-connected weights, ~7 s).

The float parameters that the light models store as real initializers (a few biases and BN statistics)
were fitted to the trained weights, which the wheel does not ship; they are re-drawn like the
``ConstantOfShape`` ones (with ``keep_stored=True`` they are kept).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "LIGHT_MODELS",
    "light_model",
    "light_model_path",
    "mobilenet_v2",
    "resnet18_like",
    "tiny_cnn",
    "randomize_weights",
    "lenet5_path",
    "lenet300_path",
    "mnist_test_set",
    "lenet_metrics",
    "data_dir",
    "save_model",
    "MNIST_MEAN",
    "MNIST_STD",
]

#: Names accepted by :func:`light_model` (file ``light_<name>.onnx`` in the onnx wheel).
LIGHT_MODELS: list[str] = [
    "bvlc_alexnet",
    "vgg19",
    "squeezenet",
    "resnet50",
    "shufflenet",
    "inception_v1",
    "inception_v2",
    "densenet121",
    "zfnet512",
]

#: MNIST normalization used by the trained LeNets: ``x = (pixel / 255 - MNIST_MEAN) / MNIST_STD``.
MNIST_MEAN: float = 0.1307
MNIST_STD: float = 0.3081

_DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # mcopt/data


# --------------------------------------------------------------------------------------------------
# file helpers


def data_dir() -> Path:
    """The folder with the zoo's shipped files (``mcopt/data``)."""
    return _DATA_DIR


def save_model(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write ``proto`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def light_model_path(name: str) -> Path:
    """Path of the original ``light_<name>.onnx`` (ConstantOfShape weights, IR 3) in the onnx wheel."""
    if name not in LIGHT_MODELS:
        raise KeyError(f"unknown light model {name!r}; choose one of {', '.join(LIGHT_MODELS)}")
    path = Path(onnx.__file__).resolve().parent / "backend/test/data/light" / f"light_{name}.onnx"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: this onnx wheel does not ship the light models"
        )
    return path


def lenet5_path() -> Path:
    """LeNet-5 trained on real MNIST digits; input ``input`` (N,1,28,28) normalized, output logits (N,10)."""
    return _DATA_DIR / "lenet5.onnx"


def lenet300_path() -> Path:
    """LeNet-300-100 (784-300-100-10 MLP) trained on MNIST; same input/output as :func:`lenet5_path`."""
    return _DATA_DIR / "lenet300.onnx"


def mnist_test_set(normalized: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The 1,000-image MNIST test split the LeNets were scored on.

    Returns ``(x, y)``: ``x`` float32 (1000,1,28,28) normalized as ``(p/255 - 0.1307) / 0.3081``
    (raw uint8 pixels with ``normalized=False``), ``y`` int64 (1000,).
    """
    with np.load(_DATA_DIR / "mnist_test.npz") as npz:
        pixels = npz["x"]
        labels = npz["y"].astype(np.int64)
    x = pixels.reshape(-1, 1, 28, 28)
    if not normalized:
        return x, labels
    xf = (x.astype(np.float32) / np.float32(255.0) - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    return xf.astype(np.float32), labels


def lenet_metrics() -> dict[str, dict[str, Any]]:
    """Recorded test accuracies of the trained LeNets (``mcopt/data/lenet_metrics.json``)."""
    with open(_DATA_DIR / "lenet_metrics.json", encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------------
# data-dependent weight initialization (a forward pass with onnxruntime)


_PASS_THROUGH = {"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose", "Identity", "Cast"}
_ACTIVATIONS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Elu"}
_BN_INPUTS = 4
_HOMOGENEOUS = {
    "Relu", "Dropout", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
    "GlobalAveragePool", "AveragePool", "MaxPool", "GlobalMaxPool",
}  # fmt: skip
#: Standard deviation of the logits (on a standard-normal input) the classifier layer is scaled to.
LOGIT_STD: float = 3.0
_MIN_POSITIONS = 16  # fewer output positions than this: a conv bias is not fitted to the data


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _round_sig(x: np.ndarray, digits: int = 4) -> np.ndarray:
    """Round to ``digits`` significant digits, so BLAS rounding differences between machines do not
    change the drawn statistics."""
    x = np.asarray(x, dtype=np.float64)
    mag = np.where(x == 0, 1.0, 10.0 ** np.floor(np.log10(np.abs(np.where(x == 0, 1.0, x)))))
    return np.round(x / mag, digits - 1) * mag


def _channel_stats(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel (axis 1) mean, variance and number of samples of an activation."""
    axes = (0,) + tuple(range(2, y.ndim))
    count = int(np.prod([y.shape[a] for a in axes]))
    y64 = y.astype(np.float64)
    return y64.mean(axis=axes), y64.var(axis=axes), count


def _session_options() -> Any:
    import onnxruntime as ort  # imported here: importing the zoo stays cheap

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # one thread: the same sums on every machine
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class _Randomizer:
    """Draws parameters in graph order, running the graph with onnxruntime where a draw needs
    activations.

    BatchNormalization statistics are the measured per-channel mean/variance of the BN input (on a
    standard-normal input), so every BN really normalizes; a conv bias whose output goes straight
    into an activation centres that output (data-dependent init, Kraehenbuehl et al. 2016).

    The walk is in graph order; nodes whose output no draw has needed yet are queued, and when a
    draw needs an activation the queue runs as one onnxruntime model (the values it needs as inputs,
    everything used later as outputs). So every BN sees the output of the BNs before it with their
    drawn statistics, and the random stream is consumed in the same order whatever is measured.
    """

    def __init__(
        self, model: onnx.ModelProto, params: dict[str, np.ndarray], seed: int, batch: int = 1
    ) -> None:
        self.graph = model.graph
        self.opset_import = list(model.opset_import)
        self.rng = np.random.default_rng(seed)
        self.batch = batch
        self.params = params  # name -> placeholder array (gives shape, dtype, fill value)
        self.out: dict[str, np.ndarray] = {}
        self.env: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in (
            list(inferred.graph.value_info)
            + list(inferred.graph.input)
            + list(inferred.graph.output)
        ):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim
                )
        for init in self.graph.initializer:
            if init.name not in params:
                self.env[init.name] = numpy_helper.to_array(init)
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.graph.node:
            for i, x in enumerate(node.input):
                if x:
                    self.consumers.setdefault(x, []).append((node, i))
        self.roles = {p: self._role(p, 0) for p in params}
        # values from which a Conv/Gemm/MatMul is reachable (i.e. not in the classifier tail)
        self.upstream: set[str] = set()
        for node in reversed(self.graph.node):
            for o in node.output:
                if any(
                    u.op_type in ("Conv", "Gemm", "MatMul") or (set(u.output) & self.upstream)
                    for u, _ in self.consumers.get(o, [])
                ):
                    self.upstream.add(o)
        # the onnxruntime part: queued nodes, the activations computed so far
        self.pending: list[onnx.NodeProto] = []
        self.activations: set[str] = set()
        self.last_use: dict[str, int] = {}
        self.keep: set[str] = set()
        self.so: Any = None

    # ---- roles

    def _role(self, name: str, depth: int) -> tuple[str, int, onnx.NodeProto | None, str]:
        """(op, input index, consumer node, consumer-side value name) of the first real use."""
        for node, idx in self.consumers.get(name, []):
            if node.op_type in _PASS_THROUGH and idx == 0 and depth < 8:
                return self._role(node.output[0], depth + 1)
            return node.op_type, idx, node, name
        return "", -1, None, name

    def _data_dependent(self, name: str) -> bool:
        op, idx, node, _ = self.roles[name]
        if op == "BatchNormalization" and 1 <= idx <= _BN_INPUTS:
            return True
        if op == "Conv" and idx == 2 and node is not None:
            return self._feeds_activation(node) and node.output[0] in self.upstream
        return False

    def _feeds_activation(self, node: onnx.NodeProto) -> bool:
        uses = self.consumers.get(node.output[0], [])
        return bool(uses) and all(u.op_type in _ACTIVATIONS for u, _ in uses)

    def _draw(self, name: str) -> np.ndarray:
        """Draw a parameter whose value does not depend on activations, by its role."""
        ph = self.params[name]
        op, idx, node, view = self.roles[name]
        shape = ph.shape
        if ph.dtype != np.float32:
            return ph
        rng = self.rng
        cshape = self.shapes.get(view, tuple(shape))
        if op == "Conv" and idx == 1:
            fan_in = int(np.prod(cshape[1:])) if len(cshape) > 1 else int(np.prod(shape))
            return (rng.standard_normal(shape) * math.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
        if op in ("Gemm", "MatMul") and idx == 1:
            if op == "Gemm" and int(_attr(node, "transB", 0)):
                fan_in = cshape[-1]
            else:
                fan_in = cshape[-2] if len(cshape) >= 2 else cshape[0]
            return (rng.standard_normal(shape) * math.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
        if (op == "Conv" and idx == 2) or (op == "Gemm" and idx == 2):
            return (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if op == "Mul":
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if op in ("Add", "Sum"):
            return (rng.standard_normal(shape) * 0.1).astype(np.float32)
        return ph  # unknown role: keep the value

    def _set_param(self, name: str, value: np.ndarray) -> np.ndarray:
        value = np.ascontiguousarray(value, dtype=self.params[name].dtype).reshape(
            self.params[name].shape
        )
        self.out[name] = value
        self.env[name] = value
        return value

    # ---- walking

    def run(self) -> dict[str, np.ndarray]:
        nodes = list(self.graph.node)
        last = -1
        for k, node in enumerate(nodes):
            if any(x in self.params and self._data_dependent(x) for x in node.input):
                last = k
        logits, tail = self._classifier()
        if tail is not None:
            last = len(nodes) - 1
            self.keep.add(logits)
        for k, node in enumerate(nodes):
            for x in node.input:
                self.last_use[x] = k
        if last >= 0:
            init_names = {i.name for i in self.graph.initializer}
            rng = np.random.default_rng(12345)  # calibration input, independent of the seed
            for vi in self.graph.input:
                if vi.name in init_names or vi.name in self.params:
                    continue
                shape = [self.batch if d < 0 else d for d in self.shapes.get(vi.name, ())]
                if not shape:
                    raise ValueError(f"graph input {vi.name!r} has no static shape")
                self.env[vi.name] = rng.standard_normal(shape).astype(np.float32)
        for k, node in enumerate(nodes):
            if node.op_type == "ConstantOfShape" and node.output[0] in self.params:
                continue
            for x in node.input:
                if x in self.params and x not in self.out and not self._data_dependent(x):
                    self._set_param(x, self._draw(x))
            if k > last:  # past the last data-dependent draw: only plain draws remain
                for x in node.input:
                    if x in self.params and x not in self.out:
                        self._set_param(x, self._draw(x))
                continue
            if node.op_type == "BatchNormalization":
                self._batch_norm(k, node)
            elif node.op_type == "Conv" and self._fitted_bias(node):
                self._conv_with_fitted_bias(k, node)
                continue  # its output is computed there
            self._queue(node)
        if tail is not None:
            # scale the classifier so the logits have std LOGIT_STD (the tail is homogeneous)
            y = self._values(len(nodes), [logits])[logits]
            std = float(np.std(y.astype(np.float64)))
            if std > 0:
                factor = float(_round_sig(np.array(LOGIT_STD / std)))
                for x in tail:
                    self._set_param(x, self.out[x] * np.float32(factor))
        for name, ph in self.params.items():  # never reached (dead code): keep the value
            self.out.setdefault(name, ph)
        return self.out

    def _fitted_bias(self, node: onnx.NodeProto) -> bool:
        """A Conv whose bias is drawn from its measured output (see :meth:`_data_dependent`)."""
        if len(node.input) < 3 or not node.input[2]:
            return False
        return node.input[2] in self.params and node.input[2] not in self.out

    def _batch_norm(self, k: int, node: onnx.NodeProto) -> None:
        """Draw a BN's parameters, the running statistics from its measured input."""
        todo = [x for x in node.input[1:5] if x in self.params and x not in self.out]
        scale = self.env.get(node.input[1])
        if todo or scale is None:
            mean_in, var_in, _ = _channel_stats(self._values(k, [node.input[0]])[node.input[0]])
        else:  # nothing to draw: consume the same random numbers, without running the graph
            mean_in = var_in = np.zeros(scale.size)
        c = mean_in.shape[0]
        rng = self.rng
        sd = np.sqrt(var_in)
        drawn = [
            rng.uniform(0.5, 1.5, c),  # scale
            rng.standard_normal(c) * 0.1,  # bias
            _round_sig(mean_in + 0.1 * sd * rng.standard_normal(c)),  # running mean
            _round_sig(np.maximum(var_in * rng.uniform(0.8, 1.25, c), 1e-4)),  # running var
        ]
        for name, d in zip(node.input[1:5], drawn):
            if name in self.params and name not in self.out:
                self._set_param(name, d)

    def _conv_with_fitted_bias(self, k: int, node: onnx.NodeProto) -> None:
        """Run the conv without its bias, fit the bias (and a weight gain) to the output, and add
        them to the measured output."""
        w_name, b_name = node.input[1], node.input[2]
        raw = onnx.NodeProto()
        raw.CopyFrom(node)
        del raw.input[2:]
        raw.output[0] = f"{node.output[0]}/zoo_calibration.no_bias"
        raw.name = raw.output[0]
        self._queue(raw)
        y = self._values(k, [raw.output[0]])[raw.output[0]]
        del self.env[raw.output[0]]
        self.activations.discard(raw.output[0])
        mean, var, count = _channel_stats(y)
        if count >= _MIN_POSITIONS:
            # LSUV-style: one gain per layer for unit pre-activation variance, and a bias
            # that centres every channel (so ReLU keeps about half of each channel)
            gain = 1.0
            if w_name in self.params and len(self.consumers.get(w_name, [])) == 1:
                gain = float(_round_sig(np.array(1.0 / math.sqrt(max(var.mean(), 1e-12)))))
                self._set_param(w_name, self.env[w_name] * np.float32(gain))
                y = y * np.float32(gain)
            sd = np.sqrt(var) * gain
            bias = -mean * gain + 0.1 * sd * self.rng.standard_normal(mean.shape)
            self._set_param(b_name, _round_sig(bias))
        else:
            self._set_param(b_name, self.rng.standard_normal(mean.shape) * 0.02)
        b = self.env[b_name]
        y = y + b.reshape((1, -1) + (1,) * (y.ndim - 2))
        self.env[node.output[0]] = y.astype(np.float32)
        self.activations.add(node.output[0])

    def _queue(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Reshape" and self.batch != 1 and not int(_attr(node, "allowzero", 0)):
            shape = self.env.get(node.input[1]) if len(node.input) > 1 else None
            if shape is not None and shape.ndim == 1 and shape.size and shape[0] == 1:
                # a fixed-batch reshape constant (the light models): keep the calibration batch
                name = f"{node.input[1]}/zoo_calibration.any_batch"
                self.env[name] = np.concatenate([[0], shape[1:]]).astype(shape.dtype)
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                copy.input[1] = name
                node = copy
        self.pending.append(node)

    def _values(self, k: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The activations ``names``, running the queued nodes (before node ``k``) if needed."""
        if any(x not in self.env for x in names):
            self._flush(k, names)
        missing = [x for x in names if x not in self.env]
        if missing:
            raise ValueError(f"zoo weight init: value {missing[0]!r} is not computed")
        return {x: self.env[x] for x in names}

    def _flush(self, k: int, wanted: Sequence[str]) -> None:
        """Run the queued nodes with onnxruntime; keep what node ``k`` and later nodes use."""
        import onnxruntime as ort

        if not self.pending:
            return
        produced: list[str] = []
        inputs: list[str] = []
        seen: set[str] = set()
        for node in self.pending:
            for x in node.input:
                if x and x not in seen:
                    seen.add(x)
                    if x not in self.env:
                        raise ValueError(f"zoo weight init: value {x!r} is not computed")
                    inputs.append(x)
            for o in node.output:
                if o:
                    seen.add(o)
                    produced.append(o)
        outputs = [
            o for o in produced if o in wanted or self.last_use.get(o, -1) >= k or o in self.keep
        ]
        graph = helper.make_graph(
            self.pending,
            "mcopt_zoo_calibration",
            [
                helper.make_tensor_value_info(
                    x, helper.np_dtype_to_tensor_dtype(self.env[x].dtype), None
                )
                for x in inputs
            ],
            [helper.make_empty_tensor_value_info(o) for o in outputs],
        )
        model = helper.make_model(graph, opset_imports=self.opset_import)
        model.ir_version = 8
        if self.so is None:
            self.so = _session_options()
        sess = ort.InferenceSession(
            model.SerializeToString(), self.so, providers=["CPUExecutionProvider"]
        )
        results = sess.run(outputs, {x: self.env[x] for x in inputs})
        self.pending = []
        for o, v in zip(outputs, results):
            self.env[o] = v
            self.activations.add(o)
        for x in list(self.activations):  # activations no node from k on reads
            if self.last_use.get(x, -1) < k and x not in self.keep and x not in wanted:
                del self.env[x]
                self.activations.discard(x)

    def _source(self, name: str, producer: dict[str, onnx.NodeProto]) -> str:
        """The parameter a constant comes from through view ops (Reshape of a weight, ...)."""
        for _ in range(8):
            node = producer.get(name)
            if name in self.params or node is None or node.op_type not in _PASS_THROUGH:
                break
            name = node.input[0]
        return name

    def _classifier(self) -> tuple[str, list[str] | None]:
        """The logits (first output, or the input of a final Softmax) and the one Conv/Gemm/MatMul
        they come from through positively homogeneous ops only (None if there is no such layer)."""
        producer = {o: n for n in self.graph.node for o in n.output}
        if not self.graph.output:
            return "", None
        logits = self.graph.output[0].name
        node = producer.get(logits)
        if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
            logits = node.input[0]
        name = logits
        for _ in range(16):
            node = producer.get(name)
            if node is None:
                return logits, None
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                ws = [self._source(x, producer) for x in node.input[1:3] if x]
                if ws and all(x in self.params and len(self.consumers.get(x, [])) == 1 for x in ws):
                    return logits, ws
                return logits, None
            if node.op_type not in _HOMOGENEOUS:
                return logits, None
            name = node.input[0]
        return logits, None


def randomize_weights(
    model: onnx.ModelProto,
    seed: int = 0,
    params: Sequence[str] | None = None,
    calib_batch: int = 1,
) -> onnx.ModelProto:
    """Return a copy of ``model`` whose float initializers are re-drawn by role (see module doc).

    ``params`` restricts which initializers are re-drawn (default: every float32 initializer).
    BatchNormalization statistics are measured on a standard-normal input whose symbolic batch
    dimension is ``calib_batch`` (use more than 1 when late feature maps are tiny). Initializers
    with no recognized role keep their value.
    """
    model = _copy(model)
    inits = {i.name: i for i in model.graph.initializer}
    names = list(params) if params is not None else list(inits)
    placeholders = {}
    for n in names:
        if n not in inits:
            raise KeyError(f"no initializer named {n!r}")
        if inits[n].data_type == TensorProto.FLOAT:
            placeholders[n] = numpy_helper.to_array(inits[n])
    values = _Randomizer(model, placeholders, seed, batch=calib_batch).run()
    for n, v in values.items():
        inits[n].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float32), n))
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


# --------------------------------------------------------------------------------------------------
# light models


def light_model(
    name: str, seed: int = 0, *, opset: int | None = None, keep_stored: bool = False
) -> onnx.ModelProto:
    """One of :data:`LIGHT_MODELS` with seeded random weights, as a normal IR-7 model.

    Every ``ConstantOfShape`` weight becomes a float32 initializer drawn by role (see module doc);
    the ``*__SHAPE`` inputs/initializers and the ConstantOfShape nodes are removed; initializers are
    no longer listed as graph inputs. The opset stays 9 unless ``opset`` asks for a conversion with
    :mod:`onnx.version_converter` (e.g. ``opset=13``). ``keep_stored=True`` keeps the few float
    tensors the light file stores for real (biases / BN statistics of the trained model) instead of
    re-drawing them. Same ``(name, seed)`` -> identical weights.
    """
    src = onnx.load(str(light_model_path(name)), load_external_data=False)
    g = src.graph
    inits = {i.name: i for i in g.initializer}
    cos_nodes = [
        n
        for n in g.node
        if n.op_type == "ConstantOfShape" and n.input and n.input[0] in inits and len(n.output) == 1
    ]
    placeholders: dict[str, np.ndarray] = {}
    for n in cos_nodes:
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[n.input[0]]).reshape(-1))
        val = _attr(n, "value")
        fill = numpy_helper.to_array(val).reshape(-1)[0] if val is not None else np.float32(0)
        dtype = np.float32 if val is None else fill.dtype
        placeholders[n.output[0]] = np.full(shape, fill, dtype=dtype)
    if not keep_stored:
        data_inputs = set()
        for node in g.node:
            if node.op_type != "ConstantOfShape":
                data_inputs.update(node.input)
        for i in g.initializer:
            if i.data_type == TensorProto.FLOAT and i.name in data_inputs:
                placeholders[i.name] = numpy_helper.to_array(i)

    # shapes are inferred on the original (ConstantOfShape shapes come from the initializers)
    values = _Randomizer(src, placeholders, seed).run()

    cos_outputs = {n.output[0] for n in cos_nodes}
    nodes = [
        n for n in g.node if not (n.op_type == "ConstantOfShape" and n.output[0] in cos_outputs)
    ]
    used = {x for n in nodes for x in n.input} | {o.name for o in g.output}
    new_inits: list[onnx.TensorProto] = []
    for i in g.initializer:
        if i.name not in used:
            continue
        if i.name in values:
            new_inits.append(numpy_helper.from_array(values[i.name].astype(np.float32), i.name))
        else:
            new_inits.append(i)
    for n in cos_nodes:
        arr = values[n.output[0]]
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n.output[0]))
    init_names = {i.name for i in new_inits}
    inputs = [vi for vi in g.input if vi.name not in init_names and vi.name not in inits]
    graph = helper.make_graph(nodes, g.name or name, inputs, list(g.output), initializer=new_inits)
    model = helper.make_model(
        graph,
        opset_imports=list(src.opset_import),
        producer_name="mcopt.testing.zoo",
        doc_string=f"light_{name}.onnx from the onnx wheel with seeded random weights (seed={seed})",
    )
    model.ir_version = 7
    if opset is not None and opset != _opset(model):
        from onnx import version_converter

        model = version_converter.convert_version(model, opset)
        model.ir_version = max(model.ir_version, 7)
    return model


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


# --------------------------------------------------------------------------------------------------
# generated CNNs


class _Builder:
    """Tiny helper over onnx.helper: ops append nodes, weights are zero placeholders drawn later."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count: dict[str, int] = {}

    def fresh(self, base: str) -> str:
        k = self.count.get(base, 0)
        self.count[base] = k + 1
        return f"{base}_{k}"

    def weight(self, name: str, shape: Sequence[int]) -> str:
        self.inits.append(numpy_helper.from_array(np.zeros(tuple(shape), np.float32), name))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], base: str, **attrs: object) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
        base: str = "conv",
    ) -> str:
        name = self.fresh(base)
        w = self.weight(f"{name}.weight", (cout, cin // group, k, k))
        ins = [x, w]
        if bias:
            ins.append(self.weight(f"{name}.bias", (cout,)))
        p = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                ins,
                [name],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[p, p, p, p],
                group=group,
            )
        )
        return name

    def bn(self, x: str, c: int) -> str:
        name = self.fresh("bn")
        ins = [x] + [self.weight(f"{name}.{p}", (c,)) for p in ("scale", "bias", "mean", "var")]
        self.nodes.append(
            helper.make_node("BatchNormalization", ins, [name], name=name, epsilon=1e-5)
        )
        return name

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], "relu")

    def relu6(self, x: str) -> str:
        if "relu6.min" not in {i.name for i in self.inits}:
            self.const("relu6.min", np.array(0.0, np.float32))
            self.const("relu6.max", np.array(6.0, np.float32))
        return self.node("Clip", [x, "relu6.min", "relu6.max"], "relu6")

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b], "add")

    def gemm(self, x: str, cin: int, cout: int) -> str:
        name = self.fresh("fc")
        w = self.weight(f"{name}.weight", (cout, cin))
        b = self.weight(f"{name}.bias", (cout,))
        self.nodes.append(helper.make_node("Gemm", [x, w, b], [name], name=name, transB=1))
        return name

    def head(self, x: str, cin: int, num_classes: int) -> str:
        p = self.node("GlobalAveragePool", [x], "gap")
        f = self.node("Flatten", [p], "flatten", axis=1)
        return self.gemm(f, cin, num_classes)

    def finish(
        self,
        x_in: str,
        shape: Sequence[int],
        out: str,
        num_classes: int,
        seed: int,
        doc: str,
        dynamic_batch: bool,
    ) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))
        graph = helper.make_graph(
            self.nodes,
            self.name,
            [helper.make_tensor_value_info(x_in, TensorProto.FLOAT, ["N", *shape[1:]])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", num_classes])],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 13)],
            producer_name="mcopt.testing.zoo",
            doc_string=doc,
        )
        model.ir_version = 8
        weights = [i.name for i in self.inits if not i.name.startswith("relu6.")]
        # small inputs end in 1x1/2x2 feature maps: calibrate BN statistics on a batch
        positions = int(np.prod([int(d) for d in shape[2:]]))
        calib_batch = 1 if positions >= 96 * 96 else 16
        model = randomize_weights(model, seed, weights, calib_batch=calib_batch)
        if not dynamic_batch:
            for vi in (model.graph.input[0], model.graph.output[0]):
                vi.type.tensor_type.shape.dim[0].Clear()
                vi.type.tensor_type.shape.dim[0].dim_value = 1
        return model


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _input_shape(resolution: int, channels: int = 3) -> list[int]:
    return [1, channels, resolution, resolution]


#: MobileNet-V2 inverted-residual settings: expansion t, channels c, repeats n, first stride s.
MOBILENET_V2_BLOCKS: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def mobilenet_v2(
    width_mult: float = 1.0,
    resolution: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
    dynamic_batch: bool = False,
) -> onnx.ModelProto:
    """MobileNet-V2 (Sandler et al. 2018) with seeded random weights, opset 13.

    Stem conv3x3/s2 + BN + ReLU6 (``Clip`` with min/max inputs), the 17 inverted-residual blocks of
    :data:`MOBILENET_V2_BLOCKS` (1x1 expand + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 project + BN,
    ``Add`` when stride 1 and in == out), 1x1 conv to 1280 (scaled up for ``width_mult > 1``) + BN +
    ReLU6, GlobalAveragePool, Flatten, Gemm. Input ``input`` [1|N, 3, res, res]; output ``output``.
    ``width_mult=0.25, resolution=32, num_classes=10`` is a CI-sized version.
    """
    b = _Builder("mobilenet_v2")
    cin = _make_divisible(32 * width_mult)
    last = _make_divisible(1280 * max(1.0, width_mult))
    x = b.relu6(b.bn(b.conv("input", 3, cin, 3, stride=2), cin))
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        cout = _make_divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = b.relu6(b.bn(b.conv(y, cin, hidden, 1, base="expand"), hidden))
            y = b.relu6(b.bn(b.conv(y, hidden, hidden, 3, stride, group=hidden, base="dw"), hidden))
            y = b.bn(b.conv(y, hidden, cout, 1, base="project"), cout)
            if stride == 1 and cin == cout:
                y = b.add(x, y)
            x, cin = y, cout
    x = b.relu6(b.bn(b.conv(x, cin, last, 1), last))
    out = b.head(x, last, num_classes)
    return b.finish(
        "input",
        _input_shape(resolution),
        out,
        num_classes,
        seed,
        f"MobileNet-V2 width_mult={width_mult} resolution={resolution} seed={seed}",
        dynamic_batch,
    )


def resnet18_like(
    resolution: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
    width: int = 64,
    dynamic_batch: bool = False,
) -> onnx.ModelProto:
    """Basic-block ResNet-18 (He et al. 2016) with seeded random weights, opset 13.

    Stem conv7x7/s2 + BN + Relu + MaxPool3x3/s2, four stages of two basic blocks (conv3x3+BN+Relu,
    conv3x3+BN, identity or 1x1-conv+BN projection shortcut, Add, Relu) with ``width * (1, 2, 4, 8)``
    channels, GlobalAveragePool, Flatten, Gemm. ``width=8, resolution=32`` is a CI-sized version.
    """
    b = _Builder("resnet18_like")
    x = b.relu(b.bn(b.conv("input", 3, width, 7, stride=2), width))
    x = b.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    for stage, mult in enumerate((1, 2, 4, 8)):
        cout = width * mult
        for i in range(2):
            stride = 2 if (stage > 0 and i == 0) else 1
            y = b.relu(b.bn(b.conv(x, cin, cout, 3, stride), cout))
            y = b.bn(b.conv(y, cout, cout, 3), cout)
            if stride != 1 or cin != cout:
                sc = b.bn(b.conv(x, cin, cout, 1, stride, base="downsample"), cout)
            else:
                sc = x
            x = b.relu(b.add(y, sc))
            cin = cout
    out = b.head(x, cin, num_classes)
    return b.finish(
        "input",
        _input_shape(resolution),
        out,
        num_classes,
        seed,
        f"ResNet-18-like width={width} resolution={resolution} seed={seed}",
        dynamic_batch,
    )


def tiny_cnn(seed: int = 0, dynamic_batch: bool = False, num_classes: int = 10) -> onnx.ModelProto:
    """A few-layer CNN on 1x3x32x32 covering the common structures, for fast tests.

    conv3x3+BN+Relu -> MaxPool -> residual block (conv3x3+BN+Relu, conv3x3+BN, Add, Relu) ->
    two branches [conv1x1 | depthwise conv3x3+BN+Relu -> conv1x1] -> Concat -> conv1x1(+bias)+Relu ->
    GlobalAveragePool -> Flatten -> Gemm.
    """
    b = _Builder("tiny_cnn")
    x = b.relu(b.bn(b.conv("input", 3, 16, 3), 16))
    x = b.node("MaxPool", [x], "maxpool", kernel_shape=[2, 2], strides=[2, 2])
    y = b.relu(b.bn(b.conv(x, 16, 16, 3), 16))
    y = b.bn(b.conv(y, 16, 16, 3), 16)
    x = b.relu(b.add(x, y))
    left = b.conv(x, 16, 8, 1, base="branch_a")
    right = b.relu(b.bn(b.conv(x, 16, 16, 3, group=16, base="dw"), 16))
    right = b.conv(right, 16, 24, 1, base="branch_b")
    x = b.node("Concat", [left, right], "concat", axis=1)
    x = b.relu(b.conv(x, 32, 32, 1, bias=True, base="mix"))
    out = b.head(x, 32, num_classes)
    return b.finish(
        "input",
        _input_shape(32),
        out,
        num_classes,
        seed,
        f"tiny CNN seed={seed}",
        dynamic_batch,
    )


def lenet5_like(
    widths: Sequence[int] = (6, 16, 120, 84), num_classes: int = 10, seed: int = 0
) -> onnx.ModelProto:
    """An untrained LeNet-5-shaped network with the given widths (conv1, conv2, fc1, fc2) and
    PyTorch's default (Kaiming-uniform) initialization: input 'input' (N, 1, 28, 28), output
    'logits' — the layout of the bundled trained LeNet-5, e.g. a half-width student for distillation."""
    c1, c2, f1, f2 = (int(w) for w in widths)
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def param(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        bound = 1.0 / np.sqrt(fan_in)
        inits.append(
            numpy_helper.from_array(rng.uniform(-bound, bound, shape).astype(np.float32), name)
        )
        return name

    nodes: list[onnx.NodeProto] = []
    x = "input"
    for i, (cin, cout, pad) in enumerate(((1, c1, 2), (c1, c2, 0)), 1):
        w = param(f"conv{i}.weight", (cout, cin, 5, 5), cin * 25)
        b = param(f"conv{i}.bias", (cout,), cin * 25)
        nodes.append(
            helper.make_node("Conv", [x, w, b], [f"conv{i}"], kernel_shape=[5, 5], pads=[pad] * 4)
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        nodes.append(
            helper.make_node(
                "MaxPool", [f"relu{i}"], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]
            )
        )
        x = f"pool{i}"
    nodes.append(helper.make_node("Flatten", [x], ["flatten"], axis=1))
    x = "flatten"
    sizes = [c2 * 25, f1, f2, num_classes]
    for i in range(3):
        out = "logits" if i == 2 else f"fc{i + 1}"
        w = param(f"fc{i + 1}.weight", (sizes[i + 1], sizes[i]), sizes[i])
        b = param(f"fc{i + 1}.bias", (sizes[i + 1],), sizes[i])
        nodes.append(helper.make_node("Gemm", [x, w, b], [out], transB=1))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"relu_fc{i + 1}"]))
            x = f"relu_fc{i + 1}"
    graph = helper.make_graph(
        nodes,
        "lenet5_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, num_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model
