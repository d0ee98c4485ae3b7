"""Mutation corpus: real models (the bundled trained LeNet-5 and LeNet-300-100, ``zoo.tiny_cnn``
with residual / depthwise / concat / BN, a small MobileNetV2) damaged in deterministic ways, each
written to a file and imported with :func:`mcopt.onnx_io.import_model`.

Every case must end in one of two ways:

- a **clear error**: an :class:`~mcopt.errors.MCoptError` subclass (not the bare base class), its
  message exactly one line that names something concrete (a quoted tensor / node / attribute /
  input name or the file), the input file unchanged (bytes) and nothing written beside it; for a
  sample of cases also through the CLI (``mcopt optimize ... --target none -o OUT -q``: exit 1,
  one line on stderr, OUT not created);
- the **same answer as onnxruntime**: the model imports, onnxruntime accepts it, and mcopt's
  reference interpreter gives the same outputs on a seeded input (1e-4 relative; NaN / Inf in the
  same places). onnxruntime runs with graph optimizations off: its fused kernels (Conv + Clip)
  turn a NaN into 0 or 6 where its plain Clip, numpy and ONNX's reference keep the NaN. Where a
  mutation makes a model ill-conditioned (a BatchNormalization amplifying a padded border 100x),
  the tolerance grows by twice the difference between onnxruntime's own optimized and plain runs.

Anything else is *wrong* (mcopt accepts a model onnxruntime refuses, or answers differently) or an
*internal error* (any other exception). Mutations that keep the model valid (reordered nodes, typed
instead of raw data, an initializer also listed as input, ...) must give the same answer, and those
that break it must give an error: each mutation states which (``expect``). A hypothesis-driven part
draws random mutations (one or two) and random targets with a fixed seed.

Import only, no compiling: the whole file runs in well under a minute on 2 cores.

Results by mutation class (the deterministic part: 4 models, one case per model a mutation
applies to; regenerate with ``python tests/test_mutation_corpus.py``). Before the importer
validated models (commit 4b7f5f1) the same 569 cases gave 202 clear errors, 196 same answers,
71 wrong (69 accepted where onnxruntime refuses them: float attributes, wrong output types,
``ir_version`` 99, negative dims, duplicate node names, unknown attributes, ...; 2 different
answers: a duplicated initializer) and 100 internal errors (``ValueError``s from bytes that do not
match dims x dtype, negative input dims, untyped constants, ...).

=================== ===== ============ ================= ===== ===============
class               cases clear errors same as onnxrt    wrong internal errors
=================== ===== ============ ================= ===== ===============
tensor bytes           32           32                 0     0               0
element type           52           52                 0     0               0
dims                   32           32                 0     0               0
external data          24           20                 4     0               0
attribute type         36           36                 0     0               0
axis range             13           10                 3     0               0
window values          42           36                 6     0               0
duplicate names        36           32                 4     0               0
graph structure        80           64                16     0               0
graph inputs           40           32                 8     0               0
model level            28           17                11     0               0
output type            24           16                 8     0               0
non-finite weights     38           18                20     0               0
valid rewrite           9            0                 9     0               0
op variants            83           12                71     0               0
total                 569          409               160     0               0
=================== ===== ============ ================= ===== ===============

"non-finite weights" has the same mutations with ``allow_nonfinite=True`` (then: a warning and the
same NaN / Inf as onnxruntime); "op variants" are other valid forms of the ops these models use
(strides, dilations, groups, auto_pad, ceil_mode, activations, inserted Transpose / Pad / Slice /
ReduceMean / Softmax, older opsets), refused only where onnxruntime refuses them too.
"""

from __future__ import annotations

import functools
import io
import random
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from mcopt.errors import MCoptError, NonFiniteWarning
from mcopt.interpreter import run
from mcopt.ir import verify
from mcopt.onnx_io import import_model
from mcopt.testing import zoo

# --- the models -------------------------------------------------------------------------------------


@functools.cache
def _model_bytes(name: str) -> bytes:
    if name == "lenet5":
        return zoo.lenet5_path().read_bytes()
    if name == "lenet300":
        return zoo.lenet300_path().read_bytes()
    if name == "tiny_cnn":
        return zoo.tiny_cnn(seed=0).SerializeToString()
    if name == "mobilenet_v2":
        return zoo.mobilenet_v2(width_mult=0.25, resolution=32, num_classes=10).SerializeToString()
    raise KeyError(name)


MODELS = ("lenet5", "lenet300", "tiny_cnn", "mobilenet_v2")


