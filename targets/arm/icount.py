"""Executed aarch64 instructions per inference, counted exactly under qemu-user.

No one can time an aarch64 build on this x86 machine (:mod:`mcopt.targets.arm.emulate` labels its
emulated latencies as meaningless), but qemu can count what the guest executes. Method
(``scripts/setup_icount.sh`` sets it up):

* Debian's dynamic ``qemu-aarch64`` (``qemu-user``; ``qemu-aarch64-static`` has no ``-plugin``)
  loads a TCG plugin, ``scripts/icount_plugin.c``, built against ``qemu-plugin.h`` from Debian's
  qemu source package of the installed version (plugin API v1). Every translated block adds its
  instruction count to one counter each time it executes; the guest opens and closes a counting
  window with a marker syscall (:data:`MARKER`) and the plugin writes the count to a pipe the guest
  reads.
* The guest is the aarch64 sysroot of ``scripts/setup_aarch64.sh``, seen through symlinks in
  ``$IC/sysroot`` with a fake aarch64 ``/proc/cpuinfo`` beside them (qemu-user's ``-L`` prefix
  lookup opens it for the guest; onnxruntime's cpuinfo library segfaults on the host's x86 one),
  and onnxruntime's manylinux aarch64 wheel on ``PYTHONPATH``. The CPU model is pinned
  (``-cpu neoverse-n1`` by default: the one the fake cpuinfo describes) for every runtime.
* :mod:`mcopt.targets.arm.icount_guest` runs inside the guest: per model one uncounted warm-up
  inference, an empty window, then a window around ``n`` inferences (one thread).

A count is the instructions of the whole call from Python (the runtime's call overhead included)
and says nothing about cycles: no caches, pipelines or memory stalls. It is exact for the guest
code qemu ran and repeats within ~0.2 % between processes (allocator and Python-level noise).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcopt.errors import TargetError
from mcopt.targets.arm.emulate import aarch64_root

SETUP_SCRIPT = "scripts/setup_icount.sh"
#: the dynamic qemu-user (loads plugins)
QEMU = "qemu-aarch64"
#: the syscall number that opens / closes a counting window (unused by Linux on aarch64)
MARKER = 0x6D63
GUEST = Path(__file__).with_name("icount_guest.py")
#: what :class:`IcountJob` can count
KINDS = ("tvm", "onnx", "kernel")


def icount_root() -> Path:
    """``$MCOPT_ICOUNT_ROOT`` or ``<aarch64 root>/icount`` (where setup_icount.sh puts its files)."""
    env = os.environ.get("MCOPT_ICOUNT_ROOT")
    return Path(env).expanduser() if env else aarch64_root() / "icount"


def plugin_path() -> Path:
    return icount_root() / "libicount.so"


def default_cpu() -> str:
    """The qemu CPU model the fake /proc/cpuinfo describes (``$IC/cpu``; neoverse-n1)."""
    try:
        return (icount_root() / "cpu").read_text().strip() or "neoverse-n1"
    except OSError:
        return "neoverse-n1"


def unavailable_reason() -> str | None:
    """Why instructions cannot be counted here (None when they can): for test skips."""
    if shutil.which(QEMU) is None:
        return f"Debian's dynamic qemu-user ({QEMU}) is not installed (run {SETUP_SCRIPT})"
    root = icount_root()
    if not plugin_path().is_file():
        return f"no counting plugin at {plugin_path()} (run {SETUP_SCRIPT})"
    if not (root / "sysroot" / "proc" / "cpuinfo").is_file():
        return f"no fake aarch64 /proc/cpuinfo under {root / 'sysroot'} (run {SETUP_SCRIPT})"
    if not (root / "sysroot" / "usr" / "bin" / "python3.11").is_file():
        return f"no aarch64 python3.11 under {root / 'sysroot'} (run {SETUP_SCRIPT})"
    return None


def _require() -> None:
    reason = unavailable_reason()
    if reason:
        raise TargetError(f"instruction counting is not set up: {reason}")


def qemu_command(
    cpu: str | None = None, *, inline: bool = True, out: str | None = None
) -> list[str]:
    """``qemu-aarch64 -L $IC/sysroot -cpu CPU -plugin libicount.so[,inline=on][,out=FILE]``: what
    runs a guest program under the counter. ``inline``: a plain add per block (~1.7x faster than
    the atomic callback; exact while one guest thread runs, as in every mcopt / onnxruntime run
    here with one thread)."""
    _require()
    opts = [str(plugin_path())]
    if inline:
        opts.append("inline=on")
    if out:
        opts.append(f"out={out}")
    return [
        shutil.which(QEMU) or QEMU,
        "-L",
        str(icount_root() / "sysroot"),
        "-cpu",
        cpu or default_cpu(),
        "-plugin",
        ",".join(opts),
    ]


def guest_env() -> dict[str, str]:
    """Environment for the guest Python: one thread, fixed hash seed, the runtime library only,
    onnxruntime's aarch64 wheel on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LD_", "QEMU_"))}
    env.update(
        TVM_USE_RUNTIME_LIB="1",
        TVM_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        PYTHONHASHSEED="0",
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=str(icount_root() / "site"),
        LD_LIBRARY_PATH="/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu",
    )
    return env


