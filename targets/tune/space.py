"""MetaSchedule plumbing for mcopt: a light tensor-intrinsic import, the build worker's
initializer, and mcopt's kernel templates as MetaSchedule design spaces.

**Builder overhead.** MetaSchedule imports ``tvm.s_tir.tensor_intrin`` in every ``TuneContext``
and in every build worker (``LocalBuilder``'s ``default_build``); that package registers the
intrinsics of every backend (CUDA alone is ~35 s of the ~60 s measured here on a busy 2-core
machine). :func:`install_tensor_intrin` registers only the intrinsics of the target being tuned
(x86: ~0.8 s, AArch64: ~4 s) under a placeholder package, so the later
``import tvm.s_tir.tensor_intrin`` statements are no-ops. :func:`worker_init` does the same in
each ``LocalBuilder`` worker (passed as its ``initializer``).

**Templates as the design space** (issue 3): a conv2d_nchwc task is the *unscheduled* TE function
of :func:`mcopt.targets.cpu.kernels.conv2d.conv2d_nchwc_te` marked with the attributes
``mcopt.template = "conv2d_nchwc"`` and ``mcopt.params`` (the analytic :class:`ConvParams` as
JSON) — see :func:`template_conv_workload`. Its design space (:func:`conv_template_space`, a
``ScheduleFn``) is the hand-written schedule :func:`schedule_conv2d_nchwc` itself, run on a proxy
schedule that turns each constant tile split (register tile along the width or flattened plane,
output-channel blocks per tile, input-channel cache chunk) into ``sample_perfect_tile`` whose
*decision* is the analytic value. The trace of the template with its analytic decisions is
measured and committed to the database before tuning (:func:`template_seed_trace`), so the
evolutionary search starts from it (MetaSchedule picks measured records into its initial
population and mutates their tile decisions) and the database's best is never worse than the
template. :func:`schedule_templates` applies the untuned template to marked functions that have
no record.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from typing import Any

TEMPLATE_ATTR = "mcopt.template"
PARAMS_ATTR = "mcopt.params"
#: on a template task for an AArch64 target: the arguments of the hand-written NEON kernel
#: (:mod:`mcopt.targets.cpu.kernels.conv2d_neon`) that replaces the untuned template
NEON_ATTR = "mcopt.neon_conv"
CONV_TEMPLATE = "conv2d_nchwc"

#: the largest register-tile factor the search may try per split axis (loop-name prefix)
_MAX_INNER = {"x": 16, "q": 16, "c": 8}


# --- tensor intrinsics without the 60 s import ---------------------------------------------
def install_tensor_intrin(target_kind: str = "llvm", mtriple: str = "") -> None:
    """Register only the tensor intrinsics ``target_kind`` / ``mtriple`` can use.

    Idempotent. For a non-llvm target (CUDA, ...) the whole package is imported as usual.
    """
    name = "tvm.s_tir.tensor_intrin"
    if target_kind != "llvm":
        importlib.import_module(name)
        return
    pkg = sys.modules.get(name)
    if pkg is None:
        import tvm.s_tir

        spec = importlib.util.find_spec(name)
        if spec is None:  # pragma: no cover - a TVM build without it
            return
        pkg = importlib.util.module_from_spec(spec)  # the package, without running __init__
        sys.modules[name] = pkg
        tvm.s_tir.tensor_intrin = pkg  # type: ignore[attr-defined]
    arm = mtriple.startswith(("aarch64", "arm"))
    importlib.import_module(f"{name}.{'arm_cpu' if arm else 'x86'}")


def worker_init(target_kind: str = "llvm", mtriple: str = "") -> None:
    """Build worker initializer: the light intrinsic import (see the module doc)."""
    install_tensor_intrin(target_kind, mtriple)


def pooled_builder(
    target_kind: str,
    mtriple: str = "",
    *,
    f_export: Any = None,
    max_workers: int | None = None,
    timeout_sec: float = 120.0,
    max_uses: int = 256,
) -> Any:
    """A MetaSchedule builder like ``LocalBuilder`` (same worker function, same results) whose
    worker pool lives for the whole tuning run instead of being restarted for every batch.

    ``LocalBuilder`` starts fresh workers per batch (a memory leak in long-lived workers), each
    paying the TVM import (3-10 s here) before building kernels that take well under a second;
    this pool recycles a worker after ``max_uses`` builds instead, and its workers run
    :func:`worker_init` once.
    """
    import functools
    import os

    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool: Any = None

        def build(self, build_inputs: list[Any]) -> list[Any]:
            if self.pool is None:
                self.pool = PopenPoolExecutor(
                    max_workers=max_workers or os.cpu_count() or 1,
                    timeout=timeout_sec,
                    initializer=functools.partial(worker_init, target_kind, mtriple),
                    maximum_process_uses=max_uses,
                )
            jobs = [
                (None, f_export, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs
            ]
            results = []
            for res in self.pool.map_with_error_catching(lambda x: _worker_func(*x), jobs):
                if res.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"timeout after {timeout_sec} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {res.value}"))
            return results

        def shutdown(self) -> None:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None

    return PooledBuilder()


# --- template workloads ----------------------------------------------------------------------
def template_conv_workload(
    data_shape: Sequence[int],
    weight_shape: Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    target: Any = None,
    params: Any = None,
    epilogue: Any = None,
    dtype: str = "float32",
) -> Any:
    """The unscheduled conv2d_nchwc PrimFunc (same arguments as
    :func:`mcopt.targets.cpu.kernels.conv2d.conv2d_nchwc`) marked as a template task."""
    from tvm import te

    from mcopt.targets.cpu.kernels.conv2d import conv2d_nchwc_te, uses_neon_kernel
    from mcopt.targets.cpu.kernels.epilogue import Epilogue
    from mcopt.targets.cpu.kernels.params import _info, choose_conv_params

    if params is None:
        params = choose_conv_params(data_shape, weight_shape, strides, padding, dilation, target)
    tensors = conv2d_nchwc_te(
        data_shape, weight_shape, strides, padding, dilation, params,
        epilogue or Epilogue(), dtype,
    )  # fmt: skip
    func = te.create_prim_func(tensors).with_attr("op_pattern", 8)  # opaque: never fused
    func = func.with_attr(TEMPLATE_ATTR, CONV_TEMPLATE).with_attr(
        PARAMS_ATTR, json.dumps(dataclasses.asdict(params), sort_keys=True)
    )
    if uses_neon_kernel(target, params, dtype, False):
        neon = {
            "data_shape": [int(d) for d in data_shape],
            "weight_shape": [int(d) for d in weight_shape],
            "strides": strides if isinstance(strides, int) else [int(v) for v in strides],
            "padding": padding if isinstance(padding, int) else [int(v) for v in padding],
            "dilation": dilation if isinstance(dilation, int) else [int(v) for v in dilation],
            "epilogue": dataclasses.asdict(epilogue or Epilogue()),
            "cores": _info(target).cores,
        }
        func = func.with_attr(NEON_ATTR, json.dumps(neon, sort_keys=True))
    return func


def template_of(func: Any) -> str | None:
    """The template name of a PrimFunc (None for an ordinary function)."""
    attrs = getattr(func, "attrs", None)
    if attrs is None or TEMPLATE_ATTR not in attrs:
        return None
    return str(attrs[TEMPLATE_ATTR])


def _conv_params(func: Any) -> Any:
    from mcopt.targets.cpu.kernels.params import ConvParams

    return ConvParams(**json.loads(str(func.attrs[PARAMS_ATTR])))


class _SamplingSchedule:
    """A proxy for ``tvm.s_tir.Schedule`` whose constant two-way splits of the conv block's tile
    loops become ``sample_perfect_tile`` (decision = the constant), everything else passes on."""

    def __init__(self, sch: Any) -> None:
        self._sch = sch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sch, name)

    def reverse_compute_at(self, block: Any, loop: Any, preserve_unit_loops: bool = True) -> Any:
        # unit loops kept: the loop count then does not depend on the sampled tile sizes, so the
        # trace replays for every decision
        return self._sch.reverse_compute_at(block, loop, preserve_unit_loops=True)

    def compute_at(self, block: Any, loop: Any, preserve_unit_loops: bool = True) -> Any:
        return self._sch.compute_at(block, loop, preserve_unit_loops=True)

    def split(self, loop: Any, factors: Sequence[Any], *args: Any, **kw: Any) -> Any:
        sch = self._sch
        if len(factors) == 2 and factors[0] is None and isinstance(factors[1], int):
            inner = int(factors[1])
            lp = sch.get(loop)
            name = str(lp.loop_var.name)
            ext = int(lp.extent)
            cap = ext if name == "icc" else _MAX_INNER.get(name)
            if cap is not None and inner > 0 and ext % inner == 0:
                rvs = sch.sample_perfect_tile(
                    loop, n=2, max_innermost_factor=max(cap, inner), decision=[ext // inner, inner]
                )
                return sch.split(loop, rvs, *args, **kw)
        return sch.split(loop, factors, *args, **kw)


def _has_block(sch: Any, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # no block of that name
        return False
    return True


def conv_template_space(sch: Any) -> Any:
    """``ScheduleFn`` body: the conv2d_nchwc template with sampled tile sizes (module doc)."""
    from mcopt.targets.cpu.kernels.conv2d import schedule_conv2d_nchwc

    params = _conv_params(sch.mod["main"])
    schedule_conv2d_nchwc(_SamplingSchedule(sch), params, _has_block(sch, "data_pad"))
    return sch


def space_for(func: Any) -> Any:
    """The MetaSchedule space generator of a task: the template's for a template function, the
    default ``post-order-apply`` (MetaSchedule's own rules) for everything else."""
    from tvm.s_tir import meta_schedule as ms

    if template_of(func) == CONV_TEMPLATE:
        return ms.space_generator.ScheduleFn(conv_template_space)
    return "post-order-apply"


def template_seed_trace(mod: Any) -> Any:
    """The trace of the untuned template (analytic decisions) on a template task's workload."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    conv_template_space(sch)
    return sch


def schedule_templates(mod: Any) -> Any:
    """Schedule every still-unscheduled template PrimFunc of ``mod`` with its analytic params
    (on an AArch64 target: replace it by the NEON kernel, :data:`NEON_ATTR`)."""
    from tvm import s_tir, tirx

    from mcopt.targets.cpu.kernels.conv2d import schedule_conv2d_nchwc
    from mcopt.targets.cpu.kernels.conv2d_neon import conv2d_nchwc_neon
    from mcopt.targets.cpu.kernels.epilogue import Epilogue

    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or template_of(func) != CONV_TEMPLATE:
            continue
        if "tirx.is_scheduled" in func.attrs:
            continue
        if NEON_ATTR in func.attrs:
            a = json.loads(str(func.attrs[NEON_ATTR]))
            neon = conv2d_nchwc_neon(
                a["data_shape"], a["weight_shape"], a["strides"], a["padding"], a["dilation"],
                _conv_params(func), Epilogue(**a["epilogue"]), a["cores"],
            )  # fmt: skip
            for key, value in func.attrs.items():  # global symbol, op pattern, template marks
                neon = neon.with_attr(key, value)
            updates[gv] = neon
            continue
        sch = s_tir.Schedule(func)
        schedule_conv2d_nchwc(sch, _conv_params(func), _has_block(sch, "data_pad"))
        updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def template_schedule_pass() -> Any:
    """:func:`schedule_templates` as a module pass (``McoptTemplateSchedule``: disabled while
    extracting tuning tasks) for the build pipeline, after the database is applied."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="McoptTemplateSchedule")
    def _pass(mod: Any, _ctx: Any) -> Any:
        return schedule_templates(mod)

    return _pass


__all__ = [
    "CONV_TEMPLATE",
    "NEON_ATTR",
    "PARAMS_ATTR",
    "TEMPLATE_ATTR",
    "conv_template_space",
    "install_tensor_intrin",
    "pooled_builder",
    "schedule_templates",
    "space_for",
    "template_conv_workload",
    "template_of",
    "template_schedule_pass",
    "template_seed_trace",
    "worker_init",
]
