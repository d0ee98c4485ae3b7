"""Training data for the training passes: what a user hands to ``optimize(..., data=...)`` / ``--data``
turned into training batches plus a held-out validation split that no pass trains or fits on.

Accepted (labels are optional everywhere; without them the loss is distillation from the teacher and
the metric is top-1 agreement with it):

- ``(x, y)`` arrays, or ``x`` alone; ``x`` is ``(N, ...)`` for a one-input model or a dict
  ``{input name: (N, ...)}``;
- a ``.npz`` path or a dict with ``x`` (or the input names) and optionally ``y``;
- any iterable of ``(x, y)`` / ``x`` / ``{"x":..., "y":...}`` batches that can be iterated once per
  epoch (a ``torch.utils.data.DataLoader`` works; tensors are converted with ``numpy()``).

Validation split: in-memory data is split once, seeded (``val_split`` of the samples, stratified
by label when there are labels). A stream is split by a hash of each sample's bytes (``val_split``
of the samples, the same ones in every epoch whatever the shuffling; the held-out ones are cached
up to ``max_val`` samples). A loader that augments randomly gives different bytes each epoch: pass an
explicit ``val=`` then. numpy only: no torch import here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcopt.errors import OptionError
from mcopt.ir.core import Graph

Batch = tuple[list[np.ndarray], "np.ndarray | None"]


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


@dataclass
class TrainData:
    """Training batches (``batches(batch, rng)`` once per epoch) and a validation split."""

    input_names: list[str]
    #: in-memory training part (None for a stream)
    x: list[np.ndarray] | None
    y: np.ndarray | None
    val_x: list[np.ndarray]
    val_y: np.ndarray | None
    labelled: bool
    source: str
    stream: Iterable[Any] | None = None
    val_split: float = 0.1
    #: applied to every training batch (never to the validation split), e.g. random shifts
    augment: Callable[[list[np.ndarray], np.random.Generator], list[np.ndarray]] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_train(self) -> int | None:
        return None if self.x is None else len(self.x[0])

    @property
    def n_val(self) -> int:
        return len(self.val_x[0]) if self.val_x else 0

    def describe(self) -> str:
        n = "streamed" if self.x is None else f"{self.n_train} samples"
        kind = "labelled" if self.labelled else "unlabelled (distillation from the teacher)"
        return f"{kind} training data from {self.source}: {n}, {self.n_val} held out for validation"

    def batches(self, batch: int, rng: np.random.Generator) -> Iterator[Batch]:
        """One epoch of shuffled training batches (in-memory) or the stream minus held-out samples."""
        if self.x is not None:
            n = len(self.x[0])
            order = rng.permutation(n)
            for i in range(0, n, batch):
                idx = order[i : i + batch]
                xs = [a[idx] for a in self.x]
                if self.augment is not None:
                    xs = self.augment(xs, rng)
                yield xs, (None if self.y is None else self.y[idx])
            return
        assert self.stream is not None
        for item in self.stream:
            xs, y = _split_item(item, self.input_names)
            keep = ~_held_out(xs, self.val_split)
            if not keep.any():
                continue
            xs = [a[keep] for a in xs]
            if self.augment is not None:
                xs = self.augment(xs, rng)
            yield xs, (None if y is None else y[keep])


def _held_out(xs: list[np.ndarray], frac: float) -> np.ndarray:
    """Per sample: is it in the validation split (a hash of its bytes below `frac`)."""
    n = len(xs[0])
    out = np.zeros(n, bool)
    if frac <= 0:
        return out
    for i in range(n):
        h = hashlib.blake2b(digest_size=8)
        for a in xs:
            h.update(np.ascontiguousarray(a[i]).tobytes())
        out[i] = int.from_bytes(h.digest(), "little") / 2.0**64 < frac
    return out


def _split_item(item: Any, names: list[str]) -> tuple[list[np.ndarray], np.ndarray | None]:
    if isinstance(item, Mapping):
        y = item.get("y", item.get("label", item.get("labels")))
        if "x" in item and len(names) == 1:
            xs = [_np(item["x"])]
        else:
            missing = [n for n in names if n not in item]
            if missing:
                raise OptionError(
                    f"a training batch lacks input(s) {missing}; it has {sorted(item)}"
                )
            xs = [_np(item[n]) for n in names]
        return xs, None if y is None else _np(y)
    if isinstance(item, tuple | list) and len(item) == 2 and len(names) == 1:
        return [_np(item[0])], _np(item[1])
    if isinstance(item, tuple | list) and len(item) == len(names) + 1 and len(names) > 1:
        return [_np(a) for a in item[:-1]], _np(item[-1])
    return [_np(item)], None


def _check_x(xs: list[np.ndarray], graph: Graph, what: str) -> list[np.ndarray]:
    out = []
    for a, v in zip(xs, graph.inputs):
        a = np.asarray(a)
        if a.ndim == len(v.shape) - 1 and a.shape == v.shape[1:]:
            a = a[None]
        if a.ndim != len(v.shape) or a.shape[1:] != v.shape[1:]:
            raise OptionError(
                f"{what}: input {v.name!r} samples must have shape {list(v.shape[1:])} "
                f"(batch first), got an array of shape {list(a.shape)}"
            )
        if np.dtype(v.dtype).kind == "f":
            a = a.astype(v.dtype, copy=False)
        out.append(a)
    n = {len(a) for a in out}
    if len(n) != 1:
        raise OptionError(f"{what}: the inputs have different sample counts {sorted(n)}")
    return out


def _check_y(y: Any, n: int, what: str) -> np.ndarray | None:
    if y is None:
        return None
    y = _np(y)
    if len(y) != n:
        raise OptionError(f"{what}: {n} samples but {len(y)} labels")
    if y.dtype.kind == "f" and y.ndim == 1:
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise OptionError(f"{what}: labels must be class indices (integers), got floats")
        y = y.astype(np.int64)
    return y


def _split(
    xs: list[np.ndarray], y: np.ndarray | None, frac: float, seed: int
) -> tuple[list[np.ndarray], np.ndarray | None, list[np.ndarray], np.ndarray | None]:
    n = len(xs[0])
    rng = np.random.default_rng([seed, 7919])
    if frac <= 0 or n < 2:
        return xs, y, [a[:0] for a in xs], None if y is None else y[:0]
    if y is not None and y.ndim == 1 and y.dtype.kind in "iu":
        val_idx = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            val_idx.append(idx[: int(round(len(idx) * frac))])
        vi = np.sort(np.concatenate(val_idx))
    else:
        vi = np.sort(rng.permutation(n)[: max(1, int(round(n * frac)))])
    mask = np.zeros(n, bool)
    mask[vi] = True
    ti = np.flatnonzero(~mask)
    return (
        [a[ti] for a in xs],
        None if y is None else y[ti],
        [a[vi] for a in xs],
        None if y is None else y[vi],
    )


def as_train_data(
    data: Any,
    graph: Graph,
    *,
    val: Any = None,
    val_split: float = 0.1,
    seed: int = 0,
    max_val: int = 2048,
    augment: Callable[[list[np.ndarray], np.random.Generator], list[np.ndarray]] | None = None,
) -> TrainData:
    """Normalize what the user gave (see the module docstring) into :class:`TrainData`;
    `augment(xs, rng) -> xs` transforms every training batch (not the validation split)."""
    if isinstance(data, TrainData):
        return data
    td = _as_train_data(data, graph, val, val_split, seed, max_val)
    td.augment = augment
    return td


def _as_train_data(
    data: Any, graph: Graph, val: Any, val_split: float, seed: int, max_val: int
) -> TrainData:
    if not 0 <= val_split < 1:
        raise OptionError(f"val_split must be in [0, 1), got {val_split}")
    names = [v.name for v in graph.inputs]
    source = type(data).__name__
    if isinstance(data, str | os.PathLike):
        from mcopt.inputs import read_arrays

        source = str(data)
        data = read_arrays(data, "training data file")
    xs: list[np.ndarray] | None = None
    y: Any = None
    if isinstance(data, Mapping):
        y = data.get("y", data.get("labels"))
        if "x" in data and len(names) == 1:
            xs = [_np(data["x"])]
        elif all(n in data for n in names):
            xs = [_np(data[n]) for n in names]
        else:
            raise OptionError(
                f"training data needs 'x' (or the input names {names}) and optionally 'y'; "
                f"it has {sorted(data)}"
            )
    elif isinstance(data, np.ndarray) or hasattr(data, "detach"):
        xs = [_np(data)]
    elif (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(d, np.ndarray) or hasattr(d, "detach") or d is None for d in data)
    ):
        xs, y = [_np(data[0])], data[1]
    elif isinstance(data, tuple) and len(data) == 1:
        xs = [_np(data[0])]
    elif isinstance(data, Iterable):
        td = TrainData(names, None, None, [], None, True, source, data, val_split)
        return _stream_val(td, graph, val, seed, max_val)
    else:
        raise OptionError(
            f"training data of type {type(data).__name__} is not supported; give (x, y) arrays, "
            "an .npz with x and y, or an iterable of (x, y) batches"
        )
    xs = _check_x(xs, graph, "training data")
    y = _check_y(y, len(xs[0]), "training data")
    if val is not None:
        vd = as_train_data(val, graph, val_split=0.0, seed=seed)
        td = TrainData(names, xs, y, vd.x or [], vd.y, y is not None, source, None, 0.0)
        if (y is None) != (vd.y is None) and y is not None:
            raise OptionError("the validation data has no labels but the training data has")
        return td
    tx, ty, vx, vy = _split(xs, y, val_split, seed)
    return TrainData(names, tx, ty, vx, vy, y is not None, source, None, val_split)


def _stream_val(td: TrainData, graph: Graph, val: Any, seed: int, max_val: int) -> TrainData:
    """Collect the held-out part of a stream (hash-selected samples, capped) for validation."""
    if val is not None:
        vd = as_train_data(val, graph, val_split=0.0, seed=seed)
        td.val_x, td.val_y, td.val_split = vd.x or [], vd.y, 0.0
        td.labelled = vd.y is not None
        return td
    vx: list[list[np.ndarray]] = []
    vy: list[np.ndarray] = []
    labelled = True
    count = 0
    seen = 0
    for item in td.stream:  # type: ignore[union-attr]
        xs, y = _split_item(item, td.input_names)
        xs = _check_x(xs, graph, "a training batch")
        seen += len(xs[0])
        labelled = labelled and y is not None
        sel = _held_out(xs, td.val_split)
        if sel.any() and count < max_val:
            vx.append([a[sel] for a in xs])
            if y is not None:
                vy.append(_np(y)[sel])
            count += int(sel.sum())
    if seen == 0:
        raise OptionError("the training data stream yielded no samples")
    if not vx:
        raise OptionError(
            f"no sample of the {seen} in the training stream fell in the {td.val_split:.0%} "
            "validation split; pass val= explicitly"
        )
    td.val_x = [np.concatenate([b[i] for b in vx]) for i in range(len(td.input_names))]
    td.val_y = np.concatenate(vy) if labelled and vy else None
    td.labelled = labelled
    return td


def feeds_of(
    xs: Sequence[np.ndarray], graph: Graph, limit: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Graph-batch-sized feeds (for the interpreter / calibration) from sample arrays."""
    b = graph.inputs[0].shape[0] if graph.inputs and graph.inputs[0].shape else 1
    n = len(xs[0]) if xs else 0
    feeds = []
    for i in range(0, n - b + 1, b):
        feeds.append({v.name: a[i : i + b] for v, a in zip(graph.inputs, xs)})
        if limit is not None and len(feeds) >= limit:
            break
    return feeds


__all__ = ["TrainData", "as_train_data", "feeds_of"]
