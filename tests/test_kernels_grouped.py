"""The blocked grouped-conv kernel (targets/cpu/kernels/grouped.py) and its routing in the planned build.

Geometry and weight packing are checked in numpy (no TVM); the scheduled PrimFunc against a float64
grouped conv; small graphs (several groups, per-group channels that are / are not multiples of the
block, padded channel blocks, stride 2, bias + batch norm + residual + relu) through
``build(graph, "cpu")`` against the reference interpreter; ShuffleNet end to end (slow).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from mcopt import interpreter
from mcopt.ir import Graph, Value, ttype
from mcopt.targets.cpu.kernels.grouped import (
    grouped_geometry,
    output_source,
    pack_grouped_weight,
    relative_cost,
)
from mcopt.targets.cpu.kernels.layout import pack_nchwc, unpack_nchwc
from mcopt.targets.cpu.plan import block_diagonal, block_for, plan_graph
from mcopt.targets.cpu.planning import plan_cpu

RNG = np.random.default_rng(7)


def _rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _grouped_ref(x: np.ndarray, w: np.ndarray, groups: int, stride: int = 1, pad: int = 0):
    """float64 NCHW grouped conv (symmetric padding)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, oc, oh, ow))
    ocg = oc // groups
    for g in range(groups):
        xs, ws = x[:, g * icg : (g + 1) * icg], w[g * ocg : (g + 1) * ocg].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[
                    :,
                    :,
                    i : i + stride * (oh - 1) + 1 : stride,
                    j : j + stride * (ow - 1) + 1 : stride,
                ]
                out[:, g * ocg : (g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return out


def _geom(ic: int, oc: int, groups: int, lanes: int = 8, reg_c: int = 1, exact=None):
    li, lo = block_for(ic, lanes), block_for(oc, lanes)
    return grouped_geometry(
        ic, oc, groups, li.bn, li.padded // li.bn, lo.bn, lo.padded // lo.bn, reg_c, exact
    )


# --- geometry and packing (numpy only) -------------------------------------------------------------
def test_geometry_of_shufflenet_and_aligned_groups() -> None:
    g = _geom(136, 136, 4)  # 34 channels per group in blocks of 8: windows of 5 blocks
    assert (g.window, g.nbi, g.copies, g.direct, g.exact) == (5, 5, 2, False, True)
    assert g.reduction == 34  # exact: the group's own 34 channels, not the 40 of its window
    assert g.waste == pytest.approx(20 * 8 * 34 / (136 * 34))
    blocks = _geom(136, 136, 4, exact=False)
    assert blocks.reduction == 40 and blocks.waste == pytest.approx(20 * 5 * 64 / (136 * 34))
    assert g.waste < blocks.waste < 1.5 < 4  # block-diagonal: 4x
    g = _geom(544, 544, 4, reg_c=1)  # 136 = 17 blocks per group: the internal space is the home one
    assert (g.window, g.nbi, g.copies, g.direct, g.waste, g.exact) == (17, 17, 1, True, 1.0, False)
    assert not _geom(544, 544, 4, reg_c=3).direct  # nbi rounded up to 18
    g = _geom(20, 32, 4)  # input 20 channels padded to 24: icg = 5
    assert (g.in_blocks, g.window, g.start(3), g.reduction) == (3, 2, 1, 5)
    g = _geom(128, 128, 32)  # ResNeXt: 4 channels per group, 2 groups per block
    assert (g.window, g.nbi, g.copies, g.waste, g.reduction) == (1, 1, 2, 2.0, 4)
    assert _geom(128, 128, 32, exact=False).waste == 4.0
    with pytest.raises(ValueError, match="groups"):
        grouped_geometry(30, 30, 4, 8, 4, 8, 4)


def test_relative_cost_prefers_block_diagonal_only_for_tiny_reductions() -> None:
    assert relative_cost(_geom(272, 272, 4), (1, 1)) < 0.5
    # 6 input channels per group: the grouped kernel, unless a permuted epilogue's gather
    # (a fused channel shuffle) makes the block-diagonal conv (rows permuted) faster
    assert relative_cost(_geom(24, 112, 4), (1, 1)) < 1.0
    assert relative_cost(_geom(24, 112, 4), (1, 1), permuted=True) > 1.0
    assert relative_cost(_geom(24, 112, 4, exact=False), (1, 1)) > 1.0


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize(
    ("ic", "oc", "groups", "reg_c"),
    [(136, 136, 4, 3), (112, 112, 4, 4), (20, 32, 4, 1), (32, 48, 8, 2), (64, 64, 2, 2)],
)
def test_internal_layout_reproduces_grouped_conv(
    ic: int, oc: int, groups: int, reg_c: int, exact: bool
) -> None:
    """Emulate the kernel in numpy: windowed (or exact: over the group's own channels) reduction
    over the packed weight into the internal blocks, then the epilogue's sum of copies, equals the
    grouped conv (1x1, all positions); the permuted epilogue (``output_source``) reads a channel
    shuffle of it."""
    geom = _geom(ic, oc, groups, reg_c=reg_c, exact=exact)
    w = _rand(oc, ic // groups, 1, 1)
    x = _rand(1, ic, 3, 3)
    ibn, obn = geom.ic_bn, geom.oc_bn
    xb = np.zeros((1, geom.in_blocks * ibn, 3, 3), np.float32)
    xb[:, :ic] = x
    xb = pack_nchwc(xb, ibn)  # (1, ICB, 3, 3, ibn)
    kb = pack_grouped_weight(w, geom, obn * reg_c)  # (NI/reg_c, L, 1, 1, ibn, reg_c*obn)
    conv = np.zeros((1, geom.internal_blocks, 3, 3, obn))
    for i in range(geom.internal_blocks):
        lanes = slice((i % reg_c) * obn, (i % reg_c + 1) * obn)
        if exact:  # kb (NI/reg_c, icg, 1, 1, 1, reg_c*obn) over the group's channels of x
            g = i // geom.nbi
            xs = x[0, g * geom.icg : (g + 1) * geom.icg].astype(np.float64)  # (icg, 3, 3)
            conv[0, i] = np.einsum("jyx,jo->yxo", xs, kb[i // reg_c, :, 0, 0, 0, lanes])
            continue
        s = geom.start(i // geom.nbi)
        win = xb[0, s : s + geom.window].astype(np.float64)  # (L, 3, 3, ibn)
        kt = kb[i // reg_c, :, 0, 0, :, lanes]  # (L, ibn, obn)
        conv[0, i] = np.einsum("lyxc,lco->yxo", win, kt)
    out = np.zeros((1, geom.out_blocks, 3, 3, obn))
    for b in range(geom.out_blocks):
        g0 = b * obn // geom.ocg
        for m in range(geom.copies):
            gm = g0 + m
            if m and not (gm < groups and gm * geom.ocg < (b + 1) * obn):
                continue
            out[0, b] += conv[0, gm * geom.nbi + b - geom.home_first(gm)]
    got = unpack_nchwc(out)[:, :oc]
    ref = _grouped_ref(x, w, groups)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    perm = np.arange(oc).reshape(groups, -1).T.reshape(-1)  # ShuffleNet's channel shuffle
    src = output_source(geom, perm)[:oc]
    flat = conv.transpose(0, 2, 3, 1, 4).reshape(1, 3, 3, -1)  # (n, y, x, block * obn + lane)
    shuffled = flat[..., src].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(shuffled, ref[:, perm], rtol=1e-5, atol=1e-5)


def test_plan_absorbs_channel_shuffle_after_grouped_conv() -> None:
    g = Graph("t")
    x = g.add_input("x", ttype((1, 24, 6, 6)))
    h = _op(g, "relu", _conv(g, x, 24, 1, 3))
    sh = _op(g, "reshape", h, shape=(1, 3, 8, 6, 6))
    sh = _op(g, "reshape", _op(g, "transpose", sh, perm=(0, 2, 1, 3, 4)), shape=(1, 24, 6, 6))
    g.outputs = [_op(g, "relu", _conv(g, sh, 24, 1, 3))]
    plan = plan_graph(g, lanes=8)
    first = next(f for f in plan.fused.values() if f.node.inputs[0] is x)
    assert first.describe() == "conv2d+relu+reshape+transpose+reshape" and not plan.shuffles
    assert np.array_equal(first.out_perm, np.arange(24).reshape(3, 8).T.reshape(-1))
    assert first.output is sh and plan.layout_of(sh) == block_for(24, 8)


def test_plan_keeps_grouped_weights_compact_and_fuses_residual() -> None:
    g = Graph("t")
    x = g.add_input("x", ttype((1, 16, 6, 6)))
    w = g.const(_rand(16, 4, 1, 1))
    c = g.add_node(
        "conv2d", [x, w, None], {"groups": 4, "pads": (0,) * 4, "strides": (1, 1)}
    ).output
    y = g.add_node("relu", [g.add_node("add", [c, x], {}).output], {}).output
    g.outputs = [y]
    plan = plan_graph(g, lanes=8)
    (f,) = plan.fused.values()
    assert f.kind == "grouped" and f.weight.shape == (16, 4, 1, 1)
    assert f.residual is x and f.activation == "relu"
    dense = block_diagonal(f.weight, 4)
    assert dense.shape == (16, 16, 1, 1) and not dense[:4, 4:].any()
    assert np.array_equal(dense[4:8, 4:8], f.weight[4:8])


# --- the scheduled kernel ---------------------------------------------------------------------------
@pytest.mark.tvm
@pytest.mark.parametrize(
    ("ic", "oc", "groups", "k", "stride", "pad", "act", "variant"),
    [
        (136, 136, 4, 1, 1, 0, "relu", None),  # ShuffleNet: 34 per group, straddling blocks
        (136, 136, 4, 1, 1, 0, "relu", "blocks"),  # the same over whole input blocks
        (136, 136, 4, 1, 1, 0, "relu", "in_perm"),  # a channel shuffle sunk into the input
        (64, 64, 2, 3, 1, 1, "relu6", None),  # aligned groups: the direct (template) schedule
        (64, 64, 2, 3, 1, 1, "relu6", "in_perm"),  # aligned, input permuted (exact, 3x3)
        (20, 32, 4, 3, 2, 1, None, None),  # input padded 20 -> 24, stride 2, 5 channels per group
        (20, 32, 4, 3, 2, 1, None, "in_perm"),  # padded input read through a permutation
        (32, 48, 8, 1, 1, 0, "relu", None),  # tiny groups: 4 -> 6 channels
    ],
)
def test_kernel_matches_float64_reference(ic, oc, groups, k, stride, pad, act, variant) -> None:
    tvm = pytest.importorskip("tvm")
    from mcopt.targets.cpu.kernels.epilogue import Epilogue
    from mcopt.targets.cpu.kernels.grouped import choose_grouped_params, grouped_conv2d_nchwc
    from mcopt.targets.cpu.kernels.layout import pack_bias
    from mcopt.targets.cpu.kernels.target_info import host_target

    target = host_target(2)
    li, lo = block_for(ic, 8), block_for(oc, 8)
    h = 9
    x, w, b = _rand(1, ic, h, h), _rand(oc, ic // groups, k, k), _rand(oc)
    perm = np.arange(ic).reshape(groups, -1).T.reshape(-1)  # a channel shuffle of the input
    conv = _grouped_ref(x[:, perm] if variant == "in_perm" else x, w, groups, stride, pad)
    res = _rand(*conv.shape)
    ep = Epilogue(True, True, act)
    ref = ep.apply_numpy(conv, b.reshape(1, -1, 1, 1), res)
    exact = {"blocks": False, "in_perm": True}.get(variant)
    params, geom = choose_grouped_params(
        (1, ic, h, h), w.shape, groups, li.bn, li.padded // li.bn, lo.bn, lo.padded // lo.bn,
        stride, pad, 1, target, exact,
    )  # fmt: skip
    assert exact is None or geom.exact == exact
    func = grouped_conv2d_nchwc(
        (1, ic, h, h), w.shape, geom, stride, pad, 1, params, ep, in_permuted=variant == "in_perm"
    )
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)

    def blocked(a: np.ndarray, lay) -> np.ndarray:
        full = np.zeros((a.shape[0], lay.padded, *a.shape[2:]), np.float32)
        full[:, : a.shape[1]] = a
        return pack_nchwc(full, lay.bn)

    bp = np.zeros(lo.padded, np.float32)
    bp[:oc] = b
    args = [blocked(x, li), pack_grouped_weight(w, geom, params.oc_kbn)]
    if variant == "in_perm":
        args.append(perm.astype(np.int32))
    args += [pack_bias(bp, lo.bn), blocked(res, lo)]
    dev = tvm.cpu()
    targs = [tvm.runtime.tensor(a, dev) for a in args]
    out = tvm.runtime.tensor(np.zeros(blocked(ref.astype(np.float32), lo).shape, np.float32), dev)
    lib["main"](*targs, out)
    got = unpack_nchwc(out.numpy())[:, :oc]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


# --- the planned build ------------------------------------------------------------------------------
def _op(g: Graph, op: str, *inputs: Value | None, **attrs: object) -> Value:
    return g.add_node(op, list(inputs), attrs).output


def _conv(g: Graph, v: Value, cout: int, k: int, groups: int, stride: int = 1) -> Value:
    cin = v.shape[1]
    w = g.const(_rand(cout, cin // groups, k, k, scale=(2.0 / (cin // groups * k * k)) ** 0.5))
    attrs = {"pads": (k // 2,) * 4, "groups": groups, "strides": (stride, stride)}
    return _op(g, "conv2d", v, w, g.const(_rand(cout, scale=0.1)), **attrs)


def _bn(g: Graph, v: Value) -> Value:
    c = v.shape[1]
    stats = [_rand(c) * 0.2 + 1, _rand(c, scale=0.1), _rand(c, scale=0.1), np.abs(_rand(c)) + 0.5]
    return _op(g, "batch_norm", v, *[g.const(s) for s in stats], epsilon=1e-3)


def _kernel_calls(graph: Graph) -> list[str]:
    import tvm

    from mcopt.targets import get_target
    from mcopt.targets.cpu.lower_planned import lower_planned

    mod = lower_planned(graph, get_target("cpu").tvm_target())
    return [
        b.value.args[0].name_hint.rstrip("0123456789")
        for blk in mod["main"].body.blocks
        for b in blk.bindings
        if isinstance(b.value, tvm.relax.Call) and b.value.op.name == "relax.call_tir"
    ]


def _check(body: Callable[[Graph, Value], list[Value]], shape: tuple[int, ...]) -> list[str]:
    from mcopt.targets import build

    g = Graph("t")
    x = g.add_input("x", ttype(shape))
    g.outputs = body(g, x)
    feed = _rand(*shape)
    ref = interpreter.run(g, [feed])
    got = build(g, "cpu").run(feed)
    for r, o in zip(ref, got):
        assert o.shape == r.shape
        assert np.abs(o.astype(np.float64) - r).max() <= 1e-4 * max(np.abs(r).max(), 1e-6)
    return _kernel_calls(g)


@pytest.mark.tvm
def test_grouped_graph_matches_interpreter() -> None:
    """ShuffleNet-like units: grouped 1x1 (34 channels per group, straddling 8-blocks) + BN + relu,
    channel shuffle, depthwise stride 2, grouped 1x1 + BN + residual + relu; a 3x3 grouped conv
    with aligned groups (direct schedule); a 24 -> 40 conv with 3 groups on padded blocks; 8
    groups of 4 (the plain-path case before)."""
    pytest.importorskip("tvm")

    def body(g: Graph, x: Value) -> list[Value]:
        h = _op(g, "relu", _bn(g, _conv(g, x, 136, 1, 4)))
        sh = _op(g, "reshape", h, shape=(1, 4, 34, 10, 10))
        sh = _op(
            g, "reshape", _op(g, "transpose", sh, perm=(0, 2, 1, 3, 4)), shape=(1, 136, 10, 10)
        )
        d = _bn(g, _conv(g, sh, 136, 3, 136, stride=2))
        r = _bn(g, _conv(g, d, 136, 1, 4))
        pooled = _op(g, "avg_pool", x, kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
        u = _op(g, "relu", _op(g, "add", r, pooled))  # residual fused into the grouped kernel
        a = _op(g, "relu", _conv(g, u, 128, 3, 2))  # 68 -> 64 channels per group
        a = _op(g, "relu", _conv(g, a, 128, 3, 2))  # 64 -> 64: aligned, the direct schedule
        p = _op(g, "relu", _conv(g, _conv(g, a, 24, 1, 1), 39, 3, 3, stride=2))  # 8 -> 13 / group
        q = _op(g, "relu", _conv(g, p, 48, 1, 3))  # 13 -> 16 per group, input padded 39 -> 40
        s = _op(g, "relu", _conv(g, q, 48, 1, 12))  # 12 groups of 4 (the plain path before)
        return [u, s]

    calls = _check(body, (1, 136, 10, 10))
    assert calls.count("gconv2d_nchwc") >= 5 and "conv2d_nchwc" in calls
    # shuffle -> depthwise -> grouped: the shuffle sinks into the grouped conv's input (also on
    # AVX-512, where 136 channels are padded to 144)
    assert "shuffle_nchwc" not in calls
    assert not any("transpose" in c or "take" in c for c in calls)  # never through NCHW


@pytest.mark.tvm
def test_fallbacks_keep_the_fused_shuffle() -> None:
    """24 -> 112 with 4 groups (6 input channels per group, ShuffleNet's first grouped conv) and
    the channel shuffle fused into its epilogue (its output is a graph output: nothing to sink it
    into): the block-diagonal conv is estimated faster than the grouped kernel's permuted
    epilogue and used, the absorbed shuffle permutes its rows; 16 -> 32 with 16 groups (a channel
    multiplier: 4x the MACs in 8-lane blocks with the exact reduction, 32x over whole blocks) runs
    on the grouped kernel, the shuffle in its epilogue. Same results as the interpreter."""
    pytest.importorskip("tvm")

    def shuffle(g: Graph, v: Value, groups: int) -> Value:
        n, c, h, w = v.shape
        r = _op(g, "reshape", v, shape=(n, groups, c // groups, h, w))
        return _op(g, "reshape", _op(g, "transpose", r, perm=(0, 2, 1, 3, 4)), shape=(n, c, h, w))

    def body(g: Graph, x: Value) -> list[Value]:
        h = shuffle(g, _op(g, "relu", _bn(g, _conv(g, x, 112, 1, 4))), 4)
        m = shuffle(g, _op(g, "relu", _conv(g, _conv(g, h, 16, 1, 1), 32, 3, 16)), 16)
        return [h, m]

    calls = _check(body, (1, 24, 8, 8))
    assert calls.count("gconv2d_nchwc") == 1 and "shuffle_nchwc" not in calls
    assert calls.count("conv2d_nchwc") == 2  # the block-diagonal conv and the 1x1 conv


@pytest.mark.slow
@pytest.mark.tvm
def test_shufflenet_end_to_end_matches_interpreter() -> None:
    pytest.importorskip("tvm")
    from mcopt.onnx_io import import_model
    from mcopt.targets import build
    from mcopt.testing import zoo

    g = import_model(zoo.light_model("shufflenet", seed=0))
    x = _rand(*g.inputs[0].shape)
    ref = interpreter.run(g, [x])[0]
    got = build(g, "cpu").run(x)[0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert _kernel_calls(g).count("gconv2d_nchwc") >= 30


@pytest.mark.tvm
@pytest.mark.parametrize("groups", [4, 8])
def test_sunk_shuffle_on_the_fallback_kernels(monkeypatch: pytest.MonkeyPatch, groups: int) -> None:
    """A shuffle sunk into a grouped conv's input (``in_perm``) where the grouped kernel is not
    used: the block-diagonal conv permutes its weight columns (4 groups), the plain path takes
    the input channels (8 groups). Same results as the interpreter."""
    pytest.importorskip("tvm")
    from mcopt.targets.cpu import planning

    monkeypatch.setattr(planning, "MAX_GROUPED_WASTE", 0.0)  # never the grouped kernel

    def body(g: Graph, x: Value) -> list[Value]:
        h = _op(g, "relu", _conv(g, x, 64, 1, groups))
        n, c, hh, ww = h.shape
        r = _op(g, "reshape", h, shape=(n, groups, c // groups, hh, ww))
        r = _op(g, "transpose", r, perm=(0, 2, 1, 3, 4))
        sh = _op(g, "reshape", r, shape=(n, c, hh, ww))
        d = _bn(g, _conv(g, sh, 64, 3, 64))
        return [_op(g, "relu", _conv(g, d, 64, 1, groups))]

    calls = _check(body, (1, 32, 6, 6))
    assert "shuffle_nchwc" not in calls and "gconv2d_nchwc" not in calls
    g = Graph("t")
    g.outputs = body(g, g.add_input("x", ttype((1, 32, 6, 6))))
    sunk = [n for n in plan_cpu(g, lanes=8).nodes if n.op == "fused_conv2d" and n.attrs["in_perm"]]
    assert [n.attrs["kernel"] for n in sunk] == ["block_diagonal" if groups == 4 else "plain"]
