"""Relax integration: emit the scheduled kernels into a module being built with a BlockBuilder.

Each ``emit_*`` packs the (constant) weights in numpy, builds the scheduled PrimFunc for the static
shapes, adds it to the module with ``bb.add_func`` and emits ``relax.call_tir``. The PrimFuncs
carry ``tirx.is_scheduled`` (DLight, MetaSchedule's ``relax_integration`` and mcopt's
``cpu_schedule_pass`` leave them alone) and ``op_pattern = kOpaque`` (8): ``FuseOps`` then never
fuses them with a neighbour, which would send them through ``FuseTIR`` and lose the schedule.
The epilogue (bias, residual add, activation) is already inside the kernel.

Activations between blocked convs stay in the blocked layout: convert once at the graph input
(:func:`emit_to_blocked`) and once at the output (:func:`emit_from_blocked`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from mcopt.targets.cpu.kernels import layout
from mcopt.targets.cpu.kernels.conv2d import _pads, _pair, conv2d_nchwc, conv_out_size
from mcopt.targets.cpu.kernels.conv2d_narrow import (
    conv2d_narrow,
    conv2d_taps,
    narrow_conv_applies,
    pack_taps_weight,
    taps_conv_applies,
)
from mcopt.targets.cpu.kernels.dense import choose_dense_params, dense_packed
from mcopt.targets.cpu.kernels.depthwise import choose_depthwise_params, depthwise_conv2d_nchwc
from mcopt.targets.cpu.kernels.epilogue import Epilogue
from mcopt.targets.cpu.kernels.params import ConvParams, _info, choose_conv_params

#: ``relay.op.OpPattern.OPAQUE``: FuseOps never fuses such a function
OPAQUE = 8


def finalize_kernel(func: Any) -> Any:
    """Mark a kernel PrimFunc so that no later pass fuses it (``op_pattern`` opaque) and, unless it
    is a tunable template (scheduled later by ``template_schedule_pass`` or from a tuning
    database), so that no later pass re-schedules it."""
    from mcopt.targets.tune.space import template_of

    func = func.with_attr("op_pattern", OPAQUE)
    if template_of(func) is not None:
        return func
    return func.with_attr("tirx.is_scheduled", True)


def _shape(expr: Any) -> tuple[int, ...]:
    ty = expr.ty
    if ty.shape is None:
        raise ValueError("the kernels need static shapes")
    return tuple(int(d) for d in ty.shape)


def _add_kernel(bb: Any, func: Any, name: str) -> Any:
    """Add ``func`` to the module once: layers with identical shapes, parameters and epilogue
    (ResNet's repeated blocks) share one PrimFunc, which keeps compile time and code size down."""
    import tvm_ffi

    func = finalize_kernel(func)
    table = getattr(bb, "_mcopt_kernels", None)
    if table is None:  # structural hash -> [(PrimFunc, GlobalVar)], kept on the builder itself
        table = {}
        bb._mcopt_kernels = table
    key = tvm_ffi.structural_hash(func)
    for cand, gv in table.get(key, []):
        if tvm_ffi.structural_equal(cand, func):
            return gv
    fname = bb.get_unique_name(name)
    gv = bb.add_func(func.with_attr("global_symbol", fname), fname)
    table.setdefault(key, []).append((func, gv))
    return gv


#: where a kernel writes into a bigger blocked buffer instead of its own output: ``(dest, total,
#: offset)``, the buffer so far (None: the first writer allocates it), its channel blocks and the
#: first block this kernel writes (see :func:`call_kernel`)
Into = tuple[Any, int, int]


def call_kernel(
    bb: Any,
    func: Any,
    name: str,
    args: list[Any],
    out_shape: Sequence[int],
    dtype: str,
    into: Into | None = None,
    viewed: bool = False,
) -> Any:
    """Add the kernel PrimFunc ``func`` to the module (once per distinct kernel, marked opaque and
    scheduled: :func:`finalize_kernel`) and emit a ``call_tir`` to it. Every lowering that emits
    one of mcopt's own kernels goes through here.

    ``into = (dest, total, offset)``: the kernel (its blocked ``(1, OCB, H, W, bn)`` output the
    last parameter) writes channel blocks ``[offset, offset + OCB)`` of a ``(1, total, H, W,
    bn)`` buffer instead (:func:`write_into`); the result is that buffer: a new one (its other
    blocks unwritten) when ``dest`` is None, else ``dest`` updated in place
    (``call_tir_inplace``). A channel concat of kernel outputs then costs no copy. ``viewed``:
    ``func``'s output parameter already is that view (:func:`view_params`)."""
    from tvm import relax

    if into is not None:
        dest, total, offset = into
        if not viewed:
            func = write_into(func, total, offset)
        gv = _add_kernel(bb, func, name)
        n, _, *rest = (int(d) for d in out_shape)
        out_ty = relax.TensorType([n, int(total), *rest], dtype)
        if dest is None:
            return bb.emit(relax.call_tir(gv, args, out_ty), name_hint=name)
        call = relax.call_tir_inplace(gv, [*args, dest], len(args), out_ty)
        return bb.emit(call, name_hint=name)
    gv = _add_kernel(bb, func, name)
    out_ty = relax.TensorType([int(d) for d in out_shape], dtype)
    return bb.emit(relax.call_tir(gv, args, out_ty), name_hint=name)


def write_into(func: Any, total: int, offset: int) -> Any:
    """``func`` (a scheduled PrimFunc whose last parameter is its blocked output ``(1, OCB, H, W,
    bn)``) writing blocks ``[offset, offset + OCB)`` of a ``(1, total, H, W, bn)`` parameter
    instead: the output becomes a view (``T.decl_buffer`` at element offset ``offset * H * W *
    bn``; with batch 1 the blocks of a channel range are contiguous) of the bigger buffer. Done
    on the TVMScript text (the signature and one declaration), so the body is untouched."""
    out = func.params[-1]
    shape = [int(d) for d in out.shape]
    if len(shape) != 5 or shape[0] != 1 or not 0 <= offset <= total - shape[1]:
        raise ValueError(f"cannot write a {shape} output at block {offset} of {total}")
    plane = shape[2] * shape[3] * shape[4]
    return view_params(func, {str(out.name): ((1, int(total), *shape[2:]), int(offset) * plane)})


def view_params(func: Any, params: dict[str, tuple[Sequence[int], int]]) -> Any:
    """``func`` with each parameter named in ``params`` (``{name: (shape, element offset)}``)
    taking a tensor of that shape instead, the body reading its old buffer as a view of it
    (``T.decl_buffer`` on the new parameter's data at the offset): e.g. the flat 1x1 int8 conv,
    written over ``(N, C, H*W, bn)``, called on the blocked ``(N, C, H, W, bn)`` tensors
    themselves (a reshape in Relax is a VM call of its own). Done on the TVMScript text (the
    signature and one declaration per parameter), so the body is untouched."""
    from mcopt.targets.cpu.kernels.tvmscript import parse

    text = func.script()
    decls = []
    for p in func.params:
        name = str(p.name)
        if name not in params:
            continue
        full, offset = params[name]
        dtype, shape = str(p.dtype), [int(d) for d in p.shape]
        if int(np.prod(full)) < int(offset) + int(np.prod(shape)):
            raise ValueError(f"parameter {name} {shape} at {offset} does not fit in {list(full)}")
        sig = f'{name}: T.Buffer(({", ".join(map(str, shape))}), "{dtype}")'
        if text.count(sig) != 1:
            raise ValueError(f"parameter {sig!r} not found once in the kernel's script")
        new_sig = f'{name}_full: T.Buffer(({", ".join(str(int(d)) for d in full)}), "{dtype}")'
        text = text.replace(sig, new_sig)
        decls.append(
            f'    {name} = T.decl_buffer(({", ".join(map(str, shape))}), "{dtype}", '
            f"data={name}_full.data, elem_offset={int(offset)})"
        )
    lines = text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("def ")) + 1
    while lines[at].strip().startswith("T.func_attr"):
        at += 1
    lines[at:at] = decls
    return parse("\n".join(lines))


