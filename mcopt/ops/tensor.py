"""Data-movement ops: reshape, flatten, transpose, expand, squeeze/unsqueeze, concat, split, slice, pad,
reduce_mean. Attributes are fully resolved (the importer folds ONNX shape/axes inputs)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mcopt.ir.types import TensorType
from mcopt.ops._util import bad_int, bad_ints, norm_axes, norm_axis
from mcopt.ops.schema import REQUIRED, Attrs, InTypes, OpSchema, register_op


def _x(t: InTypes) -> TensorType:
    x = t[0]
    assert x is not None
    return x


_VIEWS = {"reshape", "flatten", "squeeze", "unsqueeze"}


def _op(
    name: str,
    inputs: tuple[str, ...],
    attrs: dict[str, Any],
    check: Any,
    infer: Any,
    ref: Any,
    doc: str,
) -> None:
    traits = (
        frozenset({"view", "zero_preserving", "finite_preserving"})
        if name in _VIEWS
        else frozenset()
    )
    register_op(
        OpSchema(
            name=name,
            inputs=inputs,
            attrs=attrs,
            check=check,
            infer=infer,
            reference=ref,
            doc=doc,
            traits=traits,
        )
    )


# --- reshape / flatten / transpose ----------------------------------------------------------------
def _reshape_check(t: InTypes, a: Attrs) -> str | None:
    x = _x(t)
    if reason := bad_ints(a, "shape", lo=0):
        return reason + " (fully resolved: no -1 / 0 placeholders)"
    if math.prod(a["shape"]) != x.size:
        return f"cannot reshape {x} ({x.size} elements) to {a['shape']} ({math.prod(a['shape'])} elements)"
    return None


_op(
    "reshape",
    ("x",),
    {"shape": REQUIRED},
    _reshape_check,
    lambda t, a: [TensorType(a["shape"], _x(t).dtype)],
    lambda x, shape: x.reshape(shape),
    "y = x viewed with the given (fully resolved) shape",
)


def _flatten_axis(x: TensorType, axis: int) -> int | None:
    if not isinstance(axis, int) or not -x.rank <= axis <= x.rank:
        return None
    return axis + x.rank if axis < 0 else axis


def _flatten_shape(x: TensorType, axis: int) -> tuple[int, int]:
    ax = _flatten_axis(x, axis)
    assert ax is not None
    return math.prod(x.shape[:ax]), math.prod(x.shape[ax:])


_op(
    "flatten",
    ("x",),
    {"axis": 1},
    lambda t, a: (
        None
        if _flatten_axis(_x(t), a["axis"]) is not None
        else f"axis {a['axis']!r} is out of range [-{_x(t).rank}, {_x(t).rank}] for input {_x(t)}"
    ),
    lambda t, a: [TensorType(_flatten_shape(_x(t), a["axis"]), _x(t).dtype)],
    lambda x, axis: x.reshape(_flatten_shape(TensorType(x.shape, x.dtype.name), axis)),
    "2-D view: (prod(dims[:axis]), prod(dims[axis:])) (ONNX Flatten)",
)


def _transpose_check(t: InTypes, a: Attrs) -> str | None:
    if reason := bad_ints(a, "perm"):
        return reason
    if sorted(a["perm"]) != list(range(_x(t).rank)):
        return f"perm {a['perm']} is not a permutation of the {_x(t).rank} axes of {_x(t)}"
    return None


_op(
    "transpose",
    ("x",),
    {"perm": REQUIRED},
    _transpose_check,
    lambda t, a: [TensorType(tuple(_x(t).shape[p] for p in a["perm"]), _x(t).dtype)],
    lambda x, perm: np.ascontiguousarray(np.transpose(x, perm)),
    "y = x with axes permuted: y.shape[i] = x.shape[perm[i]]",
)


def _expand_check(t: InTypes, a: Attrs) -> str | None:
    x = _x(t)
    if reason := bad_ints(a, "shape", lo=0):
        return reason + " (the fully resolved output shape)"
    try:
        out = tuple(int(d) for d in np.broadcast_shapes(x.shape, tuple(a["shape"])))
    except ValueError:
        return f"cannot broadcast {x} to {list(a['shape'])}"
    if out != tuple(a["shape"]):
        return f"broadcasting {x} to {list(a['shape'])} gives {list(out)}; give that shape"
    return None


_op(
    "expand",
    ("x",),
    {"shape": REQUIRED},
    _expand_check,
    lambda t, a: [TensorType(a["shape"], _x(t).dtype)],
    lambda x, shape: np.ascontiguousarray(np.broadcast_to(x, shape)),
    "y = x broadcast (numpy rules) to `shape`, the resolved output shape (ONNX Expand)",
)


# --- squeeze / unsqueeze --------------------------------------------------------------------------
def _squeeze_check(t: InTypes, a: Attrs) -> str | None:
    x = _x(t)
    if reason := bad_ints(a, "axes"):
        return reason
    axes = norm_axes(a["axes"], x.rank)
    if axes is None:
        return f"axes {a['axes']} are out of range or repeated for input {x}"
    if any(x.shape[ax] != 1 for ax in axes):
        return f"cannot squeeze axes {a['axes']} of {x}: dims are not 1"
    return None


def _squeeze_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    ax = norm_axes(axes, len(shape))
    assert ax is not None
    return tuple(d for i, d in enumerate(shape) if i not in ax)


def _unsqueeze_check(t: InTypes, a: Attrs) -> str | None:
    x = _x(t)
    if reason := bad_ints(a, "axes"):
        return reason
    if norm_axes(a["axes"], x.rank + len(a["axes"])) is None:
        return f"axes {a['axes']} are out of range or repeated for output rank {x.rank + len(a['axes'])}"
    return None


def _unsqueeze_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    rank = len(shape) + len(axes)
    ax = norm_axes(axes, rank)
    assert ax is not None
    it = iter(shape)
    return tuple(1 if i in ax else next(it) for i in range(rank))


_op(
    "squeeze",
    ("x",),
    {"axes": REQUIRED},
    _squeeze_check,
    lambda t, a: [TensorType(_squeeze_shape(_x(t).shape, a["axes"]), _x(t).dtype)],
    lambda x, axes: x.reshape(_squeeze_shape(x.shape, axes)),
    "remove the given size-1 axes (negative axes count from the end)",
)
_op(
    "unsqueeze",
    ("x",),
    {"axes": REQUIRED},
    _unsqueeze_check,
    lambda t, a: [TensorType(_unsqueeze_shape(_x(t).shape, a["axes"]), _x(t).dtype)],
    lambda x, axes: x.reshape(_unsqueeze_shape(x.shape, axes)),
    "insert size-1 axes at the given positions of the output",
)


# --- concat / split -------------------------------------------------------------------------------
def _concat_check(t: InTypes, a: Attrs) -> str | None:
    if not t:
        return "needs at least one input"
    ts = [x for x in t if x is not None]
    if len(ts) != len(t):
        return "inputs must not be None"
    first = ts[0]
    ax = norm_axis(a["axis"], first.rank)
    if ax is None:
        return f"axis {a['axis']!r} is out of range for input {first}"
    for i, x in enumerate(ts[1:], 1):
        if x.dtype != first.dtype or x.rank != first.rank:
            return f"input {i} {x} does not match input 0 {first} in rank/dtype"
        if any(d != e for j, (d, e) in enumerate(zip(x.shape, first.shape)) if j != ax):
            return f"input {i} {x} differs from input 0 {first} outside axis {a['axis']}"
    return None


def _concat_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    first = _x(t)
    ax = norm_axis(a["axis"], first.rank)
    assert ax is not None
    shape = list(first.shape)
    shape[ax] = sum(x.shape[ax] for x in t if x is not None)
    return [TensorType(tuple(shape), first.dtype)]


_op(
    "concat",
    ("*xs",),
    {"axis": REQUIRED},
    _concat_check,
    _concat_infer,
    lambda *xs, axis: np.concatenate(xs, axis=axis),
    "join the inputs along `axis` (ONNX Concat)",
)


def _split_check(t: InTypes, a: Attrs) -> str | None:
    x = _x(t)
    if norm_axis(a["axis"], x.rank) is None:
        return f"axis {a['axis']!r} is out of range for input {x}"
    if reason := bad_ints(a, "sizes", lo=0):
        return reason
    if not a["sizes"] or sum(a["sizes"]) != x.shape[a["axis"]]:
        return f"sizes {a['sizes']} must sum to dim {x.shape[a['axis']]} of {x} on axis {a['axis']}"
    return None


def _split_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x = _x(t)
    ax = norm_axis(a["axis"], x.rank)
    assert ax is not None
    return [TensorType((*x.shape[:ax], s, *x.shape[ax + 1 :]), x.dtype) for s in a["sizes"]]


def split_ref(x: np.ndarray, *, axis: int, sizes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    return tuple(np.split(x, np.cumsum(sizes)[:-1].tolist(), axis=axis))


_op(
    "split",
    ("x",),
    {"axis": 0, "sizes": REQUIRED},
    _split_check,
    _split_infer,
    split_ref,
    "cut x along `axis` into pieces of the given sizes (one output each)",
)


# --- slice ----------------------------------------------------------------------------------------
def _slice_check(t: InTypes, a: Attrs) -> str | None:
    x = _x(t)
    for key in ("starts", "ends", "axes", "steps"):
        if reason := bad_ints(a, key, len(a["starts"]) if isinstance(a["starts"], tuple) else None):
            return reason + " (starts, ends, axes and steps need one value per sliced axis)"
    if norm_axes(a["axes"], x.rank) is None:
        return f"axes {a['axes']} are out of range or repeated for input {x}"
    if 0 in a["steps"]:
        return "steps must be non-zero"
    return None


def slice_bounds(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """ONNX Slice's resolved (start, end) on an axis of size `dim`: negative indices count from
    the end, then clamp to [0, dim] (step > 0) or [-1, dim - 1] (step < 0; end -1 = before 0)."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


