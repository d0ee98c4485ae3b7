"""Keep LLVM's fatal errors out of the user's process.

LLVM reports code it cannot generate with ``report_fatal_error``: it prints ``LLVM ERROR: ...``
and calls ``abort()``, which kills the Python process that asked for the object code (for a cross
target that is ``export_library``; for the host ``tvm.compile``'s JIT). Two guards:

- :func:`check_llvm_ir`, before any object code exists: the module's LLVM IR (``inspect_source``
  on the ``llvm`` modules, which runs no instruction selection) may call only intrinsics of the
  target's architecture, and only those its features provide (``sdot`` needs ``+dotprod``,
  ``smmla`` ``+i8mm``, SVE ``+sve``, ``vpdpbusd`` AVX-512 VNNI ...). A host intrinsic in an
  aarch64 build is exactly what aborted int8 on ``arm`` (``llvm.x86.avx512.vpdpbusd.512``: LLVM's
  AArch64 backend has no rule to split its ``v16i32`` result — "Do not know how to split the
  result of this operator!"). A violation is a one-line :class:`~mcopt.errors.TargetError`.
- :func:`run_isolated`, for the code generation itself: the work runs in a forked child, so an
  abort the check did not foresee is a one-line TargetError carrying LLVM's last stderr line.
"""

from __future__ import annotations

import faulthandler
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from mcopt.errors import TargetError

#: LLVM target-intrinsic prefixes (``llvm.<arch>.``) and the triple architectures they belong to
_ARCH_PREFIXES = {
    "x86": ("x86_64", "i386", "i686", "x86"),
    "aarch64": ("aarch64", "arm64"),
    "arm": ("arm", "thumb"),
    "nvvm": ("nvptx",),
    "amdgcn": ("amdgcn",),
    "r600": ("r600",),
    "ppc": ("powerpc", "ppc"),
    "riscv": ("riscv",),
    "wasm": ("wasm",),
    "hexagon": ("hexagon",),
    "mips": ("mips",),
    "s390": ("s390",),
    "spv": ("spirv",),
}
#: (intrinsic name prefix, any of these target features is needed, what the instruction is)
_FEATURES: list[tuple[str, tuple[str, ...], str]] = [
    ("llvm.aarch64.neon.usdot", ("i8mm",), "usdot (Armv8.6 int8 matrix multiply)"),
    ("llvm.aarch64.neon.sdot", ("dotprod",), "sdot (Armv8.2 dot product)"),
    ("llvm.aarch64.neon.udot", ("dotprod",), "udot (Armv8.2 dot product)"),
    ("llvm.aarch64.neon.smmla", ("i8mm",), "smmla (Armv8.6 int8 matrix multiply)"),
    ("llvm.aarch64.neon.ummla", ("i8mm",), "ummla (Armv8.6 int8 matrix multiply)"),
    ("llvm.aarch64.neon.usmmla", ("i8mm",), "usmmla (Armv8.6 int8 matrix multiply)"),
    ("llvm.aarch64.neon.bfdot", ("bf16",), "bfdot (bfloat16)"),
    ("llvm.aarch64.neon.bfmmla", ("bf16",), "bfmmla (bfloat16)"),
    ("llvm.aarch64.sve.", ("sve", "sve2"), "SVE"),
    ("llvm.aarch64.sme.", ("sme",), "SME"),
    ("llvm.x86.avx512.vpdpbusd", ("avx512vnni",), "vpdpbusd (AVX-512 VNNI)"),
    ("llvm.x86.avx2.vpdpbusd", ("avxvnni",), "vpdpbusd (AVX-VNNI)"),
    ("llvm.x86.avx512.", ("avx512f",), "AVX-512"),
    ("llvm.x86.avx2.", ("avx2",), "AVX2"),
]
_DECLARE_RE = re.compile(r"^declare [^@\n]*@(llvm\.[\w.]+)\(", re.M)
_DEFINE_RE = re.compile(r"^define [^@\n]*@\"?([\w.$]+)\"?\(", re.M)


def llvm_modules(mod: Any) -> Iterator[Any]:
    """The ``llvm`` runtime modules in a runtime module's import tree (a VM executable's
    ``.mod`` or a library)."""
    seen: set[int] = set()
    stack = [mod]
    while stack:
        m = stack.pop()
        key = id(m)
        if key in seen:
            continue
        seen.add(key)
        if getattr(m, "kind", None) == "llvm":
            yield m
        stack.extend(list(getattr(m, "imports", ()) or ()))


