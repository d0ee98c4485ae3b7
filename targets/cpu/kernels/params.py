"""Analytic block sizes for the CPU templates (no tuning): derived from SIMD width and registers.

The rule (after Liu et al., USENIX ATC 2019, section 3.1, and the register-blocking analysis of
Goto & van de Geijn's GEMM kernels):

- ``oc_bn = ic_bn = lanes`` (8 fp32 on AVX2, 16 on AVX-512, 4 on NEON) when the channel count is a
  multiple; otherwise the largest divisor of the channel count not above ``lanes`` (e.g. the RGB
  stem: ``ic_bn = 3``). One block size per tensor across the graph avoids layout transforms.
- register tile ``reg_n`` (output columns) x ``reg_c`` (output-channel blocks of ``oc_bn``) held in
  ``reg_n * reg_c`` vector accumulators, at most ``vregs - 4`` with 16 registers (AVX2: 12 of 16;
  the weight vectors can be FMA memory operands, the broadcasts need 1-3 registers) and three
  quarters of them with 32 (AVX-512: 24; :func:`max_accumulators`). Each reduction step loads
  ``reg_n`` broadcasts and ``reg_c`` weight vectors for ``reg_n * reg_c`` FMAs; the tile maximises
  ``reg_n * reg_c / (reg_n + reg_c) * OW / OWp`` (FMAs per load, times the useful fraction when
  the width is rounded up to ``OWp``, a multiple of ``reg_n``), with ``reg_c <= 4`` dividing
  ``OC / oc_bn`` and, when ``reg_c > 1``, ``reg_n <= vregs / 3`` (wider tiles made LLVM spill).
  On AVX2 that is 3 x 4 (12 accumulators, 1.71 FMAs per load; measured 85-94 GFLOP/s on one
  znver3 core, above OpenBLAS's 74 for sgemm).
- cache blocking: the weights of one tile are ``oc_bn * reg_c * IC * KH * KW * 4`` bytes. Above
  half the L2 they would be streamed from L3 once per output row, so the reduction over input
  channels is split into chunks of ``ic_chunk`` blocks whose weights fit in the L1
  (``ic_chunk``), and the output rows move inside the chunk loop (``oh_inner``): each weight
  chunk is then read from memory once and reused over the whole output plane, the accumulators of
  the plane living in a small buffer.
- small planes (``OW`` not a multiple of ``reg_n``, ``OH * OW <= 1024``): the tile may run along
  the flattened plane ``q = oh * OW + ow`` instead (``flat``), rounding ``OH * OW`` up instead of
  every row (7x7: 51 instead of 63 positions for ``reg_n = 3``) when that scores > 2% better and
  ``N * OC / (oc_bn * reg_c) >= 4 * cores`` (the tasks are then ``n x oc tiles``).
- no rounding copy: rounding the width up needs a zero-padded copy of the input. A conv with
  padding makes that copy anyway; for one without (1x1 convs) the copy is an extra pass over the
  input, which for MobileNet's narrow 1x1 convs cost more than the better tile saved (32 -> 16
  channels at 112x112: 5 x 2 tile with rounding 0.249 ms, 4 x 2 without 0.144 ms, one thread).
  There, unless every input element feeds ``COPY_NEGLIGIBLE_MACS`` (256) MACs or more, a
  rounding tile's score is multiplied by ``ROUNDING_COPY_PENALTY`` (0.6).
- ``unroll_kw``: unroll the ``kw`` loop when the channel block is shorter than the lanes (the RGB
  stem: ``ic_bn = 3``) so that the short ``icb`` loop does not dominate; such a stem's tile holds
  at most ``STEM_ACCUMULATORS`` (12) accumulators when its outputs fill whole vectors.
- enough parallel work: ``reg_c`` shrinks while there are fewer than ``4 * cores`` tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mcopt.targets.cpu.kernels.target_info import CPUInfo, cpu_info


@dataclass(frozen=True)
class ConvParams:
    """Block sizes of the conv template: layout blocks, register tile, ``kw`` unrolling."""

    ic_bn: int
    oc_bn: int
    reg_n: int
    reg_c: int = 1
    unroll_kw: bool = False
    ic_chunk: int = 0  # ic blocks per L1 block of the reduction (0 = all: no ic split)
    oh_inner: bool = False  # output rows inside the ic split (weights reused over the plane)
    ow_block: int = 0  # register tiles per cache block of a row under the ic split (0 = row)
    flat: bool = False  # tile the flattened output plane (OH*OW) instead of each row

    @property
    def oc_kbn(self) -> int:
        """Output channels per block of the packed kernel (``reg_c * oc_bn``)."""
        return self.reg_c * self.oc_bn


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def channel_block(channels: int, lanes: int) -> int:
    """The block size of a channel axis: ``lanes`` when it divides, else the largest divisor of
    ``channels`` that is at most ``lanes``."""
    if channels % lanes == 0:
        return lanes
    return max(d for d in _divisors(channels) if d <= lanes)


def _info(target: Any) -> CPUInfo:
    if isinstance(target, CPUInfo):
        return target
    if target is None:
        from mcopt.targets.cpu.kernels.target_info import host_target

        target = host_target()
    return cpu_info(target)


#: score factor of a tile that rounds the width up when the conv has no padding of its own: the
#: rounding then adds a zero-padded copy of the whole input (see the module docstring)
ROUNDING_COPY_PENALTY = 0.6

#: MACs per input element from which the rounding copy is not worth avoiding (ResNet-50's 7x7
#: 512 -> 2048 conv keeps its 3 x 4 tile)
COPY_NEGLIGIBLE_MACS = 256


def tile_score(ow: int, reg_n: int, reg_c: int, copy_free: bool = True) -> float:
    """FMAs per load of a ``reg_n x reg_c`` tile times the useful fraction of the rounded width;
    times :data:`ROUNDING_COPY_PENALTY` when the width is rounded and ``copy_free`` is False."""
    rounded = -(-ow // reg_n) * reg_n
    score = reg_n * reg_c / (reg_n + reg_c) * ow / rounded
    return score if copy_free or rounded == ow else score * ROUNDING_COPY_PENALTY


def max_accumulators(vregs: int) -> int:
    """Vector accumulators a register tile may hold: ``vregs - 4`` with 16 registers (AVX2's 3 x 4
    = 12), three quarters of them with 32 (AVX-512: 24). With 32 registers the 7 x 4 tile (28
    accumulators) ran at 35-55 % of the 6 x 4 / 4 x 4 tiles on a znver5 (1x1 convs of ResNet-50:
    1024->512 @14x14 1.18 ms vs 0.43-0.46 ms): the weight vectors, the broadcast and the loop's
    addresses no longer fit beside them."""
    return vregs - 4 if vregs <= 16 else vregs * 3 // 4


#: reductions up to this length are "short": a tile then holds at most ``SHORT_ACCUMULATORS`` per
#: 12 of the accumulator budget (AVX2: 8 of 12, AVX-512: 16 of 24). Initialising and storing a big
#: tile costs as much as a short reduction: ShuffleNet's grouped 1x1 layers (reductions of 40-136)
#: ran 15-40 % slower with 12-accumulator tiles than with 8 (znver3); MobileNet-V2's 16->96 1x1 at
#: 112x112 (reduction 16) 2.4x slower with 8 x 3 than with 7 x 2 (znver5)
SHORT_REDUCTION = 256
SHORT_ACCUMULATORS = 8


#: accumulators of a stem conv's tile (a partial input block, ``kw`` unrolled, full output
#: vectors): the RGB 3x3 stride-2 stem of ShuffleNet / MobileNet-V2 (3 -> 32 at 224x224) ran 138 us
#: with 8 x 2, 110 us with 6 x 2 (one znver5 thread); tiny_cnn's 3 -> 16 5.0 -> 4.2 us with 12 x 1;
#: the 7x7 stems of ResNet-50 / Inception did not change (3 x 4 or 4 x 4: 945 us)
STEM_ACCUMULATORS = 12
#: accumulators of a strided conv's tile on 16-lane (AVX-512) targets: with stride 2 a tile of
#: ``rn`` outputs reads ``2 rn + kw - 1`` input pixels per row, and the large tiles that suit stride
#: 1 lose (one znver5 process, kernels alternating, cold weights: 128 -> 128 at 160x160 stride 2
#: 11.7 ms as 6 x 4, 8.9 ms as 4 x 2; 48 -> 32 at 320x320 5.1 -> 4.0 ms; 32 -> 64 5.2 -> 4.7 ms;
#: stride 1 at the same output size is within 6 % for every tile). Only for output rows of at least
#: ``STRIDED_MIN_WIDTH``: on small planes (ResNet-50's 512 -> 512 at 14x14, a flattened-plane tile)
#: the cap lost (1.15 -> 1.59 ms), at 28 and 40 wide it changed nothing
STRIDED_ACCUMULATORS = 8
STRIDED_MIN_WIDTH = 64


def choose_register_tile(
    ow: int,
    occ: int,
    vregs: int,
    max_reg_c: int = 4,
    copy_free: bool = True,
    reduction: int | None = None,
    max_acc: int | None = None,
) -> tuple[int, int]:
    """``(reg_n, reg_c)`` by the rule in the module docstring (``copy_free``: the input is
    padded anyway, so rounding the width up costs no extra copy; ``reduction``: the length of
    each output's sum, ``IC * KH * KW``, which caps the tile when short; ``max_acc``: a further
    cap on the accumulators)."""
    budget = max_accumulators(vregs)
    if reduction is not None and reduction <= SHORT_REDUCTION:
        budget = budget * SHORT_ACCUMULATORS // 12
    if max_acc is not None:
        budget = min(budget, max_acc)
    best: tuple[float, int, int] = (-1.0, 1, 1)
    for rc in _divisors(occ):
        if rc > max_reg_c:
            break
        for rn in range(1, min(ow, vregs) + 1):
            acc = rn * rc
            if acc > budget or (rc > 1 and rn > vregs // 3):
                continue
            score = tile_score(ow, rn, rc, copy_free)
            if score > best[0] + 1e-9:
                best = (score, rn, rc)
    return best[1], best[2]


#: accumulators of a NEON tile (:func:`choose_neon_tile`): 6 x 4 (24) made LLVM spill
NEON_MAX_ACCUMULATORS = 20


def choose_neon_tile(
    n: int,
    oh: int,
    ow: int,
    occ: int,
    steps: int,
    max_reg_c: int,
    copy_free: bool,
    cores: int = 1,
) -> tuple[int, int, bool]:
    """``(reg_n, reg_c, flat)`` of the NEON conv (:mod:`.conv2d_neon`, blocks of 4 channels):
    the fewest estimated instructions for the whole output. Per reduction step (``steps = IC/4 *
    KH * KW``) a tile executes ``reg_n`` input loads, ``2 * reg_c`` weight loads (pairs), ``4 *
    reg_n * reg_c`` FMAs and ~3 loop instructions; per tile ~4 per output vector and 10 more; at
    most :data:`NEON_MAX_ACCUMULATORS` accumulators and ``reg_n * reg_c + reg_n + 2 <= 32``
    registers. The width (or, ``flat``, the flattened plane up to 32 x 32) is rounded up to the
    tile (``flat`` only with ``2 * cores`` tasks of ``n x channel tiles``); without padding of its
    own (``copy_free`` False) rounding costs a copy of the input."""
    best: tuple[float, int, int, bool] | None = None
    for rc in _divisors(occ):
        if rc > max_reg_c:
            break
        for rn in range(1, 17):
            if rn * rc > NEON_MAX_ACCUMULATORS or rn * rc + rn + 2 > 32:
                continue
            per_tile = (rn + 2 * rc + 4 * rn * rc + 3) * steps + 4 * rn * rc + 10
            for flat in (False, True):
                if flat and (oh * ow > 32 * 32 or n * (occ // rc) < 2 * cores):
                    continue
                tiles = -(-(oh * ow) // rn) if flat else oh * -(-ow // rn)
                cost = n * (occ // rc) * tiles * (per_tile + (3 * rn if flat else 0))
                rounded = tiles * rn != oh * ow
                if rounded and not copy_free:
                    cost += n * steps * oh * ow * 2  # the padded copy of the input
                if best is None or cost < best[0] * (1 - 1e-9):
                    best = (cost, rn, rc, flat)
    assert best is not None
    return best[1], best[2], best[3]


def choose_conv_params(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    target: Any = None,
) -> ConvParams:
    """Block sizes for a conv2d of logical NCHW ``data_shape`` and OIHW ``weight_shape``."""
    from mcopt.targets.cpu.kernels.conv2d import _pads, _pair, conv_out_size

    info = _info(target)
    n, ic, h, w = (int(d) for d in data_shape)
    oc, _, kh, kw = (int(d) for d in weight_shape)
    sh, sw = _pair(strides)
    dh, dw = _pair(dilation)
    pt, pl, pb, pr = _pads(padding)
    oh = conv_out_size(h, kh, sh, pt, pb, dh)
    ow = conv_out_size(w, kw, sw, pl, pr, dw)
    ic_bn = channel_block(ic, info.lanes)
    oc_bn = channel_block(oc, info.lanes)
    occ, icc = oc // oc_bn, ic // ic_bn
    max_rc = 4
    while max_rc > 1 and n * (occ // min(max_rc, occ)) * oh < 4 * info.cores:
        max_rc //= 2
    # rounding the width is free when the input is padded anyway, and negligible when every input
    # element feeds many MACs (the copy is one load + store per element)
    padded = any((pt, pl, pb, pr)) or oc * kh * kw >= COPY_NEGLIGIBLE_MACS * sh * sw
    reduction = ic * kh * kw
    stem = kw > 1 and ic_bn < info.lanes and oc_bn == info.lanes
    cap = STEM_ACCUMULATORS if stem else None
    if not stem and max(sh, sw) > 1 and ow >= STRIDED_MIN_WIDTH and info.lanes >= 16:
        cap = STRIDED_ACCUMULATORS  # (None: off)
    if info.isa == "neon" and ic_bn == 4 and oc_bn == 4:
        reg_n, reg_c, flat = choose_neon_tile(
            n, oh, ow, occ, icc * kh * kw, max_rc, padded, info.cores
        )
        return ConvParams(ic_bn, oc_bn, reg_n, reg_c, False, 0, flat, 0, flat)
    reg_n, reg_c = choose_register_tile(ow, occ, info.vregs, max_rc, padded, reduction, cap)
    flat = False
    if ow % reg_n and oh * ow <= 32 * 32:
        # tile the flattened plane when that wastes less (parallel over n x oc tiles only)
        frn, frc = choose_register_tile(oh * ow, occ, info.vregs, max_rc, padded, reduction, cap)
        better = tile_score(oh * ow, frn, frc, padded) > 1.02 * tile_score(ow, reg_n, reg_c, padded)
        if better and n * occ // frc >= 4 * info.cores:
            reg_n, reg_c, flat = frn, frc, True
    tile_bytes = reg_c * oc_bn * ic * kh * kw * 4
    ic_chunk, oh_inner = 0, flat
    if tile_bytes > info.l2_bytes // 2 and icc > 1:
        per_block = reg_c * oc_bn * ic_bn * kh * kw * 4
        ic_chunk = max([d for d in _divisors(icc) if d * per_block <= info.l1_bytes] or [1])
        oh_inner = n * occ // reg_c >= 2 * info.cores
    unroll_kw = kw > 1 and ic_bn < info.lanes
    return ConvParams(ic_bn, oc_bn, reg_n, reg_c, unroll_kw, ic_chunk, oh_inner, 0, flat)
