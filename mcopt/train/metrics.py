"""Held-out metrics: top-1 accuracy against labels, or top-1 agreement with a teacher when there are
none. Computed with the graph's training form in eval mode (batched; the interpreter is batch-1) —
the tests check that form against the interpreter op by op."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mcopt.ir.core import Graph
from mcopt.train.module import GraphModule, to_torch


@dataclass(frozen=True)
class Metric:
    """One held-out figure: ``name`` is 'accuracy' (labels) or 'agreement' (with the teacher)."""

    name: str
    value: float
    samples: int

    def __str__(self) -> str:
        return f"{self.name} {self.value:.4f} on {self.samples} held-out samples"


def predict(model: Graph | GraphModule, xs: Sequence[np.ndarray], batch: int = 256) -> np.ndarray:
    """The first output of `model` on the samples `xs` (float64 numpy, batched, no grad)."""
    module = model if isinstance(model, GraphModule) else to_torch(model)
    was = module.training
    module.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(xs[0]), batch):
            y = module(*[torch.as_tensor(a[i : i + batch]) for a in xs])
            y = y[0] if isinstance(y, tuple) else y
            outs.append(y.detach().double().numpy())
    module.train(was)
    return np.concatenate(outs) if outs else np.zeros((0,))


def top1(logits: np.ndarray) -> np.ndarray:
    """Class index per sample (axis 1 of a (N, C, ...) output)."""
    return logits.argmax(axis=1) if logits.ndim >= 2 else (logits > 0).astype(np.int64)


def evaluate(
    model: Graph | GraphModule,
    xs: Sequence[np.ndarray],
    y: np.ndarray | None = None,
    teacher_pred: np.ndarray | None = None,
) -> Metric:
    """Accuracy against `y`, else agreement with `teacher_pred` (class indices)."""
    n = len(xs[0]) if xs else 0
    if n == 0:
        return Metric("accuracy" if y is not None else "agreement", float("nan"), 0)
    pred = top1(predict(model, xs))
    if y is not None:
        ref = y if y.ndim == 1 else top1(y)
        return Metric("accuracy", float(np.mean(pred == ref)), n)
    if teacher_pred is None:
        raise ValueError("evaluate needs labels or the teacher's predictions")
    return Metric("agreement", float(np.mean(pred == teacher_pred)), n)


__all__ = ["Metric", "evaluate", "predict", "top1"]
