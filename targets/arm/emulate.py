"""Run aarch64 libraries on this x86 machine: an aarch64 Python + TVM runtime under qemu-user.

Method: ``scripts/setup_aarch64.sh`` extracts Debian's arm64 ``python3.11`` packages into a sysroot,
unpacks the ``manylinux_2_28_aarch64`` wheels of apache-tvm / apache-tvm-ffi / numpy into it, and
writes a wrapper ``$ROOT/bin/python3`` that runs ``qemu-aarch64-static -L SYSROOT -0 <wrapper>
SYSROOT/usr/bin/python3.11`` (``-0`` makes ``sys.executable`` the wrapper, so TVM's worker processes
re-launch through qemu too; no binfmt registration is needed).

In that runtime ``TVM_USE_RUNTIME_LIB=1`` loads only ``libtvm_runtime`` (``tvm.relax`` needs the
compiler library, so the VM is ``tvm.runtime.vm.VirtualMachine``). :func:`run_emulated` passes inputs
and outputs as ``.npz`` files and one small driver script; :func:`start_emulated_rpc_server` starts
the same runtime as a TVM RPC server (``python -m tvm.exec.rpc_server``) on 127.0.0.1 — the way a
phone or board is used — for :func:`mcopt.targets.tune.rpc.run_remote`.

The emulated CPU is pinned to the target's core (``qemu-aarch64-static -cpu cortex-a53``, and
``QEMU_CPU`` for processes the runtime re-launches): qemu's default ``max`` CPU has every
extension, so a library using one the device lacks (``sdot`` on a Cortex-A53, SVE, i8mm) would
pass here and die with SIGILL on the device. Where this qemu has no model of the core,
:func:`qemu_cpu_for` takes the least-featured model that has every feature the target was
compiled for (``cortex-a55`` -> ``cortex-a76`` on qemu 7.2; ``generic`` -> ``cortex-a53``).

Timings under emulation are ~10-20x slower than native and say nothing about a device: every
timing this module returns carries ``emulated=True``. What can be measured exactly here is the
number of instructions a run executes: :mod:`mcopt.targets.arm.icount` (``scripts/setup_icount.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mcopt.errors import TargetError

#: Where ``scripts/setup_aarch64.sh`` puts the sysroot (override: MCOPT_AARCH64_ROOT).
DEFAULT_ROOT = Path.home() / ".cache" / "mcopt" / "aarch64"
SETUP_SCRIPT = "scripts/setup_aarch64.sh"
QEMU = "qemu-aarch64-static"
_DOT = frozenset({"neon", "dotprod", "fullfp16"})
#: qemu-user CPU models and the features (LLVM ``mattr`` names) mcopt compiles for that they have
QEMU_CPU_FEATURES: dict[str, frozenset[str]] = {
    "cortex-a35": frozenset({"neon"}),
    "cortex-a53": frozenset({"neon"}),
    "cortex-a57": frozenset({"neon"}),
    "cortex-a72": frozenset({"neon"}),
    "cortex-a55": _DOT,
    "cortex-a76": _DOT,
    "neoverse-n1": _DOT,
    "a64fx": frozenset({"neon", "fullfp16", "sve"}),
    "neoverse-v1": _DOT | {"i8mm", "bf16", "sve"},
    "cortex-a710": _DOT | {"i8mm", "bf16", "sve", "sve2"},
    "neoverse-n2": _DOT | {"i8mm", "bf16", "sve", "sve2"},
}
#: least-featured first: the model picked for a core qemu does not know
_QEMU_PREFERENCE = (
    "cortex-a53", "cortex-a35", "cortex-a57", "cortex-a72", "cortex-a55", "cortex-a76",
    "neoverse-n1", "a64fx", "neoverse-v1", "cortex-a710", "neoverse-n2",
)  # fmt: skip

_DRIVER = r"""
import json, sys, time
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

jobs, timing = json.loads(sys.argv[1]), json.loads(sys.argv[2])
dev = tvm.cpu()

def flat(o):
    if hasattr(o, "numpy"):
        return [o.numpy()]
    res = []
    for item in o:
        res.extend(flat(item))
    return res

for k, (lib_path, in_path, out_path) in enumerate(jobs):
    print("MCOPT_EMULATE_JOB " + str(k), flush=True)
    vm = VirtualMachine(tvm.runtime.load_module(lib_path), dev)
    with np.load(in_path) as f:
        args = [tvm.runtime.tensor(f[f"arg{i}"], dev) for i in range(len(f.files))]
    t0 = time.perf_counter()
    outs = flat(vm["main"](*args))
    first_ms = (time.perf_counter() - t0) * 1e3
    np.savez(out_path, **{f"out{i}": o for i, o in enumerate(outs)})
    result = {"first_run_ms": first_ms, "machine": __import__("platform").machine()}
    if timing:
        ft = vm.time_evaluator("main", dev, number=timing["number"], repeat=timing["repeat"],
                               min_repeat_ms=timing["min_repeat_ms"])
        result["results_ms"] = [r * 1e3 for r in ft(*args).results]
    print("MCOPT_EMULATE_RESULT " + json.dumps(result), flush=True)
