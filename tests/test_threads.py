"""Small kernels stay serial (targets/cpu/kernels/threads.py) and the compiled model's input/output
fast path (DLPack views) returns fresh, correct outputs run after run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from tvm import te  # noqa: E402

from mcopt import interpreter  # noqa: E402
from mcopt.api import load  # noqa: E402
from mcopt.targets import build  # noqa: E402
from mcopt.targets.cpu.kernels import threads  # noqa: E402
from mcopt.targets.registry import get_target  # noqa: E402
from mcopt.targets.relax.builder import lower_for, mcopt_pipeline  # noqa: E402
from mcopt.testing import zoo  # noqa: E402


def _matmul(m: int, n: int, k: int) -> tvm.tirx.PrimFunc:
    a = te.placeholder((m, k), name="a")
    b = te.placeholder((k, n), name="b")
    r = te.reduce_axis((0, k), name="r")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="c")
    d = te.compute((m, n), lambda i, j: c[i, j] + 1.0, name="d")
    return te.create_prim_func([a, b, d])


def test_work_counts_block_iterations_and_survives_scheduling() -> None:
    func = _matmul(8, 12, 5)
    assert threads.func_work(func) == 8 * 12 * 5 + 8 * 12  # the reduction + the epilogue
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("c")
    i, j, r = sch.get_loops(blk)
    jo, ji = sch.split(j, factors=[None, 4])
    sch.reorder(i, jo, r, ji)
    sch.decompose_reduction(blk, r)  # the init becomes its own block: not counted as work
    assert threads.schedule_work(sch) == 8 * 12 * 5 + 8 * 12 + 8 * 12


@pytest.mark.parametrize("threshold, expect_parallel", [(0, True), (10**9, False)])
def test_parallel_follows_the_threshold(
    monkeypatch: pytest.MonkeyPatch, threshold: int, expect_parallel: bool
) -> None:
    monkeypatch.setenv("MCOPT_MIN_PARALLEL_WORK", str(threshold))
    sch = tvm.s_tir.Schedule(_matmul(64, 64, 64))
    i = sch.get_loops(sch.get_sblock("c"))[0]
    assert threads.parallel(sch, i) is expect_parallel
    assert ("T.parallel" in sch.mod.script()) is expect_parallel


def test_parallel_counts_dot_product_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    """``per_op``: a kernel whose reduction runs 4 MACs per lane in one instruction (int8 VNNI /
    sdot) stays serial below 4x the threshold in block iterations."""
    from mcopt.targets.cpu.kernels.int8_intrin import macs_per_op

    work = threads.func_work(_matmul(64, 64, 64))
    monkeypatch.setenv("MCOPT_MIN_PARALLEL_WORK", str(work // 2))
    for per_op, expect in ((1, True), (4, False)):
        sch = tvm.s_tir.Schedule(_matmul(64, 64, 64))
        i = sch.get_loops(sch.get_sblock("c"))[0]
        assert threads.parallel(sch, i, per_op) is expect
    assert (macs_per_op("vnni16"), macs_per_op("sdot"), macs_per_op("avx2"), macs_per_op(None)) == (
        4, 4, 1, 1,
    )  # fmt: skip


def test_bad_env_value_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcopt.errors import OptionError

    for bad in ("lots", "-5"):
        monkeypatch.setenv("MCOPT_MIN_PARALLEL_WORK", bad)
        with pytest.raises(OptionError, match="MCOPT_MIN_PARALLEL_WORK"):
            threads.min_parallel_work()
    monkeypatch.setenv("MCOPT_MIN_PARALLEL_WORK", "1e5")
    assert threads.min_parallel_work() == 100_000


def _lenet():
    return load(onnx.load(zoo.lenet5_path()))


def _parallel_kernels(graph, monkeypatch: pytest.MonkeyPatch, threshold: int) -> dict[str, bool]:
    monkeypatch.setenv("MCOPT_MIN_PARALLEL_WORK", str(threshold))
    spec = get_target("cpu")
    mod = lower_for(graph, spec)
    with spec.tvm_target():
        mod = mcopt_pipeline(spec)(mod)
    return {
        gv.name_hint: "T.parallel" in f.script()
        for gv, f in mod.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc)
    }


def test_lenet_small_kernels_serial_big_ones_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _lenet()
    everything = _parallel_kernels(g, monkeypatch, 0)
    default = _parallel_kernels(g, monkeypatch, threads.MIN_PARALLEL_WORK)
    assert all(everything.values())
    serial = [k for k, par in default.items() if not par]
    assert any(k.startswith("max_pool") for k in serial)  # a 2-6k element pool
    assert any(k.startswith("dense_packed") for k in serial)  # 400x120 = 48k MACs


@pytest.mark.parametrize("threshold", [0, threads.MIN_PARALLEL_WORK, 10**12])
def test_serial_and_parallel_builds_match_the_interpreter(
    monkeypatch: pytest.MonkeyPatch, threshold: int
) -> None:
    monkeypatch.setenv("MCOPT_MIN_PARALLEL_WORK", str(threshold))
    g = _lenet()
    cm = build(g, "cpu")
    x = np.random.default_rng(0).standard_normal(g.inputs[0].shape).astype(np.float32)
    ref = interpreter.run(g, {g.inputs[0].name: x})[0]
    got = cm.run(x)[0]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_run_outputs_are_fresh_and_inputs_refilled() -> None:
    g = _lenet()
    cm = build(g, "cpu")
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(g.inputs[0].shape).astype(np.float32) for _ in range(3)]
    outs = [cm.run(x)[0] for x in xs]
    for x, out in zip(xs, outs, strict=True):  # earlier outputs are not overwritten by later runs
        ref = interpreter.run(g, {g.inputs[0].name: x})[0]
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    outs[0][...] = 0.0  # a caller may write into its output
    assert np.array_equal(cm.run(xs[0])[0], cm.run(xs[0])[0])
    assert not np.array_equal(cm.run(xs[0])[0], outs[0])
    # float64 input of the right shape is cast; a wrong shape is a one-line error
    assert np.allclose(cm.run(xs[1].astype(np.float64))[0], outs[1], atol=1e-6)
    from mcopt.errors import ShapeError

    with pytest.raises(ShapeError, match="expected shape"):
        cm.run(xs[0][:, :, :5])
