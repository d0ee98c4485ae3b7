"""The recurrence of an LSTM as one kernel: every time step of every direction in one call.

Unrolled into Relax, a step is a recurrent product, a split, three sigmoids, two tanh and the state
update — ~10 VM calls and allocations per step, ~1,300 for ddddocr's CRNN (64 steps, two
directions), more time than the arithmetic. Here one PrimFunc holds the time loop, one parallel
task per direction (a bidirectional LSTM runs its two directions on two cores), and per step:

    g = proj[t] + R @ h_{t-1}                       (the 4H gates i, o, f, c; ONNX's order)
    c_t = sigmoid(g_f) * c_{t-1} + sigmoid(g_i) * tanh(g_c)
    h_t = sigmoid(g_o) * tanh(c_t)

``proj`` (the input projection of every step and both directions, biases included) is one packed
dense call before it. The recurrent weight is packed ``(D, 4H / (rv L), H, rv L)`` so the product
streams it in order, ``rv`` vectors of ``L`` gates accumulated in registers over ``k``; the gate
math is vector arithmetic (``sigmoid = 1 / (1 + exp(-v))``, ``tanh = 1 - 2 / (1 + exp(2v))`` with
the polynomial ``exp`` of :mod:`~mcopt.targets.fast_math`; no per-lane libm calls). Output: ``(S + 1,
D, B, H)``, rows ``0..S-1`` ONNX's ``Y``, row ``S`` the last cell state. Hochreiter & Schmidhuber,
"Long short-term memory", 1997; ONNX LSTM without peepholes (mcopt imports no other form).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.targets.fast_math import exp_lines

#: scratch rows per direction for the gate math (exp's intermediates and the gate values)
_SCRATCH = 10


def pick_rv(gates: int, lanes: int) -> int:
    """Vectors of ``lanes`` gates accumulated together (a divisor of ``gates / lanes``)."""
    nv = gates // lanes
    return next(rv for rv in (8, 4, 2, 1) if nv % rv == 0)


def pack_recurrent(r: np.ndarray, lanes: int) -> np.ndarray:
    """ONNX's ``R (D, 4H, H)`` as ``(D, 4H / (rv L), H, rv L)``: block ``jo`` row ``k`` holds
    ``R[d, jo * rv L : (jo + 1) rv L, k]``."""
    d, g, h = r.shape
    w = pick_rv(g, lanes) * lanes
    return np.ascontiguousarray(r.reshape(d, g // w, w, h).transpose(0, 1, 3, 2))  # any dtype


def supported(hidden: int, lanes: int) -> bool:
    return hidden % lanes == 0


def script(seq: int, batch: int, hidden: int, dirs: int, reverse: bool, has_h0: bool,
           has_c0: bool, lanes: int, int8: bool = False) -> str:  # fmt: skip
    """TVMScript source of the kernel (see the module docstring). ``reverse``: a one-direction
    LSTM that runs backwards (ONNX ``direction="reverse"``). ``int8``: the recurrent weight is
    int8 codes with one scale per gate row (``qlstm``): the codes are widened to float in the
    product (a quarter of the bytes streamed per step) and the row's scale applied to the sum."""
    g4 = 4 * hidden
    rv = pick_rv(g4, lanes)
    w = rv * lanes
    nb = g4 // w
    L: list[str] = []
    add = L.append
    add("# from tvm.script import tirx as T")
    add("@T.prim_func")
    args = [
        f'proj: T.Buffer(({seq * batch}, {dirs * g4}), "float32")',
        f'rp: T.Buffer(({dirs}, {nb}, {hidden}, {w}), "{"int8" if int8 else "float32"}")',
    ]
    if int8:
        args.append(f'rs: T.Buffer(({dirs}, {g4}), "float32")')
    if has_h0:
        args.append(f'h0: T.Buffer(({dirs}, {batch}, {hidden}), "float32")')
    if has_c0:
        args.append(f'c0: T.Buffer(({dirs}, {batch}, {hidden}), "float32")')
    args.append(f'out: T.Buffer(({seq + 1}, {dirs}, {batch}, {hidden}), "float32")')
    add(f"def main({', '.join(args)}):")
    add('    T.func_attr({"tirx.noalias": True})')
    add(f'    G = T.alloc_buffer(({dirs}, {batch}, {g4}), "float32")')
    add(f'    HS = T.alloc_buffer(({dirs}, {batch}, {hidden}), "float32")')
    add(f'    CS = T.alloc_buffer(({dirs}, {batch}, {hidden}), "float32")')
    add(f'    SC = T.alloc_buffer(({dirs}, {_SCRATCH}, {lanes}), "float32")')
    add(f"    for d in T.parallel({dirs}):")
    add(f"        for b, k in T.grid({batch}, {hidden}):")
    add(f"            HS[d, b, k] = {'h0[d, b, k]' if has_h0 else 'T.float32(0.0)'}")
    add(f"            CS[d, b, k] = {'c0[d, b, k]' if has_c0 else 'T.float32(0.0)'}")
    add(f"        for s in range({seq}):")
    if dirs == 2:
        t = f"(s + d * ({seq - 1} - 2 * s))"  # direction 1 runs backwards
    else:
        t = f"({seq - 1} - s)" if reverse else "s"
    add(f"            for b in range({batch}):")
    # the recurrent product, rv vectors of gates in registers over k
    add(f"                for jo in range({nb}):")
    add(f"                    for vi in T.unroll({rv}):")
    add(f"                        for l in T.vectorized({lanes}):")
    j = f"jo * {w} + vi * {lanes} + l"
    pj = f"proj[{t} * {batch} + b, d * {g4} + {j}]"
    add(f"                            G[d, b, {j}] = {'T.float32(0.0)' if int8 else pj}")
    add(f"                    for k in range({hidden}):")
    add(f"                        for vi in T.unroll({rv}):")
    add(f"                            for l in T.vectorized({lanes}):")
    wv = f"rp[d, jo, k, vi * {lanes} + l]"
    add(
        f"                                G[d, b, {j}] = G[d, b, {j}] + HS[d, b, k] * "
        + (f'T.Cast("float32", {wv})' if int8 else wv)
    )
    if int8:
        add(f"                    for vi in T.unroll({rv}):")
        add(f"                        for l in T.vectorized({lanes}):")
        add(f"                            G[d, b, {j}] = {pj} + G[d, b, {j}] * rs[d, {j}]")
    # the gates and the state update, vectorized over hidden units
    add(f"                for ko in range({hidden // lanes}):")
    add(f"                    for l in T.vectorized({lanes}):")
    ind = " " * 24
    k = f"ko * {lanes} + l"

    def s(i: int) -> str:
        return f"SC[d, {i}, l]"

    # sigmoid(v) = 1 / (1 + exp(-v)) into rows 3 (i), 4 (o), 5 (f); tanh(g_c) into row 6
    for row, gate in ((3, 0), (4, 1), (5, 2)):
        lines, e = exp_lines(f"T.float32(0.0) - G[d, b, {gate * hidden} + {k}]", s)
        L.extend(ind + x for x in lines)
        add(f"{ind}{s(row)} = T.float32(1.0) / (T.float32(1.0) + {e})")
    lines, e = exp_lines(f"G[d, b, {3 * hidden} + {k}] * T.float32(2.0)", s)
    L.extend(ind + x for x in lines)
    add(f"{ind}{s(6)} = T.float32(1.0) - T.float32(2.0) / (T.float32(1.0) + {e})")
    add(f"{ind}{s(7)} = {s(5)} * CS[d, b, {k}] + {s(3)} * {s(6)}")
    add(f"{ind}CS[d, b, {k}] = {s(7)}")
    lines, e = exp_lines(f"{s(7)} * T.float32(2.0)", s)
    L.extend(ind + x for x in lines)
    add(f"{ind}{s(8)} = {s(4)} * (T.float32(1.0) - T.float32(2.0) / (T.float32(1.0) + {e}))")
    add(f"{ind}HS[d, b, {k}] = {s(8)}")
    add(f"{ind}out[{t}, d, b, {k}] = {s(8)}")
    add(f"        for b, k in T.grid({batch}, {hidden}):")
    add(f"            out[{seq}, d, b, k] = CS[d, b, k]")
    return "\n".join(L) + "\n"


