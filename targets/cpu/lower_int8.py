"""Lowering of the planned int8 conv (``fused_qconv2d``): the blocked int8 kernels or plain ops.

``kernel="int8"`` runs :func:`~mcopt.targets.cpu.kernels.int8_conv_nchwc.int8_conv2d_nchwc`
(``int8_depthwise``: :func:`~mcopt.targets.cpu.kernels.int8_depthwise_nchwc.int8_depthwise_nchwc`)
on the blocked 8-bit input, with the node's whole tail (:class:`QEpilogue`) in the kernel; the
constants (packed weights, ``bias_eff``, multipliers) are computed here in numpy. ``plain`` (and
any shape a kernel does not build for) runs the NCHW ``qconv2d`` lowering followed by the tail as
Relax ops: the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcopt.ir.core import Node
from mcopt.ir.types import BlockedLayout
from mcopt.ops.quant import output_bounds, requant_multiplier, weight_scales
from mcopt.targets.cpu.kernels.int8_epilogue import QEpilogue
from mcopt.targets.cpu.kernels.int8_stem_vnni import monotone


def q_epilogue(node: Node) -> QEpilogue:
    """The :class:`QEpilogue` of a ``fused_qconv2d`` node."""
    at = node.attrs
    r = node.inputs[3] if len(node.inputs) > 3 else None
    return QEpilogue(
        base_dtype=str(at["out_dtype"]),
        base_bounds=output_bounds(at),
        base_zp=int(at["out_zero_point"]),
        residual=None if r is None else str(r.dtype),
        r_scale=float(at["residual_scale"]),
        r_zp=int(at["residual_zero_point"]),
        post_bounds=(float(at["post_min"]), float(at["post_max"])),
        post_act=str(at["post_act"]),
        post_alpha=float(at["post_alpha"]),
        q_dtype=None if at["q_dtype"] == "none" else str(at["q_dtype"]),
        q_scale=float(at["q_scale"]),
        q_zp=int(at["q_zero_point"]),
    )


def _consts(node: Node, ocp: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    w_v, b_v = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None
    assert w_v is not None and w_v.const is not None
    w = np.asarray(w_v.const, np.int8)
    b = None if b_v is None else np.asarray(b_v.const, np.int32)
    oc = w.shape[0]
    mult = np.zeros(ocp, np.float32)
    mult[:oc] = requant_multiplier(node.attrs, weight_scales(w_v.type), oc)
    return w, b, mult


def lower_fused_qconv(vals: Any, node: Node, target: Any) -> None:
    """``fused_qconv2d`` on the blocked int8 kernel its ``kernel`` attribute names."""
    from mcopt.targets.cpu.kernels import int8_conv
    from mcopt.targets.cpu.kernels.int8_conv_nchwc import (
        choose_params,
        grouped_window_weight,
        int8_conv2d_nchwc,
        pack_int8_window_weight,
    )
    from mcopt.targets.cpu.kernels.int8_intrin import ISAS, choose_isa, narrow_isa
    from mcopt.targets.cpu.kernels.int8_pointwise_sdot import sdot_pointwise_applies
    from mcopt.targets.cpu.kernels.relax_ops import call_kernel, view_params
    from mcopt.targets.relax.lower_quant import _cores, _is_7bit

    at = node.attrs
    lout = node.output.type.layout
    assert lout is not None
    x_v = node.inputs[0]
    assert x_v is not None
    bb = vals.ctx.bb
    plain_in = (
        x_v.type.layout is None
        and node.attrs["kernel"] != "int8_depthwise"
        and int(at["groups"]) == 1
    )
    in_quant = None
    if plain_in:  # the image: the kernel's padded copy reads NCHW and blocks it (no to_nchwc)
        lx = BlockedLayout(1, x_v.shape[1], x_v.shape[1])
        q = vals.deferred.get(id(x_v))
        if q is not None and id(x_v) not in vals.plain:  # and quantizes it (no quantize pass)
            x = vals.plain_of(q.inputs[0])
            in_quant = (float(q.attrs["scale"][0]), int(q.attrs["zero_point"][0]))
        else:
            x = vals.plain_of(x_v)
    else:
        x, lx = vals.blocked_of(x_v)
    ep = q_epilogue(node)
    w, b, mult = _consts(node, lout.padded)
    isa = choose_isa(target, _is_7bit(w))
    isa = narrow_isa(isa, lout.bn, target) or isa  # a narrower block: few output channels
    lanes = ISAS[isa][0] if isa else 8
    if lanes != lout.bn:
        raise ValueError(f"the int8 kernel writes blocks of {lanes}, the plan wants {lout}")
    oc, _, kh, kw = w.shape
    occ = lout.padded // lanes
    b_pad = np.zeros(lout.padded, np.int32)
    if b is not None:
        b_pad[:oc] = b
    in_dtype = str(x_v.dtype)
    shift = int8_conv.zero_shift(isa, in_dtype)
    x_zp = int(at["x_zero_point"])
    r_v = node.inputs[3] if len(node.inputs) > 3 else None
    res = None if r_v is None else vals.blocked_of(r_v, lout)[0]
    n, _, h, wd = x_v.shape
    _, _, oh, ow = node.output.shape
    cores = _cores(target)
    member = vals.into.get(id(node.output))  # written into its concat's buffer (no copy)
    into = None if member is None else (vals.dest.get(id(member[0])), member[2], member[1])
    if node.attrs["kernel"] == "int8_depthwise":
        from mcopt.targets.cpu.kernels.int8_depthwise_nchwc import (
            int8_depthwise_nchwc,
            pack_int8_depthwise_weight,
        )

        if lx != lout:
            x, lx = vals.blocked_of(x_v, lout)
        wp = np.zeros((lout.padded, 1, kh, kw), np.int8)
        wp[:oc] = w
        func = int8_depthwise_nchwc(
            lx.blocked_shape(tuple(x_v.shape)), (kh, kw), at["strides"], at["pads"],
            at["dilations"], in_dtype=in_dtype, x_zero_point=x_zp, epilogue=ep, cores=cores,
            isa=isa,
        )  # fmt: skip
        be = int8_conv.conv_bias_eff(wp, b_pad, x_zp, lout.padded).reshape(occ, lanes)
        args = [x, vals.ctx.const(pack_int8_depthwise_weight(wp, lanes, lout.padded))]
        args += [vals.ctx.const(be), vals.ctx.const(mult.reshape(occ, lanes))]
        args += [] if res is None else [res]
        out_shape = lout.blocked_shape(tuple(node.output.shape))
        y = call_kernel(bb, func, "qdwconv2d_nchwc", args, out_shape, ep.out_dtype, into)
        _set_result(vals, node, y, lout, member)
        return
    window = node.attrs["kernel"] == "int8_window"
    groups = int(at["groups"])
    in_shape = tuple(x_v.shape) if plain_in else lx.blocked_shape(tuple(x_v.shape))
    stem_in = plain_in and (in_quant is not None or in_dtype == "uint8")
    stem_in = stem_in or (not plain_in and in_dtype == "uint8" and lx.bn in (8, 16))
    if window and occ == 1 and stem_in:
        from mcopt.targets.cpu.kernels.int8_stem_vnni import stem_applies

        for pool_node, size in _pool_options(
            _pool_reader(vals, node) if (mult >= 0).all() else None
        ):
            if stem_applies(
                target, oc, lanes, (h, wd), (kh, kw), at["strides"], at["pads"],
                at["dilations"], groups, ep, None if plain_in else lx.bn, size,
            ):  # fmt: skip
                _lower_stem(
                    vals, node, x, in_shape, w, b_pad, x_zp, mult, ep, in_quant, lout, pool_node
                )
                return
    gwin = None
    if groups > 1:  # each output block reduces over a window of blocks holding its groups
        wp, gwin = grouped_window_weight(w, groups, lx.padded // lx.bn, lx.bn, lanes)
    elif window:  # the logical weight, 4 kernel columns per dot product
        wp = np.zeros((lout.padded, w.shape[1], kh, kw), np.int8)
        wp[:oc] = w
    else:
        wp = np.zeros((lout.padded, lx.padded, kh, kw), np.int8)
        wp[:oc, : w.shape[1]] = w
    flat = not window and (
        kh == kw == 1
        and tuple(at["strides"]) == (1, 1)
        and not any(at["pads"])
        and lx.bn % 4 == 0
        and not shift
    )
    flat = flat or (
        not plain_in
        and not window
        and sdot_pointwise_applies(
            isa, lx.bn, (kh, kw), at["strides"], at["pads"], oh * ow, gwin is not None
        )
    )
    pool = None
    if not flat and gwin is None and res is None and isa != "sdot":
        pool = _pool_reader(vals, node)
    for pool_node, size in _pool_options(pool):
        params = choose_params(
            oh * ow if flat else ow // size[1] * size[1], occ if gwin is None else 1, isa, lanes,
            oh, cores,
        )  # fmt: skip
        try:
            func, flat = int8_conv2d_nchwc(
                in_shape, wp.shape, at["strides"], at["pads"], at["dilations"],
                in_dtype=in_dtype, x_zero_point=x_zp, epilogue=ep, params=params, window=window,
                group_window=gwin, cores=cores, in_quant=in_quant, pool=size,
                pool_acc=monotone(ep) and bool((mult >= 0).all()),
            )  # fmt: skip
        except ValueError:
            if pool_node is None:
                raise
            continue  # the conv alone, the pool on its own
        pool = pool_node
        break
    be = int8_conv.conv_bias_eff(wp, b_pad, x_zp + shift, lout.padded).reshape(occ, lanes)
    ctx = vals.ctx
    out_shape = (n, occ, oh, ow, lanes)
    if pool is not None:  # the pool's output (a concat member is the pool, not this conv)
        out_shape = lout.blocked_shape(tuple(pool.output.shape))
        into = None
    if flat:  # the kernel's flattened-plane buffers as views of the blocked tensors (no reshape)
        views = {"x": (in_shape, 0), "out": (out_shape, 0)}
        if res is not None:
            views["residual"] = (out_shape, 0)
        if into is not None:  # a view of the concat's buffer
            views["out"] = ((n, into[1], oh, ow, lanes), into[2] * oh * ow * lanes)
        func = view_params(func, views)
    pack = pack_int8_window_weight if window else int8_conv.pack_int8_conv_weight
    args = [x, ctx.const(pack(wp, lanes)), ctx.const(be)]
    args += [ctx.const(mult.reshape(occ, lanes))] + ([] if res is None else [res])
    y = call_kernel(bb, func, "qconv2d_nchwc", args, out_shape, ep.out_dtype, into, viewed=flat)
    if pool is not None:
        _set_pooled(vals, pool, y, lout)
        return
    _set_result(vals, node, y, lout, member if into is not None else None)


def _set_result(
    vals: Any, node: Node, y: Any, lout: BlockedLayout, member: tuple[Node, int, int] | None
) -> None:
    """``y`` is ``node``'s blocked output, or (``member``: its in-place concat) the concat's
    buffer with ``node``'s blocks written."""
    from mcopt.targets.cpu.lower_planned import _check_shape

    if member is not None:
        vals.dest[id(member[0])] = y
        vals.written.add(id(node.output))
        return
    _check_shape(node, y, lout)
    vals.set_blocked(node.output, y, lout)


