"""Blocked layouts: compile-time weight packing in numpy and NCHW <-> NCHW[x]c PrimFuncs.

Layouts (``bn`` = channel block, see :func:`.params.channel_block`):

- activations ``NCHW[bn]c``: ``x_b[n, c // bn, h, w, c % bn] = x[n, c, h, w]``;
- conv kernels ``OIHW[ic_bn]i[oc_kbn]o``:
  ``k_b[o // oc_kbn, i // ic_bn, y, x, i % ic_bn, o % oc_kbn] = k[o, i, y, x]``;
- depthwise kernels ``[C/bn, KH, KW, bn]``; biases ``[C/bn, bn]``;
- dense weights ``[N/bn, K, bn]``: ``w_b[j // bn, k, j % bn] = w[j, k]``.

The weights are constants, so they are packed once in numpy when the model is compiled; only the
graph's input and output go through the PrimFuncs below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mcopt.targets.cpu.kernels.threads import parallel


def pack_nchwc(x: np.ndarray, bn: int) -> np.ndarray:
    """``(N, C, H, W) -> (N, C/bn, H, W, bn)``."""
    n, c, h, w = x.shape
    if c % bn:
        raise ValueError(f"{c} channels do not divide into blocks of {bn}")
    return np.ascontiguousarray(x.reshape(n, c // bn, bn, h, w).transpose(0, 1, 3, 4, 2))


def unpack_nchwc(x: np.ndarray) -> np.ndarray:
    """``(N, C/bn, H, W, bn) -> (N, C, H, W)``."""
    n, cc, h, w, bn = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, cc * bn, h, w))


def pack_conv_weight(w: np.ndarray, ic_bn: int, oc_kbn: int) -> np.ndarray:
    """``(OC, IC, KH, KW) -> (OC/oc_kbn, IC/ic_bn, KH, KW, ic_bn, oc_kbn)``."""
    oc, ic, kh, kw = w.shape
    if oc % oc_kbn or ic % ic_bn:
        raise ValueError(f"weight {w.shape} does not divide into blocks {ic_bn}/{oc_kbn}")
    w6 = w.reshape(oc // oc_kbn, oc_kbn, ic // ic_bn, ic_bn, kh, kw)
    return np.ascontiguousarray(w6.transpose(0, 2, 4, 5, 3, 1))


def pack_depthwise_weight(w: np.ndarray, bn: int) -> np.ndarray:
    """``(C, 1, KH, KW) -> (C/bn, KH, KW, bn)``."""
    c, one, kh, kw = w.shape
    if one != 1 or c % bn:
        raise ValueError(f"depthwise weight {w.shape} does not divide into blocks of {bn}")
    return np.ascontiguousarray(w.reshape(c // bn, bn, kh, kw).transpose(0, 2, 3, 1))


def pack_bias(b: np.ndarray, bn: int) -> np.ndarray:
    """``(C,) -> (C/bn, bn)``."""
    return np.ascontiguousarray(b.reshape(-1, bn))


def pack_dense_weight(w: np.ndarray, bn: int) -> np.ndarray:
    """``(N, K) -> (N/bn, K, bn)`` (``w`` as in ``x @ w.T``)."""
    n, k = w.shape
    if n % bn:
        raise ValueError(f"dense weight {w.shape}: {n} outputs do not divide into blocks of {bn}")
    return np.ascontiguousarray(w.reshape(n // bn, bn, k).transpose(0, 2, 1))


#: the longest loop a layout kernel vectorizes whole (LLVM's code generation for a vector of
#: thousands of lanes takes minutes: YOLOv8's (1, 4, 2100) box tensor)
MAX_VECTOR_LANES = 64


def _schedule_copy(func: Any, vector_axis: int) -> Any:
    """Parallel over the outer three axes, vectorize ``vector_axis`` if it is the innermost (in
    pieces of at most :data:`MAX_VECTOR_LANES`, a divisor of the axis where there is one)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("T_layout")
    loops = sch.get_loops(blk)
    parallel(sch, sch.fuse(*loops[:3]))
    if vector_axis == len(loops) - 1:
        inner = loops[-1]
        ext = int(sch.get(inner).extent)
        if ext > MAX_VECTOR_LANES:
            f = next((v for v in (16, 8, 4, 2) if ext % v == 0), 16)
            inner = sch.split(inner, [None, f])[1]
        sch.vectorize(inner)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def nchw_to_nchwc(
    shape: Sequence[int], bn: int, dtype: str = "float32", padded: int | None = None
) -> Any:
    """A scheduled PrimFunc ``(x: (N, C, H, W), y: (N, Cp/bn, H, W, bn))``; ``padded`` = ``Cp``
    (default ``C``): channels ``C..Cp-1`` are written as zeros."""
    import tvm
    from tvm import s_tir, te

    n, c, h, w = (int(d) for d in shape)
    cp = int(padded or c)
    if cp % bn or cp < c:
        raise ValueError(f"{cp} (padded from {c}) channels do not divide into blocks of {bn}")
    x = te.placeholder((n, c, h, w), dtype, name="x")
    if cp == c:

        def fn(i, j, y_, x_, k):
            return x[i, j * bn + k, y_, x_]
    else:

        def fn(i, j, y_, x_, k):
            ch = j * bn + k
            return tvm.tirx.if_then_else(
                ch < c, x[i, tvm.te.min(ch, c - 1), y_, x_], tvm.tirx.const(0.0, dtype)
            )

    y = te.compute((n, cp // bn, h, w, bn), fn, name="T_layout")
    # the source is strided along the block: loop over the block outside the (contiguous) width
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    blk = sch.get_sblock("T_layout")
    i, j, yy, xx, k = sch.get_loops(blk)
    sch.reorder(i, j, yy, k, xx)
    parallel(sch, sch.fuse(i, j, yy))
    sch.unroll(k)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def nchwc_to_nchw(
    shape: Sequence[int], bn: int, dtype: str = "float32", padded: int | None = None
) -> Any:
    """A scheduled PrimFunc ``(x: (N, Cp/bn, H, W, bn), y: (N, C, H, W))`` (``shape`` is NCHW,
    ``padded`` = ``Cp``, default ``C``: the padding channels are dropped)."""
    from tvm import te

    n, c, h, w = (int(d) for d in shape)
    cp = int(padded or c)
    x = te.placeholder((n, cp // bn, h, w, bn), dtype, name="x")
    y = te.compute(
        (n, c, h, w), lambda i, j, y_, x_: x[i, j // bn, y_, x_, j % bn], name="T_layout"
    )
    return _schedule_copy(te.create_prim_func([x, y]), 3)


def copy_nchwc(shape: Sequence[int], dtype: str = "float32") -> Any:
    """A scheduled PrimFunc ``(x, y)`` copying a blocked ``(N, CB, H, W, bn)`` tensor (parallel
    over ``(n, c, h)``, vectorized over the block)."""
    from tvm import te

    x = te.placeholder(tuple(int(d) for d in shape), dtype, name="x")
    y = te.compute(x.shape, lambda *i: x[i], name="T_layout")
    return _schedule_copy(te.create_prim_func([x, y]), 4)


def concat_nchwc(
    shapes: Sequence[Sequence[int]],
    channels: Sequence[int],
    bn: int,
    padded: int,
    dtype: str = "float32",
) -> Any:
    """A scheduled PrimFunc ``(x_0, ..., x_k, y)`` concatenating blocked ``(N, Cp_i/bn_i, H, W,
    bn_i)`` tensors (each in its own block) along their *logical* channels (``channels[i]`` of each; the zero-padded channels of
    an input are skipped) into a blocked ``(N, padded/bn, H, W, bn)`` output whose padding channels
    are 0: the channel concat of ShuffleNet / DenseNet stages whose widths are not multiples of the
    block, without a round trip through NCHW. Parallel over ``(n, c_outer, h)``."""
    import tvm
    from tvm import s_tir, te

    n, _, h, w, _ = (int(d) for d in shapes[0])
    xs = [
        te.placeholder(tuple(int(d) for d in s), dtype, name=f"x{i}") for i, s in enumerate(shapes)
    ]
    offsets = [sum(channels[:i]) for i in range(len(channels))]

    def fn(i, j, y_, x_, k):  # type: ignore[no-untyped-def]
        c = j * bn + k
        val = tvm.tirx.const(0, dtype)
        for x, off, ch in reversed(list(zip(xs, offsets, channels))):
            xb = int(x.shape[4])
            local = te.max(te.min(c - off, ch - 1), 0)  # clamped: no read outside x
            inside = tvm.tirx.all(c >= off, c < off + ch)
            val = tvm.tirx.if_then_else(inside, x[i, local // xb, y_, x_, local % xb], val)
        return val

    y = te.compute((n, padded // bn, h, w, bn), fn, name="T_layout")
    sch = s_tir.Schedule(te.create_prim_func([*xs, y]))
    blk = sch.get_sblock("T_layout")
    i, j, yy, xx, k = sch.get_loops(blk)
    parallel(sch, sch.fuse(i, j, yy))
    sch.unroll(k)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


#: at most this many source blocks per output block for :func:`shuffle_channels_nchwc`
MAX_SHUFFLE_SOURCES = 8
#: bytes one vector of :func:`shuffle_channels_nchwc` moves (a 512-bit register)
SHUFFLE_BYTES = 64


def shuffle_channels_nchwc(
    shape: Sequence[int], bn: int, perm: Sequence[int], dtype: str = "float32"
) -> Any | None:
    """:func:`permute_channels_nchwc` with ``perm`` known when the kernel is built: a scheduled
    PrimFunc ``(x, y)``, or None where an output block would gather from more than
    :data:`MAX_SHUFFLE_SOURCES` input blocks. Each output block is one vector shuffle
    (``tirx.Shuffle``, LLVM ``shufflevector`` with constant indices: ``vpermt2b`` / ``pshufb``
    on x86, ``tbl`` on AArch64) of the same pixels of its source blocks, ``SHUFFLE_BYTES`` bytes of
    pixels at a time (the rest one pixel at a time), instead of one indexed load per element (the
    int8 ShuffleNet's 56x56 shuffle: 79 us). Tasks: chunks of pixels (every output block of a chunk
    in one task), on the thread pool above :func:`.threads.min_parallel_work` elements."""
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    n, c, h, w = (int(d) for d in shape)
    if c % bn or sorted(int(p) for p in perm) != list(range(c)):
        raise ValueError(f"channel permutation of {len(perm)} for {c} channels in blocks of {bn}")
    blocks = []  # per output block: its source blocks and, per lane, (source index, lane)
    for j in range(c // bn):
        src = [int(perm[j * bn + k]) for k in range(bn)]
        sb = list(dict.fromkeys(s // bn for s in src))
        if len(sb) > MAX_SHUFFLE_SOURCES:
            return None
        blocks.append((sb, [(sb.index(s // bn), s % bn) for s in src]))

    def pixels(b: Any, xs: Sequence[Any], y: Any, p0: Any, npix: int) -> None:
        lanes = npix * bn
        for j, (sb, lane_src) in enumerate(blocks):
            vecs = [xs[0].vload([b, s, p0 // w, p0 % w, 0], f"{dtype}x{lanes}") for s in sb]
            idx = [
                tirx.IntImm("int32", lane_src[k][0] * lanes + q * bn + lane_src[k][1])
                for q in range(npix)
                for k in range(bn)
            ]
            val = tirx.Shuffle(vecs, idx)
            T.buffer_store(y, val, [b, j, p0 // w, p0 % w, tirx.Ramp(0, 1, lanes)])

    shape = (n, c // bn, h, w, bn)
    return _by_pixel_vectors([("x", shape)], shape, dtype, pixels)


def _by_pixel_vectors(
    args: Sequence[tuple[str, Sequence[int]]],
    out_shape: Sequence[int],
    dtype: str,
    pixels: Any,
) -> Any:
    """The loop nest shared by the shuffle kernels: a PrimFunc ``(*args, y)`` over the blocked
    output ``(N, CB, H, W, bn)`` calling ``pixels(b, arg_buffers, y, p0, npix)`` for the
    ``SHUFFLE_BYTES`` bytes of pixels from flattened pixel ``p0`` on (``npix`` of them; the rest
    one pixel at a time). Tasks: chunks of pixels, on the thread pool above
    :func:`.threads.min_parallel_work` elements."""
    import tvm
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from mcopt.targets.cpu.kernels.threads import min_parallel_work

    n, _, h, w, bn = (int(d) for d in out_shape)
    plane = h * w
    vp = max(1, SHUFFLE_BYTES * 8 // (bn * tvm.DataType(dtype).bits))  # pixels per vector
    main = plane // vp
    tail = plane - main * vp
    chunks = max(1, min(main, 4 * 8))
    per = -(-main // chunks)
    chunks = -(-main // per) if main else 0
    use_pool = int(np.prod(out_shape)) >= min_parallel_work() and chunks > 1
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            xs = [T.arg(name, T.buffer(tuple(int(d) for d in s), dtype)) for name, s in args]
            y = T.arg("y", T.buffer(tuple(int(d) for d in out_shape), dtype))
            T.func_attr({"tirx.noalias": True})
            with T.sblock("root"):  # Relax's reshape-pattern check wants a root block
                if chunks:
                    loop = T.parallel if use_pool else T.serial
                    with loop(0, n * chunks) as task:
                        b_ = T.bind(task // chunks)
                        lo = T.bind(task % chunks * per)
                        with T.serial(0, tirx.min(per, main - lo)) as i:
                            pixels(b_, xs, y, (lo + i) * vp, vp)
                for t in range(tail):
                    with T.serial(0, n) as b2:
                        pixels(b2, xs, y, main * vp + t, 1)
    return ib.get().with_attr("tirx.is_scheduled", True)


def concat_shuffle_nchwc(
    shapes: Sequence[Sequence[int]],
    channels: Sequence[int],
    bn: int,
    padded: int,
    dtype: str = "float32",
) -> Any | None:
    """:func:`concat_nchwc` as vector shuffles: a scheduled PrimFunc ``(x_0, ..., x_k, y)``, or
    None where an output block would draw on more than :data:`MAX_SHUFFLE_SOURCES` input blocks.
    Each output block of ``SHUFFLE_BYTES`` bytes of pixels is one ``tirx.Shuffle`` of the same
    pixels' source blocks (the inputs may have other blocks than the output: a 8c and a padded 16c
    input into 16c, tiny_cnn's int8 branches) and, for the padding lanes, a zero vector — instead of
    one clamped, guarded load per element (that concat: 1.8 us for 8 KB). Tasks: chunks of pixels,
    on the thread pool above :func:`.threads.min_parallel_work` elements."""
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    n, _, h, w, _ = (int(d) for d in shapes[0])
    if padded % bn or any(len(s) != 5 for s in shapes):
        return None
    xb = [int(s[4]) for s in shapes]
    offsets = [sum(channels[:i]) for i in range(len(channels))]
    total = sum(channels)
    blocks = []  # per output block: its sources ((input, block) or None = zeros), per lane (src, lane)
    for j in range(padded // bn):
        lane_src: list[tuple[Any, int]] = []
        for k in range(bn):
            c = j * bn + k
            if c >= total:
                lane_src.append((None, 0))
                continue
            i = max(t for t, off in enumerate(offsets) if off <= c)
            loc = c - offsets[i]
            lane_src.append(((i, loc // xb[i]), loc % xb[i]))
        srcs = list(dict.fromkeys(s for s, _ in lane_src))
        if len(srcs) > MAX_SHUFFLE_SOURCES:
            return None
        blocks.append((srcs, [(srcs.index(s), lane) for s, lane in lane_src]))

    def pixels(b: Any, xs: Sequence[Any], y: Any, p0: Any, npix: int) -> None:
        for j, (srcs, lane_src) in enumerate(blocks):
            vecs, base, at = [], [], 0
            for src in srcs:
                base.append(at)
                if src is None:
                    vecs.append(tirx.Broadcast(tirx.const(0, dtype), npix * bn))
                    at += npix * bn
                else:
                    i, sb = src
                    vecs.append(xs[i].vload([b, sb, p0 // w, p0 % w, 0], f"{dtype}x{npix * xb[i]}"))
                    at += npix * xb[i]
            idx = [
                base[si] + q * (bn if srcs[si] is None else xb[srcs[si][0]]) + lane
                for q in range(npix)
                for si, lane in lane_src
            ]
            if len(vecs) == 1 and idx == list(range(at)):  # one whole source block: a copy
                val = vecs[0]
            else:
                val = tirx.Shuffle(vecs, [tirx.IntImm("int32", i) for i in idx])
            if npix * bn == 1:
                T.buffer_store(y, val, [b, j, p0 // w, p0 % w, 0])
            else:
                T.buffer_store(y, val, [b, j, p0 // w, p0 % w, tirx.Ramp(0, 1, npix * bn)])

    args = [(f"x{i}", tuple(int(d) for d in sh)) for i, sh in enumerate(shapes)]
    return _by_pixel_vectors(args, (n, padded // bn, h, w, bn), dtype, pixels)


def permute_channels_nchwc(
    shape: Sequence[int], bn: int, perm: Sequence[int], dtype: str = "float32"
) -> Any:
    """A scheduled PrimFunc ``(x, perm, y)`` on blocked ``(N, C/bn, H, W, bn)`` tensors with
    ``y[:, c] = x[:, perm[c]]`` in logical channels (ShuffleNet's channel shuffle without leaving
    the blocked layout); ``perm`` is an int32 ``(C,)`` input. Parallel over ``(n, c_outer, h)``."""
    from tvm import s_tir, te

    n, c, h, w = (int(d) for d in shape)
    if c % bn or len(perm) != c:
        raise ValueError(f"channel permutation of {len(perm)} for {c} channels in blocks of {bn}")
    x = te.placeholder((n, c // bn, h, w, bn), dtype, name="x")
    p = te.placeholder((c,), "int32", name="perm")

    def fn(i, j, y_, x_, k):
        src = p[j * bn + k]
        return x[i, src // bn, y_, x_, src % bn]

    y = te.compute((n, c // bn, h, w, bn), fn, name="T_layout")
    sch = s_tir.Schedule(te.create_prim_func([x, p, y]))
    blk = sch.get_sblock("T_layout")
    i, j, yy, xx, k = sch.get_loops(blk)
    parallel(sch, sch.fuse(i, j, yy))
    sch.unroll(k)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
