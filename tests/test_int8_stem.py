"""The pixels-on-lanes int8 conv (:mod:`mcopt.targets.cpu.kernels.int8_stem_vnni`): few output
channels on the plain image, AVX-512 VNNI + VBMI. Bit for bit against numpy's quantize, the
integer conv and :meth:`QEpilogue.apply_numpy`; skipped where the host lacks the instructions."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt.ops.quant import qconv2d_acc  # noqa: E402
from mcopt.targets.cpu.kernels.int8_conv import conv_bias_eff  # noqa: E402
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue  # noqa: E402
from mcopt.targets.cpu.kernels.int8_stem_vnni import (  # noqa: E402
    int8_stem_vnni,
    pack_stem_weight,
    stem_applies,
)
from mcopt.targets.cpu.kernels.target_info import host_target  # noqa: E402

REQUANT = QEpilogue(base_dtype="uint8", base_bounds=(0.0, 255.0), base_zp=0)
HSWISH_Q = QEpilogue(post_act="hard_swish", q_dtype="uint8", q_scale=2.0, q_zp=3)
FLOAT_OUT = QEpilogue(base_bounds=(-3.0, 6.0))


def _stem_here() -> bool:
    return stem_applies(host_target(), 3, 8, (5, 5), (1, 1), (1, 1), 28, 1, REQUANT)


needs_stem = pytest.mark.skipif(not _stem_here(), reason="no AVX-512 VNNI + VBMI here")


@needs_stem
@pytest.mark.parametrize(
    "ic,oc,lanes,hw,k,stride,pad,ep,quant",
    [
        (1, 3, 8, 28, 5, 1, 2, REQUANT, True),  # LeNet-5's first conv pruned to 3 channels
        (1, 6, 8, 28, 5, 1, 2, REQUANT, False),  # unpruned, on a u8 input
        (3, 8, 8, 33, 3, 2, 1, HSWISH_Q, True),  # a 3x3 stride-2 RGB stem, hard-swish
        (2, 5, 16, 50, 7, 3, 3, FLOAT_OUT, True),  # stride 3, 7x7, float out, 16-lane block
        (1, 1, 8, 20, 4, 1, 0, REQUANT, True),  # one channel, 4 columns, rows of 17 (overlap)
    ],
)
def test_stem_kernel_is_bit_exact(ic, oc, lanes, hw, k, stride, pad, ep, quant):
    rng = np.random.default_rng(ic * 7 + oc + k)
    scale, zp = 0.0127, 33
    x = (rng.standard_normal((1, ic, hw, hw)) * 1.5).astype(np.float32)
    x[0, 0, 0, :4] = np.array([0.5, 1.5, -0.5, 2.5], np.float32) * scale  # ties: half to even
    xq = np.clip(np.round(x / np.float32(scale)) + np.float32(zp), 0, 255).astype(np.uint8)
    w = rng.integers(-128, 128, (oc, ic, k, k)).astype(np.int8)
    b = rng.integers(-2000, 2000, oc).astype(np.int32)
    attrs = {"x_zero_point": zp, "strides": (stride,) * 2, "pads": (pad,) * 4,
             "dilations": (1, 1), "groups": 1}  # fmt: skip
    acc = qconv2d_acc(xq, w, b, attrs)
    oh, ow = acc.shape[2:]
    mult = np.zeros(lanes, np.float32)
    mult[:oc] = rng.random(oc) * 0.05 + 0.005
    bp = np.zeros(lanes, np.int32)
    bp[:oc] = b
    wp = np.zeros((lanes, ic, k, k), np.int8)
    wp[:oc] = w
    be = conv_bias_eff(wp, bp, zp, lanes)
    full = np.broadcast_to(be.reshape(1, -1, 1, 1), (1, lanes, oh, ow)).copy()
    full[:, :oc] = acc  # the padding channels: the epilogue of their bias alone
    ref = ep.apply_numpy(full, mult.reshape(1, -1, 1, 1), None)
    func = int8_stem_vnni(
        x.shape, oc, lanes, (k, k), (stride,) * 2, (pad,) * 4, x_zero_point=zp, epilogue=ep,
        in_quant=(scale, zp) if quant else None,
    )  # fmt: skip
    lib = tvm.compile(tvm.IRModule({"main": func}), target=host_target())
    out = np.full((1, 1, oh, ow, lanes), 77, ep.out_dtype)
    args = [x if quant else xq, pack_stem_weight(w), be, mult, out]
    targs = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*targs)
    got = targs[-1].numpy()[0, 0].transpose(2, 0, 1)[None]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_stem_applies_only_where_it_saves_work():
    t = host_target()
    ok = _stem_here()
    assert stem_applies(t, 8, 8, (3, 3), (2, 2), (1, 1), 112, 1, REQUANT) == ok
    assert not stem_applies(t, 16, 16, (3, 3), (2, 2), (1, 1), 112, 1, REQUANT)  # 16 channels
    assert not stem_applies(t, 3, 8, (5, 5), (1, 1), (1, 1), 10, 1, REQUANT)  # row of 10
    assert not stem_applies(t, 3, 8, (5, 5), (4, 4), (1, 1), 28, 1, REQUANT)  # stride 4
    assert not stem_applies(t, 3, 8, (5, 5), (1, 1), (2, 2), 28, 1, REQUANT)  # dilated
    res = QEpilogue(residual="uint8", q_dtype="uint8")
    assert not stem_applies(t, 3, 8, (5, 5), (1, 1), (1, 1), 28, 1, res)
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    assert not stem_applies(avx2, 3, 8, (5, 5), (1, 1), (1, 1), 28, 1, REQUANT)
    assert stem_applies(
        tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server"}),
        3, 8, (5, 5), (1, 1), (1, 1), 28, 1, REQUANT,
    )  # fmt: skip


@needs_stem
def test_lenet5_int8_build_runs_its_first_conv_on_the_stem_form():
    """The planned LeNet-5 int8 build on this host: the first conv (6 channels, 5x5, the image)
    is the stem kernel, and the build equals the interpreter on real digits."""
    import onnx

    from mcopt.interpreter import run
    from mcopt.onnx_io import import_model
    from mcopt.pass_manager import PassContext, PassManager
    from mcopt.targets.relax.builder import build
    from mcopt.testing import zoo

    g = import_model(onnx.load(zoo.lenet5_path()))
    x, _ = zoo.mnist_test_set()
    feeds = [{g.inputs[0].name: x[i : i + 1].reshape(g.inputs[0].shape)} for i in range(6)]
    PassManager(["cleanup", "quantize-int8"]).run(g, PassContext(calib=feeds[:2]))
    cm = build(g, "cpu")
    names = [r["name"] for r in cm.profile(feeds[2], repeat=1)]
    assert names.count("qconv2d_stem") == 1
    for f in feeds[2:]:
        np.testing.assert_array_equal(cm.run(f)[0], run(g, f)[0])
