"""Timing compiled kernels and caching the measurements per machine (the Winograd tile choice,
:mod:`.winograd_nchwc`): best-of-N milliseconds of one PrimFunc or of alternatives timed in
alternating rounds with cold weights, and a JSON table keyed by target + shape that is measured
once per machine, tolerant of a missing or corrupt file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _time_ms(lib: Any, args: list[Any], dev: Any, repeat: int) -> float:
    ev = lib.mod.time_evaluator("main", dev, number=3, repeat=repeat)
    return float(min(ev(*args).results)) * 1e3


def time_kernel(func: Any, arrays: list[np.ndarray], target: Any, repeat: int = 5) -> float:
    """Best-of-``repeat`` ms of the PrimFunc ``func`` compiled for ``target`` on ``arrays``."""
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    return _time_ms(lib, args, dev, repeat)


#: preprocessing before every timed run of :func:`time_kernels`: flush every argument but the
#: first (the input activation, which the layer before just wrote) from the caches, as in a model
#: run, where a layer's weights are read once per inference and have left the caches since
FLUSH_WEIGHTS = "cache_flush_cpu_non_first_arg"


def time_kernels(
    kernels: dict[str, tuple[Any, list[np.ndarray]]],
    target: Any,
    rounds: int = 5,
    repeat: int = 3,
    flush: bool = True,
) -> dict[str, float]:
    """Best ms of each PrimFunc of ``kernels`` (``{name: (func, arrays)}``) compiled for
    ``target``, timed in ``rounds`` alternating rounds of ``repeat`` single runs each (a load
    change on a shared host then hits every kernel alike), with the weights cold (``flush``:
    :data:`FLUSH_WEIGHTS`; a 13x13 conv whose Winograd F(4x4) weights are 2.4 MB ran 1.9x its
    warm-cache time inside SqueezeNet)."""
    import tvm

    dev = tvm.cpu()
    evals = {}
    for name, (func, arrays) in kernels.items():
        lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
        ev = lib.mod.time_evaluator(
            "main", dev, number=1, repeat=repeat, f_preproc=FLUSH_WEIGHTS if flush else ""
        )
        evals[name] = (ev, args)
    best = {name: float("inf") for name in kernels}
    for _ in range(rounds):
        for name, (ev, args) in evals.items():
            best[name] = min(best[name], float(min(ev(*args).results)) * 1e3)
    return best


def target_key(target: Any) -> str:
    """``kind-mcpu-cores`` of a ``tvm.target.Target``: the machine part of a table key."""
    attrs = target.attrs if target.attrs is not None else {}
    return f"{target.kind.name}-{attrs.get('mcpu', '')}-{attrs.get('num-cores', 1)}"


def cached_row(
    table_path: str | os.PathLike[str],
    key: str,
    needed: Sequence[str],
    measure: Callable[[], dict[str, float]],
) -> dict[str, float]:
    """The row ``key`` of the JSON measurement table at ``table_path``, measured (``measure()``)
    and stored when missing or lacking one of ``needed``. A missing or corrupt file counts as
    empty (it is re-measured, never fatal); the file is rewritten atomically, re-read first so
    that rows another process wrote meanwhile are kept."""
    path = Path(table_path)
    row = _read_table(path).get(key)
    if isinstance(row, dict) and all(k in row for k in needed):
        return row
    row = {**(row if isinstance(row, dict) else {}), **measure()}
    table = _read_table(path)
    table[key] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(table, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return row


def _read_table(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # missing or corrupt: measured again
        return {}
    return data if isinstance(data, dict) else {}


__all__ = ["FLUSH_WEIGHTS", "cached_row", "target_key", "time_kernel", "time_kernels"]