def _load(name: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.ParseFromString(_model_bytes(name))
    return m


# --- mutation helpers -------------------------------------------------------------------------------
class NotApplicable(Exception):
    """The mutation has no target in this model."""


Rng = random.Random


T = TypeVar("T")


def _pick(items: Sequence[T], rng: Rng) -> T:
    """A random item (NotApplicable when there is none)."""
    if not items:
        raise NotApplicable
    return items[rng.randrange(len(items))]


def _inits(m: onnx.ModelProto) -> dict[str, TensorProto]:
    return {t.name: t for t in m.graph.initializer}


def _nodes(m: onnx.ModelProto, *ops: str) -> list[onnx.NodeProto]:
    return [n for n in m.graph.node if not ops or n.op_type in ops]


def _weight(
    m: onnx.ModelProto, rng: Rng, ops: tuple[str, ...] = ("Conv", "Gemm"), k: int = 1
) -> TensorProto:
    """The initializer read as input `k` of a random node of one of `ops`."""
    inits = _inits(m)
    cands = [inits[n.input[k]] for n in _nodes(m, *ops) if len(n.input) > k and n.input[k] in inits]
    return _pick(cands, rng)


def _float_init(m: onnx.ModelProto, rng: Rng) -> TensorProto:
    inits = _inits(m)
    used = {x for n in m.graph.node for x in n.input}
    return _pick(
        [t for n, t in inits.items() if n in used and t.data_type == TensorProto.FLOAT], rng
    )


def _attr(node: onnx.NodeProto, name: str) -> AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _set_attr(node: onnx.NodeProto, attr: AttributeProto) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == attr.name:
            node.attribute[i].CopyFrom(attr)
            return
    node.attribute.append(attr)


def _raw_attr(name: str, kind: int, **fields: object) -> AttributeProto:
    a = AttributeProto()
    a.name, a.type = name, kind
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(a, k).extend(v)
        else:
            setattr(a, k, v)
    return a


def _to_typed(t: TensorProto) -> None:
    """raw_data -> the typed field (same values)."""
    arr = numpy_helper.to_array(t)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    flat = arr.ravel()
    t.ClearField("raw_data")
    if arr.dtype == np.float32:
        t.float_data.extend(flat.tolist())
    elif arr.dtype == np.int64:
        t.int64_data.extend(flat.tolist())
    else:
        raise NotApplicable


def _set_values(t: TensorProto, arr: np.ndarray) -> None:
    t.CopyFrom(numpy_helper.from_array(arr.astype(numpy_helper.to_array(t).dtype), t.name))


def _bn(m: onnx.ModelProto, rng: Rng, k: int) -> TensorProto:
    inits = _inits(m)
    return _pick([inits[n.input[k]] for n in _nodes(m, "BatchNormalization")], rng)


def _window(m: onnx.ModelProto, rng: Rng, ops: tuple[str, ...] = ("Conv",)) -> onnx.NodeProto:
    return _pick(_nodes(m, *ops), rng)


def _producer_index(m: onnx.ModelProto) -> dict[str, int]:
    return {o: i for i, n in enumerate(m.graph.node) for o in n.output}


def _input_dims(m: onnx.ModelProto) -> list[onnx.TensorShapeProto.Dimension]:
    return list(m.graph.input[0].type.tensor_type.shape.dim)


def _add_node_after(m: onnx.ModelProto, node: onnx.NodeProto, after: int) -> None:
    nodes = list(m.graph.node)
    nodes.insert(after + 1, node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)


# --- the mutations ----------------------------------------------------------------------------------
Apply = Callable[[onnx.ModelProto, Rng], None]
Damage = Callable[[Path, Rng], None]


@dataclass(frozen=True)
class Mutation:
    """One way to damage (or validly rewrite) a model. `expect`: "error", "same" or "either"."""

    cls: str
    name: str
    apply: Apply
    expect: str = "error"
    allow_nonfinite: bool = False
    external: Damage | None = None  # saved with external weights, then the files damaged


MUTATIONS: list[Mutation] = []


def mutation(cls: str, expect: str = "error") -> Callable[[Apply], Apply]:
    """Register the decorated function as a mutation of class `cls`."""

    def deco(fn: Apply) -> Apply:
        MUTATIONS.append(Mutation(cls, fn.__name__.lstrip("_"), fn, expect))
        return fn

    return deco


# tensor bytes vs dims x dtype
@mutation("tensor bytes")
def raw_truncate_1(m: onnx.ModelProto, rng: Rng) -> None:
    t = _weight(m, rng)
    t.raw_data = t.raw_data[:-1]


@mutation("tensor bytes")
def raw_truncate_half(m: onnx.ModelProto, rng: Rng) -> None:
    t = _float_init(m, rng)
    t.raw_data = t.raw_data[: len(t.raw_data) // 2]


@mutation("tensor bytes")
def raw_extend(m: onnx.ModelProto, rng: Rng) -> None:
    t = _float_init(m, rng)
    t.raw_data = t.raw_data + b"\x00\x00\x80\x3f"


@mutation("tensor bytes")
def raw_empty(m: onnx.ModelProto, rng: Rng) -> None:
    _weight(m, rng).raw_data = b""


@mutation("tensor bytes")
def typed_short(m: onnx.ModelProto, rng: Rng) -> None:
    t = _float_init(m, rng)
    _to_typed(t)
    del t.float_data[-1]


@mutation("tensor bytes")
def typed_long(m: onnx.ModelProto, rng: Rng) -> None:
    t = _float_init(m, rng)
    _to_typed(t)
    t.float_data.append(1.0)


@mutation("tensor bytes")
def typed_wrong_field(m: onnx.ModelProto, rng: Rng) -> None:
    t = _float_init(m, rng)
    vals = numpy_helper.to_array(t).ravel()
    t.ClearField("raw_data")
    t.int64_data.extend(np.round(vals * 100).astype(np.int64).tolist())


@mutation("tensor bytes")
def no_data(m: onnx.ModelProto, rng: Rng) -> None:
    t = _weight(m, rng)
    t.ClearField("raw_data")


# element types
def _retype(kind: int) -> Apply:
    def fn(m: onnx.ModelProto, rng: Rng) -> None:
        _weight(m, rng).data_type = kind

    return fn


for _kind, _label in [
    (TensorProto.DOUBLE, "double"),
    (TensorProto.FLOAT16, "float16"),
    (TensorProto.INT32, "int32_same_size"),
    (TensorProto.UINT32, "uint32_same_size"),
    (TensorProto.UNDEFINED, "undefined"),
    (77, "unknown_77"),
    (TensorProto.STRING, "string"),
    (TensorProto.BFLOAT16, "bfloat16"),
    (TensorProto.INT64, "int64"),
    (TensorProto.UINT8, "uint8"),
    (TensorProto.BOOL, "bool"),
]:
    MUTATIONS.append(Mutation("element type", f"dtype_{_label}", _retype(_kind)))


@mutation("element type")
def dtype_bias_int32_same_size(m: onnx.ModelProto, rng: Rng) -> None:
    _weight(m, rng, k=2).data_type = TensorProto.INT32


@mutation("element type")
def float16_reencoded(m: onnx.ModelProto, rng: Rng) -> None:
    """A float16 weight next to float32 activations: valid bytes, invalid types."""
    t = _weight(m, rng)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))


# dims
@mutation("dims")
def neg_dim(m: onnx.ModelProto, rng: Rng) -> None:
    t = _weight(m, rng)
    t.dims[0] = -t.dims[0]


@mutation("dims")
def huge_dims(m: onnx.ModelProto, rng: Rng) -> None:
    t = _weight(m, rng)
    del t.dims[:]
    t.dims.extend([2**16, 2**16, 2**4])  # 2**36 floats = 256 GB claimed


@mutation("dims")
def overflow_dims(m: onnx.ModelProto, rng: Rng) -> None:
    t = _weight(m, rng)
    del t.dims[:]
    t.dims.extend([2**40, 2**40, 3])


@mutation("dims")
def zero_dim(m: onnx.ModelProto, rng: Rng) -> None:
    _weight(m, rng).dims[0] = 0


@mutation("dims")
def dims_swapped(m: onnx.ModelProto, rng: Rng) -> None:
    t = _weight(m, rng)
    d = list(t.dims)
    if d[0] == d[1]:
        raise NotApplicable
    t.dims[0], t.dims[1] = d[1], d[0]


@mutation("dims")
def dims_extra_one(m: onnx.ModelProto, rng: Rng) -> None:
    _weight(m, rng).dims.append(1)


@mutation("dims")
def dims_dropped(m: onnx.ModelProto, rng: Rng) -> None:
    t = _weight(m, rng)
    del t.dims[-1]


@mutation("dims")
def dims_cleared(m: onnx.ModelProto, rng: Rng) -> None:
    del _weight(m, rng, k=2).dims[:]


# external data (saved with external weights, then the files damaged)
def _ext_noop(m: onnx.ModelProto, rng: Rng) -> None:
    if not m.graph.initializer:
        raise NotApplicable


