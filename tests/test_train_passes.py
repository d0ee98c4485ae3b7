"""Training passes end to end and the rewrites they lean on: learn-architecture (tsReLU gates,
exact folding and merging), XNOR's sign activation, fc-to-gap with an mlpconv stage, optimize(data=)
and the CLI's --data / --passes. Seconds each; the full runs are benchmarks/bench_train.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mcopt  # noqa: E402
from mcopt import interpreter  # noqa: E402
from mcopt.api import load  # noqa: E402
from mcopt.cli import main  # noqa: E402
from mcopt.pass_manager import PassContext, get_pass, run_passes, split_pipeline  # noqa: E402
from mcopt.testing import zoo  # noqa: E402
from mcopt.train import as_train_data, to_torch  # noqa: E402
from mcopt.train.tsrelu import apply_gates, install_gates, merge_linear  # noqa: E402

torch.set_num_threads(1)
X, Y = zoo.mnist_test_set()


def _out(g, x):  # type: ignore[no-untyped-def]
    return np.concatenate([interpreter.run(g, [x[i : i + 1]])[0] for i in range(len(x))])


def test_open_gates_fold_exactly_and_closed_ones_remove_neurons() -> None:
    """tsReLU with d = 0 and gates in [0.5, 1] folds into the producer exactly; gates below 0.5
    zero their neuron, which remove-dead-neurons then deletes."""
    g = load(zoo.lenet300_path())
    m = to_torch(g, torch.float64)
    gates = install_gates(m)
    assert [gt.channels for gt in gates] == [300, 100]
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for gt in gates:
            w = rng.uniform(0.5, 1.0, gt.channels)
            w[: gt.channels // 3] = 0.0  # closed
            m._parameters[gt.w_key].copy_(torch.as_tensor(w))
        want = m(torch.as_tensor(X[:6])).numpy()
    layers = apply_gates(g, m, gates)
    assert layers["Relu_2"]["kept"] == 200 and layers["Relu_4"]["kept"] == 67
    get_pass("remove-dead-neurons").run(g, PassContext())
    assert [n.inputs[1].shape[0] for n in g.nodes_of("dense")] == [200, 67, 10]
    np.testing.assert_allclose(_out(g, X[:6]), want, rtol=1e-4, atol=1e-4)


def test_merge_linear_is_exact_and_keeps_the_output_name() -> None:
    g = load(zoo.lenet300_path())
    relu = g.nodes_of("relu")[-1]  # the 300->100 -> 100->10 pair becomes linear
    g.replace_all_uses_with(relu.output, relu.inputs[0])
    g.remove_node(relu)
    want = _out(g, X[:4])
    assert merge_linear(g) == 1
    assert [n.inputs[1].shape for n in g.nodes_of("dense")] == [(300, 784), (10, 300)]
    assert [v.name for v in g.outputs] == ["logits"]
    np.testing.assert_allclose(_out(g, X[:4]), want, rtol=1e-4, atol=1e-4)


def test_learn_architecture_removes_neurons_physically() -> None:
    g = load(zoo.lenet300_path())
    ctx = PassContext(data=as_train_data((X[:500], Y[:500]), g, val_split=0.2))
    spec = "learn-architecture:epochs=2,lambda1=0.001,lambda2=0.001,lambda3=0.05,gate_lr=0.05"
    g, rep = run_passes(g, [spec], ctx)
    hidden = [n.inputs[1].shape[0] for n in g.nodes_of("dense")][:-1]
    assert sum(hidden) < 400  # neurons went
    kept = rep["learn-architecture"].details["kept"]
    assert sum(int(v.split("/")[0]) for v in kept.values()) == sum(hidden)


def test_xnor_takes_the_sign_before_the_relu() -> None:
    """sign(relu(x)) is +1 everywhere: xnor removes a relu right before a binarized input (the
    XNOR-Net block: sign is the activation), so the binary layers see both signs."""
    g, _ = run_passes(load(zoo.lenet5_path()), ["cleanup", "xnor"], PassContext())
    for n in g.nodes_of("binary_conv2d", "binary_dense"):
        src = n.inputs[0]
        while src.producer is not None and src.producer.op in ("max_pool", "flatten"):
            src = src.producer.inputs[0]
        assert src.producer is None or src.producer.op != "relu", n.name
    keep = [n.inputs[0] for n in g.nodes_of("binary_conv2d")]
    _, vals = interpreter.run_values(g, [X[:1]], keep=keep)
    assert all((v < 0).any() for v in vals.values())


def test_fc_to_gap_with_an_mlpconv_stage() -> None:
    calib = [{"input": X[i : i + 1]} for i in range(64)]
    g, _ = run_passes(
        load(zoo.lenet5_path()), ["cleanup", "fc-to-gap:hidden=32"], PassContext(calib=calib)
    )
    conv = g.find_node("gap_mlpconv")
    assert conv.inputs[1].shape == (32, 16, 3, 3)
    assert g.nodes_of("dense")[-1].inputs[1].shape == (10, 32)


def test_kmeans_stores_only_the_centroids_a_layer_uses() -> None:
    g, _ = run_passes(
        load(zoo.lenet5_path()),
        ["cleanup", "prune-weights:sparsity=0.9", "kmeans-share:bits=8"],
        PassContext(),
    )
    conv1 = next(n for n in g.nodes_of("codebook_weight") if n.attrs["shape"][0] == 6)
    k = conv1.inputs[1].shape[2]
    assert k <= 16  # 15 surviving weights + the pinned zero, not 256 entries
    assert conv1.inputs[0].type.encoding.bits == int(np.ceil(np.log2(k)))


def test_repeated_pruning_keeps_the_weight_name() -> None:
    g, _ = run_passes(
        load(zoo.lenet5_path()),
        ["cleanup", "prune-weights:sparsity=0.5", "prune-weights:sparsity=0.8"],
        PassContext(),
    )
    assert not any("_sparse_sparse" in v.name for v in g.constants())


def test_optimize_with_data_reports_held_out_figures() -> None:
    res = mcopt.optimize(
        zoo.lenet5_path(),
        target=None,
        passes=["cleanup", "prune-weights:sparsity=0.9", "finetune:epochs=1"],
        data=(X[:400], Y[:400]),
    )
    assert res.output_error["source"] == "held-out validation inputs"
    assert res.report.metric_name == "accuracy" and res.report.metric_samples == 40
    md = res.to_markdown()
    assert "held-out accuracy" in md and "finetune" in md


def test_split_pipeline_keeps_options_with_their_pass() -> None:
    assert split_pipeline(
        "cleanup,prune-channels:ratio=0.3,skip=[Conv_0,Conv_3],finetune:epochs=2,lr=0.01"
    ) == [
        "cleanup",
        "prune-channels:ratio=0.3,skip=[Conv_0,Conv_3]",
        "finetune:epochs=2,lr=0.01",
    ]
    with pytest.raises(mcopt.MCoptError, match="follows no"):
        split_pipeline("ratio=0.3,cleanup")


def test_cli_data_and_a_pass_with_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.npz"
    np.savez(data, x=X[:300], y=Y[:300])
    out = tmp_path / "out"
    rc = main(
        [
            "optimize",
            str(zoo.lenet5_path()),
            "--target",
            "none",
            "--passes",
            "cleanup,prune-channels:ratio=0.4,skip=[Conv_0],finetune:epochs=1",
            "--data",
            str(data),
            "-o",
            str(out),
            "-q",
        ]
    )
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "prune-channels:ratio=0.4,skip=[Conv_0]" in report and "held-out accuracy" in report
    g = load(out / "model.onnx")
    assert g.find_node("Conv_0").inputs[1].shape[0] == 6  # skipped


def test_cli_training_pass_without_data_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "optimize",
            str(zoo.lenet5_path()),
            "--target",
            "none",
            "--passes",
            "finetune",
            "-o",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs training data" in err and "--data" in err
