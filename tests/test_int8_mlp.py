"""Chains of small int8 dense layers as one kernel (:mod:`mcopt.targets.cpu.kernels.int8_mlp_vnni`,
:mod:`mcopt.targets.cpu.lower_dense_chain`): bit for bit against numpy's integer dense and
:meth:`QEpilogue.apply_numpy`; the LeNets' builds against the interpreter. Skipped where the host
has no AVX-512 VNNI."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt.targets.cpu.kernels.int8_conv import conv_bias_eff  # noqa: E402
from mcopt.targets.cpu.kernels.int8_dense import pack_int8_dense_weight  # noqa: E402
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue  # noqa: E402
from mcopt.targets.cpu.kernels.int8_mlp_vnni import (  # noqa: E402
    MAX_MACS,
    MLPLayer,
    int8_mlp_vnni,
    mlp_applies,
)
from mcopt.targets.cpu.kernels.target_info import host_target  # noqa: E402

RELU_Q = QEpilogue(base_dtype="uint8", base_bounds=(3.0, 255.0), base_zp=3)
LOGITS = QEpilogue(base_bounds=(-5.0, np.inf))
S8 = QEpilogue(base_dtype="int8", base_bounds=(-128.0, 127.0), base_zp=-4)


def _here() -> bool:
    return mlp_applies(host_target(), [MLPLayer(8, 8, RELU_Q), MLPLayer(8, 8, LOGITS)])


needs_vnni = pytest.mark.skipif(not _here(), reason="no AVX-512 VNNI here")


@needs_vnni
@pytest.mark.parametrize(
    "x_shape,dims,last",
    [
        ((1, 1, 5, 5, 8), [48, 32, 10], LOGITS),  # pruned LeNet-5 reading the blocked pool
        ((1, 400), [120, 84, 10], LOGITS),  # LeNet-5's classifier
        ((1, 30), [17, 5], RELU_Q),  # 30 inputs (a group of 4 past the end), u8 out
        ((1, 300), [300, 40, 3], S8),  # 19 output blocks: three rounds of accumulators, s8 out
    ],
)
def test_mlp_kernel_is_bit_exact(x_shape, dims, last):
    rng = np.random.default_rng(len(dims) + dims[0])
    k0 = int(np.prod(x_shape))
    x = rng.integers(0, 256, x_shape).astype(np.uint8)
    h = x.reshape(-1).astype(np.int64)
    layers, args, zp = [], [], 7
    for i, n in enumerate(dims):
        k = k0 if i == 0 else dims[i - 1]
        w = rng.integers(-128, 128, (n, k)).astype(np.int8)
        b = rng.integers(-3000, 3000, n).astype(np.int32)
        ep = last if i == len(dims) - 1 else RELU_Q
        lay = MLPLayer(k, n, ep)
        layers.append(lay)
        be = conv_bias_eff(w, b, zp, lay.n_pad)
        mult = np.zeros(lay.n_pad, np.float32)
        mult[:n] = rng.random(n) * 0.002 + 0.0005
        acc = (h[None, :] * w.astype(np.int64)).sum(1) + be[:n]
        ref = ep.apply_numpy(acc.astype(np.int32), mult[:n])
        h = ref.astype(np.int64)
        args += [pack_int8_dense_weight(w, 16), be, mult]
        zp = RELU_Q.base_zp
    lib = tvm.compile(tvm.IRModule({"main": int8_mlp_vnni(x_shape, layers)}), host_target())
    out = np.zeros((1, dims[-1]), last.out_dtype)
    targs = [tvm.runtime.tensor(a) for a in [x, *args, out]]
    lib["main"](*targs)
    np.testing.assert_array_equal(targs[-1].numpy()[0], ref)


@needs_vnni
def test_mlp_kernel_quantizes_a_float_input_as_the_quantize_op():
    """``in_quant``: the kernel quantizes its float input (``round(x / scale) + zp``, clamped,
    ties to even) before the first layer: bit-exact against numpy's quantize + integer dense."""
    rng = np.random.default_rng(5)
    scale, zp = 0.0127, 33
    x = (rng.standard_normal((1, 1, 30)) * 1.5).astype(np.float32)
    x[0, 0, :4] = np.array([0.5, 1.5, -0.5, 2.5], np.float32) * scale
    xq = np.clip(np.round(x / np.float32(scale)) + np.float32(zp), 0, 255).astype(np.int64)
    w0 = rng.integers(-128, 128, (20, 30)).astype(np.int8)
    w1 = rng.integers(-128, 128, (7, 20)).astype(np.int8)
    layers = [MLPLayer(30, 20, RELU_Q), MLPLayer(20, 7, LOGITS)]
    h, args, zp_in = xq.reshape(-1), [], zp
    for lay, w in zip(layers, (w0, w1)):
        be = conv_bias_eff(w, None, zp_in, lay.n_pad)
        mult = np.zeros(lay.n_pad, np.float32)
        mult[: lay.n] = 0.001
        acc = (h[None, :] * w.astype(np.int64)).sum(1) + be[: lay.n]
        ref = lay.epilogue.apply_numpy(acc.astype(np.int32), mult[: lay.n])
        args += [pack_int8_dense_weight(w, 16), be, mult]
        h, zp_in = ref.astype(np.int64), RELU_Q.base_zp
    func = int8_mlp_vnni(x.shape, layers, in_quant=(scale, zp))
    lib = tvm.compile(tvm.IRModule({"main": func}), host_target())
    targs = [tvm.runtime.tensor(a) for a in [x, *args, np.zeros((1, 7), np.float32)]]
    lib["main"](*targs)
    np.testing.assert_array_equal(targs[-1].numpy()[0], ref)