def _rewrite_ext(path: Path, edit: Callable[[TensorProto], None], rng: Rng) -> None:
    proto = onnx.load(str(path), load_external_data=False)
    ext = [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    edit(_pick(ext, rng))
    path.write_bytes(proto.SerializeToString())


def _ext_entry(t: TensorProto, key: str, value: str) -> None:
    for e in t.external_data:
        if e.key == key:
            e.value = value
            return
    t.external_data.add(key=key, value=value)


def _ext_missing(path: Path, rng: Rng) -> None:
    (path.parent / "weights.bin").unlink()


def _ext_short(path: Path, rng: Rng) -> None:
    w = path.parent / "weights.bin"
    w.write_bytes(w.read_bytes()[:-7])


def _ext_length(path: Path, rng: Rng) -> None:
    def edit(t: TensorProto) -> None:
        n = next(int(e.value) for e in t.external_data if e.key == "length")
        _ext_entry(t, "length", str(max(n - 4, 0)))

    _rewrite_ext(path, edit, rng)


def _ext_offset(path: Path, rng: Rng) -> None:
    size = (path.parent / "weights.bin").stat().st_size
    _rewrite_ext(path, lambda t: _ext_entry(t, "offset", str(size + 64)), rng)


def _ext_escape(path: Path, rng: Rng) -> None:
    _rewrite_ext(path, lambda t: _ext_entry(t, "location", "../../etc/passwd"), rng)


def _ext_ok(path: Path, rng: Rng) -> None:
    pass


for _damage, _expect in [
    (_ext_missing, "error"),
    (_ext_short, "error"),
    (_ext_length, "error"),
    (_ext_offset, "error"),
    (_ext_escape, "error"),
    (_ext_ok, "same"),
]:
    MUTATIONS.append(
        Mutation(
            "external data", _damage.__name__.lstrip("_"), _ext_noop, _expect, external=_damage
        )
    )


# attribute types
@mutation("attribute type")
def float_strides(m: onnx.ModelProto, rng: Rng) -> None:
    n = _window(m, rng, ("Conv", "MaxPool"))
    _set_attr(n, helper.make_attribute("strides", [1.0, 1.0]))


@mutation("attribute type")
def float_transB(m: onnx.ModelProto, rng: Rng) -> None:  # noqa: N802
    n = _pick(_nodes(m, "Gemm"), rng)
    _set_attr(n, _raw_attr("transB", AttributeProto.FLOAT, f=1.0))


@mutation("attribute type")
def int_typed_float_value(m: onnx.ModelProto, rng: Rng) -> None:
    """type INT, but the value in the float field (what a broken exporter writes)."""
    n = _pick(_nodes(m, "Gemm"), rng)
    _set_attr(n, _raw_attr("transB", AttributeProto.INT, f=1.0))


@mutation("attribute type")
def float_kernel_shape(m: onnx.ModelProto, rng: Rng) -> None:
    n = _window(m, rng, ("MaxPool", "Conv"))
    k = _attr(n, "kernel_shape")
    if k is None:
        raise NotApplicable
    _set_attr(n, helper.make_attribute("kernel_shape", [float(v) for v in k.ints]))


@mutation("attribute type")
def string_group(m: onnx.ModelProto, rng: Rng) -> None:
    _set_attr(_window(m, rng), helper.make_attribute("group", "one"))


@mutation("attribute type")
def int_epsilon_or_alpha(m: onnx.ModelProto, rng: Rng) -> None:
    bns = _nodes(m, "BatchNormalization")
    if bns:
        _set_attr(_pick(bns, rng), helper.make_attribute("epsilon", 1))
    else:
        _set_attr(_pick(_nodes(m, "Gemm"), rng), helper.make_attribute("alpha", 1))


@mutation("attribute type")
def unknown_attribute(m: onnx.ModelProto, rng: Rng) -> None:
    _set_attr(_pick(_nodes(m, "Conv", "Gemm"), rng), helper.make_attribute("fuse_relu", 1))


@mutation("attribute type")
def attr_type_undefined(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick([n for n in m.graph.node if len(n.attribute)], rng)
    n.attribute[0].type = AttributeProto.UNDEFINED


@mutation("attribute type")
def ints_as_int(m: onnx.ModelProto, rng: Rng) -> None:
    _set_attr(_window(m, rng, ("Conv", "MaxPool")), helper.make_attribute("strides", 1))


@mutation("attribute type")
def float_axis(m: onnx.ModelProto, rng: Rng) -> None:
    _set_attr(_pick(_nodes(m, "Concat", "Flatten"), rng), helper.make_attribute("axis", 1.0))


# attribute values
def _axis_to(value: Callable[[int], int], ops: tuple[str, ...]) -> Apply:
    def fn(m: onnx.ModelProto, rng: Rng) -> None:
        n = _pick(_nodes(m, *ops), rng)
        _set_attr(n, helper.make_attribute("axis", value(4 if n.op_type == "Concat" else 4)))

    return fn


MUTATIONS += [
    Mutation("axis range", "concat_axis_4", _axis_to(lambda r: r, ("Concat",))),
    Mutation("axis range", "concat_axis_minus_5", _axis_to(lambda r: -r - 1, ("Concat",))),
    Mutation("axis range", "flatten_axis_5", _axis_to(lambda r: r + 1, ("Flatten",))),
    Mutation("axis range", "flatten_axis_minus_5", _axis_to(lambda r: -r - 1, ("Flatten",))),
]


@mutation("axis range", expect="same")
def flatten_axis_negative_equivalent(m: onnx.ModelProto, rng: Rng) -> None:
    """axis=1 -> axis=-3 on a rank-4 input: the same flatten."""
    n = _pick(
        [n for n in _nodes(m, "Flatten") if _attr(n, "axis") and _attr(n, "axis").i == 1], rng
    )
    prod = _producer_index(m)
    src = m.graph.node[prod[n.input[0]]] if n.input[0] in prod else None
    if src is None or src.op_type not in ("MaxPool", "GlobalAveragePool"):
        raise NotApplicable  # rank-4 input
    _set_attr(n, helper.make_attribute("axis", -3))


def _window_attr(
    key: str, value: Callable[[onnx.NodeProto], list[int] | int], ops: tuple[str, ...]
) -> Apply:
    def fn(m: onnx.ModelProto, rng: Rng) -> None:
        n = _window(m, rng, ops)
        _set_attr(n, helper.make_attribute(key, value(n)))

    return fn


def _k(n: onnx.NodeProto) -> list[int]:
    a = _attr(n, "kernel_shape")
    return list(a.ints) if a is not None else [3, 3]


MUTATIONS += [
    Mutation(
        "window values",
        "strides_zero",
        _window_attr("strides", lambda n: [0, 1], ("Conv", "MaxPool")),
    ),
    Mutation(
        "window values", "strides_negative", _window_attr("strides", lambda n: [-1, -1], ("Conv",))
    ),
    Mutation(
        "window values", "strides_3_values", _window_attr("strides", lambda n: [1, 1, 1], ("Conv",))
    ),
    Mutation(
        "window values", "dilations_zero", _window_attr("dilations", lambda n: [0, 0], ("Conv",))
    ),
    Mutation(
        "window values",
        "kernel_shape_zero",
        _window_attr("kernel_shape", lambda n: [0, 2], ("MaxPool",)),
    ),
    Mutation(
        "window values",
        "kernel_shape_vs_weight",
        _window_attr("kernel_shape", lambda n: [k + 2 for k in _k(n)], ("Conv",)),
    ),
    Mutation("window values", "group_zero", _window_attr("group", lambda n: 0, ("Conv",))),
    Mutation("window values", "group_3", _window_attr("group", lambda n: 3, ("Conv",))),
    Mutation("window values", "pads_absurd", _window_attr("pads", lambda n: [1000] * 4, ("Conv",))),
    Mutation(
        "window values", "pads_negative", _window_attr("pads", lambda n: [-1, -1, 0, 0], ("Conv",))
    ),
    Mutation(
        "window values", "pads_3_values", _window_attr("pads", lambda n: [1, 1, 1], ("Conv",))
    ),
    Mutation(
        "window values",
        "pool_pads_eq_kernel",
        _window_attr("pads", lambda n: _k(n) * 2, ("MaxPool",)),
    ),
    Mutation(
        "window values", "pool_pads_absurd", _window_attr("pads", lambda n: [500] * 4, ("MaxPool",))
    ),
]


@mutation("window values", expect="same")
def auto_pad_same(m: onnx.ModelProto, rng: Rng) -> None:
    """Explicit symmetric 'same' pads of a stride-1 conv -> auto_pad=SAME_UPPER (equivalent)."""
    cands = []
    for n in _nodes(m, "Conv"):
        k, p, s = _attr(n, "kernel_shape"), _attr(n, "pads"), _attr(n, "strides")
        if (
            k
            and p
            and (s is None or list(s.ints) == [1, 1])
            and list(p.ints) == [(v - 1) // 2 for v in k.ints] * 2
            and all(v % 2 for v in k.ints)
        ):
            cands.append(n)
    n = _pick(cands, rng)
    kept = [a for a in n.attribute if a.name != "pads"]
    del n.attribute[:]
    n.attribute.extend(kept)
    n.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))


@mutation("window values", expect="same")
def kernel_shape_removed(m: onnx.ModelProto, rng: Rng) -> None:
    n = _window(m, rng)
    kept = [a for a in n.attribute if a.name != "kernel_shape"]
    del n.attribute[:]
    n.attribute.extend(kept)


# duplicate names
@mutation("duplicate names")
def dup_initializer(m: onnx.ModelProto, rng: Rng) -> None:
    t = _float_init(m, rng)
    other = TensorProto()
    other.CopyFrom(t)
    _set_values(other, numpy_helper.to_array(t) * 2 + 1)
    m.graph.initializer.append(other)


@mutation("duplicate names")
def dup_initializer_same_value(m: onnx.ModelProto, rng: Rng) -> None:
    m.graph.initializer.append(_float_init(m, rng))


@mutation("duplicate names")
def dup_node_output(m: onnx.ModelProto, rng: Rng) -> None:
    nodes = list(m.graph.node)
    if len(nodes) < 3:
        raise NotApplicable
    i = rng.randrange(1, len(nodes) - 1)
    nodes[i].output[0] = nodes[i - 1].output[0]


@mutation("duplicate names")
def node_output_is_graph_input(m: onnx.ModelProto, rng: Rng) -> None:
    _pick(list(m.graph.node), rng).output[0] = m.graph.input[0].name


@mutation("duplicate names")
def node_output_is_initializer(m: onnx.ModelProto, rng: Rng) -> None:
    _pick(list(m.graph.node), rng).output[0] = _float_init(m, rng).name


@mutation("duplicate names")
def dup_node_names(m: onnx.ModelProto, rng: Rng) -> None:
    nodes = list(m.graph.node)
    a, b = sorted(rng.sample(range(len(nodes)), 2))
    nodes[a].name = nodes[b].name = "twin"


@mutation("duplicate names")
def dup_graph_input(m: onnx.ModelProto, rng: Rng) -> None:
    m.graph.input.append(m.graph.input[0])


@mutation("duplicate names")
def dup_graph_output(m: onnx.ModelProto, rng: Rng) -> None:
    m.graph.output.append(m.graph.output[0])


@mutation("duplicate names", expect="same")
def unnamed_nodes(m: onnx.ModelProto, rng: Rng) -> None:
    for n in m.graph.node:
        n.name = ""


# graph structure
@mutation("graph structure")
def dangling_input(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick([n for n in m.graph.node if len(n.input)], rng)
    n.input[0] = "no_such_tensor"


@mutation("graph structure")
def missing_required_input(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Conv", "Gemm"), rng)
    del n.input[1:]


@mutation("graph structure")
def empty_required_input(m: onnx.ModelProto, rng: Rng) -> None:
    _pick(_nodes(m, "Conv", "Gemm"), rng).input[1] = ""


@mutation("graph structure")
def extra_input(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Relu", "Clip", "Flatten"), rng)
    n.input.append(n.input[0])


@mutation("graph structure")
def unknown_op(m: onnx.ModelProto, rng: Rng) -> None:
    _pick(list(m.graph.node), rng).op_type = "FooBar"


@mutation("graph structure")
def unknown_domain(m: onnx.ModelProto, rng: Rng) -> None:
    _pick(list(m.graph.node), rng).domain = "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))


@mutation("graph structure")
def misspelled_op(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(list(m.graph.node), rng)
    n.op_type = n.op_type.lower()


@mutation("graph structure")
def cycle(m: onnx.ModelProto, rng: Rng) -> None:
    nodes = list(m.graph.node)
    if len(nodes) < 3:
        raise NotApplicable
    i = rng.randrange(0, len(nodes) - 2)
    j = rng.randrange(i + 1, len(nodes) - 1)
    nodes[i].input[0] = nodes[j].output[0]


@mutation("graph structure")
def self_loop(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(list(m.graph.node), rng)
    n.input[0] = n.output[0]


@mutation("graph structure")
def empty_graph(m: onnx.ModelProto, rng: Rng) -> None:
    del m.graph.node[:]


@mutation("graph structure")
def no_outputs(m: onnx.ModelProto, rng: Rng) -> None:
    del m.graph.output[:]


@mutation("graph structure")
def output_undefined(m: onnx.ModelProto, rng: Rng) -> None:
    m.graph.output[0].name = "not_computed"


@mutation("graph structure")
def drop_node(m: onnx.ModelProto, rng: Rng) -> None:
    nodes = list(m.graph.node)
    del m.graph.node[rng.randrange(0, len(nodes) - 1)]


@mutation("graph structure")
def constant_no_value(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Relu", "Clip"), rng)
    i = list(m.graph.node).index(n)
    _add_node_after(m, helper.make_node("Constant", [], ["k_const"], name="k_const"), i)
    m.graph.node[i + 2 if i + 2 < len(m.graph.node) else i + 1].input[0] = "k_const"


@mutation("graph structure")
def constant_untyped(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Relu", "Clip"), rng)
    i = list(m.graph.node).index(n)
    t = numpy_helper.from_array(np.ones(1, np.float32), "k")
    t.data_type = TensorProto.UNDEFINED
    const = helper.make_node("Constant", [], ["k_const"], name="k_const", value=t)
    _add_node_after(m, const, i)
    add = helper.make_node("Add", [n.output[0], "k_const"], ["k_sum"], name="k_add")
    _add_node_after(m, add, i + 1)
    for later in list(m.graph.node)[i + 3 :]:
        for k, x in enumerate(later.input):
            if x == n.output[0]:
                later.input[k] = "k_sum"


@mutation("graph structure")
def constant_two_values(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Relu", "Clip"), rng)
    i = list(m.graph.node).index(n)
    const = helper.make_node("Constant", [], ["k_const"], name="k_const", value_float=1.0)
    const.attribute.append(helper.make_attribute("value_int", 1))
    _add_node_after(m, const, i)
    add = helper.make_node("Add", [n.output[0], "k_const"], ["k_sum"], name="k_add")
    _add_node_after(m, add, i + 1)
    for later in list(m.graph.node)[i + 3 :]:
        for k, x in enumerate(later.input):
            if x == n.output[0]:
                later.input[k] = "k_sum"


@mutation("graph structure", expect="same")
def reversed_node_order(m: onnx.ModelProto, rng: Rng) -> None:
    nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(nodes)


@mutation("graph structure", expect="same")
def shuffled_node_order(m: onnx.ModelProto, rng: Rng) -> None:
    nodes = list(m.graph.node)
    rng.shuffle(nodes)
    del m.graph.node[:]
    m.graph.node.extend(nodes)


@mutation("graph structure", expect="same")
def dead_node(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(list(m.graph.node), rng)
    m.graph.node.append(helper.make_node("Relu", [n.output[0]], ["dead_relu"], name="dead_relu"))


@mutation("graph structure", expect="same")
def unused_initializer(m: onnx.ModelProto, rng: Rng) -> None:
    m.graph.initializer.append(
        numpy_helper.from_array(np.full(3, np.nan, np.float32), "unused_nan")
    )


# graph inputs
@mutation("graph inputs")
def neg_input_dim(m: onnx.ModelProto, rng: Rng) -> None:
    _input_dims(m)[-1].dim_value = -28


@mutation("graph inputs")
def zero_batch(m: onnx.ModelProto, rng: Rng) -> None:
    _input_dims(m)[0].dim_value = 0


@mutation("graph inputs")
def zero_spatial(m: onnx.ModelProto, rng: Rng) -> None:
    _input_dims(m)[2].dim_value = 0


@mutation("graph inputs")
def input_int8(m: onnx.ModelProto, rng: Rng) -> None:
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT8


@mutation("graph inputs")
def input_undefined_type(m: onnx.ModelProto, rng: Rng) -> None:
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.UNDEFINED


@mutation("graph inputs", expect="either")
def input_rank_3(m: onnx.ModelProto, rng: Rng) -> None:
    del m.graph.input[0].type.tensor_type.shape.dim[1]


@mutation("graph inputs")
def input_spatial_dynamic(m: onnx.ModelProto, rng: Rng) -> None:
    _input_dims(m)[2].dim_param = "H"


@mutation("graph inputs", expect="either")
def input_wrong_size(m: onnx.ModelProto, rng: Rng) -> None:
    d = _input_dims(m)[-1]
    d.dim_value = d.dim_value + 3


@mutation("graph inputs")
def input_missing(m: onnx.ModelProto, rng: Rng) -> None:
    del m.graph.input[0]


@mutation("graph inputs", expect="same")
def initializer_as_input(m: onnx.ModelProto, rng: Rng) -> None:
    t = _float_init(m, rng)
    m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


# model level
@mutation("model level")
def ir_version_99(m: onnx.ModelProto, rng: Rng) -> None:
    m.ir_version = 99


@mutation("model level")
def opset_99(m: onnx.ModelProto, rng: Rng) -> None:
    m.opset_import[0].version = 99


@mutation("model level")
def opset_import_removed(m: onnx.ModelProto, rng: Rng) -> None:
    del m.opset_import[:]


@mutation("model level")
def ir_version_0(m: onnx.ModelProto, rng: Rng) -> None:
    m.ir_version = 0


@mutation("model level", expect="same")
def opset_17(m: onnx.ModelProto, rng: Rng) -> None:
    m.opset_import[0].version = 17


@mutation("model level", expect="either")
def opset_7(m: onnx.ModelProto, rng: Rng) -> None:
    m.opset_import[0].version = 7


@mutation("model level", expect="same")
def metadata_junk(m: onnx.ModelProto, rng: Rng) -> None:
    m.doc_string = "\x00junk\n" * 3
    m.graph.doc_string = "multi\nline"
    helper.set_model_props(m, {"author": "\n\n", "": "empty key"})


# output types
def _out_type(kind: int) -> Apply:
    def fn(m: onnx.ModelProto, rng: Rng) -> None:
        m.graph.output[0].type.tensor_type.elem_type = kind

    return fn


MUTATIONS += [
    Mutation("output type", "output_int8", _out_type(TensorProto.INT8)),
    Mutation("output type", "output_int64", _out_type(TensorProto.INT64)),
    Mutation("output type", "output_double", _out_type(TensorProto.DOUBLE)),
    Mutation("output type", "output_bool", _out_type(TensorProto.BOOL)),
]


@mutation("output type", expect="same")
def output_shape_wrong(m: onnx.ModelProto, rng: Rng) -> None:
    """A declared output dim that disagrees: onnxruntime merges it leniently (a warning)."""
    m.graph.output[0].type.tensor_type.shape.dim[-1].dim_value = 11


@mutation("output type", expect="same")
def output_untyped_shape(m: onnx.ModelProto, rng: Rng) -> None:
    m.graph.output[0].type.tensor_type.ClearField("shape")


# non-finite weights
def _poison(value: float, where: str) -> Apply:
    def fn(m: onnx.ModelProto, rng: Rng) -> None:
        t = _weight(m, rng, k=2) if where == "bias" else _weight(m, rng)
        arr = numpy_helper.to_array(t).copy()
        arr.reshape(-1)[rng.randrange(arr.size)] = value
        _set_values(t, arr)

    return fn


def _bn_set(k: int, value: Callable[[np.ndarray], np.ndarray]) -> Apply:
    def fn(m: onnx.ModelProto, rng: Rng) -> None:
        t = _bn(m, rng, k)
        _set_values(t, value(numpy_helper.to_array(t).copy()))

    return fn


def _neg_var(a: np.ndarray) -> np.ndarray:
    a[0] = -abs(a[0]) - 0.5
    return a


def _nan_first(a: np.ndarray) -> np.ndarray:
    a[0] = np.nan
    return a


def _inf_first(a: np.ndarray) -> np.ndarray:
    a[0] = np.inf
    return a


for _allow in (False, True):
    _sfx = "_allowed" if _allow else ""
    _exp = "same" if _allow else "error"
    MUTATIONS += [
        Mutation(
            "non-finite weights", f"nan_weight{_sfx}", _poison(np.nan, "weight"), _exp, _allow
        ),
        Mutation("non-finite weights", f"inf_bias{_sfx}", _poison(np.inf, "bias"), _exp, _allow),
        Mutation(
            "non-finite weights", f"neg_inf_weight{_sfx}", _poison(-np.inf, "weight"), _exp, _allow
        ),
        Mutation("non-finite weights", f"bn_nan_scale{_sfx}", _bn_set(1, _nan_first), _exp, _allow),
        Mutation(
            "non-finite weights", f"bn_neg_variance{_sfx}", _bn_set(4, _neg_var), _exp, _allow
        ),
        Mutation("non-finite weights", f"bn_inf_mean{_sfx}", _bn_set(3, _inf_first), _exp, _allow),
    ]


@mutation("non-finite weights", expect="same")
def bn_zero_variance(m: onnx.ModelProto, rng: Rng) -> None:
    """var = 0 is fine: epsilon keeps sqrt(var + eps) positive (1e-3 here: with the default 1e-5
    the channel is amplified 316x, and with it float32 rounding differences between engines)."""
    t = _bn(m, rng, 4)
    a = numpy_helper.to_array(t).copy()
    a[:2] = 0
    _set_values(t, a)
    bn = next(n for n in _nodes(m, "BatchNormalization") if n.input[4] == t.name)
    _set_attr(bn, helper.make_attribute("epsilon", 1e-3))


# valid re-encodings
@mutation("valid rewrite", expect="same")
def typed_float_data(m: onnx.ModelProto, rng: Rng) -> None:
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            _to_typed(t)


@mutation("valid rewrite", expect="same")
def gemm_untransposed(m: onnx.ModelProto, rng: Rng) -> None:
    """transB=1 with W -> transB=0 with W.T (the same product)."""
    n = _pick(
        [n for n in _nodes(m, "Gemm") if _attr(n, "transB") and _attr(n, "transB").i == 1], rng
    )
    t = _inits(m)[n.input[1]]
    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(t).T), t.name))
    _set_attr(n, helper.make_attribute("transB", 0))


@mutation("valid rewrite", expect="either")
def clip_min_above_max(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Clip"), rng)
    inits = _inits(m)
    if len(n.input) < 3 or n.input[1] not in inits or n.input[2] not in inits:
        raise NotApplicable
    lo, hi = f"{n.name}_lo7", f"{n.name}_hi6"
    m.graph.initializer.extend(
        [numpy_helper.from_array(np.float32(7.0), lo), numpy_helper.from_array(np.float32(6.0), hi)]
    )
    n.input[1], n.input[2] = lo, hi


# other valid forms of the ops these models use: the interpreter must agree with onnxruntime
def _insert_after(
    m: onnx.ModelProto, tensor: str, make: Callable[[str, str], list[onnx.NodeProto]]
) -> None:
    """Route every reader of `tensor` through the nodes make(tensor, new_name) returns."""
    new = f"{tensor}__v"
    nodes = make(tensor, new)
    prod = _producer_index(m)
    at = prod.get(tensor, -1)
    readers = [n for n in m.graph.node if tensor in n.input]
    for n in readers:
        for k, x in enumerate(n.input):
            if x == tensor:
                n.input[k] = new
    for o in m.graph.output:
        if o.name == tensor:
            raise NotApplicable
    for k, n in enumerate(nodes):
        _add_node_after(m, n, at + k)


def _activation(m: onnx.ModelProto, rng: Rng) -> str:
    """A random intermediate tensor produced by a Conv / Relu / Clip / BN / Add (rank 4)."""
    return _pick([n.output[0] for n in _nodes(m, "Conv", "Relu", "Clip", "BatchNormalization", "Add", "MaxPool")
                  if n.op_type != "Relu" or _rank4(m, n)], rng)  # fmt: skip


def _rank4(m: onnx.ModelProto, n: onnx.NodeProto) -> bool:
    prod = _producer_index(m)
    src = m.graph.node[prod[n.input[0]]] if n.input[0] in prod else None
    return src is not None and src.op_type in ("Conv", "MaxPool", "BatchNormalization", "Add")


@mutation("op variants", expect="either")
def conv_strides_2(m: onnx.ModelProto, rng: Rng) -> None:
    _set_attr(_window(m, rng), helper.make_attribute("strides", [2, 2]))


@mutation("op variants", expect="either")
def conv_dilations_2(m: onnx.ModelProto, rng: Rng) -> None:
    _set_attr(_window(m, rng), helper.make_attribute("dilations", [2, 2]))


@mutation("op variants", expect="either")
def conv_auto_pad_valid(m: onnx.ModelProto, rng: Rng) -> None:
    n = _window(m, rng)
    kept = [a for a in n.attribute if a.name != "pads"]
    del n.attribute[:]
    n.attribute.extend([*kept, helper.make_attribute("auto_pad", "VALID")])


@mutation("op variants", expect="either")
def conv_auto_pad_same_lower_strided(m: onnx.ModelProto, rng: Rng) -> None:
    n = _window(m, rng)
    kept = [a for a in n.attribute if a.name not in ("pads", "strides")]
    del n.attribute[:]
    n.attribute.extend([*kept, helper.make_attribute("auto_pad", "SAME_LOWER"),
                        helper.make_attribute("strides", [2, 2])])  # fmt: skip


@mutation("op variants", expect="either")
def conv_asymmetric_pads(m: onnx.ModelProto, rng: Rng) -> None:
    n = _window(m, rng)
    p = _attr(n, "pads")
    base = list(p.ints) if p is not None else [0, 0, 0, 0]
    _set_attr(n, helper.make_attribute("pads", [base[0] + 1, base[1], base[2], base[3] + 1]))


@mutation("op variants", expect="either")
def conv_grouped(m: onnx.ModelProto, rng: Rng) -> None:
    """group=1 -> 2 with the weight's input channels halved (a valid grouped conv)."""
    inits = _inits(m)
    cands = [n for n in _nodes(m, "Conv") if (_attr(n, "group") is None or _attr(n, "group").i == 1)
             and n.input[1] in inits and inits[n.input[1]].dims[0] % 2 == 0 and inits[n.input[1]].dims[1] % 2 == 0]  # fmt: skip
    n = _pick(cands, rng)
    t = inits[n.input[1]]
    w = numpy_helper.to_array(t)
    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w[:, : w.shape[1] // 2]), t.name))
    _set_attr(n, helper.make_attribute("group", 2))


@mutation("op variants", expect="either")
def maxpool_ceil_mode(m: onnx.ModelProto, rng: Rng) -> None:
    n = _window(m, rng, ("MaxPool",))
    _set_attr(n, helper.make_attribute("ceil_mode", 1))
    _set_attr(n, helper.make_attribute("strides", [3, 3]))


@mutation("op variants", expect="either")
def maxpool_dilated_padded(m: onnx.ModelProto, rng: Rng) -> None:
    n = _window(m, rng, ("MaxPool",))
    _set_attr(n, helper.make_attribute("dilations", [2, 2]))
    _set_attr(n, helper.make_attribute("pads", [1, 0, 1, 0]))


@mutation("op variants", expect="either")
def maxpool_to_avgpool(m: onnx.ModelProto, rng: Rng) -> None:
    n = _window(m, rng, ("MaxPool",))
    n.op_type = "AveragePool"
    _set_attr(n, helper.make_attribute("pads", [1, 1, 1, 1]))
    _set_attr(n, helper.make_attribute("count_include_pad", rng.randrange(2)))


@mutation("op variants", expect="either")
def gemm_alpha_beta(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Gemm"), rng)
    _set_attr(n, helper.make_attribute("alpha", 0.5))
    _set_attr(n, helper.make_attribute("beta", -2.0))


@mutation("op variants", expect="either")
def gemm_no_bias(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick([n for n in _nodes(m, "Gemm") if len(n.input) == 3], rng)
    del n.input[2]


@mutation("op variants", expect="either")
def gemm_to_matmul_add(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(
        [
            n
            for n in _nodes(m, "Gemm")
            if len(n.input) == 3 and _attr(n, "transB") and _attr(n, "transB").i == 1
        ],
        rng,
    )
    t = _inits(m)[n.input[1]]
    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(t).T), t.name))
    i = list(m.graph.node).index(n)
    a, w, b, y = n.input[0], n.input[1], n.input[2], n.output[0]
    mm = helper.make_node("MatMul", [a, w], [f"{y}__mm"], name=f"{n.name or 'gemm'}_mm")
    add = helper.make_node("Add", [f"{y}__mm", b], [y], name=f"{n.name or 'gemm'}_add")
    del m.graph.node[i]
    _add_node_after(m, mm, i - 1)
    _add_node_after(m, add, i)


@mutation("op variants", expect="either")
def flatten_axis_0(m: onnx.ModelProto, rng: Rng) -> None:
    _set_attr(_pick(_nodes(m, "Flatten"), rng), helper.make_attribute("axis", 0))


@mutation("op variants", expect="either")
def flatten_to_reshape(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Flatten"), rng)
    shape = f"{n.output[0]}__shape"
    m.graph.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), shape))
    n.op_type = "Reshape"
    del n.attribute[:]
    n.input.append(shape)


@mutation("op variants", expect="either")
def concat_axis_variants(m: onnx.ModelProto, rng: Rng) -> None:
    _set_attr(
        _pick(_nodes(m, "Concat"), rng),
        helper.make_attribute("axis", rng.choice([0, -3, 2, 3, -1])),
    )


@mutation("op variants", expect="either")
def bn_epsilon(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "BatchNormalization"), rng)
    _set_attr(n, helper.make_attribute("epsilon", rng.choice([0.0, 1.0, 1e-12])))


@mutation("op variants", expect="either")
def clip_bounds(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Clip"), rng)
    choice = rng.randrange(3)
    if choice == 0:
        del n.input[2:]  # min only
    elif choice == 1:
        n.input[1] = ""  # max only
    else:
        del n.input[1:]  # no bounds


@mutation("op variants", expect="either")
def activation_swap(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Relu", "Clip"), rng)
    op = rng.choice(
        ["LeakyRelu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Relu", "Exp", "Neg"]
    )
    del n.input[1:]
    del n.attribute[:]
    n.op_type = op
    if op == "LeakyRelu":
        n.attribute.append(helper.make_attribute("alpha", 0.2))


@mutation("op variants", expect="either")
def add_swapped(m: onnx.ModelProto, rng: Rng) -> None:
    n = _pick(_nodes(m, "Add"), rng)
    n.input[0], n.input[1] = n.input[1], n.input[0]


@mutation("op variants", expect="either")
def gap_to_global_max(m: onnx.ModelProto, rng: Rng) -> None:
    _pick(_nodes(m, "GlobalAveragePool"), rng).op_type = "GlobalMaxPool"


@mutation("op variants", expect="either")
def insert_transpose_pair(m: onnx.ModelProto, rng: Rng) -> None:
    def make(x: str, y: str) -> list[onnx.NodeProto]:
        return [helper.make_node("Transpose", [x], [f"{y}_t"], perm=[0, 2, 3, 1], name=f"{y}_t"),
                helper.make_node("Transpose", [f"{y}_t"], [y], perm=[0, 3, 1, 2], name=f"{y}_tt")]  # fmt: skip

    _insert_after(m, _activation(m, rng), make)


@mutation("op variants", expect="either")
def insert_pad(m: onnx.ModelProto, rng: Rng) -> None:
    mode = rng.choice(["constant", "reflect", "edge"])
    pads = f"pads_{mode}"
    m.graph.initializer.append(
        numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64), pads)
    )

    def make(x: str, y: str) -> list[onnx.NodeProto]:
        return [helper.make_node("Pad", [x, pads], [f"{y}_p"], mode=mode, name=f"{y}_pad"),
                helper.make_node("Slice", [f"{y}_p", "sl_s", "sl_e", "sl_a"], [y], name=f"{y}_slice")]  # fmt: skip

    m.graph.initializer.extend([numpy_helper.from_array(np.array([1, 0], np.int64), "sl_s"),
                                numpy_helper.from_array(np.array([2**62, -1], np.int64), "sl_e"),
                                numpy_helper.from_array(np.array([2, 3], np.int64), "sl_a")])  # fmt: skip
    _insert_after(m, _activation(m, rng), make)


@mutation("op variants", expect="either")
def insert_arithmetic(m: onnx.ModelProto, rng: Rng) -> None:
    op = rng.choice(["Mul", "Sub", "Div", "Add", "Pow"])
    val = np.float32(rng.choice([0.5, 2.0, 3.0]))

    def make(x: str, y: str) -> list[onnx.NodeProto]:
        return [helper.make_node(op, [x, f"{y}_k"], [y], name=f"{y}_{op.lower()}")]

    t = _activation(m, rng)
    m.graph.initializer.append(numpy_helper.from_array(val, f"{t}__v_k"))
    _insert_after(m, t, make)


@mutation("op variants", expect="either")
def insert_softmax(m: onnx.ModelProto, rng: Rng) -> None:
    y = m.graph.output[0].name
    prod = _producer_index(m)
    n = m.graph.node[prod[y]]
    n.output[0] = f"{y}__pre"
    axis = rng.choice([-1, 1, 0])
    m.graph.node.append(
        helper.make_node("Softmax", [f"{y}__pre"], [y], axis=axis, name="softmax_out")
    )


@mutation("op variants", expect="either")
def insert_identity_dropout(m: onnx.ModelProto, rng: Rng) -> None:
    def make(x: str, y: str) -> list[onnx.NodeProto]:
        return [helper.make_node("Identity", [x], [f"{y}_i"], name=f"{y}_id"),
                helper.make_node("Dropout", [f"{y}_i"], [y], name=f"{y}_drop")]  # fmt: skip

    _insert_after(m, _activation(m, rng), make)


@mutation("op variants", expect="either")
def insert_reduce_unsqueeze(m: onnx.ModelProto, rng: Rng) -> None:
    """x -> ReduceMean(axes=[2, 3], keepdims=0) -> Unsqueeze([2, 3]) -> Mul(x, .) (a broadcast)."""
    t = _activation(m, rng)
    axes = "ax23"
    m.graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), axes))

    def make(x: str, y: str) -> list[onnx.NodeProto]:
        return [helper.make_node("ReduceMean", [x], [f"{y}_m"], axes=[-2, -1], keepdims=0, name=f"{y}_mean"),
                helper.make_node("Unsqueeze", [f"{y}_m", axes], [f"{y}_u"], name=f"{y}_unsq"),
                helper.make_node("Mul", [x, f"{y}_u"], [y], name=f"{y}_mul")]  # fmt: skip

    _insert_after(m, t, make)


@mutation("op variants", expect="either")
def opset_11(m: onnx.ModelProto, rng: Rng) -> None:
    m.opset_import[0].version = 11


@mutation("op variants", expect="either")
def opset_9(m: onnx.ModelProto, rng: Rng) -> None:
    m.opset_import[0].version = 9


MUTATION_BY_NAME = {mu.name: mu for mu in MUTATIONS}


# --- running a case ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """ "error" (a clear one), "same", "wrong" or "internal", and why."""

    kind: str
    detail: str = ""
    message: str = ""


def _mutate(model_name: str, names: tuple[str, ...], seed: int) -> onnx.ModelProto:
    m = _load(model_name)
    for k, name in enumerate(names):
        rng = random.Random(f"{model_name}:{name}:{seed}:{k}")
        try:
            MUTATION_BY_NAME[name].apply(m, rng)
        except NotApplicable:
            raise
        except (
            Exception
        ) as e:  # an earlier mutation broke what this one reads: skip the combination
            if k == 0:
                raise
            raise NotApplicable from e
    return m


def _write(m: onnx.ModelProto, d: Path, mutations: list[Mutation], rng: Rng) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / "model.onnx"
    damage = next((mu.external for mu in mutations if mu.external is not None), None)
    if damage is None:
        path.write_bytes(m.SerializeToString())
    else:
        try:
            onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location="weights.bin", size_threshold=0)  # fmt: skip
            damage(path, rng)
        except (OSError, StopIteration, ValueError) as e:  # another mutation left no weights file
            raise NotApplicable from e
    return path


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _names_in(m: onnx.ModelProto, path: Path) -> set[str]:
    g = m.graph
    names = {str(path), path.name, *(v.name for v in (*g.input, *g.output))}
    names |= {t.name for t in g.initializer}
    for n in g.node:
        names |= {n.name, n.op_type, *n.input, *n.output, *(a.name for a in n.attribute)}
    return {x for x in names if x}


def _concrete(msg: str, names: set[str]) -> bool:
    """The message quotes a name from the model (or an importer-given node name, or the file)."""
    for q in re.findall(r"'([^']+)'", msg):
        if q in names or re.fullmatch(r"[A-Za-z]+_\d+|#\d+", q) or any(q == n for n in names):
            return True
    return False


def _ort_outputs(
    path: Path, feeds: dict[str, np.ndarray], optimized: bool = False
) -> list[np.ndarray] | str:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # unfused kernels: onnxruntime's fusions (Conv+Clip -> FusedConv) drop NaN, the plain ops keep it
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        try:
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            if "external tensors" not in str(e):
                raise
            # onnxruntime's shape inference cannot read small int tensors (axes) kept externally:
            # give it the model with its weights inline
            data = onnx.load(str(path)).SerializeToString()
            sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)
    except Exception as e:  # onnxruntime refuses the model
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def _noise(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference where both are finite: how far onnxruntime's optimized and plain
    kernels disagree (float32 rounding order) on this model."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[both] - b[both]).max()) if a.shape == b.shape and both.any() else 0.0


def _compare(got: np.ndarray, want: np.ndarray, slack: float = 0.0) -> str | None:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"shape {list(got.shape)} vs onnxruntime {list(want.shape)}"
    if want.dtype.kind != "f":
        return None if np.array_equal(got, want) else "values differ"
    g, w = got.astype(np.float64), want.astype(np.float64)
    if not np.array_equal(np.isnan(g), np.isnan(w)):
        return f"NaN in {int(np.isnan(g).sum())} places vs onnxruntime {int(np.isnan(w).sum())}"
    inf = np.isinf(w)
    if not np.array_equal(np.isinf(g), inf) or not np.array_equal(g[inf], w[inf]):
        return "infinities differ"
    fin = np.isfinite(w)
    if not fin.any():
        return None
    scale = max(float(np.abs(w[fin]).max()), 1e-6)
    err = float(np.abs(g[fin] - w[fin]).max())
    ok = err <= 1e-4 * scale + slack
    return None if ok else f"max abs error {err:.3g} > 1e-4 x {scale:.3g} + {slack:.3g}"


def run_case(model_name: str, names: tuple[str, ...], seed: int, tmp: Path) -> Outcome:
    """Mutate, write, import; classify the result (see the module docstring)."""
    mutations = [MUTATION_BY_NAME[n] for n in names]
    m = _mutate(model_name, names, seed)
    path = _write(m, tmp, mutations, random.Random(f"{model_name}:{names}:{seed}:files"))
    before = _snapshot(tmp)
    allow = any(mu.allow_nonfinite for mu in mutations)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graph = import_model(path, allow_nonfinite=allow)
    except MCoptError as e:
        msg = str(e)
        if _snapshot(tmp) != before:
            return Outcome("internal", "the input or its folder changed", msg)
        if type(e) is MCoptError:
            return Outcome("internal", f"bare MCoptError: {msg}", msg)
        if "\n" in msg or not msg.strip():
            return Outcome("internal", f"not one line: {msg!r}", msg)
        if not _concrete(msg, _names_in(m, path)):
            return Outcome("internal", f"names nothing concrete: {msg}", msg)
        return Outcome("error", f"{type(e).__name__}: {msg}", msg)
    except Exception as e:  # noqa: BLE001  (that is the point: no other exception may escape)
        return Outcome("internal", f"{type(e).__name__}: {e}")
    if _snapshot(tmp) != before:
        return Outcome("internal", "the input or its folder changed")
    try:
        verify(graph)  # what the importer builds is valid IR
    except Exception as e:  # noqa: BLE001
        return Outcome("internal", f"verify: {type(e).__name__}: {e}")
    nonfinite = [w for w in caught if issubclass(w.category, NonFiniteWarning)]
    if allow and len(names) == 1 and not nonfinite:
        return Outcome("wrong", "allow_nonfinite=True imported without a NonFiniteWarning")
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs}
    try:
        with np.errstate(all="ignore"):
            got = run(graph, feeds)
    except Exception as e:  # noqa: BLE001
        return Outcome("internal", f"interpreter: {type(e).__name__}: {e}")
    want = _ort_outputs(path, feeds)
    if isinstance(want, str):
        return Outcome("wrong", f"mcopt imports it, onnxruntime refuses it: {want}")
    if len(got) != len(want):
        return Outcome("wrong", f"{len(got)} outputs vs onnxruntime {len(want)}")
    fused: list[np.ndarray] | str | None = None
    for i, (g, w) in enumerate(zip(got, want)):
        why = _compare(g, w)
        if why is not None and why.startswith("max abs error"):
            # an ill-conditioned model (a mutated BN amplifying a padded border, ...): allow twice
            # the disagreement between onnxruntime's own optimized and plain kernels
            fused = _ort_outputs(path, feeds, optimized=True) if fused is None else fused
            if not isinstance(fused, str):
                why = _compare(g, w, slack=2 * _noise(fused[i], w))
        if why is not None:
            return Outcome("wrong", f"output {i}: {why}")
    return Outcome("same")


# --- the deterministic corpus ---------------------------------------------------------------------------
def _applies(model_name: str, mu: Mutation) -> bool:
    try:
        _mutate(model_name, (mu.name,), 0)
    except NotApplicable:
        return False
    return True


@functools.cache
def cases() -> tuple[tuple[str, str], ...]:
    """(model, mutation) for every mutation that applies to the model."""
    return tuple((mn, mu.name) for mu in MUTATIONS for mn in MODELS if _applies(mn, mu))


CASE_IDS = [f"{mu}@{mn}" for mn, mu in cases()]


@functools.cache
def outcome(case_id: str, tmp_root: str) -> Outcome:
    mu, mn = case_id.split("@")
    return run_case(mn, (mu,), 0, Path(tmp_root) / case_id)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("corpus"))


