"""mcopt's built-in passes (installed as ``mcopt.passes``). Importing this package registers them.

One module per pass family; each pass states its method, source and whether it is lossless.
"""

from mcopt.passes import cleanup  # noqa: F401  (dce, constant-fold, fold-batch-norm, ...)
from mcopt.passes import prune_channels  # noqa: F401  (prune-channels, remove-dead-neurons)
from mcopt.passes import prune_layers  # noqa: F401  (prune-layers)
from mcopt.passes import prune_weights  # noqa: F401  (prune-weights)
from mcopt.passes import recovery  # noqa: F401  (refit-lstsq)
from mcopt.passes.cleanup import DEFAULT_CLEANUP

__all__ = ["DEFAULT_CLEANUP"]
