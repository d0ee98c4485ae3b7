"""CUDA GPU targets: registry entries, the GPU build, and the compiled model.

Method: the mcopt graph is lowered to Relax and compiled with TVM's default CUDA pipeline
(``relax.get_default_pipeline(target)``: LegalizeOps, FuseOps/FuseTIR, then DLight's GPU rules
Matmul / GEMV / Reduction / GeneralReduction / Fallback bind every loop nest to blocks and threads),
then ``tvm.compile`` with TVM's CUDA codegen. A PrimFunc without thread bindings would run on the
host and fail or crawl on the device, so :func:`build_cuda` checks that every PrimFunc is bound
and names the ones that are not. Compiling needs no GPU: without NVRTC/nvcc the library embeds the
CUDA C source, which the runtime compiles when it is loaded on a GPU machine. Running needs a GPU
(``tvm.cuda().exist``); tests skip cleanly elsewhere.

Targets (Importing this module does not import TVM): ``cuda`` (sm_80), ``cuda:sm_70``, ``cuda:sm_75``,
``cuda:sm_80``, ``cuda:sm_86``, ``cuda:sm_89``, ``cuda:sm_90``; aliases ``gpu``, ``cuda:v100``,
``cuda:t4``, ``cuda:a100``, ``cuda:a10``, ``cuda:l4``, ``cuda:h100``. Own GPUs:
``register_target(cuda_target("my-gpu", arch="sm_87"))``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcopt.errors import OptionError, TargetError
from mcopt.targets.registry import TargetSpec, get_target, register_target
from mcopt.targets.runtime import CompiledBase

if TYPE_CHECKING:  # pragma: no cover
    import tvm

    from mcopt.ir.core import Graph

#: arch -> (max threads per block, GPUs) for the built-in entries.
CUDA_ARCHS: dict[str, tuple[int, str]] = {
    "sm_70": (1024, "Volta (V100)"),
    "sm_75": (1024, "Turing (T4, RTX 20xx)"),
    "sm_80": (1024, "Ampere (A100)"),
    "sm_86": (1024, "Ampere (A10, RTX 30xx)"),
    "sm_89": (1024, "Ada (L4, RTX 40xx)"),
    "sm_90": (1024, "Hopper (H100, H200)"),
}
_ALIASES = {
    "v100": "sm_70",
    "t4": "sm_75",
    "a100": "sm_80",
    "a10": "sm_86",
    "l4": "sm_89",
    "h100": "sm_90",
}
DEFAULT_ARCH = "sm_80"


def cuda_tvm_target(arch: str = DEFAULT_ARCH, max_threads: int = 1024) -> tvm.target.Target:
    """``{"kind": "cuda", "arch": ..., "host": <this CPU's llvm>}`` (imports TVM)."""
    import tvm

    from mcopt.targets.cpu.kernels.target_info import host_target

    if not arch.startswith("sm_") or not arch[3:].isdigit():
        raise OptionError(f"bad CUDA arch {arch!r}: expected sm_XX (e.g. sm_80)")
    return tvm.target.Target(
        {"kind": "cuda", "arch": arch, "max_num_threads": int(max_threads)}, host=host_target()
    )


def cuda_target(
    name: str, arch: str = DEFAULT_ARCH, max_threads: int = 1024, description: str = ""
) -> TargetSpec:
    """A :class:`TargetSpec` for a CUDA GPU of compute capability ``arch`` (not registered)."""
    fields = getattr(TargetSpec, "__dataclass_fields__", {})
    extra: dict[str, Any] = {"builder": build_cuda} if "builder" in fields else {}
    gpus = CUDA_ARCHS.get(arch, (0, "CUDA GPU"))[1]
    return TargetSpec(
        name=name,
        kind="cuda",
        make=lambda: cuda_tvm_target(arch, max_threads),
        host_runnable=False,
        description=description
        or f"NVIDIA {gpus}, {arch}: DLight GPU schedules; runs where a GPU is",
        **extra,
    )


def gpu_available() -> bool:
    """Whether a CUDA GPU and TVM's CUDA runtime are usable in this process."""
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


def unbound_primfuncs(mod: tvm.IRModule) -> list[str]:
    """Names of PrimFuncs in ``mod`` with no GPU thread binding (they would run as host code)."""
    from tvm import tirx

    bad = []
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        # TVM 0.27 has no Python TIR visitor: the printed TVMScript shows every thread binding.
        text = func.script()
        if not any(tok in text for tok in ("T.thread_binding", "blockIdx.", "threadIdx.")):
            bad.append(gv.name_hint)
    return sorted(bad)


class CudaCompiledModel(CompiledBase):
    """A CUDA build: exportable anywhere, runnable where ``tvm.cuda().exist``."""

    host_runnable = False
    device_kind = "cuda"

    def __init__(
        self,
        executable: Any,
        target: str,
        input_specs: Sequence[tuple[str, tuple[int, ...], str]] = (),
        output_names: Sequence[str] = (),
        pipeline: str = "default",
    ) -> None:
        super().__init__(executable, target, input_specs, output_names, pipeline)
        self._local = threading.local()  # a VM per thread: a Relax VM's frames are not shared

    @property
    def can_run(self) -> bool:
        """Whether :meth:`run` works here (a CUDA GPU is visible)."""
        return gpu_available()

    def export_library(self, path: str | os.PathLike[str]) -> Path:
        """Write the library (host code + CUDA kernels; atomic: temp + rename), linked by the host
        C++ compiler (a one-line TargetError when there is none)."""
        from mcopt.targets.toolchain import HOST_CXX, require_compiler

        require_compiler(HOST_CXX, "exporting the compiled library")
        return self._export_atomic(path, "library", _last_line)

    def _vm_or_raise(self) -> Any:
        vm = getattr(self._local, "vm", None)
        if vm is None:
            if not gpu_available():
                raise TargetError(
                    f"target {self.target!r} needs a CUDA GPU to run and none is visible here; "
                    "export_library() and run it on a GPU machine or with run_remote"
                )
            import tvm
            from tvm import relax

            vm = self._local.vm = relax.VirtualMachine(self.executable, tvm.cuda(0))
        return vm

    def run(self, *inputs: Any, **named: Any) -> list[Any]:
        """Run on the GPU (inputs as for :class:`~mcopt.targets.relax.builder.CompiledModel`)."""
        import tvm

        from mcopt.targets.runtime import bind_inputs
        from mcopt.targets.tune.rpc import _flatten

        vm = self._vm_or_raise()
        dev = tvm.cuda(0)
        args = [tvm.runtime.tensor(a, dev) for a in bind_inputs(self.input_specs, inputs, named)]
        return _flatten(vm["main"](*args))

    __call__ = run

    def benchmark(
        self,
        inputs: Sequence[Any] | Mapping[str, Any],
        number: int = 10,
        repeat: int = 3,
        min_repeat_ms: int = 0,
    ) -> dict[str, float]:
        """GPU latency of one run in ms (``time_evaluator``, device-synchronised)."""
        import numpy as np
        import tvm

        from mcopt.targets.runtime import bind_inputs

        vm = self._vm_or_raise()
        dev = tvm.cuda(0)
        raw = [inputs] if isinstance(inputs, Mapping) else list(inputs)
        args = [tvm.runtime.tensor(a, dev) for a in bind_inputs(self.input_specs, raw, {})]
        ft = vm.time_evaluator(
            "main", dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
        )
        res = np.asarray(ft(*args).results, dtype=np.float64) * 1e3
        return {
            "median_ms": float(np.median(res)),
            "mean_ms": float(res.mean()),
            "std_ms": float(res.std()),
            "min_ms": float(res.min()),
        }

    def __repr__(self) -> str:
        ins = ", ".join(f"{n}: {d}{list(s)}" for n, s, d in self.input_specs)
        return f"CudaCompiledModel(target={self.target!r}, inputs=[{ins}])"


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def compile_cuda_module(mod: tvm.IRModule, spec: TargetSpec) -> Any:
    """Default GPU pipeline (DLight rules) + the binding check + ``tvm.compile``."""
    import tvm
    from tvm import relax

    target = spec.tvm_target()
    try:
        with target:
            mod = relax.get_default_pipeline(target)(mod)
    except Exception as e:
        raise TargetError(
            f"GPU pipeline for target {spec.name!r} failed: {_last_line(e)}"
        ) from None
    unbound = unbound_primfuncs(mod)
    if unbound:
        raise TargetError(
            f"target {spec.name!r}: kernel(s) {', '.join(unbound[:5])} got no GPU schedule "
            "(no DLight rule applied); they would run as host code"
        )
    try:
        return tvm.compile(mod, target=target, relax_pipeline=None)
    except Exception as e:
        raise TargetError(f"TVM build for target {spec.name!r} failed: {_last_line(e)}") from None


def build_cuda(
    graph: Graph, target: str | TargetSpec = "cuda", pipeline: str = "default"
) -> CudaCompiledModel:
    """Lower ``graph`` and compile it for a CUDA target (no GPU needed to compile). The GPU
    pipeline is always TVM's default one with DLight; ``pipeline`` is only recorded."""
    from mcopt.targets.relax.lower import lower

    spec = get_target(target)
    if spec.kind != "cuda":
        raise TargetError(f"target {spec.name!r} is not a CUDA target")
    ex = compile_cuda_module(lower(graph), spec)
    specs = [(v.name, tuple(v.shape), v.dtype) for v in graph.inputs]
    return CudaCompiledModel(ex, spec.name, specs, [v.name for v in graph.outputs], pipeline)


def _register_builtin() -> None:
    register_target(cuda_target("cuda", DEFAULT_ARCH), "gpu", replace=True)
    for arch in CUDA_ARCHS:
        aliases = [f"cuda:{a}" for a, full in _ALIASES.items() if full == arch]
        register_target(cuda_target(f"cuda:{arch}", arch), *aliases, replace=True)


_register_builtin()

__all__ = [
    "CUDA_ARCHS",
    "CudaCompiledModel",
    "build_cuda",
    "compile_cuda_module",
    "cuda_target",
    "cuda_tvm_target",
    "gpu_available",
    "unbound_primfuncs",
]
