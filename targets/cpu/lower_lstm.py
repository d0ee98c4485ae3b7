"""The CPU build's LSTM (and int8-weight ``qlstm``): the input projection of every step and direction as one packed dense call,
then the whole recurrence as one kernel (:mod:`mcopt.targets.cpu.kernels.lstm`). Falls back to the
unrolled lowering (:func:`mcopt.targets.relax.lower.lower_lstm`) where the kernel does not apply:
weights computed at run time, or a hidden size that is not a multiple of the SIMD width."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax

from mcopt.ir.core import Node
from mcopt.ops.recurrent import dequantize_rows
from mcopt.targets.cpu import kernels as K
from mcopt.targets.cpu.kernels import lstm as LK
from mcopt.targets.cpu.kernels.relax_ops import call_kernel
from mcopt.targets.relax.lower import LOWERINGS, LowerContext, lower_lstm

R = relax.op


def _const(node: Node, i: int) -> np.ndarray | None:
    v = node.inputs[i] if len(node.inputs) > i else None
    return None if v is None else v.const


def emit_lstm(ctx: LowerContext, node: Node, args: list[Any], lanes: int, target: Any) -> list[Any]:
    """``[Y, Y_h, Y_c]`` of the ``lstm`` / ``qlstm`` ``node`` (``args``: its inputs' Relax
    expressions). A ``qlstm``'s input projection runs on its dequantized weights (a GEMM over
    every step: compute-bound), its recurrence on the int8 codes (a matrix-vector product per
    step: bound by the bytes of the weight)."""
    q = node.op == "qlstm"
    off = 2 if q else 0  # qlstm: the two scales after w and r
    w, r = _const(node, 1), _const(node, 2)
    rs = _const(node, 4) if q else None
    if q and w is not None and _const(node, 3) is not None:
        w = dequantize_rows(w, _const(node, 3))
    has_b = len(node.inputs) > 3 + off and node.inputs[3 + off] is not None
    b = _const(node, 3 + off)
    hid = int(node.attrs["hidden_size"])
    x = node.inputs[0]
    assert x is not None
    seq, batch, feat = x.shape

    def dense(x: Any, wt: np.ndarray, bias: np.ndarray | None, res: Any) -> Any:
        return K.emit_dense(
            ctx.bb, x, np.asarray(wt, np.float32), bias, residual=res, target=target
        )

    usable = w is not None and r is not None and (rs is not None or not q)
    if not usable or (has_b and b is None) or not LK.supported(hid, lanes):
        if q:
            return LOWERINGS["qlstm"](ctx, node, args)
        return lower_lstm(ctx, node, args, dense if w is not None and r is not None else None)
    dirs = w.shape[0]
    a = list(args) + [None] * (6 + off - len(args))
    h0, c0 = a[4 + off], a[5 + off]
    # one dense for every step and direction: columns d * 4H + j
    wt = np.asarray(w, np.float32).reshape(dirs * 4 * hid, feat)
    bias = None
    if b is not None:
        bias = (np.asarray(b, np.float32)[:, : 4 * hid] + b[:, 4 * hid :]).reshape(-1)
    flat = ctx.emit(R.reshape(a[0], (seq * batch, feat)))
    proj = ctx.emit(dense(flat, wt, bias, None))
    reverse = node.attrs["direction"] == "reverse"
    func = LK.lstm_sequence(
        seq, batch, hid, dirs, reverse, h0 is not None, c0 is not None, lanes, int8=q
    )
    packed = LK.pack_recurrent(np.asarray(r, np.int8 if q else np.float32), lanes)
    kargs = [proj, relax.const(packed)]
    if q:
        kargs.append(relax.const(np.ascontiguousarray(rs, np.float32)))
    kargs += [v for v in (h0, c0) if v is not None]
    out = ctx.emit(
        call_kernel(ctx.bb, func, "lstm_sequence", kargs, (seq + 1, dirs, batch, hid), "float32")
    )

    def rows(t0: int, t1: int, d0: int, d1: int) -> Any:
        return ctx.emit(R.strided_slice(out, axes=[0, 1], begin=[t0, d0], end=[t1, d1]))

    y = rows(0, seq, 0, dirs)
    lasts = [(0 if (d == 1 or reverse) else seq - 1) for d in range(dirs)]
    hs = [
        ctx.emit(R.reshape(rows(t, t + 1, d, d + 1), (1, batch, hid))) for d, t in enumerate(lasts)
    ]
    y_h = hs[0] if dirs == 1 else ctx.emit(R.concat(hs, axis=0))
    y_c = ctx.emit(R.reshape(rows(seq, seq + 1, 0, dirs), (dirs, batch, hid)))
    return [y, y_h, y_c]


__all__ = ["emit_lstm"]
