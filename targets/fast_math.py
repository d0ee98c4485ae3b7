"""Vectorizable ``exp``, ``sigmoid``, ``silu``, ``erf`` and ``gelu`` as TIR expressions (every
target's kernels).

LLVM lowers a vector ``exp`` (what ``tirx.exp`` / ``topi.sigmoid`` become) to one ``expf`` libm call
per lane: YOLOX's SiLU layers ran at ~1 ns per element on this host, half of the model's time. The
forms here are plain vector arithmetic: ``exp`` is the Cephes-style polynomial of TVM's
``topi.fast_exp`` (range reduction by ``ln 2``, a degree-7 polynomial, the exponent built in the
float's bits; within a few ULP of ``expf`` on [-88, 88], clamped outside), ``sigmoid(v) =
1 / (1 + exp(-v))`` and ``silu(v) = v * sigmoid(v)`` (Elfwing et al., "Sigmoid-weighted linear
units", 2018; YOLOv5 / YOLOX / EfficientNet's activation). ``erf`` is the rational approximation
TVM's ``topi.fast_erf`` and Eigen use (``x`` clamped to [-4, 4], odd degree-13 numerator over an
even degree-8 denominator; within 5e-7 of erf), ``gelu(v) = v / 2 * (1 + erf(v / sqrt 2))``
(Hendrycks & Gimpel, "Gaussian error linear units", 2016; PP-OCRv5/v6's and the transformers'
activation). float32 only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_EXP_COEFFS = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
               1.6666665459e-1, 5.0000001201e-1)  # fmt: skip
_EXP_MAX = 88.3762626647949


def _const(value: float, lanes: int, dtype: str = "float32") -> Any:
    from tvm import tirx

    k = tirx.const(value, dtype)
    return tirx.Broadcast(k, lanes) if lanes > 1 else k


def fast_exp(v: Any, lanes: int = 1) -> Any:
    """``exp(v)`` for a float32 expression of ``lanes`` lanes."""
    from tvm import tirx

    def c(value: float, dtype: str = "float32") -> Any:
        return _const(value, lanes, dtype)

    x = tirx.max(tirx.min(v, c(_EXP_MAX)), c(-_EXP_MAX))
    n = tirx.floor(x * c(1.44269504088896341) + c(0.5))
    r = x - n * c(0.693147180559945)
    p = c(_EXP_COEFFS[0])
    for k in _EXP_COEFFS[1:]:
        p = p * r + c(k)
    p = p * r * r + r + c(1.0)
    idt = "int32" if lanes == 1 else f"int32x{lanes}"
    fdt = "float32" if lanes == 1 else f"float32x{lanes}"
    bits = tirx.shift_left((n + c(127.0)).astype(idt), c(23, "int32"))
    return tirx.max(tirx.reinterpret(fdt, bits) * p, v)


def fast_sigmoid(v: Any, lanes: int = 1) -> Any:
    """``1 / (1 + exp(-v))``: 0 < y < 1 for every finite ``v`` (the exponent is clamped)."""
    one = _const(1.0, lanes)
    return one / (one + fast_exp(-v, lanes))


def fast_silu(v: Any, lanes: int = 1) -> Any:
    """``v * sigmoid(v)``."""
    return v * fast_sigmoid(v, lanes)


_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)  # fmt: skip
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)  # fmt: skip
SQRT1_2 = 0.7071067811865476


def fast_erf(v: Any, lanes: int = 1) -> Any:
    """``erf(v)`` for a float32 expression of ``lanes`` lanes."""
    from tvm import tirx

    def c(value: float) -> Any:
        return _const(value, lanes)

    x = tirx.max(tirx.min(v, c(4.0)), c(-4.0))
    x2 = x * x
    p = c(_ERF_P[0])
    for k in _ERF_P[1:]:
        p = p * x2 + c(k)
    q = c(_ERF_Q[0])
    for k in _ERF_Q[1:]:
        q = q * x2 + c(k)
    return x * p / q


def fast_gelu(v: Any, lanes: int = 1) -> Any:
    """``v / 2 * (1 + erf(v / sqrt 2))``."""
    return (
        v * _const(0.5, lanes) * (_const(1.0, lanes) + fast_erf(v * _const(SQRT1_2, lanes), lanes))
    )


def numpy_gelu(v: Any) -> Any:
    """:func:`fast_gelu` in numpy (float64 erf), for the kernels' numpy twins."""
    import numpy as np
    from scipy.special import erf

    return (0.5 * v * (1.0 + erf(np.asarray(v, np.float64) * SQRT1_2))).astype(np.asarray(v).dtype)


