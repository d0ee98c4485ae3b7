"""mcopt's built-in passes (installed as ``mcopt.passes``). Importing this package registers them.

One module per pass family; each pass states its method, source and whether it is lossless:
cleanup (dce, constant-fold, fold-batch-norm, remove-identity, simplify-reshape), prune_weights
(prune-weights), prune_channels (prune-channels, remove-dead-neurons), prune_layers (prune-layers),
recovery (refit-lstsq), architecture (fc-to-gap, lowrank-dense), factorize (factorize-spatial,
-5x5, -flattened, -depthwise, -tucker), winograd (winograd F(2x2,3x3) / F(4x4,3x3)).
"""

from mcopt.passes import (  # noqa: F401
    architecture,
    cleanup,
    factorize,
    prune_channels,
    prune_layers,
    prune_weights,
    recovery,
    winograd,
)
from mcopt.passes.cleanup import DEFAULT_CLEANUP

__all__ = ["DEFAULT_CLEANUP"]