def lstm_sequence(seq: int, batch: int, hidden: int, dirs: int, reverse: bool, has_h0: bool,
                  has_c0: bool, lanes: int, int8: bool = False) -> Any:  # fmt: skip
    """The scheduled PrimFunc ``(proj (S B, D 4H), rp (packed R), [rs (D, 4H): int8 only], [h0 (D,
    B, H)], [c0], out (S + 1, D, B, H))``; ``rp`` from :func:`pack_recurrent`."""
    from mcopt.targets.cpu.kernels.tvmscript import parse

    func = parse(script(seq, batch, hidden, dirs, reverse, has_h0, has_c0, lanes, int8))
    return func.with_attr("tirx.is_scheduled", True)


def reference(proj: np.ndarray, r: np.ndarray, h0: np.ndarray | None, c0: np.ndarray | None,
              seq: int, batch: int, hidden: int, dirs: int, reverse: bool) -> np.ndarray:  # fmt: skip
    """The kernel's output in numpy (float64 gates; for tests): ``r`` is ONNX's ``(D, 4H, H)``."""
    out = np.zeros((seq + 1, dirs, batch, hidden))
    p = proj.reshape(seq, batch, dirs, 4 * hidden)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for d in range(dirs):
        h = np.zeros((batch, hidden)) if h0 is None else h0[d].astype(np.float64)
        c = np.zeros((batch, hidden)) if c0 is None else c0[d].astype(np.float64)
        back = d == 1 or reverse
        for t in range(seq - 1, -1, -1) if back else range(seq):
            g = p[t, :, d] + h @ r[d].T.astype(np.float64)
            i, o, f, cc = np.split(g, 4, axis=-1)
            c = sig(f) * c + sig(i) * np.tanh(cc)
            h = sig(o) * np.tanh(c)
            out[t, d] = h
        out[seq, d] = c
    return out


__all__ = ["lstm_sequence", "pack_recurrent", "pick_rv", "reference", "script", "supported"]
