"""The training loop behind the training passes: mini-batch SGD / Adam on a
:class:`~mcopt.train.module.GraphModule`, with

- losses: cross-entropy on labels (``ce``), knowledge distillation from a teacher (``kd``: Hinton,
  Vinyals & Dean 2015, ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``), both (``ce+kd``:
  ``alpha * kd + (1 - alpha) * ce``), or ``mse`` to the teacher's outputs (any output, e.g. regression);
  ``auto`` = ``ce+kd`` with labels and a teacher, ``ce`` with labels only, ``kd`` without labels;
- regularizers for pruning: ``l1 * sum |W|`` (sparse weights) and the seed's group lasso on the incoming
  and outgoing weights of every neuron / channel, ``group_lasso * sum_l (sum_o ||W_l[o, :]|| +
  sum_i ||W_l[:, i]||)`` (conv: a filter / an input channel is one group);
- early stopping on the held-out split (accuracy with labels, agreement with the teacher without),
  the best epoch's weights restored; a time limit; a per-epoch log line and a progress bar on a
  terminal; seeded (``torch.manual_seed`` and a numpy generator for the batch order).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from mcopt.errors import OptionError
from mcopt.train.data import TrainData
from mcopt.train.metrics import Metric, predict, top1
from mcopt.train.module import GraphModule

LossKind = Literal["auto", "ce", "kd", "ce+kd", "mse"]


@dataclass
class TrainConfig:
    epochs: int = 5
    lr: float = 1e-3
    batch: int = 64
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    loss: LossKind = "auto"
    temperature: float = 4.0
    alpha: float = 0.5
    patience: int = 3
    max_seconds: float = 0.0
    seed: int = 0
    l1: float = 0.0
    group_lasso: float = 0.0
    #: which layers the l1 / group-lasso penalties act on
    reg_ops: tuple[str, ...] = ("conv2d", "dense")
    cosine: bool = True
    #: load the weights of the best held-out epoch at the end (the start counts as epoch 0)
    restore_best: bool = True

    def check(self) -> None:
        for key in ("epochs", "batch"):
            if getattr(self, key) < 1:
                raise OptionError(f"training option {key!r} must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise OptionError(f"training option 'lr' must be positive, got {self.lr}")
        if not 0 <= self.alpha <= 1:
            raise OptionError(f"training option 'alpha' must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise OptionError(
                f"training option 'temperature' must be positive, got {self.temperature}"
            )
        for key in ("l1", "group_lasso", "weight_decay", "max_seconds"):
            if getattr(self, key) < 0:
                raise OptionError(f"training option {key!r} must be >= 0, got {getattr(self, key)}")


@dataclass
class FitResult:
    """What one training run did (kept in the pass report)."""

    epochs: int
    best_epoch: int
    seconds: float
    stopped: str
    loss: str
    before: Metric
    after: Metric
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.epochs} epoch(s) ({self.stopped}), {self.loss} loss, best epoch {self.best_epoch}: "
            f"held-out {self.after.name} {self.before.value:.4f} -> {self.after.value:.4f} "
            f"({self.after.samples} samples) in {self.seconds:.1f} s"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "seconds": round(self.seconds, 2),
            "stopped": self.stopped,
            "loss": self.loss,
            "metric": self.after.name,
            "before": self.before.value,
            "after": self.after.value,
            "val_samples": self.after.samples,
        }


def resolve_loss(kind: LossKind, labelled: bool, has_teacher: bool) -> str:
    if kind == "auto":
        if labelled:
            return "ce+kd" if has_teacher else "ce"
        kind = "kd"
    if kind in ("ce", "ce+kd") and not labelled:
        raise OptionError(
            f"loss={kind!r} needs labels (give data as (x, y)); without them use loss=kd"
        )
    if kind in ("kd", "ce+kd", "mse") and not has_teacher:
        raise OptionError(f"loss={kind!r} needs a teacher model")
    return kind


def logits_value(module: GraphModule) -> str | None:
    """The value to train on: the input of a final softmax (its logits), else None (the output)."""
    out = module.graph.outputs[0]
    p = out.producer
    if p is not None and p.op == "softmax" and p.inputs[0] is not None:
        return p.inputs[0].name
    return None


def forward_logits(module: GraphModule, xs: list[torch.Tensor], name: str | None) -> torch.Tensor:
    if name is None:
        y = module(*xs)
        return y[0] if isinstance(y, tuple) else y
    _, cap = module(*xs, capture=[name])
    return cap[name]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: T^2 * KL(p_t || p_s) of the temperature-softened distributions."""
    t = temperature
    logp = F.log_softmax(student / t, dim=1)
    q = F.softmax(teacher / t, dim=1)
    return F.kl_div(logp, q, reduction="batchmean") * (t * t)


