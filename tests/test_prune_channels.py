"""Structured pruning: channel dependency groups, physical removal, dead neurons, random graphs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcopt.analysis.channels import analyze_channels, select_keep, unit_scores
from mcopt.analysis.cost import graph_stats
from mcopt.errors import OptionError
from mcopt.interpreter import run
from mcopt.ir import Graph, ttype, verify
from mcopt.onnx_io import export_model, import_model
from mcopt.pass_manager import ChannelPruningRecord, PassContext, get_pass
from mcopt.testing import zoo


def _x(g: Graph, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(g.inputs[0].shape).astype(np.float32)


def _ort(g: Graph, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(
        export_model(g).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {g.inputs[0].name: x})[0]


def zeroed_reference(g: Graph, keep: np.ndarray) -> Graph:
    """The oracle: removing channels == zeroing their outgoing weight columns in every consumer."""
    ref = g.copy()
    a = analyze_channels(ref)  # same element ids: same structure
    for node in a.consumers:
        x, w = node.inputs[0], node.inputs[1]
        m = keep[a.pos[id(x)]]
        if m.all():
            continue
        arr = w.const.copy()
        arr[:, ~m] = 0
        node.set_input(1, ref.const(arr, name=w.name + "_z"))
    return ref


def prune_and_check(g: Graph, ratio: float, criterion: str = "l1", seed: int = 0) -> Graph:
    """Prune a copy of `g` at `ratio`; check verify, exactness against the zero-column oracle."""
    a = analyze_channels(g)
    groups = a.groups()
    keep = select_keep(
        a, groups, unit_scores(a, criterion), dict.fromkeys(range(len(groups)), ratio)
    )
    ref = zeroed_reference(g, keep)
    pruned = g.copy()
    analyze_channels(pruned).apply(keep)
    verify(pruned)
    x = _x(g, seed)
    y, y_ref = run(pruned, [x])[0], run(ref, [x])[0]
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4 * (1 + np.abs(y_ref).max()))
    return pruned


SMALL = {
    "tiny_cnn": lambda: zoo.tiny_cnn(),
    "resnet18": lambda: zoo.resnet18_like(32, 10, width=8),
    "mobilenet_v2": lambda: zoo.mobilenet_v2(0.25, 32, 10),
}


@pytest.fixture(scope="module", params=sorted(SMALL))
def small_graph(request: pytest.FixtureRequest) -> Graph:
    return import_model(SMALL[request.param]())


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_prune_channels_small_models(small_graph: Graph, ratio: float) -> None:
    g = small_graph.copy()
    s0 = graph_stats(g)
    assert get_pass("prune-channels", ratio=ratio)(g, PassContext())
    verify(g)
    s1 = graph_stats(g)
    assert s1.params < s0.params and s1.macs < s0.macs
    x = _x(g)
    y = run(g, [x])[0]
    assert y.shape == small_graph.outputs[0].shape
    np.testing.assert_allclose(_ort(g, x), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("criterion", ["l1", "l2", "group-lasso"])
def test_removal_equals_zeroing_outgoing(small_graph: Graph, criterion: str) -> None:
    prune_and_check(small_graph, 0.4, criterion)


def test_activation_criterion_and_options() -> None:
    g = import_model(zoo.resnet18_like(32, 10, width=8))
    x = _x(g)
    ctx = PassContext(calib=[[x]])
    p = get_pass("prune-channels", ratio=0.5, criterion="activation", skip=["conv_0"], round_to=4)
    assert p(g, ctx)
    verify(g)
    conv0 = g.find_node("conv_0")
    assert conv0.output.shape[1] == 8  # the residual-stream group of conv_0 was skipped
    conv1 = g.find_node("conv_1")
    assert conv1.output.shape[1] % 4 == 0 and conv1.output.shape[1] < 8
    record = ctx.analyses.get(ChannelPruningRecord)
    assert record is not None and "conv_3" in record.nodes
    spec = get_pass("prune-channels", layer_ratios="[conv_1=0.75]", ratio=0.0)
    g2 = import_model(zoo.resnet18_like(32, 10, width=8))
    spec(g2, PassContext())
    assert g2.find_node("conv_1").output.shape[1] == 2
    assert g2.find_node("conv_3").output.shape[1] == 8


def test_groups_residual_concat_depthwise() -> None:
    g = import_model(zoo.tiny_cnn())
    groups = {grp.name: grp for grp in analyze_channels(g).groups()}
    # the residual add couples the stem conv and the block's second conv
    assert [s.name for s in groups["conv_0"].spaces] == ["conv_0", "conv_2"]
    # the output layer is never pruned
    assert groups["fc_0"].num_prunable == 0 and "output" in (groups["fc_0"].reason or "")
    # the depthwise conv follows its input group: pruning stem channels shrinks it
    g2 = prune_and_check(g, 0.5)
    dw = g2.find_node("dw_0")
    assert dw.attrs["groups"] == dw.inputs[0].shape[1] == dw.output.shape[1] < 16


def _concat_graph() -> Graph:
    g = Graph("concat_offsets")
    x = g.add_input("x", ttype((1, 3, 8, 8)))
    rng = np.random.default_rng(1)

    def conv(v, cout, k=3, groups=1):
        cin = v.shape[1]
        w = g.const(rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32), "w")
        b = g.const(rng.standard_normal(cout).astype(np.float32), "b")
        p = k // 2
        return g.add_node("conv2d", [v, w, b], {"pads": (p, p, p, p), "groups": groups}).output

    a = conv(x, 4)
    b = conv(x, 6)
    c = g.add_node("concat", [a, b], {"axis": 1}).output  # 10 channels: a at 0..3, b at 4..9
    d = conv(x, 10)
    s = g.add_node("add", [c, d]).output  # couples d[0:4] with a and d[4:10] with b
    s = g.add_node("relu", [s]).output
    e = conv(s, 5)
    f = g.add_node("flatten", [e]).output
    w = g.const(rng.standard_normal((3, 5 * 64)).astype(np.float32), "fc")
    g.outputs.append(g.add_node("dense", [f, w]).output)
    verify(g)
    return g


def test_concat_offsets_and_flatten_columns() -> None:
    g = _concat_graph()
    a = analyze_channels(g)
    grp = next(gr for gr in a.groups() if len(gr.spaces) == 3)
    assert len(grp.units) == 10
    # unit i of d is coupled with a[i] (i < 4) and with b[i-4]
    sp = {s.name: s for s in grp.spaces}
    names = [n.name for n in g.nodes if n.op == "conv2d"]
    sa, sb, sd = sp[names[0]], sp[names[1]], sp[names[2]]
    for i in range(10):
        src = sa.start + i if i < 4 else sb.start + i - 4
        assert a.find(sd.start + i) == a.find(src)
    pruned = prune_and_check(g, 0.5)
    dense = pruned.nodes_of("dense")[0]
    assert dense.inputs[1].shape[1] == pruned.nodes_of("flatten")[0].output.shape[1]
    assert dense.inputs[1].shape[1] % 64 == 0 and dense.inputs[1].shape[1] < 5 * 64


# --- dead neurons -----------------------------------------------------------------------------------
def _mlp(zero_in: list[int], zero_out: list[int], bias_in: bool = False) -> Graph:
    g = Graph("mlp")
    x = g.add_input("x", ttype((4, 12)))
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((10, 12)).astype(np.float32)
    b1 = rng.standard_normal(10).astype(np.float32)
    w1[zero_in] = 0
    if not bias_in:
        b1[zero_in] = 0
    w2 = rng.standard_normal((6, 10)).astype(np.float32)
    w2[:, zero_out] = 0
    h = g.add_node("dense", [x, g.const(w1, "w1"), g.const(b1, "b1")]).output
    h = g.add_node("relu", [h]).output
    y = g.add_node("dense", [h, g.const(w2, "w2")]).output
    g.outputs.append(y)
    return g


def test_dead_neurons_exact_mlp() -> None:
    g = _mlp(zero_in=[1, 4], zero_out=[7])
    x = np.random.default_rng(3).standard_normal((4, 12)).astype(np.float32)
    y0 = run(g, [x])[0]
    assert get_pass("remove-dead-neurons")(g, PassContext())
    verify(g)
    assert g.nodes_of("dense")[0].output.shape[1] == 7
    np.testing.assert_allclose(run(g, [x])[0], y0, rtol=1e-5, atol=1e-5)


def test_dead_neuron_with_bias_is_kept() -> None:
    g = _mlp(zero_in=[2], zero_out=[], bias_in=True)  # relu(bias) is a nonzero constant: alive
    assert not get_pass("remove-dead-neurons")(g, PassContext())


def test_dead_channels_conv_bn_and_calibration() -> None:
    g = import_model(zoo.resnet18_like(32, 10, width=8))
    x = _x(g)
    # zero the outgoing columns of conv_1's channel 3 (its consumer is conv_2)
    c2 = g.find_node("conv_2")
    w = c2.inputs[1].const.copy()
    w[:, 3] = 0
    c2.set_input(1, g.const(w, "w_dead"))
    y0 = run(g, [x])[0]
    assert get_pass("remove-dead-neurons")(g, PassContext())
    verify(g)
    assert g.find_node("conv_1").output.shape[1] == 7
    np.testing.assert_allclose(run(g, [x])[0], y0, rtol=1e-5, atol=1e-5)
    # a relu that never fires on the calibration data
    c = g.find_node("conv_3")
    bn = c.output.users()[0]
    bias = bn.inputs[2].const.copy()
    bias[5] = -1e4
    bn.set_input(2, g.const(bias, "bn_bias_dead"))
    y0 = run(g, [x])[0]
    assert not get_pass("remove-dead-neurons")(g, PassContext(calib=[[x]]))
    assert get_pass("remove-dead-neurons", use_calib=True)(g, PassContext(calib=[[x]]))
    assert g.find_node("conv_3").output.shape[1] == 7
    np.testing.assert_allclose(run(g, [x])[0], y0, rtol=1e-5, atol=1e-5)


# --- random graphs ------------------------------------------------------------------------------------
@st.composite
def random_graphs(draw: st.DrawFn) -> Graph:
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    g = Graph("random")
    v = g.add_input("x", ttype((1, draw(st.integers(1, 4)), 6, 6)))

    def conv(x, cout, k=1, groups=1, bias=True):
        w = g.const(rng.standard_normal((cout, x.shape[1] // groups, k, k)).astype(np.float32), "w")
        ins = [x, w]
        if bias:
            ins.append(g.const(rng.standard_normal(cout).astype(np.float32), "b"))
        p = k // 2
        return g.add_node("conv2d", ins, {"pads": (p, p, p, p), "groups": groups}).output

    v = conv(v, draw(st.integers(2, 8)), 3)
    live = [v]
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["conv", "res", "concat", "dw", "bn", "pool", "scale"]))
        c = v.shape[1]
        if kind == "conv":
            v = g.add_node(
                "relu", [conv(v, draw(st.integers(1, 8)), draw(st.sampled_from([1, 3])))]
            ).output
        elif kind == "res":
            y = g.add_node("relu", [conv(v, draw(st.integers(1, 6)), 3)]).output
            v = g.add_node("add", [v, conv(y, c, 1, bias=draw(st.booleans()))]).output
        elif kind == "concat":
            other = draw(st.sampled_from(live))
            if other.shape[2:] != v.shape[2:]:
                other = v
            v = g.add_node("concat", [v, conv(other, draw(st.integers(1, 5)))], {"axis": 1}).output
        elif kind == "dw":
            v = conv(v, c, 3, groups=c)
        elif kind == "bn":
            ps = [
                rng.uniform(0.5, 1.5, c),
                rng.standard_normal(c),
                rng.standard_normal(c),
                rng.uniform(0.5, 2, c),
            ]
            v = g.add_node(
                "batch_norm", [v] + [g.const(p.astype(np.float32), "bn") for p in ps]
            ).output
        elif kind == "pool" and v.shape[2] >= 4:
            v = g.add_node("max_pool", [v], {"kernel": (2, 2), "strides": (2, 2)}).output
        elif kind == "scale":
            s = g.const(rng.uniform(0.5, 1.5, (c, 1, 1)).astype(np.float32), "s")
            v = g.add_node("mul", [v, s]).output
        live.append(v)
    if draw(st.booleans()):
        f = g.add_node("flatten", [v]).output
    else:
        f = g.add_node("flatten", [g.add_node("global_avg_pool", [v]).output]).output
    w = g.const(rng.standard_normal((3, f.shape[1])).astype(np.float32), "fc")
    g.outputs.append(g.add_node("dense", [f, w]).output)
    verify(g)
    return g


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    g=random_graphs(),
    ratio=st.sampled_from([0.2, 0.5, 0.8]),
    crit=st.sampled_from(["l1", "group-lasso"]),
)
def test_random_graphs_prune_valid_and_exact(g: Graph, ratio: float, crit: str) -> None:
    pruned = prune_and_check(g, ratio, crit)
    assert pruned.outputs[0].shape == g.outputs[0].shape
    assert graph_stats(pruned).params <= graph_stats(g).params
    # and through the pass + dead-neuron removal (exact) + export
    g2 = g.copy()
    get_pass("prune-channels", ratio=ratio, criterion=crit)(g2, PassContext())
    verify(g2)
    x = _x(g2, 1)
    y = run(g2, [x])[0]
    get_pass("remove-dead-neurons")(g2, PassContext())
    verify(g2)
    np.testing.assert_allclose(run(g2, [x])[0], y, rtol=1e-4, atol=1e-4 * (1 + np.abs(y).max()))


class _Target:
    def __init__(self, multiple: int) -> None:
        self.name, self.multiple = "fake", multiple

    def channel_multiple(self) -> int:
        return self.multiple


@pytest.mark.parametrize(
    ("target", "ratio", "width"),
    [(None, 0.4, 20), (_Target(16), 0.4, 16), (_Target(16), 0.2, 32), (_Target(8), 0.4, 24)],
)
def test_round_to_auto_keeps_the_targets_channel_multiple(target, ratio: float, width: int) -> None:
    """``round_to="auto"``: kept counts are the multiple of the target's SIMD block nearest to
    what the ratio asks (32 channels at 0.4 -> 20, which a 16-lane target runs as 32: 16 there;
    at 0.2 -> 26: 32; on 8 lanes 20 is a tie: 24); without a target the plain count."""
    g = import_model(zoo.resnet18_like(32, 10, width=32))
    x = _x(g)
    get_pass("prune-channels", ratio=ratio, skip=["conv_0"])(g, PassContext(target=target))
    verify(g)
    assert g.find_node("conv_1").output.shape[1] == width
    np.testing.assert_equal(run(g, {g.inputs[0].name: x})[0].shape, (1, 10))


def test_round_to_nearest_multiple_and_small_groups() -> None:
    """An explicit ``round_to``: the nearest multiple (ties up), never all of a group that is
    only one multiple wide, and a group no wider than one multiple keeps the plain count."""
    for ratio, want in ((0.5, 4), (0.7, 4), (0.2, 8), (0.3, 8)):
        g = import_model(zoo.resnet18_like(32, 10, width=8))
        get_pass("prune-channels", ratio=ratio, skip=["conv_0"], round_to=4)(g, PassContext())
        assert g.find_node("conv_1").output.shape[1] == want, ratio
    g = import_model(zoo.resnet18_like(32, 10, width=8))
    get_pass("prune-channels", ratio=0.5, skip=["conv_0"], round_to=16)(g, PassContext())
    assert g.find_node("conv_1").output.shape[1] == 4  # 8 channels: at most one block
    with pytest.raises(OptionError, match="round_to"):
        get_pass("prune-channels", round_to=0)


def test_target_channel_multiple_and_the_search_spells_it_out() -> None:
    """The target's SIMD channel block (NEON 4, GPU 1, this host's x86 its fp32 / int8 block) and
    ``passes="auto"``'s pruning candidates carry it as an explicit ``round_to``."""
    pytest.importorskip("tvm")
    from mcopt.search import _families, _round_to
    from mcopt.targets.services import services_for

    assert services_for("arm:neoverse-n1").channel_multiple() == 4
    assert services_for("cuda").channel_multiple() == 1
    assert services_for("cpu").channel_multiple() in (8, 16)
    assert _round_to(None) == 1 and _round_to("cpu") == services_for("cpu").channel_multiple()
    g = import_model(zoo.resnet18_like(32, 10, width=8))
    ladder = dict(_families(g, "latency", False, 1, round_to=16))["prune-channels"]
    assert all(any(p.endswith(",round_to=16") for p in pipe) for pipe in ladder)
