"""The AArch64 ``sdot`` form of the blocked int8 1x1 conv (stride 1, no padding), hand-written TIR.

The flattened-plane conv of :func:`.int8_conv_nchwc.int8_conv2d_nchwc` on ``+dotprod`` cores
(blocks of 4 channels in and out)::

    acc[n, c, q, :] = bias_eff[c] + sum_{icb} sdot(x[n, icb, q, 0:4], kernel[c, icb, 0, 0])
    out[n, c, q, :] = QEpilogue(acc, mult[c], residual[n, c, q, :])

The TE form tensorizes one pixel per ``sdot`` with a 4-byte broadcast load (``ld1r``, no
immediate offset: an address computation each) and needs s8 input, so a u8 input (every
activation of a ``quantize-int8`` graph) first went through a full padded copy that flipped it.
Here, per output tile of ``reg_c`` channel blocks x ``reg_n`` pixels:

- the accumulators start at ``bias_eff`` (no add in the epilogue) and stay in registers;
- per input block: one 16-byte load of the ``reg_c`` weight blocks each and one 16-byte load per
  group of 4 pixels (``[pixel][channel]``), flipped to s8 with one ``eor 0x80`` when the input is
  u8 (``bias_eff`` holds the ``128 * sum(w)``: the caller computes it with ``x_zp - 128``);
  ``sdot v.4s, w.16b, a.4b[p]`` (lane-indexed) for each pixel ``p`` of a group and each channel
  block: ``reg_c * reg_n`` dot products for ``reg_c + reg_n / 4`` loads. When ``reg_n`` is not a
  multiple of 4 (7x7 planes) the last group starts ``reg_n - 4`` pixels into the tile (it
  overlaps the one before; its overlapping pixels are computed twice, stored twice, the same
  values), so no load leaves the tile;
- an 8-bit requantizing tail whose bounds lie in the dtype runs in integers, 4 pixels per 16-byte
  store (:func:`sdot_requantize`); other tails run :meth:`.QEpilogue.apply_te` per pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue

#: int32 accumulators of the register tile (32 NEON registers: the rest hold the loads)
MAX_ACCUMULATORS = 24
#: input blocks per iteration of the reduction loop
ICB_UNROLL = 2
#: cost factor of a 1x1 tile that does not divide the plane (estimated cheaper, such tiles cost
#: MobileNet-V2's int8 1x1 convs 1 % and PP-LCNet's 3 % more instructions; SqueezeNet's 13 x 13
#: 512 -> 1000 conv, 4 x 5 instead of 13 x 1, 33 % fewer); the row form takes them as estimated
RAGGED_PENALTY = 1.2


def pixel_groups(reg_n: int) -> list[int]:
    """The first pixel of each 4-pixel group of a ``reg_n``-pixel tile (``reg_n >= 4``): the last
    one ends at the tile's end."""
    return [min(4 * g, reg_n - 4) for g in range(-(-reg_n // 4))]


def sdot_pointwise_applies(
    isa: str | None,
    ib: int,
    kernel_hw: tuple[int, int],
    strides: Any,
    pads: Any,
    plane: int,
    grouped: bool,
) -> bool:
    """Whether a conv runs on :func:`int8_pointwise_sdot`: ``sdot``, blocks of 4 input channels,
    1x1, stride 1, no padding, not grouped, at least 4 pixels."""
    return (
        isa == "sdot"
        and ib == 4
        and tuple(int(k) for k in kernel_hw) == (1, 1)
        and all(int(s) == 1 for s in strides)
        and not any(int(p) for p in pads)
        and plane >= 4
        and not grouped
    )


def choose_sdot_tile(
    plane: int, icb: int, occ: int, flip: bool, cores: int = 1, ragged: float | None = None
) -> tuple[int, int]:
    """``(reg_n, reg_c)``: ``reg_n`` (4..16, at most ``plane``), ``reg_c`` (1..6) divides ``occ``,
    at most :data:`MAX_ACCUMULATORS` accumulators; the fewest estimated instructions for the
    whole output (per tile and input block: the loads, flips, ``sdot``s and the loop; per tile:
    the epilogue), keeping ``2 * cores`` tasks where there are that many. When ``reg_n`` does not
    divide ``plane`` the last tile starts ``reg_n`` pixels before the plane's end (it overlaps
    the one before: SqueezeNet's 13 x 13 plane of 1000 channels in 4 x 5 tiles instead of
    13 x 1, whose last group of 4 pixels overlaps by 3); such a tile's estimate is multiplied by
    ``ragged`` (default :data:`RAGGED_PENALTY`)."""
    best: tuple[float, int, int] | None = None
    for rc in range(1, 7):
        if occ % rc:
            continue
        for rn in range(4, min(plane, 16) + 1):
            groups = -(-rn // 4)
            accs = 4 * groups * rc
            if accs > MAX_ACCUMULATORS:
                continue
            per_block = accs + rc + groups * (2 if flip else 1) + 3
            tiles = -(-plane // rn)
            cost = tiles * (occ // rc) * (icb * per_block + 6 * accs + 10)
            if plane % rn:  # the clamp of the last tile, fewer chunks: only where clearly better
                cost *= RAGGED_PENALTY if ragged is None else ragged
            if (occ // rc) * tiles < 2 * cores:
                cost *= 4
            if best is None or cost < best[0]:
                best = (cost, rn, rc)
    if best is None:
        raise ValueError(f"no sdot tile for a plane of {plane} pixels")
    return best[1], best[2]


def int_requantize(ep: QEpilogue) -> tuple[int, int, int] | None:
    """``(lo, hi, zp)`` where ``ep``'s tail is an 8-bit requantize whose bounds, as the integers
    the float clamp + truncation give for integral values, lie in the dtype's range; else None."""
    import math

    import numpy as np

    if ep.base_dtype not in ("uint8", "int8"):
        return None
    lo, hi = ep.base_bounds
    info = np.iinfo(ep.base_dtype)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    # for an integral v: clip(v, lo, hi) truncated is max(min(v, trunc(hi)), trunc(lo))
    lo_i, hi_i = math.trunc(lo), math.trunc(hi)
    if not int(info.min) <= lo_i <= hi_i <= int(info.max):
        return None
    return lo_i, hi_i, int(ep.base_zp)


def sdot_requantize(
    accs: list[Any], mult_v: Any, fast: tuple[int, int, int], out_dtype: str
) -> Any:
    """``accs`` (1, 2 or 4 int32x4, bias included) -> their 8-bit codes, in integers: ``scvtf``,
    ``fmul``, ``fcvtns`` (round half to even, as ``rint``), a saturating add of the zero point,
    ``smax`` / ``smin`` for bounds inside the dtype's range, the rest saturating narrows
    (``sqxtun`` / ``sqxtn``, then ``uqxtn`` / ``sqxtn``): the codes of the float clamp."""
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    def intrin(dtype: str, name: str, *args: Any) -> Any:
        return T.call_llvm_pure_intrin(dtype, T.llvm_lookup_intrinsic_id(name), *args)

    def const_vec(v: int, dtype: str, lanes: int) -> Any:
        return tirx.Broadcast(tirx.const(v, dtype), lanes)

    lo, hi, zp = fast
    unsigned = out_dtype == "uint8"
    dmin, dmax = (0, 255) if unsigned else (-128, 127)
    halves = []
    for acc in accs:
        f = acc.astype("float32x4") * mult_v
        v = intrin("int32x4", "llvm.aarch64.neon.fcvtns.v4i32.v4f32", f)
        if zp:
            v = intrin("int32x4", "llvm.aarch64.neon.sqadd.v4i32", v, const_vec(zp, "int32", 4))
        if lo > dmin:
            v = tirx.Max(v, const_vec(lo, "int32", 4))
        if hi < dmax:
            v = tirx.Min(v, const_vec(hi, "int32", 4))
        narrow = "sqxtun" if unsigned else "sqxtn"
        halves.append(intrin("int16x4", f"llvm.aarch64.neon.{narrow}.v4i16", v))
    if len(halves) == 1:
        halves.append(halves[0])
    idx8 = [tirx.IntImm("int32", i) for i in range(8)]
    bytes8 = []
    for a, b in zip(halves[::2], halves[1::2]):
        v16 = tirx.Shuffle([a, b], idx8)
        narrow = "uqxtn" if unsigned else "sqxtn"
        bytes8.append(intrin(f"{out_dtype}x8", f"llvm.aarch64.neon.{narrow}.v8i8", v16))
    if len(accs) == 1:
        return tirx.Shuffle([bytes8[0]], [tirx.IntImm("int32", i) for i in range(4)])
    if len(bytes8) == 1:
        return bytes8[0]
    return tirx.Shuffle(bytes8, [tirx.IntImm("int32", i) for i in range(16)])


class _SdotTile:
    """The register tile both hand-written ``sdot`` kernels share: ``reg_c`` output blocks x the
    pixel groups ``starts`` (4 pixels each) of int32x4 accumulators in ``acc``; starting them at
    the bias, the lane-indexed ``sdot`` of one input step, and the requantizing store (``lead(c,
    q)``: the output's leading indices of output block ``c`` and tile pixel ``q``)."""

    def __init__(self, T: Any, acc: Any, tmp: Any, reg_c: int, starts: list[int]) -> None:
        self.T, self.acc, self.tmp, self.reg_c, self.starts = T, acc, tmp, reg_c, starts

    def slot(self, ci: int, g: int, p: int) -> Any:
        from tvm import tirx

        return tirx.Ramp(((ci * len(self.starts) + g) * 4 + p) * 4, 1, 4)

    def init(self, bias: Any, c0: Any) -> None:
        for ci in range(self.reg_c):
            start = bias.vload([c0 + ci, 0], "int32x4")
            for g in range(len(self.starts)):
                for p in range(4):
                    self.T.buffer_store(self.acc, start, [self.slot(ci, g, p)])

    def dots(self, wv: list[Any], av: list[Any]) -> None:
        """acc += w . (word p of group g) for every block ``ci``, group ``g``, pixel ``p``."""
        from tvm import tirx

        T = self.T
        for g in range(len(self.starts)):
            for p in range(4):
                a32 = T.reinterpret("int32x4", av[g])
                ap = T.reinterpret("int8x16", tirx.Shuffle([a32], [tirx.IntImm("int32", p)] * 4))
                for ci in range(self.reg_c):
                    cur = self.acc.vload([self.slot(ci, g, p).base], "int32x4")
                    new = T.call_llvm_pure_intrin(
                        "int32x4", T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                        cur, wv[ci], ap,
                    )  # fmt: skip
                    T.buffer_store(self.acc, new, [self.slot(ci, g, p)])

    def store(
        self, out: Any, res: Any, mult: Any, epilogue: QEpilogue, fast: Any, c0: Any,
        lead: Callable[[Any, Any], list[Any]],
    ) -> None:  # fmt: skip
        from tvm import tirx

        T, starts = self.T, self.starts
        for ci in range(self.reg_c):
            c = c0 + ci
            if fast is not None:
                mult_v = T.bind(mult.vload([c, 0], "float32x4"))
            for g, s in enumerate(starts):
                accs = [self.acc.vload([self.slot(ci, g, p).base], "int32x4") for p in range(4)]
                if fast is not None:
                    val = sdot_requantize(accs, mult_v, fast, epilogue.out_dtype)
                    T.buffer_store(out, val, [*lead(c, s), tirx.Ramp(0, 1, 16)])
                    continue
                for p in range(4):
                    if g and s + p < starts[g - 1] + 4:
                        continue  # computed by the group before
                    T.buffer_store(self.tmp, accs[p], [tirx.Ramp(0, 1, 4)])
                    q = lead(c, s + p)
                    with T.vectorized(0, 4) as j:
                        r = res[(*q, j)] if res is not None else None
                        val = epilogue.apply_te(self.tmp[j], mult[c, j], r)
                        T.buffer_store(out, val, [*q, j])


def int8_pointwise_sdot(
    n: int,
    icb: int,
    plane: int,
    occ: int,
    *,
    in_dtype: str,
    epilogue: QEpilogue,
    cores: int = 1,
    tile: tuple[int, int] | None = None,
) -> Any:
    """The PrimFunc ``(x (n, icb, plane, 4) in_dtype, kernel (occ, icb, 1, 1, 4, 4) i8, bias
    (occ, 4) i32, mult (occ, 4) f32, [residual (n, occ, plane, 4)], out (n, occ, plane, 4))``
    (module docstring); ``bias`` is :func:`.int8_conv.conv_bias_eff` with ``x_zp - 128`` for a u8
    input. ``tile``: ``(reg_n, reg_c)`` (default :func:`choose_sdot_tile`); ``plane >= 4``."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from mcopt.targets.cpu.kernels.threads import min_parallel_work

    if in_dtype not in ("uint8", "int8"):
        raise ValueError(f"in_dtype {in_dtype!r}: uint8 or int8")
    if plane < 4:
        raise ValueError(f"the sdot pointwise form needs at least 4 pixels, not {plane}")
    flip = in_dtype == "uint8"
    reg_n, reg_c = tile or choose_sdot_tile(plane, icb, occ, flip, cores)
    if reg_n > plane or occ % reg_c or reg_n < 4:
        raise ValueError(f"tile {reg_n} x {reg_c} for a plane of {plane} and {occ} blocks")
    starts = pixel_groups(reg_n)
    tiles = -(-plane // reg_n)
    chunk = max(d for d in range(1, tiles + 1) if tiles % d == 0 and d * reg_n <= 256)
    chunks = tiles // chunk
    ctiles = occ // reg_c
    use_pool = cores > 1 and n * occ * plane * icb * 16 >= min_parallel_work()
    fast = int_requantize(epilogue)
    out_dtype = epilogue.out_dtype

    def intrin(dtype: str, name: str, *args: Any) -> Any:
        return T.call_llvm_pure_intrin(dtype, T.llvm_lookup_intrinsic_id(name), *args)

    x80 = tirx.Broadcast(tirx.const(128, "uint8"), 16)

    def lane(a: Any, p: int) -> Any:
        """int8x16 whose four words are word ``p`` of ``a``."""
        a32 = T.reinterpret("int32x4", a)
        return T.reinterpret("int8x16", tirx.Shuffle([a32], [tirx.IntImm("int32", p)] * 4))

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            x = T.arg("x", T.buffer((n, icb, plane, 4), in_dtype))
            kern = T.arg("kernel", T.buffer((occ, icb, 1, 1, 4, 4), "int8"))
            bias = T.arg("bias", T.buffer((occ, 4), "int32"))
            mult = T.arg("mult", T.buffer((occ, 4), "float32"))
            res = None
            if epilogue.residual is not None:
                res = T.arg("residual", T.buffer((n, occ, plane, 4), epilogue.residual))
            out = T.arg("out", T.buffer((n, occ, plane, 4), out_dtype))
            T.func_attr({"tirx.noalias": True})
            loop = T.parallel if use_pool else T.serial
            with loop(0, n * ctiles * chunks) as task:
                b_ = T.bind(task // (ctiles * chunks))
                c0 = T.bind(task // chunks % ctiles * reg_c)
                q00 = T.bind(task % chunks * (chunk * reg_n))
                nacc = reg_c * len(starts)
                acc = T.alloc_local((nacc * 16,), "int32")
                tmp = T.alloc_local((4,), "int32")

                tile = _SdotTile(T, acc, tmp, reg_c, starts)

                with T.serial(0, chunk) as t:
                    if plane % reg_n:  # the last tile ends at the plane's end
                        q0 = T.bind(tirx.min(q00 + t * reg_n, plane - reg_n))
                    else:
                        q0 = T.bind(q00 + t * reg_n)
                    tile.init(bias, c0)

                    def block(k: Any) -> None:
                        """The dot products of input block ``k``."""
                        wv = [
                            T.bind(kern.vload([c0 + ci, k, 0, 0, 0, 0], "int8x16"))
                            for ci in range(reg_c)
                        ]
                        av = []
                        for s in starts:
                            v = x.vload([b_, k, q0 + s, 0], f"{in_dtype}x16")
                            if flip:
                                v = T.reinterpret("int8x16", tirx.bitwise_xor(v, x80))
                            av.append(T.bind(v))
                        tile.dots(wv, av)

                    # two input blocks per iteration (half the loop's counter and pointer updates)
                    with T.serial(0, icb // ICB_UNROLL) as k2:
                        for u in range(ICB_UNROLL):
                            block(k2 * ICB_UNROLL + u)
                    for k in range(icb - icb % ICB_UNROLL, icb):
                        block(tirx.const(k, "int32"))
                    tile.store(out, res, mult, epilogue, fast, c0, lambda c, q: [b_, c, q0 + q])
    return ib.get().with_attr("tirx.is_scheduled", True)


def sdot_rows_applies(
    isa: str | None, ib: int, strides: Any, dilations: Any, ow: int, grouped: bool
) -> bool:
    """Whether a (not 1x1-pointwise) conv runs on :func:`int8_conv_sdot_rows`: ``sdot``, blocks
    of 4 input channels, stride 1, undilated, not grouped, rows of at least 4 outputs."""
    return (
        isa == "sdot"
        and ib == 4
        and all(int(s) == 1 for s in strides)
        and all(int(d) == 1 for d in dilations)
        and ow >= 4
        and not grouped
    )


def int8_conv_sdot_rows(
    n: int,
    icb: int,
    hw: tuple[int, int],
    occ: int,
    kernel_hw: tuple[int, int],
    pads: tuple[int, int, int, int],
    *,
    in_dtype: str,
    pad_value: int,
    shift: int,
    epilogue: QEpilogue,
    cores: int = 1,
    tile: tuple[int, int] | None = None,
) -> Any:
    """The KxK stride-1 form of :func:`int8_pointwise_sdot` along output rows: the PrimFunc ``(x
    (n, icb, H, W, 4) in_dtype, kernel (occ, icb, KH, KW, 4, 4) i8, bias (occ, 4) i32, mult
    (occ, 4) f32, [residual (n, occ, OH, OW, 4)], out (n, occ, OH, OW, 4))``, the arguments of
    :func:`.int8_conv_nchwc.int8_conv2d_nchwc` (``bias``: ``conv_bias_eff`` with ``x_zp +
    shift``). The input is first copied into a padded s8 buffer (``x + shift``, ``pad_value``
    outside: the TE form's padded copy); then per tile of ``reg_n`` pixels of one output row
    (the last one ending at the row's end) and ``reg_c`` channel blocks, per input block and
    kernel position: ``reg_c`` weight loads, one 16-byte load per group of 4 pixels (contiguous
    in the padded row) and ``sdot`` by lane, the accumulators starting at the bias."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from mcopt.targets.cpu.kernels.threads import min_parallel_work

    h, w = hw
    kh, kw = kernel_hw
    pt, pl, pb, pr = pads
    oh, ow = h + pt + pb - kh + 1, w + pl + pr - kw + 1
    hp, wp = h + pt + pb, w + pl + pr
    reg_n, reg_c = tile or choose_sdot_tile(ow, icb * kh * kw, occ, False, cores, ragged=1.0)
    if reg_n > ow or occ % reg_c or reg_n < 4:
        raise ValueError(f"tile {reg_n} x {reg_c} for rows of {ow} and {occ} blocks")
    starts = pixel_groups(reg_n)
    tiles = -(-ow // reg_n)
    ctiles = occ // reg_c
    use_pool = cores > 1 and n * occ * oh * ow * icb * kh * kw * 16 >= min_parallel_work()
    fast = int_requantize(epilogue)
    out_dtype = epilogue.out_dtype

    def intrin(dtype: str, name: str, *args: Any) -> Any:
        return T.call_llvm_pure_intrin(dtype, T.llvm_lookup_intrinsic_id(name), *args)

    def lane(a: Any, p: int) -> Any:
        a32 = T.reinterpret("int32x4", a)
        return T.reinterpret("int8x16", tirx.Shuffle([a32], [tirx.IntImm("int32", p)] * 4))

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            x = T.arg("x", T.buffer((n, icb, h, w, 4), in_dtype))
            kern = T.arg("kernel", T.buffer((occ, icb, kh, kw, 4, 4), "int8"))
            bias = T.arg("bias", T.buffer((occ, 4), "int32"))
            mult = T.arg("mult", T.buffer((occ, 4), "float32"))
            res = None
            if epilogue.residual is not None:
                res = T.arg("residual", T.buffer((n, occ, oh, ow, 4), epilogue.residual))
            out = T.arg("out", T.buffer((n, occ, oh, ow, 4), out_dtype))
            T.func_attr({"tirx.noalias": True})
            loop = T.parallel if use_pool else T.serial
            xp = T.alloc_buffer((n, icb, hp, wp, 4), "int8")
            padv = tirx.Broadcast(tirx.const(pad_value, "int8"), 4)

            def shifted(v: Any, lanes: int) -> Any:
                if shift == 0 and in_dtype == "int8":
                    return v
                if shift == -128 and in_dtype == "uint8":  # flip the top bit
                    x80 = tirx.Broadcast(tirx.const(128, "uint8"), lanes)
                    return T.reinterpret(f"int8x{lanes}", tirx.bitwise_xor(v, x80))
                return (v.astype(f"int32x{lanes}") + shift).astype(f"int8x{lanes}")

            with loop(0, n * icb * hp) as row:
                b_ = T.bind(row // (icb * hp))
                k_ = T.bind(row // hp % icb)
                y = T.bind(row % hp)
                with T.If(tirx.all(y >= pt, y < h + pt)):
                    with T.Then():
                        for xx in range(pl):
                            T.buffer_store(xp, padv, [b_, k_, y, xx, tirx.Ramp(0, 1, 4)])
                        with T.serial(0, w // 4) as x4:
                            v = x.vload([b_, k_, y - pt, x4 * 4, 0], f"{in_dtype}x16")
                            T.buffer_store(
                                xp, shifted(v, 16), [b_, k_, y, pl + x4 * 4, tirx.Ramp(0, 1, 16)]
                            )
                        for xx in range(w - w % 4, w):
                            v = x.vload([b_, k_, y - pt, xx, 0], f"{in_dtype}x4")
                            T.buffer_store(
                                xp, shifted(v, 4), [b_, k_, y, pl + xx, tirx.Ramp(0, 1, 4)]
                            )
                        for xx in range(pl + w, wp):
                            T.buffer_store(xp, padv, [b_, k_, y, xx, tirx.Ramp(0, 1, 4)])
                    with T.Else():
                        with T.serial(0, wp) as xx:
                            T.buffer_store(xp, padv, [b_, k_, y, xx, tirx.Ramp(0, 1, 4)])
            with loop(0, n * ctiles * oh) as task:
                b_ = T.bind(task // (ctiles * oh))
                c0 = T.bind(task // oh % ctiles * reg_c)
                y = T.bind(task % oh)
                acc = T.alloc_local((reg_c * len(starts) * 16,), "int32")
                tmp = T.alloc_local((4,), "int32")

                tile = _SdotTile(T, acc, tmp, reg_c, starts)

                with T.serial(0, tiles) as t:
                    if ow % reg_n:
                        x0 = T.bind(tirx.min(t * reg_n, ow - reg_n))
                    else:
                        x0 = T.bind(t * reg_n)
                    tile.init(bias, c0)
                    with T.serial(0, icb) as k:
                        with T.serial(0, kh) as r:
                            for s in range(kw):
                                wv = [
                                    T.bind(kern.vload([c0 + ci, k, r, s, 0, 0], "int8x16"))
                                    for ci in range(reg_c)
                                ]
                                av = [
                                    T.bind(xp.vload([b_, k, y + r, x0 + s + st, 0], "int8x16"))
                                    for st in starts
                                ]
                                tile.dots(wv, av)
                    tile.store(out, res, mult, epilogue, fast, c0, lambda c, q: [b_, c, y, x0 + q])
    return ib.get().with_attr("tirx.is_scheduled", True)


__all__ = [
    "MAX_ACCUMULATORS",
    "choose_sdot_tile",
    "int8_conv_sdot_rows",
    "int8_pointwise_sdot",
    "int_requantize",
    "pixel_groups",
    "sdot_pointwise_applies",
    "sdot_requantize",
    "sdot_rows_applies",
]