_call = call_kernel  # the name older lowerings import


def emit_copy_into(bb: Any, x: Any, into: Into) -> Any:
    """Copy the blocked ``x (1, CB, H, W, bn)`` into blocks ``[offset, offset + CB)`` of a bigger
    buffer (``into``, see :func:`call_kernel`): the member of an in-place channel concat that no
    kernel wrote there itself."""
    shape = _shape(x)
    dtype = str(x.ty.dtype)
    return call_kernel(bb, layout.copy_nchwc(shape, dtype), "copy_nchwc", [x], shape, dtype, into)


def emit_to_blocked(bb: Any, x: Any, bn: int, padded: int | None = None) -> Any:
    """``NCHW -> NCHW[bn]c`` (for the graph input); ``padded``: channels rounded up (zeros)."""
    n, c, h, w = _shape(x)
    cp = int(padded or c)
    dtype = str(x.ty.dtype)
    return call_kernel(
        bb,
        layout.nchw_to_nchwc((n, c, h, w), bn, dtype, cp),
        "to_nchwc",
        [x],
        (n, cp // bn, h, w, bn),
        dtype,
    )


def emit_from_blocked(bb: Any, x: Any, channels: int | None = None) -> Any:
    """``NCHW[bn]c -> NCHW`` (for the graph output); ``channels``: the logical channel count
    when the blocked tensor is zero-padded (the padding is dropped)."""
    n, cc, h, w, bn = _shape(x)
    c = int(channels or cc * bn)
    dtype = str(x.ty.dtype)
    return call_kernel(
        bb,
        layout.nchwc_to_nchw((n, c, h, w), bn, dtype, cc * bn),
        "from_nchwc",
        [x],
        (n, c, h, w),
        dtype,
    )


def emit_concat_channels(
    bb: Any, xs: Sequence[Any], channels: Sequence[int], out_bn: int, padded: int
) -> Any:
    """The channel concat of blocked tensors with ``channels[i]`` logical channels each (inputs
    may be zero-padded and in different blocks) into a blocked tensor of ``padded`` channels in
    blocks of ``out_bn``, staying blocked."""
    shapes = [_shape(x) for x in xs]
    n, _, h, w, _ = shapes[0]
    bn = int(out_bn)
    dtype = str(xs[0].ty.dtype)
    func = layout.concat_shuffle_nchwc(shapes, channels, bn, padded, dtype)
    if func is None:  # an output block drawing on too many input blocks: a gather per element
        func = layout.concat_nchwc(shapes, channels, bn, padded, dtype)
    return call_kernel(bb, func, "concat_nchwc", list(xs), (n, padded // bn, h, w, bn), dtype)


def emit_permute_channels(bb: Any, x: Any, perm: Sequence[int]) -> Any:
    """``y[:, c] = x[:, perm[c]]`` on a blocked ``x`` (a channel shuffle), staying blocked: vector
    shuffles with the permutation built in (:func:`.layout.shuffle_channels_nchwc`), else a
    gather through the permutation as an input."""
    from tvm import relax

    n, cc, h, w, bn = _shape(x)
    dtype = str(x.ty.dtype)
    func = layout.shuffle_channels_nchwc((n, cc * bn, h, w), bn, perm, dtype)
    if func is not None:  # the permutation built into vector shuffles
        return call_kernel(bb, func, "shuffle_nchwc", [x], (n, cc, h, w, bn), dtype)
    func = layout.permute_channels_nchwc((n, cc * bn, h, w), bn, perm, dtype)
    p = relax.const(np.asarray(perm, dtype=np.int32))
    return call_kernel(bb, func, "shuffle_nchwc", [x, p], (n, cc, h, w, bn), dtype)


def emit_conv2d(
    bb: Any,
    x: Any,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    activation: str | None = None,
    clip: tuple[float, float] = (0.0, 6.0),
    residual: Any = None,
    slope: np.ndarray | None = None,
    target: Any = None,
    params: ConvParams | None = None,
    tunable: bool = True,
    into: Into | None = None,
    plain_input: bool = False,
) -> Any:
    """``act(conv2d(x, weight) + bias (+ residual))`` on a blocked ``x (N, IC/bn, H, W, bn)``
    (``plain_input``: on an NCHW ``x`` as one block of all its channels, the RGB image; no
    ``to_nchwc`` pass, see :func:`.conv2d.conv2d_nchwc_te`).

    ``weight`` is the logical OIHW numpy array (batch norm already folded in); the result is
    blocked ``(N, OC/oc_bn, OH, OW, oc_bn)`` with ``oc_bn`` from :func:`choose_conv_params`
    (read it from the result's shape). ``residual`` must have the result's blocked shape.

    ``tunable`` (default) emits the conv as an unscheduled template task
    (:func:`mcopt.targets.tune.space.template_conv_workload`): the build pipeline schedules it
    with the analytic parameters, or a tuning database replaces that schedule with a tuned one;
    ``tunable=False`` emits the pre-scheduled kernel (also with ``into``: the kernel writes into
    a bigger buffer, see :func:`call_kernel`).
    """
    from tvm import relax

    if plain_input:
        n, icc, h, w = _shape(x)
        icc, ic_bn = 1, icc
    else:
        n, icc, h, w, ic_bn = _shape(x)
    dtype = str(x.ty.dtype)
    oc, ic, kh, kw = weight.shape
    if ic != icc * ic_bn:
        raise ValueError(
            f"weight {weight.shape} does not match blocked input {(n, icc, h, w, ic_bn)}"
        )
    data_shape = (n, ic, h, w)
    ep = Epilogue(bias is not None, residual is not None, activation, *clip)
    lanes = _info(target).lanes
    if params is None and into is None:
        if not plain_input and narrow_conv_applies(oc, ic, kh, kw, ic_bn, lanes, dtype):
            return _emit_narrow_conv2d(
                bb, x, weight, bias, residual, ep, strides, padding, dilation, slope=slope
            )
        if taps_conv_applies(oc, ic, kw, _pair(dilation)[1], lanes, dtype):
            return _emit_narrow_conv2d(
                bb, x, weight, bias, residual, ep, strides, padding, dilation,
                taps=lanes, plain_input=plain_input, slope=slope,
            )  # fmt: skip
    if params is None:
        params = choose_conv_params(data_shape, weight.shape, strides, padding, dilation, target)
    if params.ic_bn != ic_bn:
        params = dataclasses.replace(params, ic_bn=ic_bn)
    if tunable and into is None and not plain_input:
        from mcopt.targets.tune.space import template_conv_workload

        func = template_conv_workload(
            data_shape, weight.shape, strides, padding, dilation, target, params, ep, dtype
        )
    else:
        func = conv2d_nchwc(
            data_shape, weight.shape, strides, padding, dilation, target, params, ep, dtype,
            plain_input,
        )  # fmt: skip
    args = [x, relax.const(layout.pack_conv_weight(weight.astype(dtype), ic_bn, params.oc_kbn))]
    if bias is not None:
        args.append(relax.const(layout.pack_bias(bias.astype(dtype), params.oc_bn)))
    if residual is not None:
        args.append(residual)
    if slope is not None:
        args.append(relax.const(layout.pack_bias(slope.astype(dtype), params.oc_bn)))
    pads, (sh, sw), (dh, dw) = _pads(padding), _pair(strides), _pair(dilation)
    oh = conv_out_size(h, kh, sh, pads[0], pads[2], dh)
    ow = conv_out_size(w, kw, sw, pads[1], pads[3], dw)
    return call_kernel(
        bb, func, "conv2d_nchwc", args, (n, oc // params.oc_bn, oh, ow, params.oc_bn), dtype, into
    )


def _emit_narrow_conv2d(
    bb: Any,
    x: Any,
    weight: np.ndarray,
    bias: np.ndarray | None,
    residual: Any,
    ep: Epilogue,
    strides: int | Sequence[int],
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
    taps: int = 0,
    plain_input: bool = False,
    slope: np.ndarray | None = None,
) -> Any:
    """:func:`emit_conv2d` on the few-output-channel kernels (:mod:`.conv2d_narrow`): the input
    channel block on the lanes, or (``taps``: the lanes) the kernel's taps of a one-channel
    signal. The result is one block of all ``OC`` channels, ``(N, 1, OH, OW, OC)``."""
    from tvm import relax

    shape = _shape(x)
    n, h, w = shape[0], shape[2], shape[3]
    ic_bn = 1 if plain_input else shape[4]
    icc = shape[1] if not plain_input else 1
    dtype = str(x.ty.dtype)
    oc, ic, kh, kw = weight.shape
    if taps:
        func = conv2d_taps(
            (n, ic, h, w), weight.shape, taps, strides, padding, dilation, ep, dtype, plain_input
        )
        packed = pack_taps_weight(weight.astype(dtype), taps)
    else:
        func = conv2d_narrow(
            (n, ic, h, w), weight.shape, ic_bn, strides, padding, dilation, ep, dtype
        )
        packed = weight.astype(dtype).reshape(oc, icc, ic_bn, kh, kw).transpose(0, 1, 3, 4, 2)
    args = [x, relax.const(np.ascontiguousarray(packed))]
    if bias is not None:
        args.append(relax.const(bias.astype(dtype).reshape(1, oc)))
    if residual is not None:
        args.append(residual)
    if slope is not None:
        args.append(relax.const(slope.astype(dtype).reshape(1, oc)))
    pads, (sh, sw), (dh, dw) = _pads(padding), _pair(strides), _pair(dilation)
    oh = conv_out_size(h, kh, sh, pads[0], pads[2], dh)
    ow = conv_out_size(w, kw, sw, pads[1], pads[3], dw)
    name = "conv2d_taps" if taps else "conv2d_narrow"
    return call_kernel(bb, func, name, args, (n, 1, oh, ow, oc), dtype, None)


def emit_winograd_conv2d(
    bb: Any,
    x: Any,
    weight: np.ndarray,
    bias: np.ndarray | None,
    m: int,
    *,
    padding: int | Sequence[int] = 1,
    activation: str | None = None,
    clip: tuple[float, float] = (0.0, 6.0),
    residual: Any = None,
    into: Into | None = None,
    slope: np.ndarray | None = None,
) -> Any:
    """``act(conv3x3(x, weight) + bias (+ residual))`` by Winograd F(m x m, 3 x 3) on a blocked
    ``x (N, C/bn, H, W, bn)`` (:mod:`.winograd_nchwc`); the result is blocked with the same
    ``bn``. ``weight`` is the logical OIHW 3x3 numpy array (C and O multiples of ``bn``).
    ``into``: write into a bigger buffer (:func:`call_kernel`)."""
    from tvm import relax

    from mcopt.targets.cpu.kernels.winograd_nchwc import pack_weight, winograd_conv2d_nchwc

    n, cb, h, w, bn = _shape(x)
    dtype = str(x.ty.dtype)
    o = int(weight.shape[0])
    pads = _pads(padding)
    ep = Epilogue(bias is not None, residual is not None, activation, *clip)
    func, plan = winograd_conv2d_nchwc((n, cb * bn, h, w), o, m, pads, ep, bn)
    args = [x, relax.const(pack_weight(weight, m, plan.rv, bn))]
    if bias is not None:
        args.append(relax.const(layout.pack_bias(bias.astype(dtype), bn)))
    if residual is not None:
        args.append(residual)
    if slope is not None:
        args.append(relax.const(layout.pack_bias(slope.astype(dtype), bn)))
    return call_kernel(
        bb, func, f"winograd{m}_nchwc", args, (n, o // bn, plan.oh, plan.ow, bn), dtype, into
    )


def emit_depthwise_conv2d(
    bb: Any,
    x: Any,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    activation: str | None = None,
    clip: tuple[float, float] = (0.0, 6.0),
    residual: Any = None,
    target: Any = None,
    slope: np.ndarray | None = None,
    into: Into | None = None,
) -> Any:
    """Depthwise conv (``weight (C, 1, KH, KW)``) on a blocked ``x``; the result keeps ``x``'s
    block. ``into``: write into a bigger buffer (:func:`call_kernel`)."""
    from tvm import relax

    n, cc, h, w, bn = _shape(x)
    dtype = str(x.ty.dtype)
    c, _, kh, kw = weight.shape
    data_shape = (n, cc * bn, h, w)
    _, reg_n = choose_depthwise_params(data_shape, (kh, kw), strides, padding, dilation, target)
    ep = Epilogue(bias is not None, residual is not None, activation, *clip)
    func = depthwise_conv2d_nchwc(
        data_shape,
        (kh, kw),
        strides,
        padding,
        dilation,
        target,
        ep,
        bn=bn,
        reg_n=reg_n,
        dtype=dtype,
    )
    args = [x, relax.const(layout.pack_depthwise_weight(weight.astype(dtype), bn))]
    if bias is not None:
        args.append(relax.const(layout.pack_bias(bias.astype(dtype), bn)))
    if residual is not None:
        args.append(residual)
    if slope is not None:
        args.append(relax.const(layout.pack_bias(slope.astype(dtype), bn)))
    pads, (sh, sw), (dh, dw) = _pads(padding), _pair(strides), _pair(dilation)
    oh = conv_out_size(h, kh, sh, pads[0], pads[2], dh)
    ow = conv_out_size(w, kw, sw, pads[1], pads[3], dw)
    return call_kernel(bb, func, "dwconv2d_nchwc", args, (n, cc, oh, ow, bn), dtype, into)


def emit_dense(
    bb: Any,
    x: Any,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    activation: str | None = None,
    clip: tuple[float, float] = (0.0, 6.0),
    residual: Any = None,
    target: Any = None,
    slope: np.ndarray | None = None,
) -> Any:
    """``act(x @ weight.T + bias (+ residual))`` for ``x (M, K)``, ``weight (N, K)``."""
    from tvm import relax

    m, k = _shape(x)
    dtype = str(x.ty.dtype)
    n = weight.shape[0]
    bn, reg_m = choose_dense_params(m, n, k, target)
    np_ = -(-n // bn) * bn
    w = np.zeros((np_, k), dtype)
    w[:n] = weight
    ep = Epilogue(bias is not None, residual is not None, activation, *clip)
    func = dense_packed(m, n, k, target, ep, bn=bn, reg_m=reg_m, dtype=dtype)
    args = [x, relax.const(layout.pack_dense_weight(w, bn))]
    if bias is not None:
        args.append(relax.const(np.ascontiguousarray(bias.astype(dtype))))
    if residual is not None:
        args.append(residual)
    if slope is not None:
        args.append(relax.const(np.ascontiguousarray(slope.astype(dtype))))
    return call_kernel(bb, func, "dense_packed", args, (m, n), dtype)


def emit_grouped_conv2d(
    bb: Any,
    x: Any,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    groups: int,
    oc_bn: int | None = None,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    activation: str | None = None,
    clip: tuple[float, float] = (0.0, 6.0),
    residual: Any = None,
    target: Any = None,
    max_waste: float | None = None,
    max_relative_cost: float | None = None,
    out_perm: Sequence[int] | None = None,
    in_perm: Sequence[int] | None = None,
    slope: np.ndarray | None = None,
) -> Any:
    """``act(grouped_conv2d(x, weight) + bias (+ residual))`` on a blocked ``x (N, ICB, H, W,
    ic_bn)`` (channels ``>= IC`` = ``groups * weight.shape[1]``, extra ones zero-padded) with the
    kernel of :mod:`.grouped`.

    ``weight`` is the grouped OIHW numpy array ``(OC, IC/groups, KH, KW)``. The result is blocked
    ``(N, ceil(OC/oc_bn), OH, OW, oc_bn)`` (zero-padded channels beyond ``OC``); ``oc_bn``
    defaults to the plan's home block (:func:`mcopt.targets.cpu.plan.block_for`). ``residual`` must
    have the result's shape. ``max_waste``: raise ``ValueError`` when the kernel would execute
    more than that many times the grouped conv's MACs (see :class:`.grouped.GroupedGeometry`);
    ``max_relative_cost``: when its estimated time exceeds that fraction of the conv over the
    block-diagonal weight (:func:`.grouped.relative_cost`). ``out_perm``: permute the output
    channels, ``y[:, c] = act(...)[:, out_perm[c]]`` (a channel shuffle fused into the epilogue;
    ``residual`` is then in the permuted order). ``in_perm``: permute the input channels first,
    ``grouped_conv2d(x[:, in_perm], weight)`` (a channel shuffle before the conv, read through a
    table by the exact reduction: no pass over memory).
    """
    from tvm import relax

    from mcopt.targets.cpu.kernels.grouped import (
        choose_grouped_params,
        grouped_conv2d_nchwc,
        output_source,
        pack_grouped_weight,
        relative_cost,
    )
    from mcopt.targets.cpu.kernels.params import _info
    from mcopt.targets.cpu.plan import block_for

    n, icb, h, w, ic_bn = _shape(x)
    dtype = str(x.ty.dtype)
    oc, icg, kh, kw = weight.shape
    ic = icg * groups
    if ic > icb * ic_bn:
        raise ValueError(
            f"grouped weight {weight.shape} (groups={groups}) does not match blocked input "
            f"{(n, icb, h, w, ic_bn)}"
        )
    if oc_bn is None:
        oc_bn = block_for(oc, _info(target).lanes).bn
    ocb = -(-oc // oc_bn)
    data_shape = (n, ic, h, w)
    blocks = (ic_bn, icb, oc_bn, ocb)
    params, geom = choose_grouped_params(
        data_shape, weight.shape, groups, *blocks, strides, padding, dilation, target,
        True if in_perm is not None else None,
    )  # fmt: skip
    if max_waste is not None and geom.waste > max_waste:
        raise ValueError(
            f"grouped conv {ic}->{oc} (groups={groups}) in blocks {ic_bn}/{oc_bn} would run "
            f"{geom.waste:.1f}x its MACs (limit {max_waste})"
        )
    cost = relative_cost(geom, (kh, kw), out_perm is not None)
    if max_relative_cost is not None and cost > max_relative_cost:
        raise ValueError(
            f"grouped conv {ic}->{oc} (groups={groups}): the block-diagonal conv is estimated "
            f"faster ({cost:.2f}x its time)"
        )
    ep = Epilogue(bias is not None, residual is not None, activation, *clip)
    permuted = out_perm is not None
    func = grouped_conv2d_nchwc(
        data_shape, weight.shape, geom, strides, padding, dilation, params, ep, dtype, permuted,
        in_perm is not None,
    )  # fmt: skip
    args = [x, relax.const(pack_grouped_weight(weight.astype(dtype), geom, params.oc_kbn))]
    if in_perm is not None:
        if sorted(int(p) for p in in_perm) != list(range(ic)):
            raise ValueError(f"in_perm is not a permutation of the {ic} input channels")
        args.append(relax.const(np.asarray(in_perm, np.int32)))
    if out_perm is not None:
        args.append(relax.const(output_source(geom, out_perm)))
    if bias is not None:
        b = np.zeros(ocb * oc_bn, dtype)
        b[:oc] = bias if out_perm is None else bias[np.asarray(out_perm)]
        args.append(relax.const(layout.pack_bias(b, oc_bn)))
    if residual is not None:
        args.append(residual)
    if slope is not None:  # in the bias's (permuted) order
        a = np.zeros(ocb * oc_bn, dtype)
        a[:oc] = slope if out_perm is None else slope[np.asarray(out_perm)]
        args.append(relax.const(layout.pack_bias(a, oc_bn)))
    pads, (sh, sw), (dh, dw) = _pads(padding), _pair(strides), _pair(dilation)
    oh = conv_out_size(h, kh, sh, pads[0], pads[2], dh)
    ow = conv_out_size(w, kw, sw, pads[1], pads[3], dw)
    return call_kernel(bb, func, "gconv2d_nchwc", args, (n, ocb, oh, ow, oc_bn), dtype)
