"""The training backend (mcopt.train): op coverage, to_torch == interpreter on every op family,
write-back equality after training steps, encodings kept (masks, shared centroids, codes, bits),
straight-through gradients, data handling and distributed training. Runs for seconds: the full
training runs live in benchmarks/bench_train.py."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mcopt import interpreter  # noqa: E402
from mcopt.api import load  # noqa: E402
from mcopt.errors import OptionError, UnsupportedOpError  # noqa: E402
from mcopt.ir.types import Sparse  # noqa: E402
from mcopt.ops.codebook import decode  # noqa: E402
from mcopt.pass_manager import PassContext, run_passes  # noqa: E402
from mcopt.testing import zoo  # noqa: E402
from mcopt.train import as_train_data, from_torch, to_torch  # noqa: E402
from mcopt.train.ste import round_ste, sign_ste  # noqa: E402

torch.set_num_threads(1)

X, Y = zoo.mnist_test_set()
CALIB = [{"input": X[i : i + 1]} for i in range(16)]

FAMILIES = {
    "fp32": ["cleanup"],
    "pruned": ["cleanup", "prune-weights:sparsity=0.8,encode=always"],
    "kmeans": ["cleanup", "kmeans-share"],
    "pruned+kmeans": ["cleanup", "prune-weights:sparsity=0.8", "kmeans-share"],
    "product-quantize": ["cleanup", "product-quantize"],
    "residual-quantize": ["cleanup", "residual-quantize"],
    "int8": ["cleanup", "quantize-int8"],
    "int4-weights": ["cleanup", "quantize-int8:weight_bits=4"],
    "bwn": ["cleanup", "binarize-weights"],
    "xnor": ["cleanup", "xnor"],
    "fixed-point": ["cleanup", "fixed-point"],
    "winograd": ["cleanup", "winograd"],
}


def lenet(family: str):  # type: ignore[no-untyped-def]
    g, _ = run_passes(load(zoo.lenet5_path()), FAMILIES[family], PassContext(calib=CALIB))
    return g


def _module_out(m, x):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        y = m(torch.as_tensor(x))
    return (y[0] if isinstance(y, tuple) else y).double().numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_module_equals_interpreter(family: str) -> None:
    """The training form of every op family computes what the reference interpreter computes
    (float64 module, several batches at once)."""
    g = lenet(family)
    m = to_torch(g, torch.float64)
    x = X[:5]
    ref = np.concatenate([interpreter.run(g, [x[i : i + 1]])[0] for i in range(len(x))])
    assert _rel(ref, _module_out(m, x)) < 1e-6


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_write_back_after_training_equals_interpreter(family: str) -> None:
    """Two optimizer steps, then from_torch: the graph verifies, keeps its encodings, and the
    interpreter computes what the trained module computes."""
    g = lenet(family)
    encodings = {v.name: type(v.type.encoding) for v in g.constants()}
    m = to_torch(g, torch.float64)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for i in range(2):
        out = m(torch.as_tensor(X[i * 32 : (i + 1) * 32]))
        loss = torch.nn.functional.cross_entropy(out, torch.as_tensor(Y[i * 32 : (i + 1) * 32]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    from_torch(m, g)
    assert {v.name: type(v.type.encoding) for v in g.constants()} == encodings
    x = X[100:104]
    ref = np.concatenate([interpreter.run(g, [x[i : i + 1]])[0] for i in range(len(x))])
    assert _rel(ref, _module_out(m, x)) < 1e-6


@pytest.mark.parametrize(
    "proto",
    [
        lambda: zoo.resnet18_like(resolution=32, width=8, num_classes=10),
        lambda: zoo.mobilenet_v2(width_mult=0.25, resolution=32, num_classes=10),
    ],
    ids=["resnet18", "mobilenet_v2"],
)
def test_real_architectures_train_and_write_back(proto) -> None:  # type: ignore[no-untyped-def]
    """Residual adds, depthwise convs, batch norm, concat-free and pooled heads: the module equals
    the interpreter before and after a step (batch norm trained in eval mode)."""
    g = load(proto())
    m = to_torch(g, torch.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, *g.inputs[0].shape[1:])).astype(np.float32)
    ref = np.concatenate([interpreter.run(g, [x[i : i + 1]])[0] for i in range(3)])
    assert _rel(ref, _module_out(m, x)) < 1e-4  # the interpreter rounds in float32 over ~20 layers
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    loss = m(torch.as_tensor(x)).square().mean()
    loss.backward()
    opt.step()
    from_torch(m, g)
    ref = np.concatenate([interpreter.run(g, [x[i : i + 1]])[0] for i in range(3)])
    assert _rel(ref, _module_out(m, x)) < 1e-4


def test_batch_norm_train_mode_updates_and_writes_back_running_statistics() -> None:
    """``bn_train``: a training step normalizes by the batch's statistics (equal to
    torch.nn.functional.batch_norm's), the running ones move towards them and are written back;
    eval mode (and the interpreter on the written-back graph) then uses the running ones.
    Frozen (the default): the running statistics stay what the graph holds."""
    g = load(zoo.resnet18_like(resolution=32, width=8, num_classes=10))
    bn = next(n for n in g.nodes if n.op == "batch_norm")
    mean0 = np.array(bn.inputs[3].const, np.float64)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((8, *g.inputs[0].shape[1:])).astype(np.float32) * 3)
    frozen = to_torch(g.copy(), torch.float64)
    frozen.train()
    frozen(x)
    m = to_torch(g, torch.float64)
    m.bn_train = True
    m.train()
    m(x)  # one forward in training mode: the running statistics move
    from_torch(m, g)
    mean1 = np.array(bn.inputs[3].const, np.float64)
    assert not np.allclose(mean1, mean0)
    key = frozen._slot_of_value[id(frozen.graph.find_node(bn.name).inputs[3])]
    np.testing.assert_allclose(frozen.const_tensor(key).numpy(), mean0)
    m.eval()
    xs = x[:3].numpy()
    ref = np.concatenate([interpreter.run(g, [xs[i : i + 1]])[0] for i in range(3)])
    assert _rel(ref, _module_out(m, xs)) < 1e-4


def test_finetune_bn_train_from_scratch() -> None:
    """``finetune:bn=train`` trains a BN network from random weights (the option reaches the
    module) and writes the running statistics back."""
    g = load(zoo.resnet18_like(resolution=28, width=8, num_classes=10))
    before = {n.name: np.array(n.inputs[4].const) for n in g.nodes if n.op == "batch_norm"}
    data = as_train_data((np.repeat(X[:256], 3, axis=1), Y[:256]), g, val_split=0.25)
    g2, rep = run_passes(
        g, ["finetune:loss=ce,bn=train,epochs=2,lr=0.01,patience=0"], PassContext(data=data)
    )
    after = {n.name: np.array(n.inputs[4].const) for n in g2.nodes if n.op == "batch_norm"}
    assert any(not np.allclose(before[k], after[k]) for k in before)
    assert rep["finetune"].metric > 0.3  # 10 classes: chance is 0.1


def _step(g, lr: float = 1e-2, steps: int = 3):  # type: ignore[no-untyped-def]
    m = to_torch(g)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    for i in range(steps):
        out = m(torch.as_tensor(X[i * 64 : (i + 1) * 64]))
        loss = torch.nn.functional.cross_entropy(out, torch.as_tensor(Y[i * 64 : (i + 1) * 64]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return from_torch(m, g)


def test_pruned_weights_stay_zero() -> None:
    g = lenet("pruned")
    before = {v.name: v.const == 0 for v in g.constants() if isinstance(v.type.encoding, Sparse)}
    old = {v.name: v.const.copy() for v in g.constants()}
    _step(g)
    for v in g.constants():
        if v.name in before:
            assert np.array_equal(v.const == 0, before[v.name]), v.name  # same zeros, no regrowth
            assert v.type.encoding.nnz == int(np.count_nonzero(v.const))
    assert any(not np.array_equal(old[v.name], v.const) for v in g.constants()), "nothing trained"


def test_trained_centroids_stay_shared() -> None:
    """Deep Compression sec. 3.3: indices fixed, centroids updated, the zero centroid pinned."""
    g = lenet("pruned+kmeans")
    nodes = g.nodes_of("codebook_weight")
    idx = {n.name: n.inputs[0].const.copy() for n in nodes}
    books = {n.name: n.inputs[1].const.copy() for n in nodes}
    _step(g)
    moved = False
    for n in g.nodes_of("codebook_weight"):
        assert np.array_equal(n.inputs[0].const, idx[n.name])
        new, old = n.inputs[1].const, books[n.name]
        assert np.array_equal(new == 0, old == 0)  # zero centroid (pruned weights) stays zero
        moved |= not np.allclose(new, old)
        decoded = decode(n.inputs[0].const, new, tuple(n.attrs["shape"]))
        assert np.unique(decoded).size <= new.shape[2]  # still k shared values at most
    assert moved


def test_int8_codes_stay_in_range_and_scales_fixed() -> None:
    g = lenet("int4-weights")
    scales = {n.name: n.inputs[1].type.encoding.scale for n in g.nodes_of("qconv2d", "qdense")}
    _step(g, lr=5e-2)
    for n in g.nodes_of("qconv2d", "qdense"):
        w = n.inputs[1].const
        assert w.dtype == np.int8 and w.min() >= -8 and w.max() <= 7
        assert n.inputs[1].type.encoding.scale == scales[n.name]


def test_binary_alpha_trains_and_bits_stay_packed() -> None:
    g = lenet("xnor")
    alphas = {n.name: n.inputs[2].const.copy() for n in g.nodes_of("binary_conv2d", "binary_dense")}
    _step(g)
    nodes = g.nodes_of("binary_conv2d", "binary_dense")
    assert nodes and any(not np.allclose(n.inputs[2].const, alphas[n.name]) for n in nodes)
    assert all(n.inputs[1].const.dtype == np.int32 for n in nodes)


def test_straight_through_gradients() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 1.5], requires_grad=True)
    sign_ste(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # cancelled where |x| > 1
    assert sign_ste(torch.tensor([0.0])).item() == 1.0  # sign(0) = +1 as the binary ops
    y = torch.tensor([0.4, 1.5, 2.5], requires_grad=True)
    r = round_ste(y)
    assert r.tolist() == [0.0, 2.0, 2.0]  # half to even, as numpy rint
    r.sum().backward()
    assert y.grad.tolist() == [1.0, 1.0, 1.0]


def test_batch_dim_changes_are_refused_with_the_node_name() -> None:
    from mcopt.ir.core import Graph
    from mcopt.ir.types import ttype

    g = Graph("g")
    x = g.add_input("x", ttype((2, 4)))
    r = g.add_node("reshape", [x], {"shape": (1, 8)}, name="fold_batch")
    g.outputs.append(r.output)
    with pytest.raises(UnsupportedOpError, match="fold_batch.*batch"):
        to_torch(g)


# --- data ---------------------------------------------------------------------------------------------
def test_data_forms_and_a_stratified_split() -> None:
    g = load(zoo.lenet5_path())
    d = as_train_data((X, Y), g, val_split=0.2)
    assert d.n_train == 800 and d.n_val == 200 and d.labelled
    assert np.bincount(d.val_y, minlength=10).min() >= 15  # stratified
    u = as_train_data(X[:100], g)
    assert not u.labelled and u.val_y is None
    with pytest.raises(OptionError, match="samples must have shape"):
        as_train_data((X[:, :, :20], Y), g)
    with pytest.raises(OptionError, match="labels"):
        as_train_data((X, Y[:10]), g)


def test_stream_split_is_the_same_whatever_the_order(tmp_path) -> None:
    """A stream (a DataLoader) is split by a hash of each sample: reshuffling keeps the split."""
    g = load(zoo.lenet5_path())
    ds = torch.utils.data.TensorDataset(torch.as_tensor(X[:300]), torch.as_tensor(Y[:300]))
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)
    d = as_train_data(loader, g, val_split=0.2)
    assert 30 <= d.n_val <= 90
    held = {a.tobytes() for a in d.val_x[0]}
    for _ in range(2):  # two epochs, two orders: never a held-out sample
        for xs, _y in d.batches(32, np.random.default_rng(0)):
            assert not ({a.tobytes() for a in xs[0]} & held)


def test_finetune_needs_data_and_says_how() -> None:
    with pytest.raises(Exception, match="needs training data"):
        run_passes(load(zoo.lenet5_path()), ["finetune"], PassContext())


# --- passes -------------------------------------------------------------------------------------------
def _ctx(n: int = 600) -> PassContext:
    g = load(zoo.lenet5_path())
    return PassContext(data=as_train_data((X[:n], Y[:n]), g, val_split=0.25), calib=CALIB)


def test_finetune_after_pruning_wins_back_held_out_accuracy() -> None:
    g, rep = run_passes(
        load(zoo.lenet5_path()),
        ["cleanup", "prune-weights:sparsity=0.9", "finetune:epochs=3,lr=0.003,patience=0"],
        _ctx(),
    )
    pruned, tuned = rep["prune-weights"].metric, rep["finetune"].metric
    assert rep.metric_name == "accuracy" and rep.metric_samples == 150
    assert tuned > pruned + 0.05, (pruned, tuned)
    assert rep["finetune"].details["train"]["after"] == pytest.approx(tuned)
    assert "held-out accuracy" in rep.to_markdown()


def test_distill_into_a_student_onnx_with_hints(tmp_path) -> None:
    """distill:student=PATH replaces the graph by a half-width student (names kept); FitNets' hint
    stage first regresses the student's conv2 onto the teacher's, then KD beats the student's start."""
    import onnx

    path = tmp_path / "student.onnx"
    onnx.save(zoo.lenet5_like((3, 8, 60, 42), seed=3), path)
    ctx = _ctx(600)
    spec = f"distill:student={path},hint=relu2,guided=relu2,epochs=3,hint_epochs=1,lr=0.005"
    g, rep = run_passes(load(zoo.lenet5_path()), [spec], ctx)
    assert [v.name for v in g.outputs] == ["logits"] and [v.name for v in g.inputs] == ["input"]
    assert g.find_node("Conv_0").inputs[1].shape == (3, 1, 5, 5)  # the student's graph
    assert "hint_stage" in rep["distill"].details
    train = rep["distill"].details["train"]
    assert train["metric"] == "accuracy" and train["after"] > train["before"] + 0.1


