"""Recurrent ops: ``lstm`` (ONNX's LSTM, time-major, default activations, no peepholes),
``qlstm``, the same with int8 weights (one scale per gate row), and ``gru`` (ONNX's GRU, see
:func:`gru_ref`).

With ``x (T, B, I)``, per direction ``d`` (``reverse`` runs t = T-1 .. 0; ``bidirectional`` is a
forward direction 0 and a reverse direction 1), gates in ONNX's ``i, o, f, c`` order::

    g = x[t] @ W[d].T + h @ R[d].T + Wb[d] + Rb[d]          # (B, 4H); B = [Wb | Rb], (D, 8H)
    i, o, f = sigmoid(g_i), sigmoid(g_o), sigmoid(g_f);  c~ = tanh(g_c)
    c = f * c + i * c~;  h = o * tanh(c);  y[t, d] = h

Outputs ``y (T, D, B, H)``, ``y_h (D, B, H)`` (the last state of each direction) and ``y_c``.
Hochreiter & Schmidhuber, "Long short-term memory", Neural Computation 1997; the CRNN text
recognizers (Shi et al., TPAMI 2017) that ship as ONNX (ddddocr) read their CNN features with one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.ir.types import TensorType
from mcopt.ops.elementwise import sigmoid
from mcopt.ops.schema import REQUIRED, Attrs, InTypes, OpSchema, register_op

DIRECTIONS = ("forward", "reverse", "bidirectional")


def _dims(t: InTypes, a: Attrs) -> tuple[int, int, int, int, int]:
    x = t[0]
    assert x is not None
    seq, batch, feat = (int(d) for d in x.shape)
    return seq, batch, feat, 2 if a["direction"] == "bidirectional" else 1, int(a["hidden_size"])


def _rnn_check(t: InTypes, a: Attrs, gates: int, states: tuple[str, ...]) -> str | None:
    """The checks LSTM (4 gates; h and c states) and GRU (3 gates; h) share."""
    if a["direction"] not in DIRECTIONS:
        return f"direction={a['direction']!r}; valid: {', '.join(DIRECTIONS)}"
    h = a["hidden_size"]
    if isinstance(h, bool) or not isinstance(h, int) or h <= 0:
        return f"hidden_size must be a positive int, got {h!r}"
    x = t[0]
    if x is None or x.rank != 3 or x.dtype != "float32":
        return f"x must be a float32 (T, B, I) tensor, got {x}"
    _, b, i, d, h = _dims(t, a)
    want = {1: (d, gates * h, i), 2: (d, gates * h, h), 3: (d, 2 * gates * h)}
    names = {1: "w", 2: "r", 3: "b"}
    for k, state in enumerate(states, 4):
        want[k], names[k] = (d, b, h), state
    for k, shape in want.items():
        v = t[k] if k < len(t) else None
        if v is None:
            if k <= 2:
                return f"{names[k]} is required"
            continue
        if tuple(int(s) for s in v.shape) != shape or v.dtype != "float32":
            return f"{names[k]} must be float32 {list(shape)}, got {v}"
    return None


def _lstm_check(t: InTypes, a: Attrs) -> str | None:
    return _rnn_check(t, a, 4, ("initial_h", "initial_c"))


def _lstm_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    seq, b, _, d, h = _dims(t, a)
    state = TensorType((d, b, h), "float32")
    return [TensorType((seq, d, b, h), "float32"), state, state]


def _lstm_macs(t: InTypes, out: list[TensorType], a: Attrs) -> int:
    seq, b, i, d, h = _dims(t, a)
    return seq * d * b * 4 * h * (i + h)


def lstm_ref(
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
    *,
    hidden_size: int,
    direction: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seq, batch, _ = x.shape
    dirs = 2 if direction == "bidirectional" else 1
    h_ = hidden_size
    y = np.zeros((seq, dirs, batch, h_), np.float32)
    y_h = np.zeros((dirs, batch, h_), np.float32)
    y_c = np.zeros((dirs, batch, h_), np.float32)
    for d in range(dirs):
        bias = np.zeros(4 * h_, np.float32) if b is None else b[d, : 4 * h_] + b[d, 4 * h_ :]
        h = np.zeros((batch, h_), np.float32) if initial_h is None else initial_h[d]
        c = np.zeros((batch, h_), np.float32) if initial_c is None else initial_c[d]
        steps = range(seq - 1, -1, -1) if direction == "reverse" or d == 1 else range(seq)
        for t in steps:
            g = (x[t] @ w[d].T + h @ r[d].T + bias).astype(np.float32)
            gi, go, gf, gc = np.split(g, 4, axis=-1)
            c = (sigmoid(gf) * c + sigmoid(gi) * np.tanh(gc)).astype(np.float32)
            h = (sigmoid(go) * np.tanh(c)).astype(np.float32)
            y[t, d] = h
        y_h[d], y_c[d] = h, c
    return y, y_h, y_c


register_op(
    OpSchema(
        name="lstm",
        inputs=("x", "w", "r", "b?", "initial_h?", "initial_c?"),
        attrs={"hidden_size": REQUIRED, "direction": "forward"},
        check=_lstm_check,
        infer=_lstm_infer,
        reference=lstm_ref,
        macs=_lstm_macs,
        doc="ONNX LSTM (layout 0, sigmoid/tanh/tanh, no peepholes): y (T, D, B, H), y_h, y_c.",
    )
)


# --- gru ---------------------------------------------------------------------------------------------
def _gru_check(t: InTypes, a: Attrs) -> str | None:
    if a["linear_before_reset"] not in (0, 1):
        return f"linear_before_reset must be 0 or 1, got {a['linear_before_reset']!r}"
    return _rnn_check(t, a, 3, ("initial_h",))


def _gru_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    seq, b, _, d, h = _dims(t, a)
    return [TensorType((seq, d, b, h), "float32"), TensorType((d, b, h), "float32")]


def _gru_macs(t: InTypes, out: list[TensorType], a: Attrs) -> int:
    seq, b, i, d, h = _dims(t, a)
    return seq * d * b * 3 * h * (i + h)


def gru_ref(
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    *,
    hidden_size: int,
    direction: str,
    linear_before_reset: int,
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX GRU (gates ``z, r, h``; Cho et al., "Learning phrase representations using RNN
    encoder-decoder", 2014)::

        z = sigmoid(x W_z + h R_z + Wb_z + Rb_z);  r = sigmoid(x W_r + h R_r + Wb_r + Rb_r)
        h~ = tanh(x W_h + (r * h) R_h + Rb_h + Wb_h)        # linear_before_reset = 0
        h~ = tanh(x W_h + r * (h R_h + Rb_h) + Wb_h)        # linear_before_reset = 1
        h = (1 - z) * h~ + z * h"""
    seq, batch, _ = x.shape
    dirs = 2 if direction == "bidirectional" else 1
    h_ = hidden_size
    y = np.zeros((seq, dirs, batch, h_), np.float32)
    y_h = np.zeros((dirs, batch, h_), np.float32)
    for d in range(dirs):
        wb, rb = (
            (np.zeros(3 * h_, np.float32),) * 2 if b is None else (b[d, : 3 * h_], b[d, 3 * h_ :])
        )
        h = np.zeros((batch, h_), np.float32) if initial_h is None else initial_h[d]
        steps = range(seq - 1, -1, -1) if direction == "reverse" or d == 1 else range(seq)
        for t in steps:
            gx = (x[t] @ w[d].T + wb).astype(np.float32)
            gh = (h @ r[d].T + rb).astype(np.float32)
            z = sigmoid(gx[:, :h_] + gh[:, :h_])
            rr = sigmoid(gx[:, h_ : 2 * h_] + gh[:, h_ : 2 * h_])
            if linear_before_reset:
                cand = np.tanh(gx[:, 2 * h_ :] + rr * gh[:, 2 * h_ :])
            else:
                rh = (rr * h) @ r[d][2 * h_ :].T + rb[2 * h_ :]
                cand = np.tanh(gx[:, 2 * h_ :] + rh)
            h = ((1 - z) * cand + z * h).astype(np.float32)
            y[t, d] = h
        y_h[d] = h
    return y, y_h


