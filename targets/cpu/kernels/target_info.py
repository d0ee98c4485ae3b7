"""What a schedule template needs to know about a CPU target: SIMD lanes, vector registers, cores.

Derived from a ``tvm.target.Target`` (llvm kind):

============  =====  =========  ============================================
ISA           lanes  registers  detected by
============  =====  =========  ============================================
AVX-512       16     32         ``avx512f`` in the target's features
AVX2 / AVX    8      16         ``avx2`` / ``avx``
SSE (x86-64)  4      16         any other x86 target
NEON          4      32         ``mtriple`` aarch64 / arm
============  =====  =========  ============================================

(lanes are for fp32; ``num-cores`` comes from the target, default 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CPUInfo:
    """SIMD width (fp32 lanes), number of vector registers and cores of a CPU target."""

    lanes: int = 8
    vregs: int = 16
    cores: int = 1
    l1_bytes: int = 32 * 1024
    l2_bytes: int = 512 * 1024
    isa: str = "avx2"


def cpu_info(target: Any) -> CPUInfo:
    """The :class:`CPUInfo` of a ``tvm.target.Target`` (or of a dict accepted by it; None: this
    host)."""
    import tvm
    from tvm.target.codegen import target_has_features

    if target is None:
        target = host_target()
    if not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(target)
    attrs = target.attrs if target.attrs is not None else {}
    cores = int(attrs.get("num-cores", 1) or 1)
    triple = str(attrs.get("mtriple", "") or "")
    if triple.startswith(("aarch64", "arm")):
        return CPUInfo(lanes=4, vregs=32, cores=cores, isa="neon")

    def has(feature: str) -> bool:
        try:
            return bool(target_has_features(feature, target))
        except Exception:  # a target whose features LLVM cannot answer for
            return False

    if has("avx512f"):
        return CPUInfo(lanes=16, vregs=32, cores=cores, l2_bytes=1024 * 1024, isa="avx512")
    if has("avx2") or has("avx"):
        return CPUInfo(lanes=8, vregs=16, cores=cores, isa="avx2")
    return CPUInfo(lanes=4, vregs=16, cores=cores, isa="sse")


def host_target(num_cores: int | None = None) -> Any:
    """The host llvm target with its real ``mcpu`` (a bare llvm target would mean SSE2 only)."""
    import tvm
    from tvm.target.codegen import llvm_get_system_cpu

    from mcopt.targets.cpu.host_threads import physical_cores

    cores = num_cores or physical_cores()
    return tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu(), "num-cores": cores})