def test_prune_retrain_raises_sparsity_in_steps() -> None:
    g, rep = run_passes(
        load(zoo.lenet5_path()),
        ["cleanup", "prune-retrain:sparsity=0.8,steps=2,epochs=1"],
        _ctx(400),
    )
    steps = rep["prune-retrain"].details["steps"]
    assert list(steps) == ["55.3%", "80.0%"]
    w = [v for v in g.constants() if isinstance(v.type.encoding, Sparse)]
    total = sum(v.type.size for v in w)
    zeros = sum(v.type.size - int(np.count_nonzero(v.const)) for v in w)
    assert zeros / total == pytest.approx(0.8, abs=0.01)


def _ddp_worker(
    rank: int, world: int, init: str, out: str
) -> None:  # pragma: no cover (subprocess)
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    g = load(zoo.lenet5_path())
    m = torch.nn.parallel.DistributedDataParallel(to_torch(g))
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    xs = torch.as_tensor(X[rank * 32 : (rank + 1) * 32])  # each rank its own shard
    loss = torch.nn.functional.cross_entropy(m(xs), torch.as_tensor(Y[rank * 32 : (rank + 1) * 32]))
    loss.backward()
    opt.step()
    from_torch(m, g)
    np.save(f"{out}.{rank}.npy", g.nodes_of("dense")[0].inputs[1].const)
    dist.barrier()  # neither rank tears the group down while the other still uses it
    dist.destroy_process_group()


def test_distributed_data_parallel_on_two_gloo_processes(tmp_path) -> None:
    """The module works under DistributedDataParallel as it is: two processes on different shards
    end with the same (all-reduced) weights, and from_torch accepts the DDP wrapper."""
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "w")
    mp.spawn(_ddp_worker, args=(2, init, out), nprocs=2, join=True)
    w0, w1 = np.load(f"{out}.0.npy"), np.load(f"{out}.1.npy")
    orig = load(zoo.lenet5_path()).nodes_of("dense")[0].inputs[1].const
    assert np.array_equal(w0, w1) and not np.allclose(w0, orig)
