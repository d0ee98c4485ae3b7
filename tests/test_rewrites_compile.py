"""Every architecture rewrite (factorizations, low-rank dense, FC->GAP, Winograd) leaves a graph that
the TVM CPU build compiles and that matches the reference interpreter (and so the rewritten model is
something users can deploy, not only analyse)."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt import interpreter
from mcopt.ir import verify
from mcopt.onnx_io import import_model
from mcopt.pass_manager import PassContext, get_pass
from mcopt.testing import zoo

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

SPECS = [
    ("factorize-spatial", {"rank": 2}),
    ("factorize-depthwise", {"rank": 2}),
    ("factorize-tucker", {"rank": 4}),
    ("factorize-flattened", {"rank": 2}),
    ("lowrank-dense", {"rank": 4}),
    ("winograd", {"tile": 2}),
    ("winograd", {"tile": 4}),
]


@pytest.fixture(scope="module")
def lenet() -> tuple[object, list[dict[str, np.ndarray]]]:
    g = import_model(zoo.lenet5_path())
    x, _ = zoo.mnist_test_set()
    return g, [{g.inputs[0].name: x[i : i + 1]} for i in range(0, 8, 2)]


@pytest.fixture(scope="module")
def small_resnet() -> tuple[object, list[dict[str, np.ndarray]]]:
    """3x3 stride-1 convs (LeNet-5 has only 5x5 ones): Winograd's case."""
    g = import_model(zoo.resnet18_like(width=8, resolution=32, num_classes=10))
    rng = np.random.default_rng(0)
    shape = g.inputs[0].shape
    return g, [{g.inputs[0].name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]


@pytest.mark.parametrize("spec, opts", SPECS, ids=[f"{s}-{list(o.values())[0]}" for s, o in SPECS])
def test_rewrite_compiles_and_matches(lenet, small_resnet, spec: str, opts: dict) -> None:  # type: ignore[no-untyped-def]
    from mcopt.targets import build

    g0, calib = small_resnet if spec == "winograd" else lenet
    g = g0.copy()
    for p in ("remove-identity", "fold-batch-norm", "dce"):
        get_pass(p).run(g, PassContext())
    options = dict(opts)
    if spec.startswith("factorize") or spec == "lowrank-dense":
        options.update(max_rel_error=None, min_saving=0.0)
    changed = get_pass(spec, **options).run(g, PassContext(calib=calib))
    assert changed, f"{spec} did not rewrite the model"
    verify(g)
    compiled = build(g, "cpu")
    for feed in calib[:2]:
        ref = interpreter.run(g, feed)[0]
        got = compiled.run(feed)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_fc_to_gap_compiles(lenet) -> None:  # type: ignore[no-untyped-def]
    from mcopt.targets import build

    g0, calib = lenet
    g = g0.copy()
    assert get_pass("fc-to-gap").run(g, PassContext(calib=calib))
    verify(g)
    assert g.nodes_of("global_avg_pool")
    ref = interpreter.run(g, calib[0])[0]
    np.testing.assert_allclose(build(g, "cpu").run(calib[0])[0], ref, rtol=1e-4, atol=1e-5)
