""" "TVM without mcopt": what a user would do alone, for benchmarks.

TVM's own ONNX importer (``tvm.relax.frontend.onnx.from_onnx``) with static input shapes, then
``tvm.compile`` with its default pipeline (legalization only on llvm) for the same host target
that mcopt uses. The result is a :class:`~mcopt.targets.relax.builder.CompiledModel`, so it runs and
benchmarks exactly like mcopt's own builds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from mcopt.errors import TargetError
from mcopt.targets.registry import TargetSpec, get_target
from mcopt.targets.relax.builder import CompiledModel, compile_module
from mcopt.targets.relax.lower import _first_line


def _onnx_dtype(elem_type: int) -> str:
    import numpy as np
    from onnx import helper

    return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name)


def build_tvm_baseline(
    onnx_model: onnx.ModelProto | str,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    target: str | TargetSpec = "cpu",
    *,
    pipeline: str = "default",
) -> CompiledModel:
    """Import ``onnx_model`` with TVM's importer and compile it with ``tvm.compile``'s defaults.

    ``input_shapes`` maps graph input names to static shapes (needed when the model has symbolic
    dims); inputs not named keep their ONNX shapes. ``pipeline="mcopt"`` applies mcopt's fusion
    and CPU schedule to TVM's imported module instead (for ablations).
    """
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(onnx_model) if isinstance(onnx_model, str) else onnx_model
    spec = get_target(target)
    init_names = {t.name for t in model.graph.initializer}
    specs: list[tuple[str, tuple[int, ...], str]] = []
    shape_dict: dict[str, list[int]] = {}
    dtype_dict: dict[str, str] = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        tt = inp.type.tensor_type
        if input_shapes and inp.name in input_shapes:
            shape = [int(d) for d in input_shapes[inp.name]]
        else:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            if any(d < 0 for d in dims):
                raise TargetError(
                    f"ONNX input {inp.name!r} has a symbolic shape; pass input_shapes={{{inp.name!r}: [...]}}"
                )
            shape = dims
        dtype = _onnx_dtype(tt.elem_type)
        shape_dict[inp.name], dtype_dict[inp.name] = shape, dtype
        specs.append((inp.name, tuple(shape), dtype))
    try:
        mod = from_onnx(
            model, shape_dict=shape_dict, dtype_dict=dtype_dict, keep_params_in_input=False
        )
    except Exception as e:
        raise TargetError(f"TVM's ONNX importer failed: {_first_line(e)}") from None
    ex: Any = compile_module(mod, spec, pipeline)
    outs = [o.name for o in model.graph.output]
    return CompiledModel(ex, spec.name, specs, outs, pipeline=f"tvm-onnx/{pipeline}")


__all__ = ["build_tvm_baseline"]
