"""int8 planned end to end: the blocked int8 conv kernel, the planner's int8 groups, the build.

The kernel is checked bit for bit against :meth:`QEpilogue.apply_numpy` (the graph's float32
sequence); the planned graph against the unplanned one in the interpreter (exactly); the compiled
model against the interpreter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt.interpreter import run  # noqa: E402
from mcopt.ir.verify import verify  # noqa: E402
from mcopt.onnx_io import import_model  # noqa: E402
from mcopt.ops.quant import qconv2d_acc  # noqa: E402
from mcopt.pass_manager import PassContext, PassManager  # noqa: E402
from mcopt.targets.cpu.kernels.int8_conv import (  # noqa: E402
    conv_bias_eff,
    pack_int8_conv_weight,
    zero_shift,
)
from mcopt.targets.cpu.kernels.int8_conv_nchwc import (  # noqa: E402
    choose_params,
    grouped_window_weight,
    int8_conv2d_nchwc,
    pack_int8_window_weight,
)
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue  # noqa: E402
from mcopt.targets.cpu.kernels.target_info import host_target  # noqa: E402
from mcopt.testing import zoo  # noqa: E402
from mcopt.testing.int8 import epilogue_reference, image_conv_case  # noqa: E402

INF = math.inf
REQUANT = QEpilogue(base_dtype="uint8", base_bounds=(0.0, 255.0), base_zp=0)
RESIDUAL_Q = QEpilogue(
    residual="uint8", r_scale=0.3, r_zp=5, post_bounds=(0.0, INF), q_dtype="uint8", q_scale=40.0,
    q_zp=10,
)  # fmt: skip
HSWISH_Q = QEpilogue(post_act="hard_swish", q_dtype="uint8", q_scale=2.0, q_zp=3)
SILU_Q = QEpilogue(post_act="silu", q_dtype="uint8", q_scale=0.25, q_zp=3)
GELU_Q = QEpilogue(post_act="gelu", q_dtype="uint8", q_scale=0.25, q_zp=3)
LEAKY_Q = QEpilogue(  # openWakeWord: max(leaky(y), -0.4) = leaky(max(y, -2))
    post_bounds=(-2.0, INF), post_act="leaky_relu", post_alpha=0.2, q_dtype="uint8", q_scale=0.1,
    q_zp=20,
)  # fmt: skip
FLOAT_RES = QEpilogue(base_bounds=(-50.0, INF), residual="float32", post_bounds=(0.0, 6.0))


def _blocked(a: np.ndarray, bn: int, padded: int) -> np.ndarray:
    n, c, h, w = a.shape
    z = np.zeros((n, padded, h, w), a.dtype)
    z[:, :c] = a
    return np.ascontiguousarray(z.reshape(n, padded // bn, bn, h, w).transpose(0, 1, 3, 4, 2))


def _unblocked(a: np.ndarray, c: int) -> np.ndarray:
    n, cb, h, w, bn = a.shape
    return a.transpose(0, 1, 4, 2, 3).reshape(n, cb * bn, h, w)[:, :c]


def _check_kernel(
    ic: int, oc: int, hw: int, k: int, stride: int, pad: int, ep: QEpilogue, *,
    ib: int = 16, isa: str | None = "vnni16", in_dtype: str = "uint8", zp: int = 3,
    window: bool = False, groups: int = 1, pool: tuple[int, int] = (1, 1),
    pool_acc: bool = False, lsb: int = 0,
) -> None:  # fmt: skip
    """The kernel against the numpy epilogue: bit-exact, or within ``lsb`` (the epilogues whose
    float arithmetic differs from numpy's by an ULP: silu's polynomial exp)."""
    lanes = 16 if isa in ("vnni16", "avx512") else 8
    rng = np.random.default_rng(ic * 131 + oc * 7 + k)
    icp, ocp = -(-ic // ib) * ib, -(-oc // lanes) * lanes
    lo, hi = (0, 255) if in_dtype == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, (1, ic, hw, hw)).astype(in_dtype)
    w = rng.integers(-64, 64, (oc, ic // groups, k, k)).astype(np.int8)
    b = rng.integers(-2000, 2000, oc).astype(np.int32)
    attrs = {"x_zero_point": zp, "strides": (stride,) * 2, "pads": (pad,) * 4,
             "dilations": (1, 1), "groups": groups}  # fmt: skip
    acc = qconv2d_acc(x, w, b, attrs)
    oh = acc.shape[2]
    mult = (rng.random(oc) * 0.05 + 0.005).astype(np.float32)
    ref, res = epilogue_reference(ep, acc, mult, rng)
    flat = k == 1 and stride == 1 and pad == 0 and ib % 4 == 0 and in_dtype == "uint8"
    flat = flat and not window and pool == (1, 1)
    ph, pw = pool
    o_h, o_w = oh // ph, oh // pw  # the max pool of the epilogue's output (floor mode)
    ref = ref[:, :, : o_h * ph, : o_w * pw].reshape(1, oc, o_h, ph, o_w, pw).max(axis=(3, 5))
    params = choose_params(oh * oh if flat else o_w * pw, ocp // lanes, isa, lanes, oh, 2)
    gwin = None
    if groups > 1:
        wp, gwin = grouped_window_weight(w, groups, icp // ib, ib, lanes)
    else:
        wp = np.zeros((ocp, ic if window else icp, k, k), np.int8)
        wp[:oc, :ic] = w
    func, got_flat = int8_conv2d_nchwc(
        (1, icp // ib, hw, hw, ib), wp.shape, (stride,) * 2, (pad,) * 4,
        in_dtype=in_dtype, x_zero_point=zp, epilogue=ep, params=params, window=window,
        group_window=gwin, pool=pool, pool_acc=pool_acc,
    )  # fmt: skip
    assert got_flat == flat
    bp = np.zeros(ocp, np.int32)
    bp[:oc] = b
    be = conv_bias_eff(wp, bp, zp + zero_shift(isa, in_dtype), ocp).reshape(-1, lanes)
    mp = np.zeros(ocp, np.float32)
    mp[:oc] = mult
    xb = _blocked(x, ib, icp)
    pack = pack_int8_window_weight if window else pack_int8_conv_weight
    args = [xb.reshape(1, icp // ib, hw * hw, ib) if flat else xb,
            pack(wp, lanes), be, mp.reshape(-1, lanes)]  # fmt: skip
    if res is not None:
        rb = _blocked(res, lanes, ocp)
        args.append(rb.reshape(1, ocp // lanes, oh * oh, lanes) if flat else rb)
    out = np.zeros((1, ocp // lanes, o_h, o_w, lanes), ep.out_dtype)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=host_target())
    targs = [tvm.runtime.tensor(a) for a in args]
    targs.append(tvm.runtime.tensor(out.reshape(1, ocp // lanes, oh * oh, lanes) if flat else out))
    lib["main"](*targs)
    got = _unblocked(targs[-1].numpy().reshape(out.shape), oc)
    assert got.dtype == ref.dtype
    if lsb:
        diff = np.abs(got.astype(np.int32) - ref.astype(np.int32))
        assert diff.max() <= lsb and np.mean(diff > 0) < 0.01, (diff.max(), np.mean(diff > 0))
        return
    np.testing.assert_array_equal(got, ref)


def _vnni_here() -> bool:
    from mcopt.targets.cpu.kernels.int8_intrin import choose_isa

    return choose_isa(host_target(), True) == "vnni16"


@pytest.mark.parametrize(
    "ic,oc,hw,k,stride,pad,ep",
    [
        (16, 48, 20, 1, 1, 0, REQUANT),  # flat 1x1 (the MobileNet expand conv)
        (40, 24, 14, 1, 1, 0, RESIDUAL_Q),  # flat, residual u8 + post relu + quantize
        (32, 32, 13, 3, 1, 1, FLOAT_RES),  # padded 3x3, float residual, float out
        (3, 32, 23, 3, 2, 1, REQUANT),  # the 3-channel image: repacked in blocks of 4
        (32, 16, 14, 1, 2, 0, RESIDUAL_Q),  # strided 1x1 (a ResNet downsample)
        (16, 32, 9, 3, 1, 1, HSWISH_Q),  # hard-swish then quantize (PP-LCNet)
    ],
)
def test_int8_nchwc_kernel_is_bit_exact(ic, oc, hw, k, stride, pad, ep):
    isa = "vnni16" if _vnni_here() else None
    _check_kernel(ic, oc, hw, k, stride, pad, ep, ib=16 if ic > 3 else 3, isa=isa)


@pytest.mark.parametrize(
    "k,stride,pad,ep",
    [(3, 2, 1, SILU_Q), (1, 1, 0, SILU_Q), (1, 1, 0, GELU_Q), (3, 1, 1, LEAKY_Q)],
)
def test_int8_nchwc_kernel_silu(k, stride, pad, ep):
    """SiLU / GELU then quantize (YOLOX's / PP-OCRv6's int8 convs): within one step of numpy's,
    at < 1 % of outputs."""
    isa = "vnni16" if _vnni_here() else None
    _check_kernel(16, 32, 12, k, stride, pad, ep, isa=isa, lsb=1)


@pytest.mark.parametrize(
    "ic,oc,hw,k,pad,ep,pool,window",
    [
        (16, 16, 14, 3, 1, REQUANT, (2, 2), False),  # the 3-conv MNIST CNN's second conv + pool
        (16, 32, 7, 3, 1, REQUANT, (2, 2), False),  # 7 x 7 -> 3 x 3: the last row unused
        (32, 32, 13, 3, 1, HSWISH_Q, (2, 2), False),  # a non-monotone epilogue: pooled after it
        (16, 16, 12, 1, 0, QEpilogue(base_bounds=(0.0, 6.0)), (2, 2), False),  # 1x1
        (6, 16, 14, 5, 0, REQUANT, (2, 2), True),  # LeNet-5's second conv (window form)
        (16, 16, 15, 3, 1, REQUANT, (3, 3), False),  # a 3x3 pool of stride 3
        (16, 16, 12, 3, 1, LEAKY_Q, (2, 2), False),  # leaky ReLU: monotone, pooled before it
    ],
)
def test_int8_conv_kernel_with_its_max_pool_is_bit_exact(ic, oc, hw, k, pad, ep, pool, window):
    """``pool=``: the kernel writes the max pool (kernel = stride) of its epilogue's output, on
    this host's dot-product form and on the generic code (what an AArch64 target without
    dotprod gets); with ``pool_acc`` (a monotone epilogue, multipliers >= 0) the max of the
    accumulators through one epilogue, the same bytes."""
    from mcopt.targets.cpu.kernels.int8_stem_vnni import monotone

    isa = "vnni16" if _vnni_here() else None
    ib = 8 if window else 16
    if window and isa:
        isa = "vnni8"
    for pool_acc in {False, monotone(ep)}:
        _check_kernel(
            ic, oc, hw, k, 1, pad, ep, ib=ib, isa=isa, window=window, pool=pool, pool_acc=pool_acc
        )
    if isa is not None:
        _check_kernel(
            ic, oc, hw, k, 1, pad, ep, ib=ib, isa=None, window=window, pool=pool,
            pool_acc=monotone(ep),
        )  # fmt: skip


def test_int8_nchwc_kernel_generic_and_signed_input():
    """The plain vectorized description (no dot-product instruction) and an int8 input (the
    kernel's pad stage offsets it to u8 for x86's u8 x s8 instructions)."""
    _check_kernel(24, 16, 9, 3, 1, 1, RESIDUAL_Q, ib=8, isa=None)
    if _vnni_here():
        _check_kernel(16, 32, 10, 1, 1, 0, FLOAT_RES, in_dtype="int8", zp=-3)


@pytest.mark.parametrize(
    "ic,ib,k,stride,pad", [(1, 1, 5, 1, 2), (6, 16, 5, 1, 0), (3, 3, 7, 2, 3), (2, 8, 3, 2, 1)]
)
def test_int8_window_form_is_bit_exact(ic, ib, k, stride, pad):
    """4 kernel columns per dot product (LeNet's 1- and 6-channel convs, a 7x7 stem)."""
    isa = "vnni16" if _vnni_here() else None
    _check_kernel(ic, 16, 17, k, stride, pad, REQUANT, ib=ib, isa=isa, window=True)
    _check_kernel(ic, 24, 12, k, stride, pad, RESIDUAL_Q, ib=ib, isa=isa, window=True)


@pytest.mark.parametrize("ic,oc,groups", [(136, 136, 4), (64, 64, 4), (24, 112, 4), (48, 48, 3)])
def test_int8_grouped_window_is_bit_exact(ic, oc, groups):
    """Grouped 1x1 convs (ShuffleNet: 34 channels per group across blocks of 16) and a 3x3."""
    isa = "vnni16" if _vnni_here() else None
    _check_kernel(ic, oc, 14, 1, 1, 0, RESIDUAL_Q, isa=isa, groups=groups)
    _check_kernel(ic, oc, 9, 3, 2, 1, REQUANT, isa=isa, groups=groups)


def _quantized(name: str, spec: str = "quantize-int8") -> tuple:
    g = import_model(getattr(zoo, name)())
    inp = g.inputs[0]
    rng = np.random.default_rng(0)
    feeds = [{inp.name: rng.standard_normal(inp.shape).astype(np.float32)} for _ in range(3)]
    PassManager(["cleanup", spec]).run(g, PassContext(calib=feeds))
    return g, feeds


def test_quantized_residuals_read_the_8bit_skip_tensor():
    g, _ = _quantized("resnet18_like")
    adds = [n for n in g.nodes if n.op == "add"]
    assert adds and all(
        any(v.producer is not None and v.producer.op == "dequantize" for v in n.inputs)
        or all(v.producer is not None and v.producer.op == "qconv2d" for v in n.inputs)
        for n in adds
    )
    g2, _ = _quantized("resnet18_like", "quantize-int8:quantized_residuals=false")
    assert not any(n.op == "dequantize" for n in g2.nodes)


def test_plan_runs_resnet_blocks_as_int8_convs_only():
    from mcopt.targets.cpu.planning import plan_cpu, planned_choices

    g, feeds = _quantized("resnet18_like")
    pg = plan_cpu(g)
    verify(pg)
    ops = [n.op for n in pg.nodes]
    # every block: its convs and nothing else (no float add / relu / quantize between them)
    assert "add" not in ops and "relu" not in ops and "dequantize" not in ops
    assert ops.count("quantize") == 2  # the input image and the classifier's input
    fused = [n for n in pg.nodes if n.op == "fused_qconv2d"]
    with_res = [n for n in fused if len(n.inputs) > 3 and n.inputs[3] is not None]
    assert len(with_res) == 8
    assert all(n.output.type.layout is not None for n in fused)
    u8 = [n for n in with_res if n.output.dtype == "uint8" and n.attrs["q_dtype"] == "uint8"]
    assert len(u8) == 7  # the last block's output stays float for the average pool
    assert planned_choices(pg)["int8 conv: blocked int8 kernel + residual"] == 8
    # the stem reads the NCHW image with the window form (a row-wise padded copy)
    assert fused[0].attrs["kernel"] == "int8_window" and fused[0].inputs[0].type.layout is None
    for f in feeds[:2]:
        np.testing.assert_array_equal(run(pg, f)[0], run(g, f)[0])


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet18_like"])
def test_int8_planned_build_matches_the_interpreter(name):
    from mcopt.targets.relax.builder import build

    g, feeds = _quantized(name)
    cm = build(g, "cpu")
    for f in feeds[:2]:
        ref = run(g, f)[0]
        got = cm.run(f)[0]
        # a requantized code may differ by one step at a rounding tie (FMA contraction of the
        # residual add in the kernel); it propagates, so compare the logits loosely and top-1
        np.testing.assert_allclose(got, ref, rtol=0, atol=0.05 * np.abs(ref).max())
        assert int(np.argmax(got)) == int(np.argmax(ref))


def test_int8_narrow_block_kernels_are_bit_exact():
    """The 256-bit VNNI form (8 output lanes) of the blocked, window and image-reading convs: the
    block of layers with at most 8 output channels on a VNNI-512 machine."""
    from mcopt.targets.cpu.kernels.int8_intrin import narrow_isa

    if not _vnni_here() or narrow_isa("vnni16", 8, host_target()) != "vnni8":
        pytest.skip("no AVX-512 VNNI with VL here")
    _check_kernel(8, 16, 12, 1, 1, 0, REQUANT, ib=8, isa="vnni8")  # flat 1x1 from an 8-block
    _check_kernel(3, 8, 15, 3, 2, 1, HSWISH_Q, ib=3, isa="vnni8")  # the image, 8 channels out
    _check_kernel(1, 6, 16, 5, 1, 2, RESIDUAL_Q, ib=1, isa="vnni8", window=True)  # LeNet conv1


def test_few_channel_int8_convs_are_planned_in_blocks_of_8():
    """LeNet-5's 6-channel conv writes NCHW8c on a VNNI-512 target (16 lanes would leave most of
    each dot product on padding), the 16-channel one NCHW16c; the build on this machine equals
    the interpreter."""
    import onnx

    from mcopt.targets.cpu.planning import plan_cpu
    from mcopt.targets.relax.builder import build

    g = import_model(onnx.load(zoo.lenet5_path()))
    x, _ = zoo.mnist_test_set()
    feeds = [{g.inputs[0].name: x[i : i + 1].reshape(g.inputs[0].shape)} for i in range(4)]
    PassManager(["cleanup", "quantize-int8"]).run(g, PassContext(calib=feeds[:2]))
    pg = plan_cpu(g, tvm.target.Target({"kind": "llvm", "mcpu": "znver4"}))
    verify(pg)
    convs = [n for n in pg.nodes if n.op == "fused_qconv2d"]
    assert [n.output.type.layout.bn for n in convs] == [8, 16]
    cm = build(g, "cpu")
    for f in feeds:
        np.testing.assert_array_equal(cm.run(f)[0], run(g, f)[0])


@pytest.mark.parametrize(
    "ic,oc,k,stride,pad,window",
    [
        (3, 16, 3, 2, 1, False),
        (1, 8, 5, 1, 2, True),
        (3, 24, 3, 2, 1, True),
        (3, 16, 7, 2, 3, True),
    ],
)
def test_int8_conv_quantizes_the_float_image_inline(ic, oc, k, stride, pad, window):
    """``in_quant``: the padded copy of a plain float input quantizes it as the ``quantize`` op
    does (a PP-LCNet-like 3x3 stride-2 stem, LeNet's 5x5 window conv); bit-exact against numpy's
    quantize followed by the integer conv; the window form on the image is the stems' form."""
    isa = "vnni16" if _vnni_here() else None
    lanes = 16 if isa else 8
    rng = np.random.default_rng(ic + k)
    hw, scale, zp = 19, 0.0127, 33
    x, xq, w, b, acc = image_conv_case(rng, ic, oc, hw, k, stride, pad, scale, zp, w_bound=64)
    oh = acc.shape[2]
    mult = (rng.random(oc) * 0.05 + 0.005).astype(np.float32)
    ref = HSWISH_Q.apply_numpy(acc, mult.reshape(1, -1, 1, 1), None)
    ocp = -(-oc // lanes) * lanes
    params = choose_params(oh, ocp // lanes, isa, lanes, oh, 2)
    wp = np.zeros((ocp, ic, k, k), np.int8)
    wp[:oc, :ic] = w
    func, _ = int8_conv2d_nchwc(
        x.shape, wp.shape, (stride,) * 2, (pad,) * 4, x_zero_point=zp, epilogue=HSWISH_Q,
        params=params, window=window, in_quant=(scale, zp),
    )  # fmt: skip
    bp = np.zeros(ocp, np.int32)
    bp[:oc] = b
    be = conv_bias_eff(wp, bp, zp, ocp).reshape(-1, lanes)
    mp = np.zeros(ocp, np.float32)
    mp[:oc] = mult
    pack = pack_int8_window_weight if window else pack_int8_conv_weight
    out = np.zeros((1, ocp // lanes, oh, oh, lanes), HSWISH_Q.out_dtype)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=host_target())
    targs = [tvm.runtime.tensor(a) for a in (x, pack(wp, lanes), be, mp.reshape(-1, lanes), out)]
    lib["main"](*targs)
    np.testing.assert_array_equal(_unblocked(targs[-1].numpy(), oc), ref)


def test_flat_1x1_kernel_on_blocked_views():
    """The flat 1x1 kernel called on the blocked tensors themselves (its flattened-plane buffers
    views of them, ``view_params``: no reshape in Relax) writes what it writes on reshaped ones."""
    from mcopt.targets.cpu.kernels.relax_ops import view_params

    isa = "vnni16" if _vnni_here() else None
    lanes = 16 if isa else 8
    h, ic, oc = 6, 32, 2 * lanes
    params = choose_params(h * h, oc // lanes, isa, lanes, 1, 2)
    func, flat = int8_conv2d_nchwc(
        (1, ic // 16, h, h, 16), (oc, ic, 1, 1), epilogue=RESIDUAL_Q, params=params
    )
    assert flat
    blocked = (1, oc // lanes, h, h, lanes)
    viewed = view_params(func, {"x": ((1, ic // 16, h, h, 16), 0), "residual": (blocked, 0),
                                "out": (blocked, 0)})  # fmt: skip
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (1, ic // 16, h, h, 16)).astype(np.uint8)
    w = rng.integers(-64, 64, (oc // lanes, ic // 4, 1, 1, lanes, 4)).astype(np.int8)
    b = rng.integers(-500, 500, (oc // lanes, lanes)).astype(np.int32)
    m = (rng.random((oc // lanes, lanes)) * 0.05).astype(np.float32)
    r = rng.integers(0, 256, blocked).astype(np.uint8)
    outs = []
    for f, flat_args in ((func, True), (viewed, False)):
        lib = tvm.compile(tvm.IRModule({"main": f}), target=host_target())
        shp = (lambda a: a.reshape(*a.shape[:2], -1, a.shape[-1])) if flat_args else (lambda a: a)
        args = [shp(x), w, b, m, shp(r), shp(np.zeros(blocked, np.uint8))]
        targs = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
        lib["main"](*targs)
        outs.append(targs[-1].numpy().reshape(blocked))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert outs[0].any()


def test_int8_dense_reads_the_blocked_tensor_of_a_flatten():
    """``flatten`` of a blocked tensor (6 channels in NCHW8c: 2 padding channels) into ``qdense``:
    the dense reads the blocked tensor with its weight columns permuted, no unblocking copy; the
    build equals the interpreter."""
    from onnx import TensorProto, helper, numpy_helper

    from mcopt.targets.cpu.planning import plan_cpu
    from mcopt.targets.relax.builder import build

    rng = np.random.default_rng(9)
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 2, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((10, 6 * 7 * 7)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits,
    )  # fmt: skip
    g = import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    feeds = [{"x": rng.standard_normal((1, 2, 7, 7)).astype(np.float32)} for _ in range(4)]
    PassManager(["cleanup", "quantize-int8"]).run(g, PassContext(calib=feeds[:2]))
    pg = plan_cpu(g)
    flat = next(n for n in pg.nodes if n.op == "flatten")
    assert flat.inputs[0].type.layout is not None and flat.inputs[0].type.layout.is_padded
    cm = build(g, "cpu")
    for f in feeds:
        np.testing.assert_array_equal(cm.run(f)[0], run(g, f)[0])


@pytest.mark.parametrize("tail", ["output", "reshape"])
def test_int8_conv_with_its_pool_feeding_plain_ops(tail):
    """A conv + max pool (the pool in the conv's kernel) whose pool output is read by plain ops:
    the graph's output itself, or a Reshape (VGG's flatten) before a dense. The pool's value is
    the kernel's blocked output, unblocked (it was lowered again from the never-computed conv
    output: 'cannot lower node')."""
    from onnx import TensorProto, helper, numpy_helper

    from mcopt.targets.relax.builder import build

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    inits, out = [w], "p"
    out_shape = [1, 16, 6, 6]
    if tail == "reshape":
        shape = numpy_helper.from_array(np.array([1, 576], np.int64), "shape")
        fc = numpy_helper.from_array(rng.standard_normal((10, 576)).astype(np.float32), "fc")
        inits += [shape, fc]
        nodes += [
            helper.make_node("Reshape", ["p", "shape"], ["flat"]),
            helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1),
        ]
        out, out_shape = "y", [1, 10]
    graph = helper.make_graph(
        nodes, "conv_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], initializer=inits,
    )  # fmt: skip
    g = import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    feeds = [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(3)]
    PassManager(["cleanup", "quantize-int8"]).run(g, PassContext(calib=feeds))
    cm = build(g, "cpu")
    names = [r["name"] for r in cm.profile(feeds[0], repeat=1)]
    assert not any(n.startswith("max_pool") for n in names)  # in the conv's kernel
    for f in feeds:
        np.testing.assert_array_equal(cm.run(f)[0], run(g, f)[0])


def test_int8_head_whose_quantize_feeds_a_reshape():
    """conv -> max pool -> global average pool -> Reshape -> MatMul (PP-OCR's direction
    classifier's head): the
    pool's quantize is read by a reshape, not a kernel that quantizes inline (the check read the
    reshape's missing ``x_zero_point``: KeyError)."""
    from onnx import TensorProto, helper, numpy_helper

    from mcopt.targets.relax.builder import build

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    shape = numpy_helper.from_array(np.array([1, 16], np.int64), "shape")
    fc = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r0"]),
        helper.make_node("Sqrt", ["r0"], ["r"]),  # a plain (unblocked) op before the head
        helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["m"], ["p"]),
        helper.make_node("Reshape", ["p", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[w, shape, fc],
    )  # fmt: skip
    g = import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    feeds = [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(3)]
    PassManager(["cleanup", "quantize-int8"]).run(g, PassContext(calib=feeds))
    cm = build(g, "cpu")
    for f in feeds:
        np.testing.assert_allclose(cm.run(f)[0], run(g, f)[0], rtol=1e-5, atol=1e-5)


def test_int8_conv_over_a_long_one_channel_row_builds() -> None:
    """basic-pitch's CQT: a 1-channel signal of 44,100 samples through a 256-tap strided conv; the
    int8 window kernel's padded copy vectorized the whole row (LLVM refuses 32K+ lanes). The build
    computes what its int8 graph says."""
    from onnx import TensorProto, helper, numpy_helper

    import mcopt
    from mcopt import interpreter

    rng = np.random.default_rng(9)
    w = numpy_helper.from_array(rng.standard_normal((48, 1, 1, 256)).astype(np.float32) / 8, "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], strides=[1, 256])],
        "cqt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 44100])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    calib = [{"x": rng.standard_normal((1, 1, 1, 44100)).astype(np.float32)} for _ in range(2)]
    res = mcopt.optimize(m, target="cpu", passes=["cleanup", "quantize-int8"], calib=calib,
                         measure=False, check=False)  # fmt: skip
    x = calib[0]["x"]
    ref = interpreter.run(res.graph, [x])[0]
    np.testing.assert_allclose(res.compiled.run(x)[0], ref, rtol=1e-5, atol=1e-4)
