"""Timing compiled kernels and caching the measurements per machine (the Winograd tile choice,
:mod:`.winograd_nchwc`): best-of-N milliseconds of one PrimFunc, and a JSON table keyed by target
+ shape that is measured once per machine, tolerant of a missing or corrupt file."""

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


__all__ = ["cached_row", "target_key", "time_kernel"]
