"""The few-output-channel fp32 conv (targets/cpu/kernels/conv2d_narrow.py) against float64 numpy:
strides, dilation, asymmetric padding, widths that are not a multiple of the tile, 1-4 output
channels, every epilogue part (bias, residual, activation)."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt.targets.cpu.kernels import layout  # noqa: E402
from mcopt.targets.cpu.kernels.conv2d_narrow import conv2d_narrow  # noqa: E402
from mcopt.targets.cpu.kernels.epilogue import Epilogue  # noqa: E402
from tests.test_kernels import _conv_ref, _rel_err, _run  # noqa: E402


@pytest.mark.parametrize(
    "ic,oc,h,w,k,stride,pad,dil,ep",
    [
        (32, 1, 12, 21, (7, 3), 1, (3, 1, 3, 1), 1, Epilogue(True, False, None)),  # basic-pitch
        (48, 1, 9, 13, (3, 3), 1, (1, 1, 1, 1), 1, Epilogue(True, True, "relu")),
        (16, 3, 11, 10, (3, 3), 2, (0, 1, 2, 0), 1, Epilogue(True, False, "clip", -0.5, 0.5)),
        (32, 4, 8, 9, (3, 3), 1, (2, 2, 2, 2), 2, Epilogue(False, False, "silu")),
        (8, 2, 6, 7, (1, 1), 1, (0, 0, 0, 0), 1, Epilogue(True, False, "leaky_relu", 0.1, -1.0)),
    ],
)
def test_narrow_conv_matches_numpy(ic, oc, h, w, k, stride, pad, dil, ep):
    rng = np.random.default_rng(ic + oc)
    bn = 16 if ic % 16 == 0 else 8
    x = rng.standard_normal((1, ic, h, w)).astype("float32")
    wt = (rng.standard_normal((oc, ic, *k)) / np.sqrt(ic * k[0] * k[1])).astype("float32")
    b = rng.standard_normal(oc).astype("float32")
    ref = _conv_ref(x, wt, b if ep.bias else None, stride, pad, dil)
    res = rng.standard_normal(ref.shape).astype("float32") if ep.residual else None
    ref = ep.apply_numpy(ref, 0.0, res)
    func = conv2d_narrow(x.shape, wt.shape, bn, stride, pad, dil, ep)
    packed = wt.reshape(oc, ic // bn, bn, *k).transpose(0, 1, 3, 4, 2)
    _check(func, [layout.pack_nchwc(x, bn), packed], b, res, ep, ref)


def _check(func, args, b, res, ep, ref):  # type: ignore[no-untyped-def]
    """Run ``func`` on ``args`` + the epilogue's bias / residual; compare with ``ref``."""
    oc = ref.shape[1]
    if ep.bias:
        args.append(b.reshape(1, oc))
    if ep.residual:
        args.append(layout.pack_nchwc(res, oc))
    got = _run(func, args, (1, 1, *ref.shape[2:], oc))
    assert _rel_err(layout.unpack_nchwc(got), ref) <= 1e-5


def test_one_channel_head_builds_on_the_narrow_kernel() -> None:
    """basic-pitch's heads: 32 channels -> 1 (7x3) then a sigmoid, and a 2-channel one beside it,
    against onnxruntime through every route; the build calls the narrow kernel."""
    from onnx import TensorProto, helper, numpy_helper

    import mcopt
    from mcopt.testing.routes import assert_routes_match, outputs_by_route

    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(5)
    c = lambda n, a: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    inits = [
        c("w1", rng.standard_normal((32, 3, 3, 3)) / 5), c("b1", rng.standard_normal(32)),
        c("w2", rng.standard_normal((1, 32, 7, 3)) / 15), c("b2", rng.standard_normal(1)),
        c("w3", rng.standard_normal((2, 32, 3, 3)) / 15),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[3, 1, 3, 1]),
        helper.make_node("Sigmoid", ["c2"], ["y"]),
        helper.make_node("Conv", ["r1", "w3"], ["z"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20, 30])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "z")],
        initializer=inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.standard_normal((1, 3, 20, 30)).astype(np.float32)
    assert_routes_match(outputs_by_route(m, {"x": x}, passes=["cleanup"]), rtol=1e-5, atol=1e-5)
    res = mcopt.optimize(m, target="cpu", measure=False, check=False)
    names = [r["name"] for r in res.compiled.profile([x], repeat=1)]
    assert sum("conv2d_narrow" in n for n in names) == 2, names


@pytest.mark.parametrize(
    "oc,h,w,k,stride,pad,plain,ep",
    [
        (1, 1, 1000, (1, 256), 2, (0, 127, 0, 128), True, Epilogue(False, False, None)),  # CQT
        (2, 3, 200, (2, 20), (1, 3), (1, 0, 0, 5), False, Epilogue(True, True, "relu")),
        (4, 1, 300, (1, 16), 1, (0, 0, 0, 0), True, Epilogue(True, False, None)),
    ],
)
def test_taps_conv_matches_numpy(oc, h, w, k, stride, pad, plain, ep):
    from mcopt.targets.cpu.kernels.conv2d_narrow import conv2d_taps, pack_taps_weight

    rng = np.random.default_rng(oc + w)
    x = rng.standard_normal((1, 1, h, w)).astype("float32")
    wt = (rng.standard_normal((oc, 1, *k)) / np.sqrt(k[0] * k[1])).astype("float32")
    b = rng.standard_normal(oc).astype("float32")
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ref = _conv_ref(x, wt, b if ep.bias else None, 1, pad)[:, :, ::sh, ::sw]
    res = rng.standard_normal(ref.shape).astype("float32") if ep.residual else None
    ref = ep.apply_numpy(ref, 0.0, res)
    func = conv2d_taps(x.shape, wt.shape, 16, stride, pad, 1, ep, plain_input=plain)
    _check(func, [x if plain else x[..., None], pack_taps_weight(wt, 16)], b, res, ep, ref)


def test_narrow_rule_needs_enough_steps_per_output() -> None:
    """MTCNN's 32 -> 2 / 32 -> 4 1x1 heads (two vector steps per output) stay on the direct
    template; basic-pitch's 32 -> 1 7x3 (42 steps) and a 64 -> 4 3x3 (36) take the narrow kernel."""
    from mcopt.targets.cpu.kernels.conv2d_narrow import narrow_conv_applies

    assert not narrow_conv_applies(2, 32, 1, 1, 16, 16, "float32")
    assert not narrow_conv_applies(4, 32, 1, 1, 16, 16, "float32")
    assert narrow_conv_applies(1, 32, 7, 3, 16, 16, "float32")
    assert narrow_conv_applies(4, 64, 3, 3, 16, 16, "float32")
    assert not narrow_conv_applies(8, 64, 3, 3, 16, 16, "float32")  # the direct template's lanes
    assert not narrow_conv_applies(1, 64, 3, 3, 4, 4, "float32")  # NEON: 4-lane input blocks
