"""Straight-through estimators (Bengio, Léonard & Courville 2013; BinaryConnect, Courbariaux et al.
2015; XNOR-Net, Rastegari et al. 2016): the forward pass rounds / takes the sign exactly as the
inference op does, the backward pass lets the gradient through as if the rounding were the identity.

- ``round_ste(x)``: forward ``rint(x)`` (round half to even, as numpy/ONNX), backward identity.
- ``floor_ste(x)``: forward ``floor(x)``, backward identity (fixed point's round-half-up is
  ``floor(x + 0.5)``).
- ``sign_ste(x)``: forward ``+1 if x >= 0 else -1`` (sign(0) = +1 as :mod:`mcopt.ops.binary`), backward
  ``grad * 1[|x| <= 1]`` (the gradient is cancelled where ``|x| > 1``, XNOR-Net sec. 3.2 / the
  "hard tanh" STE).
- ``clamp_ste(x, lo, hi)``: plain ``clamp``: zero gradient outside ``[lo, hi]`` (saturated codes do not
  learn, as in quantization-aware training, Jacob et al. 2018).
"""

from __future__ import annotations

from typing import Any

import torch


def _identity_grad(fn: Any) -> Any:
    """An autograd Function computing `fn` forward and passing the gradient straight through."""

    class _STE(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            return fn(x)

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
            return g

    return _STE


_Round, _Floor, _Trunc = (_identity_grad(f) for f in (torch.round, torch.floor, torch.trunc))


class _Sign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _Round.apply(x)


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    return _Floor.apply(x)


def trunc_ste(x: torch.Tensor) -> torch.Tensor:
    return _Trunc.apply(x)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    return _Sign.apply(x)


def clamp_ste(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return torch.clamp(x, lo, hi)


__all__ = ["clamp_ste", "floor_ste", "round_ste", "sign_ste", "trunc_ste"]
