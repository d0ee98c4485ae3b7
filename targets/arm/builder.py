"""ARM (aarch64 Linux) targets: registry entries, cross-compilation, and the cross-compiled model.

Method: the mcopt graph is lowered to Relax and compiled by TVM's LLVM backend for
``mtriple=aarch64-linux-gnu`` with the core's ``mcpu`` and an explicit ``mattr`` (NEON always;
dot-product, fp16 arithmetic, i8mm, SVE where the core has them), through the same mcopt CPU
pipeline as the host (the planned graph: fusion, blocked layouts and mcopt's kernels, default
schedules with 128-bit NEON vectors; or a tuning database of ``mcopt tune``). The object code is
linked into a shared library by Debian's ``aarch64-linux-gnu-g++``
(``tvm.support.cc.cross_compiler``).

The graph is lowered *for the ARM target* (the int8 kernels pick their dot-product instruction
from it: ``sdot`` with ``+dotprod``, plain NEON code otherwise; lowered for the host, an aarch64
build called x86 VNNI intrinsics and LLVM aborted the process). Before any object code exists the
LLVM IR is checked (:func:`mcopt.targets.arm.codegen_guard.check_llvm_ir`: no other architecture's
intrinsics, none the core lacks), and the object code is generated and linked once, at build
time, in a forked child (:func:`~mcopt.targets.arm.codegen_guard.run_isolated`): whatever LLVM still
aborts on is a one-line TargetError, never the end of the user's process. Nothing compiled for
ARM runs in this (x86) process:
:class:`ArmCompiledModel` runs the exported library in an aarch64 TVM runtime — under qemu-user
(:mod:`mcopt.targets.arm.emulate`, set up by ``scripts/setup_aarch64.sh``) or on a real device over RPC
(:mod:`mcopt.targets.tune.rpc`).

Importing this module does not import TVM; it registers the targets below with
:func:`mcopt.targets.registry.register_target`:

=====================  ============  ===========================================  =====
name                   mcpu          mattr                                        cores
=====================  ============  ===========================================  =====
``arm``                generic       +neon                                        4
``arm:cortex-a53``     cortex-a53    +neon                                        4
``arm:cortex-a55``     cortex-a55    +neon +dotprod +fullfp16                     4
``arm:cortex-a72``     cortex-a72    +neon                                        4
``arm:cortex-a76``     cortex-a76    +neon +dotprod +fullfp16                     4
``arm:cortex-a78``     cortex-a78    +neon +dotprod +fullfp16                     4
``arm:cortex-x1``      cortex-x1     +neon +dotprod +fullfp16                     1
``arm:neoverse-n1``    neoverse-n1   +neon +dotprod +fullfp16                     4
``arm:neoverse-v1``    neoverse-v1   +neon +dotprod +fullfp16 +i8mm +bf16 +sve    4
``arm:neoverse-n2``    neoverse-n2   +neon +dotprod +fullfp16 +i8mm +bf16 +sve2   4
=====================  ============  ===========================================  =====

Short aliases: ``arm:a53``, ``arm:a55``, ``arm:a72``, ``arm:a76``, ``arm:a78``, ``arm:x1``,
``arm:n1``, ``arm:v1``, ``arm:n2``, ``aarch64``. Own boards: ``register_target(arm_target("my-board",
mcpu="cortex-a72", num_cores=4))``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcopt.errors import OptionError, TargetError
from mcopt.targets.registry import TargetSpec, get_target, register_target
from mcopt.targets.runtime import CompiledBase, bind_inputs

if TYPE_CHECKING:  # pragma: no cover
    import tvm

    from mcopt.ir.core import Graph

#: The cross linker (Debian package g++-aarch64-linux-gnu).
CROSS_CXX = os.environ.get("MCOPT_AARCH64_CXX", "aarch64-linux-gnu-g++")
TRIPLE = "aarch64-linux-gnu"


@dataclass(frozen=True)
class ArmCore:
    """An ARM core: LLVM ``mcpu``, the features mcopt asks for explicitly, and a usual core count."""

    mcpu: str
    mattr: tuple[str, ...]
    num_cores: int
    note: str


_DOT = ("+neon", "+dotprod", "+fullfp16")
#: name -> core. Feature sets follow the Arm TRMs (Armv8.0: NEON only; Armv8.2 big/little cores:
#: +dotprod +fullfp16; Neoverse V1 (Armv8.4) / N2 (Armv9.0): +i8mm +bf16 and SVE / SVE2).
ARM_CORES: dict[str, ArmCore] = {
    "generic": ArmCore("generic", ("+neon",), 4, "any Armv8-A aarch64 core (NEON)"),
    "cortex-a53": ArmCore("cortex-a53", ("+neon",), 4, "Armv8.0 little core (Raspberry Pi 3)"),
    "cortex-a55": ArmCore("cortex-a55", _DOT, 4, "Armv8.2 little core"),
    "cortex-a72": ArmCore("cortex-a72", ("+neon",), 4, "Armv8.0 big core (Raspberry Pi 4)"),
    "cortex-a76": ArmCore("cortex-a76", _DOT, 4, "Armv8.2 big core (Raspberry Pi 5)"),
    "cortex-a78": ArmCore("cortex-a78", _DOT, 4, "Armv8.2 big core"),
    "cortex-x1": ArmCore("cortex-x1", _DOT, 1, "Armv8.2 prime core"),
    "neoverse-n1": ArmCore("neoverse-n1", _DOT, 4, "Armv8.2 server core (Graviton2, Ampere Altra)"),
    "neoverse-v1": ArmCore(
        "neoverse-v1", (*_DOT, "+i8mm", "+bf16", "+sve"), 4, "Armv8.4 server core (Graviton3)"
    ),
    "neoverse-n2": ArmCore(
        "neoverse-n2", (*_DOT, "+i8mm", "+bf16", "+sve2"), 4, "Armv9.0 server core"
    ),
}
_ALIASES = {
    "a53": "cortex-a53",
    "a55": "cortex-a55",
    "a72": "cortex-a72",
    "a76": "cortex-a76",
    "a78": "cortex-a78",
    "x1": "cortex-x1",
    "n1": "neoverse-n1",
    "v1": "neoverse-v1",
    "n2": "neoverse-n2",
}


def arm_tvm_target(
    mcpu: str = "generic", mattr: Sequence[str] = ("+neon",), num_cores: int = 4
) -> tvm.target.Target:
    """The TVM target dict for an aarch64 Linux core (imports TVM). An ``mcpu`` LLVM does not know
    is a one-line OptionError (LLVM itself would only log and fall back to ``generic``)."""
    import tvm
    from tvm.target import codegen

    base = tvm.target.Target({"kind": "llvm", "mtriple": TRIPLE})
    if mcpu != "generic" and mcpu not in set(codegen.llvm_get_cpu_archlist(base)):
        raise OptionError(
            f"LLVM does not know the aarch64 cpu {mcpu!r}; known ARM cores: {', '.join(ARM_CORES)}"
        )
    attrs: dict[str, Any] = {
        "kind": "llvm",
        "mtriple": TRIPLE,
        "mattr": list(mattr),
        "num-cores": int(num_cores),
    }
    if mcpu != "generic":
        attrs["mcpu"] = mcpu
    return tvm.target.Target(attrs)


def _spec_kwargs(holder: list[TargetSpec]) -> dict[str, Any]:
    """``builder=``: a closure over the spec itself, callable as ``builder(graph)`` or
    ``builder(graph, spec, pipeline=...)``."""

    def builder(
        graph: Graph, spec: Any = None, pipeline: str = "mcopt", db: Any = None,
        repair_db: bool = False,
    ) -> ArmCompiledModel:  # fmt: skip
        target = spec if spec is not None else holder[0]
        return build_arm(graph, target, pipeline, db=db, repair_db=repair_db)

    return {"builder": builder}


def arm_target(
    name: str,
    mcpu: str = "generic",
    mattr: Sequence[str] | None = None,
    num_cores: int | None = None,
    description: str = "",
) -> TargetSpec:
    """A :class:`TargetSpec` for an aarch64 Linux device (not registered: pass it to
    :func:`register_target`). ``mattr``/``num_cores`` default to the core's entry in
    :data:`ARM_CORES` (NEON and 4 cores for an unknown core)."""
    core = ARM_CORES.get(mcpu)
    feats = tuple(mattr) if mattr is not None else (core.mattr if core else ("+neon",))
    if "+neon" not in feats and "-neon" not in feats:
        feats = ("+neon", *feats)
    cores = int(num_cores if num_cores is not None else (core.num_cores if core else 4))
    if cores < 1:
        raise OptionError(f"target {name!r}: num_cores must be >= 1, got {cores}")
    desc = description or (
        f"aarch64 Linux, {mcpu} ({' '.join(feats)}), {cores} core(s); cross-compiled, "
        "runs under qemu (scripts/setup_aarch64.sh) or over RPC"
    )
    holder: list[TargetSpec] = []
    spec = TargetSpec(
        name=name,
        kind="llvm",
        make=lambda: arm_tvm_target(mcpu, feats, cores),
        host_runnable=False,
        description=desc,
        toolchain=CROSS_CXX,
        **_spec_kwargs(holder),
    )
    holder.append(spec)
    return spec


def is_arm_target(spec: TargetSpec) -> bool:
    """Whether ``spec`` compiles for aarch64 (its llvm ``mtriple``)."""
    if spec.kind != "llvm":
        return False
    t = spec.tvm_target()
    triple = t.attrs.get("mtriple") if t.attrs is not None else None
    return bool(triple) and str(triple).startswith("aarch64")


def cross_compiler() -> Any:
    """``fcompile`` for ``export_library``: link with Debian's aarch64 g++ (a one-line TargetError
    naming the package when it is absent)."""
    from tvm.support import cc

    from mcopt.targets.toolchain import require_compiler

    require_compiler(CROSS_CXX, "linking the aarch64 library")
    return cc.cross_compiler(CROSS_CXX)


class ArmCompiledModel(CompiledBase):
    """An aarch64 build: exportable here, runnable in an aarch64 TVM runtime.

    ``run``/``benchmark`` go through the qemu-user emulator when it is set up
    (:func:`mcopt.targets.arm.emulate.emulator_python`) on qemu's model of the target's core
    (:attr:`qemu_cpu`), else they raise a TargetError saying how to set it up or to use
    :func:`mcopt.targets.tune.rpc.run_remote` with a device. Timings under emulation are reported
    with ``emulated=True``: they say nothing about the device's speed.
    """

    host_runnable = False

    def __init__(
        self,
        executable: Any,
        target: str,
        input_specs: Sequence[tuple[str, tuple[int, ...], str]] = (),
        output_names: Sequence[str] = (),
        pipeline: str = "mcopt",
    ) -> None:
        super().__init__(executable, target, input_specs, output_names, pipeline)
        self._lib_dir: tempfile.TemporaryDirectory[str] | None = None
        self._lib_path: Path | None = None

    @property
    def can_run(self) -> bool:
        """Whether :meth:`run` works here (the qemu-user aarch64 runtime is set up)."""
        from mcopt.targets.arm.emulate import unavailable_reason

        return unavailable_reason() is None

    @property
    def qemu_cpu(self) -> str:
        """The qemu CPU model the emulated runs use: the target's core, or the least-featured
        model with all its features (:func:`mcopt.targets.arm.emulate.qemu_cpu_for_target`)."""
        from mcopt.targets.arm.emulate import qemu_cpu_for_target

        try:
            return qemu_cpu_for_target(self.target)
        except OptionError:  # a target name no longer registered: qemu's default CPU
            return "max"

    # --- export ---------------------------------------------------------------------------------
    def generate_code(self) -> None:
        """Generate the object code (and, where the cross linker is installed, the library) in a
        forked child: an LLVM abort is a one-line TargetError (:func:`~mcopt.targets.
        codegen_guard.run_isolated`). Done by :func:`build_arm`; later exports reuse it."""
        import shutil

        from mcopt.targets.arm.codegen_guard import llvm_modules, run_isolated

        if self._lib_path is not None:
            return
        lib_dir = tempfile.TemporaryDirectory(prefix="mcopt-arm-")
        path = Path(lib_dir.name) / "model.so"
        if shutil.which(CROSS_CXX) is not None:
            fcompile = cross_compiler()
            run_isolated(
                lambda: self.executable.export_library(str(path), fcompile=fcompile),
                f"code generation for {self.target!r}",
            )
            self._lib_dir, self._lib_path = lib_dir, path
            return

        def probe() -> None:  # no linker here: generate the object code only
            for i, m in enumerate(llvm_modules(self.executable.mod)):
                m.write_to_file(str(Path(lib_dir.name) / f"probe{i}.o"))

        run_isolated(probe, f"code generation for {self.target!r}")
        lib_dir.cleanup()

    def export_library(self, path: str | os.PathLike[str]) -> Path:
        """Write the aarch64 shared library (linked with the cross g++; atomic: temp + rename)."""
        import shutil

        from mcopt.targets.toolchain import require_compiler

        require_compiler(CROSS_CXX, "linking the aarch64 library")
        src = self.library_path()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=path.suffix or ".so", dir=path.parent
        )
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise TargetError(f"cannot export the aarch64 library to {str(path)!r}: {e}") from None
        return path

    def library_path(self) -> Path:
        """The library generated once (in a child process) in a private temporary directory."""
        if self._lib_path is None:
            from mcopt.targets.toolchain import require_compiler

            require_compiler(CROSS_CXX, "linking the aarch64 library")
            self.generate_code()
        assert self._lib_path is not None
        return self._lib_path

    # --- inputs ---------------------------------------------------------------------------------
    def bind(self, *inputs: Any, **named: Any) -> list[Any]:
        """Numpy arrays in graph-input order from positional / dict / keyword inputs (checked)."""
        return bind_inputs(self.input_specs, inputs, named)

    # --- running (emulated) ---------------------------------------------------------------------
    def run(self, *inputs: Any, **named: Any) -> list[Any]:
        """Run in the emulated aarch64 runtime (qemu-user); outputs as numpy arrays."""
        from mcopt.targets.arm.emulate import run_emulated

        outs, _ = run_emulated(self.library_path(), self.bind(*inputs, **named), cpu=self.qemu_cpu)
        return outs

    __call__ = run

    def benchmark(
        self,
        inputs: Sequence[Any] | Mapping[str, Any],
        number: int = 3,
        repeat: int = 3,
        min_repeat_ms: int = 0,
    ) -> dict[str, Any]:
        """Latency under qemu-user emulation, labelled ``emulated=True`` (meaningless for the device:
        use :func:`mcopt.targets.tune.rpc.run_remote` on a real board for real timings)."""
        from mcopt.targets.arm.emulate import run_emulated

        args = self.bind(inputs) if isinstance(inputs, Mapping) else self.bind(*inputs)
        _, timing = run_emulated(
            self.library_path(),
            args,
            number=number,
            repeat=repeat,
            min_repeat_ms=min_repeat_ms,
            cpu=self.qemu_cpu,
        )
        assert timing is not None
        return timing

    def __repr__(self) -> str:
        ins = ", ".join(f"{n}: {d}{list(s)}" for n, s, d in self.input_specs)
        return (
            f"ArmCompiledModel(target={self.target!r}, pipeline={self.pipeline!r}, inputs=[{ins}])"
        )


def build_arm(
    graph: Graph,
    target: str | TargetSpec = "arm",
    pipeline: str = "mcopt",
    *,
    db: str | os.PathLike[str] | None = None,
    repair_db: bool = False,
) -> ArmCompiledModel:
    """Lower ``graph`` for an aarch64 target, compile it and generate its code (no code runs
    here).

    The host build's path for the ARM target: the planned lowering of ``pipeline="mcopt"``
    (:func:`~mcopt.targets.relax.builder.lower_for`: fusion, NCHW[x]c layouts and the blocked
    fp32 / int8 kernels, ``sdot`` with ``+dotprod``; the plain lowering for other pipelines) and
    ``compile_module`` (same Relax pipeline and default CPU schedules, with the target's 128-bit
    NEON vector width and core count) -- the same tasks ``mcopt tune`` tunes for this target.
    ``db``: a tuning database of this target (``mcopt tune``), applied as by
    :func:`mcopt.targets.tune.apply.build_with_database`. The LLVM IR is checked and the object
    code generated in a child process (module docstring): what LLVM cannot compile is a one-line
    TargetError."""
    from mcopt.targets.relax.builder import compile_module, lower_for, lowering_choices

    spec = get_target(target)
    if not is_arm_target(spec):
        raise TargetError(f"target {spec.name!r} is not an aarch64 target")
    tgt = spec.tvm_target()
    report = None
    if db is not None:
        from mcopt.targets.tune.apply import compile_with_database

        ex, choices, report = compile_with_database(graph, db, spec, repair=repair_db)
        pipeline = "mcopt+db"
    else:
        with tgt:
            mod = lower_for(graph, spec, pipeline)
        choices = lowering_choices(mod)
        ex = compile_module(mod, spec, pipeline)
    specs = [(v.name, tuple(v.shape), v.dtype) for v in graph.inputs]
    model = ArmCompiledModel(ex, spec.name, specs, [v.name for v in graph.outputs], pipeline)
    model.choices = choices
    if report is not None:
        model.tuning_report = report
    model.generate_code()
    return model


def _register_builtin() -> None:
    register_target(arm_target("arm", "generic"), "aarch64", replace=True)
    for cpu in ARM_CORES:
        if cpu == "generic":
            continue
        aliases = [f"arm:{a}" for a, full in _ALIASES.items() if full == cpu]
        register_target(arm_target(f"arm:{cpu}", cpu), *aliases, replace=True)


_register_builtin()

__all__ = [
    "ARM_CORES",
    "ArmCompiledModel",
    "ArmCore",
    "arm_target",
    "arm_tvm_target",
    "bind_inputs",
    "build_arm",
    "cross_compiler",
    "is_arm_target",
]
