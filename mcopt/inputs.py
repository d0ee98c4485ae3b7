"""User-supplied model inputs: calibration data, feeds and `--input-shape` strings, checked with clear errors."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcopt.errors import OptionError, ShapeError
from mcopt.ir.core import Graph

Feed = dict[str, np.ndarray]


InputSpec = tuple[str, tuple[int, ...], str]


def bind_arrays(
    specs: Sequence[InputSpec],
    args: Sequence[Any],
    named: Mapping[str, Any] | None = None,
    *,
    who: str = "the model",
    any_batch: bool = False,
) -> list[np.ndarray]:
    """User inputs (positional, one dict, or keywords) -> contiguous numpy arrays in ``specs``
    order (``(name, shape, dtype)`` each), checked against the shapes and dtypes (same-kind dtypes
    are cast; empty ``specs``: unchecked). The one binder: the reference interpreter and every
    compiled model kind (host, arm, cuda, fpga, remote) call it. ``any_batch``: dim 0 may differ
    from the spec's (callers that split a batch into the model's own)."""
    named = dict(named or {})
    if len(args) == 1 and isinstance(args[0], Mapping) and not named:
        named, args = dict(args[0]), ()
    names = [s[0] for s in specs]
    if named:
        if args:
            raise ShapeError("pass inputs either positionally or by name, not both")
        if not specs:
            raise ShapeError(f"{who}'s input names are unknown; pass inputs positionally")
        unknown = sorted(set(named) - set(names))
        missing = [n for n in names if n not in named]
        if unknown or missing:
            raise ShapeError(
                f"unknown input name(s) {unknown}, missing {missing}; {who} takes {names}"
            )
        args = [named[n] for n in names]
    if specs and len(args) != len(specs):
        raise ShapeError(f"{who} takes {len(specs)} input(s), got {len(args)}")
    arrays = []
    for i, a in enumerate(args):
        a = np.asarray(a, order="C")  # contiguous; np.ascontiguousarray would make 0-d 1-d
        if specs:
            name, shape, dtype = specs[i]
            if (a.shape[1:] if any_batch and a.ndim else a.shape) != (
                tuple(shape)[1:] if any_batch and a.ndim else tuple(shape)
            ):
                raise ShapeError(
                    f"input {name!r}: expected shape {list(shape)}, got {list(a.shape)}"
                )
            if a.dtype != np.dtype(dtype):
                if a.dtype.kind != np.dtype(dtype).kind:
                    raise ShapeError(f"input {name!r}: expected dtype {dtype}, got {a.dtype}")
                a = a.astype(dtype)
        arrays.append(a)
    return arrays


def read_arrays(path: str | os.PathLike[str], what: str) -> Any:
    """The arrays of an ``.npz`` (a dict name -> array) or ``.npy`` (one array) file; a missing or
    unreadable file is a one-line OptionError naming `what` and the path."""
    p = Path(path)
    if not p.exists():
        raise OptionError(f"{what} {str(p)!r} does not exist")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # corrupt file
        raise OptionError(f"{what} {str(p)!r} is not a readable .npz/.npy: {e}") from None


def parse_input_shape(spec: str) -> tuple[str, list[int]]:
    """`name=1,3,224,224` -> ("name", [1, 3, 224, 224])."""
    name, sep, dims = spec.rpartition("=")
    if not sep or not name:
        raise OptionError(f"--input-shape {spec!r}: expected NAME=D1,D2,... e.g. input=1,3,224,224")
    try:
        shape = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        raise OptionError(
            f"--input-shape {spec!r}: dims must be integers, e.g. input=1,3,224,224"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise OptionError(f"--input-shape {spec!r}: dims must be positive integers")
    return name, shape


def parse_input_value(spec: str) -> tuple[str, Any]:
    """`sr=16000` -> ("sr", 16000); `bias=0.5,1,2` -> ("bias", [0.5, 1.0, 2.0]) (a scalar, or a
    1-D list; the importer casts it to the input's element type)."""
    name, sep, text = spec.partition("=")
    if not sep or not name or not text.strip():
        raise OptionError(f"--input-value {spec!r}: expected NAME=VALUE[,VALUE...] e.g. sr=16000")
    try:
        vals = [float(v) if any(c in v for c in ".eE") else int(v) for v in text.split(",")]
    except ValueError:
        raise OptionError(
            f"--input-value {spec!r}: values must be numbers, e.g. sr=16000"
        ) from None
    return name, vals[0] if len(vals) == 1 else vals


def random_feeds(graph: Graph, n: int = 1, seed: int = 0) -> list[Feed]:
    """Seeded random inputs for `graph` (standard normal floats; small non-negative ints)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        feed: Feed = {}
        for v in graph.inputs:
            if np.dtype(v.dtype).kind == "f":
                feed[v.name] = rng.standard_normal(v.shape).astype(v.dtype)
            else:
                feed[v.name] = rng.integers(0, 4, size=v.shape).astype(v.dtype)
        feeds.append(feed)
    return feeds


def load_calibration(calib: Any, graph: Graph, limit: int | None = None) -> list[Feed]:
    """Turn what the user gave as calibration data into a list of feeds matching the graph inputs.

    Accepted: a path to .npz/.npy; one array (a batch, split along axis 0 into graph-batch-sized
    samples); a list of arrays; a dict name -> array; a list of dicts.
    """
    if calib is None:
        return []
    if isinstance(calib, str | os.PathLike):
        path = Path(calib)
        if not path.exists():
            raise OptionError(f"calibration file {str(path)!r} does not exist")
        calib = read_arrays(path, "calibration file")
        if isinstance(calib, dict) and len(graph.inputs) == 1 and graph.inputs[0].name not in calib:
            # a single-input model with an npz whose key differs (e.g. 'x'): take the first array
            if len(calib) >= 1:
                calib = next(iter(calib.values()))
    names = [v.name for v in graph.inputs]
    if isinstance(calib, Mapping):
        missing = [n for n in names if n not in calib]
        if missing:
            raise OptionError(f"calibration data lacks input(s) {missing}; it has {sorted(calib)}")
        batches = {n: np.asarray(calib[n]) for n in names}
        return _split_batches(graph, batches, limit)
    if isinstance(calib, np.ndarray):
        if len(names) != 1:
            raise OptionError(
                f"the model has {len(names)} inputs {names}: give calibration data as a dict"
            )
        return _split_batches(graph, {names[0]: calib}, limit)
    if isinstance(calib, Sequence):
        feeds: list[Feed] = []
        for item in calib:
            if isinstance(item, Mapping):
                feeds.extend(load_calibration(item, graph))
            else:
                feeds.extend(load_calibration(np.asarray(item), graph))
        return feeds[:limit] if limit else feeds
    raise OptionError(
        f"calibration data of type {type(calib).__name__} is not supported; give an array, dict or .npz path"
    )


def _split_batches(graph: Graph, batches: dict[str, np.ndarray], limit: int | None) -> list[Feed]:
    feeds: list[Feed] = []
    count: int | None = None
    per: dict[str, list[np.ndarray]] = {}
    for v in graph.inputs:
        a = batches[v.name]
        if a.dtype.kind == "f" and np.dtype(v.dtype).kind == "f":
            a = a.astype(v.dtype)
        if a.shape == v.shape:
            chunks = [a]
        elif (
            a.ndim == len(v.shape)
            and a.shape[1:] == v.shape[1:]
            and v.shape[0] >= 1
            and a.shape[0] % v.shape[0] == 0
        ):
            b = v.shape[0]
            chunks = [a[i : i + b] for i in range(0, a.shape[0], b)]
        elif a.ndim == len(v.shape) - 1 and a.shape == v.shape[1:] and v.shape[0] == 1:
            chunks = [a[None]]
        else:
            raise ShapeError(
                f"calibration data for input %{v.name} has shape {list(a.shape)}; the model expects "
                f"{list(v.shape)} (or a stack of such along axis 0)"
            )
        per[v.name] = chunks
        count = len(chunks) if count is None else min(count, len(chunks))
    for i in range(count or 0):
        feeds.append({n: per[n][i] for n in per})
        if limit and len(feeds) >= limit:
            break
    return feeds
