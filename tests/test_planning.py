"""CPU planning as an IR rewrite (mcopt.targets.cpu.planning): the planned graph verifies, the
interpreter computes on it what it computes on the original, the printed plan is snapshotted, and
the lowering follows the plan's attributes instead of deciding anything itself."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from mcopt.api import load  # noqa: E402
from mcopt.errors import VerifyError  # noqa: E402
from mcopt.interpreter import run  # noqa: E402
from mcopt.ir import verify  # noqa: E402
from mcopt.pass_manager import PassContext, run_passes  # noqa: E402
from mcopt.targets.cpu.planning import is_planned, plan_cpu, planned_choices  # noqa: E402
from mcopt.testing import zoo  # noqa: E402

SNAP = Path(__file__).parent / "snapshots"
RNG = np.random.default_rng(0)


def _feeds(g):  # type: ignore[no-untyped-def]
    return {v.name: RNG.standard_normal(v.shape).astype(np.float32) for v in g.inputs}


def _model(name: str):  # type: ignore[no-untyped-def]
    if name == "tiny_cnn":
        return load(zoo.tiny_cnn(seed=0))
    if name == "resnet18_like":
        return load(zoo.resnet18_like())
    if name == "mobilenet_v2":
        return load(zoo.mobilenet_v2())
    if name == "lenet5":
        return load(zoo.lenet5_path())
    return load(zoo.light_model(name))


@pytest.fixture(autouse=True)
def _no_winograd_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCOPT_WINOGRAD", "off")  # plans independent of this machine's timings


@pytest.mark.parametrize(
    "name", ["tiny_cnn", "lenet5", "resnet18_like", "mobilenet_v2", "shufflenet", "squeezenet"]
)
def test_planned_graph_verifies_and_computes_the_same(name: str) -> None:
    g = _model(name)
    p = plan_cpu(g, lanes=8)
    verify(p)
    assert is_planned(p) and not is_planned(g)
    assert {"conv2d", "batch_norm"} & {n.op for n in g.nodes}
    assert not {"conv2d", "batch_norm"} & {n.op for n in p.nodes}, "every conv was planned"
    assert [v.name for v in p.outputs] == [v.name for v in g.outputs]
    feeds = _feeds(g)
    for a, b in zip(run(g, feeds), run(p, feeds)):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-4 * float(np.abs(a).max()))
    assert any(v.type.layout is not None for n in p.nodes for v in n.outputs)
    assert plan_cpu(p) is p, "planning a planned graph changes nothing"


def test_mobile_blocks_fuse_hard_swish_and_keep_se_gates_blocked() -> None:
    """PP-LCNet-style blocks: hard-swish / hard-sigmoid run in the conv epilogues, the SE gate
    multiplies the blocked tensor as it is, and the build computes what the interpreter does."""
    from mcopt.targets import build
    from mcopt.testing.lcnet import pp_lcnet

    g = load(pp_lcnet(scale=0.25, resolution=64, num_classes=10))
    p = plan_cpu(g, lanes=8)
    verify(p)
    ops = [n.op for n in p.nodes]
    assert "hard_swish" not in ops and "hard_sigmoid" not in ops
    acts = {n.attrs["activation"] for n in p.nodes if n.op == "fused_conv2d"}
    assert {"hard_swish", "hard_sigmoid", "relu"} <= acts
    gates = [n for n in p.nodes if n.op == "mul"]
    assert gates and all(n.output.type.layout is not None for n in gates)
    feeds = _feeds(g)
    ref = run(g, feeds)[0]
    np.testing.assert_allclose(
        run(p, feeds)[0], ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max())
    )
    got = build(g, "cpu").run(feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_shufflenet_shuffles_are_planned_into_grouped_kernels() -> None:
    """Every ShuffleNet shuffle is followed by a depthwise and a grouped conv: it sinks into the
    grouped conv's input (``in_perm``), the depthwise conv between reads the unshuffled tensor."""
    g = _model("shufflenet")
    p = plan_cpu(g, lanes=8)
    fused = [n for n in p.nodes if n.op == "fused_conv2d"]
    kernels = {n.attrs["kernel"] for n in fused}
    assert "grouped" in kernels or "block_diagonal" in kernels
    sunk = [n for n in fused if n.attrs["in_perm"]]
    assert sunk and all(n.attrs["groups"] > 1 for n in sunk)
    assert all(n.inputs[0].producer.attrs["kernel"] == "depthwise" for n in sunk)
    assert not {"transpose", "permute_channels"} & {n.op for n in p.nodes}
    feeds = _feeds(g)
    np.testing.assert_allclose(run(p, feeds)[0], run(g, feeds)[0], rtol=1e-4, atol=1e-6)


