"""mcopt's built-in passes (installed as ``mcopt.passes``). Importing this package registers them.

One module per pass family (cleanup, prune_weights, prune_channels, prune_layers, recovery,
architecture, factorize, winograd, ...); each pass states its method, source and whether it is
lossless. Every module of this package is imported here, so a new family only adds a file.
"""

import importlib
import pkgutil

from mcopt.passes.cleanup import DEFAULT_CLEANUP

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["DEFAULT_CLEANUP"]
