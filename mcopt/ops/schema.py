"""One schema per op: attributes with defaults, a validity check that says why a node is invalid,
shape/dtype inference, a numpy reference implementation and a MAC count.

Ops are registered in small tables (see `mcopt/ops/*.py`); users may register their own with
:func:`register_op`. Conventions for every op: NCHW layout, attributes hold Python ints/floats/str
or tuples of them (lists are normalized to tuples), shapes are static.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcopt.errors import ShapeError, VerifyError
from mcopt.ir.types import TensorType


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: marks an attribute that has no default
REQUIRED: Any = _Required()

InTypes = Sequence["TensorType | None"]
Attrs = dict[str, Any]


@dataclass
class OpSchema:
    """Everything mcopt knows about one op.

    - ``inputs``: input names; a trailing ``?`` marks an optional input (may be None), a leading
      ``*`` a variadic one (concat, sum).
    - ``attrs``: name -> default (or REQUIRED).
    - ``infer(in_types, attrs) -> list[TensorType]``: output types.
    - ``reference(*arrays, **attrs) -> ndarray | tuple[ndarray, ...]``: the numpy oracle.
    - ``reference_types``: the reference also takes ``in_types=`` (the input types, encodings
      included; None for a missing optional input), for ops whose operands' types carry what their
      arrays do not, e.g. the scales of a quantized weight (``UniformQuant``). Call it through
      :meth:`run_reference`, which passes them.
    - ``check(in_types, attrs) -> str | None``: why this node is invalid (None when valid).
    - ``macs(in_types, out_types, attrs) -> int``: multiply-accumulates of one run.
    - ``elementwise``: output[i] depends only on inputs[i] (after broadcasting).
    - ``traits``: what passes and planners may assume about the op (see :data:`TRAITS`); query
      them with :func:`has_trait` / :func:`ops_with` instead of keeping op lists in each pass.
      ``elementwise=True`` adds the ``elementwise`` trait.
    """

    name: str
    inputs: tuple[str, ...]
    infer: Callable[[InTypes, Attrs], list[TensorType]]
    reference: Callable[..., Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    check: Callable[[InTypes, Attrs], str | None] | None = None
    macs: Callable[[InTypes, list[TensorType], Attrs], int] | None = None
    elementwise: bool = False
    doc: str = ""
    traits: frozenset[str] = frozenset()
    reference_types: bool = False

    def __post_init__(self) -> None:
        traits = set(self.traits) | ({"elementwise"} if self.elementwise else set())
        unknown = traits - set(TRAITS)
        if unknown:
            raise ValueError(
                f"op {self.name!r}: unknown trait(s) {sorted(unknown)}; known: {sorted(TRAITS)}"
            )
        self.traits = frozenset(traits)
        self.elementwise = "elementwise" in traits

    @property
    def variadic(self) -> bool:
        return any(n.startswith("*") for n in self.inputs)

    @property
    def min_inputs(self) -> int:
        return sum(1 for n in self.inputs if not n.endswith("?") and not n.startswith("*"))

    @property
    def max_inputs(self) -> int | None:
        return None if self.variadic else len(self.inputs)

    def normalize_attrs(self, attrs: dict[str, Any], node_name: str = "") -> dict[str, Any]:
        """Fill defaults, reject unknown attributes, turn lists into tuples."""
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise VerifyError(
                f"node {node_name!r} ({self.name}): unknown attribute(s) {unknown}; "
                f"{self.name} takes {sorted(self.attrs) or 'none'}"
            )
        out: dict[str, Any] = {}
        for key, default in self.attrs.items():
            val = attrs.get(key, default)
            if val is REQUIRED:
                raise VerifyError(
                    f"node {node_name!r} ({self.name}): attribute {key!r} is required"
                )
            out[key] = _freeze(val)
        return out

    def check_arity(self, n: int) -> str | None:
        if n < self.min_inputs:
            return f"needs at least {self.min_inputs} input(s) {self.inputs}, got {n}"
        if self.max_inputs is not None and n > self.max_inputs:
            return f"takes at most {self.max_inputs} input(s) {self.inputs}, got {n}"
        return None

    def infer_types(self, in_types: InTypes, attrs: Attrs, node_name: str = "") -> list[TensorType]:
        """Check the node and infer its output types; a bad node is a one-line ShapeError."""
        reason = self.check_arity(len(in_types))
        if reason is None:
            for i, (nm, t) in enumerate(zip(self.inputs, in_types)):
                if t is None and not nm.endswith("?"):
                    reason = f"input {i} ({nm.strip('*?')}) is missing"
                    break
        if reason is None and self.check is not None:
            reason = self.check(in_types, attrs)
        if reason is not None:
            raise ShapeError(f"node {node_name or '?'!r} ({self.name}): {reason}")
        try:
            return list(self.infer(in_types, attrs))
        except (ValueError, IndexError, TypeError) as e:
            raise ShapeError(
                f"node {node_name or '?'!r} ({self.name}): cannot infer shapes: {e}"
            ) from None

    def run_reference(
        self,
        arrays: Sequence[np.ndarray | None],
        attrs: Attrs,
        in_types: InTypes | None = None,
    ) -> list[np.ndarray]:
        """Run the reference on `arrays`; `in_types` (the inputs' types) is required by, and only
        passed to, references with ``reference_types``."""
        if self.reference_types:
            if in_types is None:
                raise TypeError(
                    f"op {self.name!r}: its reference needs the input types (in_types=)"
                )
            out = self.reference(*arrays, in_types=tuple(in_types), **attrs)
        else:
            out = self.reference(*arrays, **attrs)
        return list(out) if isinstance(out, tuple | list) else [out]

    def count_macs(self, in_types: InTypes, out_types: list[TensorType], attrs: Attrs) -> int:
        return 0 if self.macs is None else int(self.macs(in_types, out_types, attrs))


def _freeze(val: Any) -> Any:
    if isinstance(val, list | tuple):
        return tuple(_freeze(v) for v in val)
    if isinstance(val, np.integer):
        return int(val)
    if isinstance(val, np.floating):
        return float(val)
    return val


#: the trait vocabulary: name -> what an op with the trait guarantees
TRAITS: dict[str, str] = {
    "elementwise": "output[i] depends only on the inputs at i (after broadcasting)",
    "channelwise": "acts on each channel (axis 1) on its own: channel c of the output depends only "
    "on channel c of the first input (elementwise unary ops, prelu, pooling)",
    "zero_preserving": "an all-zero first input gives an all-zero output (a channel that is exactly "
    "zero stays zero: what dead-neuron removal relies on)",
    "finite_preserving": "finite inputs give finite outputs (safe on the zero-padded channels of a "
    "blocked layout)",
    "view": "moves no data: the output is the input with another shape",
    "pool": "a spatial pooling window over one channel",
    "commutative": "the two inputs may be swapped",
}


_REGISTRY: dict[str, OpSchema] = {}


def register_op(schema: OpSchema, *, replace: bool = False) -> OpSchema:
    """Add an op to the vocabulary. Re-registering a name is an error unless `replace`."""
    if schema.name in _REGISTRY and not replace:
        raise ValueError(f"op {schema.name!r} is already registered")
    _REGISTRY[schema.name] = schema
    return schema


def get_schema(op: str) -> OpSchema:
    try:
        return _REGISTRY[op]
    except KeyError:
        raise VerifyError(f"unknown op {op!r}; known ops: {', '.join(sorted(_REGISTRY))}") from None


def has_op(op: str) -> bool:
    return op in _REGISTRY


def all_ops() -> list[str]:
    return sorted(_REGISTRY)


def has_trait(op: str, trait: str) -> bool:
    """Whether the registered op `op` has `trait` (False for unknown ops)."""
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; known: {sorted(TRAITS)}")
    s = _REGISTRY.get(op)
    return s is not None and trait in s.traits


def ops_with(*traits: str) -> frozenset[str]:
    """The registered ops that have every one of `traits`."""
    for t in traits:
        if t not in TRAITS:
            raise ValueError(f"unknown trait {t!r}; known: {sorted(TRAITS)}")
    return frozenset(n for n, s in _REGISTRY.items() if all(t in s.traits for t in traits))


# --- helpers shared by op tables ------------------------------------------------------------------
def same_as_input(in_types: InTypes, attrs: Attrs) -> list[TensorType]:
    """Output type = first input's type (without its storage encoding)."""
    t = in_types[0]
    assert t is not None
    return [TensorType(t.shape, t.dtype)]


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting; raises ValueError naming the shapes when they do not broadcast."""
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise ValueError(f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None
