"""The tail of the blocked int8 kernels: what follows the int32 accumulation, fused in the kernel.

A planned ``fused_qconv2d`` (:mod:`mcopt.ops.planned`) is a ``qconv2d`` followed by the nodes it
absorbed; :class:`QEpilogue` is that sequence for one output element, in this order::

    y = float32(acc + bias_eff[c]) * mult[c]            # the qconv2d epilogue (mult: requant_multiplier)
    int base (qconv2d requantizes):  q = saturate(rint(y) + out_zp)        -> done
    float base:
        y = clamp(y, base bounds)                         # qconv2d's own act_min / act_max
        y = y + float32(int32(r) - r_zp) * r_scale        # residual add of dequantize(r) (or y + r)
        y = clamp(y, post bounds)                         # relu / clip after the add
        y = y * clamp(y / 6 + 1/2, 0, 1)                  # post_act="hard_swish" (MobileNet-V3)
        y = y * sigmoid(y)                                # post_act="silu" (YOLOv5 / YOLOX)
        y = y / 2 * (1 + erf(y / sqrt 2))                 # post_act="gelu" (PP-OCRv5/v6)
        y = y if y > 0 else post_alpha * y                # post_act="leaky_relu" (openWakeWord)
        q = saturate(rint(y / q_scale) + q_zp)            # the quantize that consumed it (if any)

which is exactly the graph's ``qconv2d -> add(dequantize) -> relu -> quantize`` in float32
(:meth:`apply_numpy` is that sequence in numpy; the kernels compute the same expressions, up to
LLVM contracting ``a * b + c`` into one FMA, so a requantized code can differ by one step at a
rounding tie).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

_INF = (-math.inf, math.inf)


def _qrange(dtype: str) -> tuple[float, float]:
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


def _rint(y: Any) -> Any:
    """Round half to even: ``tirx.round`` (LLVM ``nearbyint``). ``tirx.nearbyint`` itself makes
    TVM's vectorizer give up on the loop when its parent is a cast or clamp (LLVM then gathers
    8 lanes at a time: a 5x slower epilogue)."""
    from tvm import tirx

    return tirx.round(y)


def _vec(dtype: str, lanes: int) -> str:
    return dtype if lanes == 1 else f"{dtype}x{lanes}"


def _to_int(y: Any, dtype: str, lanes: int = 1) -> Any:
    """float (already clamped to the dtype's range) -> 8-bit, through int32: LLVM turns a direct
    ``fptoui(clamp(nearbyint(x)))`` into a saturating conversion it scalarizes on x86 (5-10x
    slower epilogue)."""
    return y.astype(_vec("int32", lanes)).astype(_vec(dtype, lanes))


@dataclass(frozen=True)
class QEpilogue:
    """See the module docstring. ``base_dtype``: the qconv2d's own ``out_dtype``; ``base_bounds``:
    its :func:`~mcopt.ops.quant.output_bounds` (codes for an int base, real units for a float
    one); ``residual``: None, ``"float32"`` or the residual's int dtype; ``q_dtype``: None (float
    output) or the requantized output dtype."""

    base_dtype: str = "float32"
    base_bounds: tuple[float, float] = _INF
    base_zp: int = 0
    residual: str | None = None
    r_scale: float = 1.0
    r_zp: int = 0
    post_bounds: tuple[float, float] = _INF
    post_act: str = "none"
    post_alpha: float = 0.0  # leaky_relu's slope
    q_dtype: str | None = None
    q_scale: float = 1.0
    q_zp: int = 0

    def __post_init__(self) -> None:
        if self.base_dtype != "float32" and (
            self.residual is not None
            or self.q_dtype is not None
            or self.post_bounds != _INF
            or self.post_act != "none"
        ):
            raise ValueError("a requantizing qconv2d cannot absorb a residual, act or quantize")

    @property
    def out_dtype(self) -> str:
        if self.base_dtype != "float32":
            return self.base_dtype
        return self.q_dtype or "float32"

    def apply_te(self, acc: Any, mult: Any, residual: Any = None) -> Any:
        """The TE expression for one element: ``acc`` int32 (bias already added), ``mult`` its
        channel's float32 multiplier, ``residual`` the residual element (or None); or for a
        vector of them (``int32xN`` and ``float32xN``, the constants broadcast)."""
        import tvm
        from tvm import tirx

        lanes = int(acc.ty.dtype.lanes)

        def f(v: float) -> Any:
            c = tirx.const(float(v), "float32")
            return c if lanes == 1 else tirx.Broadcast(c, lanes)

        def clamp(y: Any, bounds: tuple[float, float]) -> Any:
            lo, hi = bounds
            if math.isfinite(lo):
                y = tvm.te.max(y, f(lo))
            if math.isfinite(hi):
                y = tvm.te.min(y, f(hi))
            return y

        y = acc.astype(_vec("float32", lanes)) * mult
        if self.base_dtype != "float32":
            y = _rint(y) + f(self.base_zp)
            return _to_int(clamp(y, self.base_bounds), self.base_dtype, lanes)
        y = clamp(y, self.base_bounds)
        if self.residual is not None:
            assert residual is not None
            if self.residual == "float32":
                y = y + residual
            else:
                r = residual.astype(_vec("int32", lanes)) - tirx.const(self.r_zp, "int32")
                y = y + r.astype(_vec("float32", lanes)) * f(self.r_scale)
        y = clamp(y, self.post_bounds)
        if self.post_act == "hard_swish":  # the hard_swish op's formula: y * clip(y/6 + 1/2, 0, 1)
            y = y * tvm.te.min(tvm.te.max(y / f(6.0) + f(0.5), f(0.0)), f(1.0))
        if self.post_act == "silu":
            from mcopt.targets.fast_math import fast_silu

            y = fast_silu(y, lanes)
        if self.post_act == "gelu":
            from mcopt.targets.fast_math import fast_gelu

            y = fast_gelu(y, lanes)
        if self.post_act == "leaky_relu":
            a = f(self.post_alpha)
            if 0.0 <= self.post_alpha <= 1.0:
                y = tvm.te.max(y, y * a)
            else:
                y = tirx.Select(y > f(0.0), y, y * a)
        if self.q_dtype is None:
            return y
        y = _rint(y / f(self.q_scale)) + f(self.q_zp)
        return _to_int(clamp(y, _qrange(self.q_dtype)), self.q_dtype, lanes)

    def apply_numpy(
        self, acc: np.ndarray, mult: np.ndarray, residual: np.ndarray | None = None
    ) -> np.ndarray:
        """The same tail in numpy (``mult`` broadcastable to ``acc``), for references and tests."""
        y = acc.astype(np.int32).astype(np.float32) * np.asarray(mult, np.float32)
        if self.base_dtype != "float32":
            y = np.rint(y) + np.float32(self.base_zp)
            return np.clip(y, *self.base_bounds).astype(self.base_dtype)
        y = np.clip(y, *self.base_bounds).astype(np.float32)
        if self.residual is not None:
            assert residual is not None
            if self.residual == "float32":
                y = (y + residual).astype(np.float32)
            else:
                r = (residual.astype(np.int32) - np.int32(self.r_zp)).astype(np.float32)
                y = (y + r * np.float32(self.r_scale)).astype(np.float32)
        y = np.clip(y, *self.post_bounds).astype(np.float32)
        if self.post_act == "hard_swish":
            y = (y * np.clip(y / np.float32(6) + np.float32(0.5), 0, 1)).astype(np.float32)
        if self.post_act == "silu":
            from mcopt.targets.fast_math import numpy_silu

            y = numpy_silu(y).astype(np.float32)
        if self.post_act == "gelu":
            from mcopt.targets.fast_math import numpy_gelu

            y = numpy_gelu(y).astype(np.float32)
        if self.post_act == "leaky_relu":
            y = np.where(y > 0, y, np.float32(self.post_alpha) * y).astype(np.float32)
        if self.q_dtype is None:
            return y
        q = np.rint(y / np.float32(self.q_scale)) + np.float32(self.q_zp)
        return np.clip(q, *_qrange(self.q_dtype)).astype(self.q_dtype)


__all__ = ["QEpilogue"]
