"""Target registry: the names users pass as ``target=`` and what each means for TVM.

Importing this module does not import TVM; :meth:`TargetSpec.tvm_target` does, on first use.
Later issues add ``arm`` (aarch64 llvm, cross-compiled), ``cuda`` and ``fpga`` by calling
:func:`register_target` with their own :class:`TargetSpec`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcopt.errors import OptionError

if TYPE_CHECKING:  # pragma: no cover
    import tvm


@dataclass(frozen=True)
class TargetSpec:
    """One named target.

    - ``name``: what users write (``"cpu"``).
    - ``kind``: the TVM target kind (``"llvm"``, later ``"cuda"``, ``"c"`` for fpga).
    - ``make``: builds the ``tvm.target.Target`` (called lazily: it imports TVM).
    - ``host_runnable``: compiled code runs in this process (so ``CompiledModel.run`` works).
    - ``description``: one line for ``mcopt --help`` and error messages.
    - ``builder``: a target compiled by its own function instead of the TVM CPU path (fpga emits
      C, arm cross-compiles): ``builder(graph, **options) -> CompiledModel-like``.
    - ``toolchain``: the compiler its libraries are linked with, checked before building
      (:func:`mcopt.targets.toolchain.require_toolchain`): ``"c++"`` the host C++ compiler TVM
      calls, ``"cc"`` a host C compiler, ``"none"``, or a program name (``aarch64-linux-gnu-g++``).
    """

    name: str
    kind: str
    make: Callable[[], tvm.target.Target]
    host_runnable: bool = True
    description: str = ""
    builder: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    toolchain: str = "c++"
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def tvm_target(self) -> tvm.target.Target:
        """The TVM target (built once per spec)."""
        if "target" not in self._cache:
            self._cache["target"] = self.make()
        return self._cache["target"]

    @property
    def num_cores(self) -> int:
        """Cores the generated code may use (``num-cores`` of an llvm target; 1 otherwise)."""
        t = self.tvm_target()
        n = t.attrs.get("num-cores") if t.attrs is not None else None
        return int(n) if n else 1

    def vector_lanes(self, dtype_bits: int = 32) -> int:
        """SIMD lanes for a scalar type of ``dtype_bits`` on this target (x86: AVX-512/AVX2/SSE)."""
        if self.kind != "llvm":
            return 1
        from tvm.target.codegen import target_has_features

        t = self.tvm_target()
        bits = 128
        try:
            if target_has_features("avx512f", t):
                bits = 512
            elif target_has_features("avx2", t) or target_has_features("avx", t):
                bits = 256
        except Exception:  # non-x86 llvm targets: NEON/SVE baseline
            bits = 128
        return max(bits // dtype_bits, 1)


def _host_cpu() -> tvm.target.Target:
    # A dict target is required in TVM 0.27; a bare {"kind": "llvm"} means generic x86-64 (SSE2).
    from mcopt.targets.cpu.kernels.target_info import host_target

    return host_target()


_REGISTRY: dict[str, TargetSpec] = {}


def register_target(spec: TargetSpec, *aliases: str, replace: bool = False) -> TargetSpec:
    """Add a target under its name (and aliases). Re-registering a name needs ``replace=True``."""
    for name in (spec.name, *aliases):
        if name in _REGISTRY and not replace:
            raise ValueError(f"target {name!r} is already registered")
        _REGISTRY[name] = spec
    return spec


#: modules that register further targets when imported (none imports TVM at import time)
TARGET_MODULES = (
    "mcopt.targets.fpga.builder",
    "mcopt.targets.arm.builder",
    "mcopt.targets.cuda.builder",
)
_modules_loaded = False


def _load_target_modules() -> None:
    global _modules_loaded
    if _modules_loaded:
        return
    _modules_loaded = True
    import importlib
    import importlib.util

    for module in TARGET_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def target_names() -> list[str]:
    """Every name :func:`get_target` accepts."""
    _load_target_modules()
    return sorted(_REGISTRY)


def get_target(name: str | TargetSpec = "cpu") -> TargetSpec:
    """The :class:`TargetSpec` registered as ``name``; an unknown name is a one-line OptionError."""
    if isinstance(name, TargetSpec):
        return name
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        _load_target_modules()
    try:
        return _REGISTRY[key]
    except KeyError:
        raise OptionError(
            f"unknown target {name!r}; valid targets: {', '.join(target_names())}"
        ) from None


register_target(
    TargetSpec(
        name="cpu",
        kind="llvm",
        make=_host_cpu,
        description="this machine's CPU (llvm with the host's mcpu, all cores)",
    ),
    "x86",
)

__all__ = ["TargetSpec", "get_target", "register_target", "target_names"]