def _slices(shape: tuple[int, ...], a: Attrs) -> tuple[slice, ...]:
    """ONNX Slice semantics (negative indices, clamping, negative steps) as Python slices."""
    out = [slice(None)] * len(shape)
    axes = norm_axes(a["axes"], len(shape))
    assert axes is not None
    for start, end, ax, step in zip(a["starts"], a["ends"], axes, a["steps"]):
        start, end = slice_bounds(shape[ax], start, end, step)
        out[ax] = slice(start, None if end < 0 else end, step)
    return tuple(out)


def _slice_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x = _x(t)
    sl = _slices(x.shape, a)
    return [TensorType(tuple(len(range(*s.indices(d))) for s, d in zip(sl, x.shape)), x.dtype)]


_op(
    "slice",
    ("x",),
    {"starts": REQUIRED, "ends": REQUIRED, "axes": REQUIRED, "steps": REQUIRED},
    _slice_check,
    _slice_infer,
    lambda x, **a: np.ascontiguousarray(x[_slices(x.shape, a)]),
    "x[starts:ends:steps] on the given axes (ONNX Slice semantics, indices clamped)",
)


# --- pad ------------------------------------------------------------------------------------------
def _pad_check(t: InTypes, a: Attrs) -> str | None:
    x = _x(t)
    if reason := bad_ints(a, "pads", 2 * x.rank):
        return reason + " (ONNX order: all begins, then all ends)"
    if a["mode"] not in ("constant", "reflect", "edge"):
        return f"mode must be 'constant', 'reflect' or 'edge', got {a['mode']!r}"
    if isinstance(a["value"], bool) or not isinstance(a["value"], int | float):
        return f"value must be a number, got {a['value']!r}"
    shape = _pad_shape(x.shape, a["pads"])
    if any(d < 0 for d in shape):
        return f"pads {a['pads']} crop more than input {x} has"
    if a["mode"] != "constant" and any(p > 0 and d == 0 for d, p in zip(x.shape * 2, a["pads"])):
        return f"mode {a['mode']!r} cannot pad an empty axis of {x}"
    if a["mode"] == "reflect":
        # ONNX (and onnxruntime) reflect within the axis: at most length - 1 values per side,
        # counted after any cropping (numpy's np.pad would reflect again, ONNX is undefined there)
        r, p = x.rank, a["pads"]
        for i, d in enumerate(x.shape):
            kept = d + min(p[i], 0) + min(p[i + r], 0)
            if max(p[i], p[i + r]) > kept - 1:
                return (
                    f"mode 'reflect' pads axis {i} of {x} by {max(p[i], p[i + r])}, but reflection "
                    f"gives at most {max(kept - 1, 0)} values per side there"
                )
    return None