def test_winograd_pass_output_runs_on_the_one_blocked_winograd_kernel() -> None:
    g, _ = run_passes(_model("tiny_cnn"), ["cleanup", "winograd:tile=4"], PassContext())
    assert g.nodes_of("winograd_conv2d")
    p = plan_cpu(g, lanes=8)
    wino = [n for n in p.nodes if n.op == "fused_conv2d" and n.attrs["kernel"] == "winograd"]
    assert wino and all(n.attrs["tile"] == 4 for n in wino)
    assert not p.nodes_of("winograd_conv2d")
    feeds = _feeds(g)
    np.testing.assert_allclose(run(p, feeds)[0], run(g, feeds)[0], rtol=1e-3, atol=1e-4)


def test_pruned_dense_layers_are_planned_on_the_sparse_kernel() -> None:
    g, _ = run_passes(
        load(zoo.lenet300_path()),
        ["cleanup", "prune-weights:sparsity=0.95,encode=always"],
        PassContext(),
    )
    p = plan_cpu(g, lanes=8)
    kernels = [n.attrs["kernel"] for n in p.nodes if n.op == "fused_dense"]
    assert "sparse" in kernels
    assert planned_choices(p)["dense layer: sparse kernel (pruned weight)"] == kernels.count(
        "sparse"
    )


def test_the_verifier_checks_planned_attributes() -> None:
    p = plan_cpu(_model("tiny_cnn"), lanes=8)
    node = next(n for n in p.nodes if n.op == "fused_conv2d")
    node.attrs["kernel"] = "magic"
    with pytest.raises(VerifyError, match=r"kernel='magic'; valid: direct"):
        verify(p)


def test_layouts_print_on_the_types() -> None:
    text = str(plan_cpu(_model("tiny_cnn"), lanes=8))
    assert "@NCHW8c" in text and "fused_conv2d(" in text


def test_the_lowering_follows_the_planned_kernel_attributes() -> None:
    """Rewriting a plan's kernel attribute changes the lowered module: the lowering decides nothing."""
    from mcopt.targets import build
    from mcopt.targets.cpu.lower_planned import lower_planned
    from mcopt.targets.registry import get_target

    g = _model("tiny_cnn")
    target = get_target("cpu").tvm_target()
    p = plan_cpu(g, target)
    direct = str(lower_planned(p, target))
    for n in p.nodes:
        if n.op == "fused_conv2d":
            n.attrs["kernel"] = "plain"
    plain = str(lower_planned(p, target))
    assert "conv2d_nchwc" in direct and "conv2d_nchwc" not in plain
    feeds = _feeds(g)
    compiled = build(g, "cpu")
    assert compiled.planned is not None and is_planned(compiled.planned)
    np.testing.assert_allclose(compiled.run(feeds)[0], run(g, feeds)[0], rtol=1e-4, atol=1e-4)


PLANNED_SNAPSHOTS = {
    "planned-tiny_cnn": ("tiny_cnn", ["cleanup"]),
    "planned-winograd": ("tiny_cnn", ["cleanup", "winograd:tile=2"]),
    "planned-lenet300-pruned": (
        "lenet300",
        ["cleanup", "prune-weights:sparsity=0.95,encode=always"],
    ),
}


