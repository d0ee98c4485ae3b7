"""ONNX ``LSTM`` -> ``lstm`` and ``GRU`` -> ``gru`` (see :mod:`mcopt.ops.recurrent` for what the
ops compute; GRU's ``linear_before_reset`` either way).

Imported: ``layout`` 0 (time-major) and 1 (batch-major: transposes around the op), the default
activations (sigmoid, tanh, tanh), every
direction, optional bias / initial states, ``sequence_lens`` absent or a constant equal to the
sequence length for every batch entry, peepholes ``P`` absent or all zero. Refused with a one-line
error naming the node and the attribute: other activations, ``clip``,
``input_forget=1``, shorter sequences, non-zero peepholes.
"""

from __future__ import annotations

import numpy as np

from mcopt.ir.core import Value
from mcopt.onnx_io.import_ops import handles
from mcopt.onnx_io.importer import NodeCtx

_DEFAULT_ACTS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
_SWAP = {"perm": (1, 0, 2)}  # (batch, seq | dirs, ...) <-> (seq | dirs, batch, ...)


def _common(c: NodeCtx) -> tuple[Value, str, bool, int]:
    """What LSTM and GRU share: the checks of the attributes mcopt does not import, the input
    made time-major, its direction, layout and hidden size."""
    x = c.x(0)
    direction = c.attr("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    dirs = 2 if direction == "bidirectional" else 1
    batch_major = int(c.attr("layout", 0)) == 1
    acts = [a.decode() if isinstance(a, bytes) else str(a) for a in c.attr("activations") or []]
    default = _DEFAULT_ACTS[c.op_type]
    if acts and [a.lower() for a in acts] != default * dirs:
        raise c.fail(f"activations {acts} are not imported; only the default {', '.join(default)}")
    if c.attr("clip") is not None:
        raise c.fail("clip is not imported (cell clipping)")
    if x.type.rank != 3:
        raise c.fail(f"input must be (seq, batch, features), got {list(x.shape)}")
    if batch_major:
        x = c.emit("transpose", [x], _SWAP)
    seq = int(x.shape[0])
    if c.inp(4) is not None:
        lens = c.need_const(4, "sequence_lens")
        if not np.all(lens == seq):
            raise c.fail(f"sequence_lens {lens.tolist()} shorter than the sequence ({seq})")
    hidden = c.attr("hidden_size")
    if hidden is None:
        hidden = int(c.x(2).shape[-1])
    return x, direction, batch_major, int(hidden)


def _finish(c: NodeCtx, op: str, inputs: list[Value | None], attrs: dict, n_out: int,
            batch_major: bool) -> None:  # fmt: skip
    while inputs[-1] is None:
        inputs.pop()
    outs = c.emit_multi(op, inputs, attrs, n_out=n_out)
    if batch_major:  # y (seq, dirs, batch, H) -> (batch, seq, dirs, H); states (batch, dirs, H)
        outs = [c.emit("transpose", [outs[0]], {"perm": (2, 0, 1, 3)}),
                *(c.emit("transpose", [s], _SWAP) for s in outs[1:])]  # fmt: skip
    for i, v in enumerate(outs):
        if i < len(c.node.output) and c.node.output[i]:
            c.set_out(i, v)


@handles("LSTM")
def lstm(c: NodeCtx) -> None:
    x, direction, batch_major, hidden = _common(c)
    if int(c.attr("input_forget", 0)) != 0:
        raise c.fail("input_forget=1 (coupled input and forget gates) is not imported")
    if c.inp(7) is not None and np.any(c.need_const(7, "P") != 0):
        raise c.fail("peephole weights P are not imported")
    states = [c.inp(5), c.inp(6)]
    if batch_major:
        states = [None if s is None else c.emit("transpose", [s], _SWAP) for s in states]
    attrs = {"hidden_size": hidden, "direction": direction}
    _finish(c, "lstm", [x, c.x(1), c.x(2), c.inp(3), *states], attrs, 3, batch_major)


@handles("GRU")
def gru(c: NodeCtx) -> None:
    x, direction, batch_major, hidden = _common(c)
    h0 = c.inp(5)
    if batch_major and h0 is not None:
        h0 = c.emit("transpose", [h0], _SWAP)
    attrs = {
        "hidden_size": hidden,
        "direction": direction,
        "linear_before_reset": int(c.attr("linear_before_reset", 0)),
    }
    _finish(c, "gru", [x, c.x(1), c.x(2), c.inp(3), h0], attrs, 2, batch_major)