def _target_info(target: Any) -> tuple[str, set[str]]:
    """(triple architecture, features given as ``+name`` in ``mattr`` or known to LLVM)."""
    attrs = target.attrs if target.attrs is not None else {}
    triple = str(attrs.get("mtriple", "") or "")
    if not triple:
        from tvm.target.codegen import llvm_get_system_triple

        triple = str(llvm_get_system_triple())
    feats = {str(m).lstrip("+") for m in (attrs.get("mattr", []) or []) if str(m).startswith("+")}
    return triple.split("-", 1)[0], feats


def _has_feature(target: Any, feats: set[str], name: str) -> bool:
    if name in feats:
        return True
    try:
        from tvm.target.codegen import target_has_features

        return bool(target_has_features(name, target))
    except Exception:  # LLVM cannot answer for this target: only mattr counts
        return False


def _user_of(source: str, name: str, depth: int = 0) -> str:
    """The first function of ``source`` that refers to ``name`` (an intrinsic or an outlined
    ``__tvm_parallel_lambda``, followed to the function that launches it); "?" if none."""
    for m in re.finditer(re.escape(f"@{name}") + r"\b", source):
        line_start = source.rfind("\n", 0, m.start()) + 1
        if source.startswith(("declare", "define"), line_start):
            continue
        defs = [d.group(1) for d in _DEFINE_RE.finditer(source, 0, m.start())]
        user = defs[-1] if defs else "?"
        if user.startswith("__tvm_parallel_lambda") and depth < 4:
            return _user_of(source, user, depth + 1)
        return user
    return "?"


def check_llvm_ir(executable: Any, target: Any, target_name: str) -> None:
    """Refuse, before any object code is generated, LLVM IR that calls an intrinsic of another
    architecture or one whose feature ``target`` lacks (one-line TargetError naming the
    intrinsic, the function and the target)."""
    mod = getattr(executable, "mod", executable)
    arch, feats = _target_info(target)
    for lm in llvm_modules(mod):
        try:
            source = str(lm.inspect_source("ll"))
        except Exception:  # no textual IR (already object code): nothing to check
            continue
        for intrinsic in sorted(set(_DECLARE_RE.findall(source))):
            owner = intrinsic.split(".")[1]
            arches = _ARCH_PREFIXES.get(owner)
            if arches is not None and not arch.startswith(arches):
                raise TargetError(
                    f"the {target_name} build ({arch}) calls the {owner} intrinsic {intrinsic} in "
                    f"{_user_of(source, intrinsic)}: code for another CPU, which LLVM cannot "
                    f"compile for {arch}; report this (mcopt --debug)"
                )
            for prefix, needs, what in _FEATURES:
                if intrinsic.startswith(prefix):
                    if not any(_has_feature(target, feats, f) for f in needs):
                        raise TargetError(
                            f"the {target_name} build calls {what} ({intrinsic}, in "
                            f"{_user_of(source, intrinsic)}), but the target lacks "
                            f"+{needs[0]}; pick a target whose core has it or report this"
                        )
                    break


def run_isolated(fn: Callable[[], None], what: str, timeout: float = 900.0) -> None:
    """Run ``fn`` (code generation) in a forked child process: an ``abort()`` there (``LLVM
    ERROR``) becomes a one-line TargetError here with the child's last stderr line; so does an
    exception. Where ``os.fork`` is missing, ``fn`` runs in this process."""
    if not hasattr(os, "fork"):
        fn()
        return
    err = tempfile.TemporaryFile()
    rd, wr = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    with (
        warnings.catch_warnings()
    ):  # 3.12+: "use of fork() may lead to deadlocks" (no threads run in the child)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            os.close(rd)
            os.dup2(err.fileno(), 2)
            faulthandler.disable()  # its abort report would go to the parent's terminal
            fn()
            code = 0
        except BaseException as e:  # noqa: B036 - everything goes back to the parent
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            msg = lines[-1] if lines else type(e).__name__
            os.write(wr, msg.encode("utf-8", "replace")[:2000])
        finally:
            os._exit(code)
    os.close(wr)
    deadline = time.monotonic() + timeout
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(rd)
            raise TargetError(f"{what} did not finish in {timeout:.0f} s")
        else:
            time.sleep(0.01)
    with os.fdopen(rd, "rb") as f:
        message = f.read().decode("utf-8", "replace").strip()
    err.seek(0)
    stderr = [ln.strip() for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    err.close()
    if os.WIFSIGNALED(status):
        llvm = [ln for ln in stderr if ln.startswith("LLVM ERROR")]
        last = (llvm or stderr or [f"signal {os.WTERMSIG(status)}"])[-1]
        raise TargetError(f"{what} failed: code generation aborted ({last}); report this")
    if os.WEXITSTATUS(status) != 0:
        raise TargetError(f"{what} failed: {message or (stderr[-1] if stderr else 'no message')}")


__all__ = ["check_llvm_ir", "llvm_modules", "run_isolated"]
