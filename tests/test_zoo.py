"""Tests for mcopt.testing.zoo: light models, generated CNNs, trained LeNets, save_model."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from mcopt.testing import zoo

CHEAP_LIGHT = ["squeezenet", "shufflenet"]


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _with_logits(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Add the pre-softmax value as an extra output; returns (model, its name)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    soft = [n for n in m.graph.node if n.op_type == "Softmax"]
    if not soft:
        return m, m.graph.output[0].name
    name = soft[-1].input[0]
    m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return m, name


def _run(model: onnx.ModelProto, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    sess = _session(model)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else batch for d in inp.shape]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {inp.name: x})))


def _check_light(name: str) -> None:
    model = zoo.light_model(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version >= 7
    g = model.graph
    ops = collections.Counter(n.op_type for n in g.node)
    assert ops["ConstantOfShape"] == 0
    init_names = {i.name for i in g.initializer}
    assert not init_names & {i.name for i in g.input}, "initializers listed as graph inputs"
    assert not any(n.endswith("__SHAPE") for n in init_names)
    assert len(g.input) == 1
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            a = numpy_helper.to_array(init)
            assert np.isfinite(a).all()
    m, logits_name = _with_logits(model)
    outs = [_run(m, seed=s) for s in (1, 2)]
    for out in outs:
        for v in out.values():
            assert np.isfinite(v).all()
    logits = outs[0][logits_name].reshape(-1)
    assert 0.5 < logits.std() < 30, f"{name}: logit std {logits.std()}"
    prob = outs[0][g.output[0].name].reshape(-1)
    if prob.min() >= 0 and abs(prob.sum() - 1) < 1e-3:  # a softmax output
        assert prob.max() < 0.99, f"{name}: softmax is one-hot"
        assert prob.max() > 5.0 / prob.size, f"{name}: softmax is uniform"
    # the output depends on the input
    other = outs[1][logits_name].reshape(-1)
    assert np.std(logits - other) > 0.05 * logits.std()


def test_light_model_files_load() -> None:
    assert len(zoo.LIGHT_MODELS) == 9
    for name in zoo.LIGHT_MODELS:
        path = zoo.light_model_path(name)
        m = onnx.load(str(path), load_external_data=False)
        assert any(n.op_type == "ConstantOfShape" for n in m.graph.node)
    with pytest.raises(KeyError):
        zoo.light_model_path("lenet")


@pytest.mark.parametrize("name", CHEAP_LIGHT)
def test_light_model_cheap(name: str) -> None:
    _check_light(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in zoo.LIGHT_MODELS if n not in CHEAP_LIGHT])
def test_light_model_full(name: str) -> None:
    _check_light(name)


def test_light_model_deterministic_and_seeded() -> None:
    a = zoo.light_model("squeezenet", seed=0)
    b = zoo.light_model("squeezenet", seed=0)
    c = zoo.light_model("squeezenet", seed=1)
    assert a.SerializeToString() == b.SerializeToString()
    wa = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    wc = {i.name: numpy_helper.to_array(i) for i in c.graph.initializer}
    assert wa.keys() == wc.keys()
    assert any(not np.array_equal(wa[k], wc[k]) for k in wa)


def test_light_model_weight_roles() -> None:
    """Roles come from use: He-normal conv weights, positive BN variances, unit-scale BN output."""
    model = zoo.light_model("shufflenet")
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            kernel = w[node.input[1]]
            if kernel.size >= 1000:
                fan_in = int(np.prod(kernel.shape[1:]))
                assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.15)
                checked += 1
        if node.op_type == "BatchNormalization":
            scale, _, _, var = (w[x] for x in node.input[1:5])
            assert (var > 0).all()
            assert 0.5 <= scale.min() and scale.max() <= 1.5
    assert checked > 10
    # BN outputs stay unit-scale through the network
    m = onnx.ModelProto()
    m.CopyFrom(model)
    bn_out = [n.output[0] for n in m.graph.node if n.op_type == "BatchNormalization"]
    for name in bn_out:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    out = _run(m, seed=3)
    stds = np.array([out[n].std() for n in bn_out])
    assert stds.min() > 0.5 and stds.max() < 2.5


def test_light_model_opset13() -> None:
    m9 = zoo.light_model("squeezenet")
    m13 = zoo.light_model("squeezenet", opset=13)
    onnx.checker.check_model(m13, full_check=True)
    assert [o.version for o in m13.opset_import if o.domain in ("", "ai.onnx")] == [13]
    a, b = _run(m9, seed=4), _run(m13, seed=4)
    np.testing.assert_allclose(list(a.values())[0], list(b.values())[0], rtol=1e-5, atol=1e-6)


def _check_generated(model: onnx.ModelProto, num_classes: int) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].name == "input"
    out = _run(model, batch=2)
    logits = out["output"]
    assert logits.shape == (2, num_classes)
    assert np.isfinite(logits).all()
    assert 0.5 < logits.std(axis=1).mean() < 30


def test_tiny_cnn() -> None:
    model = zoo.tiny_cnn(seed=0, dynamic_batch=True)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    for op in ("Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "Concat"):
        assert ops[op] >= 1, op
    for op in ("GlobalAveragePool", "Flatten", "Gemm"):
        assert ops[op] == 1, op
    assert any(
        n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
        for n in model.graph.node
    ), "no depthwise conv"
    _check_generated(model, 10)
    static = zoo.tiny_cnn(seed=0)
    dims = [d.dim_value for d in static.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 32]


def test_tiny_mobilenet_v2() -> None:
    model = zoo.mobilenet_v2(width_mult=0.25, resolution=32, num_classes=10, dynamic_batch=True)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    # 10 residual adds, plus the first block (8 -> 8 channels at width 0.25)
    assert ops["Clip"] == 35 and ops["Add"] == 11 and ops["Conv"] == 52
    _check_generated(model, 10)


def test_tiny_resnet18_like() -> None:
    model = zoo.resnet18_like(resolution=32, num_classes=10, width=8, dynamic_batch=True)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == 20 and ops["Add"] == 8
    _check_generated(model, 10)


def test_full_size_parameter_counts() -> None:
    def count(m: onnx.ModelProto) -> int:
        bn = {x for n in m.graph.node if n.op_type == "BatchNormalization" for x in n.input[3:5]}
        return sum(
            int(np.prod(i.dims))
            for i in m.graph.initializer
            if i.name not in bn and i.data_type == onnx.TensorProto.FLOAT and i.dims
        )

    assert count(zoo.mobilenet_v2()) == 3_504_872  # torchvision mobilenet_v2
    assert count(zoo.resnet18_like()) == 11_689_512  # torchvision resnet18


@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_lenet_accuracy(name: str) -> None:
    path = zoo.lenet5_path() if name == "lenet5" else zoo.lenet300_path()
    expected = zoo.lenet_metrics()[name]["test_accuracy"]
    x, y = zoo.mnist_test_set()
    assert x.shape == (1000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (1000,) and y.dtype == np.int64
    sess = _session(path)
    assert sess.get_inputs()[0].name == "input"
    logits = sess.run(None, {"input": x})[0]
    acc = float((logits.argmax(1) == y).mean())
    assert acc == pytest.approx(expected, abs=1e-9)
    assert acc >= 0.95
    # dynamic batch
    assert sess.run(None, {"input": x[:3]})[0].shape == (3, 10)


def test_mnist_test_set_normalization() -> None:
    raw, y = zoo.mnist_test_set(normalized=False)
    x, y2 = zoo.mnist_test_set()
    assert raw.dtype == np.uint8 and np.array_equal(y, y2)
    np.testing.assert_allclose(
        x, (raw.astype(np.float32) / 255 - zoo.MNIST_MEAN) / zoo.MNIST_STD, rtol=1e-6, atol=1e-6
    )
    assert np.bincount(y).tolist() == [100] * 10


def test_save_model_atomic(tmp_path: Path) -> None:
    model = zoo.tiny_cnn(seed=2)
    path = zoo.save_model(model, tmp_path / "sub" / "tiny.onnx")
    assert path.exists()
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()
    zoo.save_model(zoo.tiny_cnn(seed=3), path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.onnx"]
