"""Import of ``Resize`` / ``Upsample`` (nearest, whole factors) and ``ConvTranspose``.

A ``Resize`` is imported as ``upsample_nearest`` when, on the model's static shapes, every output
pixel reads the input pixel ``i // s`` — checked by evaluating ONNX's own coordinate transform and
rounding for the node's ``coordinate_transformation_mode`` / ``nearest_mode``, so ``asymmetric`` +
``floor`` (Paddle2ONNX, the opset-10 and ``Upsample`` semantics) and ``half_pixel`` +
``round_prefer_floor`` (PyTorch's ``nearest``) both qualify, while ``align_corners`` or a
fractional factor get an error naming what mcopt imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from mcopt.onnx_io.import_ops import _ints, _pads, handles
from mcopt.onnx_io.importer import NodeCtx

_ROUND: dict[str, Callable[[float], int]] = {
    "round_prefer_floor": lambda v: math.ceil(v - 0.5),
    "round_prefer_ceil": lambda v: math.floor(v + 0.5),
    "floor": math.floor,
    "ceil": math.ceil,
}


def _source_index(i: int, scale: float, size: int, out: int, mode: str, nearest: str) -> int:
    """The input index ONNX's nearest ``Resize`` reads for output index ``i`` (one axis)."""
    if mode == "half_pixel":
        v = (i + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        v = (i + 0.5) / scale - 0.5 if out > 1 else 0.0
    elif mode == "asymmetric":
        v = i / scale
    elif mode == "align_corners":
        v = i * (size - 1) / (out - 1) if out > 1 else 0.0
    elif mode == "tf_half_pixel_for_nn":
        v = (i + 0.5) / scale
    else:
        raise ValueError(mode)
    return min(max(_ROUND[nearest](v), 0), size - 1)


def _factors(c: NodeCtx, rank: int, dims: tuple[int, ...]) -> list[float]:
    """Per-axis scales from the node's constant ``scales`` or ``sizes`` (or ``Upsample``'s attr)."""
    if c.op_type == "Upsample":
        scales = c.attr("scales") if c.opset < 9 else c.need_const(1, "scales")
        return [float(s) for s in np.asarray(scales).reshape(-1)]
    if c.opset < 11:  # Resize-10: (X, scales)
        return [float(s) for s in c.need_const(1, "scales").reshape(-1)]
    axes = _ints(c.attr("axes")) or list(range(rank))
    full = [1.0] * rank
    sizes = c.const(3) if c.inp(3) is not None else None
    if sizes is not None and sizes.size:
        if (c.attr("keep_aspect_ratio_policy", "stretch") or "stretch") != "stretch":
            raise c.fail("keep_aspect_ratio_policy other than 'stretch' is not supported")
        for ax, n in zip(axes, _ints(sizes)):
            full[ax % rank] = n / dims[ax % rank]
        return full
    scales = c.const(2) if c.inp(2) is not None else None
    if scales is None or not scales.size:
        raise c.fail("scales or sizes must be a constant (or computable from static shapes)")
    for ax, s in zip(axes, np.asarray(scales, np.float64).reshape(-1)):
        full[ax % rank] = float(s)
    return full


@handles("Resize", "Upsample")
def resize(c: NodeCtx) -> None:
    x = c.x(0)
    dims = tuple(x.shape)
    mode = c.attr("mode", "nearest") or "nearest"
    if mode != "nearest":
        raise c.fail(
            f"mode={mode!r} is not supported; mcopt imports nearest-neighbour upsampling by whole "
            "factors (mode='nearest')"
        )
    if x.type.rank != 4:
        raise c.fail(f"input {x.type} is not 4-D NCHW; mcopt upsamples the two spatial axes only")
    old = c.op_type == "Upsample" or c.opset < 11
    ctm = "asymmetric" if old else c.attr("coordinate_transformation_mode", "half_pixel")
    nearest = "floor" if old else c.attr("nearest_mode", "round_prefer_floor")
    if ctm not in ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners",
                   "tf_half_pixel_for_nn") or nearest not in _ROUND:  # fmt: skip
        raise c.fail(
            f"coordinate_transformation_mode={ctm!r} / nearest_mode={nearest!r} is not supported"
        )
    scales = _factors(c, 4, dims)
    ints = [round(s) for s in scales]
    if scales[:2] != [1.0, 1.0] or any(abs(s - k) > 1e-6 or k < 1 for s, k in zip(scales, ints)):
        raise c.fail(
            f"scales {scales} are not whole spatial factors (N and C unscaled); mcopt imports "
            "nearest-neighbour upsampling by whole factors"
        )
    for ax in (2, 3):  # the node's own index mapping on these shapes must be a pixel repeat
        s, n = ints[ax], dims[ax]
        if any(
            _source_index(i, scales[ax], n, n * s, ctm, nearest) != i // s for i in range(n * s)
        ):
            raise c.fail(
                f"coordinate_transformation_mode={ctm!r} with nearest_mode={nearest!r} and factor "
                f"{s} does not repeat pixels; mcopt imports the forms that do (e.g. asymmetric + "
                "floor, half_pixel + round_prefer_floor)"
            )
    if ints[2:] == [1, 1]:
        c.set_out(0, c.emit("identity", [x]))
        return
    c.set_out(0, c.emit("upsample_nearest", [x], {"scales": (ints[2], ints[3])}))


