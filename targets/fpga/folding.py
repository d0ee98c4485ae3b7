"""Folding (per-layer parallelism) and resource / latency estimates for the ``fpga`` target.

Method (FINN, Umuroglu et al., "FINN: A Framework for Fast, Scalable Binarized Neural Network
Inference", FPGA 2017, and its ``SetFolding`` transform; hls4ml's *reuse factor* is the same knob seen
from the other side): a layer with ``MH`` output channels and ``MW = C_in/groups * kh * kw`` inputs per
output runs on a matrix-vector unit of ``PE`` processing elements (``PE | MH``) each taking ``SIMD``
inputs per cycle (``SIMD | MW``). Per inference it needs::

    cycles = pixels * (MH / PE) * (MW / SIMD)        multipliers = PE * SIMD
    reuse factor (hls4ml) = (MH * MW) / (PE * SIMD)  = the pipeline II per output pixel

In a layer-pipelined (dataflow) design the throughput is set by the slowest layer (initiation interval
``II = max cycles``) and the latency is at most the sum of the layer cycles. The folding is chosen for a
target II (from ``target_fps`` at ``clock_mhz``) with the fewest multipliers per layer; without a
target, the smallest II whose multipliers fit the DSP budget (binary search).

Resource model (an estimate, not a synthesis result): one DSP48 per multiplier for operands wider
than 4 bits (a DSP48E1/E2 multiplies 18x25 / 18x27 bits, so 8- and 16-bit operands take one each);
4-bit and narrower multiply in LUTs (as FINN does), ~``wbits * abits`` LUTs each. Weights live in
BRAM36 blocks: a memory of depth ``(MH/PE)*(MW/SIMD)`` and width ``PE*SIMD*wbits`` in the cheapest
BRAM36 aspect ratio (512x72 ... 32Kx1); memories shallower than 64 words go to LUTRAM. Line buffers of the sliding window: ``(kh-1)`` padded input
rows plus ``kw`` pixels, times ``C_in * abits`` bits; residual adds buffer the skip tensor in a FIFO
(upper bound: the whole tensor). Defaults describe a Zynq-7020 (PYNQ-Z1; FINN's and hls4ml's
reference board): 220 DSP48E1, 140 BRAM36, 200 MHz.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mcopt.errors import OptionError
from mcopt.ir.core import Graph, Node

#: weight memories shallower than this go to LUTRAM (distributed RAM) instead of BRAM
LUTRAM_DEPTH = 64
#: BRAM36 aspect ratios (width, depth)
_BRAM36 = ((72, 512), (36, 1024), (18, 2048), (9, 4096), (4, 8192), (2, 16384), (1, 32768))


@dataclass(frozen=True)
class FpgaDevice:
    """The resources the estimate is compared with."""

    name: str = "xc7z020"
    dsp: int = 220
    bram36: int = 140
    clock_mhz: float = 200.0


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def bram36_blocks(depth: int, width: int) -> int:
    """BRAM36 blocks for a depth x width memory (best aspect ratio; 0 for an empty memory)."""
    if depth <= 0 or width <= 0:
        return 0
    return min(math.ceil(width / w) * math.ceil(depth / d) for w, d in _BRAM36)


@dataclass
class LayerFold:
    """One layer's folding and estimate."""

    name: str
    op: str
    kind: str  # "mvau" (conv/dense), "pool", "eltwise", "move"
    pixels: int = 1
    mh: int = 1
    mw: int = 1
    pe: int = 1
    simd: int = 1
    wbits: int = 0
    abits: int = 8
    cycles: int = 0
    dsp: int = 0
    lut_mults: int = 0
    weight_bits: int = 0
    bram36: int = 0
    buffer_bits: int = 0
    lutram_bits: int = 0

    @property
    def reuse_factor(self) -> int:
        return (self.mh * self.mw) // max(1, self.pe * self.simd)

    def set_fold(self, pe: int, simd: int) -> None:
        self.pe, self.simd = pe, simd
        self.cycles = self.pixels * math.ceil(self.mh / pe) * math.ceil(self.mw / simd)
        mults = pe * simd if self.kind in ("mvau", "pool_avg") else 0
        lut = max(self.wbits, self.abits) <= 4
        self.dsp = 0 if lut else mults
        self.lut_mults = mults if lut else 0
        if self.kind == "mvau":
            depth = math.ceil(self.mh / pe) * math.ceil(self.mw / simd)
            shallow = depth < LUTRAM_DEPTH  # shallow, wide memories map to LUTRAM / registers
            self.bram36 = 0 if shallow else bram36_blocks(depth, pe * simd * self.wbits)
            self.lutram_bits = self.weight_bits if shallow else 0