"""


def aarch64_root() -> Path:
    """The emulator's root directory (``$MCOPT_AARCH64_ROOT`` or ``~/.cache/mcopt/aarch64``)."""
    env = os.environ.get("MCOPT_AARCH64_ROOT")
    return Path(env).expanduser() if env else DEFAULT_ROOT


def emulator_python() -> Path | None:
    """The wrapper that runs the aarch64 python3.11 under qemu, or None where it is not set up.

    ``$MCOPT_AARCH64_PYTHON`` names another wrapper (e.g. a real aarch64 interpreter)."""
    env = os.environ.get("MCOPT_AARCH64_PYTHON")
    wrapper = Path(env).expanduser() if env else aarch64_root() / "bin" / "python3"
    if not wrapper.is_file() or not os.access(wrapper, os.X_OK):
        return None
    if not env and shutil.which("qemu-aarch64-static") is None:
        return None
    return wrapper


def unavailable_reason() -> str | None:
    """Why the emulated aarch64 runtime cannot be used here (None when it can): for test skips."""
    if shutil.which("qemu-aarch64-static") is None and not os.environ.get("MCOPT_AARCH64_PYTHON"):
        return f"qemu-aarch64-static is not installed (run {SETUP_SCRIPT})"
    if emulator_python() is None:
        return f"no aarch64 sysroot at {aarch64_root()} (run {SETUP_SCRIPT})"
    from mcopt.targets.arm.builder import CROSS_CXX

    if shutil.which(CROSS_CXX) is None:
        return f"the cross linker {CROSS_CXX} is not installed (run {SETUP_SCRIPT})"
    return None


def _require() -> Path:
    py = emulator_python()
    if py is None:
        raise TargetError(
            f"the aarch64 emulator is not set up: {unavailable_reason()}; "
            "or run on a device with mcopt.targets.tune.rpc.run_remote"
        )
    return py


@lru_cache(maxsize=4)
def qemu_cpus(qemu: str = QEMU) -> tuple[str, ...]:
    """The CPU models this qemu-user emulates (``qemu-aarch64-static -cpu help``; empty where
    qemu is missing)."""
    exe = shutil.which(qemu)
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "-cpu", "help"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    lines = out.splitlines()
    start = next((i + 1 for i, ln in enumerate(lines) if ln.strip().startswith("Available")), 0)
    return tuple(ln.split()[0] for ln in lines[start:] if ln.strip())


def qemu_cpu_for(mcpu: str, mattr: Sequence[str], available: Sequence[str] | None = None) -> str:
    """The qemu CPU model for a core: ``mcpu`` itself where qemu has it, else the least-featured
    model with every ``+feature`` of ``mattr``, else ``max``."""
    avail = tuple(qemu_cpus() if available is None else available)
    if mcpu in avail and mcpu != "max":
        return mcpu
    feats = {str(m).lstrip("+") for m in mattr if str(m).startswith("+")}
    for cpu in _QEMU_PREFERENCE:
        if cpu in avail and feats <= QEMU_CPU_FEATURES[cpu]:
            return cpu
    return "max"


def qemu_cpu_for_target(target: Any, available: Sequence[str] | None = None) -> str:
    """:func:`qemu_cpu_for` of an aarch64 target (a name, TargetSpec or ``tvm.target.Target``)."""
    t = target
    if not hasattr(t, "attrs"):
        from mcopt.targets.registry import get_target

        t = get_target(target).tvm_target()
    attrs = t.attrs if t.attrs is not None else {}
    mattr = [str(m) for m in (attrs.get("mattr", []) or [])]
    return qemu_cpu_for(str(attrs.get("mcpu", "generic") or "generic"), mattr, available)


def emulator_command(cpu: str | None = None) -> list[str]:
    """The command that starts the aarch64 Python: qemu-user run directly with ``-cpu cpu`` (the
    same ``-L``/``-0`` as the wrapper ``scripts/setup_aarch64.sh`` writes), or the wrapper alone
    without ``cpu`` or when ``$MCOPT_AARCH64_PYTHON`` names another interpreter."""
    py = _require()
    exe = shutil.which(QEMU)
    if cpu is None or os.environ.get("MCOPT_AARCH64_PYTHON") or exe is None:
        return [str(py)]
    sysroot = aarch64_root() / "sysroot"
    return [
        exe,
        "-L",
        str(sysroot),
        "-cpu",
        cpu,
        "-0",
        str(py),
        str(sysroot / "usr/bin/python3.11"),
    ]


