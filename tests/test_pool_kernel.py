"""targets/cpu/kernels/pool.py: blocked max / average pooling against the op references (padding,
ceil mode, dilation, count_include_pad), and its use in planned builds."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from mcopt import interpreter  # noqa: E402
from mcopt.ir import Graph  # noqa: E402
from mcopt.ops.pool import _geometry, avg_pool_ref, max_pool_ref  # noqa: E402
from mcopt.targets import build  # noqa: E402
from mcopt.targets.cpu.kernels.layout import pack_nchwc, unpack_nchwc  # noqa: E402
from mcopt.targets.cpu.kernels.pool import pool2d_nchwc  # noqa: E402
from mcopt.targets.cpu.kernels.target_info import host_target  # noqa: E402

CASES = [
    # kernel, strides, pads (t, l, b, r), dilations, ceil_mode, count_include_pad
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0, 0),  # ResNet's stem pool
    ((3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 1, 0),  # SqueezeNet / GoogLeNet: ceil mode
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0, 0),  # VGG / LeNet
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0, 1),  # Inception's avg pool, pads counted
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0, 0),
    ((5, 3), (2, 1), (2, 0, 1, 1), (1, 1), 1, 1),  # asymmetric everything
    ((3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 0, 0),  # dilated (max only)
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", CASES)
def test_pool_kernel_matches_reference(kind: str, case: tuple) -> None:
    kernel, strides, pads, dil, ceil, include = case
    if kind == "avg" and dil != (1, 1):
        pytest.skip("ONNX AveragePool has no dilations here")
    attrs = {"kernel": kernel, "strides": strides, "pads": pads, "ceil_mode": ceil}
    if kind == "max":
        attrs["dilations"] = dil
    else:
        attrs["count_include_pad"] = include
    x = np.random.default_rng(0).standard_normal((1, 16, 13, 11)).astype(np.float32)
    ref = (max_pool_ref if kind == "max" else avg_pool_ref)(x, **attrs)
    oh, ow = _geometry(x.shape, attrs)
    func = pool2d_nchwc(
        (1, 2, 13, 11, 8), (oh, ow), kind, kernel, strides, pads, dil, bool(include)
    )
    lib = tvm.compile(tvm.IRModule({"main": func}), target=host_target())
    dev = tvm.cpu()
    xin = tvm.runtime.tensor(pack_nchwc(x, 8), dev)
    out = tvm.runtime.tensor(np.zeros((1, 2, oh, ow, 8), np.float32), dev)
    lib["main"](xin, out)
    got = unpack_nchwc(out.numpy())
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_planned_build_uses_the_pool_kernel() -> None:
    """conv -> max_pool (stem) -> conv -> avg_pool(ceil) in a planned build: the pools run as
    mcopt's kernels on blocked tensors and the result matches the interpreter."""
    from mcopt.ir import ttype
    from mcopt.targets.registry import get_target
    from mcopt.targets.relax.builder import lower_for

    rng = np.random.default_rng(1)
    g = Graph("pools")
    x = g.add_input("x", ttype((1, 3, 30, 30)))

    def op(name: str, *ins, **attrs):  # type: ignore[no-untyped-def]
        return g.add_node(name, list(ins), attrs).output

    w1 = g.const(rng.standard_normal((16, 3, 3, 3)))
    p1 = op("max_pool", op("conv2d", x, w1, pads=(1, 1, 1, 1)), kernel=(3, 3), strides=(2, 2),
            pads=(1, 1, 1, 1))  # fmt: skip
    c2 = op("conv2d", p1, g.const(rng.standard_normal((16, 16, 1, 1))))
    g.outputs = [op("avg_pool", c2, kernel=(3, 3), strides=(2, 2), ceil_mode=1)]
    kernels = {gv.name_hint for gv in lower_for(g, get_target("cpu")).functions}
    assert any(k.startswith("max_pool_nchwc") for k in kernels), kernels
    assert any(k.startswith("avg_pool_nchwc") for k in kernels), kernels
    xv = rng.standard_normal((1, 3, 30, 30)).astype(np.float32)
    ref = interpreter.run(g, {"x": xv})[0]
    got = build(g, "cpu").run(xv)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
