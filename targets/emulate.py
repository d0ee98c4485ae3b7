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
phone or board is used — for :func:`mcopt.targets.remote.run_remote`.

Timings under emulation are ~10-20x slower than native and say nothing about a device: every
timing this module returns carries ``emulated=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcopt.errors import TargetError

#: Where ``scripts/setup_aarch64.sh`` puts the sysroot (override: MCOPT_AARCH64_ROOT).
DEFAULT_ROOT = Path.home() / ".cache" / "mcopt" / "aarch64"
SETUP_SCRIPT = "scripts/setup_aarch64.sh"

_DRIVER = r"""
import json, sys, time
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

lib_path, in_path, out_path, timing_json = sys.argv[1:5]
timing = json.loads(timing_json)
dev = tvm.cpu()
vm = VirtualMachine(tvm.runtime.load_module(lib_path), dev)
with np.load(in_path) as f:
    args = [tvm.runtime.tensor(f[f"arg{i}"], dev) for i in range(len(f.files))]

def flat(o):
    if hasattr(o, "numpy"):
        return [o.numpy()]
    res = []
    for item in o:
        res.extend(flat(item))
    return res

t0 = time.perf_counter()
outs = flat(vm["main"](*args))
first_ms = (time.perf_counter() - t0) * 1e3
np.savez(out_path, **{f"out{i}": o for i, o in enumerate(outs)})
result = {"first_run_ms": first_ms, "machine": __import__("platform").machine()}
if timing:
    ft = vm.time_evaluator("main", dev, number=timing["number"], repeat=timing["repeat"],
                           min_repeat_ms=timing["min_repeat_ms"])
    res = [r * 1e3 for r in ft(*args).results]
    result["results_ms"] = res
print("MCOPT_EMULATE_RESULT " + json.dumps(result))
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
    from mcopt.targets.arm import CROSS_CXX

    if shutil.which(CROSS_CXX) is None:
        return f"the cross linker {CROSS_CXX} is not installed (run {SETUP_SCRIPT})"
    return None


def _require() -> Path:
    py = emulator_python()
    if py is None:
        raise TargetError(
            f"the aarch64 emulator is not set up: {unavailable_reason()}; "
            "or run on a device with mcopt.targets.remote.run_remote"
        )
    return py


def emulator_env(num_threads: int | None = None) -> dict[str, str]:
    """Environment for the emulated runtime: the runtime library only, bounded threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LD_"))}
    env["TVM_USE_RUNTIME_LIB"] = "1"
    env["TVM_NUM_THREADS"] = str(num_threads or os.cpu_count() or 1)
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
) -> tuple[list[np.ndarray], dict[str, Any] | None]:
    """Run an exported aarch64 Relax library in the emulated runtime.

    Returns ``(outputs, timing)``; ``timing`` is None unless ``number > 0`` (then the VM's
    ``time_evaluator`` runs ``repeat`` x ``number`` calls; labelled ``emulated=True``)."""
    py = _require()
    lib = Path(library).resolve()
    if not lib.is_file():
        raise TargetError(f"no compiled library at {str(lib)!r}")
    with tempfile.TemporaryDirectory(prefix="mcopt-emu-") as tmp:
        in_path, out_path = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(in_path, **{f"arg{i}": np.ascontiguousarray(a) for i, a in enumerate(inputs)})
        timing_spec = (
            {"number": int(number), "repeat": int(repeat), "min_repeat_ms": int(min_repeat_ms)}
            if number > 0
            else {}
        )
        cmd = [str(py), "-c", _DRIVER, str(lib), str(in_path), str(out_path)]
        cmd.append(json.dumps(timing_spec))
        try:
            proc = subprocess.run(
                cmd,
                env=emulator_env(num_threads),
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            raise TargetError(
                f"the emulated aarch64 run of {lib.name} took over {timeout:.0f} s"
            ) from None
        marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("MCOPT_EMULATE_RESULT ")]
        if proc.returncode != 0 or not marker:
            err = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            raise TargetError(
                f"the emulated aarch64 runtime failed on {lib.name} (exit {proc.returncode}): "
                f"{err[-1] if err else 'no output'}"
            )
        info = json.loads(marker[-1].split(" ", 1)[1])
        with np.load(out_path) as f:
            outs = [f[f"out{i}"] for i in range(len(f.files))]
    timing = None
    if number > 0:
        timing = _timing_summary(info["results_ms"], number, repeat)
        timing["first_run_ms"] = info["first_run_ms"]
    return outs, timing


def start_emulated_rpc_server(
    port: int | None = None,
    *,
    key: str | None = None,
    tracker: tuple[str, int] | None = None,
    num_threads: int | None = None,
    start_timeout: float = 240.0,
    max_lifetime_s: float = 1800.0,
    single_process: bool = True,
) -> Any:
    """Start the emulated aarch64 runtime as a TVM RPC server on 127.0.0.1 (a context manager; see
    :class:`mcopt.targets.remote.LocalRPCServer`). With ``tracker=(host, port)`` and ``key`` it
    also registers with that tracker. ``single_process=False`` runs the stock
    ``python -m tvm.exec.rpc_server``, whose worker re-launches ``sys.executable`` (the wrapper,
    thanks to qemu's ``-0``)."""
    from mcopt.targets.remote import LocalRPCServer

    py = _require()
    return LocalRPCServer(
        python=str(py),
        port=port,
        key=key,
        tracker=tracker,
        env=emulator_env(num_threads),
        start_timeout=start_timeout,
        max_lifetime_s=max_lifetime_s,
        label="emulated aarch64",
        single_process=single_process,
    ).start()


__all__ = [
    "DEFAULT_ROOT",
    "aarch64_root",
    "emulator_env",
    "emulator_python",
    "run_emulated",
    "start_emulated_rpc_server",
    "unavailable_reason",
]