def emulator_env(num_threads: int | None = None, cpu: str | None = None) -> dict[str, str]:
    """Environment for the emulated runtime: the runtime library only, bounded threads, what the
    wrapper sets for the aarch64 interpreter, and ``QEMU_CPU`` (qemu-user reads it: processes
    re-launched through the wrapper keep the pinned CPU)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LD_", "QEMU_"))}
    env["TVM_USE_RUNTIME_LIB"] = "1"
    env["TVM_NUM_THREADS"] = str(num_threads or os.cpu_count() or 1)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["LD_LIBRARY_PATH"] = "/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu"
    if cpu:
        env["QEMU_CPU"] = cpu
    return env


def _timing_summary(results_ms: Sequence[float], number: int, repeat: int) -> dict[str, Any]:
    res = np.asarray(results_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(res)),
        "mean_ms": float(res.mean()),
        "std_ms": float(res.std()),
        "min_ms": float(res.min()),
        "number": number,
        "repeat": repeat,
        "emulated": True,
        "note": "timed under qemu-user emulation: says nothing about the device's speed",
    }


def run_emulated(
    library: str | os.PathLike[str],
    inputs: Sequence[np.ndarray],
    *,
    number: int = 0,
    repeat: int = 1,
    min_repeat_ms: int = 0,
    timeout: float = 900.0,
    num_threads: int | None = None,
    cpu: str | None = None,
) -> tuple[list[np.ndarray], dict[str, Any] | None]:
    """Run an exported aarch64 Relax library in the emulated runtime on qemu's CPU model ``cpu``
    (:func:`qemu_cpu_for_target` of the library's target; None: qemu's default, ``max``).

    Returns ``(outputs, timing)``; ``timing`` is None unless ``number > 0`` (then the VM's
    ``time_evaluator`` runs ``repeat`` x ``number`` calls; labelled ``emulated=True``)."""
    timing_spec = (
        {"number": int(number), "repeat": int(repeat), "min_repeat_ms": int(min_repeat_ms)}
        if number > 0
        else {}
    )
    ((outs, info),) = _run_jobs([(library, inputs)], timing_spec, timeout, num_threads, cpu)
    timing = None
    if number > 0:
        timing = _timing_summary(info["results_ms"], number, repeat)
        timing["first_run_ms"] = info["first_run_ms"]
    return outs, timing


def run_emulated_many(
    jobs: Sequence[tuple[str | os.PathLike[str], Sequence[np.ndarray]]],
    *,
    timeout: float = 900.0,
    num_threads: int | None = None,
    cpu: str | None = None,
) -> list[list[np.ndarray]]:
    """Run several ``(library, inputs)`` in one emulated process (the aarch64 interpreter and
    TVM runtime start once: ~10 s under qemu); the outputs of each, in order."""
    return [outs for outs, _ in _run_jobs(jobs, {}, timeout, num_threads, cpu)]


def _run_jobs(
    jobs: Sequence[tuple[str | os.PathLike[str], Sequence[np.ndarray]]],
    timing_spec: dict[str, int],
    timeout: float,
    num_threads: int | None,
    cpu: str | None,
) -> list[tuple[list[np.ndarray], dict[str, Any]]]:
    _require()
    libs = [Path(lib).resolve() for lib, _ in jobs]
    for lib in libs:
        if not lib.is_file():
            raise TargetError(f"no compiled library at {str(lib)!r}")
    names = ", ".join(lib.name for lib in libs)
    with tempfile.TemporaryDirectory(prefix="mcopt-emu-") as tmp:
        spec = []
        for k, (lib, (_, inputs)) in enumerate(zip(libs, jobs)):
            in_path, out_path = Path(tmp) / f"inputs{k}.npz", Path(tmp) / f"outputs{k}.npz"
            np.savez(in_path, **{f"arg{i}": np.ascontiguousarray(a) for i, a in enumerate(inputs)})
            spec.append([str(lib), str(in_path), str(out_path)])
        cmd = [*emulator_command(cpu), "-c", _DRIVER, json.dumps(spec), json.dumps(timing_spec)]
        try:
            proc = subprocess.run(
                cmd,
                env=emulator_env(num_threads, cpu),
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            raise TargetError(
                f"the emulated aarch64 run of {names} took over {timeout:.0f} s"
            ) from None
        lines = proc.stdout.splitlines()
        marker = [ln for ln in lines if ln.startswith("MCOPT_EMULATE_RESULT ")]
        if proc.returncode != 0 or len(marker) != len(jobs):
            started = [ln for ln in lines if ln.startswith("MCOPT_EMULATE_JOB ")]
            failed = libs[min(len(started), len(libs)) - 1].name if started else names
            err = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            text = err[-1] if err else "no output"
            if proc.returncode in (-4, 132) or "Illegal instruction" in (proc.stderr or ""):
                text += (
                    f" (the library uses an instruction the emulated {cpu or 'CPU'} does not "
                    "have: it would crash on that device too)"
                )
            raise TargetError(
                f"the emulated aarch64 runtime failed on {failed} (exit {proc.returncode}): {text}"
            )
        results = []
        for (_, _, out_path), ln in zip(spec, marker):
            with np.load(out_path) as f:
                outs = [f[f"out{i}"] for i in range(len(f.files))]
            results.append((outs, json.loads(ln.split(" ", 1)[1])))
    return results


def start_emulated_rpc_server(
    port: int | None = None,
    *,
    key: str | None = None,
    tracker: tuple[str, int] | None = None,
    num_threads: int | None = None,
    start_timeout: float = 240.0,
    max_lifetime_s: float = 1800.0,
    single_process: bool = True,
    cpu: str | None = None,
) -> Any:
    """Start the emulated aarch64 runtime as a TVM RPC server on 127.0.0.1 (a context manager; see
    :class:`mcopt.targets.tune.rpc.LocalRPCServer`). With ``tracker=(host, port)`` and ``key`` it
    also registers with that tracker. ``single_process=False`` runs the stock
    ``python -m tvm.exec.rpc_server``, whose worker re-launches ``sys.executable`` (the wrapper,
    thanks to qemu's ``-0``). ``cpu``: the qemu CPU model (``QEMU_CPU``; see :func:`qemu_cpu_for`)."""
    from mcopt.targets.tune.rpc import LocalRPCServer

    py = _require()
    return LocalRPCServer(
        python=str(py),
        port=port,
        key=key,
        tracker=tracker,
        env=emulator_env(num_threads, cpu),
        start_timeout=start_timeout,
        max_lifetime_s=max_lifetime_s,
        label="emulated aarch64",
        single_process=single_process,
    ).start()


_KERNEL_DRIVER = r"""
import json, sys
import numpy as np
import tvm

for lib, inp, outp in json.loads(sys.argv[1]):
    with np.load(inp) as f:
        args = [tvm.runtime.tensor(f[f"arg{i}"]) for i in range(len(f.files))]
    tvm.runtime.load_module(lib)["main"](*args)
    np.save(outp, args[-1].numpy())
"""


def run_kernels_emulated(
    kernels: Sequence[tuple[str, Any, Sequence[np.ndarray]]],
    target: Any,
    workdir: str | os.PathLike[str],
    *,
    num_threads: int = 2,
    timeout: float = 900.0,
) -> dict[str, np.ndarray]:
    """Cross-compile each ``(name, PrimFunc, args)`` for the aarch64 ``target``, call each on its
    arguments in one emulated process on qemu's model of the target's core, and return
    ``name -> the last argument after the call`` (the kernel's output buffer). For kernel tests:
    the TVM runtime starts once for all of them."""
    import tvm

    from mcopt.targets.arm.builder import cross_compiler

    _require()
    tmp = Path(workdir)
    jobs = []
    for name, func, args in kernels:
        lib = tmp / f"{name}.so"
        tvm.compile(tvm.IRModule({"main": func}), target=target).export_library(
            str(lib), fcompile=cross_compiler()
        )
        inp = tmp / f"{name}.npz"
        np.savez(inp, **{f"arg{i}": np.ascontiguousarray(a) for i, a in enumerate(args)})
        jobs.append([str(lib), str(inp), str(tmp / f"{name}.npy")])
    cpu = qemu_cpu_for_target(target)
    proc = subprocess.run(
        [*emulator_command(cpu), "-c", _KERNEL_DRIVER, json.dumps(jobs)],
        env=emulator_env(num_threads, cpu), capture_output=True, text=True, timeout=timeout,
        cwd=tmp,
    )  # fmt: skip
    if proc.returncode != 0:
        raise TargetError(
            "emulated kernels failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
        )
    return {name: np.load(tmp / f"{name}.npy") for name, _, _ in kernels}


__all__ = [
    "DEFAULT_ROOT",
    "QEMU_CPU_FEATURES",
    "aarch64_root",
    "emulator_command",
    "emulator_env",
    "emulator_python",
    "qemu_cpu_for",
    "qemu_cpu_for_target",
    "qemu_cpus",
    "run_emulated",
    "run_kernels_emulated",
    "run_emulated_many",
    "start_emulated_rpc_server",
    "unavailable_reason",
]
