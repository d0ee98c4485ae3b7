"""The pixels-on-lanes int8 conv (:mod:`mcopt.targets.cpu.kernels.int8_stem_vnni`): few output
channels on the plain image, AVX-512 VNNI + VBMI. Bit for bit against numpy's quantize, the
integer conv and :meth:`QEpilogue.apply_numpy`; skipped where the host lacks the instructions."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt.targets.cpu.kernels.int8_conv import conv_bias_eff  # noqa: E402
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue  # noqa: E402
from mcopt.targets.cpu.kernels.int8_stem_vnni import (  # noqa: E402
    int8_stem_vnni,
    pack_stem_weight,
    stem_applies,
    stem_geometry,
    stem_tables,
)
from mcopt.targets.cpu.kernels.target_info import host_target  # noqa: E402
from mcopt.testing.int8 import image_conv_case  # noqa: E402

REQUANT = QEpilogue(base_dtype="uint8", base_bounds=(0.0, 255.0), base_zp=0)
HSWISH_Q = QEpilogue(post_act="hard_swish", q_dtype="uint8", q_scale=2.0, q_zp=3)
FLOAT_OUT = QEpilogue(base_bounds=(-3.0, 6.0))


def _stem_here() -> bool:
    return stem_applies(host_target(), 3, 8, (28, 28), (5, 5), (1, 1), (2,) * 4, (1, 1), 1, REQUANT)


needs_stem = pytest.mark.skipif(not _stem_here(), reason="no AVX-512 VNNI + VBMI here")


def _blocked(a: np.ndarray, bn: int) -> np.ndarray:
    n, c, h, w = a.shape
    cp = -(-c // bn) * bn
    z = np.zeros((n, cp, h, w), a.dtype)
    z[:, :c] = a
    return np.ascontiguousarray(z.reshape(n, cp // bn, bn, h, w).transpose(0, 1, 3, 4, 2))


@needs_stem
@pytest.mark.parametrize(
    "ic,oc,lanes,hw,k,stride,pad,ep,src,loads,pool",
    [
        (1, 3, 8, 28, 5, 1, 2, REQUANT, "f32", 1, (1, 1)),  # LeNet-5's first conv pruned to 3
        (1, 6, 8, 28, 5, 1, 2, REQUANT, "u8", 1, (1, 1)),  # unpruned, on a u8 image
        (3, 8, 8, 33, 3, 2, 1, HSWISH_Q, "f32", 2, (1, 1)),  # 3x3 stride-2 RGB stem
        (2, 5, 16, 20, 7, 1, 3, FLOAT_OUT, "f32", 1, (1, 1)),  # 7x7, float out, 16 lanes
        (1, 2, 8, 48, 3, 3, 0, REQUANT, "u8", 1, (1, 1)),  # stride 3: 16-pixel rows
        (1, 1, 8, 20, 4, 1, 0, REQUANT, "f32", 1, (1, 1)),  # one channel, 4 columns
        (3, 8, 8, 14, 5, 1, 0, REQUANT, "nchw8c", 1, (1, 1)),  # LeNet-5's second conv, pruned
        (5, 7, 8, 12, 3, 1, 1, HSWISH_Q, "nchw8c", 1, (1, 1)),  # padded, 7 of 8 lanes
        (20, 4, 8, 9, 3, 1, 1, REQUANT, "nchw16c", 1, (1, 1)),  # two input blocks of 16
        # a max pool fused: LeNet-5's conv1 + pool (pooled rows of 14), conv2
        (1, 3, 8, 28, 5, 1, 2, REQUANT, "f32", 2, (2, 2)),
        (3, 8, 8, 14, 5, 1, 0, REQUANT, "nchw8c", 2, (2, 2)),
        (2, 6, 8, 34, 3, 1, 1, FLOAT_OUT, "u8", 2, (2, 2)),  # 17 x 17 pooled
        (1, 4, 8, 52, 3, 1, 0, REQUANT, "f32", 1, (3, 3)),  # a 3x3 pool, 50 -> 16
    ],
)
def test_stem_kernel_is_bit_exact(ic, oc, lanes, hw, k, stride, pad, ep, src, loads, pool):
    rng = np.random.default_rng(ic * 7 + oc + k)
    scale, zp = 0.0127, 33
    x, xq, w, b, acc = image_conv_case(rng, ic, oc, hw, k, stride, pad, scale, zp)
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
    ph, pw = pool
    oh, ow = oh // ph, ow // pw
    ref = ref[:, :, : oh * ph, : ow * pw].reshape(1, lanes, oh, ph, ow, pw).max(axis=(3, 5))
    xin = {"f32": x, "u8": xq}.get(src)
    if xin is None:  # a blocked u8 input, garbage in its padding channels
        bn = int(src[4:-1])
        xin = _blocked(xq, bn)
        if ic % bn:
            xin[:, -1, ..., ic % bn :] = 201
    func, geom = int8_stem_vnni(
        xin.shape, oc, lanes, (k, k), (stride,) * 2, (pad,) * 4, in_channels=ic,
        x_zero_point=zp, epilogue=ep, in_quant=(scale, zp) if src == "f32" else None, pool=pool,
    )  # fmt: skip
    assert geom.loads == loads and (geom.oh, geom.ow) == (oh, ow)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=host_target())
    out = np.full((1, 1, oh, ow, lanes), 77, ep.out_dtype)
    args = [xin, pack_stem_weight(w), be, mult, *stem_tables(geom), out]
    targs = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*targs)
    got = targs[-1].numpy()[0, 0].transpose(2, 0, 1)[None]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_stem_geometry_blocks_stay_within_their_loads():
    g = stem_geometry((28, 28), (5, 5), (1, 1), (2,) * 4)
    assert g is not None and g.loads == 1 and len(g.starts) == 49 and g.wq == 32
    assert int(g.perm.max()) < 64 and g.perm.shape == (49, 64)
    assert stem_geometry((6, 6), (5, 5), (1, 1), (0,) * 4) is None  # 4 output pixels
    assert stem_geometry((10, 10), (5, 5), (1, 1), (0,) * 4).loads == 1  # 3 rows of 6
    pooled = stem_geometry((28, 28), (5, 5), (1, 1), (2,) * 4, pool=(2, 2))
    assert pooled.loads == 2 and (pooled.oh, pooled.ow) == (14, 14) and 64 <= pooled.perm.max()
    assert pooled.subs == (0, 1, 32, 33)
    assert stem_geometry((224, 224), (3, 3), (2, 2), (1,) * 4) is None  # 784 blocks
    assert stem_geometry((40, 40), (3, 3), (2, 2), (1,) * 4).loads == 2  # rows 84 bytes apart
    assert stem_geometry((20, 150), (3, 3), (2, 2), (1,) * 4) is None  # rows 304 bytes apart


def test_stem_applies_only_where_it_saves_work():
    t = host_target()
    ok = _stem_here()

    def applies(oc=3, lanes=8, hw=28, k=5, s=1, pad=2, dil=1, ep=REQUANT, target=t, ib=None):
        return stem_applies(
            target, oc, lanes, (hw, hw), (k, k), (s, s), (pad,) * 4, (dil, dil), 1, ep, ib
        )

    assert applies(oc=8, k=3, s=2, hw=33, pad=1) == ok
    assert not applies(oc=8, k=3, s=2, hw=224, pad=1)  # too wide: the window form
    assert applies(ib=8, hw=14, pad=0) == ok  # LeNet-5's second conv
    assert not applies(oc=16, lanes=16)  # 16 channels: the window form
    assert not applies(s=5)  # 16 windows of stride 5 do not fit one load
    assert not applies(dil=2)
    assert not applies(ep=QEpilogue(residual="uint8", q_dtype="uint8"))
    assert not applies(ib=4)
    assert not applies(ib=16, hw=3, k=1, pad=0)  # rows shorter than one load
    assert not applies(target=tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
    assert applies(target=tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server"}))


@needs_stem
@pytest.mark.parametrize("prune", [False, True])
def test_lenet5_int8_build_runs_its_convs_on_the_stem_form(prune):
    """The planned LeNet-5 int8 build on this host: the first conv (6 channels, 5x5, the image)
    and the max pool after it are one stem kernel; the second conv (16 channels) stays on the
    window form, its pool in its kernel, unless pruned to 8 channels; the build equals the
    interpreter on real digits."""
    import onnx

    from mcopt.interpreter import run
    from mcopt.onnx_io import import_model
    from mcopt.pass_manager import PassContext, PassManager
    from mcopt.targets.relax.builder import build
    from mcopt.testing import zoo

    g = import_model(onnx.load(zoo.lenet5_path()))
    x, _ = zoo.mnist_test_set()
    feeds = [{g.inputs[0].name: x[i : i + 1].reshape(g.inputs[0].shape)} for i in range(6)]
    passes = ["cleanup", "prune-channels:ratio=0.5,round_to=8"] if prune else ["cleanup"]
    PassManager([*passes, "quantize-int8"]).run(g, PassContext(calib=feeds[:2]))
    cm = build(g, "cpu")
    names = [r["name"].rstrip("0123456789") for r in cm.profile(feeds[2], repeat=1)]
    assert names.count("qconv2d_stem_maxpool") == (2 if prune else 1)
    assert names.count("max_pool_nchwc") == 0  # the 16-channel conv pools in its kernel too
    for f in feeds[2:]:
        np.testing.assert_array_equal(cm.run(f)[0], run(g, f)[0])
