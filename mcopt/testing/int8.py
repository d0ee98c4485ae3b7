"""Reference outputs for the int8 kernel tests (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def epilogue_reference(
    ep: Any, acc: np.ndarray, mult: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """(what an int8 conv kernel with epilogue `ep` must write, the residual it reads): `ep`
    (a :class:`~mcopt.targets.cpu.kernels.int8_epilogue.QEpilogue`) applied to the int32
    accumulators ``acc (1, OC, OH, OW)`` with per-channel multipliers `mult`, and a residual of
    the epilogue's kind drawn from `rng` (float32 ~ 3 N(0, 1), or int codes in [0, 256)); None
    without one."""
    res = None
    if ep.residual == "float32":
        res = rng.standard_normal(acc.shape).astype(np.float32) * 3
    elif ep.residual:
        res = rng.integers(0, 256, acc.shape).astype(ep.residual)
    return ep.apply_numpy(acc, mult.reshape(1, -1, 1, 1), res), res
