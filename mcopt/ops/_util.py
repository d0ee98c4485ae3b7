"""Small validation helpers shared by the op tables (checks return a reason string or None)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.ir.types import TensorType


def bad_ints(
    a: dict[str, Any], key: str, n: int | None = None, lo: int | None = None
) -> str | None:
    """Why attribute `key` is not a tuple of (`n`) ints (each >= `lo`), or None when it is."""
    val = a[key]
    if not isinstance(val, tuple) or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in val
    ):
        return f"attribute {key!r} must be a tuple of ints, got {val!r}"
    if n is not None and len(val) != n:
        return f"attribute {key!r} needs {n} values, got {len(val)} ({val!r})"
    if lo is not None and any(v < lo for v in val):
        return f"attribute {key!r} values must be >= {lo}, got {val!r}"
    return None


def bad_int(a: dict[str, Any], key: str, choices: tuple[int, ...] | None = None) -> str | None:
    val = a[key]
    if not isinstance(val, int | np.integer) or isinstance(val, bool):
        return f"attribute {key!r} must be an int, got {val!r}"
    if choices is not None and val not in choices:
        return f"attribute {key!r} must be one of {choices}, got {val!r}"
    return None


def norm_axis(axis: int, rank: int) -> int | None:
    """`axis` in [-rank, rank) made non-negative, or None when out of range."""
    if not isinstance(axis, int | np.integer) or not -rank <= axis < rank:
        return None
    return int(axis) % rank


def norm_axes(axes: tuple[int, ...], rank: int) -> tuple[int, ...] | None:
    """Normalize a tuple of axes; None when one is out of range or repeated."""
    out = tuple(norm_axis(ax, rank) for ax in axes)
    if any(ax is None for ax in out) or len(set(out)) != len(out):
        return None
    return out  # type: ignore[return-value]


def is_float(t: TensorType) -> bool:
    return np.issubdtype(np.dtype(t.dtype), np.floating)


def need_float(t: TensorType | None) -> str | None:
    assert t is not None
    return None if is_float(t) else f"expects a floating-point input, got {t}"


def acc_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulation dtype for the references: float32 (BLAS) for floats, int64 for integers."""
    if np.issubdtype(dtype, np.floating):
        return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    return np.dtype(np.int64)
