"""Reading and writing ONNX files with clear errors.

`load_onnx` opens the user's file read-only, never writes to it, and turns every way a file can be
unusable (missing, a directory, empty, truncated, not ONNX, external data missing) into a one-line
:class:`~mcopt.errors.ModelLoadError` that names the file and says what to do. `save_model` writes
atomically: a temporary file in the destination directory, then ``os.replace``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from mcopt.errors import ModelLoadError

ModelSource = str | os.PathLike[str] | bytes | onnx.ModelProto

_FIX = "export the model again (e.g. torch.onnx.export) and pass the path of the .onnx file"


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"cannot load {where}: it is empty (0 bytes); {_FIX}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        hint = "truncated or not an ONNX model"
        if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
            hint = "this is an image, not an ONNX model"
        raise ModelLoadError(f"cannot load {where}: {hint} ({e}); {_FIX}") from None
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.output) == 0:
        raise ModelLoadError(
            f"cannot load {where}: not an ONNX model (no IR version, graph or outputs); {_FIX}"
        )
    if len(model.opset_import) == 0:
        raise ModelLoadError(
            f"cannot load {where}: the model has no opset_import (file truncated?); {_FIX}"
        )
    return model


def load_onnx(model: ModelSource) -> onnx.ModelProto:
    """Load an ONNX model from a path, bytes or an existing ModelProto (returned as is).

    Models with external data are loaded with the model file's directory as the base dir.
    Raises ModelLoadError with a one-line message naming the file.
    """
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes | bytearray | memoryview):
        return _parse(bytes(model), "model bytes")
    if not isinstance(model, str | os.PathLike):
        raise ModelLoadError(
            f"cannot load a model from a {type(model).__name__}; pass a path to an .onnx file, "
            "its bytes or an onnx.ModelProto"
        )
    path = Path(model)
    where = f"model file '{path}'"
    if not path.exists():
        raise ModelLoadError(f"cannot load {where}: no such file; check the path")
    if path.is_dir():
        raise ModelLoadError(
            f"cannot load {where}: it is a directory; pass the .onnx file inside it"
        )
    try:
        with open(path, "rb") as f:  # read-only: the user's file is never modified
            data = f.read()
    except OSError as e:
        raise ModelLoadError(
            f"cannot load {where}: {e.strerror or e}; check the file's permissions"
        ) from None
    proto = _parse(data, where)
    if _uses_external_data(proto):
        from mcopt.onnx_io.validate import check_external_data

        check_external_data(proto, path.parent, where)
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            raise ModelLoadError(
                f"cannot load the external weights of {where}: {e}; keep the weight files next to it"
            ) from None
    return proto


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.external_data_helper._get_all_tensors(model)
    )


def save_model(model: object, path: str | os.PathLike[str], opset: int = 17) -> Path:
    """Write a Graph (exported at `opset`) or a ModelProto to `path` atomically; return the path.

    The bytes go to a temporary file in the destination directory that then replaces `path`, so a
    crash never leaves a half-written model behind (and never clobbers the source in place).
    """
    from mcopt.ir.core import Graph

    if isinstance(model, Graph):
        from mcopt.onnx_io.exporter import export_model

        proto = export_model(model, opset=opset)
    elif isinstance(model, onnx.ModelProto):
        proto = model
    else:
        raise TypeError(f"save_model takes a Graph or onnx.ModelProto, got {type(model).__name__}")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = proto.SerializeToString()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest
