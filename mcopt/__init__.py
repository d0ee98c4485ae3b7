"""mcopt: a model-compression compiler. ONNX in; pruned, factorized, quantized models out, compiled
with Apache TVM for ARM CPUs, GPUs and FPGA-style fixed-point designs."""

from mcopt.errors import MCoptError
from mcopt.ir import Graph, Node, TensorType, Value

__version__ = "0.1.0"

__all__ = ["Graph", "MCoptError", "Node", "TensorType", "Value", "__version__"]
