"""The elementwise tail fused into a kernel's output loop: ``act(acc + bias [+ residual])``.

Fusing the tail into the register-tiled output loop (instead of separate Relax ops) means the
accumulators are written to memory exactly once, already biased, summed with the skip connection and
activated: the "conv + bias + batch-norm + activation + residual add in one kernel" of issue 3
(batch-norm is folded into the weights and bias before packing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ACTIVATIONS = (
    None, "relu", "relu6", "clip", "hard_swish", "hard_sigmoid", "silu", "gelu", "leaky_relu",
    "prelu",
)  # fmt: skip
#: activations that are a clamp of the value (what every kernel supports)
CLAMPS = (None, "relu", "relu6", "clip")


@dataclass(frozen=True)
class Epilogue:
    """What follows the accumulation, in this order: ``+ bias``, ``+ residual``, activation.

    ``activation`` is ``None``, ``"relu"``, ``"relu6"`` (clip to [0, 6]), ``"clip"`` (to
    ``[clip_min, clip_max]``), ``"hard_swish"`` (``v * clip(v + 3, 0, 6) / 6``, MobileNetV3 /
    PP-LCNet) or ``"hard_sigmoid"`` (``clip(alpha * v + beta, 0, 1)`` with ``alpha, beta =
    clip_min, clip_max``: the two numbers parameterize whichever activation takes parameters) or
    ``"silu"`` (``v * sigmoid(v)``, YOLOv5 / YOLOX; :func:`~mcopt.targets.fast_math.fast_silu`) or
    ``"gelu"`` (``v / 2 * (1 + erf(v / sqrt 2))``, PP-OCRv5/v6; :func:`~.fast_math.fast_gelu`) or
    ``"leaky_relu"`` (``max(v if v > 0 else alpha * v, floor)`` with ``alpha, floor = clip_min,
    clip_max``; ``floor = -inf`` for none: YOLOv3/v4-tiny, openWakeWord's ``Max(LeakyRelu, -0.4)``) or
    ``"prelu"`` (``v if v > 0 else slope[c] * v``, one slope per output channel: a ``slope``
    tensor of the bias's shape follows the bias / residual arguments; MTCNN, ArcFace).
    ``residual`` adds a tensor of the output's (blocked) shape. Kernels whose tail is generated as
    text (Winograd) or is a clamp only (the sparse kernels) check :attr:`is_clamp`.
    """

    bias: bool = True
    residual: bool = False
    activation: str | None = None
    clip_min: float = 0.0
    clip_max: float = 6.0

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {ACTIVATIONS}")

    @property
    def is_clamp(self) -> bool:
        return self.activation in CLAMPS

    @property
    def is_identity(self) -> bool:
        return not self.bias and not self.residual and self.activation is None

    def bounds(self) -> tuple[float | None, float | None]:
        """(lo, hi) of the activation as a clip (None = unbounded)."""
        if self.activation == "relu":
            return 0.0, None
        if self.activation == "relu6":
            return 0.0, 6.0
        if self.activation == "clip":
            return self.clip_min, self.clip_max
        return None, None

    def blocked_output(
        self, acc: Any, out_shape: tuple[int, ...], dtype: str, tensors: list[Any]
    ) -> Any:
        """The output tensor of a blocked ``(N, C/bn, H, W, bn)`` kernel: ``act(acc + bias (+
        residual))`` as a TE compute over ``acc(b, c, y, x, k)`` (a function or a tensor), with the
        ``bias (C/bn, bn)`` / ``residual`` placeholders this epilogue needs appended to `tensors`
        (the kernel's argument list), then the output. The one copy of the fused tail the conv,
        grouped-conv and depthwise templates share."""
        from tvm import te

        get = acc if callable(acc) else (lambda b, c, y, x, k: acc[b, c, y, x, k])
        bias = res = slope = None
        if self.bias:
            bias = te.placeholder((out_shape[1], out_shape[4]), dtype, name="bias")
            tensors.append(bias)
        if self.residual:
            res = te.placeholder(out_shape, dtype, name="residual")
            tensors.append(res)
        if self.activation == "prelu":
            slope = te.placeholder((out_shape[1], out_shape[4]), dtype, name="slope")
            tensors.append(slope)
        out = te.compute(
            out_shape,
            lambda b, c, y, x, k: self.apply_te(
                get(b, c, y, x, k),
                bias[c, k] if bias is not None else None,
                res[b, c, y, x, k] if res is not None else None,
                dtype,
                slope[c, k] if slope is not None else None,
            ),
            name="out",
        )
        tensors.append(out)
        return out

    def apply_te(self, value: Any, bias: Any, residual: Any, dtype: str, slope: Any = None) -> Any:
        """The TE expression of the tail for one element (``bias`` / ``residual`` / ``slope``
        already indexed)."""
        import tvm

        if self.bias:
            value = value + bias
        if self.residual:
            value = value + residual
        c = lambda v: tvm.tirx.const(v, dtype)  # noqa: E731
        if self.activation == "silu":
            from mcopt.targets.fast_math import fast_silu

            return fast_silu(value)
        if self.activation == "gelu":
            from mcopt.targets.fast_math import fast_gelu

            return fast_gelu(value)
        if self.activation == "hard_swish":
            return value * tvm.te.min(tvm.te.max(value + c(3.0), c(0.0)), c(6.0)) * c(1.0 / 6.0)
        if self.activation == "hard_sigmoid":
            v = value * c(self.clip_min) + c(self.clip_max)
            return tvm.te.min(tvm.te.max(v, c(0.0)), c(1.0))
        if self.activation == "prelu":
            return tvm.tirx.Select(value > c(0.0), value, value * slope)
        if self.activation == "leaky_relu":
            alpha, floor = float(self.clip_min), float(self.clip_max)
            if 0.0 <= alpha <= 1.0:
                value = tvm.te.max(value, value * c(alpha))
            else:
                value = tvm.tirx.Select(value > c(0.0), value, value * c(alpha))
            return tvm.te.max(value, c(floor)) if math.isfinite(floor) else value
        lo, hi = self.bounds()
        if lo is not None:
            value = tvm.te.max(value, c(lo))
        if hi is not None:
            value = tvm.te.min(value, c(hi))
        return value

    def apply_numpy(
        self, value: Any, bias: Any = None, residual: Any = None, slope: Any = None
    ) -> Any:
        """The same tail in numpy (``bias`` broadcastable to ``value``), for references and tests."""
        import numpy as np

        if self.bias:
            value = value + bias
        if self.residual:
            value = value + residual
        if self.activation == "silu":
            from mcopt.targets.fast_math import numpy_silu

            return numpy_silu(value)
        if self.activation == "gelu":
            from mcopt.targets.fast_math import numpy_gelu

            return numpy_gelu(value)
        if self.activation == "hard_swish":
            return value * np.clip(value + 3.0, 0.0, 6.0) / 6.0
        if self.activation == "hard_sigmoid":
            return np.clip(self.clip_min * value + self.clip_max, 0.0, 1.0)
        if self.activation == "leaky_relu":
            return np.maximum(np.where(value > 0, value, self.clip_min * value), self.clip_max)
        if self.activation == "prelu":  # slope broadcastable to value, like bias
            return np.where(value > 0, value, slope * value)
        lo, hi = self.bounds()
        if lo is not None or hi is not None:
            value = np.clip(value, lo, hi)
        return value