def test_mlp_applies_to_small_u8_chains_on_vnni():
    t, ok = host_target(), _here()
    assert mlp_applies(t, [MLPLayer(400, 120, RELU_Q), MLPLayer(120, 84, LOGITS)]) == ok
    assert not mlp_applies(t, [MLPLayer(400, 120, LOGITS)])  # one layer
    assert mlp_applies(t, [MLPLayer(784, 300, RELU_Q), MLPLayer(300, 10, LOGITS)]) == ok
    assert not mlp_applies(t, [MLPLayer(1024, 1024, RELU_Q), MLPLayer(1024, 10, LOGITS)])  # big
    assert 1024 * 1024 > MAX_MACS
    assert not mlp_applies(t, [MLPLayer(40, 12, S8), MLPLayer(12, 10, LOGITS)])  # s8 between
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    assert not mlp_applies(avx2, [MLPLayer(40, 12, RELU_Q), MLPLayer(12, 10, LOGITS)])


@needs_vnni
@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_lenet_int8_builds_run_their_classifier_as_one_kernel(name):
    """LeNet-5's three dense layers (reading the blocked pool output) and LeNet-300's three (and
    its input's quantize) are one call; the build equals the interpreter."""
    import onnx

    from mcopt.interpreter import run
    from mcopt.onnx_io import import_model
    from mcopt.pass_manager import PassContext, PassManager
    from mcopt.targets.relax.builder import build
    from mcopt.testing import zoo

    path = zoo.lenet5_path() if name == "lenet5" else zoo.lenet300_path()
    g = import_model(onnx.load(path))
    x, _ = zoo.mnist_test_set()
    feeds = [{g.inputs[0].name: x[i : i + 1].reshape(g.inputs[0].shape)} for i in range(6)]
    PassManager(["cleanup", "quantize-int8"]).run(g, PassContext(calib=feeds[:2]))
    cm = build(g, "cpu")
    names = [r["name"].rstrip("0123456789") for r in cm.profile(feeds[2], repeat=1)]
    kernels = [n for n in names if not n.startswith("vm.")]
    # LeNet-300: the input's quantize too runs in the chain's kernel
    assert kernels.count("qdense_chain") == 1 and (name == "lenet5" or kernels == ["qdense_chain"])
    assert names.count("qdense_int") == 0
    for f in feeds[2:]:
        np.testing.assert_array_equal(cm.run(f)[0], run(g, f)[0])