def guest_python(cpu: str | None = None, *, inline: bool = True) -> list[str]:
    """The command that starts the aarch64 python3.11 under the counter."""
    return [*qemu_command(cpu, inline=inline), str(icount_root() / "sysroot/usr/bin/python3.11")]


def count_program(
    argv: Sequence[str], *, cpu: str | None = None, inline: bool = True, timeout: float = 600.0
) -> dict[str, Any]:
    """Run an aarch64 program under the counter: ``{"windows": [(tag, count), ...], "total": n,
    "returncode", "stdout"}`` (windows in the order the program closed them)."""
    with tempfile.TemporaryDirectory(prefix="mcopt-icount-") as tmp:
        out = Path(tmp) / "counts.txt"
        cmd = [*qemu_command(cpu, inline=inline, out=str(out)), *map(str, argv)]
        proc = subprocess.run(
            cmd, env=guest_env(), capture_output=True, text=True, timeout=timeout, cwd=tmp
        )
        windows: list[tuple[int, int]] = []
        total = None
        for ln in out.read_text().splitlines() if out.exists() else []:
            parts = ln.split()
            if parts[0] == "window":
                windows.append((int(parts[1]), int(parts[2])))
            elif parts[0] == "total":
                total = int(parts[1])
    return {
        "windows": windows,
        "total": total,
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


@dataclass
class IcountJob:
    """One model to count: ``kind`` "tvm" (an exported aarch64 Relax library), "onnx" (an ONNX
    file run by onnxruntime with one thread) or "kernel" (an exported library of one PrimFunc,
    called with ``inputs`` as its buffers: a tuning candidate)."""

    name: str
    kind: str
    path: str | os.PathLike[str]
    inputs: Sequence[np.ndarray]
    n: int = 3
    extra: dict[str, Any] = field(default_factory=dict)


def count_instructions(
    jobs: Sequence[IcountJob],
    *,
    cpu: str | None = None,
    inline: bool = True,
    timeout: float = 3600.0,
    partial: bool = False,
) -> list[dict[str, Any]]:
    """Count instructions per inference of each job in one guest process (the interpreter and the
    runtimes start once). Per job: ``{"name", "kind", "n", "window", "empty", "per_inference",
    "cpu", "outputs"}`` (``outputs``: the warm-up run's, for checking the build).

    A failed guest run is a one-line TargetError naming the job; with ``partial`` it returns the
    rows of the jobs counted before it, then ``{"name", "kind", "error"}`` for the job that failed
    (the jobs after it did not run)."""
    _require()
    for job in jobs:
        if job.kind not in KINDS:
            raise TargetError(
                f"job {job.name!r}: kind must be one of {', '.join(KINDS)}, not {job.kind!r}"
            )
        if not Path(job.path).is_file():
            raise TargetError(f"job {job.name!r}: no file at {str(job.path)!r}")
    if not jobs:
        return []
    cpu = cpu or default_cpu()
    with tempfile.TemporaryDirectory(prefix="mcopt-icount-") as tmp:
        spec: dict[str, Any] = {"marker": MARKER, "jobs": []}
        for k, job in enumerate(jobs):
            in_path, out_path = Path(tmp) / f"in{k}.npz", Path(tmp) / f"out{k}.npz"
            np.savez(
                in_path, **{f"arg{i}": np.ascontiguousarray(a) for i, a in enumerate(job.inputs)}
            )
            spec["jobs"].append(
                {
                    "name": job.name,
                    "kind": job.kind,
                    "path": str(Path(job.path).resolve()),
                    "inputs": str(in_path),
                    "outputs": str(out_path),
                    "n": int(job.n),
                }
            )
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [*guest_python(cpu, inline=inline), str(GUEST), str(spec_path)]
        try:
            proc = subprocess.run(
                cmd, env=guest_env(), capture_output=True, text=True, timeout=timeout, cwd=tmp
            )
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
            why = None
        except subprocess.TimeoutExpired as e:
            if not partial:
                raise TargetError(f"counting instructions took over {timeout:.0f} s") from None
            stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else ""
            stderr, rc, why = "", None, f"timed out after {timeout:.0f} s"
        lines = [ln for ln in (stdout or "").splitlines() if ln.startswith("MCOPT_ICOUNT ")]
        results = []
        for job, ln, js in zip(jobs, lines, spec["jobs"]):
            row = json.loads(ln.split(" ", 1)[1])
            with np.load(js["outputs"]) as f:
                row["outputs"] = [f[f"out{i}"] for i in range(len(f.files))]
            row["cpu"] = cpu
            row.update(job.extra)
            results.append(row)
        if len(lines) < len(jobs) or (rc != 0 and not partial):
            err = [ln for ln in (stderr or stdout or "").strip().splitlines() if ln.strip()]
            failed = jobs[min(len(lines), len(jobs) - 1)]
            why = why or f"exit {rc}: {err[-1] if err else 'no output'}"
            if not partial:
                raise TargetError(f"the counted aarch64 run failed at {failed.name} ({why})")
            results.append({"name": failed.name, "kind": failed.kind, "error": why})
    return results


__all__ = [
    "MARKER",
    "IcountJob",
    "count_instructions",
    "count_program",
    "default_cpu",
    "guest_env",
    "guest_python",
    "icount_root",
    "plugin_path",
    "qemu_command",
    "unavailable_reason",
]
