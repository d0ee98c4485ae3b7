"""mcopt's op vocabulary. Importing this package registers every built-in op."""

# Op tables: importing them registers the ops.
from mcopt.ops import elementwise as _elementwise  # noqa: F401  (activations, add/mul/...)
from mcopt.ops import nn as _nn  # noqa: F401  (conv2d, dense, matmul, batch_norm, lrn, softmax)
from mcopt.ops import pool as _pool  # noqa: F401  (max/avg pooling, global pooling)
from mcopt.ops import tensor as _tensor  # noqa: F401  (reshape, concat, transpose, pad, ...)
from mcopt.ops import winograd as _winograd  # noqa: F401  (winograd_conv2d, F(2x2,3x3)/F(4x4,3x3))
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