def gelu_lines(val: str, scratch: Callable[[int], str]) -> tuple[list[str], str]:
    """TVMScript statements computing ``gelu(val)`` through ``scratch(0..3)`` (as
    :func:`silu_lines`); the arithmetic of :func:`fast_gelu`."""
    f = lambda x: f"T.float32({float(x)!r})"  # noqa: E731
    v, x, x2, p = (scratch(i) for i in range(4))
    lines = [
        f"{v} = {val}",
        f"{x} = T.max(T.min({v} * {f(SQRT1_2)}, {f(4.0)}), {f(-4.0)})",
        f"{x2} = {x} * {x}",
    ]
    poly = f(_ERF_P[0])
    for k in _ERF_P[1:]:
        poly = f"({poly} * {x2} + {f(k)})"
    lines.append(f"{p} = {x} * {poly}")
    q = f(_ERF_Q[0])
    for k in _ERF_Q[1:]:
        q = f"({q} * {x2} + {f(k)})"
    return lines, f"{v} * {f(0.5)} * ({f(1.0)} + {p} / {q})"


def numpy_silu(v: Any) -> Any:
    """:func:`fast_silu`'s function in numpy (the same clamp of the exponent), for the kernels'
    numpy twins."""
    import numpy as np

    return v / (1.0 + np.exp(-np.clip(v, -_EXP_MAX, _EXP_MAX)))


def exp_lines(arg: str, scratch: Callable[[int], str]) -> tuple[list[str], str]:
    """TVMScript statements computing ``exp(arg)`` for text-generated kernels through
    ``scratch(0..2)`` (buffer elements of the vectorized lane, not lets: TVM's vectorizer evaluates
    a let-bound scalar once for all lanes): ``(lines, expr)``, ``expr`` the result. The arithmetic
    of :func:`fast_exp` without its final ``max`` with the argument."""
    f = lambda x: f"T.float32({float(x)!r})"  # noqa: E731
    x, n, r = (scratch(i) for i in range(3))
    lines = [
        f"{x} = T.max(T.min({arg}, {f(_EXP_MAX)}), {f(-_EXP_MAX)})",
        f"{n} = T.floor({x} * {f(1.44269504088896341)} + {f(0.5)})",
        f"{r} = {x} - {n} * {f(0.693147180559945)}",
    ]
    poly = f(_EXP_COEFFS[0])
    for k in _EXP_COEFFS[1:]:
        poly = f"({poly} * {r} + {f(k)})"
    lines.append(f"{x} = {poly} * {r} * {r} + {r} + {f(1.0)}")  # x is free again: p
    e = f'T.reinterpret("float32", T.shift_left(T.Cast("int32", {n} + {f(127.0)}), 23)) * {x}'
    return lines, e


def silu_lines(val: str, scratch: Callable[[int], str]) -> tuple[list[str], str]:
    """TVMScript statements computing ``silu(val)`` for text-generated kernels (Winograd's output
    transform): ``(lines, expr)``, the intermediates stored in ``scratch(0..3)`` so the value is
    evaluated once; ``expr`` is the result. The arithmetic of :func:`fast_silu`."""
    v = scratch(0)
    lines, e = exp_lines(f"T.float32(0.0) - {v}", lambda i: scratch(i + 1))
    return [f"{v} = {val}", *lines], f"{v} / (T.float32(1.0) + T.max({e}, T.float32(0.0) - {v}))"


__all__ = [
    "exp_lines", "fast_erf", "fast_exp", "fast_gelu", "fast_sigmoid", "fast_silu", "gelu_lines",
    "numpy_gelu", "numpy_silu", "silu_lines",
]  # fmt: skip