def group_lasso_penalty(
    module: GraphModule, ops: tuple[str, ...] = ("conv2d", "dense")
) -> torch.Tensor:
    """sum over conv / dense weights of the row norms (incoming weights of each output neuron /
    filter) and column norms (outgoing weights of each input neuron / channel)."""
    total = torch.zeros((), dtype=module.dtype)
    for _, w in module.regularized_weights(ops):
        w2 = w.reshape(w.shape[0], w.shape[1], -1)
        total = total + torch.sqrt((w2**2).sum(dim=(1, 2)) + 1e-12).sum()
        total = total + torch.sqrt((w2**2).sum(dim=(0, 2)) + 1e-12).sum()
    return total


def l1_penalty(module: GraphModule, ops: tuple[str, ...] = ("conv2d", "dense")) -> torch.Tensor:
    total = torch.zeros((), dtype=module.dtype)
    for _, w in module.regularized_weights(ops):
        total = total + w.abs().sum()
    return total


ExtraLoss = Callable[[GraphModule, list[torch.Tensor]], torch.Tensor]
AfterStep = Callable[[GraphModule], None]


def fit(
    module: GraphModule,
    data: TrainData,
    cfg: TrainConfig,
    *,
    teacher: GraphModule | None = None,
    extra_loss: ExtraLoss | None = None,
    after_step: AfterStep | None = None,
    params: list[torch.nn.Parameter] | None = None,
    extra_params: list[dict[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    loss_fn: Callable[[GraphModule, list[torch.Tensor], Any], torch.Tensor] | None = None,
) -> FitResult:
    """Train `module` in place on `data` (see the module docstring); returns the held-out metric
    before and after. `extra_loss` adds a term (e.g. the tsReLU gate penalties), `after_step` runs
    after each optimizer step (e.g. clamping gates), `loss_fn` replaces the loss entirely (e.g. a
    FitNets hint stage)."""
    cfg.check()
    say = log or (lambda m: None)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 104729])
    kind = (
        "custom"
        if loss_fn is not None
        else resolve_loss(cfg.loss, data.labelled, teacher is not None)
    )
    lname = logits_value(module)
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    tname = logits_value(teacher) if teacher is not None else None
    vx = [torch.as_tensor(a) for a in data.val_x]
    teacher_val = None
    if teacher is not None and data.n_val:
        teacher_val = top1(predict(teacher, data.val_x))

    def metric() -> tuple[Metric, float]:
        """(held-out accuracy / agreement, held-out cross-entropy to the labels / teacher's
        predictions: the tie-break when the accuracy saturates)."""
        if not data.n_val:
            return Metric("accuracy" if data.labelled else "agreement", float("nan"), 0), 0.0
        logits = predict(module, data.val_x)
        pred = top1(logits)
        ref = data.val_y if data.val_y is not None else teacher_val
        assert ref is not None
        xent = _xent(logits, ref)
        name = "accuracy" if data.val_y is not None else "agreement"
        return Metric(name, float(np.mean(pred == ref)), data.n_val), xent

    del vx
    params = params if params is not None else [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise OptionError("the model has no trainable weights")
    groups: list[dict[str, Any]] = [{"params": params}, *(extra_params or [])]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs) if cfg.cosine else None
    )
    before, before_loss = metric()
    best = (before.value if not math.isnan(before.value) else -math.inf, 0)
    best_loss = before_loss
    best_state = copy.deepcopy(module.state_dict())
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    stopped = "epochs"
    since_best = 0
    bar = _Bar(progress, desc)
    epoch = 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            module.train()
            total, count = 0.0, 0
            bar.start(epoch, cfg.epochs, data.n_train)
            for xs_np, y_np in data.batches(cfg.batch, rng):
                xs = [torch.as_tensor(a) for a in xs_np]
                if loss_fn is not None:
                    loss = loss_fn(module, xs, y_np)
                else:
                    loss = _loss(module, xs, y_np, teacher, kind, cfg, lname, tname)
                if cfg.l1:
                    loss = loss + cfg.l1 * l1_penalty(module, cfg.reg_ops)
                if cfg.group_lasso:
                    loss = loss + cfg.group_lasso * group_lasso_penalty(module, cfg.reg_ops)
                if extra_loss is not None:
                    loss = loss + extra_loss(module, xs)
                if not torch.isfinite(loss):
                    raise OptionError(
                        f"the training loss became {loss.item()} in epoch {epoch}: lower lr "
                        f"(now {cfg.lr}) or the regularization"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    with torch.no_grad():
                        after_step(module)
                n = len(xs_np[0])
                total += float(loss.item()) * n
                count += n
                bar.advance(n)
                if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
                    stopped = "time limit"
                    break
            if sched is not None:
                sched.step()
            m, vloss = metric()
            row = {"epoch": float(epoch), "loss": total / max(count, 1), m.name: m.value}
            history.append(row)
            better = not math.isnan(m.value) and (
                m.value > best[0] or (m.value == best[0] and vloss < best_loss)
            )
            if better or (math.isnan(m.value) and epoch == cfg.epochs):
                best, best_loss = (m.value, epoch), vloss
                best_state = copy.deepcopy(module.state_dict())
                since_best = 0
            else:
                since_best += 1
            say(
                f"{desc} epoch {epoch}/{cfg.epochs}: loss {row['loss']:.4f}, held-out {m.name} "
                f"{m.value:.4f}{' (best)' if better else ''}"
            )
            if stopped == "time limit":
                break
            if cfg.patience and since_best >= cfg.patience:
                stopped = "early stop"
                break
    finally:
        bar.close()
    if cfg.restore_best:
        if best[1] == 0 and not math.isnan(before.value):
            stopped += ", no epoch beat the start: weights kept"
        module.load_state_dict(best_state)
    else:
        best = (best[0], epoch)
    after, _ = metric()
    return FitResult(
        epochs=epoch,
        best_epoch=best[1],
        seconds=time.perf_counter() - t0,
        stopped=stopped,
        loss=kind,
        before=before,
        after=after,
        history=history,
    )


def _xent(logits: np.ndarray, ref: np.ndarray) -> float:
    """Mean cross-entropy of (N, C, ...) logits against class indices."""
    if logits.ndim < 2:
        return 0.0
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    idx = np.expand_dims(ref.astype(np.int64), 1)
    return float(-np.take_along_axis(logp, idx, axis=1).mean())


def _loss(
    module: GraphModule,
    xs: list[torch.Tensor],
    y_np: np.ndarray | None,
    teacher: GraphModule | None,
    kind: str,
    cfg: TrainConfig,
    lname: str | None,
    tname: str | None,
) -> torch.Tensor:
    z = forward_logits(module, xs, lname)
    zt = None
    if teacher is not None and kind in ("kd", "ce+kd", "mse"):
        with torch.no_grad():
            zt = forward_logits(teacher, xs, tname)
    if kind == "mse":
        assert zt is not None
        return F.mse_loss(z, zt)
    ce = None
    if kind in ("ce", "ce+kd"):
        assert y_np is not None
        ce = F.cross_entropy(z, torch.as_tensor(y_np).long())
        if kind == "ce":
            return ce
    assert zt is not None
    kd = kd_loss(z, zt, cfg.temperature)
    if ce is None:
        return kd
    return cfg.alpha * kd + (1 - cfg.alpha) * ce


class _Bar:
    """A rich progress bar over the samples of an epoch, on a terminal only."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.desc = desc
        self.progress: Any = None
        self.task: Any = None

    def start(self, epoch: int, epochs: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            from rich.progress import Progress

            self.progress = Progress(transient=True)
            self.progress.start()
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"{self.desc} epoch {epoch}/{epochs}", total=total)

    def advance(self, n: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


__all__ = [
    "FitResult",
    "TrainConfig",
    "fit",
    "group_lasso_penalty",
    "kd_loss",
    "l1_penalty",
    "resolve_loss",
]