def _check(case_id: str, res: Outcome, expect: str) -> None:
    assert res.kind in ("error", "same"), f"{case_id}: {res.kind}: {res.detail}"
    if expect != "either":
        assert res.kind == expect, f"{case_id}: expected {expect}, got {res.kind}: {res.detail}"


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_mutation(case_id: str, corpus_dir: str) -> None:
    res = outcome(case_id, corpus_dir)
    _check(case_id, res, MUTATION_BY_NAME[case_id.split("@")[0]].expect)


def table(results: dict[str, Outcome]) -> str:
    """The corpus results by mutation class as rows of the module docstring's table."""
    rows: dict[str, Counter[str]] = {}
    for cid, res in results.items():
        cls = MUTATION_BY_NAME[cid.split("@")[0]].cls
        rows.setdefault(cls, Counter())[res.kind] += 1
    total: Counter[str] = Counter()
    lines = []
    for cls, c in [*rows.items(), ("total", total)]:
        if cls != "total":
            total.update(c)
        n = sum(c.values())
        lines.append(
            f"{cls:<19} {n:>5} {c['error']:>12} {c['same']:>17} {c['wrong']:>5} {c['internal']:>15}"
        )
    return "\n".join(lines)


def test_corpus_summary(corpus_dir: str) -> None:
    """>= 100 cases over every class; 0 wrong, 0 internal errors; the table is printed."""
    results = {cid: outcome(cid, corpus_dir) for cid in CASE_IDS}
    text = table(results)
    print("\n" + text)
    assert len(results) >= 100
    bad = {cid: r.detail for cid, r in results.items() if r.kind not in ("error", "same")}
    assert not bad, f"{len(bad)} bad cases: {bad}\n{text}"
    kinds = Counter(r.kind for r in results.values())
    assert kinds["error"] >= 50 and kinds["same"] >= 20, kinds


