"""The held-out metric the pass manager reports after each lossy pass: top-1 accuracy on the
validation split's labels, or top-1 agreement with the teacher's predictions without labels.

Runs the graph's training form (batched) when PyTorch is installed, else the reference interpreter
(batch by the graph's static batch). No torch import at module level."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mcopt.ir.core import Graph


def _logits(graph: Graph, xs: Sequence[np.ndarray]) -> np.ndarray:
    try:
        import torch  # noqa: F401
    except ImportError:
        from mcopt import interpreter
        from mcopt.train.data import feeds_of

        return np.concatenate([interpreter.run(graph, f)[0] for f in feeds_of(xs, graph)])
    from mcopt.train.metrics import predict

    return predict(graph, xs)


def predictions(graph: Graph, xs: Sequence[np.ndarray]) -> np.ndarray:
    """Top-1 class per held-out sample (axis 1 of the first output)."""
    out = _logits(graph, xs)
    return out.argmax(axis=1) if out.ndim >= 2 else (out > 0).astype(np.int64)


def held_out_metric(
    graph: Graph, xs: Sequence[np.ndarray], y: np.ndarray | None, teacher_pred: np.ndarray | None
) -> tuple[str, float]:
    """('accuracy', value) against `y`, else ('agreement', value) with `teacher_pred`."""
    pred = predictions(graph, xs)
    n = min(len(pred), len(y) if y is not None else len(teacher_pred))  # type: ignore[arg-type]
    if y is not None:
        ref = y if y.ndim == 1 else y.argmax(axis=1)
        return "accuracy", float(np.mean(pred[:n] == ref[:n]))
    assert teacher_pred is not None
    return "agreement", float(np.mean(pred[:n] == teacher_pred[:n]))


__all__ = ["held_out_metric", "predictions"]
