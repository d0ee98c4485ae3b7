"""Channel concats written in place: the convs before a blocked concat write their channel blocks
of its buffer (fp32 direct / depthwise kernels, the int8 blocked / depthwise kernels), the last
input's padding being the concat's; a narrow-blocked last input is re-blocked to line up.

Checked against the interpreter (fp32) and bit for bit against the same build with the concat
copied (int8)."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcopt.interpreter import run  # noqa: E402
from mcopt.ir import Graph, TensorType  # noqa: E402
from mcopt.ir.verify import verify  # noqa: E402
from mcopt.pass_manager import PassContext, PassManager  # noqa: E402
from mcopt.targets.cpu import lower_planned  # noqa: E402
from mcopt.targets.cpu.planning import plan_cpu  # noqa: E402
from mcopt.targets.registry import get_target  # noqa: E402
from mcopt.targets.relax.builder import build  # noqa: E402


def _branches(seed: int, narrow: int = 8, first: str = "depthwise") -> Graph:
    """tiny_cnn's mixing block: ``x -> [depthwise 3x3 + relu | 1x1 conv to `narrow` channels]
    + relu -> concat -> 1x1 conv + relu``, the narrow branch last (or, ``first="conv"``, a 16-channel
    1x1 conv first)."""
    rng = np.random.default_rng(seed)
    g = Graph("branches")
    x = g.add_input("x", TensorType((1, 16, 10, 10)))

    def conv(v, o, k=1, groups=1, relu=True):  # type: ignore[no-untyped-def]
        w = g.const(rng.standard_normal((o, v.shape[1] // groups, k, k)).astype(np.float32) / 4)
        b = g.const(rng.standard_normal(o).astype(np.float32) / 10)
        at = {"pads": (k // 2,) * 4, "groups": groups}
        y = g.add_node("conv2d", [v, w, b], at).output
        return g.add_node("relu", [y]).output if relu else y

    a = conv(x, 16, 3, groups=16) if first == "depthwise" else conv(x, 16)
    cat = g.add_node("concat", [a, conv(x, narrow)], {"axis": 1}).output
    g.outputs.append(conv(cat, 32))
    return g


def _feeds(g: Graph, n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    x = g.inputs[0]
    return [{x.name: rng.standard_normal(x.shape).astype(np.float32)} for _ in range(n)]


def _calls(graph: Graph) -> list[str]:
    target = get_target("cpu").tvm_target()
    mod = lower_planned.lower_planned(plan_cpu(graph, target), target)
    calls = []
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            if not isinstance(b.value, tvm.relax.Call) or not hasattr(b.value.op, "name"):
                continue
            if b.value.op.name in ("relax.call_tir", "relax.call_tir_inplace"):
                calls.append(str(b.value.args[0].name_hint).rstrip("0123456789"))
            elif b.value.op.name == "relax.concat":
                calls.append("concatenate")
    return calls


def _no_copy(calls: list[str]) -> bool:
    return not {"concatenate", "concat_nchwc", "copy_nchwc"} & set(calls)


@pytest.mark.parametrize("first", ["depthwise", "conv"])
def test_fp32_branches_write_into_the_concat(first: str) -> None:
    g = _branches(0, first=first)
    pg = plan_cpu(g, get_target("cpu").tvm_target())
    verify(pg)
    cat = next(n for n in pg.nodes if n.op == "concat")
    lays = [v.type.layout for v in cat.inputs]  # type: ignore[union-attr]
    assert len({lay.bn for lay in lays}) == 1 and lays[-1].is_padded  # type: ignore[union-attr]
    assert _no_copy(_calls(g))
    ref = [run(g, f)[0] for f in _feeds(g)]
    cm = build(g, "cpu")
    for f, r in zip(_feeds(g), ref):
        np.testing.assert_allclose(cm.run(f)[0], r, rtol=1e-4, atol=1e-4)


def _int8(g: Graph) -> Graph:
    PassManager(["cleanup", "quantize-int8"]).run(g, PassContext(calib=_feeds(g, 4)))
    return g


@pytest.mark.parametrize("first", ["depthwise", "conv"])
@pytest.mark.parametrize("narrow", [8, 16])
def test_int8_branches_write_into_the_concat(
    first: str, narrow: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 build with the concat written in place equals, bit for bit, the one that copies
    it (and the interpreter within a code's rounding)."""
    g = _int8(_branches(2, narrow, first))
    calls = _calls(g)
    if "qconv2d_nchwc" not in calls:
        pytest.skip("no blocked int8 kernels on this CPU")
    assert _no_copy(calls)
    feeds = _feeds(g)
    got = [build(g, "cpu").run(f)[0] for f in feeds]
    monkeypatch.setattr(lower_planned, "_inplace_concats", lambda graph: {})
    assert not _no_copy(_calls(g))
    copied = build(g, "cpu")
    for f, y in zip(feeds, got):
        np.testing.assert_array_equal(y, copied.run(f)[0])
        ref = run(g, f)[0]
        np.testing.assert_allclose(y, ref, rtol=0, atol=0.05 * np.abs(ref).max())


def test_a_padded_first_input_is_still_gathered() -> None:
    """Padding inside the concat (a padded input before another) cannot be written in place: the
    concat gathers by logical channel, same result."""
    rng = np.random.default_rng(5)
    g = Graph("padded_first")
    x = g.add_input("x", TensorType((1, 16, 6, 6)))

    def conv(v, o):  # type: ignore[no-untyped-def]
        w = g.const(rng.standard_normal((o, v.shape[1], 1, 1)).astype(np.float32) / 4)
        return g.add_node("conv2d", [v, w]).output

    cat = g.add_node("concat", [conv(x, 20), conv(x, 16)], {"axis": 1}).output
    g.outputs.append(conv(cat, 8))
    assert "concat_nchwc" in _calls(g)
    f = _feeds(g)[0]
    np.testing.assert_allclose(build(g, "cpu").run(f)[0], run(g, f)[0], rtol=1e-4, atol=1e-4)


def test_a_pool_writes_into_the_concat() -> None:
    """PP-HGNet's stem: ``concat(max_pool(x), conv(conv(x)))`` with the pool's kernel writing its
    blocks of the concat's buffer; same result."""
    rng = np.random.default_rng(6)
    g = Graph("stem")
    inp = g.add_input("x", TensorType((1, 3, 12, 12)))
    w0 = g.const(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) / 4)
    x = g.add_node("relu", [g.add_node("conv2d", [inp, w0], {"pads": (1,) * 4}).output]).output
    pool = g.add_node("max_pool", [x], {"kernel": (2, 2), "strides": (1, 1), "pads": (0, 0, 1, 1)})
    w = g.const(rng.standard_normal((16, 16, 2, 2)).astype(np.float32) / 4)
    conv = g.add_node("conv2d", [x, w], {"pads": (0, 0, 1, 1)}).output
    cat = g.add_node("concat", [pool.output, conv], {"axis": 1}).output
    w2 = g.const(rng.standard_normal((8, 32, 1, 1)).astype(np.float32) / 4)
    g.outputs.append(g.add_node("conv2d", [cat, w2]).output)
    calls = _calls(g)
    assert "max_pool_nchwc" in calls and _no_copy(calls)
    f = _feeds(g)[0]
    np.testing.assert_allclose(build(g, "cpu").run(f)[0], run(g, f)[0], rtol=1e-4, atol=1e-4)
