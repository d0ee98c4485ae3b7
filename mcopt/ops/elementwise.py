"""Elementwise ops: activations, clip/prelu, cast and broadcasting arithmetic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mcopt.ir.types import DTYPES, TensorType
from mcopt.ops._util import need_float
from mcopt.ops.schema import (
    REQUIRED,
    Attrs,
    InTypes,
    OpSchema,
    broadcast_shapes,
    register_op,
    same_as_input,
)

Check = Callable[[InTypes, Attrs], "str | None"]


def _float_only(t: InTypes, a: Attrs) -> str | None:
    return need_float(t[0])


_CW = frozenset({"channelwise"})
_Z = frozenset({"zero_preserving"})
_F = frozenset({"finite_preserving"})


def _unary(
    name: str,
    fn: Callable[..., np.ndarray],
    doc: str,
    attrs: dict[str, Any] | None = None,
    check: Check | None = None,
    traits: frozenset[str] = frozenset(),
) -> OpSchema:
    """Register a one-input elementwise op; the result keeps the input dtype."""

    def ref(x: np.ndarray, **kw: Any) -> np.ndarray:
        return np.asarray(fn(x, **kw)).astype(x.dtype, copy=False)

    ref.__name__ = f"{name}_ref"
    return register_op(
        OpSchema(
            name=name,
            inputs=("x",),
            attrs=attrs or {},
            check=check,
            infer=same_as_input,
            reference=ref,
            elementwise=True,
            doc=doc,
            traits=_CW | traits,
        )
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _clip(x: np.ndarray, *, min: float, max: float) -> np.ndarray:  # noqa: A002
    lo = None if min == -np.inf else min
    hi = None if max == np.inf else max
    if lo is None and hi is None:
        return x.copy()
    if not np.issubdtype(x.dtype, np.floating):  # integer bounds: round inward
        lo = None if lo is None else int(np.ceil(lo))
        hi = None if hi is None else int(np.floor(hi))
    return np.clip(x, lo, hi)


def _number(*keys: str) -> Check:
    def check(t: InTypes, a: Attrs) -> str | None:
        for k in keys:
            if isinstance(a[k], bool) or not isinstance(a[k], int | float):
                return f"attribute {k!r} must be a number, got {a[k]!r}"
        return None

    return check


def _dropout_check(t: InTypes, a: Attrs) -> str | None:
    r = a["ratio"]
    if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r < 1:
        return f"ratio must be in [0, 1), got {r!r}"
    return None


_unary("relu", lambda x: np.maximum(x, 0), "y = max(x, 0)", traits=_Z | _F)
_unary("sigmoid", sigmoid, "y = 1 / (1 + exp(-x))", check=_float_only, traits=_F)
_unary("tanh", np.tanh, "y = tanh(x)", check=_float_only, traits=_Z | _F)
_unary(
    "hard_swish",
    lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "y = x * max(0, min(1, x/6 + 0.5)) (ONNX HardSwish)",
    check=_float_only,
    traits=_Z | _F,
)
_unary(
    "silu",
    lambda x: x * sigmoid(x),
    "y = x * sigmoid(x) (SiLU / swish: YOLOv5, YOLOX, EfficientNet; ONNX Swish with alpha 1)",
    check=_float_only,
    traits=_Z | _F,
)
_unary("identity", lambda x: x.copy(), "y = x", traits=_Z | _F | {"view"})
_unary("exp", np.exp, "y = exp(x)", check=_float_only)
_unary("sqrt", np.sqrt, "y = sqrt(x)", check=_float_only, traits=_Z)
_unary("neg", np.negative, "y = -x", traits=_Z | _F)


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    """``x`` where positive, else ``alpha * (exp(x) - 1)`` (Elu; Selu scales it)."""
    return np.where(x > 0, x, np.asarray(alpha, x.dtype) * np.expm1(np.minimum(x, 0)))


_unary("abs", np.abs, "y = |x|", traits=_Z | _F)
_unary("sign", np.sign, "y = -1, 0 or 1 as x is negative, zero or positive (ONNX Sign)",
       traits=_Z | _F)  # fmt: skip
_unary("erf", _erf, "y = erf(x) (GELU's exact form)", check=_float_only, traits=_Z | _F)
_unary(
    "gelu",
    lambda x: 0.5 * x * (1.0 + _erf(x.astype(np.float64) / np.sqrt(2.0))),
    "y = x / 2 * (1 + erf(x / sqrt 2)) (GELU, exact form: PP-OCRv5/v6, ViT, BERT; ONNX Gelu)",
    check=_float_only,
    traits=_Z | _F,
)
_unary("log", np.log, "y = ln(x)", check=_float_only)
_unary("reciprocal", np.reciprocal, "y = 1 / x", check=_float_only)
_unary("floor", np.floor, "y = floor(x)", check=_float_only, traits=_Z | _F)
_unary("ceil", np.ceil, "y = ceil(x)", check=_float_only, traits=_Z | _F)
_unary("softplus", lambda x: np.logaddexp(0, x), "y = ln(1 + exp(x))", check=_float_only, traits=_F)
_unary("softsign", lambda x: x / (1 + np.abs(x)), "y = x / (1 + |x|)", check=_float_only,
       traits=_Z | _F)  # fmt: skip
_unary(
    "elu",
    lambda x, alpha: _elu(x, alpha),
    "y = x if x > 0 else alpha * (exp(x) - 1)",
    attrs={"alpha": 1.0},
    check=lambda t, a: _number("alpha")(t, a) or need_float(t[0]),
    traits=_Z | _F,
)
_unary(
    "selu",
    lambda x, alpha, gamma: np.asarray(gamma, x.dtype) * _elu(x, alpha),
    "y = gamma * (x if x > 0 else alpha * (exp(x) - 1))",
    attrs={"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
    check=lambda t, a: _number("alpha", "gamma")(t, a) or need_float(t[0]),
    traits=_Z | _F,
)
_unary(
    "dropout",
    lambda x, ratio: x.copy(),
    "inference dropout: y = x (removed by cleanup)",
    attrs={"ratio": 0.5},
    check=_dropout_check,
    traits=_Z | _F | {"view"},
)
_unary(
    "clip",
    _clip,
    "y = min(max(x, min), max); relu6 = clip(0, 6)",
    attrs={"min": -np.inf, "max": np.inf},
    check=_number("min", "max"),
    traits=_F,
)
_unary(
    "leaky_relu",
    lambda x, alpha: np.where(x >= 0, x, x * np.asarray(alpha, x.dtype)),
    "y = x if x >= 0 else alpha * x",
    attrs={"alpha": 0.01},
    check=lambda t, a: _number("alpha")(t, a) or need_float(t[0]),
    traits=_Z | _F,
)
_unary(
    "hard_sigmoid",
    lambda x, alpha, beta: np.clip(alpha * x + beta, 0, 1),
    "y = max(0, min(1, alpha * x + beta))",
    attrs={"alpha": 0.2, "beta": 0.5},
    check=lambda t, a: _number("alpha", "beta")(t, a) or need_float(t[0]),
    traits=_F,
)


# --- cast -----------------------------------------------------------------------------------------
def _cast_check(t: InTypes, a: Attrs) -> str | None:
    if a["to"] not in DTYPES:
        return f"cannot cast to {a['to']!r}; dtypes: {sorted(DTYPES)}"
    return None


register_op(
    OpSchema(
        name="cast",
        inputs=("x",),
        attrs={"to": REQUIRED},
        check=_cast_check,
        infer=lambda t, a: [TensorType(t[0].shape, a["to"])],  # type: ignore[union-attr]
        reference=lambda x, to: x.astype(to),
        elementwise=True,
        traits=_CW | _Z,
        doc="y = x converted to dtype `to` (a numpy dtype name; float -> int truncates).",
    )
)


# --- binary ---------------------------------------------------------------------------------------
def _binary_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x, y = t[0], t[1]
    assert x is not None and y is not None
    return [TensorType(broadcast_shapes(x.shape, y.shape), x.dtype)]


def _binary_check(t: InTypes, a: Attrs) -> str | None:
    x, y = t[0], t[1]
    assert x is not None and y is not None
    if x.dtype != y.dtype:
        return f"input dtypes differ: {x} and {y}"
    try:
        broadcast_shapes(x.shape, y.shape)
    except ValueError as e:
        return str(e)
    return None


def _binary(
    name: str,
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    doc: str,
    traits: frozenset[str] = frozenset(),
) -> OpSchema:
    def ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(fn(a, b)).astype(a.dtype, copy=False)

    ref.__name__ = f"{name}_ref"
    return register_op(
        OpSchema(
            name=name,
            inputs=("a", "b"),
            check=_binary_check,
            infer=_binary_infer,
            reference=ref,
            elementwise=True,
            doc=doc,
            traits=traits,
        )
    )


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating):
        return np.divide(a, b)
    q = np.floor_divide(a, b)  # integers: ONNX truncates toward zero, numpy floors
    return q + ((q < 0) & (q * b != a))


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating):
        return np.power(a, b)
    return np.power(a.astype(np.float64), b).astype(a.dtype)


_binary("add", np.add, "y = a + b (numpy broadcasting)", _F | {"commutative"})
_binary("sub", np.subtract, "y = a - b (numpy broadcasting)", _F)
_binary("mul", np.multiply, "y = a * b (numpy broadcasting)", _F | {"commutative"})
_binary("div", _div, "y = a / b (numpy broadcasting; integers truncate toward zero)")
_binary("pow", _pow, "y = a ** b (numpy broadcasting)")
_binary("maximum", np.maximum, "y = max(a, b) (numpy broadcasting; ONNX Max)", _F | {"commutative"})
_binary("minimum", np.minimum, "y = min(a, b) (numpy broadcasting; ONNX Min)", _F | {"commutative"})


# --- comparisons and boolean logic ----------------------------------------------------------------
def _bool_op(
    name: str,
    fn: Callable[..., np.ndarray],
    doc: str,
    check: Check = _binary_check,
    inputs: tuple[str, ...] = ("a", "b"),
) -> None:
    """Register an elementwise op with a bool result (broadcasting its two inputs, or of one)."""

    def ref(*xs: np.ndarray) -> np.ndarray:
        return np.asarray(fn(*xs), dtype=bool)

    def infer(t: InTypes, a: Attrs) -> list[TensorType]:
        shape = _binary_infer(t, a)[0].shape if len(t) == 2 else t[0].shape  # type: ignore[union-attr]
        return [TensorType(shape, "bool")]

    ref.__name__ = f"{name}_ref"
    register_op(
        OpSchema(
            name=name, inputs=inputs, check=check, infer=infer, reference=ref, elementwise=True,
            doc=doc,
        )
    )  # fmt: skip


_bool_op("equal", np.equal, "y = (a == b), bool (numpy broadcasting; ONNX Equal)")
_bool_op("less", np.less, "y = (a < b), bool (numpy broadcasting; ONNX Less)")
_bool_op("greater", np.greater, "y = (a > b), bool (numpy broadcasting; ONNX Greater)")
_bool_op("less_equal", np.less_equal, "y = (a <= b), bool (numpy broadcasting; ONNX LessOrEqual)")
_bool_op(
    "greater_equal",
    np.greater_equal,
    "y = (a >= b), bool (numpy broadcasting; ONNX GreaterOrEqual)",
)


def _logic_check(t: InTypes, a: Attrs) -> str | None:
    for x in t:
        assert x is not None
        if x.dtype != "bool":
            return f"inputs must be bool, got {x}"
    return None if len(t) == 1 else _binary_check(t, a)


_bool_op("logical_and", np.logical_and, "y = a and b, bool (numpy broadcasting; ONNX And)",
         _logic_check)  # fmt: skip
_bool_op("logical_or", np.logical_or, "y = a or b, bool (numpy broadcasting; ONNX Or)",
         _logic_check)  # fmt: skip
_bool_op("logical_xor", np.logical_xor, "y = a xor b, bool (numpy broadcasting; ONNX Xor)",
         _logic_check)  # fmt: skip
_bool_op("logical_not", np.logical_not, "y = not x, bool (ONNX Not)", _logic_check, ("x",))


def _where_check(t: InTypes, a: Attrs) -> str | None:
    c, x, y = t[0], t[1], t[2]
    assert c is not None and x is not None and y is not None
    if c.dtype != "bool":
        return f"the condition must be bool, got {c}"
    if x.dtype != y.dtype:
        return f"input dtypes differ: {x} and {y}"
    try:
        broadcast_shapes(broadcast_shapes(c.shape, x.shape), y.shape)
    except ValueError as e:
        return str(e)
    return None


def _where_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    c, x, y = t[0], t[1], t[2]
    assert c is not None and x is not None and y is not None
    return [TensorType(broadcast_shapes(broadcast_shapes(c.shape, x.shape), y.shape), x.dtype)]


register_op(
    OpSchema(
        name="where",
        inputs=("cond", "a", "b"),
        check=_where_check,
        infer=_where_infer,
        reference=lambda cond, a, b: np.where(cond, a, b).astype(a.dtype, copy=False),
        elementwise=True,
        doc="y = a where cond else b (numpy broadcasting of all three; ONNX Where; an If whose "
        "condition is computed at run time is imported as both branches and a where)",
    )
)


# --- prelu ----------------------------------------------------------------------------------------
def _prelu_check(t: InTypes, a: Attrs) -> str | None:
    x, s = t[0], t[1]
    assert x is not None and s is not None
    if x.dtype != s.dtype:
        return f"input dtypes differ: {x} and slope {s}"
    try:
        out = broadcast_shapes(x.shape, s.shape)
    except ValueError as e:
        return str(e)
    if out != x.shape:
        return f"slope {s} must broadcast to the input shape {x.shape}"
    return need_float(x)


register_op(
    OpSchema(
        name="prelu",
        inputs=("x", "slope"),
        check=_prelu_check,
        infer=same_as_input,
        reference=lambda x, slope: np.where(x >= 0, x, x * slope).astype(x.dtype, copy=False),
        elementwise=True,
        traits=_CW | _Z | _F,
        doc="y = x if x >= 0 else slope * x (slope broadcasts against x; ONNX PRelu)",
    )
)
