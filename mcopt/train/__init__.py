"""The training backend: an mcopt graph as a ``torch.nn.Module`` and back, and the training loop the
``finetune`` / ``distill`` / ``prune-retrain`` / ``learn-architecture`` passes use.

Only this package imports torch, and only when used: ``import mcopt`` and every pass work without
it. Install it with ``pip install -e ".[train]"`` (the CPU wheel ``torch==2.13.0``).

    from mcopt.train import to_torch, from_torch
    module = to_torch(graph)          # parameters = the graph's weights, in their encodings
    ...                               # any loop: plain, DistributedDataParallel, Lightning
    from_torch(module, graph)         # trained weights back into the IR, encodings kept
"""

from __future__ import annotations

from typing import Any

from mcopt.train.data import TrainData, as_train_data

_LAZY = {
    "to_torch": ("mcopt.train.module", "to_torch"),
    "from_torch": ("mcopt.train.module", "from_torch"),
    "GraphModule": ("mcopt.train.module", "GraphModule"),
    "TRAIN_FORMS": ("mcopt.train.forms", "TRAIN_FORMS"),
    "WAIVED": ("mcopt.train.forms", "WAIVED"),
    "fit": ("mcopt.train.loop", "fit"),
    "TrainConfig": ("mcopt.train.loop", "TrainConfig"),
    "evaluate": ("mcopt.train.metrics", "evaluate"),
}


def require_torch() -> Any:
    """Import torch or fail with a one-line error saying how to install it."""
    try:
        import torch
    except ImportError:
        from mcopt.errors import OptionError

        raise OptionError(
            "training passes need PyTorch: pip install 'torch==2.13.0' (CPU wheel), "
            "or pip install -e '.[train]'"
        ) from None
    return torch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        require_torch()
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mcopt.train' has no attribute {name!r}")


__all__ = ["TrainData", "as_train_data", "require_torch", *_LAZY]
