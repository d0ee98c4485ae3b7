"""The C API: run a saved model (model.so + model.io.txt) from C or C++ without Python.

``mcopt_runtime.h`` / ``mcopt_runtime.c`` (package data of this package) load the Relax VM library
that :meth:`mcopt.api.OptimizeResult.save` writes and run it on plain host buffers, over the
tvm-ffi C ABI (``tvm/ffi/c_api.h``): link with the installed wheels' ``libtvm_ffi.so`` and
``libtvm_runtime.so``. :func:`write_sources` copies the two files into a directory and
:func:`compile_command` is the one-line ``cc`` command for this machine (``mcopt capi DIR`` does
both).

The model's I/O (names, dtypes, shapes) travels in ``model.io.txt`` beside ``model.so``
(:func:`io_description`): one line per tensor, ``input|output <dtype> [d0,d1,...] <name>``, the name
last so any name survives. Plain lines rather than JSON so the C side parses them in a few lines
of code with no JSON library; ``mcopt_load`` checks them against one run of the library on zeros.

TVM-free at import: only :func:`compile_command` looks up the wheels' paths (without importing TVM).
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from mcopt.errors import TargetError

#: the files a C program compiles with (header, implementation)
SOURCES = ("mcopt_runtime.h", "mcopt_runtime.c")
#: a small C program over the API (run a model on raw files, print its I/O, time calls)
EXAMPLE = "mcopt_example.c"
#: the I/O description's first line (its format version)
IO_HEADER = "mcopt-io 1"
#: the name :meth:`OptimizeResult.save` gives it, beside model.so
IO_FILE = "model.io.txt"

Spec = tuple[str, Sequence[int], str]


def source_dir() -> Path:
    """The directory holding :data:`SOURCES` (this package's)."""
    return Path(__file__).resolve().parent


def io_description(inputs: Sequence[Spec], outputs: Sequence[Spec]) -> str:
    """The text of ``model.io.txt`` for ``[(name, shape, dtype), ...]`` inputs and outputs.

    Raises :class:`~mcopt.errors.TargetError` for a shape that is not static (the C API allocates
    its buffers once) or a name with a line break."""
    lines = [
        IO_HEADER,
        "# the compiled model's inputs and outputs, in order (read by mcopt_runtime.c):",
        "# input|output <dtype> [d0,d1,...] <name>",
    ]
    for kind, specs in (("input", inputs), ("output", outputs)):
        for name, shape, dtype in specs:
            if any(not isinstance(d, int) or d < 0 for d in shape):
                raise TargetError(f"{kind} {name!r} has a non-static shape {list(shape)}")
            if "\n" in name or "\r" in name or name != name.strip() or not name:
                raise TargetError(f"{kind} name {name!r} cannot be written on one line")
            dims = ",".join(str(int(d)) for d in shape)
            lines.append(f"{kind} {dtype} [{dims}] {name}")
    return "\n".join(lines) + "\n"


def write_sources(outdir: str | Path, example: bool = True) -> list[Path]:
    """Copy :data:`SOURCES` (and with ``example`` :data:`EXAMPLE`) into ``outdir`` (created);
    returns their paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in (*SOURCES, EXAMPLE) if example else SOURCES:
        dst = out / name
        shutil.copyfile(source_dir() / name, dst)
        paths.append(dst)
    return paths


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise TargetError(
            f"the C API links with the {name} wheel, which is not installed "
            "(pip install 'mcopt[tvm]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def tvm_paths() -> dict[str, Path]:
    """``include`` (tvm-ffi's headers: ``tvm/ffi/c_api.h``, ``dlpack/dlpack.h``), ``ffi_lib``
    (the folder of libtvm_ffi.so) and ``runtime_lib`` (of libtvm_runtime.so) of the installed
    ``apache-tvm-ffi`` and ``apache-tvm`` wheels; a one-line TargetError when one is missing."""
    ffi, tvm = _package_dir("tvm_ffi"), _package_dir("tvm")
    paths = {
        "include": ffi / "include",
        "ffi_lib": ffi / "lib",
        "runtime_lib": tvm / "lib",
    }
    for what, f in (
        ("include", paths["include"] / "tvm" / "ffi" / "c_api.h"),
        ("ffi_lib", paths["ffi_lib"] / "libtvm_ffi.so"),
        ("runtime_lib", paths["runtime_lib"] / "libtvm_runtime.so"),
    ):
        if not f.exists():
            raise TargetError(f"{f} is missing (the C API's {what}): reinstall the TVM wheels")
    return paths


def compile_command(
    sources: Sequence[str | Path],
    output: str | Path,
    include_dirs: Sequence[str | Path] = (),
    compiler: str = "cc",
    extra: Sequence[str] = ("-O2",),
) -> list[str]:
    """The command that compiles ``sources`` (a C program plus ``mcopt_runtime.c``) into the
    executable ``output``, linked with this machine's tvm-ffi and TVM runtime libraries (with an
    rpath to them, so it runs without ``LD_LIBRARY_PATH``). ``include_dirs``: where
    ``mcopt_runtime.h`` is, when not beside the sources. ``--no-as-needed`` keeps
    libtvm_runtime.so linked though the program calls none of its functions: loading it registers
    the Relax VM that model.so needs."""
    p = tvm_paths()
    incs = [f"-I{d}" for d in include_dirs] + [f"-I{p['include']}"]
    return [
        compiler,
        *extra,
        "-o",
        str(output),
        *map(str, sources),
        *incs,
        f"-L{p['ffi_lib']}",
        f"-L{p['runtime_lib']}",
        "-Wl,--no-as-needed",
        "-ltvm_ffi",
        "-ltvm_runtime",
        f"-Wl,-rpath,{p['ffi_lib']}",
        f"-Wl,-rpath,{p['runtime_lib']}",
    ]


def command_line(cmd: Sequence[str]) -> str:
    """``cmd`` as one shell line."""
    return " ".join(shlex.quote(c) for c in cmd)


__all__ = [
    "EXAMPLE",
    "IO_FILE",
    "IO_HEADER",
    "SOURCES",
    "command_line",
    "compile_command",
    "io_description",
    "source_dir",
    "tvm_paths",
    "write_sources",
]
