"""mcopt's op vocabulary. Importing this package registers every built-in op."""

from mcopt.ops import elementwise as _elementwise  # noqa: E402,F401  (activations, add/mul/...)

# Op tables: importing them registers the ops.
from mcopt.ops import nn as _nn  # noqa: E402,F401  (conv2d, dense, pooling, batch_norm, ...)
from mcopt.ops import tensor as _tensor  # noqa: E402,F401  (reshape, concat, transpose, pad, ...)
from mcopt.ops.schema import (
    REQUIRED,
    OpSchema,
    all_ops,
    broadcast_shapes,
    get_schema,
    has_op,
    register_op,
    same_as_input,
)

__all__ = [
    "REQUIRED",
    "OpSchema",
    "all_ops",
    "broadcast_shapes",
    "get_schema",
    "has_op",
    "register_op",
    "same_as_input",
]
