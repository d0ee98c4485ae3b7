"""int8 kernels (targets/cpu/kernels/int8_*.py, targets/relax/lower_quant.py): compiled == numpy reference bit
for bit on the integer paths, and the dot-product instructions really appear in the assembly."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mcopt.ops.quant import (  # noqa: E402
    output_bounds,
    qconv2d_ref,
    qdense_ref,
    requant_multiplier,
    weight_type,
)
from mcopt.targets.cpu.kernels import int8_conv, int8_dense  # noqa: E402
from mcopt.targets.cpu.kernels.int8_intrin import choose_isa  # noqa: E402
from mcopt.targets.cpu.kernels.target_info import host_target  # noqa: E402

HOST = host_target(2)


def _attrs(rng, oc, out_dtype, x_zp, act_min=-np.inf, **conv):
    """The op's attributes and its weight scales (which live on the weight's type)."""
    ws = tuple(rng.uniform(1e-3, 1e-2, oc))
    return ws, dict(
        x_scale=0.02, x_zero_point=x_zp,
        out_dtype=out_dtype, out_scale=0.3, out_zero_point=5 if out_dtype == "uint8" else 0,
        act_min=act_min, act_max=np.inf, **conv,
    )  # fmt: skip


def _run(func, target, arrays, out_shape, out_dtype):
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    args.append(tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev))
    lib(*args)
    return args[-1].numpy()


CONV_CASES = [  # ic, oc, hw, k, stride, pad, in_dtype, out_dtype, 7-bit weights
    (16, 16, 9, 3, 1, 1, "uint8", "uint8", True),
    (3, 12, 11, 3, 2, 1, "uint8", "float32", True),
    (24, 8, 7, 1, 1, 0, "int8", "int8", True),
    (8, 16, 6, 3, 1, 0, "uint8", "uint8", False),
]


@pytest.mark.parametrize("ic,oc,hw,k,stride,pad,in_dtype,out_dtype,small", CONV_CASES)
def test_int8_conv_exact(ic, oc, hw, k, stride, pad, in_dtype, out_dtype, small):
    rng = np.random.default_rng(ic + oc)
    lo, hi = (0, 256) if in_dtype == "uint8" else (-128, 128)
    x = rng.integers(lo, hi, (1, ic, hw, hw)).astype(in_dtype)
    wr = 64 if small else 128
    w = rng.integers(-wr, wr, (oc, ic, k, k)).astype(np.int8)
    b = rng.integers(-2000, 2000, oc).astype(np.int32)
    x_zp = 7 if in_dtype == "uint8" else 0
    ws, at = _attrs(rng, oc, out_dtype, x_zp, 0.0, strides=(stride, stride),
                    pads=(pad,) * 4, dilations=(1, 1), groups=1)  # fmt: skip
    ref = qconv2d_ref(x, w, b, in_types=(None, weight_type(w.shape, ws), None), **at)
    isa = choose_isa(HOST, small)
    n, _, oh, ow = ref.shape
    p = int8_conv.choose_int8_conv_params(oc, ow, oh, n, isa, 2)
    func = int8_conv.int8_conv2d(
        x.shape, w.shape, at["strides"], at["pads"], (1, 1), in_dtype=in_dtype, x_zero_point=x_zp,
        out_dtype=out_dtype, out_zero_point=at["out_zero_point"], bounds=output_bounds(at),
        params=p,
    )  # fmt: skip
    kp = int8_conv.pack_int8_conv_weight(w, p.lanes)
    ocp = kp.shape[0] * p.lanes
    be = int8_conv.conv_bias_eff(w, b, x_zp + int8_conv.zero_shift(isa, in_dtype), ocp)
    m = np.zeros(ocp, np.float32)
    m[:oc] = requant_multiplier(at, ws, oc)
    got = _run(func, HOST, [x, kp, be, m], ref.shape, ref.dtype)
    if out_dtype == "float32":
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, ref)


def test_int8_depthwise_exact():
    rng = np.random.default_rng(3)
    c = 16
    x = rng.integers(0, 256, (1, c, 10, 10)).astype(np.uint8)
    w = rng.integers(-128, 128, (c, 1, 3, 3)).astype(np.int8)
    b = rng.integers(-500, 500, c).astype(np.int32)
    ws, at = _attrs(rng, c, "uint8", 9, 0.0, strides=(2, 2), pads=(1, 1, 1, 1),
                    dilations=(1, 1), groups=c)  # fmt: skip
    ref = qconv2d_ref(x, w, b, in_types=(None, weight_type(w.shape, ws), None), **at)
    func = int8_conv.int8_depthwise_conv2d(
        x.shape, w.shape, (2, 2), (1, 1, 1, 1), (1, 1), in_dtype="uint8", x_zero_point=9,
        out_dtype="uint8", out_zero_point=at["out_zero_point"], bounds=output_bounds(at),
    )  # fmt: skip
    be = int8_conv.conv_bias_eff(w, b, 9, c)
    got = _run(func, HOST, [x, w[:, 0], be, requant_multiplier(at, ws, c)], ref.shape, ref.dtype)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("m,n,k,small", [(1, 40, 100, True), (3, 16, 64, False)])
def test_int8_dense_exact(m, n, k, small):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 256, (m, k)).astype(np.uint8)
    wr = 64 if small else 128
    w = rng.integers(-wr, wr, (n, k)).astype(np.int8)
    b = rng.integers(-900, 900, n).astype(np.int32)
    ws, at = _attrs(rng, n, "uint8", 4, 0.0)
    ref = qdense_ref(x, w, b, in_types=(None, weight_type(w.shape, ws), None), **at)
    isa = choose_isa(HOST, small)
    lanes = 8 if isa in (None, "avx2", "vnni8") else (4 if isa == "sdot" else 16)
    func = int8_dense.int8_dense(m, n, k, isa=isa, lanes=lanes, in_dtype="uint8", x_zero_point=4,
                                 out_dtype="uint8", out_zero_point=at["out_zero_point"],
                                 bounds=output_bounds(at))  # fmt: skip
    kp = int8_dense.pack_int8_dense_weight(w, lanes)
    np_ = kp.shape[0] * lanes
    be = int8_conv.conv_bias_eff(w, b, 4 + int8_conv.zero_shift(isa, "uint8"), np_)
    mult = np.zeros(np_, np.float32)
    mult[:n] = requant_multiplier(at, ws, n)
    got = _run(func, HOST, [x, kp, be, mult], ref.shape, ref.dtype)
    np.testing.assert_array_equal(got, ref)


def _asm(target, isa, lanes):
    func = int8_conv.int8_conv2d(
        (1, 32, 8, 8), (32, 32, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
        params=int8_conv.Int8ConvParams(isa, lanes, 4, 1),
    )  # fmt: skip
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    return lib.mod.inspect_source("s")


@pytest.mark.parametrize(
    "target,isa,lanes,instr",
    [
        ({"kind": "llvm", "mcpu": "znver3"}, "avx2", 8, "vpmaddubsw"),
        ({"kind": "llvm", "mcpu": "cascadelake"}, "vnni16", 16, "vpdpbusd"),
        ({"kind": "llvm", "mcpu": "znver4"}, "vnni16", 16, "vpdpbusd"),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
         "sdot", 4, "sdot"),
    ],
)  # fmt: skip
def test_dot_product_instructions_in_asm(target, isa, lanes, instr):
    t = tvm.target.Target(target)
    assert choose_isa(t, True) == isa
    assert instr in _asm(t, isa, lanes)


def test_quantized_model_compiles_exactly():
    from mcopt.interpreter import run
    from mcopt.onnx_io import import_model
    from mcopt.pass_manager import PassContext, PassManager
    from mcopt.targets.relax.builder import build
    from mcopt.testing import zoo

    g = import_model(zoo.tiny_cnn())
    inp = g.inputs[0]
    rng = np.random.default_rng(0)
    feeds = [{inp.name: rng.standard_normal(inp.shape).astype(np.float32)} for _ in range(3)]
    PassManager(["cleanup", "quantize-int8"]).run(g, PassContext(calib=feeds))
    assert {"qconv2d", "qdense"} <= {n.op for n in g.nodes}
    cm = build(g, "cpu")
    for f in feeds:
        np.testing.assert_allclose(cm.run(f)[0], run(g, f)[0], rtol=1e-5, atol=1e-5)
