"""Direct fp32 conv2d in the blocked NCHW[x]c layout, scheduled with ``tvm.s_tir.schedule``.

The template of Liu et al., "Optimizing CNN Model Inference on CPUs" (USENIX ATC 2019):

- layouts: data ``NCHW[ic_bn]c``, kernel ``OIHW[ic_bn]i[oc_kbn]o`` (``oc_kbn = reg_c * oc_bn``:
  the weights of one register tile are contiguous), output ``NCHW[oc_bn]c``; ``oc_bn`` = SIMD lanes;
- ``out[n, oc, oh, ow, ob] = act(bias[oc, ob] (+ res) +
  sum_{icc, kh, kw, icb} data[n, icc, oh*sh + kh*dh - pt, ow*sw + kw*dw - pl, icb]
  * kernel[oc // reg_c, icc, kh, kw, icb, (oc % reg_c) * oc_bn + ob])``;
- register tile: ``reg_n`` output columns x ``reg_c`` output-channel blocks x ``oc_bn`` lanes, held
  in ``reg_n * reg_c`` vector accumulators (one broadcast of the input per column, one vector load
  of the weights per channel block, ``reg_n * reg_c`` FMAs);
- loop nest: ``parallel(n, oc_outer, oh)`` / ``ow_outer`` / ``icc, kh, kw, icb`` (reduction,
  ``kw`` optionally unrolled) / ``oc_inner, ow_inner`` (unrolled) / ``ob`` (vectorized); the
  accumulators are initialised (``decompose_reduction``) and the fused epilogue
  (bias, residual, activation: ``reverse_compute_at``) written under ``ow_outer``;
- cache blocking (:mod:`.params`): when the weights of a tile exceed half the L2, the ``icc`` loop
  is split (``ic_chunk`` blocks whose weights fit in L1) and the output rows move inside it
  (``oh_inner``): ``parallel(n, oc_outer)`` / ``icc_outer`` / ``oh`` / ``ow_outer`` / ...;
- ``flat``: for small planes whose width is not a multiple of ``reg_n`` (7x7, 14x14) the tile runs
  along the flattened plane ``q = oh * OW + ow`` (rounded up once, not per row); the epilogue is
  then a separate parallel pass (``reverse_compute_at`` cannot invert ``q``);
- the width (or plane) is rounded up to a multiple of ``reg_n`` with extra zero padding, so that
  no tile needs a predicate; the epilogue writes only the valid outputs;
- padding is a separate parallel, vectorized stage (not inlined: a conditional in the inner loop
  costs more than the copy).

A 1x1 conv is the same template without the ``kh, kw`` loops: a GEMM ``[OH*OW, IC] x [IC, OC]`` in
the blocked layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcopt.targets.cpu.kernels.epilogue import Epilogue
from mcopt.targets.cpu.kernels.params import ConvParams, _info, choose_conv_params
from mcopt.targets.cpu.kernels.threads import parallel, vector_init


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(x) for x in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _pads(v: int | Sequence[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, (h, w) or (top, left, bottom, right)."""
    if isinstance(v, int):
        return v, v, v, v
    v = tuple(int(x) for x in v)
    if len(v) == 2:
        return v[0], v[1], v[0], v[1]
    if len(v) == 4:
        return v  # type: ignore[return-value]
    raise ValueError(f"padding must have 1, 2 or 4 entries, got {v}")


def conv_out_size(size: int, k: int, stride: int, pad_a: int, pad_b: int, dilation: int) -> int:
    """``(size + pad_a + pad_b - dilation*(k-1) - 1) // stride + 1``."""
    return (size + pad_a + pad_b - dilation * (k - 1) - 1) // stride + 1


def pad_nchwc(data: Any, pads: tuple[int, int, int, int], name: str = "data_pad") -> Any:
    """Zero-pad the H and W axes (2, 3) of a 5-d blocked tensor."""
    import tvm
    from tvm import te

    pt, pl, pb, pr = pads
    if not any(pads):
        return data
    n, c, h, w, b = (int(d) for d in data.shape)

    def fn(i, j, y, x, k):
        cond = tvm.tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl)
        return tvm.tirx.if_then_else(
            cond, data[i, j, y - pt, x - pl, k], tvm.tirx.const(0.0, data.dtype)
        )

    return te.compute((n, c, h + pt + pb, w + pl + pr, b), fn, name=name)


def conv2d_nchwc_te(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    params: ConvParams | None = None,
    epilogue: Epilogue | None = None,
    dtype: str = "float32",
    plain_input: bool = False,
) -> list[Any]:
    """TE tensors ``[data, kernel, (bias), (residual), out]`` of the blocked conv.

    ``data_shape`` is the logical NCHW shape, ``weight_shape`` the logical OIHW shape; the
    placeholders have the blocked shapes (see the module docstring and :mod:`.layout`).
    ``plain_input``: ``data`` is NCHW (one input block, ``ic_bn == IC``: the RGB image), read
    through the padded copy (which blocks it) or directly (the input is broadcast per element
    anyway), so the graph input needs no separate ``to_nchwc`` pass.
    """
    from tvm import te

    assert params is not None
    epilogue = epilogue or Epilogue()
    n, ic, h, w = (int(d) for d in data_shape)
    oc, ic2, kh_, kw_ = (int(d) for d in weight_shape)
    if ic2 != ic:
        raise ValueError(f"weight has {ic2} input channels, data {ic} (groups are not supported)")
    sh, sw = _pair(strides)
    dh, dw = _pair(dilation)
    pads = _pads(padding)
    ic_bn, oc_bn, reg_c = params.ic_bn, params.oc_bn, params.reg_c
    oc_kbn = oc_bn * reg_c
    if ic % ic_bn or oc % oc_kbn:
        raise ValueError(f"channels {ic}->{oc} do not divide into blocks {ic_bn}/{oc_kbn}")
    oh = conv_out_size(h, kh_, sh, pads[0], pads[2], dh)
    ow = conv_out_size(w, kw_, sw, pads[1], pads[3], dw)
    # The conv is computed over a width rounded up to the register tile (``owp``); the data gets
    # the extra zero columns on the right and the epilogue writes only the ``ow`` valid ones.
    # ``flat``: over the flattened plane ``q = y * ow + x`` rounded up to ``qp`` (extra rows).
    owp = ow if params.flat else -(-ow // params.reg_n) * params.reg_n
    qp = -(-(oh * ow) // params.reg_n) * params.reg_n
    need_w = (owp - 1) * sw + (kw_ - 1) * dw + 1
    need_h = ((qp - 1) // ow * sh + (kh_ - 1) * dh + 1) if params.flat else 0
    extra_w = max(0, need_w - (w + pads[1] + pads[3]))
    extra_h = max(0, need_h - (h + pads[0] + pads[2]))
    pads = (pads[0], pads[1], pads[2] + extra_h, pads[3] + extra_w)
    if plain_input and ic_bn != ic:
        raise ValueError(f"an NCHW input needs one block of its {ic} channels, not {ic_bn}")
    kernel = te.placeholder((oc // oc_kbn, ic // ic_bn, kh_, kw_, ic_bn, oc_kbn), dtype, "kernel")
    if plain_input:
        data = te.placeholder((n, ic, h, w), dtype, name="data")
        dpad = pad_nchw_blocked(data, pads)
    else:
        data = te.placeholder((n, ic // ic_bn, h, w, ic_bn), dtype, name="data")
        dpad = pad_nchwc(data, pads)
    # Only non-trivial reduction axes: a 1x1 conv has no kh/kw loops at all.
    icc = te.reduce_axis((0, ic // ic_bn), "icc") if ic // ic_bn > 1 else None
    rkh = te.reduce_axis((0, kh_), "kh") if kh_ > 1 else None
    rkw = te.reduce_axis((0, kw_), "kw") if kw_ > 1 else None
    icb = te.reduce_axis((0, ic_bn), "icb") if ic_bn > 1 else None
    axes = [a for a in (icc, rkh, rkw, icb) if a is not None]

    def v(a: Any) -> Any:
        return 0 if a is None else a

    def conv_fn(b, c, y, x, k):
        return te.sum(
            dpad[b, v(icc), y * sh + v(rkh) * dh, x * sw + v(rkw) * dw, v(icb)]
            * kernel[c // reg_c, v(icc), v(rkh), v(rkw), v(icb), (c % reg_c) * oc_bn + k],
            axis=axes,
        )

    if params.flat:
        conv = te.compute(
            (n, oc // oc_bn, qp, oc_bn),
            lambda b, c, q, k: conv_fn(b, c, q // ow, q % ow, k),
            name="conv",
        )

        def acc(b, c, y, x, k):
            return conv[b, c, y * ow + x, k]
    else:
        conv = te.compute((n, oc // oc_bn, oh, owp, oc_bn), conv_fn, name="conv")

        def acc(b, c, y, x, k):
            return conv[b, c, y, x, k]

    out_shape = (n, oc // oc_bn, oh, ow, oc_bn)
    tensors = [data, kernel]
    epilogue.blocked_output(acc, out_shape, dtype, tensors)
    return tensors


def pad_nchw_blocked(data: Any, pads: tuple[int, int, int, int], name: str = "data_pad") -> Any:
    """An NCHW ``data`` as one zero-padded channel block ``(N, 1, H + pt + pb, W + pl + pr, C)``
    (the padded copy of :func:`pad_nchwc` that also blocks the input); without padding a
    blocked view of ``data`` (no copy: the conv reads NCHW)."""
    import tvm
    from tvm import te

    n, c, h, w = (int(d) for d in data.shape)
    pt, pl, pb, pr = pads

    class _View:  # dpad[b, 0, y, x, k] -> data[b, k, y, x]
        shape = (n, 1, h, w, c)

        def __getitem__(self, idx: Any) -> Any:
            b, _, y, x, k = idx
            return data[b, k, y, x]

    if not any(pads):
        return _View()

    def fn(i, j, y, x, k):
        cond = tvm.tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl)
        return tvm.tirx.if_then_else(
            cond, data[i, j * c + k, y - pt, x - pl], tvm.tirx.const(0.0, data.dtype)
        )

    return te.compute((n, 1, h + pt + pb, w + pl + pr, c), fn, name=name)


def schedule_pad(sch: Any, block: str = "data_pad") -> None:
    """Parallel over (n, c, h), vectorized over the channel block."""
    blk = sch.get_sblock(block)
    loops = sch.get_loops(blk)
    parallel(sch, sch.fuse(*loops[:3]))
    sch.vectorize(loops[-1])


def _has_block(sch: Any, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # no block of that name
        return False
    return True


def _split_icc(sch: Any, red: list[Any], ic_chunk: int) -> tuple[list[Any], list[Any]]:
    """Split the ``icc`` reduction loop (if any) into (outer, chunk); returns (outer, inner)."""
    if (
        red
        and sch.get(red[0]).loop_var.name == "icc"
        and 0 < ic_chunk < int(sch.get(red[0]).extent)
    ):
        icc_o, icc_i = sch.split(red[0], [None, ic_chunk])
        return [icc_o], [icc_i, *red[1:]]
    return [], red


def _schedule_flat(sch: Any, params: ConvParams) -> None:
    """The flattened-plane variant: ``parallel(n, oc_outer)`` / ``icc_outer`` / ``q_outer`` /
    reduction / tile, then the epilogue as its own parallel, vectorized pass."""
    conv = sch.get_sblock("conv")
    n, oc, q, ob, *red = sch.get_loops(conv)
    oc_o, oc_i = sch.split(oc, [None, params.reg_c])
    q_o, q_i = sch.split(q, [None, params.reg_n])
    if params.unroll_kw and len(red) == 4:
        red = [red[0], red[1], red[3], red[2]]
    outer_red, red = _split_icc(sch, red, params.ic_chunk)
    sch.reorder(n, oc_o, *outer_red, q_o, *red, oc_i, q_i, ob)
    par = sch.fuse(n, oc_o)
    parallel(sch, par)
    if params.unroll_kw and len(red) == 4:
        sch.unroll(red[-1])
    sch.unroll(oc_i)
    sch.unroll(q_i)
    sch.vectorize(ob)
    vector_init(sch, conv, (outer_red + red)[0])
    # The epilogue is a separate pass over the (small) plane: reverse_compute_at cannot invert
    # q = y * ow + x and would generate wrong loop bounds.
    out = sch.get_sblock("out")
    oloops = sch.get_loops(out)
    parallel(sch, sch.fuse(*oloops[:3]))
    sch.vectorize(oloops[-1])


def schedule_conv2d_nchwc(sch: Any, params: ConvParams, has_pad: bool) -> None:
    """Apply the register-tiled schedule (see the module docstring) to ``sch`` in place."""
    if params.flat:
        _schedule_flat(sch, params)
        if has_pad:
            schedule_pad(sch)
        return
    conv = sch.get_sblock("conv")
    loops = sch.get_loops(conv)
    n, oc, oh, ow, ob = loops[:5]
    red = loops[5:]
    oc_o, oc_i = sch.split(oc, [None, params.reg_c])
    ow_o, ow_i = sch.split(ow, [None, params.reg_n])
    kw_unrolled = params.unroll_kw and len(red) == 4
    if kw_unrolled:
        icc, kh, kw, icb = red
        red = [icc, kh, icb, kw]
    outer_red = []
    has_icc = bool(red) and sch.get(red[0]).loop_var.name == "icc"
    if has_icc and params.ic_chunk and int(sch.get(red[0]).extent) > params.ic_chunk:
        icc_o, icc_i = sch.split(red[0], [None, params.ic_chunk])
        outer_red, red = [icc_o], [icc_i, *red[1:]]
    ow_oo = None
    if outer_red and not params.oh_inner and 0 < params.ow_block < int(sch.get(ow_o).extent):
        ow_oo, ow_o = sch.split(ow_o, [None, params.ow_block])
    if params.oh_inner:
        sch.reorder(n, oc_o, *outer_red, oh, ow_o, *red, oc_i, ow_i, ob)
        parallel(sch, sch.fuse(n, oc_o))
    else:
        pre = [ow_oo] if ow_oo is not None else []
        sch.reorder(n, oc_o, oh, *pre, *outer_red, ow_o, *red, oc_i, ow_i, ob)
        parallel(sch, sch.fuse(n, oc_o, oh))
    if outer_red:
        red = outer_red + red
    schedule_register_tile(sch, conv, red, oc_i, ow_i, ob, kw_unrolled, first_init_loop=1)
    out = sch.get_sblock("out")
    if outer_red:
        sch.reverse_compute_at(out, sch.get_loops(conv)[0 if ow_oo is None else 1])
    elif params.oh_inner:
        sch.reverse_compute_at(out, sch.get_loops(conv)[1])
    else:
        sch.reverse_compute_at(out, ow_o)
    # the epilogue's own innermost loop (none of its own where every extent is 1: a 1-channel
    # output of one pixel, Silero VAD's last conv)
    shared = [sch.get(lp) for lp in sch.get_loops(conv)]
    own = [lp for lp in sch.get_loops(out) if not any(sch.get(lp).same_as(c) for c in shared)]
    if own and int(sch.get(own[-1]).extent) > 1:
        sch.vectorize(own[-1])
    if has_pad:
        schedule_pad(sch)


def schedule_register_tile(
    sch: Any,
    conv: Any,
    red: list[Any],
    oc_i: Any,
    ow_i: Any,
    ob: Any,
    kw_unrolled: bool,
    first_init_loop: int,
) -> None:
    """The register tile of the conv templates (direct and grouped): the ``oc_i x ow_i`` tile
    unrolled, the channel block ``ob`` vectorized, the reduction's innermost loop unrolled where
    the kernel width is, and the accumulators initialised by a vectorized block whose short loops
    (from ``first_init_loop`` on, extent <= 16) are unrolled."""
    if kw_unrolled:
        sch.unroll(red[-1])
    sch.unroll(oc_i)
    sch.unroll(ow_i)
    sch.vectorize(ob)
    if red:
        init = sch.decompose_reduction(conv, red[0])
        iloops = sch.get_loops(init)
        sch.vectorize(iloops[-1])
        for lp in iloops[first_init_loop:-1]:
            if int(sch.get(lp).extent) <= 16:
                sch.unroll(lp)


def uses_neon_kernel(target: Any, params: ConvParams, dtype: str, plain_input: bool) -> bool:
    """Whether :func:`conv2d_nchwc` for ``target`` is the hand-written NEON kernel of
    :mod:`.conv2d_neon` (an AArch64 target, fp32 blocks of 4) rather than the TE template."""
    from mcopt.targets.cpu.kernels.conv2d_neon import neon_conv_applies

    if target is None:
        return False
    return neon_conv_applies(_info(target).isa, params, dtype, plain_input)


def conv2d_nchwc(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    target: Any = None,
    params: ConvParams | None = None,
    epilogue: Epilogue | None = None,
    dtype: str = "float32",
    plain_input: bool = False,
) -> Any:
    """A scheduled ``tvm.tirx.PrimFunc`` computing the blocked conv2d with a fused epilogue.

    Arguments of the PrimFunc, in order: ``data (N, IC/ic_bn, H, W, ic_bn)``, ``kernel
    (OC/oc_kbn, IC/ic_bn, KH, KW, ic_bn, oc_kbn)``, ``bias (OC/oc_bn, oc_bn)`` if
    ``epilogue.bias``, ``residual`` (output shape) if ``epilogue.residual``, ``out (N, OC/oc_bn,
    OH, OW, oc_bn)``. ``params`` defaults to :func:`choose_conv_params` for ``target``. On an
    AArch64 target with blocks of 4 it is the NEON kernel (:func:`uses_neon_kernel`).
    ``plain_input``: ``data`` is NCHW ``(N, IC, H, W)`` (see :func:`conv2d_nchwc_te`).
    """
    from tvm import s_tir, te

    epilogue = epilogue or Epilogue()
    if params is None:
        params = choose_conv_params(data_shape, weight_shape, strides, padding, dilation, target)
    if uses_neon_kernel(target, params, dtype, plain_input) and epilogue.activation != "prelu":
        from mcopt.targets.cpu.kernels.conv2d_neon import conv2d_nchwc_neon

        cores = _info(target).cores
        return conv2d_nchwc_neon(
            data_shape, weight_shape, strides, padding, dilation, params, epilogue, cores
        )
    tensors = conv2d_nchwc_te(
        data_shape, weight_shape, strides, padding, dilation, params, epilogue, dtype, plain_input
    )
    func = te.create_prim_func(tensors)
    sch = s_tir.Schedule(func)
    schedule_conv2d_nchwc(sch, params, _has_block(sch, "data_pad"))
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
