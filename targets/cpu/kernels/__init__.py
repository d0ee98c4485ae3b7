"""mcopt's own fp32 CPU kernels: TE compute + ``tvm.s_tir.schedule`` templates (no tuning needed).

The approach of Liu et al., "Optimizing CNN Model Inference on CPUs" (USENIX ATC 2019): blocked
``NCHW[x]c`` activations, weights pre-packed at compile time, register-tiled micro-kernels whose
block sizes come from an analytic rule over the target's SIMD width, register count and caches.

- :func:`conv2d_nchwc` (also 1x1 = GEMM), :func:`depthwise_conv2d_nchwc`, :func:`dense_packed`:
  scheduled ``tvm.tirx.PrimFunc`` for static shapes, with a fused epilogue (:class:`Epilogue`:
  bias, residual add, relu / relu6 / clip);
- :func:`choose_conv_params` and friends (:mod:`.params`): the analytic parameter rule;
- :mod:`.layout`: numpy weight packing and NCHW <-> NCHW[x]c PrimFuncs;
- :mod:`.relax_ops`: ``emit_conv2d`` / ``emit_depthwise_conv2d`` / ``emit_dense`` /
  ``emit_to_blocked`` / ``emit_from_blocked`` for a ``relax.BlockBuilder``.

Importing this package does not import TVM; the functions do, when called.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "conv2d_nchwc": "mcopt.targets.cpu.kernels.conv2d",
    "depthwise_conv2d_nchwc": "mcopt.targets.cpu.kernels.depthwise",
    "choose_depthwise_params": "mcopt.targets.cpu.kernels.depthwise",
    "dense_packed": "mcopt.targets.cpu.kernels.dense",
    "choose_dense_params": "mcopt.targets.cpu.kernels.dense",
    "emit_conv2d": "mcopt.targets.cpu.kernels.relax_ops",
    "emit_depthwise_conv2d": "mcopt.targets.cpu.kernels.relax_ops",
    "emit_dense": "mcopt.targets.cpu.kernels.relax_ops",
    "emit_winograd_conv2d": "mcopt.targets.cpu.kernels.relax_ops",
    "emit_to_blocked": "mcopt.targets.cpu.kernels.relax_ops",
    "emit_from_blocked": "mcopt.targets.cpu.kernels.relax_ops",
    "emit_permute_channels": "mcopt.targets.cpu.kernels.relax_ops",
    "emit_concat_channels": "mcopt.targets.cpu.kernels.relax_ops",
    "finalize_kernel": "mcopt.targets.cpu.kernels.relax_ops",
    "cpu_info": "mcopt.targets.cpu.kernels.target_info",
    "host_target": "mcopt.targets.cpu.kernels.target_info",
    "CPUInfo": "mcopt.targets.cpu.kernels.target_info",
}

from mcopt.targets.cpu.kernels.epilogue import Epilogue  # noqa: E402
from mcopt.targets.cpu.kernels.params import (  # noqa: E402
    ConvParams,
    channel_block,
    choose_conv_params,
    choose_register_tile,
)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'mcopt.targets.cpu.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


__all__ = [
    "CPUInfo",
    "ConvParams",
    "Epilogue",
    "channel_block",
    "choose_conv_params",
    "choose_dense_params",
    "choose_depthwise_params",
    "choose_register_tile",
    "conv2d_nchwc",
    "cpu_info",
    "dense_packed",
    "depthwise_conv2d_nchwc",
    "emit_conv2d",
    "emit_dense",
    "emit_depthwise_conv2d",
    "emit_from_blocked",
    "emit_permute_channels",
    "emit_concat_channels",
    "emit_to_blocked",
    "emit_winograd_conv2d",
    "finalize_kernel",
    "host_target",
]
