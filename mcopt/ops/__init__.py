"""mcopt's op vocabulary. Importing this package registers every built-in op."""

from mcopt.ops.schema import (
    REQUIRED,
    TRAITS,
    OpSchema,
    all_ops,
    broadcast_shapes,
    get_schema,
    has_op,
    has_trait,
    ops_with,
    register_op,
    same_as_input,
)

__all__ = [
    "REQUIRED",
    "TRAITS",
    "OpSchema",
    "all_ops",
    "broadcast_shapes",
    "get_schema",
    "has_op",
    "has_trait",
    "ops_with",
    "register_op",
    "same_as_input",
]


def _load_op_tables() -> None:
    """Every module of this package is an op table (nn, elementwise, pool, tensor, winograd,
    quantized, ...); importing it registers its ops. New families just add a module here."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "schema":
            importlib.import_module(f"{__name__}.{info.name}")


_load_op_tables()
