"""Cost analysis: published parameter/MAC counts, liveness peak memory, encoding-aware bytes, rendering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcopt.analysis import analyze, graph_stats, human_bytes, human_count
from mcopt.ir import Graph, TensorType, UniformQuant, Value, ttype
from mcopt.ops import has_op

needs_cnn_ops = pytest.mark.skipif(
    not all(has_op(o) for o in ("max_pool", "flatten", "relu", "conv2d", "dense")),
    reason="pooling/flatten ops not registered yet",
)


def lazy_const(g: Graph, shape: tuple[int, ...], name: str) -> Value:
    """A constant backed by a zero-stride view: big models cost no memory (only types are analyzed)."""
    arr = np.broadcast_to(np.float32(0.0), shape)
    return Value(g.unique_name(name), TensorType(shape, "float32"), const=arr)


def conv(
    g: Graph, x: Value, out_c: int, k: int, stride: int = 1, pad: int = 0, groups: int = 1
) -> Value:
    in_c = x.shape[1]
    w = lazy_const(g, (out_c, in_c // groups, k, k), "w")
    b = lazy_const(g, (out_c,), "b")
    attrs = {"strides": (stride, stride), "pads": (pad,) * 4, "groups": groups}
    y = g.add_node("conv2d", [x, w, b], attrs).output
    return g.add_node("relu", [y]).output


def fc(g: Graph, x: Value, out_f: int, relu: bool = True) -> Value:
    w = lazy_const(g, (out_f, x.shape[-1]), "fc_w")
    b = lazy_const(g, (out_f,), "fc_b")
    y = g.add_node("dense", [x, w, b]).output
    return g.add_node("relu", [y]).output if relu else y


def pool(g: Graph, x: Value, k: int, s: int) -> Value:
    return g.add_node("max_pool", [x], {"kernel": (k, k), "strides": (s, s)}).output


def vgg16() -> Graph:
    g = Graph("vgg16")
    x = g.add_input("x", ttype((1, 3, 224, 224)))
    for item in [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ]:
        x = pool(g, x, 2, 2) if item == "M" else conv(g, x, int(item), 3, pad=1)
    x = g.add_node("flatten", [x]).output
    x = fc(g, fc(g, x, 4096), 4096)
    g.outputs = [fc(g, x, 1000, relu=False)]
    return g


def alexnet() -> Graph:
    """Canonical single-tower AlexNet (Caffe bvlc_alexnet): grouped conv2/4/5, 227x227 input."""
    g = Graph("alexnet")
    x = g.add_input("x", ttype((1, 3, 227, 227)))
    x = pool(g, conv(g, x, 96, 11, stride=4), 3, 2)
    x = pool(g, conv(g, x, 256, 5, pad=2, groups=2), 3, 2)
    x = conv(g, x, 384, 3, pad=1)
    x = conv(g, x, 384, 3, pad=1, groups=2)
    x = pool(g, conv(g, x, 256, 3, pad=1, groups=2), 3, 2)
    x = g.add_node("flatten", [x]).output
    x = fc(g, fc(g, x, 4096), 4096)
    g.outputs = [fc(g, x, 1000, relu=False)]
    return g


@needs_cnn_ops
def test_vgg16_params_and_macs() -> None:
    g = vgg16()
    rep = analyze(g)
    assert rep.params == 138_357_544
    assert abs(rep.macs - 15.47e9) / 15.47e9 < 0.01
    assert rep.weight_bytes == 4 * rep.params
    assert rep.bytes_by_dtype == {"float32": 4 * rep.params}
    assert human_count(rep.params) == "138.4 M"
    assert human_count(rep.macs, "MACs") == "15.5 GMACs"
    # the biggest activation pair is conv1_2: 2 x 64x224x224 floats
    assert rep.peak_activation_bytes >= 2 * 64 * 224 * 224 * 4
    assert graph_stats(g).params == rep.params and graph_stats(g).macs == rep.macs


@needs_cnn_ops
def test_alexnet_params_and_macs() -> None:
    rep = analyze(alexnet())
    assert rep.params == 60_965_224  # ~61 M
    conv_macs = 105_415_200 + 223_948_800 + 149_520_384 + 112_140_288 + 74_760_192
    fc_macs = 9216 * 4096 + 4096 * 4096 + 4096 * 1000
    assert (
        rep.macs - sum(r.macs for r in rep.rows if r.op not in ("conv2d", "dense"))
        == conv_macs + fc_macs
    )
    assert human_count(rep.params) == "61.0 M"


def test_peak_activation_by_liveness() -> None:
    g = Graph("tiny")
    x = g.add_input("x", ttype((1, 4)))  # 16 bytes each value
    a = g.add_node("relu", [x], name="a").output
    b = g.add_node("relu", [a], name="b").output
    c = g.add_node("add", [a, b], name="c").output
    g.outputs = [c]
    rep = analyze(g)
    # step a: x, a = 32; step b: a, b = 32 (x dead); step c: a, b, c = 48
    assert rep.peak_activation_bytes == 48
    assert rep.peak_at == "c"
    assert rep.activation_bytes == 48
    assert rep.input_bytes == 16
    assert rep.params == 0 and rep.macs == 0

    g2 = Graph("shrink")
    x = g2.add_input("x", ttype((1, 8)))  # 32 B
    a = g2.add_node("relu", [x], name="a").output  # 32 B
    d = g2.add_node(
        "dense", [a, g2.const(np.ones((2, 8), np.float32), "w")], name="d"
    ).output  # 8 B
    e = g2.add_node("relu", [d], name="e").output  # 8 B
    g2.outputs = [e]
    rep2 = analyze(g2)
    assert (rep2.peak_activation_bytes, rep2.peak_at) == (64, "a")
    assert rep2.macs == 16 and rep2.params == 16 and rep2.weight_bytes == 64


def test_encoding_changes_bytes_and_shared_constants_counted_once() -> None:
    g = Graph("enc")
    x = g.add_input("x", ttype((1, 16)))
    enc = UniformQuant(bits=8, signed=True, scale=(0.1,), zero_point=(0,))
    wq = Value(
        g.unique_name("wq"),
        TensorType((16, 16), "float32", enc),
        const=np.ones((16, 16), np.float32),
    )
    w = g.const(np.ones((16, 16), np.float32), "w")
    y1 = g.add_node("dense", [x, wq], name="d1").output
    y2 = g.add_node("dense", [y1, w], name="d2").output
    y3 = g.add_node("dense", [y2, w], name="d3").output  # shares w
    g.outputs = [y3]
    rep = analyze(g)
    rows = {r.name: r for r in rep.rows}
    assert rows["d1"].weight_bytes == 256 + 8  # 8 bits per weight + scale + zero point
    assert rows["d2"].weight_bytes == 1024 and rows["d3"].weight_bytes == 1024
    assert rows["d1"].params == rows["d2"].params == rows["d3"].params == 256
    assert rep.params == 512  # w counted once
    assert rep.bytes_by_dtype == {"float32": 1024, "quant<s8,tensor>": 264}
    assert rep.weight_bytes == 1024 + 264


def test_rendering() -> None:
    from rich.console import Console

    g = Graph("r")
    x = g.add_input("x", ttype((1, 8)))
    y = g.add_node("dense", [x, g.const(np.ones((4, 8), np.float32), "w")], name="fc").output
    g.outputs = [g.add_node("relu", [y], name="out").output]
    rep = analyze(g)
    console = Console(record=True, width=200)
    console.print(rep.table())
    text = console.export_text()
    assert "fc" in text and "dense" in text and "total" in text
    md = rep.to_markdown()
    assert md.splitlines()[0].startswith("| node | op | output |")
    assert "| fc | dense | 1x4 | 32 | 128 B | 32 | 16 B |" in md
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["params"] == 32 and d["flops"] == 64 and d["rows"][0]["out_shapes"] == [[1, 4]]
    # x (1x8 floats) and fc's output (1x4) are live together: 32 + 16 bytes
    assert rep.totals()["peak_activation_bytes"] == 48


def test_human_formatting() -> None:
    assert human_count(61_100_000) == "61.1 M"
    assert human_count(15_470_000_000, "MACs") == "15.5 GMACs"
    assert human_count(999) == "999"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(12) == "12 B"


@pytest.mark.slow
def test_imported_bvlc_alexnet_counts() -> None:
    """The ONNX zoo's bvlc_alexnet (seeded weights) imports to the published ~61 M params. Its input is
    224x224 (not Caffe's 227), so conv1 yields 54x54 and the MACs are 0.655 G instead of 0.724 G."""
    try:
        from mcopt.onnx_io import import_model
        from mcopt.testing.zoo import light_model
    except ImportError:
        pytest.skip("ONNX import / zoo not available")
    rep = analyze(import_model(light_model("bvlc_alexnet")))
    assert rep.params == 60_965_224
    assert rep.macs == 595_938_432 + 58_621_952  # convs + fcs
