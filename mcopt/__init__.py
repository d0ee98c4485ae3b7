"""mcopt: a model-compression compiler. ONNX in; pruned, factorized, quantized models out, compiled
with Apache TVM for ARM CPUs, GPUs and FPGA-style fixed-point designs.

    import mcopt
    result = mcopt.optimize("model.onnx", target="cpu")
    result.save("out/")
"""

from __future__ import annotations

from typing import Any

from mcopt.errors import MCoptError
from mcopt.ir import Graph, Node, TensorType, Value

__version__ = "0.1.0"

# Heavier parts load on first use, so `import mcopt` stays cheap (and never imports TVM).
_LAZY = {
    "optimize": ("mcopt.api", "optimize"),
    "load": ("mcopt.api", "load"),
    "tune": ("mcopt.api", "tune"),
    "OptimizeResult": ("mcopt.api", "OptimizeResult"),
    "Pass": ("mcopt.pass_manager", "Pass"),
    "PassContext": ("mcopt.pass_manager", "PassContext"),
    "PassManager": ("mcopt.pass_manager", "PassManager"),
    "register_pass": ("mcopt.pass_manager", "register_pass"),
    "import_model": ("mcopt.onnx_io", "import_model"),
    "export_model": ("mcopt.onnx_io", "export_model"),
    "analyze": ("mcopt.analysis.cost", "analyze"),
    "run": ("mcopt.interpreter", "run"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mcopt' has no attribute {name!r}")


__all__ = ["Graph", "MCoptError", "Node", "TensorType", "Value", "__version__", *_LAZY]
