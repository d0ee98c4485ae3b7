"""The vectorizable ``exp`` / ``sigmoid`` / ``silu`` / ``erf`` / ``gelu`` (targets/fast_math.py) that
the CPU build lowers those ops and the SiLU / GELU epilogues to: close to numpy's over the whole
float range, including where ``exp`` overflows, and the ops of a build match float64."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from mcopt import interpreter  # noqa: E402
from mcopt.ir import Graph, TensorType  # noqa: E402
from mcopt.targets import build  # noqa: E402

X = np.concatenate(
    [np.linspace(-120, 120, 4001), [-1e30, -88.5, -87.0, 0.0, 1e-30, 87.0, 88.5, 1e30]]
).astype(np.float32)


def _ref(op: str, x: np.ndarray) -> np.ndarray:
    from scipy.special import erf, expit

    x64 = x.astype(np.float64)
    if op == "gelu":
        return 0.5 * x64 * (1 + erf(x64 / np.sqrt(2.0)))
    s = expit(x64)
    return s if op == "sigmoid" else x64 * s


@pytest.mark.parametrize("op", ["sigmoid", "silu", "gelu"])
def test_build_matches_float64(op: str) -> None:
    g = Graph(op)
    x = g.add_input("x", TensorType((1, X.size), "float32"))
    g.outputs.append(g.add_node(op, [x], name="a").output)
    got = build(g, "cpu").run(X[None])[0][0].astype(np.float64)
    ref = _ref(op, X)
    assert np.all(np.isfinite(got))
    # absolute error near 0 of the logistic, relative elsewhere (a few float32 ULP)
    err = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-30)
    if op == "gelu":  # erf's rational form: 5e-7 absolute, so absolute where gelu is small
        err = np.abs(got - ref) / np.maximum(np.abs(ref), 1.0)
    tiny = np.abs(ref) < 1e-30
    assert err[~tiny].max() < 2e-6, X[~tiny][err[~tiny].argmax()]
    assert np.abs(got[tiny]).max() < 1e-8  # silu(-1e30): -1e30 * sigmoid clamped at e^-88
    np.testing.assert_allclose(interpreter.run(g, [X[None]])[0][0], ref, rtol=1e-6, atol=1e-37)


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_epilogue_activation_matches_numpy(act: str) -> None:
    """The conv epilogue's SiLU / GELU (TE) and its numpy twin agree."""
    import tvm
    from tvm import te

    from mcopt.targets.cpu.kernels.epilogue import Epilogue

    ep = Epilogue(bias=False, activation=act)
    a = te.placeholder((X.size,), "float32", name="a")
    out = te.compute(a.shape, lambda i: ep.apply_te(a[i], None, None, "float32"), name="o")
    f = tvm.compile(te.create_prim_func([a, out]), target="llvm")
    got = tvm.runtime.tensor(np.zeros_like(X))
    f(tvm.runtime.tensor(X), got)
    atol = 1e-30 if act == "silu" else 1e-6
    np.testing.assert_allclose(got.numpy(), ep.apply_numpy(X), rtol=5e-6, atol=atol)