# --- the CLI on a sample of failing cases --------------------------------------------------------------
CLI_SAMPLE = [cid for cid in CASE_IDS if MUTATION_BY_NAME[cid.split("@")[0]].expect == "error"][::6]


@pytest.mark.parametrize("case_id", CLI_SAMPLE)
def test_cli_sample(case_id: str, tmp_path: Path) -> None:
    from mcopt.cli import main

    mu_name, mn = case_id.split("@")
    mu = MUTATION_BY_NAME[mu_name]
    m = _mutate(mn, (mu_name,), 0)
    path = _write(m, tmp_path / "in", [mu], random.Random(f"{mn}:{(mu_name,)}:0:files"))
    before = _snapshot(tmp_path / "in")
    out = tmp_path / "out"
    err = io.StringIO()
    with redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["optimize", str(path), "--target", "none", "-o", str(out), "-q"])
    text = err.getvalue()
    assert rc == 1, f"{case_id}: exit {rc}: {text}"
    assert text.count("\n") == 1 and text.startswith("mcopt: error: "), repr(text)
    assert not out.exists(), f"{case_id}: {out} was created"
    assert _snapshot(tmp_path / "in") == before


# --- hypothesis: random mutations and targets ------------------------------------------------------------
@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, tuple[str, ...], int]:
    model_name = draw(st.sampled_from(MODELS))
    names = [mu for mn, mu in cases() if mn == model_name]
    picked = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
    if sum(MUTATION_BY_NAME[n].external is not None for n in picked) > 1:
        picked = picked[:1]
    return model_name, tuple(picked), draw(st.integers(0, 2**16))


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=_mutated())
def test_random_mutations(case: tuple[str, tuple[str, ...], int], tmp_path: Path) -> None:
    model_name, names, seed = case
    try:
        res = run_case(model_name, names, seed, tmp_path / f"{model_name}-{'+'.join(names)}-{seed}")
    except NotApplicable:  # a second mutation can remove the first one's target
        return
    expects = {MUTATION_BY_NAME[n].expect for n in names}
    _check(
        f"{'+'.join(names)}@{model_name}#{seed}",
        res,
        expects.pop() if expects == {"same"} else "either",
    )


if __name__ == "__main__":  # print the table for the module docstring
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        res = {cid: outcome(cid, d) for cid in CASE_IDS}
        print(table(res))
        for cid, r in res.items():
            if r.kind not in ("error", "same"):
                print(cid, r.kind, r.detail)
