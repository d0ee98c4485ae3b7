"""Training passes: recover (or keep) accuracy by training, on the data given to
``optimize(..., data=...)`` (``--data``), with the PyTorch backend of :mod:`mcopt.train`.

- ``finetune``: train the graph as it is, every weight in its own encoding (pruned weights stay zero,
  k-means centroids train with the summed gradients of the weights sharing them — Deep Compression's
  trained quantization —, int8 / fixed point / binary weights train through fake quantization and the
  straight-through estimator). Loss ``ce`` (labels), ``kd`` (Hinton, Vinyals & Dean 2015: the
  original model's temperature-softened outputs), ``ce+kd`` (``alpha * T^2 KL + (1 - alpha) CE``,
  the default with labels), ``mse``; optional ``l1`` / ``group_lasso`` regularization (the seed's
  "force incoming and outgoing connections to zero", then threshold with ``prune-weights`` and remove
  with ``remove-dead-neurons`` / ``prune-channels``); early stopping on the held-out split.
- ``distill``: knowledge distillation into the current graph (a compressed or rewritten student) or
  into a smaller ``student`` ONNX given by the user; with ``hint``/``guided`` value names, FitNets
  (Romero et al. 2015): first a hint stage trains the student up to its guided layer plus a regressor
  ``r`` to minimize ``1/2 ||u_h(x) - r(v_g(x))||^2`` against the teacher's hint layer, then the KD stage.
- ``prune-retrain``: iterative pruning (Han et al. 2015): the sparsity is raised in ``steps``
  (``s_k = 1 - (1 - s)^(k / steps)``, the same fraction of the survivors each step), each step
  magnitude-prunes (``prune-weights``) and retrains with the mask fixed.

Every pass needs training data (one-line error otherwise) and PyTorch (``pip install -e '.[train]'``).
All lossy (the held-out metric before / after is in the report).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from mcopt.errors import OptionError
from mcopt.ir.core import Graph
from mcopt.pass_manager import Pass, PassContext, get_pass, register_pass, register_pipeline


class _Training(Pass):
    """Options every training pass shares (see :class:`mcopt.train.TrainConfig`)."""

    trains = True

    epochs: int = 5
    lr: float = 1e-3
    batch: int = 64
    optimizer: Literal["adam", "sgd"] = "adam"
    loss: Literal["auto", "ce", "kd", "ce+kd", "mse"] = "auto"
    temperature: float = 4.0
    alpha: float = 0.5
    patience: int = 3
    max_seconds: float = 0.0
    weight_decay: float = 0.0
    l1: float = 0.0
    group_lasso: float = 0.0
    reg_ops: tuple[str, ...] = ("conv2d", "dense")
    teacher: str = ""
    #: batch norm: ``frozen`` running statistics (fine-tuning) or ``train`` (batch statistics,
    #: running ones updated: training from scratch)
    bn: Literal["frozen", "train"] = "frozen"

    def __post_init__(self) -> None:
        self.config().check()

    def config(self, **over: Any) -> Any:
        from mcopt.train.loop import TrainConfig

        keys = (
            "epochs", "lr", "batch", "optimizer", "loss", "temperature", "alpha", "patience",
            "max_seconds", "weight_decay", "l1", "group_lasso", "reg_ops",
        )  # fmt: skip
        return TrainConfig(**{**{k: getattr(self, k) for k in keys}, **over})

    def _data(self, ctx: PassContext) -> Any:
        if ctx.data is None:
            raise OptionError(
                f"pass {self.name!r} needs training data: mcopt.optimize(..., data=(x, y)) or "
                "`mcopt optimize ... --data train.npz` (x and optionally y)"
            )
        from mcopt.train import require_torch

        require_torch()
        return ctx.data

    def _teacher(self, ctx: PassContext, graph: Graph) -> Graph | None:
        if self.teacher:
            from mcopt.api import load

            return load(self.teacher, {v.name: list(v.shape) for v in graph.inputs})
        return ctx.teacher

    def train(self, graph: Graph, ctx: PassContext, *, desc: str | None = None, **kw: Any) -> Any:
        """Train `graph` in place (to_torch -> fit -> from_torch); returns the FitResult."""
        from mcopt.train.loop import fit, resolve_loss
        from mcopt.train.module import from_torch, to_torch

        data = self._data(ctx)
        cfg = kw.pop("cfg", None) or self.config(seed=ctx.seed)
        teacher_graph = self._teacher(ctx, graph)
        kind = resolve_loss(cfg.loss, data.labelled, teacher_graph is not None)
        teacher = to_torch(teacher_graph) if kind in ("kd", "ce+kd", "mse") else None
        module = to_torch(graph)
        module.bn_train = self.bn == "train"
        res = fit(module, data, cfg, teacher=teacher, log=ctx.info, desc=desc or self.name, **kw)
        from_torch(module, graph)
        ctx.info(f"{self.name}: {res.summary()}")
        ctx.detail("train", res.to_dict())
        return res


@register_pass
class Finetune(_Training):
    """Train the graph as it is on the training data, each weight in its own encoding (masks kept,
    centroids shared, int8 / fixed-point / binary via fake quantization + straight-through estimator);
    ``loss`` ce | kd | ce+kd (Hinton et al. 2015, teacher = the original model or ``teacher=PATH``) |
    mse; ``l1`` / ``group_lasso`` penalties for later pruning; early stopping on the held-out split
    (``patience`` epochs). Lossy (the point is to win back accuracy)."""

    name = "finetune"
    lossless = False

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        self.train(graph, ctx)
        return True


@register_pass
class Distill(_Training):
    """Knowledge distillation (Hinton et al. 2015) into the current graph or into a ``student``
    ONNX (replacing the graph; same inputs and outputs); FitNets hints (Romero et al. 2015) with
    ``hint`` (a teacher value name) and ``guided`` (a student value name): ``hint_epochs`` of
    ``1/2 ||u_h - r(v_g)||^2`` with a learned regressor r (1x1 conv, or a valid conv / linear map
    when the shapes differ), then the KD stage. Lossy."""

    name = "distill"
    lossless = False
    loss: Literal["auto", "ce", "kd", "ce+kd", "mse"] = "kd"
    student: str = ""
    hint: str = ""
    guided: str = ""
    hint_epochs: int = 2

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        data = self._data(ctx)
        if data.labelled is False and self.loss in ("ce", "ce+kd"):
            raise OptionError(f"distill: loss={self.loss!r} needs labels")
        teacher_graph = self._teacher(ctx, graph)
        if teacher_graph is None:
            raise OptionError("distill needs a teacher (the original model, or teacher=PATH)")
        if self.student:
            _replace_with_student(graph, self.student)
        if bool(self.hint) != bool(self.guided):
            raise OptionError(
                "distill: FitNets needs both hint= (teacher value) and guided= (student value)"
            )
        if self.hint:
            self._hint_stage(graph, ctx, teacher_graph)
        self.train(graph, ctx, desc="distill")
        return True

    def _hint_stage(self, graph: Graph, ctx: PassContext, teacher_graph: Graph) -> None:
        from mcopt.train.fitnets import hint_loss_fn
        from mcopt.train.loop import fit
        from mcopt.train.module import from_torch, to_torch

        data = self._data(ctx)
        module, teacher = to_torch(graph), to_torch(teacher_graph)
        loss_fn, regressor = hint_loss_fn(module, teacher, self.guided, self.hint)
        params = [p for p in module.parameters() if p.requires_grad] + list(regressor.parameters())
        cfg = self.config(seed=ctx.seed, epochs=self.hint_epochs, patience=0)
        res = fit(module, data, cfg, loss_fn=loss_fn, params=params, log=ctx.info, desc="hint")
        from_torch(module, graph)
        ctx.detail("hint_stage", {"epochs": res.epochs, "seconds": round(res.seconds, 2)})


def _replace_with_student(graph: Graph, path: str) -> None:
    """Make `graph` the student ONNX at `path` (same input and output shapes, names kept)."""
    from mcopt.api import load

    student = load(path, {v.name: list(v.shape) for v in graph.inputs})
    if [v.shape for v in student.inputs] != [v.shape for v in graph.inputs]:
        raise OptionError(
            f"distill: student {path!r} takes inputs {[list(v.shape) for v in student.inputs]}, "
            f"the model {[list(v.shape) for v in graph.inputs]}"
        )
    if [v.shape for v in student.outputs] != [v.shape for v in graph.outputs]:
        raise OptionError(
            f"distill: student {path!r} has outputs {[list(v.shape) for v in student.outputs]}, "
            f"the model {[list(v.shape) for v in graph.outputs]}"
        )
    for old, new in zip(graph.inputs, student.inputs):
        new.name = old.name
    for old, new in zip(graph.outputs, student.outputs):
        new.name = old.name
    graph.nodes = student.nodes
    for n in graph.nodes:
        n.graph = graph
    graph.inputs, graph.outputs = student.inputs, student.outputs
    graph._names = set(student._names) | {v.name for v in graph.inputs + graph.outputs}
    graph._node_names = set(student._node_names)


@register_pass
class PruneRetrain(_Training):
    """Iterative pruning with retraining (Han et al. 2015): ``steps`` rounds of magnitude pruning
    (``prune-weights``, ``scope`` layer | global) to ``s_k = 1 - (1 - sparsity)^(k / steps)``, each
    followed by ``epochs`` of training with the mask fixed (pruned weights stay exactly zero). The
    pruned weights are stored as CSR. Lossy."""

    name = "prune-retrain"
    lossless = False
    sparsity: float = 0.9
    steps: int = 3
    scope: Literal["layer", "global"] = "layer"
    ops: tuple[str, ...] = ("conv2d", "dense")
    skip: tuple[str, ...] = ()
    layer_sparsity: tuple[str, ...] = ()
    epochs: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        self._data(ctx)
        table = dict(_items(self.layer_sparsity))
        rows = []
        for k in range(1, self.steps + 1):
            s = 1 - (1 - self.sparsity) ** (k / self.steps)
            per = tuple(f"{n}={1 - (1 - v) ** (k / self.steps):.6f}" for n, v in table.items())
            prune = get_pass(
                "prune-weights",
                sparsity=s,
                scope=self.scope,
                ops=self.ops,
                skip=self.skip,
                layer_sparsity=per,
                encode="always",
            )
            prune.run(graph, ctx)
            res = self.train(graph, ctx, desc=f"prune-retrain {k}/{self.steps} (sparsity {s:.1%})")
            rows.append({"sparsity": round(s, 4), "after": res.after.value})
        ctx.detail("steps", {f"{r['sparsity']:.1%}": r["after"] for r in rows})
        return True


def _items(spec: tuple[str, ...] | dict[str, float]) -> list[tuple[str, float]]:
    if isinstance(spec, dict):
        return [(k, float(v)) for k, v in spec.items()]
    out = []
    for item in spec:
        name, eq, val = item.rpartition("=")
        if not eq:
            raise OptionError(f"layer_sparsity item {item!r} must look like NODE=S")
        v = float(val)
        if not 0 <= v < 1 or math.isnan(v):
            raise OptionError(f"layer_sparsity {item!r}: S must be in [0, 1)")
        out.append((name, v))
    return out


# Named pipelines (options spelled out; write the passes yourself to change them).
register_pipeline(
    "deep-compression",
    [
        "cleanup",
        "prune-retrain:sparsity=0.94,steps=5,epochs=30,scope=global,lr=0.002,patience=8",
        "kmeans-share:bits=5,conv_bits=5",
        "finetune:epochs=30,lr=0.0005,patience=8",
    ],
)
register_pipeline("qat-int8", ["cleanup", "quantize-int8", "finetune:epochs=3,lr=0.0001"])
register_pipeline("bwn-train", ["cleanup", "binarize-weights", "finetune:epochs=10,lr=0.002"])
register_pipeline("xnor-train", ["cleanup", "xnor", "finetune:epochs=20,lr=0.002,patience=5"])