def _pool_options(pool: Node | None) -> list[tuple[Node | None, tuple[int, int]]]:
    """What to try, in order: with ``pool`` fused (its kernel size), then without."""
    options: list[tuple[Node | None, tuple[int, int]]] = [(None, (1, 1))]
    if pool is not None:
        k = tuple(int(v) for v in pool.attrs["kernel"])
        options.insert(0, (pool, (k[0], k[1])))
    return options


def _set_pooled(vals: Any, pool: Node, y: Any, lout: BlockedLayout) -> None:
    """``y`` is ``pool``'s output, computed by the conv's kernel: the pool node is skipped."""
    vals.set_blocked(pool.output, y, lout)
    vals.deferred[id(pool.output)] = pool
    vals.chose("int8 conv: max pool in the kernel")


def _pool_reader(vals: Any, node: Node) -> Node | None:
    """The ``max_pool`` that alone reads ``node``'s output where a conv kernel can compute it
    too: kernel = stride, no padding or dilation, floor mode, the conv's layout. (The stem form
    pools the accumulators, so it also needs multipliers >= 0.)"""
    y = node.output
    if len(y.uses) != 1 or any(y is o for o in vals.ctx.graph.outputs):
        return None
    pool, i = y.uses[0]
    if pool.op != "max_pool" or i != 0 or len(pool.outputs) != 1:
        return None
    at = pool.attrs
    k = tuple(int(v) for v in at["kernel"])
    if (
        len(k) != 2
        or tuple(int(v) for v in at["strides"]) != k
        or any(int(v) for v in at.get("pads", (0, 0, 0, 0)))
        or tuple(int(v) for v in at.get("dilations", (1, 1))) != (1, 1)
        or pool.output.type.layout != y.type.layout
        or tuple(pool.output.shape[2:]) != (y.shape[2] // k[0], y.shape[3] // k[1])
    ):
        return None
    return pool


def _lower_stem(
    vals: Any, node: Node, x: Any, in_shape: tuple[int, ...], w: np.ndarray, b_pad: np.ndarray,
    x_zp: int, mult: np.ndarray, ep: QEpilogue, in_quant: tuple[float, int] | None,
    lout: BlockedLayout, pool: Node | None = None,
) -> None:  # fmt: skip
    """The pixels-on-lanes form (:mod:`.kernels.int8_stem_vnni`) of a few-channel conv (the plain
    image or a blocked u8 input ``in_shape``): one output block of ``lout.bn`` channels. With
    ``pool`` (:func:`_pool_reader`) the kernel writes that max pool's output and the pool
    node is not lowered on its own (``vals.deferred``)."""
    from mcopt.targets.cpu.kernels import int8_conv
    from mcopt.targets.cpu.kernels.int8_stem_vnni import (
        int8_stem_vnni,
        pack_stem_weight,
        stem_tables,
    )
    from mcopt.targets.cpu.kernels.relax_ops import call_kernel
    from mcopt.targets.cpu.lower_planned import _check_shape

    at = node.attrs
    x_v = node.inputs[0]
    assert x_v is not None
    oc, _, kh, kw = w.shape
    lanes = lout.bn
    func, geom = int8_stem_vnni(
        in_shape, oc, lanes, (kh, kw), at["strides"], at["pads"], in_channels=w.shape[1],
        in_dtype=str(x_v.dtype), x_zero_point=x_zp, epilogue=ep, in_quant=in_quant,
        pool=(1, 1) if pool is None else tuple(pool.attrs["kernel"]),
    )  # fmt: skip
    wp = np.zeros((lanes, *w.shape[1:]), np.int8)
    wp[:oc] = w
    be = int8_conv.conv_bias_eff(wp, b_pad, x_zp, lanes)
    ctx = vals.ctx
    args = [x, ctx.const(pack_stem_weight(w)), ctx.const(be), ctx.const(mult)]
    args += [ctx.const(t) for t in stem_tables(geom)]
    out_v = node.output if pool is None else pool.output
    out_shape = lout.blocked_shape(tuple(out_v.shape))
    name = "qconv2d_stem" if pool is None else "qconv2d_stem_maxpool"
    y = call_kernel(ctx.bb, func, name, args, out_shape, ep.out_dtype)
    vals.chose("int8 conv: pixels on lanes")
    if pool is not None:
        _set_pooled(vals, pool, y, lout)
        return
    _check_shape(node, y, lout)
    vals.set_blocked(node.output, y, lout)


def lower_fused_qconv_plain(vals: Any, node: Node) -> None:
    """``fused_qconv2d`` on NCHW tensors: its plain lowering (``qconv2d`` + the tail as Relax ops)."""
    from mcopt.targets.relax.lower import LOWERINGS

    args = [vals.plain_of(v) for v in node.inputs]
    vals.set_plain(node.output, vals.ctx.emit(LOWERINGS["fused_qconv2d"](vals.ctx, node, args)))


__all__ = ["lower_fused_qconv", "lower_fused_qconv_plain", "q_epilogue"]
