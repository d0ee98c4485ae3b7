"""ONNX import and export.

- :func:`import_model`: ONNX (path, bytes or ModelProto; opsets 9-21, others converted in memory
  with ``onnx.version_converter`` first) -> mcopt Graph with static shapes, shape arithmetic folded
  to constants (:mod:`mcopt.onnx_io.folding`).
- :func:`export_model`: Graph -> ONNX ModelProto (opset 13-21, static shapes) that onnxruntime runs.
- :func:`load_onnx` / :func:`save_model`: file IO with one-line errors; atomic writes.
"""

from mcopt.onnx_io.exporter import export_model
from mcopt.onnx_io.importer import import_model
from mcopt.onnx_io.loader import load_onnx, save_model

__all__ = ["export_model", "import_model", "load_onnx", "save_model"]
