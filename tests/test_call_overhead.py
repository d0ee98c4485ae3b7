"""The low-overhead call paths: ``CompiledModel.prepare()`` (a call bound to its own buffers, on the
allocation-free ``main_bound`` entry of targets/relax/static_memory.py) returns what ``run()``
returns; ``run()``'s re-binding fast path (positional or one dict) still checks what it must.
No timing here: benchmarks/bench_overhead.py measures the microseconds."""

from __future__ import annotations

import re
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("tvm")

import mcopt  # noqa: E402
from mcopt.errors import ShapeError  # noqa: E402
from mcopt.testing import zoo  # noqa: E402


def _model(nodes: list, outputs: list[str], n: int = 10):  # type: ignore[no-untyped-def]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, n]) for o in outputs],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _compiled(proto):  # type: ignore[no-untyped-def]
    return mcopt.optimize(proto, target="cpu", measure=False, check=False).compiled


@pytest.fixture(scope="module")
def lenet300():  # type: ignore[no-untyped-def]
    return _compiled(onnx.load(zoo.lenet300_path()))


@pytest.fixture(scope="module")
def relu():  # type: ignore[no-untyped-def]
    return _compiled(_model([helper.make_node("Relu", ["x"], ["y"])], ["y"]))


def _inputs(c, seed: int) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(d) for _, s, d in c.input_specs]


@pytest.mark.parametrize("name", ["relu", "lenet300"])
def test_prepare_returns_what_run_returns(name: str, request: pytest.FixtureRequest) -> None:
    c = request.getfixturevalue(name)
    p = c.prepare()
    assert p.allocation_free  # a static model: every buffer allocated once
    for seed in range(3):
        xs = _inputs(c, seed)
        ref = [o.copy() for o in c.run(*xs)]
        feeds = dict(zip([n for n, _, _ in c.input_specs], xs))
        for got in (p(*xs), p(feeds), p(**feeds)):
            assert len(got) == len(ref)
            for g, r in zip(got, ref):
                np.testing.assert_array_equal(g, r)
        for v, x in zip(p.inputs, xs):  # filled in place, then run on what the buffers hold
            v[...] = x
        np.testing.assert_array_equal(p()[0], ref[0])


def test_prepared_outputs_are_its_buffers_run_outputs_are_not(relu) -> None:  # type: ignore[no-untyped-def]
    p = relu.prepare()
    a = p(np.ones((1, 10), np.float32))[0]
    b = p(np.full((1, 10), 2.0, np.float32))[0]
    assert a is b and np.all(a == 2.0)  # documented: overwritten by the next call
    r1 = relu.run(np.ones((1, 10), np.float32))[0]
    relu.run(np.full((1, 10), 2.0, np.float32))
    assert np.all(r1 == 1.0)
    assert not np.may_share_memory(r1, a)


def test_prepared_call_checks_what_the_fast_fill_does_not(relu) -> None:  # type: ignore[no-untyped-def]
    p = relu.prepare()
    x = np.linspace(-1, 1, 10).reshape(1, 10)
    ref = relu.run(x.astype(np.float32))[0].copy()
    np.testing.assert_array_equal(p(x)[0], ref)  # float64: cast by the binder
    np.testing.assert_array_equal(p(x.astype(np.float32).tolist())[0], ref)  # a list too
    with pytest.raises(ShapeError, match="expected shape"):
        p(np.ones((2, 10), np.float32))
    with pytest.raises(ShapeError, match="expected shape"):
        p(np.ones((10,), np.float32))  # would broadcast into the buffer: refused
    with pytest.raises(ShapeError, match="unknown input name"):
        p({"nope": np.ones((1, 10), np.float32)})
    with pytest.raises(ShapeError, match="takes 1 input"):
        p(np.ones((1, 10), np.float32), np.ones((1, 10), np.float32))


def test_run_dict_fast_path_checks_names_and_shapes(relu) -> None:  # type: ignore[no-untyped-def]
    x = np.ones((1, 10), np.float32)
    np.testing.assert_array_equal(relu.run({"x": x})[0], x)
    np.testing.assert_array_equal(relu.run({"x": -x})[0], 0 * x)  # the re-bound dict call
    with pytest.raises(ShapeError, match="unknown input name"):
        relu.run({"y": x})
    with pytest.raises(ShapeError, match="expected shape"):
        relu.run({"x": np.ones((1, 11), np.float32)})
    np.testing.assert_array_equal(relu.run(x=x)[0], x)