def _pad_shape(shape: tuple[int, ...], pads: tuple[int, ...]) -> tuple[int, ...]:
    r = len(shape)
    return tuple(d + pads[i] + pads[i + r] for i, d in enumerate(shape))


def pad_ref(x: np.ndarray, *, pads: tuple[int, ...], mode: str, value: float) -> np.ndarray:
    r = x.ndim
    widths = [(max(pads[i], 0), max(pads[i + r], 0)) for i in range(r)]
    kw: dict[str, Any] = (
        {"constant_values": np.asarray(value).astype(x.dtype)} if mode == "constant" else {}
    )
    y = np.pad(x, widths, mode=mode, **kw)  # type: ignore[call-overload]
    crop = tuple(slice(-min(pads[i], 0), y.shape[i] + min(pads[i + r], 0)) for i in range(r))
    return np.ascontiguousarray(y[crop])


_op(
    "pad",
    ("x",),
    {"pads": REQUIRED, "mode": "constant", "value": 0.0},
    _pad_check,
    lambda t, a: [TensorType(_pad_shape(_x(t).shape, a["pads"]), _x(t).dtype)],
    pad_ref,
    "pad (or, with negative pads, crop) x; pads in ONNX order (begins..., ends...)",
)


# --- reduce_mean ----------------------------------------------------------------------------------
def _reduce_axes(rank: int, axes: tuple[int, ...]) -> tuple[int, ...]:
    out = norm_axes(axes, rank) if axes else tuple(range(rank))
    assert out is not None
    return tuple(sorted(out))


