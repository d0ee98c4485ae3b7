"""``learn-architecture``: learn how many neurons each layer keeps, and which activations become
linear, with tsReLU gates (Srinivas & Babu, BMVC 2016; the seed's "Neuron and Layer Pruning"):
``tsReLU(x) = w x`` for ``x >= 0``, ``w d x`` otherwise, gates trained with
``lambda1 * sum w(1 - w) + lambda2 * sum d(1 - d) + lambda3 * sum w`` (the paper's binarizing terms and
its complexity term, as means over the gates), then ``w' = [w >= 0.5]``, ``d' = [d >= 0.5]``: closed
neurons are removed physically (``remove-dead-neurons``), open gates folded into the weights (exact),
linear layers merged with their neighbours where that saves weights. See
:mod:`mcopt.train.tsrelu`. Needs training data. Lossy (the snapping of w and d; ``finetune`` after it
recovers what it costs).
"""

from __future__ import annotations

from mcopt.errors import OptionError
from mcopt.ir.core import Graph
from mcopt.pass_manager import PassContext, get_pass, register_pass
from mcopt.passes.train import _Training


@register_pass
class LearnArchitecture(_Training):
    """tsReLU gates per neuron / channel and per layer (Srinivas & Babu 2016), trained with the
    binarizing penalties ``lambda1``, ``lambda2`` and the neuron-count penalty ``lambda3`` (gates'
    own learning rate ``gate_lr``); then closed neurons removed, open gates folded in, linear layers
    merged. ``skip``: relu / layer names left alone. Lossy."""

    name = "learn-architecture"
    lossless = False
    epochs: int = 10
    lambda1: float = 0.5
    lambda2: float = 0.5
    lambda3: float = 0.3
    gate_lr: float = 0.01
    skip: tuple[str, ...] = ()
    patience: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for k in ("lambda1", "lambda2", "lambda3", "gate_lr"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        from mcopt.train.loop import fit, resolve_loss
        from mcopt.train.module import from_torch, to_torch
        from mcopt.train.tsrelu import (
            apply_gates,
            clamp_gates,
            gate_penalty,
            install_gates,
            merge_linear,
        )

        data = self._data(ctx)
        module = to_torch(graph)
        gates = install_gates(module, tuple(self.skip))
        if not gates:
            raise OptionError(
                "learn-architecture: no relu fed by a conv2d / dense to gate (tsReLU replaces relus)"
            )
        gate_params = {id(module._parameters[k]) for g in gates for k in (g.w_key, g.d_key)}
        weights = [p for p in module.parameters() if id(p) not in gate_params]
        gparams = [module._parameters[k] for g in gates for k in (g.w_key, g.d_key)]
        cfg = self.config(seed=ctx.seed, restore_best=False)  # the gates, not the start
        teacher_graph = self._teacher(ctx, graph)
        kind = resolve_loss(cfg.loss, data.labelled, teacher_graph is not None)
        teacher = to_torch(teacher_graph) if kind in ("kd", "ce+kd", "mse") else None

        def penalty(m, xs):  # type: ignore[no-untyped-def]
            return gate_penalty(m, gates, self.lambda1, self.lambda2, self.lambda3)

        res = fit(
            module,
            data,
            cfg,
            teacher=teacher,
            extra_loss=penalty,
            after_step=lambda m: clamp_gates(m, gates),
            params=weights,
            extra_params=[{"params": gparams, "lr": self.gate_lr}],
            log=ctx.info,
            desc=self.name,
        )
        from_torch(module, graph)
        layers = apply_gates(graph, module, gates)
        get_pass("remove-dead-neurons").run(graph, ctx)
        merged = merge_linear(graph)
        kept = sum(v["kept"] for v in layers.values())
        total = sum(v["of"] for v in layers.values())
        ctx.info(
            f"learn-architecture: kept {kept} of {total} gated neurons / channels; "
            f"{sum(v['linear'] for v in layers.values())} activation(s) became linear, "
            f"{merged} layer pair(s) merged; {res.summary()}"
        )
        ctx.detail("kept", {k: f"{v['kept']}/{v['of']}" for k, v in layers.items()})
        ctx.detail("linear_layers_merged", merged)
        ctx.detail("train", res.to_dict())
        return True
