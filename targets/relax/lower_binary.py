"""Lowering of ``binary_conv2d`` / ``binary_dense`` (XNOR-Net) to TVM: XNOR-popcount kernels.

Binary input (``binary_input=1``), the XNOR path:

1. *pack* (own scheduled PrimFunc): ``x`` is binarized (``x >= 0`` -> bit 1) and packed 32 channels
   to a uint32 word, NHWC-major: ``xb (N, H + pads, W + pads, ceil(C/32))``; spatial padding and
   the channel tail are 0 bits;
2. *popcount* (own scheduled PrimFunc): ``pc[n, h, w, o] = sum_{i, j, cw} popcount(xb[n, h s + i d,
   w s + j d, cw] XOR wb[i, j, cw, o])`` with the weight re-packed at compile time to
   ``(kh, kw, ceil(C/32), O)`` so that a vector of output channels is one contiguous load (the
   vectorized axis), a register tile of output columns shares it; dense: ``(ceil(I/32), O)``;
3. Relax epilogue (fused by FuseOps): ``dot = K - 2 pc + corr`` (int32, exact), where ``corr``
   (a compile-time constant, non-zero only at the border) gives back what padding taps, read as
   -1, subtracted: ``corr = conv(P, B)`` with ``P`` = 1 on the padding; then
   ``float32(dot) * alpha * beta + b`` in the reference's order; beta (the K map) is
   ``avg_pool2d(mean_c |x|)`` with ``count_include_pad``.

Binary weights only (``binary_input=0``, BWN): the weight ``alpha * B`` is unpacked at compile time
and the node is lowered by the float ``conv2d`` / ``dense`` lowering (whatever kernel that uses):
with a float input there is nothing for popcount to do, and a bitserial kernel would first have to
quantize the activations to several bit planes (see benchmarks/bench_compress.py for the numbers).

TOPI's ``binarize_pack`` / ``binary_dense`` pack MSB-first and need multiples of 32; the kernels here
pack LSB-first like :func:`mcopt.ops.binary.pack_bits` and take any channel count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, s_tir, te

from mcopt.ir.core import Node, Value
from mcopt.ir.types import TensorType
from mcopt.ops.binary import unpack_weight, words_for
from mcopt.ops.nn import conv2d_ref, conv_out_dim
from mcopt.targets.cpu.kernels.threads import parallel
from mcopt.targets.relax.lower import LOWERINGS, LowerContext, LowerResult, register_lowering

R = relax.op


from mcopt.targets.cpu.kernels.relax_ops import finalize_kernel  # noqa: E402


def _call(
    ctx: LowerContext, func: Any, name: str, args: list[Any], shape: tuple[int, ...], dtype: str
) -> Any:
    from mcopt.targets.cpu.kernels.relax_ops import call_kernel

    return call_kernel(ctx.bb, func, name, args, shape, dtype)


def _lanes() -> int:
    """uint32 lanes of the current target's widest vector (AVX-512: 16, AVX2: 8, else 4)."""
    t = tvm.target.Target.current(allow_none=True)
    try:
        from tvm.target.codegen import target_has_features

        from mcopt.targets.cpu.kernels.target_info import host_target

        if t is None:
            t = host_target()
        if target_has_features("avx512f", t):
            return 16
        if target_has_features("avx2", t):
            return 8
    except Exception:
        pass
    return 4


def _divisor(n: int, cands: tuple[int, ...]) -> int:
    return next((c for c in cands if n % c == 0), 1)


# --- kernels ----------------------------------------------------------------------------------------
def word_dtype(k: int) -> str:
    """uint64 words when the packed axis is a multiple of 64 (fewer, wider popcounts: about 1.2-1.5x
    faster here), else uint32."""
    return "uint64" if k % 64 == 0 else "uint32"


def _pack_word(get: Any, cw: Any, c: int, dtype: str = "uint32") -> Any:
    """OR of the 32 sign bits of channels ``cw*32 .. cw*32+31`` (LSB first), channel tail 0."""
    nb = 64 if dtype == "uint64" else 32
    word = tvm.tirx.const(0, dtype)
    for b in range(nb):
        ch = cw * nb + b
        bit = tvm.tirx.Select(
            tvm.tirx.all(ch < c, get(ch) >= tvm.tirx.const(0, "float32")),
            tvm.tirx.const(1 << b, dtype),
            tvm.tirx.const(0, dtype),
        )
        word = word | bit
    return word


def pack_nchw_func(
    shape: tuple[int, int, int, int],
    pads: tuple[int, int, int, int],
    kmap: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None,
) -> Any:
    """PrimFunc ``x (N, C, H, W) f32 -> xb (N, H + pt + pb, W + pl + pr, ceil(C/32)) uint32``; with
    ``kmap = (kernel, strides, dilations)`` also the K map ``beta (N, Ho, Wo) = box(A) / (kh kw)``,
    ``A = mean_c |x|`` zero-padded (XNOR-Net sec. 3.2)."""
    n, c, h, w = shape
    pt, pl, pb, pr = pads
    dt = word_dtype(c)
    hp, wp, cw = h + pt + pb, w + pl + pr, -(-c // (64 if dt == "uint64" else 32))
    x = te.placeholder((n, c, h, w), "float32", name="x")

    def inside(y: Any, z: Any) -> Any:
        return tvm.tirx.all(y >= pt, y < h + pt, z >= pl, z < w + pl)

    def f(b: Any, y: Any, z: Any, k: Any) -> Any:
        word = _pack_word(lambda ch: x[b, tvm.tirx.min(ch, c - 1), y - pt, z - pl], k, c, dt)
        return tvm.tirx.Select(inside(y, z), word, tvm.tirx.const(0, dt))

    xb = te.compute((n, hp, wp, cw), f, name="xb")
    outs = [xb]
    if kmap is not None:
        (kh, kw), (sh, sw), (dh, dw) = kmap
        ho = conv_out_dim(h, kh, sh, pt, pb, dh)
        wo = conv_out_dim(w, kw, sw, pl, pr, dw)
        rc = te.reduce_axis((0, c), "c")
        asum = te.compute(
            (n, h, w), lambda b, y, z: te.sum(te.abs(x[b, rc, y, z]), axis=rc), name="asum"
        )
        amean = te.compute(
            (n, hp, wp),
            lambda b, y, z: tvm.tirx.Select(
                inside(y, z),
                asum[b, y - pt, z - pl] / tvm.tirx.const(c, "float32"),
                tvm.tirx.const(0, "float32"),
            ),
            name="amean",
        )
        bi, bj = te.reduce_axis((0, kh), "bi"), te.reduce_axis((0, kw), "bj")
        bsum = te.compute(
            (n, ho, wo),
            lambda b, y, z: te.sum(amean[b, y * sh + bi * dh, z * sw + bj * dw], axis=[bi, bj]),
            name="bsum",
        )
        outs.append(
            te.compute(
                (n, ho, wo),
                lambda b, y, z: bsum[b, y, z] / tvm.tirx.const(kh * kw, "float32"),
                name="beta",
            )
        )
    sch = s_tir.Schedule(te.create_prim_func([x, *outs]))
    ln, lh, _, _ = sch.get_loops(sch.get_sblock("xb"))
    parallel(sch, sch.fuse(ln, lh))
    if kmap is not None:
        lanes = _lanes()
        sb = sch.get_sblock("asum")
        bn_, by, bz, bc = sch.get_loops(sb)
        vec = _divisor(w, (lanes, lanes // 2, 2))
        zo, zi = sch.split(bz, [None, vec])
        sch.reorder(bn_, by, zo, bc, zi)
        parallel(sch, sch.fuse(bn_, by))
        if vec > 1:
            sch.vectorize(zi)
        sch.decompose_reduction(sb, bc)
        for name in ("amean", "bsum", "beta"):
            parallel(sch, sch.fuse(*sch.get_loops(sch.get_sblock(name))[:2]))
    return sch.mod["main"]


def pack_rows_func(m: int, k: int, absmean: bool = False) -> Any:
    """PrimFunc ``x (M, K) f32 -> xb (M, ceil(K/32)) uint32`` (and, with ``absmean``, the row
    means of ``|x|``, ``(M,)``: beta of a binary dense layer)."""
    dt = word_dtype(k)
    x = te.placeholder((m, k), "float32", name="x")
    xb = te.compute(
        (m, -(-k // (64 if dt == "uint64" else 32))),
        lambda i, cw: _pack_word(lambda ch: x[i, tvm.tirx.min(ch, k - 1)], cw, k, dt),
        name="xb",
    )
    outs = [xb]
    if absmean:
        rk = te.reduce_axis((0, k), "k")
        asum = te.compute((m,), lambda i: te.sum(te.abs(x[i, rk]), axis=rk), name="asum")
        outs.append(
            te.compute((m,), lambda i: asum[i] / tvm.tirx.const(k, "float32"), name="amean")
        )
    sch = s_tir.Schedule(te.create_prim_func([x, *outs]))
    blk = sch.get_sblock("xb")
    li, lc = sch.get_loops(blk)
    parallel(sch, sch.fuse(li, lc))
    return sch.mod["main"]


def xnor_dense_epilogue_func(m: int, o: int, ktot: int, *, bias: bool, beta: str) -> Any:
    """PrimFunc ``pc (M, O) int32, alpha (O,) [, beta (M,) | (1,)] [, b (O,)] -> y (M, O) f32``,
    ``y = float32(K - 2 pc) * alpha * beta + b``."""
    pc = te.placeholder((m, o), "int32", name="pc")
    al = te.placeholder((o,), "float32", name="alpha")
    args = [pc, al]
    bt = None
    if beta in ("position", "tensor"):
        bt = te.placeholder((m if beta == "position" else 1,), "float32", name="beta")
        args.append(bt)
    bb = te.placeholder((o,), "float32", name="bias") if bias else None
    if bb is not None:
        args.append(bb)

    def f(i: Any, j: Any) -> Any:
        v = (tvm.tirx.const(ktot, "int32") - pc[i, j] * 2).astype("float32") * al[j]
        if bt is not None:
            v = v * bt[i if beta == "position" else 0]
        if bb is not None:
            v = v + bb[j]
        return v

    y = te.compute((m, o), f, name="y")
    sch = s_tir.Schedule(te.create_prim_func([*args, y]))
    li, lj = sch.get_loops(sch.get_sblock("y"))
    lanes = _lanes()
    vec = _divisor(o, (lanes, 4, 2))
    jo, ji = sch.split(lj, [None, vec])
    parallel(sch, sch.fuse(li, jo))
    if vec > 1:
        sch.vectorize(ji)
    return sch.mod["main"]


def xnor_conv_func(
    n: int,
    packed_hw: tuple[int, int],
    cw: int,
    o: int,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    out_hw: tuple[int, int],
    *,
    ktot: int = 0,
    corr: bool = False,
    bias: bool = False,
    beta: str = "none",
    raw: bool = False,
    dtype: str = "uint32",
) -> Any:
    """The XNOR conv kernel with its epilogue: ``(xb (N, Hp, Wp, Cw) u32, wb (kh, kw, Cw, O) u32
    [, corr (Ho, Wo, O) i32], alpha (O,) [, beta (N, Ho, Wo) | (1,)] [, b (O,)]) -> y (N, O, Ho,
    Wo) f32`` with ``pc = sum_{i,j,cw} popcount(xb[n, h s + i d, w s + j d, cw] ^ wb[i, j, cw, o])``,
    ``y = float32(K - 2 pc + corr) * alpha * beta + b``. ``raw=True``: only ``pc (N, Ho, Wo, O) int32`` (for tests).

    Schedule: ``parallel(n, h)`` / ``w_outer`` / ``o_outer`` / ``i, j, cw`` / ``w_inner`` (register
    tile, unrolled) / ``o_inner`` (vectorized: a contiguous weight load shared by the tile); the
    epilogue writes each finished tile straight into NCHW."""
    hp, wp = packed_hw
    kh, kw = kernel
    (sh, sw), (dh, dw) = strides, dilations
    ho, wo = out_hw
    xb = te.placeholder((n, hp, wp, cw), dtype, name="xb")
    wb = te.placeholder((kh, kw, cw, o), dtype, name="wb")
    ri = te.reduce_axis((0, kh), "i")
    rj = te.reduce_axis((0, kw), "j")
    rc = te.reduce_axis((0, cw), "c")
    pc = te.compute(
        (n, ho, wo, o),
        lambda b, y, z, oc: te.sum(
            tvm.tirx.popcount(
                xb[b, y * sh + ri * dh, z * sw + rj * dw, rc] ^ wb[ri, rj, rc, oc]
            ).astype("int32"),
            axis=[ri, rj, rc],
        ),
        name="pc",
    )
    args = [xb, wb]
    out = pc
    if not raw:
        cr = te.placeholder((ho, wo, o), "int32", name="corr") if corr else None
        al = te.placeholder((o,), "float32", name="alpha")
        args += [t for t in (cr, al) if t is not None]
        bmap = bt = None
        if beta == "position":
            bmap = te.placeholder((n, ho, wo), "float32", name="beta")
            args.append(bmap)
        elif beta == "tensor":
            bt = te.placeholder((1,), "float32", name="beta_t")
            args.append(bt)
        bb = te.placeholder((o,), "float32", name="bias") if bias else None
        if bb is not None:
            args.append(bb)

        def f(b: Any, oc: Any, y: Any, z: Any) -> Any:
            dot = tvm.tirx.const(ktot, "int32") - pc[b, y, z, oc] * 2
            if cr is not None:
                dot = dot + cr[y, z, oc]
            v = dot.astype("float32") * al[oc]
            if bmap is not None:
                v = v * bmap[b, y, z]
            elif bt is not None:
                v = v * bt[0]
            if bb is not None:
                v = v + bb[oc]
            return v

        out = te.compute((n, o, ho, wo), f, name="y")
    sch = s_tir.Schedule(te.create_prim_func([*args, out]))
    blk = sch.get_sblock("pc")
    lb, ly, lz, lo, li, lj, lc = sch.get_loops(blk)
    lanes = _lanes()
    vec = _divisor(o, (2 * lanes, lanes, lanes // 2, 4, 2))
    reg = _divisor(wo, (4, 7, 3, 2))
    oo, oi = sch.split(lo, [None, vec])
    zo, zi = sch.split(lz, [None, reg])
    sch.reorder(lb, ly, zo, oo, li, lj, lc, zi, oi)
    parallel(sch, sch.fuse(lb, ly))
    sch.unroll(zi)
    if not raw:
        sch.reverse_compute_at(sch.get_sblock("y"), oo)
    if vec > 1:
        sch.vectorize(oi)
    init = sch.decompose_reduction(blk, li)
    if vec > 1:
        sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


def xnor_dense_func(m: int, cw: int, o: int, dtype: str = "uint32") -> Any:
    """PrimFunc ``(xb (M, Cw) u32, wb (Cw, O) u32) -> pc (M, O) int32``. Schedule:
    ``parallel(o_outer)`` / ``m_outer`` / ``cw`` / ``m_inner`` (unrolled) / ``o_inner``
    (vectorized)."""
    xb = te.placeholder((m, cw), dtype, name="xb")
    wb = te.placeholder((cw, o), dtype, name="wb")
    rc = te.reduce_axis((0, cw), "c")
    pc = te.compute(
        (m, o),
        lambda i, j: te.sum(tvm.tirx.popcount(xb[i, rc] ^ wb[rc, j]).astype("int32"), axis=rc),
        name="pc",
    )
    sch = s_tir.Schedule(te.create_prim_func([xb, wb, pc]))
    blk = sch.get_sblock("pc")
    li, lj, lc = sch.get_loops(blk)
    lanes = _lanes()
    vec = _divisor(o, (2 * lanes, lanes, lanes // 2, 4, 2))
    reg = _divisor(m, (4, 3, 2))
    jo, ji = sch.split(lj, [None, vec])
    io, ii = sch.split(li, [None, reg])
    sch.reorder(jo, io, lc, ii, ji)
    parallel(sch, jo)
    sch.unroll(ii)
    if vec > 1:
        sch.vectorize(ji)
    init = sch.decompose_reduction(blk, lc)
    if vec > 1:
        sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


# --- compile-time weight preparation ------------------------------------------------------------------
def conv_weight_words(wsign: np.ndarray, dtype: str = "uint32") -> np.ndarray:
    """+-1 ``(O, C, kh, kw)`` -> ``(kh, kw, words, O)`` uint32 / uint64 words (channel bits LSB
    first; uint64 needs C % 64 == 0)."""
    from mcopt.ops.binary import pack_bits

    bits = np.transpose(wsign > 0, (2, 3, 0, 1))  # kh, kw, O, C
    words = pack_bits(bits).view(np.dtype(dtype))  # kh, kw, O, Cw
    return np.ascontiguousarray(np.transpose(words, (0, 1, 3, 2)))


def padding_correction(
    wsign: np.ndarray,
    in_hw: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
) -> np.ndarray | None:
    """int32 ``(1, Ho, Wo, O)``: ``conv(P, B)`` with ``P`` = 1 on the zero padding (the padding taps
    the kernel read as -1 must contribute 0); None without padding."""
    if not any(pads):
        return None
    o, c, kh, kw = wsign.shape
    h, w = in_hw
    pt, pl, pb, pr = pads
    p = np.ones((1, c, h + pt + pb, w + pl + pr), np.int32)
    p[:, :, pt : pt + h, pl : pl + w] = 0
    corr = conv2d_ref(
        p, wsign.astype(np.int32), strides=strides, pads=(0, 0, 0, 0), dilations=dilations, groups=1
    )
    return np.ascontiguousarray(np.transpose(corr.astype(np.int32), (0, 2, 3, 1)))


# --- lowerings --------------------------------------------------------------------------------------
def _float_fallback(
    ctx: LowerContext, node: Node, a: list[Any], op: str, w: np.ndarray
) -> LowerResult:
    """Lower a BWN node through the float ``op`` lowering with the unpacked weight ``alpha * B``."""
    x = node.inputs[0]
    b = node.inputs[3] if len(node.inputs) > 3 else None
    assert x is not None
    xv = Value(x.name, x.type)
    wv = Value(f"{node.name}_w", TensorType(w.shape, "float32"), w)
    bv = None if b is None else Value(b.name, b.type, b.const)
    attrs = {}
    if op == "conv2d":
        at = node.attrs
        attrs = {
            "strides": at["strides"],
            "pads": at["pads"],
            "dilations": at["dilations"],
            "groups": 1,
        }
    out = Value(node.output.name, node.output.type)
    tmp = Node(op, [xv, wv, bv] if b is not None else [xv, wv], [out], attrs, node.name)
    args = [a[0], ctx.const(w)] + ([a[3]] if b is not None else [])
    return LOWERINGS[op](ctx, tmp, args)


def _vec(ctx: LowerContext, v: Value | None, arg: Any) -> Any:
    """A (O,) float32 vector input: a constant, or the runtime tensor."""
    if v is not None and v.const is not None:
        return ctx.const(v.const.astype(np.float32))
    return arg


def _tensor_beta(ctx: LowerContext, x: Any) -> Any:
    return ctx.emit(R.reshape(R.mean(R.abs(x), axis=None, keepdims=False), (1,)))


@register_lowering("binary_conv2d")
def _binary_conv2d(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    at = node.attrs
    wbits = node.inputs[1]
    if wbits is None or wbits.const is None:
        raise ValueError("binary_conv2d needs a constant packed weight")
    o = wbits.shape[0]
    c, (kh, kw) = int(at["channels"]), tuple(at["kernel"])
    wsign = unpack_weight(wbits.const, (o, c, kh, kw))
    if not at["binary_input"]:
        alpha = node.inputs[2].const.astype(np.float32)  # type: ignore[union-attr]
        w = wsign.astype(np.float32) * alpha.reshape(-1, 1, 1, 1)
        return _float_fallback(ctx, node, a, "conv2d", w)
    n, _, h, w_ = ctx.shape_of(a[0])
    strides, pads, dil = tuple(at["strides"]), tuple(at["pads"]), tuple(at["dilations"])
    ho = conv_out_dim(h, kh, strides[0], pads[0], pads[2], dil[0])
    wo = conv_out_dim(w_, kw, strides[1], pads[1], pads[3], dil[1])
    dt = word_dtype(c)
    cw = words_for(c) // (2 if dt == "uint64" else 1)
    hp, wp = h + pads[0] + pads[2], w_ + pads[1] + pads[3]
    position = at["beta"] == "position"
    pack = pack_nchw_func((n, c, h, w_), pads, ((kh, kw), strides, dil) if position else None)
    if position:
        out_ty = [
            relax.TensorType([n, hp, wp, cw], dt),
            relax.TensorType([n, ho, wo], "float32"),
        ]
        fname = ctx.bb.get_unique_name("xnor_pack")
        gv = ctx.bb.add_func(finalize_kernel(pack).with_attr("global_symbol", fname), fname)
        packed = ctx.emit(relax.call_tir(gv, [a[0]], out_ty), "xnor_pack")
        xb = ctx.emit(relax.TupleGetItem(packed, 0))
        amean = ctx.emit(relax.TupleGetItem(packed, 1))
    else:
        xb = _call(ctx, pack, "xnor_pack", [a[0]], (n, hp, wp, cw), dt)
    corr = padding_correction(wsign, (h, w_), strides, pads, dil)
    args = [xb, ctx.const(conv_weight_words(wsign, dt))]
    if corr is not None:
        args.append(ctx.const(corr[0]))
    args.append(_vec(ctx, node.inputs[2], a[2]))
    if position:
        args.append(amean)
    elif at["beta"] == "tensor":
        args.append(_tensor_beta(ctx, a[0]))
    b = node.inputs[3] if len(node.inputs) > 3 else None
    if b is not None:
        args.append(_vec(ctx, b, a[3]))
    func = xnor_conv_func(
        n,
        (hp, wp),
        cw,
        o,
        (kh, kw),
        strides,
        dil,
        (ho, wo),
        ktot=c * kh * kw,
        corr=corr is not None,
        bias=b is not None,
        beta=str(at["beta"]),
        dtype=dt,
    )
    return _call(ctx, func, "xnor_conv2d", args, (n, o, ho, wo), "float32")


@register_lowering("binary_dense")
def _binary_dense(ctx: LowerContext, node: Node, a: list[Any]) -> LowerResult:
    at = node.attrs
    wbits = node.inputs[1]
    if wbits is None or wbits.const is None:
        raise ValueError("binary_dense needs a constant packed weight")
    o, k = wbits.shape[0], int(at["in_features"])
    wsign = unpack_weight(wbits.const, (o, k))
    if not at["binary_input"]:
        alpha = node.inputs[2].const.astype(np.float32)  # type: ignore[union-attr]
        return _float_fallback(
            ctx, node, a, "dense", wsign.astype(np.float32) * alpha.reshape(-1, 1)
        )
    shape = ctx.shape_of(a[0])
    m = int(np.prod(shape[:-1]))
    x2 = ctx.emit(R.reshape(a[0], (m, k))) if len(shape) != 2 else a[0]
    dt = word_dtype(k)
    cw = words_for(k) // (2 if dt == "uint64" else 1)
    position = at["beta"] == "position"
    pack = pack_rows_func(m, k, absmean=position)
    if position:
        out_ty = [relax.TensorType([m, cw], dt), relax.TensorType([m], "float32")]
        fname = ctx.bb.get_unique_name("xnor_pack")
        gv = ctx.bb.add_func(finalize_kernel(pack).with_attr("global_symbol", fname), fname)
        packed = ctx.emit(relax.call_tir(gv, [x2], out_ty), "xnor_pack")
        xb = ctx.emit(relax.TupleGetItem(packed, 0))
        beta = ctx.emit(relax.TupleGetItem(packed, 1))
    else:
        xb = _call(ctx, pack, "xnor_pack", [x2], (m, cw), dt)
        beta = _tensor_beta(ctx, x2) if at["beta"] == "tensor" else None
    wb = ctx.const(np.ascontiguousarray(wbits.const.view(np.dtype(dt)).T))
    pc = _call(ctx, xnor_dense_func(m, cw, o, dt), "xnor_dense", [xb, wb], (m, o), "int32")
    args = [pc, _vec(ctx, node.inputs[2], a[2])]
    if beta is not None:
        args.append(beta)
    b = node.inputs[3] if len(node.inputs) > 3 else None
    if b is not None:
        args.append(_vec(ctx, b, a[3]))
    epi = xnor_dense_epilogue_func(m, o, k, bias=b is not None, beta=str(at["beta"]))
    y = _call(ctx, epi, "xnor_epilogue", args, (m, o), "float32")
    if len(shape) != 2:
        y = R.reshape(y, (*shape[:-1], o))
    return y


__all__ = [
    "conv_weight_words",
    "word_dtype",
    "xnor_dense_epilogue_func",
    "pack_nchw_func",
    "pack_rows_func",
    "padding_correction",
    "xnor_conv_func",
    "xnor_dense_func",
]