register_op(
    OpSchema(
        name="gru",
        inputs=("x", "w", "r", "b?", "initial_h?"),
        attrs={"hidden_size": REQUIRED, "direction": "forward", "linear_before_reset": 0},
        check=_gru_check,
        infer=_gru_infer,
        reference=gru_ref,
        macs=_gru_macs,
        doc="ONNX GRU (layout 0, sigmoid/tanh): y (T, D, B, H), y_h (D, B, H).",
    )
)


# --- qlstm: int8 weights ------------------------------------------------------------------------------
def _qlstm_float_types(t: InTypes) -> list[TensorType | None]:
    """``qlstm``'s input types as ``lstm``'s: the int8 weights as the float32 they stand for."""
    x, w, r = t[0], t[1], t[2]
    rest = list(t[5:])
    f = [None if v is None else TensorType(v.shape, "float32") for v in (w, r)]
    return [x, *f, *rest]


def _qlstm_check(t: InTypes, a: Attrs) -> str | None:
    w, r, ws, rs = t[1], t[2], t[3], t[4]
    for name, v in (("w", w), ("r", r)):
        if v is None or v.dtype != "int8":
            return f"{name} must be int8 codes, got {v}"
    for name, v, q in (("w_scale", ws, w), ("r_scale", rs, r)):
        assert q is not None
        if v is None or v.dtype != "float32" or tuple(v.shape) != tuple(q.shape[:2]):
            return f"{name} must be float32 {list(q.shape[:2])} (one scale per gate row), got {v}"
    return _lstm_check(_qlstm_float_types(t), a)


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``q * scale[..., None]`` in float32: the weights a ``qlstm`` computes with."""
    return (q.astype(np.float32) * scale[..., None].astype(np.float32)).astype(np.float32)


def qlstm_ref(
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    w_scale: np.ndarray,
    r_scale: np.ndarray,
    *rest: np.ndarray | None,
    **attrs: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`lstm_ref` of the dequantized weights (``rest``: b, initial_h, initial_c)."""
    return lstm_ref(x, dequantize_rows(w, w_scale), dequantize_rows(r, r_scale), *rest, **attrs)


register_op(
    OpSchema(
        name="qlstm",
        inputs=("x", "w", "r", "w_scale", "r_scale", "b?", "initial_h?", "initial_c?"),
        attrs={"hidden_size": REQUIRED, "direction": "forward"},
        check=_qlstm_check,
        infer=lambda t, a: _lstm_infer(_qlstm_float_types(t), a),
        reference=qlstm_ref,
        macs=lambda t, out, a: _lstm_macs(_qlstm_float_types(t), out, a),
        doc="lstm with int8 weights: W = w * w_scale[..., None], R = r * r_scale[..., None] (one "
        "symmetric scale per direction and gate row; quantize-int8's weight-only form), float "
        "gates and states.",
    )
)

__all__ = ["DIRECTIONS", "dequantize_rows", "lstm_ref", "qlstm_ref"]