@pytest.mark.parametrize("snap", sorted(PLANNED_SNAPSHOTS))
def test_planned_graph_snapshot(snap: str) -> None:
    from test_snapshots import masked

    model, passes = PLANNED_SNAPSHOTS[snap]
    g = load(zoo.lenet300_path()) if model == "lenet300" else _model(model)
    g, _ = run_passes(g, passes, PassContext())
    text = masked(str(plan_cpu(g, lanes=8))) + "\n"
    path = SNAP / f"{snap}.txt"
    if os.environ.get("MCOPT_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    if not path.exists():
        pytest.fail(f"no snapshot {path.name}: run with MCOPT_UPDATE_SNAPSHOTS=1 and review it")
    assert text == path.read_text(), f"{snap}: the printed plan changed (see {path})"


def test_a_batch_norm_no_conv_absorbs_stays_blocked() -> None:
    """DenseNet's pre-activation BN after a concat runs as a per-channel affine on the blocked
    tensor instead of converting to NCHW and back (DenseNet-121: 1.38x)."""
    from mcopt.ir import Graph, TensorType
    from mcopt.targets import build

    rng = np.random.default_rng(1)
    g = Graph("dense_block")
    x = g.add_input("x", TensorType((1, 16, 8, 8)))

    def conv(v, o):  # type: ignore[no-untyped-def]
        w = g.const(rng.standard_normal((o, v.shape[1], 3, 3)).astype(np.float32) / 12)
        return g.add_node("conv2d", [v, w], {"pads": (1, 1, 1, 1)}).output

    a = conv(x, 16)
    cat = g.add_node("concat", [a, conv(a, 16)], {"axis": 1}).output
    stats = [rng.random(32).astype(np.float32) + 0.5 for _ in range(4)]
    bn = g.add_node("batch_norm", [cat, *(g.const(s) for s in stats)], {"epsilon": 1e-5}).output
    g.outputs.append(conv(g.add_node("relu", [bn]).output, 16))
    p = plan_cpu(g, lanes=8)
    verify(p)
    node = next(n for n in p.nodes if n.op == "batch_norm")
    assert node.output.type.layout is not None
    feeds = _feeds(g)
    ref = run(g, feeds)[0]
    np.testing.assert_allclose(run(p, feeds)[0], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(build(g, "cpu").run(feeds)[0], ref, rtol=1e-4, atol=1e-4)


def test_a_channel_shuffle_on_a_padded_layout_stays_blocked() -> None:
    """ShuffleNet's 136-channel stages are padded to whole blocks: the shuffle permutes the
    logical channels on the blocked tensor, the padding channels map to themselves."""
    from mcopt.ir import Graph, TensorType
    from mcopt.targets import build

    rng = np.random.default_rng(2)
    g = Graph("shuffle")
    x = g.add_input("x", TensorType((1, 8, 6, 6)))

    def conv(v, o):  # type: ignore[no-untyped-def]
        w = g.const(rng.standard_normal((o, v.shape[1], 1, 1)).astype(np.float32) / 3)
        return g.add_node("conv2d", [v, w]).output

    h = g.add_node("relu", [conv(x, 20)]).output  # 20 channels: padded in blocks of 8 and 16
    h = g.add_node("reshape", [h], {"shape": (1, 4, 5, 6, 6)}).output
    h = g.add_node("transpose", [h], {"perm": (0, 2, 1, 3, 4)}).output
    h = g.add_node("reshape", [h], {"shape": (1, 20, 6, 6)}).output
    g.outputs.append(conv(g.add_node("sigmoid", [h]).output, 8))
    p = plan_cpu(g, lanes=8)
    verify(p)
    node = next(n for n in p.nodes if n.op == "permute_channels")
    assert node.output.type.layout is not None and node.output.type.layout.is_padded
    feeds = _feeds(g)
    ref = run(g, feeds)[0]
    np.testing.assert_allclose(run(p, feeds)[0], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(build(g, "cpu").run(feeds)[0], ref, rtol=1e-4, atol=1e-5)


def test_a_concat_of_padded_blocks_stays_blocked() -> None:
    """Channel counts that are not multiples of the block (20 + 36) concatenate on the blocked
    tensors by logical channel; the output's padding channels are zero."""
    from mcopt.ir import Graph, TensorType
    from mcopt.targets import build

    rng = np.random.default_rng(3)
    g = Graph("cat")
    x = g.add_input("x", TensorType((1, 8, 6, 6)))

    def conv(v, o):  # type: ignore[no-untyped-def]
        w = g.const(rng.standard_normal((o, v.shape[1], 1, 1)).astype(np.float32) / 3)
        return g.add_node("conv2d", [v, w]).output

    cat = g.add_node("concat", [conv(x, 20), conv(x, 36)], {"axis": 1}).output
    g.outputs.append(conv(g.add_node("relu", [cat]).output, 8))
    p = plan_cpu(g, lanes=8)
    verify(p)
    node = next(n for n in p.nodes if n.op == "concat")
    assert node.output.type.layout is not None
    feeds = _feeds(g)
    ref = run(g, feeds)[0]
    np.testing.assert_allclose(run(p, feeds)[0], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(build(g, "cpu").run(feeds)[0], ref, rtol=1e-4, atol=1e-5)


def _fire(seed: int):  # type: ignore[no-untyped-def]
    """A SqueezeNet fire module: squeeze 1x1, expand 1x1 + 3x3, channel concat, then a pool and
    a conv reading the concat."""
    from mcopt.ir import Graph, TensorType

    rng = np.random.default_rng(seed)
    g = Graph("fire")
    x = g.add_input("x", TensorType((1, 24, 9, 9)))

    def conv(v, o, k):  # type: ignore[no-untyped-def]
        w = g.const(rng.standard_normal((o, v.shape[1], k, k)).astype(np.float32) / (3 * k))
        b = g.const(rng.standard_normal(o).astype(np.float32) / 10)
        y = g.add_node("conv2d", [v, w, b], {"pads": (k // 2,) * 4}).output
        return g.add_node("relu", [y]).output

    s = conv(x, 16, 1)
    cat = g.add_node("concat", [conv(s, 16, 1), conv(s, 32, 3)], {"axis": 1}).output
    pool = g.add_node("max_pool", [cat], {"kernel": (3, 3), "strides": (2, 2)}).output
    g.outputs.append(conv(pool, 8, 1))
    return g


def _calls(graph, target):  # type: ignore[no-untyped-def]
    import tvm

    from mcopt.targets.cpu.lower_planned import lower_planned

    mod = lower_planned(graph, target)
    return [
        str(b.value.args[0].name_hint).rstrip("0123456789")
        for blk in mod["main"].body.blocks
        for b in blk.bindings
        if isinstance(b.value, tvm.relax.Call)
        and b.value.op.name in ("relax.call_tir", "relax.call_tir_inplace")
    ]


def test_fire_module_expand_convs_write_into_the_concat(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two expand convs of a fire module write their channel blocks of the concat's buffer
    (the second in place): no concat copy, same result. A member whose kernel does not build
    (a fallback to plain ops) is copied into the buffer instead."""
    from mcopt.targets import build
    from mcopt.targets.cpu.kernels import relax_ops
    from mcopt.targets.registry import get_target

    g = _fire(4)
    target = get_target("cpu").tvm_target()
    calls = _calls(plan_cpu(g, target), target)
    assert "concatenate" not in calls and "concat_nchwc" not in calls
    assert calls.count("conv2d_nchwc") == 4
    feeds = _feeds(g)
    ref = run(g, feeds)[0]
    np.testing.assert_allclose(build(g, "cpu").run(feeds)[0], ref, rtol=1e-4, atol=1e-5)

    real = relax_ops.emit_conv2d

    def failing(bb, x, weight, *args, **kw):  # type: ignore[no-untyped-def]
        if kw.get("into") is not None and weight.shape[2] == 3:
            raise ValueError("no kernel for this shape (test)")
        return real(bb, x, weight, *args, **kw)

    monkeypatch.setattr(relax_ops, "emit_conv2d", failing)
    g = _fire(4)
    assert "copy_nchwc" in _calls(plan_cpu(g, target), target)
    np.testing.assert_allclose(build(g, "cpu").run(feeds)[0], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pad", [0, 1])
def test_the_first_conv_reads_the_nchw_image(pad: int) -> None:
    """A conv on the RGB image (one block of 3 channels) reads NCHW through its padded copy (or
    directly when it has none): no separate to_nchwc pass; same result."""
    from mcopt.ir import Graph, TensorType
    from mcopt.targets import build
    from mcopt.targets.registry import get_target

    rng = np.random.default_rng(5)
    g = Graph("stem")
    x = g.add_input("x", TensorType((1, 3, 17, 17)))
    w = g.const(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) / 5)
    y = g.add_node("conv2d", [x, w], {"pads": (pad,) * 4, "strides": (2, 2)}).output
    g.outputs.append(g.add_node("relu", [y]).output)
    target = get_target("cpu").tvm_target()
    calls = _calls(plan_cpu(g, target), target)
    assert "to_nchwc" not in calls and "conv2d_nchwc" in calls
    feeds = _feeds(g)
    np.testing.assert_allclose(
        build(g, "cpu").run(feeds)[0], run(g, feeds)[0], rtol=1e-4, atol=1e-5
    )


def test_dense_over_tokens_is_planned_2d_and_softmax_matches() -> None:
    """A MatMul over (N, T, C) tokens runs as a reshape + planned dense (not TVM's generic batched
    matmul); softmax over the last and a middle axis as max / exp-sum / divide: onnxruntime's
    outputs."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import mcopt
    from mcopt.targets.cpu.planning import plan_cpu

    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((12, 30)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["y"], axis=-1),
        helper.make_node("Softmax", ["h"], ["z"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 7, 12])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "z")],
        initializer=[w],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.standard_normal((1, 7, 12)).astype(np.float32) * 3
    res = mcopt.optimize(m, target="cpu", passes=["cleanup"])
    assert "fused_dense" in [n.op for n in plan_cpu(res.graph).nodes]
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, ref in zip(res.compiled.run(x), sess.run(None, {"x": x})):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
