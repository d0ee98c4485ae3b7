"""Decomposed activations back to their one-op forms.

Exporters at older opsets write hard-swish and hard-sigmoid out of elementwise ops: Paddle2ONNX (the
PaddleOCR / PP-LCNet models) as ``x * clip(x + 3, 0, 6) / 6``, PyTorch below opset 14 as
``x * HardSigmoid(x, alpha=1/6, beta=0.5)``, hand-written MobileNet-V3 code as
``x * relu6(x + 3) / 6``. Spelled out, they are four ops the blocked planner cannot fuse into the conv
before them, so each one ran on its own, in the plain layout (PP-OCR's direction classifier: 24
layout conversions, 200 of its 540 us). As ``hard_swish`` / ``hard_sigmoid`` they are the conv's
epilogue. With ``r = clip(x + 3, 0, 6)``:

- ``r / 6`` and ``r * (1/6)`` -> ``hard_sigmoid(x, alpha=1/6, beta=0.5)`` (= ``clip(x/6 + 1/2, 0, 1)``);
- ``x * r / 6``, ``(x * r) * (1/6)`` -> ``hard_swish(x)``;
- ``x * hard_sigmoid(x, alpha=1/6, beta=0.5)`` -> ``hard_swish(x)``;
- ``x * sigmoid(x)`` -> ``silu(x)`` (every exporter before ONNX's opset-24 ``Swish``: YOLOv5,
  YOLOX, EfficientNet — two kernels and a tensor round trip per layer otherwise);
- ``x * 0.5 * (1 + erf(x / sqrt 2))`` -> ``gelu(x)`` (every exporter before ONNX's opset-20
  ``Gelu``: Paddle2ONNX's PP-OCRv5/v6, PyTorch's ViT / BERT exports), the products in any order and
  ``x * (1/sqrt 2)`` for the division;
- ``maximum(x, c)`` / ``minimum(x, c)`` with a scalar ``c`` -> ``clip(x, min=c)`` /
  ``clip(x, max=c)`` (TensorFlow exports: openWakeWord's ``Max(LeakyRelu(x), -0.4)``)

(either operand order of every add and mul; the constants are scalars within 1e-6 of 3, 6, 1/6).
Hard-swish: Howard et al., "Searching for MobileNetV3", ICCV 2019; SiLU: Elfwing et al.,
"Sigmoid-weighted linear units for neural network function approximation in reinforcement
learning", 2018; GELU: Hendrycks & Gimpel, "Gaussian error linear units", 2016. Lossless up to
float rounding (the same functions; ``x/6 + 0.5`` instead of
``(x + 3) / 6``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mcopt.ir.core import Graph, Value
from mcopt.pass_manager import RewritePass, register_pass
from mcopt.rewrite import Match, P, RewriteRule, V, X

SIXTH = 1.0 / 6.0


def _scalar(v: Value) -> bool:
    c = v.const
    return c is not None and c.size == 1 and np.dtype(c.dtype).kind == "f"


def _is(v: Value, target: float) -> bool:
    return bool(np.isclose(float(np.asarray(v.const).reshape(-1)[0]), target, rtol=1e-6, atol=0))


def _both(op: str, a: P | V, b: P | V, name: str) -> Iterator[P]:
    """``op(a, b)`` and ``op(b, a)``."""
    yield P(op, a, b, name=name)
    yield P(op, b, a, name=name)


def _relu6_shifted() -> Iterator[P]:
    """``clip(x + 3, 0, 6)`` with the add either way round."""
    for add in _both("add", X, V("c3", const=True, where=_scalar), "add"):
        yield P("clip", add, name="clip")


def _bad_clip(m: Match) -> str | None:
    clip = m["clip"]
    if not _is(m["c3"], 3.0):
        return f"%{m['c3'].name} is not 3"
    if float(clip.attrs["min"]) != 0.0 or float(clip.attrs["max"]) != 6.0:
        return f"{clip.name!r} is not clip(0, 6)"
    if np.dtype(m["x"].dtype).kind != "f":
        return f"%{m['x'].name} is not a float tensor"
    return None


def _scale_ok(m: Match) -> str | None:
    """The division by 6 (``c6``) or the product with 1/6 (``k``)."""
    if "c6" in m.captures and not _is(m["c6"], 6.0):
        return f"%{m['c6'].name} is not 6"
    if "k" in m.captures and not _is(m["k"], SIXTH):
        return f"%{m['k'].name} is not 1/6"
    return None


class _Rule(RewriteRule):
    target = ""

    def __init__(self, pattern: P, name: str) -> None:
        self.pattern = pattern
        self.name = name

    def check(self, m: Match) -> str | None:
        return _bad_clip(m) or _scale_ok(m)

    def rewrite(self, m: Match, graph: Graph) -> Value:
        x = m["x"]
        if self.target == "hard_sigmoid":
            attrs = {"alpha": SIXTH, "beta": 0.5}
            return m.add("hard_sigmoid", [x], attrs, name=f"{m.root.name}_hsig").output
        return m.add("hard_swish", [x], name=f"{m.root.name}_hswish").output


class _HardSigmoid(_Rule):
    target = "hard_sigmoid"


class _HardSwish(_Rule):
    target = "hard_swish"


class _SwishOfHardSigmoid(RewriteRule):
    """``x * hard_sigmoid(x, 1/6, 1/2)`` -> ``hard_swish(x)`` (PyTorch's hardswish below opset 14)."""

    def __init__(self, pattern: P) -> None:
        self.pattern = pattern
        self.name = "hard-swish-of-hard-sigmoid"

    def check(self, m: Match) -> str | None:
        hs = m["hs"]
        if not (
            np.isclose(float(hs.attrs["alpha"]), SIXTH, rtol=1e-6)
            and float(hs.attrs["beta"]) == 0.5
        ):
            return f"{hs.name!r} is not hard_sigmoid(alpha=1/6, beta=0.5)"
        return None

    def rewrite(self, m: Match, graph: Graph) -> Value:
        return m.add("hard_swish", [m["x"]], name=f"{m.root.name}_hswish").output


class _Silu(RewriteRule):
    """``x * sigmoid(x)`` -> ``silu(x)``."""

    def __init__(self, pattern: P) -> None:
        self.pattern = pattern
        self.name = "silu (x * sigmoid(x))"

    def rewrite(self, m: Match, graph: Graph) -> Value:
        return m.add("silu", [m["x"]], name=f"{m.root.name}_silu").output


class _ClipOfScalar(RewriteRule):
    """``maximum(x, c)`` -> ``clip(x, min=c)``, ``minimum(x, c)`` -> ``clip(x, max=c)`` for a
    scalar ``c`` (TensorFlow exports write bounds as ``Max`` / ``Min``: openWakeWord's
    ``Max(LeakyRelu(x), -0.4)``); as a clip it is the conv's epilogue."""

    def __init__(self, pattern: P) -> None:
        self.pattern = pattern
        self.name = f"clip ({pattern.op} with a scalar)"

    def check(self, m: Match) -> str | None:
        if np.dtype(m["x"].dtype).kind != "f":
            return f"%{m['x'].name} is not a float tensor"
        if m.root.output.shape != m["x"].shape:
            return f"the constant broadcasts %{m['x'].name} to {m.root.output.shape}"
        return None

    def rewrite(self, m: Match, graph: Graph) -> Value:
        c = float(np.asarray(m["c"].const).reshape(()))
        bounds = {"min": c, "max": np.inf} if m.root.op == "maximum" else {"min": -np.inf, "max": c}
        return m.add("clip", [m["x"]], bounds, name=f"{m.root.name}_clip").output


SQRT2 = float(np.sqrt(2.0))


class _Gelu(RewriteRule):
    """``x / 2 * (1 + erf(x / sqrt 2))`` in any of its spellings -> ``gelu(x)``."""

    def __init__(self, pattern: P) -> None:
        self.pattern = pattern
        self.name = "gelu (x/2 * (1 + erf(x/sqrt 2)))"

    def check(self, m: Match) -> str | None:
        want = {"s2": SQRT2, "r2": 1.0 / SQRT2, "one": 1.0, "half": 0.5}
        for key, val in want.items():
            if key in m.captures and not _is(m[key], val):
                return f"%{m[key].name} is not {val:g}"
        if np.dtype(m["x"].dtype).kind != "f":
            return f"%{m['x'].name} is not a float tensor"
        return None

    def rewrite(self, m: Match, graph: Graph) -> Value:
        return m.add("gelu", [m["x"]], name=f"{m.root.name}_gelu").output


def _gelu_patterns() -> Iterator[P]:
    """Every order of the products and the sum, with ``x / sqrt 2`` or ``x * (1/sqrt 2)``."""
    sc = lambda name: V(name, const=True, where=_scalar)  # noqa: E731
    scaled = [P("div", X, sc("s2"), name="div"), *_both("mul", X, sc("r2"), "div")]
    for arg in scaled:
        for a in _both("add", P("erf", arg, name="erf"), sc("one"), "add"):
            for xa in _both("mul", X, a, "xa"):  # (x * a) * 1/2
                yield from _both("mul", xa, sc("half"), "mul")
            for ah in _both("mul", a, sc("half"), "ah"):  # x * (a * 1/2)
                yield from _both("mul", X, ah, "mul")
            for xh in _both("mul", X, sc("half"), "xh"):  # (x * 1/2) * a
                yield from _both("mul", xh, a, "mul")


def activation_rules() -> list[RewriteRule]:
    rules: list[RewriteRule] = []
    k = V("k", const=True, where=_scalar)
    c6 = V("c6", const=True, where=_scalar)
    for clip in _relu6_shifted():
        rules.append(_HardSigmoid(P("div", clip, c6, name="div"), "hard-sigmoid (r / 6)"))
        rules += [_HardSigmoid(p, "hard-sigmoid (r * 1/6)") for p in _both("mul", clip, k, "mul")]
        for prod in _both("mul", X, clip, "xr"):
            rules.append(_HardSwish(P("div", prod, c6, name="div"), "hard-swish (x * r / 6)"))
            rules += [
                _HardSwish(p, "hard-swish (x * r * 1/6)") for p in _both("mul", prod, k, "mul")
            ]
    hs = P("hard_sigmoid", X, name="hs")
    rules += [_SwishOfHardSigmoid(p) for p in _both("mul", X, hs, "mul")]
    rules += [_Silu(p) for p in _both("mul", X, P("sigmoid", X, name="sig"), "mul")]
    rules += [_Gelu(p) for p in _gelu_patterns()]
    for op in ("maximum", "minimum"):
        rules += [_ClipOfScalar(p) for p in _both(op, X, V("c", const=True, where=_scalar), op)]
    return rules


@register_pass
class CanonicalActivations(RewritePass):
    """Rewrite hard-swish / hard-sigmoid / SiLU / GELU written out of elementwise ops
    (Paddle2ONNX, PyTorch below opset 14, every SiLU export, GELU before opset 20) as the one op,
    which the CPU planner fuses into the conv before it (the module docstring lists the forms).
    Lossless up to float rounding."""

    name = "canonical-activations"
    lossless = True

    def rules(self) -> list[RewriteRule]:
        return activation_rules()


__all__ = ["CanonicalActivations", "activation_rules"]
