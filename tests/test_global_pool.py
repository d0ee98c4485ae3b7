"""``global-pool``: spatial ``reduce_mean`` / ``reduce_max`` rewritten as global pools (planned
on the blocked layout), checked against the interpreter and onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mcopt.interpreter import run
from mcopt.onnx_io import import_model
from mcopt.pass_manager import PassContext, get_pass


def _model(op: str, axes: list[int], keepdims: int, rank: int = 4) -> onnx.ModelProto:
    shape = [1, 8, 6, 5][:rank]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    ax = helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes)
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)
    g = helper.make_graph([node], "g", [x], [y], [ax])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("axes", [[2, 3], [-1, -2], [3, 2]])
@pytest.mark.parametrize("keepdims", [1, 0])
def test_spatial_reductions_become_global_pools(op: str, axes: list[int], keepdims: int) -> None:
    import onnxruntime as ort

    model = _model(op, axes, keepdims)
    g = import_model(model)
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 5)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert get_pass("global-pool").run(g, PassContext())
    ops = [n.op for n in g.nodes]
    assert ops[0] == ("global_avg_pool" if op == "ReduceMean" else "global_max_pool")
    assert ops[1:] == ([] if keepdims else ["reshape"])
    got = run(g, {"x": x})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axes,rank", [([1, 2], 4), ([2], 4), ([1, 2, 3], 4), ([2, 3], 5)])
def test_other_reductions_stay(axes: list[int], rank: int) -> None:
    """Not exactly H and W of a 4-D tensor: left alone."""
    model = _model("ReduceMean", axes, 1, rank=rank) if rank == 4 else _five_d(axes)
    g = import_model(model)
    assert not get_pass("global-pool").run(g, PassContext())


def _five_d(axes: list[int]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    ax = helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes)
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)
    g = helper.make_graph([node], "g", [x], [y], [ax])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_se_block_mean_runs_blocked() -> None:
    """PP-OCRv6's squeeze-and-excitation: ``ReduceMean(axes=[2, 3])`` after a depthwise conv, two
    1x1 convs, a gate: after ``cleanup`` the mean is a global pool, planned on the blocked layout
    (no layout conversion of the feature map); the build equals onnxruntime."""
    pytest.importorskip("tvm")
    import onnxruntime as ort

    from mcopt.pass_manager import PassManager
    from mcopt.targets.cpu.planning import plan_cpu
    from mcopt.targets.registry import get_target
    from mcopt.targets.relax.builder import build

    rng = np.random.default_rng(1)
    c = 32

    def w(*s: int) -> np.ndarray:
        return (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)

    inits = [
        helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel())
        for n, a in [("dw", w(c, 1, 3, 3)), ("w1", w(8, c, 1, 1)), ("w2", w(c, 8, 1, 1))]
    ] + [helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])]
    nodes = [
        helper.make_node("Conv", ["x", "dw"], ["d"], group=c, pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["d", "axes"], ["m"], keepdims=1),
        helper.make_node("Conv", ["m", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["s"]),
        helper.make_node("HardSigmoid", ["s"], ["gate"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["d", "gate"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 20, 20])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph(nodes, "se", [x], [y], inits),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    g = import_model(model)
    PassManager(["cleanup"]).run(g, PassContext())
    pg = plan_cpu(g, get_target("cpu").tvm_target())
    pool = next(n for n in pg.nodes if n.op == "global_avg_pool")
    assert pool.output.type.layout is not None
    feed = rng.standard_normal((1, c, 20, 20)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": feed})[0]
    np.testing.assert_allclose(build(import_model(model), "cpu").run(feed)[0], ref, atol=1e-5)


@pytest.mark.parametrize("blocked", [True, False])
def test_a_large_global_mean_is_summed_in_stages(blocked: bool) -> None:
    """The mean of 160 x 160 pixels (PP-OCRv6's SE pooling) is within float32 rounding of the
    float64 mean: one running float32 sum over 25,600 terms drifted 3e-5 relative here (1.6e-4
    on the detector's feature map)."""
    pytest.importorskip("tvm")
    from mcopt.ir import Graph, TensorType
    from mcopt.targets.relax.builder import build

    rng = np.random.default_rng(2)
    g = Graph("gap")
    x = g.add_input("x", TensorType((1, 16, 160, 160)))
    if blocked:  # a conv before it: the pool runs on the blocked layout
        w = g.const(np.eye(16, dtype=np.float32).reshape(16, 16, 1, 1))
        x = g.add_node("conv2d", [x, w]).output
    g.outputs.append(g.add_node("global_avg_pool", [x]).output)
    # smooth, like a feature map (regions of large values): a running sum drifts most there
    blocks = rng.standard_normal((1, 16, 20, 20))
    feed = (np.kron(blocks, np.ones((1, 1, 8, 8))) + 2).astype(np.float32)
    ref = feed.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    got = build(g, "cpu").run(feed)[0]
    np.testing.assert_allclose(got, ref, rtol=5e-6, atol=0)