def _reduce_check(t: InTypes, a: Attrs) -> str | None:
    x = _x(t)
    if reason := bad_ints(a, "axes") or bad_int(a, "keepdims", (0, 1)):
        return reason
    if norm_axes(a["axes"], x.rank) is None:
        return f"axes {a['axes']} are out of range or repeated for input {x}"
    return None


def _reduce_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x = _x(t)
    axes = _reduce_axes(x.rank, a["axes"])
    if a["keepdims"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [TensorType(shape, x.dtype)]


def reduce_mean_ref(x: np.ndarray, *, axes: tuple[int, ...], keepdims: int) -> np.ndarray:
    ax = _reduce_axes(x.ndim, axes)
    acc = np.float32 if x.dtype in (np.float16, np.float32) else np.float64
    return np.asarray(np.mean(x, axis=ax, keepdims=bool(keepdims), dtype=acc)).astype(x.dtype)


_op(
    "reduce_mean",
    ("x",),
    {"axes": REQUIRED, "keepdims": 1},
    _reduce_check,
    _reduce_infer,
    reduce_mean_ref,
    "mean over `axes` (empty = all axes), keeping them as size 1 when keepdims",
)

#: the other reductions: name -> (numpy function, what it computes)
REDUCTIONS = {
    "reduce_max": (np.max, "max"),
    "reduce_min": (np.min, "min"),
    "reduce_sum": (np.sum, "sum"),
}


def _identity(fn, dtype: np.dtype) -> Any:  # type: ignore[no-untyped-def]
    """What max / min over an empty set is (ONNX: the dtype's lowest / highest value)."""
    if fn is np.sum:
        return None
    high = fn is np.min
    if dtype == np.bool_:
        return high
    if np.issubdtype(dtype, np.floating):
        return np.inf if high else -np.inf
    info = np.iinfo(dtype)
    return info.max if high else info.min


def _reduction_ref(fn):  # type: ignore[no-untyped-def]
    def ref(x: np.ndarray, *, axes: tuple[int, ...], keepdims: int) -> np.ndarray:
        ax = _reduce_axes(x.ndim, axes)
        init = _identity(fn, x.dtype)
        kw = {} if init is None else {"initial": init}
        return np.asarray(fn(x, axis=ax, keepdims=bool(keepdims), **kw)).astype(x.dtype)

    return ref


for _name, (_fn, _what) in REDUCTIONS.items():
    _op(
        _name,
        ("x",),
        {"axes": REQUIRED, "keepdims": 1},
        _reduce_check,
        _reduce_infer,
        _reduction_ref(_fn),
        f"{_what} over `axes` (empty = all axes), keeping them as size 1 when keepdims",
    )


# --- argmax / argmin -------------------------------------------------------------------------------
def _arg_check(t: InTypes, a: Attrs) -> str | None:
    x = _x(t)
    reason = bad_int(a, "axis") or bad_int(a, "keepdims", (0, 1))
    if reason := reason or bad_int(a, "select_last_index", (0, 1)):
        return reason
    if x.rank == 0 or not -x.rank <= a["axis"] < x.rank:
        return f"axis {a['axis']} is out of range for input {x}"
    return None


def _arg_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x = _x(t)
    ax = a["axis"] % x.rank
    if a["keepdims"]:
        shape = tuple(1 if i == ax else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i != ax)
    return [TensorType(shape, "int64")]


def _arg_ref(fn):  # type: ignore[no-untyped-def]
    def ref(x: np.ndarray, *, axis: int, keepdims: int, select_last_index: int) -> np.ndarray:
        ax = axis % x.ndim
        if select_last_index:  # the last of equal extremes: search the reversed axis
            idx = x.shape[ax] - 1 - fn(np.flip(x, axis=ax), axis=ax)
        else:
            idx = fn(x, axis=ax)
        idx = np.asarray(idx, np.int64)
        return np.expand_dims(idx, ax) if keepdims else idx

    return ref


for _name, _fn in (("argmax", np.argmax), ("argmin", np.argmin)):
    _op(
        _name,
        ("x",),
        {"axis": 0, "keepdims": 1, "select_last_index": 0},
        _arg_check,
        _arg_infer,
        _arg_ref(_fn),
        f"index (int64) of the {_name[3:]} along `axis` (ONNX Arg{_name[3:].title()})",
    )


# --- gathers with computed indices --------------------------------------------------------------
def _index_of(i: np.ndarray, dim: int) -> np.ndarray:
    """ONNX's index convention: ``-dim <= i < 0`` counts from the end; the rest is clamped into
    ``[0, dim)`` (ONNX leaves out-of-range indices undefined; mcopt's kernels clamp too)."""
    i = np.asarray(i).astype(np.int64)
    return np.clip(np.where(i < 0, i + dim, i), 0, dim - 1)


def _take_check(t: InTypes, a: Attrs) -> str | None:
    x, i = t[0], t[1]
    assert x is not None and i is not None
    if np.dtype(i.dtype).kind not in "iu":
        return f"indices {i} must be integers"
    if x.rank == 0 or norm_axis(a["axis"], x.rank) is None:
        return f"axis {a['axis']} is out of range for input {x}"
    if x.shape[norm_axis(a["axis"], x.rank)] == 0:  # type: ignore[index]
        return f"cannot gather along an empty axis of {x}"
    return None


def _take_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x, i = t[0], t[1]
    assert x is not None and i is not None
    ax = norm_axis(a["axis"], x.rank)
    assert ax is not None
    return [TensorType((*x.shape[:ax], *i.shape, *x.shape[ax + 1 :]), x.dtype)]


def take_ref(x: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    ax = axis % x.ndim
    return np.take(x, _index_of(indices, x.shape[ax]), axis=ax)


_op(
    "take",
    ("x", "indices"),
    {"axis": 0},
    _take_check,
    _take_infer,
    take_ref,
    "y = x indexed along `axis` by computed `indices` (ONNX Gather: the output's shape is x's with "
    "that axis replaced by the indices' shape; negative indices count from the end, others out "
    "of range are clamped)",
)


def _gather_elements_check(t: InTypes, a: Attrs) -> str | None:
    x, i = t[0], t[1]
    assert x is not None and i is not None
    if reason := _take_check(t, a):
        return reason
    if i.rank != x.rank:
        return f"indices {i} must have the rank of the input {x}"
    ax = norm_axis(a["axis"], x.rank)
    if any(d > xd for k, (d, xd) in enumerate(zip(i.shape, x.shape)) if k != ax):
        return f"indices {i} are larger than the input {x} off the gather axis"
    return None


def gather_elements_ref(x: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    ax = axis % x.ndim
    src = x[tuple(slice(0, d) if k != ax else slice(None) for k, d in enumerate(indices.shape))]
    return np.take_along_axis(src, _index_of(indices, x.shape[ax]), axis=ax)


_op(
    "gather_elements",
    ("x", "indices"),
    {"axis": 0},
    _gather_elements_check,
    lambda t, a: [TensorType(t[1].shape, t[0].dtype)],  # type: ignore[union-attr]
    gather_elements_ref,
    "y[.., j, ..] = x[.., indices[.., j, ..], ..] along `axis`, elsewhere the same position "
    "(ONNX GatherElements; negative indices count from the end, others out of range clamped)",
)


# --- top-k ---------------------------------------------------------------------------------------
def _topk_check(t: InTypes, a: Attrs) -> str | None:
    x = _x(t)
    if x.rank == 0 or norm_axis(a["axis"], x.rank) is None:
        return f"axis {a['axis']!r} is out of range for input {x}"
    if reason := bad_int(a, "k") or bad_int(a, "largest", (0, 1)):
        return reason
    dim = x.shape[norm_axis(a["axis"], x.rank)]  # type: ignore[index]
    if not 1 <= int(a["k"]) <= dim:
        return f"k={a['k']} must be in [1, {dim}] (axis {a['axis']} of {x})"
    return None


def _topk_infer(t: InTypes, a: Attrs) -> list[TensorType]:
    x = _x(t)
    ax = norm_axis(a["axis"], x.rank)
    assert ax is not None
    shape = (*x.shape[:ax], int(a["k"]), *x.shape[ax + 1 :])
    return [TensorType(shape, x.dtype), TensorType(shape, "int64")]


def topk_ref(x: np.ndarray, *, axis: int, k: int, largest: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest (smallest) values along ``axis``, sorted, and their indices; equal
    values in index order (ONNX TopK's tie rule)."""
    ax = axis % x.ndim
    key = -x.astype(np.float64) if largest else x
    idx = np.take(np.argsort(key, axis=ax, kind="stable"), np.arange(k), axis=ax).astype(np.int64)
    return np.take_along_axis(x, idx, axis=ax), idx


_op(
    "topk",
    ("x",),
    {"axis": -1, "k": REQUIRED, "largest": 1},
    _topk_check,
    _topk_infer,
    topk_ref,
    "the k largest (largest=0: smallest) values along `axis`, sorted, and their int64 indices "
    "(ONNX TopK with a constant K; ties in index order)",
)

__all__ = [
    "REDUCTIONS", "gather_elements_ref", "pad_ref", "reduce_mean_ref", "split_ref", "take_ref",
    "topk_ref",
]  # fmt: skip