@handles("ConvTranspose")
def conv_transpose(c: NodeCtx) -> None:
    x, w, b = c.x(0), c.x(1), c.inp(2)
    if x.type.rank != 4:
        raise c.fail(
            f"{x.type.rank - 2}-D ConvTranspose is not supported; mcopt supports 2-D (NCHW)"
        )
    kernel = list(w.shape[2:])
    ks = _ints(c.attr("kernel_shape"))
    if ks and ks != kernel:
        raise c.fail(f"kernel_shape {ks} does not match the weight {w.type}")
    s = _ints(c.attr("strides")) or [1, 1]
    d = _ints(c.attr("dilations")) or [1, 1]
    op = _ints(c.attr("output_padding")) or [0, 0]
    out_shape = _ints(c.attr("output_shape"))
    auto = c.attr("auto_pad", "NOTSET") or "NOTSET"
    if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        ins = x.shape[2:]
        want = out_shape[-2:] if out_shape else [ins[i] * s[i] for i in range(2)]
        begins, ends = [], []
        for i in range(2):
            total = s[i] * (ins[i] - 1) + op[i] + (kernel[i] - 1) * d[i] + 1 - want[i]
            small = int(total / 2)  # ONNX's C division: toward zero
            big = total - small
            upper = auto != "SAME_LOWER"
            begin, end = (small, big) if upper else (big, small)
            if begin < 0:
                raise c.fail(f"output_shape {out_shape} needs padding before the first pixel")
            if end < 0:  # a bigger output than the scatter covers: zeros (+ bias) at the end
                op[i] -= end
                end = 0
            begins.append(begin)
            ends.append(end)
        pads = begins + ends
    else:
        pads = _pads(c, x.shape[2:], kernel, s, d) if auto == "NOTSET" else [0, 0, 0, 0]
    attrs = {
        "strides": tuple(s), "pads": tuple(pads), "dilations": tuple(d),
        "groups": int(c.attr("group", 1)), "output_padding": tuple(op),
    }  # fmt: skip
    c.set_out(0, c.emit("conv_transpose2d", [x, w, b], attrs))


@handles("DepthToSpace")
def depth_to_space(c: NodeCtx) -> None:
    x = c.x(0)
    if x.type.rank != 4:
        raise c.fail(f"input {x.type} is not 4-D NCHW")
    bs, mode = int(c.attr("blocksize")), str(c.attr("mode", "DCR") or "DCR")
    if mode not in ("DCR", "CRD"):
        raise c.fail(f"mode={mode!r} is not supported (DCR, CRD)")
    if x.shape[1] % (bs * bs):
        raise c.fail(
            f"blocksize {bs} squared does not divide the {x.shape[1]} channels of {x.type}"
        )
    c.set_out(0, c.emit("depth_to_space", [x], {"blocksize": bs, "mode": mode}))