@dataclass
class FoldingPlan:
    """Folding of every layer and the totals at `device`'s clock."""

    layers: list[LayerFold]
    device: FpgaDevice
    target_fps: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ii_cycles(self) -> int:
        return max((lf.cycles for lf in self.layers), default=0)

    @property
    def latency_cycles(self) -> int:
        return sum(lf.cycles for lf in self.layers)

    def totals(self) -> dict[str, Any]:
        clk = self.device.clock_mhz * 1e6
        ii, lat = self.ii_cycles, self.latency_cycles
        dsp = sum(lf.dsp for lf in self.layers)
        bram = sum(lf.bram36 for lf in self.layers)
        return {
            "dsp": dsp,
            "dsp_budget": self.device.dsp,
            "lut_multipliers": sum(lf.lut_mults for lf in self.layers),
            "bram36": bram,
            "bram36_budget": self.device.bram36,
            "weight_bits": sum(lf.weight_bits for lf in self.layers),
            "buffer_bits": sum(lf.buffer_bits for lf in self.layers),
            "lutram_bits": sum(lf.lutram_bits for lf in self.layers),
            "ii_cycles": ii,
            "latency_cycles": lat,
            "clock_mhz": self.device.clock_mhz,
            "fps": clk / ii if ii else float("inf"),
            "latency_us": lat / self.device.clock_mhz if lat else 0.0,
            "fits": dsp <= self.device.dsp and bram <= self.device.bram36,
            "meets_target": self.target_fps is None or (ii and clk / ii >= self.target_fps),
        }

    def by_name(self) -> dict[str, LayerFold]:
        return {lf.name: lf for lf in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": asdict(self.device),
            "target_fps": self.target_fps,
            "totals": self.totals(),
            "layers": [{**asdict(lf), "reuse_factor": lf.reuse_factor} for lf in self.layers],
            "notes": list(self.notes),
        }

    def to_markdown(self) -> str:
        t = self.totals()
        lines = [
            f"FPGA estimate on {self.device.name} at {t['clock_mhz']:.0f} MHz: "
            f"{t['dsp']}/{t['dsp_budget']} DSP, {t['bram36']}/{t['bram36_budget']} BRAM36, "
            f"II {t['ii_cycles']} cycles ({t['fps']:.0f} inferences/s), latency "
            f"{t['latency_cycles']} cycles ({t['latency_us']:.1f} us)",
            "",
            "| layer | op | MH x MW | PE | SIMD | reuse | cycles | DSP | BRAM36 | weight bits | buffer bits |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for lf in self.layers:
            lines.append(
                f"| {lf.name} | {lf.op} | {lf.mh} x {lf.mw} | {lf.pe} | {lf.simd} | {lf.reuse_factor} | "
                f"{lf.cycles} | {lf.dsp} | {lf.bram36} | {lf.weight_bits} | {lf.buffer_bits} |"
            )
        lines.extend(f"- {n}" for n in self.notes)
        return "\n".join(lines) + "\n"


def _bits_of(dtype: str) -> int:
    return np.dtype(dtype).itemsize * 8


def _layer(n: Node) -> LayerFold | None:
    """The folding problem of one integer node (per sample: the batch loops outside)."""
    x = n.inputs[0]
    assert x is not None
    out = n.output
    abits = int(n.attrs.get("bits", _bits_of(x.dtype)))
    if n.op in ("fx_conv2d", "fx_dense"):
        w = n.inputs[1]
        assert w is not None and w.const is not None
        enc = w.type.encoding
        wbits = int(getattr(enc, "bits", _bits_of(w.dtype)))
        if n.op == "fx_conv2d":
            pixels, mw = out.shape[2] * out.shape[3], w.shape[1] * w.shape[2] * w.shape[3]
            kh, kw = w.shape[2], w.shape[3]
            pt, pl, pb, pr = n.attrs["pads"]
            wp = x.shape[3] + pl + pr
            buf = ((kh - 1) * wp + kw) * x.shape[1] * _bits_of(x.dtype) if kh * kw > 1 else 0
        else:
            pixels, mw, buf = int(np.prod(out.shape[1:-1], dtype=np.int64)), w.shape[1], 0
        wb = w.type.nbytes * 8 + sum(
            v.type.nbytes * 8 for v in n.inputs[2:] if v is not None and v.const is not None
        )
        lf = LayerFold(n.name, n.op, "mvau", pixels, w.shape[0], mw, wbits=wbits, abits=abits)
        lf.weight_bits, lf.buffer_bits = wb, buf
        return lf
    if n.op in ("fx_max_pool", "fx_avg_pool"):
        kh, kw = n.attrs["kernel"]
        pl, pr = n.attrs["pads"][1], n.attrs["pads"][3]
        wp = x.shape[3] + pl + pr
        kind = "pool_avg" if n.op == "fx_avg_pool" else "pool"
        lf = LayerFold(
            n.name, n.op, kind, out.shape[2] * out.shape[3], out.shape[1], kh * kw, abits=abits
        )
        lf.wbits = 16 if kind == "pool_avg" else 0  # the multiply-shift multiplier
        lf.buffer_bits = ((kh - 1) * wp + kw) * x.shape[1] * _bits_of(x.dtype) if kh > 1 else 0
        return lf
    if n.op in ("fx_add", "fx_relu", "fx_clip"):
        c = out.shape[1] if out.type.rank > 1 else 1
        lf = LayerFold(n.name, n.op, "eltwise", out.type.size // max(c, 1) // out.shape[0], c, 1)
        if n.op == "fx_add":  # the skip branch waits in a FIFO (upper bound: the whole tensor)
            lf.buffer_bits = (x.type.size // x.shape[0]) * _bits_of(x.dtype)
        return lf
    return None  # flatten / reshape / identity: wiring


def _fold_for(lf: LayerFold, target: int) -> None:
    """Fewest multipliers (then most SIMD) with cycles <= target; fully parallel if none."""
    best: tuple[int, int, int, int] | None = None
    for pe in _divisors(lf.mh):
        for simd in _divisors(lf.mw):
            cyc = lf.pixels * (lf.mh // pe) * (lf.mw // simd)
            if cyc <= target:
                key = (pe * simd, -simd, pe, simd)
                if best is None or key < best:
                    best = key
    if best is None:
        lf.set_fold(lf.mh, lf.mw)
    else:
        lf.set_fold(best[2], best[3])


def plan_folding(
    graph: Graph, device: FpgaDevice | None = None, target_fps: float | None = None
) -> FoldingPlan:
    """Choose PE x SIMD per layer for `target_fps` (or the best throughput within the DSP budget)."""
    device = device or FpgaDevice()
    if device.dsp < 0 or device.clock_mhz <= 0:
        raise OptionError(f"fpga: bad device {device} (dsp >= 0 and clock_mhz > 0 needed)")
    if target_fps is not None and target_fps <= 0:
        raise OptionError(f"fpga: target_fps must be > 0, got {target_fps}")
    layers = [lf for n in graph.nodes if (lf := _layer(n)) is not None]
    plan = FoldingPlan(layers, device, target_fps)
    if not layers:
        return plan
    slowest = max(lf.pixels * lf.mh * lf.mw for lf in layers)

    def dsp_at(t: int) -> int:
        for lf in layers:
            _fold_for(lf, t)
        return sum(lf.dsp for lf in layers)

    lo, hi = 1, slowest  # smallest II whose DSPs fit the budget
    while lo < hi:
        mid = (lo + hi) // 2
        if dsp_at(mid) <= device.dsp:
            hi = mid
        else:
            lo = mid + 1
    t_budget = lo
    if target_fps is not None:
        t_fps = max(1, int(device.clock_mhz * 1e6 // target_fps))
        if t_fps < t_budget:
            plan.notes.append(
                f"target {target_fps:g} inferences/s needs II <= {t_fps} cycles, more DSPs than the "
                f"budget ({device.dsp}); folded for the best II within the budget ({t_budget})"
            )
        t = max(t_fps, t_budget)
    else:
        t = t_budget
    dsp_at(t)
    if sum(lf.dsp for lf in layers) > device.dsp:
        plan.notes.append(
            f"even fully folded (PE=SIMD=1) the design needs more than {device.dsp} DSPs"
        )
    return plan


__all__ = ["FoldingPlan", "FpgaDevice", "LayerFold", "bram36_blocks", "plan_folding"]
