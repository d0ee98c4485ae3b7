"""Binding user inputs (positional, one dict, or keywords) to a compiled model's input specs,
shared by every CompiledModel kind (host, arm, cuda, remote)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def bind_inputs(
    specs: Sequence[tuple[str, tuple[int, ...], str]],
    args: Sequence[Any],
    named: Mapping[str, Any],
) -> list[Any]:
    """:func:`mcopt.inputs.bind_arrays` (the one input binder) for compiled models."""
    from mcopt.inputs import bind_arrays

    return bind_arrays(specs, args, named)


class CompiledBase:
    """What every compiled model holds (host, arm, cuda): the executable, the target name, the
    pipeline it was built with, ``input_specs`` = ``[(name, shape, dtype), ...]`` (empty = unknown:
    inputs pass unchecked) and the output names."""

    def __init__(
        self,
        executable: Any,
        target: str,
        input_specs: Sequence[tuple[str, tuple[int, ...], str]] = (),
        output_names: Sequence[str] = (),
        pipeline: str = "mcopt",
    ) -> None:
        self.executable = executable
        self.target = target
        self.pipeline = pipeline
        self.input_specs = [(n, tuple(int(d) for d in s), str(d)) for n, s, d in input_specs]
        self.output_names = list(output_names)

    def _export_atomic(
        self,
        path: str | os.PathLike[str],
        what: str,
        describe: Callable[[BaseException], str],
        **export_options: Any,
    ) -> Path:
        """``executable.export_library`` into a temp file beside ``path``, then rename: a failed or
        interrupted export never leaves half a library. Failures are one-line TargetErrors."""
        from mcopt.errors import TargetError

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=path.suffix or ".so", dir=path.parent
        )
        os.close(fd)
        from mcopt.targets.quiet import quiet_native_stderr

        try:
            with quiet_native_stderr():  # TVM prints "Scope Saving:" per function
                self.executable.export_library(tmp, **export_options)
            os.replace(tmp, path)
        except Exception as e:
            Path(tmp).unlink(missing_ok=True)
            raise TargetError(f"cannot export {what} to {str(path)!r}: {describe(e)}") from None
        return path


__all__ = ["CompiledBase", "bind_inputs"]
