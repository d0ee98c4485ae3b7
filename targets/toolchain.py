"""The C/C++ compilers builds need, found before any work, with the Debian package when missing.

TVM generates machine code itself (LLVM), but a compiled library is *linked* by a system compiler:
``export_library`` (``result.save()``, ``mcopt run``, RPC upload, MetaSchedule builders) calls
``tvm.support.cc.create_shared``, which runs ``$CXX``, else ``$CC``, else the first of ``g++``,
``gcc``, ``clang++``, ``clang``, ``c++``, ``cc`` on ``PATH`` — and without one fails deep inside TVM
with ``expected str, bytes or os.PathLike object, not NoneType``. The ``arm`` targets link with
Debian's ``aarch64-linux-gnu-g++``, the ``fpga`` target compiles its generated C with ``$CC`` /
``gcc`` / ``cc``. :func:`require_toolchain` checks the one a target needs (its
``TargetSpec.toolchain``) and raises a one-line :class:`~mcopt.errors.TargetError` naming the
missing program and the ``apt-get install`` line. TVM-free: safe to call before importing TVM.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from mcopt.errors import TargetError

if TYPE_CHECKING:  # pragma: no cover
    from mcopt.targets.registry import TargetSpec

#: ``TargetSpec.toolchain`` values besides a program name
HOST_CXX = "c++"  # the host C++ compiler TVM links libraries with
HOST_CC = "cc"  # a host C compiler (the fpga target's generated C)
NO_TOOLCHAIN = "none"

#: what tvm.support.cc.get_cc looks for on PATH, in its order (when $CXX and $CC are unset)
TVM_CC_NAMES = ("g++", "gcc", "clang++", "clang", "c++", "cc")
C_CC_NAMES = ("gcc", "cc")

#: the Debian / Ubuntu package that provides a compiler
APT_PACKAGES = {
    HOST_CXX: "g++",
    HOST_CC: "gcc",
    "g++": "g++",
    "gcc": "gcc",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
}


def _install_hint(what: str) -> str:
    pkg = APT_PACKAGES.get(what)
    if pkg is None:
        return "install it or put it on PATH"
    if pkg in ("g++", "gcc"):
        extra = " (or build-essential)"
    elif "aarch64" in pkg:
        extra = " (or run scripts/setup_aarch64.sh, which also sets up the qemu-user emulator)"
    else:
        extra = ""
    return f"install it: apt-get install {pkg}{extra}"


def _env_compiler(names: tuple[str, ...]) -> tuple[str, str] | None:
    """(variable, value) of the first of `names` set in the environment."""
    for var in names:
        value = os.environ.get(var)
        if value:
            return var, value
    return None


def find_compiler(toolchain: str) -> str | None:
    """The path of the compiler `toolchain` stands for, or None when it is not installed.

    ``"c++"``: what TVM links with (``$CXX``, ``$CC``, else g++/gcc/clang++/clang/c++/cc on PATH);
    ``"cc"``: ``$CC``, else gcc/cc; ``"none"``: ``""`` (nothing needed); otherwise a program name.
    """
    if toolchain == NO_TOOLCHAIN:
        return ""
    if toolchain in (HOST_CXX, HOST_CC):
        env = _env_compiler(("CXX", "CC") if toolchain == HOST_CXX else ("CC",))
        if env is not None:  # TVM / the fpga build run the variable's value as the command
            return shutil.which(env[1])
        names = TVM_CC_NAMES if toolchain == HOST_CXX else C_CC_NAMES
        return next((p for p in map(shutil.which, names) if p), None)
    return shutil.which(toolchain)


def require_compiler(toolchain: str, why: str) -> str:
    """The compiler's path (see :func:`find_compiler`); a one-line TargetError saying `why` it is
    needed, which program is missing and the package to install when it is not there."""
    path = find_compiler(toolchain)
    if path is not None:
        return path
    if toolchain in (HOST_CXX, HOST_CC):
        lang = "C++" if toolchain == HOST_CXX else "C"
        env = _env_compiler(("CXX", "CC") if toolchain == HOST_CXX else ("CC",))
        if env is not None:
            var, value = env
            raise TargetError(
                f"{why} needs a {lang} compiler: ${var} is {value!r}, which is not an executable on "
                f"PATH; {_install_hint(toolchain)}, or set {var} to an installed compiler"
            )
        names = TVM_CC_NAMES if toolchain == HOST_CXX else C_CC_NAMES
        searched = " or ".join(("$CXX", "$CC") if toolchain == HOST_CXX else ("$CC",))
        raise TargetError(
            f"{why} needs a {lang} compiler and none is installed (looked for {searched}, then "
            f"{', '.join(names)} on PATH); {_install_hint(toolchain)}"
        )
    raise TargetError(
        f"{why} needs the compiler {toolchain!r}, which is not on PATH; {_install_hint(toolchain)}"
    )


def require_toolchain(spec: TargetSpec) -> str:
    """Check, before building for `spec`, that the compiler its libraries are linked with exists.

    Returns the compiler's path (``""`` for a target that needs none)."""
    return require_compiler(spec.toolchain, f"compiling for target {spec.name!r}")


__all__ = [
    "APT_PACKAGES",
    "HOST_CC",
    "HOST_CXX",
    "NO_TOOLCHAIN",
    "find_compiler",
    "require_compiler",
    "require_toolchain",
]
