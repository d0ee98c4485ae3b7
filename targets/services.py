"""The target side of :class:`mcopt.pass_manager.TargetServices`: what a pass may ask of the
compile target (time a 3x3 conv's direct and Winograd kernels; whether its int8 dot product needs
7-bit weights). TVM is imported only when a service is used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TargetServices:
    name: str

    def measure_winograd(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        from mcopt.targets.cpu.kernels.winograd_nchwc import cached_measurement

        return cached_measurement(*args, **kwargs)

    def int8_reduce_range(self) -> bool:
        """Whether 8-bit weights should use 7-bit codes ([-64, 63]) on this target: only where
        its fastest exact int8 dot product needs them (AVX2 / AVX-512BW ``vpmaddubsw`` saturates
        int16 pairs). VNNI ``vpdpbusd``, AArch64 ``sdot``, CUDA ``dp4a`` and plain int32 code
        accumulate exactly with full 8-bit weights, so quantizing to 7 bits there only adds error."""
        from mcopt.targets.registry import get_target

        spec = get_target(self.name)
        if spec.kind != "llvm":
            return False
        from mcopt.targets.cpu.kernels.int8_intrin import choose_isa

        target = spec.tvm_target()
        return choose_isa(target, weight_7bit=True) != choose_isa(target, weight_7bit=False)

    def channel_multiple(self) -> int:
        """The channel count this target's conv kernels hold without padding: the larger of the
        fp32 SIMD block (NCHW[x]c lanes) and the int8 kernels' output block — 16 on AVX-512, 8 on
        AVX2, 4 on NEON; 1 for GPU / FPGA targets. Channel pruning keeps multiples of it: a
        pruned count between two multiples runs as the larger one (zero-padded lanes)."""
        from mcopt.targets.registry import get_target

        spec = get_target(self.name)
        if spec.kind != "llvm":
            return 1
        from mcopt.targets.cpu.kernels import cpu_info
        from mcopt.targets.cpu.planning import _int8_lanes

        target = spec.tvm_target()
        return max(int(cpu_info(target).lanes), _int8_lanes(target)[0])


def services_for(target: str) -> TargetServices:
    """The services of the target named `target` (checked against the registry)."""
    from mcopt.targets.registry import get_target

    return TargetServices(get_target(target).name)


__all__ = ["TargetServices", "services_for"]