@pytest.mark.parametrize(
    "nodes,outputs,allocation_free",
    [
        ([helper.make_node("Identity", ["x"], ["y"])], ["y"], False),  # main allocates nothing
        (  # an output that is the input buffer beside a computed one
            [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Identity", ["x"], ["z"])],
            ["y", "z"],
            True,
        ),
    ],
)
def test_outputs_that_alias_an_input(
    nodes: list, outputs: list[str], allocation_free: bool
) -> None:
    c = _compiled(_model(nodes, outputs))
    x1, x2 = np.ones((1, 10), np.float32), np.full((1, 10), -2.0, np.float32)
    r1 = c.run(x1)
    c.run(x2)
    assert all(np.all(o == 1.0) for o in r1)  # run(): an input-aliased output is copied
    p = c.prepare()
    assert p.allocation_free == allocation_free
    for x in (x1, x2):
        ref = [o.copy() for o in c.run(x)]
        got = p(x)
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(g, r)


def test_prepared_runs_in_threads(lenet300) -> None:  # type: ignore[no-untyped-def]
    xs = [_inputs(lenet300, seed) for seed in range(4)]
    refs = [lenet300.run(*x)[0].copy() for x in xs]

    def work(i: int) -> None:
        p = lenet300.prepare()  # one per thread
        for _ in range(50):
            np.testing.assert_array_equal(p(*xs[i])[0], refs[i])

    _in_threads(work, 4)


def _in_threads(work, n: int) -> None:  # type: ignore[no-untyped-def]
    """``work(i)`` for i < n, each in its own thread; the first failure re-raised."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_run_goes_through_a_bound_call_per_thread(lenet300) -> None:  # type: ignore[no-untyped-def]
    """From a thread's second call, run() uses that thread's own PreparedRun (the allocation-free
    entry) and still returns fresh arrays; other shapes or dtypes go through the checked path."""
    c = _compiled(onnx.load(zoo.lenet300_path()))
    xs = [_inputs(c, seed) for seed in range(3)]
    refs = [lenet300.run(*x)[0].copy() for x in xs]
    outs = [c.run(*x)[0] for x in xs for _ in range(3)]
    assert type(c._local.bound).__name__ == "PreparedRun"
    for i, o in enumerate(outs):  # each its own array, none overwritten by a later call
        np.testing.assert_array_equal(o, refs[i // 3])
    assert not any(np.may_share_memory(a, b) for a in outs for b in outs if a is not b)
    np.testing.assert_array_equal(c.run({"input": xs[0][0]})[0], refs[0])  # one dict
    np.testing.assert_allclose(
        c.run(xs[1][0].astype(np.float64))[0], refs[1], rtol=1e-6
    )  # cast by the binder
    with pytest.raises(ShapeError, match="expected shape"):
        c.run(np.ones((2, 784), np.float32))

    def work(i: int) -> None:
        for _ in range(30):
            np.testing.assert_array_equal(c.run(*xs[i])[0], refs[i])

    _in_threads(work, 3)


def test_checked_calls_from_threads_at_once(lenet300) -> None:  # type: ignore[no-untyped-def]
    """Keyword calls always take the checked path through the VM's ``main``; threads starting
    together must not share one VM's register frames (they did: a crash under CI)."""
    xs = [_inputs(lenet300, seed) for seed in range(4)]
    refs = [lenet300.run(*x)[0].copy() for x in xs]
    start = threading.Barrier(4)

    def work(i: int) -> None:
        start.wait()
        for _ in range(100):
            np.testing.assert_array_equal(lenet300.run(input=xs[i][0])[0], refs[i])

    _in_threads(work, 4)


def test_a_model_with_unknown_input_specs_prepares_from_an_example(relu) -> None:  # type: ignore[no-untyped-def]
    from mcopt.errors import TargetError
    from mcopt.targets.relax.builder import CompiledModel

    bare = CompiledModel(relu.executable, "cpu")  # what load_library gives without specs
    with pytest.raises(TargetError, match="needs example inputs"):
        bare.prepare()
    x = np.linspace(-1, 1, 10, dtype=np.float32).reshape(1, 10)
    p = bare.prepare(x)
    np.testing.assert_array_equal(p()[0], np.maximum(x, 0))
    np.testing.assert_array_equal(p(-x)[0], np.maximum(-x, 0))


def test_the_bound_entry_leaves_main_as_tvm_compiles_it() -> None:
    """build_pipeline() is TVM's default Relax pipeline + one pass that only adds functions:
    ``main``'s bytecode is what ``tvm.compile`` alone makes of the same module."""
    import tvm

    from mcopt.onnx_io import import_model
    from mcopt.targets.registry import get_target
    from mcopt.targets.relax import builder
    from mcopt.targets.relax.static_memory import BOUND, BOUND_ALLOC, build_pipeline

    assert builder._BOUND == BOUND
    spec = get_target("cpu")
    g = import_model(onnx.load(zoo.lenet5_path()))
    mod = builder.lower_for(builder.plan_for(g, spec), spec)
    with spec.tvm_target():
        mod = builder.mcopt_pipeline(spec)(mod)
    plain = tvm.compile(mod, target=spec.tvm_target()).as_text()
    ours = tvm.compile(mod, target=spec.tvm_target(), relax_pipeline=build_pipeline()).as_text()

    def section(text: str, name: str) -> str | None:
        m = re.search(rf"^@{name}:\n(.*?)\n\n", text, re.S | re.M)
        return m.group(1) if m else None

    assert section(plain, "main") == section(ours, "main")
    bound = section(ours, BOUND)
    assert bound is not None and section(ours, BOUND_ALLOC) is not None
    assert "alloc_storage" not in bound and "alloc_tensor" not in bound


def test_an_exported_library_keeps_the_bound_entry(lenet300, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mcopt.targets import load_library

    path = lenet300.export_library(tmp_path / "lenet300.so")
    loaded = load_library(path, lenet300.input_specs)
    p = loaded.prepare()
    assert p.allocation_free
    xs = _inputs(lenet300, 7)
    np.testing.assert_array_equal(p(*xs)[0], lenet300.run(*xs)[0])
