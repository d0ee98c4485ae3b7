"""Grouped fp32 conv2d in the blocked NCHW[x]c layout (ShuffleNet, ResNeXt, AlexNet group convs).

A grouped conv (``groups = G``, ``icg = IC / G`` input and ``ocg = OC / G`` output channels per
group; Krizhevsky et al. 2012, Xie et al. "ResNeXt" CVPR 2017, Zhang et al. "ShuffleNet" CVPR 2018)
is the conv template of :mod:`.conv2d` whose reduction over input-channel blocks is restricted to
a *window* of the group's blocks, instead of one dense conv over a block-diagonal weight (``G``
times the MACs) or TVM's naive grouped loops.

Activations stay in their home layout (the plan's ``NCHW[bn]c``, channels possibly zero-padded at
the end), so group boundaries need not fall on block boundaries (ShuffleNet ``g=4``: 28, 34, 68
channels per group with 8 lanes). The kernel therefore computes in an *internal* output space:

- every group ``g`` gets ``nbi`` internal output blocks, copies of the home blocks
  ``[hf_g, he_g)`` that hold its channels (``hf_g = floor(g*ocg/oc_bn)``,
  ``he_g = ceil((g+1)*ocg/oc_bn)``), lane-aligned with them; lanes of other groups (a home block
  that straddles a group boundary is computed once per group) and the extra blocks rounding
  ``nbi`` up to the register tile get zero weights;
- internal block ``i`` (group ``g = i // nbi``) reduces over the ``L`` input blocks
  ``[s_g, s_g + L)``, ``s_g = min(floor(g*icg/ic_bn), ICB - L)``, ``L = max_g (ceil((g+1)*icg/
  ic_bn) - floor(g*icg/ic_bn))``; input channels of other groups get zero weights:
  ``conv[n, i, y, x, k] = sum_{j, kh, kw, icb} data[n, s_g + j, y*sh + kh*dh - pt,
  x*sw + kw*dw - pl, icb] * kernel[i // reg_c, j, kh, kw, icb, (i % reg_c)*oc_bn + k]``;
- the epilogue sums the (at most ``copies``) internal copies of each home block: for home block
  ``b``, group ``g_m = floor(b*oc_bn/ocg) + m`` contributes internal block
  ``g_m*nbi + b - hf_{g_m}`` when it starts before the block ends; then bias, residual and the
  activation (:class:`.epilogue.Epilogue`). The zero-weight lanes contribute exact zeros (inputs
  are finite: the plan keeps padding channels finite), so the result is the grouped conv up to
  float rounding (lossless).

Work: ``G*nbi*oc_bn * L*ic_bn`` MACs per output position and kernel tap against the ideal
``OC * icg`` (``waste`` in :class:`GroupedGeometry`); ShuffleNet's 136-channel ``g=4`` 1x1 conv:
20 x 5 blocks = 1.38x (1.66x with ``nbi`` rounded up to a 3-block register tile) instead of 4x.
When each group's outputs are whole home blocks (``ocg % oc_bn == 0``, the tile dividing
``ocg / oc_bn``, no padded channels) the internal space *is* the home layout (``direct``): the
kernel is exactly the conv template with a windowed reduction, scheduled by
:func:`.conv2d.schedule_conv2d_nchwc` (epilogue fused under the register tile; with ``icg %
ic_bn == 0`` too nothing is wasted). Otherwise (``row`` schedule) the loops are
``parallel(n, oh)`` / ``oc_outer`` / ``ow_outer`` / reduction / ``oc_inner, ow_inner``
(unrolled) / lanes (vectorized), and the epilogue runs per output row right after the row's
accumulators (``G*nbi*oc_bn*OWp`` floats, L1/L2-resident) are complete: one vector load per
copy, no gathers (``Schedule.merge`` of the two row loops: ``reverse_compute_at`` cannot invert
the epilogue's non-affine channel index).

Exact reduction (``exact``, where the window of whole input blocks is longer than ``icg``): each
internal block reduces over exactly its group's ``icg`` input channels, read by a scalar channel
index ``c_in = g*icg + j`` (``data[n, c_in // ic_bn, ..., c_in % ic_bn]``: the input is
broadcast per channel anyway, so it need not come in whole blocks), the weight packed
``(G*nbi*oc_bn/oc_kbn, icg, KH, KW, 1, oc_kbn)``. ShuffleNet's 34 / 68 channels per group then
reduce over 34 / 68 instead of 48 / 80 (waste 1.41x instead of 1.99x / 1.66x); one znver5
thread: 136 channels at 28x28 77 -> 60 us, 272 at 14x14 58 -> 50 us, 112 at 28x28 71 -> 46 us.

Output permutation (``permuted``): a channel shuffle after the conv (ShuffleNet) runs in the
epilogue: output channel ``c`` reads the accumulator of channel ``perm[c]`` from its own group's
internal block through an int32 table (:func:`output_source`), bias packed in the permuted order;
the shuffle then costs a gather from the L1-resident row instead of a pass over memory (scalar
loads: ~0.2 ns per output, +20-37 % on ShuffleNet's layers, :data:`PERM_OVERHEAD`). Input
permutation (``in_permuted``, exact only): a channel shuffle *before* the conv is read through
an int32 table in the reduction (``c_in = in_perm[g*icg + j]``, +1-3 %): the planner sinks
ShuffleNet's shuffles there (:func:`mcopt.targets.cpu.plan._sink_shuffles`).

The register tile and block sizes follow :mod:`.params` (Liu et al., USENIX ATC 2019), scoring
``tile_score * OCB / (G * nbi)`` (FMAs per load times the useful fraction of output blocks);
rounding the width up to the tile costs a padded copy of the input for an unpadded 1x1 conv
(scored as in :func:`.params.choose_conv_params`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcopt.targets.cpu.kernels.conv2d import (
    _pads,
    _pair,
    conv_out_size,
    pad_nchwc,
    schedule_register_tile,
)
from mcopt.targets.cpu.kernels.epilogue import Epilogue
from mcopt.targets.cpu.kernels.params import (
    COPY_NEGLIGIBLE_MACS,
    SHORT_ACCUMULATORS,
    SHORT_REDUCTION,
    ConvParams,
    _info,
    max_accumulators,
    tile_score,
)
from mcopt.targets.cpu.kernels.threads import parallel

#: reduce each group over exactly its ``IC / G`` input channels (``exact``) where the window of
#: whole input blocks would be longer (see the module docstring)
EXACT_REDUCTION = True


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class GroupedGeometry:
    """Shapes of a grouped conv in the blocked layout (see the module docstring).

    ``in_blocks``/``out_blocks`` are the home layouts' block counts (``ICB``, ``OCB``, padding
    included); ``window`` is ``L``; ``nbi`` internal blocks per group; ``copies`` the most groups
    sharing one home output block; ``direct`` when the internal space is the home layout.
    """

    groups: int
    in_channels: int
    out_channels: int
    ic_bn: int
    oc_bn: int
    in_blocks: int
    out_blocks: int
    window: int
    nbi: int
    copies: int
    exact: bool = False

    @property
    def reduction(self) -> int:
        """Input channels each internal block reduces over (per kernel tap): the group's ``icg``
        when ``exact``, else the ``window * ic_bn`` channels of its block window."""
        return self.icg if self.exact else self.window * self.ic_bn

    @property
    def icg(self) -> int:
        return self.in_channels // self.groups

    @property
    def ocg(self) -> int:
        return self.out_channels // self.groups

    @property
    def internal_blocks(self) -> int:
        return self.groups * self.nbi

    @property
    def direct(self) -> bool:
        return (
            self.ocg % self.oc_bn == 0
            and self.nbi == self.ocg // self.oc_bn
            and self.out_blocks * self.oc_bn == self.out_channels
        )

    def start(self, g: int) -> int:
        """First input block of group ``g``'s reduction window."""
        return min(g * self.icg // self.ic_bn, self.in_blocks - self.window)

    def home_first(self, g: int) -> int:
        """First home output block holding a channel of group ``g``."""
        return g * self.ocg // self.oc_bn

    @property
    def waste(self) -> float:
        """MACs executed / MACs of the grouped conv (1.0 = none wasted)."""
        done = self.internal_blocks * self.oc_bn * self.reduction
        return done / (self.out_channels * self.icg)


#: score factor of the ``direct`` schedule over the ``row`` one (fitted: 544->544 g=4 at 7x7 ran
#: 1.33x faster direct with a 7x1 tile than in rows with 4x2)
DIRECT_BONUS = 1.25

#: per output vector, the accumulator handling of a schedule in FMA-equivalents: the template
#: (``direct``) initialises and stores the register tile once; the ``row`` schedule also stores the
#: accumulators to the row buffer and reloads them in the epilogue (fitted on ShuffleNet's layers:
#: 24->112 g=4, a 16-long reduction, ran 1.35-1.55x slower than the 24-long block-diagonal conv)
TILE_OVERHEAD = 8
ROW_OVERHEAD = 16

#: per output vector, the gather of a permuted epilogue (``out_perm``: one scalar load per lane
#: from the row buffer) in FMA-equivalents (fitted on ShuffleNet's layers, one znver5 thread:
#: 17-29; 24->112 g=4 at 56x56 ran 138 us permuted, 78 us not, 100 us block-diagonal)
PERM_OVERHEAD = 24


def relative_cost(
    geom: GroupedGeometry, kernel_size: Sequence[int], permuted: bool = False
) -> float:
    """Estimated time of the grouped kernel over that of the blocked conv over the block-diagonal
    weight: ``blocks x (reduction length + overhead)`` for both (``G*nbi`` blocks reducing over
    ``reduction*KH*KW`` against ``OCB`` blocks reducing over ``ICB*ic_bn*KH*KW``), plus the
    gather of a ``permuted`` epilogue per output block (the block-diagonal conv permutes its
    weight rows instead)."""
    taps = int(kernel_size[0]) * int(kernel_size[1])
    over = TILE_OVERHEAD if geom.direct else ROW_OVERHEAD
    grouped = geom.internal_blocks * (geom.reduction * taps + over)
    if permuted:
        grouped += geom.out_blocks * PERM_OVERHEAD
    dense = geom.out_blocks * (geom.in_blocks * geom.ic_bn * taps + TILE_OVERHEAD)
    return grouped / dense


def grouped_geometry(
    in_channels: int,
    out_channels: int,
    groups: int,
    ic_bn: int,
    in_blocks: int,
    oc_bn: int,
    out_blocks: int,
    reg_c: int = 1,
    exact: bool | None = None,
) -> GroupedGeometry:
    """The :class:`GroupedGeometry` for home layouts ``(in_blocks, ic_bn)`` / ``(out_blocks,
    oc_bn)`` and a register tile of ``reg_c`` output blocks (``nbi`` is rounded up to it)."""
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{in_channels}->{out_channels} channels do not split into {groups} groups"
        )
    if in_blocks * ic_bn < in_channels or out_blocks * oc_bn < out_channels:
        raise ValueError(
            f"blocked layouts {in_blocks}x{ic_bn} / {out_blocks}x{oc_bn} cannot hold "
            f"{in_channels} / {out_channels} channels"
        )
    icg, ocg = in_channels // groups, out_channels // groups
    window = max(_cdiv((g + 1) * icg, ic_bn) - g * icg // ic_bn for g in range(groups))
    per_group = max(_cdiv((g + 1) * ocg, oc_bn) - g * ocg // oc_bn for g in range(groups))
    nbi = _cdiv(per_group, reg_c) * reg_c
    copies = 1
    for b in range(out_blocks):
        lo, hi = b * oc_bn, min((b + 1) * oc_bn, out_channels)
        if lo < hi:
            copies = max(copies, (hi - 1) // ocg - lo // ocg + 1)
    if exact is None:  # the block window would read channels of other groups
        exact = EXACT_REDUCTION and window * ic_bn > icg
    return GroupedGeometry(
        groups, in_channels, out_channels, ic_bn, oc_bn, in_blocks, out_blocks, window, nbi, copies,
        exact,
    )  # fmt: skip


def grouped_fit(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    groups: int,
    blocks: tuple[int, int, int, int],
    attrs: dict[str, Any],
    target: Any,
    max_waste: float | None,
    max_relative_cost: float | None,
    permuted: bool = False,
    in_permuted: bool = False,
) -> str | None:
    """Why the grouped kernel should not run this conv (None when it should): it would execute
    more than ``max_waste`` times the MACs, or its estimated time exceeds ``max_relative_cost``
    times that of the conv over the block-diagonal weight (:func:`relative_cost`). ``blocks``:
    ``(ic_bn, in_blocks, oc_bn, out_blocks)`` of the home layouts; ``permuted`` / ``in_permuted``:
    the conv has an output / input channel permutation (``out_perm`` / ``in_perm``)."""
    try:
        _, geom = choose_grouped_params(
            data_shape,
            weight_shape,
            groups,
            *blocks,
            attrs["strides"],
            attrs["pads"],
            attrs["dilations"],
            target,
            True if in_permuted else None,
        )
    except ValueError as e:
        return str(e)
    ic, oc = int(data_shape[1]), int(weight_shape[0])
    if max_waste is not None and geom.waste > max_waste:
        return f"grouped conv {ic}->{oc} (groups={groups}) would run {geom.waste:.1f}x its MACs"
    cost = relative_cost(geom, tuple(weight_shape[2:]), permuted)
    if max_relative_cost is not None and cost > max_relative_cost:
        return f"the block-diagonal conv is estimated faster ({cost:.2f}x its time)"
    return None


def choose_grouped_params(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    groups: int,
    ic_bn: int,
    in_blocks: int,
    oc_bn: int,
    out_blocks: int,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    target: Any = None,
    exact: bool | None = None,
) -> tuple[ConvParams, GroupedGeometry]:
    """Register tile and cache blocking for a grouped conv (logical NCHW ``data_shape``, OIHW
    ``weight_shape`` with ``IC / groups`` input channels), see the module docstring.

    The tile ``(reg_n, reg_c)`` maximises ``tile_score(OW, reg_n, reg_c) * OCB / (G * nbi)``
    times the load balance of the parallel loop (the ``row`` schedule has only ``N * OH``
    tasks), with a ``DIRECT_BONUS`` for the ``direct`` schedule (accumulators go from registers
    to the epilogue; no row buffer), under the register rule of
    :func:`.params.choose_register_tile` with at most ``SHORT_ACCUMULATORS`` of the ``vregs - 4``
    accumulators when the reduction is short (``L * ic_bn * KH * KW <= SHORT_REDUCTION``): on
    ShuffleNet's 1x1 layers (reductions of 40-136) 12-accumulator tiles (4x3, 3x4) ran 15-40%
    slower than 4x2, 2x3 or 7x1 (measured on a znver3 core pair). ``exact``: force (True) or
    forbid (False) the exact reduction (None: where the block window is longer, see
    :func:`grouped_geometry`).
    """
    info = _info(target)
    n, ic, h, w = (int(d) for d in data_shape)
    oc, _, kh, kw = (int(d) for d in weight_shape)
    sh, sw = _pair(strides)
    dh, dw = _pair(dilation)
    pt, pl, pb, pr = _pads(padding)
    oh = conv_out_size(h, kh, sh, pt, pb, dh)
    ow = conv_out_size(w, kw, sw, pl, pr, dw)
    # rounding the width up to the tile needs a zero-padded copy of the input unless the conv
    # pads it anyway (as in :func:`.params.choose_conv_params`): ShuffleNet's 1x1 layers at 28x28
    # ran 57 us with a 5x3 tile (width 30, a copy) and 47 us with 4x3 (one znver5 thread)
    copy_free = any((pt, pl, pb, pr)) or oc // groups * kh * kw >= COPY_NEGLIGIBLE_MACS * sh * sw
    best: tuple[float, int, int, GroupedGeometry] | None = None
    for rc in (1, 2, 3, 4):
        geom = grouped_geometry(ic, oc, groups, ic_bn, in_blocks, oc_bn, out_blocks, rc, exact)
        tasks = n * oh * (geom.internal_blocks // rc if geom.direct else 1)
        if geom.direct and tasks < 4 * info.cores and rc > 1:
            continue  # too few parallel tasks (the direct schedule runs parallel over oc tiles)
        balance = tasks / (_cdiv(tasks, info.cores) * info.cores)
        useful = out_blocks / geom.internal_blocks * balance
        useful *= DIRECT_BONUS if geom.direct else 1.0
        budget = max_accumulators(info.vregs)
        if geom.reduction * kh * kw <= SHORT_REDUCTION:
            budget = budget * SHORT_ACCUMULATORS // 12
        for rn in range(1, min(ow, info.vregs) + 1):
            if rn * rc > budget or (rc > 1 and rn > info.vregs // 3):
                continue
            score = tile_score(ow, rn, rc, copy_free) * useful
            if best is None or score > best[0] + 1e-9:
                best = (score, rn, rc, geom)
    assert best is not None
    _, reg_n, reg_c, geom = best
    ic_chunk, oh_inner = 0, False
    tile_bytes = reg_c * oc_bn * geom.reduction * kh * kw * 4
    if geom.direct and not geom.exact and tile_bytes > info.l2_bytes // 2 and geom.window > 1:
        per_block = reg_c * oc_bn * ic_bn * kh * kw * 4
        divs = [d for d in range(1, geom.window + 1) if geom.window % d == 0]
        ic_chunk = max([d for d in divs if d * per_block <= info.l1_bytes] or [1])
        oh_inner = n * geom.internal_blocks // reg_c >= 2 * info.cores
    unroll_kw = kw > 1 and ic_bn < info.lanes
    params = ConvParams(ic_bn, oc_bn, reg_n, reg_c, unroll_kw, ic_chunk, oh_inner, 0, False)
    return params, geom


def pack_grouped_weight(w: np.ndarray, geom: GroupedGeometry, oc_kbn: int) -> np.ndarray:
    """The grouped OIHW weight ``(OC, IC/G, KH, KW)`` as the internal dense weight
    ``(G*nbi*oc_bn, L*ic_bn, KH, KW)`` (zeros outside each internal block's group), packed like
    :func:`.layout.pack_conv_weight` into ``(G*nbi*oc_bn/oc_kbn, L, KH, KW, ic_bn, oc_kbn)``."""
    from mcopt.targets.cpu.kernels.layout import pack_conv_weight

    oc, icg, kh, kw = w.shape
    g_, bo, bi = geom.groups, geom.oc_bn, geom.ic_bn
    if oc != geom.out_channels or icg != geom.icg:
        raise ValueError(f"grouped weight {w.shape} does not match {geom}")
    if geom.exact:  # (G*nbi*oc_bn/oc_kbn, icg, KH, KW, 1, oc_kbn)
        full = np.zeros((geom.internal_blocks * bo, icg, kh, kw), dtype=w.dtype)
        for g in range(g_):
            rows = np.arange(g * geom.ocg, (g + 1) * geom.ocg)
            full[g * geom.nbi * bo + rows - geom.home_first(g) * bo] = w[rows]
        return pack_conv_weight(full, 1, oc_kbn)
    full = np.zeros((geom.internal_blocks * bo, geom.window * bi, kh, kw), dtype=w.dtype)
    ocg = geom.ocg
    for g in range(g_):
        hf, s = geom.home_first(g), geom.start(g)
        rows = np.arange(g * ocg, (g + 1) * ocg)  # logical output channels of the group
        irows = g * geom.nbi * bo + rows - hf * bo  # their internal rows (lane-aligned)
        cols = g * icg + np.arange(icg) - s * bi  # window positions of the group's inputs
        full[irows[:, None], cols[None, :]] = w[rows]
    return pack_conv_weight(full, bi, oc_kbn)


def output_source(geom: GroupedGeometry, perm: Sequence[int]) -> np.ndarray:
    """For output channel ``c`` of the permuted conv (``y[:, c] = conv[:, perm[c]]``), the flat
    internal position ``block * oc_bn + lane`` of channel ``perm[c]``'s accumulator: the copy of
    its home block in its own group (int32, padded to ``out_blocks * oc_bn`` with the last
    entry: those lanes are don't-care)."""
    perm = np.asarray(perm, dtype=np.int64)
    if sorted(perm.tolist()) != list(range(geom.out_channels)):
        raise ValueError(f"output permutation of {len(perm)} is not one of {geom.out_channels}")
    g = perm // geom.ocg
    first = g * geom.ocg // geom.oc_bn  # home_first of each source's group
    block = g * geom.nbi + perm // geom.oc_bn - first
    flat = block * geom.oc_bn + perm % geom.oc_bn
    out = np.full(geom.out_blocks * geom.oc_bn, flat[-1], dtype=np.int32)
    out[: len(flat)] = flat
    return out


def grouped_conv2d_nchwc_te(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    geom: GroupedGeometry,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    params: ConvParams | None = None,
    epilogue: Epilogue | None = None,
    dtype: str = "float32",
    permuted: bool = False,
    in_permuted: bool = False,
) -> list[Any]:
    """TE tensors ``[data, kernel, (source), (bias), (residual), out]`` of the blocked grouped
    conv.

    ``data_shape`` is the logical NCHW shape, ``weight_shape`` the grouped OIHW shape; the
    placeholders: data ``(N, ICB, H, W, ic_bn)``, kernel ``(G*nbi/reg_c, L, KH, KW, ic_bn,
    reg_c*oc_bn)`` (:func:`pack_grouped_weight`), bias ``(OCB, oc_bn)``, residual and out
    ``(N, OCB, OH, OW, oc_bn)``. ``permuted``: the output channels are permuted (a channel
    shuffle fused into the epilogue): the int32 ``source (OCB*oc_bn,)`` input holds, per output
    channel, the flat internal position ``block * oc_bn + lane`` of its accumulator
    (:func:`output_source`); bias and residual are in the permuted order. ``in_permuted``: the
    input channels are permuted (a channel shuffle before the conv, ``conv(x[:, in_perm], w)``):
    the int32 ``in_source (IC,)`` input (after ``kernel``) holds ``in_perm``, the channel of
    ``data`` that logical input channel ``k`` reads (``geom`` must be ``exact``).
    """
    import tvm
    from tvm import te

    assert params is not None
    epilogue = epilogue or Epilogue()
    n, ic, h, w = (int(d) for d in data_shape)
    oc, icg, kh_, kw_ = (int(d) for d in weight_shape)
    if icg * geom.groups != ic or oc != geom.out_channels:
        raise ValueError(f"weight {tuple(weight_shape)} does not match {geom}")
    sh, sw = _pair(strides)
    dh, dw = _pair(dilation)
    pads = _pads(padding)
    ic_bn, oc_bn, reg_c = params.ic_bn, params.oc_bn, params.reg_c
    if ic_bn != geom.ic_bn or oc_bn != geom.oc_bn or geom.nbi % reg_c:
        raise ValueError(f"params {params} do not match {geom}")
    oh = conv_out_size(h, kh_, sh, pads[0], pads[2], dh)
    ow = conv_out_size(w, kw_, sw, pads[1], pads[3], dw)
    owp = _cdiv(ow, params.reg_n) * params.reg_n
    extra_w = max(0, (owp - 1) * sw + (kw_ - 1) * dw + 1 - (w + pads[1] + pads[3]))
    pads = (pads[0], pads[1], pads[2], pads[3] + extra_w)
    ni, nbi, big_l = geom.internal_blocks, geom.nbi, geom.window
    data = te.placeholder((n, geom.in_blocks, h, w, ic_bn), dtype, name="data")
    kb = (geom.icg, 1) if geom.exact else (big_l, ic_bn)
    kernel = te.placeholder(
        (ni // reg_c, kb[0], kh_, kw_, kb[1], oc_bn * reg_c), dtype, name="kernel"
    )
    dpad = pad_nchwc(data, pads)
    rkh = te.reduce_axis((0, kh_), "kh") if kh_ > 1 else None
    rkw = te.reduce_axis((0, kw_), "kw") if kw_ > 1 else None
    last_start = geom.in_blocks - big_l

    def v(a: Any) -> Any:
        return 0 if a is None else a

    tensors = [data, kernel]
    if in_permuted and not geom.exact:
        raise ValueError("an input channel permutation needs the exact reduction")
    if in_permuted:
        in_source = te.placeholder((ic,), "int32", name="in_source")
        tensors.append(in_source)
    if geom.exact:  # over the group's own input channels: a scalar index into the blocks
        icj = te.reduce_axis((0, geom.icg), "icj")
        axes = [a for a in (icj, rkh, rkw) if a is not None]

        def conv_fn(b, c, y, x, k):
            ch = c // nbi * geom.icg + icj
            if in_permuted:
                ch = in_source[ch]
            return te.sum(
                dpad[b, ch // ic_bn, y * sh + v(rkh) * dh, x * sw + v(rkw) * dw, ch % ic_bn]
                * kernel[c // reg_c, icj, v(rkh), v(rkw), 0, (c % reg_c) * oc_bn + k],
                axis=axes,
            )
    else:
        icc = te.reduce_axis((0, big_l), "icc") if big_l > 1 else None
        icb = te.reduce_axis((0, ic_bn), "icb") if ic_bn > 1 else None
        axes = [a for a in (icc, rkh, rkw, icb) if a is not None]

        def start(c: Any) -> Any:
            return te.min(tvm.tirx.floordiv(c // nbi * geom.icg, ic_bn), last_start)

        def conv_fn(b, c, y, x, k):
            return te.sum(
                dpad[b, start(c) + v(icc), y * sh + v(rkh) * dh, x * sw + v(rkw) * dw, v(icb)]
                * kernel[c // reg_c, v(icc), v(rkh), v(rkw), v(icb), (c % reg_c) * oc_bn + k],
                axis=axes,
            )

    conv = te.compute((n, ni, oh, owp, oc_bn), conv_fn, name="conv")
    ocb, ocg = geom.out_blocks, geom.ocg
    zero = tvm.tirx.const(0.0, dtype)

    def acc_copies(b, c, y, x, k):
        if geom.direct:
            return conv[b, c, y, x, k]
        g0 = c * oc_bn // ocg
        total = None
        for m in range(geom.copies):
            gm = g0 + m
            idx = gm * nbi + c - tvm.tirx.floordiv(gm * ocg, oc_bn)
            val = conv[b, te.max(te.min(idx, ni - 1), 0), y, x, k]
            if m:  # group g0 + m contributes only if it starts inside home block c
                ok = tvm.tirx.all(gm < geom.groups, gm * ocg < (c + 1) * oc_bn)
                val = tvm.tirx.if_then_else(ok, val, zero)
            total = val if total is None else total + val
        return total

    out_shape = (n, ocb, oh, ow, oc_bn)
    acc = acc_copies
    if permuted:
        source = te.placeholder((ocb * oc_bn,), "int32", name="source")
        tensors.append(source)

        def acc_permuted(b, c, y, x, k):  # the source channel's value sits in its own group
            src = source[c * oc_bn + k]
            return conv[b, src // oc_bn, y, x, src % oc_bn]

        acc = acc_permuted

    epilogue.blocked_output(acc, out_shape, dtype, tensors)
    return tensors


def schedule_grouped_rows(sch: Any, params: ConvParams, has_pad: bool) -> None:
    """The ``row`` schedule (see the module docstring): ``parallel(n, oh)`` / ``oc_outer`` /
    ``ow_outer`` / reduction / tile, then the epilogue of the same output row.

    The epilogue reads the accumulators through a non-affine channel index (the copies of a
    home block), which ``reverse_compute_at`` cannot invert; instead both blocks get their own
    ``(n, oh)`` row loop and the two loops are merged (``Schedule.merge``) into one parallel
    loop: the row's accumulators (``G*nbi*oc_bn*OWp`` floats) are consumed while in L1/L2.
    """
    from mcopt.targets.cpu.kernels.conv2d import schedule_pad

    conv = sch.get_sblock("conv")
    n, oc, oh, ow, ob, *red = sch.get_loops(conv)
    oc_o, oc_i = sch.split(oc, [None, params.reg_c])
    ow_o, ow_i = sch.split(ow, [None, params.reg_n])
    kw_unrolled = params.unroll_kw and len(red) == 4
    if kw_unrolled:
        red = [red[0], red[1], red[3], red[2]]
    sch.reorder(n, oh, oc_o, ow_o, *red, oc_i, ow_i, ob)
    row = sch.fuse(n, oh)
    out = sch.get_sblock("out")
    on, oc_, oy, ox, ok = sch.get_loops(out)
    sch.reorder(on, oy, oc_, ox, ok)
    row = sch.merge(row, sch.fuse(on, oy))
    parallel(sch, row)
    sch.vectorize(ok)
    schedule_register_tile(sch, conv, red, oc_i, ow_i, ob, kw_unrolled, first_init_loop=2)
    if has_pad:
        schedule_pad(sch)


def grouped_conv2d_nchwc(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    geom: GroupedGeometry,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    params: ConvParams | None = None,
    epilogue: Epilogue | None = None,
    dtype: str = "float32",
    permuted: bool = False,
    in_permuted: bool = False,
) -> Any:
    """A scheduled ``tvm.tirx.PrimFunc`` ``(data, kernel, [source], [bias], [residual], out)``
    of the blocked grouped conv (shapes in :func:`grouped_conv2d_nchwc_te`; ``params`` and
    ``geom`` from :func:`choose_grouped_params`; ``permuted``: output channels permuted through
    the ``source`` table)."""
    from tvm import s_tir, te

    from mcopt.targets.cpu.kernels.conv2d import _has_block, schedule_conv2d_nchwc

    tensors = grouped_conv2d_nchwc_te(
        data_shape, weight_shape, geom, strides, padding, dilation, params, epilogue, dtype,
        permuted, in_permuted,
    )  # fmt: skip
    sch = s_tir.Schedule(te.create_prim_func(tensors))
    assert params is not None
    if geom.direct and not permuted:
        schedule_conv2d_nchwc(sch, params, _has_block(sch, "data_pad"))
    else:
        schedule_grouped_rows(sch, params, _has_block(sch, "data_pad"))
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


__all__ = [
    "GroupedGeometry",
    "choose_grouped_params",
    "grouped_conv2d_nchwc",
    "grouped_conv2d_nchwc_te",
    "grouped_geometry",
    "output_source",
    "pack_grouped_weight",
    "relative_cost",
    "schedule_grouped_rows",
]
