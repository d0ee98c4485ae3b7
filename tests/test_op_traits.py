"""Op traits (mcopt.ops.TRAITS) are checked against each op's own numpy reference: what a pass or
the planner assumes from a trait really holds. Plus: the passes' op lists come from the traits."""

from __future__ import annotations

import numpy as np
import pytest

from mcopt.ops import TRAITS, all_ops, get_schema, has_trait, ops_with

SHAPE = (1, 3, 4, 4)
RNG = np.random.default_rng(0)
ATTRS = {
    "max_pool": {"kernel": (2, 2)},
    "avg_pool": {"kernel": (2, 2)},
    "reshape": {"shape": (1, 48)},
    "squeeze": {"axes": (0,)},
    "unsqueeze": {"axes": (0,)},
    "clip": {"min": -1.0, "max": 1.0},
    "cast": {"to": "float32"},
    "upsample_nearest": {"scales": (2, 2)},
    "depth_to_space": {"blocksize": 1},
}


def _run(op: str, *arrays: np.ndarray) -> np.ndarray:
    s = get_schema(op)
    attrs = s.normalize_attrs(ATTRS.get(op, {}), op)
    extra: list[np.ndarray] = []
    if op == "prelu":
        extra = [np.full((1, 3, 1, 1), 0.25, np.float32)]
    return s.run_reference([*arrays, *extra], attrs)[0]


def _float_ops(trait: str) -> list[str]:
    out = []
    for op in sorted(ops_with(trait)):
        s = get_schema(op)
        if op.startswith(("fx_", "q")) or op in ("quantize", "dequantize"):
            continue  # integer-domain ops: checked through their float counterparts
        if s.min_inputs > (2 if trait == "commutative" else 1) and op != "prelu":
            continue
        out.append(op)
    return out


@pytest.mark.parametrize("op", _float_ops("zero_preserving"))
def test_zero_preserving(op: str) -> None:
    y = _run(op, np.zeros(SHAPE, np.float32))
    assert not np.any(y), op


@pytest.mark.parametrize("op", _float_ops("finite_preserving"))
def test_finite_preserving(op: str) -> None:
    x = (RNG.standard_normal(SHAPE) * 1e30).astype(np.float32)
    args = [x, x[:, :, ::-1].copy()] if get_schema(op).min_inputs == 2 and op != "prelu" else [x]
    with np.errstate(all="ignore"):
        y = _run(op, *args)
    assert np.all(np.isfinite(y)) or op in ("add", "sub", "mul"), op  # overflow is not NaN-making
    if op in ("add", "sub", "mul"):
        small = RNG.standard_normal(SHAPE).astype(np.float32)
        assert np.all(np.isfinite(_run(op, small, small)))


@pytest.mark.parametrize("op", _float_ops("channelwise"))
def test_channelwise(op: str) -> None:
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    y0 = _run(op, x)
    x2 = x.copy()
    x2[:, 1] += 3.0
    y1 = _run(op, x2)
    assert np.array_equal(y0[:, [0, 2]], y1[:, [0, 2]], equal_nan=True), op  # others untouched


@pytest.mark.parametrize("op", _float_ops("view"))
def test_views_move_no_data(op: str) -> None:
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    assert np.array_equal(_run(op, x).reshape(-1), x.reshape(-1))


@pytest.mark.parametrize("op", _float_ops("commutative"))
def test_commutative(op: str) -> None:
    a, b = RNG.standard_normal((2, *SHAPE)).astype(np.float32)
    assert np.array_equal(_run(op, a, b), _run(op, b, a))


@pytest.mark.parametrize("op", sorted(ops_with("elementwise") & ops_with("channelwise")))
def test_elementwise_unary_commutes_with_permutations(op: str) -> None:
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    perm = RNG.permutation(x.shape[-1])
    assert np.allclose(_run(op, x)[..., perm], _run(op, x[..., perm]), equal_nan=True)


def test_traits_are_known_and_queried_by_the_analyses() -> None:
    from mcopt.analysis.channels import POOL_OPS, UNARY_OPS, ZERO_PRESERVING
    from mcopt.passes.cleanup import VIEW_OPS

    for op in all_ops():
        assert get_schema(op).traits <= set(TRAITS), op
    assert UNARY_OPS == ops_with("channelwise") - ops_with("pool")
    assert POOL_OPS == ops_with("pool") and ZERO_PRESERVING <= ops_with("zero_preserving")
    assert set(VIEW_OPS) == ops_with("view") - ops_with("channelwise")
    assert has_trait("relu", "zero_preserving") and not has_trait("max_pool", "zero_preserving")
    with pytest.raises(ValueError, match="unknown trait"):
        ops_with("fast")
