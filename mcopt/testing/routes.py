"""One model, every route it can run: onnxruntime on the original ONNX (the reference), mcopt's
interpreter on the imported graph, onnxruntime on mcopt's export, and the CPU build — for the
tests of the ONNX ops (tests/test_resample.py, test_reduce_ops.py, test_unary_ops.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _ort_run(proto: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, dict(feeds)))


def outputs_by_route(
    model: Any,
    feeds: Mapping[str, np.ndarray],
    passes: Sequence[str] = (),
    cpu: bool = True,
) -> dict[str, list[np.ndarray]]:
    """``{"onnxruntime", "interpreter", "export"[, "cpu"]: outputs}``; ``cpu`` builds with
    ``mcopt.optimize(model, target="cpu", passes=passes)`` (needs TVM)."""
    from mcopt import interpreter
    from mcopt.onnx_io import export_model, import_model

    g = import_model(model)
    out = {
        "onnxruntime": _ort_run(model, feeds),
        "interpreter": interpreter.run(g, [feeds[v.name] for v in g.inputs]),
        "export": _ort_run(export_model(g), feeds),
    }
    if cpu:
        import mcopt

        res = mcopt.optimize(model, target="cpu", passes=list(passes), measure=False, check=False)
        out["cpu"] = res.compiled.run(dict(feeds))
    return out


def assert_routes_match(
    routes: Mapping[str, Sequence[np.ndarray]],
    rtol: float = 1e-5,
    atol: float = 1e-5,
    cpu_tol: tuple[float, float] | None = None,
) -> None:
    """Every route's outputs equal onnxruntime's (same dtype, within ``rtol``/``atol``; the CPU
    build within ``cpu_tol`` when given)."""
    refs = routes["onnxruntime"]
    for route, outs in routes.items():
        if route == "onnxruntime":
            continue
        rt, at = cpu_tol if route == "cpu" and cpu_tol is not None else (rtol, atol)
        assert len(outs) == len(refs), route
        for i, (got, ref) in enumerate(zip(outs, refs)):
            assert got.dtype == ref.dtype, f"{route} output {i}: {got.dtype} vs {ref.dtype}"
            np.testing.assert_allclose(got, ref, rtol=rt, atol=at, err_msg=f"{route} output {i}")
