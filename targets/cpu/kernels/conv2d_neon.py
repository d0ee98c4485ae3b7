"""The blocked fp32 direct conv of :mod:`.conv2d` for AArch64 NEON, hand-written TIR.

Same layouts, arguments, register tile (``params.reg_n`` output columns x ``params.reg_c``
channel blocks of 4) and packed kernel as :func:`.conv2d.conv2d_nchwc` (blocks of 4 channels in
and out), so the lowering swaps one for the other. The TE template, lowered for NEON, loaded each
input element as a scalar (one ``ldr s`` per element and column) and LLVM spilled accumulators;
here, per step ``(icc, kh, kw)`` of the reduction:

- one 16-byte load of each column's 4 input channels (``reg_n`` loads), one 16-byte load per
  (input channel, channel block) of the packed weights (contiguous: ``ldp`` pairs);
- ``fmla v.4s, w.4s, x.s[i]`` (lane-indexed: an ``llvm.fma`` of a lane splat) for each of the 4
  input channels ``i``, column and channel block: ``4 * reg_n * reg_c`` FMAs;
- the accumulators start at zero and stay in registers (a local array with constant indices);
  the tail (bias, residual, activation, in that order as in the TE template) runs per output
  vector and stores only
  the valid columns (the width, or the flattened plane with ``params.flat``, is rounded up to the
  tile as in the TE template);
- padding (including the rounding's extra columns / rows) is a copy into a zero-padded buffer, by
  rows, before the conv (none when nothing is padded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcopt.targets.cpu.kernels.epilogue import Epilogue
from mcopt.targets.cpu.kernels.params import ConvParams

#: the fewest registers left to the input columns and weights beside the accumulators
NEON_VREGS = 32


def neon_conv_applies(isa: str | None, params: ConvParams, dtype: str, plain_input: bool) -> bool:
    """Whether :func:`conv2d_nchwc_neon` runs a conv: NEON, fp32, blocks of 4 in and out, a
    blocked input."""
    return (
        isa == "neon"
        and dtype == "float32"
        and params.ic_bn == 4
        and params.oc_bn == 4
        and not plain_input
    )


def conv2d_nchwc_neon(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    strides: int | Sequence[int],
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
    params: ConvParams,
    epilogue: Epilogue | None = None,
    cores: int = 1,
) -> Any:
    """The PrimFunc ``(data (N, IC/4, H, W, 4), kernel (OC/oc_kbn, IC/4, KH, KW, 4, oc_kbn),
    [bias (OC/4, 4)], [residual], out (N, OC/4, OH, OW, 4))`` (fp32), as
    :func:`.conv2d.conv2d_nchwc` with the same ``params``."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from mcopt.targets.cpu.kernels.conv2d import _pads, _pair, conv_out_size
    from mcopt.targets.cpu.kernels.threads import min_parallel_work

    ep = epilogue or Epilogue()
    n, ic, h, w = (int(d) for d in data_shape)
    oc, ic2, kh_, kw_ = (int(d) for d in weight_shape)
    if params.ic_bn != 4 or params.oc_bn != 4 or ic % 4 or ic2 != ic:
        raise ValueError(f"the NEON conv needs blocks of 4 channels ({ic} -> {oc}, {params})")
    reg_n, reg_c = params.reg_n, params.reg_c
    oc_kbn = 4 * reg_c
    if oc % oc_kbn:
        raise ValueError(f"{oc} output channels do not divide into blocks of {oc_kbn}")
    sh, sw = _pair(strides)
    dh, dw = _pair(dilation)
    pt, pl, pb, pr = _pads(padding)
    oh = conv_out_size(h, kh_, sh, pt, pb, dh)
    ow = conv_out_size(w, kw_, sw, pl, pr, dw)
    flat = params.flat
    owp = ow if flat else -(-ow // reg_n) * reg_n
    qp = -(-(oh * ow) // reg_n) * reg_n
    need_w = (owp - 1) * sw + (kw_ - 1) * dw + 1
    need_h = ((qp - 1) // ow * sh + (kh_ - 1) * dh + 1) if flat else 0
    pr += max(0, need_w - (w + pl + pr))
    pb += max(0, need_h - (h + pt + pb))
    hp, wp = h + pt + pb, w + pl + pr
    icc, ctiles = ic // 4, oc // oc_kbn
    padded = any((pt, pl, pb, pr))
    tiles_per_task = qp // reg_n if flat else owp // reg_n
    tasks = n * ctiles * (1 if flat else oh)
    use_pool = cores > 1 and n * oc * ic * kh_ * kw_ * oh * ow >= min_parallel_work()

    def fma(a: Any, b: Any, c: Any) -> Any:
        return T.call_llvm_pure_intrin("float32x4", T.llvm_lookup_intrinsic_id("llvm.fma"), a, b, c)

    def splat(v: Any, i: int) -> Any:
        return tirx.Shuffle([v], [tirx.IntImm("int32", i)] * 4)

    zero4 = tirx.Broadcast(tirx.const(0.0, "float32"), 4)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            data = T.arg("data", T.buffer((n, icc, h, w, 4), "float32"))
            kern = T.arg("kernel", T.buffer((ctiles, icc, kh_, kw_, 4, oc_kbn), "float32"))
            bias = T.arg("bias", T.buffer((oc // 4, 4), "float32")) if ep.bias else None
            res = None
            if ep.residual:
                res = T.arg("residual", T.buffer((n, oc // 4, oh, ow, 4), "float32"))
            out = T.arg("out", T.buffer((n, oc // 4, oh, ow, 4), "float32"))
            T.func_attr({"tirx.noalias": True})
            loop = T.parallel if use_pool else T.serial
            if padded:
                dpad = T.alloc_buffer((n, icc, hp, wp, 4), "float32")
                with loop(0, n * icc * hp) as row:
                    b_ = T.bind(row // (icc * hp))
                    c_ = T.bind(row // hp % icc)
                    y = T.bind(row % hp)
                    with T.If(tirx.all(y >= pt, y < pt + h)):
                        with T.Then():
                            with T.serial(0, pl) as x:
                                T.buffer_store(dpad, zero4, [b_, c_, y, x, tirx.Ramp(0, 1, 4)])
                            with T.serial(0, w) as x:
                                v = data.vload([b_, c_, y - pt, x, 0], "float32x4")
                                T.buffer_store(dpad, v, [b_, c_, y, x + pl, tirx.Ramp(0, 1, 4)])
                            with T.serial(0, wp - pl - w) as x:
                                idx = [b_, c_, y, x + pl + w, tirx.Ramp(0, 1, 4)]
                                T.buffer_store(dpad, zero4, idx)
                        with T.Else():
                            with T.serial(0, wp) as x:
                                T.buffer_store(dpad, zero4, [b_, c_, y, x, tirx.Ramp(0, 1, 4)])
            else:
                dpad = data
            with loop(0, tasks) as task:
                if flat:
                    b_ = T.bind(task // ctiles)
                    ct = T.bind(task % ctiles)
                    row = None
                else:
                    b_ = T.bind(task // (ctiles * oh))
                    ct = T.bind(task // oh % ctiles)
                    row = T.bind(task % oh)
                acc = T.alloc_local((reg_n * reg_c * 4,), "float32")
                tmp = T.alloc_local((4,), "float32")

                def slot(j: int, ci: int) -> Any:
                    return tirx.Ramp((j * reg_c + ci) * 4, 1, 4)

                with T.serial(0, tiles_per_task) as t:
                    if flat:
                        qs = [T.bind(t * reg_n + j) for j in range(reg_n)]
                        ys = [T.bind(q // ow) for q in qs]
                        xs = [T.bind(q % ow) for q in qs]
                    else:
                        ys = [row] * reg_n
                        xs = [t * reg_n + j for j in range(reg_n)]
                    for ci in range(reg_c):
                        for j in range(reg_n):
                            T.buffer_store(acc, zero4, [slot(j, ci)])
                    with T.serial(0, icc) as k:
                        with T.serial(0, kh_) as r:
                            with T.serial(0, kw_) as s:
                                xv = [
                                    T.bind(
                                        dpad.vload(
                                            [b_, k, ys[j] * sh + r * dh, xs[j] * sw + s * dw, 0],
                                            "float32x4",
                                        )
                                    )  # fmt: skip
                                    for j in range(reg_n)
                                ]
                                for i in range(4):
                                    for ci in range(reg_c):
                                        wv = T.bind(
                                            kern.vload([ct, k, r, s, i, ci * 4], "float32x4")
                                        )
                                        for j in range(reg_n):
                                            cur = acc.vload([(j * reg_c + ci) * 4], "float32x4")
                                            new = fma(wv, splat(xv[j], i), cur)
                                            T.buffer_store(acc, new, [slot(j, ci)])

                    def store(j: int, ci: int) -> None:
                        c = ct * reg_c + ci
                        val = acc.vload([(j * reg_c + ci) * 4], "float32x4")
                        if ep.is_identity:
                            T.buffer_store(out, val, [b_, c, ys[j], xs[j], tirx.Ramp(0, 1, 4)])
                            return
                        T.buffer_store(tmp, val, [tirx.Ramp(0, 1, 4)])
                        with T.vectorized(0, 4) as e:
                            rv = res[b_, c, ys[j], xs[j], e] if res is not None else None
                            bv = bias[c, e] if bias is not None else None
                            T.buffer_store(
                                out, ep.apply_te(tmp[e], bv, rv, "float32"),
                                [b_, c, ys[j], xs[j], e],
                            )  # fmt: skip

                    for j in range(reg_n):
                        valid = (qs[j] < oh * ow) if flat else (xs[j] < ow)
                        exact = (oh * ow) % reg_n == 0 if flat else ow % reg_n == 0
                        if exact:
                            for ci in range(reg_c):
                                store(j, ci)
                            continue
                        with T.If(valid):
                            with T.Then():
                                for ci in range(reg_c):
                                    store(j, ci)
    return ib.get().with_attr("tirx.is_scheduled", True)


__all__ = ["conv2d_nchwc_neon", "neon_conv_applies"]
