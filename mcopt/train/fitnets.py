"""FitNets hint training (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

The hint loss ``L_HT(W_guided, W_r) = 1/2 ||u_h(x; W_hint) - r(v_g(x; W_guided); W_r)||^2``: ``u_h`` is
the teacher up to its hint layer, ``v_g`` the student up to its guided layer, ``r`` a regressor that
maps the guided layer's shape to the hint layer's: a convolution when both are (N, C, H, W) — 1x1 when
the spatial sizes agree, else a valid conv whose kernel makes them agree (the paper's convolutional
regressor) — or a linear map for (N, F) features. Only the student up to the guided layer and ``r``
receive gradients in this stage (the loss does not depend on the rest).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mcopt.errors import OptionError
from mcopt.train.module import GraphModule


def _value_shape(module: GraphModule, name: str, who: str) -> tuple[int, ...]:
    for v in module.graph.values():
        if v.name == name:
            return tuple(v.shape)
    raise OptionError(
        f"FitNets: the {who} has no value {name!r} (see `print(graph)` for the names)"
    )


def make_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        kh = student_shape[2] - teacher_shape[2] + 1
        kw = student_shape[3] - teacher_shape[3] + 1
        if kh < 1 or kw < 1:
            raise OptionError(
                f"FitNets: the guided layer {list(student_shape)} is spatially smaller than the hint "
                f"layer {list(teacher_shape)}; pick a deeper hint or a shallower guided layer"
            )
        return nn.Conv2d(student_shape[1], teacher_shape[1], (kh, kw))
    if len(student_shape) == 2 and len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1])
    raise OptionError(
        f"FitNets: cannot regress a {list(student_shape)} guided layer onto a {list(teacher_shape)} hint"
    )


def hint_loss_fn(
    student: GraphModule, teacher: GraphModule, guided: str, hint: str
) -> tuple[Callable[[GraphModule, list[torch.Tensor], Any], torch.Tensor], nn.Module]:
    """(loss_fn for :func:`mcopt.train.loop.fit`, the regressor whose parameters train with it)."""
    sshape = _value_shape(student, guided, "student")
    tshape = _value_shape(teacher, hint, "teacher")
    reg = make_regressor(sshape, tshape).to(student.dtype)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(module: GraphModule, xs: list[torch.Tensor], y: Any) -> torch.Tensor:
        _, cap = module(*xs, capture=[guided])
        with torch.no_grad():
            _, tcap = teacher(*xs, capture=[hint])
        diff = tcap[hint] - reg(cap[guided])
        return 0.5 * (diff**2).sum() / diff.shape[0]

    return loss_fn, reg


__all__ = ["hint_loss_fn", "make_regressor"]
