"""mcopt's built-in passes (installed as ``mcopt.passes``). Importing this package registers them.

One module per pass family; each pass states its method, source and whether it is lossless:
cleanup (dce, constant-fold, fold-batch-norm, remove-identity, simplify-reshape), prune_weights
(prune-weights), prune_channels (prune-channels, remove-dead-neurons), prune_layers (prune-layers),
recovery (refit-lstsq).
"""

from mcopt.passes import cleanup, prune_channels, prune_layers, prune_weights, recovery  # noqa: F401
from mcopt.passes.cleanup import DEFAULT_CLEANUP

__all__ = ["DEFAULT_CLEANUP"]
